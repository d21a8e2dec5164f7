//! Faults: `kill -9` of a `warren` child process at random points under load, torn and
//! bit-flipped log tails, a full disk (a size-limited tmpfs), and memory and disk alarms.
//!
//! The invariant throughout: a confirmed message is never lost, an acknowledged one never comes
//! back, and the node stays up.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use warren_testkit::{TestBroker, temporary_dir};
use warren_tests::node::{NodeOptions, NodeProcess};
use warren_tests::{RawClient, Received, promptly, require, wait_until};
use warren_wire::{Frame, Method};

use crate::durability::{declare_durable, drain, open_url, persistent, publish_confirmed};

fn short(text: &str) -> ShortString {
    text.into()
}

/// A small deterministic generator, seeded from the clock; the seed is printed so that a
/// failure can be replayed with `WARREN_CRASH_SEED`.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let seed = std::env::var("WARREN_CRASH_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |elapsed| elapsed.as_nanos() as u64)
            });
        eprintln!("crash test seed: {seed} (set WARREN_CRASH_SEED to replay)");
        Random(seed | 1)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// What one connection did, in the order it did it.
#[derive(Default)]
struct Ledger {
    step: u64,
    published: HashSet<u64>,
    /// Confirmed ids and the step their confirm arrived at.
    confirmed: HashMap<u64, u64>,
    /// Acknowledged ids and the step the ack was sent at.
    acked: HashMap<u64, u64>,
    /// Steps at which a publish started whose confirm then arrived.
    confirmed_publish_starts: Vec<u64>,
}

impl Ledger {
    fn tick(&mut self) -> u64 {
        self.step += 1;
        self.step
    }

    /// An ack is known to be on disk when a publish sent after it on the same connection was
    /// confirmed: the queue writes a connection's settlements before the publishes that follow.
    fn durably_acked(&self) -> HashSet<u64> {
        let last = self
            .confirmed_publish_starts
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        self.acked
            .iter()
            .filter(|(_, at)| **at < last)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Publishes batches with confirms and acknowledges every third delivery on the same
/// connection, until the node dies under it.
async fn load(url: &str, next_id: &mut u64, ledger: &mut Ledger) {
    if let Ok(connection) =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await
    {
        // Ends with an error when the node is killed.
        let _ = run_load(&connection, next_id, ledger).await;
    }
}

async fn run_load(
    connection: &lapin::Connection,
    next_id: &mut u64,
    ledger: &mut Ledger,
) -> Result<(), lapin::Error> {
    {
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        let consumer_channel = connection.create_channel().await?;
        let mut consumer = consumer_channel
            .basic_consume(
                short("crash"),
                short("crash-consumer"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        loop {
            let start = ledger.tick();
            let mut confirms = Vec::new();
            for _ in 0..20 {
                let id = *next_id;
                *next_id += 1;
                ledger.published.insert(id);
                let confirm = publisher
                    .basic_publish(
                        short(""),
                        short("crash"),
                        BasicPublishOptions::default(),
                        &id.to_be_bytes(),
                        persistent(),
                    )
                    .await?;
                confirms.push((id, confirm));
            }
            for (id, confirm) in confirms {
                let confirmation = confirm.await?;
                assert!(confirmation.is_ack(), "message {id} was nacked");
                let step = ledger.tick();
                ledger.confirmed.insert(id, step);
            }
            ledger.confirmed_publish_starts.push(start);
            // Take what has arrived without waiting; ack every third confirmed message.
            while let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_millis(1), consumer.next()).await
            {
                let delivery = delivery?;
                let id = u64::from_be_bytes(delivery.data[..8].try_into().expect("8 bytes"));
                if id % 3 == 0 && ledger.confirmed.contains_key(&id) {
                    // Recorded first: the node may take the ack even if we are cut off before
                    // hearing it was sent.
                    let step = ledger.tick();
                    ledger.acked.insert(id, step);
                    delivery
                        .ack(lapin::options::BasicAckOptions::default())
                        .await?;
                }
            }
        }
    }
}

#[tokio::test]
async fn confirmed_messages_survive_kill_9_at_random_points() {
    let mut random = Random::new();
    let options = NodeOptions::new("");
    let mut ledger = Ledger::default();
    let mut next_id = 0u64;
    for round in 0..4 {
        let node = NodeProcess::start(&options).await;
        let (_connection, channel) = open_url(&node.url()).await;
        declare_durable(&channel, "crash", FieldTable::default()).await;
        let delay = Duration::from_millis(200 + random.below(1500));
        eprintln!("round {round}: kill -9 after {delay:?}");
        let url = node.url();
        let _ = tokio::time::timeout(delay, load(&url, &mut next_id, &mut ledger)).await;
        node.kill().await;
    }
    let node = NodeProcess::start(&options).await;
    let (_connection, channel) = open_url(&node.url()).await;
    let mut present = Vec::new();
    while let Some(message) = channel
        .basic_get(short("crash"), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        present.push(u64::from_be_bytes(
            message.delivery.data[..8].try_into().expect("8 bytes"),
        ));
    }
    let present_set: HashSet<u64> = present.iter().copied().collect();
    assert_eq!(
        present_set.len(),
        present.len(),
        "no message is there twice"
    );
    let durably_acked = ledger.durably_acked();
    // Acknowledged messages may be gone even if their acknowledgement was not known durable.
    let lost: Vec<u64> = ledger
        .confirmed
        .keys()
        .filter(|id| !ledger.acked.contains_key(id) && !present_set.contains(id))
        .copied()
        .collect();
    assert!(lost.is_empty(), "confirmed messages lost: {lost:?}");
    let back: Vec<&u64> = durably_acked.intersection(&present_set).collect();
    assert!(back.is_empty(), "acknowledged messages came back: {back:?}");
    assert!(
        present_set.is_subset(&ledger.published),
        "only published messages are there"
    );
    assert!(
        ledger.confirmed.len() > 100,
        "the load ran ({} confirmed)",
        ledger.confirmed.len()
    );
    eprintln!(
        "{} published, {} confirmed, {} acked ({} known durable), {} present",
        ledger.published.len(),
        ledger.confirmed.len(),
        ledger.acked.len(),
        durably_acked.len(),
        present.len()
    );
    assert_eq!(node.terminate().await, Some(0));
    std::fs::remove_dir_all(&options.data_dir).expect("remove data");
}

/// Deliveries recorded before a crash are redelivered flagged; the rest are not.
#[tokio::test]
async fn deliveries_before_kill_9_come_back_redelivered() {
    let options = NodeOptions::new("");
    let node = NodeProcess::start(&options).await;
    let (_connection, channel) = open_url(&node.url()).await;
    declare_durable(&channel, "redeliver", FieldTable::default()).await;
    for body in [b"1", b"2", b"3", b"4"] {
        publish_confirmed(&channel, "", "redeliver", body, persistent()).await;
    }
    for _ in 0..2 {
        channel
            .basic_get(short("redeliver"), BasicGetOptions::default())
            .await
            .expect("get")
            .expect("a message");
    }
    // A confirmed publish after the deliveries: their record is on disk with it.
    publish_confirmed(&channel, "", "redeliver", b"5", persistent()).await;
    node.kill().await;
    let node = NodeProcess::start(&options).await;
    let (_connection, channel) = open_url(&node.url()).await;
    let messages = drain(&channel, "redeliver").await;
    let expected: Vec<(Vec<u8>, bool)> = [
        ("1", true),
        ("2", true),
        ("3", false),
        ("4", false),
        ("5", false),
    ]
    .into_iter()
    .map(|(body, redelivered)| (body.as_bytes().to_vec(), redelivered))
    .collect();
    assert_eq!(messages, expected);
    assert_eq!(node.terminate().await, Some(0));
    std::fs::remove_dir_all(&options.data_dir).expect("remove data");
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("segment directory")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| {
            path.extension().is_some_and(|extension| extension == "seg")
                && std::fs::metadata(path).is_ok_and(|metadata| metadata.len() > 0)
        })
        .collect();
    segments.sort();
    segments.pop().expect("a segment with records")
}

/// Publishes `count` persistent messages to a durable queue and stops the broker.
async fn stopped_broker_with_messages(dir: &Path, count: u8) {
    let broker = TestBroker::builder().data_dir(dir).start().await;
    let (_connection, channel) = open_url(&broker.url()).await;
    declare_durable(&channel, "q", FieldTable::default()).await;
    for index in 0..count {
        publish_confirmed(&channel, "", "q", &[index; 100], persistent()).await;
    }
    broker.stop().await;
}

async fn remaining(dir: &Path) -> Vec<u8> {
    let broker = TestBroker::builder().data_dir(dir).start().await;
    let (_connection, channel) = open_url(&broker.url()).await;
    let bodies = drain(&channel, "q")
        .await
        .into_iter()
        .map(|(body, _)| {
            assert!(
                body.iter().all(|byte| *byte == body[0]),
                "bodies are intact"
            );
            body[0]
        })
        .collect();
    broker.stop().await;
    bodies
}

/// A torn write (the file ends inside the last record) and a damaged last record are cut at
/// start; everything before them is served as it was.
#[tokio::test]
async fn torn_and_bit_flipped_tails_are_cut_and_never_served() {
    for damage in ["truncate", "flip"] {
        let dir = temporary_dir("tail");
        stopped_broker_with_messages(&dir, 10).await;
        let segment = newest_segment(&dir.join("messages"));
        let length = std::fs::metadata(&segment).expect("stat").len();
        match damage {
            "truncate" => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&segment)
                    .expect("open");
                file.set_len(length - 30).expect("truncate");
            }
            _ => {
                let mut bytes = std::fs::read(&segment).expect("read");
                let at = bytes.len() - 20;
                bytes[at] ^= 0x40;
                std::fs::write(&segment, bytes).expect("write");
            }
        }
        assert_eq!(
            remaining(&dir).await,
            (0..9).collect::<Vec<u8>>(),
            "{damage}: the damaged last message is gone, the rest intact"
        );
        std::fs::remove_dir_all(&dir).expect("remove data");
    }
}

/// A torn metadata record loses that one change; the node starts with the rest.
#[tokio::test]
async fn a_torn_metadata_tail_loses_only_the_last_change() {
    let dir = temporary_dir("metadata-tail");
    let broker = TestBroker::builder().data_dir(&dir).start().await;
    let (_connection, channel) = open_url(&broker.url()).await;
    declare_durable(&channel, "first", FieldTable::default()).await;
    declare_durable(&channel, "second", FieldTable::default()).await;
    broker.stop().await;
    // Tear the log inside the record that holds the second declaration (later records, such
    // as the commit marker after it, go with it, as they would in a crash).
    let segment = newest_segment(&dir.join("metadata"));
    let bytes = std::fs::read(&segment).expect("read");
    let at = bytes
        .windows(6)
        .rposition(|window| window == b"second")
        .expect("the declaration is in the newest segment");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(at as u64 + 2)
        .expect("truncate");
    let broker = TestBroker::builder().data_dir(&dir).start().await;
    let queues: Vec<String> = broker
        .broker()
        .vhost("/")
        .expect("default vhost")
        .queues()
        .iter()
        .map(|queue| queue.name.to_string())
        .collect();
    assert_eq!(queues, ["first"]);
    broker.stop().await;
    std::fs::remove_dir_all(&dir).expect("remove data");
}

/// A small filesystem to fill: a size-limited tmpfs, unmounted when dropped.
struct SmallFilesystem(PathBuf);

/// Publishes `count` persistent copies of `body` to "filled", each confirmed (an ack) within
/// 20 s before the next goes; `what` says what a missing confirm means.
async fn publish_each_confirmed(channel: &lapin::Channel, body: &[u8], count: usize, what: &str) {
    for _ in 0..count {
        let confirm = channel
            .basic_publish(
                short(""),
                short("filled"),
                BasicPublishOptions::default(),
                body,
                persistent(),
            )
            .await
            .expect("published");
        let confirmation = tokio::time::timeout(Duration::from_secs(20), confirm)
            .await
            .unwrap_or_else(|_| panic!("{what}"))
            .expect("a confirmation");
        assert!(confirmation.is_ack(), "{confirmation:?}");
    }
}

impl SmallFilesystem {
    /// A tmpfs of `size`; `None` (reported as a skip, a failure in CI) where none can be
    /// mounted.
    fn mount(size: &str) -> Option<SmallFilesystem> {
        let dir = temporary_dir("tmpfs");
        let mounted = std::fs::create_dir_all(&dir).is_ok()
            && std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir)
                .output()
                .is_ok_and(|output| output.status.success());
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            require(
                "a mountable tmpfs (root)",
                false,
                "run as root, or in CI, to test a full disk",
            );
            return None;
        }
        Some(SmallFilesystem(dir))
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// On a full disk, publishes are nacked (never confirmed unwritten), the disk alarm blocks
/// publishers, the node keeps serving, and once space comes back the alarm clears and
/// publishing resumes; every confirmed message survives a restart.
#[tokio::test]
async fn a_full_disk_nacks_and_blocks_publishes_and_recovers_when_space_returns() {
    let Some(filesystem) = SmallFilesystem::mount("3m") else {
        return;
    };
    let data = filesystem.0.join("data");
    let ballast = filesystem.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 512 * 1024]).expect("ballast");
    let start = || {
        TestBroker::builder()
            .data_dir(&data)
            .config_text("disk_free_limit.absolute = 1\n")
            .expect("config")
            .start()
    };
    let broker = start().await;
    let (_connection, channel) = open_url(&broker.url()).await;
    declare_durable(&channel, "full", FieldTable::default()).await;
    let body = vec![9u8; 16 * 1024];
    let mut confirmed = 0u32;
    let mut nacked = false;
    for _ in 0..1000 {
        let publish = async {
            channel
                .basic_publish(
                    short(""),
                    short("full"),
                    BasicPublishOptions::default(),
                    &body,
                    persistent(),
                )
                .await?
                .await
        };
        match tokio::time::timeout(Duration::from_secs(5), publish).await {
            Ok(Ok(confirmation)) if confirmation.is_ack() => confirmed += 1,
            Ok(Ok(_)) => {
                nacked = true;
                break;
            }
            Ok(Err(error)) => panic!("publish failed: {error}"),
            // Blocked by the disk alarm before a write could fail.
            Err(_) => break,
        }
    }
    assert!(nacked, "a publish that could not be written was nacked");
    assert!(
        confirmed > 50,
        "{confirmed} confirmed before the disk filled"
    );
    wait_until("the disk alarm", || broker.broker().alarms.current().disk).await;
    // The node still serves: a new connection declares and reads.
    let (_reader, reader_channel) = open_url(&broker.url()).await;
    let state = reader_channel
        .queue_declare(
            short("full"),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert!(state.message_count() >= confirmed);
    // Space comes back: the alarm clears and publishing resumes.
    std::fs::remove_file(&ballast).expect("remove ballast");
    wait_until("the disk alarm to clear", || {
        !broker.broker().alarms.current().disk
    })
    .await;
    let (_again, again) = open_url(&broker.url()).await;
    publish_confirmed(&again, "", "full", b"after", persistent()).await;
    broker.stop().await;
    let broker = start().await;
    let (_connection, channel) = open_url(&broker.url()).await;
    let messages = drain(&channel, "full").await;
    assert!(
        messages.len() as u32 > confirmed,
        "every confirmed message survived"
    );
    assert_eq!(
        messages.last().map(|(body, _)| body.as_slice()),
        Some(&b"after"[..])
    );
    assert!(
        messages[..confirmed as usize]
            .iter()
            .all(|(message, _)| *message == body)
    );
    broker.stop().await;
    drop(filesystem);
}

async fn expect_method_matching(
    client: &mut RawClient,
    what: &str,
    wanted: impl Fn(&Method) -> bool,
) -> Method {
    promptly(what, async {
        loop {
            match client.receive().await {
                Received::Frame(Frame::Method { method, .. }) if wanted(&method) => return method,
                Received::Frame(_) => continue,
                Received::Closed => panic!("closed while waiting for {what}"),
            }
        }
    })
    .await
}

/// An alarm blocks a connection at its next publish (with `connection.blocked` and the reason)
/// while consumers keep receiving; clearing it unblocks.
#[tokio::test]
async fn alarms_block_publishers_and_let_consumers_drain() {
    for (raise, reason) in [
        (
            (|broker: &TestBroker| broker.broker().alarms.set_memory_limit(1)) as fn(&TestBroker),
            "low on memory",
        ),
        (
            |broker: &TestBroker| broker.broker().alarms.set_disk_limit(u64::MAX),
            "low on disk",
        ),
    ] {
        let broker = TestBroker::start().await;
        let (_connection, channel) = open_url(&broker.url()).await;
        declare_durable(&channel, "alarmed", FieldTable::default()).await;
        publish_confirmed(&channel, "", "alarmed", b"before", persistent()).await;
        let mut publisher = RawClient::open(broker.address(), 0).await;
        raise(&broker);
        wait_until("the alarm", || broker.broker().alarms.current().any()).await;
        publisher.publish(1, "", "alarmed", b"during").await;
        let blocked = expect_method_matching(&mut publisher, "connection.blocked", |method| {
            matches!(method, Method::ConnectionBlocked(_))
        })
        .await;
        let Method::ConnectionBlocked(blocked) = blocked else {
            unreachable!()
        };
        assert_eq!(blocked.reason.to_string(), reason);
        publisher.publish(1, "", "alarmed", b"held back").await;
        // A consumer on another connection still gets messages.
        let (_consumer_connection, consumer_channel) = open_url(&broker.url()).await;
        let mut consumer = consumer_channel
            .basic_consume(
                short("alarmed"),
                short("drainer"),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut received = Vec::new();
        for _ in 0..2 {
            let delivery = promptly("a delivery during the alarm", consumer.next())
                .await
                .expect("open")
                .expect("delivery");
            received.push(delivery.data);
        }
        assert_eq!(received, [b"before".to_vec(), b"during".to_vec()]);
        let held = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
        assert!(held.is_err(), "the blocked connection is not read");
        broker.broker().alarms.set_memory_limit(u64::MAX);
        broker.broker().alarms.set_disk_limit(0);
        expect_method_matching(&mut publisher, "connection.unblocked", |method| {
            matches!(method, Method::ConnectionUnblocked(_))
        })
        .await;
        let delivery = promptly("the held-back message", consumer.next())
            .await
            .expect("open")
            .expect("delivery");
        assert_eq!(delivery.data, b"held back");
        broker.stop().await;
    }
}

/// A full disk on one member of a quorum queue: that member's writes fail and it stops, the
/// two others go on confirming (a majority), and the full node's own clients keep consuming
/// (its proposals go to the other members). Once space is back, the member restarts by itself
/// from its log on disk (the node keeps running) and catches up; it then counts in a majority:
/// with another node stopped, the queue still confirms, and every confirmed message not
/// consumed is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_one_quorum_queue_member_costs_the_queue_nothing() {
    use lapin::options::{BasicAckOptions, ConfirmSelectOptions};
    use warren_testkit::TestCluster;

    // 12 MiB, 9 of them ballast: the queue's 6 MiB do not fit until the ballast goes.
    let Some(filesystem) = SmallFilesystem::mount("12m") else {
        return;
    };
    let data = filesystem.0.join("data");
    std::fs::create_dir_all(&data).expect("data directory");
    let ballast = filesystem.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 9 * 1024 * 1024]).expect("ballast");
    let mut cluster = TestCluster::builder()
        .nodes(3)
        .data_dir(2, &data)
        .config(|config| config.disk_free_limit_absolute = Some(1))
        .build()
        .await;
    cluster.wait_for_members(3, Duration::from_secs(20)).await;
    let (_a, on_first) = open_url(&cluster.node(0).url()).await;
    on_first
        .queue_declare(
            short("filled"),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            crate::quorum::quorum(),
        )
        .await
        .expect("a quorum queue on the three nodes");
    cluster
        .wait_for_queue("/", "filled", Duration::from_secs(20))
        .await;
    on_first
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    // 6 MiB through the queue: more than node 2's disk holds. (Its disk alarm, raised by the
    // failed write, blocks publishers across the cluster until a probe write succeeds again.)
    let body = vec![7u8; 16 * 1024];
    let confirmed = 384;
    publish_each_confirmed(
        &on_first,
        &body,
        confirmed,
        "the majority confirms while node 2's disk is full",
    )
    .await;
    let id = cluster
        .node(2)
        .broker()
        .vhost("/")
        .and_then(|vhost| vhost.queue(b"filled"))
        .expect("the queue on node 2")
        .id();
    // (It may be back already: it restarts once the disk takes a probe write again.)
    let stats = cluster.node(2).broker().quorum().host_stats().await;
    assert!(
        stats.member_stops >= 1,
        "node 2's member stopped when its writes failed: {stats:?}"
    );
    // Node 2's clients still consume, through the other members.
    let (full_connection, on_full) = open_url(&cluster.node(2).url()).await;
    on_full
        .basic_qos(1, lapin::options::BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = on_full
        .basic_consume(
            short("filled"),
            short("reader"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consuming on the full node");
    for _ in 0..50 {
        let delivery = promptly("a delivery on the full node", consumer.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("acked");
    }
    // Closed cleanly, so that every ack is in before the node restarts.
    full_connection
        .close(200, "done".into())
        .await
        .expect("closed");
    drop(consumer);
    // Space comes back; the member restarts from its log and catches up, the node running on.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let caught_up = match (
            cluster.node(2).broker().quorum().group_status(id).await,
            cluster.node(0).broker().quorum().group_status(id).await,
        ) {
            (Some(mine), Some(leader)) => mine.commit >= leader.commit && mine.leader.is_some(),
            _ => false,
        };
        if caught_up {
            let stats = cluster.node(2).broker().quorum().host_stats().await;
            assert!(
                stats.member_restarts >= 1,
                "caught up without a restart: {stats:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2's member does not catch up: {:?} against the leader's {:?}",
            cluster.node(2).broker().quorum().group_status(id).await,
            cluster.node(0).broker().quorum().group_status(id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node 0 goes: nodes 1 and 2 are the majority now, so node 2's member must vote and write.
    cluster.stop_node(0).await;
    let (_b, on_second) = open_url(&cluster.node(1).url()).await;
    on_second
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let more = 20;
    publish_each_confirmed(
        &on_second,
        &body,
        more,
        "nodes 1 and 2 confirm without node 0",
    )
    .await;
    let (_c, after) = open_url(&cluster.node(2).url()).await;
    let rest = drain(&after, "filled").await;
    assert_eq!(
        rest.len(),
        confirmed - 50 + more,
        "every confirmed message not acked is still there"
    );
    cluster.stop().await;
    drop(filesystem);
}

/// An alarm on one node blocks publishers on every node of the cluster, as RabbitMQ's do;
/// once it clears (or its node goes), they are unblocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_on_one_node_blocks_publishers_across_the_cluster() {
    let mut cluster = warren_testkit::TestCluster::builder()
        .nodes(2)
        .build()
        .await;
    cluster.wait_for_members(2, Duration::from_secs(20)).await;
    let (_c, setup) = open_url(&cluster.node(0).url()).await;
    declare_durable(&setup, "alarmed", FieldTable::default()).await;
    let mut publisher = RawClient::open(cluster.node(0).address(), 0).await;
    cluster.node(1).broker().alarms.set_memory_limit(1);
    wait_until("node 0 to hear of node 1's alarm", || {
        cluster.node(0).broker().alarms.current().memory
    })
    .await;
    assert!(!cluster.node(0).broker().alarms.local().any());
    publisher.publish(1, "", "alarmed", b"during").await;
    let blocked = expect_method_matching(&mut publisher, "connection.blocked", |method| {
        matches!(method, Method::ConnectionBlocked(_))
    })
    .await;
    let Method::ConnectionBlocked(blocked) = blocked else {
        unreachable!()
    };
    assert_eq!(blocked.reason.to_string(), "low on memory");
    cluster.node(1).broker().alarms.set_memory_limit(u64::MAX);
    expect_method_matching(&mut publisher, "connection.unblocked", |method| {
        matches!(method, Method::ConnectionUnblocked(_))
    })
    .await;
    // Raised again, then its node stops: a node that is gone no longer counts.
    cluster.node(1).broker().alarms.set_memory_limit(1);
    wait_until("node 0 to hear of node 1's alarm again", || {
        cluster.node(0).broker().alarms.current().memory
    })
    .await;
    publisher.publish(1, "", "alarmed", b"again").await;
    expect_method_matching(&mut publisher, "connection.blocked", |method| {
        matches!(method, Method::ConnectionBlocked(_))
    })
    .await;
    cluster.stop_node(1).await;
    expect_method_matching(&mut publisher, "connection.unblocked", |method| {
        matches!(method, Method::ConnectionUnblocked(_))
    })
    .await;
    cluster.stop().await;
}
