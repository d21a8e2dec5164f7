//! Applying a committed metadata command to a vhost's memory: the same change on every node,
//! in the order the log committed them.

use std::sync::Arc;

use warren_wire::ShortString;

use crate::exchange::DestinationKey;
use crate::store::metadata::{BindingDestination, MetadataCommand};
use crate::store::model::{BindingRecord, decode_table};

use super::VHost;

impl VHost {
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
            | MetadataCommand::ClearPermissions { .. }
            | MetadataCommand::SetGlobalParameter { .. }
            | MetadataCommand::ClearGlobalParameter { .. }
            | MetadataCommand::Snapshot(_) => {}
            MetadataCommand::SetVHostMetadata {
                description,
                tags,
                default_queue_type,
                ..
            } => self.set_metadata(super::VHostMetadata {
                description: description.clone(),
                tags: tags.clone(),
                default_queue_type: default_queue_type.clone(),
            }),
        }
    }
}
