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

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use warren_storage::Wal;

use super::core::{Config, MembershipChange};
use super::message::{Entry, MemberId, Membership, Message, Payload, Role};
use super::storage::{GroupId, GroupStore, Recovery};
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
    /// disk), ascending. An entry the state stopped needing is not released before that: a
    /// replay from an older snapshot reads it again.
    fn snapshot(&self) -> (Bytes, Vec<u64>);
    /// Whether the state needs no entry of the log (an empty queue): a snapshot then frees the
    /// whole log, so the host takes one early.
    fn drained(&self) -> bool {
        false
    }
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
    /// The group has a new leader (or none); `leading` says whether it is this member. A new
    /// leader appends the commands returned at once, before any proposal it takes: what the
    /// machine must have before anything else (its settings in a new group, a takeover).
    fn leader_changed(
        &mut self,
        _term: u64,
        _leader: Option<MemberId>,
        _leading: bool,
    ) -> Vec<Bytes> {
        Vec::new()
    }
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
    /// A membership change that changes nothing (the member is in, or out, already).
    #[error("group {0} already has the membership asked for")]
    Unchanged(GroupId),
    /// Another membership change is still being committed (one at a time).
    #[error("group {0} is committing another membership change")]
    ChangeInProgress(GroupId),
    #[error("the last voter of group {0} cannot be removed")]
    LastVoter(GroupId),
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
    /// Members stopped by a failed write.
    pub member_stops: u64,
    /// Members restarted in place from their log on disk after one.
    pub member_restarts: u64,
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

/// What one host sends another in a round: the messages of their groups' members, proposals
/// forwarded to a leader here, and the answers to proposals the other forwarded.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Batch {
    raft: Vec<Envelope>,
    forwards: Vec<Forward>,
    answers: Vec<Answer>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.raft.is_empty() && self.forwards.is_empty() && self.answers.is_empty()
    }
}

/// Commands proposed on another node, for the leader here to append in this order.
#[derive(Debug, Serialize, Deserialize)]
struct Forward {
    id: u64,
    group: GroupId,
    commands: Vec<Bytes>,
}

/// How a forwarded proposal ended: the machine's answers, in order.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    id: u64,
    result: Result<Vec<Bytes>, GroupError>,
}

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
    Change {
        group: GroupId,
        change: MembershipChange,
    },
    /// A batch with forwarded proposals or answers in it, sent as a request so that the sender
    /// learns when this node could not take it (its groups not started yet, or shut down):
    /// a proposal lost that way would otherwise wait out its whole deadline.
    Batch(Batch),
    /// Hand the group's leadership (this node's member leads it) to `to`.
    Transfer { group: GroupId, to: MemberId },
    /// Who this node's member takes for the group's leader.
    Leader { group: GroupId },
}

type Reply<T> = oneshot::Sender<Result<T, GroupError>>;

/// What a batch of proposed commands answers, once every one is applied.
pub type Proposed = oneshot::Receiver<Result<Vec<Bytes>, GroupError>>;

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
    Retire {
        group: GroupId,
        removed_at: u64,
        reply: Reply<bool>,
    },
    Route {
        group: GroupId,
        members: Option<Vec<MemberId>>,
    },
    Propose {
        group: GroupId,
        commands: Vec<Bytes>,
        reply: Reply<Vec<Bytes>>,
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
    Batch(NodeName, Batch),
    /// Forwards that never left: the batch holding them could not be sent.
    Unsent(Vec<u64>),
    Down(NodeName),
    Shutdown(oneshot::Sender<()>),
}

/// Batches of group messages from the transport queued before new ones are dropped (Raft
/// sends again what is lost; proposals and answers are never dropped here).
const INBOUND_QUEUE: usize = 4096;
/// Batches queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 1024;
/// A batch is sent before it grows past this many bytes of entries.
const BATCH_BYTES: u64 = 1 << 20;
/// Bytes of log after which a drained machine is snapshotted (freeing its log).
const DRAINED_SNAPSHOT: u64 = 64 << 10;
/// How long a proposal waits before it is routed again when no leader is known.
const LEADER_WAIT: Duration = Duration::from_millis(50);
/// How many times in a row a proposal is sent straight on to the leader another node named
/// before it waits between hops.
const MAX_HOPS: u32 = 8;

/// The node's host: a handle, cheap to clone.
#[derive(Clone)]
pub struct Host {
    input: mpsc::UnboundedSender<Input>,
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
        factory: MachineFactory,
    ) -> Host {
        let written = Arc::new(Notify::new());
        let notify = written.clone();
        let (store, recovered) = GroupStore::open(wal, recovery, move || notify.notify_one());
        let (input, inputs) = mpsc::unbounded_channel();
        let (inbound, inbounds) = mpsc::channel(INBOUND_QUEUE);
        let config = Arc::new(config);
        let runner = runner::Runner::new(
            input.clone(),
            config.clone(),
            transport.clone(),
            directory.clone(),
            store,
            recovered,
            factory,
        );
        transport.register(
            GROUP_SERVICE,
            Arc::new(GroupService {
                input: input.clone(),
                inbound,
            }),
        );
        let mut events = transport.subscribe();
        let links = input.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(LinkEvent::Down(node)) => {
                        if links.send(Input::Down(node)).is_err() {
                            return;
                        }
                    }
                    Ok(LinkEvent::Up(_)) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
        tokio::spawn(runner.run(inputs, inbounds, written));
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

    /// How long a proposal may wait for its group's leader.
    pub fn propose_timeout(&self) -> Duration {
        self.config.propose_timeout
    }

    async fn ask<T>(&self, input: impl FnOnce(Reply<T>) -> Input) -> Result<T, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.input
            .send(input(reply))
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

    /// [`Host::create`], taken in at once: what is submitted after this call finds the group.
    pub fn create_now(
        &self,
        group: GroupId,
        membership: Membership,
        machine: Box<dyn Machine>,
        campaign: bool,
    ) -> oneshot::Receiver<Result<(), GroupError>> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(Input::Create { reply, .. })) =
            self.input.send(Input::Create {
                group,
                membership,
                machine,
                campaign,
                reply,
            })
        {
            let _ = reply.send(Err(GroupError::Shutdown));
        }
        answer
    }

    /// Deletes this node's member of a group and its log.
    pub async fn delete(&self, group: GroupId) -> Result<(), GroupError> {
        self.ask(|reply| Input::Delete { group, reply }).await
    }

    /// [`Host::delete`], taken in at once: a group created after this call is a new one.
    pub fn delete_now(&self, group: GroupId) -> oneshot::Receiver<Result<(), GroupError>> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(Input::Delete { reply, .. })) =
            self.input.send(Input::Delete { group, reply })
        {
            let _ = reply.send(Err(GroupError::Shutdown));
        }
        answer
    }

    /// Deletes this node's member of a group that a membership change at index `removed_at`
    /// of its log removed, unless the member's log goes past that change (it was added again
    /// since: what it holds is what it voted on, and stays). Taken in at once; answers whether
    /// the member was deleted.
    pub fn retire_now(
        &self,
        group: GroupId,
        removed_at: u64,
    ) -> oneshot::Receiver<Result<bool, GroupError>> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(Input::Retire { reply, .. })) =
            self.input.send(Input::Retire {
                group,
                removed_at,
                reply,
            })
        {
            let _ = reply.send(Err(GroupError::Shutdown));
        }
        answer
    }

    /// Tells the host where a group it has no member of lives, so that proposals made here
    /// find its leader (`None`: forget it).
    pub fn route(&self, group: GroupId, members: Option<Vec<MemberId>>) {
        let _ = self.input.send(Input::Route { group, members });
    }

    /// Proposes commands, in this order, after the batches submitted before from this node
    /// (unless one of those had to be routed again to find a new leader): here if this member
    /// leads, else on the leader's node. The answer comes once all are
    /// applied there. An error says none was committed, except [`GroupError::Indeterminate`]
    /// (some or all may have been): a machine that must not apply a command twice recognizes
    /// a batch submitted again. The caller bounds its wait (the runner gives up on a proposal
    /// after the propose timeout).
    pub fn submit(&self, group: GroupId, commands: Vec<Bytes>) -> Proposed {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(Input::Propose { reply, .. })) =
            self.input.send(Input::Propose {
                group,
                commands,
                reply,
            })
        {
            let _ = reply.send(Err(GroupError::Shutdown));
        }
        answer
    }

    /// Proposes one command and returns the machine's answer once it is applied, waiting at
    /// most the configured propose timeout.
    pub async fn propose(&self, group: GroupId, command: Bytes) -> Result<Bytes, GroupError> {
        let answer = self.submit(group, vec![command]);
        match tokio::time::timeout(self.config.propose_timeout, answer).await {
            Err(_) => Err(GroupError::Timeout(group)),
            Ok(Err(_)) => Err(GroupError::Shutdown),
            Ok(Ok(result)) => result.map(|mut answers| answers.pop().unwrap_or_default()),
        }
    }

    /// Changes the group's membership by one member, on its leader; returns the index of the
    /// change once it is applied. Asked on a node without a member of the group, it goes to
    /// the members named in `members` (the group's, as its record has them) until one leads
    /// or names the leader.
    pub async fn change_membership(
        &self,
        group: GroupId,
        change: MembershipChange,
        members: &[MemberId],
    ) -> Result<u64, GroupError> {
        let deadline = Instant::now() + self.config.propose_timeout;
        let me = self.config.member;
        let others: Vec<MemberId> = members.iter().copied().filter(|m| *m != me).collect();
        // Whom to ask next (`None`: this node's member), and how many others were tried.
        let mut target: Option<MemberId> = None;
        let mut tried = 0;
        loop {
            let asked = target;
            let answer = match target.filter(|member| *member != me) {
                None => {
                    let local = self.ask(|reply| Input::Change {
                        group,
                        change,
                        reply,
                    });
                    match tokio::time::timeout_at(deadline, local).await {
                        Err(_) => return Err(GroupError::Timeout(group)),
                        Ok(answer) => answer,
                    }
                }
                Some(member) => match (self.directory)(member) {
                    Some(node) => self.change_on(&node, group, change, deadline).await?,
                    None => Err(GroupError::NoLeader(group)),
                },
            };
            target = match answer {
                Ok(index) => return Ok(index),
                Err(GroupError::NotLeader {
                    leader: Some(leader),
                    ..
                }) if Some(leader) != asked => {
                    // Straight on to the leader it names.
                    target = Some(leader);
                    continue;
                }
                Err(GroupError::Unknown(_)) if others.is_empty() => {
                    return Err(GroupError::Unknown(group));
                }
                Err(error @ GroupError::Stopped(..)) if others.is_empty() => return Err(error),
                // Between leaders, or asked where nobody knows the leader (a member that is
                // joining knows none), or of a member stopped by a failed write: the members
                // are asked in turn.
                Err(
                    GroupError::NotLeader { .. }
                    | GroupError::NoLeader(_)
                    | GroupError::Unknown(_)
                    | GroupError::Stopped(..),
                ) => {
                    if others.is_empty() {
                        None
                    } else {
                        let next = others[tried % others.len()];
                        tried += 1;
                        Some(next)
                    }
                }
                Err(error) => return Err(error),
            };
            // After each round of the members, a pause.
            if others.is_empty() || tried % others.len() == 0 {
                tokio::time::sleep_until((Instant::now() + LEADER_WAIT).min(deadline)).await;
            }
            if Instant::now() >= deadline {
                return Err(GroupError::Timeout(group));
            }
        }
    }

    /// Asks the host on `node` to change the group's membership; `Err` when the outcome is
    /// unknown, `Ok(Err)` when it was refused or not made (`NoLeader`: nothing was sent).
    async fn change_on(
        &self,
        node: &NodeName,
        group: GroupId,
        change: MembershipChange,
        deadline: Instant,
    ) -> Result<Result<u64, GroupError>, GroupError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.remote(node, group, &Request::Change { group, change }, left)
            .await
    }

    /// Hands the group's leadership to `to`, on this node's member if it leads.
    pub async fn transfer_leadership(
        &self,
        group: GroupId,
        to: MemberId,
    ) -> Result<(), GroupError> {
        self.ask(|reply| Input::Transfer { group, to, reply }).await
    }

    /// Hands the group's leadership from `leader` (on whichever node) to `to`; answers once
    /// the leader has started the hand-over (see [`Host::leader`] for its end).
    pub async fn transfer_leadership_from(
        &self,
        group: GroupId,
        leader: MemberId,
        to: MemberId,
    ) -> Result<(), GroupError> {
        if leader == self.config.member {
            return self.transfer_leadership(group, to).await;
        }
        let node = (self.directory)(leader).ok_or(GroupError::NoLeader(group))?;
        let request = Request::Transfer { group, to };
        self.remote::<()>(&node, group, &request, self.config.propose_timeout)
            .await?
    }

    /// The group's leader, as this node's member sees it, or else as the first of `members`
    /// that answers and knows one does.
    pub async fn leader(&self, group: GroupId, members: &[MemberId]) -> Option<MemberId> {
        if let Some(status) = self.status(group).await {
            return status.leader;
        }
        for member in members
            .iter()
            .filter(|member| **member != self.config.member)
        {
            let Some(node) = (self.directory)(*member) else {
                continue;
            };
            let request = Request::Leader { group };
            let wait = self.config.propose_timeout.min(Duration::from_secs(2));
            if let Ok(Ok(Some(leader))) = self
                .remote::<Option<MemberId>>(&node, group, &request, wait)
                .await
            {
                return Some(leader);
            }
        }
        None
    }

    /// Asks the host on `node`; `Err` when no answer came.
    async fn remote<T: serde::de::DeserializeOwned>(
        &self,
        node: &NodeName,
        group: GroupId,
        request: &Request,
        wait: Duration,
    ) -> Result<Result<T, GroupError>, GroupError> {
        let body =
            Bytes::from(postcard::to_stdvec(request).expect("invariant: requests serialize"));
        match self
            .transport
            .request_within(node, GROUP_SERVICE, body, wait)
            .await
        {
            Ok(answer) => postcard::from_bytes::<Result<T, GroupError>>(&answer)
                .map_err(|error| GroupError::Indeterminate(group, error.to_string())),
            // Nothing was sent: asking again cannot change it twice.
            Err(TransportError::Unreachable { .. }) => Ok(Err(GroupError::NoLeader(group))),
            Err(TransportError::Timeout(_)) => Err(GroupError::Timeout(group)),
            Err(error) => Err(GroupError::Indeterminate(group, error.to_string())),
        }
    }

    /// This node's member's view of the group.
    pub async fn status(&self, group: GroupId) -> Option<GroupStatus> {
        let (reply, answer) = oneshot::channel();
        self.input.send(Input::Status { group, reply }).ok()?;
        answer.await.ok().flatten()
    }

    pub async fn stats(&self) -> HostStats {
        let (reply, answer) = oneshot::channel();
        if self.input.send(Input::Stats(reply)).is_err() {
            return HostStats::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Stops the runner; the groups stay on disk.
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        if self.input.send(Input::Shutdown(reply)).is_ok() {
            let _ = answer.await;
        }
    }
}

/// The transport's side: batches from other hosts, and membership changes they ask for.
struct GroupService {
    input: mpsc::UnboundedSender<Input>,
    inbound: mpsc::Sender<Input>,
}

impl Service for GroupService {
    fn request(&self, from: NodeName, body: Bytes) -> BoxFuture<Result<Bytes, String>> {
        let input = self.input.clone();
        Box::pin(async move {
            let send = |message: Input| {
                input
                    .send(message)
                    .map_err(|_| "the host is shut down".to_string())
            };
            let encoded = match postcard::from_bytes(&body).map_err(|e| e.to_string())? {
                Request::Batch(batch) => {
                    send(Input::Batch(from, batch))?;
                    return Ok(Bytes::new());
                }
                Request::Change { group, change } => {
                    let (reply, answer) = oneshot::channel();
                    send(Input::Change {
                        group,
                        change,
                        reply,
                    })?;
                    let result = answer.await.unwrap_or(Err(GroupError::Shutdown));
                    postcard::to_stdvec(&result)
                }
                Request::Transfer { group, to } => {
                    let (reply, answer) = oneshot::channel();
                    send(Input::Transfer { group, to, reply })?;
                    let result = answer.await.unwrap_or(Err(GroupError::Shutdown));
                    postcard::to_stdvec(&result)
                }
                Request::Leader { group } => {
                    let (reply, answer) = oneshot::channel();
                    send(Input::Status { group, reply })?;
                    let leader = answer.await.ok().flatten().and_then(|status| status.leader);
                    postcard::to_stdvec(&Ok::<_, GroupError>(leader))
                }
            };
            Ok(Bytes::from(encoded.expect("invariant: answers serialize")))
        })
    }

    fn message(&self, from: NodeName, body: Bytes) {
        match postcard::from_bytes::<Batch>(&body) {
            // Proposals and answers keep their order and are never dropped; a batch of group
            // messages alone may be, when the runner is behind (Raft sends again).
            Ok(batch) if batch.forwards.is_empty() && batch.answers.is_empty() => {
                let _ = self.inbound.try_send(Input::Batch(from, batch));
            }
            Ok(batch) => {
                let _ = self.input.send(Input::Batch(from, batch));
            }
            Err(error) => tracing::warn!("a malformed group batch from {from}: {error}"),
        }
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

mod runner;
#[cfg(test)]
mod tests;
