//! Identify data structures (Base 2.0c §5.17.2, NVM Command Set 1.0c §4.1.5).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::open_enum;

open_enum! {
    /// Controller or Namespace Structure (CNS), Base 2.0c Figure 273.
    pub struct Cns(u8) {
        NAMESPACE = 0x00,
        CONTROLLER = 0x01,
        ACTIVE_NAMESPACE_LIST = 0x02,
        NAMESPACE_ID_DESCRIPTORS = 0x03,
        NVM_SET_LIST = 0x04,
        IO_COMMAND_SET_NAMESPACE = 0x05,
        IO_COMMAND_SET_CONTROLLER = 0x06,
        IO_COMMAND_SET_ACTIVE_NAMESPACE_LIST = 0x07,
        ALLOCATED_NAMESPACE_LIST = 0x10,
        ALLOCATED_NAMESPACE = 0x11,
        CONTROLLER_LIST_ATTACHED = 0x12,
        CONTROLLER_LIST = 0x13,
        PRIMARY_CONTROLLER_CAPABILITIES = 0x14,
        SECONDARY_CONTROLLER_LIST = 0x15,
        NAMESPACE_GRANULARITY_LIST = 0x16,
        UUID_LIST = 0x17,
        DOMAIN_LIST = 0x18,
        ENDURANCE_GROUP_LIST = 0x19,
        IO_COMMAND_SET_ALLOCATED_NAMESPACE_LIST = 0x1a,
        IO_COMMAND_SET_ALLOCATED_NAMESPACE = 0x1b,
        IO_COMMAND_SET = 0x1c,
    }
}

/// Power State Descriptor, 32 bytes (Base 2.0c Figure 276).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PowerStateDescriptor {
    pub mp: u16,
    pub rsvd2: u8,
    pub mxps_nops: u8,
    pub enlat: u32,
    pub exlat: u32,
    pub rrt: u8,
    pub rrl: u8,
    pub rwt: u8,
    pub rwl: u8,
    pub idlp: u16,
    pub ips: u8,
    pub rsvd19: u8,
    pub actp: u16,
    pub apw_aps: u8,
    pub rsvd23: [u8; 9],
}

/// Identify Controller data structure, 4096 bytes (Base 2.0c Figure 275),
/// including the NVMe over Fabrics fields at 1792..2047.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    pub sn: [u8; 20],
    pub mn: [u8; 40],
    pub fr: [u8; 8],
    pub rab: u8,
    pub ieee: [u8; 3],
    pub cmic: u8,
    /// Maximum Data Transfer Size, a power of two of CAP.MPSMIN units.
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub rtd3r: u32,
    pub rtd3e: u32,
    pub oaes: u32,
    pub ctratt: u32,
    pub rrls: u16,
    pub rsvd102: [u8; 9],
    pub cntrltype: u8,
    pub fguid: [u8; 16],
    pub crdt1: u16,
    pub crdt2: u16,
    pub crdt3: u16,
    pub rsvd134: [u8; 119],
    pub nvmsr: u8,
    pub vwci: u8,
    pub mec: u8,
    pub oacs: u16,
    /// Abort Command Limit, zero-based.
    pub acl_z: u8,
    /// Asynchronous Event Request Limit, zero-based.
    pub aerl_z: u8,
    pub frmw: u8,
    pub lpa: u8,
    /// Error Log Page Entries, zero-based.
    pub elpe_z: u8,
    /// Number of Power States Support, zero-based.
    pub npss_z: u8,
    pub avscc: u8,
    pub apsta: u8,
    pub wctemp: u16,
    pub cctemp: u16,
    pub mtfa: u16,
    pub hmpre: u32,
    pub hmmin: u32,
    pub tnvmcap: [u8; 16],
    pub unvmcap: [u8; 16],
    pub rpmbs: u32,
    pub edstt: u16,
    pub dsto: u8,
    pub fwug: u8,
    pub kas: u16,
    pub hctma: u16,
    pub mntmt: u16,
    pub mxtmt: u16,
    pub sanicap: u32,
    pub hmminds: u32,
    pub hmmaxd: u16,
    pub nsetidmax: u16,
    pub endgidmax: u16,
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: u32,
    pub nanagrpid: u32,
    pub pels: u32,
    pub domainid: u16,
    pub rsvd358: [u8; 10],
    pub megcap: [u8; 16],
    pub rsvd384: [u8; 128],
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    pub nn: u32,
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    pub icsvscc: u8,
    pub nwpc: u8,
    pub acwu: u16,
    pub ocfs: u16,
    pub sgls: u32,
    pub mnan: u32,
    pub maxdna: [u8; 16],
    pub maxcna: u32,
    pub rsvd564: [u8; 204],
    pub subnqn: [u8; 256],
    pub rsvd1024: [u8; 768],
    /// I/O Queue Command Capsule Supported Size, in 16-byte units.
    pub ioccsz: u32,
    /// I/O Queue Response Capsule Supported Size, in 16-byte units.
    pub iorcsz: u32,
    pub icdoff: u16,
    pub fcatt: u8,
    pub msdbd: u8,
    pub ofcs: u16,
    pub rsvd1806: [u8; 242],
    pub psd: [PowerStateDescriptor; 32],
    pub vs: [u8; 1024],
}

/// LBA Format, 4 bytes (NVM 1.0c Figure 98).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct LbaFormat {
    /// Metadata Size.
    pub ms: u16,
    /// LBA Data Size, log2 of the block size.
    pub lbads: u8,
    /// Relative Performance (bits 1:0).
    pub rp: u8,
}

impl LbaFormat {
    /// A format with `block_size` bytes (a power of two), no metadata.
    pub fn with_block_size(block_size: u32) -> Self {
        Self {
            ms: 0,
            lbads: block_size.trailing_zeros() as u8,
            rp: 0,
        }
    }

    /// Block size in bytes (0 when LBADS is below 9, which is invalid).
    pub fn block_size(&self) -> u32 {
        if (9..32).contains(&self.lbads) {
            1 << self.lbads
        } else {
            0
        }
    }
}

/// Identify Namespace data structure for the NVM command set, 4096 bytes
/// (NVM Command Set 1.0c Figure 97).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IdentifyNamespace {
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA Formats, zero-based.
    pub nlbaf_z: u8,
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub dlfeat: u8,
    pub nawun: u16,
    pub nawupf: u16,
    pub nacwu: u16,
    pub nabsn: u16,
    pub nabo: u16,
    pub nabspf: u16,
    pub noiob: u16,
    pub nvmcap: [u8; 16],
    pub npwg: u16,
    pub npwa: u16,
    pub npdg: u16,
    pub npda: u16,
    pub nows: u16,
    pub mssrl: u16,
    pub mcl: u32,
    pub msrc: u8,
    pub rsvd81: u8,
    pub nulbaf: u8,
    pub rsvd83: [u8; 9],
    pub anagrpid: u32,
    pub rsvd96: [u8; 3],
    pub nsattr: u8,
    pub nvmsetid: u16,
    pub endgid: u16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub lbaf: [LbaFormat; 64],
    pub vs: [u8; 3712],
}

/// Namespace Identifier Type (NIDT) of a descriptor (Base 2.0c Figure 279).
pub mod nidt {
    /// IEEE Extended Unique Identifier, 8 bytes.
    pub const EUI64: u8 = 1;
    /// Namespace Globally Unique Identifier, 16 bytes.
    pub const NGUID: u8 = 2;
    /// Namespace UUID, 16 bytes.
    pub const UUID: u8 = 3;
    /// Command Set Identifier, 1 byte.
    pub const CSI: u8 = 4;
}

const _: () = assert!(size_of::<PowerStateDescriptor>() == 32);
const _: () = assert!(size_of::<IdentifyController>() == 4096);
const _: () = assert!(size_of::<LbaFormat>() == 4);
const _: () = assert!(size_of::<IdentifyNamespace>() == 4096);

impl IdentifyController {
    /// An all-zero structure to fill in.
    pub fn zeroed() -> Box<Self> {
        Box::new(<Self as zerocopy::FromZeros>::new_zeroed())
    }
}

impl IdentifyNamespace {
    /// An all-zero structure (what an inactive NSID reports).
    pub fn zeroed() -> Box<Self> {
        Box::new(<Self as zerocopy::FromZeros>::new_zeroed())
    }
}

/// Writes `s` into an ASCII field padded with spaces (SN, MN, FR);
/// non-printable characters are dropped.
pub fn set_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    for (d, c) in field
        .iter_mut()
        .zip(s.bytes().filter(|c| (0x20..0x7f).contains(c)))
    {
        *d = c;
    }
}

/// Writes `s` into a NUL-padded UTF-8 field (SUBNQN), always leaving at
/// least one NUL.
pub fn set_nul_padded(field: &mut [u8], s: &str) {
    field.fill(0);
    let n = s.len().min(field.len().saturating_sub(1));
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Encodes an active namespace ID list (4096 bytes, ascending, zero-ended).
pub fn encode_nsid_list(ids: impl IntoIterator<Item = u32>, out: &mut [u8; 4096]) {
    out.fill(0);
    for (slot, id) in out.chunks_exact_mut(4).zip(ids) {
        slot.copy_from_slice(&id.to_le_bytes());
    }
}

/// Decodes an active namespace ID list.
pub fn decode_nsid_list(raw: &[u8]) -> Vec<u32> {
    raw.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&id| id != 0)
        .collect()
}

/// Encodes Namespace Identification Descriptors `(nidt, id bytes)`.
/// Returns bytes used, or `None` if they do not fit.
pub fn encode_ns_descriptors(descs: &[(u8, &[u8])], out: &mut [u8]) -> Option<usize> {
    let mut off = 0;
    for (nidt, nid) in descs {
        let end = off + 4 + nid.len();
        if end > out.len() || nid.len() > 255 {
            return None;
        }
        out[off] = *nidt;
        out[off + 1] = nid.len() as u8;
        out[off + 2..off + 4].fill(0);
        out[off + 4..end].copy_from_slice(nid);
        off = end;
    }
    Some(off)
}

/// Decodes Namespace Identification Descriptors up to the first NIDL of 0.
pub fn decode_ns_descriptors(raw: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= raw.len() {
        let (nidt, nidl) = (raw[off], raw[off + 1] as usize);
        if nidl == 0 || off + 4 + nidl > raw.len() {
            break;
        }
        out.push((nidt, raw[off + 4..off + 4 + nidl].to_vec()));
        off += 4 + nidl;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn identify_controller_offsets() {
        type C = IdentifyController;
        assert_eq!(offset_of!(C, sn), 4);
        assert_eq!(offset_of!(C, mn), 24);
        assert_eq!(offset_of!(C, fr), 64);
        assert_eq!(offset_of!(C, rab), 72);
        assert_eq!(offset_of!(C, mdts), 77);
        assert_eq!(offset_of!(C, cntlid), 78);
        assert_eq!(offset_of!(C, ver), 80);
        assert_eq!(offset_of!(C, oaes), 92);
        assert_eq!(offset_of!(C, ctratt), 96);
        assert_eq!(offset_of!(C, cntrltype), 111);
        assert_eq!(offset_of!(C, fguid), 112);
        assert_eq!(offset_of!(C, oacs), 256);
        assert_eq!(offset_of!(C, acl_z), 258);
        assert_eq!(offset_of!(C, aerl_z), 259);
        assert_eq!(offset_of!(C, lpa), 261);
        assert_eq!(offset_of!(C, elpe_z), 262);
        assert_eq!(offset_of!(C, wctemp), 266);
        assert_eq!(offset_of!(C, tnvmcap), 280);
        assert_eq!(offset_of!(C, kas), 320);
        assert_eq!(offset_of!(C, sanicap), 328);
        assert_eq!(offset_of!(C, anagrpmax), 344);
        assert_eq!(offset_of!(C, domainid), 356);
        assert_eq!(offset_of!(C, megcap), 368);
        assert_eq!(offset_of!(C, sqes), 512);
        assert_eq!(offset_of!(C, maxcmd), 514);
        assert_eq!(offset_of!(C, nn), 516);
        assert_eq!(offset_of!(C, oncs), 520);
        assert_eq!(offset_of!(C, vwc), 525);
        assert_eq!(offset_of!(C, sgls), 536);
        assert_eq!(offset_of!(C, mnan), 540);
        assert_eq!(offset_of!(C, maxcna), 560);
        assert_eq!(offset_of!(C, subnqn), 768);
        assert_eq!(offset_of!(C, ioccsz), 1792);
        assert_eq!(offset_of!(C, iorcsz), 1796);
        assert_eq!(offset_of!(C, icdoff), 1800);
        assert_eq!(offset_of!(C, fcatt), 1802);
        assert_eq!(offset_of!(C, msdbd), 1803);
        assert_eq!(offset_of!(C, ofcs), 1804);
        assert_eq!(offset_of!(C, psd), 2048);
        assert_eq!(offset_of!(C, vs), 3072);
    }

    #[test]
    fn identify_namespace_offsets() {
        type N = IdentifyNamespace;
        assert_eq!(offset_of!(N, ncap), 8);
        assert_eq!(offset_of!(N, nuse), 16);
        assert_eq!(offset_of!(N, nsfeat), 24);
        assert_eq!(offset_of!(N, nlbaf_z), 25);
        assert_eq!(offset_of!(N, flbas), 26);
        assert_eq!(offset_of!(N, nmic), 30);
        assert_eq!(offset_of!(N, dlfeat), 33);
        assert_eq!(offset_of!(N, nawun), 34);
        assert_eq!(offset_of!(N, noiob), 46);
        assert_eq!(offset_of!(N, nvmcap), 48);
        assert_eq!(offset_of!(N, npwg), 64);
        assert_eq!(offset_of!(N, mssrl), 74);
        assert_eq!(offset_of!(N, mcl), 76);
        assert_eq!(offset_of!(N, msrc), 80);
        assert_eq!(offset_of!(N, anagrpid), 92);
        assert_eq!(offset_of!(N, nsattr), 99);
        assert_eq!(offset_of!(N, nvmsetid), 100);
        assert_eq!(offset_of!(N, endgid), 102);
        assert_eq!(offset_of!(N, nguid), 104);
        assert_eq!(offset_of!(N, eui64), 120);
        assert_eq!(offset_of!(N, lbaf), 128);
        assert_eq!(offset_of!(N, vs), 384);
    }

    #[test]
    fn power_state_offsets() {
        type P = PowerStateDescriptor;
        assert_eq!(offset_of!(P, enlat), 4);
        assert_eq!(offset_of!(P, rrt), 12);
        assert_eq!(offset_of!(P, idlp), 16);
        assert_eq!(offset_of!(P, actp), 20);
    }

    #[test]
    fn helpers_round_trip() {
        let mut f = [0u8; 8];
        set_ascii(&mut f, "1.0\x01");
        assert_eq!(&f, b"1.0     ");
        let mut n = [7u8; 4];
        set_nul_padded(&mut n, "abcdef");
        assert_eq!(&n, b"abc\0");
        let mut list = [0u8; 4096];
        encode_nsid_list([1, 5, 9], &mut list);
        assert_eq!(decode_nsid_list(&list), vec![1, 5, 9]);
        let mut d = [0u8; 64];
        let used =
            encode_ns_descriptors(&[(nidt::NGUID, &[1; 16]), (nidt::CSI, &[0])], &mut d).unwrap();
        assert_eq!(used, 20 + 5);
        assert_eq!(
            decode_ns_descriptors(&d),
            vec![(nidt::NGUID, vec![1; 16]), (nidt::CSI, vec![0])]
        );
        assert_eq!(LbaFormat::with_block_size(4096).block_size(), 4096);
    }
}
