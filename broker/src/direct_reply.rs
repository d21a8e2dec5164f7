//! Direct reply-to: RPC replies that go straight to the requester's channel, with no queue.
//!
//! A requester consumes (without acknowledgements) from the pseudo-queue
//! `amq.rabbitmq.reply-to` and publishes requests with `reply_to = amq.rabbitmq.reply-to`; the
//! channel rewrites that to an address of its own, `amq.rabbitmq.reply-to.<node part>.<key>`. A
//! reply published to the default exchange with that address as routing key is delivered to the
//! requester's consumer at once. Replies are at most once: a requester that has gone loses them.

use std::collections::HashMap;

use base64::Engine as _;
use parking_lot::Mutex;
use warren_wire::ShortString;

use crate::queue::events::{ConnectionId, EventSender};

/// The pseudo-queue requesters consume from.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
/// The prefix of every reply address.
pub const ADDRESS_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Where replies to one address go.
#[derive(Debug, Clone)]
pub struct ReplyConsumer {
    /// The requester's connection.
    pub connection: ConnectionId,
    /// Its mailbox.
    pub events: EventSender,
    /// Its channel.
    pub channel: u16,
    /// Its consumer tag.
    pub tag: ShortString,
}

/// The reply addresses of a node.
#[derive(Debug, Default)]
pub struct DirectReplies {
    consumers: Mutex<HashMap<ShortString, ReplyConsumer>>,
}

impl DirectReplies {
    /// Registers a reply consumer and returns its address.
    pub fn register(&self, consumer: ReplyConsumer) -> ShortString {
        let engine = base64::engine::general_purpose::STANDARD;
        let mut key = [0u8; 16];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
        let address = format!(
            "{ADDRESS_PREFIX}{}.{}",
            engine.encode(consumer.connection.to_be_bytes()),
            engine.encode(key)
        );
        let address = ShortString::truncating(&address);
        self.consumers.lock().insert(address.clone(), consumer);
        address
    }

    /// Removes an address.
    pub fn unregister(&self, address: &ShortString) {
        self.consumers.lock().remove(address);
    }

    /// The consumer of an address, if it is still there.
    pub fn lookup(&self, address: &[u8]) -> Option<ReplyConsumer> {
        self.consumers.lock().get(address).cloned()
    }

    /// Whether `name` has the form of a reply address (whether or not its requester is there).
    pub fn is_address(name: &[u8]) -> bool {
        let Some(rest) = name.strip_prefix(ADDRESS_PREFIX.as_bytes()) else {
            return false;
        };
        let engine = base64::engine::general_purpose::STANDARD;
        let mut parts = rest.split(|byte| *byte == b'.');
        matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(node), Some(key), None) if engine.decode(node).is_ok() && engine.decode(key).is_ok()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_opaque_unique_and_recognisable() {
        let replies = DirectReplies::default();
        let (events, _receiver) = tokio::sync::mpsc::unbounded_channel();
        let consumer = ReplyConsumer {
            connection: 7,
            events,
            channel: 1,
            tag: ShortString::from_static("amq.ctag-x"),
        };
        let first = replies.register(consumer.clone());
        let second = replies.register(consumer);
        assert_ne!(first, second);
        assert!(DirectReplies::is_address(&first));
        assert!(!DirectReplies::is_address(b"amq.rabbitmq.reply-to"));
        assert!(!DirectReplies::is_address(
            b"amq.rabbitmq.reply-to.not.base64!"
        ));
        assert_eq!(replies.lookup(&first).map(|c| c.channel), Some(1));
        replies.unregister(&first);
        assert!(replies.lookup(&first).is_none());
    }
}
