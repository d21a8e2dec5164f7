//! Warren's stand-in for the `base2histogram` crate (0.2.x), patched in for openraft.
//!
//! openraft 0.10.0-alpha.34 keeps its runtime statistics (batch sizes, log stage latencies) in
//! `base2histogram` 0.2.3 histograms. That crate builds, on the first histogram created, one
//! process-wide table of bucket bounds for all sixteen of its scale widths: about 26 MB written
//! at start, 70% of an idle node's memory, whatever the number of Raft groups. openraft has no
//! switch to leave its statistics out, and Warren never reads them.
//!
//! This crate offers the part of the 0.2 API that openraft uses ([`Histogram`], [`record`],
//! [`record_n`], [`percentile_stats`], [`PercentileStats`], [`AsciiChart`]) with fixed
//! log-linear buckets computed from the value (no table), and counts allocated on the first
//! sample (an unused histogram is three words). Precision: four buckets per power of two, so a
//! percentile is the lower bound of a bucket at most 25% below the true value.
//!
//! Delete it (and the `[patch.crates-io]` entry) once openraft depends on a `base2histogram`
//! that builds each scale on first use.
//!
//! [`record`]: Histogram::record
//! [`record_n`]: Histogram::record_n
//! [`percentile_stats`]: Histogram::percentile_stats

use std::fmt;
use std::marker::PhantomData;

/// Buckets per power of two.
const SUB_BUCKETS: u64 = 4;
/// Buckets for the whole `u64` range: values 0-3 exactly, then four per power of two.
const BUCKETS: usize = 252;

/// The bucket of `value`.
fn bucket(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let power = u64::from(63 - value.leading_zeros()); // >= 2
    let sub = (value >> (power - 2)) - SUB_BUCKETS; // 0..4
    ((power - 1) * SUB_BUCKETS + sub) as usize
}

/// The smallest value in bucket `index`.
fn lower_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let power = index / SUB_BUCKETS + 1;
    (SUB_BUCKETS + index % SUB_BUCKETS) << (power - 2)
}

/// A histogram of `u64` samples. `T` is a tag type kept for API compatibility.
pub struct Histogram<T = ()> {
    /// Samples per bucket; empty until the first sample.
    counts: Vec<u64>,
    samples: u64,
    tag: PhantomData<T>,
}

impl<T> Histogram<T> {
    /// An empty histogram; allocates nothing.
    pub fn new() -> Self {
        Histogram {
            counts: Vec::new(),
            samples: 0,
            tag: PhantomData,
        }
    }

    /// Records one sample.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `count` samples of `value`.
    pub fn record_n(&mut self, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        let slot = &mut self.counts[bucket(value)];
        *slot = slot.saturating_add(count);
        self.samples = self.samples.saturating_add(count);
    }

    /// The value at quantile `q` (0..=1): the lower bound of the bucket holding that rank; 0
    /// when empty.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.samples == 0 {
            return 0;
        }
        let rank = ((self.samples as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*count);
            if seen >= rank {
                return lower_bound(index);
            }
        }
        lower_bound(BUCKETS - 1)
    }

    /// The sample count and the usual percentiles.
    pub fn percentile_stats(&self) -> PercentileStats {
        PercentileStats {
            samples: self.samples,
            p0_1: self.percentile(0.001),
            p1: self.percentile(0.01),
            p5: self.percentile(0.05),
            p10: self.percentile(0.10),
            p50: self.percentile(0.50),
            p90: self.percentile(0.90),
            p99: self.percentile(0.99),
            p99_9: self.percentile(0.999),
        }
    }

    /// Counts per bucket, zeros included (none before the first sample).
    fn counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, BUCKETS - self.counts.len()))
    }
}

impl<T> Default for Histogram<T> {
    fn default() -> Self {
        Histogram::new()
    }
}

impl<T> Clone for Histogram<T> {
    fn clone(&self) -> Self {
        Histogram {
            counts: self.counts.clone(),
            samples: self.samples,
            tag: PhantomData,
        }
    }
}

/// Equal when they hold the same samples, allocated or not.
impl<T> PartialEq for Histogram<T> {
    fn eq(&self, other: &Self) -> bool {
        self.samples == other.samples && self.counts().eq(other.counts())
    }
}

impl<T> Eq for Histogram<T> {}

impl<T> fmt::Debug for Histogram<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("stats", &self.percentile_stats())
            .finish()
    }
}

/// A histogram's sample count and percentiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PercentileStats {
    /// Samples recorded.
    pub samples: u64,
    /// 0.1th percentile.
    pub p0_1: u64,
    /// 1st percentile.
    pub p1: u64,
    /// 5th percentile.
    pub p5: u64,
    /// 10th percentile.
    pub p10: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
}

impl fmt::Display for PercentileStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p0.1={} p1={} p5={} p10={} p50={} p90={} p99={} p99.9={}",
            self.samples,
            self.p0_1,
            self.p1,
            self.p5,
            self.p10,
            self.p50,
            self.p90,
            self.p99,
            self.p99_9
        )
    }
}

/// Named histograms shown together.
pub struct AsciiChart<T = ()> {
    series: Vec<(String, Histogram<T>)>,
}

impl<T> AsciiChart<T> {
    /// A chart with no series.
    pub fn new() -> Self {
        AsciiChart { series: Vec::new() }
    }

    /// Adds a series.
    pub fn add(mut self, name: impl Into<String>, histogram: Histogram<T>) -> Self {
        self.series.push((name.into(), histogram));
        self
    }

    /// A rendering with one line per series: its name, sample count and percentiles.
    pub fn detailed(&self) -> DetailedDisplay<'_, T> {
        DetailedDisplay(self)
    }
}

impl<T> fmt::Debug for AsciiChart<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.series
                    .iter()
                    .map(|(name, histogram)| (name, histogram)),
            )
            .finish()
    }
}

impl<T> Default for AsciiChart<T> {
    fn default() -> Self {
        AsciiChart::new()
    }
}

/// What [`AsciiChart::detailed`] renders.
#[derive(Debug)]
pub struct DetailedDisplay<'a, T>(&'a AsciiChart<T>);

impl<T> fmt::Display for DetailedDisplay<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .0
            .series
            .iter()
            .map(|(name, _)| name.chars().count())
            .max()
            .unwrap_or(0);
        for (name, histogram) in &self.0.series {
            writeln!(f, "{name:<width$}  {}", histogram.percentile_stats())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_u64_in_order_within_a_quarter() {
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        let mut previous = 0;
        for value in (0..4096u64).chain([1 << 20, (1 << 20) + 1, 1 << 40, u64::MAX]) {
            let index = bucket(value);
            assert!(index >= previous, "{value}");
            previous = index;
            let low = lower_bound(index);
            assert!(low <= value, "{value}: {low}");
            assert!(value - low <= value / 4, "{value}: {low}");
            assert_eq!(bucket(low), index, "{value}");
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut histogram = Histogram::<()>::new();
        for value in 1..=1000u64 {
            histogram.record(value);
        }
        let stats = histogram.percentile_stats();
        assert_eq!(stats.samples, 1000);
        assert_eq!(stats.p0_1, 1);
        assert!((384..=500).contains(&stats.p50), "{stats}");
        assert!((768..=990).contains(&stats.p99), "{stats}");
        assert!(stats.p1 <= stats.p5 && stats.p5 <= stats.p10 && stats.p10 <= stats.p50);
        assert!(stats.p50 <= stats.p90 && stats.p90 <= stats.p99 && stats.p99 <= stats.p99_9);
    }

    #[test]
    fn record_n_counts_like_repeated_records() {
        let mut once = Histogram::<()>::new();
        once.record_n(7, 3);
        once.record_n(9, 0);
        let mut repeated = Histogram::<()>::new();
        for _ in 0..3 {
            repeated.record(7);
        }
        assert_eq!(once, repeated);
        assert_eq!(once.percentile_stats().samples, 3);
        assert_eq!(once.percentile_stats().p50, 7);
    }

    #[test]
    fn an_empty_histogram_allocates_nothing_and_reports_zeros() {
        let empty = Histogram::<()>::new();
        assert_eq!(empty.counts.capacity(), 0);
        assert_eq!(empty.percentile_stats(), PercentileStats::default());
        let mut touched = Histogram::<()>::new();
        touched.record_n(5, 0);
        assert_eq!(empty, touched);
    }

    #[test]
    fn the_chart_lists_each_series() {
        let mut fast = Histogram::<()>::new();
        fast.record(10);
        let chart = AsciiChart::new()
            .add("fast", fast)
            .add("unused", Histogram::new());
        let text = chart.detailed().to_string();
        assert!(text.contains("fast    n=1 "), "{text}");
        assert!(text.contains("unused  n=0 "), "{text}");
        assert_eq!(text.lines().count(), 2);
    }
}
