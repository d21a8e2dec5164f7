//! What a Raft core remembers of its log: the term and size of every entry after the last
//! snapshot, never the entries themselves (those live in the WAL, read back by position).
//!
//! Terms are kept as runs (`(first index, term)`), so a log of a million entries written under
//! one leader costs one run; sizes cost four bytes an entry, and only until the next snapshot.

use std::collections::VecDeque;

/// The indexes, terms and sizes of a log's entries, from just after its snapshot to its end.
#[derive(Debug, Clone, Default)]
pub struct Terms {
    snapshot_index: u64,
    snapshot_term: u64,
    /// Runs of equal terms: each starts at its index and lasts until the next run.
    runs: Vec<(u64, u64)>,
    /// The size in bytes of each entry after the snapshot.
    sizes: VecDeque<u32>,
}

impl Terms {
    /// An empty log whose snapshot stands at `(index, term)`.
    pub fn new(snapshot_index: u64, snapshot_term: u64) -> Terms {
        Terms {
            snapshot_index,
            snapshot_term,
            runs: Vec::new(),
            sizes: VecDeque::new(),
        }
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    pub fn snapshot_term(&self) -> u64 {
        self.snapshot_term
    }

    pub fn last_index(&self) -> u64 {
        self.snapshot_index + self.sizes.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.runs.last().map_or(self.snapshot_term, |run| run.1)
    }

    /// The term of the entry at `index`: `None` past the end or before the snapshot.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index || index > self.last_index() {
            return None;
        }
        let run = self.runs.partition_point(|run| run.0 <= index);
        Some(self.runs[run - 1].1)
    }

    /// The first index of the run of terms `index` belongs to (used to skip a whole
    /// conflicting term when a follower's log diverges).
    pub fn run_start(&self, index: u64) -> u64 {
        if index <= self.snapshot_index || index > self.last_index() {
            return index;
        }
        let run = self.runs.partition_point(|run| run.0 <= index);
        self.runs[run - 1].0
    }

    /// Appends one entry, which must be the next index.
    pub fn push(&mut self, index: u64, term: u64, size: u32) {
        debug_assert_eq!(
            index,
            self.last_index() + 1,
            "entries are appended in order"
        );
        debug_assert!(term >= self.last_term(), "terms never go down in a log");
        if self.runs.last().is_none_or(|run| run.1 != term) {
            self.runs.push((index, term));
        }
        self.sizes.push_back(size);
    }

    /// Drops the entries from `from` on.
    pub fn truncate(&mut self, from: u64) {
        debug_assert!(from > self.snapshot_index, "a snapshot is never truncated");
        if from > self.last_index() {
            return;
        }
        self.sizes
            .truncate((from - self.snapshot_index - 1) as usize);
        self.runs.retain(|run| run.0 < from);
    }

    /// Forgets the entries up to `index`, which a snapshot now covers; an index past the end
    /// (a snapshot installed from the leader) empties the log.
    pub fn compact(&mut self, index: u64, term: u64) {
        if index <= self.snapshot_index {
            return;
        }
        if index >= self.last_index() || self.term(index) != Some(term) {
            *self = Terms::new(index, term);
            return;
        }
        let next_term = self
            .term(index + 1)
            .expect("invariant: index + 1 is in the log");
        self.sizes.drain(..(index - self.snapshot_index) as usize);
        self.runs.retain(|run| run.0 > index + 1);
        self.runs.insert(0, (index + 1, next_term));
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// The last index of a batch starting at `from` that stays within `max_bytes` and
    /// `max_entries` (at least one entry when there is one): `from - 1` when `from` is past the
    /// end.
    pub fn batch_end(&self, from: u64, max_bytes: u64, max_entries: u64) -> u64 {
        let last = self.last_index();
        if from > last || from <= self.snapshot_index {
            return from - 1;
        }
        let mut bytes = 0u64;
        let mut end = from - 1;
        for size in self
            .sizes
            .range((from - self.snapshot_index - 1) as usize..)
        {
            bytes += u64::from(*size);
            if end >= from && (bytes > max_bytes || end + 1 - from >= max_entries) {
                break;
            }
            end += 1;
        }
        end
    }

    /// How many bytes of entries follow the snapshot.
    pub fn bytes_since_snapshot(&self) -> u64 {
        self.sizes.iter().map(|size| u64::from(*size)).sum()
    }

    /// How many entries follow the snapshot.
    pub fn len(&self) -> u64 {
        self.sizes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(terms: &[u64]) -> Terms {
        let mut log = Terms::new(0, 0);
        for (offset, term) in terms.iter().enumerate() {
            log.push(offset as u64 + 1, *term, 10);
        }
        log
    }

    #[test]
    fn terms_are_found_by_index_across_runs() {
        let log = log(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(log.term(0), Some(0));
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(5), Some(2));
        assert_eq!(log.term(6), Some(5));
        assert_eq!(log.term(7), None);
        assert_eq!(log.last_term(), 5);
        assert_eq!(log.run_start(5), 3);
    }

    #[test]
    fn truncation_drops_runs_and_sizes() {
        let mut log = log(&[1, 1, 2, 2, 3]);
        log.truncate(4);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.last_term(), 2);
        log.push(4, 4, 10);
        assert_eq!(log.term(4), Some(4));
        log.truncate(3);
        assert_eq!(log.last_term(), 1);
    }

    #[test]
    fn compaction_keeps_the_suffix_or_resets() {
        let mut log = log(&[1, 1, 2, 2, 3]);
        log.compact(3, 2);
        assert_eq!(log.snapshot_index(), 3);
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(4), Some(2));
        assert_eq!(log.term(5), Some(3));
        assert_eq!(log.term(2), None);
        assert_eq!(log.len(), 2);
        // A snapshot that does not match the log replaces it.
        log.compact(4, 7);
        assert_eq!(
            (log.snapshot_index(), log.last_index(), log.last_term()),
            (4, 4, 7)
        );
        // One past the end empties it.
        let mut log = self::log(&[1, 1]);
        log.compact(9, 3);
        assert_eq!((log.last_index(), log.last_term()), (9, 3));
    }

    #[test]
    fn batches_stop_at_bytes_or_entries_but_hold_one() {
        let log = log(&[1; 10]);
        assert_eq!(log.batch_end(1, 25, 100), 2);
        assert_eq!(log.batch_end(1, 1, 100), 1);
        assert_eq!(log.batch_end(3, 1000, 4), 6);
        assert_eq!(log.batch_end(9, 1000, 100), 10);
        assert_eq!(log.batch_end(11, 1000, 100), 10);
    }
}
