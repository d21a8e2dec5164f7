//! Durable metadata: vhosts, users, permissions, durable exchanges, queues and bindings, as the
//! commands of the metadata Raft group.
//!
//! Every change to a durable entity is one [`MetadataCommand`], proposed to the group and
//! committed (written and synced through the WAL on a majority) before the client hears it
//! succeeded. The group's state machine keeps the durable state those commands describe; its
//! snapshots are that state as a [`MetadataCommand::Snapshot`]. A lone node is a group of one.

use std::sync::OnceLock;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use warren_cluster::raft::{RaftGroup, StateMachine};

use super::model::DurableState;
use crate::error::AmqpError;

/// Where a durable binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BindingDestination {
    /// A queue, by name.
    Queue(Vec<u8>),
    /// An exchange, by name.
    Exchange(Vec<u8>),
}

/// One change to durable metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// A vhost exists.
    PutVHost {
        /// Its name.
        name: String,
    },
    /// A vhost is gone (with everything in it).
    DeleteVHost {
        /// Its name.
        name: String,
    },
    /// A user exists.
    PutUser {
        /// Name.
        name: String,
        /// RabbitMQ-form password hash (base64 of salt and SHA-256).
        password_hash: Option<String>,
        /// Tags.
        tags: Vec<String>,
    },
    /// A user is gone.
    DeleteUser {
        /// Name.
        name: String,
    },
    /// A user's permissions on a vhost.
    SetPermissions {
        /// User.
        user: String,
        /// Vhost.
        vhost: String,
        /// Configure pattern.
        configure: String,
        /// Write pattern.
        write: String,
        /// Read pattern.
        read: String,
    },
    /// An exchange exists.
    DeclareExchange {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
        /// Type name.
        kind: String,
        /// Survives restarts.
        durable: bool,
        /// The node that declared it.
        home: String,
        /// Auto-delete.
        auto_delete: bool,
        /// Internal.
        internal: bool,
        /// Arguments, AMQP-encoded.
        arguments: Vec<u8>,
    },
    /// An exchange is gone.
    DeleteExchange {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
    },
    /// A queue exists.
    DeclareQueue {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
        /// Its persistent id (its messages' records carry it).
        id: u64,
        /// The node that holds its messages.
        home: String,
        /// Survives restarts.
        durable: bool,
        /// The connection (on the home node) an exclusive queue belongs to.
        exclusive_owner: Option<u64>,
        /// Auto-delete.
        auto_delete: bool,
        /// Arguments, AMQP-encoded.
        arguments: Vec<u8>,
    },
    /// A queue is gone.
    DeleteQueue {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
        /// Persistent id.
        id: u64,
    },
    /// A binding exists.
    Bind {
        /// Vhost.
        vhost: String,
        /// Source exchange.
        source: Vec<u8>,
        /// Destination.
        destination: BindingDestination,
        /// Binding key.
        routing_key: Vec<u8>,
        /// Arguments, AMQP-encoded.
        arguments: Vec<u8>,
    },
    /// A binding is gone.
    Unbind {
        /// Vhost.
        vhost: String,
        /// Source exchange.
        source: Vec<u8>,
        /// Destination.
        destination: BindingDestination,
        /// Binding key.
        routing_key: Vec<u8>,
        /// Arguments, AMQP-encoded.
        arguments: Vec<u8>,
    },
    /// The whole durable state, replacing what came before.
    Snapshot(Vec<MetadataCommand>),
    /// A quorum queue exists: a Raft group on `members`, first led by `leader`.
    DeclareQuorumQueue {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
        /// Its persistent id (also its group's).
        id: u64,
        /// Its group's members: member id (the node's metadata Raft id) and node name.
        members: Vec<(u64, String)>,
        /// The node whose member stands for election first.
        leader: String,
        /// Arguments, AMQP-encoded.
        arguments: Vec<u8>,
    },
    /// A quorum queue's group now has members on these nodes (one was added or removed).
    SetQuorumMembers {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
        /// Its persistent id: a queue of the same name declared since is not changed.
        id: u64,
        /// Member id and node name of each member.
        members: Vec<(u64, String)>,
        /// For a removal, the index of the membership change in the queue's log; 0 for an
        /// addition.
        removed_at: u64,
    },
    /// A user's permissions on a vhost are gone.
    ClearPermissions {
        /// User.
        user: String,
        /// Vhost.
        vhost: String,
    },
    /// What a vhost is described as (RabbitMQ's vhost metadata).
    SetVHostMetadata {
        /// Its name.
        name: String,
        /// Free text.
        description: String,
        /// Tags.
        tags: Vec<String>,
        /// The type of queues declared there without one (`classic`, `quorum`).
        default_queue_type: Option<String>,
    },
    /// A global runtime parameter (`cluster_name`, ...), its value as JSON text.
    SetGlobalParameter {
        /// Its name.
        name: String,
        /// Its value, JSON.
        value: String,
    },
    /// A global runtime parameter is gone.
    ClearGlobalParameter {
        /// Its name.
        name: String,
    },
}

impl MetadataCommand {
    /// Encodes the command as a WAL record.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("invariant: metadata commands always serialize")
    }

    /// Decodes a WAL record.
    pub fn decode(payload: &[u8]) -> Result<MetadataCommand, postcard::Error> {
        postcard::from_bytes(payload)
    }
}

type Outcome = oneshot::Receiver<Result<(), String>>;

/// Metadata commands handed to the log, to wait for before telling a client they succeeded.
#[derive(Debug, Default)]
#[must_use = "a client may hear of a change only once it is durable"]
pub struct PendingWrites {
    writes: Vec<Outcome>,
}

impl PendingWrites {
    /// Whether nothing was submitted.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Waits until every command is committed by the metadata store.
    pub async fn wait(self) -> Result<(), AmqpError> {
        for write in self.writes {
            match write.await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    return Err(AmqpError::internal_error(format!(
                        "cannot persist metadata: {message}"
                    )));
                }
                Err(_) => {
                    return Err(AmqpError::internal_error(
                        "cannot persist metadata: the metadata store has stopped",
                    ));
                }
            }
        }
        Ok(())
    }
}

type Queued = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// Hands metadata commands to the metadata Raft group, in the order they are submitted.
///
/// One task proposes submitted commands in order, and each submitter waits for its own to be
/// applied. The state is what the group's state machine ([`MetadataMachine`]) has
/// applied, on every node.
#[derive(Debug)]
pub struct MetadataLog {
    queue: mpsc::UnboundedSender<Queued>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    group: OnceLock<RaftGroup>,
}

impl Default for MetadataLog {
    fn default() -> Self {
        MetadataLog::new()
    }
}

impl MetadataLog {
    /// A log; nothing is proposed until [`MetadataLog::start`].
    pub fn new() -> MetadataLog {
        let (queue, receiver) = mpsc::unbounded_channel();
        MetadataLog {
            queue,
            receiver: Mutex::new(Some(receiver)),
            group: OnceLock::new(),
        }
    }

    /// Starts proposing through `group`.
    pub fn start(&self, group: RaftGroup) {
        let _ = self.group.set(group.clone());
        let Some(mut receiver) = self.receiver.lock().take() else {
            return;
        };
        tokio::spawn(async move {
            // Whatever was submitted while the previous batch was in flight goes as one batch.
            let mut batch = Vec::new();
            while receiver.recv_many(&mut batch, 1024).await > 0 {
                let (commands, waiters): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                let outcomes = group.propose_many(commands).await;
                for (outcome, done) in outcomes.into_iter().zip(waiters) {
                    let _ = done.send(outcome.map(drop).map_err(|error| error.to_string()));
                }
            }
        });
    }

    /// Hands `command` to the store, without waiting: commands submitted one after another are
    /// proposed in that order. Wait on `pending` for them to be applied here.
    pub fn submit(&self, command: MetadataCommand, pending: &mut PendingWrites) {
        let bytes = command.encode();
        let (sender, receiver) = oneshot::channel();
        if self.queue.send((bytes, sender)).is_ok() {
            pending.writes.push(receiver);
        } else {
            let (failed, receiver) = oneshot::channel();
            let _ = failed.send(Err("the metadata store has stopped".to_string()));
            pending.writes.push(receiver);
        }
    }

    /// The metadata Raft group, once started.
    pub fn group(&self) -> Option<&RaftGroup> {
        self.group.get()
    }

    /// Proposes `command` and waits until this node has applied it (its memory has changed).
    pub async fn propose(&self, command: MetadataCommand) -> Result<(), AmqpError> {
        let mut pending = PendingWrites::default();
        self.submit(command, &mut pending);
        pending.wait().await
    }

    /// Stops the Raft group.
    pub async fn shutdown(&self) {
        if let Some(group) = self.group.get() {
            group.shutdown().await;
        }
    }
}

/// What the broker does with a committed command: bring its memory in line. Called in log
/// order, on every node (the proposer's too), with the machine's state locked: it must not
/// block.
pub type ApplyToMemory = Box<dyn Fn(&MetadataCommand) + Send + Sync>;

/// The metadata group's state machine: the durable state, as committed.
///
/// Every committed command changes the state, and, once the node's memory is built
/// ([`MetadataMachine::start_with`]), its memory too, through the broker's [`ApplyToMemory`]:
/// memory changes only here, in log order, the same way on every node.
#[derive(Default)]
pub struct MetadataMachine {
    state: Mutex<DurableState>,
    foreign: OnceLock<ApplyToMemory>,
}

impl std::fmt::Debug for MetadataMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataMachine").finish_non_exhaustive()
    }
}

impl MetadataMachine {
    /// An empty machine.
    pub fn new() -> MetadataMachine {
        MetadataMachine::default()
    }

    /// A copy of the durable state.
    pub fn state(&self) -> DurableState {
        self.state.lock().clone()
    }

    /// Builds the node's memory from the state with `build`, then hands every later command to
    /// `foreign`. Nothing is applied in between: the state stays
    /// locked until `build` returns.
    pub fn start_with<T>(
        &self,
        build: impl FnOnce(&DurableState) -> T,
        foreign: ApplyToMemory,
    ) -> T {
        let state = self.state.lock();
        let built = build(&state);
        let _ = self.foreign.set(foreign);
        drop(state);
        built
    }
}

impl StateMachine for MetadataMachine {
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8> {
        let command = match MetadataCommand::decode(command) {
            Ok(command) => command,
            Err(error) => {
                tracing::error!("metadata entry {index} is unreadable and was skipped: {error}");
                return Vec::new();
            }
        };
        let mut state = self.state.lock();
        state.apply(&command);
        if let Some(apply) = self.foreign.get() {
            apply(&command);
        }
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        MetadataCommand::Snapshot(self.state.lock().to_commands()).encode()
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), String> {
        let command = MetadataCommand::decode(snapshot).map_err(|error| error.to_string())?;
        let mut state = DurableState::default();
        state.apply(&command);
        *self.state.lock() = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_a_snapshot_restores_the_state() {
        let command = MetadataCommand::DeclareQueue {
            vhost: "/".into(),
            name: b"orders".to_vec(),
            id: 7,
            home: "warren@a".into(),
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: vec![0, 0, 0, 0],
        };
        assert_eq!(MetadataCommand::decode(&command.encode()).unwrap(), command);
        let machine = MetadataMachine::new();
        let put = |name: &str| MetadataCommand::PutVHost { name: name.into() };
        for command in [put("/"), put("b"), command.clone()] {
            machine.apply(1, &command.encode());
        }
        let copy = MetadataMachine::new();
        copy.restore(&machine.snapshot()).unwrap();
        assert_eq!(copy.state(), machine.state());
        assert_eq!(
            copy.state().vhosts.iter().cloned().collect::<Vec<_>>(),
            ["/", "b"]
        );
        assert_eq!(copy.state().queues.len(), 1);
    }
}
