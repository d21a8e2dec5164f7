//! The classic queue's rules, sans-IO: commands and `now` in, what connections are told (and
//! what goes to dead-lettering and to the disk) out. The disk is an in-memory fake whose writes
//! complete only when a test says so, so that "confirmed only once synced" is observable.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use warren_storage::{Done, Position, Stream};
use warren_wire::{BasicProperties, FieldTable, FieldValue, ReplyCode, ShortString};

use super::{Outbox, QueueState};
use crate::error::{AmqpError, AmqpResult};
use crate::message::{Message, Reason};
use crate::queue::events::{
    ChannelKey, ConnectionEvent, ConnectionId, EventReceiver, PublishOutcome,
};
use crate::queue::storage::{MessageReader, QueueStorage};
use crate::queue::{
    ChannelGate, ConsumerSpec, DELIVERY_CREDIT, GetResult, Incoming, PUBLISH_CREDIT_MORE_AFTER,
    QueueCommand, QueueHandle, QueueShared, QueueStats, Settlement, StorageEvent, arguments,
};
use crate::store::records;

/// What the fake disk holds: records the writer has not taken, and those it has.
#[derive(Debug, Default)]
struct Disk {
    pending: Vec<(u64, Stream, Bytes)>,
    written: HashMap<(Stream, u32), Bytes>,
    done: Vec<Done>,
    released: Vec<(Stream, Position)>,
    next_offset: u32,
}

/// A [`QueueStorage`] over [`Disk`].
#[derive(Debug, Clone, Default)]
struct FakeStorage(Arc<Mutex<Disk>>);

impl FakeStorage {
    /// The writer takes every pending record and syncs it.
    fn sync(&self) {
        let mut disk = self.0.lock();
        for (tag, stream, payload) in std::mem::take(&mut disk.pending) {
            // Segments count from 1 (segment 0 means "not on disk").
            let position = Position {
                segment: 1,
                offset: disk.next_offset,
                length: payload.len() as u32,
            };
            disk.next_offset += 1;
            disk.written.insert((stream, position.offset), payload);
            disk.done.push(Done {
                tag,
                result: Ok(position),
            });
        }
    }

    /// Message records (not bookkeeping) waiting for the writer.
    fn pending_messages(&self) -> usize {
        let disk = self.0.lock();
        disk.pending
            .iter()
            .filter(|(tag, _, _)| tag & crate::queue::storage::BOOKKEEPING == 0)
            .count()
    }

    fn written(&self) -> usize {
        self.0.lock().written.len()
    }
}

impl QueueStorage for FakeStorage {
    fn write(&mut self, tag: u64, stream: Stream, payload: Bytes, _sync: bool, _counted: bool) {
        self.0.lock().pending.push((tag, stream, payload));
    }

    fn cancel(&mut self, tag: u64) -> bool {
        let mut disk = self.0.lock();
        let before = disk.pending.len();
        disk.pending.retain(|(pending, _, _)| *pending != tag);
        disk.pending.len() != before
    }

    fn release(&mut self, stream: Stream, position: Position) {
        self.0.lock().released.push((stream, position));
    }

    fn read(&self, stream: Stream, position: Position) -> Result<Message, String> {
        let payload = self
            .0
            .lock()
            .written
            .get(&(stream, position.offset))
            .cloned()
            .ok_or("no record there")?;
        match records::decode(payload) {
            Ok(records::Record::Enqueue(record)) => Ok(record.message),
            Ok(_) => Err("not a message".into()),
            Err(error) => Err(error.to_string()),
        }
    }

    fn reader(&self) -> Option<MessageReader> {
        None
    }

    fn take_done(&self) -> Vec<Done> {
        std::mem::take(&mut self.0.lock().done)
    }

    fn unwritten_bytes(&self) -> u64 {
        let disk = self.0.lock();
        disk.pending
            .iter()
            .map(|(_, _, payload)| payload.len() as u64)
            .sum()
    }
}

/// One queue, driven the way its task drives it: each step applies commands, delivers,
/// finishes the batch and flushes.
struct Harness {
    state: QueueState,
    disk: FakeStorage,
    now: u64,
    outbox: Outbox,
    /// Dead letters the queue handed out, with why.
    dead: Vec<(Arc<Message>, Reason)>,
    connections: HashMap<ConnectionId, EventReceiver>,
    senders: HashMap<ConnectionId, crate::queue::events::EventSender>,
}

const START: u64 = 1_000_000;

fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
    let mut table = FieldTable::new();
    for (key, value) in entries {
        table.insert(ShortString::try_from(*key).unwrap(), value.clone());
    }
    table
}

fn message(body: &'static [u8], persistent: bool, expiration: Option<&str>) -> Arc<Message> {
    message_of(Bytes::from_static(body), persistent, expiration)
}

fn message_of(body: Bytes, persistent: bool, expiration: Option<&str>) -> Arc<Message> {
    let properties = BasicProperties {
        delivery_mode: persistent.then_some(2),
        expiration: expiration.map(|text| ShortString::try_from(text).unwrap()),
        ..Default::default()
    }
    .to_raw();
    Arc::new(Message {
        exchange: ShortString::EMPTY,
        routing_key: ShortString::from_static("q"),
        summary: properties.summary().unwrap(),
        properties,
        body,
        extra_keys: None,
        deaths: None,
    })
}

impl Harness {
    fn new(arguments: &[(&str, FieldValue)], durable: bool, auto_delete: bool) -> Harness {
        let arguments = table(arguments);
        let name = ShortString::from_static("q");
        let config = arguments::parse(&arguments, &name, "/").expect("valid arguments");
        let (commands, _mailbox) = mpsc::unbounded_channel();
        let handle = QueueHandle(Arc::new(QueueShared {
            id: 7,
            name,
            vhost: "/".into(),
            durable,
            exclusive_owner: None,
            auto_delete,
            arguments,
            config,
            home: None,
            counters: Default::default(),
            commands,
        }));
        let disk = FakeStorage::default();
        Harness {
            state: QueueState::new(handle, START, Box::new(disk.clone()), Vec::new()),
            disk,
            now: START,
            outbox: Outbox::default(),
            dead: Vec::new(),
            connections: HashMap::new(),
            senders: HashMap::new(),
        }
    }

    fn classic() -> Harness {
        Harness::new(&[], false, false)
    }

    fn events(&mut self, connection: ConnectionId) -> crate::queue::events::EventSender {
        if let Some(sender) = self.senders.get(&connection) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        self.connections.insert(connection, receiver);
        self.senders.insert(connection, sender.clone());
        sender
    }

    /// Applies commands as one batch, then delivers and flushes, as the queue's task does;
    /// reads the batch asked for come back as the next batch, as the task's reader sends them.
    fn step(&mut self, mut commands: Vec<QueueCommand>) {
        loop {
            for command in commands {
                self.state.handle(command, self.now, &mut self.outbox);
            }
            self.state.deliver(self.now, &mut self.outbox);
            self.state.finish_batch(&mut self.outbox);
            self.dead.append(&mut self.outbox.dead_letters);
            let reads = std::mem::take(&mut self.outbox.page_in);
            self.outbox.flush(&self.state);
            if reads.is_empty() {
                return;
            }
            let messages = reads
                .into_iter()
                .map(|(id, stream, position)| (id, self.disk.read(stream, position)))
                .collect();
            commands = vec![QueueCommand::Storage(StorageEvent::PagedIn { messages })];
        }
    }

    fn tick(&mut self, now: u64) {
        self.now = now;
        self.state.tick(now, &mut self.outbox);
        self.step(Vec::new());
    }

    fn attach(&mut self, publisher: ConnectionId) {
        let events = self.events(publisher);
        self.step(vec![QueueCommand::AttachPublisher { publisher, events }]);
    }

    fn publish(&mut self, publisher: ConnectionId, messages: Vec<(Arc<Message>, Option<u64>)>) {
        let messages = messages
            .into_iter()
            .map(|(message, sequence)| Incoming {
                message,
                confirm: sequence.map(|sequence| (1, sequence)),
            })
            .collect();
        self.step(vec![QueueCommand::Publish {
            publisher,
            messages,
        }]);
    }

    fn publish_bodies(&mut self, bodies: &[&'static [u8]]) {
        let messages = bodies
            .iter()
            .map(|body| (message(body, false, None), None))
            .collect();
        self.publish(100, messages);
    }

    /// Registers a consumer; its deliveries arrive on connection `connection`, channel 1.
    fn consume(
        &mut self,
        connection: ConnectionId,
        tag: &str,
        prefetch: u16,
        no_ack: bool,
        arguments: &[(&str, FieldValue)],
    ) -> AmqpResult<()> {
        self.consume_with(connection, tag, prefetch, no_ack, false, arguments)
    }

    fn consume_with(
        &mut self,
        connection: ConnectionId,
        tag: &str,
        prefetch: u16,
        no_ack: bool,
        exclusive: bool,
        arguments: &[(&str, FieldValue)],
    ) -> AmqpResult<()> {
        let events = self.events(connection);
        let (reply, mut answer) = oneshot::channel();
        let consumer = ConsumerSpec {
            channel: channel(connection),
            tag: ShortString::try_from(tag).unwrap(),
            no_ack,
            exclusive,
            prefetch,
            gate: Arc::new(ChannelGate::default()),
            events,
            arguments: table(arguments),
        };
        self.step(vec![QueueCommand::Consume { consumer, reply }]);
        answer.try_recv().expect("answered within the batch")
    }

    fn cancel(&mut self, connection: ConnectionId, tag: &str) {
        self.step(vec![QueueCommand::Cancel {
            channel: channel(connection),
            tag: ShortString::try_from(tag).unwrap(),
            reply: None,
        }]);
    }

    fn settle(&mut self, connection: ConnectionId, ids: &[u64], outcome: Settlement) {
        self.step(vec![QueueCommand::Settle {
            channel: channel(connection),
            message_ids: ids.to_vec(),
            outcome,
        }]);
    }

    fn get(&mut self, connection: ConnectionId, no_ack: bool) -> Option<GetResult> {
        let (reply, mut answer) = oneshot::channel();
        self.step(vec![QueueCommand::Get {
            channel: channel(connection),
            no_ack,
            reply,
        }]);
        answer.try_recv().expect("answered within the batch")
    }

    fn stats(&mut self) -> QueueStats {
        let (reply, mut answer) = oneshot::channel();
        self.step(vec![QueueCommand::Stats {
            renew: false,
            reply,
        }]);
        answer.try_recv().expect("answered within the batch")
    }

    fn delete(&mut self, if_unused: bool, if_empty: bool) -> Option<AmqpResult<u32>> {
        let (reply, mut answer) = oneshot::channel();
        self.step(vec![QueueCommand::Delete {
            if_unused,
            if_empty,
            reply,
        }]);
        if self.state.is_deleted() {
            self.state.shut_down(&mut self.outbox);
            self.outbox.flush(&self.state);
        }
        answer.try_recv().ok()
    }

    /// Everything connection `connection` was told since the last look.
    fn told(&mut self, connection: ConnectionId) -> Vec<ConnectionEvent> {
        let mut events = Vec::new();
        if let Some(receiver) = self.connections.get_mut(&connection) {
            while let Ok(event) = receiver.try_recv() {
                events.push(event);
            }
        }
        events
    }

    /// The (message id, body, redelivered) of the deliveries connection `connection` got, by
    /// consumer tag.
    fn delivered(&mut self, connection: ConnectionId) -> Vec<(String, u64, Bytes, bool)> {
        self.told(connection)
            .into_iter()
            .flat_map(|event| match event {
                ConnectionEvent::Deliveries(deliveries) => deliveries,
                _ => Vec::new(),
            })
            .map(|delivery| {
                (
                    String::from_utf8_lossy(delivery.consumer_tag.as_bytes()).into_owned(),
                    delivery.message_id,
                    delivery.message.body.clone(),
                    delivery.redelivered,
                )
            })
            .collect()
    }

    /// The publish outcomes connection `connection` was told.
    fn outcomes(&mut self, connection: ConnectionId) -> Vec<PublishOutcome> {
        self.told(connection)
            .into_iter()
            .flat_map(|event| match event {
                ConnectionEvent::Settled(outcomes) => outcomes,
                _ => Vec::new(),
            })
            .collect()
    }

    /// The writer reports on what it took.
    fn persisted(&mut self) {
        self.disk.sync();
        self.step(vec![QueueCommand::Storage(StorageEvent::Persisted)]);
    }
}

fn channel(connection: ConnectionId) -> ChannelKey {
    ChannelKey {
        connection,
        channel: 1,
    }
}

fn tags(delivered: &[(String, u64, Bytes, bool)]) -> Vec<(&str, u64)> {
    delivered
        .iter()
        .map(|(tag, id, _, _)| (tag.as_str(), *id))
        .collect()
}

fn long(value: i64) -> FieldValue {
    FieldValue::LongLongInt(value)
}

fn text(value: &str) -> FieldValue {
    FieldValue::LongString(value.as_bytes().to_vec().into())
}

#[test]
fn equal_consumers_take_turns_in_publish_order() {
    let mut queue = Harness::classic();
    queue.consume(1, "a", 0, false, &[]).unwrap();
    queue.consume(2, "b", 0, false, &[]).unwrap();
    queue.publish_bodies(&[b"0", b"1", b"2", b"3"]);
    assert_eq!(tags(&queue.delivered(1)), [("a", 0), ("a", 2)]);
    assert_eq!(tags(&queue.delivered(2)), [("b", 1), ("b", 3)]);
    assert_eq!(queue.state.unacked_count(), 4);
}

#[test]
fn prefetch_bounds_unacknowledged_deliveries_and_an_ack_frees_room() {
    let mut queue = Harness::classic();
    queue.consume(1, "a", 2, false, &[]).unwrap();
    queue.publish_bodies(&[b"0", b"1", b"2", b"3", b"4"]);
    assert_eq!(tags(&queue.delivered(1)), [("a", 0), ("a", 1)]);
    assert_eq!(queue.state.ready_count(), 3);
    queue.settle(1, &[0], Settlement::Ack);
    assert_eq!(tags(&queue.delivered(1)), [("a", 2)]);
    // A settlement of another channel's delivery changes nothing.
    queue.settle(9, &[1], Settlement::Ack);
    assert!(queue.delivered(1).is_empty());
    assert_eq!(queue.state.unacked_count(), 2);
}

#[test]
fn higher_priority_consumers_go_first_and_lower_ones_get_what_they_cannot_take() {
    let mut queue = Harness::classic();
    queue.consume(1, "low", 0, false, &[]).unwrap();
    queue
        .consume(2, "high", 1, false, &[("x-priority", long(10))])
        .unwrap();
    queue.publish_bodies(&[b"0"]);
    assert_eq!(tags(&queue.delivered(2)), [("high", 0)]);
    assert!(queue.delivered(1).is_empty());
    // "high" is at its prefetch: the next ones go to "low".
    queue.publish_bodies(&[b"1", b"2"]);
    assert_eq!(tags(&queue.delivered(1)), [("low", 1), ("low", 2)]);
    queue.settle(2, &[0], Settlement::Ack);
    queue.publish_bodies(&[b"3"]);
    assert_eq!(tags(&queue.delivered(2)), [("high", 3)]);
}

#[test]
fn a_bad_consumer_priority_is_refused_with_406() {
    let mut queue = Harness::classic();
    let error = queue
        .consume(1, "a", 0, false, &[("x-priority", text("high"))])
        .unwrap_err();
    assert_eq!(error.code, ReplyCode::PreconditionFailed, "{error:?}");
    assert_eq!(queue.stats().consumers, 0);
}

#[test]
fn a_requeued_message_comes_back_first_marked_redelivered() {
    let mut queue = Harness::classic();
    queue.publish_bodies(&[b"0", b"1", b"2"]);
    let first = queue.get(1, false).unwrap();
    assert_eq!(
        (first.message_id, first.redelivered, first.remaining),
        (0, false, 2)
    );
    let second = queue.get(1, false).unwrap();
    assert_eq!(second.message_id, 1);
    // Requeued out of order, they go back to where they were.
    queue.settle(1, &[1], Settlement::Requeue);
    queue.settle(1, &[0], Settlement::Requeue);
    let again: Vec<(u64, bool)> = (0..3)
        .map(|_| queue.get(1, true).unwrap())
        .map(|got| (got.message_id, got.redelivered))
        .collect();
    assert_eq!(again, [(0, true), (1, true), (2, false)]);
    assert!(queue.get(1, true).is_none());
}

#[test]
fn single_active_consumer_is_the_first_and_fails_over_to_the_highest_priority() {
    let mut queue = Harness::new(
        &[("x-single-active-consumer", FieldValue::Boolean(true))],
        false,
        false,
    );
    queue.consume(1, "first", 0, false, &[]).unwrap();
    queue.consume(2, "low", 0, false, &[]).unwrap();
    queue
        .consume(3, "high", 0, false, &[("x-priority", long(5))])
        .unwrap();
    queue.publish_bodies(&[b"0", b"1"]);
    // The first to arrive is active whatever the others' priority.
    assert_eq!(tags(&queue.delivered(1)), [("first", 0), ("first", 1)]);
    assert!(queue.delivered(2).is_empty() && queue.delivered(3).is_empty());
    // It goes: its deliveries come back, and the highest priority takes over.
    queue.step(vec![QueueCommand::ChannelClosed {
        channel: channel(1),
    }]);
    let taken = queue.delivered(3);
    assert_eq!(tags(&taken), [("high", 0), ("high", 1)]);
    assert!(taken.iter().all(|(_, _, _, redelivered)| *redelivered));
    assert!(queue.delivered(2).is_empty());
}

#[test]
fn an_exclusive_consumer_keeps_the_queue_to_itself() {
    let mut queue = Harness::classic();
    queue.consume_with(1, "only", 0, false, true, &[]).unwrap();
    let error = queue.consume(2, "other", 0, false, &[]).unwrap_err();
    assert_eq!(error.code, ReplyCode::AccessRefused, "{error:?}");
    assert!(
        error
            .to_string()
            .contains("queue 'q' in vhost '/' in exclusive use"),
        "{error}"
    );
    // Nor can one be exclusive where another consumes.
    queue.cancel(1, "only");
    queue.consume(2, "other", 0, false, &[]).unwrap();
    assert_eq!(
        queue
            .consume_with(3, "mine", 0, false, true, &[])
            .unwrap_err()
            .code,
        ReplyCode::AccessRefused
    );
}

#[test]
fn drop_head_dead_letters_the_oldest_over_the_limit() {
    let mut queue = Harness::new(
        &[
            ("x-max-length", long(2)),
            ("x-dead-letter-exchange", text("dlx")),
        ],
        false,
        false,
    );
    queue.publish_bodies(&[b"0", b"1", b"2"]);
    assert_eq!(queue.state.ready_count(), 2);
    let dead: Vec<(Bytes, Reason)> = queue
        .dead
        .iter()
        .map(|(message, reason)| (message.body.clone(), *reason))
        .collect();
    assert_eq!(dead, [(Bytes::from_static(b"0"), Reason::Maxlen)]);
    assert_eq!(queue.get(1, true).unwrap().message.body, "1");
}

#[test]
fn reject_publish_nacks_what_does_not_fit_and_takes_it_once_there_is_room() {
    let mut queue = Harness::new(
        &[
            ("x-max-length-bytes", long(4)),
            ("x-overflow", text("reject-publish")),
        ],
        false,
        false,
    );
    queue.attach(100);
    queue.publish(
        100,
        vec![
            (message(b"abc", false, None), Some(1)),
            (message(b"de", false, None), Some(2)),
            (message(b"f", false, None), Some(3)),
        ],
    );
    let outcomes: Vec<(u64, bool)> = queue
        .outcomes(100)
        .iter()
        .map(|outcome| (outcome.sequence, outcome.accepted))
        .collect();
    assert_eq!(outcomes, [(1, true), (2, false), (3, true)]);
    assert!(queue.dead.is_empty(), "reject-publish does not dead-letter");
    assert_eq!(queue.state.ready_count(), 2);
}

#[test]
fn only_the_head_expires_and_expired_messages_are_dead_lettered() {
    let mut queue = Harness::new(
        &[
            ("x-message-ttl", long(1_000)),
            ("x-dead-letter-exchange", text("")),
        ],
        false,
        false,
    );
    queue.publish(100, vec![(message(b"long", false, None), None)]);
    queue.now += 500;
    // Its own expiration is shorter than the queue's TTL, but it is not at the head.
    queue.publish(100, vec![(message(b"short", false, Some("100")), None)]);
    assert_eq!(queue.state.next_wakeup(), Some(START + 1_000));
    // Strictly after its expiry (a TTL of 0 still reaches a waiting consumer).
    queue.tick(START + 1_000);
    assert_eq!(queue.state.ready_count(), 2);
    queue.tick(START + 1_001);
    // The head went, and the message behind it, expired meanwhile, with it.
    assert_eq!(queue.state.ready_count(), 0);
    let reasons: Vec<(Bytes, Reason)> = queue
        .dead
        .iter()
        .map(|(message, reason)| (message.body.clone(), *reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (Bytes::from_static(b"long"), Reason::Expired),
            (Bytes::from_static(b"short"), Reason::Expired)
        ]
    );
}

#[test]
fn a_rejected_message_is_dead_lettered_and_without_a_dlx_dropped() {
    let mut queue = Harness::new(&[("x-dead-letter-exchange", text("dlx"))], false, false);
    queue.consume(1, "a", 0, false, &[]).unwrap();
    queue.publish_bodies(&[b"0", b"1"]);
    queue.settle(1, &[0, 1], Settlement::Discard);
    assert_eq!(queue.dead.len(), 2);
    assert!(
        queue
            .dead
            .iter()
            .all(|(_, reason)| *reason == Reason::Rejected)
    );

    let mut plain = Harness::classic();
    plain.consume(1, "a", 0, false, &[]).unwrap();
    plain.publish_bodies(&[b"0"]);
    plain.settle(1, &[0], Settlement::Discard);
    assert!(plain.dead.is_empty());
    assert_eq!(
        (plain.state.ready_count(), plain.state.unacked_count()),
        (0, 0)
    );
}

#[test]
fn a_persistent_message_of_a_durable_queue_is_confirmed_once_synced() {
    let mut queue = Harness::new(&[], true, false);
    queue.attach(100);
    queue.publish(
        100,
        vec![
            (message(b"kept", true, None), Some(1)),
            (message(b"transient", false, None), Some(2)),
        ],
    );
    // The transient one is confirmed at once; the persistent one waits for the disk.
    let outcomes: Vec<u64> = queue.outcomes(100).iter().map(|o| o.sequence).collect();
    assert_eq!(outcomes, [2]);
    assert_eq!(queue.disk.pending_messages(), 1);
    queue.persisted();
    let outcomes: Vec<(u64, bool)> = queue
        .outcomes(100)
        .iter()
        .map(|outcome| (outcome.sequence, outcome.accepted))
        .collect();
    assert_eq!(outcomes, [(1, true)]);
    // It reads back from what was written.
    let got = queue.get(1, true).unwrap();
    assert_eq!(got.message.body, "kept");
}

#[test]
fn a_message_settled_before_the_writer_took_it_is_never_written() {
    let mut queue = Harness::new(&[], true, false);
    queue.attach(100);
    queue.consume(1, "a", 0, true, &[]).unwrap();
    queue.publish(100, vec![(message(b"m", true, None), Some(1))]);
    assert_eq!(tags(&queue.delivered(1)), [("a", 0)]);
    // Delivered without acknowledgement while its record waited: the record is withdrawn and
    // the publish confirmed (the message reached its consumer).
    assert_eq!(queue.disk.pending_messages(), 0);
    let outcomes: Vec<(u64, bool)> = queue
        .outcomes(100)
        .iter()
        .map(|outcome| (outcome.sequence, outcome.accepted))
        .collect();
    assert_eq!(outcomes, [(1, true)]);
    queue.persisted();
    assert_eq!(
        queue.disk.written(),
        0,
        "nothing but bookkeeping, and none needed"
    );
}

#[test]
fn a_consumer_gets_no_more_than_its_delivery_credit_until_its_connection_returns_some() {
    let mut queue = Harness::classic();
    queue.consume(1, "a", 0, true, &[]).unwrap();
    let messages = (0..DELIVERY_CREDIT + 5)
        .map(|_| (message(b"x", false, None), None))
        .collect();
    queue.publish(100, messages);
    assert_eq!(queue.delivered(1).len(), DELIVERY_CREDIT as usize);
    assert_eq!(queue.state.ready_count(), 5);
    queue.step(vec![QueueCommand::Credit {
        channel: channel(1),
        tag: ShortString::from_static("a"),
        amount: 3,
    }]);
    assert_eq!(queue.delivered(1).len(), 3);
    assert_eq!(queue.state.ready_count(), 2);
}

#[test]
fn publishers_earn_credit_every_so_many_messages() {
    let mut queue = Harness::classic();
    queue.attach(100);
    let messages = (0..PUBLISH_CREDIT_MORE_AFTER - 1)
        .map(|_| (message(b"x", false, None), None))
        .collect();
    queue.publish(100, messages);
    assert!(queue.told(100).is_empty());
    queue.publish(100, vec![(message(b"x", false, None), None)]);
    let credit: Vec<(u64, u32)> = queue
        .told(100)
        .into_iter()
        .filter_map(|event| match event {
            ConnectionEvent::PublishCredit { queue, amount } => Some((queue, amount)),
            _ => None,
        })
        .collect();
    assert_eq!(credit, [(7, PUBLISH_CREDIT_MORE_AFTER)]);
}

#[test]
fn a_closed_channel_hands_back_what_it_held_and_loses_its_consumers() {
    let mut queue = Harness::classic();
    queue.consume(1, "a", 0, false, &[]).unwrap();
    queue.publish_bodies(&[b"0", b"1"]);
    assert_eq!(queue.delivered(1).len(), 2);
    queue.step(vec![QueueCommand::ChannelClosed {
        channel: channel(1),
    }]);
    assert_eq!(
        queue.stats(),
        QueueStats {
            messages: 2,
            consumers: 0
        }
    );
    let got = queue.get(2, true).unwrap();
    assert!(got.redelivered);
}

#[test]
fn an_unused_queue_expires_and_a_consumer_keeps_it_alive() {
    let mut queue = Harness::new(&[("x-expires", long(1_000))], false, false);
    queue.consume(1, "a", 0, false, &[]).unwrap();
    queue.tick(START + 5_000);
    assert!(
        !queue.state.is_deleted(),
        "a queue with a consumer is in use"
    );
    queue.cancel(1, "a");
    // Unused from the cancellation on.
    assert_eq!(queue.state.next_wakeup(), Some(START + 6_000));
    queue.tick(START + 5_999);
    assert!(!queue.state.is_deleted());
    queue.tick(START + 6_000);
    assert!(queue.state.is_deleted());
}

#[test]
fn an_auto_delete_queue_goes_with_its_last_consumer_and_not_before_it_had_one() {
    let mut queue = Harness::new(&[], false, true);
    queue.publish_bodies(&[b"0"]);
    assert!(!queue.state.is_deleted());
    queue.consume(1, "a", 0, false, &[]).unwrap();
    queue.consume(2, "b", 0, false, &[]).unwrap();
    queue.cancel(1, "a");
    assert!(!queue.state.is_deleted());
    queue.cancel(2, "b");
    assert!(queue.state.is_deleted());
}

#[test]
fn delete_checks_if_empty_and_if_unused_and_tells_consumers_and_publishers() {
    let mut queue = Harness::classic();
    queue.attach(100);
    queue.publish_bodies(&[b"0"]);
    queue.consume(1, "a", 1, false, &[]).unwrap();
    // Counted as ready: "1" and "2" (the consumer holds "0").
    queue.publish_bodies(&[b"1", b"2"]);
    let not_empty = queue.delete(false, true).unwrap().unwrap_err();
    assert_eq!(
        (
            not_empty.code,
            not_empty
                .to_string()
                .contains("queue 'q' in vhost '/' not empty")
        ),
        (ReplyCode::PreconditionFailed, true),
        "{not_empty}"
    );
    let in_use: AmqpError = queue.delete(true, false).unwrap().unwrap_err();
    assert!(in_use.to_string().contains("in use"), "{in_use}");
    queue.delivered(1);
    queue.told(100);
    assert_eq!(queue.delete(false, false), Some(Ok(2)));
    let cancelled = queue
        .told(1)
        .into_iter()
        .any(|event| matches!(event, ConnectionEvent::ConsumerCancelled { .. }));
    let gone = queue
        .told(100)
        .into_iter()
        .any(|event| matches!(event, ConnectionEvent::QueueGone { queue: 7 }));
    assert!(cancelled && gone);
}

#[test]
fn purge_drops_ready_messages_and_leaves_delivered_ones() {
    let mut queue = Harness::classic();
    queue.consume(1, "a", 1, false, &[]).unwrap();
    queue.publish_bodies(&[b"0", b"1", b"2"]);
    let (reply, mut answer) = oneshot::channel();
    queue.step(vec![QueueCommand::Purge { reply }]);
    assert_eq!(answer.try_recv(), Ok(2));
    assert_eq!(queue.state.unacked_count(), 1);
    queue.settle(1, &[0], Settlement::Requeue);
    assert_eq!(
        queue.state.ready_count(),
        0,
        "redelivered at once to its consumer"
    );
    assert_eq!(tags(&queue.delivered(1)), [("a", 0), ("a", 0)]);
}

#[test]
fn messages_with_a_priority_overtake_in_a_priority_queue() {
    let mut queue = Harness::new(&[("x-max-priority", long(5))], false, false);
    let urgent = {
        let properties = BasicProperties {
            priority: Some(9),
            ..Default::default()
        }
        .to_raw();
        Arc::new(Message {
            exchange: ShortString::EMPTY,
            routing_key: ShortString::from_static("q"),
            summary: properties.summary().unwrap(),
            properties,
            body: Bytes::from_static(b"urgent"),
            extra_keys: None,
            deaths: None,
        })
    };
    queue.publish_bodies(&[b"plain"]);
    queue.publish(100, vec![(urgent, None)]);
    assert_eq!(queue.get(1, true).unwrap().message.body, "urgent");
    assert_eq!(queue.get(1, true).unwrap().message.body, "plain");
}

#[test]
fn a_long_queue_pages_its_tail_out_and_reads_it_back_in_order() {
    let mut queue = Harness::classic();
    let count = (super::MEMORY_BUDGET / (1 << 20)) as usize + 8;
    let messages = (0..count)
        .map(|index| {
            (
                message_of(Bytes::from(vec![index as u8; 1 << 20]), false, None),
                None,
            )
        })
        .collect();
    queue.publish(100, messages);
    // The tail past the memory budget goes to the paging stream...
    let paged = queue.disk.pending_messages();
    assert!(paged >= 8, "{paged} of {count} paged out");
    queue.persisted();
    // ...and its bodies leave memory once written.
    let resident: usize = queue
        .state
        .ready
        .iter_mut()
        .filter(|queued| queued.message.is_some())
        .count();
    assert_eq!(resident, count - paged);
    queue.consume(1, "a", 0, true, &[]).unwrap();
    let bodies: Vec<(u64, u8, usize)> = queue
        .delivered(1)
        .into_iter()
        .map(|(_, id, body, _)| (id, body[0], body.len()))
        .collect();
    let expected: Vec<(u64, u8, usize)> = (0..count)
        .map(|index| (index as u64, index as u8, 1 << 20))
        .collect();
    assert_eq!(bodies, expected);
    // Every paging record is released once its message is gone.
    assert_eq!(queue.disk.0.lock().released.len(), paged);
}

#[test]
fn the_counters_follow_publishes_deliveries_acks_and_redeliveries() {
    let mut queue = Harness::classic();
    queue.publish_bodies(&[b"0", b"1", b"2"]);
    queue.consume(1, "a", 0, false, &[]).unwrap();
    queue.settle(1, &[0], Settlement::Ack);
    queue.settle(1, &[1], Settlement::Requeue);
    let counters = queue.state.counters();
    // 1 went back and out again to the consumer (its prefetch is unlimited): 2 and 1 are out.
    assert_eq!(
        (counters.ready, counters.unacknowledged, counters.consumers),
        (0, 2, 1)
    );
    assert_eq!(
        counters.totals,
        crate::queue::counters::Totals {
            published: 3,
            delivered: 4,
            acknowledged: 1,
            redelivered: 1,
        }
    );
    // A cancelled consumer's deliveries stay with its channel, unacknowledged.
    queue.cancel(1, "a");
    let counters = queue.state.counters();
    assert_eq!(
        (counters.ready, counters.unacknowledged, counters.consumers),
        (0, 2, 0)
    );
}
