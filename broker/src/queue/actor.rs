//! The task that drives one queue: takes commands off its mailbox in batches, applies them to
//! the [`QueueState`], delivers, and sends what the batch produced.

use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warren_storage::{Position, Stream};

use super::arguments::QueueConfig;
use super::dead_letter;
use super::env::QueueEnv;
use super::ready::Queued;
use super::state::{Outbox, QueueState};
use super::storage::{MessageReader, QueueStorage, WalStorage};
use super::{QueueCommand, QueueHandle, QueueShared, QueueSpec, StorageEvent};

/// Commands applied per wake-up before delivering and flushing; bounds the latency one busy
/// publisher can add to everyone else's deliveries.
const BATCH: usize = 512;

/// Creates a queue with the id `id` (and the messages recovered for it) and starts its task; the
/// queue removes itself from its vhost (through `env`) when deleted.
pub(crate) fn spawn(
    spec: QueueSpec,
    config: QueueConfig,
    env: Arc<dyn QueueEnv>,
    id: u64,
    recovered: Vec<Queued>,
) -> QueueHandle {
    // Unbounded: publishers are bounded by their credit, everything else by request-reply.
    let (commands, mailbox) = mpsc::unbounded_channel();
    let notify = commands.clone();
    let storage = WalStorage::new(&env.store().wal, id, move || {
        let _ = notify.send(QueueCommand::Storage(StorageEvent::Persisted));
    });
    let handle = QueueHandle(Arc::new(QueueShared {
        id,
        name: spec.name,
        vhost: env.vhost_name(),
        durable: spec.durable,
        exclusive_owner: spec.exclusive_owner,
        auto_delete: spec.auto_delete,
        arguments: spec.arguments,
        config,
        home: None,
        counters: Arc::default(),
        commands,
    }));
    let reader = storage.reader();
    let state = QueueState::new(handle.clone(), now_ms(), Box::new(storage), recovered);
    handle.counters.store(state.counters());
    let tasks = env.tasks();
    tasks.tracker.spawn(run(
        state,
        mailbox,
        Arc::downgrade(&env),
        reader,
        tasks.stop.clone(),
    ));
    handle
}

/// Wall-clock milliseconds since the epoch: message expiry and `x-death` times are wall-clock,
/// as in RabbitMQ.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

async fn run(
    mut state: QueueState,
    mut mailbox: mpsc::UnboundedReceiver<QueueCommand>,
    env: Weak<dyn QueueEnv>,
    reader: Option<MessageReader>,
    stop: CancellationToken,
) {
    let mut outbox = Outbox::default();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let wakeup = state.next_wakeup().map(|at| {
            let wait = at.saturating_sub(now_ms());
            // Rounded up, so that the head has expired when we look.
            Instant::now() + Duration::from_millis(wait + 1)
        });
        let command = tokio::select! {
            command = mailbox.recv() => match command {
                Some(command) => Some(command),
                None => return,
            },
            _ = sleep_until_or_never(wakeup) => None,
            _ = stop.cancelled() => {
                // The node is stopping and its clients are gone: what is durable is written;
                // the rest goes with the process.
                state.finish_batch(&mut outbox);
                return;
            }
        };
        let now = now_ms();
        match command {
            Some(command) => {
                batch.push(command);
                while batch.len() < BATCH {
                    match mailbox.try_recv() {
                        Ok(command) => batch.push(command),
                        Err(_) => break,
                    }
                }
                // Settlements and credit first: they only free room for deliveries, and a
                // client that acknowledged before another published expects the freed
                // consumer to be considered for that message. Everything else keeps its order.
                for command in batch.iter_mut() {
                    if matches!(
                        command,
                        QueueCommand::Settle { .. } | QueueCommand::Credit { .. }
                    ) {
                        let command = std::mem::replace(command, QueueCommand::Kick);
                        state.handle(command, now, &mut outbox);
                    }
                }
                state.write_bookkeeping();
                for command in batch.drain(..) {
                    state.handle(command, now, &mut outbox);
                }
            }
            None => state.tick(now, &mut outbox),
        }
        if state.is_deleted() {
            // Out of the vhost first, so that a client told "deleted" can declare the name anew.
            if let Some(env) = env.upgrade() {
                env.remove_queue(state.queue()).await;
            }
            mailbox.close();
            // Publishes that raced the deletion are confirmed, as RabbitMQ does; requests that
            // expect a reply see their reply channel dropped, which reads as "no such queue".
            while let Ok(command) = mailbox.try_recv() {
                if let QueueCommand::Publish { .. } = command {
                    state.handle(command, now, &mut outbox);
                }
            }
            state.shut_down(&mut outbox);
            state.finish_batch(&mut outbox);
            outbox.dead_letters.clear();
            outbox.flush(&state);
            tracing::debug!(queue = %state.queue().name, "queue deleted");
            return;
        }
        state.deliver(now, &mut outbox);
        state.finish_batch(&mut outbox);
        dead_letter_all(&state, &env, &mut outbox, now);
        page_in(&state, reader.as_ref(), &mut outbox);
        outbox.flush(&state);
        state.queue().counters.store(state.counters());
    }
}

/// Reads messages back from disk off the queue's task; the queue hears back with `PagedIn`.
fn page_in(state: &QueueState, reader: Option<&MessageReader>, outbox: &mut Outbox) {
    if outbox.page_in.is_empty() {
        return;
    }
    let requests = std::mem::take(&mut outbox.page_in);
    let Some(reader) = reader.cloned() else {
        return;
    };
    let queue = state.queue().clone();
    tokio::task::spawn_blocking(move || {
        let mut messages = Vec::with_capacity(requests.len());
        for stream in [Stream::Messages, Stream::Paging] {
            let (ids, positions): (Vec<u64>, Vec<Position>) = requests
                .iter()
                .filter(|(_, of, _)| *of == stream)
                .map(|(id, _, position)| (*id, *position))
                .unzip();
            if !ids.is_empty() {
                messages.extend(ids.into_iter().zip(reader.read_many(stream, &positions)));
            }
        }
        queue.send(QueueCommand::Storage(StorageEvent::PagedIn { messages }));
    });
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Republishes dead-lettered messages through the queue's dead-letter exchange. At most once, as
/// for RabbitMQ's classic queues: nothing waits for the target queues.
fn dead_letter_all(state: &QueueState, env: &Weak<dyn QueueEnv>, outbox: &mut Outbox, now: u64) {
    if outbox.dead_letters.is_empty() {
        return;
    }
    let queue = state.queue();
    match env.upgrade() {
        Some(env) => dead_letter::republish(
            env.as_ref(),
            &queue.name,
            &queue.config,
            outbox.dead_letters.drain(..),
            now,
        ),
        None => outbox.dead_letters.clear(),
    }
}
