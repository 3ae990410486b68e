//! How long a cache line takes to go from one core to another and back,
//! measured before a run whose host and reactor sit on different cores.
//!
//! A two-core loop run moves several cache lines between the host's core
//! and the reactor's per I/O (the command, its response, the ring indices
//! per batch), so its IOPS follow this figure. On a virtual machine the
//! figure is the hypervisor's to choose: on the 2-vCPU machines this project
//! is measured on it is about 110 ns in some runs and about 510 ns in
//! others (the two vCPUs on cores that share a cache, or not), and the
//! two-core IOPS follow it, 2x apart. Recording it with every result tells a
//! slow run from a slow build.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// One probe's result.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CoreProbe {
    /// The core the probe's first thread ran on (the host's).
    pub host_core: usize,
    /// The other (the reactor's).
    pub reactor_core: usize,
    /// Mean round trip of one cache line, nanoseconds.
    pub round_trip_ns: f64,
}

#[repr(align(128))]
struct Line(AtomicU64);

/// Spins until `line` holds `v`; `false` if the other side gave up
/// (`u64::MAX`: it could not be pinned).
fn await_value(line: &Line, v: u64) -> bool {
    loop {
        match line.0.load(Ordering::Acquire) {
            x if x == v => return true,
            u64::MAX => return false,
            _ => std::hint::spin_loop(),
        }
    }
}

/// Ping-pongs a counter between two threads pinned to `host_core` and
/// `reactor_core` for `rounds` round trips. `None` when a thread cannot be
/// pinned (the cores are not in this process's set) or the cores are the
/// same.
pub fn probe(host_core: usize, reactor_core: usize, rounds: u64) -> Option<CoreProbe> {
    if host_core == reactor_core || rounds == 0 {
        return None;
    }
    let lines = Arc::new((Line(AtomicU64::new(0)), Line(AtomicU64::new(0))));
    let peer = lines.clone();
    let echo = std::thread::spawn(move || {
        if target_core::reactor::affinity::pin_current_thread(reactor_core).is_err() {
            // Tell the other side to stop waiting.
            peer.1.0.store(u64::MAX, Ordering::Release);
            return false;
        }
        for i in 1..=rounds {
            if !await_value(&peer.0, i) {
                return false;
            }
            peer.1.0.store(i, Ordering::Release);
        }
        true
    });
    let pinned = std::thread::scope(|s| {
        s.spawn(|| {
            if target_core::reactor::affinity::pin_current_thread(host_core).is_err() {
                lines.0.0.store(u64::MAX, Ordering::Release);
                return None;
            }
            let start = Instant::now();
            for i in 1..=rounds {
                lines.0.0.store(i, Ordering::Release);
                if !await_value(&lines.1, i) {
                    return None;
                }
            }
            Some(start.elapsed())
        })
        .join()
        .ok()
        .flatten()
    });
    let echoed = echo.join().unwrap_or(false);
    let elapsed = pinned.filter(|_| echoed)?;
    Some(CoreProbe {
        host_core,
        reactor_core,
        round_trip_ns: elapsed.as_nanos() as f64 / rounds as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_core_is_no_probe() {
        assert!(probe(0, 0, 10).is_none());
    }

    #[test]
    fn two_cores_give_a_positive_round_trip() {
        let cores = target_core::reactor::affinity::allowed_cores();
        if cores.len() < 2 {
            eprintln!("SKIPPED: one core allowed");
            return;
        }
        let p = probe(cores[0], cores[1], 10_000).expect("probe");
        assert!(p.round_trip_ns > 0.0 && p.round_trip_ns.is_finite());
    }
}
