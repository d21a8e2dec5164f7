//! Exchanges and their bindings.
//!
//! An exchange keeps its bindings twice: as a set (for listing, `if-unused` and idempotent
//! binds) and as a routing index shaped for its type: a map of routing keys for direct, a list
//! for fanout, a [`topic::TopicTrie`] for topic, and prepared [`headers::HeadersMatch`]es for
//! headers. Routing takes a read lock on that index only; binds and unbinds take the write lock
//! briefly. The default exchange (`""`) has no bindings: the vhost routes it by queue name.

pub mod headers;
pub mod topic;

use std::collections::HashMap;

use parking_lot::RwLock;
use warren_wire::{FieldTable, ShortString};

use crate::error::AmqpError;
use crate::message::Message;
use crate::queue::QueueHandle;
use headers::HeadersMatch;
use topic::TopicTrie;

/// The four exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    Direct,
    /// Every binding.
    Fanout,
    /// Binding keys with `*` and `#` wildcards.
    Topic,
    /// Message headers against binding arguments.
    Headers,
}

impl ExchangeKind {
    /// Parses a type name as given in `exchange.declare`.
    pub fn parse(name: &[u8]) -> Option<ExchangeKind> {
        match name {
            b"direct" => Some(ExchangeKind::Direct),
            b"fanout" => Some(ExchangeKind::Fanout),
            b"topic" => Some(ExchangeKind::Topic),
            b"headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    /// The type's name.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A queue.
    Queue(QueueHandle),
    /// Another exchange (exchange-to-exchange binding).
    Exchange(ShortString),
}

impl Destination {
    /// Identity of the destination, for comparisons and maps.
    pub fn key(&self) -> DestinationKey {
        match self {
            Destination::Queue(queue) => DestinationKey::Queue(queue.id()),
            Destination::Exchange(name) => DestinationKey::Exchange(name.clone()),
        }
    }
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

/// What identifies a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DestinationKey {
    /// A queue, by its unique id.
    Queue(u64),
    /// An exchange, by name.
    Exchange(ShortString),
}

/// One binding, as listed.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Where messages go.
    pub destination: Destination,
    /// The binding key.
    pub routing_key: ShortString,
    /// The binding arguments.
    pub arguments: FieldTable,
}

#[derive(Debug)]
enum Index {
    Direct(HashMap<ShortString, Vec<Destination>>),
    Fanout(Vec<Destination>),
    Topic(TopicTrie<Destination>),
    Headers(Vec<(HeadersMatch, Destination)>),
}

#[derive(Debug)]
struct Bindings {
    /// (destination, key) to every argument table bound under it.
    set: HashMap<(DestinationKey, ShortString), (Destination, Vec<FieldTable>)>,
    index: Index,
}

/// An exchange.
#[derive(Debug)]
pub struct Exchange {
    /// Name.
    pub name: ShortString,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Cannot be published to directly.
    pub internal: bool,
    /// Declared arguments.
    pub arguments: FieldTable,
    bindings: RwLock<Bindings>,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(
        name: ShortString,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Exchange {
        let index = match kind {
            ExchangeKind::Direct => Index::Direct(HashMap::new()),
            ExchangeKind::Fanout => Index::Fanout(Vec::new()),
            ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Index::Headers(Vec::new()),
        };
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            bindings: RwLock::new(Bindings {
                set: HashMap::new(),
                index,
            }),
        }
    }

    /// Checks binding arguments this exchange type interprets (`x-match` for headers).
    pub fn validate_binding(&self, arguments: &FieldTable) -> Result<(), AmqpError> {
        if self.kind == ExchangeKind::Headers {
            HeadersMatch::new(arguments)?;
        }
        Ok(())
    }

    /// Adds a binding; returns false when the same binding already existed.
    pub fn bind(&self, binding: Binding) -> Result<bool, AmqpError> {
        let headers = match self.kind {
            ExchangeKind::Headers => Some(HeadersMatch::new(&binding.arguments)?),
            _ => None,
        };
        let mut bindings = self.bindings.write();
        let set_key = (binding.destination.key(), binding.routing_key.clone());
        let entry = bindings
            .set
            .entry(set_key)
            .or_insert_with(|| (binding.destination.clone(), Vec::new()));
        if entry.1.contains(&binding.arguments) {
            return Ok(false);
        }
        entry.1.push(binding.arguments.clone());
        let destination = binding.destination;
        match &mut bindings.index {
            Index::Direct(map) => map
                .entry(binding.routing_key)
                .or_default()
                .push(destination),
            Index::Fanout(list) => list.push(destination),
            Index::Topic(trie) => trie.insert(&binding.routing_key, destination),
            Index::Headers(list) => {
                list.push((
                    headers.expect("invariant: prepared above for headers exchanges"),
                    destination,
                ));
            }
        }
        Ok(true)
    }

    /// Whether a binding with these arguments would be accepted (a headers exchange checks its
    /// `x-match`).
    pub fn check_binding(&self, arguments: &FieldTable) -> Result<(), AmqpError> {
        if self.kind == ExchangeKind::Headers {
            HeadersMatch::new(arguments)?;
        }
        Ok(())
    }

    /// Whether this exact binding exists.
    pub fn has_binding(
        &self,
        destination: &DestinationKey,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> bool {
        self.bindings
            .read()
            .set
            .get(&(destination.clone(), routing_key.clone()))
            .is_some_and(|(_, tables)| tables.contains(arguments))
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(
        &self,
        destination: &DestinationKey,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> bool {
        let mut bindings = self.bindings.write();
        let set_key = (destination.clone(), routing_key.clone());
        let Some((_, tables)) = bindings.set.get_mut(&set_key) else {
            return false;
        };
        let Some(position) = tables.iter().position(|table| table == arguments) else {
            return false;
        };
        tables.remove(position);
        if tables.is_empty() {
            bindings.set.remove(&set_key);
        }
        remove_from_index(&mut bindings.index, destination, routing_key, arguments);
        true
    }

    /// Removes every binding to `destination`; returns how many there were.
    pub fn unbind_destination(&self, destination: &DestinationKey) -> usize {
        let mut bindings = self.bindings.write();
        let before = bindings
            .set
            .values()
            .map(|(_, tables)| tables.len())
            .sum::<usize>();
        bindings.set.retain(|(key, _), _| key != destination);
        let after = bindings
            .set
            .values()
            .map(|(_, tables)| tables.len())
            .sum::<usize>();
        if before != after {
            let is_other = |candidate: &Destination| candidate.key() != *destination;
            match &mut bindings.index {
                Index::Direct(map) => {
                    map.values_mut().for_each(|list| list.retain(is_other));
                    map.retain(|_, list| !list.is_empty());
                }
                Index::Fanout(list) => list.retain(is_other),
                Index::Topic(trie) => {
                    trie.retain(&mut |candidate: &Destination| is_other(candidate))
                }
                Index::Headers(list) => list.retain(|(_, candidate)| is_other(candidate)),
            }
        }
        before - after
    }

    /// The `alternate-exchange` argument: where messages this exchange cannot route go.
    pub fn alternate_exchange(&self) -> Option<ShortString> {
        let value = self.arguments.get("alternate-exchange")?.as_bytes()?;
        ShortString::try_from(value).ok()
    }

    /// Whether the exchange is the source of any binding.
    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().set.is_empty()
    }

    /// Every binding, in no particular order.
    pub fn bindings(&self) -> Vec<Binding> {
        let bindings = self.bindings.read();
        bindings
            .set
            .iter()
            .flat_map(|((_, routing_key), (destination, tables))| {
                tables.iter().map(move |arguments| Binding {
                    destination: destination.clone(),
                    routing_key: routing_key.clone(),
                    arguments: arguments.clone(),
                })
            })
            .collect()
    }

    /// Appends the destinations `message` routes to with `routing_key` (possibly with
    /// repeats). `headers` caches the decoded headers table across exchanges and keys.
    pub fn route(
        &self,
        routing_key: &[u8],
        message: &Message,
        headers: &mut Option<Option<FieldTable>>,
        out: &mut Vec<Destination>,
    ) {
        let bindings = self.bindings.read();
        match &bindings.index {
            Index::Direct(map) => {
                if let Some(list) = map.get(routing_key) {
                    out.extend(list.iter().cloned());
                }
            }
            Index::Fanout(list) => out.extend(list.iter().cloned()),
            Index::Topic(trie) => trie.matches(routing_key, &mut |destination: &Destination| {
                out.push(destination.clone());
            }),
            Index::Headers(list) => {
                let headers = headers.get_or_insert_with(|| message.headers());
                for (matcher, destination) in list {
                    if matcher.matches(headers.as_ref()) {
                        out.push(destination.clone());
                    }
                }
            }
        }
    }
}

fn remove_from_index(
    index: &mut Index,
    destination: &DestinationKey,
    routing_key: &ShortString,
    arguments: &FieldTable,
) {
    let same = |candidate: &Destination| candidate.key() == *destination;
    match index {
        Index::Direct(map) => {
            if let Some(list) = map.get_mut(routing_key.as_bytes()) {
                if let Some(position) = list.iter().position(same) {
                    list.remove(position);
                }
                if list.is_empty() {
                    map.remove(routing_key.as_bytes());
                }
            }
        }
        Index::Fanout(list) => {
            if let Some(position) = list.iter().position(same) {
                list.remove(position);
            }
        }
        Index::Topic(trie) => {
            trie.remove(routing_key, &same);
        }
        Index::Headers(list) => {
            if let Ok(prepared) = HeadersMatch::new(arguments)
                && let Some(position) = list
                    .iter()
                    .position(|(matcher, candidate)| *matcher == prepared && same(candidate))
            {
                list.remove(position);
            }
        }
    }
}
