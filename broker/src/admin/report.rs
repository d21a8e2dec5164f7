//! What each node tells the others of itself for the management API: its resources, the
//! counters of the queues it runs, its connections, channels and consumers. Any node can
//! then answer for the whole cluster with one request per node, however many queues there are.
//!
//! ```text
//!  HTTP request on A ─> gather: A's own report + ADMIN_SERVICE request to B, C (in parallel,
//!                       bounded wait) ─> merge: a queue's numbers from the node that runs it
//!                       (a classic queue's home, a quorum queue's leader, else any member)
//! ```
//!
//! Reports travel as JSON: they are read by the HTTP API as JSON anyway, and carry rows whose
//! shape the owning node decides (its connections' fields).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warren_cluster::NodeName;
use warren_cluster::transport::{BoxFuture, Service};

use crate::broker::Broker;
use crate::queue::counters::{CountersSnapshot, Totals};
use crate::server::NodeShared;

/// The transport service answering report requests.
pub const ADMIN_SERVICE: u16 = 16;

/// How long a node's report is waited for.
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// One node's resources.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeResources {
    pub mem_used: u64,
    pub mem_limit: u64,
    pub mem_alarm: bool,
    pub disk_free: u64,
    pub disk_free_limit: u64,
    pub disk_free_alarm: bool,
    pub fd_used: u64,
    pub fd_total: u64,
    pub processors: u64,
    pub os_pid: u32,
    /// Milliseconds since the node started.
    pub uptime: u64,
    /// `(protocol, address)` of each listener.
    pub listeners: Vec<(String, String)>,
}

/// A queue's counters, as the node running it reads them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueReading {
    pub id: u64,
    /// Whether this node's reading is the queue's own (its home, or its group's leader).
    pub authoritative: bool,
    pub ready: u64,
    pub unacknowledged: u64,
    pub ready_bytes: u64,
    pub consumers: u64,
    pub published: u64,
    pub delivered: u64,
    pub acknowledged: u64,
    pub redelivered: u64,
}

impl QueueReading {
    fn new(id: u64, authoritative: bool, counters: CountersSnapshot) -> QueueReading {
        QueueReading {
            id,
            authoritative,
            ready: counters.ready,
            unacknowledged: counters.unacknowledged,
            ready_bytes: counters.ready_bytes,
            consumers: counters.consumers,
            published: counters.totals.published,
            delivered: counters.totals.delivered,
            acknowledged: counters.totals.acknowledged,
            redelivered: counters.totals.redelivered,
        }
    }

    /// The counters again.
    pub fn counters(&self) -> CountersSnapshot {
        CountersSnapshot {
            ready: self.ready,
            unacknowledged: self.unacknowledged,
            ready_bytes: self.ready_bytes,
            consumers: self.consumers,
            totals: Totals {
                published: self.published,
                delivered: self.delivered,
                acknowledged: self.acknowledged,
                redelivered: self.redelivered,
            },
        }
    }
}

/// What one node reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's name.
    pub node: String,
    /// Whether it answered (false: the rest is empty).
    pub running: bool,
    pub resources: NodeResources,
    /// The queues it runs or holds a member of.
    pub queues: Vec<QueueReading>,
    /// Its connections, channels and consumers, as the management API shows them.
    pub connections: Vec<serde_json::Value>,
    pub channels: Vec<serde_json::Value>,
    pub consumers: Vec<serde_json::Value>,
}

/// What a node asks another besides its report (an empty request).
#[derive(Debug, Serialize, Deserialize)]
enum AdminRequest {
    /// Close a connection of yours.
    Close { name: String, reason: String },
}

/// Closes the connection named `name` on whichever node has it; false when none has.
pub(crate) async fn close_connection(
    node: &Arc<NodeShared>,
    broker: &Arc<Broker>,
    name: &str,
    reason: &str,
) -> bool {
    if let Some(entry) = broker.admin.connection(name) {
        return entry.close(reason);
    }
    let request = AdminRequest::Close {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let Ok(body) = serde_json::to_vec(&request) else {
        return false;
    };
    for member in members(node, broker).iter().skip(1) {
        let peer = NodeName::new_unchecked(member.clone());
        let answer = node
            .transport
            .request_within(
                &peer,
                ADMIN_SERVICE,
                Bytes::from(body.clone()),
                REPORT_TIMEOUT,
            )
            .await;
        if answer.is_ok_and(|answer| answer.as_ref() == b"true") {
            return true;
        }
    }
    false
}

/// Answers other nodes' report requests.
pub(crate) struct AdminService {
    node: Weak<NodeShared>,
}

impl AdminService {
    pub(crate) fn new(node: Weak<NodeShared>) -> AdminService {
        AdminService { node }
    }
}

impl Service for AdminService {
    fn request(&self, _from: NodeName, body: Bytes) -> BoxFuture<Result<Bytes, String>> {
        let node = self.node.clone();
        Box::pin(async move {
            let node = node.upgrade().ok_or("the node is stopping")?;
            let broker = node
                .broker()
                .ok_or("the node is restarting (a join or reset is under way)")?;
            if body.is_empty() {
                let report = local_report(&node, &broker);
                return serde_json::to_vec(&report)
                    .map(Bytes::from)
                    .map_err(|error| error.to_string());
            }
            let request: AdminRequest =
                serde_json::from_slice(&body).map_err(|error| error.to_string())?;
            let closed = match request {
                AdminRequest::Close { name, reason } => broker
                    .admin
                    .connection(&name)
                    .is_some_and(|entry| entry.close(&reason)),
            };
            Ok(Bytes::from(if closed { "true" } else { "false" }))
        })
    }

    fn message(&self, _from: NodeName, _body: Bytes) {}
}

/// Open file descriptors and their limit, from /proc.
fn file_descriptors() -> (u64, u64) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count() as u64);
    let total = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3))
                .and_then(|soft| soft.parse().ok())
        })
        .unwrap_or(0);
    (used, total)
}

/// This node's report.
pub(crate) fn local_report(node: &NodeShared, broker: &Broker) -> NodeReport {
    let alarms = broker.alarms.local();
    let (fd_used, fd_total) = file_descriptors();
    let resources = NodeResources {
        mem_used: crate::alarms::resident_memory().unwrap_or(0),
        mem_limit: broker.alarms.memory_limit(),
        mem_alarm: alarms.memory,
        disk_free: crate::alarms::free_disk(&broker.config.data_dir).unwrap_or(0),
        disk_free_limit: broker.alarms.disk_limit(),
        disk_free_alarm: alarms.disk,
        fd_used,
        fd_total,
        processors: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        os_pid: std::process::id(),
        uptime: broker.started().elapsed().as_millis() as u64,
        listeners: node
            .listeners()
            .into_iter()
            .map(|listener| (listener.protocol.to_string(), listener.address.to_string()))
            .collect(),
    };
    let me = broker.node().as_str();
    let mut queues = Vec::new();
    for name in broker.vhost_names() {
        let Some(vhost) = broker.vhost(&name) else {
            continue;
        };
        for queue in vhost.queues() {
            let authoritative = if queue.config.quorum {
                queue.counters.is_leader()
            } else {
                queue.home.is_none()
            };
            let holds = authoritative || (queue.config.quorum && broker.quorum().holds(queue.id()));
            if holds {
                queues.push(QueueReading::new(
                    queue.id(),
                    authoritative,
                    queue.counters.load(),
                ));
            }
        }
    }
    let mut connections = Vec::new();
    let mut channels = Vec::new();
    let mut consumers = Vec::new();
    for entry in broker.admin.connections() {
        let summaries = entry.channels();
        connections.push(super::rows::connection(me, &entry, summaries.len()));
        for summary in &summaries {
            channels.push(super::rows::channel(me, &entry, summary));
            for consumer in &summary.consumers {
                consumers.push(super::rows::consumer(me, &entry, summary, consumer));
            }
        }
    }
    NodeReport {
        node: me.to_string(),
        running: true,
        resources,
        queues,
        connections,
        channels,
        consumers,
    }
}

/// The cluster's members, this node first.
pub(crate) fn members(node: &NodeShared, broker: &Broker) -> Vec<String> {
    let me = node.transport.node().to_string();
    let mut names = vec![me.clone()];
    if let Some(group) = broker.metadata_group() {
        let mut others: Vec<String> = group
            .status()
            .members
            .into_iter()
            .map(|member| member.name)
            .filter(|name| *name != me)
            .collect();
        others.sort();
        names.extend(others);
    }
    names
}

/// Every member's report: this node's, and each other's (not running when it does not answer
/// in time).
pub(crate) async fn gather(node: &Arc<NodeShared>, broker: &Arc<Broker>) -> Vec<NodeReport> {
    let names = members(node, broker);
    let mut reports = vec![local_report(node, broker)];
    // Asked at once: waiting for each in turn would add up the timeouts of unreachable nodes.
    let mut asks = tokio::task::JoinSet::new();
    for name in names.iter().skip(1) {
        let transport = node.transport.clone();
        let name = name.clone();
        asks.spawn(async move {
            let peer = NodeName::new_unchecked(name.clone());
            let answer = transport
                .request_within(&peer, ADMIN_SERVICE, Bytes::new(), REPORT_TIMEOUT)
                .await;
            match answer
                .ok()
                .and_then(|body| serde_json::from_slice::<NodeReport>(&body).ok())
            {
                Some(report) => report,
                None => NodeReport {
                    node: name,
                    running: false,
                    ..NodeReport::default()
                },
            }
        });
    }
    let mut others = Vec::new();
    while let Some(report) = asks.join_next().await {
        if let Ok(report) = report {
            others.push(report);
        }
    }
    others.sort_by(|a, b| a.node.cmp(&b.node));
    reports.extend(others);
    reports
}

/// Each queue's counters across the reports: the authoritative reading when one node has it,
/// else the first member's.
pub(crate) fn queue_counters(reports: &[NodeReport]) -> HashMap<u64, CountersSnapshot> {
    let mut merged: HashMap<u64, QueueReading> = HashMap::new();
    for reading in reports.iter().flat_map(|report| report.queues.iter()) {
        match merged.get(&reading.id) {
            Some(known) if known.authoritative || !reading.authoritative => {}
            _ => {
                merged.insert(reading.id, *reading);
            }
        }
    }
    merged
        .into_iter()
        .map(|(id, reading)| (id, reading.counters()))
        .collect()
}

/// The cluster's name: the `cluster_name` global parameter, else the configured
/// `cluster_name`, else the first member's name in order (what every member agrees on).
pub(crate) fn cluster_name(node: &NodeShared, broker: &Broker) -> String {
    if let Some(name) = broker
        .global_parameter("cluster_name")
        .and_then(|json| serde_json::from_str::<String>(&json).ok())
    {
        return name;
    }
    if let Some(name) = node.config.cluster.name.clone() {
        return name;
    }
    members(node, broker)
        .into_iter()
        .min()
        .unwrap_or_else(|| node.transport.node().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(id: u64, authoritative: bool, ready: u64) -> QueueReading {
        QueueReading {
            id,
            authoritative,
            ready,
            ..QueueReading::default()
        }
    }

    #[test]
    fn a_queue_counts_as_the_node_running_it_reads_it() {
        let reports = vec![
            NodeReport {
                node: "a".into(),
                running: true,
                queues: vec![reading(1, false, 3), reading(2, true, 7)],
                ..NodeReport::default()
            },
            NodeReport {
                node: "b".into(),
                running: true,
                queues: vec![
                    reading(1, true, 5),
                    reading(2, false, 6),
                    reading(3, false, 1),
                ],
                ..NodeReport::default()
            },
        ];
        let merged = queue_counters(&reports);
        assert_eq!(
            merged[&1].ready, 5,
            "the leader's reading wins over a follower's"
        );
        assert_eq!(merged[&2].ready, 7);
        assert_eq!(merged[&3].ready, 1, "without a leader, a member's reading");
    }
}
