//! What a transport hands the engine: capsules in, responses out.
//!
//! A transport is deliberately small (SPDK's `spdk_nvmf_transport_ops` in
//! spirit): the engine pulls capsules from a queue pair and pushes
//! responses back. [`QueueRings`] is the in-memory implementation that the
//! loop transport and the engine's own tests use: two lock-free rings of
//! real 64-byte SQEs and 16-byte CQEs, with data buffers moved along by
//! ownership (zero copy).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crossbeam_queue::ArrayQueue;

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

/// The target's end of a queue pair.
pub trait QpairTransport: Send + fmt::Debug {
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

/// The two rings of one queue pair, shared by host and target.
pub struct QueueRings {
    sq: ArrayQueue<Capsule>,
    cq: ArrayQueue<Response>,
    state: AtomicU8,
}

impl fmt::Debug for QueueRings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueRings")
            .field("sq", &self.sq.len())
            .field("cq", &self.cq.len())
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl QueueRings {
    /// Rings for a queue of `entries` commands. The completion ring has room
    /// for every command the submission ring can hold, so a target that only
    /// answers fetched commands can never find it full.
    pub fn new(entries: usize) -> Arc<Self> {
        let entries = entries.max(2);
        Arc::new(Self {
            sq: ArrayQueue::new(entries),
            cq: ArrayQueue::new(entries + 1),
            state: AtomicU8::new(LIVE),
        })
    }

    /// Host side: submits a capsule. `Err` when the ring is full or the
    /// target has destroyed the queue.
    pub fn submit(&self, c: Capsule) -> Result<(), Capsule> {
        if self.state.load(Ordering::Acquire) != LIVE {
            return Err(c);
        }
        self.sq.push(c)
    }

    /// Host side: takes the next response.
    pub fn reap(&self) -> Option<Response> {
        self.cq.pop()
    }

    /// Host side: takes back a capsule the target never fetched (after the
    /// target destroyed the queue, or when the host closes it). Each capsule
    /// is popped by exactly one side, so it is completed exactly once.
    pub fn reclaim(&self) -> Option<Capsule> {
        self.sq.pop()
    }

    /// Host side: closes the host's end (a transport disconnect).
    pub fn host_close(&self) {
        let _ = self
            .state
            .compare_exchange(LIVE, HOST_CLOSED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// `true` once the target started destroying the queue: submissions
    /// are refused from now on.
    pub fn target_closed(&self) -> bool {
        matches!(
            self.state.load(Ordering::Acquire),
            TARGET_CLOSING | TARGET_DONE
        )
    }

    /// `true` once the target destroyed the queue and posted its last
    /// response: what is left in the submission ring was never fetched.
    pub fn target_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == TARGET_DONE
    }

    /// `true` while neither side has closed the queue.
    pub fn is_live(&self) -> bool {
        self.state.load(Ordering::Acquire) == LIVE
    }

    /// Capsules waiting to be fetched.
    pub fn sq_len(&self) -> usize {
        self.sq.len()
    }

    /// Capacity of the submission ring.
    pub fn entries(&self) -> usize {
        self.sq.capacity()
    }
}

/// The target's end of a [`QueueRings`].
#[derive(Debug)]
pub struct RingTransport {
    rings: Arc<QueueRings>,
}

impl RingTransport {
    /// Wraps the shared rings for the target.
    pub fn new(rings: Arc<QueueRings>) -> Self {
        Self { rings }
    }
}

impl QpairTransport for RingTransport {
    #[inline]
    fn recv(&mut self) -> Option<Capsule> {
        self.rings.sq.pop()
    }

    #[inline]
    fn send(&mut self, resp: Response) -> Result<(), Response> {
        self.rings.cq.push(resp)
    }

    fn host_closed(&self) -> bool {
        self.rings.state.load(Ordering::Acquire) == HOST_CLOSED
    }

    fn close(&mut self) {
        self.rings.state.store(TARGET_CLOSING, Ordering::Release);
    }

    fn finish(&mut self) {
        self.rings.state.store(TARGET_DONE, Ordering::Release);
    }
}
