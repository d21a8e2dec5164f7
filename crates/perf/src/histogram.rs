//! A log-linear latency histogram: 64 sub-buckets per power of two (about 1.5 % precision),
//! fixed size, no allocation when recording.

const SUB_BUCKETS: u64 = 64;
const BUCKETS: usize = 64 * 64;

/// Latencies in nanoseconds.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let power = 63 - value.leading_zeros() as u64; // >= 6
    let shift = power - 6;
    ((power - 5) * SUB_BUCKETS + ((value >> shift) - SUB_BUCKETS)) as usize
}

fn lower_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let power = index / SUB_BUCKETS + 5;
    let sub = index % SUB_BUCKETS;
    (SUB_BUCKETS + sub) << (power - 6)
}

impl Histogram {
    pub(crate) fn record(&mut self, value: u64) {
        let slot = index(value).min(BUCKETS - 1);
        self.counts[slot] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1), as the lower bound of its bucket; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (slot, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return lower_bound(slot).min(self.max);
            }
        }
        self.max
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_precise() {
        let mut previous = 0;
        for value in [0u64, 1, 63, 64, 65, 127, 128, 1000, 1_000_000, 1 << 40] {
            let slot = index(value);
            assert!(slot >= previous);
            previous = slot;
            let low = lower_bound(slot);
            assert!(
                low <= value && value - low <= value / 64 + 1,
                "{value} {low}"
            );
        }
    }

    #[test]
    fn quantiles() {
        let mut histogram = Histogram::default();
        for value in 1..=1000u64 {
            histogram.record(value * 1000);
        }
        let p50 = histogram.quantile(0.5);
        assert!((490_000..=500_000).contains(&p50), "{p50}");
        assert_eq!(histogram.max(), 1_000_000);
    }
}
