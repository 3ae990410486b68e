//! Completion status (Base 2.0c §4.6.1.2): status code type, status code and
//! the DNR/More/CRD bits, packed as in bits 15:1 of completion dword 3.

use crate::open_enum;

open_enum! {
    /// Status Code Type (SCT), Base 2.0c Figure 93.
    pub struct StatusCodeType(u8) {
        GENERIC = 0,
        COMMAND_SPECIFIC = 1,
        MEDIA_AND_DATA_INTEGRITY = 2,
        PATH_RELATED = 3,
        VENDOR_SPECIFIC = 7,
    }
}

/// A completion status: the 15-bit Status Field of a CQE without the phase tag.
///
/// Bit layout (of this value, i.e. CQE DW3 bits 31:17 shifted down by one):
/// SC 7:0, SCT 10:8, CRD 12:11, M 13, DNR 14.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u16);

macro_rules! statuses {
    ($( $(#[$m:meta])* $name:ident = ($sct:ident, $sc:expr), )*) => {
        #[allow(missing_docs)]
        impl Status {
            $( $(#[$m])* pub const $name: Self = Self::new(StatusCodeType::$sct, $sc); )*

            /// The spec's name of this status, if known (DNR/More/CRD ignored).
            pub fn name(self) -> Option<&'static str> {
                let base = Self::new(self.sct(), self.sc());
                $( if base == Self::$name { return Some(stringify!($name)); } )*
                None
            }
        }
    };
}

statuses! {
    // Generic command status, Base 2.0c Figure 94.
    SUCCESS = (GENERIC, 0x00),
    INVALID_OPCODE = (GENERIC, 0x01),
    INVALID_FIELD = (GENERIC, 0x02),
    COMMAND_ID_CONFLICT = (GENERIC, 0x03),
    DATA_TRANSFER_ERROR = (GENERIC, 0x04),
    ABORTED_POWER_LOSS = (GENERIC, 0x05),
    INTERNAL_ERROR = (GENERIC, 0x06),
    ABORT_REQUESTED = (GENERIC, 0x07),
    ABORTED_SQ_DELETION = (GENERIC, 0x08),
    ABORTED_FAILED_FUSED = (GENERIC, 0x09),
    ABORTED_MISSING_FUSED = (GENERIC, 0x0a),
    INVALID_NAMESPACE_OR_FORMAT = (GENERIC, 0x0b),
    COMMAND_SEQUENCE_ERROR = (GENERIC, 0x0c),
    INVALID_SGL_SEGMENT_DESCRIPTOR = (GENERIC, 0x0d),
    INVALID_NUMBER_OF_SGL_DESCRIPTORS = (GENERIC, 0x0e),
    DATA_SGL_LENGTH_INVALID = (GENERIC, 0x0f),
    METADATA_SGL_LENGTH_INVALID = (GENERIC, 0x10),
    SGL_DESCRIPTOR_TYPE_INVALID = (GENERIC, 0x11),
    INVALID_USE_OF_CMB = (GENERIC, 0x12),
    PRP_OFFSET_INVALID = (GENERIC, 0x13),
    ATOMIC_WRITE_UNIT_EXCEEDED = (GENERIC, 0x14),
    OPERATION_DENIED = (GENERIC, 0x15),
    SGL_OFFSET_INVALID = (GENERIC, 0x16),
    HOST_IDENTIFIER_INCONSISTENT_FORMAT = (GENERIC, 0x18),
    KEEP_ALIVE_TIMER_EXPIRED = (GENERIC, 0x19),
    KEEP_ALIVE_TIMEOUT_INVALID = (GENERIC, 0x1a),
    ABORTED_PREEMPT_ABORT = (GENERIC, 0x1b),
    SANITIZE_FAILED = (GENERIC, 0x1c),
    SANITIZE_IN_PROGRESS = (GENERIC, 0x1d),
    SGL_DATA_BLOCK_GRANULARITY_INVALID = (GENERIC, 0x1e),
    COMMAND_NOT_SUPPORTED_FOR_QUEUE_IN_CMB = (GENERIC, 0x1f),
    NAMESPACE_WRITE_PROTECTED = (GENERIC, 0x20),
    COMMAND_INTERRUPTED = (GENERIC, 0x21),
    TRANSIENT_TRANSPORT_ERROR = (GENERIC, 0x22),
    // Generic status, NVM command set values (NVM 1.0c Figure 22).
    LBA_OUT_OF_RANGE = (GENERIC, 0x80),
    CAPACITY_EXCEEDED = (GENERIC, 0x81),
    NAMESPACE_NOT_READY = (GENERIC, 0x82),
    RESERVATION_CONFLICT = (GENERIC, 0x83),
    FORMAT_IN_PROGRESS = (GENERIC, 0x84),

    // Command specific status, Base 2.0c Figure 95.
    COMPLETION_QUEUE_INVALID = (COMMAND_SPECIFIC, 0x00),
    INVALID_QUEUE_IDENTIFIER = (COMMAND_SPECIFIC, 0x01),
    INVALID_QUEUE_SIZE = (COMMAND_SPECIFIC, 0x02),
    ABORT_COMMAND_LIMIT_EXCEEDED = (COMMAND_SPECIFIC, 0x03),
    ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED = (COMMAND_SPECIFIC, 0x05),
    INVALID_FIRMWARE_SLOT = (COMMAND_SPECIFIC, 0x06),
    INVALID_FIRMWARE_IMAGE = (COMMAND_SPECIFIC, 0x07),
    INVALID_INTERRUPT_VECTOR = (COMMAND_SPECIFIC, 0x08),
    INVALID_LOG_PAGE = (COMMAND_SPECIFIC, 0x09),
    INVALID_FORMAT = (COMMAND_SPECIFIC, 0x0a),
    INVALID_QUEUE_DELETION = (COMMAND_SPECIFIC, 0x0c),
    FEATURE_ID_NOT_SAVEABLE = (COMMAND_SPECIFIC, 0x0d),
    FEATURE_NOT_CHANGEABLE = (COMMAND_SPECIFIC, 0x0e),
    FEATURE_NOT_NAMESPACE_SPECIFIC = (COMMAND_SPECIFIC, 0x0f),
    NAMESPACE_ID_UNAVAILABLE = (COMMAND_SPECIFIC, 0x16),
    NAMESPACE_NOT_ATTACHED = (COMMAND_SPECIFIC, 0x1a),
    // Fabrics command specific (NVMe-oF 1.1a Figure 21). These share
    // codes with the NVM command set ones below; names print the fabrics
    // meaning, which is the one this target answers with.
    CONNECT_INCOMPATIBLE_FORMAT = (COMMAND_SPECIFIC, 0x80),
    CONNECT_CONTROLLER_BUSY = (COMMAND_SPECIFIC, 0x81),
    CONNECT_INVALID_PARAMETERS = (COMMAND_SPECIFIC, 0x82),
    CONNECT_RESTART_DISCOVERY = (COMMAND_SPECIFIC, 0x83),
    CONNECT_INVALID_HOST = (COMMAND_SPECIFIC, 0x84),
    INVALID_QUEUE_TYPE = (COMMAND_SPECIFIC, 0x85),
    // NVM command set specific (NVM 1.0c Figure 23).
    CONFLICTING_ATTRIBUTES = (COMMAND_SPECIFIC, 0x80),
    INVALID_PROTECTION_INFORMATION = (COMMAND_SPECIFIC, 0x81),
    ATTEMPTED_WRITE_TO_READ_ONLY_RANGE = (COMMAND_SPECIFIC, 0x82),

    // Media and data integrity errors, Base 2.0c Figure 96.
    WRITE_FAULT = (MEDIA_AND_DATA_INTEGRITY, 0x80),
    UNRECOVERED_READ_ERROR = (MEDIA_AND_DATA_INTEGRITY, 0x81),
    END_TO_END_GUARD_CHECK_ERROR = (MEDIA_AND_DATA_INTEGRITY, 0x82),
    END_TO_END_APPLICATION_TAG_CHECK_ERROR = (MEDIA_AND_DATA_INTEGRITY, 0x83),
    END_TO_END_REFERENCE_TAG_CHECK_ERROR = (MEDIA_AND_DATA_INTEGRITY, 0x84),
    COMPARE_FAILURE = (MEDIA_AND_DATA_INTEGRITY, 0x85),
    ACCESS_DENIED = (MEDIA_AND_DATA_INTEGRITY, 0x86),
    DEALLOCATED_OR_UNWRITTEN_LOGICAL_BLOCK = (MEDIA_AND_DATA_INTEGRITY, 0x87),

    // Path related status, Base 2.0c Figure 97.
    INTERNAL_PATH_ERROR = (PATH_RELATED, 0x00),
    ASYMMETRIC_ACCESS_PERSISTENT_LOSS = (PATH_RELATED, 0x01),
    ASYMMETRIC_ACCESS_INACCESSIBLE = (PATH_RELATED, 0x02),
    ASYMMETRIC_ACCESS_TRANSITION = (PATH_RELATED, 0x03),
    CONTROLLER_PATHING_ERROR = (PATH_RELATED, 0x60),
    HOST_PATHING_ERROR = (PATH_RELATED, 0x70),
    COMMAND_ABORTED_BY_HOST = (PATH_RELATED, 0x71),
}

impl Status {
    const DNR: u16 = 1 << 14;
    const MORE: u16 = 1 << 13;

    /// Builds a status from its type and code, with DNR, More and CRD clear.
    pub const fn new(sct: StatusCodeType, sc: u8) -> Self {
        Self(((sct.0 as u16 & 0x7) << 8) | sc as u16)
    }

    /// Status Code (SC).
    pub const fn sc(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// Status Code Type (SCT).
    pub const fn sct(self) -> StatusCodeType {
        StatusCodeType(((self.0 >> 8) & 0x7) as u8)
    }

    /// Command Retry Delay (CRD): which of CRDT1..3 the host should wait.
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }

    /// More (M): more status in the Error Information log page.
    pub const fn more(self) -> bool {
        self.0 & Self::MORE != 0
    }

    /// Do Not Retry (DNR): the same command would fail again.
    pub const fn dnr(self) -> bool {
        self.0 & Self::DNR != 0
    }

    /// The same status with DNR set: for errors a retry cannot fix
    /// (bad fields, bad opcodes, out-of-range LBAs).
    #[must_use]
    pub const fn with_dnr(self) -> Self {
        Self(self.0 | Self::DNR)
    }

    /// `true` for Successful Completion, whatever the DNR/More bits.
    pub const fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }

    /// `true` when SCT and SC match `other`, ignoring DNR, More and CRD.
    pub const fn same_code(self, other: Status) -> bool {
        self.0 & 0x7ff == other.0 & 0x7ff
    }
}

impl core::fmt::Debug for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "Status(sct={:#x}, sc={:#04x})", self.sct().0, self.sc())?,
        }
        if self.dnr() {
            write!(f, "+DNR")?;
        }
        Ok(())
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_matches_spec_bits() {
        let s = Status::LBA_OUT_OF_RANGE.with_dnr();
        assert_eq!(s.sc(), 0x80);
        assert_eq!(s.sct(), StatusCodeType::GENERIC);
        assert!(s.dnr());
        assert_eq!(s.0, 0x4080);
        let s = Status::UNRECOVERED_READ_ERROR;
        assert_eq!(s.0, 0x0281);
        assert_eq!(Status::CONNECT_INVALID_HOST.0, 0x0184);
    }

    #[test]
    fn names_ignore_dnr_and_unknown_codes_print_raw() {
        assert_eq!(
            Status::INVALID_FIELD.with_dnr().name(),
            Some("INVALID_FIELD")
        );
        assert_eq!(format!("{:?}", Status(0x0777)), "Status(sct=0x7, sc=0x77)");
        assert!(Status::SUCCESS.with_dnr().is_success());
        assert!(!Status::INVALID_OPCODE.is_success());
    }
}
