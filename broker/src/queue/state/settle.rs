//! Settling what a classic queue delivered: acks, requeues in place, rejections to the
//! dead-letter exchange, `basic.get`, and what a closed channel held.

use crate::message::Reason;
use crate::queue::arguments::Overflow;
use crate::queue::events::ChannelKey;
use crate::queue::ready::{Queued, REDELIVERED};
use crate::queue::{GetResult, Settlement};

use super::{Outbox, QueueState, Unacked};

impl QueueState {
    pub(super) fn settle(
        &mut self,
        channel: ChannelKey,
        message_ids: &[u64],
        outcome: Settlement,
        now: u64,
        outbox: &mut Outbox,
    ) {
        let mut requeue = Vec::new();
        for id in message_ids {
            let Some(unacked) = self.unacked.remove(id) else {
                continue;
            };
            if unacked.channel != channel {
                // Not this channel's: put it back untouched.
                self.unacked.insert(*id, unacked);
                continue;
            }
            if let Some(consumer_id) = unacked.consumer
                && let Some(consumer) = self.consumers.get_mut(&consumer_id)
            {
                consumer.unacked = consumer.unacked.saturating_sub(1);
            }
            match outcome {
                Settlement::Ack => {
                    self.totals.acknowledged += 1;
                    self.forget(unacked.queued)
                }
                Settlement::Discard => {
                    self.dead_letter_queued(unacked.queued, Reason::Rejected, now, outbox)
                }
                Settlement::Requeue => requeue.push(unacked.queued),
            }
        }
        self.requeue(requeue, now, outbox);
    }

    /// Puts messages back where they were, marked redelivered; expired ones go at once and a
    /// drop-head queue trims itself back under its limit.
    pub(super) fn requeue(&mut self, mut messages: Vec<Queued>, now: u64, outbox: &mut Outbox) {
        if messages.is_empty() {
            return;
        }
        for queued in messages.iter_mut() {
            queued.set(REDELIVERED, true);
        }
        // Delivered messages are resident and older than any paged one: they rejoin the front.
        self.resident += messages.len();
        self.resident_bytes += messages.iter().map(Self::cost).sum::<u64>();
        self.ready.requeue(messages);
        if self.config().is_limited() && self.config().overflow == Overflow::DropHead {
            self.drop_head_while_over_limit(now, outbox);
        }
        self.expire_heads(now, outbox);
    }

    pub(super) fn get(
        &mut self,
        channel: ChannelKey,
        no_ack: bool,
        outbox: &mut Outbox,
    ) -> Option<GetResult> {
        let mut queued = self.pop_ready()?;
        let Some(message) = self.resident_message(&mut queued) else {
            // Unreadable: it cannot be delivered; drop it rather than wedge the queue.
            self.forget(queued);
            return None;
        };
        let result = GetResult {
            message_id: queued.id,
            message,
            redelivered: queued.is(REDELIVERED),
            remaining: self.ready.len() as u32,
        };
        self.totals.delivered += 1;
        self.totals.redelivered += u64::from(result.redelivered);
        if no_ack {
            self.forget(queued);
        } else {
            self.note_delivered(&queued);
            self.unacked.insert(
                queued.id,
                Unacked {
                    queued,
                    channel,
                    consumer: None,
                },
            );
        }
        self.request_page_in(outbox);
        Some(result)
    }

    pub(super) fn channel_closed(&mut self, channel: ChannelKey, now: u64, outbox: &mut Outbox) {
        let ids: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, unacked)| unacked.channel == channel)
            .map(|(id, _)| *id)
            .collect();
        let requeue = ids
            .into_iter()
            .filter_map(|id| self.unacked.remove(&id))
            .map(|unacked| unacked.queued)
            .collect();
        self.requeue(requeue, now, outbox);
        self.remove_consumers(now, |consumer| consumer.spec.channel == channel);
    }
}
