//! The I/O sequence of one job: which operation at which LBA next.
//!
//! A [`Workload`] is built once per job instance and asked for the next
//! I/O each time a slot frees up. It never allocates after construction
//! and is deterministic: the same [`JobSpec`] (seed included) and
//! namespace give the same sequence.
//!
//! * Sequential modes step through the range `bs` at a time and wrap.
//! * Random modes pick a uniformly distributed, `align`-aligned offset
//!   such that the I/O lies inside the range.
//! * Mixed modes choose read or write per I/O with `rwmixread` percent reads.
//! * [`RwMode::Verify`] works on `bs`-sized slots: phase 1 writes every slot
//!   once in order; phase 2 picks random slots, reading (and checking) with
//!   `rwmixread` percent, otherwise rewriting. A slot with an I/O in flight
//!   is never picked, so a read never races a write of the same blocks and
//!   every read slot was written (and acknowledged, or failed) before.
//!   The runner must call [`Workload::complete`] for every finished I/O.

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::error::UsageError;
use crate::job::{JobSpec, RwMode};

/// Direction of one I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Controller to host.
    Read,
    /// Host to controller.
    Write,
}

/// One I/O to issue: operation, first LBA, number of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoSpec {
    /// Read or write.
    pub op: Op,
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (`bs / block_size`).
    pub blocks: u32,
}

/// How many random picks verify phase 2 tries before scanning for a free slot.
const VERIFY_PICK_TRIES: u32 = 16;

/// The I/O generator of one job instance; see the module docs.
#[derive(Debug)]
pub struct Workload {
    rw: RwMode,
    start_lba: u64,
    range_blocks: u64,
    io_blocks: u32,
    /// Distance in blocks between two slot starts.
    stride: u64,
    /// Number of positions an I/O can start at.
    slots: u64,
    read_pct: u32,
    rng: SmallRng,
    /// Next slot of a sequential stream (also verify phase 1).
    cursor: u64,
    /// Verify only: a bit per slot with an I/O in flight.
    busy: Vec<u64>,
    /// Verify only: phase 1 (initial fill) is done issuing.
    filled: bool,
}

impl Workload {
    /// Builds the generator for `spec` on a namespace of `ns_bytes` bytes
    /// in `block_size`-byte blocks. The spec is validated first.
    pub fn new(spec: &JobSpec, block_size: u32, ns_bytes: u64) -> Result<Self, UsageError> {
        spec.validate(ns_bytes, block_size)?;
        let bsz = u64::from(block_size);
        let start_lba = spec.offset / bsz;
        let range_blocks = spec.range_bytes(ns_bytes) / bsz;
        let io_blocks = spec.bs / block_size;
        let io = u64::from(io_blocks);
        let (stride, slots) = match spec.rw {
            RwMode::RandRead | RwMode::RandWrite | RwMode::RandRw => {
                let stride = u64::from(spec.align / block_size);
                (stride, (range_blocks - io) / stride + 1)
            }
            _ => (io, range_blocks / io),
        };
        let busy = if spec.rw == RwMode::Verify {
            vec![0u64; slots.div_ceil(64) as usize]
        } else {
            Vec::new()
        };
        Ok(Self {
            rw: spec.rw,
            start_lba,
            range_blocks,
            io_blocks,
            stride,
            slots,
            read_pct: spec.rwmixread,
            rng: SmallRng::seed_from_u64(spec.seed),
            cursor: 0,
            busy,
            filled: false,
        })
    }

    /// First LBA and length in blocks of the range this workload touches
    /// (what a [`crate::verify::Verifier`] must cover).
    pub fn range(&self) -> (u64, u64) {
        (self.start_lba, self.range_blocks)
    }

    /// Blocks per I/O.
    pub fn io_blocks(&self) -> u32 {
        self.io_blocks
    }

    /// `true` while a verify job is still in its initial write phase.
    pub fn in_fill_phase(&self) -> bool {
        self.rw == RwMode::Verify && !self.filled
    }

    /// The next I/O to issue.
    #[inline]
    pub fn next_io(&mut self) -> IoSpec {
        let (op, slot) = match self.rw {
            RwMode::Read => (Op::Read, self.next_seq()),
            RwMode::Write => (Op::Write, self.next_seq()),
            RwMode::ReadWrite => {
                let op = self.pick_op();
                (op, self.next_seq())
            }
            RwMode::RandRead => (Op::Read, below(&mut self.rng, self.slots)),
            RwMode::RandWrite => (Op::Write, below(&mut self.rng, self.slots)),
            RwMode::RandRw => {
                let op = self.pick_op();
                (op, below(&mut self.rng, self.slots))
            }
            RwMode::Verify => self.next_verify(),
        };
        IoSpec {
            op,
            lba: self.start_lba + slot * self.stride,
            blocks: self.io_blocks,
        }
    }

    /// Tells the generator an I/O it produced has finished (successfully
    /// or not). Needed in verify mode to free its slot; a no-op otherwise.
    #[inline]
    pub fn complete(&mut self, io: &IoSpec) {
        if self.rw == RwMode::Verify {
            let slot = (io.lba - self.start_lba) / self.stride;
            self.set_busy(slot, false);
        }
    }

    fn pick_op(&mut self) -> Op {
        if below(&mut self.rng, 100) < u64::from(self.read_pct) {
            Op::Read
        } else {
            Op::Write
        }
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.cursor;
        self.cursor += 1;
        if self.cursor >= self.slots {
            self.cursor = 0;
        }
        s
    }

    /// Out of line: the random and sequential modes' `next_io` then needs
    /// no saved registers of its own.
    #[inline(never)]
    fn next_verify(&mut self) -> (Op, u64) {
        if !self.filled {
            let slot = self.cursor;
            self.cursor += 1;
            if self.cursor >= self.slots {
                self.filled = true;
            }
            self.set_busy(slot, true);
            return (Op::Write, slot);
        }
        let op = self.pick_op();
        let mut slot = below(&mut self.rng, self.slots);
        let mut tries = 0;
        while self.is_busy(slot) && tries < VERIFY_PICK_TRIES {
            slot = below(&mut self.rng, self.slots);
            tries += 1;
        }
        if self.is_busy(slot) {
            // Deterministic scan; validation guarantees at least iodepth
            // free slots while the runner keeps at most iodepth in flight.
            let start = slot;
            loop {
                slot = (slot + 1) % self.slots;
                if !self.is_busy(slot) || slot == start {
                    break;
                }
            }
            debug_assert!(!self.is_busy(slot), "more verify I/Os in flight than slots");
        }
        self.set_busy(slot, true);
        (op, slot)
    }

    fn is_busy(&self, slot: u64) -> bool {
        self.busy
            .get((slot / 64) as usize)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn set_busy(&mut self, slot: u64, busy: bool) {
        if let Some(w) = self.busy.get_mut((slot / 64) as usize) {
            if busy {
                *w |= 1 << (slot % 64);
            } else {
                *w &= !(1 << (slot % 64));
            }
        }
    }
}

/// A number in `0..n` (`n > 0`) from one 64-bit draw: the high half of
/// `draw * n` (Lemire's multiply-shift, without the rejection loop; its
/// bias, under `n / 2^64`, is far below anything a benchmark can see). A
/// handful of instructions per I/O where `random_range` spent ~35.
#[inline]
fn below(rng: &mut SmallRng, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const NS: u64 = 1 << 30;

    fn wl(spec: JobSpec) -> Workload {
        Workload::new(&spec, 512, NS).unwrap()
    }

    #[test]
    fn sequential_wraps_inside_range() {
        let mut w = wl(JobSpec {
            rw: RwMode::Read,
            offset: 8192,
            size: Some(3 * 4096 + 512),
            ..JobSpec::default()
        });
        let lbas: Vec<u64> = (0..5).map(|_| w.next_io().lba).collect();
        assert_eq!(lbas, [16, 24, 32, 16, 24]);
        assert_eq!(w.next_io().blocks, 8);
    }

    #[test]
    fn random_is_aligned_in_range_and_seeded() {
        let spec = JobSpec {
            rw: RwMode::RandRw,
            offset: 1 << 20,
            size: Some(1 << 20),
            align: 4096,
            bs: 8192,
            ..JobSpec::default()
        };
        let mut a = wl(spec.clone());
        let mut b = wl(spec.clone());
        let mut reads = 0;
        for _ in 0..10_000 {
            let x = a.next_io();
            assert_eq!(x, b.next_io());
            assert_eq!(x.lba % 8, 0);
            assert!(x.lba >= 2048 && x.lba + 16 <= 4096, "{x:?}");
            reads += u32::from(x.op == Op::Read);
        }
        assert!((4500..5500).contains(&reads), "{reads}");
        let mut c = wl(JobSpec { seed: 7, ..spec });
        assert!((0..10).any(|_| c.next_io() != a.next_io()));
    }

    #[test]
    fn random_hits_last_slot() {
        let mut w = wl(JobSpec {
            rw: RwMode::RandWrite,
            size: Some(4 * 4096),
            ..JobSpec::default()
        });
        let seen: HashSet<u64> = (0..1000).map(|_| w.next_io().lba).collect();
        assert_eq!(seen, HashSet::from([0, 8, 16, 24]));
    }

    #[test]
    fn verify_writes_everything_before_reading_and_never_overlaps() {
        let mut w = wl(JobSpec {
            rw: RwMode::Verify,
            verify: true,
            iodepth: 4,
            size: Some(16 * 4096),
            rwmixread: 70,
            ..JobSpec::default()
        });
        let mut written = HashSet::new();
        let mut inflight: Vec<IoSpec> = Vec::new();
        for i in 0..5000 {
            if inflight.len() == 4 {
                let done = inflight.remove(i % 4);
                w.complete(&done);
                if done.op == Op::Write {
                    written.insert(done.lba);
                }
            }
            let io = w.next_io();
            assert!(inflight.iter().all(|o| o.lba != io.lba), "overlap at {i}");
            if io.op == Op::Read {
                assert!(written.contains(&io.lba), "read before write at {i}");
            }
            inflight.push(io);
        }
        assert!(!w.in_fill_phase());
    }
}
