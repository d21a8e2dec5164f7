//! Consumer dispatch, shared by every queue type: who gets the next message.
//!
//! Consumers wait in a [`ServiceOrder`]. The next message goes to the first in that order among
//! those of the highest priority that can take one (by their own prefetch and credit), who then
//! goes to the back: consumers of equal priority take turns, and a lower priority is served only
//! when no higher one can take anything. A consumer able to take a message may still be refused
//! by `admit` (its channel's prefetch, which other queues share): the next is tried then, of the
//! same priority first, then lower ones.
//!
//! With a single active consumer, [`designate`] names the one that should be active: the highest
//! priority, the earliest registered among equals. When a queue type hands over (at once, or
//! once the active one has settled what it holds) is the queue type's rule.
//!
//! Deterministic: no clock, no randomness, so the replicated state of a quorum queue can use it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Consumers (by key) in the order they are served: the front is next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceOrder<K> {
    order: VecDeque<K>,
}

impl<K> Default for ServiceOrder<K> {
    fn default() -> Self {
        ServiceOrder {
            order: VecDeque::new(),
        }
    }
}

impl<K: PartialEq> ServiceOrder<K> {
    /// A new consumer joins at the back.
    pub fn push(&mut self, key: K) {
        self.order.push_back(key);
    }

    /// A consumer leaves; false if it was not there.
    pub fn remove(&mut self, key: &K) -> bool {
        let before = self.order.len();
        self.order.retain(|k| k != key);
        self.order.len() != before
    }

    /// Consumers waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The consumers in service order.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.order.iter()
    }

    /// Picks who gets the next message and moves it to the back. `ready` gives the priority of
    /// a consumer that can take one by its own limits (`None`: it cannot); `admit` takes the
    /// last say for a consumer `ready` picked (and may take a unit of a shared limit, as it
    /// returns true only for the one served).
    pub fn next(
        &mut self,
        mut ready: impl FnMut(&K) -> Option<i64>,
        mut admit: impl FnMut(&K) -> bool,
    ) -> Option<&K> {
        // The common case in one pass: the first of the highest priority, admitted.
        let mut best: Option<(usize, i64)> = None;
        for (at, key) in self.order.iter().enumerate() {
            if let Some(priority) = ready(key)
                && best.is_none_or(|(_, top)| priority > top)
            {
                best = Some((at, priority));
            }
        }
        let (first, _) = best?;
        if admit(&self.order[first]) {
            return Some(self.serve(first));
        }
        // Refused: the others in order of priority, then of service.
        let mut candidates: Vec<(usize, i64)> = self
            .order
            .iter()
            .enumerate()
            .filter(|(at, _)| *at != first)
            .filter_map(|(at, key)| ready(key).map(|priority| (at, priority)))
            .collect();
        candidates.sort_by_key(|(at, priority)| (std::cmp::Reverse(*priority), *at));
        let at = candidates
            .into_iter()
            .map(|(at, _)| at)
            .find(|at| admit(&self.order[*at]))?;
        Some(self.serve(at))
    }

    fn serve(&mut self, at: usize) -> &K {
        let key = self.order.remove(at).expect("a position in the order");
        self.order.push_back(key);
        self.order.back().expect("just pushed")
    }
}

/// The consumer that should be the single active one among `candidates` (key, priority,
/// registration order): the highest priority, the earliest registered among equals.
pub fn designate<'a, K: 'a>(
    candidates: impl IntoIterator<Item = (&'a K, i64, u64)>,
) -> Option<&'a K> {
    candidates
        .into_iter()
        .max_by(|(_, a, since_a), (_, b, since_b)| a.cmp(b).then(since_b.cmp(since_a)))
        .map(|(key, _, _)| key)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Serves `rounds` messages to consumers of the given priorities and room; returns who got
    /// each.
    fn serve(
        order: &mut ServiceOrder<&'static str>,
        priorities: &HashMap<&str, i64>,
        room: &mut HashMap<&'static str, u32>,
        rounds: usize,
    ) -> Vec<&'static str> {
        (0..rounds)
            .filter_map(|_| {
                let key =
                    *order.next(|key| (room[key] > 0).then_some(priorities[key]), |_| true)?;
                *room.get_mut(key).unwrap() -= 1;
                Some(key)
            })
            .collect()
    }

    #[test]
    fn equals_take_turns_in_the_order_they_came() {
        let mut order = ServiceOrder::default();
        for key in ["a", "b", "c"] {
            order.push(key);
        }
        let priorities = HashMap::from([("a", 0), ("b", 0), ("c", 0)]);
        let mut room = HashMap::from([("a", 9), ("b", 9), ("c", 9)]);
        assert_eq!(
            serve(&mut order, &priorities, &mut room, 5),
            ["a", "b", "c", "a", "b"]
        );
    }

    #[test]
    fn the_highest_priority_with_room_goes_first_and_lower_ones_get_the_rest() {
        let mut order = ServiceOrder::default();
        for key in ["low", "high", "mid"] {
            order.push(key);
        }
        let priorities = HashMap::from([("low", 0), ("high", 10), ("mid", 5)]);
        let mut room = HashMap::from([("low", 9), ("high", 2), ("mid", 1)]);
        assert_eq!(
            serve(&mut order, &priorities, &mut room, 6),
            ["high", "high", "mid", "low", "low", "low"]
        );
        room.insert("high", 1);
        assert_eq!(serve(&mut order, &priorities, &mut room, 1), ["high"]);
    }

    #[test]
    fn a_refused_consumer_is_passed_over_for_its_equals_then_lower_priorities() {
        let mut order = ServiceOrder::default();
        for key in ["a", "b", "low"] {
            order.push(key);
        }
        let priorities = HashMap::from([("a", 1), ("b", 1), ("low", 0)]);
        let mut asked = Vec::new();
        let served = order.next(
            |key| Some(priorities[key]),
            |key| {
                asked.push(*key);
                *key == "low"
            },
        );
        assert_eq!(served, Some(&"low"));
        assert_eq!(asked, ["a", "b", "low"]);
        // The refused ones kept their places; the served one went to the back.
        assert_eq!(order.iter().copied().collect::<Vec<_>>(), ["a", "b", "low"]);
        let none = order.next(|key| Some(priorities[key]), |_| false);
        assert_eq!(none, None);
    }

    #[test]
    fn nobody_is_served_when_none_can_take_one() {
        let mut order = ServiceOrder::default();
        assert_eq!(order.next(|_: &&str| Some(0), |_| true), None);
        order.push("a");
        assert_eq!(order.next(|_| None, |_| true), None);
        assert!(order.remove(&"a"));
        assert!(!order.remove(&"a"));
        assert!(order.is_empty());
    }

    #[test]
    fn the_designated_consumer_is_the_highest_priority_then_the_earliest() {
        let candidates = [("late-high", 5, 3), ("early", 0, 1), ("early-high", 5, 2)];
        let designated = designate(candidates.iter().map(|(key, p, since)| (key, *p, *since)));
        assert_eq!(designated, Some(&"early-high"));
        assert_eq!(designate(std::iter::empty::<(&&str, i64, u64)>()), None);
    }

    #[test]
    fn the_order_serializes_as_a_plain_sequence() {
        let mut order = ServiceOrder::default();
        order.push(1u64);
        order.push(2);
        assert_eq!(serde_json::to_string(&order).unwrap(), "[1,2]");
    }
}
