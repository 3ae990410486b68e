//! The few Identify fields this driver uses, parsed by byte offset
//! (NVMe Base 2.0c Figure 275, NVM Command Set 1.0c Figure 97).

/// Identify Controller fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerIdentity {
    /// Serial Number.
    pub serial: String,
    /// Model Number.
    pub model: String,
    /// Firmware Revision.
    pub firmware: String,
    /// MDTS as reported: max transfer is `2^mdts` minimum pages; 0 = no limit.
    pub mdts: u8,
    /// Number of Namespaces (NN).
    pub nn: u32,
    /// Optional NVM Command Support (ONCS).
    pub oncs: u16,
    /// Volatile Write Cache present.
    pub vwc: bool,
}

impl ControllerIdentity {
    /// Parses a 4096-byte Identify Controller page.
    pub fn parse(b: &[u8]) -> Self {
        let s = |r: std::ops::Range<usize>| {
            String::from_utf8_lossy(b.get(r).unwrap_or_default())
                .trim_end_matches([' ', '\0'])
                .trim()
                .to_owned()
        };
        Self {
            serial: s(4..24),
            model: s(24..64),
            firmware: s(64..72),
            mdts: byte(b, 77),
            nn: le32(b, 516),
            oncs: le16(b, 520),
            vwc: byte(b, 525) & 1 != 0,
        }
    }

    /// Write Zeroes supported (ONCS bit 3).
    pub fn write_zeroes(&self) -> bool {
        self.oncs & (1 << 3) != 0
    }

    /// Dataset Management supported (ONCS bit 2).
    pub fn dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }
}

/// Identify Namespace fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceIdentity {
    /// Namespace Size in blocks.
    pub nsze: u64,
    /// LBA data size shift of the formatted LBA format.
    pub lba_shift: u32,
    /// Metadata bytes per block of the formatted format.
    pub metadata: u16,
    /// Deallocated blocks read back as zeros (DLFEAT bits 2:0 = 001b).
    pub dealloc_reads_zero: bool,
}

impl NamespaceIdentity {
    /// Parses a 4096-byte Identify Namespace page.
    pub fn parse(b: &[u8]) -> Self {
        let flbas = byte(b, 26);
        let idx = (flbas & 0xf) as usize | (((flbas >> 5) & 0x3) as usize) << 4;
        let lbaf = 128 + 4 * idx;
        Self {
            nsze: le64(b, 0),
            metadata: le16(b, lbaf),
            lba_shift: byte(b, lbaf + 2) as u32,
            dealloc_reads_zero: byte(b, 33) & 0x7 == 1,
        }
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        1u32.checked_shl(self.lba_shift).unwrap_or(0)
    }
}

/// Parses an Active Namespace ID list (CNS 02h).
pub fn active_nsids(b: &[u8]) -> Vec<u32> {
    (0..1024)
        .map(|i| le32(b, i * 4))
        .take_while(|&n| n != 0)
        .collect()
}

fn byte(b: &[u8], o: usize) -> u8 {
    b.get(o).copied().unwrap_or(0)
}
fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([byte(b, o), byte(b, o + 1)])
}
fn le32(b: &[u8], o: usize) -> u32 {
    le16(b, o) as u32 | (le16(b, o + 2) as u32) << 16
}
fn le64(b: &[u8], o: usize) -> u64 {
    le32(b, o) as u64 | (le32(b, o + 4) as u64) << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_fields() {
        let mut b = vec![0u8; 4096];
        b[4..12].copy_from_slice(b"nvme1   ");
        b[24..34].copy_from_slice(b"QEMU NVMe ");
        b[77] = 7;
        b[516..520].copy_from_slice(&256u32.to_le_bytes());
        b[520..522].copy_from_slice(&0x5fu16.to_le_bytes());
        b[525] = 1;
        let c = ControllerIdentity::parse(&b);
        assert_eq!(c.serial, "nvme1");
        assert_eq!(c.model, "QEMU NVMe");
        assert_eq!(c.mdts, 7);
        assert_eq!(c.nn, 256);
        assert!(c.write_zeroes() && c.dsm() && c.vwc);
    }

    #[test]
    fn namespace_fields() {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&131072u64.to_le_bytes());
        b[26] = 1; // LBA format 1
        b[33] = 0x9; // DLFEAT: reads zero (001b) + bit 3
        b[128 + 2] = 9;
        b[132 + 2] = 12;
        let n = NamespaceIdentity::parse(&b);
        assert_eq!(n.nsze, 131072);
        assert_eq!(n.block_size(), 4096);
        assert!(n.dealloc_reads_zero);
        b[26] = 0;
        assert_eq!(NamespaceIdentity::parse(&b).block_size(), 512);
        let mut l = vec![0u8; 4096];
        l[0] = 1;
        l[4] = 2;
        assert_eq!(active_nsids(&l), vec![1, 2]);
    }
}
