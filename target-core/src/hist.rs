//! Latency histograms shared by the target and the benchmark tool: one
//! fixed HdrHistogram geometry (1 ns to 60 s, 3 significant digits), and
//! [`FastHistogram`], a flat array with exactly HdrHistogram's bucket layout
//! for the per-I/O path, folded into `hdrhistogram` histograms off the hot
//! path (once per interval, or when a snapshot is asked for).

use hdrhistogram::Histogram;

/// Largest latency the histograms resolve (60 s); larger values are
/// recorded as this value rather than dropped.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Significant decimal digits of the histograms (0.1 % value resolution).
pub const SIGFIG: u8 = 3;
/// A latency histogram in nanoseconds with the tool's fixed bounds, so all
/// histograms can be added without resizing (no allocation while running).
#[allow(clippy::expect_used)] // constant, valid bounds
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGFIG).expect("valid histogram bounds")
}

// HdrHistogram's layout for the bounds above (see `Histogram::new_with_bounds`):
// the lowest discernible value is 1, so the unit magnitude is 0; bucket 0
// holds 0..SUB_BUCKET_COUNT at unit resolution, and each further bucket holds
// the upper half of a sub-bucket range twice as coarse as the previous one.

/// log2 of the sub-bucket count: unit resolution up to 2 * 10^SIGFIG.
const SUB_BUCKET_MAG: u32 = (2 * 10u32.pow(SIGFIG as u32))
    .next_power_of_two()
    .trailing_zeros();
/// log2 of half the sub-bucket count (the entries each bucket > 0 adds).
const HALF_MAG: u32 = SUB_BUCKET_MAG - 1;
/// Values up to this mask land in bucket 0.
const SUB_BUCKET_MASK: u64 = (1 << SUB_BUCKET_MAG) - 1;
/// The bucket of `v` is this minus the leading zeros of `v | SUB_BUCKET_MASK`.
const LZ_BASE: u32 = 64 - SUB_BUCKET_MAG;

/// Buckets needed so that `MAX_LATENCY_NS` is representable.
const BUCKETS: u32 = {
    let mut n = 1;
    let mut untrackable: u64 = 1 << SUB_BUCKET_MAG;
    while untrackable <= MAX_LATENCY_NS {
        untrackable <<= 1;
        n += 1;
    }
    n
};
/// Number of counts of a histogram from [`new_histogram`].
const HDR_LEN: usize = ((BUCKETS as usize) + 1) << HALF_MAG;
/// Smallest value without a bucket: `saturating_record` records it (and
/// anything larger) as `MAX_LATENCY_NS`. Values between `MAX_LATENCY_NS` and
/// this are recorded as they are, like HdrHistogram does.
pub const SATURATE_FROM: u64 = (1 << SUB_BUCKET_MAG) << (BUCKETS - 1);
/// Counts of a [`FastHistogram`]: the same layout continued up to
/// `u64::MAX` (so recording needs no clamp; the part past `HDR_LEN` is
/// folded as `MAX_LATENCY_NS`), rounded up to a power of two (so a mask
/// keeps the index in bounds without a check). Only the pages actually
/// written are ever backed by memory.
const FAST_LEN: usize = (((LZ_BASE as usize) + 2) << HALF_MAG).next_power_of_two();
const _: () = assert!(MAX_LATENCY_NS < SATURATE_FROM && SATURATE_FROM <= (MAX_LATENCY_NS << 1));
const _: () = assert!(HDR_LEN <= FAST_LEN);

/// Index in HdrHistogram's counts array of `v` (for histograms from
/// [`new_histogram`]); from `HDR_LEN` on, an index past their range.
#[inline(always)]
fn fast_index(v: u64) -> usize {
    let bucket = LZ_BASE - (v | SUB_BUCKET_MASK).leading_zeros();
    // = ((bucket + 1) << HALF_MAG) + (sub_bucket - half_count)
    ((u64::from(bucket) << HALF_MAG) + (v >> bucket)) as usize
}

/// Lowest value of the bucket at `index` (inverse of [`fast_index`]).
fn fast_value(index: usize) -> u64 {
    let bucket = ((index >> HALF_MAG) as u32).saturating_sub(1);
    let sub = index as u64 - (u64::from(bucket) << HALF_MAG);
    sub << bucket
}

/// The value a count at `index` is folded as: the lowest value of its
/// bucket, or `MAX_LATENCY_NS` past HdrHistogram's range (saturation).
fn folded_value(index: usize) -> u64 {
    if index < HDR_LEN {
        fast_value(index)
    } else {
        MAX_LATENCY_NS
    }
}

/// Latency counts with exactly HdrHistogram's bucket layout for
/// [`new_histogram`], for the per-I/O path: recording is an index
/// computation (a leading-zero count, two shifts, an add) and one increment,
/// without the clamping, range checks and min/max/total bookkeeping of
/// `Histogram::saturating_record`. [`FastHistogram::drain`] folds the counts
/// into a `Histogram` (`record_n` once per non-zero bucket, typically once
/// a second); the result is the same as `saturating_record` of each value:
/// same count at every index, total, min, max, percentiles and encoding.
pub struct FastHistogram {
    counts: Box<[u64; FAST_LEN]>,
    len: u64,
}

impl Default for FastHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for FastHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastHistogram")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl FastHistogram {
    /// An empty histogram. Allocates its counts once (512 KiB of zeroed
    /// address space, of which only the touched pages get backed).
    pub fn new() -> Self {
        // Built on the heap (a Vec), not on the stack; the conversion
        // cannot fail as the length matches.
        let counts = vec![0; FAST_LEN]
            .into_boxed_slice()
            .try_into()
            .unwrap_or_else(|_| Box::new([0; FAST_LEN]));
        Self { counts, len: 0 }
    }

    /// Records one latency in ns; values past the range saturate like
    /// `Histogram::saturating_record` does (when folded).
    #[inline]
    pub fn record(&mut self, lat_ns: u64) {
        // The mask never changes the index (it is < FAST_LEN for any u64);
        // it lets the compiler drop the bounds check.
        if let Some(c) = self.counts.get_mut(fast_index(lat_ns) & (FAST_LEN - 1)) {
            *c += 1;
        }
        self.len += 1;
    }

    /// Values recorded since the last drain.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Nothing recorded since the last drain.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f(value, count)` for each non-zero bucket, `value` being the
    /// lowest value of the bucket (`MAX_LATENCY_NS` for saturated ones), and
    /// empties the histogram. Skips empty stretches a chunk at a time and
    /// stops after the last recorded value.
    pub fn drain(&mut self, mut f: impl FnMut(u64, u64)) {
        const CHUNK: usize = 64;
        let mut left = self.len;
        self.len = 0;
        for (ci, chunk) in self.counts.chunks_mut(CHUNK).enumerate() {
            if left == 0 {
                break;
            }
            if chunk.iter().fold(0, |a, &c| a | c) == 0 {
                continue;
            }
            for (j, c) in chunk.iter_mut().enumerate() {
                if *c != 0 {
                    f(folded_value(ci * CHUNK + j), *c);
                    left = left.saturating_sub(*c);
                    *c = 0;
                }
            }
        }
    }

    /// Adds the counts to `dst` (a histogram from [`new_histogram`]),
    /// leaving them in place (a snapshot).
    pub fn add_to(&self, dst: &mut Histogram<u64>) {
        let mut left = self.len;
        for (i, &c) in self.counts.iter().enumerate() {
            if left == 0 {
                break;
            }
            if c != 0 {
                dst.saturating_record_n(folded_value(i), c);
                left = left.saturating_sub(c);
            }
        }
    }

    /// Adds the counts to `dst` (a histogram from [`new_histogram`]) and
    /// empties this one.
    pub fn drain_into(&mut self, dst: &mut Histogram<u64>) {
        self.drain(|v, n| dst.saturating_record_n(v, n));
    }
}

/// Adds `src` to `dst` (both from [`new_histogram`]; a foreign one is
/// folded value by value, saturating).
pub fn merge_into(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    // Same bounds everywhere; an error would only mean a foreign histogram.
    if dst.add(src).is_err() {
        for v in src.iter_recorded() {
            dst.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_layout_matches_hdrhistogram() {
        let h = new_histogram();
        assert_eq!(HDR_LEN, h.distinct_values());
        assert_eq!(SUB_BUCKET_MAG, 11);
        assert_eq!(h.buckets() as u32, BUCKETS);
        assert_eq!(fast_index(SATURATE_FROM - 1), HDR_LEN - 1);
        assert_eq!(fast_index(SATURATE_FROM), HDR_LEN);
        assert!(fast_index(u64::MAX) < FAST_LEN);
        for i in 0..HDR_LEN {
            let v = fast_value(i);
            assert_eq!(h.lowest_equivalent(v), v, "index {i}");
            assert_eq!(fast_index(v), i, "index {i}");
            assert_eq!(fast_index(h.highest_equivalent(v)), i, "index {i}");
        }
        // Each index is one value class: recording its lowest value in
        // hdrhistogram lands on the same index as all others of the class.
        let mut direct = new_histogram();
        let mut fast = FastHistogram::new();
        for i in 0..HDR_LEN {
            let (lo, hi) = (fast_value(i), h.highest_equivalent(fast_value(i)));
            for v in [lo, hi, lo + (hi - lo) / 2] {
                direct.saturating_record(v);
                fast.record(v);
            }
        }
        let mut folded = new_histogram();
        fast.drain_into(&mut folded);
        assert_eq!(folded, direct);
        assert_eq!(folded.len(), 3 * HDR_LEN as u64);
    }

    #[test]
    fn snapshot_keeps_counts_and_drain_empties() {
        let mut f = FastHistogram::new();
        let mut d = new_histogram();
        for v in [1u64, 10, 1000, 123_456, 7_000_000, MAX_LATENCY_NS * 3] {
            f.record(v);
            d.saturating_record(v);
        }
        let snapshot = |f: &FastHistogram| {
            let mut h = new_histogram();
            f.add_to(&mut h);
            h
        };
        assert_eq!(snapshot(&f), d);
        assert_eq!(snapshot(&f), d, "a snapshot does not drain");
        let mut drained = new_histogram();
        f.drain_into(&mut drained);
        assert_eq!(drained, d);
        assert!(f.is_empty() && snapshot(&f).is_empty());
    }
}
