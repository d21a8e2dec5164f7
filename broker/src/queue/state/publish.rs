//! Publishing into a classic queue: ids, expiry on entry, the overflow rule, and the publish
//! credit publishers earn.

use crate::message::Message;
use crate::message::Reason;
use crate::queue::arguments::Overflow;
use crate::queue::events::ConnectionId;
use crate::queue::ready::Queued;
use crate::queue::{Incoming, PUBLISH_CREDIT_MORE_AFTER};

use super::{Outbox, QueueState};

/// Bytes of this queue's records that may wait for the disk before publishers stop getting
/// credit.
const WRITE_BACKLOG: u64 = 16 * 1024 * 1024;

impl QueueState {
    fn next_id(&mut self) -> u64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    /// The expiry of a message entering the queue: the lower of the queue's TTL and its own.
    pub(super) fn expiry(&self, message: &Message, now: u64) -> u64 {
        // Checked when it was published, so it parses.
        let own = message.summary.expiration.and_then(|range| {
            crate::message::parse_expiration(&message.properties.slice(range)).ok()
        });
        match (self.config().message_ttl, own) {
            (None, None) => 0,
            (Some(ttl), None) | (None, Some(ttl)) => now + ttl,
            (Some(a), Some(b)) => now + a.min(b),
        }
    }

    pub(super) fn publish(
        &mut self,
        publisher: ConnectionId,
        messages: Vec<Incoming>,
        now: u64,
        outbox: &mut Outbox,
    ) {
        let count = messages.len() as u32;
        let limited = self.config().is_limited();
        let overflow = self.config().overflow;
        for incoming in messages {
            if limited && overflow != Overflow::DropHead && self.would_overflow(&incoming.message) {
                if overflow == Overflow::RejectPublishDlx {
                    self.dead_letter(incoming.message, Reason::Maxlen, outbox);
                }
                outbox.settle(publisher, incoming.confirm, false);
                continue;
            }
            let id = self.next_id();
            let expires_at = self.expiry(&incoming.message, now);
            let durable = self.handle.durable && incoming.message.is_persistent();
            let mut queued = Queued::new(id, incoming.message, expires_at);
            if durable {
                self.write_durable(&mut queued);
                if let Some(confirm) = incoming.confirm {
                    self.awaiting_sync.insert(id, (publisher, confirm));
                }
            } else {
                outbox.settle(publisher, incoming.confirm, true);
            }
            self.enqueue(queued);
            self.totals.published += 1;
            if limited && overflow == Overflow::DropHead {
                self.drop_head_while_over_limit(now, outbox);
            }
        }
        if let Some(entry) = self.publishers.get_mut(&publisher) {
            entry.processed += count;
        }
        self.grant_credit(Some(publisher), outbox);
    }

    /// Grants publishers (one, or all) the credit they have earned, unless too much of what this
    /// queue wrote still waits for the disk: then publishers wait too, and a slow disk slows
    /// publishing instead of filling memory with records on their way to it.
    pub(super) fn grant_credit(&mut self, only: Option<ConnectionId>, outbox: &mut Outbox) {
        if self.storage.unwritten_bytes() > WRITE_BACKLOG {
            return;
        }
        for (publisher, entry) in &mut self.publishers {
            if only.is_some_and(|only| only != *publisher) {
                continue;
            }
            if entry.processed >= PUBLISH_CREDIT_MORE_AFTER {
                outbox.credit.push((*publisher, entry.processed));
                entry.processed = 0;
            }
        }
    }
}
