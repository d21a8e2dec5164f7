//! A quorum queue's replicated state, sans-IO: committed commands in, replies and effects out,
//! the same on every member. Message bodies stay in the log: the state knows a message by the
//! index of the entry that enqueued it, and the snapshot names those entries as live.
//!
//! ```text
//!  Enqueue ──> ready ──checkout──> checked out (by consumer) ──Settle ack/discard──> gone
//!                ▲                        │ Settle requeue, channel or node down, new leader
//!                └──── returns (served first, redelivered) ◄────────────────────────┘
//!   over a length limit, rejected, or returned more than the delivery limit ──> dead-lettered
//! ```
//!
//! What it holds to:
//! - Publishes are deduplicated per enqueuer (a node's front for the queue, one incarnation):
//!   a sequence number already taken is answered `Duplicate`, one past the next is a `Gap` (an
//!   earlier publish was lost on the way: the front sends again from there). A front that
//!   resends after a lost answer therefore never enqueues twice, and never out of order.
//! - Consumers get messages round-robin, each within its prefetch (unsettled deliveries) and
//!   its credit (deliveries its connection has not taken yet). A no-ack consumer's deliveries
//!   are settled as they are made.
//! - A new leader's first command returns every checked-out message: deliveries in flight from
//!   the old leader may be lost, so they come again, marked redelivered.
//! - A message counts its failed deliveries (returned by `basic.nack`/`basic.reject` with
//!   requeue), as RabbitMQ 4 does for `x-delivery-count`; once it has failed more times than
//!   the delivery limit (default 20) it is dead-lettered or dropped instead of returned.
//!   Returns the consumer did not ask for (its channel or node went, a new leader) only mark it
//!   redelivered.
//! - Length limits count ready messages (not those checked out), as RabbitMQ's do: `drop-head`
//!   dead-letters the oldest ready message, `reject-publish` refuses the new one.
//! - Dead-lettering is at most once: the leader republishes what leaves the state, nothing waits.
//! - Everything is deterministic: no clock, no randomness, iteration in key order.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::queue::dead_letter::Reason;

/// A consumer, as the log knows it: its node (and that node's incarnation), connection,
/// channel and tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConsumerKey {
    pub node: String,
    pub incarnation: u64,
    pub connection: u64,
    pub channel: u16,
    pub tag: Bytes,
}

/// A publishing node's front for the queue, one incarnation of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Enqueuer {
    pub node: String,
    pub incarnation: u64,
}

/// What settles messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ack,
    Requeue,
    Discard,
}

/// The delivery limit of quorum queues when none is set (RabbitMQ 4's).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// How the queue limits and dead-letters: from its arguments, set by [`Command::Configure`] so
/// that every member applies the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Failed deliveries a message may have before it is dead-lettered; `None`: no limit.
    pub delivery_limit: Option<u32>,
    /// Ready messages the queue holds at most.
    pub max_length: Option<u64>,
    /// Bytes of ready bodies the queue holds at most.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow=reject-publish`: refuse what goes over, instead of dropping the head.
    pub reject_publish: bool,
    /// Whether what leaves the queue unconsumed is dead-lettered (a dead-letter exchange is
    /// set) rather than dropped.
    pub dead_letter: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            delivery_limit: Some(DEFAULT_DELIVERY_LIMIT),
            max_length: None,
            max_length_bytes: None,
            reject_publish: false,
            dead_letter: false,
        }
    }
}

/// A command of the queue's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A published message (its wire encoding stays in this entry).
    Enqueue {
        enqueuer: Enqueuer,
        seq: u64,
        /// Every publish of the enqueuer numbered below this one has had its answer (the
        /// refusals of those need not be remembered).
        answered_below: u64,
        message: Bytes,
        size: u32,
    },
    /// A consumer starts.
    Checkout {
        consumer: ConsumerKey,
        prefetch: u32,
        no_ack: bool,
        credit: u32,
        exclusive: bool,
    },
    Cancel {
        consumer: ConsumerKey,
    },
    /// Acks, nacks and rejects of one channel.
    Settle {
        node: String,
        incarnation: u64,
        connection: u64,
        channel: u16,
        ids: Vec<u64>,
        outcome: Outcome,
    },
    /// More deliveries a consumer's connection can take.
    Credit {
        consumer: ConsumerKey,
        amount: u32,
    },
    /// `basic.get` by a channel.
    Get {
        node: String,
        incarnation: u64,
        connection: u64,
        channel: u16,
        no_ack: bool,
    },
    /// A channel closed: its consumers go, what it had not settled returns.
    ChannelDown {
        node: String,
        incarnation: u64,
        connection: u64,
        channel: u16,
    },
    /// A node's consumers go (it is down, or restarted as `keep`).
    NodeDown {
        node: String,
        keep: Option<u64>,
    },
    Purge,
    /// Counts, in log order.
    Stats,
    /// A new leader took over: checked-out messages come again.
    Leader,
    /// The queue's limits (sent by every front before its first command).
    Configure(Limits),
}

impl Command {
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("invariant: commands serialize"))
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        postcard::from_bytes(bytes).map_err(|error| format!("a malformed queue command: {error}"))
    }
}

/// What a command answers to the node that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Enqueued(Enqueued),
    Done,
    /// An AMQP error: reply code and what follows the queue's name in its text.
    Error(u16, String),
    /// `basic.get`: the message (id, delivery count) and what is left, or nothing.
    Got(Option<Got>),
    Count(u32),
    Stats {
        messages: u32,
        consumers: u32,
    },
}

impl Reply {
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("invariant: replies serialize"))
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, String> {
        postcard::from_bytes(bytes).map_err(|error| format!("a malformed queue reply: {error}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enqueued {
    Accepted,
    /// Taken before (a publish sent again).
    Duplicate,
    /// Publishes before this one were lost: send again from `expected`.
    Gap {
        expected: u64,
    },
    /// Refused: the queue is full and its overflow is `reject-publish`.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Got {
    pub id: u64,
    pub delivery_count: u32,
    pub redelivered: bool,
    pub remaining: u32,
    /// Filled in by the leader from the log (not part of the state).
    pub message: Bytes,
}

/// Something for the leader to do about a committed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Deliver {
        consumer: ConsumerKey,
        id: u64,
        /// Failed deliveries before this one (`x-delivery-count`).
        delivery_count: u32,
        redelivered: bool,
        needs_ack: bool,
    },
    /// A message left the queue unconsumed: republish it to the dead-letter exchange.
    DeadLetter { id: u64, reason: Reason },
    /// The queue cancelled a consumer (it was replaced by nothing: the queue was purged of
    /// it because its node went down).
    Cancelled { consumer: ConsumerKey },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Message {
    id: u64,
    size: u32,
    /// Failed deliveries: returned by its consumer with requeue.
    delivery_count: u32,
    /// Delivered before (returned for any reason).
    redelivered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Consumer {
    prefetch: u32,
    no_ack: bool,
    credit: u32,
    exclusive: bool,
    /// Unsettled deliveries.
    checked_out: BTreeSet<u64>,
}

impl Consumer {
    fn can_take(&self) -> bool {
        self.credit > 0
            && (self.no_ack
                || self.prefetch == 0
                || (self.checked_out.len() as u32) < self.prefetch)
    }
}

/// The state every member keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumState {
    /// Messages returned by consumers: delivered first.
    returns: VecDeque<Message>,
    ready: VecDeque<Message>,
    /// Checked-out messages and whose they are.
    checked: HashMap<u64, (ConsumerKey, Message)>,
    consumers: BTreeMap<ConsumerKey, Consumer>,
    /// Consumers in service order: the front is served next.
    order: VecDeque<ConsumerKey>,
    enqueuers: BTreeMap<Enqueuer, u64>,
    /// Publishes refused (`reject-publish`) whose enqueuer may send them again.
    refused: BTreeMap<Enqueuer, BTreeSet<u64>>,
    ready_bytes: u64,
    limits: Limits,
}

impl QuorumState {
    /// Applies a committed command at log index `index`; what the leader must do about it goes
    /// to `effects`.
    pub fn apply(&mut self, index: u64, command: Command, effects: &mut Vec<Effect>) -> Reply {
        let reply = match command {
            Command::Enqueue {
                enqueuer,
                seq,
                answered_below,
                size,
                ..
            } => {
                let full = self.limits.reject_publish && self.would_overflow(size);
                if let Some(refused) = self.refused.get_mut(&enqueuer) {
                    *refused = refused.split_off(&answered_below);
                    if refused.is_empty() {
                        self.refused.remove(&enqueuer);
                    }
                }
                let next = self.enqueuers.entry(enqueuer.clone()).or_insert(1);
                if seq < *next {
                    // Sent again: answered as the first time.
                    let refused = self
                        .refused
                        .get(&enqueuer)
                        .is_some_and(|refused| refused.contains(&seq));
                    Reply::Enqueued(if refused {
                        Enqueued::Rejected
                    } else {
                        Enqueued::Duplicate
                    })
                } else if seq > *next {
                    Reply::Enqueued(Enqueued::Gap { expected: *next })
                } else if full {
                    *next += 1;
                    self.refused.entry(enqueuer).or_default().insert(seq);
                    Reply::Enqueued(Enqueued::Rejected)
                } else {
                    *next += 1;
                    self.ready.push_back(Message {
                        id: index,
                        size,
                        delivery_count: 0,
                        redelivered: false,
                    });
                    self.ready_bytes += u64::from(size);
                    self.drop_head_while_over_limit(effects);
                    Reply::Enqueued(Enqueued::Accepted)
                }
            }
            Command::Checkout {
                consumer,
                prefetch,
                no_ack,
                credit,
                exclusive,
            } => {
                let locked = self.consumers.values().any(|c| c.exclusive)
                    || (exclusive && !self.consumers.is_empty());
                if locked {
                    // The front names the queue: "queue 'q' in vhost '/' in exclusive use".
                    Reply::Error(403, "in exclusive use".into())
                } else {
                    if !self.consumers.contains_key(&consumer) {
                        self.order.push_back(consumer.clone());
                    }
                    self.consumers.insert(
                        consumer,
                        Consumer {
                            prefetch,
                            no_ack,
                            credit,
                            exclusive,
                            checked_out: BTreeSet::new(),
                        },
                    );
                    Reply::Done
                }
            }
            Command::Cancel { consumer } => {
                self.remove_consumer(&consumer, effects);
                Reply::Done
            }
            Command::Settle {
                node,
                incarnation,
                connection,
                channel,
                ids,
                outcome,
            } => {
                let mut settled = 0;
                for id in ids {
                    let owned = self.checked.get(&id).is_some_and(|(owner, _)| {
                        owner.node == node
                            && owner.incarnation == incarnation
                            && owner.connection == connection
                            && owner.channel == channel
                    });
                    if !owned {
                        continue;
                    }
                    let (owner, message) = self.checked.remove(&id).expect("looked up");
                    if let Some(consumer) = self.consumers.get_mut(&owner) {
                        consumer.checked_out.remove(&id);
                    }
                    settled += 1;
                    match outcome {
                        Outcome::Ack => {}
                        Outcome::Requeue => self.give_back(message, true, effects),
                        Outcome::Discard => {
                            self.dead_letter(message.id, Reason::Rejected, effects);
                        }
                    }
                }
                Reply::Count(settled)
            }
            Command::Credit { consumer, amount } => {
                if let Some(consumer) = self.consumers.get_mut(&consumer) {
                    consumer.credit = consumer.credit.saturating_add(amount);
                }
                Reply::Done
            }
            Command::Get {
                node,
                incarnation,
                connection,
                channel,
                no_ack,
            } => match self.take_next() {
                None => Reply::Got(None),
                Some(message) => {
                    if !no_ack {
                        // Settled by the channel like any delivery: owned by a consumer-less
                        // key of the channel.
                        let owner = ConsumerKey {
                            node,
                            incarnation,
                            connection,
                            channel,
                            tag: Bytes::new(),
                        };
                        self.checked.insert(message.id, (owner, message));
                    }
                    Reply::Got(Some(Got {
                        id: message.id,
                        delivery_count: message.delivery_count,
                        redelivered: message.redelivered,
                        remaining: self.messages(),
                        message: Bytes::new(),
                    }))
                }
            },
            Command::ChannelDown {
                node,
                incarnation,
                connection,
                channel,
            } => {
                self.drop_owners(
                    |owner| {
                        owner.node == node
                            && owner.incarnation == incarnation
                            && owner.connection == connection
                            && owner.channel == channel
                    },
                    effects,
                );
                Reply::Done
            }
            Command::NodeDown { node, keep } => {
                let gone: Vec<ConsumerKey> = self
                    .consumers
                    .keys()
                    .filter(|key| key.node == node && Some(key.incarnation) != keep)
                    .cloned()
                    .collect();
                self.drop_owners(
                    |owner| owner.node == node && Some(owner.incarnation) != keep,
                    effects,
                );
                for consumer in gone {
                    effects.push(Effect::Cancelled { consumer });
                }
                Reply::Done
            }
            Command::Purge => {
                let count = self.messages();
                self.ready.clear();
                self.returns.clear();
                self.ready_bytes = 0;
                Reply::Count(count)
            }
            Command::Stats => Reply::Stats {
                messages: self.messages(),
                consumers: self.consumers.len() as u32,
            },
            Command::Leader => {
                let mut ids: Vec<u64> = self.checked.keys().copied().collect();
                ids.sort_unstable();
                for id in ids {
                    let (owner, message) = self.checked.remove(&id).expect("listed");
                    if let Some(consumer) = self.consumers.get_mut(&owner) {
                        consumer.checked_out.remove(&id);
                    }
                    self.give_back(message, false, effects);
                }
                Reply::Done
            }
            Command::Configure(limits) => {
                self.limits = limits;
                self.drop_head_while_over_limit(effects);
                Reply::Done
            }
        };
        self.deliver(effects);
        reply
    }

    /// Messages ready for delivery.
    pub fn messages(&self) -> u32 {
        (self.ready.len() + self.returns.len()) as u32
    }

    pub fn consumers(&self) -> u32 {
        self.consumers.len() as u32
    }

    /// Messages checked out and not settled.
    pub fn unacked(&self) -> u32 {
        self.checked.len() as u32
    }

    pub fn ready_bytes(&self) -> u64 {
        self.ready_bytes
    }

    /// The log entries the state still needs: every message it holds.
    pub fn live(&self) -> BTreeSet<u64> {
        self.returns
            .iter()
            .chain(self.ready.iter())
            .map(|message| message.id)
            .chain(self.checked.keys().copied())
            .collect()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.returns.is_empty() && self.ready.is_empty() && self.checked.is_empty()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Returns a checked-out message to the ready ones; `failed` counts a failed delivery,
    /// which past the delivery limit dead-letters it instead.
    fn give_back(&mut self, mut message: Message, failed: bool, effects: &mut Vec<Effect>) {
        message.redelivered = true;
        if failed {
            message.delivery_count = message.delivery_count.saturating_add(1);
            if self
                .limits
                .delivery_limit
                .is_some_and(|limit| message.delivery_count > limit)
            {
                self.dead_letter(message.id, Reason::DeliveryLimit, effects);
                return;
            }
        }
        self.ready_bytes += u64::from(message.size);
        // Returned messages go out first, oldest first.
        let at = self.returns.partition_point(|m| m.id < message.id);
        self.returns.insert(at, message);
    }

    /// A message leaves the queue unconsumed.
    fn dead_letter(&mut self, id: u64, reason: Reason, effects: &mut Vec<Effect>) {
        if self.limits.dead_letter {
            effects.push(Effect::DeadLetter { id, reason });
        }
    }

    fn would_overflow(&self, size: u32) -> bool {
        self.limits
            .max_length
            .is_some_and(|max| u64::from(self.messages()) + 1 > max)
            || self
                .limits
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes + u64::from(size) > max)
    }

    fn is_over_limit(&self) -> bool {
        self.limits
            .max_length
            .is_some_and(|max| u64::from(self.messages()) > max)
            || self
                .limits
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes > max)
    }

    /// `drop-head`: the oldest ready messages go while the queue is over its limits.
    fn drop_head_while_over_limit(&mut self, effects: &mut Vec<Effect>) {
        if self.limits.reject_publish {
            return;
        }
        while self.is_over_limit() {
            let Some(message) = self.take_next() else {
                return;
            };
            self.dead_letter(message.id, Reason::Maxlen, effects);
        }
    }

    fn take_next(&mut self) -> Option<Message> {
        let message = self
            .returns
            .pop_front()
            .or_else(|| self.ready.pop_front())?;
        self.ready_bytes -= u64::from(message.size);
        Some(message)
    }

    fn remove_consumer(&mut self, key: &ConsumerKey, effects: &mut Vec<Effect>) {
        let Some(consumer) = self.consumers.remove(key) else {
            return;
        };
        self.order.retain(|k| k != key);
        for id in consumer.checked_out {
            if let Some((_, message)) = self.checked.remove(&id) {
                self.give_back(message, false, effects);
            }
        }
    }

    /// Removes the consumers `gone` picks and returns what they (and the channels' gets) held.
    fn drop_owners(&mut self, gone: impl Fn(&ConsumerKey) -> bool, effects: &mut Vec<Effect>) {
        let consumers: Vec<ConsumerKey> =
            self.consumers.keys().filter(|k| gone(k)).cloned().collect();
        for consumer in consumers {
            self.remove_consumer(&consumer, effects);
        }
        let mut ids: Vec<u64> = self
            .checked
            .iter()
            .filter(|(_, (owner, _))| gone(owner))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            let (_, message) = self.checked.remove(&id).expect("listed");
            self.give_back(message, false, effects);
        }
    }

    /// Hands ready messages to consumers that can take them, round-robin.
    fn deliver(&mut self, effects: &mut Vec<Effect>) {
        let mut idle = 0;
        while self.messages() > 0 && idle < self.order.len() {
            let key = self.order.pop_front().expect("not empty");
            let consumer = self
                .consumers
                .get_mut(&key)
                .expect("ordered consumers exist");
            if !consumer.can_take() {
                self.order.push_back(key);
                idle += 1;
                continue;
            }
            idle = 0;
            let message = {
                let message = self
                    .returns
                    .pop_front()
                    .or_else(|| self.ready.pop_front())
                    .expect("counted");
                self.ready_bytes -= u64::from(message.size);
                message
            };
            consumer.credit -= 1;
            let needs_ack = !consumer.no_ack;
            if needs_ack {
                consumer.checked_out.insert(message.id);
                self.checked.insert(message.id, (key.clone(), message));
            }
            effects.push(Effect::Deliver {
                consumer: key.clone(),
                id: message.id,
                delivery_count: message.delivery_count,
                redelivered: message.redelivered,
                needs_ack,
            });
            self.order.push_back(key);
        }
    }
}

#[cfg(test)]
mod tests;
