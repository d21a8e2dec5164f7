//! Which records are still needed, per segment: the basis for deleting and compacting segments.
//!
//! The writer counts a record live the moment it is written (so a record is never unaccounted
//! while its owner has yet to hear of it); the owner releases it when it no longer needs it.
//! Segments are deleted only from the oldest end: a bookkeeping record (a settlement) in a later
//! segment may refer to a message in an earlier one, so deleting a dead segment while an older one
//! survives could bring an acknowledged message back at the next replay.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
struct SegmentLife {
    live: u64,
    written: u64,
    owners: HashMap<u64, u64>,
}

/// Live counts of one stream.
#[derive(Debug, Default)]
pub(crate) struct LiveSegments {
    segments: BTreeMap<u32, SegmentLife>,
}

impl LiveSegments {
    pub(crate) fn retain(&mut self, segment: u32, owner: u64) {
        let life = self.segments.entry(segment).or_default();
        life.live += 1;
        life.written += 1;
        *life.owners.entry(owner).or_default() += 1;
    }

    pub(crate) fn release(&mut self, segment: u32, owner: u64) {
        let Some(life) = self.segments.get_mut(&segment) else {
            return;
        };
        life.live = life.live.saturating_sub(1);
        if let Some(count) = life.owners.get_mut(&owner) {
            *count -= 1;
            if *count == 0 {
                life.owners.remove(&owner);
            }
        }
    }

    /// Segments below the returned number hold nothing live and may go (from the oldest end).
    pub(crate) fn dead_prefix_end(&mut self) -> u32 {
        while let Some((&segment, life)) = self.segments.first_key_value() {
            if life.live > 0 {
                return segment;
            }
            self.segments.remove(&segment);
        }
        u32::MAX
    }

    /// The oldest segment when it is mostly dead (live below `1/ratio` of what was written) and
    /// at least `behind` newer segments exist: its owners should move their records forward.
    pub(crate) fn relocation_candidate(
        &self,
        ratio: u64,
        behind: usize,
    ) -> Option<(u32, Vec<u64>)> {
        let (&segment, life) = self.segments.first_key_value()?;
        if self.segments.len() <= behind || life.live == 0 || life.live * ratio >= life.written {
            return None;
        }
        Some((segment, life.owners.keys().copied().collect()))
    }

    pub(crate) fn live_records(&self) -> u64 {
        self.segments.values().map(|life| life.live).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_prefix_is_collectable() {
        let mut live = LiveSegments::default();
        for segment in 1..=3 {
            for _ in 0..10 {
                live.retain(segment, 7);
            }
        }
        assert_eq!(live.dead_prefix_end(), 1);
        for _ in 0..10 {
            live.release(2, 7);
        }
        assert_eq!(
            live.dead_prefix_end(),
            1,
            "segment 2 is dead but 1 still lives"
        );
        for _ in 0..9 {
            live.release(1, 7);
        }
        assert_eq!(live.relocation_candidate(5, 1), Some((1, vec![7])));
        live.release(1, 7);
        assert_eq!(live.dead_prefix_end(), 3);
        assert_eq!(live.live_records(), 10);
    }
}
