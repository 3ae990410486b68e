//! Identify data structures and log pages, built into the host's buffer.
//!
//! Pages are assembled in a scratch page with the spec's byte offsets
//! (Base 2.0c Figures 202-208 and 275, NVM 1.0c Figure 97) and then copied
//! out at the offset and length the host asked for.

use super::admin::AdminOutcome;
use super::ctrlr::{AER_LIMIT, Controller, ERROR_LOG_ENTRIES};
use super::engine::Engine;
use super::fabrics::VERSION;
use zerocopy::IntoBytes;

use crate::iobuf::DataBuf;
use crate::spec::features::aec;
use crate::spec::identify::{
    IdentifyController, IdentifyNamespace, LbaFormat, set_ascii, set_nul_padded,
};
use crate::spec::log::{ErrorInformationEntry, SmartHealthLog, u128_le};
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
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
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
    pub const CSI_CONTROLLER: u32 = 0x06;
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
        // I/O Command Set specific Identify Controller for the NVM command
        // set (NVM 1.0c Figure 95): all zero, no command size limits. The
        // Linux host asks for it when VS >= 1.1.
        cns::CSI_CONTROLLER if sqe.cdw11 >> 24 == 0 => {}
        _ => return AdminOutcome::status(Status::INVALID_FIELD.with_dnr()),
    }
    deliver(&p.0[..], buf, 0, PAGE)
}

fn identify_controller(engine: &Engine, ctrl: &Controller, p: &mut Page) {
    let s = &ctrl.subsys;
    if s.nqn == super::nqn::DISCOVERY_NQN {
        return identify_discovery_controller(engine, ctrl, p);
    }
    let mut id = IdentifyController::zeroed();
    set_ascii(&mut id.sn, &s.serial);
    set_ascii(&mut id.mn, &s.model);
    set_ascii(&mut id.fr, env!("CARGO_PKG_VERSION"));
    id.rab = 6;
    id.cmic = 1 << 1; // may have several controllers
    id.mdts = engine.opts.mdts;
    id.cntlid = ctrl.cntlid;
    id.ver = VERSION;
    id.oaes = aec::NAMESPACE_ATTRIBUTE; // Namespace Attribute Notices
    id.ctratt = 1; // 128-bit host identifier
    id.cntrltype = 1; // I/O controller
    id.acl_z = 3;
    id.aerl_z = AER_LIMIT as u8 - 1;
    id.frmw = 0x3; // one slot, read only
    id.lpa = (1 << 1) | (1 << 2); // effects log, extended data
    id.elpe_z = ERROR_LOG_ENTRIES as u8 - 1;
    id.wctemp = 0x157;
    id.cctemp = 0x175;
    id.kas = 1; // 100 ms granularity
    id.sqes = 0x66;
    id.cqes = 0x44;
    id.maxcmd = engine.opts.max_queue_entries;
    id.nn = s.max_namespaces;
    id.oncs = (1 << 2) | (1 << 3); // Dataset Management, Write Zeroes
    id.vwc = 0b101; // present; flush to NSID FFFFFFFFh not supported
    let cp = ctrl.state().capsule;
    id.sgls = cp.sgls;
    id.mnan = s.max_namespaces;
    set_nul_padded(&mut id.subnqn, &s.nqn);
    id.ioccsz = cp.ioccsz;
    id.iorcsz = cp.iorcsz;
    id.icdoff = cp.icdoff;
    id.msdbd = cp.msdbd;
    p.bytes(0, id.as_bytes());
}

/// Identify Controller of a discovery controller (NVMe-oF 1.1a §5.1):
/// CNTRLTYPE 2, no namespaces, no I/O queues; log pages only.
fn identify_discovery_controller(engine: &Engine, ctrl: &Controller, p: &mut Page) {
    let s = &ctrl.subsys;
    let mut id = IdentifyController::zeroed();
    set_ascii(&mut id.sn, &s.serial);
    set_ascii(&mut id.mn, &s.model);
    set_ascii(&mut id.fr, env!("CARGO_PKG_VERSION"));
    id.mdts = engine.opts.mdts;
    id.cntlid = ctrl.cntlid;
    id.ver = VERSION;
    id.cntrltype = 2; // discovery controller
    id.aerl_z = AER_LIMIT as u8 - 1;
    id.lpa = 1 << 2; // extended data for Get Log Page
    id.kas = 1;
    id.maxcmd = engine.opts.max_queue_entries;
    id.sgls = ctrl.state().capsule.sgls;
    set_nul_padded(&mut id.subnqn, &s.nqn);
    id.msdbd = 1;
    p.bytes(0, id.as_bytes());
}

fn identify_namespace(ns: &super::subsystem::Namespace, p: &mut Page) {
    let info = ns.bdev.info();
    let mut id = IdentifyNamespace::zeroed();
    id.nsze = info.num_blocks;
    id.ncap = info.num_blocks;
    id.nuse = info.num_blocks;
    id.nmic = 1; // may be shared
    // Deallocated blocks read as zeros; write zeroes may deallocate.
    id.dlfeat = if info.supports_deallocate { 0b1001 } else { 0 };
    id.nsattr = ns.read_only as u8; // write protected
    id.nguid = ns.nguid;
    id.lbaf[0] = LbaFormat::with_block_size(info.block_size);
    p.bytes(0, id.as_bytes());
}

/// Log page identifiers served.
mod lid {
    pub const SUPPORTED: u8 = 0x00;
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS: u8 = 0x04;
    pub const EFFECTS: u8 = 0x05;
    pub const DISCOVERY: u8 = 0x70;
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
    let lid = (sqe.cdw10 & 0xff) as u8;
    let rae = sqe.cdw10 & (1 << 15) != 0;
    let numd = (((sqe.cdw11 & 0xffff) as u64) << 16 | (sqe.cdw10 >> 16) as u64) + 1;
    let len = (numd * 4) as usize;
    let offset = sqe.cdw12 as u64 | ((sqe.cdw13 as u64) << 32);
    if offset & 3 != 0 || (sqe.cdw10 >> 8) & 0x7f != 0 {
        return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
    }
    if ctrl.subsys.nqn == super::nqn::DISCOVERY_NQN {
        if lid != lid::DISCOVERY {
            return AdminOutcome::status(Status::INVALID_LOG_PAGE.with_dnr());
        }
        let log = engine.discovery_log(&ctrl.hostnqn);
        return deliver(&log, buf, offset, len);
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
            for (i, e) in st.errors.iter().enumerate().take(ERROR_LOG_ENTRIES) {
                let entry = ErrorInformationEntry {
                    error_count: e.error_count,
                    sqid: e.sqid,
                    cid: e.cid,
                    status: e.status << 1,
                    parameter_error_location: 0xffff,
                    lba: e.lba,
                    nsid: e.nsid,
                    ..Default::default()
                };
                p.bytes(i * 64, entry.as_bytes());
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
            let mut log: SmartHealthLog = zerocopy::FromZeros::new_zeroed();
            log.composite_temperature = 0x13bu16.to_le_bytes(); // 42 °C
            log.available_spare = 100;
            log.available_spare_threshold = 10;
            log.data_units_read = u128_le(units(t.bytes_read));
            log.data_units_written = u128_le(units(t.bytes_written));
            log.host_read_commands = u128_le(t.reads as u128);
            log.host_write_commands = u128_le(t.writes as u128);
            log.number_of_error_log_entries = u128_le(ctrl.state().error_count as u128);
            p.bytes(0, log.as_bytes());
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
