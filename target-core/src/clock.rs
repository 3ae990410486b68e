//! A monotonic nanosecond clock for per-I/O timestamps.
//!
//! `Instant::now()` followed by `duration_since` (what a latency stamp
//! needs) costs a `Timespec` subtraction with its checks on top of the
//! clock read: ~45 instructions, paid per I/O at queue depth 1. This reads
//! the same clock (`CLOCK_MONOTONIC`, which `Instant` uses on Linux) and
//! returns plain nanoseconds, so stamps are integer differences.
#![allow(unsafe_code)] // One FFI call into the vDSO.

/// Nanoseconds on the monotonic clock (the one `Instant` reads): only
/// differences mean anything.
#[inline]
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration;
    // CLOCK_MONOTONIC exists on every Linux, so the call cannot fail (were
    // it to, `ts` stays zero: a clock that stands still, not UB).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn moves_with_instant() {
        let (i0, n0) = (Instant::now(), mono_ns());
        std::thread::sleep(Duration::from_millis(20));
        let (n1, i1) = (mono_ns(), Instant::now());
        let by_instant = i1.duration_since(i0).as_nanos() as u64;
        let by_mono = n1 - n0;
        // The two reads bracket each other: the mono span lies inside the
        // Instant span, and both saw the 20 ms sleep.
        assert!(by_mono >= 20_000_000, "{by_mono}");
        assert!(by_mono <= by_instant, "{by_mono} > {by_instant}");
    }
}
