//! The state of one classic queue and its rules, with no I/O of its own.
//!
//! [`QueueState::handle`] applies a command, [`QueueState::tick`] applies the passage of time
//! (message TTL at the head, queue expiry) and [`QueueState::deliver`] hands ready messages to
//! consumers that have room. All three take `now` (wall-clock milliseconds) and write what must be
//! told to connections, and what must be dead-lettered or read from disk, into an [`Outbox`],
//! which the queue's task acts on once per batch; writes go to its [`QueueStorage`]. Invariants:
//! - a message is in exactly one of `ready` and `unacked`, or gone;
//! - within a priority, `ready` is ordered by message id, so a requeued message goes back to where
//!   it was;
//! - a consumer never holds more unacknowledged deliveries than its prefetch, nor its channel more
//!   than the channel's, and never receives more than its delivery credit allows;
//! - only the head can expire (RabbitMQ's classic-queue rule), so expiring a million messages with
//!   the same TTL costs what expiring them does, not a scan of the queue each time;
//! - a persistent message of a durable queue is confirmed only once its record is synced, or once
//!   it is settled before the writer took it (then it is never written).
//!
//! Persistence and paging live in [`persist`].

mod persist;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::oneshot;
use warren_storage::{Position, Stream};
use warren_wire::ShortString;

use super::arguments::{Overflow, QueueConfig};
use super::ready::{Queued, REDELIVERED, Ready};
use super::storage::QueueStorage;
use super::{
    ConsumerSpec, DELIVERY_CREDIT, GetResult, Incoming, PUBLISH_CREDIT_MORE_AFTER, QueueCommand,
    QueueHandle, QueueStats, Settlement,
};
use crate::error::{AmqpError, AmqpResult};
use crate::events::{
    ChannelKey, ConnectionEvent, ConnectionId, Delivery, EventSender, PublishOutcome,
};
use crate::message::Message;
use crate::message::Reason;

/// Bytes of this queue's records that may wait for the disk before publishers stop getting
/// credit.
const WRITE_BACKLOG: u64 = 16 * 1024 * 1024;

/// Memory a queue may use for resident message bodies before it pages its tail out to disk.
pub(crate) const MEMORY_BUDGET: u64 = 16 * 1024 * 1024;

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
    priority: i64,
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

/// What a batch of commands produced for connections, for dead-lettering and for reads.
#[derive(Debug, Default)]
pub struct Outbox {
    deliveries: Vec<(ConnectionId, EventSender, Vec<Delivery>)>,
    settled: HashMap<ConnectionId, Vec<PublishOutcome>>,
    credit: Vec<(ConnectionId, u32)>,
    notices: Vec<(EventSender, ConnectionEvent)>,
    /// Messages to dead-letter, with why.
    pub dead_letters: Vec<(Arc<Message>, Reason)>,
    /// Messages to read back from disk: (id, stream, position).
    pub page_in: Vec<(u64, Stream, Position)>,
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

    fn settle(&mut self, publisher: ConnectionId, confirm: Option<(u16, u64)>, accepted: bool) {
        if let Some((channel, sequence)) = confirm {
            self.settled
                .entry(publisher)
                .or_default()
                .push(PublishOutcome {
                    channel,
                    sequence,
                    accepted,
                });
        }
    }

    /// Sends everything to the connections. A closed mailbox only means the connection is gone.
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
    storage: Box<dyn QueueStorage>,
    ready: Ready,
    unacked: HashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    /// With single active consumer: the one that gets messages.
    active: Option<u64>,
    next_consumer: usize,
    next_consumer_id: u64,
    next_message_id: u64,
    publishers: HashMap<ConnectionId, Publisher>,
    had_consumers: bool,
    /// When the queue last had a use that renews `x-expires` (ms).
    last_used: u64,
    deleted: bool,
    delete_reply: Option<(oneshot::Sender<AmqpResult<u32>>, u32)>,
    /// Publishes waiting for their record to be synced: id -> (publisher, channel and sequence).
    awaiting_sync: HashMap<u64, (ConnectionId, (u16, u64))>,
    /// Messages settled while their write was in the writer's hands: id -> stream.
    settled_while_writing: HashMap<u64, Stream>,
    /// Ids of durable messages that left the queue in this batch (one record per batch).
    settled_ids: Vec<u64>,
    /// Ids of durable messages delivered in this batch.
    delivered_ids: Vec<u64>,
    /// Leading entries of `ready` that are resident (FIFO queues page out the rest).
    resident: usize,
    /// Bytes of resident messages (bodies, properties and a fixed overhead).
    resident_bytes: u64,
    /// Ids being read back from disk.
    reading: HashSet<u64>,
    /// Publisher confirms decided outside a command that has the outbox at hand.
    confirmations: Vec<(ConnectionId, (u16, u64), bool)>,
}

impl QueueState {
    /// A queue with the messages recovered from disk (oldest first), if any.
    pub(crate) fn new(
        handle: QueueHandle,
        now: u64,
        storage: Box<dyn QueueStorage>,
        recovered: Vec<Queued>,
    ) -> QueueState {
        let mut ready = Ready::new(handle.config.max_priority);
        let next_message_id = recovered.last().map_or(0, |last| last.id + 1);
        for queued in recovered {
            ready.push(queued);
        }
        QueueState {
            handle,
            storage,
            ready,
            unacked: HashMap::new(),
            consumers: Vec::new(),
            active: None,
            next_consumer: 0,
            next_consumer_id: 0,
            next_message_id,
            publishers: HashMap::new(),
            had_consumers: false,
            last_used: now,
            deleted: false,
            delete_reply: None,
            awaiting_sync: HashMap::new(),
            settled_while_writing: HashMap::new(),
            settled_ids: Vec::new(),
            delivered_ids: Vec::new(),
            resident: 0,
            resident_bytes: 0,
            reading: HashSet::new(),
            confirmations: Vec::new(),
        }
    }

    fn config(&self) -> &QueueConfig {
        &self.handle.config
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

    /// When [`QueueState::tick`] next has something to do (ms), if ever.
    pub fn next_wakeup(&self) -> Option<u64> {
        let expiry = self.ready.next_expiry();
        let unused = match self.config().expires {
            Some(expires) if self.consumers.is_empty() => Some(self.last_used + expires),
            _ => None,
        };
        match (expiry, unused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies the passage of time: expired heads go, an unused queue past `x-expires` is
    /// deleted (its messages are not dead-lettered, as in RabbitMQ).
    pub fn tick(&mut self, now: u64, outbox: &mut Outbox) {
        if let Some(expires) = self.config().expires
            && self.consumers.is_empty()
            && now >= self.last_used + expires
        {
            tracing::debug!(queue = %self.handle.name, "deleting queue on expiry after {expires} ms");
            self.deleted = true;
            return;
        }
        self.expire_heads(now, outbox);
    }

    /// Applies one command.
    pub fn handle(&mut self, command: QueueCommand, now: u64, outbox: &mut Outbox) {
        if self.deleted && !matches!(command, QueueCommand::Publish { .. }) {
            // Deleted within this batch: requests see their reply dropped, which reads as "no
            // such queue"; publishes are still confirmed.
            return;
        }
        match command {
            QueueCommand::Publish {
                publisher,
                messages,
            } => self.publish(publisher, messages, now, outbox),
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
                self.remove_consumers(now, |consumer| {
                    consumer.spec.channel == channel && consumer.spec.tag == tag
                });
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            QueueCommand::Settle {
                channel,
                message_ids,
                outcome,
            } => self.settle(channel, &message_ids, outcome, now, outbox),
            QueueCommand::Get {
                channel,
                no_ack,
                reply,
            } => {
                self.last_used = now;
                self.expire_heads(now, outbox);
                let _ = reply.send(self.get(channel, no_ack, outbox));
            }
            QueueCommand::Stats { renew, reply } => {
                if renew {
                    self.last_used = now;
                }
                let _ = reply.send(self.stats());
            }
            QueueCommand::Purge { reply } => {
                let purged = self.ready.drain();
                let count = purged.len() as u32;
                self.resident = 0;
                self.resident_bytes = 0;
                for queued in purged {
                    self.forget(queued);
                }
                let _ = reply.send(count);
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
            QueueCommand::ChannelClosed { channel } => self.channel_closed(channel, now, outbox),
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
                    .map(|returned| {
                        let mut queued = Queued::new(returned.message_id, returned.message, 0);
                        queued.set(REDELIVERED, returned.redelivered);
                        queued
                    })
                    .collect::<Vec<_>>();
                // The client never saw them: back to their place, flags unchanged. No-ack
                // deliveries had left the queue for good, so they are not durable any more.
                for queued in &returned {
                    self.resident_bytes += Self::cost(queued);
                }
                self.resident += returned.len();
                self.ready.requeue(returned);
            }
            QueueCommand::Persisted => {
                let done = self.storage.take_done();
                self.persisted(done, outbox);
                self.grant_credit(None, outbox);
            }
            QueueCommand::PagedIn { messages } => self.paged_in(messages),
            QueueCommand::Relocate { stream, segment } => self.relocate(stream, segment),
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    /// The expiry of a message entering the queue: the lower of the queue's TTL and its own.
    fn expiry(&self, message: &Message, now: u64) -> u64 {
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

    fn would_overflow(&self, message: &Message) -> bool {
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

    fn publish(
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

    fn drop_head_while_over_limit(&mut self, now: u64, outbox: &mut Outbox) {
        while self.is_over_limit() {
            let Some(head) = self.pop_ready() else {
                return;
            };
            self.dead_letter_queued(head, Reason::Maxlen, now, outbox);
        }
    }

    /// Removes expired messages from the head (dead-lettering them if the queue has a DLX).
    fn expire_heads(&mut self, now: u64, outbox: &mut Outbox) {
        while self.ready.head().is_some_and(|head| head.is_expired(now)) {
            let head = self.pop_ready().expect("invariant: head checked above");
            self.dead_letter_queued(head, Reason::Expired, now, outbox);
        }
    }

    /// Dead-letters (or drops, without a DLX) a message that is leaving the queue.
    fn dead_letter_queued(
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
    fn dead_letter(&mut self, message: Arc<Message>, reason: Reason, outbox: &mut Outbox) {
        if self.config().dead_letter_exchange.is_some() {
            outbox.dead_letters.push((message, reason));
        }
    }

    fn consume(&mut self, spec: ConsumerSpec) -> Result<(), AmqpError> {
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
        let priority = super::arguments::consumer_priority(
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

    fn remove_consumers(&mut self, now: u64, mut remove: impl FnMut(&Consumer) -> bool) {
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

    fn settle(
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
                && let Some(consumer) = self
                    .consumers
                    .iter_mut()
                    .find(|consumer| consumer.id == consumer_id)
            {
                consumer.unacked = consumer.unacked.saturating_sub(1);
            }
            match outcome {
                Settlement::Ack => self.forget(unacked.queued),
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
    fn requeue(&mut self, mut messages: Vec<Queued>, now: u64, outbox: &mut Outbox) {
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

    fn get(&mut self, channel: ChannelKey, no_ack: bool, outbox: &mut Outbox) -> Option<GetResult> {
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
    /// there was one, and drops every message (their records are released; the queue's deletion
    /// in the metadata makes the rest of its records dead at the next start).
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
        // Publishes waiting for a sync are confirmed: the queue is gone, as RabbitMQ does.
        for (_, (publisher, confirm)) in self.awaiting_sync.drain() {
            outbox.settle(publisher, Some(confirm), true);
        }
        let ready = self.ready.drain();
        let unacked: Vec<Queued> = self
            .unacked
            .drain()
            .map(|(_, unacked)| unacked.queued)
            .collect();
        for queued in ready.into_iter().chain(unacked) {
            self.release_quietly(queued);
        }
        self.settled_ids.clear();
        self.deleted = true;
    }

    fn channel_closed(&mut self, channel: ChannelKey, now: u64, outbox: &mut Outbox) {
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

    /// Unacknowledged deliveries.
    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }
}
