//! Log pages (Base 2.0c §5.16.1) and the Get Log Page command dwords.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::SubmissionEntry;
use crate::open_enum;

open_enum! {
    /// Log Page Identifier (LID), Base 2.0c Figure 202.
    pub struct LogPageId(u8) {
        SUPPORTED_LOG_PAGES = 0x00,
        ERROR_INFORMATION = 0x01,
        SMART_HEALTH = 0x02,
        FIRMWARE_SLOT = 0x03,
        CHANGED_NAMESPACE_LIST = 0x04,
        COMMANDS_SUPPORTED_AND_EFFECTS = 0x05,
        DEVICE_SELF_TEST = 0x06,
        TELEMETRY_HOST = 0x07,
        TELEMETRY_CONTROLLER = 0x08,
        ENDURANCE_GROUP_INFORMATION = 0x09,
        PREDICTABLE_LATENCY_PER_NVM_SET = 0x0a,
        ASYMMETRIC_NAMESPACE_ACCESS = 0x0c,
        PERSISTENT_EVENT = 0x0d,
        DISCOVERY = 0x70,
        RESERVATION_NOTIFICATION = 0x80,
        SANITIZE_STATUS = 0x81,
    }
}

/// Error Information log entry, 64 bytes (Base 2.0c Figure 206).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ErrorInformationEntry {
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    /// Status Field (bits 15:1) and Phase Tag (bit 0) of the failing command.
    pub status: u16,
    pub parameter_error_location: u16,
    pub lba: u64,
    pub nsid: u32,
    pub vendor_specific: u8,
    pub trtype: u8,
    pub csi: u8,
    pub opcode: u8,
    pub command_specific: u64,
    pub trtype_specific: u16,
    pub rsvd42: [u8; 21],
    pub log_page_version: u8,
}

/// SMART / Health Information log, 512 bytes (Base 2.0c Figure 207).
/// The 128-bit counters are little-endian byte arrays; see [`u128_le`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SmartHealthLog {
    pub critical_warning: u8,
    pub composite_temperature: [u8; 2],
    pub available_spare: u8,
    pub available_spare_threshold: u8,
    pub percentage_used: u8,
    pub endurance_group_critical_warning: u8,
    pub rsvd7: [u8; 25],
    pub data_units_read: [u8; 16],
    pub data_units_written: [u8; 16],
    pub host_read_commands: [u8; 16],
    pub host_write_commands: [u8; 16],
    pub controller_busy_time: [u8; 16],
    pub power_cycles: [u8; 16],
    pub power_on_hours: [u8; 16],
    pub unsafe_shutdowns: [u8; 16],
    pub media_errors: [u8; 16],
    pub number_of_error_log_entries: [u8; 16],
    pub warning_composite_temperature_time: u32,
    pub critical_composite_temperature_time: u32,
    pub temperature_sensor: [[u8; 2]; 8],
    pub thermal_mgmt_temp1_transition_count: u32,
    pub thermal_mgmt_temp2_transition_count: u32,
    pub thermal_mgmt_temp1_total_time: u32,
    pub thermal_mgmt_temp2_total_time: u32,
    pub rsvd232: [u8; 280],
}

/// Firmware Slot Information log, 512 bytes (Base 2.0c Figure 208).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FirmwareSlotLog {
    /// Active Firmware Info: active slot in bits 2:0, next in 6:4.
    pub afi: u8,
    pub rsvd1: [u8; 7],
    /// Firmware Revision for slots 1..=7.
    pub frs: [[u8; 8]; 7],
    pub rsvd64: [u8; 448],
}

/// Changed Namespace List log, 4096 bytes (Base 2.0c Figure 209).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ChangedNamespaceList {
    /// NSIDs; a first entry of FFFFFFFFh means more than 1024 changed.
    pub nsid: [u32; 1024],
}

/// Commands Supported and Effects log, 4096 bytes (Base 2.0c Figure 210).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CommandsSupportedAndEffects {
    /// Admin Command Supported, by opcode.
    pub acs: [u32; 256],
    /// I/O Command Supported, by opcode.
    pub iocs: [u32; 256],
    pub rsvd2048: [u8; 2048],
}

/// Commands Supported and Effects entry bits (Base 2.0c Figure 211).
pub mod cse {
    /// Command Supported.
    pub const CSUPP: u32 = 1 << 0;
    /// Logical Block Content Change.
    pub const LBCC: u32 = 1 << 1;
    /// Namespace Capability Change.
    pub const NCC: u32 = 1 << 2;
    /// Namespace Inventory Change.
    pub const NIC: u32 = 1 << 3;
    /// Controller Capability Change.
    pub const CCC: u32 = 1 << 4;
}

/// Supported Log Pages log, 1024 bytes (Base 2.0c Figure 205).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SupportedLogPages {
    /// LID Supported and Effects, by LID; bit 0 = LSUPP.
    pub lids: [u32; 256],
}

const _: () = assert!(size_of::<ErrorInformationEntry>() == 64);
const _: () = assert!(size_of::<SmartHealthLog>() == 512);
const _: () = assert!(size_of::<FirmwareSlotLog>() == 512);
const _: () = assert!(size_of::<ChangedNamespaceList>() == 4096);
const _: () = assert!(size_of::<CommandsSupportedAndEffects>() == 4096);
const _: () = assert!(size_of::<SupportedLogPages>() == 1024);

/// A 128-bit little-endian counter field.
pub fn u128_le(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}

/// The dwords of a Get Log Page command (Base 2.0c Figure 197-201).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLogPage {
    /// Log Page Identifier.
    pub lid: LogPageId,
    /// Log Specific Parameter (CDW10 14:8).
    pub lsp: u8,
    /// Retain Asynchronous Event (CDW10 bit 15).
    pub rae: bool,
    /// Number of dwords, zero-based: NUMDU:NUMDL.
    pub numd_z: u32,
    /// Log Page Offset in bytes (LPOU:LPOL).
    pub offset: u64,
}

impl GetLogPage {
    /// Reads the fields from an SQE.
    pub fn parse(sqe: &SubmissionEntry) -> Self {
        Self {
            lid: LogPageId(sqe.cdw10 as u8),
            lsp: ((sqe.cdw10 >> 8) & 0x7f) as u8,
            rae: sqe.cdw10 & (1 << 15) != 0,
            numd_z: (sqe.cdw10 >> 16) | ((sqe.cdw11 & 0xffff) << 16),
            offset: sqe.cdw12 as u64 | ((sqe.cdw13 as u64) << 32),
        }
    }

    /// Bytes requested.
    pub fn len_bytes(&self) -> u64 {
        (self.numd_z as u64 + 1) * 4
    }

    /// Writes the fields into an SQE.
    pub fn encode(&self, sqe: &mut SubmissionEntry) {
        sqe.cdw10 = self.lid.0 as u32
            | ((self.lsp as u32 & 0x7f) << 8)
            | ((self.rae as u32) << 15)
            | ((self.numd_z & 0xffff) << 16);
        sqe.cdw11 = self.numd_z >> 16;
        sqe.cdw12 = self.offset as u32;
        sqe.cdw13 = (self.offset >> 32) as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn error_entry_offsets() {
        type E = ErrorInformationEntry;
        assert_eq!(offset_of!(E, sqid), 8);
        assert_eq!(offset_of!(E, status), 12);
        assert_eq!(offset_of!(E, lba), 16);
        assert_eq!(offset_of!(E, nsid), 24);
        assert_eq!(offset_of!(E, trtype), 29);
        assert_eq!(offset_of!(E, command_specific), 32);
        assert_eq!(offset_of!(E, log_page_version), 63);
    }

    #[test]
    fn smart_offsets() {
        type S = SmartHealthLog;
        assert_eq!(offset_of!(S, composite_temperature), 1);
        assert_eq!(offset_of!(S, available_spare), 3);
        assert_eq!(offset_of!(S, data_units_read), 32);
        assert_eq!(offset_of!(S, data_units_written), 48);
        assert_eq!(offset_of!(S, host_read_commands), 64);
        assert_eq!(offset_of!(S, power_on_hours), 128);
        assert_eq!(offset_of!(S, media_errors), 160);
        assert_eq!(offset_of!(S, number_of_error_log_entries), 176);
        assert_eq!(offset_of!(S, warning_composite_temperature_time), 192);
        assert_eq!(offset_of!(S, temperature_sensor), 200);
        assert_eq!(offset_of!(S, thermal_mgmt_temp1_transition_count), 216);
        assert_eq!(offset_of!(S, rsvd232), 232);
    }

    #[test]
    fn other_log_offsets() {
        assert_eq!(offset_of!(FirmwareSlotLog, frs), 8);
        assert_eq!(offset_of!(CommandsSupportedAndEffects, iocs), 1024);
        assert_eq!(offset_of!(CommandsSupportedAndEffects, rsvd2048), 2048);
    }

    #[test]
    fn get_log_page_dwords_round_trip() {
        let g = GetLogPage {
            lid: LogPageId::SMART_HEALTH,
            lsp: 0,
            rae: true,
            numd_z: 0x1_0003,
            offset: 0x1_0000_0200,
        };
        let mut sqe = SubmissionEntry::new(0x02, 1);
        g.encode(&mut sqe);
        assert_eq!(GetLogPage::parse(&sqe), g);
        assert_eq!(g.len_bytes(), 0x1_0004 * 4);
        assert_eq!(sqe.cdw10 & 0xff, 2);
        assert_eq!(sqe.cdw10 >> 16, 3);
        assert_eq!(sqe.cdw11, 1);
    }
}
