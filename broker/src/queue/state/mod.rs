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

mod consumers;
mod limits;
mod outbox;
mod persist;
mod publish;
mod settle;

use crate::queue::dispatch::ServiceOrder;
use consumers::Consumer;
pub(super) use outbox::Outbox;

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio::sync::oneshot;
use warren_storage::Stream;

use super::arguments::QueueConfig;
use super::counters::{CountersSnapshot, Totals};
use super::ready::{Queued, REDELIVERED, Ready};
use super::storage::QueueStorage;
use super::{QueueCommand, QueueHandle, QueueStats, StorageEvent};
use crate::error::{AmqpError, AmqpResult};
use crate::queue::events::{ChannelKey, ConnectionEvent, ConnectionId, EventSender};

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
struct Publisher {
    events: EventSender,
    processed: u32,
}

/// One classic queue's messages, consumers and publishers.
#[derive(Debug)]
pub struct QueueState {
    handle: QueueHandle,
    storage: Box<dyn QueueStorage>,
    ready: Ready,
    unacked: HashMap<u64, Unacked>,
    /// By id, which grows with registration: iteration is in registration order.
    consumers: BTreeMap<u64, Consumer>,
    /// Consumers (ids) in service order.
    order: ServiceOrder<u64>,
    /// With single active consumer: the one that gets messages.
    active: Option<u64>,
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
    /// What it has done so far, for the read model.
    totals: Totals,
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
            consumers: BTreeMap::new(),
            order: ServiceOrder::default(),
            active: None,
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
            totals: Totals::default(),
        }
    }

    pub(super) fn config(&self) -> &QueueConfig {
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
                    .values_mut()
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
            QueueCommand::Storage(StorageEvent::Persisted) => {
                let done = self.storage.take_done();
                self.persisted(done, outbox);
                self.grant_credit(None, outbox);
            }
            QueueCommand::Storage(StorageEvent::PagedIn { messages }) => self.paged_in(messages),
            QueueCommand::Storage(StorageEvent::Relocate { stream, segment }) => {
                self.relocate(stream, segment)
            }
        }
    }

    /// The queue's numbers for the read model.
    pub fn counters(&self) -> CountersSnapshot {
        CountersSnapshot {
            ready: self.ready.len() as u64,
            unacknowledged: self.unacked.len() as u64,
            ready_bytes: 0,
            consumers: self.consumers.len() as u64,
            totals: self.totals,
        }
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
        self.order = ServiceOrder::default();
        for consumer in std::mem::take(&mut self.consumers).into_values() {
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

    /// Unacknowledged deliveries.
    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }
}

#[cfg(test)]
mod tests;
