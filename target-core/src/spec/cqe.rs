//! Completion Queue Entry, 16 bytes (Base 2.0c §4.6, Figure 89).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::status::Status;

/// A 16-byte completion queue entry.
///
/// `status` holds the Phase Tag in bit 0 and the Status Field in bits 15:1.
#[repr(C)]
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct CompletionEntry {
    /// Command specific dword 0.
    pub dw0: u32,
    /// Command specific dword 1.
    pub dw1: u32,
    /// SQ Head Pointer (SQHD).
    pub sqhd: u16,
    /// SQ Identifier (SQID).
    pub sqid: u16,
    /// Command Identifier (CID).
    pub cid: u16,
    /// Phase Tag (bit 0) and Status Field (bits 15:1).
    pub status: u16,
}

const _: () = assert!(size_of::<CompletionEntry>() == 16);

impl CompletionEntry {
    /// A completion for `cid` with `status`, phase clear.
    pub fn new(cid: u16, status: Status) -> Self {
        Self {
            cid,
            status: status.0 << 1,
            ..Self::default()
        }
    }

    /// The Status Field without the phase tag.
    pub fn status(&self) -> Status {
        Status(self.status >> 1)
    }

    /// Sets the Status Field, keeping the phase tag.
    pub fn set_status(&mut self, status: Status) {
        self.status = (self.status & 1) | (status.0 << 1);
    }

    /// Phase Tag (P).
    pub fn phase(&self) -> bool {
        self.status & 1 != 0
    }

    /// Sets the Phase Tag.
    pub fn set_phase(&mut self, phase: bool) {
        self.status = (self.status & !1) | phase as u16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn field_offsets_match_spec() {
        assert_eq!(offset_of!(CompletionEntry, dw1), 4);
        assert_eq!(offset_of!(CompletionEntry, sqhd), 8);
        assert_eq!(offset_of!(CompletionEntry, sqid), 10);
        assert_eq!(offset_of!(CompletionEntry, cid), 12);
        assert_eq!(offset_of!(CompletionEntry, status), 14);
    }

    #[test]
    fn status_and_phase_are_independent() {
        let mut c = CompletionEntry::new(5, Status::INVALID_FIELD.with_dnr());
        c.set_phase(true);
        assert!(c.phase());
        assert_eq!(c.status(), Status::INVALID_FIELD.with_dnr());
        c.set_status(Status::SUCCESS);
        assert!(c.phase());
        assert!(c.status().is_success());
        assert_eq!(c.as_bytes()[14], 1);
    }
}
