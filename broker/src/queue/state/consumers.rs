//! Consumers of a classic queue: registration (exclusive use, single active consumer, priority),
//! removal with fail-over, and delivery to those with room.

use warren_wire::ShortString;

use crate::error::AmqpError;
use crate::queue::dispatch::designate;
use crate::queue::events::Delivery;
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
                .values()
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
        self.consumers.insert(
            id,
            Consumer {
                id,
                spec,
                priority,
                credit: DELIVERY_CREDIT,
                unacked: 0,
            },
        );
        self.order.push(id);
        if sac && self.active.is_none() {
            // The first consumer to arrive is active, whatever its priority.
            self.active = Some(id);
        }
        self.had_consumers = true;
        Ok(())
    }

    pub(super) fn remove_consumers(&mut self, now: u64, mut remove: impl FnMut(&Consumer) -> bool) {
        let gone: Vec<u64> = self
            .consumers
            .values()
            .filter(|consumer| remove(consumer))
            .map(|consumer| consumer.id)
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            self.consumers.remove(id);
            self.order.remove(id);
        }
        if let Some(active) = self.active
            && !self.consumers.contains_key(&active)
        {
            // Fail-over: the highest priority, then the earliest registered.
            self.active = designate(
                self.consumers
                    .values()
                    .map(|consumer| (&consumer.id, consumer.priority, consumer.id)),
            )
            .copied();
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
                let Some(id) = self.next_consumer_with_room() else {
                    break;
                };
                let mut queued = self
                    .pop_ready()
                    .expect("invariant: checked non-empty above");
                let Some(message) = self.resident_message(&mut queued) else {
                    self.forget(queued);
                    continue;
                };
                let consumer = self
                    .consumers
                    .get_mut(&id)
                    .expect("invariant: the order holds registered consumers");
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
                self.totals.delivered += 1;
                self.totals.redelivered += u64::from(delivery.redelivered);
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

    /// The consumer that gets the next message, with a unit of its channel's prefetch taken.
    fn next_consumer_with_room(&mut self) -> Option<u64> {
        let admit = |consumer: &Consumer| consumer.spec.no_ack || consumer.spec.gate.try_acquire();
        if let Some(active) = self.active {
            let consumer = self.consumers.get(&active)?;
            return (consumer.has_room() && admit(consumer)).then_some(active);
        }
        let consumers = &self.consumers;
        self.order
            .next(
                |id| {
                    let consumer = &consumers[id];
                    consumer.has_room().then_some(consumer.priority)
                },
                |id| admit(&consumers[id]),
            )
            .copied()
    }

    /// Consumer tags, in registration order.
    pub fn consumer_tags(&self) -> Vec<ShortString> {
        self.consumers
            .values()
            .map(|consumer| consumer.spec.tag.clone())
            .collect()
    }
}
