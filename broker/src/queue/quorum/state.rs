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
//!   its credit (deliveries its connection has not taken yet), those of the highest priority
//!   first; with a single active consumer, only that one. A no-ack consumer's deliveries are
//!   settled as they are made.
//! - A new leader's first command returns every checked-out message: deliveries in flight from
//!   the old leader may be lost, so they come again, marked redelivered.
//! - A message counts its failed deliveries (returned by `basic.nack`/`basic.reject` with
//!   requeue), as RabbitMQ 4 does for `x-delivery-count`; once it has failed more times than
//!   the delivery limit (default 20) it is dead-lettered or dropped instead of returned.
//!   Returns the consumer did not ask for (its channel or node went, a new leader) only mark it
//!   redelivered.
//! - Length limits count ready messages (not those checked out), as RabbitMQ's do: `drop-head`
//!   dead-letters the oldest ready message, `reject-publish` refuses the new one.
//! - Dead-lettering is at most once by default: the leader republishes what leaves the state,
//!   nothing waits. With `x-dead-letter-strategy=at-least-once` (which needs `reject-publish`,
//!   as in RabbitMQ; with `drop-head` it falls back to at most once) a dead-lettered message
//!   stays, counted against the length limits, until the leader has had every target queue's
//!   confirm ([`Command::DeadLettered`]); a new leader republishes what is still held.
//! - Time is the log's: every command carries its proposer's clock, and the state's clock is the
//!   latest stamp applied. A message past its TTL (`x-message-ttl`, or its own `expiration`,
//!   whichever is shorter) expires once it is next to be delivered, as RabbitMQ's quorum queues
//!   do; a queue unused (no consumer, `basic.get` or declaration) for its `x-expires` expires
//!   once. The leader ticks the queue when the next of these falls due ([`Command::Tick`]).
//! - Ready messages are served by priority (RabbitMQ 4.3's 32 strict levels), in order within
//!   a level; returned messages go before them all. With delayed retry (`x-delayed-retry-*`)
//!   a returned message waits, by its failed deliveries, before it joins the returned ones.
//! - Everything is deterministic: no clock of its own, no randomness, iteration in key order.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::message::Reason;
use crate::queue::dispatch::{ServiceOrder, designate};

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
    /// Given back unseen (delivered to a consumer its channel had cancelled): not a failed
    /// delivery.
    Return,
}

/// The delivery limit of quorum queues when none is set (RabbitMQ 4's).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// The highest message priority (RabbitMQ 4.3's quorum queues have 32 levels, 0 to 31).
pub const MAX_PRIORITY: u8 = 31;
/// The priority of a message published without one (RabbitMQ 4.3's).
pub const DEFAULT_PRIORITY: u8 = 4;

/// The level a message's `priority` property puts it at.
pub fn priority_of(property: Option<u8>) -> u8 {
    property.map_or(DEFAULT_PRIORITY, |priority| priority.min(MAX_PRIORITY))
}

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
    /// `x-message-ttl` (ms).
    pub message_ttl: Option<u64>,
    /// `x-expires` (ms): the queue goes once unused that long.
    pub expires: Option<u64>,
    /// `x-single-active-consumer`.
    pub single_active: bool,
    /// `x-dead-letter-strategy=at-least-once` (in effect only with `reject_publish` and
    /// `dead_letter`).
    pub at_least_once: bool,
    /// `x-delayed-retry-*`.
    pub delayed_retry: Option<DelayedRetry>,
}

impl Limits {
    /// Whether dead letters are held until their targets confirm them.
    pub fn holds_dead_letters(&self) -> bool {
        self.at_least_once && self.reject_publish && self.dead_letter
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            delivery_limit: Some(DEFAULT_DELIVERY_LIMIT),
            max_length: None,
            max_length_bytes: None,
            reject_publish: false,
            dead_letter: false,
            message_ttl: None,
            expires: None,
            single_active: false,
            at_least_once: false,
            delayed_retry: None,
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
        /// Its own TTL (the `expiration` property), in ms.
        ttl: Option<u64>,
        /// Its priority, 0 to [`MAX_PRIORITY`] (see [`priority_of`]).
        priority: u8,
    },
    /// A consumer starts.
    Checkout {
        consumer: ConsumerKey,
        prefetch: u32,
        no_ack: bool,
        credit: u32,
        exclusive: bool,
        priority: i64,
        /// `consumer_timeout` (ms): how long it may hold a delivery unsettled.
        timeout: Option<u64>,
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
    /// The leader of `term` took over: as [`Command::Leader`], and it tells that leader
    /// which entry of its log is the first it acts on.
    Lead {
        term: u64,
    },
    /// Time passes (the leader's clock at an expiry it waits for).
    Tick,
    /// The queue was used (declared again): its `x-expires` lease starts over.
    Touch,
    /// Held dead letters every target queue confirmed (at-least-once): they go.
    DeadLettered {
        ids: Vec<u64>,
    },
}

/// Milliseconds since the Unix epoch: the stamp a command carries.
pub fn wall_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl Command {
    /// The command in its log entry, stamped with the proposer's clock: every member then
    /// applies the same time (the state's clock is the latest stamp it applied).
    pub fn encode(&self) -> Bytes {
        self.encode_at(wall_clock())
    }

    pub fn encode_at(&self, now: u64) -> Bytes {
        Bytes::from(postcard::to_stdvec(&(now, self)).expect("invariant: commands serialize"))
    }

    /// A log entry's stamp and command.
    pub fn decode(bytes: &[u8]) -> Result<(u64, Command), String> {
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
    /// A consumer is checked out: at the entry `since` (its deliveries carry it).
    CheckedOut {
        since: u64,
    },
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
        /// The consumer's checkout: the index of the entry that took it in. Deliveries to an
        /// earlier checkout of the same consumer are stale (it was let go meanwhile, and what
        /// it held given back).
        epoch: u64,
    },
    /// A message left the queue unconsumed: republish it to the dead-letter exchange; `held`:
    /// the queue keeps it until told every target confirmed it ([`Command::DeadLettered`]).
    DeadLetter { id: u64, reason: Reason, held: bool },
    /// The queue cancelled a consumer (it was replaced by nothing: the queue was purged of
    /// it because its node went down).
    Cancelled { consumer: ConsumerKey },
    /// Unused for its `x-expires`: the queue is to be deleted.
    Expired,
    /// A consumer held a delivery past its `consumer_timeout`: what timed out is back in the
    /// queue, and the consumer gets nothing more; its client is to be told.
    TimedOut { consumer: ConsumerKey, timeout: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Message {
    id: u64,
    size: u32,
    /// Failed deliveries: returned by its consumer with requeue.
    delivery_count: u32,
    /// When it expires (ms since the epoch; 0: never).
    expires_at: u64,
    // Whether it was delivered before is where it waits: returned (and delayed) ones were,
    // ready ones not. 24 bytes a message.
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Consumer {
    prefetch: u32,
    no_ack: bool,
    credit: u32,
    /// The credit it checked out with: what a new leader gives it again.
    window: u32,
    exclusive: bool,
    /// The index of the entry that checked it out.
    since: u64,
    /// `x-priority`: served before consumers of lower priority.
    priority: i64,
    /// `consumer_timeout` (ms).
    timeout: Option<u64>,
    /// It held a delivery past its timeout: it gets nothing more (its client is told).
    timed_out: bool,
    /// Unsettled deliveries.
    checked_out: BTreeSet<u64>,
}

impl Consumer {
    fn can_take(&self) -> bool {
        !self.timed_out
            && self.credit > 0
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
    /// Messages never delivered, by priority.
    ready: Levels,
    /// Checked-out messages and whose they are.
    checked: HashMap<u64, (ConsumerKey, Message)>,
    consumers: BTreeMap<ConsumerKey, Consumer>,
    /// Consumers in service order: the front is served next.
    order: ServiceOrder<ConsumerKey>,
    enqueuers: BTreeMap<Enqueuer, u64>,
    /// Publishes refused (`reject-publish`) whose enqueuer may send them again.
    refused: BTreeMap<Enqueuer, BTreeSet<u64>>,
    ready_bytes: u64,
    limits: Limits,
    /// The latest stamp applied (ms since the epoch).
    clock: u64,
    /// When the queue was last used (a consumer, a get, a declaration), for `x-expires`.
    last_used: u64,
    /// Whether it has expired (told once).
    expired: bool,
    /// Whether it had consumers after the last command.
    had_consumers: bool,
    /// With a single active consumer, the one that is.
    active: Option<ConsumerKey>,
    /// Deliveries that time out (`consumer_timeout`), by deadline: (deadline, id).
    leases: BTreeSet<(u64, u64)>,
    /// The deadline of each of those.
    lease_of: HashMap<u64, u64>,
    /// Dead letters held until their targets confirm them (at-least-once): id, size, reason.
    dead: BTreeMap<u64, (u32, Reason)>,
    /// Their bytes.
    dead_bytes: u64,
    /// Returned messages held back for a while (`x-delayed-retry-*`), by when they are ready
    /// again: (ready at, id).
    delayed: BTreeMap<(u64, u64), Message>,
    /// Their bytes.
    delayed_bytes: u64,
}

/// How a message comes back to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GiveBack {
    /// Requeued by its consumer (`basic.nack`/`basic.reject`): a failed delivery.
    Failed,
    /// Its consumer, channel or node went, or it timed out.
    Returned,
    /// Never seen by a client (a new leader delivers again what was out; a delivery that
    /// reached a cancelled consumer).
    Unseen,
}

/// Which returns wait (`x-delayed-retry-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryKind {
    All,
    Failed,
    Returned,
}

/// RabbitMQ 4.3's delayed retry: a returned message waits `min` ms times its failed
/// deliveries (at least once), at most `max` ms, before it can be delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelayedRetry {
    pub kind: RetryKind,
    pub min: u64,
    pub max: u64,
}

impl DelayedRetry {
    fn applies_to(self, how: GiveBack) -> bool {
        matches!(
            (self.kind, how),
            (RetryKind::All, GiveBack::Failed | GiveBack::Returned)
                | (RetryKind::Failed, GiveBack::Failed)
                | (RetryKind::Returned, GiveBack::Returned)
        )
    }
}

impl QuorumState {
    /// Applies a committed command at log index `index`, stamped `now`; what the leader must
    /// do about it goes to `effects`.
    pub fn apply(
        &mut self,
        index: u64,
        now: u64,
        command: Command,
        effects: &mut Vec<Effect>,
    ) -> Reply {
        self.clock = self.clock.max(now);
        self.time_out(effects);
        self.release_delayed();
        self.expire_head(effects);
        let reply = match command {
            Command::Enqueue {
                enqueuer,
                seq,
                answered_below,
                size,
                ttl,
                priority,
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
                    let ttl = match (ttl, self.limits.message_ttl) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (one, other) => one.or(other),
                    };
                    self.ready.push(
                        priority,
                        Message {
                            id: index,
                            size,
                            delivery_count: 0,
                            // At least 1: 0 means never.
                            expires_at: ttl.map_or(0, |ttl| self.clock.saturating_add(ttl).max(1)),
                        },
                    );
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
                priority,
                timeout,
            } => {
                let locked = self.consumers.values().any(|c| c.exclusive)
                    || (exclusive && !self.consumers.is_empty());
                if let Some(known) = self.consumers.get(&consumer) {
                    // Sent again (its front resumes it after its node's link came back, or
                    // retries): it stands as it is, with what it holds.
                    Reply::CheckedOut { since: known.since }
                } else if locked {
                    // The front names the queue: "queue 'q' in vhost '/' in exclusive use".
                    Reply::Error(403, "in exclusive use".into())
                } else {
                    // The same tag consumed again on the channel: what its cancelled
                    // predecessor held comes back (its deliveries on their way are stale).
                    let mut held: Vec<u64> = self
                        .checked
                        .iter()
                        .filter(|(_, (owner, _))| *owner == consumer)
                        .map(|(id, _)| *id)
                        .collect();
                    held.sort_unstable();
                    for id in held {
                        let (_, message) = self.uncheck(id).expect("listed");
                        self.give_back(message, GiveBack::Returned, effects);
                    }
                    self.last_used = self.clock;
                    self.order.push(consumer.clone());
                    self.consumers.insert(
                        consumer,
                        Consumer {
                            prefetch,
                            no_ack,
                            credit,
                            window: credit,
                            exclusive,
                            since: index,
                            priority,
                            timeout,
                            timed_out: false,
                            checked_out: BTreeSet::new(),
                        },
                    );
                    Reply::CheckedOut { since: index }
                }
            }
            Command::Cancel { consumer } => {
                self.remove_consumer(&consumer);
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
                    let (owner, message) = self.uncheck(id).expect("looked up");
                    if let Some(consumer) = self.consumers.get_mut(&owner) {
                        consumer.checked_out.remove(&id);
                    }
                    settled += 1;
                    match outcome {
                        Outcome::Ack => {}
                        Outcome::Requeue => self.give_back(message, GiveBack::Failed, effects),
                        Outcome::Return => self.give_back(message, GiveBack::Unseen, effects),
                        Outcome::Discard => {
                            self.dead_letter(message, Reason::Rejected, effects);
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
            } => match self.take_next_used() {
                None => Reply::Got(None),
                Some((message, redelivered)) => {
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
                        redelivered,
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
                // As RabbitMQ's: the delayed and the held dead letters go too.
                let count = self.messages() + self.delayed.len() as u32 + self.dead.len() as u32;
                self.ready.clear();
                self.returns.clear();
                self.ready_bytes = 0;
                self.delayed.clear();
                self.delayed_bytes = 0;
                self.dead.clear();
                self.dead_bytes = 0;
                Reply::Count(count)
            }
            Command::Stats => Reply::Stats {
                messages: self.messages(),
                consumers: self.consumers.len() as u32,
            },
            Command::Leader | Command::Lead { .. } => {
                // The new leader deletes an expired queue again (the old one may have died
                // first).
                self.expired = false;
                let mut ids: Vec<u64> = self.checked.keys().copied().collect();
                ids.sort_unstable();
                for id in ids {
                    let (owner, message) = self.uncheck(id).expect("listed");
                    if let Some(consumer) = self.consumers.get_mut(&owner) {
                        consumer.checked_out.remove(&id);
                    }
                    self.give_back(message, GiveBack::Unseen, effects);
                }
                // Deliveries the old leader made may never reach their fronts, and the
                // credit they took would be lost with them: every consumer starts again with
                // its whole credit. (Its front may hold the old leader's deliveries still, and
                // gives their credit back as they are taken: over by at most one window, until
                // the next leader.)
                // The old leader may also have died before its front told a timed-out
                // consumer's client: told again, or the consumer would wait for nothing
                // forever.
                for (key, consumer) in &mut self.consumers {
                    consumer.credit = consumer.window;
                    if consumer.timed_out {
                        effects.push(Effect::TimedOut {
                            consumer: key.clone(),
                            timeout: consumer.timeout.unwrap_or_default(),
                        });
                    }
                }
                // What the old leader had not seen confirmed is republished.
                for (&id, &(_, reason)) in &self.dead {
                    effects.push(Effect::DeadLetter {
                        id,
                        reason,
                        held: true,
                    });
                }
                Reply::Done
            }
            Command::Configure(limits) => {
                if self.limits.expires.is_none() && limits.expires.is_some() {
                    // The lease starts with the queue (or with the limit).
                    self.last_used = self.clock;
                }
                self.limits = limits;
                if !self.limits.holds_dead_letters() {
                    // At most once from now on: what was held goes, as in RabbitMQ.
                    self.dead.clear();
                    self.dead_bytes = 0;
                }
                self.drop_head_while_over_limit(effects);
                Reply::Done
            }
            Command::Tick => Reply::Done,
            Command::DeadLettered { ids } => {
                let mut count = 0;
                for id in ids {
                    if let Some((size, _)) = self.dead.remove(&id) {
                        self.dead_bytes -= u64::from(size);
                        count += 1;
                    }
                }
                Reply::Count(count)
            }
            Command::Touch => {
                self.last_used = self.clock;
                Reply::Done
            }
        };
        self.deliver(effects);
        if self.consumers.is_empty() && self.had_consumers {
            // The lease of `x-expires` starts when the last consumer goes.
            self.last_used = self.clock;
        }
        self.had_consumers = !self.consumers.is_empty();
        if let Some(at) = self.unused_until()
            && self.clock >= at
            && !self.expired
        {
            self.expired = true;
            effects.push(Effect::Expired);
        }
        reply
    }

    /// When the next timed change falls due (the head's expiry, or the queue's own), for the
    /// leader to tick then.
    pub fn next_deadline(&self) -> Option<u64> {
        let head = self
            .returns
            .front()
            .into_iter()
            .chain(self.ready.heads())
            .map(|message| message.expires_at)
            .filter(|at| *at != 0)
            .min()
            // Expired once the clock is past it.
            .map(|at| at.saturating_add(1));
        let unused = self.unused_until().filter(|_| !self.expired);
        let lease = self
            .leases
            .first()
            .map(|(deadline, _)| deadline.saturating_add(1));
        let delayed = self.delayed.keys().next().map(|(ready_at, _)| *ready_at);
        [head, unused, lease, delayed].into_iter().flatten().min()
    }

    /// Takes a message out of the checked-out ones, and its lease.
    fn uncheck(&mut self, id: u64) -> Option<(ConsumerKey, Message)> {
        let checked = self.checked.remove(&id)?;
        if let Some(deadline) = self.lease_of.remove(&id) {
            self.leases.remove(&(deadline, id));
        }
        Some(checked)
    }

    /// Deliveries held past their consumer's timeout go back to the queue (redelivered, not a
    /// failed delivery), and their consumers get nothing more.
    fn time_out(&mut self, effects: &mut Vec<Effect>) {
        while let Some(&(deadline, id)) = self.leases.first()
            && self.clock > deadline
        {
            let (owner, message) = self.uncheck(id).expect("leased deliveries are checked out");
            if let Some(consumer) = self.consumers.get_mut(&owner) {
                consumer.checked_out.remove(&id);
                if !consumer.timed_out {
                    consumer.timed_out = true;
                    effects.push(Effect::TimedOut {
                        consumer: owner.clone(),
                        timeout: consumer.timeout.unwrap_or_default(),
                    });
                }
            }
            self.give_back(message, GiveBack::Returned, effects);
        }
    }

    /// When the queue expires if nothing uses it.
    fn unused_until(&self) -> Option<u64> {
        let expires = self.limits.expires?;
        self.consumers
            .is_empty()
            .then(|| self.last_used.saturating_add(expires))
    }

    /// Dead-letters (or drops) expired messages at the heads of the returned ones and of
    /// each priority: a message expires once nothing of its level is ahead of it, as in
    /// RabbitMQ's quorum queues.
    fn expire_head(&mut self, effects: &mut Vec<Effect>) {
        let expired =
            |message: &Message, clock: u64| message.expires_at != 0 && clock > message.expires_at;
        while let Some(head) = self.returns.front()
            && expired(head, self.clock)
        {
            let message = self.returns.pop_front().expect("a head");
            self.ready_bytes -= u64::from(message.size);
            self.dead_letter(message, Reason::Expired, effects);
        }
        for message in self
            .ready
            .take_heads_while(|head| expired(head, self.clock))
        {
            self.ready_bytes -= u64::from(message.size);
            self.dead_letter(message, Reason::Expired, effects);
        }
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

    /// The log entries the state still needs, ascending: every message it holds.
    pub fn live(&self) -> Vec<u64> {
        let live = self
            .returns
            .iter()
            .chain(self.ready.iter())
            .map(|message| message.id)
            .chain(self.checked.keys().copied())
            .chain(self.dead.keys().copied())
            .chain(self.delayed.keys().map(|(_, id)| *id))
            .collect();
        warren_cluster::multiraft::storage::sorted(live)
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.returns.is_empty()
            && self.ready.is_empty()
            && self.checked.is_empty()
            && self.dead.is_empty()
            && self.delayed.is_empty()
    }

    /// Returned messages waiting out their delay.
    pub fn delayed(&self) -> u32 {
        self.delayed.len() as u32
    }

    /// Dead letters held until their targets confirm them.
    pub fn dead_lettered(&self) -> u32 {
        self.dead.len() as u32
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Returns a checked-out message to the ready ones; `failed` counts a failed delivery,
    /// which past the delivery limit dead-letters it instead.
    fn give_back(&mut self, mut message: Message, how: GiveBack, effects: &mut Vec<Effect>) {
        if how == GiveBack::Failed {
            message.delivery_count = message.delivery_count.saturating_add(1);
            if self
                .limits
                .delivery_limit
                .is_some_and(|limit| message.delivery_count > limit)
            {
                self.dead_letter(message, Reason::DeliveryLimit, effects);
                return;
            }
        }
        if let Some(retry) = self.limits.delayed_retry
            && retry.applies_to(how)
        {
            // RabbitMQ 4.3: min × failed deliveries (at least 1), at most max.
            let times = u64::from(message.delivery_count.max(1));
            let delay = retry.min.saturating_mul(times).min(retry.max);
            let ready_at = self.clock.saturating_add(delay);
            self.delayed_bytes += u64::from(message.size);
            self.delayed.insert((ready_at, message.id), message);
            return;
        }
        self.ready_bytes += u64::from(message.size);
        // Returned messages go out first, oldest first.
        let at = self.returns.partition_point(|m| m.id < message.id);
        self.returns.insert(at, message);
    }

    /// Delayed returns whose time has come join the returned ones, in the order they fell due.
    fn release_delayed(&mut self) {
        while let Some(entry) = self.delayed.first_entry()
            && entry.key().0 <= self.clock
        {
            let message = entry.remove();
            self.delayed_bytes -= u64::from(message.size);
            self.ready_bytes += u64::from(message.size);
            self.returns.push_back(message);
        }
    }

    /// A message leaves the queue unconsumed: dead-lettered (and held, at least once), or
    /// dropped.
    fn dead_letter(&mut self, message: Message, reason: Reason, effects: &mut Vec<Effect>) {
        if !self.limits.dead_letter {
            return;
        }
        let held = self.limits.holds_dead_letters();
        if held {
            self.dead.insert(message.id, (message.size, reason));
            self.dead_bytes += u64::from(message.size);
        }
        effects.push(Effect::DeadLetter {
            id: message.id,
            reason,
            held,
        });
    }

    /// Whether a message of `size` would take the queue over its limits (held dead letters
    /// count: they are the queue's until confirmed).
    fn would_overflow(&self, size: u32) -> bool {
        // Delayed returns count too, as in RabbitMQ.
        let held = (self.dead.len() + self.delayed.len()) as u64;
        let held_bytes = self.dead_bytes + self.delayed_bytes;
        self.limits
            .max_length
            .is_some_and(|max| u64::from(self.messages()) + held + 1 > max)
            || self
                .limits
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes + held_bytes + u64::from(size) > max)
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
            let Some((message, _)) = self.take_next() else {
                return;
            };
            self.dead_letter(message, Reason::Maxlen, effects);
        }
    }

    /// The next message, for `basic.get` (a use of the queue).
    fn take_next_used(&mut self) -> Option<(Message, bool)> {
        self.last_used = self.clock;
        self.take_next()
    }

    /// The next message to deliver, and whether it was delivered before.
    fn take_next(&mut self) -> Option<(Message, bool)> {
        let (message, redelivered) = match self.returns.pop_front() {
            Some(returned) => (returned, true),
            None => (self.ready.pop()?, false),
        };
        self.ready_bytes -= u64::from(message.size);
        Some((message, redelivered))
    }

    /// A consumer gets nothing more. What it holds stays its channel's to settle, as in
    /// AMQP (a `basic.cancel` does not take back what the client is working on): it returns
    /// when the channel goes.
    fn remove_consumer(&mut self, key: &ConsumerKey) {
        if self.consumers.remove(key).is_some() {
            self.order.remove(key);
        }
    }

    /// Removes the consumers `gone` picks and returns what they (and the channels' gets) held.
    fn drop_owners(&mut self, gone: impl Fn(&ConsumerKey) -> bool, effects: &mut Vec<Effect>) {
        let consumers: Vec<ConsumerKey> =
            self.consumers.keys().filter(|k| gone(k)).cloned().collect();
        for consumer in consumers {
            self.remove_consumer(&consumer);
        }
        let mut ids: Vec<u64> = self
            .checked
            .iter()
            .filter(|(_, (owner, _))| gone(owner))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            let (_, message) = self.uncheck(id).expect("listed");
            self.give_back(message, GiveBack::Returned, effects);
        }
    }

    /// Hands ready messages to consumers that can take them: to the highest priority first,
    /// round-robin among equals; with a single active consumer, to that one alone.
    fn deliver(&mut self, effects: &mut Vec<Effect>) {
        if self.limits.single_active {
            self.deliver_to_active(effects);
            return;
        }
        loop {
            self.expire_head(effects);
            if self.messages() == 0 {
                return;
            }
            // The first in service order of the highest priority that can take one.
            let consumers = &self.consumers;
            let Some(key) = self.order.next(
                |key| {
                    let consumer = &consumers[key];
                    consumer.can_take().then_some(consumer.priority)
                },
                |_| true,
            ) else {
                return;
            };
            let key = key.clone();
            self.hand_out(&key, effects);
        }
    }

    /// `x-single-active-consumer`: the active consumer is the one of the highest priority,
    /// the earliest among equals. One that a new consumer outranks gets nothing more and hands
    /// over once it has settled what it holds.
    fn deliver_to_active(&mut self, effects: &mut Vec<Effect>) {
        // A timed-out consumer gets nothing more: the next one takes over.
        let designated = designate(
            self.consumers
                .iter()
                .filter(|(_, consumer)| !consumer.timed_out)
                .map(|(key, consumer)| (key, consumer.priority, consumer.since)),
        )
        .cloned();
        let hand_over = match &self.active {
            None => true,
            Some(active) => match self.consumers.get(active) {
                None => true,
                Some(consumer) => consumer.checked_out.is_empty(),
            },
        };
        if hand_over {
            self.active = designated.clone();
        }
        let Some(active) = self.active.clone() else {
            return;
        };
        if Some(&active) != designated.as_ref() {
            return;
        }
        loop {
            self.expire_head(effects);
            if self.messages() == 0 || !self.consumers[&active].can_take() {
                return;
            }
            self.hand_out(&active, effects);
        }
    }

    /// Delivers the next message (not expired: the head was just expired) to `key`.
    fn hand_out(&mut self, key: &ConsumerKey, effects: &mut Vec<Effect>) {
        let (message, redelivered) = self.take_next().expect("counted");
        let consumer = self
            .consumers
            .get_mut(key)
            .expect("ordered consumers exist");
        consumer.credit -= 1;
        let needs_ack = !consumer.no_ack;
        if needs_ack {
            consumer.checked_out.insert(message.id);
            self.checked.insert(message.id, (key.clone(), message));
            if let Some(timeout) = consumer.timeout {
                let deadline = self.clock.saturating_add(timeout);
                self.leases.insert((deadline, message.id));
                self.lease_of.insert(message.id, deadline);
            }
        }
        effects.push(Effect::Deliver {
            consumer: key.clone(),
            id: message.id,
            delivery_count: message.delivery_count,
            redelivered,
            needs_ack,
            epoch: consumer.since,
        });
    }
}

/// Messages by priority, the highest served first, in order within each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Levels {
    levels: BTreeMap<u8, VecDeque<Message>>,
    len: usize,
}

impl Levels {
    fn push(&mut self, priority: u8, message: Message) {
        self.levels.entry(priority).or_default().push_back(message);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<Message> {
        let mut level = self.levels.last_entry()?;
        let message = level.get_mut().pop_front().expect("levels are not empty");
        if level.get().is_empty() {
            level.remove();
        }
        self.len -= 1;
        Some(message)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.levels.clear();
        self.len = 0;
    }

    fn iter(&self) -> impl Iterator<Item = &Message> {
        self.levels.values().flatten()
    }

    /// The first message of each level.
    fn heads(&self) -> impl Iterator<Item = &Message> {
        self.levels.values().filter_map(VecDeque::front)
    }

    /// Takes from the front of each level, highest first, what `test` picks until the first
    /// it does not.
    fn take_heads_while(&mut self, test: impl Fn(&Message) -> bool) -> Vec<Message> {
        let mut taken = Vec::new();
        for level in self.levels.values_mut().rev() {
            while let Some(head) = level.front()
                && test(head)
            {
                taken.push(level.pop_front().expect("a head"));
            }
        }
        if !taken.is_empty() {
            self.levels.retain(|_, level| !level.is_empty());
            self.len -= taken.len();
        }
        taken
    }
}

#[cfg(test)]
mod tests;
