//! What a transport hands the engine: capsules in, responses out.
//!
//! A transport is deliberately small (SPDK's `spdk_nvmf_transport_ops` in
//! spirit): the engine pulls capsules from a queue pair and pushes
//! responses back. [`QueueRings::pair`] is the in-memory implementation that the
//! loop transport and the engine's own tests use: two lock-free rings of
//! real 64-byte SQEs and 16-byte CQEs, with data buffers moved along by
//! ownership (zero copy).

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use rtrb::{Consumer, Producer, PushError, RingBuffer};

use crate::iobuf::DataBuf;
use crate::spec::{CompletionEntry, SubmissionEntry};

/// A command capsule: the SQE and the data it refers to.
#[derive(Debug)]
pub struct Capsule {
    /// The submission entry.
    pub sqe: SubmissionEntry,
    /// Data for the command: written from for host-to-controller transfers,
    /// read into for controller-to-host transfers.
    pub buf: DataBuf,
}

/// A response capsule: the CQE and the command's buffer, given back.
#[derive(Debug)]
pub struct Response {
    /// The completion entry.
    pub cqe: CompletionEntry,
    /// The buffer that came with the command.
    pub buf: DataBuf,
}

/// What Identify Controller tells a host about a transport's capsules
/// (NVMe-oF 1.1a §4.1, Base 2.0c Figure 275): the engine reports them, the
/// transport decides them (in memory there is no in-capsule data; over TCP
/// the listener's in-capsule data size sets IOCCSZ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsuleParams {
    /// IOCCSZ: I/O command capsule size in 16-byte units (4: the SQE only).
    pub ioccsz: u32,
    /// IORCSZ: I/O response capsule size in 16-byte units (1: the CQE).
    pub iorcsz: u32,
    /// ICDOFF: in-capsule data offset in 16-byte units.
    pub icdoff: u16,
    /// MSDBD: SGL data block descriptors per command at most.
    pub msdbd: u8,
    /// SGLS: SGL support bits (bit 0: SGLs supported; bit 20: SGL offset,
    /// i.e. in-capsule data addressed by an offset descriptor).
    pub sgls: u32,
}

impl Default for CapsuleParams {
    fn default() -> Self {
        Self {
            ioccsz: 4,
            iorcsz: 1,
            icdoff: 0,
            msdbd: 1,
            sgls: 1,
        }
    }
}

/// The target's end of a queue pair.
pub trait QpairTransport: Send + fmt::Debug {
    /// Capsule sizes and SGL support to advertise for controllers whose
    /// admin queue came over this transport.
    fn capsule_params(&self) -> CapsuleParams {
        CapsuleParams::default()
    }
    /// Takes the next submitted capsule, if any.
    fn recv(&mut self) -> Option<Capsule>;
    /// Posts a response. `Err` gives it back when the completion ring is full.
    fn send(&mut self, resp: Response) -> Result<(), Response>;
    /// The host has closed its end (transport-level disconnect).
    fn host_closed(&self) -> bool;
    /// Marks the queue closing: the host sees it and stops submitting.
    /// Capsules still in the ring stay there for [`QpairTransport::recv`].
    fn close(&mut self);
    /// Marks the queue destroyed: every response the target will ever send
    /// has been posted.
    fn finish(&mut self);
}

const LIVE: u8 = 0;
const TARGET_CLOSING: u8 = 1;
const HOST_CLOSED: u8 = 2;
const TARGET_DONE: u8 = 3;

/// What both ends of a queue pair share: its state, and the submission
/// ring's consumer once the target gives it back.
struct Shared {
    state: AtomicU8,
    returned_sq: Mutex<Option<Consumer<Capsule>>>,
}

/// The host's end of a queue pair: it produces submissions and consumes
/// completions. Each ring has exactly one producer and one consumer
/// (single-producer rings publish one index per operation instead of
/// fighting over shared counters, which is what makes the loop fast).
pub struct QueueRings {
    sq: Producer<Capsule>,
    cq: Consumer<Response>,
    reclaim: Option<Consumer<Capsule>>,
    shared: Arc<Shared>,
    entries: usize,
}

impl fmt::Debug for QueueRings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueRings")
            .field("entries", &self.entries)
            .field("state", &self.shared.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// A view of a queue pair's state that can be kept apart from its rings.
#[derive(Clone)]
pub struct RingState(Arc<Shared>);

impl fmt::Debug for RingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RingState")
            .field(&self.0.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl RingState {
    /// `true` once the target destroyed the queue and posted its last response.
    pub fn target_done(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == TARGET_DONE
    }
}

impl QueueRings {
    /// Rings for a queue of `entries` commands: the host's end and the
    /// target's. The completion ring has room for every command the
    /// submission ring can hold, so a target that only answers fetched
    /// commands can never find it full.
    pub fn pair(entries: usize) -> (Self, RingTransport) {
        let entries = entries.max(2);
        let (sq_p, sq_c) = RingBuffer::new(entries);
        let (cq_p, cq_c) = RingBuffer::new(entries + 1);
        let shared = Arc::new(Shared {
            state: AtomicU8::new(LIVE),
            returned_sq: Mutex::new(None),
        });
        (
            Self {
                sq: sq_p,
                cq: cq_c,
                reclaim: None,
                shared: shared.clone(),
                entries,
            },
            RingTransport {
                sq: Some(sq_c),
                cq: cq_p,
                shared,
            },
        )
    }

    /// Host side: submits a capsule. `Err` when the ring is full or the
    /// target has destroyed the queue.
    #[inline]
    pub fn submit(&mut self, c: Capsule) -> Result<(), Capsule> {
        if self.shared.state.load(Ordering::Acquire) != LIVE {
            return Err(c);
        }
        self.sq.push(c).map_err(|PushError::Full(c)| c)
    }

    /// Host side: takes the next response.
    #[inline]
    pub fn reap(&mut self) -> Option<Response> {
        self.cq.pop().ok()
    }

    /// Host side: takes back a capsule the target never fetched. Only
    /// after the target is done, when it has handed the submission ring's
    /// consumer back: each capsule is popped by exactly one side, so it is
    /// completed exactly once.
    pub fn reclaim(&mut self) -> Option<Capsule> {
        if self.reclaim.is_none() && self.target_done() {
            self.reclaim = self
                .shared
                .returned_sq
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }
        self.reclaim.as_mut()?.pop().ok()
    }

    /// Host side: closes the host's end (a transport disconnect).
    pub fn host_close(&self) {
        let _ = self.shared.state.compare_exchange(
            LIVE,
            HOST_CLOSED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// `true` once the target started destroying the queue: submissions
    /// are refused from now on.
    pub fn target_closed(&self) -> bool {
        matches!(
            self.shared.state.load(Ordering::Acquire),
            TARGET_CLOSING | TARGET_DONE
        )
    }

    /// `true` once the target destroyed the queue and posted its last
    /// response: what is left in the submission ring was never fetched.
    pub fn target_done(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == TARGET_DONE
    }

    /// `true` while neither side has closed the queue.
    pub fn is_live(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == LIVE
    }

    /// A state view to keep after the rings move elsewhere.
    pub fn state(&self) -> RingState {
        RingState(self.shared.clone())
    }

    /// Capacity of the submission ring.
    pub fn entries(&self) -> usize {
        self.entries
    }
}

/// The target's end of a queue pair.
pub struct RingTransport {
    sq: Option<Consumer<Capsule>>,
    cq: Producer<Response>,
    shared: Arc<Shared>,
}

impl fmt::Debug for RingTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingTransport")
            .field("state", &self.shared.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl QpairTransport for RingTransport {
    #[inline]
    fn recv(&mut self) -> Option<Capsule> {
        self.sq.as_mut()?.pop().ok()
    }

    #[inline]
    fn send(&mut self, resp: Response) -> Result<(), Response> {
        self.cq.push(resp).map_err(|PushError::Full(r)| r)
    }

    fn host_closed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == HOST_CLOSED
    }

    fn close(&mut self) {
        self.shared.state.store(TARGET_CLOSING, Ordering::Release);
    }

    fn finish(&mut self) {
        // Hand the submission ring's consumer to the host first, so that
        // when it sees DONE it can take back what was never fetched.
        let sq = self.sq.take();
        *self
            .shared
            .returned_sq
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = sq;
        self.shared.state.store(TARGET_DONE, Ordering::Release);
    }
}
