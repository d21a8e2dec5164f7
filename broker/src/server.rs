//! Starting and stopping a node: listeners, the accept loop, graceful shutdown.
//!
//! A node is its name, its inter-node transport (port 25672) and a current incarnation: a
//! broker on the data directory with its AMQP listeners. Joining a cluster or a reset replaces
//! the incarnation (the data directory is emptied in between), keeping the rest.
//!
//! Shutdown: the broker's cancellation token tells every connection to close with 320
//! CONNECTION_FORCED; the task tracker lets [`Node::shutdown`] wait until they have.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use warren_cluster::control::{CONTROL_SERVICE, ClusterStatus, ControlRequest, ControlResponse};
use warren_cluster::discovery::dns::Dns;
use warren_cluster::identity::{NameError, local_host};
use warren_cluster::secret::COOKIE_FILE;
use warren_cluster::transport::Resolver;
use warren_cluster::{NodeName, Secret, Transport, TransportConfig};
use warren_config::{Config, DiscoveryBackend, ListenAddress, PartitionHandling};

use crate::broker::{Broker, Formation, SetupError};
use crate::connection;
use crate::store::Store;
use warren_cluster::raft::log::RaftLog;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {address} ({key}): {source}")]
    Listen {
        /// The address.
        address: String,
        /// The setting that names it.
        key: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The node name is not usable.
    #[error("node name: {0}")]
    Name(#[from] NameError),
    /// The cluster secret could not be read or made.
    #[error("cluster secret: {0}")]
    Secret(String),
    /// The configuration could not be applied.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The definitions `load_definitions` names could not be imported.
    #[error("load_definitions: {0}")]
    Definitions(String),
}

/// Settings that do not come from the configuration: for embedders and tests.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Finds peers' inter-node addresses by name, instead of resolving their host names (nodes
    /// of a test cluster on one address and several ports).
    pub resolver: Option<Resolver>,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("resolver", &self.resolver.is_some())
            .finish()
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    shared: Arc<NodeShared>,
}

/// What outlives the node's incarnations: a node that joins a cluster or is reset stops its
/// broker, drops its data and starts a new one, keeping its name, its inter-node listener and
/// its AMQP addresses.
#[derive(Debug)]
pub(crate) struct NodeShared {
    pub(crate) config: Config,
    pub(crate) transport: Transport,
    current: parking_lot::Mutex<Option<Running>>,
    /// Serializes joins, resets and shutdown.
    lifecycle: tokio::sync::Mutex<()>,
    /// Whether `pause_minority` has closed the client listeners.
    pub(crate) paused: std::sync::atomic::AtomicBool,
    /// The management HTTP listener's address, and what stops it.
    management: Option<SocketAddr>,
    management_stop: CancellationToken,
}

/// One incarnation: a broker and its AMQP listeners.
#[derive(Debug, Clone)]
struct Running {
    broker: Arc<Broker>,
    amqp: Vec<SocketAddr>,
    /// Stops the listeners and closes the client connections (a child of the broker's shutdown
    /// token; replaced when a paused node resumes).
    clients: CancellationToken,
}

/// How long a node stopping for a join or a reset gives its clients.
const RESTART_GRACE: Duration = Duration::from_secs(5);
/// How many times a restarting node tries to start again, and how long it waits in between.
const START_ATTEMPTS: u32 = 10;
const START_RETRY: Duration = Duration::from_millis(500);

impl Node {
    /// Binds the configured listeners and starts accepting connections.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        Node::start_with(config, NodeOptions::default()).await
    }

    /// [`Node::start`] with settings from code.
    pub async fn start_with(config: Config, options: NodeOptions) -> Result<Node, StartError> {
        let long = config.cluster.use_longname;
        let name = NodeName::parse(&config.node_name, long, &local_host(long))?;
        let dns = peer_dns(&config)?;
        if options.resolver.is_none() {
            match &dns {
                Some(dns) => {
                    dns.resolve(&name, config.cluster.port)
                        .await
                        .map_err(|reason| {
                            StartError::Name(NameError::Unresolvable {
                                name: name.to_string(),
                                host: name.host().to_string(),
                                reason: format!(
                                    "{reason} (through cluster_formation.dns.nameservers)"
                                ),
                            })
                        })?;
                }
                None => {
                    name.resolve(config.cluster.port).await?;
                }
            }
        }
        let secret = Secret::load(
            std::env::var("WARREN_ERLANG_COOKIE")
                .or_else(|_| std::env::var("RABBITMQ_ERLANG_COOKIE"))
                .ok(),
            &config.data_dir,
        )
        .map_err(|error| StartError::Secret(error.to_string()))?;
        let management_listener = match config.management {
            Some(address) => {
                let listener = bind(address).map_err(|source| StartError::Listen {
                    address: address.to_string(),
                    key: "management.tcp.port",
                    source,
                })?;
                let local = listener.local_addr().map_err(|source| StartError::Listen {
                    address: address.to_string(),
                    key: "management.tcp.port",
                    source,
                })?;
                Some((listener, local))
            }
            None => None,
        };
        let transport = start_transport(&config, name, secret, options.resolver, dns).await?;
        let shared = Arc::new(NodeShared {
            config,
            transport: transport.clone(),
            current: parking_lot::Mutex::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            paused: std::sync::atomic::AtomicBool::new(false),
            management: management_listener.as_ref().map(|(_, local)| *local),
            management_stop: CancellationToken::new(),
        });
        if let Some((listener, local)) = management_listener {
            tracing::info!("started the management HTTP listener on {local}");
            tokio::spawn(crate::http::serve(
                listener,
                Arc::downgrade(&shared),
                shared.management_stop.clone(),
            ));
        }
        transport.register(
            CONTROL_SERVICE,
            Arc::new(crate::control::ControlService::new(Arc::downgrade(&shared))),
        );
        shared.transport.register(
            crate::admin::report::ADMIN_SERVICE,
            Arc::new(crate::admin::report::AdminService::new(Arc::downgrade(
                &shared,
            ))),
        );
        let listen = shared.config.listeners.clone();
        match shared
            .start_incarnation(&Formation::Configured, listen)
            .await
        {
            Ok(running) => *shared.current.lock() = Some(running),
            Err(error) => {
                shared.management_stop.cancel();
                transport.shutdown();
                return Err(error);
            }
        }
        if let (Some(path), Some(broker)) = (&shared.config.load_definitions, shared.broker())
            && let Err(error) = crate::http::definitions::load_at_start(&broker, path).await
        {
            let node = Node {
                shared: shared.clone(),
            };
            node.shutdown(Duration::from_secs(5)).await;
            return Err(StartError::Definitions(error));
        }
        if shared.config.cluster.partition_handling == PartitionHandling::PauseMinority {
            tokio::spawn(watch_partitions(Arc::downgrade(&shared)));
        }
        Ok(Node { shared })
    }

    /// The addresses the AMQP listeners are bound to (with real ports when 0 was asked for).
    pub fn amqp_addresses(&self) -> Vec<SocketAddr> {
        self.shared
            .current
            .lock()
            .as_ref()
            .map(|running| running.amqp.clone())
            .unwrap_or_default()
    }

    /// The node's shared state (of its current incarnation).
    pub fn broker(&self) -> Arc<Broker> {
        self.shared
            .broker()
            .expect("invariant: a node has a broker outside a join or reset")
    }

    /// The node's shared state, unless a join, reset or restart is under way.
    pub fn try_broker(&self) -> Option<Arc<Broker>> {
        self.shared.broker()
    }

    /// The node's name.
    pub fn name(&self) -> &NodeName {
        self.shared.transport.node()
    }

    /// The cluster as this node sees it (what `warrenctl cluster_status` prints).
    pub async fn cluster_status(&self) -> Result<ClusterStatus, String> {
        crate::control::status(&self.shared).await
    }

    /// Runs a control request on this node, as `warrenctl` would.
    pub async fn control(&self, request: ControlRequest) -> Result<ControlResponse, String> {
        let me = self.shared.transport.node().clone();
        crate::control::handle(&self.shared, me, request).await
    }

    /// The inter-node transport (its listener's address, and fault injection for tests).
    pub fn transport(&self) -> &Transport {
        &self.shared.transport
    }

    /// Closes every client connection with 320 CONNECTION_FORCED and waits (at most
    /// `grace`) for them to finish.
    pub async fn shutdown(self, grace: Duration) {
        let _lifecycle = self.shared.lifecycle.lock().await;
        tracing::info!("stopping: closing client connections");
        let running = self.shared.current.lock().take();
        if let Some(running) = running {
            stop_incarnation(running, grace).await;
        }
        self.shared.management_stop.cancel();
        self.shared.transport.shutdown();
    }

    /// The management HTTP listener's address (with the real port when 0 was asked for).
    pub fn management_address(&self) -> Option<SocketAddr> {
        self.shared.management
    }
}

/// How often `pause_minority` checks that the node sees a majority of the cluster.
const PARTITION_CHECK: Duration = Duration::from_secs(1);
/// How long a node resuming from a pause waits to catch up with the leader (it tries again at
/// the next check if that was not enough).
const PARTITION_SYNC: Duration = Duration::from_secs(5);
/// How long a member is given to answer that check.
const PARTITION_PROBE: Duration = Duration::from_millis(800);

/// `cluster_partition_handling = pause_minority`: while the node cannot reach a majority of the
/// cluster's voting members, its client listeners are closed (and its clients disconnected); they
/// open again once it can.
async fn watch_partitions(node: std::sync::Weak<NodeShared>) {
    let mut ticks = tokio::time::interval(PARTITION_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(node) = node.upgrade() else { return };
        let Some(minority) = node.in_minority().await else {
            continue;
        };
        let paused = node.paused.load(std::sync::atomic::Ordering::Acquire);
        if minority && !paused {
            node.pause();
        } else if !minority && paused {
            // Serve again only once what the majority committed meanwhile is applied here.
            let synced = match node.broker().and_then(|b| b.metadata_group().cloned()) {
                Some(group) => group.sync_with_leader(PARTITION_SYNC).await.is_ok(),
                None => false,
            };
            if synced {
                node.resume();
            }
        }
    }
}

/// The DNS servers to resolve peers' names through: those of the DNS backend, when it is
/// selected and names some (`cluster_formation.dns.nameservers`).
fn peer_dns(config: &Config) -> Result<Option<Dns>, StartError> {
    let nameservers = &config.cluster.discovery_settings.dns.nameservers;
    if config.cluster.discovery != DiscoveryBackend::Dns || nameservers.is_empty() {
        return Ok(None);
    }
    Dns::new(nameservers)
        .map(Some)
        .map_err(|error| StartError::Setup(SetupError::Cluster(error)))
}

/// Binds the inter-node listener: on `distribution.listener.interface`, or on every interface
/// (dual-stack where IPv6 exists).
async fn start_transport(
    config: &Config,
    name: NodeName,
    secret: Secret,
    resolver: Option<Resolver>,
    dns: Option<Dns>,
) -> Result<Transport, StartError> {
    let port = config.cluster.port;
    let candidates: Vec<SocketAddr> = match config.cluster.interface {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ],
    };
    let mut last_error = None;
    // A node restarting in the same process (a test) may find its old listener still closing.
    for attempt in 0..20 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for address in &candidates {
            let mut transport_config =
                TransportConfig::new(name.clone(), secret.clone(), Some(*address), port);
            transport_config.resolver = resolver.clone();
            transport_config.dns = dns.clone();
            match Transport::start(transport_config).await {
                Ok(transport) => return Ok(transport),
                Err(error) => last_error = Some((*address, error)),
            }
        }
        let in_use = last_error
            .as_ref()
            .is_some_and(|(_, error)| error.kind() == std::io::ErrorKind::AddrInUse);
        if !in_use || port == 0 {
            break;
        }
    }
    let (address, source) = last_error.expect("invariant: at least one candidate address");
    Err(StartError::Listen {
        address: address.to_string(),
        key: "distribution.listener.port_range.min, or WARREN_DIST_PORT",
        source,
    })
}

/// One listener of a node, as RabbitMQ's `listeners` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    /// `amqp`, `http`, `clustering`.
    pub protocol: &'static str,
    pub address: SocketAddr,
}

impl NodeShared {
    /// The node's listeners: AMQP (unless paused), the management API, the inter-node port.
    pub(crate) fn listeners(&self) -> Vec<Listener> {
        let mut listeners = Vec::new();
        if !self.is_paused() {
            let amqp = self
                .current
                .lock()
                .as_ref()
                .map(|running| running.amqp.clone())
                .unwrap_or_default();
            listeners.extend(amqp.into_iter().map(|address| Listener {
                protocol: "amqp",
                address,
            }));
        }
        if let Some(address) = self.management {
            listeners.push(Listener {
                protocol: "http",
                address,
            });
        }
        if let Some(address) = self.transport.local_address() {
            listeners.push(Listener {
                protocol: "clustering",
                address,
            });
        }
        listeners
    }

    pub(crate) fn broker(&self) -> Option<Arc<Broker>> {
        self.current
            .lock()
            .as_ref()
            .map(|running| running.broker.clone())
    }

    /// Opens the broker on the data directory and binds the AMQP listeners.
    async fn start_incarnation(
        &self,
        formation: &Formation,
        listen: Vec<ListenAddress>,
    ) -> Result<Running, StartError> {
        let broker = Broker::open(self.config.clone(), &self.transport, formation).await?;
        broker.start_background();
        let mut listeners = Vec::new();
        for address in listen {
            let bound = bind(address).and_then(|listener| Ok((listener.local_addr()?, listener)));
            match bound {
                Ok(bound) => listeners.push(bound),
                Err(source) => {
                    stop_incarnation(
                        Running {
                            clients: broker.shutdown.child_token(),
                            broker,
                            amqp: Vec::new(),
                        },
                        RESTART_GRACE,
                    )
                    .await;
                    return Err(StartError::Listen {
                        address: address.to_string(),
                        key: "listeners.tcp",
                        source,
                    });
                }
            }
        }
        let mut amqp = Vec::new();
        let clients = broker.shutdown.child_token();
        for (local, listener) in listeners {
            tracing::info!("started TCP listener on {local}");
            amqp.push(local);
            broker
                .connections
                .spawn(accept_loop(listener, broker.clone(), clients.clone()));
        }
        Ok(Running {
            broker,
            amqp,
            clients,
        })
    }

    /// Stops the current incarnation; returns the addresses its AMQP listeners had, to listen
    /// on again.
    async fn stop_current(&self) -> Vec<ListenAddress> {
        let running = self.current.lock().take();
        let listen: Vec<ListenAddress> = match &running {
            Some(running) => running
                .amqp
                .iter()
                .map(|address| ListenAddress::Socket(*address))
                .collect(),
            None => self.config.listeners.clone(),
        };
        if let Some(running) = running {
            stop_incarnation(running, RESTART_GRACE).await;
        }
        listen
    }

    /// Stops the current incarnation, drops the node's data, and starts again as `formation`
    /// says, on the same AMQP addresses. If that fails, the node starts again blank, alone, so
    /// that it stays reachable, and the error is returned.
    pub(crate) async fn restart_blank(&self, formation: Formation) -> Result<(), String> {
        let listen = self.stop_current().await;
        wipe(&self.config.data_dir)
            .map_err(|error| format!("cannot reset the data directory: {error}"))?;
        match self.start_incarnation(&formation, listen.clone()).await {
            Ok(running) => {
                *self.current.lock() = Some(running);
                Ok(())
            }
            Err(error) => {
                tracing::error!("{error}; the node starts again as a cluster of its own");
                wipe(&self.config.data_dir)
                    .map_err(|error| format!("cannot reset the data directory: {error}"))?;
                let running =
                    self.start_again(&Formation::Alone, listen)
                        .await
                        .map_err(|again| {
                            format!("{error}; and starting again alone failed: {again}")
                        })?;
                *self.current.lock() = Some(running);
                Err(error.to_string())
            }
        }
    }

    /// Whether this node cannot reach a majority of the voting members; `None` while it has no
    /// broker (a join or reset is under way).
    async fn in_minority(&self) -> Option<bool> {
        let broker = self.broker()?;
        let group = broker.metadata_group()?.clone();
        let status = group.status();
        let me = self.transport.node();
        let voters: Vec<NodeName> = status
            .members
            .iter()
            .filter(|member| member.voter)
            .map(|member| NodeName::new_unchecked(member.name.clone()))
            .collect();
        if voters.len() < 2 {
            return Some(false);
        }
        let mut seen = 0;
        for voter in &voters {
            let reachable = voter == me
                || self.transport.is_connected(voter)
                || warren_cluster::control::call(
                    &self.transport,
                    voter,
                    &ControlRequest::Links,
                    PARTITION_PROBE,
                )
                .await
                .is_ok();
            if reachable {
                seen += 1;
            }
        }
        Some(seen * 2 <= voters.len())
    }

    fn pause(&self) {
        let current = self.current.lock();
        let Some(running) = current.as_ref() else {
            return;
        };
        tracing::warn!(
            "Cluster minority/secondary status detected - awaiting recovery: this node cannot reach a majority of the cluster (cluster_partition_handling = pause_minority); client listeners are closed"
        );
        running.clients.cancel();
        self.paused
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn resume(&self) {
        let mut current = self.current.lock();
        let Some(running) = current.as_mut() else {
            return;
        };
        let mut listeners = Vec::new();
        for address in &running.amqp {
            match bind(ListenAddress::Socket(*address)) {
                Ok(listener) => listeners.push(listener),
                Err(error) => {
                    tracing::warn!("cannot listen on {address} again yet: {error}");
                    return;
                }
            }
        }
        let clients = running.broker.shutdown.child_token();
        for listener in listeners {
            running.broker.connections.spawn(accept_loop(
                listener,
                running.broker.clone(),
                clients.clone(),
            ));
        }
        running.clients = clients;
        self.paused
            .store(false, std::sync::atomic::Ordering::Release);
        tracing::info!(
            "Cluster minority/secondary status cleared: the node reaches a majority again; client listeners are open"
        );
    }

    /// Stops the current incarnation, runs `change` on the metadata Raft log of the data
    /// directory (nothing else is running on it), and starts again on the same data.
    pub(crate) async fn restart_with_log<F, Fut>(&self, change: F) -> Result<(), String>
    where
        F: FnOnce(RaftLog) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let listen = self.stop_current().await;
        let changed = async {
            let (store, scanned) = Store::open(&self.config.data_dir, self.config.segment_size)
                .map_err(|error| error.to_string())?;
            let log = RaftLog::open(&store.wal, scanned.raft)
                .await
                .map_err(|error| error.to_string())?;
            let outcome = change(log).await;
            let wal = Arc::downgrade(&store.wal);
            drop(store);
            wait_until_released(&wal, &self.config.data_dir, RESTART_GRACE).await;
            outcome
        }
        .await;
        let running = self
            .start_again(&Formation::Resume, listen)
            .await
            .map_err(|error| error.to_string())?;
        *self.current.lock() = Some(running);
        changed
    }

    /// Starts an incarnation after a restart, trying again for a while: what the last one held
    /// (its listening sockets, its data directory) can take a moment to be let go on a busy
    /// machine, and a node left with no incarnation would serve nobody.
    async fn start_again(
        &self,
        formation: &Formation,
        listen: Vec<ListenAddress>,
    ) -> Result<Running, StartError> {
        let mut attempt = 1;
        loop {
            match self.start_incarnation(formation, listen.clone()).await {
                Ok(running) => return Ok(running),
                Err(error) if attempt < START_ATTEMPTS => {
                    tracing::warn!(
                        "starting again failed: {error}; trying again in {:?} ({} attempts left)",
                        START_RETRY,
                        START_ATTEMPTS - attempt
                    );
                    attempt += 1;
                    tokio::time::sleep(START_RETRY).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Whether `pause_minority` has closed the client listeners.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Holds the lifecycle lock (no join, reset or stop meanwhile).
    pub(crate) async fn lifecycle(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lifecycle.lock().await
    }
}

/// Closes client connections, stops the queues and the metadata group; the store goes with the
/// last reference to the broker.
async fn stop_incarnation(running: Running, grace: Duration) {
    let broker = running.broker;
    // Deregistered first: no node should be told to join this one while it stops.
    if let Some(discovery) = broker.discovery() {
        discovery.stop().await;
    }
    broker.shutdown.cancel();
    broker.connections.close();
    if tokio::time::timeout(grace, broker.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within {grace:?}");
    }
    // Then the queues, which let go of the store; the last of it closes the data directory.
    broker.queues.stop.cancel();
    broker.queues.tracker.close();
    if tokio::time::timeout(grace, broker.queues.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some queues did not stop within {grace:?}");
    }
    broker.quorum().host().shutdown().await;
    broker.store().metadata.shutdown().await;
    // The data directory is let go when the last holder of the WAL (the Raft tasks wind down
    // after shutdown returns) drops it: wait for that, so that the directory can be opened
    // again at once (a join, a reset, a restart in the same process).
    let wal = Arc::downgrade(&broker.store().wal);
    let dir = broker.store().wal.dir().to_path_buf();
    drop(broker);
    if !wait_until_released(&wal, &dir, grace).await {
        tracing::warn!("the data directory is still in use {grace:?} after stopping");
    }
}

/// Waits, at most `grace`, until the last holder of `wal` has dropped it and its data directory
/// `dir` can be locked again; whether it can. The count of holders reaches zero before the
/// dropping thread has joined the WAL's writer and let go of the directory's lock, so the lock
/// itself is what is waited for.
async fn wait_until_released(
    wal: &std::sync::Weak<warren_storage::Wal>,
    dir: &std::path::Path,
    grace: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        if wal.strong_count() == 0 {
            match warren_storage::DataDirLock::acquire(dir) {
                Ok(_released) => return true,
                Err(warren_storage::StorageError::Locked { .. }) => {}
                // Not a question of who holds it: opening the directory will say what is wrong.
                Err(_) => return true,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Removes everything in the data directory but the cluster secret.
fn wipe(dir: &std::path::Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() == COOKIE_FILE {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(path)?;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn bind(address: ListenAddress) -> std::io::Result<TcpListener> {
    let addresses: Vec<SocketAddr> = match address {
        // Dual-stack where IPv6 exists, IPv4 otherwise (containers often have no IPv6).
        ListenAddress::AnyInterface(port) => vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ],
        ListenAddress::Socket(address) => vec![address],
    };
    let mut last_error = None;
    for address in addresses {
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        };
        let result = socket.and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(1024)
        });
        match result {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()))
}

async fn accept_loop(listener: TcpListener, broker: Arc<Broker>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let broker_for_task = broker.clone();
                broker.connections.spawn(connection::serve(
                    broker_for_task,
                    socket,
                    peer,
                    stop.clone(),
                ));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;
    use std::sync::atomic::{AtomicBool, Ordering};

    use warren_storage::{DataDirLock, Wal};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_stopped_node_waits_for_its_directory_lock_not_only_for_its_holders() {
        let dir = std::env::temp_dir().join(format!("warren-release-{}", std::process::id()));
        let held = DataDirLock::acquire(&dir).expect("first lock");
        // No holder of the WAL is left (as when the last one is still in its drop), but the
        // lock is: the wait lasts until the lock goes.
        let gone: Weak<Wal> = Weak::new();
        let released = Arc::new(AtomicBool::new(false));
        let releaser = {
            let released = released.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                released.store(true, Ordering::SeqCst);
                drop(held);
            })
        };
        let runtime = runtime();
        assert!(runtime.block_on(wait_until_released(&gone, &dir, Duration::from_secs(10))));
        assert!(released.load(Ordering::SeqCst));
        releaser.join().expect("releaser");
        // A lock that stays held: the wait gives up after its grace and says so.
        let kept = DataDirLock::acquire(&dir).expect("lock again");
        assert!(!runtime.block_on(wait_until_released(&gone, &dir, Duration::from_millis(50))));
        drop(kept);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
