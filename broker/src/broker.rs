//! The node's shared state: configuration, the store, users, vhosts, and the shutdown signal.
//!
//! A blank data directory gets the default vhost and user from the configuration, persisted; a
//! data directory that has been used gets back what it holds and the configured defaults are not
//! applied again, as in RabbitMQ.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_config::Config;
use warren_storage::{StorageError, Stream};

use crate::alarms::Alarms;
use crate::auth::{PasswordHash, User, Users};
use crate::direct_reply::DirectReplies;
use crate::queue::events::ConnectionId;
use crate::queue::quorum::QuorumHub;
use crate::queue::{QueueCommand, QueueHandle, QueueTasks, StorageEvent};
use crate::remote::RemoteHub;
use crate::store::metadata::MetadataMachine;
use crate::store::metadata::{MetadataCommand, PendingWrites};
use crate::store::{Recovered, Scanned, Store};
use crate::vhost::VHost;
use warren_cluster::discovery::Discovery;
use warren_cluster::multiraft::host::{Host, HostConfig};
use warren_cluster::raft::log::RaftLog;
use warren_cluster::raft::{GroupConfig, RaftGroup};
use warren_cluster::{NodeName, Transport};
use warren_config::{ClusterConfig, DiscoveryBackend};

/// Everything connections share.
#[derive(Debug)]
pub struct Broker {
    /// The configuration the node started with.
    pub config: Arc<Config>,
    /// Users and permissions.
    pub users: Users,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    store: Arc<Store>,
    next_connection_id: AtomicU64,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Direct reply-to addresses.
    pub direct_replies: DirectReplies,
    /// Queue tasks.
    pub queues: QueueTasks,
    /// Memory and disk alarms.
    pub alarms: Arc<Alarms>,
    /// The node's open connections, their channels and consumers, for the management API.
    pub admin: crate::admin::Registry,
    /// When the node opened this broker.
    started: Instant,
    /// Global runtime parameters (`cluster_name`, ...): name to JSON text.
    global_parameters: RwLock<std::collections::BTreeMap<String, String>>,
    node: NodeName,
    transport: Transport,
    remote: Arc<RemoteHub>,
    /// The node's quorum queues and the host of their Raft groups.
    quorum: Arc<QuorumHub>,
    /// Peer discovery through a service (DNS, etcd, Consul), when configured: registration,
    /// node cleanup, the health check.
    discovery: Option<Arc<Discovery>>,
}

/// Why the broker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `default_permissions.*` is not a valid regular expression.
    #[error("default_permissions: {0}")]
    Permissions(String),
    /// The data directory cannot be used.
    #[error("data directory: {0}")]
    Storage(#[from] StorageError),
    /// The first metadata could not be written.
    #[error("data directory: {0}")]
    Persist(String),
    /// The node could not join or form a cluster.
    #[error("cluster: {0}")]
    Cluster(String),
}

/// How often memory and disk are checked.
const ALARM_INTERVAL: Duration = Duration::from_millis(500);
/// How often dead segments are looked for.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long a queue asked to relocate records out of a segment is given before being asked again.
const RELOCATION_PATIENCE: Duration = Duration::from_secs(30);

/// Deletes segments that hold nothing live, and asks the queues holding the last live records of
/// a mostly dead oldest segment to write them again further on, so that it can go too.
async fn maintain_storage(broker: Weak<Broker>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asked: HashMap<(Stream, u32), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let wal = &broker.store.wal;
        for stream in [Stream::Messages, Stream::Paging] {
            wal.collect(stream);
            let Some((segment, owners)) = wal.relocation_candidate(stream) else {
                continue;
            };
            if asked
                .get(&(stream, segment))
                .is_some_and(|at| at.elapsed() < RELOCATION_PATIENCE)
            {
                continue;
            }
            asked.retain(|_, at| at.elapsed() < RELOCATION_PATIENCE);
            asked.insert((stream, segment), Instant::now());
            tracing::debug!(
                "compacting {stream:?} segment {segment}: {} queues move their records",
                owners.len()
            );
            for owner in owners {
                if let Some(queue) = broker.queue_by_id(owner) {
                    queue.send(QueueCommand::Storage(StorageEvent::Relocate {
                        stream,
                        segment,
                    }));
                }
            }
        }
    }
}

/// How long a restarting node waits for its metadata group to apply what it logged.
const METADATA_RECOVERY: Duration = Duration::from_secs(30);

/// How a starting node comes to belong to a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formation {
    /// As configured: a node with data rejoins the members it knew; a blank node runs peer
    /// discovery (`cluster_formation.*`), or forms a cluster of one when there is none.
    Configured,
    /// Join the cluster this node is in (`warrenctl join_cluster`); the node is blank.
    Join(NodeName),
    /// Form a cluster of one (after `warrenctl reset`).
    Alone,
    /// Carry on as the member the data says this node is, without waiting for the others
    /// (after `warrenctl forget_cluster_node --offline`, whose operator knows they are gone).
    Resume,
}

/// Why the broker could not join a cluster.
fn join_failed(error: impl std::fmt::Display) -> SetupError {
    SetupError::Cluster(error.to_string())
}

/// The peers `cluster_formation.classic_config.nodes.*` lists.
pub(crate) fn classic_peers(
    cluster: &ClusterConfig,
    nodes: &[String],
) -> Result<Vec<NodeName>, SetupError> {
    nodes
        .iter()
        .map(|node| {
            NodeName::parse(node, cluster.use_longname, "").map_err(|error| {
                SetupError::Cluster(format!("cluster_formation.classic_config.nodes: {error}"))
            })
        })
        .collect()
}

/// The seed of the `k8s` backend: `cluster_formation.k8s.seed_node`, or this pod's name with the
/// StatefulSet's first ordinal.
pub(crate) fn k8s_seed(cluster: &ClusterConfig, me: &NodeName) -> Result<NodeName, SetupError> {
    match &cluster.k8s_seed_node {
        Some(seed) => NodeName::parse(seed, cluster.use_longname, "").map_err(|error| {
            SetupError::Cluster(format!("cluster_formation.k8s.seed_node: {error}"))
        }),
        None => warren_cluster::formation::k8s_seed(me, cluster.k8s_ordinal_start)
            .map_err(SetupError::Cluster),
    }
}

/// Starts the metadata Raft group on `log` and makes the node a member of a cluster as
/// `formation` says; then waits until the group has applied what it had logged. Says whether
/// the node formed a new cluster (only such a node sets up the default vhost and user), and
/// returns the peer discovery service (DNS, etcd, Consul) when one is configured.
async fn start_metadata_group(
    config: &Config,
    transport: &Transport,
    log: RaftLog,
    machine: Arc<MetadataMachine>,
    formation: &Formation,
) -> Result<(RaftGroup, bool, Option<Arc<Discovery>>), SetupError> {
    let discovery = Discovery::from_config(&config.cluster, transport.node(), transport.dns())
        .map_err(SetupError::Cluster)?;
    let group = RaftGroup::start(transport, log, machine, GroupConfig::default())
        .await
        .map_err(|error| SetupError::Persist(error.to_string()))?;
    let was_member = match group.is_initialized().await {
        Ok(initialized) => initialized,
        Err(error) => {
            group.shutdown().await;
            return Err(SetupError::Persist(error.to_string()));
        }
    };
    let formed = match formation {
        Formation::Join(peer) => warren_cluster::formation::join(transport, &group, peer)
            .await
            .map_err(join_failed),
        Formation::Alone => group.initialize_alone().await.map_err(join_failed),
        Formation::Resume => Ok(()),
        Formation::Configured => match &config.cluster.discovery {
            DiscoveryBackend::None => group.initialize_alone().await.map_err(join_failed),
            DiscoveryBackend::Dns
            | DiscoveryBackend::Etcd
            | DiscoveryBackend::Consul
            | DiscoveryBackend::Aws => match &discovery {
                Some(discovery) => discovery
                    .form(transport, &group)
                    .await
                    .map(drop)
                    .map_err(join_failed),
                None => Err(SetupError::Cluster("peer discovery is not set up".into())),
            },
            DiscoveryBackend::ClassicConfig(nodes) => match classic_peers(&config.cluster, nodes) {
                Ok(peers) => warren_cluster::formation::classic_config(
                    transport,
                    &group,
                    &peers,
                    config.cluster.discovery_retry_limit,
                    config.cluster.discovery_retry_interval,
                )
                .await
                .map(drop)
                .map_err(join_failed),
                Err(error) => Err(error),
            },
            DiscoveryBackend::K8s => match k8s_seed(&config.cluster, transport.node()) {
                Ok(seed) => warren_cluster::formation::seeded(
                    transport,
                    &group,
                    &seed,
                    config.cluster.discovery_retry_limit,
                    config.cluster.discovery_retry_interval,
                )
                .await
                .map(drop)
                .map_err(join_failed),
                Err(error) => Err(error),
            },
        },
    };
    if let Err(error) = formed {
        group.shutdown().await;
        return Err(error);
    }
    if matches!(formation, Formation::Resume) {
        // What it applied is what it had a moment ago: nothing to wait for.
    } else if let Err(error) = group.wait_caught_up(METADATA_RECOVERY).await {
        tracing::warn!("metadata store: {error}; starting with what has been applied");
    }
    let new_cluster = !was_member && !matches!(formation, Formation::Join(_)) && {
        let status = group.status();
        status.members.len() == 1 && status.members[0].id == group.id()
    };
    if let Some(discovery) = &discovery
        && !matches!(formation, Formation::Configured)
    {
        // Joined or reset by an operator: a member all the same, so registered.
        if let Err(error) = discovery.register().await {
            tracing::warn!(
                "peer discovery ({}): registration failed: {error}",
                discovery.name()
            );
        }
    }
    Ok((group, new_cluster, discovery))
}

/// Starts the host of the node's quorum queue groups over the WAL, with the groups it holds;
/// the node's member id in them is its metadata Raft id.
fn start_quorum_host(
    transport: &Transport,
    group: &RaftGroup,
    store: &Store,
    groups: warren_cluster::multiraft::storage::Recovery,
) -> Arc<QuorumHub> {
    let member = group.id();
    let quorum = QuorumHub::new(transport, member);
    for known in group.status().members {
        quorum
            .members
            .learn(known.id, &NodeName::new_unchecked(known.name));
    }
    let machines = quorum.clone();
    let host = Host::start(
        HostConfig::new(member),
        transport,
        quorum.directory(),
        &store.wal,
        groups,
        Box::new(move |queue| Some(machines.machine(queue))),
    );
    quorum.attach(host);
    quorum
}

/// A user from its metadata; an unreadable password hash is logged and the user cannot log in.
fn user(name: &str, password_hash: Option<&str>, tags: &[String]) -> User {
    let password = match password_hash.map(PasswordHash::from_base64) {
        Some(None) => {
            tracing::error!(
                "user '{name}': stored password hash is unreadable; the user cannot log in"
            );
            None
        }
        Some(hash) => hash,
        None => None,
    };
    User {
        name: name.to_string(),
        password,
        tags: tags.to_vec(),
    }
}

impl Broker {
    /// Opens the data directory named in `config`, makes the node a member of a cluster as
    /// `formation` says, recovers what the directory holds (or sets up the default vhost and
    /// user on a blank cluster) and starts the recovered queues.
    pub async fn open(
        config: Config,
        transport: &Transport,
        formation: &Formation,
    ) -> Result<Arc<Broker>, SetupError> {
        let started = Instant::now();
        let (store, scanned) = Store::open(&config.data_dir, config.segment_size)?;
        let store = Arc::new(store);
        let Scanned {
            raft,
            messages,
            groups,
        } = scanned;
        let log = RaftLog::open(&store.wal, raft)
            .await
            .map_err(|error| SetupError::Persist(error.to_string()))?;
        let machine = Arc::new(MetadataMachine::new());
        let (group, new_cluster, discovery) =
            start_metadata_group(&config, transport, log, machine.clone(), formation).await?;
        let group_for_discovery = group.clone();
        let quorum = start_quorum_host(transport, &group, &store, groups);
        quorum.set_consumer_timeout(config.consumer_timeout);
        let broker = Arc::new(Broker {
            users: Users::default(),
            vhosts: RwLock::new(HashMap::new()),
            store: store.clone(),
            next_connection_id: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            direct_replies: DirectReplies::default(),
            queues: QueueTasks::default(),
            alarms: Arc::new(Alarms::new(&config)),
            admin: crate::admin::Registry::default(),
            global_parameters: RwLock::default(),
            started: Instant::now(),
            node: transport.node().clone(),
            transport: transport.clone(),
            remote: RemoteHub::start(transport),
            quorum,
            discovery,
            config: Arc::new(config),
        });
        let local: Arc<dyn crate::remote::LocalQueues> = broker.clone();
        broker.remote.attach(Arc::downgrade(&local));
        store.metadata.start(group);
        let weak = Arc::downgrade(&broker);
        let (blank, stale) = machine.start_with(
            |state| {
                let recovered = store.recover(state.clone(), messages, started);
                if recovered.state.is_blank() {
                    return (true, Vec::new());
                }
                (false, broker.restore(recovered))
            },
            Box::new(move |command| {
                if let Some(broker) = weak.upgrade() {
                    broker.apply_command(command);
                }
            }),
        );
        if blank
            && new_cluster
            && let Err(error) = broker.set_up_defaults().await
        {
            if let Some(discovery) = broker.discovery() {
                discovery.stop().await;
            }
            return Err(error);
        }
        if !stale.is_empty() {
            // Transient queues and exchanges of this node's previous run: gone everywhere.
            let mut pending = PendingWrites::default();
            for command in stale {
                store.metadata.submit(command, &mut pending);
            }
            if let Err(error) = pending.wait().await {
                tracing::warn!(
                    "transient queues and exchanges of the previous run are not removed yet: {error}"
                );
            }
        }
        // Registration kept alive and node cleanup: only for a broker that opened.
        if let Some(discovery) = broker.discovery() {
            discovery.start_background(transport, &group_for_discovery);
        }
        Ok(broker)
    }

    /// The node's name.
    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// The inter-node transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The metadata Raft group.
    pub fn metadata_group(&self) -> Option<&RaftGroup> {
        self.store.metadata.group()
    }

    /// Peer discovery through a service, when one is configured.
    pub fn discovery(&self) -> Option<&Arc<Discovery>> {
        self.discovery.as_ref()
    }

    /// A new cluster: the default vhost and user from the configuration, through the metadata
    /// log (every node applies them).
    async fn set_up_defaults(&self) -> Result<(), SetupError> {
        let config = self.config.clone();
        let permissions = &config.default_permissions;
        // Checked here: applying cannot fail.
        for pattern in [
            &permissions.configure,
            &permissions.write,
            &permissions.read,
        ] {
            crate::auth::Pattern::new(pattern).map_err(SetupError::Permissions)?;
        }
        let mut pending = PendingWrites::default();
        for command in [
            MetadataCommand::PutVHost {
                name: config.default_vhost.clone(),
            },
            MetadataCommand::PutUser {
                name: config.default_user.clone(),
                password_hash: Some(PasswordHash::new(&config.default_pass).to_base64()),
                tags: config.default_user_tags.clone(),
            },
            MetadataCommand::SetPermissions {
                user: config.default_user.clone(),
                vhost: config.default_vhost.clone(),
                configure: permissions.configure.clone(),
                write: permissions.write.clone(),
                read: permissions.read.clone(),
            },
        ] {
            self.store.metadata.submit(command, &mut pending);
        }
        pending
            .wait()
            .await
            .map_err(|error| SetupError::Persist(error.to_string()))
    }

    /// A node that has run before, or joined a cluster: vhosts, users, permissions, exchanges,
    /// queues (with their messages) and bindings as the metadata holds them. Transient queues and
    /// exchanges this node had before it restarted are gone: they are skipped, and the deletions
    /// to propose for them are returned. An entity that cannot be restored is logged and skipped;
    /// the rest of the node still starts.
    fn restore(&self, recovered: Recovered) -> Vec<MetadataCommand> {
        let Recovered {
            state,
            mut messages,
            ..
        } = recovered;
        for name in &state.vhosts {
            self.add_vhost(name);
        }
        for (name, (password_hash, tags)) in &state.users {
            self.users
                .insert(user(name, password_hash.as_deref(), tags));
        }
        for ((user, vhost), (configure, write, read)) in &state.permissions {
            if let Err(error) = self
                .users
                .set_permissions(user, vhost, configure, write, read)
            {
                tracing::error!("permissions of '{user}' on vhost '{vhost}' not restored: {error}");
            }
        }
        let mut stale = Vec::new();
        let mut skipped: std::collections::HashSet<(String, bool, Vec<u8>)> = Default::default();
        for ((vhost, name), record) in &state.exchanges {
            if !record.durable && record.home == self.node.as_str() {
                stale.push(MetadataCommand::DeleteExchange {
                    vhost: vhost.clone(),
                    name: name.clone(),
                });
                skipped.insert((vhost.clone(), false, name.clone()));
                continue;
            }
            let Some(vhost) = self.vhost(vhost) else {
                continue;
            };
            if let Err(error) = vhost.restore_exchange(name, record) {
                tracing::error!(
                    "exchange '{}' in vhost '{}' not restored: {error}",
                    String::from_utf8_lossy(name),
                    vhost.name()
                );
            }
        }
        for ((vhost, name), record) in &state.queues {
            if record.is_quorum() {
                // Its group came back from the WAL with the host; its front is made here.
                if let Some(vhost) = self.vhost(vhost) {
                    vhost.add_quorum_queue(name, record);
                }
                continue;
            }
            if !record.durable && record.home == self.node.as_str() {
                stale.push(MetadataCommand::DeleteQueue {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    id: record.id,
                });
                skipped.insert((vhost.clone(), true, name.clone()));
                continue;
            }
            let Some(vhost) = self.vhost(vhost) else {
                continue;
            };
            if record.home != self.node.as_str() {
                vhost.add_remote_queue(name, record);
                continue;
            }
            let queued = messages.remove(&record.id).unwrap_or_default();
            if let Err(error) = vhost.restore_queue(name, record, queued) {
                tracing::error!(
                    "queue '{}' in vhost '{}' not restored: {error}",
                    String::from_utf8_lossy(name),
                    vhost.name()
                );
            }
        }
        for binding in &state.bindings {
            let to_skipped =
                skipped.contains(&(
                    binding.vhost.clone(),
                    binding.destination.0,
                    binding.destination.1.clone(),
                )) || skipped.contains(&(binding.vhost.clone(), false, binding.source.clone()));
            if to_skipped {
                continue;
            }
            let Some(vhost) = self.vhost(&binding.vhost) else {
                continue;
            };
            if let Err(error) = vhost.restore_binding(binding) {
                tracing::warn!(
                    "binding from '{}' in vhost '{}' not restored: {error}",
                    String::from_utf8_lossy(&binding.source),
                    vhost.name()
                );
            }
        }
        stale
    }

    /// Brings memory in line with a committed command, whoever proposed it: the only place
    /// metadata changes in memory.
    fn apply_command(&self, command: &MetadataCommand) {
        match command {
            MetadataCommand::PutVHost { name } => {
                self.add_vhost(name);
            }
            MetadataCommand::DeleteVHost { name } => {
                let removed = self.vhosts.write().remove(name);
                if let Some(vhost) = removed {
                    self.vhost_deleted(&vhost);
                }
            }
            MetadataCommand::ClearPermissions { user, vhost } => {
                self.users.clear_permissions(user, vhost);
            }
            MetadataCommand::SetGlobalParameter { name, value } => {
                self.global_parameters
                    .write()
                    .insert(name.clone(), value.clone());
            }
            MetadataCommand::ClearGlobalParameter { name } => {
                self.global_parameters.write().remove(name);
            }
            MetadataCommand::PutUser {
                name,
                password_hash,
                tags,
            } => {
                self.users
                    .insert(user(name, password_hash.as_deref(), tags));
            }
            MetadataCommand::DeleteUser { name } => self.users.remove(name),
            MetadataCommand::SetPermissions {
                user,
                vhost,
                configure,
                write,
                read,
            } => {
                if let Err(error) = self
                    .users
                    .set_permissions(user, vhost, configure, write, read)
                {
                    tracing::error!("permissions of '{user}' on vhost '{vhost}': {error}");
                }
            }
            MetadataCommand::Snapshot(commands) => {
                // A snapshot installed on a running node: what it adds is applied; what it
                // lost since the node fell behind is picked up at the next start.
                for command in commands {
                    self.apply_command(command);
                }
            }
            MetadataCommand::SetVHostMetadata { name: vhost, .. }
            | MetadataCommand::DeclareExchange { vhost, .. }
            | MetadataCommand::DeleteExchange { vhost, .. }
            | MetadataCommand::DeclareQueue { vhost, .. }
            | MetadataCommand::DeclareQuorumQueue { vhost, .. }
            | MetadataCommand::SetQuorumMembers { vhost, .. }
            | MetadataCommand::DeleteQueue { vhost, .. }
            | MetadataCommand::Bind { vhost, .. }
            | MetadataCommand::Unbind { vhost, .. } => {
                if let Some(vhost) = self.vhost(vhost) {
                    vhost.apply(command);
                }
            }
        }
    }

    /// The node's quorum queues.
    pub fn quorum(&self) -> &Arc<QuorumHub> {
        &self.quorum
    }

    /// The node's store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A queue by its id, in any vhost.
    pub fn queue_by_id(&self, id: u64) -> Option<QueueHandle> {
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        vhosts
            .iter()
            .find_map(|vhost| vhost.queues().into_iter().find(|queue| queue.id() == id))
    }

    /// Starts the node's background work: the alarm monitor and storage upkeep. Both stop with
    /// the queues.
    pub fn start_background(self: &Arc<Self>) {
        let stop = self.queues.stop.clone();
        self.queues.tracker.spawn(self.alarms.clone().monitor(
            self.config.data_dir.clone(),
            self.store.wal.clone(),
            ALARM_INTERVAL,
            stop.clone(),
        ));
        self.queues.tracker.spawn(crate::alarms::share(
            self.alarms.clone(),
            self.remote.transport().clone(),
            stop.clone(),
        ));
        self.queues
            .tracker
            .spawn(maintain_storage(Arc::downgrade(self), stop));
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Creates a vhost in memory if it does not exist, and returns it.
    fn add_vhost(&self, name: &str) -> Arc<VHost> {
        self.vhosts
            .write()
            .entry(name.to_string())
            .or_insert_with(|| {
                VHost::new(
                    name,
                    self.remote.clone(),
                    self.quorum.clone(),
                    self.store.clone(),
                    self.queues.clone(),
                    self.config.queue_leader_locator,
                )
            })
            .clone()
    }

    /// A vhost is gone: its connections are closed and the queues this node runs there stop
    /// (their durable records went with the vhost's).
    fn vhost_deleted(&self, vhost: &VHost) {
        for connection in self.admin.connections() {
            if connection.spec.vhost == vhost.name() {
                connection.close(&format!("vhost '{}' is deleted", vhost.name()));
            }
        }
        for queue in vhost.queues() {
            if queue.config.quorum {
                // This node's member and its log go; every member's node does the same.
                self.quorum.remove(queue.id());
            } else if queue.home.is_none() {
                let (reply, _) = tokio::sync::oneshot::channel();
                queue.send(QueueCommand::Delete {
                    if_unused: false,
                    if_empty: false,
                    reply,
                });
            }
        }
    }

    /// When the node opened this broker (its uptime counts from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// A global runtime parameter's value (JSON text), if set.
    pub fn global_parameter(&self, name: &str) -> Option<String> {
        self.global_parameters.read().get(name).cloned()
    }

    /// Every global runtime parameter: name and JSON text.
    pub fn global_parameters(&self) -> Vec<(String, String)> {
        self.global_parameters
            .read()
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    /// Proposes a metadata command and waits until it is committed.
    pub async fn propose(&self, command: MetadataCommand) -> Result<(), String> {
        let mut pending = PendingWrites::default();
        self.store.metadata.submit(command, &mut pending);
        pending.wait().await.map_err(|error| error.to_string())
    }

    /// Every vhost name.
    pub fn vhost_names(&self) -> Vec<String> {
        self.vhosts.read().keys().cloned().collect()
    }

    pub(crate) fn next_connection_id(&self) -> ConnectionId {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `user` may connect only from loopback addresses.
    pub fn is_loopback_only(&self, user: &str) -> bool {
        self.config.loopback_users.iter().any(|name| name == user)
    }
}

impl crate::remote::LocalQueues for Broker {
    fn queue_by_id(&self, id: u64) -> Option<QueueHandle> {
        Broker::queue_by_id(self, id)
    }

    fn next_connection_id(&self) -> ConnectionId {
        Broker::next_connection_id(self)
    }
}
