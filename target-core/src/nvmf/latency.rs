//! Server-side command latency: one [`FastHistogram`] per namespace per
//! poll group, written only by its poll group (an index computation and one
//! increment per command), turned into an HdrHistogram when a snapshot is
//! asked for by message, and merged by the reader. Values are nanoseconds
//! from the pass that fetched the command to the pass that saw its backend
//! completion.

use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds.
pub type LatencyHistogram = Histogram<u64>;

pub use crate::hist::{FastHistogram, MAX_LATENCY_NS, SIGFIG, merge_into, new_histogram};

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
        let mut a = new_histogram();
        let mut b = new_histogram();
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
