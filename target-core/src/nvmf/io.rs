//! Validation of NVM I/O commands (NVM Command Set 1.0c §3) against a
//! namespace, before anything reaches a backend.
//!
//! One pure function per concern, so every bad input has exactly one place
//! that decides its status, and the checks are testable without a target.

use crate::bdev::IoOp;
use crate::spec::{NvmOpcode, Status, SubmissionEntry};

/// What a valid I/O command asks of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoPlan {
    /// Operation.
    pub op: IoOp,
    /// Starting LBA.
    pub lba: u64,
    /// Blocks (or DSM ranges for deallocate).
    pub blocks: u32,
    /// Force Unit Access.
    pub fua: bool,
    /// Bytes the command transfers through its buffer.
    pub xfer_bytes: u64,
}

/// The namespace facts a command is checked against.
#[derive(Clone, Copy, Debug)]
pub struct NsLimits {
    /// log2 of the block size.
    pub block_shift: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// Largest transfer in bytes (MDTS); `u64::MAX` when there is no
    /// limit, so the check is one compare ([`NsLimits::max_xfer_from`]).
    pub max_xfer: u64,
}

impl NsLimits {
    /// The `max_xfer` for a transfer limit in bytes where 0 means none
    /// (MDTS's own convention, [`super::engine::EngineOptions::max_xfer_bytes`]).
    pub fn max_xfer_from(bytes: u64) -> u64 {
        if bytes == 0 { u64::MAX } else { bytes }
    }
}

/// DSM attribute: Deallocate (AD), CDW11 bit 2.
const DSM_AD: u32 = 1 << 2;

/// Checks the bits every command must leave clear: dword 0 bits 13:10 and
/// a reserved PSDT value. Fused operations are not supported.
///
/// Bits 15:8 of dword 0 must therefore read 00h, 40h or 80h. One test
/// covers the three conditions: adding 40h to PSDT (bits 15:14) carries
/// out of the byte only for the reserved 11b, and leaves FUSE and the
/// reserved bits (13:8) as they were.
#[inline]
pub fn check_common(sqe: &SubmissionEntry) -> Result<(), Status> {
    if ((sqe.cdw0 & 0xff00) + 0x4000) & 0x1_3f00 != 0 {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    Ok(())
}

/// Validates an NVM command against `ns`, given `buf_len` bytes of data
/// buffer. Returns what to ask the backend, or the spec's status.
///
/// Reads and writes are planned inline at the call site (they are nearly
/// every command); the other opcodes in a function of their own.
#[inline(always)]
pub fn plan(sqe: &SubmissionEntry, ns: &NsLimits, buf_len: usize) -> Result<IoPlan, Status> {
    let op = NvmOpcode(sqe.opcode());
    if op == NvmOpcode::READ || op == NvmOpcode::WRITE {
        return plan_rw(sqe, ns, buf_len, op == NvmOpcode::WRITE);
    }
    plan_other(sqe, ns, buf_len)
}

#[inline(always)]
fn plan_rw(
    sqe: &SubmissionEntry,
    ns: &NsLimits,
    buf_len: usize,
    is_write: bool,
) -> Result<IoPlan, Status> {
    // CDW12: bits 19:16 and 25:24 reserved; PRINFO (29:26) needs a
    // protection-information format, which no namespace here has.
    if sqe.cdw12 & 0x030f_0000 != 0 || (sqe.cdw12 >> 26) & 0xf != 0 {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    let blocks = sqe.block_count();
    let xfer = (blocks as u64) << ns.block_shift;
    if xfer > ns.max_xfer {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    check_range(sqe.slba(), blocks, ns)?;
    if is_write && ns.read_only {
        return Err(Status::NAMESPACE_WRITE_PROTECTED.with_dnr());
    }
    if (buf_len as u64) < xfer {
        return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    }
    Ok(IoPlan {
        op: if is_write { IoOp::Write } else { IoOp::Read },
        lba: sqe.slba(),
        blocks,
        fua: sqe.fua(),
        xfer_bytes: xfer,
    })
}

#[inline(never)]
fn plan_other(sqe: &SubmissionEntry, ns: &NsLimits, buf_len: usize) -> Result<IoPlan, Status> {
    let op = NvmOpcode(sqe.opcode());
    match op {
        NvmOpcode::READ | NvmOpcode::WRITE => plan_rw(sqe, ns, buf_len, op == NvmOpcode::WRITE),
        NvmOpcode::FLUSH => {
            if sqe.cdw10 | sqe.cdw11 | sqe.cdw12 | sqe.cdw13 | sqe.cdw14 | sqe.cdw15 != 0 {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            Ok(IoPlan {
                op: IoOp::Flush,
                lba: 0,
                blocks: 0,
                fua: false,
                xfer_bytes: 0,
            })
        }
        NvmOpcode::WRITE_ZEROES => {
            // CDW12 bits 24:16 reserved (DEAC is bit 25, allowed); no PRINFO.
            if sqe.cdw12 & 0x01ff_0000 != 0 || (sqe.cdw12 >> 26) & 0xf != 0 {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            let blocks = sqe.block_count();
            check_range(sqe.slba(), blocks, ns)?;
            if ns.read_only {
                return Err(Status::NAMESPACE_WRITE_PROTECTED.with_dnr());
            }
            Ok(IoPlan {
                op: IoOp::WriteZeroes,
                lba: sqe.slba(),
                blocks,
                fua: sqe.fua(),
                xfer_bytes: 0,
            })
        }
        NvmOpcode::DATASET_MANAGEMENT => {
            // CDW10 NR (7:0) zero-based; CDW11 attributes. Only AD does
            // anything; IDR/IDW are hints we may ignore.
            let ranges = (sqe.cdw10 & 0xff) + 1;
            if sqe.cdw10 & !0xff != 0 || sqe.cdw11 & !0x7 != 0 {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            if ns.read_only && sqe.cdw11 & DSM_AD != 0 {
                return Err(Status::NAMESPACE_WRITE_PROTECTED.with_dnr());
            }
            let xfer = ranges as u64 * 16;
            if (buf_len as u64) < xfer {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            Ok(IoPlan {
                op: if sqe.cdw11 & DSM_AD != 0 {
                    IoOp::Deallocate
                } else {
                    IoOp::Flush
                },
                lba: 0,
                blocks: ranges,
                fua: false,
                xfer_bytes: xfer,
            })
        }
        _ => Err(Status::INVALID_OPCODE.with_dnr()),
    }
}

/// `true` when DSM without the AD bit: nothing to do but complete.
pub fn is_dsm_hint_only(sqe: &SubmissionEntry) -> bool {
    NvmOpcode(sqe.opcode()) == NvmOpcode::DATASET_MANAGEMENT && sqe.cdw11 & DSM_AD == 0
}

fn check_range(slba: u64, blocks: u32, ns: &NsLimits) -> Result<(), Status> {
    match slba.checked_add(blocks as u64) {
        Some(end) if end <= ns.num_blocks => Ok(()),
        _ => Err(Status::LBA_OUT_OF_RANGE.with_dnr()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_common_matches_the_fields_it_tests() {
        for byte in 0..=0xffu32 {
            let sqe = SubmissionEntry {
                cdw0: 0x0002 | (byte << 8) | (0x1234 << 16),
                ..Default::default()
            };
            let bad = sqe.cdw0_reserved() != 0
                || sqe.psdt() == crate::spec::sqe::Psdt::Reserved
                || sqe.fuse() != 0;
            assert_eq!(
                check_common(&sqe).is_err(),
                bad,
                "dword 0 bits 15:8 = {byte:#x}"
            );
        }
    }

    const NS: NsLimits = NsLimits {
        block_shift: 9,
        num_blocks: 1000,
        read_only: false,
        max_xfer: 128 * 1024,
    };

    fn rw(op: NvmOpcode, slba: u64, blocks: u32) -> SubmissionEntry {
        SubmissionEntry::nvm_rw(op.0, 1, 1, slba, blocks)
    }

    #[test]
    fn good_read_plans_the_transfer() {
        let p = plan(&rw(NvmOpcode::READ, 10, 8), &NS, 4096).unwrap();
        assert_eq!(p.op, IoOp::Read);
        assert_eq!((p.lba, p.blocks, p.xfer_bytes), (10, 8, 4096));
    }

    #[test]
    fn each_bad_input_has_its_status() {
        let s = |r: Result<IoPlan, Status>| r.unwrap_err();
        assert_eq!(
            s(plan(&rw(NvmOpcode::READ, 999, 2), &NS, 1024)),
            Status::LBA_OUT_OF_RANGE.with_dnr()
        );
        assert_eq!(
            s(plan(&rw(NvmOpcode::READ, u64::MAX, 2), &NS, 1024)),
            Status::LBA_OUT_OF_RANGE.with_dnr()
        );
        assert_eq!(
            s(plan(&rw(NvmOpcode::READ, 0, 8), &NS, 512)),
            Status::DATA_SGL_LENGTH_INVALID.with_dnr()
        );
        assert_eq!(
            s(plan(&rw(NvmOpcode::READ, 0, 257), &NS, 1 << 20)),
            Status::INVALID_FIELD.with_dnr()
        );
        let ro = NsLimits {
            read_only: true,
            ..NS
        };
        assert_eq!(
            s(plan(&rw(NvmOpcode::WRITE, 0, 1), &ro, 512)),
            Status::NAMESPACE_WRITE_PROTECTED.with_dnr()
        );
        assert_eq!(
            s(plan(&rw(NvmOpcode(0x7e), 0, 1), &NS, 512)),
            Status::INVALID_OPCODE.with_dnr()
        );
        let mut pi = rw(NvmOpcode::READ, 0, 1);
        pi.cdw12 |= 1 << 26;
        assert_eq!(s(plan(&pi, &NS, 512)), Status::INVALID_FIELD.with_dnr());
        let mut fl = SubmissionEntry::new(NvmOpcode::FLUSH.0, 1);
        fl.cdw10 = 1;
        assert_eq!(s(plan(&fl, &NS, 0)), Status::INVALID_FIELD.with_dnr());
        let mut fused = rw(NvmOpcode::READ, 0, 1);
        fused.cdw0 |= 1 << 8;
        assert_eq!(
            check_common(&fused).unwrap_err(),
            Status::INVALID_FIELD.with_dnr()
        );
        let mut rsvd = rw(NvmOpcode::READ, 0, 1);
        rsvd.cdw0 |= 1 << 11;
        assert_eq!(
            check_common(&rsvd).unwrap_err(),
            Status::INVALID_FIELD.with_dnr()
        );
    }

    #[test]
    fn dsm_counts_ranges_and_needs_their_buffer() {
        let mut d = SubmissionEntry::new(NvmOpcode::DATASET_MANAGEMENT.0, 1);
        d.cdw10 = 1;
        d.cdw11 = DSM_AD;
        let p = plan(&d, &NS, 32).unwrap();
        assert_eq!((p.op, p.blocks), (IoOp::Deallocate, 2));
        assert_eq!(
            plan(&d, &NS, 16).unwrap_err(),
            Status::DATA_SGL_LENGTH_INVALID.with_dnr()
        );
        d.cdw11 = 0;
        assert!(is_dsm_hint_only(&d));
    }
}
