//! When is a difference between two runs a change? The tests
//! `hostprobe compare` applies (the README's "How compare decides" has
//! the same in prose):
//!
//! - **Quantiles** (p50, p90, p99 of a latency histogram): each run's
//!   quantile gets a confidence interval, the wider of two:
//!   1. the distribution-free one of order statistics: the true quantile
//!      lies between the sample values of ranks `n q ± z sqrt(n q (1-q))`,
//!      read off the histogram as the bounds of the buckets those ranks
//!      fall in, so the interval is never narrower than the histogram's
//!      resolution (a bucket, 12.5%) and is wide when samples are few (a
//!      p99 of 50 samples has no upper bound at all);
//!   2. the noise within the run: the quantile of each slice (500 ms) with
//!      enough samples for it, `exp(±t · sd(ln q_slice) / sqrt(k))` around
//!      the run's (`t`: Student's, 99.9%, `k - 1` degrees of freedom); this
//!      catches what samples that are not independent do (bursts, a
//!      neighbour's load).
//!
//!   A quantile changed when the two runs' intervals do not overlap, it
//!   moved by at least the minimum change (`--min-change`), **and** the
//!   move matters: at the rate the events happen (the busier run's), it
//!   adds or removes at least [`MIN_IMPACT`] of one thread's time (50 ms a
//!   second). A run-queue wait going from 2 to 15 us on 20 waits a second
//!   is real on a busy host, and nobody's problem.
//! - **Shares of thread time** (where the time went, and the time asleep
//!   per syscall): the fraction of each slice, compared as means with the
//!   standard error of the slices (`t · sqrt(se_a² + se_b²)`), and at least
//!   [`MIN_SHARE`] (10 points) apart.
//! - **Counts** (retransmits, failed connects) per second: a conditional
//!   binomial test of two Poisson counts, at least [`MIN_COUNT`] events in
//!   the busier run, and at least a doubling (or halving): such events come
//!   in bursts, more spread than Poisson.
//!
//! `z` is [`Z`] (3.29: 99.9% two-sided for each interval).

use agent_common::hist::{lower_bound, upper_bound};

use crate::hist::Histogram;

/// Normal quantile of each confidence interval: 99.9% two-sided.
pub const Z: f64 = 3.29;
/// Default smallest relative change of a quantile reported: one bucket.
pub const MIN_CHANGE: f64 = 0.125;
/// Smallest change of a share of thread time reported (10 points).
pub const MIN_SHARE: f64 = 0.10;
/// A quantile's change matters when, at the rate its events happen, it
/// would add or remove at least this much thread time a second (5% of one
/// thread): 14 us more on 800 run-queue waits a second does not (a
/// neighbour's compile did that between two unchanged runs here); 70 ns
/// more on every one of a million syscalls a second does.
pub const MIN_IMPACT: f64 = 0.05;
/// Fewest events in the busier run for a change of a count.
pub const MIN_COUNT: u64 = 10;
/// A slice's quantile counts toward the noise when the slice has at least
/// this many samples above it (`n (1 - q)`): a p99 from 200 samples is
/// noisy itself, which only widens the interval.
pub const SLICE_TAIL: f64 = 2.0;
/// Fewest slices that measure noise.
pub const MIN_SLICES: usize = 3;

/// A quantile of one run and its confidence interval, in ns (`hi` may be
/// infinite: too few samples to bound it above).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The order-statistic interval of quantile `q` of `h` (with `max_ns`,
/// the largest value seen), widened to bucket bounds.
pub fn order_interval(h: &Histogram, max_ns: u64, q: f64, z: f64) -> Option<Estimate> {
    let n = h.count();
    let value = h.quantile(q, max_ns)? as f64;
    let nf = n as f64;
    let spread = z * (nf * q * (1.0 - q)).sqrt();
    let r_lo = (nf * q - spread).floor();
    let r_hi = (nf * q + spread).ceil() + 1.0;
    let at_rank = |r: u64| -> usize {
        let mut seen = 0;
        for (b, c) in h.nonzero() {
            seen += c;
            if seen >= r {
                return b;
            }
        }
        h.highest().unwrap_or(0)
    };
    let lo = if r_lo < 1.0 { 0.0 } else { lower_bound(at_rank(r_lo as u64)) as f64 };
    let hi = if r_hi > nf {
        f64::INFINITY
    } else {
        let b = at_rank(r_hi as u64);
        upper_bound(b).min(max_ns.max(lower_bound(b)) + 1) as f64
    };
    Some(Estimate { value, lo: lo.min(value), hi: hi.max(value) })
}

/// Student's t quantile for a two-sided 99.9% interval with `dof` degrees
/// of freedom (a standard table; between rows, the next smaller dof: wider).
pub fn t999(dof: usize) -> f64 {
    const TABLE: [(usize, f64); 16] = [
        (1, 636.6),
        (2, 31.6),
        (3, 12.92),
        (4, 8.61),
        (5, 6.87),
        (6, 5.96),
        (7, 5.41),
        (8, 5.04),
        (9, 4.78),
        (10, 4.59),
        (12, 4.32),
        (15, 4.07),
        (20, 3.85),
        (30, 3.65),
        (60, 3.46),
        (120, 3.37),
    ];
    TABLE.iter().rev().find(|(d, _)| *d <= dof).map_or(f64::INFINITY, |(_, t)| *t).max(Z)
}

/// The factor `exp(t · se)` of the noise between slices: `slices` are each
/// slice's (samples, quantile); `None` with fewer than [`MIN_SLICES`] that
/// have enough samples for `q`.
pub fn slice_factor(slices: &[(u64, u64)], q: f64) -> Option<f64> {
    let logs: Vec<f64> = slices
        .iter()
        .filter(|(n, v)| *n as f64 * (1.0 - q) >= SLICE_TAIL && *v > 0)
        .map(|(_, v)| (*v as f64).ln())
        .collect();
    if logs.len() < MIN_SLICES {
        return None;
    }
    let k = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / k;
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (k - 1.0);
    Some((t999(logs.len() - 1) * (var / k).sqrt()).exp())
}

/// A run's estimate of quantile `q`: the order-statistic interval, widened
/// by the slices' noise.
pub fn estimate(h: &Histogram, max_ns: u64, q: f64, slices: &[(u64, u64)]) -> Option<Estimate> {
    let mut e = order_interval(h, max_ns, q, Z)?;
    if let Some(f) = slice_factor(slices, q) {
        e.lo = e.lo.min(e.value / f);
        e.hi = e.hi.max(e.value * f);
    }
    Some(e)
}

/// Whether a quantile changed from `a` to `b`: disjoint intervals and a
/// relative change of at least `min_change`.
pub fn quantile_changed(a: &Estimate, b: &Estimate, min_change: f64) -> bool {
    let disjoint = b.lo > a.hi || b.hi < a.lo;
    let big = a.value > 0.0 && b.value > 0.0 && (b.value / a.value).ln().abs() >= (1.0 + min_change).ln();
    disjoint && big
}

/// Whether moving by `delta_ns` at `per_second` events a second matters
/// ([`MIN_IMPACT`]).
pub fn matters(delta_ns: f64, per_second: f64) -> bool {
    delta_ns.abs() * 1e-9 * per_second >= MIN_IMPACT
}

/// A share of thread time over a run: its value (total over total) and the
/// standard error of the slices' shares with its degrees of freedom (`None`
/// with fewer than [`MIN_SLICES`] slices with thread time).
pub fn share(part: &[u64], whole: &[u64]) -> Option<(f64, Option<(f64, usize)>)> {
    let total: u64 = whole.iter().sum();
    if total == 0 {
        return None;
    }
    let value = part.iter().sum::<u64>() as f64 / total as f64;
    let per: Vec<f64> = whole
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, w)| part.get(i).copied().unwrap_or(0) as f64 / *w as f64)
        .collect();
    if per.len() < MIN_SLICES {
        return Some((value, None));
    }
    let k = per.len() as f64;
    let mean = per.iter().sum::<f64>() / k;
    let var = per.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0);
    Some((value, Some(((var / k).sqrt(), per.len() - 1))))
}

/// Whether a share changed from `a` to `b` (value, standard error and its
/// degrees of freedom): Welch's test, with the fewer degrees of freedom of
/// the two (conservative).
pub fn share_changed(a: (f64, Option<(f64, usize)>), b: (f64, Option<(f64, usize)>), min_share: f64) -> bool {
    let delta = (b.0 - a.0).abs();
    let (se_a, dof_a) = a.1.unwrap_or((0.0, usize::MAX));
    let (se_b, dof_b) = b.1.unwrap_or((0.0, usize::MAX));
    let noise = t999(dof_a.min(dof_b)) * (se_a.powi(2) + se_b.powi(2)).sqrt();
    delta >= min_share && delta > noise
}

/// Whether a count changed from `a` events in `ta_ns` to `b` in `tb_ns`.
pub fn count_changed(a: u64, ta_ns: u64, b: u64, tb_ns: u64) -> bool {
    if a.max(b) < MIN_COUNT || ta_ns == 0 || tb_ns == 0 {
        return false;
    }
    let (ra, rb) = (a as f64 / ta_ns as f64, b as f64 / tb_ns as f64);
    // Half an event keeps a zero from making every ratio infinite.
    let ratio = (rb + 0.5 / tb_ns as f64) / (ra + 0.5 / ta_ns as f64);
    let c = (a + b) as f64;
    let p = tb_ns as f64 / (ta_ns + tb_ns) as f64;
    let z = (b as f64 - c * p) / (c * p * (1.0 - p)).sqrt();
    z.abs() > Z && !(0.5..=2.0).contains(&ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A histogram of `n` values spread evenly (in log) from `lo` to `hi` ns.
    fn spread(n: u64, lo: f64, hi: f64) -> (Histogram, u64) {
        let mut h = Histogram::default();
        let mut max = 0;
        for i in 0..n {
            let v = (lo * (hi / lo).powf(i as f64 / n as f64)) as u64;
            h.record(v);
            max = max.max(v);
        }
        (h, max)
    }

    #[test]
    fn the_same_distribution_is_no_change_however_many_samples() {
        for n in [10, 100, 10_000, 1_000_000] {
            let (a, ma) = spread(n, 10_000.0, 1_000_000.0);
            let (b, mb) = spread(n + n / 10, 10_000.0, 1_000_000.0);
            for q in [0.5, 0.9, 0.99] {
                let (ea, eb) = (estimate(&a, ma, q, &[]).unwrap(), estimate(&b, mb, q, &[]).unwrap());
                assert!(!quantile_changed(&ea, &eb, MIN_CHANGE), "n {n} q {q}: {ea:?} {eb:?}");
            }
        }
    }

    #[test]
    fn a_shift_of_one_bucket_is_never_a_change_and_a_doubling_is_with_enough_samples() {
        let (a, ma) = spread(100_000, 10_000.0, 20_000.0);
        let (b, mb) = spread(100_000, 11_000.0, 22_000.0);
        let (ea, eb) = (estimate(&a, ma, 0.5, &[]).unwrap(), estimate(&b, mb, 0.5, &[]).unwrap());
        assert!(!quantile_changed(&ea, &eb, MIN_CHANGE), "10% is within a bucket: {ea:?} {eb:?}");
        let (c, mc) = spread(100_000, 20_000.0, 40_000.0);
        let ec = estimate(&c, mc, 0.5, &[]).unwrap();
        assert!(quantile_changed(&ea, &ec, MIN_CHANGE), "{ea:?} {ec:?}");
        // A doubling seen in 5 samples a side is not enough.
        let (d, md) = spread(5, 10_000.0, 20_000.0);
        let (e, me) = spread(5, 20_000.0, 40_000.0);
        let (ed, ee) = (estimate(&d, md, 0.5, &[]).unwrap(), estimate(&e, me, 0.5, &[]).unwrap());
        assert!(!quantile_changed(&ed, &ee, MIN_CHANGE), "{ed:?} {ee:?}");
        // p99 of 50 samples has no upper bound.
        let (f, mf) = spread(50, 10_000.0, 20_000.0);
        assert!(order_interval(&f, mf, 0.99, Z).unwrap().hi.is_infinite());
    }

    #[test]
    fn noisy_slices_widen_the_interval() {
        let (a, ma) = spread(100_000, 10_000.0, 20_000.0);
        let (c, mc) = spread(100_000, 20_000.0, 40_000.0);
        let calm = [(10_000, 14_000), (10_000, 14_100), (10_000, 13_900)];
        // Slices whose medians swing between 8 and 30 us: a doubling of the
        // whole run's median is within that noise.
        let noisy = [(10_000, 8_000), (10_000, 30_000), (10_000, 9_000), (10_000, 28_000)];
        let ec = estimate(&c, mc, 0.5, &[]).unwrap();
        assert!(quantile_changed(&estimate(&a, ma, 0.5, &calm).unwrap(), &ec, MIN_CHANGE));
        assert!(!quantile_changed(&estimate(&a, ma, 0.5, &noisy).unwrap(), &ec, MIN_CHANGE));
        // Slices with too few samples for a p99 are not used.
        assert_eq!(slice_factor(&[(100, 1), (100, 100), (100, 1)], 0.99), None);
    }

    #[test]
    fn shares_need_ten_points_beyond_the_noise() {
        let whole = [100u64; 6];
        let steady_a = share(&[30; 6], &whole).unwrap();
        let steady_b = share(&[45; 6], &whole).unwrap();
        assert!(share_changed(steady_a, steady_b, MIN_SHARE));
        assert!(!share_changed(steady_a, share(&[35; 6], &whole).unwrap(), MIN_SHARE), "5 points");
        let noisy_b = share(&[0, 90, 10, 80, 5, 85], &whole).unwrap();
        assert!(!share_changed(steady_a, noisy_b, MIN_SHARE), "{steady_a:?} {noisy_b:?}");
        assert_eq!(share(&[1], &[0]), None);
    }

    #[test]
    fn a_change_matters_by_the_time_it_moves() {
        assert!(!matters(13_000.0, 20.0), "13 us on 20 waits a second");
        assert!(!matters(5_000.0, 1_000.0));
        assert!(!matters(14_000.0, 800.0), "14 us on 800 waits a second");
        assert!(matters(70.0, 1_000_000.0), "70 ns on a million calls a second");
        assert!(matters(-20_000_000.0, 50.0), "20 ms less on 50 writes a second");
    }

    #[test]
    fn counts_need_enough_events_and_a_doubling() {
        let s = 1_000_000_000;
        assert!(count_changed(10, s, 100, s));
        assert!(count_changed(0, s, 30, s));
        assert!(!count_changed(0, s, 5, s), "too few");
        assert!(!count_changed(100, s, 150, s), "less than double");
        assert!(!count_changed(100, s, 200, 2 * s), "the same rate");
    }
}
