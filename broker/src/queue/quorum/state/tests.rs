//! The replicated queue state on its own: commands in, replies and effects out.

use super::*;

fn enqueuer(node: &str) -> Enqueuer {
    Enqueuer {
        node: node.into(),
        incarnation: 1,
    }
}

fn consumer(node: &str, channel: u16, tag: &str) -> ConsumerKey {
    ConsumerKey {
        node: node.into(),
        incarnation: 1,
        connection: 7,
        channel,
        tag: Bytes::from(tag.to_string()),
    }
}

/// A state with a log index counter.
#[derive(Default)]
struct Log {
    state: QuorumState,
    index: u64,
    /// The stamp of the next command (ms).
    now: u64,
    effects: Vec<Effect>,
    /// Dead letters seen by `delivered`.
    dead: Vec<(u64, Reason)>,
}

impl Log {
    fn apply(&mut self, command: Command) -> Reply {
        self.index += 1;
        // Snapshots must round-trip at any point: every member may restart from one.
        let encoded = postcard::to_stdvec(&self.state).unwrap();
        let decoded: QuorumState = postcard::from_bytes(&encoded).unwrap();
        assert_eq!(decoded, self.state);
        self.state
            .apply(self.index, self.now, command, &mut self.effects)
    }

    fn publish(&mut self, node: &str, seq: u64) -> Reply {
        self.publish_answered(node, seq, 1)
    }

    fn publish_answered(&mut self, node: &str, seq: u64, answered_below: u64) -> Reply {
        self.publish_at(node, seq, answered_below, DEFAULT_PRIORITY, None)
    }

    fn publish_at(
        &mut self,
        node: &str,
        seq: u64,
        answered_below: u64,
        priority: u8,
        ttl: Option<u64>,
    ) -> Reply {
        self.apply(Command::Enqueue {
            enqueuer: enqueuer(node),
            seq,
            answered_below,
            message: Bytes::from_static(b"body"),
            size: 4,
            ttl,
            priority,
        })
    }

    fn checkout(&mut self, key: &ConsumerKey, prefetch: u32, no_ack: bool, credit: u32) -> Reply {
        self.apply(Command::Checkout {
            consumer: key.clone(),
            prefetch,
            no_ack,
            credit,
            exclusive: false,
            priority: 0,
            timeout: None,
        })
    }

    fn checkout_with(&mut self, key: &ConsumerKey, prefetch: u32, priority: i64) -> Reply {
        self.apply(Command::Checkout {
            consumer: key.clone(),
            prefetch,
            no_ack: false,
            credit: 100,
            exclusive: false,
            priority,
            timeout: None,
        })
    }

    fn settle(&mut self, channel: u16, ids: Vec<u64>, outcome: Outcome) -> Reply {
        self.apply(Command::Settle {
            node: "a".into(),
            incarnation: 1,
            connection: 7,
            channel,
            ids,
            outcome,
        })
    }

    /// Deliveries made since the last call: (tag, id, delivery count).
    fn delivered(&mut self) -> Vec<(String, u64, u32)> {
        std::mem::take(&mut self.effects)
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Deliver {
                    consumer,
                    id,
                    delivery_count,
                    ..
                } => Some((
                    String::from_utf8(consumer.tag.to_vec()).unwrap(),
                    id,
                    delivery_count,
                )),
                Effect::Cancelled { .. } | Effect::Expired | Effect::TimedOut { .. } => None,
                Effect::DeadLetter { id, reason, .. } => {
                    self.dead.push((id, reason));
                    None
                }
            })
            .collect()
    }

    fn configure(&mut self, limits: Limits) {
        assert_eq!(self.apply(Command::Configure(limits)), Reply::Done);
    }
}

#[test]
fn a_publish_sent_again_is_taken_once_and_a_lost_one_is_asked_for() {
    let mut log = Log::default();
    assert_eq!(log.publish("a", 1), Reply::Enqueued(Enqueued::Accepted));
    assert_eq!(log.publish("a", 2), Reply::Enqueued(Enqueued::Accepted));
    assert_eq!(log.publish("a", 2), Reply::Enqueued(Enqueued::Duplicate));
    assert_eq!(
        log.publish("a", 4),
        Reply::Enqueued(Enqueued::Gap { expected: 3 })
    );
    // Another node's front numbers its own publishes.
    assert_eq!(log.publish("b", 1), Reply::Enqueued(Enqueued::Accepted));
    assert_eq!(log.publish("a", 3), Reply::Enqueued(Enqueued::Accepted));
    assert_eq!(log.state.messages(), 4);
    assert_eq!(log.state.live(), [1, 2, 5, 6]);
}

#[test]
fn consumers_share_round_robin_within_their_prefetch() {
    let mut log = Log::default();
    let one = consumer("a", 1, "one");
    let two = consumer("a", 2, "two");
    log.checkout(&one, 2, false, 100);
    log.checkout(&two, 1, false, 100);
    for seq in 1..=5 {
        log.publish("a", seq);
    }
    let delivered = log.delivered();
    assert_eq!(
        delivered,
        vec![
            ("one".into(), 3, 0),
            ("two".into(), 4, 0),
            ("one".into(), 5, 0)
        ]
    );
    assert_eq!(log.state.messages(), 2);
    assert_eq!(log.state.unacked(), 3);
    // Settling frees room: the next message goes out at once.
    assert_eq!(log.settle(2, vec![4], Outcome::Ack), Reply::Count(1));
    assert_eq!(log.delivered(), vec![("two".into(), 6, 0)]);
    // A settlement from the wrong channel settles nothing.
    assert_eq!(log.settle(2, vec![3], Outcome::Ack), Reply::Count(0));
    assert_eq!(log.state.unacked(), 3);
}

#[test]
fn a_requeued_message_goes_out_first_with_its_delivery_counted() {
    let mut log = Log::default();
    for seq in 1..=3 {
        log.publish("a", seq);
    }
    let one = consumer("a", 1, "one");
    log.checkout(&one, 1, false, 100);
    assert_eq!(log.delivered(), vec![("one".into(), 1, 0)]);
    log.settle(1, vec![1], Outcome::Requeue);
    assert_eq!(log.delivered(), vec![("one".into(), 1, 1)]);
    log.settle(1, vec![1], Outcome::Discard);
    assert_eq!(log.delivered(), vec![("one".into(), 2, 0)]);
    assert_eq!(log.state.live(), [2, 3]);
}

#[test]
fn a_no_ack_consumer_is_held_back_by_its_credit() {
    let mut log = Log::default();
    let fast = consumer("a", 1, "fast");
    log.checkout(&fast, 0, true, 2);
    for seq in 1..=4 {
        log.publish("a", seq);
    }
    assert_eq!(log.delivered().len(), 2);
    assert_eq!(log.state.unacked(), 0, "no-ack deliveries are settled");
    assert_eq!(log.state.messages(), 2);
    log.apply(Command::Credit {
        consumer: fast.clone(),
        amount: 5,
    });
    assert_eq!(log.delivered().len(), 2);
    assert!(log.state.is_empty());
    assert!(
        log.state.live().is_empty(),
        "a drained queue needs none of its log"
    );
}

#[test]
fn a_closed_channel_or_a_lost_node_gives_its_messages_back() {
    let mut log = Log::default();
    let here = consumer("a", 1, "here");
    let there = ConsumerKey {
        node: "b".into(),
        ..consumer("a", 1, "there")
    };
    log.checkout(&here, 1, false, 100);
    log.checkout(&there, 1, false, 100);
    for seq in 1..=3 {
        log.publish("a", seq);
    }
    assert_eq!(log.delivered().len(), 2);
    // The node of "there" restarted: its old incarnation's consumer goes.
    log.apply(Command::NodeDown {
        node: "b".into(),
        keep: Some(2),
    });
    let effects = std::mem::take(&mut log.effects);
    assert!(effects.contains(&Effect::Cancelled {
        consumer: there.clone()
    }));
    assert_eq!(log.state.consumers(), 1);
    assert_eq!(
        log.state.messages(),
        2,
        "its message is back, and the third waits"
    );
    log.apply(Command::ChannelDown {
        node: "a".into(),
        incarnation: 1,
        connection: 7,
        channel: 1,
    });
    assert_eq!(log.state.consumers(), 0);
    assert_eq!(log.state.messages(), 3);
    assert_eq!(log.state.unacked(), 0);
}

#[test]
fn a_new_leader_delivers_every_unsettled_message_again() {
    let mut log = Log::default();
    let one = consumer("a", 1, "one");
    let two = consumer("a", 2, "two");
    log.checkout(&one, 10, false, 100);
    log.checkout(&two, 10, false, 100);
    for seq in 1..=4 {
        log.publish("a", seq);
    }
    assert_eq!(log.delivered().len(), 4);
    log.apply(Command::Leader);
    let mut ids = Vec::new();
    for effect in std::mem::take(&mut log.effects) {
        let Effect::Deliver {
            id,
            delivery_count,
            redelivered,
            ..
        } = effect
        else {
            panic!("{effect:?}")
        };
        // Redelivered, but no delivery failed: the delivery limit is not nearer.
        assert!(redelivered && delivery_count == 0);
        ids.push(id);
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![3, 4, 5, 6]);
}

#[test]
fn get_purge_stats_and_exclusive_consumers() {
    let mut log = Log::default();
    for seq in 1..=3 {
        log.publish("a", seq);
    }
    let got = log.apply(Command::Get {
        node: "a".into(),
        incarnation: 1,
        connection: 7,
        channel: 3,
        no_ack: false,
    });
    let Reply::Got(Some(got)) = got else {
        panic!("{got:?}")
    };
    assert_eq!((got.id, got.remaining), (1, 2));
    assert_eq!(log.state.unacked(), 1);
    assert_eq!(log.settle(3, vec![1], Outcome::Requeue), Reply::Count(1));
    assert_eq!(
        log.apply(Command::Stats),
        Reply::Stats {
            messages: 3,
            consumers: 0
        }
    );
    assert_eq!(log.apply(Command::Purge), Reply::Count(3));
    assert!(log.state.is_empty());

    let first = consumer("a", 1, "first");
    let reply = log.apply(Command::Checkout {
        consumer: first,
        prefetch: 0,
        no_ack: false,
        credit: 10,
        exclusive: true,
        priority: 0,
        timeout: None,
    });
    assert_eq!(reply, Reply::CheckedOut { since: log.index });
    let reply = log.checkout(&consumer("a", 2, "second"), 0, false, 10);
    assert!(matches!(reply, Reply::Error(403, _)), "{reply:?}");
}

#[test]
fn failed_deliveries_past_the_limit_dead_letter_the_message() {
    let mut log = Log::default();
    log.configure(Limits {
        delivery_limit: Some(2),
        dead_letter: true,
        ..Limits::default()
    });
    log.publish("a", 1);
    log.publish("a", 2);
    let one = consumer("a", 1, "one");
    log.checkout(&one, 1, false, 100);
    assert_eq!(log.delivered(), vec![("one".into(), 2, 0)]);
    // A closed channel is no failed delivery: the count stays.
    log.apply(Command::ChannelDown {
        node: "a".into(),
        incarnation: 1,
        connection: 7,
        channel: 1,
    });
    log.checkout(&one, 1, false, 100);
    assert_eq!(log.delivered(), vec![("one".into(), 2, 0)]);
    log.settle(1, vec![2], Outcome::Requeue);
    assert_eq!(log.delivered(), vec![("one".into(), 2, 1)]);
    log.settle(1, vec![2], Outcome::Requeue);
    assert_eq!(log.delivered(), vec![("one".into(), 2, 2)]);
    // The third failure is one past the limit: dead-lettered, and the next goes out.
    log.settle(1, vec![2], Outcome::Requeue);
    assert_eq!(log.delivered(), vec![("one".into(), 3, 0)]);
    assert_eq!(log.dead, vec![(2, Reason::DeliveryLimit)]);
    assert_eq!(log.state.live(), [3]);
    // A rejection without requeue dead-letters too.
    log.settle(1, vec![3], Outcome::Discard);
    assert!(log.delivered().is_empty());
    assert_eq!(log.dead[1], (3, Reason::Rejected));
    assert!(log.state.is_empty());
}

#[test]
fn without_a_dead_letter_exchange_what_leaves_is_dropped() {
    let mut log = Log::default();
    log.configure(Limits {
        delivery_limit: Some(0),
        ..Limits::default()
    });
    log.publish("a", 1);
    let one = consumer("a", 1, "one");
    log.checkout(&one, 1, false, 100);
    log.delivered();
    log.settle(1, vec![2], Outcome::Requeue);
    assert!(log.delivered().is_empty());
    assert!(log.dead.is_empty());
    assert!(log.state.is_empty());
}

#[test]
fn drop_head_dead_letters_the_oldest_ready_messages() {
    let mut log = Log::default();
    log.configure(Limits {
        max_length: Some(2),
        max_length_bytes: Some(10),
        dead_letter: true,
        ..Limits::default()
    });
    for seq in 1..=3 {
        assert_eq!(log.publish("a", seq), Reply::Enqueued(Enqueued::Accepted));
    }
    log.delivered();
    assert_eq!(log.dead, vec![(2, Reason::Maxlen)]);
    assert_eq!(log.state.messages(), 2);
    // Checked-out messages do not count: the limit is on ready ones.
    let one = consumer("a", 1, "one");
    log.checkout(&one, 1, false, 100);
    assert_eq!(log.delivered(), vec![("one".into(), 3, 0)]);
    log.publish("a", 4);
    assert_eq!(log.state.messages(), 2);
    assert_eq!(log.dead.len(), 1);
    // The bytes limit: three 4-byte bodies are over 10.
    log.configure(Limits {
        max_length: None,
        max_length_bytes: Some(10),
        dead_letter: true,
        ..Limits::default()
    });
    log.publish("a", 5);
    log.delivered();
    assert_eq!(log.state.messages(), 2);
    assert_eq!(log.dead, vec![(2, Reason::Maxlen), (4, Reason::Maxlen)]);
    // Lowering a limit drops at once.
    log.configure(Limits {
        max_length: Some(0),
        dead_letter: true,
        ..Limits::default()
    });
    assert_eq!(log.state.messages(), 0);
    assert_eq!(log.dead.len(), 2, "not yet seen");
    log.delivered();
    assert_eq!(log.dead.len(), 4);
}

#[test]
fn reject_publish_refuses_what_goes_over_and_takes_again_once_there_is_room() {
    let mut log = Log::default();
    log.configure(Limits {
        max_length: Some(1),
        reject_publish: true,
        dead_letter: true,
        ..Limits::default()
    });
    assert_eq!(log.publish("a", 1), Reply::Enqueued(Enqueued::Accepted));
    assert_eq!(log.publish("a", 2), Reply::Enqueued(Enqueued::Rejected));
    // A refused publish used its number; sent again (its answer was lost) it is refused
    // again, not taken for a duplicate of something the queue holds.
    assert_eq!(log.publish("a", 2), Reply::Enqueued(Enqueued::Rejected));
    let one = consumer("a", 1, "one");
    log.checkout(&one, 1, false, 100);
    assert_eq!(log.delivered(), vec![("one".into(), 2, 0)]);
    assert_eq!(log.publish("a", 3), Reply::Enqueued(Enqueued::Accepted));
    assert!(
        log.dead.is_empty(),
        "refused publishes are not dead-lettered"
    );
    assert_eq!(log.state.live(), [2, 6]);
}

#[test]
fn a_consumer_checked_out_again_keeps_what_it_holds_and_one_let_go_comes_back() {
    let mut log = Log::default();
    let one = consumer("a", 1, "one");
    log.checkout(&one, 1, false, 100);
    log.publish("a", 1);
    log.publish("a", 2);
    assert_eq!(log.delivered(), vec![("one".into(), 2, 0)]);
    // Checked out again while the queue still has it (a resume that raced nothing): it
    // keeps its delivery and its prefetch stays full.
    assert_eq!(
        log.checkout(&one, 1, false, 100),
        Reply::CheckedOut { since: 1 }
    );
    assert_eq!(log.delivered(), vec![]);
    assert_eq!(log.state.consumers.len(), 1);
    // Its node seemed down: let go, its message returns; resumed, it gets it again.
    log.apply(Command::NodeDown {
        node: "a".into(),
        keep: None,
    });
    assert!(log.state.consumers.is_empty());
    log.effects.clear();
    let reply = log.checkout(&one, 1, false, 100);
    let resumed_at = log.index;
    assert_eq!(reply, Reply::CheckedOut { since: resumed_at });
    // Delivered again to the new checkout: the front tells it from the first one's delivery,
    // which may still be on its way (checked out at entry 1).
    let epochs: Vec<(u64, bool, u64)> = std::mem::take(&mut log.effects)
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Deliver {
                id,
                redelivered,
                epoch,
                ..
            } => Some((id, redelivered, epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(epochs, vec![(2, true, resumed_at)]);
    assert!(resumed_at > 1);
}

fn dead(log: &mut Log) -> Vec<(u64, Reason)> {
    log.delivered();
    std::mem::take(&mut log.dead)
}

#[test]
fn messages_expire_at_the_head_by_the_clock_of_the_log() {
    let mut log = Log {
        now: 1_000,
        ..Log::default()
    };
    log.apply(Command::Configure(Limits {
        message_ttl: Some(100),
        dead_letter: true,
        ..Limits::default()
    }));
    log.publish("a", 1); // entry 2: expires after 1100
    log.now = 1_050;
    // Its own TTL is shorter: expires after 1060; but it is behind the first.
    log.apply(Command::Enqueue {
        enqueuer: enqueuer("a"),
        seq: 2,
        answered_below: 1,
        message: Bytes::from_static(b"body"),
        size: 4,
        ttl: Some(10),
        priority: DEFAULT_PRIORITY,
    });
    assert_eq!(log.state.next_deadline(), Some(1_101));
    log.now = 1_100;
    log.apply(Command::Tick);
    assert_eq!(dead(&mut log), vec![], "not past its TTL yet");
    log.now = 1_101;
    log.apply(Command::Tick);
    // The first goes at its time, and the second, now at the head, is past its own.
    assert_eq!(
        dead(&mut log),
        vec![(2, Reason::Expired), (3, Reason::Expired)]
    );
    assert_eq!(log.state.messages(), 0);
    assert_eq!(log.state.next_deadline(), None);
    // A consumer takes what has not expired; what it returns keeps its expiry.
    let one = consumer("a", 1, "one");
    log.checkout(&one, 10, false, 100);
    log.publish("a", 3); // entry 7, expires after 1201
    assert_eq!(log.delivered(), vec![("one".into(), 7, 0)]);
    log.now = 1_300;
    log.settle(1, vec![7], Outcome::Requeue);
    assert_eq!(dead(&mut log), vec![(7, Reason::Expired)]);
    assert!(log.delivered().is_empty());
}

#[test]
fn a_ttl_of_zero_reaches_a_waiting_consumer_and_nobody_else() {
    let mut log = Log {
        now: 5,
        ..Log::default()
    };
    log.apply(Command::Configure(Limits {
        message_ttl: Some(0),
        ..Limits::default()
    }));
    let one = consumer("a", 1, "one");
    log.checkout(&one, 1, false, 100);
    log.publish("a", 1);
    assert_eq!(log.delivered().len(), 1, "delivered at once");
    log.publish("a", 2);
    assert!(log.delivered().is_empty(), "the prefetch is full");
    log.now = 6;
    log.apply(Command::Tick);
    assert_eq!(log.state.messages(), 0, "expired, not delivered later");
}

#[test]
fn an_unused_queue_expires_once_and_a_use_renews_its_lease() {
    let mut log = Log {
        now: 10_000,
        ..Log::default()
    };
    log.apply(Command::Configure(Limits {
        expires: Some(1_000),
        ..Limits::default()
    }));
    assert_eq!(log.state.next_deadline(), Some(11_000));
    log.now = 10_900;
    log.apply(Command::Touch);
    assert_eq!(log.state.next_deadline(), Some(11_900));
    // A consumer holds it: no deadline while it lasts; its leaving starts the lease again.
    let one = consumer("a", 1, "one");
    log.checkout(&one, 1, false, 100);
    assert_eq!(log.state.next_deadline(), None);
    log.now = 20_000;
    log.apply(Command::Cancel {
        consumer: one.clone(),
    });
    assert_eq!(log.state.next_deadline(), Some(21_000));
    log.effects.clear();
    log.now = 21_000;
    log.apply(Command::Tick);
    assert_eq!(log.effects, vec![Effect::Expired]);
    log.effects.clear();
    log.now = 21_500;
    log.apply(Command::Tick);
    assert!(log.effects.is_empty(), "told once");
    // A new leader tells again (the old one may have died before deleting it).
    log.apply(Command::Lead { term: 2 });
    assert_eq!(log.effects, vec![Effect::Expired]);
}

#[test]
fn higher_priority_consumers_are_served_first_and_lower_ones_when_they_are_full() {
    let mut log = Log::default();
    let low = consumer("a", 1, "low");
    let high = consumer("a", 2, "high");
    let also_high = consumer("a", 3, "also-high");
    log.checkout_with(&low, 10, 0);
    log.checkout_with(&high, 2, 5);
    log.checkout_with(&also_high, 2, 5);
    for seq in 1..=6 {
        log.publish("a", seq);
    }
    let tags: Vec<String> = log.delivered().into_iter().map(|(tag, _, _)| tag).collect();
    // The two of priority 5 in turn until their prefetch is full; then the low one.
    assert_eq!(
        tags,
        vec!["high", "also-high", "high", "also-high", "low", "low"]
    );
    // Room again at the top: the next goes there.
    log.settle(2, vec![4], Outcome::Ack);
    log.publish("a", 7);
    assert_eq!(log.delivered(), vec![("high".into(), 11, 0)]);
}

#[test]
fn a_single_active_consumer_has_the_queue_until_it_goes_or_is_outranked_and_drained() {
    let mut log = Log::default();
    log.apply(Command::Configure(Limits {
        single_active: true,
        ..Limits::default()
    }));
    let first = consumer("a", 1, "first");
    let second = consumer("a", 2, "second");
    log.checkout_with(&first, 2, 0);
    log.checkout_with(&second, 2, 0);
    for seq in 1..=3 {
        log.publish("a", seq);
    }
    // Only the first (registered earlier), within its prefetch.
    assert_eq!(
        log.delivered(),
        vec![("first".into(), 4, 0), ("first".into(), 5, 0)]
    );
    // It goes: the second takes over; what the first held stays its channel's to settle.
    log.apply(Command::Cancel {
        consumer: first.clone(),
    });
    assert_eq!(log.delivered(), vec![("second".into(), 6, 0)]);
    assert_eq!(log.settle(1, vec![4, 5], Outcome::Ack), Reply::Count(2));
    log.publish("a", 4); // entry 9
    assert_eq!(log.delivered(), vec![("second".into(), 9, 0)]);
    // A consumer of higher priority: the active one gets nothing more, and hands over once
    // it has settled what it holds.
    let urgent = consumer("a", 3, "urgent");
    log.checkout_with(&urgent, 5, 9);
    log.publish("a", 5); // entry 11
    log.settle(2, vec![6], Outcome::Ack);
    assert!(log.delivered().is_empty(), "not before 9 is settled too");
    log.settle(2, vec![9], Outcome::Ack);
    assert_eq!(log.delivered(), vec![("urgent".into(), 11, 0)]);
}

#[test]
fn a_delivery_held_past_the_consumer_timeout_returns_and_the_consumer_gets_no_more() {
    let mut log = Log {
        now: 1_000,
        ..Log::default()
    };
    let slow = consumer("a", 1, "slow");
    let other = consumer("a", 2, "other");
    log.apply(Command::Checkout {
        consumer: slow.clone(),
        prefetch: 10,
        no_ack: false,
        credit: 100,
        exclusive: false,
        priority: 1,
        timeout: Some(500),
    });
    log.publish("a", 1); // entry 2, held until 1500
    log.now = 1_200;
    log.publish("a", 2); // entry 3, held until 1700
    assert_eq!(log.delivered().len(), 2);
    assert_eq!(log.state.next_deadline(), Some(1_501));
    log.checkout_with(&other, 10, 0);
    assert!(
        log.delivered().is_empty(),
        "the slow one ranks higher and can take more"
    );
    log.now = 1_501;
    log.apply(Command::Tick);
    let effects = std::mem::take(&mut log.effects);
    assert!(effects.contains(&Effect::TimedOut {
        consumer: slow.clone(),
        timeout: 500,
    }));
    // Entry 2 is back and goes to the other consumer, redelivered; entry 3 stays with the
    // slow one until it times out too or is settled.
    let delivered: Vec<(String, u64, bool)> = effects
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Deliver {
                consumer,
                id,
                redelivered,
                ..
            } => Some((
                String::from_utf8(consumer.tag.to_vec()).unwrap(),
                id,
                redelivered,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![("other".into(), 2, true)]);
    assert_eq!(log.settle(1, vec![3], Outcome::Ack), Reply::Count(1));
    log.publish("a", 3);
    assert_eq!(
        log.delivered(),
        vec![("other".into(), 7, 0)],
        "the slow one gets nothing more"
    );
}

#[test]
fn a_timed_out_consumer_is_told_again_by_a_new_leader_and_a_single_active_one_hands_over() {
    let mut log = Log {
        now: 1_000,
        ..Log::default()
    };
    log.configure(Limits {
        single_active: true,
        ..Limits::default()
    });
    let first = consumer("a", 1, "first");
    let second = consumer("a", 2, "second");
    for key in [&first, &second] {
        log.apply(Command::Checkout {
            consumer: key.clone(),
            prefetch: 1,
            no_ack: false,
            credit: 100,
            exclusive: false,
            priority: 0,
            timeout: Some(100),
        });
    }
    log.publish("a", 1); // entry 4, to the active (first) consumer
    assert_eq!(log.delivered(), vec![("first".into(), 4, 0)]);
    log.now = 1_101;
    log.apply(Command::Tick);
    let effects = std::mem::take(&mut log.effects);
    assert!(effects.contains(&Effect::TimedOut {
        consumer: first.clone(),
        timeout: 100,
    }));
    assert!(
        effects.iter().any(|effect| matches!(
            effect,
            Effect::Deliver { consumer, id: 4, redelivered: true, .. } if *consumer == second
        )),
        "the timed-out active consumer hands over: {effects:?}"
    );
    // Its front never cancelled it (the leader died first): the next leader tells again.
    log.apply(Command::Lead { term: 2 });
    let effects = std::mem::take(&mut log.effects);
    assert!(
        effects.contains(&Effect::TimedOut {
            consumer: first.clone(),
            timeout: 100,
        }),
        "{effects:?}"
    );
    log.apply(Command::Cancel { consumer: first });
    assert!(!log.state.consumers.values().any(|c| c.timed_out));
}

#[test]
fn a_new_leader_gives_every_consumer_its_whole_credit_again() {
    let mut log = Log::default();
    let one = consumer("a", 1, "one");
    log.checkout(&one, 0, false, 2);
    for seq in 1..=3 {
        log.publish("a", seq);
    }
    // Both deliveries are lost on the way with the leader that made them: the front never
    // hands back their credit.
    assert_eq!(log.delivered().len(), 2);
    log.apply(Command::Lead { term: 2 });
    let again = log.delivered();
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(log.state.consumers[&one].credit, 0);
    log.apply(Command::Credit {
        consumer: one,
        amount: 1,
    });
    assert_eq!(log.delivered().len(), 1);
}

#[test]
fn at_least_once_dead_letters_stay_until_confirmed_and_count_against_the_limit() {
    let mut log = Log::default();
    log.configure(Limits {
        max_length: Some(2),
        reject_publish: true,
        dead_letter: true,
        at_least_once: true,
        ..Limits::default()
    });
    let one = consumer("a", 1, "one");
    log.checkout(&one, 0, false, 100);
    assert_eq!(log.publish("a", 1), Reply::Enqueued(Enqueued::Accepted)); // entry 3
    assert_eq!(log.publish("a", 2), Reply::Enqueued(Enqueued::Accepted)); // entry 4
    log.delivered();
    assert_eq!(log.settle(1, vec![3, 4], Outcome::Discard), Reply::Count(2));
    let held: Vec<(u64, bool)> = std::mem::take(&mut log.effects)
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::DeadLetter { id, held, .. } => Some((id, held)),
            _ => None,
        })
        .collect();
    assert_eq!(held, vec![(3, true), (4, true)]);
    assert_eq!(log.state.dead_lettered(), 2);
    assert_eq!(log.state.live(), [3, 4], "bodies stay in the log");
    // Held dead letters are the queue's: it is full.
    assert_eq!(log.publish("a", 3), Reply::Enqueued(Enqueued::Rejected));
    // A new leader republishes what is still held.
    log.apply(Command::Lead { term: 2 });
    let again: Vec<u64> = std::mem::take(&mut log.effects)
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::DeadLetter { id, held: true, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(again, vec![3, 4]);
    assert_eq!(
        log.apply(Command::DeadLettered { ids: vec![3, 99] }),
        Reply::Count(1)
    );
    assert_eq!(log.publish("a", 4), Reply::Enqueued(Enqueued::Accepted));
    // Back to at most once (drop-head): what is held goes, and dead letters are not held.
    log.configure(Limits {
        max_length: Some(2),
        dead_letter: true,
        at_least_once: true,
        ..Limits::default()
    });
    assert_eq!(log.state.dead_lettered(), 0);
    assert!(!log.state.live().contains(&4));
}

#[test]
fn a_cancelled_consumer_s_deliveries_stay_its_channel_s_to_settle() {
    let mut log = Log::default();
    let one = consumer("a", 1, "one");
    let other = consumer("a", 2, "other");
    log.checkout(&one, 0, false, 100);
    log.publish("a", 1); // entry 2
    log.publish("a", 2); // entry 3
    assert_eq!(log.delivered().len(), 2);
    log.apply(Command::Cancel {
        consumer: one.clone(),
    });
    log.checkout(&other, 0, false, 100);
    assert!(log.delivered().is_empty(), "nothing was given back");
    // Acked after the cancel (AMQP allows it): gone. One delivered to the cancelled consumer
    // on its way back is returned unseen: no failed delivery.
    assert_eq!(log.settle(1, vec![2], Outcome::Ack), Reply::Count(1));
    assert_eq!(log.settle(1, vec![3], Outcome::Return), Reply::Count(1));
    assert_eq!(log.delivered(), vec![("other".into(), 3, 0)]);
    // Consumed again under the same tag, a cancelled consumer's holdings come back.
    log.publish("a", 3); // entry 8
    assert_eq!(log.delivered(), vec![("other".into(), 8, 0)]);
    log.apply(Command::Cancel {
        consumer: other.clone(),
    });
    log.checkout(&other, 0, false, 100);
    assert_eq!(
        log.delivered(),
        vec![("other".into(), 3, 0), ("other".into(), 8, 0)]
    );
}

#[test]
fn higher_priorities_go_first_returns_before_all_and_each_level_expires_at_its_head() {
    let mut log = Log {
        now: 1_000,
        ..Log::default()
    };
    log.configure(Limits {
        dead_letter: true,
        ..Limits::default()
    });
    assert_eq!(priority_of(None), 4);
    assert_eq!(priority_of(Some(200)), MAX_PRIORITY);
    log.publish_at("a", 1, 1, 1, None); // entry 2
    log.publish_at("a", 2, 1, priority_of(None), None); // entry 3
    log.publish_at("a", 3, 1, 9, None); // entry 4
    log.publish_at("a", 4, 1, 9, None); // entry 5
    log.publish_at("a", 5, 1, priority_of(Some(255)), None); // entry 6
    let one = consumer("a", 1, "one");
    log.checkout(&one, 2, false, 100); // entry 7
    assert_eq!(
        log.delivered(),
        vec![("one".into(), 6, 0), ("one".into(), 4, 0)],
        "the highest first, in order within a level"
    );
    // A returned message goes before every level, whatever its priority.
    assert_eq!(log.settle(1, vec![4], Outcome::Requeue), Reply::Count(1));
    assert_eq!(log.delivered(), vec![("one".into(), 4, 1)]);
    assert_eq!(log.settle(1, vec![4, 6], Outcome::Ack), Reply::Count(2));
    assert_eq!(
        log.delivered(),
        vec![("one".into(), 5, 0), ("one".into(), 3, 0)]
    );
    log.apply(Command::Cancel { consumer: one });
    // A message expires at the head of its own level, behind nothing of another.
    log.publish_at("a", 6, 1, 0, Some(10)); // entry 11, expires after 1010
    log.publish_at("a", 7, 1, 7, Some(500)); // entry 12
    assert_eq!(log.state.next_deadline(), Some(1_011));
    log.now = 1_011;
    log.apply(Command::Tick);
    assert_eq!(
        std::mem::take(&mut log.effects),
        vec![Effect::DeadLetter {
            id: 11,
            reason: Reason::Expired,
            held: false,
        }]
    );
    assert_eq!(log.state.messages(), 2, "entries 2 and 12");
}

#[test]
fn delayed_retry_holds_returns_back_by_their_failed_deliveries() {
    let mut log = Log {
        now: 1_000,
        ..Log::default()
    };
    log.configure(Limits {
        max_length: Some(1),
        reject_publish: true,
        delayed_retry: Some(DelayedRetry {
            kind: RetryKind::Failed,
            min: 100,
            max: 250,
        }),
        ..Limits::default()
    });
    let one = consumer("a", 1, "one");
    log.checkout(&one, 1, false, 100); // entry 2
    log.publish("a", 1); // entry 3
    assert_eq!(log.delivered(), vec![("one".into(), 3, 0)]);
    // Failed once: back after 100 ms; meanwhile it is neither ready nor deliverable.
    log.settle(1, vec![3], Outcome::Requeue);
    assert!(log.delivered().is_empty());
    assert_eq!((log.state.messages(), log.state.delayed()), (0, 1));
    assert_eq!(log.state.next_deadline(), Some(1_100));
    assert!(log.state.live().contains(&3), "its body stays");
    // Delayed returns count against the length limit.
    assert_eq!(log.publish("a", 2), Reply::Enqueued(Enqueued::Rejected));
    log.now = 1_100;
    log.apply(Command::Tick);
    assert_eq!(log.delivered(), vec![("one".into(), 3, 1)]);
    // Failed twice: 200 ms; three times: 300, capped at 250.
    log.settle(1, vec![3], Outcome::Requeue);
    assert_eq!(log.state.next_deadline(), Some(log.now + 200));
    log.now += 200;
    log.apply(Command::Tick);
    assert_eq!(log.delivered(), vec![("one".into(), 3, 2)]);
    log.settle(1, vec![3], Outcome::Requeue);
    assert_eq!(log.state.next_deadline(), Some(log.now + 250));
    // Returns that are not failures (the channel went) come back at once with `failed`.
    log.now += 250;
    log.apply(Command::Tick);
    assert_eq!(log.delivered(), vec![("one".into(), 3, 3)]);
    log.apply(Command::ChannelDown {
        node: "a".into(),
        incarnation: 1,
        connection: 7,
        channel: 1,
    });
    assert_eq!((log.state.messages(), log.state.delayed()), (1, 0));
    // A purge takes the delayed ones too.
    log.checkout(&one, 1, false, 100);
    log.delivered();
    log.settle(1, vec![3], Outcome::Requeue);
    assert_eq!(log.apply(Command::Purge), Reply::Count(1));
    assert!(log.state.is_empty());
}
