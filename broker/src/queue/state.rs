//! The state of one classic queue and its rules, with no I/O.
//!
//! [`QueueState::handle`] applies a command and [`QueueState::deliver`] hands ready messages to
//! consumers that have room; both write what must be told to connections into an [`Outbox`],
//! which the queue's task sends once per batch of commands. Invariants:
//! - a message is in exactly one of `ready` and `unacked`, or gone;
//! - `ready` is ordered by message id, so a requeued message goes back to where it was;
//! - a consumer never holds more unacknowledged deliveries than its prefetch, nor its channel more
//!   than the channel's, and never receives more than its delivery credit allows.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::oneshot;
use warren_wire::ShortString;

use super::{
    ConsumerSpec, DELIVERY_CREDIT, GetResult, Incoming, PUBLISH_CREDIT_MORE_AFTER, QueueCommand,
    QueueHandle, QueueStats, Settlement,
};
use crate::error::{AmqpError, AmqpResult};
use crate::events::{
    ChannelKey, ConnectionEvent, ConnectionId, Delivery, EventSender, PublishOutcome,
};
use crate::message::Message;

#[derive(Debug)]
struct Queued {
    id: u64,
    message: Arc<Message>,
    redelivered: bool,
}

#[derive(Debug)]
struct Unacked {
    queued: Queued,
    channel: ChannelKey,
    /// The consumer it was delivered to; `None` for `basic.get`.
    consumer: Option<u64>,
}

#[derive(Debug)]
struct Consumer {
    id: u64,
    spec: ConsumerSpec,
    credit: u32,
    unacked: u32,
}

impl Consumer {
    fn has_room(&self) -> bool {
        self.credit > 0
            && (self.spec.no_ack
                || self.spec.prefetch == 0
                || self.unacked < u32::from(self.spec.prefetch))
    }
}

#[derive(Debug)]
struct Publisher {
    events: EventSender,
    processed: u32,
}

/// What a batch of commands produced for connections.
#[derive(Debug, Default)]
pub struct Outbox {
    deliveries: Vec<(ConnectionId, EventSender, Vec<Delivery>)>,
    settled: HashMap<ConnectionId, Vec<PublishOutcome>>,
    credit: Vec<(ConnectionId, u32)>,
    notices: Vec<(EventSender, ConnectionEvent)>,
}

impl Outbox {
    fn deliver(&mut self, connection: ConnectionId, events: &EventSender, delivery: Delivery) {
        match self
            .deliveries
            .iter_mut()
            .find(|(id, _, _)| *id == connection)
        {
            Some((_, _, list)) => list.push(delivery),
            None => self
                .deliveries
                .push((connection, events.clone(), vec![delivery])),
        }
    }

    /// Sends everything to the connections; returns nothing, since a closed mailbox only means
    /// the connection is gone (its channels' `ChannelClosed` will follow or has been handled).
    pub fn flush(&mut self, state: &QueueState) {
        for (_, events, deliveries) in self.deliveries.drain(..) {
            let _ = events.send(ConnectionEvent::Deliveries(deliveries));
        }
        for (publisher, outcomes) in self.settled.drain() {
            if let Some(entry) = state.publishers.get(&publisher) {
                let _ = entry.events.send(ConnectionEvent::Settled(outcomes));
            }
        }
        for (publisher, amount) in self.credit.drain(..) {
            if let Some(entry) = state.publishers.get(&publisher) {
                let _ = entry.events.send(ConnectionEvent::PublishCredit {
                    queue: state.handle.id(),
                    amount,
                });
            }
        }
        for (events, notice) in self.notices.drain(..) {
            let _ = events.send(notice);
        }
    }
}

/// One classic queue's messages, consumers and publishers.
#[derive(Debug)]
pub struct QueueState {
    handle: QueueHandle,
    ready: VecDeque<Queued>,
    unacked: HashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_consumer_id: u64,
    next_message_id: u64,
    publishers: HashMap<ConnectionId, Publisher>,
    had_consumers: bool,
    deleted: bool,
    delete_reply: Option<(oneshot::Sender<AmqpResult<u32>>, u32)>,
}

impl QueueState {
    /// An empty queue.
    pub fn new(handle: QueueHandle) -> QueueState {
        QueueState {
            handle,
            ready: VecDeque::new(),
            unacked: HashMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            next_consumer_id: 0,
            next_message_id: 0,
            publishers: HashMap::new(),
            had_consumers: false,
            deleted: false,
            delete_reply: None,
        }
    }

    /// The handle of this queue.
    pub fn queue(&self) -> &QueueHandle {
        &self.handle
    }

    /// Whether the queue has been deleted and its task should stop.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// Messages ready for delivery.
    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    /// Applies one command.
    pub fn handle(&mut self, command: QueueCommand, outbox: &mut Outbox) {
        if self.deleted && !matches!(command, QueueCommand::Publish { .. }) {
            // Deleted within this batch: requests see their reply dropped, which reads as "no
            // such queue"; publishes are still confirmed.
            return;
        }
        match command {
            QueueCommand::Publish {
                publisher,
                messages,
            } => self.publish(publisher, messages, outbox),
            QueueCommand::AttachPublisher { publisher, events } => {
                self.publishers.insert(
                    publisher,
                    Publisher {
                        events,
                        processed: 0,
                    },
                );
            }
            QueueCommand::DetachPublisher { publisher } => {
                self.publishers.remove(&publisher);
            }
            QueueCommand::Consume { consumer, reply } => {
                let _ = reply.send(self.consume(consumer));
            }
            QueueCommand::Cancel {
                channel,
                tag,
                reply,
            } => {
                self.consumers.retain(|consumer| {
                    !(consumer.spec.channel == channel && consumer.spec.tag == tag)
                });
                self.after_consumer_removed();
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            QueueCommand::Settle {
                channel,
                message_ids,
                outcome,
            } => self.settle(channel, &message_ids, outcome),
            QueueCommand::Get {
                channel,
                no_ack,
                reply,
            } => {
                let _ = reply.send(self.get(channel, no_ack));
            }
            QueueCommand::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            QueueCommand::Purge { reply } => {
                let purged = self.ready.len() as u32;
                self.ready.clear();
                let _ = reply.send(purged);
            }
            QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            } => match self.check_delete(if_unused, if_empty) {
                Ok(count) => {
                    self.deleted = true;
                    // Answered by `shut_down`, once the queue has left its vhost.
                    self.delete_reply = Some((reply, count));
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            QueueCommand::ChannelClosed { channel } => self.channel_closed(channel),
            QueueCommand::Credit {
                channel,
                tag,
                amount,
            } => {
                if let Some(consumer) = self
                    .consumers
                    .iter_mut()
                    .find(|consumer| consumer.spec.channel == channel && consumer.spec.tag == tag)
                {
                    consumer.credit = consumer.credit.saturating_add(amount);
                }
            }
            QueueCommand::Kick => {}
            QueueCommand::Return { messages } => {
                let returned = messages
                    .into_iter()
                    .map(|returned| Queued {
                        id: returned.message_id,
                        message: returned.message,
                        redelivered: returned.redelivered,
                    })
                    .collect();
                // The client never saw them: back to their place, flags unchanged.
                self.requeue(returned, false);
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    fn publish(&mut self, publisher: ConnectionId, messages: Vec<Incoming>, outbox: &mut Outbox) {
        let count = messages.len() as u32;
        for incoming in messages {
            let id = self.next_id();
            self.ready.push_back(Queued {
                id,
                message: incoming.message,
                redelivered: false,
            });
            if let Some((channel, sequence)) = incoming.confirm {
                outbox
                    .settled
                    .entry(publisher)
                    .or_default()
                    .push(PublishOutcome {
                        channel,
                        sequence,
                        accepted: true,
                    });
            }
        }
        if let Some(entry) = self.publishers.get_mut(&publisher) {
            entry.processed += count;
            if entry.processed >= PUBLISH_CREDIT_MORE_AFTER {
                outbox.credit.push((publisher, entry.processed));
                entry.processed = 0;
            }
        }
    }

    fn consume(&mut self, spec: ConsumerSpec) -> Result<(), AmqpError> {
        let exclusive_use = (spec.exclusive && !self.consumers.is_empty())
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
        let id = self.next_consumer_id;
        self.next_consumer_id += 1;
        self.consumers.push(Consumer {
            id,
            spec,
            credit: DELIVERY_CREDIT,
            unacked: 0,
        });
        self.had_consumers = true;
        Ok(())
    }

    fn after_consumer_removed(&mut self) {
        if self.next_consumer >= self.consumers.len() {
            self.next_consumer = 0;
        }
        if self.handle.auto_delete && self.had_consumers && self.consumers.is_empty() {
            // RabbitMQ deletes an auto-delete queue when its last consumer goes.
            self.deleted = true;
        }
    }

    fn settle(&mut self, channel: ChannelKey, message_ids: &[u64], outcome: Settlement) {
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
                && let Some(consumer) = self
                    .consumers
                    .iter_mut()
                    .find(|consumer| consumer.id == consumer_id)
            {
                consumer.unacked = consumer.unacked.saturating_sub(1);
            }
            match outcome {
                Settlement::Ack | Settlement::Discard => {}
                Settlement::Requeue => requeue.push(unacked.queued),
            }
        }
        self.requeue(requeue, true);
    }

    /// Puts messages back in id order among the ready ones, marked redelivered if asked.
    fn requeue(&mut self, mut messages: Vec<Queued>, mark_redelivered: bool) {
        if messages.is_empty() {
            return;
        }
        messages.sort_by_key(|queued| queued.id);
        if mark_redelivered {
            for queued in messages.iter_mut() {
                queued.redelivered = true;
            }
        }
        let all_before_ready = self
            .ready
            .front()
            .is_none_or(|front| messages.last().is_some_and(|last| last.id < front.id));
        if all_before_ready {
            for queued in messages.into_iter().rev() {
                self.ready.push_front(queued);
            }
        } else {
            for queued in messages {
                let at = self
                    .ready
                    .partition_point(|existing| existing.id < queued.id);
                self.ready.insert(at, queued);
            }
        }
    }

    fn get(&mut self, channel: ChannelKey, no_ack: bool) -> Option<GetResult> {
        let queued = self.ready.pop_front()?;
        let result = GetResult {
            message_id: queued.id,
            message: queued.message.clone(),
            redelivered: queued.redelivered,
            remaining: self.ready.len() as u32,
        };
        if !no_ack {
            self.unacked.insert(
                queued.id,
                Unacked {
                    queued,
                    channel,
                    consumer: None,
                },
            );
        }
        Some(result)
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            messages: self.ready.len() as u32,
            consumers: self.consumers.len() as u32,
        }
    }

    fn check_delete(&self, if_unused: bool, if_empty: bool) -> Result<u32, AmqpError> {
        let name = format!(
            "queue '{}' in vhost '{}'",
            self.handle.name, self.handle.vhost
        );
        if if_empty && !self.ready.is_empty() {
            return Err(AmqpError::precondition_failed(format!("{name} not empty")));
        }
        if if_unused && !self.consumers.is_empty() {
            return Err(AmqpError::precondition_failed(format!("{name} in use")));
        }
        Ok(self.ready.len() as u32)
    }

    /// Tells consumers and publishers that the queue is gone, answers the deletion request if
    /// there was one, and drops every message.
    pub fn shut_down(&mut self, outbox: &mut Outbox) {
        if let Some((reply, count)) = self.delete_reply.take() {
            let _ = reply.send(Ok(count));
        }
        for consumer in self.consumers.drain(..) {
            outbox.notices.push((
                consumer.spec.events.clone(),
                ConnectionEvent::ConsumerCancelled {
                    channel: consumer.spec.channel.channel,
                    consumer_tag: consumer.spec.tag.clone(),
                },
            ));
        }
        for publisher in self.publishers.values() {
            outbox.notices.push((
                publisher.events.clone(),
                ConnectionEvent::QueueGone {
                    queue: self.handle.id(),
                },
            ));
        }
        self.ready.clear();
        self.unacked.clear();
        self.deleted = true;
    }

    fn channel_closed(&mut self, channel: ChannelKey) {
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
        self.requeue(requeue, true);
        self.consumers
            .retain(|consumer| consumer.spec.channel != channel);
        self.after_consumer_removed();
    }

    /// Hands ready messages to consumers with room, round-robin.
    pub fn deliver(&mut self, outbox: &mut Outbox) {
        if self.consumers.is_empty() {
            return;
        }
        while !self.ready.is_empty() {
            let Some(index) = self.next_consumer_with_room() else {
                return;
            };
            let queued = self
                .ready
                .pop_front()
                .expect("invariant: checked non-empty above");
            let consumer = &mut self.consumers[index];
            consumer.credit -= 1;
            let needs_ack = !consumer.spec.no_ack;
            if needs_ack {
                consumer.unacked += 1;
            }
            let delivery = Delivery {
                channel: consumer.spec.channel.channel,
                consumer_tag: consumer.spec.tag.clone(),
                queue: self.handle.clone(),
                message_id: queued.id,
                message: queued.message.clone(),
                redelivered: queued.redelivered,
                needs_ack,
            };
            outbox.deliver(
                consumer.spec.channel.connection,
                &consumer.spec.events,
                delivery,
            );
            if needs_ack {
                let channel = consumer.spec.channel;
                let consumer = Some(consumer.id);
                self.unacked.insert(
                    queued.id,
                    Unacked {
                        queued,
                        channel,
                        consumer,
                    },
                );
            }
        }
    }

    fn next_consumer_with_room(&mut self) -> Option<usize> {
        let count = self.consumers.len();
        for offset in 0..count {
            let index = (self.next_consumer + offset) % count;
            let consumer = &self.consumers[index];
            if !consumer.has_room() {
                continue;
            }
            if !consumer.spec.no_ack && !consumer.spec.gate.try_acquire() {
                continue;
            }
            self.next_consumer = (index + 1) % count;
            return Some(index);
        }
        None
    }

    /// Consumer tags, in delivery order.
    pub fn consumer_tags(&self) -> Vec<ShortString> {
        self.consumers
            .iter()
            .map(|consumer| consumer.spec.tag.clone())
            .collect()
    }

    /// Unacknowledged deliveries.
    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }
}
