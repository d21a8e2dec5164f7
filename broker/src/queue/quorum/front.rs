//! A quorum queue's front on one node: what the node's channels hold (a [`QueueHandle`]), and
//! the task that turns their commands into commands of the queue's log.
//!
//! ```text
//!  channels ─QueueCommand─> front ─submit─> host (here or on the leader's node) ─> log
//!  connections <─deliveries, confirms, credit── front <─FrontEvent── leader's machine
//! ```
//!
//! Publishes carry the front's enqueuer id and a sequence number, and stay in the front's
//! window until the log answers for them: a publish is confirmed only once a majority of the
//! queue's members have it on disk (the leader answers after applying it, which it does only
//! once it is committed). When an answer is lost (the leader died, a link broke), the window
//! is sent again from its start; the queue takes each sequence number once and asks for the
//! ones it missed, so nothing is enqueued twice or out of order. Publishes the queue could not
//! take within the propose timeout (no majority) are nacked, and the front starts over as a new
//! enqueuer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use warren_cluster::multiraft::host::GroupError;
use warren_wire::ShortString;

use super::dead_letters::DeadLetterWorker;
use super::hub::{FrontEvent, QuorumHub, group_of};
use super::state::{Command, ConsumerKey, Enqueued, Enqueuer, Limits, Outcome, Reply};
use crate::error::AmqpError;
use crate::queue::env::QueueEnv;
use crate::queue::events::{
    ChannelKey, ConnectionEvent, ConnectionId, Delivery, EventSender, PublishOutcome,
};
use crate::queue::{
    ConsumerSpec, DELIVERY_CREDIT, GetResult, Incoming, PUBLISH_CREDIT_MORE_AFTER, QueueCommand,
    QueueConfig, QueueHandle, QueueShared, QueueSpec, QueueStats, Settlement,
};

/// How long the front waits for the log to answer one submission.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(35);
/// How long the front waits before sending its window again after a failure.
const RETRY: Duration = Duration::from_millis(100);
/// How many times a consumer's resumption is tried while the queue has no leader (a second
/// apart) before the consumer is cancelled.
const RESUME_ATTEMPTS: u32 = 30;
/// How long after a tick it is made again if the log does not answer it with the next
/// deadline.
const TICK_AGAIN: Duration = Duration::from_secs(5);
/// Commands per submission when the window is sent again.
const RESEND_BATCH: usize = 256;

/// Starts the front of quorum queue `id` on this node and returns its handle.
pub(crate) fn spawn(
    hub: &Arc<QuorumHub>,
    spec: QueueSpec,
    config: QueueConfig,
    env: Arc<dyn QueueEnv>,
    id: u64,
) -> QueueHandle {
    let (commands, mailbox) = mpsc::unbounded_channel();
    let handle = QueueHandle(Arc::new(QueueShared {
        id,
        name: spec.name,
        vhost: env.vhost_name(),
        durable: true,
        exclusive_owner: None,
        auto_delete: false,
        arguments: spec.arguments,
        config,
        home: None,
        counters: hub.counters(id),
        commands,
    }));
    let (events, event_mailbox) = mpsc::unbounded_channel();
    hub.add_front(id, events);
    let (internal, internal_mailbox) = mpsc::unbounded_channel();
    let (confirms, confirm_mailbox) = mpsc::unbounded_channel();
    let front = Front {
        queue: handle.clone(),
        group: group_of(id),
        hub: hub.clone(),
        env: Arc::downgrade(&env),
        enqueuer: new_enqueuer(hub),
        next_seq: 1,
        window: BTreeMap::new(),
        epoch: 0,
        retry_at: None,
        tick_at: None,
        publishers: HashMap::new(),
        consumers: HashMap::new(),
        internal,
        dead_letters: DeadLetterWorker::new(confirms),
    };
    // Consumers of this node's earlier runs are gone.
    front.submit_settling(Command::NodeDown {
        node: hub.node().to_string(),
        keep: Some(hub.incarnation()),
    });
    let tasks = env.tasks();
    tasks.tracker.spawn(front.run(
        Mailboxes {
            commands: mailbox,
            events: event_mailbox,
            internal: internal_mailbox,
            confirms: confirm_mailbox,
        },
        tasks.stop.clone(),
    ));
    handle
}

/// The limits the queue's state enforces, from its settings.
pub(crate) fn limits(config: &QueueConfig) -> Limits {
    Limits {
        delivery_limit: config
            .delivery_limit
            .map(|limit| u32::try_from(limit).unwrap_or(u32::MAX)),
        max_length: config.max_length,
        max_length_bytes: config.max_length_bytes,
        reject_publish: config.overflow == crate::queue::arguments::Overflow::RejectPublish,
        dead_letter: config.dead_letter_exchange.is_some(),
        at_least_once: config.dead_letter_at_least_once,
        delayed_retry: config.delayed_retry,
        message_ttl: config.message_ttl,
        expires: config.expires,
        single_active: config.single_active_consumer,
    }
}

/// The message as a redelivery shows it: with `x-delivery-count`, its failed deliveries, in its
/// headers (as RabbitMQ's quorum queues set it once a delivery has failed).
fn with_delivery_count(message: crate::message::Message, count: u32) -> crate::message::Message {
    if count == 0 {
        return message;
    }
    let mut properties = message.properties.decode().unwrap_or_default();
    let mut headers = properties.headers.take().unwrap_or_default();
    headers.insert(
        ShortString::from_static("x-delivery-count"),
        warren_wire::FieldValue::LongLongInt(i64::from(count)),
    );
    properties.headers = Some(headers);
    let raw = properties.to_raw();
    let summary = raw.summary().unwrap_or_default();
    crate::message::Message {
        properties: raw,
        summary,
        ..message
    }
}

fn new_enqueuer(hub: &QuorumHub) -> Enqueuer {
    Enqueuer {
        node: hub.node().to_string(),
        incarnation: fastrand::u64(1..u64::MAX),
    }
}

struct Pending {
    command: Bytes,
    publisher: ConnectionId,
    confirm: Option<(u16, u64)>,
    since: Instant,
}

struct Publisher {
    events: EventSender,
    processed: u32,
}

/// Which deliveries to a consumer are still good. They reach the front by more than one way
/// (from each leader in turn; over a link, then over the one that replaced it), so a stale one
/// can come after newer ones: made by a leader since replaced (the new leader's first entry
/// gave back everything checked out), or to an earlier checkout of the consumer (the queue let
/// it go meanwhile and gave back what it held). Passed on, it would reach the client after the
/// message's redelivery: a repeat without `redelivered`. Current deliveries never go back in
/// term or checkout, so the fence is the highest of each seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DeliveryFence {
    term: u64,
    epoch: u64,
}

/// Why a delivery was stale. Its credit is not owed back: the new leader, or the new
/// checkout, started the consumer's credit afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    /// Made by an earlier leader.
    Leader,
    /// Made to an earlier checkout.
    Checkout,
}

impl DeliveryFence {
    /// Admits a delivery made by the leader of `term` to checkout `epoch`, or says why it is
    /// stale.
    fn admit(&mut self, term: u64, epoch: u64) -> Result<(), Stale> {
        if epoch < self.epoch {
            return Err(Stale::Checkout);
        }
        if term < self.term {
            return Err(Stale::Leader);
        }
        *self = DeliveryFence { term, epoch };
        Ok(())
    }

    /// The consumer's checkout is at `since` (the queue answered it): deliveries to earlier
    /// checkouts of the same key (the same tag consumed again on the channel) are stale.
    fn checked_out(&mut self, since: u64) {
        self.epoch = self.epoch.max(since);
    }
}

struct Local {
    spec: ConsumerSpec,
    /// Whether the queue has answered its checkout (deliveries wait until then).
    ready: bool,
    fence: DeliveryFence,
    /// Deliveries before the checkout's answer, with the checkout each was made to.
    held: Vec<(u64, Delivery)>,
    /// Credit its connection returned, not yet passed on.
    owed: u32,
}

impl Local {
    /// Tells the consumer's client it is cancelled (`basic.cancel`).
    fn tell_cancelled(&self) {
        let _ = self.spec.events.send(ConnectionEvent::ConsumerCancelled {
            channel: self.spec.channel.channel,
            consumer_tag: self.spec.tag.clone(),
        });
    }
}

/// The command that checks out consumer `key` of `spec`, with a full delivery credit;
/// `timeout` is its `consumer_timeout` unless its arguments set one.
fn checkout(key: &ConsumerKey, spec: &ConsumerSpec, timeout: u64) -> Command {
    Command::Checkout {
        consumer: key.clone(),
        prefetch: u32::from(spec.prefetch),
        no_ack: spec.no_ack,
        credit: DELIVERY_CREDIT,
        exclusive: spec.exclusive,
        // Checked by `Front::consume`.
        priority: spec
            .arguments
            .get("x-priority")
            .and_then(|value| value.as_integer())
            .unwrap_or(0),
        // RabbitMQ 4.3: the consumer's own, else the queue's, else the node's.
        timeout: (!spec.no_ack).then(|| {
            spec.arguments
                .get("x-consumer-timeout")
                .and_then(|value| value.as_integer())
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or(timeout)
        }),
    }
}

enum Internal {
    Published {
        epoch: u64,
        seqs: Vec<u64>,
        result: Result<Vec<Bytes>, GroupError>,
    },
    CheckedOut {
        consumer: ConsumerKey,
        result: Result<Reply, GroupError>,
        reply: oneshot::Sender<crate::error::AmqpResult<()>>,
    },
    Resumed {
        consumer: ConsumerKey,
        attempt: u32,
        result: Result<Reply, GroupError>,
    },
    Resume {
        consumer: ConsumerKey,
        attempt: u32,
    },
}

struct Front {
    queue: QueueHandle,
    group: u64,
    hub: Arc<QuorumHub>,
    env: Weak<dyn QueueEnv>,
    enqueuer: Enqueuer,
    next_seq: u64,
    /// Publishes not answered yet, by sequence number.
    window: BTreeMap<u64, Pending>,
    /// Bumped each time the window is sent again: answers of older sends only confirm.
    epoch: u64,
    retry_at: Option<Instant>,
    /// When to tick the queue (this node's member leads it, and a message or the queue is to
    /// expire then).
    tick_at: Option<Instant>,
    publishers: HashMap<ConnectionId, Publisher>,
    consumers: HashMap<ConsumerKey, Local>,
    internal: mpsc::UnboundedSender<Internal>,
    /// At-least-once dead-lettering, while this node's member leads.
    dead_letters: DeadLetterWorker,
}

/// What a front reads.
struct Mailboxes {
    commands: mpsc::UnboundedReceiver<QueueCommand>,
    events: mpsc::UnboundedReceiver<FrontEvent>,
    internal: mpsc::UnboundedReceiver<Internal>,
    /// The confirms of the dead letters' target queues.
    confirms: crate::queue::events::EventReceiver,
}

/// Waits for the log's answer to one submission.
async fn answer(
    proposed: warren_cluster::multiraft::host::Proposed,
    group: u64,
) -> Result<Vec<Bytes>, GroupError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, proposed).await {
        Err(_) => Err(GroupError::Indeterminate(group, "no answer in time".into())),
        Ok(Err(_)) => Err(GroupError::Shutdown),
        Ok(Ok(result)) => result,
    }
}

/// The single reply of a one-command submission.
fn single(result: Result<Vec<Bytes>, GroupError>) -> Result<Reply, GroupError> {
    let answers = result?;
    let first = answers
        .first()
        .ok_or_else(|| GroupError::Indeterminate(0, "no answer".into()))?;
    Reply::decode(first).map_err(|error| GroupError::Indeterminate(0, error))
}

impl Front {
    async fn run(mut self, mut mailboxes: Mailboxes, stop: tokio_util::sync::CancellationToken) {
        loop {
            let retry = self.retry_at;
            let tick = self.tick_at;
            let dead_letters = self.dead_letters.next_check();
            tokio::select! {
                // The node is stopping and its clients are gone: nothing is left to answer (what
                // the log took stays in it).
                _ = stop.cancelled() => return,
                command = mailboxes.commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                event = mailboxes.events.recv() => match event {
                    Some(event) => self.event(event),
                    // The queue was deleted.
                    None => {
                        self.shut_down();
                        return;
                    }
                },
                Some(message) = mailboxes.internal.recv() => self.internal(message),
                Some(event) = mailboxes.confirms.recv() => {
                    let done = self.dead_letters.event(event, Instant::now());
                    self.dead_lettered(done);
                    self.pump_dead_letters();
                }
                _ = sleep_until_or_never(dead_letters) => self.pump_dead_letters(),
                _ = sleep_until_or_never(retry) => {
                    self.retry_at = None;
                    self.resend();
                }
                _ = sleep_until_or_never(tick) => {
                    // Ticked again unless the tick's application tells the next deadline (a
                    // tick lost with a leader change would leave the queue waiting).
                    self.tick_at = Some(Instant::now() + TICK_AGAIN);
                    self.submit_settling(Command::Tick);
                }
            }
        }
    }

    fn name(&self) -> String {
        format!(
            "queue '{}' in vhost '{}'",
            self.queue.name, self.queue.vhost
        )
    }

    fn command(&mut self, command: QueueCommand) {
        match command {
            QueueCommand::Publish {
                publisher,
                messages,
            } => self.publish(publisher, messages),
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
            QueueCommand::Consume { consumer, reply } => self.consume(consumer, reply),
            QueueCommand::Cancel {
                channel,
                tag,
                reply,
            } => {
                let key = self.key(channel, &tag);
                self.consumers.remove(&key);
                let proposed = self
                    .hub
                    .host()
                    .submit(self.group, vec![Command::Cancel { consumer: key }.encode()]);
                let group = self.group;
                tokio::spawn(async move {
                    let _ = answer(proposed, group).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(());
                    }
                });
            }
            QueueCommand::Settle {
                channel,
                message_ids,
                outcome,
            } => {
                let outcome = match outcome {
                    Settlement::Ack => Outcome::Ack,
                    Settlement::Requeue => Outcome::Requeue,
                    Settlement::Discard => Outcome::Discard,
                };
                self.submit_settling(Command::Settle {
                    node: self.hub.node().to_string(),
                    incarnation: self.hub.incarnation(),
                    connection: channel.connection,
                    channel: channel.channel,
                    ids: message_ids,
                    outcome,
                });
            }
            QueueCommand::Credit {
                channel,
                tag,
                amount,
            } => {
                let key = self.key(channel, &tag);
                self.owe_credit(key, amount);
            }
            QueueCommand::Get {
                channel,
                no_ack,
                reply,
            } => {
                let command = Command::Get {
                    node: self.hub.node().to_string(),
                    incarnation: self.hub.incarnation(),
                    connection: channel.connection,
                    channel: channel.channel,
                    no_ack,
                };
                let proposed = self.hub.host().submit(self.group, vec![command.encode()]);
                let group = self.group;
                let name = self.name();
                tokio::spawn(async move {
                    let got = match single(answer(proposed, group).await) {
                        Ok(Reply::Got(got)) => got,
                        Ok(other) => {
                            tracing::warn!("{name}: basic.get answered {other:?}");
                            None
                        }
                        Err(error) => {
                            tracing::warn!("{name}: basic.get failed: {error}");
                            None
                        }
                    };
                    let result = got.and_then(|got| {
                        match crate::store::records::decode_message(got.message.to_vec()) {
                            Ok(message) => Some(GetResult {
                                message_id: got.id,
                                message: Arc::new(with_delivery_count(message, got.delivery_count)),
                                redelivered: got.redelivered,
                                remaining: got.remaining,
                            }),
                            Err(error) => {
                                tracing::error!("{name}: message {}: {error}", got.id);
                                None
                            }
                        }
                    });
                    let _ = reply.send(result);
                });
            }
            QueueCommand::Stats { reply, renew } => {
                if renew && self.queue.config.expires.is_some() {
                    self.submit_settling(Command::Touch);
                }
                let proposed = self
                    .hub
                    .host()
                    .submit(self.group, vec![Command::Stats.encode()]);
                let group = self.group;
                let local = self.consumers.len() as u32;
                tokio::spawn(async move {
                    let stats = match single(answer(proposed, group).await) {
                        Ok(Reply::Stats {
                            messages,
                            consumers,
                        }) => QueueStats {
                            messages,
                            consumers,
                        },
                        // Without a leader the counts are not known: what this node knows.
                        _ => QueueStats {
                            messages: 0,
                            consumers: local,
                        },
                    };
                    let _ = reply.send(stats);
                });
            }
            QueueCommand::Purge { reply } => {
                let proposed = self
                    .hub
                    .host()
                    .submit(self.group, vec![Command::Purge.encode()]);
                let group = self.group;
                tokio::spawn(async move {
                    if let Ok(Reply::Count(count)) = single(answer(proposed, group).await) {
                        let _ = reply.send(count);
                    }
                });
            }
            QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let proposed = self
                    .hub
                    .host()
                    .submit(self.group, vec![Command::Stats.encode()]);
                let group = self.group;
                let name = self.name();
                let queue = self.queue.clone();
                let env = self.env.clone();
                tokio::spawn(async move {
                    let (messages, consumers) = match single(answer(proposed, group).await) {
                        Ok(Reply::Stats {
                            messages,
                            consumers,
                        }) => (messages, consumers),
                        Ok(other) => {
                            let error = format!("{name}: {other:?}");
                            let _ = reply.send(Err(AmqpError::internal_error(error)));
                            return;
                        }
                        Err(error) => {
                            let error = format!("{name} cannot be deleted now: {error}");
                            let _ = reply.send(Err(AmqpError::internal_error(error)));
                            return;
                        }
                    };
                    if if_empty && messages > 0 {
                        let error = AmqpError::precondition_failed(format!("{name} not empty"));
                        let _ = reply.send(Err(error));
                        return;
                    }
                    if if_unused && consumers > 0 {
                        let error = AmqpError::precondition_failed(format!("{name} in use"));
                        let _ = reply.send(Err(error));
                        return;
                    }
                    if let Some(env) = env.upgrade() {
                        env.remove_queue(&queue).await;
                    }
                    let _ = reply.send(Ok(messages));
                });
            }
            QueueCommand::ChannelClosed { channel } => {
                self.consumers.retain(|key, _| {
                    !(key.connection == channel.connection && key.channel == channel.channel)
                });
                self.submit_settling(Command::ChannelDown {
                    node: self.hub.node().to_string(),
                    incarnation: self.hub.incarnation(),
                    connection: channel.connection,
                    channel: channel.channel,
                });
            }
            QueueCommand::Return { messages } => {
                // No-ack deliveries their consumer could not take: enqueued again.
                let incoming = messages
                    .into_iter()
                    .map(|returned| Incoming {
                        message: returned.message,
                        confirm: None,
                    })
                    .collect();
                self.publish(0, incoming);
            }
            QueueCommand::Kick | QueueCommand::Storage(_) => {}
        }
    }

    /// Credit for `amount` more deliveries to a consumer, passed on to the queue in lots.
    fn owe_credit(&mut self, key: ConsumerKey, amount: u32) {
        let Some(local) = self.consumers.get_mut(&key) else {
            return;
        };
        local.owed += amount;
        if local.owed >= DELIVERY_CREDIT / 4 {
            let amount = std::mem::take(&mut local.owed);
            self.submit_settling(Command::Credit {
                consumer: key,
                amount,
            });
        }
    }

    /// The queue's `x-consumer-timeout`, else the node's `consumer_timeout`.
    fn consumer_timeout(&self) -> u64 {
        self.queue
            .config
            .consumer_timeout
            .unwrap_or_else(|| self.hub.consumer_timeout())
    }

    fn key(&self, channel: ChannelKey, tag: &ShortString) -> ConsumerKey {
        ConsumerKey {
            node: self.hub.node().to_string(),
            incarnation: self.hub.incarnation(),
            connection: channel.connection,
            channel: channel.channel,
            tag: Bytes::copy_from_slice(tag.as_bytes()),
        }
    }

    fn publish(&mut self, publisher: ConnectionId, messages: Vec<Incoming>) {
        let now = Instant::now();
        let mut seqs = Vec::with_capacity(messages.len());
        let mut commands = Vec::with_capacity(messages.len());
        for incoming in messages {
            let seq = self.next_seq;
            self.next_seq += 1;
            let command = Command::Enqueue {
                enqueuer: self.enqueuer.clone(),
                seq,
                answered_below: self.window.keys().next().copied().unwrap_or(seq),
                message: Bytes::from(crate::store::records::encode_message(&incoming.message)),
                size: incoming.message.body_size() as u32,
                // Checked when it was published, so it parses.
                ttl: incoming.message.summary.expiration.and_then(|range| {
                    crate::message::parse_expiration(&incoming.message.properties.slice(range)).ok()
                }),
                priority: super::state::priority_of(incoming.message.summary.priority),
            }
            .encode();
            seqs.push(seq);
            commands.push(command.clone());
            self.window.insert(
                seq,
                Pending {
                    command,
                    publisher,
                    confirm: incoming.confirm,
                    since: now,
                },
            );
        }
        self.submit_publishes(seqs, commands);
    }

    fn submit_publishes(&self, seqs: Vec<u64>, commands: Vec<Bytes>) {
        if seqs.is_empty() {
            return;
        }
        let proposed = self.hub.host().submit(self.group, commands);
        let internal = self.internal.clone();
        let (epoch, group) = (self.epoch, self.group);
        tokio::spawn(async move {
            let result = answer(proposed, group).await;
            let _ = internal.send(Internal::Published {
                epoch,
                seqs,
                result,
            });
        });
    }

    /// Submits a command whose outcome nobody waits for and that may be applied twice (a
    /// settlement, credit, a channel gone): sent again a few times if the log does not answer.
    fn submit_settling(&self, command: Command) {
        let host = self.hub.host().clone();
        let group = self.group;
        let command = command.encode();
        // The first submission now, in order with what the front submits next (an ack before
        // a declaration's counts); the retries after.
        let mut proposed = host.submit(group, vec![command.clone()]);
        tokio::spawn(async move {
            for _ in 0..5 {
                match answer(proposed, group).await {
                    Ok(_) | Err(GroupError::Shutdown | GroupError::Unknown(_)) => return,
                    Err(_) => tokio::time::sleep(RETRY).await,
                }
                proposed = host.submit(group, vec![command.clone()]);
            }
        });
    }

    fn internal(&mut self, message: Internal) {
        match message {
            Internal::Published {
                epoch,
                seqs,
                result,
            } => self.published(epoch, seqs, result),
            Internal::Resumed {
                consumer,
                attempt,
                result,
            } => self.resumed(consumer, attempt, result),
            Internal::Resume { consumer, attempt } => self.resume(consumer, attempt),
            Internal::CheckedOut {
                consumer,
                result,
                reply,
            } => {
                let mut since = 0;
                let outcome = match result {
                    Ok(Reply::CheckedOut { since: at }) => {
                        since = at;
                        Ok(())
                    }
                    Ok(Reply::Error(403, text)) => {
                        Err(AmqpError::access_refused(format!("{} {text}", self.name())))
                    }
                    Ok(other) => Err(AmqpError::internal_error(format!(
                        "{}: {other:?}",
                        self.name()
                    ))),
                    Err(error) => {
                        // It may have been applied: make sure the consumer does not linger.
                        self.submit_settling(Command::Cancel {
                            consumer: consumer.clone(),
                        });
                        Err(AmqpError::internal_error(format!(
                            "{} is not available: {error}",
                            self.name()
                        )))
                    }
                };
                let ok = outcome.is_ok();
                let _ = reply.send(outcome);
                if !ok {
                    self.consumers.remove(&consumer);
                    return;
                }
                match self.consumers.get_mut(&consumer) {
                    Some(local) => {
                        local.ready = true;
                        local.fence.checked_out(since);
                        // Those made to an earlier checkout under the same tag (it was
                        // cancelled, what it held given back) go; at-most-once ones are the
                        // client's whatever checkout they were made to.
                        let held: Vec<Delivery> = std::mem::take(&mut local.held)
                            .into_iter()
                            .filter(|(epoch, delivery)| *epoch >= since || !delivery.needs_ack)
                            .map(|(_, delivery)| delivery)
                            .collect();
                        if !held.is_empty() {
                            let _ = local.spec.events.send(ConnectionEvent::Deliveries(held));
                        }
                    }
                    // Its channel closed meanwhile (see `resumed`).
                    None => self.submit_settling(Command::Cancel { consumer }),
                }
            }
        }
    }

    fn published(&mut self, epoch: u64, seqs: Vec<u64>, result: Result<Vec<Bytes>, GroupError>) {
        let mut settled: HashMap<ConnectionId, Vec<PublishOutcome>> = HashMap::new();
        let mut resend = false;
        match result {
            Ok(answers) => {
                for (seq, answer) in seqs.iter().zip(answers.iter()) {
                    match Reply::decode(answer) {
                        Ok(Reply::Enqueued(Enqueued::Accepted | Enqueued::Duplicate)) => {
                            self.settle(*seq, true, &mut settled);
                        }
                        // Full, with `reject-publish`: nacked.
                        Ok(Reply::Enqueued(Enqueued::Rejected)) => {
                            self.settle(*seq, false, &mut settled);
                        }
                        Ok(Reply::Enqueued(Enqueued::Gap { expected })) => {
                            // Everything before `expected` is in the queue.
                            let taken: Vec<u64> =
                                self.window.range(..expected).map(|(s, _)| *s).collect();
                            for seq in taken {
                                self.settle(seq, true, &mut settled);
                            }
                            resend |= epoch == self.epoch;
                        }
                        Ok(other) => {
                            tracing::warn!("{}: a publish answered {other:?}", self.name());
                            self.settle(*seq, false, &mut settled);
                        }
                        Err(error) => {
                            tracing::error!("{}: {error}", self.name());
                            self.settle(*seq, false, &mut settled);
                        }
                    }
                }
            }
            Err(GroupError::Shutdown) => {}
            Err(error) => {
                tracing::debug!("{}: publishes to send again: {error}", self.name());
                resend |= epoch == self.epoch;
            }
        }
        for (publisher, outcomes) in settled {
            if let Some(entry) = self.publishers.get(&publisher) {
                let _ = entry.events.send(ConnectionEvent::Settled(outcomes));
            }
        }
        if resend {
            // Later answers of this send only confirm; the next send starts from the window.
            self.epoch += 1;
            self.retry_at.get_or_insert(Instant::now() + RETRY);
        }
    }

    /// Answers for one publish: its confirm (or nack) and its publisher's credit.
    fn settle(
        &mut self,
        seq: u64,
        accepted: bool,
        settled: &mut HashMap<ConnectionId, Vec<PublishOutcome>>,
    ) {
        let Some(pending) = self.window.remove(&seq) else {
            return;
        };
        if let Some((channel, sequence)) = pending.confirm {
            settled
                .entry(pending.publisher)
                .or_default()
                .push(PublishOutcome {
                    channel,
                    sequence,
                    accepted,
                });
        }
        if let Some(publisher) = self.publishers.get_mut(&pending.publisher) {
            publisher.processed += 1;
            if publisher.processed >= PUBLISH_CREDIT_MORE_AFTER {
                let amount = std::mem::take(&mut publisher.processed);
                let _ = publisher.events.send(ConnectionEvent::PublishCredit {
                    queue: self.queue.id(),
                    amount,
                });
            }
        }
    }

    /// Sends the window again, or gives up on it when it waited longer than a proposal may.
    fn resend(&mut self) {
        let patience = self.hub.host().propose_timeout();
        let oldest = self.window.values().map(|pending| pending.since).min();
        if oldest.is_some_and(|since| since.elapsed() >= patience) {
            let mut settled = HashMap::new();
            let seqs: Vec<u64> = self.window.keys().copied().collect();
            tracing::warn!(
                "{}: {} publishes not taken within {patience:?} are nacked",
                self.name(),
                seqs.len()
            );
            for seq in seqs {
                self.settle(seq, false, &mut settled);
            }
            for (publisher, outcomes) in settled {
                if let Some(entry) = self.publishers.get(&publisher) {
                    let _ = entry.events.send(ConnectionEvent::Settled(outcomes));
                }
            }
            // The queue may hold some of them: a new enqueuer starts its numbers afresh.
            self.enqueuer = new_enqueuer(&self.hub);
            self.next_seq = 1;
            self.epoch += 1;
            return;
        }
        let entries: Vec<(u64, Bytes)> = self
            .window
            .iter()
            .map(|(seq, pending)| (*seq, pending.command.clone()))
            .collect();
        for chunk in entries.chunks(RESEND_BATCH) {
            let (seqs, commands) = chunk.iter().cloned().unzip();
            self.submit_publishes(seqs, commands);
        }
    }

    fn consume(
        &mut self,
        spec: ConsumerSpec,
        reply: oneshot::Sender<crate::error::AmqpResult<()>>,
    ) {
        // RabbitMQ 4's quorum queues refuse a channel-wide prefetch (`basic.qos` global).
        if spec.gate.limit.load(std::sync::atomic::Ordering::Acquire) > 0 {
            let _ = reply.send(Err(AmqpError::not_implemented(format!(
                "{} does not support global qos",
                self.name()
            ))));
            return;
        }
        if let Err(error) = crate::queue::arguments::consumer_arguments(
            &spec.arguments,
            &self.queue.name,
            &self.queue.vhost,
            true,
        ) {
            let _ = reply.send(Err(error));
            return;
        }
        let key = self.key(spec.channel, &spec.tag);
        let command = checkout(&key, &spec, self.consumer_timeout());
        self.consumers.insert(
            key.clone(),
            Local {
                spec,
                ready: false,
                fence: DeliveryFence::default(),
                held: Vec::new(),
                owed: 0,
            },
        );
        let proposed = self.hub.host().submit(self.group, vec![command.encode()]);
        let internal = self.internal.clone();
        let group = self.group;
        tokio::spawn(async move {
            let result = single(answer(proposed, group).await);
            let _ = internal.send(Internal::CheckedOut {
                consumer: key,
                result,
                reply,
            });
        });
    }

    /// Checks the consumer out again (the queue keeps it as it is when it still has it);
    /// refused, the consumer is cancelled, and the client told.
    fn resume(&mut self, consumer: ConsumerKey, attempt: u32) {
        let Some(local) = self.consumers.get(&consumer) else {
            return;
        };
        let command = checkout(&consumer, &local.spec, self.consumer_timeout());
        let proposed = self.hub.host().submit(self.group, vec![command.encode()]);
        let internal = self.internal.clone();
        let group = self.group;
        tokio::spawn(async move {
            let result = single(answer(proposed, group).await);
            let _ = internal.send(Internal::Resumed {
                consumer,
                attempt,
                result,
            });
        });
    }

    fn resumed(&mut self, consumer: ConsumerKey, attempt: u32, result: Result<Reply, GroupError>) {
        match result {
            // The channel closed while the checkout was on its way, and the log may have
            // taken the checkout after the channel's end: the consumer goes again, so that
            // nothing is left checked out to a channel nobody reads.
            Ok(Reply::CheckedOut { .. }) if !self.consumers.contains_key(&consumer) => {
                self.submit_settling(Command::Cancel { consumer });
            }
            Ok(Reply::CheckedOut { since }) => {
                if let Some(local) = self.consumers.get_mut(&consumer) {
                    local.fence.checked_out(since);
                }
            }
            Err(error) if attempt < RESUME_ATTEMPTS => {
                tracing::debug!("{}: resuming a consumer: {error}", self.name());
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY * 10).await;
                    let _ = internal.send(Internal::Resume {
                        consumer,
                        attempt: attempt + 1,
                    });
                });
            }
            refused => {
                tracing::warn!(
                    "{}: a consumer could not resume and is cancelled: {refused:?}",
                    self.name()
                );
                if let Some(local) = self.consumers.remove(&consumer) {
                    local.tell_cancelled();
                }
            }
        }
    }

    fn event(&mut self, event: FrontEvent) {
        match event {
            FrontEvent::Deliver {
                consumer,
                id,
                delivery_count,
                redelivered,
                needs_ack,
                term,
                epoch,
                message,
            } => {
                let Some(local) = self.consumers.get_mut(&consumer) else {
                    // Cancelled (or its channel is gone, and the queue hears so): given back
                    // to be delivered to another.
                    if needs_ack {
                        self.submit_settling(Command::Settle {
                            node: consumer.node,
                            incarnation: consumer.incarnation,
                            connection: consumer.connection,
                            channel: consumer.channel,
                            ids: vec![id],
                            outcome: Outcome::Return,
                        });
                    }
                    return;
                };
                // A stale delivery that needs an ack was given back already, and is (or will
                // be) delivered again, marked. One that needs none was settled as it was
                // made: it is the client's, or lost.
                if let Err(stale) = local.fence.admit(term, epoch)
                    && needs_ack
                {
                    let queue = &self.queue.name;
                    tracing::debug!("quorum queue '{queue}': stale delivery of {id}: {stale:?}");
                    return;
                }
                let message = match crate::store::records::decode_message(message.to_vec()) {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::error!("{}: message {id}: {error}", self.queue.name);
                        return;
                    }
                };
                let delivery = Delivery {
                    channel: local.spec.channel.channel,
                    consumer_tag: local.spec.tag.clone(),
                    queue: Some(self.queue.clone()),
                    message_id: id,
                    message: Arc::new(with_delivery_count(message, delivery_count)),
                    redelivered,
                    needs_ack,
                };
                if local.ready {
                    let _ = local
                        .spec
                        .events
                        .send(ConnectionEvent::Deliveries(vec![delivery]));
                } else {
                    local.held.push((epoch, delivery));
                }
            }
            FrontEvent::DeadLetter {
                id,
                reason,
                held,
                message,
            } => {
                let (Some(env), Some(reason)) = (
                    self.env.upgrade(),
                    crate::message::Reason::from_code(reason),
                ) else {
                    return;
                };
                let message = match crate::store::records::decode_message(message.to_vec()) {
                    Ok(message) => Arc::new(message),
                    Err(error) => {
                        tracing::error!("{}: a dead letter: {error}", self.name());
                        return;
                    }
                };
                if held {
                    self.dead_letters.add(id, reason, message);
                    self.pump_dead_letters();
                    return;
                }
                let now = super::state::wall_clock();
                crate::queue::dead_letter::republish(
                    env.as_ref(),
                    &self.queue.name,
                    &self.queue.config,
                    std::iter::once((message, reason)),
                    now,
                );
            }
            FrontEvent::Follower => self.dead_letters.clear(),
            FrontEvent::TickAt(at) => {
                self.tick_at = at.map(|at| {
                    let wait = at.saturating_sub(super::state::wall_clock());
                    // Far deadlines (a day-long consumer timeout) are looked at again daily.
                    Instant::now() + Duration::from_millis(wait.min(86_400_000))
                });
            }
            FrontEvent::TimedOut { consumer, timeout } => {
                if let Some(local) = self.consumers.remove(&consumer) {
                    tracing::warn!(
                        "{}: consumer '{}' held a delivery unacknowledged past {timeout} ms",
                        self.name(),
                        local.spec.tag
                    );
                    let _ = local.spec.events.send(ConnectionEvent::ConsumerTimedOut {
                        channel: local.spec.channel.channel,
                        consumer_tag: local.spec.tag.clone(),
                        timeout,
                    });
                }
                self.submit_settling(Command::Cancel { consumer });
            }
            FrontEvent::Expired => {
                let (queue, env) = (self.queue.clone(), self.env.clone());
                tracing::debug!("{}: unused for its x-expires; deleted", self.name());
                tokio::spawn(async move {
                    if let Some(env) = env.upgrade() {
                        env.remove_queue(&queue).await;
                    }
                });
            }
            // The leader let the consumer go as its node seemed down; the node is up and
            // the consumer's channel open, so it resumes, as RabbitMQ's consumers do once
            // their node is back.
            FrontEvent::Cancelled { consumer } => self.resume(consumer, 0),
            FrontEvent::Resume => {
                let ready: Vec<ConsumerKey> = self
                    .consumers
                    .iter()
                    .filter(|(_, local)| local.ready)
                    .map(|(key, _)| key.clone())
                    .collect();
                for consumer in ready {
                    self.resume(consumer, 0);
                }
            }
        }
    }

    /// Sends the dead letters that are due to their targets.
    fn pump_dead_letters(&mut self) {
        if self.dead_letters.is_idle() {
            return;
        }
        let Some(env) = self.env.upgrade() else {
            return;
        };
        let done = self.dead_letters.pump(
            env.as_ref(),
            &self.queue.name,
            &self.queue.config,
            Instant::now(),
        );
        self.dead_lettered(done);
    }

    /// Dead letters every target confirmed: the queue forgets them.
    fn dead_lettered(&mut self, ids: Vec<u64>) {
        if !ids.is_empty() {
            self.submit_settling(Command::DeadLettered { ids });
        }
    }

    /// The queue was deleted: its consumers are cancelled, its publishers told.
    fn shut_down(&mut self) {
        self.dead_letters.clear();
        for (_, local) in self.consumers.drain() {
            local.tell_cancelled();
        }
        let mut settled = HashMap::new();
        let seqs: Vec<u64> = self.window.keys().copied().collect();
        for seq in seqs {
            // Publishes that raced the deletion are confirmed, as RabbitMQ does.
            self.settle(seq, true, &mut settled);
        }
        for (publisher, outcomes) in settled {
            if let Some(entry) = self.publishers.get(&publisher) {
                let _ = entry.events.send(ConnectionEvent::Settled(outcomes));
            }
        }
        for (_, publisher) in self.publishers.drain() {
            let _ = publisher.events.send(ConnectionEvent::QueueGone {
                queue: self.queue.id(),
            });
        }
    }
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::{DeliveryFence, Stale};

    #[test]
    fn the_fence_drops_deliveries_of_replaced_leaders_and_earlier_checkouts() {
        let mut fence = DeliveryFence::default();
        assert_eq!(fence.admit(3, 10), Ok(()));
        // The same leader and checkout, in order: all current.
        assert_eq!(fence.admit(3, 10), Ok(()));
        // A new leader delivers; the old one's late deliveries are stale.
        assert_eq!(fence.admit(4, 10), Ok(()));
        assert_eq!(fence.admit(3, 10), Err(Stale::Leader));
        // The consumer was let go and checked out again at entry 50.
        assert_eq!(fence.admit(4, 50), Ok(()));
        assert_eq!(fence.admit(4, 10), Err(Stale::Checkout));
        assert_eq!(fence.admit(3, 10), Err(Stale::Checkout));
        assert_eq!(fence, DeliveryFence { term: 4, epoch: 50 });
        // Cancelled and consumed again under the same tag: the new checkout's answer (entry
        // 70) fences off the first one's deliveries before any of the new one's came.
        let mut fence = DeliveryFence::default();
        fence.checked_out(70);
        assert_eq!(fence.admit(4, 50), Err(Stale::Checkout));
        assert_eq!(fence.admit(4, 70), Ok(()));
    }
}
