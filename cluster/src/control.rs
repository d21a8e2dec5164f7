//! The control protocol: what `warrenctl` asks a node, and what nodes ask each other to form and
//! change a cluster.
//!
//! ```text
//!  warrenctl ──tool link──> node: Status | JoinCluster | Reset | ForgetNode
//!  joining node ──link──> member: Join { id, name } ─> member adds it through the Raft leader
//!  forming node ──link──> peer: Status (is it in a cluster already? who leads?)
//! ```
//!
//! The node answers these in the broker, which owns what they change; this module holds only
//! the messages and a client, so that the command-line tool needs nothing of the broker.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::identity::NodeName;
use crate::transport::{Transport, TransportError};

/// The transport service number of the control protocol.
pub const CONTROL_SERVICE: u16 = 11;

/// A request to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// The cluster as the node sees it.
    Status,
    /// Leave the current cluster (dropping this node's data) and join the one `node` is in.
    JoinCluster {
        /// A member of the cluster to join.
        node: String,
    },
    /// Leave the cluster (if any) and start again blank, as a cluster of one.
    Reset,
    /// Remove `node` from the cluster this node is in.
    ForgetNode {
        /// The member to remove.
        node: String,
        /// `--offline`: the majority is gone for good; remove it without one (unsafe recovery).
        offline: bool,
    },
    /// The nodes the asked node has live links to (to tell a partition from a stopped node).
    Links,
    /// From a node that joins: add it (Raft id `id`, name `node`) as a member.
    Join {
        /// The joining node's Raft id.
        id: u64,
        /// Its name.
        node: String,
    },
    /// Whether the node is healthy as a cluster member: it runs, is clustered with the node
    /// its peer discovery backend names as seed, and sees no partition.
    HealthCheck,
    /// Which quorum queues (and the metadata store) would lose their majority if the node
    /// stopped (`rabbitmq-queues check_if_node_is_quorum_critical`).
    QuorumCritical,
    /// Add a member of quorum queue `queue` on `node` (`rabbitmq-queues add_member`).
    AddMember {
        vhost: String,
        queue: String,
        node: String,
    },
    /// Remove the member of `queue` on `node` (`rabbitmq-queues delete_member`).
    DeleteMember {
        vhost: String,
        queue: String,
        node: String,
    },
    /// Add a member on `node` to the quorum queues that have none there and match
    /// (`rabbitmq-queues grow`): all of them, or (`even`) those with an even number of members.
    Grow {
        node: String,
        even: bool,
        vhost_pattern: String,
        queue_pattern: String,
    },
    /// Remove `node`'s member from every quorum queue that has one (`rabbitmq-queues shrink`).
    Shrink { node: String },
    /// The queues of `vhost` with these columns (`rabbitmqctl list_queues`).
    ListQueues { vhost: String, columns: Vec<String> },
    /// Spread the leaders of the matching quorum queues over the running nodes
    /// (`rabbitmq-queues rebalance quorum`).
    Rebalance {
        vhost_pattern: String,
        queue_pattern: String,
    },
}

/// One queue's outcome in `grow` or `shrink`, as `rabbitmq-queues` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    pub vhost: String,
    pub name: String,
    /// Its members after the change (before it, when it failed; `None`: not known).
    pub size: Option<usize>,
    /// `ok`, or `error: ...`.
    pub result: String,
}

/// RabbitMQ's reason when stopping the node would cost a quorum queue its majority.
pub const QUORUM_CRITICAL: &str =
    "There are quorum queues that would lose their quorum if the target node is shut down";

/// What would lose its majority if the node stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumCriticalReport {
    /// The node answering.
    pub node: String,
    /// Whether the cluster has this node alone (nothing to lose a majority to).
    pub single_node: bool,
    /// What is critical, in RabbitMQ's shape.
    pub critical: Vec<QuorumCritical>,
}

/// A quorum queue, or a component of the node (the metadata store), that has only a bare
/// majority of its members online, this node among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumCritical {
    /// `queue 'q' in vhost '/'`, or the component's name.
    pub readable_name: String,
    pub name: String,
    /// The queue's vhost; `-` for a component.
    pub virtual_host: String,
    /// `quorum`, or `process` for a component.
    pub kind: String,
}

/// What a health check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The node answering.
    pub node: String,
    /// The node the peer discovery backend names as seed, when it names one.
    pub seed: Option<String>,
    /// What is wrong; empty when healthy.
    pub problems: Vec<String>,
}

/// One member as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// Raft id.
    pub id: u64,
    /// Whether it votes in the metadata store (a learner catching up does not).
    pub voter: bool,
    /// Whether the node answering has a live link to it (itself counts as running).
    pub running: bool,
}

/// The answer to [`ControlRequest::Status`]: the shape of `rabbitmqctl cluster_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub node: String,
    /// The cluster's name.
    pub cluster_name: String,
    /// Whether the node belongs to a cluster (possibly of one).
    pub initialized: bool,
    /// Every member.
    pub members: Vec<MemberStatus>,
    /// The metadata store's leader, if one is known.
    pub leader: Option<String>,
    /// The metadata store's term.
    pub term: u64,
    /// Members this node cannot reach although it has not heard them stop.
    pub partitions: Vec<String>,
    /// Resource alarms in effect on the answering node (`memory`, `disk`).
    pub alarms: Vec<String>,
    /// `cluster_partition_handling`.
    pub partition_handling: String,
    /// Whether the node is paused by `pause_minority` (client listeners closed).
    pub paused: bool,
}

/// What a node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// The cluster as the node sees it.
    Status(ClusterStatus),
    /// Done, with a line to show the operator.
    Done(String),
    /// Nodes with live links.
    Links(Vec<String>),
    /// A health check's findings.
    Health(HealthReport),
    /// What would lose its majority if the node stopped.
    QuorumCritical(QuorumCriticalReport),
    /// What `grow` or `shrink` did to each queue.
    MemberChanges(Vec<MemberChange>),
    /// A table: its columns and rows (`list_queues`).
    Table {
        columns: Vec<String>,
        rows: Vec<Vec<String>>,
    },
}

/// Encodes a control message.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(value).expect("invariant: control messages always serialize"))
}

/// Decodes a control message.
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    postcard::from_bytes(body).map_err(|error| format!("malformed control message: {error}"))
}

/// Sends `request` to `node` and waits at most `timeout` for its answer. A refusal comes back as
/// [`TransportError::Failed`] with the node's reason.
pub async fn call(
    transport: &Transport,
    node: &NodeName,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<ControlResponse, TransportError> {
    let body = transport
        .request_within(node, CONTROL_SERVICE, encode(request), timeout)
        .await?;
    decode(&body).map_err(|reason| TransportError::Failed {
        node: node.clone(),
        reason,
    })
}

/// Asks `node` for its view of the cluster.
pub async fn status(
    transport: &Transport,
    node: &NodeName,
    timeout: Duration,
) -> Result<ClusterStatus, TransportError> {
    match call(transport, node, &ControlRequest::Status, timeout).await? {
        ControlResponse::Status(status) => Ok(status),
        other => Err(TransportError::Failed {
            node: node.clone(),
            reason: format!("unexpected answer to a status request: {other:?}"),
        }),
    }
}

impl std::fmt::Display for ClusterStatus {
    /// The text `warrenctl cluster_status` prints, laid out as `rabbitmqctl cluster_status`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Cluster status of node {} ...", self.node)?;
        writeln!(f, "Basics\n\nCluster name: {}", self.cluster_name)?;
        writeln!(f, "\nDisk Nodes\n")?;
        for member in &self.members {
            let role = if member.voter { "" } else { " (learner)" };
            writeln!(f, "{}{role}", member.name)?;
        }
        writeln!(f, "\nRunning Nodes\n")?;
        for member in self.members.iter().filter(|member| member.running) {
            writeln!(f, "{}", member.name)?;
        }
        writeln!(f, "\nMetadata store\n")?;
        match &self.leader {
            Some(leader) => writeln!(f, "Leader: {leader}, term {}", self.term)?,
            None => writeln!(f, "Leader: none known (term {})", self.term)?,
        }
        writeln!(f, "\nNetwork Partitions\n")?;
        if self.partitions.is_empty() {
            writeln!(f, "(none)")?;
        } else {
            for node in &self.partitions {
                writeln!(f, "Node {} cannot communicate with {node}", self.node)?;
            }
        }
        writeln!(f, "\nAlarms\n")?;
        if self.alarms.is_empty() {
            writeln!(f, "(none)")?;
        } else {
            for alarm in &self.alarms {
                writeln!(f, "{alarm} alarm on node {}", self.node)?;
            }
        }
        write!(
            f,
            "\nPartition handling: {}{}",
            self.partition_handling,
            if self.paused {
                " (this node is paused: it is in a minority)"
            } else {
                ""
            }
        )
    }
}
