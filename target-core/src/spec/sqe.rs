//! Submission Queue Entry, 64 bytes (Base 2.0c §4.2, Figure 88), with the
//! accessors the engine and the drivers use to build and parse commands.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::opcode::FabricsType;

/// A 64-byte submission queue entry, exactly as it sits in a queue.
///
/// Dword 0 packs OPC (7:0), FUSE (9:8), PSDT (15:14) and CID (31:16).
/// In a fabrics command (opcode 0x7f) byte 4, which is the low byte of
/// `nsid` in other commands, holds FCTYPE.
#[repr(C)]
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SubmissionEntry {
    pub cdw0: u32,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    /// Metadata Pointer (MPTR).
    pub mptr: u64,
    /// Data Pointer (DPTR): PRP1/PRP2, or one SGL descriptor.
    pub dptr: [u64; 2],
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

const _: () = assert!(size_of::<SubmissionEntry>() == 64);

/// PRP or SGL Data Transfer (PSDT), SQE dword 0 bits 15:14.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Psdt {
    /// PRPs are used for this transfer.
    Prp,
    /// SGLs, metadata pointer to a contiguous buffer.
    SglMptrContiguous,
    /// SGLs, metadata pointer to an SGL segment.
    SglMptrSgl,
    /// Reserved value 3.
    Reserved,
}

impl SubmissionEntry {
    /// A zeroed entry with opcode and command identifier set.
    pub fn new(opcode: u8, cid: u16) -> Self {
        Self {
            cdw0: opcode as u32 | ((cid as u32) << 16),
            ..Self::default()
        }
    }

    /// Opcode (OPC).
    pub fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }

    /// Fused Operation (FUSE): 0 normal, 1 first, 2 second, 3 reserved.
    pub fn fuse(&self) -> u8 {
        ((self.cdw0 >> 8) & 0x3) as u8
    }

    /// Dword 0 bits 13:10, reserved in every command.
    pub fn cdw0_reserved(&self) -> u8 {
        ((self.cdw0 >> 10) & 0xf) as u8
    }

    /// PRP or SGL for Data Transfer (PSDT).
    pub fn psdt(&self) -> Psdt {
        match (self.cdw0 >> 14) & 0x3 {
            0 => Psdt::Prp,
            1 => Psdt::SglMptrContiguous,
            2 => Psdt::SglMptrSgl,
            _ => Psdt::Reserved,
        }
    }

    /// Sets PSDT.
    pub fn set_psdt(&mut self, psdt: Psdt) {
        let v = match psdt {
            Psdt::Prp => 0,
            Psdt::SglMptrContiguous => 1,
            Psdt::SglMptrSgl => 2,
            Psdt::Reserved => 3,
        };
        self.cdw0 = (self.cdw0 & !(0x3 << 14)) | (v << 14);
    }

    /// Command Identifier (CID).
    pub fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }

    /// Sets CID, keeping the rest of dword 0.
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = (self.cdw0 & 0xffff) | ((cid as u32) << 16);
    }

    /// PRP Entry 1.
    pub fn prp1(&self) -> u64 {
        self.dptr[0]
    }

    /// PRP Entry 2.
    pub fn prp2(&self) -> u64 {
        self.dptr[1]
    }

    /// Fabrics Command Type (FCTYPE), byte 4 of a fabrics command.
    pub fn fctype(&self) -> FabricsType {
        FabricsType(self.nsid as u8)
    }

    /// Starting LBA of an NVM read/write/write-zeroes command (CDW10-11).
    pub fn slba(&self) -> u64 {
        self.cdw10 as u64 | ((self.cdw11 as u64) << 32)
    }

    /// Sets SLBA.
    pub fn set_slba(&mut self, slba: u64) {
        self.cdw10 = slba as u32;
        self.cdw11 = (slba >> 32) as u32;
    }

    /// Number of Logical Blocks, zero-based (CDW12 bits 15:0).
    pub fn nlb_z(&self) -> u16 {
        self.cdw12 as u16
    }

    /// Number of logical blocks as a count (NLB + 1).
    pub fn block_count(&self) -> u32 {
        self.nlb_z() as u32 + 1
    }

    /// Force Unit Access (CDW12 bit 30) of a read or write.
    pub fn fua(&self) -> bool {
        self.cdw12 & (1 << 30) != 0
    }

    /// Builds an NVM read or write style command.
    pub fn nvm_rw(opcode: u8, cid: u16, nsid: u32, slba: u64, blocks: u32) -> Self {
        let mut sqe = Self::new(opcode, cid);
        sqe.nsid = nsid;
        sqe.set_slba(slba);
        sqe.cdw12 = blocks.saturating_sub(1) & 0xffff;
        sqe
    }

    /// Builds a fabrics command with the given FCTYPE.
    pub fn fabrics(fctype: FabricsType, cid: u16) -> Self {
        let mut sqe = Self::new(super::opcode::AdminOpcode::FABRICS.0, cid);
        sqe.nsid = fctype.0 as u32;
        sqe
    }

    /// The entry as its 64 wire bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn field_offsets_match_spec() {
        assert_eq!(offset_of!(SubmissionEntry, nsid), 4);
        assert_eq!(offset_of!(SubmissionEntry, cdw2), 8);
        assert_eq!(offset_of!(SubmissionEntry, mptr), 16);
        assert_eq!(offset_of!(SubmissionEntry, dptr), 24);
        assert_eq!(offset_of!(SubmissionEntry, cdw10), 40);
        assert_eq!(offset_of!(SubmissionEntry, cdw15), 60);
    }

    #[test]
    fn dword0_round_trips() {
        let mut sqe = SubmissionEntry::new(0x02, 0xbeef);
        sqe.set_psdt(Psdt::SglMptrContiguous);
        assert_eq!(sqe.opcode(), 0x02);
        assert_eq!(sqe.cid(), 0xbeef);
        assert_eq!(sqe.psdt(), Psdt::SglMptrContiguous);
        sqe.set_cid(7);
        assert_eq!(sqe.cid(), 7);
        assert_eq!(sqe.psdt(), Psdt::SglMptrContiguous);
        let bytes = sqe.to_bytes();
        assert_eq!(bytes[0], 0x02);
        assert_eq!(bytes[1], 0x40);
        assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]), 7);
    }

    #[test]
    fn rw_fields() {
        let sqe = SubmissionEntry::nvm_rw(0x01, 1, 3, 0x1_0000_0002, 8);
        assert_eq!(sqe.slba(), 0x1_0000_0002);
        assert_eq!(sqe.nlb_z(), 7);
        assert_eq!(sqe.block_count(), 8);
        assert_eq!(sqe.nsid, 3);
        let f = SubmissionEntry::fabrics(FabricsType::CONNECT, 9);
        assert_eq!(f.opcode(), 0x7f);
        assert_eq!(f.fctype(), FabricsType::CONNECT);
        assert_eq!(f.to_bytes()[4], 0x01);
    }
}
