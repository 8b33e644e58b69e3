//! The one histogram layout every probe uses: log-linear buckets of
//! nanoseconds, 8 per power of two.
//!
//! * bucket 0 holds `[0, 64]` ns;
//! * buckets `1..=256` split each power of two from `2^6` (64 ns) to `2^38`
//!   (~275 s) into 8 equal parts, so a bucket is at most 1/8 = 12.5% as wide
//!   as its lower bound and a percentile interpolated inside it is off by at
//!   most ~6% of its value;
//! * bucket 257 holds everything above `2^38` ns.
//!
//! A bucket holds the values above its lower bound up to and including its
//! upper bound, `(lo, hi]`, as a Prometheus `le` bucket and an OTLP
//! explicit bound do: bounds are integers of nanoseconds, and the layout
//! maps onto both exactly, a value of exactly `hi` included.
//! The kernel side uses [`bucket`]; userspace uses [`lower_bound`] and
//! [`upper_bound`] to read the counts back.

/// Sub-buckets per power of two, as a power of two.
pub const SUB_BITS: u32 = 3;
/// Exponent of the first split power of two: buckets start at 64 ns.
pub const MIN_EXP: u32 = 6;
/// Exponent where the split buckets end: ~275 s.
pub const MAX_EXP: u32 = 38;
/// Number of buckets in every histogram.
pub const BUCKETS: usize = 2 + ((MAX_EXP - MIN_EXP) << SUB_BITS) as usize;

const SUB: u64 = 1 << SUB_BITS;

/// Floor of log2 of `v` (`v > 0`), written as a fixed binary search because
/// the BPF instruction set has no count-leading-zeros.
#[inline(always)]
pub const fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// The bucket that holds a duration of `ns` nanoseconds. Always `< BUCKETS`.
#[inline(always)]
pub const fn bucket(ns: u64) -> usize {
    // Buckets are `(lo, hi]`: `ns` goes where `ns - 1` would in `[lo, hi)`.
    let ns = ns.saturating_sub(1);
    if ns < 1 << MIN_EXP {
        return 0;
    }
    if ns >= 1 << MAX_EXP {
        return BUCKETS - 1;
    }
    let exp = log2(ns);
    let sub = (ns >> (exp - SUB_BITS)) & (SUB - 1);
    1 + (((exp - MIN_EXP) as usize) << SUB_BITS) + sub as usize
}

/// The lower bound of bucket `b`, which holds the values above it (bucket
/// 0 holds 0 too).
pub const fn lower_bound(b: usize) -> u64 {
    if b == 0 {
        return 0;
    }
    if b >= BUCKETS - 1 {
        return 1 << MAX_EXP;
    }
    let i = (b - 1) as u64;
    let exp = MIN_EXP as u64 + (i >> SUB_BITS);
    let sub = i & (SUB - 1);
    (1 << exp) + (sub << (exp - SUB_BITS as u64))
}

/// The largest value (ns) that lands in bucket `b` (its `le`); `u64::MAX`
/// for the last, open-ended bucket.
pub const fn upper_bound(b: usize) -> u64 {
    if b >= BUCKETS - 1 {
        u64::MAX
    } else {
        lower_bound(b + 1)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layout_covers_100ns_to_100s() {
        assert_eq!(BUCKETS, 258);
        assert!(upper_bound(0) < 100);
        assert!(lower_bound(BUCKETS - 1) > 100_000_000_000);
    }

    #[test]
    fn log2_is_exact() {
        for e in 0..64 {
            let v = 1u64 << e;
            assert_eq!(log2(v), e);
            assert_eq!(log2(v | (v - 1)), e);
            if e > 0 {
                assert_eq!(log2(v - 1), e - 1);
            }
        }
    }

    #[test]
    fn bounds_are_contiguous_and_increasing() {
        assert_eq!(lower_bound(0), 0);
        for b in 0..BUCKETS - 1 {
            assert_eq!(upper_bound(b), lower_bound(b + 1));
            assert!(lower_bound(b) < upper_bound(b), "bucket {b}");
        }
    }

    #[test]
    fn bucket_is_the_inverse_of_its_bounds() {
        assert_eq!(bucket(0), 0);
        for b in 0..BUCKETS {
            let lo = lower_bound(b);
            assert_eq!(bucket(lo + 1), b, "first value of {b}");
            if b < BUCKETS - 1 {
                assert_eq!(bucket(upper_bound(b)), b, "last value of {b}: its upper bound, as Prometheus' le");
                assert_eq!(bucket(upper_bound(b) + 1), b + 1, "just above {b}");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn buckets_are_at_most_one_eighth_of_their_value_wide() {
        for b in 1..BUCKETS - 1 {
            let (lo, hi) = (lower_bound(b), upper_bound(b));
            assert!((hi - lo) * 8 <= lo, "bucket {b}: ({lo}, {hi}]");
        }
    }

    #[test]
    fn every_value_lands_inside_its_bucket() {
        // A deterministic spread of values over the whole range.
        let mut v: u64 = 1;
        while v < u64::MAX / 8 {
            for x in [v, v + 1, v * 3 / 2] {
                let b = bucket(x);
                assert!((lower_bound(b) < x || b == 0) && x <= upper_bound(b), "{x} -> {b}");
            }
            v = v * 5 / 4 + 1;
        }
    }
}
