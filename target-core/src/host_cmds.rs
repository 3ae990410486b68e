//! The commands a host builds, written once for every host transport.
//!
//! The loop host and the NVMe/TCP host differ in how a command travels and
//! how a lost queue recovers, not in what an Identify or a Read looks like.
//! Each implements one method (send an admin command and check its status;
//! submit an I/O command) and gets the builders here, so a fix to one (the
//! LBA format a namespace's block size comes from, say) reaches both.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::bdev::{DsmRange, encode_dsm_ranges};
use crate::iobuf::{DataBuf, IoBuf};
use crate::spec::{AdminOpcode, CompletionEntry, FabricsType, NvmOpcode, SubmissionEntry};

/// A response that is well-formed NVMe but not what the host can use (an
/// inactive namespace, an LBA size out of range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableResponse(pub String);

/// A controller that did not reach the state the host waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerStateError {
    /// CSTS.CFS came up (`what` names the step; `csts` is the register).
    Fatal {
        /// The step that saw it.
        what: &'static str,
        /// CSTS as read.
        csts: u32,
    },
    /// The bound (CAP.TO, or the host's own) ran out.
    Timeout(&'static str),
}

/// Controller property offsets the hosts use (Base 2.0c §3.1.4).
pub const PROP_CAP: u32 = 0x00;
/// Version.
pub const PROP_VS: u32 = 0x08;
/// Controller Configuration.
pub const PROP_CC: u32 = 0x14;
/// Controller Status.
pub const PROP_CSTS: u32 = 0x1c;
/// CC enabling the controller: EN, IOSQES 6 (64 B), IOCQES 4 (16 B).
pub const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
/// CC.SHN = 01b, normal shutdown.
pub const CC_SHN_NORMAL: u32 = 1 << 14;

/// CAP.TO: how long a host waits for CSTS.RDY to follow CC.EN.
fn ready_timeout(cap: u64) -> Duration {
    Duration::from_millis(((cap >> 24) & 0xff).max(1) * 500)
}

/// The namespace IDs of an Identify CNS 02h or a Changed Namespace List
/// log page (4096 bytes, zero-terminated).
pub fn ns_id_list(buf: &DataBuf) -> Vec<u32> {
    let mut raw = [0u8; 4096];
    buf.copy_out(0, &mut raw);
    raw.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&id| id != 0)
        .collect()
}

/// A host identifier derived from the host NQN: FNV-1a over the NQN, then
/// two avalanche mixes (SplitMix64's finalizer) for the 128 bits; never
/// zero. Stable across runs, so a target sees the same HOSTID for the same
/// NQN every time, and NQNs that differ only in their last characters (a
/// numbered host, a UUID) get different ones, which FNV's output bits alone
/// would not give.
pub fn host_id_for(hostnqn: &str) -> [u8; 16] {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in hostnqn.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    let mut hostid = [0u8; 16];
    hostid[..8].copy_from_slice(&mix(h).to_le_bytes());
    hostid[8..].copy_from_slice(&mix(h ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes());
    hostid[0] |= 1;
    hostid
}

/// An asynchronous event the host received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsyncEvent {
    /// Namespaces were added, removed or changed (from the Changed
    /// Namespace List log; `[u32::MAX]` means "more than 1024").
    NamespaceChanged(Vec<u32>),
    /// Any other event: completion dword 0.
    Other(u32),
}

/// An AER completion's dword 0 is a Notice (type 2) of Namespace Attribute
/// Changed (information 0), whose list is log page 04h.
pub fn is_namespace_notice(dw0: u32) -> bool {
    dw0 & 7 == 2 && (dw0 >> 8) & 0xff == 0
}

/// Reads CSTS every millisecond until `done` says so (or fails), at most
/// `bound`; `what` names the wait that ran out.
fn wait_csts<A: AdminCommands + ?Sized>(
    a: &A,
    bound: Duration,
    what: &'static str,
    done: impl Fn(u32) -> Result<bool, ControllerStateError>,
) -> Result<(), A::Error> {
    let start = Instant::now();
    loop {
        let csts = a.property_get(PROP_CSTS, false)? as u32;
        if done(csts)? {
            return Ok(());
        }
        if start.elapsed() > bound {
            return Err(ControllerStateError::Timeout(what).into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Set Features for `fid` with `cdw11` (for the features whose value fits
/// in dword 11: Number of Queues, Keep Alive Timer, Async Event Config...).
pub fn set_features_sqe(fid: u8, cdw11: u32) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(AdminOpcode::SET_FEATURES.0, 0);
    sqe.cdw10 = fid as u32;
    sqe.cdw11 = cdw11;
    sqe
}

/// Admin commands over a host's admin queue.
pub trait AdminCommands {
    /// The host's error type.
    type Error: From<UnusableResponse> + From<ControllerStateError>;

    /// Runs an admin command and turns a non-success status into an error
    /// naming `what`.
    fn admin_checked(
        &self,
        what: &'static str,
        sqe: SubmissionEntry,
        buf: DataBuf,
    ) -> Result<(CompletionEntry, DataBuf), Self::Error>;

    /// Identify with `cns` for `nsid`; returns the 4096-byte data.
    fn identify_raw(&self, cns: u8, nsid: u32) -> Result<(CompletionEntry, DataBuf), Self::Error> {
        let mut sqe = SubmissionEntry::new(AdminOpcode::IDENTIFY.0, 0);
        sqe.nsid = nsid;
        sqe.cdw10 = cns as u32;
        self.admin_checked("Identify", sqe, DataBuf::One(IoBuf::new(4096)))
    }

    /// Active namespace IDs (Identify CNS 02h).
    fn active_namespaces(&self) -> Result<Vec<u32>, Self::Error> {
        let (_, buf) = self.identify_raw(2, 0)?;
        Ok(ns_id_list(&buf))
    }

    /// Size in blocks and block size of a namespace (Identify Namespace:
    /// NSZE, and LBADS of the LBA format FLBAS selects).
    fn namespace_geometry(&self, nsid: u32) -> Result<(u64, u32), Self::Error> {
        let (_, buf) = self.identify_raw(0, nsid)?;
        let mut raw = [0u8; 4096];
        buf.copy_out(0, &mut raw);
        let nsze = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        // FLBAS bits 3:0 (and 6:5 above 16 formats) pick the LBA format;
        // LBADS is byte 2 of its 4-byte descriptor at 128.
        let flbas = (raw[26] & 0xf) as usize | (((raw[26] >> 5) & 3) as usize) << 4;
        let lbads = raw.get(128 + flbas * 4 + 2).copied().unwrap_or(0);
        if nsze == 0 || !(9..=16).contains(&lbads) {
            return Err(UnusableResponse(format!("namespace {nsid} is not active")).into());
        }
        Ok((nsze, 1u32 << lbads))
    }

    /// Get Log Page of `len` bytes at `offset`.
    fn get_log_page(
        &self,
        lid: u8,
        nsid: u32,
        len: usize,
        offset: u64,
    ) -> Result<DataBuf, Self::Error> {
        let numd_z = (len / 4).max(1) as u32 - 1;
        let mut sqe = SubmissionEntry::new(AdminOpcode::GET_LOG_PAGE.0, 0);
        sqe.nsid = nsid;
        sqe.cdw10 = lid as u32 | ((numd_z & 0xffff) << 16);
        sqe.cdw11 = numd_z >> 16;
        sqe.cdw12 = offset as u32;
        sqe.cdw13 = (offset >> 32) as u32;
        self.admin_checked("Get Log Page", sqe, DataBuf::One(IoBuf::new(len)))
            .map(|(_, b)| b)
    }

    /// Get Features; returns completion dword 0.
    fn get_features(&self, fid: u8, cdw11: u32) -> Result<u32, Self::Error> {
        let mut sqe = SubmissionEntry::new(AdminOpcode::GET_FEATURES.0, 0);
        sqe.cdw10 = fid as u32;
        sqe.cdw11 = cdw11;
        self.admin_checked("Get Features", sqe, DataBuf::None)
            .map(|(c, _)| c.dw0)
    }

    /// Set Features; returns completion dword 0.
    fn set_features(&self, fid: u8, cdw11: u32) -> Result<u32, Self::Error> {
        self.admin_checked("Set Features", set_features_sqe(fid, cdw11), DataBuf::None)
            .map(|(c, _)| c.dw0)
    }

    /// Fabrics Property Get (`size8`: an 8-byte property such as CAP).
    fn property_get(&self, offset: u32, size8: bool) -> Result<u64, Self::Error> {
        let mut sqe = SubmissionEntry::fabrics(FabricsType::PROPERTY_GET, 0);
        sqe.cdw10 = size8 as u32;
        sqe.cdw11 = offset;
        let (cqe, _) = self.admin_checked("Property Get", sqe, DataBuf::None)?;
        Ok(cqe.dw0 as u64 | ((cqe.dw1 as u64) << 32))
    }

    /// Fabrics Property Set of a 4-byte property.
    fn property_set(&self, offset: u32, value: u32) -> Result<(), Self::Error> {
        let mut sqe = SubmissionEntry::fabrics(FabricsType::PROPERTY_SET, 0);
        sqe.cdw11 = offset;
        sqe.cdw12 = value;
        self.admin_checked("Property Set", sqe, DataBuf::None)
            .map(|_| ())
    }

    /// CC.EN = 1, then CSTS.RDY within CAP.TO (`cap` as read at connect);
    /// CSTS.CFS on the way is an error.
    fn enable_controller(&self, cap: u64) -> Result<(), Self::Error> {
        self.property_set(PROP_CC, CC_ENABLE)?;
        wait_csts(self, ready_timeout(cap), "CSTS.RDY (CAP.TO)", |csts| {
            if csts & 0b10 != 0 {
                return Err(ControllerStateError::Fatal {
                    what: "enable (CSTS.CFS set)",
                    csts,
                });
            }
            Ok(csts & 1 != 0)
        })
    }

    /// Controller reset: CC.EN = 0, then CSTS.RDY clear within CAP.TO.
    /// A fabrics target answers the Property Set once its queues drained.
    fn disable_controller(&self, cap: u64) -> Result<(), Self::Error> {
        self.property_set(PROP_CC, CC_ENABLE & !1)?;
        wait_csts(
            self,
            ready_timeout(cap),
            "CSTS.RDY clear after reset",
            |csts| Ok(csts & 1 == 0),
        )
    }

    /// Normal shutdown: CC.SHN = 01b, then CSTS.SHST = 10b (complete)
    /// within `limit`.
    fn shutdown_controller(&self, limit: Duration) -> Result<(), Self::Error> {
        self.property_set(PROP_CC, CC_ENABLE | CC_SHN_NORMAL)?;
        wait_csts(self, limit, "CSTS.SHST complete", |csts| {
            Ok((csts >> 2) & 3 == 2)
        })
    }

    /// Set Features Number of Queues for `n` I/O queue pairs; returns how
    /// many the controller granted (the lesser of its two counts).
    fn set_number_of_queues(&self, n: u16) -> Result<u16, Self::Error> {
        let z = n.max(1) as u32 - 1;
        let (cqe, _) = self.admin_checked(
            "Set Features (Number of Queues)",
            set_features_sqe(0x07, z | (z << 16)),
            DataBuf::None,
        )?;
        Ok(((cqe.dw0 & 0xffff).min(cqe.dw0 >> 16).min(0xfffe) + 1) as u16)
    }

    /// The Changed Namespace List (log page 04h) an AER of
    /// [`is_namespace_notice`] points at.
    fn changed_namespaces(&self) -> Result<Vec<u32>, Self::Error> {
        let buf = self.get_log_page(0x04, 0, 4096, 0)?;
        Ok(ns_id_list(&buf))
    }

    /// Sends a Keep Alive now.
    fn keep_alive(&self) -> Result<(), Self::Error> {
        let sqe = SubmissionEntry::new(AdminOpcode::KEEP_ALIVE.0, 0);
        self.admin_checked("Keep Alive", sqe, DataBuf::None)
            .map(|_| ())
    }
}

/// NVM I/O commands over a host I/O queue pair.
pub trait NvmCommands {
    /// What a refused submission gives back.
    type SubmitError;

    /// Submits any command with the given buffer; the tag comes back with
    /// its completion. Returns the command identifier.
    fn submit_command(
        &mut self,
        sqe: SubmissionEntry,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, Self::SubmitError>;

    /// Submits a Read or Write (`opcode`) of `blocks` blocks at `lba`. What
    /// [`NvmCommands::read`] and [`NvmCommands::write`] share; a queue that
    /// can build the SQE where it goes (the loop host, in its ring slot)
    /// overrides this one method.
    #[inline]
    fn submit_rw(
        &mut self,
        opcode: NvmOpcode,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, Self::SubmitError> {
        self.submit_command(
            SubmissionEntry::nvm_rw(opcode.0, 0, nsid, lba, blocks),
            buf,
            tag,
        )
    }

    /// Reads `blocks` blocks at `lba` of namespace `nsid` into `buf`.
    #[inline]
    fn read(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, Self::SubmitError> {
        self.submit_rw(NvmOpcode::READ, nsid, lba, blocks, buf, tag)
    }

    /// Writes `blocks` blocks at `lba` from `buf`.
    #[inline]
    fn write(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, Self::SubmitError> {
        self.submit_rw(NvmOpcode::WRITE, nsid, lba, blocks, buf, tag)
    }

    /// Flushes the namespace's volatile write cache.
    fn flush(&mut self, nsid: u32, tag: u64) -> Result<u16, Self::SubmitError> {
        let mut sqe = SubmissionEntry::new(NvmOpcode::FLUSH.0, 0);
        sqe.nsid = nsid;
        self.submit_command(sqe, DataBuf::None, tag)
    }

    /// Writes zeros to `blocks` blocks at `lba`.
    fn write_zeroes(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        tag: u64,
    ) -> Result<u16, Self::SubmitError> {
        self.submit_command(
            SubmissionEntry::nvm_rw(NvmOpcode::WRITE_ZEROES.0, 0, nsid, lba, blocks),
            DataBuf::None,
            tag,
        )
    }

    /// Deallocates the ranges (Dataset Management with AD; at most 256).
    /// Allocates the range buffer: a control-path call, not a benchmark one.
    fn deallocate(
        &mut self,
        nsid: u32,
        ranges: &[DsmRange],
        tag: u64,
    ) -> Result<u16, Self::SubmitError> {
        let n = ranges.len().clamp(1, 256);
        let mut buf = DataBuf::One(IoBuf::new(n * 16));
        encode_dsm_ranges(&ranges[..n.min(ranges.len())], &mut buf);
        let mut sqe = SubmissionEntry::new(NvmOpcode::DATASET_MANAGEMENT.0, 0);
        sqe.nsid = nsid;
        sqe.cdw10 = (n as u32 - 1) & 0xff;
        sqe.cdw11 = 1 << 2;
        self.submit_command(sqe, buf, tag)
    }
}

/// A request to replace a host's association, tagged with the generation
/// it was made in, shared by the controller's poller and its queue pairs.
///
/// A plain flag is racy: a queue pair that read the old generation, then
/// saw no recovery running (the poller having just finished one), would
/// raise it again and have the brand-new association torn down for nothing
/// (one reset, two reconnects). Tagged, a request made in generation `g`
/// stops counting as soon as the association is `g + 1`.
#[derive(Debug, Default)]
pub struct RecoveryRequest(AtomicU32);

impl RecoveryRequest {
    /// Asks for the association current in `generation` to be replaced.
    pub fn request_current(&self, generation: &AtomicU32) {
        self.request(generation.load(Ordering::Acquire));
    }

    /// A replacement of the association current in `generation` was asked
    /// for.
    pub fn pending_current(&self, generation: &AtomicU32) -> bool {
        self.pending(generation.load(Ordering::Acquire))
    }

    /// Asks for association `generation` to be replaced (a no-op once it
    /// has been).
    pub fn request(&self, generation: u32) {
        self.0
            .fetch_max(generation.saturating_add(1), Ordering::AcqRel);
    }

    /// `true` while a request for the association now current
    /// (`generation`) is pending.
    pub fn pending(&self, generation: u32) -> bool {
        self.0.load(Ordering::Acquire) > generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A controller's properties behind `admin_checked`: CC as set, CSTS
    /// following it after `lag` reads, CFS when `fatal`.
    struct FakeCtrl {
        cc: RefCell<u32>,
        csts_reads: RefCell<u32>,
        lag: u32,
        fatal: bool,
        sets: RefCell<Vec<u32>>,
    }

    #[derive(Debug, PartialEq)]
    enum FakeErr {
        Unusable,
        State(ControllerStateError),
    }
    impl From<UnusableResponse> for FakeErr {
        fn from(_: UnusableResponse) -> Self {
            FakeErr::Unusable
        }
    }
    impl From<ControllerStateError> for FakeErr {
        fn from(e: ControllerStateError) -> Self {
            FakeErr::State(e)
        }
    }

    impl FakeCtrl {
        fn new(lag: u32, fatal: bool) -> Self {
            Self {
                cc: RefCell::new(0),
                csts_reads: RefCell::new(0),
                lag,
                fatal,
                sets: RefCell::new(Vec::new()),
            }
        }
    }

    impl AdminCommands for FakeCtrl {
        type Error = FakeErr;
        fn admin_checked(
            &self,
            _what: &'static str,
            sqe: SubmissionEntry,
            buf: DataBuf,
        ) -> Result<(CompletionEntry, DataBuf), FakeErr> {
            let mut cqe = CompletionEntry::default();
            match (sqe.fctype(), sqe.cdw11) {
                (FabricsType::PROPERTY_SET, PROP_CC) => {
                    *self.cc.borrow_mut() = sqe.cdw12;
                    *self.csts_reads.borrow_mut() = 0;
                    self.sets.borrow_mut().push(sqe.cdw12);
                }
                (FabricsType::PROPERTY_GET, PROP_CSTS) => {
                    let mut n = self.csts_reads.borrow_mut();
                    *n += 1;
                    let cc = *self.cc.borrow();
                    let settled = *n > self.lag;
                    let rdy = if settled { cc & 1 } else { 1 - (cc & 1) };
                    let shst = if settled && cc & CC_SHN_NORMAL != 0 {
                        2
                    } else {
                        0
                    };
                    cqe.dw0 = rdy | ((self.fatal as u32) << 1) | (shst << 2);
                }
                (FabricsType::PROPERTY_GET, PROP_CAP) => cqe.dw0 = 1 << 24,
                _ => {}
            }
            Ok((cqe, buf))
        }
    }

    #[test]
    fn enable_waits_for_ready_and_disable_for_not_ready() {
        let c = FakeCtrl::new(3, false);
        c.enable_controller(1 << 24).unwrap();
        assert_eq!(
            *c.csts_reads.borrow(),
            4,
            "three reads before RDY, then RDY"
        );
        c.disable_controller(1 << 24).unwrap();
        assert_eq!(*c.csts_reads.borrow(), 4);
        c.shutdown_controller(Duration::from_secs(5)).unwrap();
        assert_eq!(
            *c.sets.borrow(),
            vec![CC_ENABLE, CC_ENABLE & !1, CC_ENABLE | CC_SHN_NORMAL]
        );
    }

    #[test]
    fn enable_reports_a_fatal_controller_and_a_controller_that_never_gets_ready() {
        let c = FakeCtrl::new(0, true);
        assert_eq!(
            c.enable_controller(1 << 24),
            Err(FakeErr::State(ControllerStateError::Fatal {
                what: "enable (CSTS.CFS set)",
                csts: 0b11
            }))
        );
        // Never ready: CAP.TO = 1 (500 ms) runs out.
        let c = FakeCtrl::new(u32::MAX, false);
        assert_eq!(
            c.enable_controller(1 << 24),
            Err(FakeErr::State(ControllerStateError::Timeout(
                "CSTS.RDY (CAP.TO)"
            )))
        );
    }

    #[test]
    fn lists_host_ids_and_notices() {
        let mut b = IoBuf::new(4096);
        b.as_mut_slice()[..12].copy_from_slice(&[1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ns_id_list(&DataBuf::One(b)), vec![1, 7]);
        let a = host_id_for("nqn.2014-08.org.nvmexpress:uuid:a");
        assert_eq!(a, host_id_for("nqn.2014-08.org.nvmexpress:uuid:a"));
        // The last character alone (the FNV fold once used gave these one ID).
        assert_ne!(a, host_id_for("nqn.2014-08.org.nvmexpress:uuid:b"));
        assert_ne!(host_id_for("nqn.h:host1"), host_id_for("nqn.h:host2"));
        assert_eq!(a[0] & 1, 1, "never all zero");
        // Notice (2), Namespace Attribute Changed (0), log 04h.
        assert!(is_namespace_notice(0x0004_0002));
        assert!(!is_namespace_notice(0x0004_0102), "firmware activation");
        assert!(!is_namespace_notice(0x0004_0001), "error status");
    }

    #[test]
    fn a_request_made_in_an_old_generation_does_not_count_in_the_new_one() {
        let r = RecoveryRequest::default();
        assert!(!r.pending(0));
        r.request(0);
        assert!(r.pending(0));
        // The poller replaced association 0 with 1; a queue pair that saw
        // 0 end only now asks again: nothing is pending for 1.
        r.request(0);
        assert!(!r.pending(1));
        r.request(1);
        assert!(r.pending(1));
        r.request(0);
        assert!(r.pending(1));
        assert!(!r.pending(2));
    }
}
