//! Controllers: the per-host association state of a subsystem.
//!
//! The controller's registers (CC, CSTS), features and asynchronous-event
//! state are only touched by admin commands and control operations, so they
//! live behind a mutex. The I/O path reads nothing here except through the
//! queue pair's own copy of what it needs.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::subsystem::Subsystem;

/// Where a queue pair lives: its poll group, slot and generation. The
/// generation makes a stale reference harmless after the slot is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QpairRef {
    /// Poll group index.
    pub pg: usize,
    /// Slot in the poll group.
    pub idx: u32,
    /// Generation of the slot when the queue pair was created.
    pub generation: u32,
}

/// Why a controller is being torn down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeardownKind {
    /// CC.EN 1 → 0: delete I/O queues, keep the admin queue.
    Reset,
    /// CC.SHN set: delete I/O queues, report CSTS.SHST complete.
    Shutdown,
    /// The association ends: I/O queues, then the admin queue.
    Delete,
}

/// Values of the features a host can set (Base 2.0c §5.27.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureValues {
    /// Arbitration (FID 01h) dword 11.
    pub arbitration: u32,
    /// Power Management (FID 02h).
    pub power_management: u32,
    /// Temperature threshold (FID 04h), per TMPSEL/THSEL: index by
    /// (tmpsel * 2 + thsel).
    pub temperature_threshold: [u16; 18],
    /// Error Recovery (FID 05h).
    pub error_recovery: u32,
    /// Volatile Write Cache enable (FID 06h).
    pub write_cache: bool,
    /// Asynchronous Event Configuration (FID 0Bh).
    pub async_event_config: u32,
    /// Keep Alive Timeout in ms (FID 0Fh).
    pub kato_ms: u32,
    /// Host Identifier (FID 81h), 16 bytes (extended).
    pub host_id: [u8; 16],
}

impl FeatureValues {
    /// Defaults after a controller level reset.
    pub fn defaults(kato_ms: u32, host_id: [u8; 16], write_cache: bool) -> Self {
        let mut temperature_threshold = [0u16; 18];
        // Over-temperature threshold defaults to 0x157 K (70 °C) for the
        // composite sensor; under-temperature to 0 (disabled).
        temperature_threshold[0] = 0x157;
        Self {
            arbitration: 0,
            power_management: 0,
            temperature_threshold,
            error_recovery: 0,
            write_cache,
            async_event_config: 1 << 8, // namespace attribute notices on
            kato_ms,
            host_id,
        }
    }
}

/// One entry of the Error Information log, kept for Get Log Page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorRecord {
    /// Error count at the time (1-based, increasing).
    pub error_count: u64,
    /// Submission queue ID.
    pub sqid: u16,
    /// Command ID.
    pub cid: u16,
    /// Status field (without phase).
    pub status: u16,
    /// LBA of the failing command, if any.
    pub lba: u64,
    /// Namespace of the failing command.
    pub nsid: u32,
}

/// Mutable controller state.
#[derive(Debug)]
pub struct ControllerState {
    /// Controller Configuration property.
    pub cc: u32,
    /// Controller Status property.
    pub csts: u32,
    /// Feature values.
    pub features: FeatureValues,
    /// I/O queues granted by Set Features Number of Queues.
    pub io_queues_granted: u16,
    /// Host has set the number of queues (it may only do so once).
    pub io_queues_set: bool,
    /// I/O queue pairs by QID-1.
    pub io_qpairs: Vec<Option<QpairRef>>,
    /// Outstanding Asynchronous Event Request CIDs.
    pub aer_cids: VecDeque<u16>,
    /// Events waiting for an AER (completion dword 0 values).
    pub pending_events: VecDeque<u32>,
    /// Event types reported and not yet cleared by reading their log page.
    pub masked_events: u32,
    /// Changed Namespace List entries not yet read.
    pub changed_nsids: Vec<u32>,
    /// Error Information log, newest first.
    pub errors: VecDeque<ErrorRecord>,
    /// Errors ever recorded.
    pub error_count: u64,
    /// A teardown is under way.
    pub teardown: Option<TeardownKind>,
    /// Capsule parameters of the transport the association came over.
    pub capsule: super::transport::CapsuleParams,
}

/// A controller.
pub struct Controller {
    /// Controller ID.
    pub cntlid: u16,
    /// Its subsystem.
    pub subsys: Arc<Subsystem>,
    /// Host NQN of the association.
    pub hostnqn: String,
    /// Host identifier from Connect.
    pub hostid: [u8; 16],
    /// The admin queue pair.
    pub admin: QpairRef,
    /// CSTS.RDY, readable without the lock by I/O queue connects.
    ready: AtomicBool,
    /// Failed to its host (stage 3 of a teardown: a backend kept commands
    /// after its reset). CSTS.CFS is set; the admin queue answers only
    /// Property Get from then on. Never cleared: the association must end.
    failed: AtomicBool,
    /// Time of the last Keep Alive, in ms since the target's epoch.
    last_keep_alive_ms: AtomicU64,
    state: Mutex<ControllerState>,
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cntlid)
            .field("subsys", &self.subsys.nqn)
            .field("hostnqn", &self.hostnqn)
            .finish()
    }
}

/// Maximum outstanding Asynchronous Event Requests (AERL is this minus 1).
pub const AER_LIMIT: usize = 4;
/// Error Information log entries kept.
pub const ERROR_LOG_ENTRIES: usize = 64;

/// CSTS bits.
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown status: processing occurring.
    pub const SHST_OCCURRING: u32 = 1 << 2;
    /// Shutdown status: processing complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;
    /// Shutdown status mask.
    pub const SHST_MASK: u32 = 3 << 2;
}

impl Controller {
    /// A new, disabled controller.
    pub fn new(
        cntlid: u16,
        subsys: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        admin: QpairRef,
        kato_ms: u32,
        now_ms: u64,
    ) -> Self {
        Self {
            cntlid,
            subsys,
            hostnqn,
            hostid,
            admin,
            ready: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            last_keep_alive_ms: AtomicU64::new(now_ms),
            state: Mutex::new(ControllerState {
                cc: 0,
                csts: 0,
                features: FeatureValues::defaults(kato_ms, hostid, true),
                io_queues_granted: 0,
                io_queues_set: false,
                io_qpairs: Vec::new(),
                aer_cids: VecDeque::new(),
                pending_events: VecDeque::new(),
                masked_events: 0,
                changed_nsids: Vec::new(),
                errors: VecDeque::new(),
                error_count: 0,
                teardown: None,
                capsule: Default::default(),
            }),
        }
    }

    /// Locks the state; a poisoned lock is recovered (plain data).
    pub fn state(&self) -> MutexGuard<'_, ControllerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// CSTS.RDY.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Sets CSTS.RDY in both the register and the lock-free flag.
    pub fn set_ready(&self, st: &mut ControllerState, ready: bool) {
        if ready {
            st.csts |= csts::RDY;
        } else {
            st.csts &= !csts::RDY;
        }
        self.ready.store(ready, Ordering::Release);
    }

    /// `true` once the controller was failed to its host.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Fails the controller to its host: CSTS.CFS = 1, and from now on its
    /// admin queue answers Property Get only, so the host's recovery (keep
    /// alive or command timeout, or a CSTS check) ends the association.
    /// Returns `false` if it had already failed.
    pub fn fail(&self) -> bool {
        let mut st = self.state();
        st.csts |= csts::CFS;
        !self.failed.swap(true, Ordering::AcqRel)
    }

    /// Records a Keep Alive (or other admin traffic).
    pub fn touch_keep_alive(&self, now_ms: u64) {
        self.last_keep_alive_ms.store(now_ms, Ordering::Relaxed);
    }

    /// `true` when the keep-alive timer has run out.
    pub fn keep_alive_expired(&self, now_ms: u64, kato_ms: u32) -> bool {
        kato_ms != 0
            && now_ms.saturating_sub(self.last_keep_alive_ms.load(Ordering::Relaxed))
                > kato_ms as u64
    }

    /// Adds an entry to the Error Information log.
    pub fn record_error(&self, mut rec: ErrorRecord) {
        let mut st = self.state();
        st.error_count += 1;
        rec.error_count = st.error_count;
        st.errors.push_front(rec);
        st.errors.truncate(ERROR_LOG_ENTRIES);
    }
}

/// Asynchronous event completion dword 0 (Base 2.0c Figure 146): type in
/// bits 2:0, information in 15:8, log page in 23:16.
pub fn async_event_dw0(event_type: u8, info: u8, log_page: u8) -> u32 {
    (event_type as u32 & 7) | ((info as u32) << 8) | ((log_page as u32) << 16)
}

/// Event type Notice (2) with information Namespace Attribute Changed (0),
/// pointing at the Changed Namespace List log (04h).
pub const AEN_NS_ATTR_CHANGED: u32 = 0x0004_0002;
