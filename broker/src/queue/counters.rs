//! A queue's numbers as the management API, the CLI and the metrics show them, kept where they
//! can be read without asking the queue.
//!
//! ```text
//!  classic queue task ── after each batch ──┐
//!  quorum member's machine ── after apply ──┴─> QueueCounters (atomics) <── read model
//! ```
//!
//! Whatever holds a queue's state stores its gauges (ready, unacknowledged, consumers) and its
//! running totals (published, delivered, acknowledged, redelivered) once per batch: a few relaxed
//! stores, so the hot path pays nothing per message for them, and listing 10,000 queues reads
//! 10,000 sets of atomics instead of sending 10,000 requests. The numbers may be a batch behind
//! the queue, as RabbitMQ's statistics are an emission interval behind.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Running totals a queue engine keeps as it works (plain integers; copied out per batch).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Messages accepted into the queue.
    pub published: u64,
    /// Messages handed to consumers or to `basic.get`.
    pub delivered: u64,
    /// Deliveries acknowledged.
    pub acknowledged: u64,
    /// Deliveries of messages delivered before.
    pub redelivered: u64,
}

/// One reading of a queue's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not yet settled.
    pub unacknowledged: u64,
    /// Bytes of the ready messages' bodies, where the engine knows them.
    pub ready_bytes: u64,
    /// Consumers.
    pub consumers: u64,
    /// The running totals.
    pub totals: Totals,
}

/// The shared cell a queue's counters live in.
#[derive(Debug, Default)]
pub struct QueueCounters {
    ready: AtomicU64,
    unacknowledged: AtomicU64,
    ready_bytes: AtomicU64,
    consumers: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    acknowledged: AtomicU64,
    redelivered: AtomicU64,
    /// For a replicated queue: whether this node's member leads (its reading is the queue's).
    leader: AtomicBool,
}

impl QueueCounters {
    /// Whether this node's member of a replicated queue leads it.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Records whether this node's member leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.store(leading, Ordering::Relaxed);
    }

    /// Stores a reading (by the one task that holds the queue's state).
    pub fn store(&self, snapshot: CountersSnapshot) {
        let relaxed = Ordering::Relaxed;
        self.ready.store(snapshot.ready, relaxed);
        self.unacknowledged.store(snapshot.unacknowledged, relaxed);
        self.ready_bytes.store(snapshot.ready_bytes, relaxed);
        self.consumers.store(snapshot.consumers, relaxed);
        self.published.store(snapshot.totals.published, relaxed);
        self.delivered.store(snapshot.totals.delivered, relaxed);
        self.acknowledged
            .store(snapshot.totals.acknowledged, relaxed);
        self.redelivered.store(snapshot.totals.redelivered, relaxed);
    }

    /// The latest reading.
    pub fn load(&self) -> CountersSnapshot {
        let relaxed = Ordering::Relaxed;
        CountersSnapshot {
            ready: self.ready.load(relaxed),
            unacknowledged: self.unacknowledged.load(relaxed),
            ready_bytes: self.ready_bytes.load(relaxed),
            consumers: self.consumers.load(relaxed),
            totals: Totals {
                published: self.published.load(relaxed),
                delivered: self.delivered.load(relaxed),
                acknowledged: self.acknowledged.load(relaxed),
                redelivered: self.redelivered.load(relaxed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_reading_is_loaded_back_whole() {
        let counters = QueueCounters::default();
        assert_eq!(counters.load(), CountersSnapshot::default());
        let reading = CountersSnapshot {
            ready: 3,
            unacknowledged: 2,
            ready_bytes: 30,
            consumers: 1,
            totals: Totals {
                published: 9,
                delivered: 6,
                acknowledged: 4,
                redelivered: 1,
            },
        };
        counters.store(reading);
        assert_eq!(counters.load(), reading);
    }
}
