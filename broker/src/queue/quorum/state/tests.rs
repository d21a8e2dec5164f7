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
        self.state.apply(self.index, command, &mut self.effects)
    }

    fn publish(&mut self, node: &str, seq: u64) -> Reply {
        self.publish_answered(node, seq, 1)
    }

    fn publish_answered(&mut self, node: &str, seq: u64, answered_below: u64) -> Reply {
        self.apply(Command::Enqueue {
            enqueuer: enqueuer(node),
            seq,
            answered_below,
            message: Bytes::from_static(b"body"),
            size: 4,
        })
    }

    fn checkout(&mut self, key: &ConsumerKey, prefetch: u32, no_ack: bool, credit: u32) -> Reply {
        self.apply(Command::Checkout {
            consumer: key.clone(),
            prefetch,
            no_ack,
            credit,
            exclusive: false,
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
                Effect::Cancelled { .. } => None,
                Effect::DeadLetter { id, reason } => {
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
    assert_eq!(log.state.live(), [1, 2, 5, 6].into_iter().collect());
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
    assert_eq!(log.state.live(), [2, 3].into_iter().collect());
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
    });
    assert_eq!(reply, Reply::Done);
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
    assert_eq!(log.state.live(), [3].into_iter().collect());
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
    assert_eq!(log.state.live(), [2, 6].into_iter().collect());
}
