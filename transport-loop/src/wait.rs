//! Bounded waits that also drive a manual-mode target.

use std::time::{Duration, Instant};

use target_core::nvmf::NvmfTarget;

use crate::HostError;

/// Polls `f` until it returns `Some`, at most `limit`. In manual mode the
/// target's poll groups are driven from here, so host and target can share
/// one test thread.
pub(crate) fn until<T>(
    target: &NvmfTarget,
    limit: Duration,
    what: &'static str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, HostError> {
    let deadline = Instant::now() + limit;
    let mut spins = 0u32;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(HostError::Timeout(what));
        }
        if target.is_manual() {
            target.poll();
        } else {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else if spins < 256 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}
