//! Features (Base 2.0c §5.27.1): identifiers, command dwords and the
//! dword values of the features this target implements.

use super::SubmissionEntry;
use crate::open_enum;

open_enum! {
    /// Feature Identifier (FID), Base 2.0c Figure 317.
    pub struct FeatureId(u8) {
        ARBITRATION = 0x01,
        POWER_MANAGEMENT = 0x02,
        LBA_RANGE_TYPE = 0x03,
        TEMPERATURE_THRESHOLD = 0x04,
        ERROR_RECOVERY = 0x05,
        VOLATILE_WRITE_CACHE = 0x06,
        NUMBER_OF_QUEUES = 0x07,
        INTERRUPT_COALESCING = 0x08,
        INTERRUPT_VECTOR_CONFIGURATION = 0x09,
        WRITE_ATOMICITY_NORMAL = 0x0a,
        ASYNC_EVENT_CONFIGURATION = 0x0b,
        AUTONOMOUS_POWER_STATE_TRANSITION = 0x0c,
        HOST_MEMORY_BUFFER = 0x0d,
        TIMESTAMP = 0x0e,
        KEEP_ALIVE_TIMER = 0x0f,
        HOST_CONTROLLED_THERMAL_MANAGEMENT = 0x10,
        NON_OPERATIONAL_POWER_STATE_CONFIG = 0x11,
        HOST_IDENTIFIER = 0x81,
        RESERVATION_NOTIFICATION_MASK = 0x82,
        RESERVATION_PERSISTENCE = 0x83,
    }
}

/// Get Features Select (SEL), CDW10 bits 10:8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// Current value.
    Current,
    /// Default value.
    Default,
    /// Saved value.
    Saved,
    /// Supported capabilities.
    SupportedCapabilities,
    /// Reserved values 4..=7.
    Reserved(u8),
}

/// Get/Set Features command dwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureCommand {
    /// Feature.
    pub fid: FeatureId,
    /// Get: which value (SEL).
    pub sel: Select,
    /// Set: Save (SV, CDW10 bit 31).
    pub sv: bool,
    /// Feature-specific dword 11.
    pub cdw11: u32,
}

impl FeatureCommand {
    /// Reads the fields from a Get or Set Features SQE.
    pub fn parse(sqe: &SubmissionEntry) -> Self {
        let sel = match (sqe.cdw10 >> 8) & 7 {
            0 => Select::Current,
            1 => Select::Default,
            2 => Select::Saved,
            3 => Select::SupportedCapabilities,
            v => Select::Reserved(v as u8),
        };
        Self {
            fid: FeatureId(sqe.cdw10 as u8),
            sel,
            sv: sqe.cdw10 & (1 << 31) != 0,
            cdw11: sqe.cdw11,
        }
    }
}

/// Number of Queues (FID 07h): requested (CDW11) or allocated (CQE DW0)
/// submission and completion queues, both zero-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumberOfQueues {
    /// Submission queues, zero-based (NSQR/NSQA).
    pub nsq_z: u16,
    /// Completion queues, zero-based (NCQR/NCQA).
    pub ncq_z: u16,
}

impl NumberOfQueues {
    /// From the dword.
    pub fn from_dword(v: u32) -> Self {
        Self {
            nsq_z: v as u16,
            ncq_z: (v >> 16) as u16,
        }
    }

    /// To the dword.
    pub fn to_dword(self) -> u32 {
        self.nsq_z as u32 | ((self.ncq_z as u32) << 16)
    }
}

/// Arbitration (FID 01h) dword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arbitration {
    /// Arbitration Burst (2:0).
    pub ab: u8,
    /// Low Priority Weight (15:8).
    pub lpw: u8,
    /// Medium Priority Weight (23:16).
    pub mpw: u8,
    /// High Priority Weight (31:24).
    pub hpw: u8,
}

impl Arbitration {
    /// From the dword (bits 7:3 are reserved and dropped).
    pub fn from_dword(v: u32) -> Self {
        Self {
            ab: (v & 7) as u8,
            lpw: (v >> 8) as u8,
            mpw: (v >> 16) as u8,
            hpw: (v >> 24) as u8,
        }
    }

    /// To the dword.
    pub fn to_dword(self) -> u32 {
        (self.ab as u32 & 7)
            | ((self.lpw as u32) << 8)
            | ((self.mpw as u32) << 16)
            | ((self.hpw as u32) << 24)
    }
}

/// Power Management (FID 02h): Power State (4:0), Workload Hint (7:5).
pub fn power_management(ps: u8, wh: u8) -> u32 {
    (ps as u32 & 0x1f) | ((wh as u32 & 7) << 5)
}

/// Temperature Threshold (FID 04h) dword: TMPTH (15:0, Kelvin), TMPSEL
/// (19:16, sensor; 0 = composite), THSEL (21:20, 0 = over, 1 = under).
pub fn temperature_threshold(tmpth: u16, tmpsel: u8, thsel: u8) -> u32 {
    tmpth as u32 | ((tmpsel as u32 & 0xf) << 16) | ((thsel as u32 & 3) << 20)
}

/// Error Recovery (FID 05h): TLER (15:0, 100 ms units), DULBE (bit 16).
pub fn error_recovery(tler: u16, dulbe: bool) -> u32 {
    tler as u32 | ((dulbe as u32) << 16)
}

/// Volatile Write Cache (FID 06h): WCE is bit 0.
pub const VWC_WCE: u32 = 1;

/// Asynchronous Event Configuration (FID 0Bh) bits.
pub mod aec {
    /// SMART / Health critical warnings, bits 7:0.
    pub const SMART_CRITICAL_WARNINGS: u32 = 0xff;
    /// Namespace Attribute Notices.
    pub const NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
    /// Firmware Activation Notices.
    pub const FIRMWARE_ACTIVATION: u32 = 1 << 9;
    /// Telemetry Log Notices.
    pub const TELEMETRY_LOG: u32 = 1 << 10;
    /// Asymmetric Namespace Access Change Notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
}

/// Host Identifier (FID 81h): EXHID (CDW11 bit 0) selects the 128-bit form,
/// which NVMe over Fabrics requires.
pub const HOST_ID_EXHID: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dwords_round_trip() {
        let q = NumberOfQueues { nsq_z: 3, ncq_z: 7 };
        assert_eq!(NumberOfQueues::from_dword(q.to_dword()), q);
        assert_eq!(q.to_dword(), 0x0007_0003);
        let a = Arbitration {
            ab: 3,
            lpw: 1,
            mpw: 2,
            hpw: 4,
        };
        assert_eq!(Arbitration::from_dword(a.to_dword()), a);
        assert_eq!(temperature_threshold(0x157, 0, 1), 0x0010_0157);
        assert_eq!(error_recovery(10, true), 0x0001_000a);
        assert_eq!(power_management(0, 2), 0x40);
    }

    #[test]
    fn command_fields() {
        let mut sqe = SubmissionEntry::new(0x0a, 1);
        sqe.cdw10 = 0x07 | (3 << 8) | (1 << 31);
        sqe.cdw11 = 9;
        let c = FeatureCommand::parse(&sqe);
        assert_eq!(
            (c.fid, c.sel, c.sv, c.cdw11),
            (
                FeatureId::NUMBER_OF_QUEUES,
                Select::SupportedCapabilities,
                true,
                9
            )
        );
    }
}
