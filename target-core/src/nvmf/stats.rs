//! Per-namespace I/O counters, one set per poll group (single writer), so
//! the I/O path bumps plain cache lines it owns and readers sum them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::engine::bump;
use crate::bdev::IoOp;

/// Counters of one namespace on one poll group.
///
/// Commands and bytes are kept per operation, indexed by the operation
/// itself, so counting a command is two indexed adds with no branch on its
/// kind; reads, writes and the others are told apart when summed.
#[derive(Debug, Default)]
pub struct NsIoStats {
    /// Commands handed to the backend, by [`IoOp`].
    ops: [AtomicU64; IoOp::COUNT],
    /// Bytes they moved, by [`IoOp`] (reported for reads and writes).
    bytes: [AtomicU64; IoOp::COUNT],
    /// Commands that failed (validation or backend).
    errors: AtomicU64,
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
        bump(&self.ops[op as usize], 1);
        bump(&self.bytes[op as usize], bytes);
    }

    /// Counts a failed command.
    #[inline]
    pub fn record_error(&self) {
        bump(&self.errors, 1);
    }

    /// Adds this poll group's counters to `t`.
    pub fn add_to(&self, t: &mut NsIoTotals) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (i, (ops, bytes)) in self.ops.iter().zip(&self.bytes).enumerate() {
            match i {
                i if i == IoOp::Read as usize => {
                    t.reads += get(ops);
                    t.bytes_read += get(bytes);
                }
                i if i == IoOp::Write as usize => {
                    t.writes += get(ops);
                    t.bytes_written += get(bytes);
                }
                _ => t.others += get(ops),
            }
        }
        t.errors += get(&self.errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_tell_reads_writes_and_others_apart() {
        let s = NsIoStats::default();
        s.record_submit(IoOp::Read, 4096);
        s.record_submit(IoOp::Read, 512);
        s.record_submit(IoOp::Write, 8192);
        s.record_submit(IoOp::Flush, 0);
        s.record_submit(IoOp::WriteZeroes, 1 << 20);
        s.record_submit(IoOp::Deallocate, 0);
        s.record_error();
        let mut t = NsIoTotals::default();
        s.add_to(&mut t);
        assert_eq!(
            t,
            NsIoTotals {
                reads: 2,
                writes: 1,
                others: 3,
                bytes_read: 4608,
                bytes_written: 8192,
                errors: 1,
            }
        );
    }
}
