//! Consumers of a classic queue: registration (exclusive use, single active consumer, priority),
//! removal with fail-over, and delivery to those with room.

use warren_wire::ShortString;

use crate::error::AmqpError;
use crate::events::Delivery;
use crate::queue::ready::REDELIVERED;
use crate::queue::{ConsumerSpec, DELIVERY_CREDIT};

use super::{Outbox, QueueState, Unacked};

#[derive(Debug)]
pub(super) struct Consumer {
    pub(super) id: u64,
    pub(super) spec: ConsumerSpec,
    pub(super) priority: i64,
    pub(super) credit: u32,
    pub(super) unacked: u32,
}

impl Consumer {
    fn has_room(&self) -> bool {
        self.credit > 0
            && (self.spec.no_ack
                || self.spec.prefetch == 0
                || self.unacked < u32::from(self.spec.prefetch))
    }
}

impl QueueState {
    pub(super) fn consume(&mut self, spec: ConsumerSpec) -> Result<(), AmqpError> {
        let sac = self.config().single_active_consumer;
        let exclusive_use = (spec.exclusive && (sac || !self.consumers.is_empty()))
            || self
                .consumers
                .iter()
                .any(|consumer| consumer.spec.exclusive);
        if exclusive_use {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.handle.name, self.handle.vhost
            )));
        }
        let priority = crate::queue::arguments::consumer_priority(
            &spec.arguments,
            &self.handle.name,
            &self.handle.vhost,
        )?;
        let id = self.next_consumer_id;
        self.next_consumer_id += 1;
        self.consumers.push(Consumer {
            id,
            spec,
            priority,
            credit: DELIVERY_CREDIT,
            unacked: 0,
        });
        if sac && self.active.is_none() {
            // The first consumer to arrive is active, whatever its priority.
            self.active = Some(id);
        }
        self.had_consumers = true;
        Ok(())
    }

    pub(super) fn remove_consumers(&mut self, now: u64, mut remove: impl FnMut(&Consumer) -> bool) {
        let before = self.consumers.len();
        self.consumers.retain(|consumer| !remove(consumer));
        if self.consumers.len() == before {
            return;
        }
        if self.next_consumer >= self.consumers.len() {
            self.next_consumer = 0;
        }
        if let Some(active) = self.active
            && !self.consumers.iter().any(|consumer| consumer.id == active)
        {
            // Fail-over: the highest priority, then the earliest registered.
            self.active = self
                .consumers
                .iter()
                .enumerate()
                .max_by_key(|(index, consumer)| (consumer.priority, std::cmp::Reverse(*index)))
                .map(|(_, consumer)| consumer.id);
        }
        if self.consumers.is_empty() {
            self.last_used = now;
            if self.handle.auto_delete && self.had_consumers {
                // RabbitMQ deletes an auto-delete queue when its last consumer goes.
                self.deleted = true;
            }
        }
    }

    /// Hands ready messages to consumers with room: the highest consumer priority first,
    /// round-robin among equals; with single active consumer, only the active one. Stops at a
    /// head that is on disk until it is read back.
    pub fn deliver(&mut self, now: u64, outbox: &mut Outbox) {
        if !self.consumers.is_empty() {
            loop {
                self.expire_heads(now, outbox);
                let Some(head) = self.ready.head() else { break };
                if !head.is_resident() && self.ready.is_fifo() {
                    break;
                }
                let Some(index) = self.next_consumer_with_room() else {
                    break;
                };
                let mut queued = self
                    .pop_ready()
                    .expect("invariant: checked non-empty above");
                let Some(message) = self.resident_message(&mut queued) else {
                    self.forget(queued);
                    continue;
                };
                let consumer = &mut self.consumers[index];
                consumer.credit -= 1;
                let needs_ack = !consumer.spec.no_ack;
                if needs_ack {
                    consumer.unacked += 1;
                }
                let delivery = Delivery {
                    channel: consumer.spec.channel.channel,
                    consumer_tag: consumer.spec.tag.clone(),
                    queue: Some(self.handle.clone()),
                    message_id: queued.id,
                    message,
                    redelivered: queued.is(REDELIVERED),
                    needs_ack,
                };
                let (connection, events) = (
                    consumer.spec.channel.connection,
                    consumer.spec.events.clone(),
                );
                let channel = consumer.spec.channel;
                let consumer_id = consumer.id;
                outbox.deliver(connection, &events, delivery);
                if needs_ack {
                    self.note_delivered(&queued);
                    self.unacked.insert(
                        queued.id,
                        Unacked {
                            queued,
                            channel,
                            consumer: Some(consumer_id),
                        },
                    );
                } else {
                    self.forget(queued);
                }
            }
        }
        self.request_page_in(outbox);
    }

    fn next_consumer_with_room(&mut self) -> Option<usize> {
        if let Some(active) = self.active {
            let index = self
                .consumers
                .iter()
                .position(|consumer| consumer.id == active)?;
            let consumer = &self.consumers[index];
            let ready =
                consumer.has_room() && (consumer.spec.no_ack || consumer.spec.gate.try_acquire());
            return ready.then_some(index);
        }
        let count = self.consumers.len();
        let top = self
            .consumers
            .iter()
            .filter(|consumer| consumer.has_room())
            .map(|consumer| consumer.priority)
            .max()?;
        for pass in [true, false] {
            for offset in 0..count {
                let index = (self.next_consumer + offset) % count;
                let consumer = &self.consumers[index];
                // First pass: the top priority; second: lower ones, when every top consumer's
                // channel is at its prefetch.
                let eligible = if pass {
                    consumer.priority == top
                } else {
                    consumer.priority < top
                };
                if !eligible || !consumer.has_room() {
                    continue;
                }
                if !consumer.spec.no_ack && !consumer.spec.gate.try_acquire() {
                    continue;
                }
                self.next_consumer = (index + 1) % count;
                return Some(index);
            }
        }
        None
    }

    /// Consumer tags, in registration order.
    pub fn consumer_tags(&self) -> Vec<ShortString> {
        self.consumers
            .iter()
            .map(|consumer| consumer.spec.tag.clone())
            .collect()
    }
}
