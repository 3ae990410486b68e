//! Controller properties (Base 2.0c §3.1.4): offsets, sizes and the
//! fields of CAP, VS, CC, CSTS and AQA.

/// Property offsets.
pub mod offset {
    /// Controller Capabilities, 8 bytes.
    pub const CAP: u32 = 0x00;
    /// Version.
    pub const VS: u32 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u32 = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: u32 = 0x10;
    /// Controller Configuration.
    pub const CC: u32 = 0x14;
    /// Controller Status.
    pub const CSTS: u32 = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: u32 = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: u32 = 0x24;
    /// Admin Submission Queue Base Address, 8 bytes.
    pub const ASQ: u32 = 0x28;
    /// Admin Completion Queue Base Address, 8 bytes.
    pub const ACQ: u32 = 0x30;
}

/// Size in bytes of the property at `off`, `None` if there is none there.
pub fn property_size(off: u32) -> Option<u8> {
    match off {
        offset::CAP | offset::ASQ | offset::ACQ => Some(8),
        offset::VS
        | offset::INTMS
        | offset::INTMC
        | offset::CC
        | offset::CSTS
        | offset::NSSR
        | offset::AQA => Some(4),
        _ => None,
    }
}

fn bits(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1u64 << width) - 1)
}

fn set_bits(v: &mut u64, lo: u32, width: u32, x: u64) {
    let mask = ((1u64 << width) - 1) << lo;
    *v = (*v & !mask) | ((x << lo) & mask);
}

/// Controller Capabilities (Base 2.0c Figure 36).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, zero-based (15:0).
    pub fn mqes_z(self) -> u16 {
        bits(self.0, 0, 16) as u16
    }
    /// Contiguous Queues Required (16).
    pub fn cqr(self) -> bool {
        bits(self.0, 16, 1) != 0
    }
    /// Arbitration Mechanism Supported (18:17).
    pub fn ams(self) -> u8 {
        bits(self.0, 17, 2) as u8
    }
    /// Timeout in 500 ms units (31:24).
    pub fn to(self) -> u8 {
        bits(self.0, 24, 8) as u8
    }
    /// Doorbell Stride: 4 << DSTRD bytes (35:32).
    pub fn dstrd(self) -> u8 {
        bits(self.0, 32, 4) as u8
    }
    /// NVM Subsystem Reset Supported (36).
    pub fn nssrs(self) -> bool {
        bits(self.0, 36, 1) != 0
    }
    /// Command Sets Supported (44:37); bit 0 = NVM.
    pub fn css(self) -> u8 {
        bits(self.0, 37, 8) as u8
    }
    /// Boot Partition Support (45).
    pub fn bps(self) -> bool {
        bits(self.0, 45, 1) != 0
    }
    /// Controller Power Scope (47:46).
    pub fn cps(self) -> u8 {
        bits(self.0, 46, 2) as u8
    }
    /// Memory Page Size Minimum: 4 KiB << MPSMIN (51:48).
    pub fn mpsmin(self) -> u8 {
        bits(self.0, 48, 4) as u8
    }
    /// Memory Page Size Maximum (55:52).
    pub fn mpsmax(self) -> u8 {
        bits(self.0, 52, 4) as u8
    }
    /// Persistent Memory Region Supported (56).
    pub fn pmrs(self) -> bool {
        bits(self.0, 56, 1) != 0
    }
    /// Controller Memory Buffer Supported (57).
    pub fn cmbs(self) -> bool {
        bits(self.0, 57, 1) != 0
    }
    /// NVM Subsystem Shutdown Supported (58).
    pub fn nsss(self) -> bool {
        bits(self.0, 58, 1) != 0
    }
    /// Controller Ready Modes Supported (60:59).
    pub fn crms(self) -> u8 {
        bits(self.0, 59, 2) as u8
    }
    /// A CAP with the fields a fabrics target sets.
    pub fn new(mqes_z: u16, cqr: bool, to: u8, css_nvm: bool) -> Self {
        let mut v = 0;
        set_bits(&mut v, 0, 16, mqes_z as u64);
        set_bits(&mut v, 16, 1, cqr as u64);
        set_bits(&mut v, 24, 8, to as u64);
        set_bits(&mut v, 37, 8, css_nvm as u64);
        Self(v)
    }
}

/// Version (Base 2.0c Figure 37).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vs(pub u32);

impl Vs {
    /// NVMe 1.4.0.
    pub const V1_4: Vs = Vs::new(1, 4, 0);
    /// NVMe 2.0.0.
    pub const V2_0: Vs = Vs::new(2, 0, 0);
    /// From major, minor, tertiary.
    pub const fn new(mjr: u16, mnr: u8, ter: u8) -> Self {
        Self(((mjr as u32) << 16) | ((mnr as u32) << 8) | ter as u32)
    }
    /// Major (31:16).
    pub fn mjr(self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// Minor (15:8).
    pub fn mnr(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Tertiary (7:0).
    pub fn ter(self) -> u8 {
        self.0 as u8
    }
}

/// Shutdown Notification (CC.SHN) values.
pub mod shn {
    /// No notification.
    pub const NONE: u8 = 0;
    /// Normal shutdown.
    pub const NORMAL: u8 = 1;
    /// Abrupt shutdown.
    pub const ABRUPT: u8 = 2;
}

/// Shutdown Status (CSTS.SHST) values.
pub mod shst {
    /// Normal operation.
    pub const NORMAL: u8 = 0;
    /// Shutdown processing occurring.
    pub const OCCURRING: u8 = 1;
    /// Shutdown processing complete.
    pub const COMPLETE: u8 = 2;
}

/// Controller Configuration (Base 2.0c Figure 41).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable (0).
    pub fn en(self) -> bool {
        self.0 & 1 != 0
    }
    /// I/O Command Set Selected (6:4).
    pub fn css(self) -> u8 {
        bits(self.0 as u64, 4, 3) as u8
    }
    /// Memory Page Size (10:7): 4 KiB << MPS.
    pub fn mps(self) -> u8 {
        bits(self.0 as u64, 7, 4) as u8
    }
    /// Arbitration Mechanism Selected (13:11).
    pub fn ams(self) -> u8 {
        bits(self.0 as u64, 11, 3) as u8
    }
    /// Shutdown Notification (15:14).
    pub fn shn(self) -> u8 {
        bits(self.0 as u64, 14, 2) as u8
    }
    /// I/O Submission Queue Entry Size, log2 (19:16).
    pub fn iosqes(self) -> u8 {
        bits(self.0 as u64, 16, 4) as u8
    }
    /// I/O Completion Queue Entry Size, log2 (23:20).
    pub fn iocqes(self) -> u8 {
        bits(self.0 as u64, 20, 4) as u8
    }
    /// Controller Ready Independent of Media Enable (24).
    pub fn crime(self) -> bool {
        bits(self.0 as u64, 24, 1) != 0
    }
    /// The usual enable value: EN, NVM, 4 KiB pages, 64/16-byte entries.
    pub fn enable_nvm() -> Self {
        Self(1 | (6 << 16) | (4 << 20))
    }
    /// The same with SHN set.
    #[must_use]
    pub fn with_shn(self, shn: u8) -> Self {
        let mut v = self.0 as u64;
        set_bits(&mut v, 14, 2, shn as u64);
        Self(v as u32)
    }
}

/// Controller Status (Base 2.0c Figure 42).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Csts(pub u32);

impl Csts {
    /// Ready (0).
    pub fn rdy(self) -> bool {
        self.0 & 1 != 0
    }
    /// Controller Fatal Status (1).
    pub fn cfs(self) -> bool {
        self.0 & 2 != 0
    }
    /// Shutdown Status (3:2).
    pub fn shst(self) -> u8 {
        bits(self.0 as u64, 2, 2) as u8
    }
    /// NVM Subsystem Reset Occurred (4).
    pub fn nssro(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Processing Paused (5).
    pub fn pp(self) -> bool {
        self.0 & (1 << 5) != 0
    }
    /// Shutdown Type (6).
    pub fn st(self) -> bool {
        self.0 & (1 << 6) != 0
    }
}

/// Admin Queue Attributes (Base 2.0c Figure 44).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aqa(pub u32);

impl Aqa {
    /// From zero-based sizes.
    pub fn new(asqs_z: u16, acqs_z: u16) -> Self {
        Self((asqs_z as u32 & 0xfff) | ((acqs_z as u32 & 0xfff) << 16))
    }
    /// Admin Submission Queue Size, zero-based (11:0).
    pub fn asqs_z(self) -> u16 {
        (self.0 & 0xfff) as u16
    }
    /// Admin Completion Queue Size, zero-based (27:16).
    pub fn acqs_z(self) -> u16 {
        ((self.0 >> 16) & 0xfff) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        let c = Cap::new(1023, true, 30, true);
        assert_eq!((c.mqes_z(), c.cqr(), c.to(), c.css()), (1023, true, 30, 1));
        assert_eq!(c.0, 0x0000_0020_1e01_03ff);
        // QEMU's model: MQES 2047, DSTRD 0, MPSMAX 4.
        let q = Cap(0x0040_0020_0f01_07ff | (4 << 52));
        assert_eq!((q.mqes_z(), q.dstrd(), q.mpsmax()), (2047, 0, 4));
    }

    #[test]
    fn cc_csts_aqa_vs() {
        let cc = Cc::enable_nvm();
        assert!(cc.en());
        assert_eq!(
            (cc.iosqes(), cc.iocqes(), cc.mps(), cc.css(), cc.shn()),
            (6, 4, 0, 0, 0)
        );
        assert_eq!(cc.with_shn(shn::NORMAL).shn(), 1);
        assert_eq!(cc.0, 0x0046_0001);
        let s = Csts(0b1001);
        assert!(s.rdy() && !s.cfs());
        assert_eq!(s.shst(), shst::COMPLETE);
        let a = Aqa::new(31, 31);
        assert_eq!((a.asqs_z(), a.acqs_z(), a.0), (31, 31, 0x001f_001f));
        assert_eq!(Vs::V2_0.0, 0x0002_0000);
        assert_eq!((Vs::V1_4.mjr(), Vs::V1_4.mnr(), Vs::V1_4.ter()), (1, 4, 0));
    }

    #[test]
    fn sizes_by_offset() {
        assert_eq!(property_size(offset::CAP), Some(8));
        assert_eq!(property_size(offset::CSTS), Some(4));
        assert_eq!(property_size(0x38), None);
    }
}
