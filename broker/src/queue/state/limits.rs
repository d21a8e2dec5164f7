//! A classic queue's limits: length and bytes (`drop-head`, `reject-publish`), expiry at the
//! head, and handing what leaves for those reasons to dead-lettering.

use std::sync::Arc;

use crate::message::Message;
use crate::message::Reason;
use crate::queue::ready::Queued;

use super::{Outbox, QueueState};

impl QueueState {
    pub(super) fn would_overflow(&self, message: &Message) -> bool {
        let config = self.config();
        config
            .max_length
            .is_some_and(|max| self.ready.len() as u64 + 1 > max)
            || config
                .max_length_bytes
                .is_some_and(|max| self.ready.bytes() + message.body.len() as u64 > max)
    }

    fn is_over_limit(&self) -> bool {
        let config = self.config();
        config
            .max_length
            .is_some_and(|max| self.ready.len() as u64 > max)
            || config
                .max_length_bytes
                .is_some_and(|max| self.ready.bytes() > max)
    }

    pub(super) fn drop_head_while_over_limit(&mut self, now: u64, outbox: &mut Outbox) {
        while self.is_over_limit() {
            let Some(head) = self.pop_ready() else {
                return;
            };
            self.dead_letter_queued(head, Reason::Maxlen, now, outbox);
        }
    }

    /// Removes expired messages from the head (dead-lettering them if the queue has a DLX).
    pub(super) fn expire_heads(&mut self, now: u64, outbox: &mut Outbox) {
        while self.ready.head().is_some_and(|head| head.is_expired(now)) {
            let head = self.pop_ready().expect("invariant: head checked above");
            self.dead_letter_queued(head, Reason::Expired, now, outbox);
        }
    }

    /// Dead-letters (or drops, without a DLX) a message that is leaving the queue.
    pub(super) fn dead_letter_queued(
        &mut self,
        mut queued: Queued,
        reason: Reason,
        _now: u64,
        outbox: &mut Outbox,
    ) {
        if self.config().dead_letter_exchange.is_some()
            && let Some(message) = self.resident_message(&mut queued)
        {
            self.dead_letter(message, reason, outbox);
        }
        self.forget(queued);
    }

    /// Hands a message to the queue's task for dead-lettering, or drops it without a DLX.
    pub(super) fn dead_letter(
        &mut self,
        message: Arc<Message>,
        reason: Reason,
        outbox: &mut Outbox,
    ) {
        if self.config().dead_letter_exchange.is_some() {
            outbox.dead_letters.push((message, reason));
        }
    }
}
