//! The node's read model: what the management API, the CLI and the metrics show of this node's
//! connections, channels and consumers, kept where it can be read without asking anybody.
//!
//! ```text
//!  connection task ── opens ─────────> Registry::register (a ConnectionEntry)
//!       │         ── round changed ──> ConnectionEntry::set_channels (channels, consumers)
//!       │         ── ends ───────────> Registry::unregister
//!  HTTP / CLI ── list ──> Registry::connections() ── close ──> ConnectionEntry::close
//! ```
//!
//! A connection publishes a summary of its channels only when a round changed one (a channel
//! opened or closed, a consumer came or went, the prefetch, the mode or the number of
//! unacknowledged deliveries moved), so an idle node costs nothing and a busy one a lock per
//! round. Queue numbers live on the queues' handles ([`crate::queue::QueueCounters`]).

pub mod json;
pub mod listing;
pub mod report;
pub mod rows;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use warren_wire::FieldTable;

use crate::queue::events::{ConnectionEvent, ConnectionId, EventSender};

/// One consumer, as its channel holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSummary {
    /// Its tag.
    pub tag: String,
    /// The queue it consumes from.
    pub queue: String,
    /// Whether its deliveries must be acknowledged.
    pub ack_required: bool,
    /// Whether it asked for exclusive use of the queue.
    pub exclusive: bool,
    /// Its prefetch limit (0: none).
    pub prefetch: u16,
    /// Its `basic.consume` arguments.
    pub arguments: FieldTable,
}

/// One channel of a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSummary {
    /// Its number on the connection.
    pub number: u16,
    /// The prefetch of consumers created from now on (`basic.qos`, `global=false`).
    pub prefetch: u16,
    /// The limit shared by all its consumers (`basic.qos`, `global=true`; 0: none).
    pub global_prefetch: u32,
    /// Publisher confirms are on.
    pub confirm: bool,
    /// A transaction is open.
    pub transactional: bool,
    /// Deliveries not yet settled.
    pub unacknowledged: u32,
    /// Its consumers.
    pub consumers: Vec<ConsumerSummary>,
}

/// What is fixed about a connection once it is open.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    /// RabbitMQ's connection name: `peer -> local`.
    pub name: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
    /// The user it logged in as.
    pub user: String,
    /// Its vhost.
    pub vhost: String,
    /// The SASL mechanism it used.
    pub mechanism: String,
    /// Its `client-properties`.
    pub client_properties: FieldTable,
    /// Negotiated limits.
    pub frame_max: u32,
    /// Negotiated limits.
    pub channel_max: u16,
    /// Negotiated heartbeat, in seconds.
    pub heartbeat: u16,
    /// When it opened (ms since the epoch).
    pub connected_at: u64,
}

/// One open connection of this node.
#[derive(Debug)]
pub struct ConnectionEntry {
    /// Its node-unique id.
    pub id: ConnectionId,
    /// What is fixed about it.
    pub spec: ConnectionSpec,
    channels: Mutex<Vec<ChannelSummary>>,
    events: EventSender,
}

impl ConnectionEntry {
    /// Its channels, as its task last published them.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        self.channels.lock().clone()
    }

    /// Replaces the channel summaries (by the connection's task).
    pub(crate) fn set_channels(&self, channels: Vec<ChannelSummary>) {
        *self.channels.lock() = channels;
    }

    /// Asks the connection to close with `320 CONNECTION_FORCED - reason`. False when it has
    /// ended already.
    pub fn close(&self, reason: &str) -> bool {
        self.events
            .send(ConnectionEvent::Close {
                reason: reason.to_string(),
            })
            .is_ok()
    }
}

/// The node's open connections.
#[derive(Debug, Default)]
pub struct Registry {
    connections: RwLock<BTreeMap<ConnectionId, Arc<ConnectionEntry>>>,
}

impl Registry {
    /// A connection opened; its task keeps the entry and unregisters it when it ends.
    pub(crate) fn register(
        &self,
        id: ConnectionId,
        spec: ConnectionSpec,
        events: EventSender,
    ) -> Arc<ConnectionEntry> {
        let entry = Arc::new(ConnectionEntry {
            id,
            spec,
            channels: Mutex::new(Vec::new()),
            events,
        });
        self.connections.write().insert(id, entry.clone());
        entry
    }

    /// A connection ended.
    pub(crate) fn unregister(&self, id: ConnectionId) {
        self.connections.write().remove(&id);
    }

    /// Every open connection, oldest first.
    pub fn connections(&self) -> Vec<Arc<ConnectionEntry>> {
        self.connections.read().values().cloned().collect()
    }

    /// A connection by its name.
    pub fn connection(&self, name: &str) -> Option<Arc<ConnectionEntry>> {
        self.connections
            .read()
            .values()
            .find(|entry| entry.spec.name == name)
            .cloned()
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.connections.read().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
