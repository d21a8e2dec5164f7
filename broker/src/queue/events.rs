//! What queues tell connections: deliveries, publish outcomes, credit, cancellations (the other
//! half of the queue protocol, beside [`QueueCommand`](super::QueueCommand)).
//!
//! Each connection has one unbounded mailbox of [`ConnectionEvent`]s. It is unbounded on
//! purpose: a queue must never wait on a connection (a connection may itself be waiting on that
//! queue), and what can pile up in it is bounded elsewhere, by the consumers' flow credit for
//! deliveries and by the publishers' credit for confirms.

use std::sync::Arc;

use tokio::sync::mpsc;
use warren_wire::ShortString;

use super::QueueHandle;
use crate::message::Message;

/// A connection's mailbox.
pub type EventSender = mpsc::UnboundedSender<ConnectionEvent>;
/// The receiving end, owned by the connection task.
pub type EventReceiver = mpsc::UnboundedReceiver<ConnectionEvent>;

/// Identifies a connection within the node.
pub type ConnectionId = u64;

/// A channel of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The connection.
    pub connection: ConnectionId,
    /// The channel number.
    pub channel: u16,
}

/// An event for a connection task.
#[derive(Debug)]
pub enum ConnectionEvent {
    /// Messages for consumers on this connection.
    Deliveries(Vec<Delivery>),
    /// Queues accepted (or refused) published messages: confirms to send.
    Settled(Vec<PublishOutcome>),
    /// A queue grants more publish credit.
    PublishCredit {
        /// The queue's id.
        queue: u64,
        /// Messages the connection may send on top of what it has.
        amount: u32,
    },
    /// A queue this connection published to is gone: forget its credit.
    QueueGone {
        /// The queue's id.
        queue: u64,
    },
    /// The server cancelled a consumer (its queue was deleted).
    ConsumerCancelled {
        /// The consumer's channel.
        channel: u16,
        /// The consumer's tag.
        consumer_tag: ShortString,
    },
    /// A consumer held a delivery unacknowledged past its timeout: it is cancelled (with
    /// `basic.cancel` when the client takes it, else by closing its channel).
    ConsumerTimedOut {
        /// The consumer's channel.
        channel: u16,
        /// The consumer's tag.
        consumer_tag: ShortString,
        /// The timeout, in ms.
        timeout: u64,
    },
    /// An operator closes the connection (management API, `close_connection`): it ends with
    /// `320 CONNECTION_FORCED - reason`.
    Close {
        /// What the client is told.
        reason: String,
    },
}

/// The outcome of one published message at one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The publishing channel.
    pub channel: u16,
    /// The publish sequence number (the delivery tag of its confirm).
    pub sequence: u64,
    /// Whether the queue took the message (false: nack it).
    pub accepted: bool,
}

/// A message handed to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The consumer's channel.
    pub channel: u16,
    /// The consumer's tag.
    pub consumer_tag: ShortString,
    /// The queue it comes from, for acknowledgements (`None` for direct replies).
    pub queue: Option<QueueHandle>,
    /// The message's id in that queue.
    pub message_id: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Whether the consumer acknowledges (false: the queue has already forgotten the message).
    pub needs_ack: bool,
}
