//! Peer discovery through a service: DNS, etcd, Consul, AWS. (`classic_config` and `k8s`,
//! which need no service, are in [`crate::formation`].)
//!
//! A blank node, as RabbitMQ's guide and the seeds' autocluster start-up lock describe it:
//!
//! ```text
//!  DNS only: wait a random start-up delay
//!  repeat: etcd, Consul: take the backend's lock
//!          discover the nodes the backend lists
//!          a listed peer is in a cluster?   ─> join it
//!          this node may form one?          ─> form a new cluster
//!          either way                       ─> register (etcd key on a lease, Consul service
//!                                              with a TTL check), release the lock: done
//!          otherwise release the lock       ─> "Trying to join discovered peers failed. Will
//!                                              retry after a delay of 500 ms, 4 retries left..."
//! ```
//!
//! With etcd and Consul, nodes look one at a time and register only once they are members, so
//! the first to take the lock forms the cluster and the others find it listed and join it; a
//! listed node that does not answer is waited for until the backend drops it (its TTL). With
//! DNS and AWS, which have no lock, every node sees the same list and only the seed, the
//! smallest name, forms the cluster. Either way nodes started at the same instant form exactly
//! one cluster. A node whose backend cannot be reached `discovery_retry_limit` times in a row
//! stops instead of forming a cluster of its own. A node with data skips discovery: Raft
//! reconnects it to the members it last knew; it registers again all the same.
//!
//! While the node runs, its registration is kept alive, and every `node_cleanup.interval`
//! members the backend does not list are logged (or, with `only_log_warning = false`, removed
//! when they are unreachable). On a clean stop the registration is deleted.

pub(crate) mod aws;
pub(crate) mod consul;
pub mod dns;
pub(crate) mod etcd;
pub(crate) mod http;
pub mod sigv4;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use warren_config::{ClusterConfig, DiscoveryBackend, DiscoverySettings};

use crate::formation::{Formed, JoinError, has_data, join, wait_to_retry};
use crate::identity::NodeName;
use crate::raft::{RaftGroup, RaftGroupError};
use crate::transport::{Transport, TransportError};
use aws::Aws;
use consul::Consul;
use dns::Dns;
use etcd::Etcd;

/// Node names ordered by a registration index (etcd's create revision, Consul's
/// `CreateIndex`), each once.
pub(crate) fn oldest_first<K: Ord>(mut nodes: Vec<(K, NodeName)>) -> Vec<NodeName> {
    nodes.sort();
    let mut names: Vec<NodeName> = Vec::new();
    for (_, name) in nodes {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A backend and what it needs.
#[derive(Debug)]
enum Backend {
    Dns { dns: Box<Dns>, hostname: String },
    Etcd(Box<Etcd>),
    Consul(Box<Consul>),
    Aws(Box<Aws>),
}

/// A held formation lock.
enum Lock {
    Etcd((String, i64)),
    Consul(String),
}

/// The backends that keep a registry of nodes and a formation lock: etcd and Consul.
#[derive(Clone, Copy)]
enum Registry<'a> {
    Etcd(&'a Etcd),
    Consul(&'a Consul),
}

impl Registry<'_> {
    async fn register(self) -> Result<(), String> {
        match self {
            Registry::Etcd(etcd) => etcd.register().await,
            Registry::Consul(consul) => consul.register().await,
        }
    }

    async fn keep_alive(self) -> Result<(), String> {
        match self {
            Registry::Etcd(etcd) => etcd.keep_alive().await,
            Registry::Consul(consul) => consul.keep_alive().await,
        }
    }

    fn keep_alive_interval(self) -> Duration {
        match self {
            Registry::Etcd(etcd) => etcd.keep_alive_interval(),
            Registry::Consul(consul) => consul.keep_alive_interval(),
        }
    }

    async fn unregister(self) -> Result<(), String> {
        match self {
            Registry::Etcd(etcd) => etcd.unregister().await,
            Registry::Consul(consul) => consul.unregister().await,
        }
    }

    async fn lock(self) -> Result<Lock, String> {
        match self {
            Registry::Etcd(etcd) => etcd.lock().await.map(Lock::Etcd),
            Registry::Consul(consul) => consul.lock().await.map(Lock::Consul),
        }
    }

    async fn keep_lock_alive(self, lock: &Lock) -> std::convert::Infallible {
        match (self, lock) {
            (Registry::Etcd(etcd), Lock::Etcd((_, lease))) => etcd.keep_lock_alive(*lease).await,
            (Registry::Consul(consul), Lock::Consul(session)) => {
                consul.keep_lock_alive(session).await
            }
            _ => unreachable!("invariant: a lock comes from its own backend"),
        }
    }

    async fn unlock(self, lock: Lock) -> Result<(), String> {
        match (self, lock) {
            (Registry::Etcd(etcd), Lock::Etcd(lock)) => etcd.unlock(lock).await,
            (Registry::Consul(consul), Lock::Consul(session)) => consul.unlock(session).await,
            _ => unreachable!("invariant: a lock comes from its own backend"),
        }
    }
}

/// Peer discovery through a service, for one incarnation of a node.
#[derive(Debug)]
pub struct Discovery {
    backend: Backend,
    settings: DiscoverySettings,
    node: NodeName,
    long_names: bool,
    retry_limit: u32,
    interval: Duration,
    /// Whether this node is registered (and should deregister on stop).
    registered: Mutex<bool>,
    /// The keep-alive and cleanup tasks.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Discovery {
    /// The discovery the configuration asks for; `None` for the backends that need no service
    /// (none, classic_config, k8s). `dns` is the resolver to use for the DNS backend.
    pub fn from_config(
        config: &ClusterConfig,
        node: &NodeName,
        dns: Option<&Dns>,
    ) -> Result<Option<Arc<Discovery>>, String> {
        let settings = &config.discovery_settings;
        let backend = match &config.discovery {
            DiscoveryBackend::None | DiscoveryBackend::ClassicConfig(_) | DiscoveryBackend::K8s => {
                return Ok(None);
            }
            DiscoveryBackend::Dns => {
                let hostname = settings
                    .dns
                    .hostname
                    .clone()
                    .ok_or("cluster_formation.dns.hostname is required with the dns backend")?;
                let dns = match dns {
                    Some(dns) => dns.clone(),
                    None => Dns::new(&settings.dns.nameservers)?,
                };
                Backend::Dns {
                    dns: Box::new(dns),
                    hostname,
                }
            }
            DiscoveryBackend::Etcd => {
                Backend::Etcd(Box::new(Etcd::new(&settings.etcd, &settings.proxy, node)?))
            }
            DiscoveryBackend::Aws => Backend::Aws(Box::new(Aws::new(
                &settings.aws,
                &settings.proxy,
                node,
                config.use_longname,
            )?)),
            DiscoveryBackend::Consul => Backend::Consul(Box::new(Consul::new(
                &settings.consul,
                &settings.proxy,
                node,
                config.use_longname,
            )?)),
        };
        Ok(Some(Arc::new(Discovery {
            backend,
            settings: settings.clone(),
            node: node.clone(),
            long_names: config.use_longname,
            retry_limit: config.discovery_retry_limit,
            interval: config.discovery_retry_interval,
            registered: Mutex::new(false),
            tasks: Mutex::new(Vec::new()),
        })))
    }

    /// The backend's name, for logs.
    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Dns { .. } => "dns",
            Backend::Etcd(_) => "etcd",
            Backend::Consul(_) => "consul",
            Backend::Aws(_) => "aws",
        }
    }

    /// The backend's registry and lock, for etcd and Consul.
    fn registry(&self) -> Option<Registry<'_>> {
        match &self.backend {
            Backend::Etcd(etcd) => Some(Registry::Etcd(etcd)),
            Backend::Consul(consul) => Some(Registry::Consul(consul)),
            Backend::Dns { .. } | Backend::Aws(_) => None,
        }
    }

    /// The registry this node registers with, unless registration is turned off.
    fn registering(&self) -> Option<Registry<'_>> {
        self.registry()
            .filter(|_| self.settings.registration_enabled)
    }

    /// The nodes the backend lists.
    pub async fn discover(&self) -> Result<Vec<NodeName>, String> {
        match &self.backend {
            Backend::Dns { dns, hostname } => {
                dns.discover(hostname, self.node.prefix(), self.long_names)
                    .await
            }
            Backend::Etcd(etcd) => etcd.registered().await,
            Backend::Consul(consul) => consul.registered().await,
            Backend::Aws(aws) => aws.discover().await,
        }
    }

    /// Registers this node, if the backend supports it and registration is enabled.
    pub async fn register(&self) -> Result<(), String> {
        let Some(registry) = self.registering() else {
            return Ok(());
        };
        registry.register().await?;
        *self.registered.lock() = true;
        Ok(())
    }

    async fn lock(&self) -> Result<Option<Lock>, String> {
        match self.registry() {
            Some(registry) => registry.lock().await.map(Some),
            None => Ok(None),
        }
    }

    async fn keep_lock_alive(&self, lock: &Option<Lock>) -> std::convert::Infallible {
        match (self.registry(), lock) {
            (Some(registry), Some(lock)) => registry.keep_lock_alive(lock).await,
            _ => std::future::pending().await,
        }
    }

    async fn unlock(&self, lock: Option<Lock>) {
        let (Some(registry), Some(lock)) = (self.registry(), lock) else {
            return;
        };
        if let Err(error) = registry.unlock(lock).await {
            tracing::warn!(
                "peer discovery ({}): releasing the lock failed: {error}",
                self.name()
            );
        }
    }

    /// The seed among `discovered`: the smallest name (the autocluster's "first alive node in
    /// alphabetical order").
    fn seed(&self, discovered: &[NodeName]) -> Option<NodeName> {
        discovered.iter().min().cloned()
    }

    /// Makes a blank node a member: joins the cluster of a discovered peer, or forms one if this
    /// node is the seed (see the module's documentation). A node with data only registers.
    pub async fn form(
        &self,
        transport: &Transport,
        group: &RaftGroup,
    ) -> Result<Formed, RaftGroupError> {
        let backend = self.name();
        if has_data(group).await? {
            self.register_or_warn().await;
            return Ok(Formed::AlreadyMember);
        }
        if let Backend::Dns { .. } = self.backend {
            let (min, max) = self.settings.startup_delay;
            let delay = if max > min {
                min + Duration::from_millis(fastrand::u64(0..=(max - min).as_millis() as u64))
            } else {
                min
            };
            if !delay.is_zero() {
                tracing::info!(
                    "peer discovery (dns): waiting a random start-up delay of {} ms \
                     (cluster_formation.randomized_startup_delay_range)",
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
            }
        }
        let me = transport.node().clone();
        // etcd and Consul: one node at a time looks and joins (or forms), under the lock, and
        // registers before letting go; so a listed node is a member.
        let locking = self.registry().is_some();
        let mut attempt: u32 = 0;
        let mut failures: u32 = 0;
        loop {
            let looked = async {
                let lock = if locking { self.lock().await? } else { None };
                match self.discover().await {
                    Ok(discovered) => Ok((lock, discovered)),
                    Err(error) => {
                        self.unlock(lock).await;
                        Err(error)
                    }
                }
            };
            let (lock, discovered) = match looked.await {
                Ok(looked) => {
                    failures = 0;
                    looked
                }
                Err(error) => {
                    failures += 1;
                    if failures >= self.retry_limit.max(1) {
                        return Err(RaftGroupError::Refused(format!(
                            "peer discovery ({backend}) failed {failures} times in a row: \
                             {error}; the node stops rather than form a cluster of its own"
                        )));
                    }
                    tracing::warn!("peer discovery ({backend}) failed: {error}");
                    attempt += 1;
                    wait_to_retry(attempt, self.retry_limit, self.interval, &me).await;
                    continue;
                }
            };
            let names: Vec<&str> = discovered.iter().map(NodeName::as_str).collect();
            tracing::info!("peer discovery ({backend}): discovered {names:?}");
            // The lock's lease (session) is kept alive while this node looks and joins.
            let outcome = tokio::select! {
                outcome = self.round(transport, group, &me, &discovered, locking, attempt) => {
                    outcome
                }
                never = self.keep_lock_alive(&lock) => match never {},
            };
            if let Ok(Some(_)) = &outcome {
                self.register_or_warn().await;
            }
            self.unlock(lock).await;
            if let Some(formed) = outcome? {
                return Ok(formed);
            }
            attempt += 1;
            let seed = self.seed(&discovered).unwrap_or_else(|| me.clone());
            wait_to_retry(attempt, self.retry_limit, self.interval, &seed).await;
        }
    }

    /// One look at the `discovered` nodes: join the first (by name) that is in a cluster, or
    /// form one when this node may; `None` to try again.
    async fn round(
        &self,
        transport: &Transport,
        group: &RaftGroup,
        me: &NodeName,
        discovered: &[NodeName],
        locking: bool,
        attempt: u32,
    ) -> Result<Option<Formed>, RaftGroupError> {
        let backend = self.name();
        let mut peers: Vec<&NodeName> = discovered.iter().filter(|peer| *peer != me).collect();
        peers.sort();
        peers.dedup();
        for peer in &peers {
            match join(transport, group, peer).await {
                Ok(()) => {
                    tracing::info!("peer discovery ({backend}): joined the cluster of {peer}");
                    return Ok(Some(Formed::Joined((*peer).clone())));
                }
                Err(JoinError::NotClustered(_)) => {}
                Err(JoinError::NotReady(_, reason)) => {
                    tracing::warn!("Could not auto-cluster with node {peer}: {reason}");
                }
                Err(JoinError::Transport(TransportError::Failed { reason, .. })) => {
                    tracing::warn!("node {peer} refused to add this node: {reason}");
                }
                Err(error) => tracing::warn!("Could not auto-cluster with node {peer}: {error}"),
            }
        }
        let forms = if self.registering().is_some() {
            // Listed nodes registered after joining: none listed, none in a cluster yet. Listed
            // nodes that do not answer are waited for, until the backend drops them (TTL).
            peers.is_empty()
        } else {
            // No lock (DNS, AWS) or registration by someone else: only the seed forms; with no
            // node listed at all, this one does, after the retries.
            self.seed(discovered).as_ref() == Some(me)
                || (peers.is_empty() && attempt >= self.retry_limit)
        };
        if !forms {
            return Ok(None);
        }
        if peers.is_empty() && !discovered.contains(me) && !locking {
            tracing::warn!(
                "peer discovery ({backend}): the backend lists no node, not even this one, \
                 after {attempt} attempts"
            );
        }
        tracing::info!(
            "peer discovery ({backend}): no discovered peer is in a cluster and this node may \
             form one: forming a new cluster"
        );
        group.initialize_alone().await?;
        Ok(Some(Formed::New))
    }

    async fn register_or_warn(&self) {
        if *self.registered.lock() {
            return;
        }
        if let Err(error) = self.register().await {
            tracing::warn!(
                "peer discovery ({}): registration failed: {error}; will try again",
                self.name()
            );
        }
    }

    /// Starts keeping the registration alive and the node cleanup; both stop with
    /// [`Discovery::stop`].
    pub fn start_background(self: &Arc<Self>, transport: &Transport, group: &RaftGroup) {
        let mut tasks = self.tasks.lock();
        if let Some(interval) = self.registering().map(Registry::keep_alive_interval) {
            let discovery = self.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    let Some(registry) = discovery.registering() else {
                        return;
                    };
                    if !*discovery.registered.lock() {
                        discovery.register_or_warn().await;
                        continue;
                    }
                    if let Err(error) = registry.keep_alive().await {
                        tracing::warn!(
                            "peer discovery ({}): keeping the registration alive failed: {error}",
                            discovery.name()
                        );
                    }
                }
            }));
        }
        let discovery = self.clone();
        let transport = transport.clone();
        let group = group.clone();
        tasks.push(tokio::spawn(async move {
            let interval = discovery.settings.node_cleanup.interval;
            loop {
                tokio::time::sleep(interval).await;
                discovery.clean_up(&transport, &group).await;
            }
        }));
    }

    /// Logs, or removes when unreachable, the members the backend does not list.
    pub async fn clean_up(&self, transport: &Transport, group: &RaftGroup) {
        let backend = self.name();
        let listed = match self.discover().await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::debug!("node cleanup ({backend}): discovery failed: {error}");
                return;
            }
        };
        let status = group.status();
        for member in &status.members {
            let name = NodeName::new_unchecked(member.name.clone());
            if name == self.node || listed.contains(&name) {
                continue;
            }
            let reachable = transport.is_connected(&name);
            if self.settings.node_cleanup.only_log_warning || reachable {
                tracing::warn!(
                    "node cleanup ({backend}): {name} is a member of the cluster but the backend \
                     does not list it{}; remove it with 'warrenctl forget_cluster_node {name}' \
                     if it is gone for good (or set cluster_formation.node_cleanup.only_log_warning \
                     = false)",
                    if reachable { " (it is reachable)" } else { "" }
                );
                continue;
            }
            if !group.is_leader() {
                continue;
            }
            tracing::warn!(
                "node cleanup ({backend}): removing {name} from the cluster: the backend does not \
                 list it and it is unreachable"
            );
            if let Err(error) = group.remove_member(member.id).await {
                tracing::warn!("node cleanup ({backend}): removing {name} failed: {error}");
            }
        }
    }

    /// The seed the backend names, and whether this node is clustered with it: the part of
    /// the health check that is the backend's (the rest is the cluster status's).
    pub async fn check_seed(&self, group: &RaftGroup) -> (Option<String>, Vec<String>) {
        let mut problems = Vec::new();
        let seed = match self.discover().await {
            Ok(discovered) => self.seed(&discovered),
            Err(error) => {
                problems.push(format!("peer discovery ({}) failed: {error}", self.name()));
                None
            }
        };
        if let Some(seed) = &seed
            && !group
                .status()
                .members
                .iter()
                .any(|member| member.name == seed.as_str())
        {
            problems.push(format!(
                "not clustered with {seed}, the node the {} backend names as seed",
                self.name()
            ));
        }
        (seed.map(|seed| seed.to_string()), problems)
    }

    /// Stops the background tasks and deletes the registration (a clean stop).
    pub async fn stop(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        let registered = std::mem::take(&mut *self.registered.lock());
        if !registered {
            return;
        }
        let Some(registry) = self.registry() else {
            return;
        };
        if let Err(error) = registry.unregister().await {
            tracing::warn!(
                "peer discovery ({}): deregistration failed: {error}",
                self.name()
            );
        }
    }
}
