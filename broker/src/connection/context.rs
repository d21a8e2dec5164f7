//! What every channel of a connection shares: the session, the outbound frames, and the work
//! batched for queues during one round (publishes, settlements, returned credit).
//!
//! Batching: a round is everything the connection task does between two waits. Publishes and
//! acknowledgements for the same queue are gathered and sent as one command per queue at the end
//! of the round, so a read of hundreds of small publishes costs one mailbox operation per queue,
//! not one per message. Anything that must observe them (a `basic.get`, a declare-ok count, a
//! channel close) flushes the batch first.

use std::collections::HashMap;
use std::sync::Arc;

use warren_wire::{FieldTable, ShortString};

use super::writer::{HIGH_WATER, Outbound};
use crate::auth::{Permission, User};
use crate::broker::Broker;
use crate::queue::events::{
    ChannelKey, ConnectionEvent, ConnectionId, EventSender, PublishOutcome,
};
use crate::queue::{Incoming, PUBLISH_CREDIT_INITIAL, QueueCommand, QueueHandle, Settlement};
use crate::vhost::VHost;

/// What the client said it supports (`client-properties.capabilities`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Capabilities {
    pub consumer_cancel_notify: bool,
    pub authentication_failure_close: bool,
    pub connection_blocked: bool,
}

impl Capabilities {
    pub(crate) fn from_client_properties(properties: &FieldTable) -> Capabilities {
        let Some(warren_wire::FieldValue::Table(table)) = properties.get("capabilities") else {
            return Capabilities::default();
        };
        let flag = |name: &str| {
            table
                .get(name)
                .and_then(|value| value.as_bool())
                .unwrap_or(false)
        };
        Capabilities {
            consumer_cancel_notify: flag("consumer_cancel_notify"),
            authentication_failure_close: flag("authentication_failure_close"),
            connection_blocked: flag("connection.blocked"),
        }
    }
}

#[derive(Debug)]
struct PublishCredit {
    queue: QueueHandle,
    left: u32,
}

#[derive(Debug)]
struct SettleBatch {
    queue: QueueHandle,
    channel: u16,
    outcome: Settlement,
    message_ids: Vec<u64>,
}

/// A connection's shared state, lent to each channel as it handles a frame.
#[derive(Debug)]
pub(crate) struct Context {
    pub broker: Arc<Broker>,
    pub id: ConnectionId,
    pub name: String,
    pub user: Arc<User>,
    pub vhost: Arc<VHost>,
    pub permission: Arc<Permission>,
    pub out: Outbound,
    pub events: EventSender,
    pub frame_max: u32,
    pub channel_max: u16,
    pub capabilities: Capabilities,
    /// Exclusive queues this connection declared; deleted when it closes.
    pub exclusive_queues: Vec<QueueHandle>,
    credit: HashMap<u64, PublishCredit>,
    starved: usize,
    publishes: Vec<(QueueHandle, Vec<Incoming>)>,
    settles: Vec<SettleBatch>,
    owed: HashMap<(u64, u16, ShortString), (QueueHandle, u32)>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        broker: Arc<Broker>,
        id: ConnectionId,
        name: String,
        user: Arc<User>,
        vhost: Arc<VHost>,
        permission: Arc<Permission>,
        out: Outbound,
        events: EventSender,
        frame_max: u32,
        channel_max: u16,
        capabilities: Capabilities,
    ) -> Context {
        Context {
            broker,
            id,
            name,
            user,
            vhost,
            permission,
            out,
            events,
            frame_max,
            channel_max,
            capabilities,
            exclusive_queues: Vec::new(),
            credit: HashMap::new(),
            starved: 0,
            publishes: Vec::new(),
            settles: Vec::new(),
            owed: HashMap::new(),
        }
    }

    pub(crate) fn channel_key(&self, channel: u16) -> ChannelKey {
        ChannelKey {
            connection: self.id,
            channel,
        }
    }

    /// Whether some queue has run this connection out of publish credit.
    pub(crate) fn is_starved(&self) -> bool {
        self.starved > 0
    }

    /// Queues a message for `queue`, spending one unit of publish credit.
    pub(crate) fn enqueue(&mut self, queue: &QueueHandle, incoming: Incoming) {
        let credit = match self.credit.get_mut(&queue.id()) {
            Some(credit) => credit,
            None => {
                queue.send(QueueCommand::AttachPublisher {
                    publisher: self.id,
                    events: self.events.clone(),
                });
                self.credit.entry(queue.id()).or_insert(PublishCredit {
                    queue: queue.clone(),
                    left: PUBLISH_CREDIT_INITIAL,
                })
            }
        };
        credit.left = credit.left.saturating_sub(1);
        if credit.left == 0 {
            self.starved += 1;
        }
        match self
            .publishes
            .iter_mut()
            .find(|(target, _)| target.id() == queue.id())
        {
            Some((_, batch)) => batch.push(incoming),
            None => self.publishes.push((queue.clone(), vec![incoming])),
        }
    }

    /// A queue granted credit.
    pub(crate) fn grant(&mut self, queue: u64, amount: u32) {
        if let Some(credit) = self.credit.get_mut(&queue) {
            if credit.left == 0 && amount > 0 {
                self.starved -= 1;
            }
            credit.left = credit.left.saturating_add(amount);
        }
    }

    /// A queue is gone: its credit no longer holds the connection back.
    pub(crate) fn forget_queue(&mut self, queue: u64) {
        if let Some(credit) = self.credit.remove(&queue)
            && credit.left == 0
        {
            self.starved -= 1;
        }
    }

    /// Queues a settlement of a delivered message.
    pub(crate) fn settle(
        &mut self,
        queue: &QueueHandle,
        channel: u16,
        outcome: Settlement,
        message_id: u64,
    ) {
        if let Some(batch) = self.settles.last_mut()
            && batch.queue.id() == queue.id()
            && batch.channel == channel
            && batch.outcome == outcome
        {
            batch.message_ids.push(message_id);
            return;
        }
        self.settles.push(SettleBatch {
            queue: queue.clone(),
            channel,
            outcome,
            message_ids: vec![message_id],
        });
    }

    /// Notes a delivery to hand back as credit once the socket has taken it.
    pub(crate) fn owe_credit(&mut self, queue: &QueueHandle, channel: u16, tag: &ShortString) {
        self.owed
            .entry((queue.id(), channel, tag.clone()))
            .or_insert_with(|| (queue.clone(), 0))
            .1 += 1;
    }

    /// Forgets credit owed to a channel's consumers (the channel is gone).
    pub(crate) fn forget_owed(&mut self, channel: u16) {
        self.owed
            .retain(|(_, owed_channel, _), _| *owed_channel != channel);
    }

    /// Whether credit is being held back until the writer drains.
    pub(crate) fn holds_credit(&self) -> bool {
        !self.owed.is_empty() && self.out.backlog() >= HIGH_WATER
    }

    /// Sends the round's publishes and settlements, and returns delivery credit if the writer is
    /// keeping up.
    pub(crate) fn flush_queues(&mut self) {
        // Settlements first: a queue then records this connection's acknowledgements before
        // the publishes that followed them, so a confirm implies the earlier acks are on disk.
        for batch in self.settles.drain(..) {
            batch.queue.send(QueueCommand::Settle {
                channel: ChannelKey {
                    connection: self.id,
                    channel: batch.channel,
                },
                message_ids: batch.message_ids,
                outcome: batch.outcome,
            });
        }
        for (queue, messages) in self.publishes.drain(..) {
            let confirms: Vec<PublishOutcome> = messages
                .iter()
                .filter_map(|incoming| incoming.confirm)
                .map(|(channel, sequence)| PublishOutcome {
                    channel,
                    sequence,
                    accepted: true,
                })
                .collect();
            if !queue.send(QueueCommand::Publish {
                publisher: self.id,
                messages,
            }) && !confirms.is_empty()
            {
                // The queue was deleted meanwhile; RabbitMQ confirms such messages.
                let _ = self.events.send(ConnectionEvent::Settled(confirms));
            }
        }
        if !self.owed.is_empty() && self.out.backlog() < HIGH_WATER {
            for ((_, channel, tag), (queue, amount)) in self.owed.drain() {
                queue.send(QueueCommand::Credit {
                    channel: ChannelKey {
                        connection: self.id,
                        channel,
                    },
                    tag,
                    amount,
                });
            }
        }
    }

    /// Tells every queue this connection published to that it is gone.
    pub(crate) fn detach_publisher(&mut self) {
        for (_, credit) in self.credit.drain() {
            credit
                .queue
                .send(QueueCommand::DetachPublisher { publisher: self.id });
        }
        self.starved = 0;
    }
}
