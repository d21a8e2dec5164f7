//! Topic routing: a trie of binding-key words.
//!
//! Binding keys are split on `.` into words; `*` matches exactly one word and `#` zero or more.
//! Matching walks the trie once per routing key, following the literal child, the `*` child and
//! the `#` child at each word, so its cost grows with the length of the key and the number of
//! wildcards on the way, not with the number of bindings. Empty words count (`a..b` has three),
//! and the empty key has none, as in RabbitMQ.

use std::collections::HashMap;

/// A trie of binding keys, holding values of type `T` at the nodes where keys end.
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    root: Node<T>,
}

#[derive(Debug, Clone)]
struct Node<T> {
    words: HashMap<Box<[u8]>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            values: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

/// Splits a key into words: none for the empty key, otherwise every `.`-separated piece.
fn words(key: &[u8]) -> Vec<&[u8]> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split(|byte| *byte == b'.').collect()
    }
}

impl<T> TopicTrie<T> {
    /// Adds `value` under `binding_key`.
    pub fn insert(&mut self, binding_key: &[u8], value: T) {
        let mut node = &mut self.root;
        for word in words(binding_key) {
            node = match word {
                b"*" => node.star.get_or_insert_with(Box::default),
                b"#" => node.hash.get_or_insert_with(Box::default),
                word => node.words.entry(word.into()).or_default(),
            };
        }
        node.values.push(value);
    }

    /// Removes one value stored under `binding_key` that `is_target` picks; returns whether there
    /// was one.
    pub fn remove(&mut self, binding_key: &[u8], is_target: &impl Fn(&T) -> bool) -> bool {
        fn remove_in<T>(node: &mut Node<T>, words: &[&[u8]], value: &impl Fn(&T) -> bool) -> bool {
            let Some((first, rest)) = words.split_first() else {
                let Some(index) = node.values.iter().position(value) else {
                    return false;
                };
                node.values.remove(index);
                return true;
            };
            let removed = match *first {
                b"*" => node
                    .star
                    .as_deref_mut()
                    .is_some_and(|child| remove_in(child, rest, value)),
                b"#" => node
                    .hash
                    .as_deref_mut()
                    .is_some_and(|child| remove_in(child, rest, value)),
                word => node
                    .words
                    .get_mut(word)
                    .is_some_and(|child| remove_in(child, rest, value)),
            };
            if removed {
                // Prune branches that no longer lead to any binding.
                match *first {
                    b"*" if node.star.as_ref().is_some_and(|child| child.is_empty()) => {
                        node.star = None
                    }
                    b"#" if node.hash.as_ref().is_some_and(|child| child.is_empty()) => {
                        node.hash = None
                    }
                    word if node.words.get(word).is_some_and(Node::is_empty) => {
                        node.words.remove(word);
                    }
                    _ => {}
                }
            }
            removed
        }
        remove_in(&mut self.root, &words(binding_key), is_target)
    }

    /// Keeps only the values `keep` says so of, anywhere in the trie.
    pub fn retain(&mut self, keep: &mut impl FnMut(&T) -> bool) {
        fn retain_in<T>(node: &mut Node<T>, keep: &mut impl FnMut(&T) -> bool) {
            node.values.retain(|value| keep(value));
            for child in node.words.values_mut() {
                retain_in(child, keep);
            }
            node.words.retain(|_, child| !child.is_empty());
            for slot in [&mut node.star, &mut node.hash] {
                if let Some(child) = slot.as_deref_mut() {
                    retain_in(child, keep);
                }
                if slot.as_ref().is_some_and(|child| child.is_empty()) {
                    *slot = None;
                }
            }
        }
        retain_in(&mut self.root, keep);
    }

    /// Calls `found` for every value whose binding key matches `routing_key` (a value bound under
    /// several matching keys is reported once per key; callers deduplicate).
    pub fn matches<'a>(&'a self, routing_key: &[u8], found: &mut impl FnMut(&'a T)) {
        let words = words(routing_key);
        walk(&self.root, &words, found);
    }
}

fn walk<'a, T>(node: &'a Node<T>, words: &[&[u8]], found: &mut impl FnMut(&'a T)) {
    if let Some(hash) = node.hash.as_deref() {
        // `#` swallows zero or more of the remaining words.
        for skip in 0..=words.len() {
            walk(hash, &words[skip..], found);
        }
    }
    let Some((first, rest)) = words.split_first() else {
        node.values.iter().for_each(&mut *found);
        return;
    };
    if let Some(child) = node.words.get(*first) {
        walk(child, rest, found);
    }
    if let Some(star) = node.star.as_deref() {
        walk(star, rest, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(bindings: &[&str], key: &str) -> Vec<String> {
        let mut trie = TopicTrie::default();
        for binding in bindings {
            trie.insert(binding.as_bytes(), binding.to_string());
        }
        let mut found = Vec::new();
        trie.matches(key.as_bytes(), &mut |value: &String| {
            found.push(value.clone())
        });
        found.sort();
        found.dedup();
        found
    }

    #[test]
    fn rabbitmq_topic_semantics() {
        let bindings = [
            "*.orange.*",
            "*.*.rabbit",
            "lazy.#",
            "#",
            "a.*.#",
            "a.#.d",
            "",
            "#.#",
            "*",
            "#.*",
        ];
        assert_eq!(
            matching(&bindings, "quick.orange.rabbit"),
            ["#", "#.#", "#.*", "*.*.rabbit", "*.orange.*"]
        );
        assert_eq!(
            matching(&bindings, "lazy"),
            ["#", "#.#", "#.*", "*", "lazy.#"]
        );
        assert_eq!(matching(&bindings, ""), ["", "#", "#.#"]);
        assert_eq!(matching(&bindings, "a"), ["#", "#.#", "#.*", "*"]);
        assert_eq!(matching(&bindings, "a.b"), ["#", "#.#", "#.*", "a.*.#"]);
        assert_eq!(
            matching(&bindings, "a.d"),
            ["#", "#.#", "#.*", "a.#.d", "a.*.#"]
        );
        assert_eq!(
            matching(&bindings, "a.b.c.d"),
            ["#", "#.#", "#.*", "a.#.d", "a.*.#"]
        );
        assert_eq!(matching(&bindings, "a..b"), ["#", "#.#", "#.*", "a.*.#"]);
        assert_eq!(matching(&["*.*", "#.b"], ".b"), ["#.b", "*.*"]);
    }

    #[test]
    fn remove_and_retain_prune_the_trie() {
        let mut trie = TopicTrie::default();
        trie.insert(b"a.*.c", 1);
        trie.insert(b"a.#", 2);
        trie.insert(b"a.#", 3);
        assert!(trie.remove(b"a.*.c", &|value| *value == 1));
        assert!(!trie.remove(b"a.*.c", &|value| *value == 1));
        trie.retain(&mut |value| *value != 2);
        let mut found = Vec::new();
        trie.matches(b"a.b.c", &mut |value: &i32| found.push(*value));
        assert_eq!(found, [3]);
        assert!(trie.remove(b"a.#", &|value| *value == 3));
        assert!(trie.root.is_empty());
    }
}
