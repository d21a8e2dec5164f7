//! The metadata state as the commands of the metadata log describe it: what a replay rebuilds,
//! what a snapshot writes, and what every node's memory mirrors.
//!
//! Applying is deterministic and first-wins: a declaration of a name that exists changes
//! nothing (the proposer then finds the existing entity and checks it is equivalent); a binding
//! needs both ends; removing an exchange's last binding deletes it when it is auto-delete, and
//! so on down the chain, the same way on every node.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use warren_wire::FieldTable;

use super::metadata::{BindingDestination, MetadataCommand};

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

/// The exchanges every vhost has without declaring them.
pub const PREDECLARED: &[&[u8]] = &[
    b"amq.direct",
    b"amq.fanout",
    b"amq.topic",
    b"amq.headers",
    b"amq.match",
];

/// An exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRecord {
    /// Type name.
    pub kind: String,
    /// Survives restarts (a transient exchange lives as long as the node that declared it).
    pub durable: bool,
    /// The node that declared it.
    pub home: String,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Internal.
    pub internal: bool,
    /// AMQP-encoded arguments.
    pub arguments: Vec<u8>,
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// Persistent id.
    pub id: u64,
    /// The node that holds its messages.
    pub home: String,
    /// Survives restarts.
    pub durable: bool,
    /// The connection (on the home node) an exclusive queue belongs to.
    pub exclusive_owner: Option<u64>,
    /// Auto-delete.
    pub auto_delete: bool,
    /// AMQP-encoded arguments.
    pub arguments: Vec<u8>,
    /// A quorum queue's group: member ids and their nodes (empty for a classic queue).
    pub members: Vec<(u64, String)>,
    /// Members removed from the group since: member id, node, and the index of the removal in
    /// the queue's log. A node that was down meanwhile deletes its member's log when it starts,
    /// unless that log goes past the removal (it was added again since).
    pub removed: Vec<(u64, String, u64)>,
}

impl QueueRecord {
    /// Whether it is a quorum queue.
    pub fn is_quorum(&self) -> bool {
        !self.members.is_empty()
    }
}

/// A durable binding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BindingRecord {
    /// Vhost.
    pub vhost: String,
    /// Source exchange.
    pub source: Vec<u8>,
    /// Destination.
    pub destination: (bool, Vec<u8>),
    /// Binding key.
    pub routing_key: Vec<u8>,
    /// AMQP-encoded arguments.
    pub arguments: Vec<u8>,
}

impl BindingRecord {
    /// The destination as a command field.
    pub fn destination(&self) -> BindingDestination {
        match &self.destination {
            (true, name) => BindingDestination::Queue(name.clone()),
            (false, name) => BindingDestination::Exchange(name.clone()),
        }
    }
}

/// Users: name to (password hash, tags).
pub type UserRecords = BTreeMap<String, (Option<String>, Vec<String>)>;

/// Everything durable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DurableState {
    /// Vhost names.
    pub vhosts: BTreeSet<String>,
    /// Users.
    pub users: UserRecords,
    /// (user, vhost) to (configure, write, read).
    pub permissions: BTreeMap<(String, String), (String, String, String)>,
    /// (vhost, name) to exchange.
    pub exchanges: BTreeMap<(String, Vec<u8>), ExchangeRecord>,
    /// (vhost, name) to queue.
    pub queues: BTreeMap<(String, Vec<u8>), QueueRecord>,
    /// Bindings.
    pub bindings: BTreeSet<BindingRecord>,
    /// Vhost name to (description, tags, default queue type).
    pub vhost_metadata: BTreeMap<String, (String, Vec<String>, Option<String>)>,
    /// Global runtime parameters: name to JSON text.
    pub global_parameters: BTreeMap<String, String>,
}

fn destination(destination: &BindingDestination) -> (bool, Vec<u8>) {
    match destination {
        BindingDestination::Queue(name) => (true, name.clone()),
        BindingDestination::Exchange(name) => (false, name.clone()),
    }
}

impl MetadataCommand {
    /// The exchange a `DeclareExchange` declares.
    pub fn exchange_record(&self) -> Option<ExchangeRecord> {
        match self {
            MetadataCommand::DeclareExchange {
                kind,
                durable,
                home,
                auto_delete,
                internal,
                arguments,
                ..
            } => Some(ExchangeRecord {
                kind: kind.clone(),
                durable: *durable,
                home: home.clone(),
                auto_delete: *auto_delete,
                internal: *internal,
                arguments: arguments.clone(),
            }),
            _ => None,
        }
    }

    /// The queue a `DeclareQueue` or `DeclareQuorumQueue` declares.
    pub fn queue_record(&self) -> Option<QueueRecord> {
        match self {
            MetadataCommand::DeclareQueue {
                id,
                home,
                durable,
                exclusive_owner,
                auto_delete,
                arguments,
                ..
            } => Some(QueueRecord {
                id: *id,
                home: home.clone(),
                durable: *durable,
                exclusive_owner: *exclusive_owner,
                auto_delete: *auto_delete,
                arguments: arguments.clone(),
                members: Vec::new(),
                removed: Vec::new(),
            }),
            MetadataCommand::DeclareQuorumQueue {
                id,
                members,
                leader,
                arguments,
                ..
            } => Some(QueueRecord {
                id: *id,
                home: leader.clone(),
                durable: true,
                exclusive_owner: None,
                auto_delete: false,
                arguments: arguments.clone(),
                members: members.clone(),
                removed: Vec::new(),
            }),
            _ => None,
        }
    }
}

/// The removal index a `SetQuorumMembers` carries (0 for others, and for additions).
fn command_removed_at(command: &MetadataCommand) -> u64 {
    match command {
        MetadataCommand::SetQuorumMembers { removed_at, .. } => *removed_at,
        _ => 0,
    }
}

impl DurableState {
    /// Applies one command.
    pub fn apply(&mut self, command: &MetadataCommand) {
        match command {
            MetadataCommand::PutVHost { name } => {
                self.vhosts.insert(name.clone());
            }
            MetadataCommand::DeleteVHost { name } => {
                self.vhosts.remove(name);
                self.vhost_metadata.remove(name);
                self.permissions.retain(|(_, vhost), _| vhost != name);
                self.exchanges.retain(|(vhost, _), _| vhost != name);
                self.queues.retain(|(vhost, _), _| vhost != name);
                self.bindings.retain(|binding| binding.vhost != *name);
            }
            MetadataCommand::PutUser {
                name,
                password_hash,
                tags,
            } => {
                self.users
                    .insert(name.clone(), (password_hash.clone(), tags.clone()));
            }
            MetadataCommand::DeleteUser { name } => {
                self.users.remove(name);
                self.permissions.retain(|(user, _), _| user != name);
            }
            MetadataCommand::SetPermissions {
                user,
                vhost,
                configure,
                write,
                read,
            } => {
                self.permissions.insert(
                    (user.clone(), vhost.clone()),
                    (configure.clone(), write.clone(), read.clone()),
                );
            }
            MetadataCommand::DeclareExchange { vhost, name, .. } => {
                if let (true, Some(record)) =
                    (self.vhosts.contains(vhost), command.exchange_record())
                {
                    self.exchanges
                        .entry((vhost.clone(), name.clone()))
                        .or_insert(record);
                }
            }
            MetadataCommand::DeleteExchange { vhost, name } => {
                self.remove_exchange(vhost, name);
            }
            MetadataCommand::DeclareQueue { vhost, name, .. }
            | MetadataCommand::DeclareQuorumQueue { vhost, name, .. } => {
                if let (true, Some(record)) = (self.vhosts.contains(vhost), command.queue_record())
                {
                    self.queues
                        .entry((vhost.clone(), name.clone()))
                        .or_insert(record);
                }
            }
            MetadataCommand::SetQuorumMembers {
                vhost,
                name,
                id,
                members,
                ..
            } => {
                let key = (vhost.clone(), name.clone());
                if let Some(queue) = self.queues.get_mut(&key)
                    && queue.id == *id
                    && queue.is_quorum()
                    && !members.is_empty()
                {
                    let removed_at = command_removed_at(command);
                    for (member, node) in &queue.members {
                        if !members.iter().any(|(id, _)| id == member) && removed_at != 0 {
                            queue.removed.retain(|(id, ..)| id != member);
                            queue.removed.push((*member, node.clone(), removed_at));
                        }
                    }
                    queue
                        .removed
                        .retain(|(member, ..)| !members.iter().any(|(id, _)| id == member));
                    queue.members = members.clone();
                    // The node named to lead first is one of its members.
                    if !members.iter().any(|(_, node)| *node == queue.home) {
                        queue.home = members[0].1.clone();
                    }
                }
            }
            MetadataCommand::DeleteQueue { vhost, name, id } => {
                let key = (vhost.clone(), name.clone());
                if self.queues.get(&key).is_some_and(|queue| queue.id == *id) {
                    self.queues.remove(&key);
                    let to = (true, name.clone());
                    let sources = self.drop_bindings(|b| b.vhost == *vhost && b.destination == to);
                    self.drop_unused_auto_delete(vhost, sources);
                }
            }
            MetadataCommand::Bind {
                vhost,
                source,
                destination: to,
                routing_key,
                arguments,
            } => {
                let to = destination(to);
                let source_exists = self.exchange_exists(vhost, source);
                let destination_exists = match &to {
                    (true, name) => self.queues.contains_key(&(vhost.clone(), name.clone())),
                    (false, name) => self.exchange_exists(vhost, name),
                };
                if source_exists && destination_exists {
                    self.bindings.insert(BindingRecord {
                        vhost: vhost.clone(),
                        source: source.clone(),
                        destination: to,
                        routing_key: routing_key.clone(),
                        arguments: arguments.clone(),
                    });
                }
            }
            MetadataCommand::Unbind {
                vhost,
                source,
                destination: to,
                routing_key,
                arguments,
            } => {
                let removed = self.bindings.remove(&BindingRecord {
                    vhost: vhost.clone(),
                    source: source.clone(),
                    destination: destination(to),
                    routing_key: routing_key.clone(),
                    arguments: arguments.clone(),
                });
                if removed {
                    self.drop_unused_auto_delete(vhost, vec![source.clone()]);
                }
            }
            MetadataCommand::ClearPermissions { user, vhost } => {
                self.permissions.remove(&(user.clone(), vhost.clone()));
            }
            MetadataCommand::SetVHostMetadata {
                name,
                description,
                tags,
                default_queue_type,
            } => {
                if self.vhosts.contains(name) {
                    self.vhost_metadata.insert(
                        name.clone(),
                        (
                            description.clone(),
                            tags.clone(),
                            default_queue_type.clone(),
                        ),
                    );
                }
            }
            MetadataCommand::SetGlobalParameter { name, value } => {
                self.global_parameters.insert(name.clone(), value.clone());
            }
            MetadataCommand::ClearGlobalParameter { name } => {
                self.global_parameters.remove(name);
            }
            MetadataCommand::Snapshot(commands) => {
                *self = DurableState::default();
                for command in commands {
                    self.apply(command);
                }
            }
        }
    }

    /// Whether an exchange exists: declared, or one every vhost has (`amq.direct`...).
    fn exchange_exists(&self, vhost: &str, name: &[u8]) -> bool {
        self.exchanges
            .contains_key(&(vhost.to_string(), name.to_vec()))
            || (self.vhosts.contains(vhost) && PREDECLARED.contains(&name))
    }

    /// Removes the bindings `matching` selects; returns the source exchanges that lost one.
    fn drop_bindings(&mut self, matching: impl Fn(&BindingRecord) -> bool) -> Vec<Vec<u8>> {
        let mut sources = Vec::new();
        self.bindings.retain(|binding| {
            if matching(binding) {
                if !sources.contains(&binding.source) {
                    sources.push(binding.source.clone());
                }
                false
            } else {
                true
            }
        });
        sources
    }

    /// Removes an exchange, the bindings from and to it, and the auto-delete exchanges that
    /// leaves without bindings.
    fn remove_exchange(&mut self, vhost: &str, name: &[u8]) {
        if self
            .exchanges
            .remove(&(vhost.to_string(), name.to_vec()))
            .is_none()
        {
            return;
        }
        let to = (false, name.to_vec());
        let sources = self.drop_bindings(|binding| {
            binding.vhost == vhost && (binding.source == name || binding.destination == to)
        });
        let sources = sources
            .into_iter()
            .filter(|source| source != name)
            .collect();
        self.drop_unused_auto_delete(vhost, sources);
    }

    /// Deletes those of `candidates` that are auto-delete exchanges with no binding left.
    fn drop_unused_auto_delete(&mut self, vhost: &str, candidates: Vec<Vec<u8>>) {
        for name in candidates {
            let unused = self
                .exchanges
                .get(&(vhost.to_string(), name.clone()))
                .is_some_and(|exchange| exchange.auto_delete)
                && !self
                    .bindings
                    .iter()
                    .any(|binding| binding.vhost == vhost && binding.source == name);
            if unused {
                self.remove_exchange(vhost, &name);
            }
        }
    }

    /// The commands that rebuild this state, in an order that replays cleanly.
    pub fn to_commands(&self) -> Vec<MetadataCommand> {
        let mut commands = Vec::new();
        for name in &self.vhosts {
            commands.push(MetadataCommand::PutVHost { name: name.clone() });
        }
        for (name, (password_hash, tags)) in &self.users {
            commands.push(MetadataCommand::PutUser {
                name: name.clone(),
                password_hash: password_hash.clone(),
                tags: tags.clone(),
            });
        }
        for (name, (description, tags, default_queue_type)) in &self.vhost_metadata {
            commands.push(MetadataCommand::SetVHostMetadata {
                name: name.clone(),
                description: description.clone(),
                tags: tags.clone(),
                default_queue_type: default_queue_type.clone(),
            });
        }
        for (name, value) in &self.global_parameters {
            commands.push(MetadataCommand::SetGlobalParameter {
                name: name.clone(),
                value: value.clone(),
            });
        }
        for ((user, vhost), (configure, write, read)) in &self.permissions {
            commands.push(MetadataCommand::SetPermissions {
                user: user.clone(),
                vhost: vhost.clone(),
                configure: configure.clone(),
                write: write.clone(),
                read: read.clone(),
            });
        }
        for ((vhost, name), exchange) in &self.exchanges {
            commands.push(MetadataCommand::DeclareExchange {
                vhost: vhost.clone(),
                name: name.clone(),
                kind: exchange.kind.clone(),
                durable: exchange.durable,
                home: exchange.home.clone(),
                auto_delete: exchange.auto_delete,
                internal: exchange.internal,
                arguments: exchange.arguments.clone(),
            });
        }
        for ((vhost, name), queue) in &self.queues {
            if queue.is_quorum() {
                // The removed members first, then each removal again, so that the state
                // rebuilt from these commands keeps them.
                let mut members = queue.members.clone();
                members.extend(
                    queue
                        .removed
                        .iter()
                        .map(|(id, node, _)| (*id, node.clone())),
                );
                commands.push(MetadataCommand::DeclareQuorumQueue {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    id: queue.id,
                    members: members.clone(),
                    leader: queue.home.clone(),
                    arguments: queue.arguments.clone(),
                });
                for (id, _, removed_at) in &queue.removed {
                    members.retain(|(member, _)| member != id);
                    commands.push(MetadataCommand::SetQuorumMembers {
                        vhost: vhost.clone(),
                        name: name.clone(),
                        id: queue.id,
                        members: members.clone(),
                        removed_at: *removed_at,
                    });
                }
                continue;
            }
            commands.push(MetadataCommand::DeclareQueue {
                vhost: vhost.clone(),
                name: name.clone(),
                id: queue.id,
                home: queue.home.clone(),
                durable: queue.durable,
                exclusive_owner: queue.exclusive_owner,
                auto_delete: queue.auto_delete,
                arguments: queue.arguments.clone(),
            });
        }
        for binding in &self.bindings {
            commands.push(MetadataCommand::Bind {
                vhost: binding.vhost.clone(),
                source: binding.source.clone(),
                destination: binding.destination(),
                routing_key: binding.routing_key.clone(),
                arguments: binding.arguments.clone(),
            });
        }
        commands
    }

    /// Whether nothing durable exists yet (a blank node).
    pub fn is_blank(&self) -> bool {
        self.vhosts.is_empty() && self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_cascade_and_snapshots_rebuild_the_same_state() {
        let mut state = DurableState::default();
        let commands = vec![
            MetadataCommand::PutVHost { name: "/".into() },
            MetadataCommand::DeclareExchange {
                vhost: "/".into(),
                name: b"x".to_vec(),
                kind: "direct".into(),
                durable: true,
                home: "warren@a".into(),
                auto_delete: false,
                internal: false,
                arguments: vec![],
            },
            MetadataCommand::DeclareQueue {
                vhost: "/".into(),
                name: b"q".to_vec(),
                id: 1,
                home: "warren@a".into(),
                durable: true,
                exclusive_owner: None,
                auto_delete: false,
                arguments: vec![],
            },
            MetadataCommand::Bind {
                vhost: "/".into(),
                source: b"x".to_vec(),
                destination: BindingDestination::Queue(b"q".to_vec()),
                routing_key: b"k".to_vec(),
                arguments: vec![],
            },
        ];
        for command in &commands {
            state.apply(command);
        }
        let mut rebuilt = DurableState::default();
        rebuilt.apply(&MetadataCommand::Snapshot(state.to_commands()));
        assert_eq!(rebuilt, state);
        state.apply(&MetadataCommand::DeleteQueue {
            vhost: "/".into(),
            name: b"q".to_vec(),
            id: 1,
        });
        assert!(state.bindings.is_empty(), "a queue's bindings go with it");
        assert_eq!(state.exchanges.len(), 1);
    }

    #[test]
    fn a_quorum_queue_keeps_the_removals_of_its_members_through_snapshots() {
        let mut state = DurableState::default();
        let members = |names: &[(u64, &str)]| -> Vec<(u64, String)> {
            names.iter().map(|(id, n)| (*id, n.to_string())).collect()
        };
        for command in [
            MetadataCommand::PutVHost { name: "/".into() },
            MetadataCommand::DeclareQuorumQueue {
                vhost: "/".into(),
                name: b"q".to_vec(),
                id: 7,
                members: members(&[(1, "a"), (2, "b"), (3, "c")]),
                leader: "a".into(),
                arguments: vec![],
            },
            MetadataCommand::SetQuorumMembers {
                vhost: "/".into(),
                name: b"q".to_vec(),
                id: 7,
                members: members(&[(2, "b"), (3, "c")]),
                removed_at: 40,
            },
        ] {
            state.apply(&command);
        }
        let queue = &state.queues[&("/".to_string(), b"q".to_vec())];
        assert_eq!(queue.members, members(&[(2, "b"), (3, "c")]));
        assert_eq!(queue.removed, vec![(1, "a".to_string(), 40)]);
        assert_eq!(queue.home, "b", "the first leader's node left");
        let mut rebuilt = DurableState::default();
        rebuilt.apply(&MetadataCommand::Snapshot(state.to_commands()));
        assert_eq!(rebuilt, state);
        // Added again: no longer removed.
        state.apply(&MetadataCommand::SetQuorumMembers {
            vhost: "/".into(),
            name: b"q".to_vec(),
            id: 7,
            members: members(&[(2, "b"), (3, "c"), (1, "a")]),
            removed_at: 0,
        });
        let queue = &state.queues[&("/".to_string(), b"q".to_vec())];
        assert!(queue.removed.is_empty());
    }
}
