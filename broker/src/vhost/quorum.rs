//! Quorum queues of a vhost: placing a new group (initial size, leader locator) and making this
//! node's front, with its member when the node is in the group.

use std::sync::Arc;

use warren_config::LeaderLocator;
use warren_wire::FieldValue;

use crate::error::AmqpError;
use crate::queue::{self, QueueSpec};
use crate::store::metadata::MetadataCommand;
use crate::store::model::{QueueRecord, encode_table};

use super::VHost;

impl VHost {
    /// Places a new quorum queue's group and proposes it: up to its initial group size of the
    /// cluster's nodes, this node first (its member stands for election first: RabbitMQ's
    /// `client-local` leader locator), the others taken in turn from a place set by the
    /// queue's id, so that groups spread over the cluster.
    pub(super) async fn propose_quorum_queue(
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
        let handle =
            queue::quorum::front::spawn(&self.quorum, spec, config, self.clone(), record.id);
        self.queues.write().insert(name, handle);
    }
}
