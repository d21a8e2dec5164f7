//! At-least-once dead-lettering of a quorum queue, on its leader's node, as RabbitMQ's
//! internal dead-letter consumer does it: the queue holds each dead letter until every queue
//! its dead-letter exchange routes it to has confirmed the copy; only then is the queue told
//! ([`Command::DeadLettered`](super::state::Command::DeadLettered)) and the message gone.
//!
//! ```text
//!  leader's machine ──DeadLetter (held)──> front ──> worker ──Publish + confirm──> target queues
//!        ▲                                                          │ all confirmed
//!        └──────────────── DeadLettered { ids } <───────────────────┘
//! ```
//!
//! - At most [`PREFETCH`] dead letters are out at once (RabbitMQ's worker takes 32 too).
//! - A dead letter with nowhere to go (no dead-letter exchange, nothing bound), refused by a
//!   target (its own `reject-publish`), or not confirmed within [`CONFIRM_TIMEOUT`] is sent
//!   again after [`RETRY`]: a target may get it twice, never no target.
//! - One that would only come back to queues it died in before is dropped, as at most once.
//! - The worker is the leader's: a member that stops leading forgets what it held
//!   ([`DeadLetterWorker::clear`]), and the next leader republishes everything still held.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use warren_wire::ShortString;

use crate::message::Message;
use crate::message::Reason;
use crate::queue::dead_letter::{Unroutable, route};
use crate::queue::env::QueueEnv;
use crate::queue::events::{ConnectionEvent, ConnectionId, EventSender};
use crate::queue::{Incoming, QueueCommand, QueueConfig, QueueHandle};

/// Dead letters out at once.
pub(crate) const PREFETCH: usize = 32;
/// How long a dead letter waits before it is sent again.
pub(crate) const RETRY: Duration = Duration::from_secs(5);
/// How long the worker waits for its targets' confirms.
pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Publisher ids of the workers, apart from those of connections (which count from 1).
fn next_publisher_id() -> ConnectionId {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 62);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A dead letter the queue holds.
struct Held {
    id: u64,
    reason: Reason,
    message: Arc<Message>,
}

/// One sending of a dead letter to its targets.
struct Sent {
    held: Held,
    /// The target queues' ids.
    targets: Vec<u64>,
    /// Confirms still to come.
    remaining: usize,
    /// Whether a target refused it.
    refused: bool,
    at: Instant,
}

/// The leader's dead-letter consumer for one queue.
pub(crate) struct DeadLetterWorker {
    publisher: ConnectionId,
    /// Where the target queues confirm.
    events: EventSender,
    /// Target queues attached to, by id.
    attached: HashMap<u64, QueueHandle>,
    ready: VecDeque<Held>,
    /// To send again once due.
    retry: VecDeque<(Instant, Held)>,
    /// Out, by the sequence number of their sending.
    sent: HashMap<u64, Sent>,
    next_seq: u64,
    /// Every id it holds (a new term's leader may tell it one again).
    known: HashSet<u64>,
}

impl DeadLetterWorker {
    /// A worker whose targets confirm to `events`.
    pub(crate) fn new(events: EventSender) -> DeadLetterWorker {
        DeadLetterWorker {
            publisher: next_publisher_id(),
            events,
            attached: HashMap::new(),
            ready: VecDeque::new(),
            retry: VecDeque::new(),
            sent: HashMap::new(),
            next_seq: 1,
            known: HashSet::new(),
        }
    }

    /// The queue holds dead letter `id` until its targets confirm it.
    pub(crate) fn add(&mut self, id: u64, reason: Reason, message: Arc<Message>) {
        if self.known.insert(id) {
            self.ready.push_back(Held {
                id,
                reason,
                message,
            });
        }
    }

    /// Whether it holds nothing.
    pub(crate) fn is_idle(&self) -> bool {
        self.known.is_empty()
    }

    /// When it next has something to look at (a retry falls due, a confirm is late).
    pub(crate) fn next_check(&self) -> Option<Instant> {
        let retry = self.retry.front().map(|(due, _)| *due);
        let late = self
            .sent
            .values()
            .map(|sent| sent.at + CONFIRM_TIMEOUT)
            .min();
        retry.into_iter().chain(late).min()
    }

    /// Sends what is due, within the prefetch; answers the dead letters done with (every
    /// target confirmed them, or they would go round a cycle), for the queue to forget.
    pub(crate) fn pump(
        &mut self,
        env: &dyn QueueEnv,
        queue: &ShortString,
        config: &QueueConfig,
        now: Instant,
    ) -> Vec<u64> {
        for seq in self
            .sent
            .iter()
            .filter(|(_, sent)| now >= sent.at + CONFIRM_TIMEOUT)
            .map(|(seq, _)| *seq)
            .collect::<Vec<_>>()
        {
            let sent = self.sent.remove(&seq).expect("listed");
            tracing::debug!(
                "quorum queue '{queue}': dead letter {} not confirmed in time",
                sent.held.id
            );
            self.retry.push_back((now + RETRY, sent.held));
        }
        while let Some((due, _)) = self.retry.front()
            && *due <= now
        {
            let (_, held) = self.retry.pop_front().expect("looked at");
            self.ready.push_back(held);
        }
        let mut done = Vec::new();
        let now_ms = super::state::wall_clock();
        tracing::trace!(
            "quorum queue '{queue}': dead letters: {} ready, {} to retry, {} out",
            self.ready.len(),
            self.retry.len(),
            self.sent.len()
        );
        while self.sent.len() < PREFETCH
            && let Some(held) = self.ready.pop_front()
        {
            match route(env, queue, config, &held.message, held.reason, now_ms) {
                Err(Unroutable::Cycle) => {
                    self.known.remove(&held.id);
                    done.push(held.id);
                }
                Err(Unroutable::NoExchange) => self.retry.push_back((now + RETRY, held)),
                Ok((_, targets)) if targets.is_empty() => {
                    self.retry.push_back((now + RETRY, held));
                }
                Ok((copy, targets)) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let mut reached = Vec::new();
                    for target in &targets {
                        if !self.attached.contains_key(&target.id()) {
                            target.send(QueueCommand::AttachPublisher {
                                publisher: self.publisher,
                                events: self.events.clone(),
                            });
                            self.attached.insert(target.id(), target.clone());
                        }
                        let taken = target.send(QueueCommand::Publish {
                            publisher: self.publisher,
                            messages: vec![Incoming {
                                message: copy.clone(),
                                confirm: Some((0, seq)),
                            }],
                        });
                        if taken {
                            reached.push(target.id());
                        } else {
                            self.attached.remove(&target.id());
                        }
                    }
                    if reached.len() < targets.len() {
                        // A target went as it was sent to: routed again later.
                        self.retry.push_back((now + RETRY, held));
                        continue;
                    }
                    self.sent.insert(
                        seq,
                        Sent {
                            held,
                            remaining: reached.len(),
                            targets: reached,
                            refused: false,
                            at: now,
                        },
                    );
                }
            }
        }
        done
    }

    /// Takes what a target queue told its publisher; answers the dead letters every target
    /// has now confirmed.
    pub(crate) fn event(&mut self, event: ConnectionEvent, now: Instant) -> Vec<u64> {
        let mut done = Vec::new();
        match event {
            ConnectionEvent::Settled(outcomes) => {
                for outcome in outcomes {
                    let Some(sent) = self.sent.get_mut(&outcome.sequence) else {
                        continue;
                    };
                    sent.refused |= !outcome.accepted;
                    sent.remaining = sent.remaining.saturating_sub(1);
                    if sent.remaining == 0 {
                        let sent = self.sent.remove(&outcome.sequence).expect("found");
                        self.finish(sent, now, &mut done);
                    }
                }
            }
            ConnectionEvent::QueueGone { queue } => {
                self.attached.remove(&queue);
                let waiting: Vec<u64> = self
                    .sent
                    .iter()
                    .filter(|(_, sent)| sent.targets.contains(&queue))
                    .map(|(seq, _)| *seq)
                    .collect();
                for seq in waiting {
                    let mut sent = self.sent.remove(&seq).expect("listed");
                    sent.refused = true;
                    self.finish(sent, now, &mut done);
                }
            }
            _ => {}
        }
        done
    }

    fn finish(&mut self, sent: Sent, now: Instant, done: &mut Vec<u64>) {
        if sent.refused {
            self.retry.push_back((now + RETRY, sent.held));
        } else {
            self.known.remove(&sent.held.id);
            done.push(sent.held.id);
        }
    }

    /// This member no longer leads (or the queue goes): what it held is the next leader's
    /// to republish.
    pub(crate) fn clear(&mut self) {
        for (_, target) in self.attached.drain() {
            target.send(QueueCommand::DetachPublisher {
                publisher: self.publisher,
            });
        }
        self.ready.clear();
        self.retry.clear();
        self.sent.clear();
        self.known.clear();
    }
}
