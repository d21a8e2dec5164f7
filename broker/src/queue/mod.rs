//! Queues: the handle channels hold, the commands they send, and the implementations behind it.
//!
//! ```text
//!  channel ──QueueCommand──> QueueHandle (this node's front, stable) ──> one of:
//!     ^                         classic: queue task ──> QueueState (sans-IO), the node's WAL
//!     │                         remote:  proxy ──wire──> home node's stand-in ──> classic queue
//!     │                         quorum:  front ──log commands──> Raft group ──> QuorumState
//!     └──────── ConnectionEvent (deliveries, confirms, credit) ◄──┘
//! ```
//!
//! One queue interface: bindings, channels and credit maps hold a [`QueueHandle`], a per-node
//! front that stays while what is behind it moves (a quorum queue's leader changes, its members
//! come and go; a classic queue's home node goes down and comes back). Every implementation
//! takes the same [`QueueCommand`]s. The commands are node-local: what crosses nodes or goes into
//! a log is plain data made from them (the remote wire messages, the quorum log's `Command`s),
//! and the replies a command carries stay on this node. Consumer dispatch
//! ([`dispatch`]) and dead-lettering ([`dead_letter`]) are shared by the queue types; engines
//! see the node through [`QueueEnv`], never the vhost or the broker.
//!
//! A classic queue is owned by one task; nothing else touches its messages. Everything a
//! channel must wait for (a consumer being registered, a `basic.get`, the counts of
//! `queue.declare-ok`) is a command with a reply. Since one connection's commands reach the
//! queue in the order it sent them, a `queue.declare-ok` counts every message that connection
//! published before it, as in RabbitMQ.
//!
//! Flow control: a publishing connection holds credit per queue (RabbitMQ's `{400, 200}`): it
//! may send 400 messages, and the queue grants 200 more each time it has processed 200 from that
//! connection. Out of credit, the connection stops reading its socket. A consumer holds delivery
//! credit the other way, returned by its connection once the socket has taken the bytes.

mod actor;
pub mod arguments;
pub mod counters;
pub mod dead_letter;
pub mod dispatch;
pub mod env;
pub mod events;
pub mod quorum;
pub(crate) mod ready;
mod state;
pub mod storage;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{mpsc, oneshot};
use warren_wire::{FieldTable, ShortString};

use crate::error::AmqpResult;
use crate::message::Message;
use crate::queue::events::{ChannelKey, ConnectionId, EventSender};

pub(crate) use actor::{now_ms, spawn};
pub use arguments::QueueConfig;
pub use counters::QueueCounters;
pub use env::QueueEnv;
pub(crate) use ready::Queued;
pub use state::QueueState;

/// Messages a publishing connection may send to a queue before the queue grants more.
pub const PUBLISH_CREDIT_INITIAL: u32 = 400;
/// How many messages a queue processes from a connection before granting that many again.
pub const PUBLISH_CREDIT_MORE_AFTER: u32 = 200;
/// Deliveries a queue may send a consumer before the consumer's connection returns credit.
pub const DELIVERY_CREDIT: u32 = 2000;

/// The node's queue tasks: tracked so that shutdown can stop them and wait until their storage
/// is let go.
#[derive(Debug, Clone, Default)]
pub struct QueueTasks {
    /// Every queue task.
    pub tracker: tokio_util::task::TaskTracker,
    /// Cancelled when the node stops, after client connections have closed.
    pub stop: tokio_util::sync::CancellationToken,
}

/// What a queue is, as declared.
#[derive(Debug)]
pub struct QueueShared {
    id: u64,
    /// The queue's name.
    pub name: ShortString,
    /// The vhost's name.
    pub vhost: Arc<str>,
    /// Survives restarts.
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<ConnectionId>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Declared arguments.
    pub arguments: FieldTable,
    /// The settings those arguments give.
    pub config: QueueConfig,
    /// The node that hosts it, when that is another node (this handle then leads to a proxy).
    pub home: Option<warren_cluster::NodeName>,
    /// Its numbers, as whatever holds its state last stored them (zero behind a proxy: the
    /// home node has them).
    pub counters: Arc<QueueCounters>,
    commands: mpsc::UnboundedSender<QueueCommand>,
}

/// A cheap, cloneable reference to a queue.
#[derive(Debug, Clone)]
pub struct QueueHandle(Arc<QueueShared>);

impl std::ops::Deref for QueueHandle {
    type Target = QueueShared;
    fn deref(&self) -> &QueueShared {
        &self.0
    }
}

impl PartialEq for QueueHandle {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl QueueHandle {
    /// The node-unique id of this queue (a redeclared queue of the same name gets a new one).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// A handle whose commands go to `commands` (a proxy for a queue on node `home`).
    pub(crate) fn remote(
        spec: QueueSpec,
        config: QueueConfig,
        vhost: Arc<str>,
        id: u64,
        home: warren_cluster::NodeName,
        commands: mpsc::UnboundedSender<QueueCommand>,
    ) -> QueueHandle {
        QueueHandle(Arc::new(QueueShared {
            id,
            name: spec.name,
            vhost,
            durable: spec.durable,
            exclusive_owner: spec.exclusive_owner,
            auto_delete: spec.auto_delete,
            arguments: spec.arguments,
            config,
            home: Some(home),
            counters: Arc::default(),
            commands,
        }))
    }

    /// The error for a queue that did not answer: deleted, or (hosted elsewhere) its node is
    /// down, in RabbitMQ's words.
    pub fn unavailable(&self) -> crate::error::AmqpError {
        match &self.0.home {
            Some(home) => crate::error::AmqpError::not_found(format!(
                "home node '{home}' of {} queue '{}' in vhost '{}' is down or inaccessible",
                if self.0.durable {
                    "durable"
                } else {
                    "transient"
                },
                self.0.name,
                self.0.vhost
            )),
            None => crate::error::AmqpError::no_queue(&self.0.name, &self.0.vhost),
        }
    }

    /// Sends a command; false when the queue has stopped (it was deleted).
    pub fn send(&self, command: QueueCommand) -> bool {
        self.0.commands.send(command).is_ok()
    }

    /// Whether another connection owns this exclusive queue.
    pub fn is_locked_for(&self, connection: ConnectionId) -> bool {
        // The owner of an exclusive queue hosted elsewhere is a connection of that node.
        self.0
            .exclusive_owner
            .is_some_and(|owner| self.0.home.is_some() || owner != connection)
    }

    /// Sends a command that expects a reply and waits for it; `None` when the queue stopped
    /// before answering.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> QueueCommand) -> Option<T> {
        let (reply, receive) = oneshot::channel();
        if !self.send(make(reply)) {
            return None;
        }
        receive.await.ok()
    }
}

/// What a declaration asks for.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// The name.
    pub name: ShortString,
    /// Survives restarts.
    pub durable: bool,
    /// Owner of an exclusive queue.
    pub exclusive_owner: Option<ConnectionId>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A message arriving at a queue.
#[derive(Debug)]
pub struct Incoming {
    /// The message.
    pub message: Arc<Message>,
    /// The publish to confirm once the queue has taken it: (channel, sequence number).
    pub confirm: Option<(u16, u64)>,
}

/// What happens to messages a consumer is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Processed: forget them.
    Ack,
    /// Put back, to be delivered again (redelivered flag set).
    Requeue,
    /// Rejected without requeue: drop (or dead-letter).
    Discard,
}

/// Limits shared by a channel and every queue it consumes from: the channel-wide prefetch
/// (`basic.qos` with `global=true`) and the count it applies to.
#[derive(Debug, Default)]
pub struct ChannelGate {
    /// Channel-wide prefetch count; 0 for none.
    pub limit: AtomicU32,
    /// Deliveries to the channel's consumers not yet settled.
    pub unacked: AtomicU32,
}

impl ChannelGate {
    /// Takes one unit of the channel's prefetch, if it has one left.
    pub fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        if limit == 0 {
            self.unacked.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |unacked| {
                (unacked < limit).then_some(unacked + 1)
            })
            .is_ok()
    }

    /// Gives back `count` units; returns whether the channel was at its limit before, in which
    /// case queues holding messages for it should try again.
    pub fn release(&self, count: u32) -> bool {
        if count == 0 {
            return false;
        }
        let before = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |unacked| {
                Some(unacked.saturating_sub(count))
            })
            .unwrap_or(0);
        let limit = self.limit.load(Ordering::Acquire);
        limit != 0 && before >= limit
    }
}

/// A consumer, as registered with a queue.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Its channel.
    pub channel: ChannelKey,
    /// Its tag.
    pub tag: ShortString,
    /// Deliveries need no acknowledgement.
    pub no_ack: bool,
    /// No other consumer may use the queue.
    pub exclusive: bool,
    /// Per-consumer prefetch count; 0 for none.
    pub prefetch: u16,
    /// The channel's shared limits.
    pub gate: Arc<ChannelGate>,
    /// The connection's mailbox.
    pub events: EventSender,
    /// Consumer arguments.
    pub arguments: FieldTable,
}

/// A message handed out by `basic.get`.
#[derive(Debug)]
pub struct GetResult {
    /// Its id in the queue.
    pub message_id: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Messages still ready after this one.
    pub remaining: u32,
}

/// Counts for `queue.declare-ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery.
    pub messages: u32,
    /// Consumers.
    pub consumers: u32,
}

/// A command for a queue's task.
#[derive(Debug)]
pub enum QueueCommand {
    /// Messages from a publishing connection.
    Publish {
        /// The connection.
        publisher: ConnectionId,
        /// The messages, in order.
        messages: Vec<Incoming>,
    },
    /// A connection will publish: where to send its confirms and credit.
    AttachPublisher {
        /// The connection.
        publisher: ConnectionId,
        /// Its mailbox.
        events: EventSender,
    },
    /// The connection is gone.
    DetachPublisher {
        /// The connection.
        publisher: ConnectionId,
    },
    /// Register a consumer.
    Consume {
        /// The consumer.
        consumer: ConsumerSpec,
        /// Ok, or why not (exclusive use).
        reply: oneshot::Sender<AmqpResult<()>>,
    },
    /// Remove a consumer.
    Cancel {
        /// Its channel.
        channel: ChannelKey,
        /// Its tag.
        tag: ShortString,
        /// Answered once removed.
        reply: Option<oneshot::Sender<()>>,
    },
    /// Settle delivered messages.
    Settle {
        /// The channel they were delivered on.
        channel: ChannelKey,
        /// Their ids.
        message_ids: Vec<u64>,
        /// What to do with them.
        outcome: Settlement,
    },
    /// `basic.get`.
    Get {
        /// The channel asking.
        channel: ChannelKey,
        /// Whether the message is settled on delivery.
        no_ack: bool,
        /// The message, or none if the queue is empty.
        reply: oneshot::Sender<Option<GetResult>>,
    },
    /// Counts.
    Stats {
        /// Whether this use renews the queue's `x-expires` lease (a declaration that waits for
        /// its reply does; one with `nowait` does not).
        renew: bool,
        /// The counts.
        reply: oneshot::Sender<QueueStats>,
    },
    /// Drop every ready message.
    Purge {
        /// How many were dropped.
        reply: oneshot::Sender<u32>,
    },
    /// Delete the queue.
    Delete {
        /// Refuse if it has consumers.
        if_unused: bool,
        /// Refuse if it has ready messages.
        if_empty: bool,
        /// Ready messages dropped, or why not.
        reply: oneshot::Sender<AmqpResult<u32>>,
    },
    /// A channel closed: requeue what it had not settled, drop its consumers.
    ChannelClosed {
        /// The channel.
        channel: ChannelKey,
    },
    /// A consumer's connection returns delivery credit.
    Credit {
        /// Its channel.
        channel: ChannelKey,
        /// Its tag.
        tag: ShortString,
        /// Deliveries it may receive on top of what it has.
        amount: u32,
    },
    /// Limits changed (a channel's prefetch freed up): try delivering again.
    Kick,
    /// Messages delivered without acknowledgement that their consumer could not take after all
    /// (it was cancelled meanwhile): put them back at the head.
    Return {
        /// The messages.
        messages: Vec<ReturnedMessage>,
    },
    /// A report of the queue's own storage: only queues that write the node's write-ahead log
    /// (classic ones) act on it; for the others it cannot arrive.
    Storage(StorageEvent),
}

/// What a classic queue's storage reports to it, through its mailbox so that the reports keep
/// their order with the commands around them.
#[derive(Debug)]
pub enum StorageEvent {
    /// The write-ahead log reported on the queue's writes.
    Persisted,
    /// Messages read back from disk.
    PagedIn {
        /// (id, message or why it could not be read).
        messages: Vec<(u64, Result<Message, String>)>,
    },
    /// Move the queue's records out of an old segment of `stream`.
    Relocate {
        /// The stream.
        stream: warren_storage::Stream,
        /// The segment.
        segment: u32,
    },
}

/// A delivery its consumer's connection could not hand over.
#[derive(Debug)]
pub struct ReturnedMessage {
    /// Its id in the queue.
    pub message_id: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Its redelivered flag when it was delivered.
    pub redelivered: bool,
}
