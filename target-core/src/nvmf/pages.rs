//! Identify data structures and log pages, built into the host's buffer.
//!
//! Pages are assembled in a scratch page with the spec's byte offsets
//! (Base 2.0c Figures 202-208 and 275, NVM 1.0c Figure 97) and then copied
//! out at the offset and length the host asked for.

use super::admin::AdminOutcome;
use super::ctrlr::{AER_LIMIT, Controller, ERROR_LOG_ENTRIES};
use super::engine::Engine;
use super::fabrics::VERSION;
use crate::iobuf::DataBuf;
use crate::spec::{Status, SubmissionEntry};

const PAGE: usize = 4096;

/// A scratch page with little-endian writers named for what they do.
struct Page(Box<[u8; PAGE]>);

impl Page {
    fn new() -> Self {
        Self(Box::new([0u8; PAGE]))
    }
    fn u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn u128(&mut self, off: usize, v: u128) {
        self.0[off..off + 16].copy_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, off: usize, v: &[u8]) {
        self.0[off..off + v.len()].copy_from_slice(v);
    }
    /// ASCII field padded with spaces (SN, MN, FR).
    fn ascii(&mut self, off: usize, len: usize, s: &str) {
        let f = &mut self.0[off..off + len];
        f.fill(b' ');
        for (d, c) in f
            .iter_mut()
            .zip(s.bytes().filter(|c| (0x20..0x7f).contains(c)))
        {
            *d = c;
        }
    }
    /// UTF-8 field padded with NULs (SUBNQN).
    fn nul_str(&mut self, off: usize, len: usize, s: &str) {
        let n = s.len().min(len - 1);
        self.0[off..off + n].copy_from_slice(&s.as_bytes()[..n]);
    }
}

/// Copies `page[offset..offset+len]` into the host buffer.
fn deliver(page: &[u8], buf: &mut DataBuf, offset: u64, len: usize) -> AdminOutcome {
    if buf.len() < len {
        return AdminOutcome::status(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    }
    if offset > page.len() as u64 {
        return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
    }
    let off = offset as usize;
    let n = len.min(page.len() - off);
    buf.copy_in(0, &page[off..off + n]);
    if n < len {
        buf.fill_zero(n, len - n);
    }
    AdminOutcome::status(Status::SUCCESS)
}

/// Identify CNS values served.
mod cns {
    pub const NAMESPACE: u32 = 0x00;
    pub const CONTROLLER: u32 = 0x01;
    pub const ACTIVE_NAMESPACES: u32 = 0x02;
    pub const NAMESPACE_DESCRIPTORS: u32 = 0x03;
}

/// Identify (Base 2.0c §5.17).
pub(crate) fn identify(
    engine: &Engine,
    ctrl: &Controller,
    sqe: &SubmissionEntry,
    buf: &mut DataBuf,
) -> AdminOutcome {
    if buf.len() < PAGE {
        return AdminOutcome::status(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    }
    let subsys = &ctrl.subsys;
    let nsid = sqe.nsid;
    let valid_nsid = nsid >= 1 && nsid <= subsys.max_namespaces;
    let mut p = Page::new();
    match sqe.cdw10 & 0xff {
        cns::CONTROLLER => identify_controller(engine, ctrl, &mut p),
        cns::NAMESPACE => {
            if !valid_nsid {
                return AdminOutcome::status(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr());
            }
            // An allocated but inactive NSID reads as all zeros.
            if let Some(ns) = subsys.namespace(nsid) {
                identify_namespace(&ns, &mut p);
            }
        }
        cns::ACTIVE_NAMESPACES => {
            if nsid >= 0xffff_fffe {
                return AdminOutcome::status(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr());
            }
            for (i, id) in subsys
                .active_nsids()
                .into_iter()
                .filter(|&id| id > nsid)
                .take(PAGE / 4)
                .enumerate()
            {
                p.u32(i * 4, id);
            }
        }
        cns::NAMESPACE_DESCRIPTORS => {
            let Some(ns) = subsys.namespace(nsid).filter(|_| valid_nsid) else {
                return AdminOutcome::status(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr());
            };
            let mut off = 0;
            for (nidt, nid) in [(2u8, &ns.nguid[..]), (3u8, &ns.uuid[..])] {
                if nid.iter().any(|&b| b != 0) {
                    p.u8(off, nidt);
                    p.u8(off + 1, nid.len() as u8);
                    p.bytes(off + 4, nid);
                    off += 4 + nid.len();
                }
            }
            // Command Set Identifier: NVM (0).
            p.u8(off, 4);
            p.u8(off + 1, 1);
        }
        _ => return AdminOutcome::status(Status::INVALID_FIELD.with_dnr()),
    }
    deliver(&p.0[..], buf, 0, PAGE)
}

fn identify_controller(engine: &Engine, ctrl: &Controller, p: &mut Page) {
    let s = &ctrl.subsys;
    p.ascii(4, 20, &s.serial); // SN
    p.ascii(24, 40, &s.model); // MN
    p.ascii(64, 8, env!("CARGO_PKG_VERSION")); // FR
    p.u8(72, 6); // RAB
    p.u8(76, 1 << 1); // CMIC: may have several controllers
    p.u8(77, engine.opts.mdts); // MDTS
    p.u16(78, ctrl.cntlid); // CNTLID
    p.u32(80, VERSION); // VER
    p.u32(92, 1 << 8); // OAES: Namespace Attribute Notices
    p.u32(96, 1); // CTRATT: 128-bit host identifier
    p.u8(111, 1); // CNTRLTYPE: I/O controller
    p.u8(258, 3); // ACL (zero-based)
    p.u8(259, AER_LIMIT as u8 - 1); // AERL (zero-based)
    p.u8(260, 0x3); // FRMW: one slot, read only
    p.u8(261, (1 << 1) | (1 << 2)); // LPA: effects log, extended data
    p.u8(262, ERROR_LOG_ENTRIES as u8 - 1); // ELPE (zero-based)
    p.u16(266, 0x157); // WCTEMP
    p.u16(268, 0x175); // CCTEMP
    p.u16(320, 1); // KAS: 100 ms granularity
    p.u8(512, 0x66); // SQES
    p.u8(513, 0x44); // CQES
    p.u16(514, engine.opts.max_queue_entries); // MAXCMD
    p.u32(516, s.max_namespaces); // NN
    p.u16(520, (1 << 2) | (1 << 3)); // ONCS: DSM, Write Zeroes
    p.u8(525, 0b101); // VWC present; flush to NSID FFFFFFFFh not supported
    p.u32(536, 1); // SGLS: supported
    p.u32(540, s.max_namespaces); // MNAN
    p.nul_str(768, 256, &s.nqn); // SUBNQN
    p.u32(1792, 4); // IOCCSZ: 64-byte capsules
    p.u32(1796, 1); // IORCSZ: 16-byte responses
    p.u8(1803, 1); // MSDBD
}

fn identify_namespace(ns: &super::subsystem::Namespace, p: &mut Page) {
    let info = ns.bdev.info();
    p.u64(0, info.num_blocks); // NSZE
    p.u64(8, info.num_blocks); // NCAP
    p.u64(16, info.num_blocks); // NUSE
    p.u8(25, 0); // NLBAF: one format
    p.u8(26, 0); // FLBAS: format 0
    p.u8(30, 1); // NMIC: may be shared
    // DLFEAT: deallocated blocks read as zeros; write zeroes may deallocate.
    p.u8(33, if info.supports_deallocate { 0b1001 } else { 0 });
    p.u8(99, ns.read_only as u8); // NSATTR: write protected
    p.bytes(104, &ns.nguid); // NGUID
    // LBAF0: MS 0, LBADS, RP best.
    p.u8(128 + 2, info.block_size.trailing_zeros() as u8);
}

/// Log page identifiers served.
mod lid {
    pub const SUPPORTED: u8 = 0x00;
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS: u8 = 0x04;
    pub const EFFECTS: u8 = 0x05;
}

/// Admin opcodes reported as supported in the effects log.
const ADMIN_SUPPORTED: &[u8] = &[0x02, 0x06, 0x08, 0x09, 0x0a, 0x0c, 0x18, 0x7f];
/// I/O opcodes reported as supported, and whether they change logical blocks.
const IO_SUPPORTED: &[(u8, bool)] = &[
    (0x00, false),
    (0x01, true),
    (0x02, false),
    (0x08, true),
    (0x09, true),
];

/// Get Log Page (Base 2.0c §5.16).
pub(crate) fn get_log_page(
    engine: &Engine,
    ctrl: &Controller,
    sqe: &SubmissionEntry,
    buf: &mut DataBuf,
) -> AdminOutcome {
    let _ = engine;
    let lid = (sqe.cdw10 & 0xff) as u8;
    let rae = sqe.cdw10 & (1 << 15) != 0;
    let numd = (((sqe.cdw11 & 0xffff) as u64) << 16 | (sqe.cdw10 >> 16) as u64) + 1;
    let len = (numd * 4) as usize;
    let offset = sqe.cdw12 as u64 | ((sqe.cdw13 as u64) << 32);
    if offset & 3 != 0 || (sqe.cdw10 >> 8) & 0x7f != 0 {
        return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
    }
    let mut p = Page::new();
    match lid {
        lid::SUPPORTED => {
            for l in [
                lid::SUPPORTED,
                lid::ERROR,
                lid::SMART,
                lid::FIRMWARE_SLOT,
                lid::CHANGED_NS,
                lid::EFFECTS,
            ] {
                p.u32(l as usize * 4, 1);
            }
            deliver(&p.0[..1024], buf, offset, len)
        }
        lid::ERROR => {
            let st = ctrl.state();
            for (i, e) in st.errors.iter().enumerate().take(PAGE / 64) {
                let o = i * 64;
                p.u64(o, e.error_count);
                p.u16(o + 8, e.sqid);
                p.u16(o + 10, e.cid);
                p.u16(o + 12, e.status << 1);
                p.u16(o + 14, 0xffff); // parameter error location: n/a
                p.u64(o + 16, e.lba);
                p.u32(o + 24, e.nsid);
            }
            deliver(&p.0[..ERROR_LOG_ENTRIES * 64], buf, offset, len)
        }
        lid::SMART => {
            if sqe.nsid != 0 && sqe.nsid != u32::MAX {
                return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
            }
            let mut t = super::stats::NsIoTotals::default();
            for ns in ctrl.subsys.state().namespaces.values() {
                let n = ns.totals();
                t.reads += n.reads;
                t.writes += n.writes;
                t.bytes_read += n.bytes_read;
                t.bytes_written += n.bytes_written;
                t.errors += n.errors;
            }
            let units = |b: u64| (b.div_ceil(512)).div_ceil(1000) as u128;
            p.u16(1, 0x13b); // composite temperature, 42 °C
            p.u8(3, 100); // available spare
            p.u8(4, 10); // available spare threshold
            p.u128(32, units(t.bytes_read));
            p.u128(48, units(t.bytes_written));
            p.u128(64, t.reads as u128);
            p.u128(80, t.writes as u128);
            p.u128(176, ctrl.state().error_count as u128);
            deliver(&p.0[..512], buf, offset, len)
        }
        lid::FIRMWARE_SLOT => {
            p.u8(0, 1); // AFI: slot 1 active
            p.ascii(8, 8, env!("CARGO_PKG_VERSION")); // FRS1
            deliver(&p.0[..512], buf, offset, len)
        }
        lid::CHANGED_NS => {
            let mut st = ctrl.state();
            if st.changed_nsids.len() > PAGE / 4 {
                p.u32(0, u32::MAX);
            } else {
                for (i, id) in st.changed_nsids.iter().enumerate() {
                    p.u32(i * 4, *id);
                }
            }
            if !rae {
                st.changed_nsids.clear();
                st.masked_events &= !(1 << 2);
            }
            drop(st);
            deliver(&p.0[..], buf, offset, len)
        }
        lid::EFFECTS => {
            for &op in ADMIN_SUPPORTED {
                p.u32(op as usize * 4, 1);
            }
            for &(op, lbcc) in IO_SUPPORTED {
                p.u32(1024 + op as usize * 4, 1 | ((lbcc as u32) << 1));
            }
            deliver(&p.0[..], buf, offset, len)
        }
        _ => AdminOutcome::status(Status::INVALID_LOG_PAGE.with_dnr()),
    }
}
