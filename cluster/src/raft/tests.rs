//! Raft groups of in-process nodes over the real transport on loopback, each with its own WAL in
//! a temporary directory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use warren_storage::{Stream, Wal};

use super::log::{RaftLog, Recovered};
use super::*;
use crate::secret::Secret;
use crate::transport::TransportConfig;

/// A state machine that keeps the list of applied commands and answers with its length.
#[derive(Default)]
struct Journal {
    applied: Mutex<Vec<Vec<u8>>>,
}

impl StateMachine for Journal {
    fn apply(&self, _index: u64, command: &[u8]) -> Vec<u8> {
        let mut applied = self.applied.lock();
        applied.push(command.to_vec());
        (applied.len() as u64).to_be_bytes().to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&*self.applied.lock()).unwrap()
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), String> {
        *self.applied.lock() = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

type Directory = Arc<Mutex<HashMap<NodeName, SocketAddr>>>;

struct Node {
    transport: Transport,
    group: RaftGroup,
    journal: Arc<Journal>,
    dir: PathBuf,
}

fn temp_dir(label: &str) -> PathBuf {
    crate::test_dir(&format!("raft-{label}"))
}

fn config(snapshot_every: u64) -> GroupConfig {
    GroupConfig {
        heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(300),
        propose_timeout: Duration::from_secs(3),
        snapshot_every,
    }
}

async fn open_wal(dir: &Path) -> (Arc<Wal>, Recovered) {
    // A previous incarnation's WAL may still be closing.
    for _ in 0..100 {
        let mut recovered = Recovered::default();
        match Wal::open(dir, 1 << 20, |stream, _, payload| {
            if stream == Stream::Metadata {
                recovered.replay(payload);
            }
        }) {
            Ok((wal, _)) => return (Arc::new(wal), recovered),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("the data directory stayed locked");
}

async fn start(name: &str, dir: &Path, directory: &Directory, snapshot_every: u64) -> Node {
    let mut transport_config = TransportConfig::new(
        NodeName::new_unchecked(name),
        Secret::from_text("raft-tests").unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
        0,
    );
    transport_config.ping = Duration::from_millis(100);
    transport_config.timeout = Duration::from_millis(500);
    let lookup = directory.clone();
    transport_config.resolver = Some(Arc::new(move |name: &NodeName| {
        lookup.lock().get(name).copied()
    }));
    let transport = Transport::start(transport_config).await.unwrap();
    directory
        .lock()
        .insert(transport.node().clone(), transport.local_address().unwrap());
    let (wal, recovered) = open_wal(dir).await;
    let log = RaftLog::open(&wal, recovered).await.unwrap();
    let journal = Arc::new(Journal::default());
    let group = RaftGroup::start(&transport, log, journal.clone(), config(snapshot_every))
        .await
        .unwrap();
    Node {
        transport,
        group,
        journal,
        dir: dir.to_path_buf(),
    }
}

async fn stop(node: Node) -> PathBuf {
    node.group.shutdown().await;
    node.transport.shutdown();
    node.dir
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

fn count(response: &[u8]) -> u64 {
    u64::from_be_bytes(response.try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_is_a_group_of_one_and_recovers_from_its_wal() {
    let directory = Directory::default();
    let node = start("solo@localhost", &temp_dir("solo"), &directory, 10_000).await;
    assert!(!node.group.is_initialized().await.unwrap());
    node.group.initialize_alone().await.unwrap();
    for i in 0..50u32 {
        let response = node.group.propose(i.to_be_bytes().to_vec()).await.unwrap();
        assert_eq!(count(&response), u64::from(i) + 1);
    }
    let status = node.group.status();
    assert_eq!(status.members.len(), 1);
    assert_eq!(status.leader.as_ref().map(|l| l.id), Some(node.group.id()));
    let id = node.group.id();
    let dir = stop(node).await;

    let node = start("solo@localhost", &dir, &directory, 10_000).await;
    assert_eq!(node.group.id(), id, "the Raft id survives a restart");
    eventually("the committed entries are applied again", || {
        node.journal.applied.lock().len() == 50
    })
    .await;
    let response = node.group.propose(b"after".to_vec()).await.unwrap();
    assert_eq!(count(&response), 51);
    let dir = stop(node).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_the_leader() {
    let directory = Directory::default();
    let a = start("a@localhost", &temp_dir("a"), &directory, 10_000).await;
    let b = start("b@localhost", &temp_dir("b"), &directory, 10_000).await;
    let c = start("c@localhost", &temp_dir("c"), &directory, 10_000).await;
    a.group.initialize_alone().await.unwrap();
    a.group.propose(b"before-b".to_vec()).await.unwrap();
    // Joining goes through any member; the leader adds the node once it has caught up.
    c.group
        .add_member(c.group.id(), c.transport.node())
        .await
        .expect_err("a node outside the group has no leader to ask");
    a.group
        .add_member(b.group.id(), b.transport.node())
        .await
        .unwrap();
    a.group
        .add_member(c.group.id(), c.transport.node())
        .await
        .unwrap();
    let status = a.group.status();
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);

    // A proposal from a follower goes through the leader and returns once applied locally.
    let response = c.group.propose(b"from-c".to_vec()).await.unwrap();
    assert_eq!(count(&response), 2);
    assert_eq!(c.journal.applied.lock().len(), 2);
    let nodes = [&a, &b, &c];
    eventually("every member applied both", || {
        nodes.iter().all(|n| n.journal.applied.lock().len() == 2)
    })
    .await;
    for node in nodes {
        assert_eq!(
            *node.journal.applied.lock(),
            vec![b"before-b".to_vec(), b"from-c".to_vec()]
        );
    }

    // The leader goes; the other two elect a new one and keep accepting writes.
    let leader = a.group.status().leader.unwrap().name;
    let (gone, rest): (Vec<Node>, Vec<Node>) = [a, b, c]
        .into_iter()
        .partition(|node| node.transport.node().as_str() == leader);
    for node in gone {
        stop(node).await;
    }
    let response = rest[0]
        .group
        .propose(b"after-leader".to_vec())
        .await
        .unwrap();
    assert_eq!(count(&response), 3);
    eventually("both survivors applied it", || {
        rest.iter().all(|n| n.journal.applied.lock().len() == 3)
    })
    .await;

    // One of three alone is a minority: its proposals fail instead of hanging.
    let mut rest = rest.into_iter();
    let first = rest.next().unwrap();
    let second = rest.next().unwrap();
    stop(first).await;
    let error = second
        .group
        .propose(b"minority".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(error, RaftGroupError::NoMajority(_)), "{error}");
    stop(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_checkpoint_the_log_and_catch_up_a_new_member() {
    let directory = Directory::default();
    let a = start("a@localhost", &temp_dir("snap-a"), &directory, 20).await;
    a.group.initialize_alone().await.unwrap();
    for i in 0..200u32 {
        a.group.propose(i.to_be_bytes().to_vec()).await.unwrap();
    }
    // openraft builds the snapshot in the background once the log is long enough.
    eventually("a snapshot of the first 180 entries", || {
        a.group.status().snapshot >= 180
    })
    .await;
    // A member added after the log was purged gets the snapshot, then the rest.
    let b = start("b@localhost", &temp_dir("snap-b"), &directory, 20).await;
    a.group
        .add_member(b.group.id(), b.transport.node())
        .await
        .unwrap();
    a.group.propose(b"last".to_vec()).await.unwrap();
    eventually("the new member caught up", || {
        b.journal.applied.lock().len() == 201
    })
    .await;
    assert_eq!(*b.journal.applied.lock(), *a.journal.applied.lock());

    // Both restart from their checkpoints and still agree.
    let a_dir = stop(a).await;
    let b_dir = stop(b).await;
    let a = start("a@localhost", &a_dir, &directory, 20).await;
    let b = start("b@localhost", &b_dir, &directory, 20).await;
    let response = b.group.propose(b"again".to_vec()).await.unwrap();
    assert_eq!(count(&response), 202);
    eventually("both applied everything", || {
        a.journal.applied.lock().len() == 202 && b.journal.applied.lock().len() == 202
    })
    .await;
    assert!(
        a.group.status().applied >= 202,
        "restored from a checkpoint after the log before it was purged"
    );
    stop(a).await;
    stop(b).await;
    let _ = std::fs::remove_dir_all(a_dir);
    let _ = std::fs::remove_dir_all(b_dir);
}
