//! Hosts of in-process nodes over the real transport on loopback, each node with its own WAL in
//! a temporary directory, running a queue-like machine whose message bodies stay in the log
//! (as a quorum queue's do): replication and forwarding, the leader's death and its return from
//! its WAL, catch-up by a snapshot carrying the entries it still needs, a minority that commits
//! nothing, and the batching that keeps idle groups cheap.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use warren_storage::{Stream, Wal};

use super::*;
use crate::secret::Secret;
use crate::transport::TransportConfig;

#[derive(Serialize, Deserialize)]
enum Op {
    Push(Bytes),
    Pop,
}

/// A queue: what it holds are the indexes of the entries that pushed the bodies. A body pushed
/// twice is taken once (bodies are unique in these tests), so a proposal whose outcome was
/// lost can be made again, as a publisher's sequence numbers let a quorum queue do.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fifo {
    queued: VecDeque<u64>,
    pushed: BTreeSet<Bytes>,
}

type Shared = Arc<Mutex<Fifo>>;

struct FifoMachine(Shared);

impl Machine for FifoMachine {
    fn apply(&mut self, index: u64, command: &[u8], log: &Log<'_>) -> Bytes {
        let mut fifo = self.0.lock();
        match postcard::from_bytes(command).expect("a test command") {
            Op::Push(body) => {
                if fifo.pushed.insert(body) {
                    fifo.queued.push_back(index);
                }
                Bytes::new()
            }
            Op::Pop => {
                let Some(at) = fifo.queued.pop_front() else {
                    return Bytes::new();
                };
                let pushed = log.read(at).expect("a queued body stays in the log");
                match postcard::from_bytes(&pushed).expect("a test command") {
                    Op::Push(body) => body,
                    Op::Pop => panic!("entry {at} queued a pop"),
                }
            }
        }
    }

    fn snapshot(&self) -> (Bytes, Vec<u64>) {
        let fifo = self.0.lock();
        let data = postcard::to_stdvec(&*fifo).unwrap();
        let live = fifo.queued.iter().copied().collect();
        (Bytes::from(data), crate::multiraft::storage::sorted(live))
    }

    fn drained(&self) -> bool {
        self.0.lock().queued.is_empty()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        *self.0.lock() = postcard::from_bytes(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn push(body: &str) -> Bytes {
    Bytes::from(postcard::to_stdvec(&Op::Push(Bytes::from(body.to_string()))).unwrap())
}

fn pop() -> Bytes {
    Bytes::from(postcard::to_stdvec(&Op::Pop).unwrap())
}

type Addresses = Arc<Mutex<HashMap<NodeName, SocketAddr>>>;

fn name(member: MemberId) -> NodeName {
    NodeName::new_unchecked(format!("m{member}@localhost"))
}

struct Node {
    member: MemberId,
    transport: Transport,
    host: Host,
    machines: Arc<Mutex<HashMap<GroupId, Shared>>>,
    dir: PathBuf,
}

impl Node {
    fn fifo(&self, group: GroupId) -> Fifo {
        self.machines.lock()[&group].lock().clone()
    }

    async fn create(&self, group: GroupId, members: &[MemberId], campaign: bool) {
        let shared = Shared::default();
        self.machines.lock().insert(group, shared.clone());
        self.host
            .create(
                group,
                Membership::voters(members.iter().copied()),
                Box::new(FifoMachine(shared)),
                campaign,
            )
            .await
            .unwrap();
    }

    async fn status(&self, group: GroupId) -> GroupStatus {
        self.host.status(group).await.expect("the group is here")
    }
}

fn config(member: MemberId, snapshot_after: u64) -> HostConfig {
    HostConfig {
        member,
        raft: Config {
            election_timeout: 300,
            heartbeat_interval: 50,
            ..Config::default()
        },
        tick: Duration::from_millis(10),
        snapshot_after,
        propose_timeout: Duration::from_secs(5),
    }
}

async fn open_wal(dir: &Path) -> (Arc<Wal>, Recovery) {
    // A previous incarnation's WAL may still be closing.
    for _ in 0..200 {
        let mut recovery = Recovery::default();
        match Wal::open(dir, 1 << 20, |stream, position, payload| {
            if stream == Stream::Groups {
                recovery.visit(position, payload);
            }
        }) {
            Ok((wal, _)) => return (Arc::new(wal), recovery),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("the data directory stayed locked");
}

async fn start(member: MemberId, dir: &Path, addresses: &Addresses, snapshot_after: u64) -> Node {
    let mut transport_config = TransportConfig::new(
        name(member),
        Secret::from_text("host-tests").unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
        0,
    );
    transport_config.ping = Duration::from_millis(100);
    transport_config.timeout = Duration::from_millis(500);
    let lookup = addresses.clone();
    transport_config.resolver = Some(Arc::new(move |name: &NodeName| {
        lookup.lock().get(name).copied()
    }));
    let transport = Transport::start(transport_config).await.unwrap();
    addresses
        .lock()
        .insert(transport.node().clone(), transport.local_address().unwrap());
    let (wal, recovery) = open_wal(dir).await;
    let machines: Arc<Mutex<HashMap<GroupId, Shared>>> = Arc::default();
    let found = machines.clone();
    let factory: MachineFactory = Box::new(move |group| {
        let shared = Shared::default();
        found.lock().insert(group, shared.clone());
        Some(Box::new(FifoMachine(shared)) as Box<dyn Machine>)
    });
    let directory: Directory = Arc::new(|member| Some(name(member)));
    let host = Host::start(
        config(member, snapshot_after),
        &transport,
        directory,
        &wal,
        recovery,
        factory,
    );
    Node {
        member,
        transport,
        host,
        machines,
        dir: dir.to_path_buf(),
    }
}

async fn stop(node: Node) -> PathBuf {
    node.host.shutdown().await;
    node.transport.shutdown();
    node.dir
}

async fn cluster(label: &str, snapshot_after: u64) -> (Addresses, Vec<Node>) {
    let addresses = Addresses::default();
    let mut nodes = Vec::new();
    for member in 1..=3 {
        let dir = crate::test_dir(&format!("host-{label}-{member}"));
        nodes.push(start(member, &dir, &addresses, snapshot_after).await);
    }
    (addresses, nodes)
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Waits until every node's member has applied the same, and returns that.
async fn converged(nodes: &[&Node], group: GroupId) -> u64 {
    for _ in 0..400 {
        let mut seen = BTreeSet::new();
        for node in nodes {
            let status = node.status(group).await;
            seen.insert((status.applied, status.commit));
        }
        if let [(applied, _)] = seen.into_iter().collect::<Vec<_>>()[..]
            && applied > 0
        {
            return applied;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until every member of group {group} applied the same");
}

async fn leader_of(nodes: &[&Node], group: GroupId) -> MemberId {
    for _ in 0..400 {
        for node in nodes {
            if node.status(group).await.role == Role::Leader {
                return node.member;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for a leader of group {group}");
}

/// Proposes until the outcome is known: a push made again is taken once.
async fn propose(node: &Node, group: GroupId, command: Bytes) -> Bytes {
    loop {
        match node.host.propose(group, command.clone()).await {
            Err(GroupError::Indeterminate(..)) => continue,
            result => return result.unwrap(),
        }
    }
}

async fn drain(node: &Node, group: GroupId) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let body = node.host.propose(group, pop()).await.unwrap();
        if body.is_empty() {
            return bodies;
        }
        bodies.push(String::from_utf8(body.to_vec()).unwrap());
    }
}

fn remove(dirs: impl IntoIterator<Item = PathBuf>) {
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_commits_what_any_node_proposes_in_order() {
    let (_addresses, nodes) = cluster("order", 64 << 20).await;
    for node in &nodes {
        node.create(7, &[1, 2, 3], node.member == 1).await;
    }
    // Each node proposes its own sequence at once: followers' proposals go to the leader.
    let mut tasks = Vec::new();
    for node in &nodes {
        let host = node.host.clone();
        let member = node.member;
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                host.propose(7, push(&format!("{member}-{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    converged(&all, 7).await;
    let first = nodes[0].fifo(7);
    assert_eq!(first.queued.len(), 300);
    for node in &nodes {
        assert_eq!(
            node.fifo(7),
            first,
            "member {} applied the same",
            node.member
        );
    }
    let bodies = drain(&nodes[2], 7).await;
    assert_eq!(bodies.len(), 300);
    for member in 1..=3 {
        let own: Vec<&String> = bodies
            .iter()
            .filter(|body| body.starts_with(&format!("{member}-")))
            .collect();
        let expected: Vec<String> = (0..100).map(|i| format!("{member}-{i}")).collect();
        assert_eq!(
            own,
            expected.iter().collect::<Vec<_>>(),
            "member {member}'s order"
        );
    }
    converged(&all, 7).await;
    for node in &nodes {
        assert!(node.fifo(7).queued.is_empty());
    }
    let mut dirs = Vec::new();
    for node in nodes {
        dirs.push(stop(node).await);
    }
    remove(dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivors_elect_a_new_leader_and_the_old_one_returns_from_its_wal() {
    let (addresses, nodes) = cluster("failover", 64 << 20).await;
    for node in &nodes {
        node.create(3, &[1, 2, 3], node.member == 1).await;
    }
    for i in 0..50 {
        nodes[1]
            .host
            .propose(3, push(&format!("before-{i}")))
            .await
            .unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = leader_of(&all, 3).await;
    let (gone, rest): (Vec<Node>, Vec<Node>) =
        nodes.into_iter().partition(|node| node.member == leader);
    let gone = gone.into_iter().next().unwrap();
    let gone_dir = stop(gone).await;

    // A survivor's proposals wait for the new leader and go on.
    for i in 0..50 {
        propose(&rest[0], 3, push(&format!("after-{i}"))).await;
    }
    let survivors: Vec<&Node> = rest.iter().collect();
    let new_leader = leader_of(&survivors, 3).await;
    assert_ne!(new_leader, leader);

    // The old leader comes back from its WAL and catches up.
    let back = start(leader, &gone_dir, &addresses, 64 << 20).await;
    let mut all: Vec<&Node> = rest.iter().collect();
    all.push(&back);
    converged(&all, 3).await;
    assert_eq!(back.fifo(3), rest[0].fifo(3));
    assert_eq!(back.fifo(3).queued.len(), 100);
    let bodies = drain(&back, 3).await;
    let expected: Vec<String> = (0..50)
        .map(|i| format!("before-{i}"))
        .chain((0..50).map(|i| format!("after-{i}")))
        .collect();
    assert_eq!(bodies, expected);
    let mut dirs = vec![stop(back).await];
    for node in rest {
        dirs.push(stop(node).await);
    }
    remove(dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_the_log_no_longer_reaches_gets_a_snapshot_with_the_bodies_it_needs() {
    let (addresses, mut nodes) = cluster("snapshot", 4 << 10).await;
    for node in &nodes {
        node.create(9, &[1, 2, 3], node.member == 1).await;
    }
    let third = nodes.pop().unwrap();
    let third_dir = stop(third).await;
    let body = "x".repeat(100);
    for i in 0..200 {
        nodes[0]
            .host
            .propose(9, push(&format!("{i:03}{body}")))
            .await
            .unwrap();
    }
    // Half is consumed: the snapshot keeps only the other half's entries alive.
    for i in 0..100 {
        let popped = nodes[0].host.propose(9, pop()).await.unwrap();
        assert_eq!(&popped[..3], format!("{i:03}").as_bytes());
    }
    let two: Vec<&Node> = nodes.iter().collect();
    converged(&two, 9).await;
    eventually("the leader snapshotted", || async {
        nodes[0].status(9).await.snapshot_index > 100
    })
    .await;

    let third = start(3, &third_dir, &addresses, 4 << 10).await;
    let mut all: Vec<&Node> = nodes.iter().collect();
    all.push(&third);
    converged(&all, 9).await;
    assert!(
        third.status(9).await.snapshot_index > 100,
        "caught up by a snapshot"
    );
    assert_eq!(third.fifo(9), nodes[0].fifo(9));

    // Leading now, the third member serves the bodies from the entries that came with it.
    third
        .host
        .transfer_leadership(9, 3)
        .await
        .expect_err("only a leader hands over");
    let leader = leader_of(&all, 9).await;
    let leading = all.iter().find(|node| node.member == leader).unwrap();
    leading.host.transfer_leadership(9, 3).await.unwrap();
    eventually("the third member leads", || async {
        third.status(9).await.role == Role::Leader
    })
    .await;
    let bodies = drain(&third, 9).await;
    let expected: Vec<String> = (100..200).map(|i| format!("{i:03}{body}")).collect();
    assert_eq!(bodies, expected);

    // The third member restarts from the snapshot it was sent and still has the log it needs.
    nodes[0].host.propose(9, push("last")).await.unwrap();
    let third_dir = stop(third).await;
    let third = start(3, &third_dir, &addresses, 4 << 10).await;
    let mut all: Vec<&Node> = nodes.iter().collect();
    all.push(&third);
    converged(&all, 9).await;
    assert_eq!(third.fifo(9), nodes[0].fifo(9));
    assert_eq!(drain(&third, 9).await, vec!["last".to_string()]);
    let mut dirs = vec![stop(third).await];
    for node in nodes {
        dirs.push(stop(node).await);
    }
    remove(dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_in_a_minority_commits_nothing_and_the_majority_goes_on() {
    let (_addresses, nodes) = cluster("minority", 64 << 20).await;
    for node in &nodes {
        node.create(5, &[1, 2, 3], node.member == 1).await;
    }
    for i in 0..20 {
        nodes[0]
            .host
            .propose(5, push(&format!("first-{i}")))
            .await
            .unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = leader_of(&all, 5).await;
    let (minority, majority): (Vec<&Node>, Vec<&Node>) =
        nodes.iter().partition(|node| node.member == leader);
    let lonely = minority[0];
    for other in &majority {
        lonely.transport.cut(other.transport.node());
        other.transport.cut(lonely.transport.node());
    }
    let outcome = lonely.host.propose(5, push("minority")).await;
    assert!(outcome.is_err(), "a minority confirmed: {outcome:?}");
    for i in 0..20 {
        propose(majority[0], 5, push(&format!("second-{i}"))).await;
    }
    let new_leader = leader_of(&majority, 5).await;
    assert_ne!(new_leader, leader);

    for node in &nodes {
        node.transport.heal();
    }
    converged(&all, 5).await;
    for node in &nodes {
        assert_eq!(node.fifo(5), nodes[0].fifo(5));
    }
    let bodies = drain(lonely, 5).await;
    let expected: Vec<String> = (0..20)
        .map(|i| format!("first-{i}"))
        .chain((0..20).map(|i| format!("second-{i}")))
        .collect();
    assert_eq!(
        bodies, expected,
        "what the minority took was never committed"
    );
    let mut dirs = Vec::new();
    for node in nodes {
        dirs.push(stop(node).await);
    }
    remove(dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_share_one_batch_per_node_pair_and_round() {
    let (_addresses, nodes) = cluster("idle", 64 << 20).await;
    const GROUPS: u64 = 300;
    for group in 0..GROUPS {
        for node in &nodes {
            node.create(group, &[1, 2, 3], node.member == group % 3 + 1)
                .await;
        }
    }
    let all: Vec<&Node> = nodes.iter().collect();
    for group in 0..GROUPS {
        leader_of(&all, group).await;
    }
    let before = nodes[0].host.stats().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = nodes[0].host.stats().await;
    let batches = after.batches - before.batches;
    let messages = after.messages - before.messages;
    let rounds = after.rounds - before.rounds;
    // Every group the node leads sends two followers a heartbeat every 50 ms, and it answers
    // the heartbeats of the groups it follows: thousands of messages a second.
    assert!(messages > 4 * GROUPS, "{messages} messages in a second");
    assert!(
        batches <= 2 * rounds,
        "{batches} batches in {rounds} rounds: more than one per peer and round"
    );
    assert!(
        messages > 10 * batches,
        "{messages} messages in {batches} batches: heartbeats are not coalesced"
    );
    assert_eq!(after.dropped, before.dropped);
    let mut dirs = Vec::new();
    for node in nodes {
        dirs.push(stop(node).await);
    }
    remove(dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_member_routes_batches_to_the_leader_across_a_failover() {
    let (addresses, mut nodes) = cluster("route", 64 << 20).await;
    for node in &nodes {
        node.create(11, &[1, 2, 3], node.member == 2).await;
    }
    let dir = crate::test_dir("host-route-4");
    let router = start(4, &dir, &addresses, 64 << 20).await;
    router.host.route(11, Some(vec![1, 2, 3]));
    // Batches submitted one after another, without waiting: the first ones go to a member
    // that is not the leader and come back to be routed again, so later ones may overtake
    // them, but each batch is appended whole and in order.
    let answers: Vec<Proposed> = (0..10)
        .map(|batch| {
            let commands = (0..5).map(|i| push(&format!("a-{batch}-{i}"))).collect();
            router.host.submit(11, commands)
        })
        .collect();
    for answer in answers {
        assert_eq!(answer.await.unwrap().unwrap().len(), 5);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = leader_of(&all, 11).await;
    let position = nodes.iter().position(|node| node.member == leader).unwrap();
    let gone_dir = stop(nodes.remove(position)).await;
    for i in 0..20 {
        propose(&router, 11, push(&format!("b-{i}"))).await;
    }
    let bodies = drain(&router, 11).await;
    let (first, second) = bodies.split_at(50);
    for batch in first.chunks(5) {
        let name = &batch[0][..batch[0].len() - 2];
        let expected: Vec<String> = (0..5).map(|i| format!("{name}-{i}")).collect();
        assert_eq!(batch, &expected[..], "a batch stays whole, in order");
    }
    let mut batches: Vec<&str> = first.chunks(5).map(|batch| &batch[0][..3]).collect();
    batches.sort();
    batches.dedup();
    assert_eq!(batches.len(), 10, "every batch once: {first:?}");
    let expected: Vec<String> = (0..20).map(|i| format!("b-{i}")).collect();
    assert_eq!(
        second,
        &expected[..],
        "proposals made one after another keep their order"
    );
    assert!(
        router.host.status(11).await.is_none(),
        "no member on the router"
    );
    let mut dirs = vec![gone_dir, stop(router).await];
    for node in nodes {
        dirs.push(stop(node).await);
    }
    remove(dirs);
}

/// A node whose transport is up but whose host is not (it is starting, or stopping) refuses
/// what is forwarded to it, and the proposal is routed on at once instead of waiting out its
/// deadline (which here would fail it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_forwarded_to_a_node_without_its_host_is_routed_on() {
    let addresses = Addresses::default();
    let dir = crate::test_dir("host-refused-2");
    let member = start(2, &dir, &addresses, 64 << 20).await;
    member.create(13, &[2], true).await;
    eventually("member 2 leads its group of one", || async {
        member.status(13).await.role == Role::Leader
    })
    .await;
    // Member 1's node: a transport without a host, as a node is while it starts.
    let mut bare = TransportConfig::new(
        name(1),
        Secret::from_text("host-tests").unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
        0,
    );
    let lookup = addresses.clone();
    bare.resolver = Some(Arc::new(move |name: &NodeName| {
        lookup.lock().get(name).copied()
    }));
    let bare = Transport::start(bare).await.unwrap();
    addresses
        .lock()
        .insert(bare.node().clone(), bare.local_address().unwrap());
    let router_dir = crate::test_dir("host-refused-3");
    let router = start(3, &router_dir, &addresses, 64 << 20).await;
    // The route tries member 1 first.
    router.host.route(13, Some(vec![1, 2]));
    let answer = router.host.propose(13, push("routed on")).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(drain(&router, 13).await, vec!["routed on".to_string()]);
    bare.shutdown();
    remove([stop(router).await, stop(member).await]);
}

/// A member joins a running group from a node that knew nothing of it (asked there, the change
/// finds the leader through the members named), catches up, and votes once promoted; a member
/// removed leaves the group to the others, the leader itself among the candidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_from_any_node_catches_up_and_votes_and_one_removed_leaves() {
    let (_addresses, nodes) = cluster("membership", 64 << 20).await;
    for node in &nodes[..2] {
        node.create(12, &[1, 2], node.member == 1).await;
    }
    for i in 0..20 {
        propose(&nodes[0], 12, push(&format!("a-{i}"))).await;
    }
    // Node 3's member starts empty: it learns the group from its leader.
    let shared = Shared::default();
    nodes[2].machines.lock().insert(12, shared.clone());
    nodes[2]
        .host
        .create(
            12,
            Membership::default(),
            Box::new(FifoMachine(shared)),
            false,
        )
        .await
        .unwrap();
    nodes[2]
        .host
        .change_membership(12, MembershipChange::AddLearner(3), &[1, 2])
        .await
        .expect("the leader takes the new member");
    eventually("member 3 is promoted to voter", || async {
        nodes[0].status(12).await.membership.voters == BTreeSet::from([1, 2, 3])
    })
    .await;
    let all: Vec<&Node> = nodes.iter().collect();
    converged(&all, 12).await;
    assert_eq!(nodes[2].fifo(12), nodes[0].fifo(12), "it caught up");
    // Added again: nothing changes, and the caller hears why.
    let again = nodes[1]
        .host
        .change_membership(12, MembershipChange::AddLearner(3), &[1, 2, 3])
        .await;
    assert_eq!(again, Err(GroupError::Unchanged(12)));

    // Member 1 (the first leader) goes, asked on node 3.
    nodes[2]
        .host
        .change_membership(12, MembershipChange::Remove(1), &[1, 2, 3])
        .await
        .expect("member 1 is removed");
    let rest: Vec<&Node> = nodes[1..].iter().collect();
    let leader = leader_of(&rest, 12).await;
    assert_ne!(leader, 1);
    for i in 0..5 {
        propose(&nodes[1], 12, push(&format!("b-{i}"))).await;
    }
    converged(&rest, 12).await;
    assert_eq!(
        nodes[1].status(12).await.membership.voters,
        BTreeSet::from([2, 3])
    );
    let bodies = drain(&nodes[2], 12).await;
    assert_eq!(bodies.len(), 25, "{bodies:?}");
    let mut dirs = Vec::new();
    for node in nodes {
        dirs.push(stop(node).await);
    }
    remove(dirs);
}
