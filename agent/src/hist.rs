//! Userspace view of the shared histogram layout (`agent_common::hist`):
//! interval differences, merging, and percentiles.

use agent_common::hist::{lower_bound, upper_bound, BUCKETS};

/// Counts per bucket of the shared layout, kept only over the span from
/// the lowest to the highest non-empty bucket: the latencies of one
/// syscall or device fill a few dozen of the 258 buckets, so a histogram
/// takes a few hundred bytes rather than 2 KiB, and an agent holding one
/// per (process, syscall) for thousands of processes stays small.
///
/// Invariant: `counts` is empty or its first and last counts are non-zero
/// (counts are only ever added), so equal histograms are equal values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Bucket index of `counts[0]`.
    first: u16,
    counts: Vec<u64>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nonzero: Vec<_> = self.nonzero().collect();
        f.debug_struct("Histogram").field("buckets", &nonzero).finish()
    }
}

impl Histogram {
    /// The change between two reads of a kernel histogram of u32 counters
    /// that wrap (differences are taken modulo 2^32).
    pub fn delta_u32(now: &[u32; BUCKETS], before: &[u32; BUCKETS]) -> Self {
        let delta = |i: usize| u64::from(now[i].wrapping_sub(before[i]));
        let Some(lo) = (0..BUCKETS).find(|i| delta(*i) != 0) else {
            return Self::default();
        };
        let hi = (lo..BUCKETS).rfind(|i| delta(*i) != 0).unwrap_or(lo);
        Self { first: lo as u16, counts: (lo..=hi).map(delta).collect() }
    }

    /// Makes room for buckets `lo..=hi` (in range, `lo <= hi`).
    fn span(&mut self, lo: usize, hi: usize) {
        if self.counts.is_empty() {
            self.first = lo as u16;
            self.counts.resize(hi - lo + 1, 0);
            return;
        }
        let first = usize::from(self.first);
        if lo < first {
            self.counts.splice(0..0, std::iter::repeat_n(0, first - lo));
            self.first = lo as u16;
        }
        let first = usize::from(self.first);
        if hi >= first + self.counts.len() {
            self.counts.resize(hi - first + 1, 0);
        }
    }

    /// Adds `count` to bucket `i`; refuses (returns false, adds nothing) an
    /// index outside the layout or a count that would overflow.
    #[must_use]
    pub fn add(&mut self, i: usize, count: u64) -> bool {
        if i >= BUCKETS || self.get(i).checked_add(count).is_none() {
            return false;
        }
        if count > 0 {
            self.span(i, i);
            self.counts[i - usize::from(self.first)] += count;
        }
        true
    }

    pub fn record(&mut self, ns: u64) {
        let _ = self.add(agent_common::hist::bucket(ns), 1);
    }

    /// Adds `other`; a bucket's count stops at `u64::MAX` (many agents'
    /// reports merged by the collector must not wrap around).
    pub fn merge(&mut self, other: &Histogram) {
        if other.counts.is_empty() {
            return;
        }
        let lo = usize::from(other.first);
        self.span(lo, lo + other.counts.len() - 1);
        let at = lo - usize::from(self.first);
        for (a, b) in self.counts[at..].iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
    }

    /// The number of values, at most `u64::MAX`.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |t, c| t.saturating_add(*c))
    }

    /// The count of bucket `i`.
    pub fn get(&self, i: usize) -> u64 {
        i.checked_sub(usize::from(self.first)).and_then(|j| self.counts.get(j)).copied().unwrap_or(0)
    }

    /// The count of every bucket of the layout, in order (zeros included).
    pub fn every_bucket(&self) -> impl Iterator<Item = u64> + '_ {
        (0..BUCKETS).map(|i| self.get(i))
    }

    /// (bucket index, count) of the non-empty buckets.
    pub fn nonzero(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let first = usize::from(self.first);
        self.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(move |(i, c)| (first + i, *c))
    }

    /// Index of the highest non-empty bucket.
    pub fn highest(&self) -> Option<usize> {
        self.counts.iter().rposition(|c| *c > 0).map(|i| usize::from(self.first) + i)
    }

    /// The largest value of an interval whose histogram difference is
    /// `self`, from the kernel's running maximum before and after it: exact
    /// when the interval set a new record, else the top of the highest
    /// non-empty bucket (within 12.5%), never above the record.
    pub fn interval_max(&self, max_now: u64, max_before: u64) -> u64 {
        if max_now > max_before {
            return max_now;
        }
        self.highest().map(|b| (upper_bound(b) - 1).min(max_now)).unwrap_or(0)
    }

    /// The `q` quantile (0..=1) in ns, interpolated linearly inside its
    /// bucket and never above `max_ns` (the largest value actually seen).
    /// `None` for an empty histogram.
    pub fn quantile(&self, q: f64, max_ns: u64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // Nearest rank: the smallest value with at least q of the values at
        // or below it. The c values of a bucket are taken as evenly spread
        // up to its top (the largest value seen, in the highest bucket).
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (b, c) in self.nonzero() {
            if seen.saturating_add(c) >= rank {
                let lo = lower_bound(b);
                let hi = upper_bound(b).min(max_ns.max(lo));
                let within = (rank - seen) as f64 / c as f64;
                let v = lo as f64 + (hi - lo) as f64 * within;
                return Some((v.round() as u64).min(max_ns.max(lo)));
            }
            seen = seen.saturating_add(c);
        }
        Some(max_ns)
    }
}

/// Latencies of one interval: histogram, largest value and exact sum (the
/// mean, `sum_ns / count`, is what `iostat` calls await).
#[derive(Debug, Clone, Default)]
pub struct Dist {
    pub hist: Histogram,
    pub max_ns: u64,
    /// Exact sum of the interval's values, where the probe keeps one
    /// (kernel running sums differenced like the histogram).
    pub sum_ns: u64,
}

impl Dist {
    /// The interval between two reads of a kernel histogram with its running
    /// maximum and running sum.
    pub fn between(
        now: &[u32; BUCKETS],
        before: &[u32; BUCKETS],
        max_now: u64,
        max_before: u64,
        sum_now: u64,
        sum_before: u64,
    ) -> Self {
        let hist = Histogram::delta_u32(now, before);
        let max_ns = hist.interval_max(max_now, max_before);
        Self { hist, max_ns, sum_ns: sum_now.wrapping_sub(sum_before) }
    }

    pub fn merge(&mut self, o: &Dist) {
        self.hist.merge(&o.hist);
        self.max_ns = self.max_ns.max(o.max_ns);
        self.sum_ns += o.sum_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_exact() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // (shape, bound): the estimate is always in the exact value's bucket
        // (at most 12.5% away); on smooth distributions interpolation does
        // better than that.
        let shapes: [(&dyn Fn(u64) -> u64, f64); 4] = [
            (&|r| 1_000 + r % 1_000_000, 0.02),
            (&|r| 20_000_000 + r % 200_000, 0.05),
            (&|r| if r % 10 < 7 { 20_000_000 + r % 200_000 } else { 300 + r % 100 }, 0.05),
            // Spikes at the bottom of buckets: the worst case.
            (&|r| (1u64 << (7 + r % 30)) | ((r >> 40) % 1024), 0.125),
        ];
        for (shape, bound) in shapes {
            let mut values: Vec<u64> = (0..20_000).map(|_| shape(rnd())).collect();
            let mut h = Histogram::default();
            values.iter().for_each(|v| h.record(*v));
            values.sort_unstable();
            let max = *values.last().unwrap();
            for q in [0.5, 0.9, 0.99, 1.0] {
                let exact = exact_quantile(&values, q) as f64;
                let est = h.quantile(q, max).unwrap() as f64;
                assert!((est - exact).abs() <= bound * exact, "q{q}: est {est} exact {exact}");
            }
        }
    }

    #[test]
    fn quantile_never_exceeds_max_and_handles_empty() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5, 0), None);
        for _ in 0..50 {
            h.record(20_100_000);
        }
        let p99 = h.quantile(0.99, 20_100_000).unwrap();
        assert!(p99 <= 20_100_000);
        let mut one = Histogram::default();
        one.record(1_000_167_154);
        assert_eq!(one.quantile(0.5, 1_000_167_154), Some(1_000_167_154), "one value is every quantile");
        assert!(h.quantile(0.5, 20_100_000).unwrap() >= lower_bound(agent_common::hist::bucket(20_100_000)));
    }

    #[test]
    fn deltas_wrap() {
        let mut now = [0u32; BUCKETS];
        let mut before = [0u32; BUCKETS];
        now[3] = 5;
        before[3] = u32::MAX - 1;
        now[4] = 9;
        before[4] = 2;
        let d = Histogram::delta_u32(&now, &before);
        assert_eq!((d.get(2), d.get(3), d.get(4), d.get(5)), (0, 7, 7, 0));
        assert_eq!(d.count(), 14);
    }

    #[test]
    fn the_span_form_agrees_with_every_bucket_counted() {
        // Random records, adds and merges against a plain array of all 258
        // buckets: the same counts, and equal histograms are equal values
        // whatever order built them.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let (mut h, mut dense) = (Histogram::default(), [0u64; BUCKETS]);
            let mut parts = Vec::new();
            for _ in 0..rnd() % 20 {
                let mut part = Histogram::default();
                match rnd() % 3 {
                    0 => part.record(1 << (rnd() % 40)),
                    1 => assert!(part.add((rnd() % BUCKETS as u64) as usize, rnd() % 5)),
                    _ => {
                        let lo = (rnd() % 200) as usize;
                        (lo..lo + (rnd() % 50) as usize).for_each(|i| assert!(part.add(i, 1)));
                    }
                }
                part.nonzero().for_each(|(i, c)| dense[i] += c);
                h.merge(&part);
                parts.push(part);
            }
            assert!(h.every_bucket().eq(dense.iter().copied()));
            let mut reversed = Histogram::default();
            parts.iter().rev().for_each(|p| reversed.merge(p));
            assert_eq!(reversed, h);
        }
        assert!(!Histogram::default().add(BUCKETS, 1), "outside the layout");
        let mut full = Histogram::default();
        assert!(full.add(3, u64::MAX) && !full.add(3, 1), "overflow refused");
    }

    #[test]
    fn merge_adds() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(100);
        b.record(100);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.highest(), Some(agent_common::hist::bucket(1_000_000)));
    }
}
