//! The node's host of Raft groups: one task drives every group member on the node, writes their
//! logs through one [`GroupStore`], applies what they commit to their [`Machine`]s, and sends
//! what they say to each other node in one batch per round.
//!
//! ```text
//!  Host (handle) ── propose / create / status ──┐
//!  transport service 13 ── batches, forwards ───┼─> input ─> runner task
//!  WAL writer ── writes done ───────────────────┤              │ step / tick every group due
//!  ticker ──────────────────────────────────────┘              │ act: write, hold, apply, send
//!                                                              └─> outbox: one batch per node
//!                                                                  per round ─> sender task
//! ```
//!
//! What the runner holds to:
//! - A promise (`Send` with `after_sync`: a vote, an append acknowledgement) waits until every
//!   write of its group pushed before it is on disk; other messages go at once.
//! - The leader counts its own log towards a commit only as far as the store reports it written
//!   ([`GroupStore::persisted`]).
//! - Everything the members of the node's groups say to one other node in a round goes in one
//!   transport message, so a thousand idle groups cost one heartbeat batch per node pair and
//!   round, not a thousand heartbeat streams. A batch that cannot be queued is dropped: Raft
//!   recovers lost messages by itself, and a slow peer must not fill memory.
//! - A proposal made on a follower's node is forwarded to the leader's node (one hop, by
//!   request) and answered once applied there; a proposal whose index is applied with another
//!   term was lost with its leader, and says so.
//! - A group's machine takes a snapshot once enough log has piled up since the last one (or
//!   less, once it needs none of its log: a drained queue frees its disk); the snapshot names the entries the machine still needs (a queue's message bodies stay in
//!   their entries), and a follower the log no longer reaches gets the snapshot with those
//!   entries.
//! - A write that fails stops the member (it cannot promise what is not on disk): its
//!   proposals fail and it stays stopped until the node restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use warren_storage::Wal;

use super::core::{Config, MembershipChange, ProposeError, Raft};
use super::message::{Action, Entry, MemberId, Membership, Message, Payload, Role};
use super::storage::{GroupId, GroupStore, Recovery, Snapshot, Written};
use crate::identity::NodeName;
use crate::transport::{BoxFuture, LinkEvent, Service, Transport, TransportError};

/// The transport service the hosts of a cluster talk on.
pub const GROUP_SERVICE: u16 = 13;

/// A group's replicated state machine (a quorum queue), run by the host on every member.
pub trait Machine: Send + 'static {
    /// Applies a committed command; what it returns answers the proposal on the node that
    /// made it.
    fn apply(&mut self, index: u64, command: &[u8], log: &Log<'_>) -> Bytes;
    /// The state as applied so far, and the entries at or before the last applied index that
    /// the state still needs (they stay in the log; the others go once the snapshot is on
    /// disk). An entry the state stopped needing is not released before that: a replay from
    /// an older snapshot reads it again.
    fn snapshot(&self) -> (Bytes, BTreeSet<u64>);
    /// Whether the state needs no entry of the log (an empty queue): a snapshot then frees the
    /// whole log, so the host takes one early.
    fn drained(&self) -> bool {
        false
    }
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
    /// The group has a new leader (or none); `leading` says whether it is this member.
    fn leader_changed(&mut self, _term: u64, _leader: Option<MemberId>, _leading: bool) {}
}

/// Builds the machine of a group found on disk at start, or `None` for a group the node no
/// longer knows (it stays on disk, stopped).
pub type MachineFactory = Box<dyn FnMut(GroupId) -> Option<Box<dyn Machine>> + Send>;

/// Where a group's member lives: the node a member id belongs to.
pub type Directory = Arc<dyn Fn(MemberId) -> Option<NodeName> + Send + Sync>;

/// What a machine may do with its log while it applies.
#[derive(Debug)]
pub struct Log<'a> {
    store: &'a GroupStore,
    group: GroupId,
    leading: bool,
}

impl Log<'_> {
    /// The command of an earlier entry (a message body a queue kept in its entry).
    pub fn read(&self, index: u64) -> Result<Bytes, String> {
        match self.store.entry(self.group, index)?.payload {
            Payload::Command(bytes) => Ok(bytes),
            _ => Err(format!(
                "group {}: entry {index} holds no command",
                self.group
            )),
        }
    }

    /// Whether this member leads the group.
    pub fn leading(&self) -> bool {
        self.leading
    }

    pub fn group(&self) -> GroupId {
        self.group
    }
}

/// Why a proposal or a request to a group failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GroupError {
    #[error("group {0} is not on this node")]
    Unknown(GroupId),
    #[error("group {0} has no leader")]
    NoLeader(GroupId),
    #[error("not the leader of group {group} (the leader is {leader:?})")]
    NotLeader {
        group: GroupId,
        leader: Option<MemberId>,
    },
    /// The proposal's entry was overwritten by another leader's: it was never committed.
    #[error("the proposal to group {0} was lost with its leader")]
    Lost(GroupId),
    /// The proposal may or may not have been committed (its answer was lost).
    #[error("the outcome of the proposal to group {0} is unknown: {1}")]
    Indeterminate(GroupId, String),
    #[error("group {0} did not commit in time")]
    Timeout(GroupId),
    #[error("group {0} refused: {1}")]
    Refused(GroupId, String),
    #[error("group {0} is stopped: {1}")]
    Stopped(GroupId, String),
    #[error("group {0} already exists")]
    Exists(GroupId),
    #[error("the host is shut down")]
    Shutdown,
}

/// A member's view of its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub role: Role,
    pub term: u64,
    pub leader: Option<MemberId>,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub membership: Membership,
    /// Bytes of entries kept in memory.
    pub cached_bytes: u64,
}

/// Counters of the host (for tests and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Transport messages sent to other nodes.
    pub batches: u64,
    /// Group messages inside them.
    pub messages: u64,
    /// Batches dropped because a peer's queue was full.
    pub dropped: u64,
    /// Rounds the runner went through.
    pub rounds: u64,
}

/// Timing of the host and its groups.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// This node's member id in every group it holds.
    pub member: MemberId,
    pub raft: Config,
    /// How often the groups are ticked (and their heartbeats gathered).
    pub tick: Duration,
    /// Bytes of log since the last snapshot that make a group take a new one.
    pub snapshot_after: u64,
    /// How long a proposal may wait for a leader and its commit.
    pub propose_timeout: Duration,
}

impl HostConfig {
    pub fn new(member: MemberId) -> HostConfig {
        HostConfig {
            member,
            raft: Config::default(),
            tick: Duration::from_millis(100),
            snapshot_after: 64 << 20,
            propose_timeout: Duration::from_secs(30),
        }
    }
}

/// One group message on the wire: group, from, to, message.
type Envelope = (GroupId, MemberId, MemberId, Message);

/// What a leader sends a follower its log no longer reaches: the machine's state and the
/// entries it still needs.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    machine: Bytes,
    live: Vec<Entry>,
}

/// A request from another node's host.
#[derive(Serialize, Deserialize)]
enum Request {
    Propose {
        group: GroupId,
        command: Bytes,
    },
    Change {
        group: GroupId,
        change: MembershipChange,
    },
}

type Reply<T> = oneshot::Sender<Result<T, GroupError>>;

enum Input {
    Create {
        group: GroupId,
        membership: Membership,
        machine: Box<dyn Machine>,
        campaign: bool,
        reply: Reply<()>,
    },
    Delete {
        group: GroupId,
        reply: Reply<()>,
    },
    Propose {
        group: GroupId,
        command: Bytes,
        reply: Reply<Bytes>,
    },
    Change {
        group: GroupId,
        change: MembershipChange,
        reply: Reply<u64>,
    },
    Transfer {
        group: GroupId,
        to: MemberId,
        reply: Reply<()>,
    },
    Status {
        group: GroupId,
        reply: oneshot::Sender<Option<GroupStatus>>,
    },
    Stats(oneshot::Sender<HostStats>),
    Inbound(Vec<Envelope>),
    Down(NodeName),
    Shutdown(oneshot::Sender<()>),
}

/// Inputs the runner may have queued before senders wait (or, for batches from the
/// transport, before they are dropped).
const INPUT_QUEUE: usize = 4096;
/// Batches queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 256;
/// A batch is sent before it grows past this many bytes of entries.
const BATCH_BYTES: u64 = 1 << 20;
/// Bytes of log after which a drained machine is snapshotted (freeing its log).
const DRAINED_SNAPSHOT: u64 = 64 << 10;
/// How long a proposal waits before asking again when no leader is known.
const LEADER_WAIT: Duration = Duration::from_millis(50);

/// The node's host: a handle, cheap to clone.
#[derive(Clone)]
pub struct Host {
    input: mpsc::Sender<Input>,
    transport: Transport,
    directory: Directory,
    config: Arc<HostConfig>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("member", &self.config.member)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Starts the host over the node's WAL with what its groups stream held: every group found
    /// there gets its machine from `factory` and resumes.
    pub fn start(
        config: HostConfig,
        transport: &Transport,
        directory: Directory,
        wal: &Arc<Wal>,
        recovery: Recovery,
        mut factory: MachineFactory,
    ) -> Host {
        let written = Arc::new(Notify::new());
        let notify = written.clone();
        let (store, recovered) = GroupStore::open(wal, recovery, move || notify.notify_one());
        let (input, inputs) = mpsc::channel(INPUT_QUEUE);
        let config = Arc::new(config);
        let clock = Instant::now();
        let mut runner = Runner {
            config: config.clone(),
            transport: transport.clone(),
            directory: directory.clone(),
            store,
            members: HashMap::new(),
            stopped: HashMap::new(),
            dirty: BTreeSet::new(),
            outbox: HashMap::new(),
            peers: HashMap::new(),
            rng: fastrand::Rng::new(),
            clock,
            stats: HostStats::default(),
        };
        let now = runner.now();
        for (group, found) in recovered {
            let Some(mut machine) = factory(group) else {
                tracing::warn!("group {group} is on disk but unknown to the node: left stopped");
                runner
                    .stopped
                    .insert(group, "unknown to the node".to_string());
                continue;
            };
            if let Err(error) = machine.restore(&found.snapshot.data) {
                tracing::error!("group {group}: its snapshot does not restore: {error}");
                runner.stopped.insert(group, error);
                continue;
            }
            let raft = Raft::restore(
                config.member,
                config.raft.clone(),
                runner.rng.u64(..),
                found.restored,
                now,
            );
            runner.members.insert(
                group,
                Member {
                    applied: raft.snapshot_index(),
                    raft,
                    machine,
                    pending: BTreeMap::new(),
                    held: VecDeque::new(),
                },
            );
            runner.dirty.insert(group);
        }
        transport.register(
            GROUP_SERVICE,
            Arc::new(GroupService {
                input: input.clone(),
            }),
        );
        let mut events = transport.subscribe();
        let links = input.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(LinkEvent::Down(node)) => {
                        if links.send(Input::Down(node)).await.is_err() {
                            return;
                        }
                    }
                    Ok(LinkEvent::Up(_))
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        tokio::spawn(runner.run(inputs, written));
        Host {
            input,
            transport: transport.clone(),
            directory,
            config,
        }
    }

    /// This node's member id.
    pub fn member(&self) -> MemberId {
        self.config.member
    }

    async fn ask<T>(&self, input: impl FnOnce(Reply<T>) -> Input) -> Result<T, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.input
            .send(input(reply))
            .await
            .map_err(|_| GroupError::Shutdown)?;
        answer.await.map_err(|_| GroupError::Shutdown)?
    }

    /// Starts this node's member of a group of `membership` (every member's node does the
    /// same); `campaign` makes it stand for election at once (the member the group was placed
    /// on). A member added to a running group starts with an empty membership and learns the
    /// group's from its leader.
    pub async fn create(
        &self,
        group: GroupId,
        membership: Membership,
        machine: Box<dyn Machine>,
        campaign: bool,
    ) -> Result<(), GroupError> {
        self.ask(|reply| Input::Create {
            group,
            membership,
            machine,
            campaign,
            reply,
        })
        .await
    }

    /// Deletes this node's member of a group and its log.
    pub async fn delete(&self, group: GroupId) -> Result<(), GroupError> {
        self.ask(|reply| Input::Delete { group, reply }).await
    }

    /// Proposes a command, here or on the leader's node, and returns the machine's answer once
    /// it is applied there. Waits for a leader while there is none, at most the configured
    /// propose timeout.
    pub async fn propose(&self, group: GroupId, command: Bytes) -> Result<Bytes, GroupError> {
        let request = || Request::Propose {
            group,
            command: command.clone(),
        };
        let local = |reply| Input::Propose {
            group,
            command: command.clone(),
            reply,
        };
        self.on_leader(group, local, request).await
    }

    /// Changes the group's membership by one member, on its leader; returns the index of the
    /// change once it is applied.
    pub async fn change_membership(
        &self,
        group: GroupId,
        change: MembershipChange,
    ) -> Result<u64, GroupError> {
        let request = || Request::Change { group, change };
        let local = |reply| Input::Change {
            group,
            change,
            reply,
        };
        self.on_leader(group, local, request).await
    }

    async fn on_leader<T: serde::de::DeserializeOwned>(
        &self,
        group: GroupId,
        local: impl Fn(Reply<T>) -> Input,
        request: impl Fn() -> Request,
    ) -> Result<T, GroupError> {
        let deadline = Instant::now() + self.config.propose_timeout;
        loop {
            let leader = match tokio::time::timeout_at(deadline, self.ask(&local)).await {
                Err(_) => return Err(GroupError::Timeout(group)),
                Ok(Err(GroupError::NotLeader { leader, .. })) => leader,
                Ok(Err(GroupError::NoLeader(_))) => None,
                Ok(result) => return result,
            };
            let node = leader
                .filter(|leader| *leader != self.config.member)
                .and_then(|leader| (self.directory)(leader));
            if let Some(node) = node {
                let body = Bytes::from(
                    postcard::to_stdvec(&request()).expect("invariant: requests serialize"),
                );
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .transport
                    .request_within(&node, GROUP_SERVICE, body, left)
                    .await
                {
                    Ok(answer) => match postcard::from_bytes::<Result<T, GroupError>>(&answer) {
                        Ok(Err(GroupError::NotLeader { .. } | GroupError::NoLeader(_))) => {}
                        Ok(result) => return result,
                        Err(error) => {
                            return Err(GroupError::Indeterminate(group, error.to_string()));
                        }
                    },
                    // Nothing was sent: asking again cannot duplicate the command.
                    Err(TransportError::Unreachable { .. }) => {}
                    Err(TransportError::Timeout(_)) => return Err(GroupError::Timeout(group)),
                    Err(error) => return Err(GroupError::Indeterminate(group, error.to_string())),
                }
            }
            let wait = (Instant::now() + LEADER_WAIT).min(deadline);
            tokio::time::sleep_until(wait).await;
            if Instant::now() >= deadline {
                return Err(GroupError::Timeout(group));
            }
        }
    }

    /// Hands the group's leadership to `to`, on this node's member if it leads.
    pub async fn transfer_leadership(
        &self,
        group: GroupId,
        to: MemberId,
    ) -> Result<(), GroupError> {
        self.ask(|reply| Input::Transfer { group, to, reply }).await
    }

    /// This node's member's view of the group.
    pub async fn status(&self, group: GroupId) -> Option<GroupStatus> {
        let (reply, answer) = oneshot::channel();
        self.input.send(Input::Status { group, reply }).await.ok()?;
        answer.await.ok().flatten()
    }

    pub async fn stats(&self) -> HostStats {
        let (reply, answer) = oneshot::channel();
        if self.input.send(Input::Stats(reply)).await.is_err() {
            return HostStats::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Stops the runner; the groups stay on disk.
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        if self.input.send(Input::Shutdown(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }
}

/// The transport's side: batches from other hosts, and proposals they forward.
struct GroupService {
    input: mpsc::Sender<Input>,
}

impl Service for GroupService {
    fn request(&self, _from: NodeName, body: Bytes) -> BoxFuture<Result<Bytes, String>> {
        let input = self.input.clone();
        Box::pin(async move {
            let request: Request = postcard::from_bytes(&body).map_err(|e| e.to_string())?;
            match request {
                Request::Propose { group, command } => {
                    answer(&input, |reply| Input::Propose {
                        group,
                        command,
                        reply,
                    })
                    .await
                }
                Request::Change { group, change } => {
                    answer(&input, |reply| Input::Change {
                        group,
                        change,
                        reply,
                    })
                    .await
                }
            }
        })
    }

    fn message(&self, _from: NodeName, body: Bytes) {
        match postcard::from_bytes::<Vec<Envelope>>(&body) {
            // A full queue drops the batch: Raft asks again.
            Ok(batch) => {
                let _ = self.input.try_send(Input::Inbound(batch));
            }
            Err(error) => tracing::warn!("a malformed group batch: {error}"),
        }
    }
}

/// Hands a forwarded request to the runner and encodes its answer for the asking node.
async fn answer<T: Serialize>(
    input: &mpsc::Sender<Input>,
    make: impl FnOnce(Reply<T>) -> Input,
) -> Result<Bytes, String> {
    let (reply, answer) = oneshot::channel();
    input
        .send(make(reply))
        .await
        .map_err(|_| "the host is shut down".to_string())?;
    let result = answer.await.unwrap_or(Err(GroupError::Shutdown));
    Ok(Bytes::from(
        postcard::to_stdvec(&result).expect("invariant: answers serialize"),
    ))
}

enum Pending {
    Command(Reply<Bytes>),
    Change(Reply<u64>),
}

impl Pending {
    fn fail(self, error: GroupError) {
        match self {
            Pending::Command(reply) => {
                let _ = reply.send(Err(error));
            }
            Pending::Change(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

struct Member {
    raft: Raft,
    machine: Box<dyn Machine>,
    applied: u64,
    /// Proposals made here, by index: the term they were appended in, and who waits.
    pending: BTreeMap<u64, (u64, Pending)>,
    /// Promises waiting for the writes before them: the group's last tag when they were made.
    held: VecDeque<(u64, MemberId, Message)>,
}

/// A round's messages for one node, in batches of at most [`BATCH_BYTES`] of entries.
#[derive(Default)]
struct Outbox {
    batches: Vec<Vec<Envelope>>,
    bytes: u64,
}

struct Runner {
    config: Arc<HostConfig>,
    transport: Transport,
    directory: Directory,
    store: GroupStore,
    members: HashMap<GroupId, Member>,
    /// Groups whose member stopped, and why.
    stopped: HashMap<GroupId, String>,
    dirty: BTreeSet<GroupId>,
    outbox: HashMap<NodeName, Outbox>,
    peers: HashMap<NodeName, mpsc::Sender<Bytes>>,
    rng: fastrand::Rng,
    clock: Instant,
    stats: HostStats,
}

impl Runner {
    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, written: Arc<Notify>) {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = inputs.recv() => {
                    let Some(input) = input else { break };
                    if let Some(done) = self.input(input) {
                        self.shut(done);
                        return;
                    }
                    // Take what else is waiting, so one round serves it all.
                    for _ in 0..INPUT_QUEUE {
                        let Ok(input) = inputs.try_recv() else { break };
                        if let Some(done) = self.input(input) {
                            self.shut(done);
                            return;
                        }
                    }
                }
                _ = written.notified() => {}
                _ = ticker.tick() => self.tick(),
            }
            self.written();
            self.drive();
            self.flush();
            self.stats.rounds += 1;
        }
    }

    fn shut(&mut self, done: oneshot::Sender<()>) {
        for (group, member) in std::mem::take(&mut self.members) {
            for (_, (_, pending)) in member.pending {
                pending.fail(GroupError::Stopped(
                    group,
                    "the node is shutting down".into(),
                ));
            }
        }
        self.transport.register(GROUP_SERVICE, Arc::new(Closed));
        let _ = done.send(());
    }

    /// Takes one input; returns the shutdown's waiter when it is one.
    fn input(&mut self, input: Input) -> Option<oneshot::Sender<()>> {
        let now = self.now();
        match input {
            Input::Create {
                group,
                membership,
                machine,
                campaign,
                reply,
            } => {
                let _ = reply.send(self.create(group, membership, machine, campaign, now));
            }
            Input::Delete { group, reply } => {
                if let Some(member) = self.members.remove(&group) {
                    for (_, (_, pending)) in member.pending {
                        pending.fail(GroupError::Unknown(group));
                    }
                }
                self.stopped.remove(&group);
                self.store.delete(group);
                let _ = reply.send(Ok(()));
            }
            Input::Propose {
                group,
                command,
                reply,
            } => match self.proposable(group) {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                Ok(member) => match member.raft.propose(command) {
                    Ok((index, term)) => {
                        member
                            .pending
                            .insert(index, (term, Pending::Command(reply)));
                        self.dirty.insert(group);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(refusal(group, error)));
                    }
                },
            },
            Input::Change {
                group,
                change,
                reply,
            } => match self.proposable(group) {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                Ok(member) => match member.raft.change_membership(change) {
                    Ok(index) => {
                        let term = member.raft.term();
                        member.pending.insert(index, (term, Pending::Change(reply)));
                        self.dirty.insert(group);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(refusal(group, error)));
                    }
                },
            },
            Input::Transfer { group, to, reply } => match self.proposable(group) {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                Ok(member) => {
                    let result = member
                        .raft
                        .transfer_leadership(to, now)
                        .map_err(|error| refusal(group, error));
                    self.dirty.insert(group);
                    let _ = reply.send(result);
                }
            },
            Input::Status { group, reply } => {
                let status = self.members.get(&group).map(|member| GroupStatus {
                    role: member.raft.role(),
                    term: member.raft.term(),
                    leader: member.raft.leader(),
                    commit: member.raft.commit_index(),
                    applied: member.applied,
                    last_index: member.raft.last_index(),
                    snapshot_index: member.raft.snapshot_index(),
                    membership: member.raft.membership().clone(),
                    cached_bytes: self.store.cached_bytes(group),
                });
                let _ = reply.send(status);
            }
            Input::Stats(reply) => {
                let _ = reply.send(self.stats);
            }
            Input::Inbound(batch) => {
                for (group, from, to, message) in batch {
                    if to != self.config.member {
                        continue;
                    }
                    if let Some(member) = self.members.get_mut(&group) {
                        member.raft.step(from, message, now);
                        self.dirty.insert(group);
                    }
                }
            }
            Input::Down(node) => {
                for (group, member) in &mut self.members {
                    let gone: Vec<MemberId> = member
                        .raft
                        .membership()
                        .members()
                        .filter(|m| (self.directory)(*m).as_ref() == Some(&node))
                        .collect();
                    for m in gone {
                        member.raft.unreachable(m);
                        self.dirty.insert(*group);
                    }
                }
            }
            Input::Shutdown(done) => return Some(done),
        }
        None
    }

    fn create(
        &mut self,
        group: GroupId,
        membership: Membership,
        machine: Box<dyn Machine>,
        campaign: bool,
        now: u64,
    ) -> Result<(), GroupError> {
        if self.members.contains_key(&group) || self.store.contains(group) {
            return Err(GroupError::Exists(group));
        }
        let (data, _) = machine.snapshot();
        self.store.create(group, membership.clone(), data);
        let mut raft = Raft::new(
            self.config.member,
            self.config.raft.clone(),
            self.rng.u64(..),
            membership,
            now,
        );
        if campaign {
            raft.campaign(now);
        }
        self.members.insert(
            group,
            Member {
                raft,
                machine,
                applied: 0,
                pending: BTreeMap::new(),
                held: VecDeque::new(),
            },
        );
        self.dirty.insert(group);
        Ok(())
    }

    /// The member, if it may take a proposal now (or why not).
    fn proposable(&mut self, group: GroupId) -> Result<&mut Member, GroupError> {
        if let Some(reason) = self.stopped.get(&group) {
            return Err(GroupError::Stopped(group, reason.clone()));
        }
        let member = self
            .members
            .get_mut(&group)
            .ok_or(GroupError::Unknown(group))?;
        if member.raft.role() != Role::Leader {
            return Err(match member.raft.leader() {
                Some(leader) => GroupError::NotLeader {
                    group,
                    leader: Some(leader),
                },
                None => GroupError::NoLeader(group),
            });
        }
        Ok(member)
    }

    fn tick(&mut self) {
        let now = self.now();
        for (group, member) in &mut self.members {
            if member.raft.next_deadline() <= now {
                member.raft.tick(now);
                self.dirty.insert(*group);
            }
        }
    }

    /// Takes the writes the WAL finished: promises go out, the leaders' own logs count.
    fn written(&mut self) {
        for written in self.store.take_written() {
            match written {
                Written::Synced(group) => {
                    let Some(member) = self.members.get_mut(&group) else {
                        continue;
                    };
                    if let Some((index, term)) = self.store.persisted(group) {
                        member.raft.persisted(index, term);
                    }
                    while let Some((tag, _, _)) = member.held.front() {
                        if !self.store.durable_through(group, *tag) {
                            break;
                        }
                        let (_, to, message) = member.held.pop_front().expect("looked at");
                        post(
                            &mut self.outbox,
                            &self.directory,
                            group,
                            self.config.member,
                            to,
                            message,
                        );
                    }
                    self.dirty.insert(group);
                }
                Written::Compacted(group, index) => {
                    if let Some(member) = self.members.get_mut(&group) {
                        member.raft.compact(index);
                        self.dirty.insert(group);
                    }
                }
                Written::Failed(group, reason) => {
                    tracing::error!("group {group}: a write failed, the member stops: {reason}");
                    self.stop(group, reason);
                }
            }
        }
    }

    fn stop(&mut self, group: GroupId, reason: String) {
        if let Some(member) = self.members.remove(&group) {
            for (_, (_, pending)) in member.pending {
                pending.fail(GroupError::Stopped(group, reason.clone()));
            }
        }
        self.stopped.insert(group, reason);
    }

    /// Carries out what the dirty groups asked for, until they ask nothing more.
    fn drive(&mut self) {
        while let Some(group) = self.dirty.pop_first() {
            while let Some(member) = self
                .members
                .get_mut(&group)
                .filter(|member| member.raft.has_actions())
            {
                for action in member.raft.take_actions() {
                    if let Err(reason) = self.act(group, action) {
                        tracing::error!("group {group}: the member stops: {reason}");
                        self.stop(group, reason);
                        break;
                    }
                }
            }
            self.maybe_snapshot(group);
        }
    }

    fn act(&mut self, group: GroupId, action: Action) -> Result<(), String> {
        let me = self.config.member;
        let Runner {
            store,
            members,
            outbox,
            directory,
            ..
        } = self;
        let Some(member) = members.get_mut(&group) else {
            return Ok(());
        };
        match action {
            Action::Truncate { from } => store.truncate(group, from),
            Action::Append(entries) => store.append(group, &entries),
            Action::SaveHardState(hard) => store.save_hard_state(group, hard),
            Action::InstallSnapshot { meta, data } => {
                let payload: SnapshotPayload = postcard::from_bytes(&data)
                    .map_err(|e| format!("a malformed snapshot: {e}"))?;
                member.machine.restore(&payload.machine)?;
                let live = payload.live.iter().map(|entry| entry.index).collect();
                let index = meta.index;
                let snapshot = Snapshot {
                    meta,
                    data: payload.machine,
                    live,
                };
                store.install(group, snapshot, &payload.live);
                member.applied = index;
                // What this member proposed as a leader is now covered by a snapshot it did not
                // apply itself: whether each proposal made it is not known here.
                let covered: Vec<u64> = member.pending.range(..=index).map(|(i, _)| *i).collect();
                for at in covered {
                    let (_, pending) = member.pending.remove(&at).expect("listed");
                    pending.fail(GroupError::Indeterminate(
                        group,
                        "a snapshot replaced the log".into(),
                    ));
                }
            }
            Action::Send {
                to,
                message,
                after_sync,
            } => {
                let tag = store.last_tag(group);
                if after_sync && (!member.held.is_empty() || !store.durable_through(group, tag)) {
                    member.held.push_back((tag, to, message));
                } else {
                    post(outbox, directory, group, me, to, message);
                }
            }
            Action::Replicate {
                to,
                term,
                prev_index,
                prev_term,
                from,
                until,
                commit,
            } => {
                let entries = if until < from {
                    Vec::new()
                } else {
                    match store.entries(group, from, until) {
                        Ok(entries) => entries,
                        // The follower asks again; the entries may have been compacted away
                        // meanwhile, and the next probe sends the snapshot.
                        Err(error) => {
                            tracing::warn!("group {group}: cannot send entries: {error}");
                            return Ok(());
                        }
                    }
                };
                let message = Message::Append {
                    term,
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                };
                post(outbox, directory, group, me, to, message);
            }
            Action::SendSnapshot { to, term, .. } => {
                let snapshot = store
                    .snapshot(group)
                    .cloned()
                    .ok_or_else(|| "no snapshot".to_string())?;
                let live = snapshot
                    .live
                    .iter()
                    .map(|index| store.entry(group, *index))
                    .collect::<Result<Vec<Entry>, String>>()?;
                let payload = SnapshotPayload {
                    machine: snapshot.data,
                    live,
                };
                let data = Bytes::from(
                    postcard::to_stdvec(&payload).expect("invariant: snapshots serialize"),
                );
                let message = Message::Snapshot {
                    term,
                    meta: snapshot.meta,
                    data,
                };
                post(outbox, directory, group, me, to, message);
            }
            Action::Commit { index } => {
                store.commit(group, index);
                let leading = member.raft.role() == Role::Leader;
                while member.applied < index {
                    let at = member.applied + 1;
                    let entry = store.entry(group, at)?;
                    member.applied = at;
                    let reply = match &entry.payload {
                        Payload::Command(command) => {
                            let log = Log {
                                store: &*store,
                                group,
                                leading,
                            };
                            Some(member.machine.apply(at, command, &log))
                        }
                        _ => None,
                    };
                    if let Some((term, pending)) = member.pending.remove(&at) {
                        match pending {
                            _ if term != entry.term => pending.fail(GroupError::Lost(group)),
                            Pending::Command(waiter) => {
                                let _ = waiter.send(Ok(reply.unwrap_or_default()));
                            }
                            Pending::Change(waiter) => {
                                let _ = waiter.send(Ok(at));
                            }
                        }
                    }
                }
                // Entries every member holds and the machine applied are read from disk from
                // now on.
                let mut upto = member.applied;
                if leading {
                    for (_, matched) in member.raft.matched() {
                        upto = upto.min(matched);
                    }
                }
                store.uncache(group, upto);
            }
            Action::Leader { term, leader } => {
                member
                    .machine
                    .leader_changed(term, leader, leader == Some(me));
            }
        }
        Ok(())
    }

    /// Takes a snapshot of the group's machine when enough log piled up since the last one.
    fn maybe_snapshot(&mut self, group: GroupId) {
        let Some(member) = self.members.get_mut(&group) else {
            return;
        };
        let piled = member.raft.bytes_since_snapshot();
        let due = piled >= self.config.snapshot_after
            || (piled >= DRAINED_SNAPSHOT.min(self.config.snapshot_after)
                && member.machine.drained());
        if !due {
            return;
        }
        let Some(meta) = member.raft.meta_at(member.applied) else {
            return;
        };
        let (data, live) = member.machine.snapshot();
        self.store.compact(group, Snapshot { meta, data, live });
    }

    /// Sends every node its batch of the round.
    fn flush(&mut self) {
        let outbox = std::mem::take(&mut self.outbox);
        for (node, out) in outbox {
            for batch in out.batches {
                self.send(node.clone(), batch);
            }
        }
    }

    fn send(&mut self, node: NodeName, envelopes: Vec<Envelope>) {
        if envelopes.is_empty() {
            return;
        }
        let count = envelopes.len() as u64;
        let body =
            Bytes::from(postcard::to_stdvec(&envelopes).expect("invariant: messages serialize"));
        let transport = &self.transport;
        let peer = self.peers.entry(node.clone()).or_insert_with(|| {
            let (sender, mut receiver) = mpsc::channel::<Bytes>(PEER_QUEUE);
            let transport = transport.clone();
            tokio::spawn(async move {
                while let Some(body) = receiver.recv().await {
                    // A link that cannot be made loses the batch; the groups send again.
                    let _ = transport.send(&node, GROUP_SERVICE, body).await;
                }
            });
            sender
        });
        match peer.try_send(body) {
            Ok(()) => {
                self.stats.batches += 1;
                self.stats.messages += count;
            }
            Err(_) => self.stats.dropped += 1,
        }
    }
}

/// Queues a message for the member's node, in this round's batch.
fn post(
    outbox: &mut HashMap<NodeName, Outbox>,
    directory: &Directory,
    group: GroupId,
    from: MemberId,
    to: MemberId,
    message: Message,
) {
    let Some(node) = directory(to) else {
        tracing::debug!("group {group}: member {to} is on no known node");
        return;
    };
    let size = match &message {
        Message::Append { entries, .. } => entries
            .iter()
            .map(|entry| u64::from(entry.payload.size()))
            .sum(),
        Message::Snapshot { data, .. } => data.len() as u64,
        _ => 16,
    };
    let out = outbox.entry(node).or_default();
    if out.batches.is_empty() || out.bytes + size > BATCH_BYTES {
        out.batches.push(Vec::new());
        out.bytes = 0;
    }
    out.bytes += size;
    out.batches
        .last_mut()
        .expect("pushed above")
        .push((group, from, to, message));
}

fn refusal(group: GroupId, error: ProposeError) -> GroupError {
    match error {
        ProposeError::NotLeader { leader } => GroupError::NotLeader { group, leader },
        other => GroupError::Refused(group, other.to_string()),
    }
}

/// What stays registered once the host is shut down: requests fail, batches are ignored.
struct Closed;

impl Service for Closed {
    fn request(&self, _from: NodeName, _body: Bytes) -> BoxFuture<Result<Bytes, String>> {
        Box::pin(async { Err("the node's groups are shut down".to_string()) })
    }

    fn message(&self, _from: NodeName, _body: Bytes) {}
}

#[cfg(test)]
mod tests;
