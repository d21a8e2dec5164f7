//! Durable metadata: vhosts, users, permissions, durable exchanges, queues and bindings, as a log
//! of commands in the WAL's metadata stream, with snapshots.
//!
//! Every change to a durable entity is one [`MetadataCommand`], written and synced before the
//! client hears it succeeded. Replaying the stream from its last snapshot rebuilds the durable
//! state; a snapshot is written every [`SNAPSHOT_EVERY`] commands, after which the segments before
//! it are deleted. (With clustering, the same commands become the entries of the metadata Raft
//! group.)

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use warren_storage::{PendingRecord, Position, Producer, Stream, Wal};

use super::model::DurableState;
use crate::error::AmqpError;

/// Commands between snapshots.
pub const SNAPSHOT_EVERY: u64 = 10_000;

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
    /// A durable exchange exists.
    DeclareExchange {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
        /// Type name.
        kind: String,
        /// Auto-delete.
        auto_delete: bool,
        /// Internal.
        internal: bool,
        /// Arguments, AMQP-encoded.
        arguments: Vec<u8>,
    },
    /// A durable exchange is gone.
    DeleteExchange {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
    },
    /// A durable queue exists.
    DeclareQueue {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
        /// Its persistent id (its messages' records carry it).
        id: u64,
        /// Auto-delete.
        auto_delete: bool,
        /// Arguments, AMQP-encoded.
        arguments: Vec<u8>,
    },
    /// A durable queue is gone.
    DeleteQueue {
        /// Vhost.
        vhost: String,
        /// Name.
        name: Vec<u8>,
        /// Persistent id.
        id: u64,
    },
    /// A durable binding exists.
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
    /// A durable binding is gone.
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

type Waiters = Mutex<HashMap<u64, oneshot::Sender<Result<Position, String>>>>;

/// Writes metadata commands through the WAL, waits for each to be durable, keeps the durable
/// state they describe, and snapshots it now and then.
#[derive(Debug)]
pub struct MetadataLog {
    producer: Arc<OnceLock<Producer>>,
    waiters: Arc<Waiters>,
    next_tag: Mutex<u64>,
    since_snapshot: Mutex<u64>,
    state: Mutex<DurableState>,
    wal: Arc<Wal>,
}

type WriteOutcome = oneshot::Receiver<Result<Position, String>>;

/// Metadata commands handed to the log, to wait for before telling a client they succeeded.
#[derive(Debug, Default)]
#[must_use = "a client may hear of a change only once it is durable"]
pub struct PendingWrites {
    writes: Vec<WriteOutcome>,
    snapshot: Option<(WriteOutcome, Arc<Wal>)>,
}

impl PendingWrites {
    /// Whether nothing was submitted.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.snapshot.is_none()
    }

    /// Waits until every command is on disk; a snapshot among them lets the segments before it go.
    pub async fn wait(self) -> Result<(), AmqpError> {
        let outcome =
            |result: Result<Result<Position, String>, oneshot::error::RecvError>| match result {
                Ok(Ok(position)) => Ok(position),
                Ok(Err(message)) => Err(AmqpError::internal_error(format!(
                    "cannot persist metadata: {message}"
                ))),
                Err(_) => Err(AmqpError::internal_error(
                    "cannot persist metadata: the log has stopped",
                )),
            };
        for write in self.writes {
            outcome(write.await)?;
        }
        if let Some((snapshot, wal)) = self.snapshot {
            let position = outcome(snapshot.await)?;
            // Everything before the snapshot is superseded by it.
            wal.delete_before(Stream::Metadata, position.segment);
        }
        Ok(())
    }
}

impl MetadataLog {
    /// A log writing through `wal`, starting from the replayed `state`; `since_snapshot`
    /// commands were replayed after the last snapshot.
    pub fn new(wal: &Arc<Wal>, state: DurableState, since_snapshot: u64) -> MetadataLog {
        let producer: Arc<OnceLock<Producer>> = Arc::new(OnceLock::new());
        let waiters: Arc<Waiters> = Arc::new(Mutex::new(HashMap::new()));
        let (for_notify, waiters_for_notify) = (producer.clone(), waiters.clone());
        let created = wal.producer(move || {
            let Some(producer) = for_notify.get() else {
                return;
            };
            let mut waiters = waiters_for_notify.lock();
            for done in producer.take_done() {
                if let Some(waiter) = waiters.remove(&done.tag) {
                    let _ = waiter.send(done.result.map_err(|failure| failure.message));
                }
            }
        });
        let _ = producer.set(created);
        MetadataLog {
            producer,
            waiters,
            next_tag: Mutex::new(0),
            since_snapshot: Mutex::new(since_snapshot),
            state: Mutex::new(state),
            wal: wal.clone(),
        }
    }

    fn push(&self, command: &MetadataCommand) -> oneshot::Receiver<Result<Position, String>> {
        let tag = {
            let mut next = self.next_tag.lock();
            *next += 1;
            *next
        };
        let (sender, receiver) = oneshot::channel();
        self.waiters.lock().insert(tag, sender);
        self.producer
            .get()
            .expect("invariant: set in new")
            .push(PendingRecord {
                tag,
                stream: Stream::Metadata,
                sync: true,
                owner: None,
                payload: command.encode().into(),
            });
        receiver
    }

    /// Applies `command` to the durable state and hands it to the log, without waiting. Callers
    /// submit while holding the lock that orders the in-memory change, so the log's order is the
    /// order the state changed in; they wait for durability afterwards, with no lock held.
    pub fn submit(&self, command: MetadataCommand, pending: &mut PendingWrites) {
        let mut state = self.state.lock();
        state.apply(&command);
        pending.writes.push(self.push(&command));
        let mut since = self.since_snapshot.lock();
        *since += 1;
        if *since >= SNAPSHOT_EVERY {
            *since = 0;
            let snapshot = MetadataCommand::Snapshot(state.to_commands());
            pending.snapshot = Some((self.push(&snapshot), self.wal.clone()));
        }
    }

    /// Writes one command and waits until it is on disk.
    pub async fn write(&self, command: MetadataCommand) -> Result<(), AmqpError> {
        let mut pending = PendingWrites::default();
        self.submit(command, &mut pending);
        pending.wait().await
    }

    /// A copy of the durable state.
    pub fn state(&self) -> DurableState {
        self.state.lock().clone()
    }
}

/// Replays metadata records into the durable state; returns it with the number of commands
/// after the last snapshot.
pub fn replay(records: &[MetadataCommand]) -> (DurableState, u64) {
    let start = records
        .iter()
        .rposition(|command| matches!(command, MetadataCommand::Snapshot(_)))
        .unwrap_or(0);
    let mut state = DurableState::default();
    for command in &records[start..] {
        state.apply(command);
    }
    (state, (records.len() - start) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_replay_starts_at_the_last_snapshot() {
        let command = MetadataCommand::DeclareQueue {
            vhost: "/".into(),
            name: b"orders".to_vec(),
            id: 7,
            auto_delete: false,
            arguments: vec![0, 0, 0, 0],
        };
        assert_eq!(MetadataCommand::decode(&command.encode()).unwrap(), command);
        let put = |name: &str| MetadataCommand::PutVHost { name: name.into() };
        let records = vec![
            put("old"),
            MetadataCommand::Snapshot(vec![put("a"), put("b")]),
            put("c"),
        ];
        let (state, since) = replay(&records);
        assert_eq!(
            state.vhosts.iter().cloned().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(since, 2);
    }
}
