//! Self-checking data for `rw = verify`.
//!
//! Every written logical block starts with a 32-byte header, little endian:
//!
//! | bytes  | field                                                  |
//! |--------|--------------------------------------------------------|
//! | 0..8   | magic `NVMFBV01`                                       |
//! | 8..16  | LBA of the block                                       |
//! | 16..24 | sequence number of the write (1, 2, ...; 0 = never)    |
//! | 24..32 | checksum of the whole block with this field as zero    |
//!
//! The rest is a pseudo-random fill derived from (LBA, sequence), so a
//! block written to the wrong place, a stale block and a flipped byte are
//! all told apart. The [`Verifier`] remembers, per block of the job's range
//! (a `Vec<u64>`, 8 bytes per block), the sequence of the last write that
//! was *acknowledged*; a read must return exactly that.
//!
//! Blocks never written by this job are not checked: their content is
//! whatever the backend had (zeros for malloc, anything for a file or SSD).
//! Blocks whose last write failed are not checked either until rewritten,
//! since a failed write may or may not have reached the medium.
//!
//! The [`crate::workload::Workload`] guarantees that no read overlaps a
//! write in flight, which is what makes "exactly the last acknowledged
//! sequence" the right expectation.

use std::fmt;

/// Header magic, `NVMFBV01` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"NVMFBV01");
/// Bytes of the per-block header.
pub const HEADER_BYTES: usize = 32;

const NEVER: u64 = 0;
const UNKNOWN: u64 = u64::MAX;

/// Why a block failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MismatchReason {
    /// The header magic is missing: not a block this tool wrote.
    BadMagic,
    /// The checksum does not match: the block was corrupted. `offset` is
    /// the first byte that differs from what the header's (LBA, sequence)
    /// says the block should hold, when the header itself is intact.
    Checksum {
        /// First differing byte within the block, if found.
        offset: Option<usize>,
    },
    /// An intact block of another LBA: a misdirected read or write.
    WrongLba {
        /// The LBA found in the header.
        found: u64,
    },
    /// An intact block from an older write than the last acknowledged one:
    /// a lost write.
    Stale,
    /// An intact block from a newer write than the last acknowledged one.
    Newer,
    /// The read covers blocks outside the verified range, or the buffer is
    /// too short.
    OutOfRange,
}

/// A verification failure, naming the first bad LBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The first logical block that failed.
    pub lba: u64,
    /// Sequence of the last acknowledged write of that block.
    pub expected_seq: u64,
    /// Sequence found in the block's header (0 if unreadable).
    pub found_seq: u64,
    /// What is wrong.
    pub reason: MismatchReason,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verify failed at LBA {}: ", self.lba)?;
        match self.reason {
            MismatchReason::BadMagic => f.write_str("no verify header (bad magic)")?,
            MismatchReason::Checksum { offset: Some(o) } => write!(
                f,
                "checksum mismatch, first bad byte at offset {o} of the block"
            )?,
            MismatchReason::Checksum { offset: None } => f.write_str("checksum mismatch")?,
            MismatchReason::WrongLba { found } => write!(f, "block belongs to LBA {found}")?,
            MismatchReason::Stale => f.write_str("stale data (lost write)")?,
            MismatchReason::Newer => f.write_str("data from an unacknowledged write")?,
            MismatchReason::OutOfRange => return f.write_str("outside the verified range"),
        }
        write!(
            f,
            " (expected seq {}, found seq {})",
            self.expected_seq, self.found_seq
        )
    }
}

impl std::error::Error for Mismatch {}

/// Fills blocks with self-describing data and checks them on read back;
/// see the module docs. Owned by the job's thread.
#[derive(Debug)]
pub struct Verifier {
    start_lba: u64,
    block_size: usize,
    /// Last acknowledged sequence per block of the range.
    last: Vec<u64>,
    next_seq: u64,
}

impl Verifier {
    /// A verifier for `blocks` blocks of `block_size` bytes from
    /// `start_lba` (see [`crate::workload::Workload::range`]).
    /// `block_size` must be at least [`HEADER_BYTES`] and a multiple of 8.
    pub fn new(start_lba: u64, blocks: u64, block_size: u32) -> Self {
        Self {
            start_lba,
            block_size: (block_size as usize).max(HEADER_BYTES) / 8 * 8,
            last: vec![NEVER; blocks as usize],
            next_seq: 1,
        }
    }

    /// Writes the pattern for `blocks` blocks from `lba` into `buf` and
    /// returns the sequence number given to this write (pass it to
    /// [`Verifier::on_write_done`] when the write is acknowledged).
    pub fn fill(&mut self, buf: &mut [u8], lba: u64, blocks: u32) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        for (i, block) in buf
            .chunks_exact_mut(self.block_size)
            .take(blocks as usize)
            .enumerate()
        {
            fill_block(block, lba + i as u64, seq);
        }
        seq
    }

    /// Records that the write of `seq` to these blocks was acknowledged.
    pub fn on_write_done(&mut self, lba: u64, blocks: u32, seq: u64) {
        self.set(lba, blocks, seq);
    }

    /// Records that a write to these blocks failed: their content is now
    /// unknown and not checked until written again.
    pub fn on_write_failed(&mut self, lba: u64, blocks: u32) {
        self.set(lba, blocks, UNKNOWN);
    }

    /// Checks data read from `blocks` blocks at `lba`; reports the first
    /// bad block.
    pub fn check(&self, buf: &[u8], lba: u64, blocks: u32) -> Result<(), Mismatch> {
        let idx = lba.checked_sub(self.start_lba).map(|i| i as usize);
        let in_range = idx.is_some_and(|i| i + blocks as usize <= self.last.len());
        if !in_range || buf.len() < blocks as usize * self.block_size {
            return Err(Mismatch {
                lba,
                expected_seq: 0,
                found_seq: 0,
                reason: MismatchReason::OutOfRange,
            });
        }
        let first = idx.unwrap_or(0);
        for (i, block) in buf
            .chunks_exact(self.block_size)
            .take(blocks as usize)
            .enumerate()
        {
            let expected = self.last[first + i];
            if expected == NEVER || expected == UNKNOWN {
                continue;
            }
            check_block(block, lba + i as u64, expected)?;
        }
        Ok(())
    }

    /// Runs of blocks whose last write was acknowledged, as `(lba, blocks)`
    /// with at most `max_blocks` per run: what a read-back after the run
    /// must find intact.
    pub fn acknowledged_runs(&self, max_blocks: u32) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut run: Option<(u64, u32)> = None;
        for (i, &seq) in self.last.iter().enumerate() {
            let lba = self.start_lba + i as u64;
            let acked = seq != NEVER && seq != UNKNOWN;
            run = match (run, acked) {
                (Some((start, n)), true) if n < max_blocks.max(1) => Some((start, n + 1)),
                (Some(r), true) => {
                    out.push(r);
                    Some((lba, 1))
                }
                (None, true) => Some((lba, 1)),
                (Some(r), false) => {
                    out.push(r);
                    None
                }
                (None, false) => None,
            };
        }
        out.extend(run);
        out
    }

    fn set(&mut self, lba: u64, blocks: u32, seq: u64) {
        if let Some(i) = lba.checked_sub(self.start_lba) {
            let i = i as usize;
            let end = (i + blocks as usize).min(self.last.len());
            if i < end {
                self.last[i..end].fill(seq);
            }
        }
    }
}

fn word(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i * 8..i * 8 + 8]);
    u64::from_le_bytes(w)
}

/// SplitMix64: a fast, well-mixed stream for the fill.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill_seed(lba: u64, seq: u64) -> u64 {
    lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq.rotate_left(32) ^ MAGIC
}

/// Checksum of a block, its checksum field counted as zero. Each step is a
/// bijection of the state for a given word and injective in the word, so
/// any change confined to one word is always detected.
fn checksum(block: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..block.len() / 8 {
        let w = if i == 3 { 0 } else { word(block, i) };
        h = (h.rotate_left(23) ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 29)
}

fn fill_block(block: &mut [u8], lba: u64, seq: u64) {
    block[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    block[8..16].copy_from_slice(&lba.to_le_bytes());
    block[16..24].copy_from_slice(&seq.to_le_bytes());
    block[24..32].fill(0);
    let mut s = fill_seed(lba, seq);
    for chunk in block[HEADER_BYTES..].chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    let sum = checksum(block);
    block[24..32].copy_from_slice(&sum.to_le_bytes());
}

fn check_block(block: &[u8], lba: u64, expected: u64) -> Result<(), Mismatch> {
    let found_seq = word(block, 2);
    let fail = |reason| {
        Err(Mismatch {
            lba,
            expected_seq: expected,
            found_seq,
            reason,
        })
    };
    if word(block, 0) != MAGIC {
        return fail(MismatchReason::BadMagic);
    }
    if checksum(block) != word(block, 3) {
        // Rebuild what the header claims and find the first differing byte.
        let mut want = vec![0u8; block.len()];
        fill_block(&mut want, word(block, 1), found_seq);
        let offset = block.iter().zip(&want).position(|(a, b)| a != b);
        return fail(MismatchReason::Checksum { offset });
    }
    let found_lba = word(block, 1);
    if found_lba != lba {
        return fail(MismatchReason::WrongLba { found: found_lba });
    }
    if found_seq < expected {
        return fail(MismatchReason::Stale);
    }
    if found_seq > expected {
        return fail(MismatchReason::Newer);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 512;

    fn written(v: &mut Verifier, lba: u64, blocks: u32) -> (Vec<u8>, u64) {
        let mut buf = vec![0u8; blocks as usize * BS];
        let seq = v.fill(&mut buf, lba, blocks);
        v.on_write_done(lba, blocks, seq);
        (buf, seq)
    }

    #[test]
    fn good_data_passes_and_unwritten_is_skipped() {
        let mut v = Verifier::new(100, 64, BS as u32);
        let (buf, _) = written(&mut v, 108, 8);
        v.check(&buf, 108, 8).unwrap();
        v.check(&vec![0u8; 8 * BS], 120, 8).unwrap();
    }

    #[test]
    fn corrupted_byte_names_the_lba() {
        let mut v = Verifier::new(100, 64, BS as u32);
        let (mut buf, seq) = written(&mut v, 108, 8);
        buf[3 * BS + 200] ^= 0x40;
        let m = v.check(&buf, 108, 8).unwrap_err();
        assert_eq!(m.lba, 111);
        assert_eq!(m.reason, MismatchReason::Checksum { offset: Some(200) });
        assert_eq!((m.expected_seq, m.found_seq), (seq, seq));
        assert!(m.to_string().contains("LBA 111"), "{m}");
    }

    #[test]
    fn corrupted_header_is_reported() {
        let mut v = Verifier::new(0, 16, BS as u32);
        let (mut buf, _) = written(&mut v, 0, 4);
        buf[BS + 9] ^= 1; // LBA field of block 1
        let m = v.check(&buf, 0, 4).unwrap_err();
        assert_eq!(m.lba, 1);
        assert!(matches!(m.reason, MismatchReason::Checksum { .. }));
        buf[BS + 9] ^= 1;
        buf[2 * BS] ^= 1; // magic of block 2
        assert_eq!(
            v.check(&buf, 0, 4).unwrap_err().reason,
            MismatchReason::BadMagic
        );
    }

    #[test]
    fn stale_block_is_reported() {
        let mut v = Verifier::new(0, 16, BS as u32);
        let (old, old_seq) = written(&mut v, 4, 4);
        let (_new, new_seq) = written(&mut v, 4, 4);
        let m = v.check(&old, 4, 4).unwrap_err();
        assert_eq!(m.lba, 4);
        assert_eq!(m.reason, MismatchReason::Stale);
        assert_eq!((m.expected_seq, m.found_seq), (new_seq, old_seq));
        assert!(m.to_string().contains("stale"), "{m}");
    }

    #[test]
    fn misdirected_block_is_reported() {
        let mut v = Verifier::new(0, 16, BS as u32);
        let (buf, _) = written(&mut v, 2, 1);
        written(&mut v, 3, 1);
        let m = v.check(&buf, 3, 1).unwrap_err();
        assert_eq!(m.reason, MismatchReason::WrongLba { found: 2 });
    }

    #[test]
    fn failed_write_is_not_checked_and_range_is_enforced() {
        let mut v = Verifier::new(10, 8, BS as u32);
        written(&mut v, 10, 2);
        v.on_write_failed(10, 2);
        v.check(&vec![0xffu8; 2 * BS], 10, 2).unwrap();
        assert_eq!(
            v.check(&vec![0u8; 2 * BS], 9, 2).unwrap_err().reason,
            MismatchReason::OutOfRange
        );
        assert_eq!(
            v.check(&vec![0u8; 2 * BS], 17, 2).unwrap_err().reason,
            MismatchReason::OutOfRange
        );
        assert_eq!(
            v.check(&[0u8; BS], 10, 2).unwrap_err().reason,
            MismatchReason::OutOfRange
        );
    }

    #[test]
    fn acknowledged_runs_split_and_skip() {
        let mut v = Verifier::new(10, 10, 512);
        v.on_write_done(10, 3, 1);
        v.on_write_failed(12, 1);
        v.on_write_done(15, 5, 2);
        assert_eq!(v.acknowledged_runs(4), vec![(10, 2), (15, 4), (19, 1)]);
    }
}
