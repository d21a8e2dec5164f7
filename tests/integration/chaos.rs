//! A quorum queue under a seeded random fault schedule, with a checker of its promises.
//!
//! Three in-process nodes ([`TestCluster`]) hold one quorum queue; two publishers (with
//! confirms) and two consumers (manual acks) work on it through lapin, each reconnecting to the
//! next node when its node goes. Meanwhile a schedule drawn from the seed stops nodes (the
//! leader's among them) and starts them again, cuts a node off from the others, slows its
//! links, or stops two nodes at once so that no majority is left. Every publish, confirm,
//! nack, delivery and ack goes into a ledger; the checker then holds the run to the queue's
//! promises:
//! - no confirmed message is lost: each one was acked by a consumer or is still in the queue
//!   once the cluster is whole again;
//! - nothing is confirmed without a majority: a publish sent while two of the three nodes were
//!   down is not confirmed before one of them is back;
//! - nothing comes out that was not published, and what comes again is marked `redelivered`;
//! - the queue is available again once the faults heal: a new publish is confirmed promptly.
//!
//! The schedule (faults, nodes, durations) is a function of the seed and is printed with it;
//! the interleaving of the clients with it is not (real sockets, real threads).
//! `WARREN_CHAOS_SEED=S` runs seed S alone, `WARREN_CHAOS_SEEDS=N` runs seeds 1..=N (two by
//! default). A rolling restart (each node in turn, once `check_if_node_is_quorum_critical`
//! passes for it) runs under the same clients and checker as a test of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use parking_lot::Mutex;
use tokio::time::{Instant, sleep, timeout};
use warren_testkit::TestCluster;

use crate::quorum::{durable, quorum};

const QUEUE: &str = "chaos";
const NODES: usize = 3;
const STEPS: usize = 7;
/// Messages a publisher sends before it waits for their confirms.
const BATCH: u64 = 10;

/// One fault of the schedule, held for a while and then undone.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Node stopped, then started again on its data.
    Stop(usize),
    /// The node leading the queue when the step begins, stopped and started again.
    StopLeader,
    /// Node cut off from the other two.
    Partition(usize),
    /// Every link of the node slowed by this many milliseconds.
    Delay(usize, u64),
    /// Two nodes stopped: the one left has no majority.
    LoseMajority(usize, usize),
    /// Every node restarted in turn, each once `check_if_node_is_quorum_critical` says its
    /// stop would leave the queue a majority (as an operator upgrading the cluster does).
    RollingRestart,
}

#[derive(Debug, Clone, Copy)]
struct Step {
    fault: Fault,
    hold: Duration,
    calm: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} for {} ms, then {} ms calm",
            self.fault,
            self.hold.as_millis(),
            self.calm.as_millis()
        )
    }
}

/// The schedule of seed `seed`.
fn schedule(seed: u64) -> Vec<Step> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..STEPS)
        .map(|_| {
            let node = rng.usize(0..NODES);
            let fault = match rng.u8(0..10) {
                0 | 1 => Fault::Stop(node),
                2 | 3 => Fault::StopLeader,
                4..=6 => Fault::Partition(node),
                7 | 8 => Fault::Delay(node, rng.u64(20..200)),
                _ => Fault::LoseMajority(node, (node + 1 + rng.usize(0..NODES - 1)) % NODES),
            };
            Step {
                fault,
                hold: Duration::from_millis(rng.u64(500..3000)),
                calm: Duration::from_millis(rng.u64(500..1500)),
            }
        })
        .collect()
}

/// What the clients saw, and what broke the queue's promises as they saw it.
#[derive(Default)]
struct Ledger {
    /// Every publish sent, with when.
    published: BTreeMap<u64, Instant>,
    confirmed: BTreeSet<u64>,
    nacked: BTreeSet<u64>,
    /// Deliveries of each message.
    delivered: BTreeMap<u64, u32>,
    redelivered: u64,
    acked: BTreeSet<u64>,
    /// When the cluster had no majority: from, until (open while it lasts).
    no_majority: Vec<(Instant, Option<Instant>)>,
    violations: Vec<String>,
}

impl Ledger {
    fn confirm(&mut self, id: u64) {
        let now = Instant::now();
        let sent = self.published[&id];
        let unsafe_window = self
            .no_majority
            .iter()
            .any(|(from, until)| sent >= *from && until.is_none_or(|until| now < until));
        if unsafe_window {
            self.violations.push(format!(
                "message {id} was confirmed while no majority was up to hold it"
            ));
        }
        self.confirmed.insert(id);
    }

    fn deliver(&mut self, body: &[u8], redelivered: bool) -> Option<u64> {
        let id = std::str::from_utf8(body)
            .ok()
            .and_then(|text| text.parse::<u64>().ok());
        match id {
            Some(id) if self.published.contains_key(&id) => {
                let count = self.delivered.entry(id).or_default();
                if *count > 0 && !redelivered {
                    self.violations
                        .push(format!("message {id} came again without `redelivered`"));
                }
                *count += 1;
                self.redelivered += u64::from(redelivered);
                Some(id)
            }
            _ => {
                self.violations.push(format!(
                    "delivered something never published: {:?}",
                    String::from_utf8_lossy(body)
                ));
                None
            }
        }
    }
}

type Shared = Arc<Mutex<Ledger>>;

async fn connect(url: &str) -> Option<(Connection, lapin::Channel)> {
    let connection = timeout(
        Duration::from_secs(5),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .ok()?
    .ok()?;
    let channel = connection.create_channel().await.ok()?;
    Some((connection, channel))
}

/// Publishes batches with confirms until told to stop, moving to the next node whenever its
/// connection breaks; a publish whose confirm never came is neither confirmed nor nacked.
async fn publisher(first: usize, urls: Arc<Vec<String>>, ledger: Shared, stop: Arc<AtomicBool>) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut node = first;
    while !stop.load(Ordering::Acquire) {
        let url = &urls[node % urls.len()];
        node += 1;
        let Some((connection, channel)) = connect(url).await else {
            sleep(Duration::from_millis(200)).await;
            continue;
        };
        if channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            continue;
        }
        'connection: while !stop.load(Ordering::Acquire) {
            let mut pending = Vec::new();
            for _ in 0..BATCH {
                let id = NEXT.fetch_add(1, Ordering::Relaxed);
                ledger.lock().published.insert(id, Instant::now());
                let sent = channel
                    .basic_publish(
                        "".into(),
                        QUEUE.into(),
                        BasicPublishOptions::default(),
                        id.to_string().as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await;
                match sent {
                    Ok(confirm) => pending.push((id, confirm)),
                    Err(_) => break,
                }
            }
            let mut broken = pending.len() < BATCH as usize;
            for (id, confirm) in pending {
                // Longer than a proposal may wait: the broker answers first.
                match timeout(Duration::from_secs(60), confirm).await {
                    Ok(Ok(confirmation)) if confirmation.is_ack() => ledger.lock().confirm(id),
                    Ok(Ok(confirmation)) if confirmation.is_nack() => {
                        ledger.lock().nacked.insert(id);
                    }
                    _ => broken = true,
                }
            }
            if broken {
                break 'connection;
            }
            sleep(Duration::from_millis(20)).await;
        }
        let _ = timeout(Duration::from_secs(2), connection.close(200, "done".into())).await;
    }
}

/// Consumes and acks until told to stop, moving to the next node whenever its connection
/// breaks.
async fn consumer(first: usize, urls: Arc<Vec<String>>, ledger: Shared, stop: Arc<AtomicBool>) {
    let mut node = first;
    while !stop.load(Ordering::Acquire) {
        let url = &urls[node % urls.len()];
        node += 1;
        let Some((connection, channel)) = connect(url).await else {
            sleep(Duration::from_millis(200)).await;
            continue;
        };
        if channel
            .basic_qos(20, BasicQosOptions::default())
            .await
            .is_err()
        {
            continue;
        }
        let Ok(mut deliveries) = channel
            .basic_consume(
                QUEUE.into(),
                format!("consumer-{first}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        else {
            continue;
        };
        while !stop.load(Ordering::Acquire) {
            let delivery = match timeout(Duration::from_millis(300), deliveries.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(delivery))) => delivery,
                Ok(_) => break,
            };
            let id = ledger.lock().deliver(&delivery.data, delivery.redelivered);
            if delivery.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
            if let Some(id) = id {
                ledger.lock().acked.insert(id);
            }
        }
        let _ = timeout(Duration::from_secs(2), connection.close(200, "done".into())).await;
    }
}

/// The index of the node leading the queue, as node `asking` sees it.
async fn leader(cluster: &TestCluster, asking: usize) -> Option<usize> {
    let node = cluster.node(asking);
    if !node.is_running() {
        return None;
    }
    let broker = node.broker();
    let id = broker.vhost("/")?.queue(QUEUE.as_bytes())?.id();
    let leader = broker.quorum().group_status(id).await?.leader?;
    (0..cluster.len()).find(|&index| cluster.node(index).name() == leader)
}

/// Waits until stopping node `index` would leave every quorum queue (and the metadata store)
/// a majority, as `check_if_node_is_quorum_critical` tells it.
async fn until_not_critical(cluster: &TestCluster, index: usize) {
    use warren_cluster::control::{ControlRequest, ControlResponse};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = cluster
            .node(index)
            .control(ControlRequest::QuorumCritical)
            .await;
        if let Ok(ControlResponse::QuorumCritical(report)) = &report
            && report.critical.is_empty()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {index} stays quorum critical: {report:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the schedule of `seed` against a fresh cluster and checks the ledger; panics with the
/// seed and its schedule when a promise was broken.
async fn run_seed(seed: u64) {
    run_schedule(&format!("seed {seed}"), schedule(seed)).await;
}

/// Runs `steps` against a fresh cluster under load and checks the ledger; panics with `label`
/// and the schedule when a promise was broken.
async fn run_schedule(label: &str, steps: Vec<Step>) {
    let plan: Vec<String> = steps.iter().map(ToString::to_string).collect();
    eprintln!("chaos {label}:\n  {}", plan.join("\n  "));

    let mut cluster = TestCluster::builder().nodes(NODES).build().await;
    cluster
        .wait_for_members(NODES, Duration::from_secs(20))
        .await;
    let urls: Arc<Vec<String>> = Arc::new((0..NODES).map(|i| cluster.node(i).url()).collect());
    {
        let (_connection, channel) = connect(&urls[0]).await.expect("node 0 answers");
        channel
            .queue_declare(QUEUE.into(), durable(), quorum())
            .await
            .expect("the quorum queue is declared");
    }
    cluster
        .wait_for_queue("/", QUEUE, warren_tests::PROMPTLY)
        .await;

    let ledger: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for first in 0..2 {
        clients.push(tokio::spawn(publisher(
            first + 1,
            urls.clone(),
            ledger.clone(),
            stop.clone(),
        )));
        clients.push(tokio::spawn(consumer(
            first + 2,
            urls.clone(),
            ledger.clone(),
            stop.clone(),
        )));
    }
    sleep(Duration::from_millis(500)).await;

    for step in &steps {
        match step.fault {
            Fault::Stop(node) => {
                cluster.stop_node(node).await;
                sleep(step.hold).await;
                cluster.restart_node(node).await;
            }
            Fault::StopLeader => {
                let mut found = None;
                for asking in 0..NODES {
                    found = found.or(leader(&cluster, asking).await);
                }
                let node = found.unwrap_or(0);
                eprintln!("  the leader is on node {node}");
                cluster.stop_node(node).await;
                sleep(step.hold).await;
                cluster.restart_node(node).await;
            }
            Fault::Partition(node) => {
                let others: Vec<usize> = (0..NODES).filter(|&other| other != node).collect();
                cluster.partition(&[node], &others);
                sleep(step.hold).await;
                cluster.heal();
            }
            Fault::Delay(node, millis) => {
                let others: Vec<usize> = (0..NODES).filter(|&other| other != node).collect();
                cluster.delay(&[node], &others, Duration::from_millis(millis));
                sleep(step.hold).await;
                cluster.heal();
            }
            Fault::LoseMajority(a, b) => {
                cluster.stop_node(a).await;
                cluster.stop_node(b).await;
                ledger.lock().no_majority.push((Instant::now(), None));
                sleep(step.hold).await;
                if let Some(window) = ledger.lock().no_majority.last_mut() {
                    window.1 = Some(Instant::now());
                }
                // The first one back makes a majority with the survivor.
                cluster.restart_node(a).await;
                cluster.restart_node(b).await;
            }
            Fault::RollingRestart => {
                for node in 0..NODES {
                    until_not_critical(&cluster, node).await;
                    cluster.stop_node(node).await;
                    sleep(step.hold).await;
                    cluster.restart_node(node).await;
                    cluster
                        .wait_for_members(NODES, Duration::from_secs(30))
                        .await;
                }
            }
        }
        sleep(step.calm).await;
    }

    // Whole again: the clients finish what they have in flight, then the queue is drained.
    cluster.heal();
    cluster
        .wait_for_members(NODES, Duration::from_secs(30))
        .await;
    stop.store(true, Ordering::Release);
    for client in clients {
        timeout(Duration::from_secs(90), client)
            .await
            .expect("a client finishes once the cluster is whole")
            .expect("a client does not panic");
    }
    let (_connection, channel) = connect(&urls[0]).await.expect("node 0 answers");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let probe = channel
        .basic_publish(
            "".into(),
            QUEUE.into(),
            BasicPublishOptions::default(),
            b"0",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("the probe is published");
    let available = timeout(Duration::from_secs(30), probe).await;
    assert!(
        matches!(&available, Ok(Ok(confirmation)) if confirmation.is_ack()),
        "{label}: the queue is not available once the faults healed: {available:?}"
    );
    channel
        .basic_qos(500, BasicQosOptions::default())
        .await
        .expect("prefetch");
    let mut drain = channel
        .basic_consume(
            QUEUE.into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the queue is drained");
    let mut left = BTreeSet::new();
    loop {
        match timeout(Duration::from_secs(2), drain.next()).await {
            Ok(Some(Ok(delivery))) => {
                if delivery.data.as_slice() != b"0" {
                    let id = ledger.lock().deliver(&delivery.data, delivery.redelivered);
                    left.extend(id);
                }
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("acked");
            }
            Ok(other) => panic!("{label}: the drain broke off: {other:?}"),
            Err(_) => {
                let declared = channel
                    .queue_declare(
                        QUEUE.into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .expect("the queue is there");
                if declared.message_count() == 0 {
                    break;
                }
            }
        }
    }

    let mut ledger = std::mem::take(&mut *ledger.lock());
    let lost: Vec<u64> = ledger
        .confirmed
        .iter()
        .filter(|id| !ledger.acked.contains(id) && !left.contains(id))
        .copied()
        .collect();
    if !lost.is_empty() {
        let shown: Vec<u64> = lost.iter().take(20).copied().collect();
        ledger.violations.push(format!(
            "{} confirmed messages lost, among them {shown:?}",
            lost.len()
        ));
    }
    eprintln!(
        "chaos {label}: {} published, {} confirmed, {} nacked, {} delivered ({} redelivered), \
         {} acked, {} left at the end",
        ledger.published.len(),
        ledger.confirmed.len(),
        ledger.nacked.len(),
        ledger.delivered.len(),
        ledger.redelivered,
        ledger.acked.len(),
        left.len()
    );
    assert!(
        ledger.violations.is_empty(),
        "{label} broke the queue's promises:\n  {}\nschedule:\n  {}",
        ledger.violations.join("\n  "),
        plan.join("\n  ")
    );
    assert!(
        !ledger.confirmed.is_empty() && !ledger.acked.is_empty(),
        "{label}: the clients got nothing done, so nothing was checked"
    );
    cluster.stop().await;
}

/// A rolling restart under load, as an operator upgrading the cluster runs it: each node in
/// turn, once stopping it would leave the queue a majority; the same clients and checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_keeps_the_queues_promises() {
    let step = Step {
        fault: Fault::RollingRestart,
        hold: Duration::from_millis(1_000),
        calm: Duration::from_millis(1_000),
    };
    run_schedule("rolling restart", vec![step]).await;
}

/// Seeded random fault schedules against a quorum queue; see the module's header for what is
/// checked and how to run other seeds (rerun one with `WARREN_CHAOS_SEED=S`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_keeps_its_promises_under_seeded_random_faults() {
    if let Some(seed) = std::env::var("WARREN_CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        run_seed(seed).await;
        return;
    }
    let seeds: u64 = std::env::var("WARREN_CHAOS_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse().ok())
        .unwrap_or(2);
    for seed in 1..=seeds {
        run_seed(seed).await;
    }
}
