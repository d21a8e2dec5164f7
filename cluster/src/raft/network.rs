//! Raft RPCs over the inter-node transport: the client side openraft calls, and the service that
//! answers peers.
//!
//! A member's address is its node name, kept in openraft's `BasicNode::addr`; the transport
//! resolves and authenticates it. A peer that cannot be reached is reported `Unreachable`, so
//! openraft backs off instead of spinning.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::BasicNode;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse};
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{OptionalSend, alias::SnapshotMetaOf};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{GroupInner, TypeConfig};
use crate::identity::NodeName;
use crate::transport::{BoxFuture, Service, Transport, TransportError};

/// The shortest time a Raft RPC is given.
const MIN_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// The transport service number of the metadata Raft group.
pub const RAFT_SERVICE: u16 = 10;

/// What peers ask of a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
        data: Vec<u8>,
    },
    /// Propose a command (to the leader); answered with (index, response).
    Propose(Vec<u8>),
    /// Add a member (to the leader).
    AddMember {
        id: u64,
        name: String,
    },
    /// Remove a member (to the leader).
    RemoveMember {
        id: u64,
    },
    /// Who is in the group, as this node sees it.
    Status,
}

/// An RPC and the Raft id of the member it is for: a node that was reset since its peers last
/// heard of it has a new id, and refuses what was meant for the old one.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The addressee's Raft id; 0 for whichever member the node is now.
    pub(crate) to: u64,
    pub(crate) rpc: Rpc,
}

/// The refusal a node sends for RPCs meant for an earlier incarnation of itself, in RabbitMQ's
/// words.
pub(crate) fn disagrees(from: &NodeName, me: &NodeName) -> String {
    format!("Node '{from}' thinks it's clustered with node '{me}', but '{me}' disagrees")
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(value).expect("invariant: raft messages always serialize"))
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    postcard::from_bytes(body).map_err(|error| format!("malformed raft message: {error}"))
}

/// Makes a client per peer.
pub(crate) struct Network {
    pub(crate) transport: Transport,
}

/// One peer.
pub(crate) struct Peer {
    transport: Transport,
    name: NodeName,
    id: u64,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            transport: self.transport.clone(),
            name: NodeName::new_unchecked(node.addr.clone()),
            id: target,
        }
    }
}

impl Peer {
    async fn call<T: DeserializeOwned>(
        &self,
        rpc: Rpc,
        option: &RPCOption,
    ) -> Result<T, TransportError> {
        let envelope = Envelope { to: self.id, rpc };
        let body = self
            .transport
            .request_within(
                &self.name,
                RAFT_SERVICE,
                encode(&envelope),
                // openraft's time-to-live is its heartbeat interval: a link slower than that
                // (a round trip over 200 ms) would never replicate. A late answer is still
                // an answer; a dead peer fails at once.
                option.hard_ttl().max(MIN_RPC_TIMEOUT),
            )
            .await?;
        decode(&body).map_err(|reason| TransportError::Failed {
            node: self.name.clone(),
            reason,
        })
    }
}

fn rpc_error(error: TransportError) -> RPCError<TypeConfig> {
    match error {
        TransportError::Unreachable { .. } | TransportError::Lost(_) => {
            RPCError::Unreachable(Unreachable::new(&error))
        }
        _ => RPCError::Network(NetworkError::new(&error)),
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Append(rpc), &option)
            .await
            .map_err(rpc_error)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote(rpc), &option).await.map_err(rpc_error)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote(rpc), &option)
            .await
            .map_err(rpc_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let rpc = Rpc::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        self.call(rpc, &option).await.map_err(|error| match error {
            TransportError::Unreachable { .. } | TransportError::Lost(_) => {
                StreamingError::Unreachable(Unreachable::new(&error))
            }
            _ => StreamingError::Network(NetworkError::new(&error)),
        })
    }
}

/// Answers peers' RPCs for one group.
pub(crate) struct RaftService {
    pub(crate) group: Weak<GroupInner>,
    /// When each peer was last told it addresses an earlier incarnation of this node.
    pub(crate) disagreements: Arc<parking_lot::Mutex<HashMap<NodeName, Instant>>>,
}

/// How often the same peer's stale RPCs are logged.
const DISAGREEMENT_LOG_INTERVAL: Duration = Duration::from_secs(30);

impl Service for RaftService {
    fn request(&self, from: NodeName, body: Bytes) -> BoxFuture<Result<Bytes, String>> {
        let group = self.group.clone();
        let disagreements = self.disagreements.clone();
        Box::pin(async move {
            let group: Arc<GroupInner> = group
                .upgrade()
                .ok_or_else(|| "the node is stopping".to_string())?;
            let Envelope { to, rpc } = decode(&body)?;
            if to != 0 && to != group.node_id {
                let refusal = disagrees(&from, group.transport.node());
                let mut logged = disagreements.lock();
                let due = logged
                    .get(&from)
                    .is_none_or(|at| at.elapsed() >= DISAGREEMENT_LOG_INTERVAL);
                if due {
                    tracing::warn!(
                        "{refusal}: it addresses an earlier incarnation of this node (which was \
                         reset); remove it on the other side with 'warrenctl forget_cluster_node {}'",
                        group.transport.node()
                    );
                    logged.insert(from, Instant::now());
                }
                return Err(refusal);
            }
            let raft = group.raft();
            match rpc {
                Rpc::Append(rpc) => raft
                    .append_entries(rpc)
                    .await
                    .map(|response| encode(&response))
                    .map_err(|error| error.to_string()),
                Rpc::Vote(rpc) => raft
                    .vote(rpc)
                    .await
                    .map(|response| encode(&response))
                    .map_err(|error| error.to_string()),
                Rpc::PreVote(rpc) => raft
                    .pre_vote(rpc)
                    .await
                    .map(|response| encode(&response))
                    .map_err(|error| error.to_string()),
                Rpc::Snapshot { vote, meta, data } => {
                    let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> {
                        meta,
                        snapshot: data,
                    };
                    raft.install_full_snapshot(vote, snapshot)
                        .await
                        .map(|response| encode(&response))
                        .map_err(|error| error.to_string())
                }
                Rpc::Propose(command) => group
                    .write_as_leader(command)
                    .await
                    .map(|outcome| encode(&outcome)),
                Rpc::AddMember { id, name } => group
                    .add_member_as_leader(id, NodeName::new_unchecked(name))
                    .await
                    .map(|()| Bytes::new()),
                Rpc::RemoveMember { id } => group
                    .remove_member_as_leader(id)
                    .await
                    .map(|()| Bytes::new()),
                Rpc::Status => Ok(encode(&group.status())),
            }
        })
    }

    fn message(&self, _from: NodeName, _body: Bytes) {}
}
