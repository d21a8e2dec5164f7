//! Clusters of in-process nodes for tests.
//!
//! ```no_run
//! # async fn example() {
//! let cluster = warren_testkit::TestCluster::builder().nodes(3).build().await;
//! let url = cluster.node(1).url(); // any node, any client
//! # let _ = url;
//! cluster.stop().await;
//! # }
//! ```
//!
//! Node `i` (from 0) is `warren@127.0.0.<10+i>` with long names; it listens for AMQP and for
//! peers on that address, on ports picked for it, so several clusters live in one process. Names
//! resolve through the cluster's own table, never through DNS, so clusters cannot reach each
//! other. All nodes share one secret and start at once with `classic_config` listing them all,
//! as three processes started together would. [`TestCluster::partition`] cuts links between
//! nodes, as a network partition would, and [`TestCluster::delay`] slows them (openraft's test
//! router is the model).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use warren_broker::{Broker, Node, NodeOptions};
use warren_cluster::NodeName;
use warren_cluster::control::{ClusterStatus, ControlRequest, ControlResponse};
use warren_config::{Config, DiscoveryBackend};

use crate::{TestBroker, temporary_dir};

type Table = Arc<RwLock<HashMap<NodeName, SocketAddr>>>;

/// One node of a [`TestCluster`].
#[derive(Debug)]
pub struct TestNode {
    node: Option<Node>,
    config: Config,
    address: SocketAddr,
}

impl TestNode {
    /// The AMQP URL (default user, `/` vhost).
    pub fn url(&self) -> String {
        format!(
            "amqp://{}:{}@{}/%2F",
            self.config.default_user, self.config.default_pass, self.address
        )
    }

    /// The AMQP listener's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The node's name.
    pub fn name(&self) -> NodeName {
        NodeName::new_unchecked(self.config.node_name.clone())
    }

    /// Whether the node runs.
    pub fn is_running(&self) -> bool {
        self.node.is_some()
    }

    /// The running node.
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("the test node is running")
    }

    /// The node's broker.
    pub fn broker(&self) -> Arc<Broker> {
        self.node().broker()
    }

    /// The cluster as this node sees it.
    pub async fn status(&self) -> ClusterStatus {
        self.node().cluster_status().await.expect("cluster status")
    }

    /// Runs a `warrenctl` command on this node.
    pub async fn control(&self, request: ControlRequest) -> Result<ControlResponse, String> {
        self.node().control(request).await
    }
}

/// Builds a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct TestClusterBuilder {
    nodes: usize,
    config: Config,
    names: Option<Vec<String>>,
    started: Option<Vec<usize>>,
    data_dirs: Vec<(usize, std::path::PathBuf)>,
}

impl TestClusterBuilder {
    /// How many nodes (default 3).
    pub fn nodes(mut self, count: usize) -> Self {
        self.nodes = count;
        self
    }

    /// Node names of your choosing (long names; they resolve through the cluster's table), e.g.
    /// StatefulSet pod names.
    pub fn names(mut self, names: &[&str]) -> Self {
        self.nodes = names.len();
        self.names = Some(names.iter().map(|name| name.to_string()).collect());
        self
    }

    /// Starts only these nodes in [`TestClusterBuilder::build`]; the others are configured and
    /// can be started later ([`TestCluster::start_in_background`]).
    pub fn start_only(mut self, indexes: &[usize]) -> Self {
        self.started = Some(indexes.to_vec());
        self
    }

    /// Changes every node's configuration.
    pub fn config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Node `index` keeps its data in `dir` (a small filesystem, say) instead of a fresh
    /// temporary directory.
    pub fn data_dir(mut self, index: usize, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dirs.push((index, dir.into()));
        self
    }

    /// Starts every node at once and waits until they form one cluster.
    pub async fn build(self) -> TestCluster {
        crate::init_logging();
        let table: Table = Arc::default();
        let secret = format!("test-cookie-{}", fastrand_u64());
        let mut configs = Vec::new();
        for index in 0..self.nodes {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + index as u8));
            let mut config = self.config.clone();
            config.node_name = match &self.names {
                Some(names) => names[index].clone(),
                None => format!("warren@{ip}"),
            };
            config.cluster.use_longname = true;
            config.cluster.interface = Some(ip);
            config.cluster.port = free_port(ip);
            // Below the ephemeral range (see `reserved_port`): a port the kernel picked for the
            // first start could be handed to an outgoing connection while the node restarts.
            let amqp_port = free_port(ip);
            config.listeners = vec![warren_config::ListenAddress::Socket(SocketAddr::new(
                ip, amqp_port,
            ))];
            config.management = Some(warren_config::ListenAddress::Socket(SocketAddr::new(ip, 0)));
            config.data_dir = self
                .data_dirs
                .iter()
                .find(|(at, _)| *at == index)
                .map_or_else(|| temporary_dir("cluster"), |(_, dir)| dir.clone());
            std::fs::create_dir_all(&config.data_dir).expect("data directory");
            write_cookie(&config.data_dir, &secret);
            table.write().expect("table").insert(
                NodeName::new_unchecked(config.node_name.clone()),
                SocketAddr::new(ip, config.cluster.port),
            );
            configs.push(config);
        }
        let names: Vec<String> = configs.iter().map(|c| c.node_name.clone()).collect();
        for config in &mut configs {
            if config.cluster.discovery == DiscoveryBackend::None {
                config.cluster.discovery = DiscoveryBackend::ClassicConfig(names.clone());
            }
            config.cluster.discovery_retry_interval = Duration::from_millis(100);
        }
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            table,
        };
        let started = self.started.clone();
        let starting: Vec<_> = configs
            .iter()
            .enumerate()
            .filter(|(index, _)| started.as_ref().is_none_or(|list| list.contains(index)))
            .map(|(_, config)| cluster.start_node(config.clone()))
            .collect();
        let mut running = join_all(starting).await.into_iter();
        cluster.nodes = configs
            .into_iter()
            .enumerate()
            .map(|(index, config)| {
                if started.as_ref().is_none_or(|list| list.contains(&index)) {
                    running.next().expect("one started node per listed index")
                } else {
                    let address = match config.listeners.first() {
                        Some(warren_config::ListenAddress::Socket(address)) => *address,
                        _ => SocketAddr::from(([127, 0, 0, 1], 0)),
                    };
                    TestNode {
                        node: None,
                        config,
                        address,
                    }
                }
            })
            .collect();
        cluster
    }
}

/// Nodes in one process forming one cluster.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<TestNode>,
    table: Table,
}

impl TestCluster {
    /// A builder: three nodes, test defaults.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            nodes: 3,
            config: TestBroker::default_config(),
            names: None,
            started: None,
            data_dirs: Vec::new(),
        }
    }

    fn options(&self) -> NodeOptions {
        let table = self.table.clone();
        NodeOptions {
            resolver: Some(Arc::new(move |name: &NodeName| {
                table.read().ok()?.get(name).copied()
            })),
        }
    }

    async fn start_node(&self, config: Config) -> TestNode {
        start(config, self.options()).await
    }

    /// Node `index` (from 0).
    pub fn node(&self, index: usize) -> &TestNode {
        &self.nodes[index]
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Stops node `index` gracefully (its data stays).
    pub async fn stop_node(&mut self, index: usize) {
        if let Some(node) = self.nodes[index].node.take() {
            node.shutdown(Duration::from_secs(5)).await;
        }
    }

    /// Starts node `index` (not running) in a task of its own, for a start that waits on other
    /// nodes; hand the result to [`TestCluster::adopt`].
    pub fn start_in_background(&self, index: usize) -> tokio::task::JoinHandle<TestNode> {
        let config = self.nodes[index].config.clone();
        let options = self.options();
        tokio::spawn(start(config, options))
    }

    /// Takes back a node started with [`TestCluster::start_in_background`].
    pub fn adopt(&mut self, index: usize, node: TestNode) {
        self.nodes[index] = node;
    }

    /// Starts node `index` again on its data.
    pub async fn restart_node(&mut self, index: usize) {
        self.stop_node(index).await;
        let config = self.nodes[index].config.clone();
        self.nodes[index] = self.start_node(config).await;
    }

    /// Starts node `index` on a blank data directory (keeping its secret) and without peer
    /// discovery: it comes back as a cluster of its own, as a node reset while it was cut off
    /// would, unknown to members that still count its earlier incarnation.
    pub async fn restart_node_blank(&mut self, index: usize) {
        self.stop_node(index).await;
        let mut config = self.nodes[index].config.clone();
        config.cluster.discovery = DiscoveryBackend::None;
        let secret = std::fs::read_to_string(config.data_dir.join(".erlang.cookie"))
            .expect("cookie of a stopped node");
        let _ = std::fs::remove_dir_all(&config.data_dir);
        std::fs::create_dir_all(&config.data_dir).expect("data directory");
        write_cookie(&config.data_dir, &secret);
        let mut restarted = self.start_node(config).await;
        restarted.config = self.nodes[index].config.clone();
        self.nodes[index] = restarted;
    }

    /// Cuts the links between every node of `a` and every node of `b`, both ways, until
    /// [`TestCluster::heal`].
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for &i in a {
            for &j in b {
                let (left, right) = (&self.nodes[i], &self.nodes[j]);
                if let (Some(left), Some(right)) = (&left.node, &right.node) {
                    left.transport().cut(right.name());
                    right.transport().cut(left.name());
                }
            }
        }
    }

    /// Delays everything between every node of `a` and every node of `b`, both ways, by `delay`
    /// (until [`TestCluster::heal`]).
    pub fn delay(&self, a: &[usize], b: &[usize], delay: Duration) {
        for &i in a {
            for &j in b {
                let (left, right) = (&self.nodes[i], &self.nodes[j]);
                if let (Some(left), Some(right)) = (&left.node, &right.node) {
                    left.transport().delay(right.name(), delay);
                    right.transport().delay(left.name(), delay);
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for node in self.nodes.iter().filter_map(|node| node.node.as_ref()) {
            node.transport().heal();
        }
    }

    /// Waits (at most `timeout`) until every running node sees the same leader and `members`
    /// members; panics with the last statuses otherwise.
    pub async fn wait_for_members(&self, members: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut statuses = Vec::new();
            for node in self.nodes.iter().filter(|node| node.is_running()) {
                statuses.push(node.status().await);
            }
            let leader = statuses.first().and_then(|status| status.leader.clone());
            let agreed = leader.is_some()
                && statuses.iter().all(|status| {
                    status.leader == leader
                        && status.members.len() == members
                        && status.members.iter().all(|member| member.voter)
                });
            if agreed {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("the cluster did not settle on {members} members: {statuses:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (at most `timeout`) until every running node knows queue `name` of `vhost`
    /// (metadata reaches the others as they apply it); panics otherwise.
    pub async fn wait_for_queue(&self, vhost: &str, name: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let known = |node: &TestNode| {
            node.broker()
                .vhost(vhost)
                .is_some_and(|found| found.queue(name.as_bytes()).is_some())
        };
        while !self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .all(known)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue '{name}' in vhost '{vhost}' did not reach every node within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every node and removes their data.
    pub async fn stop(mut self) {
        for index in 0..self.nodes.len() {
            self.stop_node(index).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(running) = &node.node {
                if let Some(broker) = running.try_broker() {
                    broker.shutdown.cancel();
                    broker.queues.stop.cancel();
                }
                running.transport().shutdown();
            }
            let _ = std::fs::remove_dir_all(&node.config.data_dir);
        }
    }
}

/// Starts a node of a cluster.
async fn start(mut config: Config, options: NodeOptions) -> TestNode {
    let node = Node::start_with(config.clone(), options)
        .await
        .expect("cluster node starts");
    let address = node.amqp_addresses()[0];
    // Restarts come back on the same address, whatever port the first start was given.
    config.listeners = vec![warren_config::ListenAddress::Socket(address)];
    TestNode {
        node: Some(node),
        config,
        address,
    }
}

fn write_cookie(dir: &std::path::Path, secret: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let path: PathBuf = dir.join(".erlang.cookie");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("cookie file");
    std::io::Write::write_all(&mut file, secret.as_bytes()).expect("cookie written");
}

/// A port free on `ip` now, for a node started later.
fn free_port(ip: IpAddr) -> u16 {
    crate::reserved_port(&[ip])
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}

/// Runs futures concurrently and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futures: Vec<F> = futures.into_iter().collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (index, future) in pinned.iter_mut().enumerate() {
            if outputs[index].is_some() {
                continue;
            }
            match future.as_mut().poll(cx) {
                std::task::Poll::Ready(output) => outputs[index] = Some(output),
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("polled to completion"))
        .collect()
}
