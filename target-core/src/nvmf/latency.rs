//! Server-side command latency: one HdrHistogram per namespace per poll
//! group, written only by its poll group, copied out by message and merged
//! by the reader. Values are nanoseconds from the pass that fetched the
//! command to the pass that saw its backend completion.

use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds.
pub type LatencyHistogram = Histogram<u64>;

/// Largest latency resolved (60 s); larger values saturate.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Significant decimal digits (0.1 % value resolution).
pub const SIGFIG: u8 = 3;

/// A histogram with the target's fixed bounds, so copies from every poll
/// group add without resizing.
#[allow(clippy::expect_used)] // constant bounds the crate always accepts
pub fn new_latency_histogram() -> LatencyHistogram {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGFIG).expect("constant histogram bounds")
}

/// Adds `src` to `dst`, saturating values above `dst`'s range.
pub fn merge_into(dst: &mut LatencyHistogram, src: &LatencyHistogram) {
    if dst.add(src).is_err() {
        for v in src.iter_recorded() {
            dst.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

/// The percentiles reports carry, as `(label, quantile)`.
pub const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
    ("max", 1.0),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_keeps_percentiles() {
        let mut a = new_latency_histogram();
        let mut b = new_latency_histogram();
        for v in 1..=1000u64 {
            a.saturating_record(v * 1000);
            b.saturating_record(v * 2000);
        }
        merge_into(&mut a, &b);
        assert_eq!(a.len(), 2000);
        assert!(a.max() >= 1_999_000);
        b.saturating_record(MAX_LATENCY_NS * 10);
        assert_eq!(b.len(), 1001);
    }
}
