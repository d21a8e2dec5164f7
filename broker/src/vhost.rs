//! Virtual hosts: the exchanges and queues in one namespace, declaration rules and routing.
//!
//! Lock order (see docs/locking.md): `changes` before `exchanges` before `queues` before an
//! exchange's bindings before the metadata log's state. No lock is held across an `.await`:
//! methods that change durable entities submit metadata commands under `changes` and return the
//! [`PendingWrites`] for the caller to wait on, with no lock held, before it answers the client.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use warren_config::LeaderLocator;
use warren_wire::{FieldTable, FieldValue, ShortString};

use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Binding, Destination, DestinationKey, Exchange, ExchangeKind};
use crate::message::Message;
use crate::queue::quorum::QuorumHub;
use crate::queue::{self, QueueHandle, QueueSpec, QueueTasks, Queued};
use crate::remote::RemoteHub;
use crate::store::Store;
use crate::store::metadata::{BindingDestination, MetadataCommand};
use crate::store::model::{BindingRecord, ExchangeRecord, QueueRecord};
use warren_cluster::NodeName;

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

/// The queue arguments RabbitMQ compares when a classic queue is declared again.
const COMPARED_QUEUE_ARGUMENTS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
    "x-queue-leader-locator",
];

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
}

/// An AMQP field table as stored in metadata records.
pub(crate) fn encode_table(table: &FieldTable) -> Vec<u8> {
    let mut buf = BytesMut::new();
    table.encode(&mut buf);
    buf.to_vec()
}

/// A field table from a metadata record.
pub(crate) fn decode_table(bytes: &[u8]) -> Result<FieldTable, String> {
    if bytes.is_empty() {
        return Ok(FieldTable::new());
    }
    FieldTable::decode(Bytes::copy_from_slice(bytes))
        .map(|(table, _)| table)
        .map_err(|error| error.to_string())
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

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_shared(&self) -> Arc<str> {
        self.name.clone()
    }

    /// The node's store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn tasks(&self) -> &QueueTasks {
        &self.tasks
    }

    /// Proposes a change to the metadata log and waits until this node has applied it.
    async fn propose(&self, command: MetadataCommand) -> Result<(), AmqpError> {
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

    /// Declares an exchange through the metadata log, or checks that an existing one is
    /// equivalent. Returns once the exchange exists on this node.
    pub async fn declare_exchange(&self, spec: ExchangeSpec) -> Result<Arc<Exchange>, AmqpError> {
        if let Some(existing) = self.exchange(&spec.name) {
            self.check_exchange_equivalence(&existing, &spec)?;
            return Ok(existing);
        }
        if spec.name.starts_with(b"amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        queue::arguments::check_alternate_exchange(&spec.arguments, &spec.name, &self.name)?;
        self.propose(MetadataCommand::DeclareExchange {
            vhost: self.name.to_string(),
            name: spec.name.to_vec(),
            kind: spec.kind.name().to_string(),
            durable: spec.durable,
            home: self.node.to_string(),
            auto_delete: spec.auto_delete,
            internal: spec.internal,
            arguments: encode_table(&spec.arguments),
        })
        .await?;
        // Whoever declared it first, it must be equivalent to what was asked.
        let existing = self
            .exchange(&spec.name)
            .ok_or_else(|| AmqpError::no_exchange(&spec.name, &self.name))?;
        self.check_exchange_equivalence(&existing, &spec)?;
        Ok(existing)
    }

    /// Recreates an exchange from the metadata (at start, or when another node declared it).
    pub(crate) fn restore_exchange(
        &self,
        name: &[u8],
        record: &ExchangeRecord,
    ) -> Result<(), String> {
        let name = ShortString::try_from(name).map_err(|error| error.to_string())?;
        let kind = ExchangeKind::parse(record.kind.as_bytes())
            .ok_or_else(|| format!("unknown exchange type '{}'", record.kind))?;
        let exchange = Exchange::new(
            name.clone(),
            kind,
            record.durable,
            record.auto_delete,
            record.internal,
            decode_table(&record.arguments)?,
        );
        self.exchanges
            .write()
            .entry(name)
            .or_insert_with(|| Arc::new(exchange));
        Ok(())
    }

    fn check_exchange_equivalence(
        &self,
        existing: &Exchange,
        spec: &ExchangeSpec,
    ) -> Result<(), AmqpError> {
        let resource = format!("exchange '{}' in vhost '{}'", spec.name, self.name);
        let mismatch = |key: &str, received: String, current: String| {
            AmqpError::precondition_failed(format!(
                "inequivalent arg '{key}' for {resource}: received {received} but current is {current}"
            ))
        };
        if existing.kind != spec.kind {
            return Err(mismatch(
                "type",
                quoted(spec.kind.name()),
                quoted(existing.kind.name()),
            ));
        }
        for (key, received, current) in [
            ("durable", spec.durable, existing.durable),
            ("auto_delete", spec.auto_delete, existing.auto_delete),
            ("internal", spec.internal, existing.internal),
        ] {
            if received != current {
                return Err(mismatch(key, quoted(received), quoted(current)));
            }
        }
        compare_argument(
            "alternate-exchange",
            &spec.arguments,
            &existing.arguments,
            &resource,
        )
    }

    /// Deletes an exchange and every binding from or to it; missing exchanges are fine.
    pub async fn delete_exchange(&self, name: &ShortString, if_unused: bool) -> AmqpResult<()> {
        {
            let Some(exchange) = self.exchange(name) else {
                return Ok(());
            };
            if if_unused && exchange.has_bindings() {
                return Err(AmqpError::precondition_failed(format!(
                    "exchange '{name}' in vhost '{}' in use",
                    self.name
                )));
            }
        }
        self.propose(MetadataCommand::DeleteExchange {
            vhost: self.name.to_string(),
            name: name.to_vec(),
        })
        .await
    }

    /// Removes exchanges from memory with the bindings to them; exchanges that lose their last
    /// binding that way and are auto-delete go too. With `only_unused_auto_delete`, a name is
    /// removed only if it is an auto-delete exchange with no bindings left. Mirrors what the
    /// metadata state does for the same command. Call with `changes` held.
    fn remove_exchanges(&self, mut names: Vec<ShortString>, only_unused_auto_delete: bool) {
        let mut only_unused = only_unused_auto_delete;
        while !names.is_empty() {
            let mut next = Vec::new();
            let mut exchanges = self.exchanges.write();
            for name in names.drain(..) {
                let removable = exchanges.get(&name).is_some_and(|exchange| {
                    !only_unused || (exchange.auto_delete && !exchange.has_bindings())
                });
                if !removable {
                    continue;
                }
                exchanges.remove(&name);
                let key = DestinationKey::Exchange(name);
                for other in exchanges.values() {
                    if other.unbind_destination(&key) > 0
                        && other.auto_delete
                        && !other.has_bindings()
                    {
                        next.push(other.name.clone());
                    }
                }
            }
            names = next;
            only_unused = true;
        }
    }

    /// Declares a queue through the metadata log (homed on this node), or checks that an
    /// existing one is equivalent. Returns the queue and whether this declaration created it.
    pub async fn declare_queue(
        self: &Arc<Self>,
        spec: QueueSpec,
        connection: u64,
    ) -> Result<(QueueHandle, bool), AmqpError> {
        if let Some(existing) = self.queue(&spec.name) {
            self.check_queue_equivalence(&existing, &spec, connection)?;
            return Ok((existing, false));
        }
        // Arguments are validated only when the queue is created, as in RabbitMQ.
        let config = queue::arguments::parse(&spec.arguments, &spec.name, &self.name)?;
        let id = self.store.next_queue_id();
        if config.quorum {
            self.propose_quorum_queue(&spec, &config, id).await?;
            let queue = self
                .queue(&spec.name)
                .ok_or_else(|| AmqpError::no_queue(&spec.name, &self.name))?;
            if queue.id() == id {
                return Ok((queue, true));
            }
            self.check_queue_equivalence(&queue, &spec, connection)?;
            return Ok((queue, false));
        }
        self.propose(MetadataCommand::DeclareQueue {
            vhost: self.name.to_string(),
            name: spec.name.to_vec(),
            id,
            home: self.node.to_string(),
            durable: spec.durable,
            exclusive_owner: spec.exclusive_owner,
            auto_delete: spec.auto_delete,
            arguments: encode_table(&spec.arguments),
        })
        .await?;
        let queue = self
            .queue(&spec.name)
            .ok_or_else(|| AmqpError::no_queue(&spec.name, &self.name))?;
        if queue.id() == id {
            return Ok((queue, true));
        }
        // Another declaration of the name was applied first.
        self.check_queue_equivalence(&queue, &spec, connection)?;
        Ok((queue, false))
    }

    /// Places a new quorum queue's group and proposes it: up to its initial group size of the
    /// cluster's nodes, this node first (its member stands for election first: RabbitMQ's
    /// `client-local` leader locator), the others taken in turn from a place set by the
    /// queue's id, so that groups spread over the cluster.
    async fn propose_quorum_queue(
        &self,
        spec: &QueueSpec,
        config: &queue::QueueConfig,
        id: u64,
    ) -> Result<(), AmqpError> {
        let resource = format!("queue '{}' in vhost '{}'", spec.name, self.name);
        if spec.auto_delete {
            return Err(AmqpError::precondition_failed(format!(
                "invalid property 'auto-delete' for {resource}"
            )));
        }
        if spec.exclusive_owner.is_some() {
            return Err(AmqpError::precondition_failed(format!(
                "invalid property 'exclusive-owner' for {resource}"
            )));
        }
        if !spec.durable {
            return Err(AmqpError::precondition_failed(format!(
                "invalid property 'non-durable' for {resource}"
            )));
        }
        let group = self.store.metadata.group().ok_or_else(|| {
            AmqpError::internal_error("the metadata store is not running".to_string())
        })?;
        let status = group.status();
        let me = group.id();
        let mut others: Vec<(u64, String)> = status
            .members
            .iter()
            .filter(|member| member.id != me)
            .map(|member| (member.id, member.name.clone()))
            .collect();
        others.sort();
        if !others.is_empty() {
            let start = (id % others.len() as u64) as usize;
            others.rotate_left(start);
        }
        let size = config.initial_group_size.unwrap_or(3).max(1) as usize;
        let mut members = vec![(me, self.node.to_string())];
        members.extend(others.into_iter().take(size - 1));
        let locator = match spec.arguments.get("x-queue-leader-locator") {
            Some(FieldValue::LongString(value)) if value.as_bytes() == b"balanced" => {
                LeaderLocator::Balanced
            }
            Some(_) => LeaderLocator::ClientLocal,
            None => self.leader_locator,
        };
        let leader = match locator {
            LeaderLocator::ClientLocal => self.node.to_string(),
            LeaderLocator::Balanced => self.balanced_leader(&members, id),
        };
        self.propose(MetadataCommand::DeclareQuorumQueue {
            vhost: self.name.to_string(),
            name: spec.name.to_vec(),
            id,
            members,
            leader,
            arguments: encode_table(&spec.arguments),
        })
        .await
    }

    /// `balanced`, as RabbitMQ has it: below 1,000 quorum queues, the member whose node is the
    /// first leader of the fewest (the first such in `members`, which starts with this node);
    /// past that, one picked by the queue's (random) id.
    fn balanced_leader(&self, members: &[(u64, String)], id: u64) -> String {
        const CENSUS_LIMIT: usize = 1_000;
        let (leading, queues) = self.quorum.first_leaders(CENSUS_LIMIT);
        if queues >= CENSUS_LIMIT {
            return members[(id % members.len() as u64) as usize].1.clone();
        }
        members
            .iter()
            .min_by_key(|(_, node)| leading.get(node).copied().unwrap_or(0))
            .map_or_else(|| self.node.to_string(), |(_, node)| node.clone())
    }

    /// Makes this node's front of a quorum queue and, on a node of its group, starts its member.
    pub(crate) fn add_quorum_queue(self: &Arc<Self>, name: &[u8], record: &QueueRecord) {
        let (name, spec, config) = match self.queue_spec(name, record) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::error!(
                    "quorum queue '{}' in vhost '{}': {error}",
                    String::from_utf8_lossy(name),
                    self.name
                );
                return;
            }
        };
        self.quorum
            .set_limits(record.id, queue::quorum::front::limits(&config));
        self.quorum
            .place(record.id, &record.members, &record.removed, &record.home);
        let handle = queue::quorum::front::spawn(&self.quorum, spec, config, self, record.id);
        self.queues.write().insert(name, handle);
    }

    /// What a queue's metadata record declares.
    fn queue_spec(
        &self,
        name: &[u8],
        record: &QueueRecord,
    ) -> Result<(ShortString, QueueSpec, queue::QueueConfig), String> {
        let name = ShortString::try_from(name).map_err(|error| error.to_string())?;
        let arguments = decode_table(&record.arguments)?;
        let config = queue::arguments::parse(&arguments, &name, &self.name)
            .map_err(|error| error.to_string())?;
        let spec = QueueSpec {
            name: name.clone(),
            durable: record.durable,
            exclusive_owner: record.exclusive_owner,
            auto_delete: record.auto_delete,
            arguments,
        };
        Ok((name, spec, config))
    }

    /// Starts a queue homed on this node from the metadata, with the messages recovered for it.
    pub(crate) fn restore_queue(
        self: &Arc<Self>,
        name: &[u8],
        record: &QueueRecord,
        messages: Vec<Queued>,
    ) -> Result<QueueHandle, String> {
        let (name, spec, config) = self.queue_spec(name, record)?;
        let handle = queue::spawn(spec, config, self, record.id, messages);
        self.queues.write().insert(name, handle.clone());
        Ok(handle)
    }

    /// Makes the local handle of a queue whose home is another node: a proxy to it.
    pub(crate) fn add_remote_queue(self: &Arc<Self>, name: &[u8], record: &QueueRecord) {
        let added = (|| -> Result<(), String> {
            let (name, spec, config) = self.queue_spec(name, record)?;
            let handle = crate::remote::proxy::spawn(
                &self.remote,
                spec,
                config,
                self.name.clone(),
                record.id,
                NodeName::new_unchecked(record.home.clone()),
                &self.tasks,
            );
            self.queues.write().insert(name, handle);
            Ok(())
        })();
        if let Err(error) = added {
            tracing::error!(
                "queue '{}' of node {} in vhost '{}': {error}",
                String::from_utf8_lossy(name),
                record.home,
                self.name
            );
        }
    }

    /// The home node of a queue hosted elsewhere.
    pub fn remote_queue_home(&self, name: &[u8]) -> Option<String> {
        self.queue(name)
            .and_then(|queue| queue.home.as_ref().map(|home| home.to_string()))
    }

    /// Brings memory in line with a committed change to this vhost's exchanges, queues or
    /// bindings: the only place they change, on every node, in log order.
    pub(crate) fn apply(self: &Arc<Self>, command: &MetadataCommand) {
        let _changes = self.changes.lock();
        let failed = |what: &str, error: String| {
            tracing::warn!("vhost '{}': {what}: {error}", self.name);
        };
        match command {
            MetadataCommand::DeclareExchange { name, .. } => {
                if let Some(record) = command.exchange_record()
                    && let Err(error) = self.restore_exchange(name, &record)
                {
                    failed("exchange", error);
                }
            }
            MetadataCommand::DeleteExchange { name, .. } => {
                if let Ok(name) = ShortString::try_from(name.as_slice()) {
                    self.remove_exchanges(vec![name], false);
                }
            }
            MetadataCommand::DeclareQueue { name, .. } => {
                let Some(record) = command.queue_record() else {
                    return;
                };
                if self.queues.read().contains_key(name.as_slice()) {
                    return;
                }
                if *record.home == *self.node {
                    if let Err(error) = self.restore_queue(name, &record, Vec::new()) {
                        failed("queue", error);
                    }
                } else {
                    self.add_remote_queue(name, &record);
                }
            }
            MetadataCommand::DeclareQuorumQueue { name, .. } => {
                let Some(record) = command.queue_record() else {
                    return;
                };
                let existing = self
                    .queues
                    .read()
                    .get(name.as_slice())
                    .map(|queue| queue.id());
                match existing {
                    None => self.add_quorum_queue(name, &record),
                    // From a snapshot installed while the node ran: its members may have
                    // changed since.
                    Some(id) if id == record.id => {
                        self.quorum.replace_members(id, &record.members, 0);
                    }
                    Some(_) => {}
                }
            }
            MetadataCommand::SetQuorumMembers {
                name,
                id,
                members,
                removed_at,
                ..
            } => {
                let current = self
                    .queues
                    .read()
                    .get(name.as_slice())
                    .map(|queue| queue.id());
                if current == Some(*id) && !members.is_empty() {
                    self.quorum.replace_members(*id, members, *removed_at);
                }
            }
            MetadataCommand::DeleteQueue { name, id, .. } => {
                let removed = {
                    let mut queues = self.queues.write();
                    if queues
                        .get(name.as_slice())
                        .is_some_and(|queue| queue.id() == *id)
                    {
                        queues.remove(name.as_slice())
                    } else {
                        None
                    }
                };
                let Some(queue) = removed else { return };
                if queue.home.is_some() {
                    self.remote.remove_proxy(queue.id());
                }
                if queue.config.quorum {
                    self.quorum.remove(queue.id());
                }
                let key = DestinationKey::Queue(queue.id());
                let emptied: Vec<ShortString> = self
                    .exchanges
                    .read()
                    .values()
                    .filter(|exchange| {
                        exchange.unbind_destination(&key) > 0
                            && exchange.auto_delete
                            && !exchange.has_bindings()
                    })
                    .map(|exchange| exchange.name.clone())
                    .collect();
                if !emptied.is_empty() {
                    self.remove_exchanges(emptied, true);
                }
            }
            MetadataCommand::Bind {
                vhost,
                source,
                destination,
                routing_key,
                arguments,
            } => {
                let record = BindingRecord {
                    vhost: vhost.clone(),
                    source: source.clone(),
                    destination: match destination {
                        BindingDestination::Queue(name) => (true, name.clone()),
                        BindingDestination::Exchange(name) => (false, name.clone()),
                    },
                    routing_key: routing_key.clone(),
                    arguments: arguments.clone(),
                };
                if let Err(error) = self.restore_binding(&record) {
                    tracing::debug!("vhost '{}': binding not applied: {error}", self.name);
                }
            }
            MetadataCommand::Unbind {
                source,
                destination,
                routing_key,
                arguments,
                ..
            } => {
                let (Some(exchange), Ok(key), Ok(arguments)) = (
                    self.exchange(source),
                    ShortString::try_from(routing_key.as_slice()),
                    decode_table(arguments),
                ) else {
                    return;
                };
                let destination = match destination {
                    BindingDestination::Queue(name) => match self.queue(name) {
                        Some(queue) => DestinationKey::Queue(queue.id()),
                        None => return,
                    },
                    BindingDestination::Exchange(name) => {
                        match ShortString::try_from(name.as_slice()) {
                            Ok(name) => DestinationKey::Exchange(name),
                            Err(_) => return,
                        }
                    }
                };
                if exchange.unbind(&destination, &key, &arguments)
                    && exchange.auto_delete
                    && !exchange.has_bindings()
                {
                    self.remove_exchanges(vec![exchange.name.clone()], true);
                }
            }
            MetadataCommand::PutVHost { .. }
            | MetadataCommand::DeleteVHost { .. }
            | MetadataCommand::PutUser { .. }
            | MetadataCommand::DeleteUser { .. }
            | MetadataCommand::SetPermissions { .. }
            | MetadataCommand::Snapshot(_) => {}
        }
    }

    /// Recreates a binding from the metadata (at start, or when applied); both ends must exist.
    pub(crate) fn restore_binding(&self, record: &BindingRecord) -> Result<(), String> {
        let source = self
            .exchange(&record.source)
            .ok_or_else(|| "its source exchange is missing".to_string())?;
        let destination = match &record.destination {
            (true, name) => Destination::Queue(
                self.queue(name)
                    .ok_or_else(|| "its queue is missing".to_string())?,
            ),
            (false, name) => {
                let name =
                    ShortString::try_from(name.as_slice()).map_err(|error| error.to_string())?;
                if self.exchange(&name).is_none() {
                    return Err("its destination exchange is missing".into());
                }
                Destination::Exchange(name)
            }
        };
        source
            .bind(Binding {
                destination,
                routing_key: ShortString::try_from(record.routing_key.as_slice())
                    .map_err(|error| error.to_string())?,
                arguments: decode_table(&record.arguments)?,
            })
            .map(drop)
            .map_err(|error| error.to_string())
    }

    fn check_queue_equivalence(
        &self,
        existing: &QueueHandle,
        spec: &QueueSpec,
        connection: u64,
    ) -> Result<(), AmqpError> {
        // Exclusivity first, and as a lock error, as RabbitMQ does.
        let exclusive_matches =
            existing.exclusive_owner.is_some() == spec.exclusive_owner.is_some();
        if !exclusive_matches || existing.is_locked_for(connection) {
            return Err(AmqpError::exclusive_locked(&spec.name, &self.name));
        }
        let resource = format!("queue '{}' in vhost '{}'", spec.name, self.name);
        for (key, received, current) in [
            ("durable", spec.durable, existing.durable),
            ("auto_delete", spec.auto_delete, existing.auto_delete),
        ] {
            if received != current {
                return Err(AmqpError::precondition_failed(format!(
                    "inequivalent arg '{key}' for {resource}: received {} but current is {}",
                    quoted(received),
                    quoted(current)
                )));
            }
        }
        for key in COMPARED_QUEUE_ARGUMENTS {
            compare_argument(key, &spec.arguments, &existing.arguments, &resource)?;
        }
        Ok(())
    }

    /// Deletes a queue from the metadata (every node forgets it, its bindings go, auto-delete
    /// exchanges it leaves unbound go too) and waits until this node has applied it. Called by
    /// the queue's task before it answers `queue.delete`. Without a majority the deletion is
    /// retried in the background until it commits or the node stops.
    pub(crate) async fn delete_queue_durably(&self, queue: &QueueHandle) {
        let command = MetadataCommand::DeleteQueue {
            vhost: self.name.to_string(),
            name: queue.name.to_vec(),
            id: queue.id(),
        };
        if let Err(error) = self.propose(command.clone()).await {
            tracing::warn!(
                queue = %queue.name,
                "deletion not committed yet ({error}); retrying while the node runs"
            );
            let metadata = self.store.clone();
            let stop = self.tasks.stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                        _ = stop.cancelled() => return,
                    }
                    if metadata.metadata.propose(command.clone()).await.is_ok() {
                        return;
                    }
                }
            });
        }
    }

    /// Binds `destination` to `exchange` through the metadata log.
    pub async fn bind(
        &self,
        exchange: &Exchange,
        destination: Destination,
        routing_key: ShortString,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        // What the exchange would refuse (a headers binding with a bad x-match) is refused now:
        // applying cannot fail.
        exchange.check_binding(&arguments)?;
        let command = self.binding_command(true, exchange, &destination, &routing_key, &arguments);
        self.propose(command).await
    }

    fn binding_command(
        &self,
        bind: bool,
        exchange: &Exchange,
        destination: &Destination,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> MetadataCommand {
        let (vhost, source) = (self.name.to_string(), exchange.name.to_vec());
        let destination = match destination {
            Destination::Queue(queue) => BindingDestination::Queue(queue.name.to_vec()),
            Destination::Exchange(name) => BindingDestination::Exchange(name.to_vec()),
        };
        let (routing_key, arguments) = (routing_key.to_vec(), encode_table(arguments));
        if bind {
            MetadataCommand::Bind {
                vhost,
                source,
                destination,
                routing_key,
                arguments,
            }
        } else {
            MetadataCommand::Unbind {
                vhost,
                source,
                destination,
                routing_key,
                arguments,
            }
        }
    }

    /// Removes a binding if it exists; an auto-delete exchange left without bindings goes, as in
    /// RabbitMQ.
    pub async fn unbind(
        &self,
        exchange: &Exchange,
        destination: &Destination,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> AmqpResult<()> {
        if !exchange.has_binding(&destination.key(), routing_key, arguments) {
            return Ok(());
        }
        let command = self.binding_command(false, exchange, destination, routing_key, arguments);
        self.propose(command).await
    }

    /// Appends the queues `message` routes to from `exchange` (the default exchange when
    /// `None`) with each of `routing_keys` (the publish key, then `CC` and `BCC` keys), each
    /// queue once. Exchange-to-exchange bindings are followed and each exchange is visited once,
    /// so binding loops end; an exchange whose own bindings match nothing hands the message to
    /// its alternate exchange, as RabbitMQ's `route1` does.
    pub fn route(
        &self,
        exchange: Option<&Exchange>,
        message: &Message,
        routing_keys: &[ShortString],
        out: &mut Vec<QueueHandle>,
    ) {
        let Some(exchange) = exchange else {
            for key in routing_keys {
                if let Some(queue) = self.queue(key)
                    && !out.contains(&queue)
                {
                    out.push(queue);
                }
            }
            return;
        };
        let mut headers = None;
        let mut destinations = Vec::new();
        let mut visited: Vec<ShortString> = vec![exchange.name.clone()];
        self.route_one(
            exchange,
            message,
            routing_keys,
            &mut headers,
            &mut destinations,
        );
        while let Some(destination) = destinations.pop() {
            match destination {
                Destination::Queue(queue) => {
                    if !out.contains(&queue) {
                        out.push(queue);
                    }
                }
                Destination::Exchange(name) => {
                    if visited.contains(&name) {
                        continue;
                    }
                    if let Some(next) = self.exchange(&name) {
                        self.route_one(
                            &next,
                            message,
                            routing_keys,
                            &mut headers,
                            &mut destinations,
                        );
                    }
                    visited.push(name);
                }
            }
        }
    }

    fn route_one(
        &self,
        exchange: &Exchange,
        message: &Message,
        routing_keys: &[ShortString],
        headers: &mut Option<Option<FieldTable>>,
        destinations: &mut Vec<Destination>,
    ) {
        let before = destinations.len();
        for key in routing_keys {
            exchange.route(key, message, headers, destinations);
        }
        if destinations.len() == before
            && let Some(alternate) = exchange.alternate_exchange()
        {
            destinations.push(Destination::Exchange(alternate));
        }
    }
}

fn quoted(value: impl std::fmt::Display) -> String {
    format!("'{value}'")
}

/// Compares one argument of a redeclaration as RabbitMQ does: integers with integers and
/// floats with floats by value, other types by type and value; `x-queue-type` absent equals
/// `classic`.
fn compare_argument(
    key: &str,
    received: &FieldTable,
    current: &FieldTable,
    resource: &str,
) -> Result<(), AmqpError> {
    let classic = FieldValue::from("classic");
    let normalise = |value: Option<&FieldValue>| -> Option<FieldValue> {
        match (key, value) {
            ("x-queue-type", None) => Some(classic.clone()),
            (_, value) => value.cloned(),
        }
    };
    let received = normalise(received.get(key));
    let current = normalise(current.get(key));
    let equivalent = match (&received, &current) {
        (None, None) => true,
        (Some(a), Some(b)) => match (a.as_integer(), b.as_integer()) {
            (Some(a), Some(b)) => a == b,
            _ => a == b,
        },
        _ => false,
    };
    if equivalent {
        return Ok(());
    }
    // RabbitMQ prints bare values when both sides have one, typed values otherwise
    // (rabbit_misc:assert_args_equivalence1 and val/1).
    let (received, current) = match (&received, &current) {
        (Some(a), Some(b)) => (
            format!("'{}'", bare_value(a)),
            format!("'{}'", bare_value(b)),
        ),
        _ => (
            describe_value(received.as_ref()),
            describe_value(current.as_ref()),
        ),
    };
    Err(AmqpError::precondition_failed(format!(
        "inequivalent arg '{key}' for {resource}: received {received} but current is {current}"
    )))
}

/// A value as Erlang prints it bare (`~ts` for binaries, `~tp` otherwise).
fn bare_value(value: &FieldValue) -> String {
    let described = describe_value(Some(value));
    // "the value 'X' of type 'T'" -> X
    described
        .strip_prefix("the value '")
        .and_then(|rest| rest.rsplit_once("' of type '"))
        .map_or(described.clone(), |(text, _)| text.to_string())
}

/// RabbitMQ's `val/1`: `none`, or `the value '1000' of type 'long'`.
pub(crate) fn describe_value(value: Option<&FieldValue>) -> String {
    let Some(value) = value else {
        return "none".into();
    };
    let (text, kind) = match value {
        FieldValue::Boolean(v) => (v.to_string(), "bool"),
        FieldValue::ShortShortInt(v) => (v.to_string(), "byte"),
        FieldValue::ShortShortUInt(v) => (v.to_string(), "unsignedbyte"),
        FieldValue::ShortInt(v) => (v.to_string(), "short"),
        FieldValue::ShortUInt(v) => (v.to_string(), "unsignedshort"),
        FieldValue::LongInt(v) => (v.to_string(), "signedint"),
        FieldValue::LongUInt(v) => (v.to_string(), "unsignedint"),
        FieldValue::LongLongInt(v) => (v.to_string(), "long"),
        FieldValue::Float(v) => (v.to_string(), "float"),
        FieldValue::Double(v) => (v.to_string(), "double"),
        FieldValue::Decimal(v) => (format!("{{{},{}}}", v.scale, v.value), "decimal"),
        FieldValue::LongString(v) => (v.to_string(), "longstr"),
        FieldValue::Array(_) => ("[...]".into(), "array"),
        FieldValue::Timestamp(v) => (v.to_string(), "timestamp"),
        FieldValue::Table(_) => ("[...]".into(), "table"),
        FieldValue::ByteArray(v) => (String::from_utf8_lossy(v).into_owned(), "binary"),
        FieldValue::Void => ("undefined".into(), "void"),
    };
    format!("the value '{text}' of type '{kind}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(key, value)| (ShortString::try_from(*key).unwrap(), value.clone()))
            .collect()
    }

    #[test]
    fn argument_equivalence_follows_rabbitmq() {
        let resource = "queue 'q' in vhost '/'";
        let long = table(&[("x-message-ttl", FieldValue::LongLongInt(1000))]);
        let int = table(&[("x-message-ttl", FieldValue::LongInt(1000))]);
        let string = table(&[("x-message-ttl", "1000".into())]);
        assert!(compare_argument("x-message-ttl", &int, &long, resource).is_ok());
        assert_eq!(
            compare_argument("x-message-ttl", &string, &long, resource)
                .unwrap_err()
                .to_string(),
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '1000' but current is '1000'"
        );
        assert_eq!(
            compare_argument("x-message-ttl", &FieldTable::new(), &long, resource)
                .unwrap_err()
                .to_string(),
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '1000' of type 'long'"
        );
        let classic = table(&[("x-queue-type", "classic".into())]);
        assert!(compare_argument("x-queue-type", &classic, &FieldTable::new(), resource).is_ok());
    }
}
