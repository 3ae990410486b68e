//! NVMe over Fabrics commands (NVMe-oF 1.1a §3.3): Connect and its data,
//! Property Get/Set, Disconnect.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{FabricsType, SubmissionEntry};

/// Connect command data, 1024 bytes (NVMe-oF 1.1a Figure 20).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ConnectData {
    /// Host Identifier.
    pub hostid: [u8; 16],
    /// Controller ID: FFFFh for the dynamic model on the admin queue.
    pub cntlid: u16,
    pub rsvd18: [u8; 238],
    /// NVM subsystem NQN, NUL-terminated.
    pub subnqn: [u8; 256],
    /// Host NQN, NUL-terminated.
    pub hostnqn: [u8; 256],
    pub rsvd768: [u8; 256],
}

const _: () = assert!(size_of::<ConnectData>() == 1024);

/// The Connect fields of the SQE (NVMe-oF 1.1a Figure 19).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Record Format (CDW10 15:0); must be 0.
    pub recfmt: u16,
    /// Queue ID (CDW10 31:16).
    pub qid: u16,
    /// Submission queue size, zero-based (CDW11 15:0).
    pub sqsize_z: u16,
    /// Connect Attributes (CDW11 23:16).
    pub cattr: u8,
    /// Keep Alive Timeout in ms (CDW12).
    pub kato: u32,
}

impl Connect {
    /// Reads the fields from a Connect SQE.
    pub fn parse(sqe: &SubmissionEntry) -> Self {
        Self {
            recfmt: sqe.cdw10 as u16,
            qid: (sqe.cdw10 >> 16) as u16,
            sqsize_z: sqe.cdw11 as u16,
            cattr: (sqe.cdw11 >> 16) as u8,
            kato: sqe.cdw12,
        }
    }

    /// A Connect SQE with these fields.
    pub fn to_sqe(self, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::fabrics(FabricsType::CONNECT, cid);
        sqe.cdw10 = self.recfmt as u32 | ((self.qid as u32) << 16);
        sqe.cdw11 = self.sqsize_z as u32 | ((self.cattr as u32) << 16);
        sqe.cdw12 = self.kato;
        sqe
    }
}

/// Byte offsets inside the SQE, reported as IPO when Connect fails with
/// Connect Invalid Parameters and IATTR = 0.
pub mod ipo {
    /// QID.
    pub const QID: u16 = 42;
    /// SQSIZE.
    pub const SQSIZE: u16 = 44;
}

/// Completion dword 0 of a Connect that failed with Connect Invalid
/// Parameters: IATTR (bit 16: 0 = SQE, 1 = data) and IPO (15:0).
pub fn connect_invalid_param_dw0(in_data: bool, offset: u16) -> u32 {
    ((in_data as u32) << 16) | offset as u32
}

impl ConnectData {
    /// Connect data for a host.
    pub fn new(hostid: [u8; 16], cntlid: u16, subnqn: &str, hostnqn: &str) -> Box<Self> {
        let mut d = Box::new(<Self as zerocopy::FromZeros>::new_zeroed());
        d.hostid = hostid;
        d.cntlid = cntlid;
        super::identify::set_nul_padded(&mut d.subnqn, subnqn);
        super::identify::set_nul_padded(&mut d.hostnqn, hostnqn);
        d
    }

    /// The subsystem NQN, if it is NUL-terminated UTF-8.
    pub fn subnqn(&self) -> Option<&str> {
        nul_str(&self.subnqn)
    }

    /// The host NQN, if it is NUL-terminated UTF-8.
    pub fn hostnqn(&self) -> Option<&str> {
        nul_str(&self.hostnqn)
    }
}

fn nul_str(raw: &[u8]) -> Option<&str> {
    let end = raw.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&raw[..end]).ok()
}

/// Property Get / Set fields (NVMe-oF 1.1a Figures 24, 26).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyAccess {
    /// 8-byte access (ATTRIB bits 2:0 = 1) or 4-byte (0).
    pub size8: bool,
    /// Property offset (OFST).
    pub offset: u32,
    /// Value to set (CDW12-13), for Property Set.
    pub value: u64,
}

impl PropertyAccess {
    /// Reads the fields; `None` for a reserved ATTRIB size.
    pub fn parse(sqe: &SubmissionEntry) -> Option<Self> {
        let size8 = match sqe.cdw10 & 7 {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(Self {
            size8,
            offset: sqe.cdw11,
            value: sqe.cdw12 as u64 | ((sqe.cdw13 as u64) << 32),
        })
    }

    /// A Property Get SQE.
    pub fn get_sqe(size8: bool, offset: u32, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::fabrics(FabricsType::PROPERTY_GET, cid);
        sqe.cdw10 = size8 as u32;
        sqe.cdw11 = offset;
        sqe
    }

    /// A Property Set SQE.
    pub fn set_sqe(size8: bool, offset: u32, value: u64, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::fabrics(FabricsType::PROPERTY_SET, cid);
        sqe.cdw10 = size8 as u32;
        sqe.cdw11 = offset;
        sqe.cdw12 = value as u32;
        sqe.cdw13 = (value >> 32) as u32;
        sqe
    }
}

/// A Disconnect SQE (record format 0).
pub fn disconnect_sqe(cid: u16) -> SubmissionEntry {
    SubmissionEntry::fabrics(FabricsType::DISCONNECT, cid)
}

/// Checks an NQN (Base 2.0c §4.5); the engine's checker, re-exported here
/// because it is a wire-format rule.
pub use crate::nvmf::nqn::validate as validate_nqn;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn connect_data_offsets() {
        assert_eq!(offset_of!(ConnectData, cntlid), 16);
        assert_eq!(offset_of!(ConnectData, subnqn), 256);
        assert_eq!(offset_of!(ConnectData, hostnqn), 512);
        assert_eq!(offset_of!(ConnectData, rsvd768), 768);
        let d = ConnectData::new([1; 16], 0xffff, "nqn.2026-11.io.x:s", "nqn.2026-11.io.x:h");
        assert_eq!(d.subnqn(), Some("nqn.2026-11.io.x:s"));
        assert_eq!(d.as_bytes()[16..18], [0xff, 0xff]);
    }

    #[test]
    fn connect_fields_round_trip() {
        let c = Connect {
            recfmt: 0,
            qid: 3,
            sqsize_z: 127,
            cattr: 0,
            kato: 5000,
        };
        let sqe = c.to_sqe(9);
        assert_eq!(Connect::parse(&sqe), c);
        assert_eq!(sqe.to_bytes()[4], 0x01);
        assert_eq!(&sqe.to_bytes()[42..44], &3u16.to_le_bytes());
        assert_eq!(&sqe.to_bytes()[44..46], &127u16.to_le_bytes());
        assert_eq!(connect_invalid_param_dw0(true, 256), 0x0001_0100);
    }

    #[test]
    fn property_fields() {
        let g = PropertyAccess::get_sqe(true, 0, 1);
        assert_eq!(
            PropertyAccess::parse(&g),
            Some(PropertyAccess {
                size8: true,
                offset: 0,
                value: 0
            })
        );
        let s = PropertyAccess::set_sqe(false, 0x14, 0x46_0001, 2);
        assert_eq!(PropertyAccess::parse(&s).unwrap().value, 0x46_0001);
        let mut bad = g;
        bad.cdw10 = 2;
        assert_eq!(PropertyAccess::parse(&bad), None);
        assert_eq!(disconnect_sqe(3).fctype(), FabricsType::DISCONNECT);
    }
}
