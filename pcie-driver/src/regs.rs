//! Controller registers in BAR0 (NVMe Base 2.0c §3.1.4): offsets and the
//! bitfields this driver reads or writes. Plain integers in, plain integers
//! out: no access happens here (see `mmio`).

/// Controller Capabilities (64-bit).
pub const CAP: usize = 0x00;
/// Version.
pub const VS: usize = 0x08;
/// Interrupt Mask Set.
pub const INTMS: usize = 0x0c;
/// Controller Configuration.
pub const CC: usize = 0x14;
/// Controller Status.
pub const CSTS: usize = 0x1c;
/// Admin Queue Attributes.
pub const AQA: usize = 0x24;
/// Admin Submission Queue base address (64-bit).
pub const ASQ: usize = 0x28;
/// Admin Completion Queue base address (64-bit).
pub const ACQ: usize = 0x30;
/// First doorbell.
pub const DOORBELL_BASE: usize = 0x1000;

/// Controller Capabilities, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, as a count (MQES + 1).
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Contiguous Queues Required.
    pub fn cqr(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Timeout (TO): worst-case time to become ready, in 500 ms units.
    pub fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff) * 500
    }
    /// Doorbell Stride (DSTRD): doorbells are `4 << dstrd` bytes apart.
    pub fn dstrd(self) -> u32 {
        ((self.0 >> 32) & 0xf) as u32
    }
    /// NVM command set supported (CSS bit 0).
    pub fn css_nvm(self) -> bool {
        (self.0 >> 37) & 1 != 0
    }
    /// Memory Page Size Minimum, as a shift (12 + MPSMIN).
    pub fn mps_min_shift(self) -> u32 {
        12 + ((self.0 >> 48) & 0xf) as u32
    }
    /// Memory Page Size Maximum, as a shift (12 + MPSMAX).
    pub fn mps_max_shift(self) -> u32 {
        12 + ((self.0 >> 52) & 0xf) as u32
    }
}

/// CC.EN.
pub const CC_EN: u32 = 1;
/// CC.SHN = 01b, normal shutdown notification.
pub const CC_SHN_NORMAL: u32 = 0b01 << 14;
/// CC.SHN mask.
pub const CC_SHN_MASK: u32 = 0b11 << 14;

/// The CC value this driver enables with: NVM command set, 4 KiB pages
/// (MPS 0), round robin arbitration, 64-byte SQEs and 16-byte CQEs.
pub fn cc_enable_value() -> u32 {
    let css_nvm = 0u32 << 4;
    let mps = 0u32 << 7;
    let ams_rr = 0u32 << 11;
    let iosqes = 6u32 << 16;
    let iocqes = 4u32 << 20;
    css_nvm | mps | ams_rr | iosqes | iocqes | CC_EN
}

/// CSTS.RDY.
pub const CSTS_RDY: u32 = 1;
/// CSTS.CFS (Controller Fatal Status).
pub const CSTS_CFS: u32 = 1 << 1;
/// CSTS.SHST mask.
pub const CSTS_SHST_MASK: u32 = 0b11 << 2;
/// CSTS.SHST = 10b, shutdown processing complete.
pub const CSTS_SHST_COMPLETE: u32 = 0b10 << 2;

/// AQA value for admin queues of `entries` entries each.
pub fn aqa_value(entries: u16) -> u32 {
    let z = u32::from(entries.saturating_sub(1)) & 0xfff;
    z | (z << 16)
}

/// Byte offset of a queue's doorbell in BAR0.
pub fn doorbell_offset(qid: u16, completion: bool, dstrd: u32) -> usize {
    DOORBELL_BASE + (2 * qid as usize + completion as usize) * (4usize << dstrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_decode() {
        // QEMU's model: MQES 0x7ff, CQR, TO 0x0f, DSTRD 0, CSS NVM, MPSMAX 4.
        let cap = Cap(0x0040_0020_0f01_07ff);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert!(cap.cqr());
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.dstrd(), 0);
        assert!(cap.css_nvm());
        assert_eq!(cap.mps_min_shift(), 12);
        assert_eq!(cap.mps_max_shift(), 16);
        let strided = Cap(3 << 32);
        assert_eq!(strided.dstrd(), 3);
    }

    #[test]
    fn cc_and_aqa_values() {
        let cc = cc_enable_value();
        assert_eq!(cc & 1, 1);
        assert_eq!((cc >> 16) & 0xf, 6);
        assert_eq!((cc >> 20) & 0xf, 4);
        assert_eq!((cc >> 7) & 0xf, 0);
        assert_eq!(cc & CC_SHN_MASK, 0);
        assert_eq!(aqa_value(32), 0x001f_001f);
    }

    #[test]
    fn doorbells_follow_stride() {
        assert_eq!(doorbell_offset(0, false, 0), 0x1000);
        assert_eq!(doorbell_offset(0, true, 0), 0x1004);
        assert_eq!(doorbell_offset(3, false, 0), 0x1018);
        assert_eq!(doorbell_offset(1, true, 2), 0x1000 + 3 * 16);
    }
}
