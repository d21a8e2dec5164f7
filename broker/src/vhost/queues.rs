//! Queues of a vhost: declaration through the metadata log, the equivalence check of a
//! redeclaration, local and remote handles made from metadata records, durable deletion.

use std::sync::Arc;

use warren_wire::ShortString;

use crate::error::AmqpError;
use crate::queue::{self, QueueHandle, QueueSpec, Queued};
use crate::store::metadata::MetadataCommand;
use crate::store::model::{QueueRecord, decode_table, encode_table};
use warren_cluster::NodeName;

use super::VHost;
use super::equivalence::{compare_argument, quoted};

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

impl VHost {
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

    /// What a queue's metadata record declares.
    pub(super) fn queue_spec(
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
        let handle = queue::spawn(spec, config, self.clone(), record.id, messages);
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
}
