//! Raft groups: openraft with its log in the node's WAL and its RPCs on the inter-node
//! transport, around a state machine the application provides.
//!
//! ```text
//!  propose(cmd) ─ leader? ─ yes ─> client_write ─> replicate, commit ─> apply on every member
//!               └─ no ──> Propose RPC to the leader ─> (index, response) ─> wait until applied here
//! ```
//!
//! A lone node is a one-member group: it initializes itself and is its own leader, nothing else
//! differs. Commands are opaque bytes; [`StateMachine::apply`] must be deterministic, since every
//! member applies the same commands in the same order and must reach the same state. A proposal
//! whose leader was lost may be retried and so applied twice: commands must tolerate that
//! (declarations and deletions do).
//!
//! Raft ids are random per incarnation of a data directory, and the member's node name is its
//! address: a node that was reset comes back as a new member, which the old membership does not
//! know, rather than as an old member with a lost log.

pub mod log;
mod machine;
pub mod network;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::identity::NodeName;
use crate::transport::{Transport, TransportError};
use log::RaftLog;
use machine::Machine;
use network::{Envelope, Network, RAFT_SERVICE, RaftService, Rpc, decode, encode};

/// A command, as opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Vec<u8>);

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command of {} bytes", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// Warren's Raft types: opaque commands and responses, members addressed by node name.
    pub TypeConfig:
        D = Command,
        R = Vec<u8>,
        NodeId = u64,
        Node = BasicNode,
);

/// What a group replicates: the application's state.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies a committed command; the response goes back to whoever proposed it. Called in
    /// log order, on every member.
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8>;
    /// The whole state, serialized.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot's.
    fn restore(&self, snapshot: &[u8]) -> Result<(), String>;
}

/// Timing of a group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Leader heartbeat.
    pub heartbeat: Duration,
    /// Shortest election timeout (the longest is twice this).
    pub election_timeout: Duration,
    /// How long a proposal may wait for a leader and a majority.
    pub propose_timeout: Duration,
    /// Entries between snapshots.
    pub snapshot_every: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            heartbeat: Duration::from_millis(200),
            election_timeout: Duration::from_millis(1000),
            propose_timeout: Duration::from_secs(10),
            snapshot_every: 10_000,
        }
    }
}

/// Why a proposal or a membership change failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftGroupError {
    /// No leader with a majority answered in time.
    #[error("no majority of the cluster's nodes is reachable (waited {0:?})")]
    NoMajority(Duration),
    /// The group is stopping or broken.
    #[error("the metadata store has stopped: {0}")]
    Stopped(String),
    /// The leader refused.
    #[error("{0}")]
    Refused(String),
}

/// A member of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Raft id.
    pub id: u64,
    /// Node name.
    pub name: String,
    /// Whether it votes (a learner catching up does not).
    pub voter: bool,
}

/// The group as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's Raft id.
    pub id: u64,
    /// Members.
    pub members: Vec<Member>,
    /// The leader, if known.
    pub leader: Option<Member>,
    /// Current term.
    pub term: u64,
    /// Index of the last entry applied here.
    pub applied: u64,
    /// Index of the newest snapshot here.
    pub snapshot: u64,
    /// Whether this node has ever been part of a group (initialized or joined).
    pub initialized: bool,
}

pub(crate) struct GroupInner {
    raft: Raft<TypeConfig, Machine>,
    progress: watch::Receiver<u64>,
    transport: Transport,
    config: GroupConfig,
    node_id: u64,
}

/// One Raft group on this node.
#[derive(Clone)]
pub struct RaftGroup {
    inner: Arc<GroupInner>,
}

impl std::fmt::Debug for RaftGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGroup")
            .field("id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

fn stopped(error: impl std::fmt::Display) -> RaftGroupError {
    RaftGroupError::Stopped(error.to_string())
}

impl GroupInner {
    fn raft(&self) -> Raft<TypeConfig, Machine> {
        self.raft.clone()
    }

    /// Writes as the leader, if this node is one.
    async fn write_as_leader(&self, command: Vec<u8>) -> Result<(u64, Vec<u8>), String> {
        let raft = self.raft();
        let written = tokio::time::timeout(
            self.config.propose_timeout,
            raft.client_write(Command(command)),
        );
        match written.await {
            Ok(Ok(response)) => Ok((response.log_id.index, response.data)),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "no majority acknowledged the write within {:?}",
                self.config.propose_timeout
            )),
        }
    }

    async fn add_member_as_leader(&self, id: u64, name: NodeName) -> Result<(), String> {
        let raft = self.raft();
        let metrics = raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        if let Some((_, _)) = membership
            .nodes()
            .find(|(other, node)| node.addr == name.as_str() && **other != id)
        {
            return Err(format!(
                "node '{name}' is already a member of this cluster as an earlier incarnation \
                 (it was reset, or its data was lost, since it joined); remove that one first \
                 with 'warrenctl forget_cluster_node {name}' on a member"
            ));
        }
        if membership.voter_ids().any(|voter| voter == id) {
            return Ok(());
        }
        raft.add_learner(id, BasicNode::new(name.as_str()), true)
            .await
            .map_err(|error| error.to_string())?;
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    }

    async fn remove_member_as_leader(&self, id: u64) -> Result<(), String> {
        let raft = self.raft();
        let metrics = raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.learner_ids().any(|learner| learner == id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Ok(());
        };
        raft.change_membership(change, false)
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    }

    fn status(&self) -> Status {
        let raft = self.raft();
        let metrics = raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members: Vec<Member> = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                name: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader = metrics
            .current_leader
            .and_then(|leader| members.iter().find(|member| member.id == leader).cloned());
        Status {
            id: self.node_id,
            initialized: !members.is_empty(),
            members,
            leader,
            term: metrics.current_term,
            applied: metrics.last_applied.map_or(0, |id| id.index),
            snapshot: metrics.snapshot.map_or(0, |id| id.index),
        }
    }
}

impl RaftGroup {
    /// Starts the group's Raft node with `log` (recovered or new) and the application's state
    /// machine, and registers its RPC service on `transport`.
    pub async fn start(
        transport: &Transport,
        log: RaftLog,
        app: Arc<dyn StateMachine>,
        config: GroupConfig,
    ) -> Result<RaftGroup, RaftGroupError> {
        let node_id = log.node_id();
        let machine = Machine::new(app, log.clone()).map_err(stopped)?;
        let progress = machine.progress();
        let heartbeat = config.heartbeat.as_millis() as u64;
        let election = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "warren".into(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            install_snapshot_timeout: 30_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every / 10,
            ..Default::default()
        }
        .validate()
        .map_err(stopped)?;
        let network = Network {
            transport: transport.clone(),
        };
        let raft = Raft::new(node_id, Arc::new(raft_config), network, log, machine)
            .await
            .map_err(stopped)?;
        let inner = Arc::new(GroupInner {
            raft,
            progress,
            transport: transport.clone(),
            config,
            node_id,
        });
        transport.register(
            RAFT_SERVICE,
            Arc::new(RaftService {
                group: Arc::downgrade(&inner),
                disagreements: Default::default(),
            }),
        );
        Ok(RaftGroup { inner })
    }

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.inner.node_id
    }

    /// Makes this node a group of one (a new cluster). Does nothing if it already belongs to
    /// one.
    pub async fn initialize_alone(&self) -> Result<(), RaftGroupError> {
        let raft = self.inner.raft();
        if raft.is_initialized().await.map_err(stopped)? {
            return Ok(());
        }
        let members = BTreeMap::from([(
            self.inner.node_id,
            BasicNode::new(self.inner.transport.node().as_str()),
        )]);
        match raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(_)) => Ok(()),
            Err(error) => Err(stopped(error)),
        }
    }

    /// Whether this node has been initialized or has joined a group.
    pub async fn is_initialized(&self) -> Result<bool, RaftGroupError> {
        self.inner.raft().is_initialized().await.map_err(stopped)
    }

    /// Proposes a command and returns the state machine's response once this node has applied
    /// it. Waits for a leader and a majority for at most the configured time.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, RaftGroupError> {
        let deadline = Instant::now() + self.inner.config.propose_timeout;
        loop {
            let raft = self.inner.raft();
            // A leader that lost its majority does not know it yet: its write waits for a
            // commit that may never come.
            let written =
                tokio::time::timeout_at(deadline, raft.client_write(Command(command.clone())));
            let Ok(written) = written.await else {
                return Err(RaftGroupError::NoMajority(
                    self.inner.config.propose_timeout,
                ));
            };
            let (leader, leader_id) = match written {
                Ok(response) => return Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    (forward.leader_node, forward.leader_id.unwrap_or(0))
                }
                Err(RaftError::APIError(error)) => {
                    return Err(RaftGroupError::Refused(error.to_string()));
                }
                Err(RaftError::Fatal(error)) => return Err(stopped(error)),
            };
            if let Some(leader) = leader {
                let leader = NodeName::new_unchecked(leader.addr);
                let left = deadline.saturating_duration_since(Instant::now());
                let reply = self
                    .inner
                    .transport
                    .request_within(
                        &leader,
                        RAFT_SERVICE,
                        encode(&Envelope {
                            to: leader_id,
                            rpc: Rpc::Propose(command.clone()),
                        }),
                        left,
                    )
                    .await;
                match reply {
                    Ok(body) => {
                        let (index, response): (u64, Vec<u8>) =
                            decode(&body).map_err(RaftGroupError::Refused)?;
                        self.wait_applied(index, deadline).await?;
                        return Ok(response);
                    }
                    // The leader changed or is unreachable: ask again.
                    Err(TransportError::Failed { .. })
                    | Err(TransportError::Unreachable { .. })
                    | Err(TransportError::Lost(_))
                    | Err(TransportError::Timeout(_)) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(RaftGroupError::NoMajority(
                    self.inner.config.propose_timeout,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes several commands in order, in one batch when this node is the leader (one log
    /// append, one sync); otherwise one after another through the leader. Returns each one's
    /// response, in order.
    pub async fn propose_many(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> Vec<Result<Vec<u8>, RaftGroupError>> {
        let mut outcomes = Vec::with_capacity(commands.len());
        if self.is_leader() && commands.len() > 1 {
            let deadline = Instant::now() + self.inner.config.propose_timeout;
            let raft = self.inner.raft();
            let batch = commands.iter().cloned().map(Command);
            if let Ok(mut stream) = raft.client_write_many(batch).await {
                use futures_util::StreamExt;
                while outcomes.len() < commands.len() {
                    match tokio::time::timeout_at(deadline, stream.next()).await {
                        Ok(Some(Ok(Ok(written)))) => outcomes.push(Ok(written.response)),
                        // Not the leader after all, or the stream ended: the rest go one by one.
                        Ok(Some(Ok(Err(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
                        Err(_) => {
                            let timeout = self.inner.config.propose_timeout;
                            while outcomes.len() < commands.len() {
                                outcomes.push(Err(RaftGroupError::NoMajority(timeout)));
                            }
                            return outcomes;
                        }
                    }
                }
            }
        }
        for command in commands.into_iter().skip(outcomes.len()) {
            outcomes.push(self.propose(command).await);
        }
        outcomes
    }

    /// Waits until this node has applied the entry at `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), RaftGroupError> {
        let mut progress = self.inner.progress.clone();
        let waited =
            tokio::time::timeout_at(deadline, progress.wait_for(|applied| *applied >= index));
        match waited.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(stopped("the state machine has stopped")),
            Err(_) => Err(RaftGroupError::NoMajority(
                self.inner.config.propose_timeout,
            )),
        }
    }

    /// Waits until this node knows a leader and has applied every entry in its log (at start,
    /// what it had logged before).
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<(), RaftGroupError> {
        let mut metrics = self.inner.raft().metrics();
        let deadline = Instant::now() + timeout;
        loop {
            {
                let now = metrics.borrow_watched();
                let applied = now.last_applied.map_or(0, |id| id.index);
                if now.current_leader.is_some() && applied >= now.last_log_index.unwrap_or(0) {
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(stopped("the Raft node has stopped")),
                Err(_) => return Err(RaftGroupError::NoMajority(timeout)),
            }
        }
    }

    /// Waits (at most `timeout`) until this node has applied everything the leader had applied
    /// when asked: what was committed while this node was cut off is then here too.
    pub async fn sync_with_leader(&self, timeout: Duration) -> Result<(), RaftGroupError> {
        let deadline = Instant::now() + timeout;
        let reply = tokio::time::timeout_at(deadline, self.through_leader(Rpc::Status))
            .await
            .map_err(|_| RaftGroupError::NoMajority(timeout))??;
        let leader: Status = decode(&reply).map_err(RaftGroupError::Refused)?;
        self.wait_applied(leader.applied, deadline).await
    }

    /// Adds the node `name` with Raft id `id` as a voting member (through the leader), once it
    /// has caught up.
    pub async fn add_member(&self, id: u64, name: &NodeName) -> Result<(), RaftGroupError> {
        self.through_leader(Rpc::AddMember {
            id,
            name: name.as_str().to_string(),
        })
        .await
        .map(drop)
    }

    /// Removes the member with Raft id `id` (through the leader).
    pub async fn remove_member(&self, id: u64) -> Result<(), RaftGroupError> {
        self.through_leader(Rpc::RemoveMember { id })
            .await
            .map(drop)
    }

    async fn through_leader(&self, rpc: Rpc) -> Result<bytes::Bytes, RaftGroupError> {
        let deadline = Instant::now() + self.inner.config.propose_timeout;
        loop {
            if let Some(leader) = self.status().leader {
                let body = encode(&Envelope {
                    to: leader.id,
                    rpc: rpc.clone(),
                });
                let leader = NodeName::new_unchecked(leader.name);
                let outcome = if leader == *self.inner.transport.node() {
                    let service = RaftService {
                        group: Arc::downgrade(&self.inner),
                        disagreements: Default::default(),
                    };
                    crate::transport::Service::request(&service, leader.clone(), body.clone())
                        .await
                        .map_err(|reason| TransportError::Failed {
                            node: leader.clone(),
                            reason,
                        })
                } else {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.inner
                        .transport
                        .request_within(&leader, RAFT_SERVICE, body.clone(), left)
                        .await
                };
                match outcome {
                    Ok(reply) => return Ok(reply),
                    Err(TransportError::Failed { reason, .. })
                        if !reason.contains("forward request") =>
                    {
                        return Err(RaftGroupError::Refused(reason));
                    }
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(RaftGroupError::NoMajority(
                    self.inner.config.propose_timeout,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The group as this node sees it.
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.inner.raft().metrics().borrow_watched().state == ServerState::Leader
    }

    /// Stops the Raft node.
    pub async fn shutdown(&self) {
        let raft = self.inner.raft();
        if let Err(error) = raft.shutdown().await {
            tracing::warn!("raft shutdown: {error}");
        }
    }
}
