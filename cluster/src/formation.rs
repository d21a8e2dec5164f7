//! Cluster formation with a fixed list of peers (`classic_config`), and joining a named node.
//!
//! A node whose metadata group is already initialized (it has data) skips all this: Raft
//! reconnects it to the members it last knew, retrying as long as it runs. A blank node:
//!
//! ```text
//!  repeat: ask every listed peer for its status
//!          a peer in a cluster?  ─> ask it to add us, wait until caught up: joined
//!          we are the seed?      ─> form a cluster of one
//!          otherwise             ─> "Trying to join discovered peers failed. Will retry..."
//! ```
//!
//! The seed is the smallest name among the listed nodes and this one: every node computes the
//! same seed, and only the seed ever forms a cluster, so nodes started together form one
//! cluster, never two. A node that is not the seed waits for one to exist as long as it takes
//! (as RabbitMQ 4.1's Kubernetes backend does), logging every attempt.

use std::time::Duration;

use crate::control::{self, ControlRequest};
use crate::identity::NodeName;
use crate::raft::{RaftGroup, RaftGroupError};
use crate::transport::{Transport, TransportError};

/// How long a peer is given to answer a status request during formation.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a member is given to add a joining node (it waits for the node to catch up).
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How formation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formed {
    /// The node was already a member (it has data); Raft reconnects it.
    AlreadyMember,
    /// The node formed a new cluster (it is the seed, or has no peers).
    New,
    /// The node joined the cluster of this peer.
    Joined(NodeName),
}

/// Why joining failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The peer could not be asked.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The peer does not answer yet (down, or still starting).
    #[error("node {0} is not ready: {1}")]
    NotReady(NodeName, String),
    /// The peer is not in a cluster the node could join.
    #[error("node {0} is not a member of a cluster")]
    NotClustered(NodeName),
    /// The metadata group failed.
    #[error(transparent)]
    Group(#[from] RaftGroupError),
}

/// The seed among `peers` and `me`: the smallest name.
pub fn seed<'a>(me: &'a NodeName, peers: &'a [NodeName]) -> &'a NodeName {
    peers.iter().chain(std::iter::once(me)).min().unwrap_or(me)
}

/// Joins the cluster `peer` belongs to: asks it to add this node (Raft id `group.id()`) and
/// waits until this node has caught up with the metadata. `group` must be blank.
pub async fn join(
    transport: &Transport,
    group: &RaftGroup,
    peer: &NodeName,
) -> Result<(), JoinError> {
    let status = control::status(transport, peer, PROBE_TIMEOUT)
        .await
        .map_err(|error| JoinError::NotReady(peer.clone(), error.to_string()))?;
    if !status.initialized {
        return Err(JoinError::NotClustered(peer.clone()));
    }
    let request = ControlRequest::Join {
        id: group.id(),
        node: transport.node().to_string(),
    };
    control::call(transport, peer, &request, JOIN_TIMEOUT).await?;
    group.wait_caught_up(JOIN_TIMEOUT).await?;
    Ok(())
}

/// Forms or joins a cluster with the `peers` of `classic_config` (this node may be among them),
/// retrying every `interval`; after `retry_limit` attempts a node that is not the seed goes on
/// waiting for the seed, logging less often.
pub async fn classic_config(
    transport: &Transport,
    group: &RaftGroup,
    peers: &[NodeName],
    retry_limit: u32,
    interval: Duration,
) -> Result<Formed, RaftGroupError> {
    if has_data(group).await? {
        return Ok(Formed::AlreadyMember);
    }
    let me = transport.node().clone();
    let others: Vec<NodeName> = peers.iter().filter(|peer| **peer != me).cloned().collect();
    let seed = seed(&me, &others).clone();
    tracing::info!(
        "peer discovery (classic_config): {} peer(s) configured; the seed is {seed}",
        others.len()
    );
    let mut attempt: u32 = 0;
    loop {
        for peer in &others {
            match join(transport, group, peer).await {
                Ok(()) => {
                    tracing::info!("joined the cluster of {peer}");
                    return Ok(Formed::Joined(peer.clone()));
                }
                Err(JoinError::NotClustered(_)) => {}
                Err(JoinError::NotReady(_, reason)) => {
                    tracing::debug!("peer {peer} is not ready: {reason}");
                }
                Err(JoinError::Transport(TransportError::Failed { reason, .. })) => {
                    tracing::warn!("node {peer} refused to add this node: {reason}");
                }
                Err(error) => tracing::debug!("peer {peer}: {error}"),
            }
        }
        if seed == me {
            tracing::info!(
                "no configured peer is in a cluster and this node is the seed: forming a new cluster"
            );
            group.initialize_alone().await?;
            return Ok(Formed::New);
        }
        attempt += 1;
        wait_to_retry(attempt, retry_limit, interval, &seed).await;
    }
}

/// Whether the node already belongs to a cluster: then discovery is skipped, and Raft
/// reconnects it to the members it last knew.
pub(crate) async fn has_data(group: &RaftGroup) -> Result<bool, RaftGroupError> {
    let initialized = group.is_initialized().await?;
    if initialized {
        tracing::info!(
            "the node has data: rejoining the members it last knew, skipping peer discovery"
        );
    }
    Ok(initialized)
}

/// Logs a failed round as RabbitMQ does (each of the first `retry_limit`, then every 20th, since
/// a node that is not the seed never gives up) and waits `interval`.
pub(crate) async fn wait_to_retry(
    attempt: u32,
    retry_limit: u32,
    interval: Duration,
    seed: &NodeName,
) {
    let left = retry_limit.saturating_sub(attempt);
    if left > 0 {
        tracing::info!(
            "Trying to join discovered peers failed. Will retry after a delay of {} ms, {left} retries left...",
            interval.as_millis()
        );
    } else if (attempt - retry_limit).is_multiple_of(20) {
        tracing::warn!(
            "Trying to join discovered peers failed {attempt} times; still waiting for the seed node {seed} (only the seed forms the cluster)"
        );
    }
    tokio::time::sleep(interval).await;
}

/// The Kubernetes seed for `me`: the same name with the StatefulSet ordinal of the host's first
/// label replaced by `ordinal_start` (`warren@warren-2.warren-nodes.ns.svc.cluster.local` ->
/// `warren@warren-0.warren-nodes.ns.svc.cluster.local`), as RabbitMQ 4.1 derives it.
pub fn k8s_seed(me: &NodeName, ordinal_start: u32) -> Result<NodeName, String> {
    let host = me.host();
    let (first, rest) = host.split_at(host.find('.').unwrap_or(host.len()));
    let ordinal = first
        .rsplit_once('-')
        .filter(|(base, digits)| {
            !base.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .map(|(base, _)| base);
    let Some(base) = ordinal else {
        return Err(format!(
            "cluster_formation.k8s: the host '{host}' of node name '{me}' does not end in a \
             StatefulSet ordinal (pod-N); set cluster_formation.k8s.seed_node"
        ));
    };
    Ok(NodeName::new_unchecked(format!(
        "{}@{base}-{ordinal_start}{rest}",
        me.prefix()
    )))
}

/// Forms or joins with a known seed (Kubernetes): the seed forms a cluster at once; every other
/// node joins the seed, trying for as long as it takes, as RabbitMQ 4.1 does.
pub async fn seeded(
    transport: &Transport,
    group: &RaftGroup,
    seed: &NodeName,
    retry_limit: u32,
    interval: Duration,
) -> Result<Formed, RaftGroupError> {
    if has_data(group).await? {
        return Ok(Formed::AlreadyMember);
    }
    if seed == transport.node() {
        tracing::info!("this node is the seed ({seed}): forming a new cluster");
        group.initialize_alone().await?;
        return Ok(Formed::New);
    }
    tracing::info!("peer discovery (k8s): joining the seed node {seed}");
    let mut attempt: u32 = 0;
    loop {
        match join(transport, group, seed).await {
            Ok(()) => {
                tracing::info!("joined the cluster of {seed}");
                return Ok(Formed::Joined(seed.clone()));
            }
            Err(JoinError::Transport(TransportError::Failed { reason, .. })) => {
                tracing::warn!("the seed node {seed} refused to add this node: {reason}");
            }
            Err(error) => tracing::debug!("seed {seed}: {error}"),
        }
        attempt += 1;
        wait_to_retry(attempt, retry_limit, interval, seed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_agrees_on_the_seed() {
        let names: Vec<NodeName> = ["warren@c", "warren@a", "warren@b"]
            .into_iter()
            .map(NodeName::new_unchecked)
            .collect();
        for me in &names {
            assert_eq!(seed(me, &names).as_str(), "warren@a");
        }
        let lone = NodeName::new_unchecked("warren@z");
        assert_eq!(seed(&lone, &[]), &lone);
    }

    #[test]
    fn the_k8s_seed_is_the_pod_with_the_first_ordinal() {
        let pod = NodeName::new_unchecked("rabbit@warren-12.nodes.prod.svc.cluster.local");
        assert_eq!(
            k8s_seed(&pod, 0).unwrap().as_str(),
            "rabbit@warren-0.nodes.prod.svc.cluster.local"
        );
        assert_eq!(
            k8s_seed(&pod, 1).unwrap().as_str(),
            "rabbit@warren-1.nodes.prod.svc.cluster.local"
        );
        let short = NodeName::new_unchecked("warren@my-set-3");
        assert_eq!(k8s_seed(&short, 0).unwrap().as_str(), "warren@my-set-0");
        let error = k8s_seed(&NodeName::new_unchecked("warren@db.example"), 0).unwrap_err();
        assert!(error.contains("seed_node"), "{error}");
    }
}
