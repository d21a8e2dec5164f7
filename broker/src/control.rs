//! The node's side of the control protocol: `warrenctl` commands and the requests of joining
//! nodes.
//!
//! ```text
//!  Status       metadata group status + live links + alarms ─> ClusterStatus
//!  Join         (from a joining node) add it to the metadata group, through the leader
//!  ForgetNode   remove a stopped member from the metadata group
//!  JoinCluster  leave the current cluster, drop this node's data, join the named node's cluster
//!  Reset        leave the current cluster, drop this node's data, start again alone
//!  QuorumCritical  what would lose its majority if this node stopped
//!  AddMember, DeleteMember, Grow, Shrink   where quorum queues' members are (membership.rs)
//!  ListQueues   the queues of a vhost, with their type, leader, members (membership.rs)
//! ```

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use warren_cluster::NodeName;
use warren_cluster::control::{
    self, ClusterStatus, ControlRequest, ControlResponse, HealthReport, MemberStatus,
    QuorumCritical, QuorumCriticalReport, decode, encode,
};
use warren_cluster::transport::{BoxFuture, Service};
use warren_config::DiscoveryBackend;

use crate::broker::{Broker, Formation};
use crate::membership;
use crate::server::NodeShared;

/// How long a peer gets to say which nodes it sees, for a status.
const LINKS_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers control requests for one node.
pub(crate) struct ControlService {
    node: Weak<NodeShared>,
}

impl ControlService {
    pub(crate) fn new(node: Weak<NodeShared>) -> ControlService {
        ControlService { node }
    }
}

impl Service for ControlService {
    fn request(&self, from: NodeName, body: Bytes) -> BoxFuture<Result<Bytes, String>> {
        let node = self.node.clone();
        Box::pin(async move {
            let node = node.upgrade().ok_or("the node is stopping")?;
            let request: ControlRequest = decode(&body)?;
            let response = handle(&node, from, request).await?;
            Ok(encode(&response))
        })
    }

    fn message(&self, _from: NodeName, _body: Bytes) {}
}

pub(crate) async fn handle(
    node: &NodeShared,
    from: NodeName,
    request: ControlRequest,
) -> Result<ControlResponse, String> {
    match request {
        ControlRequest::Status => Ok(ControlResponse::Status(status(node).await?)),
        ControlRequest::HealthCheck => Ok(ControlResponse::Health(health(node).await)),
        ControlRequest::QuorumCritical => Ok(ControlResponse::QuorumCritical(
            quorum_critical(node).await?,
        )),
        ControlRequest::Links => Ok(ControlResponse::Links(
            node.transport
                .connected()
                .into_iter()
                .map(|name| name.to_string())
                .collect(),
        )),
        ControlRequest::Join { id, node: joining } => {
            let broker = running(node)?;
            let group = broker
                .metadata_group()
                .ok_or("the metadata store is not running")?;
            tracing::info!("node {joining} asks to join the cluster (through {from})");
            group
                .add_member(id, &NodeName::new_unchecked(joining.clone()))
                .await
                .map_err(|error| error.to_string())?;
            tracing::info!("node {joining} joined the cluster");
            Ok(ControlResponse::Done(format!("added {joining}")))
        }
        ControlRequest::ForgetNode {
            node: target,
            offline: false,
        } => forget(node, &target).await,
        ControlRequest::ForgetNode {
            node: target,
            offline: true,
        } => forget_offline(node, &target).await,
        ControlRequest::JoinCluster { node: target } => join_cluster(node, &target).await,
        ControlRequest::Reset => reset(node).await,
        ControlRequest::AddMember {
            vhost,
            queue,
            node: on,
        } => {
            let broker = running(node)?;
            membership::add_member(node, &broker, &vhost, &queue, &on).await?;
            Ok(ControlResponse::Done(String::new()))
        }
        ControlRequest::DeleteMember {
            vhost,
            queue,
            node: on,
        } => {
            let broker = running(node)?;
            membership::delete_member(&broker, &vhost, &queue, &on).await?;
            Ok(ControlResponse::Done(String::new()))
        }
        ControlRequest::Grow {
            node: on,
            even,
            vhost_pattern,
            queue_pattern,
        } => {
            let broker = running(node)?;
            let rows =
                membership::grow(node, &broker, &on, even, &vhost_pattern, &queue_pattern).await?;
            Ok(ControlResponse::MemberChanges(rows))
        }
        ControlRequest::ListQueues { vhost, columns } => {
            let broker = running(node)?;
            let (columns, rows) = membership::list_queues(node, &broker, &vhost, &columns).await?;
            Ok(ControlResponse::Table { columns, rows })
        }
        ControlRequest::Rebalance {
            vhost_pattern,
            queue_pattern,
        } => {
            let broker = running(node)?;
            let (columns, rows) =
                membership::rebalance(node, &broker, &vhost_pattern, &queue_pattern).await?;
            Ok(ControlResponse::Table { columns, rows })
        }
        ControlRequest::Shrink { node: on } => {
            let broker = running(node)?;
            Ok(ControlResponse::MemberChanges(
                membership::shrink(&broker, &on).await,
            ))
        }
    }
}

fn running(node: &NodeShared) -> Result<std::sync::Arc<Broker>, String> {
    node.broker()
        .ok_or_else(|| "the node is restarting (a join or reset is under way)".to_string())
}

/// The health check (the seeds' `cluster_health_check_report`): the node runs and serves
/// clients, is clustered with the seed its discovery backend names, and sees no partition.
pub(crate) async fn health(node: &NodeShared) -> HealthReport {
    let me = node.transport.node().to_string();
    let current = match status(node).await {
        Ok(current) => current,
        Err(error) => {
            return HealthReport {
                node: me,
                seed: None,
                problems: vec![error],
            };
        }
    };
    let mut problems = Vec::new();
    if !current.initialized {
        problems.push("the node is not a member of any cluster yet".to_string());
    }
    if current.paused {
        problems.push(
            "the node is paused (cluster_partition_handling = pause_minority): it cannot reach \
             a majority of the cluster"
                .to_string(),
        );
    }
    for partitioned in &current.partitions {
        problems.push(format!("partitioned from {partitioned}"));
    }
    if current.leader.is_none() {
        problems.push("the metadata store has no leader".to_string());
    }
    let mut seed = None;
    if let Ok(broker) = running(node)
        && let Some(group) = broker.metadata_group()
    {
        if let Some(discovery) = broker.discovery() {
            let (named, seed_problems) = discovery.check_seed(group).await;
            seed = named;
            problems.extend(seed_problems);
        } else if let Some(named) = configured_seed(node) {
            if !current.members.iter().any(|member| member.name == named) {
                problems.push(format!(
                    "not clustered with {named}, the seed node of the {} configuration",
                    node.config.cluster.discovery.name()
                ));
            }
            seed = Some(named);
        }
    }
    HealthReport {
        node: me,
        seed,
        problems,
    }
}

/// The metadata store, as `check_if_node_is_quorum_critical` names it (RabbitMQ 4's name for
/// its own Raft metadata store).
const METADATA_STORE: &str = "rabbitmq_metadata";

/// `check_if_node_is_quorum_critical`: the quorum queues with a member on this node, and the
/// metadata store, that have no more than a bare majority of their members on running nodes,
/// so that stopping this node would leave them without one. RabbitMQ counts the same way
/// (`online <= members / 2 + 1`): a queue of one member here is critical too.
pub(crate) async fn quorum_critical(node: &NodeShared) -> Result<QuorumCriticalReport, String> {
    let current = status(node).await?;
    if current.members.len() <= 1 {
        return Ok(QuorumCriticalReport {
            node: current.node,
            single_node: true,
            critical: Vec::new(),
        });
    }
    let bare = |members: usize, online: usize| members > 0 && online <= members / 2 + 1;
    let online: std::collections::HashSet<&str> = current
        .members
        .iter()
        .filter(|member| member.running)
        .map(|member| member.name.as_str())
        .collect();
    let mut critical = Vec::new();
    let voters = current.members.iter().filter(|member| member.voter);
    let voters_online = voters.clone().filter(|member| member.running).count();
    if bare(voters.count(), voters_online) {
        critical.push(QuorumCritical {
            readable_name: METADATA_STORE.into(),
            name: METADATA_STORE.into(),
            virtual_host: "-".into(),
            kind: "process".into(),
        });
    }
    let broker = running(node)?;
    for vhost in broker.vhost_names() {
        let Some(queues) = broker.vhost(&vhost).map(|vhost| vhost.queues()) else {
            continue;
        };
        for queue in queues.iter().filter(|queue| queue.config.quorum) {
            // None: this node holds no member of it.
            let Some(group) = broker.quorum().group_status(queue.id()).await else {
                continue;
            };
            let up = group
                .members
                .iter()
                .filter(|member| online.contains(member.as_str()))
                .count();
            if bare(group.members.len(), up) {
                critical.push(QuorumCritical {
                    readable_name: format!("queue '{}' in vhost '{vhost}'", queue.name),
                    name: queue.name.to_string(),
                    virtual_host: vhost.clone(),
                    kind: "quorum".into(),
                });
            }
        }
    }
    Ok(QuorumCriticalReport {
        node: current.node,
        single_node: false,
        critical,
    })
}

/// The seed the `classic_config` or `k8s` settings name (the backends without a service).
fn configured_seed(node: &NodeShared) -> Option<String> {
    let cluster = &node.config.cluster;
    let me = node.transport.node();
    let seed = match &cluster.discovery {
        DiscoveryBackend::ClassicConfig(nodes) => {
            let peers = crate::broker::classic_peers(cluster, nodes).ok()?;
            warren_cluster::formation::seed(me, &peers).clone()
        }
        DiscoveryBackend::K8s => crate::broker::k8s_seed(cluster, me).ok()?,
        _ => return None,
    };
    Some(seed.to_string())
}

/// Whether node `name` runs: this node, or one that answers a control request in time.
pub(crate) async fn is_running(node: &NodeShared, name: &str) -> bool {
    let name = NodeName::new_unchecked(name.to_string());
    name == *node.transport.node()
        || control::call(
            &node.transport,
            &name,
            &ControlRequest::Links,
            LINKS_TIMEOUT,
        )
        .await
        .is_ok()
}

/// The cluster as this node sees it.
pub(crate) async fn status(node: &NodeShared) -> Result<ClusterStatus, String> {
    let broker = running(node)?;
    let group = broker
        .metadata_group()
        .ok_or("the metadata store is not running")?;
    let me = node.transport.node().clone();
    let raft = group.status();
    // Every member is asked, even over a live link (one to a node that just stopped may not
    // have noticed yet; followers only talk to the leader, so there may be no link): a member runs
    // if it answers.
    let mut members = Vec::with_capacity(raft.members.len());
    for member in &raft.members {
        let running = is_running(node, &member.name).await;
        members.push(MemberStatus {
            name: member.name.clone(),
            id: member.id,
            voter: member.voter,
            running,
        });
    }
    // A member this node cannot reach is partitioned from it if another member can reach it;
    // otherwise it is simply down.
    let unreachable: Vec<&MemberStatus> = members.iter().filter(|m| !m.running).collect();
    let mut partitions = Vec::new();
    if !unreachable.is_empty() {
        for peer in members
            .iter()
            .filter(|m| m.running && m.name != me.as_str())
        {
            let peer = NodeName::new_unchecked(peer.name.clone());
            let Ok(ControlResponse::Links(links)) = control::call(
                &node.transport,
                &peer,
                &ControlRequest::Links,
                LINKS_TIMEOUT,
            )
            .await
            else {
                continue;
            };
            for member in &unreachable {
                if links.contains(&member.name) && !partitions.contains(&member.name) {
                    partitions.push(member.name.clone());
                }
            }
        }
    }
    let alarms = broker.alarms.local();
    let alarms = [("memory", alarms.memory), ("disk", alarms.disk)]
        .into_iter()
        .filter(|(_, raised)| *raised)
        .map(|(name, _)| name.to_string())
        .collect();
    let cluster_name = node.config.cluster.name.clone().unwrap_or_else(|| {
        members
            .iter()
            .map(|member| member.name.clone())
            .min()
            .unwrap_or_else(|| me.to_string())
    });
    Ok(ClusterStatus {
        node: me.to_string(),
        cluster_name,
        initialized: raft.initialized,
        members,
        leader: raft.leader.map(|leader| leader.name),
        term: raft.term,
        partitions,
        alarms,
        partition_handling: node.config.cluster.partition_handling.name().to_string(),
        paused: node.paused.load(std::sync::atomic::Ordering::Acquire),
    })
}

/// Removes `target` from the cluster, as `rabbitmqctl forget_cluster_node` does: refused for
/// this node itself and for a member that is running.
async fn forget(node: &NodeShared, target: &str) -> Result<ControlResponse, String> {
    let _lifecycle = node.lifecycle().await;
    let broker = running(node)?;
    let group = broker
        .metadata_group()
        .ok_or("the metadata store is not running")?;
    let me = node.transport.node();
    if target == me.as_str() {
        return Err(format!(
            "cannot forget node {me} from itself: run 'warrenctl reset' on it, or forget it from another member"
        ));
    }
    let status = group.status();
    let targets: Vec<u64> = status
        .members
        .iter()
        .filter(|member| member.name == target)
        .map(|member| member.id)
        .collect();
    if targets.is_empty() {
        return Err(format!("node {target} is not a member of this cluster"));
    }
    let target_name = NodeName::new_unchecked(target);
    if node.transport.is_connected(&target_name)
        && control::status(&node.transport, &target_name, LINKS_TIMEOUT)
            .await
            .is_ok_and(|theirs| {
                theirs
                    .members
                    .iter()
                    .any(|member| targets.contains(&member.id) && member.name == target)
            })
    {
        return Err(format!(
            "node {target} is running: stop it first, or run 'warrenctl reset' on it"
        ));
    }
    // Its quorum queue members go first, while the directory still knows where they were
    // (RabbitMQ's CLI shrinks them the same way).
    let failed: Vec<String> = membership::shrink(&broker, target)
        .await
        .into_iter()
        .filter(|row| row.result != "ok")
        .map(|row| {
            format!(
                "queue '{}' in vhost '{}' ({})",
                row.name, row.vhost, row.result
            )
        })
        .collect();
    for id in targets {
        group
            .remove_member(id)
            .await
            .map_err(|error| format!("cannot remove {target}: {error}"))?;
    }
    tracing::info!("node {target} was removed from the cluster");
    if !failed.is_empty() {
        return Err(format!(
            "node {target} was removed from the cluster, but its members of these quorum \
             queues were not: {}",
            failed.join(", ")
        ));
    }
    Ok(ControlResponse::Done(format!(
        "Removing node {target} from the cluster"
    )))
}

/// `forget_cluster_node --offline`: when the cluster's majority is gone for good, the members
/// this node can still reach become the cluster without `target`, by a membership change no
/// majority agreed to (Raft's unsafe recovery). Refused while a majority is reachable, and for
/// a member that answers.
async fn forget_offline(node: &NodeShared, target: &str) -> Result<ControlResponse, String> {
    let _lifecycle = node.lifecycle().await;
    let current = status(node).await?;
    let me = node.transport.node().to_string();
    if target == me {
        return Err(format!("cannot forget node {me} from itself"));
    }
    let Some(forgotten) = current.members.iter().find(|member| member.name == target) else {
        return Err(format!("node {target} is not a member of this cluster"));
    };
    let voters: Vec<&MemberStatus> = current.members.iter().filter(|m| m.voter).collect();
    let reachable = voters.iter().filter(|member| member.running).count();
    if reachable * 2 > voters.len() {
        return Err(
            "a majority of the cluster is reachable: use forget_cluster_node without --offline"
                .into(),
        );
    }
    if forgotten.running {
        return Err(format!(
            "node {target} is running: stop it first, or run 'warrenctl reset' on it"
        ));
    }
    let remaining: std::collections::BTreeMap<u64, String> = current
        .members
        .iter()
        .filter(|member| member.voter && member.name != target)
        .map(|member| (member.id, member.name.clone()))
        .collect();
    tracing::warn!(
        "forget_cluster_node --offline {target}: making {:?} the cluster without a majority's \
         agreement (unsafe recovery)",
        remaining.values().collect::<Vec<_>>()
    );
    node.restart_with_log(move |log| async move {
        log.force_membership(remaining)
            .await
            .map_err(|error| error.to_string())
    })
    .await?;
    Ok(ControlResponse::Done(format!(
        "Removing node {target} from the cluster (offline)"
    )))
}

/// Takes this node out of its cluster, if it shares it with other members.
async fn leave(node: &NodeShared, broker: &Broker) -> Result<(), String> {
    let group = broker
        .metadata_group()
        .ok_or("the metadata store is not running")?;
    let status = group.status();
    let me = node.transport.node();
    if status.members.iter().all(|member| member.id == status.id) {
        return Ok(());
    }
    tracing::info!("leaving the cluster");
    group.remove_member(status.id).await.map_err(|error| {
        format!(
            "cannot leave the cluster: {error}; when the other members are gone for good, forget \
             this node from one of them with 'warrenctl forget_cluster_node {me}'"
        )
    })
}

/// `warrenctl join_cluster`: this node leaves its cluster, drops its metadata and messages, and
/// joins the cluster `target` belongs to.
async fn join_cluster(node: &NodeShared, target: &str) -> Result<ControlResponse, String> {
    let _lifecycle = node.lifecycle().await;
    let broker = running(node)?;
    let me = node.transport.node().clone();
    let target = NodeName::parse(target, true, "")
        .or_else(|_| NodeName::parse(target, false, ""))
        .map_err(|error| error.to_string())?;
    if target == me {
        return Err(format!("node {me} cannot join a cluster through itself"));
    }
    let theirs = control::status(&node.transport, &target, LINKS_TIMEOUT)
        .await
        .map_err(|error| format!("cannot join {target}: {error}"))?;
    if !theirs.initialized {
        return Err(format!("node {target} is not part of a cluster yet"));
    }
    let my_id = broker.metadata_group().map(|group| group.id());
    if theirs
        .members
        .iter()
        .any(|member| Some(member.id) == my_id && member.name == me.as_str())
    {
        return Ok(ControlResponse::Done(format!(
            "The node is already a member of this cluster ({target})"
        )));
    }
    leave(node, &broker).await?;
    drop(broker);
    tracing::warn!(
        "joining the cluster of {target}: this node drops its own metadata and messages, as \
         'rabbitmqctl join_cluster' does"
    );
    node.restart_blank(Formation::Join(target.clone())).await?;
    Ok(ControlResponse::Done(format!(
        "Clustering node {me} with {target}"
    )))
}

/// `warrenctl reset`: this node leaves its cluster and starts again blank, alone.
async fn reset(node: &NodeShared) -> Result<ControlResponse, String> {
    let _lifecycle = node.lifecycle().await;
    let broker = running(node)?;
    let me = node.transport.node().clone();
    leave(node, &broker).await?;
    drop(broker);
    tracing::warn!("resetting: this node drops its metadata and messages and starts blank");
    node.restart_blank(Formation::Alone).await?;
    Ok(ControlResponse::Done(format!("Resetting node {me}")))
}
