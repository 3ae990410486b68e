//! Controller bring-up, admin commands, I/O queue management, reset,
//! shutdown and failure handling (NVMe Base 2.0c §3.5 and §7.6).
//!
//! Locking: the admin queue and every I/O queue pair sit behind their own
//! mutex. Admin paths (open, reset, shutdown, queue creation) take the admin
//! lock first, then queue locks in qid order; the I/O path takes only its
//! queue's lock, which nobody else takes unless queues are shared or a
//! reset/shutdown is running.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use target_core::bdev::{BdevIo, IoError};
use target_core::spec::{AdminOpcode, SubmissionEntry};

use crate::dma::{DmaPool, DmaRegion, DmaSpace, PAGE, with_space};
use crate::error::DriverError;
use crate::hotplug::RemovalWatch;
use crate::identify::{ControllerIdentity, NamespaceIdentity, active_nsids};
use crate::mmio::{Bar, MmioError};
use crate::quarantine::{Held, Quarantine, Reaped};
use crate::queue::{Completion, QueueLayout, QueuePair};
use crate::regs::{self, Cap};
use crate::reset::ResetMachine;
use crate::vfio::PciFunction;

/// Largest transfer this driver puts in one command, whatever MDTS says:
/// 2 MiB fits one PRP-list page per request slot.
pub const MAX_COMMAND_BYTES: usize = 2 << 20;
/// Admin queue entries.
pub const ADMIN_QUEUE_ENTRIES: u16 = 32;

/// Longest a reset or shutdown waits for the controller to report every
/// announced submission entry fetched before disabling it (see
/// `NvmeController::settle_fetches`).
pub(crate) const FETCH_SETTLE_TIMEOUT: Duration = Duration::from_millis(500);

/// Tunables for [`NvmeController::open`].
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Entries per I/O queue (capped by CAP.MQES).
    pub io_queue_entries: u16,
    /// I/O queue pairs to ask the controller for.
    pub max_io_queues: u16,
    /// Bounce area per I/O queue pair, for buffers without an IOVA.
    pub bounce_bytes: usize,
    /// Completions taken per poll of one queue.
    pub max_completions_per_poll: usize,
    /// Wait for one admin command.
    pub admin_timeout: Duration,
    /// An I/O outstanding this long is aborted (Abort command); twice this
    /// long, the controller is reset.
    pub io_timeout: Duration,
    /// How long reset and shutdown wait for in-flight I/O to drain before
    /// disabling the controller under it (0: do not wait). The escalation
    /// started by `IoChannel::reset` does not wait again: its caller
    /// already waited for its own bound.
    pub drain_timeout: Duration,
    /// After `IoChannel::reset` sent Abort for a channel's commands, how
    /// long they may stay outstanding before the controller is reset.
    pub abort_timeout: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            io_queue_entries: 256,
            max_io_queues: 64,
            bounce_bytes: 4 << 20,
            max_completions_per_poll: 64,
            admin_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            abort_timeout: Duration::from_millis(500),
        }
    }
}

/// An active namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Namespace ID.
    pub nsid: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Deallocated blocks read back as zeros.
    pub dealloc_reads_zero: bool,
}

/// Controller state, as seen by the I/O path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CtrlState {
    /// Enabled and serving I/O.
    Running = 0,
    /// A reset is re-initialising the controller.
    Resetting = 1,
    /// Quiescing for shutdown: new I/O is refused.
    ShuttingDown = 2,
    /// Shut down (CC.SHN done); `reset()` brings it back.
    Shutdown = 3,
    /// Fatal status or removed: I/O fails with `DeviceFailed`.
    Failed = 4,
}

impl CtrlState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Running,
            1 => Self::Resetting,
            2 => Self::ShuttingDown,
            3 => Self::Shutdown,
            _ => Self::Failed,
        }
    }
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Resetting => "resetting",
            Self::ShuttingDown => "shutting down",
            Self::Shutdown => "shut down",
            Self::Failed => "failed",
        }
    }
}

/// An I/O queue pair and the completions taken off it, waiting for the
/// channel they belong to.
#[derive(Debug)]
pub(crate) struct IoQueue {
    pub qp: QueuePair,
    /// (token, result) completions not yet handed to their channel.
    pub done: Vec<(u64, Result<(), IoError>)>,
    /// I/Os of channels that ended while their commands were still at the
    /// controller (see `quarantine.rs`).
    pub quarantine: Quarantine<BdevIo>,
    /// A reset disabled (or is about to disable) the controller: nobody
    /// touches the rings or hands out completions until the queue exists
    /// again on the device.
    pub frozen: bool,
}

impl IoQueue {
    pub(crate) fn new(qp: QueuePair) -> Self {
        Self {
            done: Vec::with_capacity(qp.capacity()),
            qp,
            quarantine: Quarantine::default(),
            frozen: false,
        }
    }

    /// Takes up to `max` completions off the CQ into `done`; completions
    /// of quarantined I/Os release them instead.
    pub(crate) fn poll(&mut self, bar: &Bar, max: usize, k: &Counters) -> Result<usize, MmioError> {
        let IoQueue { qp, done, .. } = self;
        let n = qp.poll(bar, max, |c| {
            done.push((c.token, crate::bdev::status_result(c.status)))
        })?;
        if n > 0 && !self.quarantine.is_empty() {
            self.sweep(k);
        }
        Ok(n)
    }

    /// After the controller was disabled (or lost bus mastering): completes
    /// every outstanding command with `err` and releases the whole
    /// quarantine. Returns the commands completed.
    pub(crate) fn abort_all(&mut self, err: IoError, k: &Counters) -> usize {
        let IoQueue { qp, done, .. } = self;
        let n = qp.reset_after_disable(|t| done.push((t, Err(err))));
        if !self.quarantine.is_empty() {
            self.sweep(k);
            for h in self.quarantine.release_all() {
                self.release(h, k);
            }
        }
        n
    }

    /// Moves the quarantined tokens' completions out of `done`.
    fn sweep(&mut self, k: &Counters) {
        let mut i = 0;
        while i < self.done.len() {
            let token = self.done[i].0;
            match self.quarantine.complete(token) {
                Reaped::NotHeld => i += 1,
                Reaped::StillHeld => {
                    let _ = self.done.swap_remove(i);
                }
                Reaped::Released(h) => {
                    let _ = self.done.swap_remove(i);
                    self.release(h, k);
                }
            }
        }
    }

    fn release(&mut self, h: Held<BdevIo>, k: &Counters) {
        if let Some((off, bytes)) = h.bounce {
            self.qp.bounce_free(off, bytes);
        }
        // Dropping the request gives its buffer back to its pool.
        drop(h.item);
        k.quarantined_now.fetch_sub(1, Ordering::Relaxed);
        k.quarantine_released.fetch_add(1, Ordering::Relaxed);
    }

    /// Quarantines an I/O whose channel ends with `remaining` of its
    /// commands still at the controller.
    pub(crate) fn quarantine(&mut self, token: u64, h: Held<BdevIo>, k: &Counters) {
        if let Some(h) = self.quarantine.hold(token, h) {
            if let Some((off, bytes)) = h.bounce {
                self.qp.bounce_free(off, bytes);
            }
            return;
        }
        k.quarantined_now.fetch_add(1, Ordering::Relaxed);
        k.quarantined_total.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct SharedQueue {
    pub qid: u16,
    pub q: Mutex<IoQueue>,
    users: AtomicUsize,
}

impl SharedQueue {
    pub fn lock(&self) -> MutexGuard<'_, IoQueue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
pub(crate) struct Admin {
    pub qp: QueuePair,
    /// 4 KiB data buffer for Identify and friends.
    buf: DmaRegion,
    /// Completions of commands submitted without waiting (token != 0),
    /// until their submitter looks for them.
    pub done: Vec<Completion>,
    /// Token of the next command submitted without waiting.
    next_token: u64,
    /// Tokens of Abort commands in flight (nobody waits for them).
    aborts: Vec<u64>,
}

/// Recovery events, counted so that operators (and tests) can tell a
/// healthy controller from one that keeps timing out.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    timeouts: AtomicU64,
    aborts_sent: AtomicU64,
    pub resets: AtomicU64,
    pub resets_done: AtomicU64,
    pub last_reset_us: AtomicU64,
    pub longest_reset_poll_us: AtomicU64,
    pub quarantined_now: AtomicU64,
    pub quarantined_total: AtomicU64,
    pub quarantine_released: AtomicU64,
}

/// A snapshot of a controller's recovery counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControllerCounters {
    /// I/O commands seen outstanding longer than `io_timeout`.
    pub timeouts: u64,
    /// Abort commands sent for them.
    pub aborts_sent: u64,
    /// Controller resets started (by request or by escalation).
    pub resets: u64,
    /// Controller resets that brought the controller back to running.
    pub resets_done: u64,
    /// How long the last successful reset took, start to running, in µs.
    pub last_reset_us: u64,
    /// The longest time one poll spent advancing a reset, in µs (what a
    /// reactor gave to it at once; register accesses included, which an
    /// emulated controller may serve slowly).
    pub longest_reset_poll_us: u64,
    /// I/Os held in quarantine now: their channel ended while the
    /// controller still had their commands, so their buffers and bounce
    /// ranges wait for the completion or for the controller's disable.
    pub quarantined: u64,
    /// I/Os ever put in quarantine.
    pub quarantined_total: u64,
    /// I/Os released from quarantine (`quarantined_total - quarantined`).
    pub quarantine_released: u64,
}

/// A user-space NVMe controller.
pub struct NvmeController {
    // Drop order matters: queues (DMA memory) are dropped after Drop::drop
    // disabled the controller; the PCI function (BAR, device fd) last.
    pub(crate) admin: Mutex<Admin>,
    pub(crate) ioqs: Mutex<Vec<Arc<SharedQueue>>>,
    pub(crate) state: AtomicU8,
    granted_queues: AtomicU32,
    next_channel: AtomicU32,
    /// Channels open now.
    channels: AtomicUsize,
    /// Admin commands in flight that nobody waits for (Abort).
    admin_pending: AtomicUsize,
    /// The controller reset in progress, advanced by polls (`reset.rs`).
    pub(crate) resetting: Mutex<Option<ResetMachine>>,
    pub(crate) counters: Counters,
    pub(crate) cap: Cap,
    opts: ControllerOptions,
    identity: ControllerIdentity,
    namespaces: Vec<NamespaceInfo>,
    space: Arc<DmaSpace>,
    /// Device request (hot removal) listener; see `hotplug.rs`.
    removal: RemovalWatch,
    pci: PciFunction,
}

impl std::fmt::Debug for NvmeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeController")
            .field("addr", &self.pci.addr())
            .field("serial", &self.identity.serial)
            .field("state", &self.state())
            .finish()
    }
}

fn wait_for(
    bar: &Bar,
    addr: &str,
    what: &'static str,
    timeout: Duration,
    mut done: impl FnMut(u32) -> bool,
) -> Result<(), DriverError> {
    let start = Instant::now();
    loop {
        let csts = bar.read32_present(regs::CSTS)?;
        if done(csts) {
            return Ok(());
        }
        if csts & regs::CSTS_CFS != 0 && what != "CSTS.RDY=0" {
            return Err(DriverError::ControllerFailed {
                addr: addr.into(),
                reason: "CSTS.CFS set",
            });
        }
        if start.elapsed() > timeout {
            return Err(DriverError::Timeout {
                addr: addr.into(),
                what,
                ms: timeout.as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

impl NvmeController {
    /// Opens the NVMe controller at PCI address `pci_addr` (for example
    /// `0000:00:04.0`, bound to vfio-pci), brings it up and identifies it.
    pub fn open(pci_addr: &str, opts: ControllerOptions) -> Result<Arc<Self>, DriverError> {
        let (pci, space) = with_space(|c| PciFunction::open(pci_addr, c))?;
        let bar = pci.bar0();
        let cap = Cap(bar.read64(regs::CAP)?);
        if !cap.css_nvm() {
            return Err(DriverError::Unsupported {
                addr: pci_addr.into(),
                reason: "controller does not support the NVM command set".into(),
            });
        }
        if cap.mps_min_shift() > 12 {
            return Err(DriverError::Unsupported {
                addr: pci_addr.into(),
                reason: format!("minimum page size 2^{} above 4 KiB", cap.mps_min_shift()),
            });
        }
        let admin = Admin {
            qp: QueuePair::new(
                &space,
                0,
                QueueLayout {
                    entries: ADMIN_QUEUE_ENTRIES,
                    prp_pages: 1,
                    bounce_bytes: 0,
                },
                cap.dstrd(),
            )?,
            buf: DmaRegion::new(&space, PAGE)?,
            done: Vec::new(),
            next_token: 1,
            aborts: Vec::new(),
        };
        let mut ctrl = Self {
            admin: Mutex::new(admin),
            ioqs: Mutex::new(Vec::new()),
            state: AtomicU8::new(CtrlState::Resetting as u8),
            granted_queues: AtomicU32::new(0),
            next_channel: AtomicU32::new(1),
            channels: AtomicUsize::new(0),
            admin_pending: AtomicUsize::new(0),
            resetting: Mutex::new(None),
            counters: Counters::default(),
            cap,
            opts,
            identity: ControllerIdentity::default(),
            namespaces: Vec::new(),
            space,
            removal: RemovalWatch::register(&pci),
            pci,
        };
        {
            let mut adm = ctrl.admin.lock().unwrap_or_else(|p| p.into_inner());
            ctrl.disable(&adm)?;
            ctrl.enable(&mut adm)?;
            let page = ctrl.identify(&mut adm, 1, 0)?;
            let identity = ControllerIdentity::parse(&page);
            let granted = ctrl.set_queue_count(&mut adm)?;
            let list = ctrl.identify(&mut adm, 2, 0)?;
            let mut namespaces = Vec::new();
            for nsid in active_nsids(&list) {
                let n = NamespaceIdentity::parse(&ctrl.identify(&mut adm, 0, nsid)?);
                if n.nsze == 0 || n.metadata != 0 || !(9..=16).contains(&n.lba_shift) {
                    tracing::warn!(nsid, ?n, "namespace skipped (unsupported format)");
                    continue;
                }
                namespaces.push(NamespaceInfo {
                    nsid,
                    blocks: n.nsze,
                    block_size: n.block_size(),
                    dealloc_reads_zero: n.dealloc_reads_zero,
                });
            }
            drop(adm);
            ctrl.identity = identity;
            ctrl.namespaces = namespaces;
            ctrl.granted_queues.store(granted as u32, Ordering::Relaxed);
        }
        ctrl.state
            .store(CtrlState::Running as u8, Ordering::Release);
        tracing::info!(
            addr = pci_addr,
            serial = %ctrl.identity.serial,
            model = %ctrl.identity.model,
            mdts = ctrl.identity.mdts,
            namespaces = ctrl.namespaces.len(),
            "NVMe controller ready"
        );
        Ok(Arc::new(ctrl))
    }

    /// The PCI address.
    pub fn pci_addr(&self) -> &str {
        self.pci.addr()
    }

    /// Identify Controller fields.
    pub fn identity(&self) -> &ControllerIdentity {
        &self.identity
    }

    /// Active namespaces with a supported format (no metadata, 512 B..64 KiB blocks).
    pub fn namespaces(&self) -> &[NamespaceInfo] {
        &self.namespaces
    }

    /// Current state.
    pub fn state(&self) -> CtrlState {
        CtrlState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// I/O queue pairs the controller granted.
    pub fn granted_io_queues(&self) -> u32 {
        self.granted_queues.load(Ordering::Relaxed)
    }

    /// I/O queue pairs created so far.
    pub fn io_queues_created(&self) -> usize {
        self.ioqs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The options it was opened with.
    pub fn options(&self) -> &ControllerOptions {
        &self.opts
    }

    /// Largest transfer of one command in bytes (MDTS, capped by the driver).
    pub fn max_command_bytes(&self) -> usize {
        let mdts = self.identity.mdts as u32;
        let by_mdts = if mdts == 0 || mdts > 20 {
            usize::MAX
        } else {
            PAGE << mdts
        };
        by_mdts.min(MAX_COMMAND_BYTES)
    }

    /// A pool of `count` DMA buffers of `buf_size` bytes, usable with any
    /// controller of this process (one IOMMU domain).
    pub fn dma_pool(&self, buf_size: usize, count: usize) -> Result<Arc<DmaPool>, DriverError> {
        DmaPool::new(&self.space, buf_size, count)
    }

    pub(crate) fn bar(&self) -> &Bar {
        self.pci.bar0()
    }

    pub(crate) fn removal(&self) -> &RemovalWatch {
        &self.removal
    }

    pub(crate) fn pci(&self) -> &PciFunction {
        &self.pci
    }

    fn lock_admin(&self) -> MutexGuard<'_, Admin> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The admin queue if nobody holds it (pollers never wait for it).
    pub(crate) fn try_lock_admin(&self) -> Option<MutexGuard<'_, Admin>> {
        match self.admin.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    pub(crate) fn addr(&self) -> String {
        self.pci.addr().to_owned()
    }

    /// CC.EN = 0 and wait for CSTS.RDY = 0 (bounded by CAP.TO).
    fn disable(&self, _adm: &Admin) -> Result<(), DriverError> {
        let bar = self.bar();
        let to = Duration::from_millis(self.cap.timeout_ms().max(500));
        let cc = bar.read32(regs::CC)?;
        let csts = bar.read32_present(regs::CSTS)?;
        if cc & regs::CC_EN != 0 && csts & regs::CSTS_RDY == 0 && csts & regs::CSTS_CFS == 0 {
            // Enabling in progress: let it finish before disabling.
            let _ = wait_for(bar, self.pci.addr(), "CSTS.RDY=1", to, |s| {
                s & regs::CSTS_RDY != 0
            });
        }
        bar.write32(regs::CC, cc & !regs::CC_EN)?;
        wait_for(bar, self.pci.addr(), "CSTS.RDY=0", to, |s| {
            s & regs::CSTS_RDY == 0
        })
    }

    /// Programs the admin queue and enables (controller must be disabled).
    fn enable(&self, adm: &mut Admin) -> Result<(), DriverError> {
        let bar = self.bar();
        self.admin_forget_all(adm);
        self.start_enable(adm)?;
        let to = Duration::from_millis(self.cap.timeout_ms().max(500));
        wait_for(bar, self.pci.addr(), "CSTS.RDY=1", to, |s| {
            s & regs::CSTS_RDY != 0
        })
    }

    /// Runs one admin command to completion; returns CQE dword 0.
    fn admin_cmd(
        &self,
        adm: &mut Admin,
        sqe: SubmissionEntry,
        with_buf: bool,
    ) -> Result<u32, DriverError> {
        let bar = self.bar();
        let segs = [(adm.buf.iova(0), PAGE)];
        let segs: &[(u64, usize)] = if with_buf { &segs } else { &[] };
        let opcode = sqe.opcode();
        adm.qp
            .submit(sqe, segs, 0)
            .map_err(|e| DriverError::Dma(format!("admin submit: {e:?}")))?;
        adm.qp.ring(bar)?;
        let start = Instant::now();
        loop {
            let mut result = None;
            let Admin { qp, done, .. } = adm;
            qp.poll(bar, usize::MAX, |c| {
                if c.token == 0 {
                    result = Some(c)
                } else {
                    done.push(c)
                }
            })?;
            if !adm.done.is_empty() {
                self.forget_aborts(adm);
            }
            if let Some(c) = result {
                if !c.status.is_success() {
                    return Err(DriverError::AdminCommand {
                        addr: self.addr(),
                        opcode,
                        status: c.status,
                    });
                }
                return Ok(c.dw0);
            }
            if start.elapsed() > self.opts.admin_timeout {
                let csts = bar.read32_present(regs::CSTS)?;
                if csts & regs::CSTS_CFS != 0 {
                    return Err(DriverError::ControllerFailed {
                        addr: self.addr(),
                        reason: "CSTS.CFS set",
                    });
                }
                return Err(DriverError::Timeout {
                    addr: self.addr(),
                    what: "admin command completion",
                    ms: self.opts.admin_timeout.as_millis() as u64,
                });
            }
            std::hint::spin_loop();
        }
    }

    /// Submits an admin command without waiting; returns its token. Find
    /// its completion in `adm.done` after [`NvmeController::admin_reap`].
    pub(crate) fn admin_submit(
        &self,
        adm: &mut Admin,
        sqe: SubmissionEntry,
    ) -> Result<u64, DriverError> {
        let token = adm.next_token;
        adm.next_token = adm.next_token.wrapping_add(1).max(1);
        adm.qp
            .submit(sqe, &[], token)
            .map_err(|e| DriverError::Dma(format!("admin submit: {e:?}")))?;
        adm.qp.ring(self.bar())?;
        Ok(token)
    }

    /// Takes the admin completions posted so far into `adm.done`; drops
    /// those of Abort commands (logged).
    pub(crate) fn admin_reap(&self, adm: &mut Admin) -> Result<(), DriverError> {
        let Admin { qp, done, .. } = adm;
        qp.poll(self.bar(), usize::MAX, |c| done.push(c))?;
        self.forget_aborts(adm);
        Ok(())
    }

    fn forget_aborts(&self, adm: &mut Admin) {
        let Admin { done, aborts, .. } = adm;
        done.retain(|c| {
            let Some(i) = aborts.iter().position(|&t| t == c.token) else {
                return true;
            };
            aborts.swap_remove(i);
            self.admin_pending.fetch_sub(1, Ordering::Relaxed);
            // Bit 0 of dword 0: the command was not aborted.
            tracing::debug!(status = %c.status, not_aborted = c.dw0 & 1, "abort completed");
            false
        });
    }

    /// After the controller was disabled: the admin queue starts empty,
    /// and nobody waits for what it held.
    pub(crate) fn admin_forget_all(&self, adm: &mut Admin) {
        adm.qp.reset_after_disable(|_| ());
        adm.done.clear();
        adm.aborts.clear();
        self.admin_pending.store(0, Ordering::Relaxed);
    }

    /// Programs the admin queue registers and sets CC.EN = 1 (controller
    /// disabled, admin queue empty); does not wait for CSTS.RDY.
    pub(crate) fn start_enable(&self, adm: &Admin) -> Result<(), DriverError> {
        let bar = self.bar();
        bar.write32(regs::INTMS, u32::MAX)?;
        bar.write32(regs::AQA, regs::aqa_value(adm.qp.entries()))?;
        bar.write64(regs::ASQ, adm.qp.sq_iova())?;
        bar.write64(regs::ACQ, adm.qp.cq_iova())?;
        bar.write32(regs::CC, regs::cc_enable_value())?;
        Ok(())
    }

    fn identify(&self, adm: &mut Admin, cns: u8, nsid: u32) -> Result<Vec<u8>, DriverError> {
        let mut sqe = SubmissionEntry::new(AdminOpcode::IDENTIFY.0, 0);
        sqe.nsid = nsid;
        sqe.cdw10 = cns as u32;
        adm.buf.fill(0, PAGE, 0);
        self.admin_cmd(adm, sqe, true)?;
        let mut out = vec![0u8; PAGE];
        adm.buf.copy_out(0, &mut out);
        Ok(out)
    }

    /// Set Features / Number of Queues; returns the pairs granted.
    fn set_queue_count(&self, adm: &mut Admin) -> Result<u16, DriverError> {
        let dw0 = self.admin_cmd(adm, self.queue_count_sqe(), false)?;
        Ok(self.queues_granted(dw0))
    }

    /// Set Features / Number of Queues for `opts.max_io_queues`.
    pub(crate) fn queue_count_sqe(&self) -> SubmissionEntry {
        let want = self.opts.max_io_queues.clamp(1, 0xfffe) as u32;
        let mut sqe = SubmissionEntry::new(AdminOpcode::SET_FEATURES.0, 0);
        sqe.cdw10 = 0x07;
        sqe.cdw11 = (want - 1) | ((want - 1) << 16);
        sqe
    }

    /// The pairs granted, from Number of Queues' completion dword 0.
    pub(crate) fn queues_granted(&self, dw0: u32) -> u16 {
        let want = self.opts.max_io_queues.clamp(1, 0xfffe) as u32;
        let nsq = (dw0 & 0xffff) + 1;
        let ncq = (dw0 >> 16) + 1;
        nsq.min(ncq).min(want) as u16
    }

    fn create_io_queue(&self, adm: &mut Admin, qp: &QueuePair) -> Result<(), DriverError> {
        self.admin_cmd(adm, create_sqe(qp, false), false)?;
        self.admin_cmd(adm, create_sqe(qp, true), false)?;
        Ok(())
    }

    fn delete_io_queue(&self, adm: &mut Admin, qid: u16) -> Result<(), DriverError> {
        let mut sq = SubmissionEntry::new(AdminOpcode::DELETE_IO_SQ.0, 0);
        sq.cdw10 = qid as u32;
        self.admin_cmd(adm, sq, false)?;
        let mut cq = SubmissionEntry::new(AdminOpcode::DELETE_IO_CQ.0, 0);
        cq.cdw10 = qid as u32;
        self.admin_cmd(adm, cq, false)?;
        Ok(())
    }

    /// A queue pair for a new channel: a fresh one while the controller
    /// grants more, else the least used existing one (shared).
    pub(crate) fn acquire_queue(&self) -> Result<Arc<SharedQueue>, DriverError> {
        let state = self.state();
        if state != CtrlState::Running {
            return Err(DriverError::NotRunning {
                addr: self.addr(),
                state: state.name(),
            });
        }
        let mut adm = self.lock_admin();
        // A reset may have started meanwhile; it takes the admin queue
        // before it looks at the queue list.
        let state = self.state();
        if state != CtrlState::Running {
            return Err(DriverError::NotRunning {
                addr: self.addr(),
                state: state.name(),
            });
        }
        let mut ioqs = self.ioqs.lock().unwrap_or_else(|p| p.into_inner());
        let granted = self.granted_queues.load(Ordering::Relaxed) as usize;
        if ioqs.len() < granted {
            let qid = ioqs.len() as u16 + 1;
            let entries = (self.opts.io_queue_entries as u32)
                .min(self.cap.max_queue_entries())
                .clamp(2, 4096) as u16;
            let max_entries = self.max_command_bytes() / PAGE + 1;
            let layout = QueueLayout {
                entries,
                prp_pages: crate::prp::list_pages_needed(max_entries).max(1),
                bounce_bytes: self
                    .opts
                    .bounce_bytes
                    .max(self.max_command_bytes())
                    .next_multiple_of(PAGE),
            };
            let qp = QueuePair::new(&self.space, qid, layout, self.cap.dstrd())?;
            tracing::debug!(qid, huge = qp.is_huge(), "I/O queue pair memory");
            self.create_io_queue(&mut adm, &qp)?;
            let q = Arc::new(SharedQueue {
                qid,
                q: Mutex::new(IoQueue::new(qp)),
                users: AtomicUsize::new(1),
            });
            ioqs.push(q.clone());
            return Ok(q);
        }
        let q = ioqs
            .iter()
            .min_by_key(|q| q.users.load(Ordering::Relaxed))
            .cloned()
            .ok_or_else(|| DriverError::Unsupported {
                addr: self.addr(),
                reason: "controller granted no I/O queues".into(),
            })?;
        q.users.fetch_add(1, Ordering::Relaxed);
        Ok(q)
    }

    /// A channel let go of `q`; returns the channels still open.
    pub(crate) fn release_queue(&self, q: &SharedQueue) -> usize {
        q.users.fetch_sub(1, Ordering::Relaxed);
        self.channels.fetch_sub(1, Ordering::AcqRel) - 1
    }

    pub(crate) fn new_channel_id(&self) -> u32 {
        self.channels.fetch_add(1, Ordering::AcqRel);
        self.next_channel.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the controller failed (fatal status or removal) and stops it
    /// from doing DMA, so in-flight I/O can be failed safely.
    pub(crate) fn fail(&self, reason: &'static str) {
        let prev = self.state.swap(CtrlState::Failed as u8, Ordering::AcqRel);
        if prev != CtrlState::Failed as u8 {
            tracing::error!(addr = self.pci.addr(), reason, "NVMe controller failed");
            let bar = self.bar();
            if let Ok(cc) = bar.read32(regs::CC) {
                let _ = bar.write32(regs::CC, cc & !regs::CC_EN);
            }
            let _ = self.pci.disable_bus_master();
        }
    }

    /// Reads CSTS; fails the controller on CFS or all ones. Returns `true`
    /// when the controller looks healthy.
    pub(crate) fn health_check(&self) -> bool {
        match self.bar().read32_present(regs::CSTS) {
            Ok(c) if c & regs::CSTS_CFS != 0 => {
                self.fail("CSTS.CFS set");
                false
            }
            Ok(_) => true,
            Err(MmioError::DeviceGone { .. }) => {
                self.fail("registers read all ones (surprise removal)");
                false
            }
            Err(_) => false,
        }
    }

    /// Recovery and quarantine counters so far.
    pub fn counters(&self) -> ControllerCounters {
        let c = &self.counters;
        ControllerCounters {
            timeouts: c.timeouts.load(Ordering::Relaxed),
            aborts_sent: c.aborts_sent.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            resets_done: c.resets_done.load(Ordering::Relaxed),
            last_reset_us: c.last_reset_us.load(Ordering::Relaxed),
            longest_reset_poll_us: c.longest_reset_poll_us.load(Ordering::Relaxed),
            quarantined: c.quarantined_now.load(Ordering::Relaxed),
            quarantined_total: c.quarantined_total.load(Ordering::Relaxed),
            quarantine_released: c.quarantine_released.load(Ordering::Relaxed),
        }
    }

    /// Bounce bytes allocated now over every I/O queue pair (in use by
    /// commands in flight or quarantined). Takes every queue's lock: for
    /// accounting and tests, not for the I/O path.
    pub fn bounce_in_use(&self) -> usize {
        let ioqs: Vec<Arc<SharedQueue>> =
            self.ioqs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ioqs.iter().map(|q| q.lock().qp.bounce_in_use()).sum()
    }

    /// The controller-level poller: advances a reset in progress, reaps the
    /// completions of Abort commands, and reaps the queues that hold
    /// quarantined I/O (so that their buffers come back even when no
    /// channel uses the queue any more). Never waits for a lock. Channels
    /// call it from their own polls; a service may call it from a poller
    /// of its own. Returns `true` while a reset is in progress.
    pub fn poll_admin(&self) -> bool {
        let resetting = self.advance_reset();
        if !resetting && self.admin_pending.load(Ordering::Relaxed) > 0 {
            self.reap_aborts();
        }
        if !resetting && self.counters.quarantined_now.load(Ordering::Relaxed) > 0 {
            self.reap_quarantine();
        }
        resetting
    }

    fn reap_aborts(&self) {
        if let Some(mut adm) = self.try_lock_admin()
            && let Err(e) = self.admin_reap(&mut adm)
        {
            tracing::warn!("admin queue: {e}");
        }
    }

    /// Polls the queues that hold quarantined I/O; returns the I/Os still
    /// quarantined afterwards.
    pub fn reap_quarantine(&self) -> u64 {
        let k = &self.counters;
        let state = self.state();
        if k.quarantined_now.load(Ordering::Relaxed) == 0
            || !matches!(state, CtrlState::Running | CtrlState::Failed)
        {
            return k.quarantined_now.load(Ordering::Relaxed);
        }
        let ioqs: Vec<Arc<SharedQueue>> = match self.ioqs.try_lock() {
            Ok(g) => g.clone(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().clone(),
            Err(TryLockError::WouldBlock) => return k.quarantined_now.load(Ordering::Relaxed),
        };
        for q in &ioqs {
            let mut g = match q.q.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            if g.quarantine.is_empty() || g.frozen {
                continue;
            }
            if state == CtrlState::Failed {
                // Disabled, bus mastering off: nothing can DMA any more.
                g.abort_all(IoError::DeviceFailed, k);
                continue;
            }
            if g.poll(self.bar(), usize::MAX, k).is_err() {
                drop(g);
                self.health_check();
                break;
            }
        }
        k.quarantined_now.load(Ordering::Relaxed)
    }

    /// Counts an I/O command found outstanding past `io_timeout`.
    pub(crate) fn note_timeout(&self) {
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Submits Abort for command `cid` of queue `qid` without waiting for
    /// it (best effort: `false` when the admin queue is busy or full, or
    /// the controller is not running). Its completion is reaped by
    /// [`NvmeController::poll_admin`].
    pub(crate) fn abort_command(&self, qid: u16, cid: u16) -> bool {
        if self.state() != CtrlState::Running {
            return false;
        }
        let Some(mut adm) = self.try_lock_admin() else {
            return false;
        };
        if let Err(e) = self.admin_reap(&mut adm) {
            tracing::warn!(qid, cid, "abort: {e}");
            return false;
        }
        let mut sqe = SubmissionEntry::new(AdminOpcode::ABORT.0, 0);
        sqe.cdw10 = (cid as u32) << 16 | qid as u32;
        match self.admin_submit(&mut adm, sqe) {
            Ok(t) => {
                adm.aborts.push(t);
                self.admin_pending.fetch_add(1, Ordering::Relaxed);
                self.counters.aborts_sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!(qid, cid, "abort: {e}");
                false
            }
        }
    }

    /// Waits (bounded by `drain_timeout`) until no I/O queue has commands
    /// outstanding, reaping completions on the channels' behalf. Returns the
    /// number still outstanding.
    fn drain(&self) -> usize {
        let ioqs: Vec<Arc<SharedQueue>> =
            self.ioqs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let deadline = Instant::now() + self.opts.drain_timeout;
        loop {
            let mut busy = 0;
            for q in &ioqs {
                let mut g = q.lock();
                if g.poll(self.bar(), usize::MAX, &self.counters).is_err() {
                    self.fail("register access failed while draining");
                }
                busy += g.qp.active();
            }
            if busy == 0 || self.state() == CtrlState::Failed || Instant::now() >= deadline {
                if busy > 0 {
                    tracing::warn!(busy, "commands still outstanding after drain");
                }
                return busy;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// With every queue locked (no doorbell moves any more): waits, bounded
    /// by [`FETCH_SETTLE_TIMEOUT`], until the controller has reported through
    /// the SQ Head Pointer of a posted completion that it fetched every entry
    /// the host announced. Completions are only looked at, not taken: what
    /// is outstanding stays outstanding for the disable that follows, which
    /// completes it with [`IoError::Aborted`].
    ///
    /// The spec allows CC.EN = 0 (or CC.SHN) at any time; this wait is for
    /// QEMU's NVMe model (hw/nvme/ctrl.c, seen with QEMU 7.2.22; the reset
    /// code is the same upstream). Its `nvme_ctrl_reset` drains the
    /// namespaces' block backends and only then frees the SQs, without first
    /// stopping SQ processing. When an SQ doorbell came just before CC.EN = 0
    /// and the SQ bottom half has not run yet, it runs inside that drain and
    /// fetches the new entries; the block layer parks requests issued in a
    /// drained section, so the drain returns without them and `nvme_free_sq`
    /// frees their `NvmeRequest`s. When they complete, QEMU dies with SIGSEGV
    /// in `nvme_rw_complete_cb` (called from `dma_complete` under
    /// `blk_aio_write_entry`), or, if it survives, writes data to the disk
    /// after the host was told the command was aborted. With nothing left to
    /// fetch, the bottom half finds the SQ empty.
    fn settle_fetches(&self, guards: &[MutexGuard<'_, IoQueue>]) {
        let bar = self.bar();
        let deadline = Instant::now() + FETCH_SETTLE_TIMEOUT;
        loop {
            let unfetched: usize = guards.iter().map(|g| g.qp.unfetched()).sum();
            if unfetched == 0 {
                return;
            }
            let failed = bar
                .read32_present(regs::CSTS)
                .map_or(true, |c| c & regs::CSTS_CFS != 0);
            if failed || Instant::now() >= deadline {
                tracing::warn!(
                    unfetched,
                    failed,
                    "disabling with submission entries not reported fetched"
                );
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    pub(crate) fn lock_all<'a>(ioqs: &'a [Arc<SharedQueue>]) -> Vec<MutexGuard<'a, IoQueue>> {
        ioqs.iter().map(|q| q.lock()).collect()
    }

    /// Controller reset for callers off the reactors (admin tools, tests):
    /// starts the same polled escalation as `IoChannel::reset` (see
    /// `reset.rs`) with a drain of up to `drain_timeout` first, and polls it
    /// to the end here. Commands still outstanding at CC.EN = 0 are
    /// completed with [`IoError::Aborted`] (each exactly once, on their
    /// channel's next poll); quarantined I/O is released. The controller is
    /// then re-enabled and every I/O queue pair re-created. Also brings a
    /// shut-down controller back. Blocks the calling thread: never call it
    /// on a reactor.
    pub fn reset(&self) -> Result<(), DriverError> {
        self.start_reset(self.opts.drain_timeout)?;
        self.finish_reset()
    }

    /// Normal shutdown: refuse new I/O, drain in-flight I/O (bounded by
    /// `drain_timeout`), delete the I/O queues, CC.SHN = 01b and wait for
    /// CSTS.SHST = 10b, then disable. Commands still outstanding after the
    /// drain are completed with [`IoError::Aborted`] once the controller is
    /// disabled. [`NvmeController::reset`] brings the controller back.
    pub fn shutdown(&self) -> Result<(), DriverError> {
        match self.state() {
            CtrlState::Shutdown => return Ok(()),
            CtrlState::Failed => {
                return Err(DriverError::NotRunning {
                    addr: self.addr(),
                    state: "failed",
                });
            }
            CtrlState::Resetting => {
                // Let the reset in progress end first.
                let _ = self.finish_reset();
                if self.state() == CtrlState::Failed {
                    return Err(DriverError::NotRunning {
                        addr: self.addr(),
                        state: "failed",
                    });
                }
            }
            _ => {}
        }
        self.state
            .store(CtrlState::ShuttingDown as u8, Ordering::Release);
        self.drain();
        let mut adm = self.lock_admin();
        let ioqs = self.ioqs.lock().unwrap_or_else(|p| p.into_inner());
        let mut guards = Self::lock_all(&ioqs);
        let r = (|| {
            if self.state() == CtrlState::Failed {
                return Err(DriverError::ControllerFailed {
                    addr: self.addr(),
                    reason: "failed during shutdown",
                });
            }
            if guards.iter().all(|g| g.qp.active() == 0) {
                for g in guards.iter().rev() {
                    self.delete_io_queue(&mut adm, g.qp.qid())?;
                }
            } else {
                self.settle_fetches(&guards);
            }
            let bar = self.bar();
            let cc = bar.read32(regs::CC)?;
            bar.write32(regs::CC, (cc & !regs::CC_SHN_MASK) | regs::CC_SHN_NORMAL)?;
            let to = Duration::from_millis(self.cap.timeout_ms().max(5000));
            wait_for(bar, self.pci.addr(), "CSTS.SHST=10b", to, |s| {
                s & regs::CSTS_SHST_MASK == regs::CSTS_SHST_COMPLETE
            })?;
            self.disable(&adm)
        })();
        // The controller no longer does DMA (disabled, or failed with bus
        // mastering off): give back what it still held.
        if r.is_err() {
            self.fail("shutdown failed");
        }
        for g in guards.iter_mut() {
            g.abort_all(IoError::Aborted, &self.counters);
        }
        if r.is_ok() {
            self.state
                .store(CtrlState::Shutdown as u8, Ordering::Release);
        }
        r
    }
}

impl Drop for NvmeController {
    fn drop(&mut self) {
        if self.pci.is_closed() {
            // Hot-removed: disabled and given back already (hotplug.rs).
            return;
        }
        // Every channel is gone (they hold an Arc). Shut down cleanly, and
        // in any case make sure the device cannot DMA before the queues'
        // memory is unmapped.
        if matches!(self.state(), CtrlState::Running | CtrlState::Resetting)
            && let Err(e) = self.shutdown()
        {
            tracing::warn!("shutdown on drop: {e}");
        }
        let adm = self.lock_admin();
        if self.disable(&adm).is_err() {
            let _ = self.pci.disable_bus_master();
        }
    }
}

/// Create I/O Completion Queue (`sq == false`) or Create I/O Submission
/// Queue for `qp`: physically contiguous, interrupts disabled.
pub(crate) fn create_sqe(qp: &QueuePair, sq: bool) -> SubmissionEntry {
    let qsize = (qp.entries() as u32 - 1) << 16 | qp.qid() as u32;
    if sq {
        let mut e = SubmissionEntry::new(AdminOpcode::CREATE_IO_SQ.0, 0);
        e.cdw10 = qsize;
        e.cdw11 = (qp.qid() as u32) << 16 | 1;
        e.dptr[0] = qp.sq_iova();
        e
    } else {
        let mut e = SubmissionEntry::new(AdminOpcode::CREATE_IO_CQ.0, 0);
        e.cdw10 = qsize;
        e.cdw11 = 1;
        e.dptr[0] = qp.cq_iova();
        e
    }
}
