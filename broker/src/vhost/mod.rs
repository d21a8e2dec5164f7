//! Virtual hosts: the exchanges and queues in one namespace, declaration rules and routing.
//!
//! Lock order (see docs/locking.md): `changes` before `exchanges` before `queues` before an
//! exchange's bindings before the metadata log's state. No lock is held across an `.await`:
//! methods that change durable entities submit metadata commands under `changes` and return the
//! [`PendingWrites`] for the caller to wait on, with no lock held, before it answers the client.

mod apply;
mod bindings;
mod equivalence;
mod exchanges;
mod queues;
mod quorum;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use warren_config::LeaderLocator;
use warren_wire::{FieldTable, ShortString};

use crate::error::AmqpError;
use crate::exchange::{Exchange, ExchangeKind};
use crate::queue::quorum::QuorumHub;
use crate::queue::{QueueHandle, QueueTasks};
use crate::remote::RemoteHub;
use crate::store::Store;
use crate::store::metadata::MetadataCommand;

/// What an `exchange.declare` asks for.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    /// Name.
    pub name: ShortString,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not for publishing.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// One virtual host.
#[derive(Debug)]
pub struct VHost {
    name: Arc<str>,
    /// This node's name: the home of the queues declared here.
    node: Arc<str>,
    /// Traffic to queues hosted on other nodes.
    remote: Arc<RemoteHub>,
    /// The node's quorum queues.
    quorum: Arc<QuorumHub>,
    /// Held while a change to exchanges, queues or bindings is made and submitted to the
    /// metadata log, so that the log records changes in the order they were made.
    changes: Mutex<()>,
    exchanges: RwLock<HashMap<ShortString, Arc<Exchange>>>,
    queues: RwLock<HashMap<ShortString, QueueHandle>>,
    store: Arc<Store>,
    tasks: QueueTasks,
    /// `queue_leader_locator`: where quorum queues declared without `x-queue-leader-locator`
    /// get their leader.
    leader_locator: LeaderLocator,
    /// Its description, tags and default queue type.
    metadata: RwLock<VHostMetadata>,
}

/// What a vhost is described as (RabbitMQ's vhost metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VHostMetadata {
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The type of queues declared without `x-queue-type` (`classic`, `quorum`), when set.
    pub default_queue_type: Option<String>,
}
impl VHost {
    /// A vhost with RabbitMQ's predeclared exchanges, persisting its durable entities in `store`.
    pub fn new(
        name: &str,
        remote: Arc<RemoteHub>,
        quorum: Arc<QuorumHub>,
        store: Arc<Store>,
        tasks: QueueTasks,
        leader_locator: LeaderLocator,
    ) -> Arc<VHost> {
        let vhost = VHost {
            name: name.into(),
            node: remote.node().as_str().into(),
            remote,
            quorum,
            changes: Mutex::new(()),
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            store,
            tasks,
            leader_locator,
            metadata: RwLock::new(VHostMetadata::default()),
        };
        {
            let mut exchanges = vhost.exchanges.write();
            for (exchange, kind) in [
                ("amq.direct", ExchangeKind::Direct),
                ("amq.fanout", ExchangeKind::Fanout),
                ("amq.topic", ExchangeKind::Topic),
                ("amq.headers", ExchangeKind::Headers),
                ("amq.match", ExchangeKind::Headers),
            ] {
                let name = ShortString::from_static(exchange);
                let exchange =
                    Exchange::new(name.clone(), kind, true, false, false, FieldTable::new());
                exchanges.insert(name, Arc::new(exchange));
            }
        }
        Arc::new(vhost)
    }

    /// Its description, tags and default queue type.
    pub fn metadata(&self) -> VHostMetadata {
        self.metadata.read().clone()
    }

    /// Its description, tags and default queue type, as committed.
    pub(crate) fn set_metadata(&self, metadata: VHostMetadata) {
        *self.metadata.write() = metadata;
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Proposes a change to the metadata log and waits until this node has applied it.
    pub(super) async fn propose(&self, command: MetadataCommand) -> Result<(), AmqpError> {
        self.store.metadata.propose(command).await
    }

    /// An exchange by name (not the default exchange, which is not stored).
    pub fn exchange(&self, name: &[u8]) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned()
    }

    /// A queue by name.
    pub fn queue(&self, name: &[u8]) -> Option<QueueHandle> {
        self.queues.read().get(name).cloned()
    }

    /// Every queue.
    pub fn queues(&self) -> Vec<QueueHandle> {
        self.queues.read().values().cloned().collect()
    }

    /// Every exchange.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }
}

impl crate::queue::QueueEnv for VHost {
    fn vhost_name(&self) -> Arc<str> {
        self.name.clone()
    }

    fn tasks(&self) -> &QueueTasks {
        &self.tasks
    }

    fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn route(
        &self,
        exchange: &[u8],
        message: &crate::message::Message,
        routing_keys: &[ShortString],
        out: &mut Vec<QueueHandle>,
    ) -> bool {
        let exchange = if exchange.is_empty() {
            None
        } else {
            match self.exchange(exchange) {
                Some(exchange) => Some(exchange),
                None => return false,
            }
        };
        VHost::route(self, exchange.as_deref(), message, routing_keys, out);
        true
    }

    fn remove_queue<'a>(&'a self, queue: &'a QueueHandle) -> crate::queue::env::EnvFuture<'a> {
        Box::pin(self.delete_queue_durably(queue))
    }
}
