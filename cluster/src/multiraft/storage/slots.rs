//! A group's log index: for each entry it keeps, where the entry's record is. A quorum queue
//! with a backlog keeps millions, so the index is dense: one run of slots by position from a
//! first index (32 bytes an entry, where a B-tree costs about 75), with holes where entries
//! went. Entries far behind the run (live ones a snapshot kept among many that went, such as
//! one message nobody acknowledges while millions pass) move to a sparse map, so that holes
//! never cost more than the entries kept.
//!
//! ```text
//!  sparse: {17, 90}        dense: first = 1_000  [s s _ s s s s ... s]
//!  (below `first`)                                (no hole at either end)
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};

/// A run this short is never thinned.
const SMALL: usize = 1024;

/// Entries by index: a dense run, and the few far behind it.
#[derive(Debug)]
pub(super) struct Slots<T> {
    sparse: BTreeMap<u64, T>,
    /// The index of `dense[0]`.
    first: u64,
    dense: VecDeque<Option<T>>,
    /// How many of `dense` are not holes.
    in_dense: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            sparse: BTreeMap::new(),
            first: 0,
            dense: VecDeque::new(),
            in_dense: 0,
        }
    }
}

impl<T> Slots<T> {
    /// One past the last index of the dense run.
    fn end(&self) -> u64 {
        self.first + self.dense.len() as u64
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sparse.len() + self.in_dense
    }

    pub(super) fn get(&self, index: u64) -> Option<&T> {
        if index < self.first || self.dense.is_empty() {
            return self.sparse.get(&index);
        }
        self.dense.get((index - self.first) as usize)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, index: u64) -> Option<&mut T> {
        if index < self.first || self.dense.is_empty() {
            return self.sparse.get_mut(&index);
        }
        self.dense.get_mut((index - self.first) as usize)?.as_mut()
    }

    /// Keeps `value` at `index`; answers what was there.
    pub(super) fn insert(&mut self, index: u64, value: T) -> Option<T> {
        if self.dense.is_empty() {
            if self
                .sparse
                .last_key_value()
                .is_some_and(|(last, _)| *last >= index)
            {
                return self.sparse.insert(index, value);
            }
            self.first = index;
        } else if index < self.first {
            return self.sparse.insert(index, value);
        } else if index >= self.end() {
            let gap = (index - self.end()) as usize;
            if gap > SMALL.max(self.in_dense) {
                // Far ahead: what is behind goes to the sparse map, a new run starts here.
                self.spill(self.dense.len());
                self.first = index;
            }
        }
        let at = (index - self.first) as usize;
        while self.dense.len() <= at {
            self.dense.push_back(None);
        }
        let old = self.dense[at].replace(value);
        if old.is_none() {
            self.in_dense += 1;
        }
        old
    }

    pub(super) fn remove(&mut self, index: u64) -> Option<T> {
        if index < self.first || self.dense.is_empty() {
            return self.sparse.remove(&index);
        }
        let at = (index - self.first) as usize;
        let old = self.dense.get_mut(at)?.take()?;
        self.in_dense -= 1;
        self.trim();
        Some(old)
    }

    /// The last index kept.
    pub(super) fn last_index(&self) -> Option<u64> {
        if !self.dense.is_empty() {
            return Some(self.end() - 1);
        }
        self.sparse.last_key_value().map(|(index, _)| *index)
    }

    /// The entries in `range`, in order.
    pub(super) fn range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> impl DoubleEndedIterator<Item = (u64, &T)> {
        let start = match range.start_bound() {
            Bound::Included(start) => *start,
            Bound::Excluded(start) => start.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(end) => end.saturating_add(1),
            Bound::Excluded(end) => *end,
            Bound::Unbounded => u64::MAX,
        };
        let end = end.max(start);
        let sparse = self
            .sparse
            .range(start..end)
            .map(|(index, value)| (*index, value));
        let from = start.clamp(self.first, self.end());
        let until = end.clamp(self.first, self.end());
        let first = self.first;
        let offset = from - first;
        let dense = self
            .dense
            .range((from - first) as usize..(until - first) as usize)
            .enumerate()
            .filter_map(move |(at, value)| {
                value
                    .as_ref()
                    .map(|value| (first + offset + at as u64, value))
            });
        sparse.chain(dense)
    }

    /// Removes the entries in `range` that `stale` picks; answers them.
    pub(super) fn remove_where(
        &mut self,
        range: impl RangeBounds<u64>,
        stale: impl Fn(u64) -> bool,
    ) -> Vec<(u64, T)> {
        let picked: Vec<u64> = self
            .range(range)
            .map(|(index, _)| index)
            .filter(|index| stale(*index))
            .collect();
        let removed = picked
            .into_iter()
            .filter_map(|index| self.remove(index).map(|value| (index, value)))
            .collect();
        self.thin();
        removed
    }

    /// Drops holes at both ends of the run.
    fn trim(&mut self) {
        while matches!(self.dense.front(), Some(None)) {
            self.dense.pop_front();
            self.first += 1;
        }
        while matches!(self.dense.back(), Some(None)) {
            self.dense.pop_back();
        }
        if self.dense.is_empty() {
            self.first = 0;
        }
    }

    /// A run mostly of holes keeps only its last unbroken stretch; the entries before it go to
    /// the sparse map.
    fn thin(&mut self) {
        if self.dense.len() <= SMALL || self.in_dense * 4 >= self.dense.len() {
            return;
        }
        let stretch = self
            .dense
            .iter()
            .rev()
            .take_while(|value| value.is_some())
            .count();
        self.spill(self.dense.len() - stretch);
    }

    /// Moves the first `count` positions of the run to the sparse map.
    fn spill(&mut self, count: usize) {
        for (at, value) in self.dense.drain(..count).enumerate() {
            if let Some(value) = value {
                self.sparse.insert(self.first + at as u64, value);
                self.in_dense -= 1;
            }
        }
        self.first += count as u64;
        self.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexes(slots: &Slots<u64>) -> Vec<u64> {
        slots.range(..).map(|(index, _)| index).collect()
    }

    #[test]
    fn appends_removals_and_ranges_read_as_a_map_would() {
        let mut slots = Slots::default();
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for step in 0..20_000u64 {
            let index = match rng.u8(..10) {
                // Mostly appends; some overwrite the tail (a new leader's entries).
                0..=5 => model.last_key_value().map_or(1, |(index, _)| index + 1),
                6 => model
                    .last_key_value()
                    .map_or(1, |(index, _)| index.saturating_sub(2).max(1)),
                _ => {
                    let keys: Vec<u64> = model.keys().copied().collect();
                    if let Some(index) = keys.get(rng.usize(..keys.len().max(1))) {
                        assert_eq!(slots.remove(*index), model.remove(index));
                    }
                    continue;
                }
            };
            assert_eq!(slots.insert(index, step), model.insert(index, step));
            assert_eq!(slots.len(), model.len());
        }
        let all: Vec<(u64, u64)> = slots.range(..).map(|(i, v)| (i, *v)).collect();
        let expected: Vec<(u64, u64)> = model.iter().map(|(i, v)| (*i, *v)).collect();
        assert_eq!(all, expected);
        let last = model.last_key_value().map(|(index, _)| *index);
        assert_eq!(slots.last_index(), last);
        let middle = last.unwrap_or(0) / 2;
        let tail: Vec<u64> = slots.range(middle..).rev().map(|(i, _)| i).collect();
        let expected: Vec<u64> = model.range(middle..).rev().map(|(i, _)| *i).collect();
        assert_eq!(tail, expected);
    }

    #[test]
    fn one_entry_kept_far_behind_costs_no_run_of_holes() {
        let mut slots = Slots::default();
        for index in 1..=100_000 {
            slots.insert(index, index);
        }
        // Everything but entry 5 goes (acknowledged; a snapshot keeps 5).
        let removed = slots.remove_where(..=100_000, |index| index != 5);
        assert_eq!(removed.len(), 99_999);
        assert_eq!(indexes(&slots), vec![5]);
        // New entries far ahead start a run of their own; 5 waits in the sparse map.
        for index in 200_000..200_010 {
            slots.insert(index, index);
        }
        assert!(slots.dense.len() <= 10, "{}", slots.dense.len());
        assert_eq!(slots.get(5), Some(&5));
        assert_eq!(slots.len(), 11);
        // A run that becomes mostly holes keeps its last stretch only.
        for index in 200_010..210_000 {
            slots.insert(index, index);
        }
        slots.remove_where(200_000..209_000, |index| index % 100 != 0);
        assert!(slots.dense.len() <= 1000, "{}", slots.dense.len());
        assert_eq!(slots.get(200_500), Some(&200_500));
        assert_eq!(slots.get(200_501), None);
        assert_eq!(slots.len(), 1 + 90 + 1000);
        assert_eq!(slots.last_index(), Some(209_999));
    }
}
