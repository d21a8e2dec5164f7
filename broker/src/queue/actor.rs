//! The task that drives one queue: takes commands off its mailbox in batches, applies them to
//! the [`QueueState`], delivers, and sends what the batch produced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::state::{Outbox, QueueState};
use super::{QueueCommand, QueueHandle, QueueShared, QueueSpec};
use crate::vhost::VHost;

/// Commands applied per wake-up before delivering and flushing; bounds the latency one busy
/// publisher can add to everyone else's deliveries.
const BATCH: usize = 512;

static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

/// Creates a queue and starts its task; the queue removes itself from `vhost` when deleted.
pub(crate) fn spawn(spec: QueueSpec, vhost: &Arc<VHost>) -> QueueHandle {
    // Unbounded: publishers are bounded by their credit, everything else by request-reply.
    let (commands, mailbox) = mpsc::unbounded_channel();
    let handle = QueueHandle(Arc::new(QueueShared {
        id: NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed),
        name: spec.name,
        vhost: vhost.name_shared(),
        durable: spec.durable,
        exclusive_owner: spec.exclusive_owner,
        auto_delete: spec.auto_delete,
        arguments: spec.arguments,
        commands,
    }));
    let state = QueueState::new(handle.clone());
    tokio::spawn(run(state, mailbox, Arc::downgrade(vhost)));
    handle
}

async fn run(
    mut state: QueueState,
    mut mailbox: mpsc::UnboundedReceiver<QueueCommand>,
    vhost: Weak<VHost>,
) {
    let mut outbox = Outbox::default();
    while let Some(command) = mailbox.recv().await {
        state.handle(command, &mut outbox);
        for _ in 1..BATCH {
            match mailbox.try_recv() {
                Ok(command) => state.handle(command, &mut outbox),
                Err(_) => break,
            }
        }
        if state.is_deleted() {
            // Out of the vhost first, so that a client told "deleted" can declare the name anew.
            if let Some(vhost) = vhost.upgrade() {
                vhost.forget_queue(state.queue());
            }
            mailbox.close();
            // Publishes that raced the deletion are confirmed, as RabbitMQ does; requests that
            // expect a reply see their reply channel dropped, which reads as "no such queue".
            while let Ok(command) = mailbox.try_recv() {
                if let QueueCommand::Publish { .. } = command {
                    state.handle(command, &mut outbox);
                }
            }
            state.shut_down(&mut outbox);
            outbox.flush(&state);
            tracing::debug!(queue = %state.queue().name, "queue deleted");
            return;
        }
        state.deliver(&mut outbox);
        outbox.flush(&state);
    }
}
