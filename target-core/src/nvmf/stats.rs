//! Per-namespace I/O counters, one set per poll group (single writer), so
//! the I/O path bumps plain cache lines it owns and readers sum them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::engine::bump;
use crate::bdev::IoOp;

/// Counters of one namespace on one poll group.
#[derive(Debug, Default)]
pub struct NsIoStats {
    /// Read commands handed to the backend.
    pub reads: AtomicU64,
    /// Write commands handed to the backend.
    pub writes: AtomicU64,
    /// Other commands (flush, write zeroes, deallocate).
    pub others: AtomicU64,
    /// Bytes read.
    pub bytes_read: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
    /// Commands that failed (validation or backend).
    pub errors: AtomicU64,
}

/// A summed snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NsIoTotals {
    /// Read commands.
    pub reads: u64,
    /// Write commands.
    pub writes: u64,
    /// Other commands.
    pub others: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Failed commands.
    pub errors: u64,
}

impl NsIoStats {
    /// Counts a command handed to the backend.
    #[inline]
    pub fn record_submit(&self, op: IoOp, bytes: u64) {
        match op {
            IoOp::Read => {
                bump(&self.reads, 1);
                bump(&self.bytes_read, bytes);
            }
            IoOp::Write => {
                bump(&self.writes, 1);
                bump(&self.bytes_written, bytes);
            }
            _ => bump(&self.others, 1),
        }
    }

    /// Counts a failed command.
    #[inline]
    pub fn record_error(&self) {
        bump(&self.errors, 1);
    }

    /// Adds this poll group's counters to `t`.
    pub fn add_to(&self, t: &mut NsIoTotals) {
        t.reads += self.reads.load(Ordering::Relaxed);
        t.writes += self.writes.load(Ordering::Relaxed);
        t.others += self.others.load(Ordering::Relaxed);
        t.bytes_read += self.bytes_read.load(Ordering::Relaxed);
        t.bytes_written += self.bytes_written.load(Ordering::Relaxed);
        t.errors += self.errors.load(Ordering::Relaxed);
    }
}
