//! The durable state as metadata commands describe it: what a replay rebuilds and what a
//! snapshot writes.

use std::collections::{BTreeMap, BTreeSet};

use super::metadata::{BindingDestination, MetadataCommand};

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRecord {
    /// Type name.
    pub kind: String,
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
    /// Auto-delete.
    pub auto_delete: bool,
    /// AMQP-encoded arguments.
    pub arguments: Vec<u8>,
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
}

fn destination(destination: &BindingDestination) -> (bool, Vec<u8>) {
    match destination {
        BindingDestination::Queue(name) => (true, name.clone()),
        BindingDestination::Exchange(name) => (false, name.clone()),
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
            MetadataCommand::DeclareExchange {
                vhost,
                name,
                kind,
                auto_delete,
                internal,
                arguments,
            } => {
                self.exchanges.insert(
                    (vhost.clone(), name.clone()),
                    ExchangeRecord {
                        kind: kind.clone(),
                        auto_delete: *auto_delete,
                        internal: *internal,
                        arguments: arguments.clone(),
                    },
                );
            }
            MetadataCommand::DeleteExchange { vhost, name } => {
                self.exchanges.remove(&(vhost.clone(), name.clone()));
                self.bindings.retain(|binding| {
                    !(binding.vhost == *vhost
                        && (binding.source == *name
                            || binding.destination == (false, name.clone())))
                });
            }
            MetadataCommand::DeclareQueue {
                vhost,
                name,
                id,
                home,
                auto_delete,
                arguments,
            } => {
                self.queues.insert(
                    (vhost.clone(), name.clone()),
                    QueueRecord {
                        id: *id,
                        home: home.clone(),
                        auto_delete: *auto_delete,
                        arguments: arguments.clone(),
                    },
                );
            }
            MetadataCommand::DeleteQueue { vhost, name, id } => {
                let key = (vhost.clone(), name.clone());
                if self.queues.get(&key).is_some_and(|queue| queue.id == *id) {
                    self.queues.remove(&key);
                    self.bindings.retain(|binding| {
                        !(binding.vhost == *vhost && binding.destination == (true, name.clone()))
                    });
                }
            }
            MetadataCommand::Bind {
                vhost,
                source,
                destination: to,
                routing_key,
                arguments,
            } => {
                self.bindings.insert(BindingRecord {
                    vhost: vhost.clone(),
                    source: source.clone(),
                    destination: destination(to),
                    routing_key: routing_key.clone(),
                    arguments: arguments.clone(),
                });
            }
            MetadataCommand::Unbind {
                vhost,
                source,
                destination: to,
                routing_key,
                arguments,
            } => {
                self.bindings.remove(&BindingRecord {
                    vhost: vhost.clone(),
                    source: source.clone(),
                    destination: destination(to),
                    routing_key: routing_key.clone(),
                    arguments: arguments.clone(),
                });
            }
            MetadataCommand::Snapshot(commands) => {
                *self = DurableState::default();
                for command in commands {
                    self.apply(command);
                }
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
                auto_delete: exchange.auto_delete,
                internal: exchange.internal,
                arguments: exchange.arguments.clone(),
            });
        }
        for ((vhost, name), queue) in &self.queues {
            commands.push(MetadataCommand::DeclareQueue {
                vhost: vhost.clone(),
                name: name.clone(),
                id: queue.id,
                home: queue.home.clone(),
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
                auto_delete: false,
                internal: false,
                arguments: vec![],
            },
            MetadataCommand::DeclareQueue {
                vhost: "/".into(),
                name: b"q".to_vec(),
                id: 1,
                home: "warren@a".into(),
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
}
