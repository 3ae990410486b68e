//! What a transport hands the engine: capsules in, responses out.
//!
//! A transport is deliberately small (SPDK's `spdk_nvmf_transport_ops` in
//! spirit): the engine pulls capsules from a queue pair and pushes
//! responses back. [`QueueRings::pair`] is the in-memory implementation that the
//! loop transport and the engine's own tests use: two lock-free rings of
//! real SQEs and CQEs, with data buffers moved along by ownership (zero
//! copy). A submission travels as a [`RingCapsule`]: the SQE with the
//! buffer where its MPTR and DPTR would be, one cache line.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::doorbell_ring::{Consumer, Producer, Remains, Vacant, ring};

use crate::iobuf::{DataBuf, IoBuf};
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

/// A capsule as the in-memory rings carry it: the SQE's dwords 0–3 and
/// 10–15, and the buffer in the 24 bytes of MPTR and DPTR. Those say where
/// a command's data lies in memory the target reaches by address (PRPs,
/// SGL descriptors); in memory the data comes with the command as `buf`,
/// so the rings never carry them and a submission fills one cache line
/// instead of one and a half. Across two cores that line is a trip between
/// them per command (README, seventh round).
#[repr(C, align(64))]
#[derive(Debug)]
pub struct RingCapsule {
    /// CDW0, NSID, CDW2, CDW3.
    head: [u32; 4],
    /// The command's data (see [`Capsule::buf`]).
    pub buf: DataBuf,
    /// CDW10 to CDW15.
    tail: [u32; 6],
}

const _: () = assert!(std::mem::size_of::<RingCapsule>() == 64);
const _: () = assert!(std::mem::offset_of!(RingCapsule, buf) == 16);

impl RingCapsule {
    /// `sqe` without its MPTR and DPTR, and `buf`.
    #[inline(always)]
    pub fn new(sqe: &SubmissionEntry, buf: DataBuf) -> Self {
        Self {
            head: [sqe.cdw0, sqe.nsid, sqe.cdw2, sqe.cdw3],
            buf,
            tail: [
                sqe.cdw10, sqe.cdw11, sqe.cdw12, sqe.cdw13, sqe.cdw14, sqe.cdw15,
            ],
        }
    }

    /// The SQE, with MPTR and DPTR zero.
    #[inline(always)]
    pub fn sqe(&self) -> SubmissionEntry {
        let [cdw0, nsid, cdw2, cdw3] = self.head;
        let [cdw10, cdw11, cdw12, cdw13, cdw14, cdw15] = self.tail;
        SubmissionEntry {
            cdw0,
            nsid,
            cdw2,
            cdw3,
            mptr: 0,
            dptr: [0; 2],
            cdw10,
            cdw11,
            cdw12,
            cdw13,
            cdw14,
            cdw15,
        }
    }

    /// The capsule the engine works with elsewhere.
    pub fn into_capsule(self) -> Capsule {
        Capsule {
            sqe: self.sqe(),
            buf: self.buf,
        }
    }
}

/// A response as the in-memory rings carry it: 32 bytes, two to a cache
/// line where a [`Response`] takes 40. Across two cores each response line
/// is a trip between them, so the bytes count (README, eighth round).
///
/// The CQE's SQHD and SQID stay behind. The ring is the queue, so the SQ
/// ID is known where the response arrives; and the rings keep their own
/// flow control (the consumer's head), so SQ Head Pointer reports nothing
/// a loop host needs; Linux's nvme-loop host ignores it too. A loop
/// host's completions read SQHD 0.
///
/// DW1 is zero but for a Property Get of an 8-byte property, on the admin
/// queue. It then travels in the buffer's place, packed into a small
/// buffer of its own ahead of the command's (if any), and the Phase Tag
/// bit, which means nothing in a ring, says so: one predictable test on
/// the reaping side, where a variant of its own cost ~30 instructions per
/// I/O in decoding and moves (measured).
#[repr(C)]
#[derive(Debug)]
pub struct RingResponse {
    dw0: u32,
    cid: u16,
    /// Status Field as in the CQE; bit 0 (the Phase Tag there): DW1 is
    /// packed in `buf`.
    status: u16,
    buf: DataBuf,
}

const _: () = assert!(std::mem::size_of::<RingResponse>() == 32);

/// `status` bit 0 of a [`RingResponse`]: DW1 is packed in its buffer.
const DW1_PACKED: u16 = 1;

impl RingResponse {
    /// `resp` without SQHD and SQID.
    #[inline(always)]
    pub fn new(resp: Response) -> Self {
        let Response { cqe, buf } = resp;
        if cqe.dw1 != 0 {
            return Self::packed(cqe, buf);
        }
        Self::plain(&cqe, buf)
    }

    /// The response of a CQE whose DW1 is zero (every I/O command's).
    #[inline(always)]
    fn plain(cqe: &CompletionEntry, buf: DataBuf) -> Self {
        Self {
            dw0: cqe.dw0,
            cid: cqe.cid,
            status: cqe.status & !DW1_PACKED,
            buf,
        }
    }

    /// DW1 in a buffer of its own: its 4 bytes and the shape of the
    /// command's buffer, which follows it.
    #[cold]
    fn packed(cqe: CompletionEntry, buf: DataBuf) -> Self {
        let [a, b, c, d] = cqe.dw1.to_le_bytes();
        let (shape, rest) = match buf {
            DataBuf::None => (0, Vec::new()),
            DataBuf::One(x) => (1, vec![x]),
            DataBuf::Many(v) => (2, v.into_vec()),
        };
        let mut all = vec![IoBuf::from_slice(&[a, b, c, d, shape])];
        all.extend(rest);
        Self {
            dw0: cqe.dw0,
            cid: cqe.cid,
            status: cqe.status | DW1_PACKED,
            buf: DataBuf::many(all),
        }
    }

    /// The CQE (SQHD 0, SQID `sqid`) of a response without a packed DW1
    /// (every I/O response), its buffer left where it lies for the caller
    /// to move once, straight to where it goes ([`RingResponse::buf_mut`]).
    /// `None` for a packed DW1, which [`RingResponse::take`] unpacks.
    #[inline(always)]
    pub fn plain_cqe(&self, sqid: u16) -> Option<CompletionEntry> {
        if self.status & DW1_PACKED != 0 {
            return None;
        }
        Some(self.cqe(sqid))
    }

    /// The CQE as the slot holds it: DW1 0, the packed flag as it is.
    #[inline(always)]
    fn cqe(&self, sqid: u16) -> CompletionEntry {
        CompletionEntry {
            dw0: self.dw0,
            dw1: 0,
            sqhd: 0,
            sqid,
            cid: self.cid,
            status: self.status,
        }
    }

    /// The buffer, in the slot.
    #[inline(always)]
    pub fn buf_mut(&mut self) -> &mut DataBuf {
        &mut self.buf
    }

    /// The CQE (SQHD 0, SQID `sqid`) and the buffer, moved out: what is
    /// left owns nothing.
    #[inline(always)]
    pub fn take(&mut self, sqid: u16) -> (CompletionEntry, DataBuf) {
        let mut cqe = self.cqe(sqid);
        let mut buf = std::mem::take(&mut self.buf);
        if cqe.status & DW1_PACKED != 0 {
            (cqe.dw1, buf) = Self::unpack(buf);
            cqe.status &= !DW1_PACKED;
        }
        (cqe, buf)
    }

    #[cold]
    fn unpack(buf: DataBuf) -> (u32, DataBuf) {
        let mut all = match buf {
            DataBuf::Many(v) => v.into_vec(),
            DataBuf::One(x) => vec![x],
            DataBuf::None => Vec::new(),
        };
        if all.is_empty() {
            return (0, DataBuf::None);
        }
        let head = all.remove(0);
        let Some(&[a, b, c, d, shape]) = head.as_slice().get(..5) else {
            // Not packed by `packed` (no target writes one): give it all back.
            all.insert(0, head);
            return (0, DataBuf::many(all));
        };
        let buf = match (shape, all.len()) {
            (0, _) => DataBuf::None,
            (1, 1) => DataBuf::One(all.remove(0)),
            _ => DataBuf::many(all),
        };
        (u32::from_le_bytes([a, b, c, d]), buf)
    }

    /// The response, SQHD 0 and SQID `sqid`.
    pub fn into_response(mut self, sqid: u16) -> Response {
        let (cqe, buf) = self.take(sqid);
        Response { cqe, buf }
    }
}

impl Remains for RingResponse {
    #[inline]
    fn is_spent(&self) -> bool {
        matches!(self.buf, DataBuf::None)
    }
}

/// A response capsule: the CQE and the command's buffer, given back.
#[derive(Debug)]
pub struct Response {
    /// The completion entry.
    pub cqe: CompletionEntry,
    /// The buffer that came with the command.
    pub buf: DataBuf,
}

// A response is 40 bytes (CQE and a 24-byte buffer; the rings carry 32,
// see `RingResponse`), a capsule 88 (the SQE alone is one cache line).
const _: () = assert!(std::mem::size_of::<Response>() == 40);
const _: () = assert!(std::mem::size_of::<Capsule>() == 88);

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

impl Remains for RingCapsule {
    #[inline]
    fn is_spent(&self) -> bool {
        matches!(self.buf, DataBuf::None)
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
    /// How many capsules `recv` will return without waiting, when the
    /// transport knows (the rings do; a socket does not: `usize::MAX`).
    /// The engine fetches that many, so its loop ends on a count.
    fn ready(&mut self) -> usize {
        usize::MAX
    }
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
    /// Publishes what `recv` took and `send` posted since the last call:
    /// the poll group calls it once per queue pair and pass, so a transport
    /// that batches its doorbells (the in-memory rings) writes each index
    /// once per batch rather than once per command.
    fn publish(&mut self) {}
}

const LIVE: u8 = 0;
const TARGET_CLOSING: u8 = 1;
const HOST_CLOSED: u8 = 2;
const TARGET_DONE: u8 = 3;

/// What both ends of a queue pair share: its state, and the submission
/// ring's consumer once the target gives it back. On lines of its own: the
/// host reads `state` on every submission, and a heap neighbour the target
/// writes per command (its end of the rings, allocated right after) would
/// turn that read into a cache-line transfer, in some runs and not others.
#[repr(align(128))]
struct Shared {
    state: AtomicU8,
    returned_sq: Mutex<Option<Consumer<RingCapsule>>>,
}

/// The host's end of a queue pair: it produces submissions and consumes
/// completions. Each ring has exactly one producer and one consumer, and
/// each publishes its index once per batch (a doorbell) rather than per
/// entry: that, not fighting over shared counters, makes the loop fast.
pub struct QueueRings {
    sq: Producer<RingCapsule>,
    /// `None` only while lent out ([`QueueRings::take_cq`]).
    cq: Option<Consumer<RingResponse>>,
    reclaim: Option<Consumer<RingCapsule>>,
    shared: Arc<Shared>,
    entries: usize,
    /// The SQ ID reaped CQEs report: the rings do not carry it
    /// ([`RingResponse`]). 0 (the admin queue) until
    /// [`QueueRings::set_sqid`].
    sqid: u16,
}

impl fmt::Debug for QueueRings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueRings")
            .field("entries", &self.entries)
            .field("state", &self.shared.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// The target publishes a completion ring's tail at least every this
/// many responses within a pass (and at the pass's end), so a host on
/// another core reaps a long batch's first responses while the rest are
/// written. Two cores, QD 128 (64-response batches), at a vCPU placement
/// with ~400 ns round trips: +8 % IOPS in alternating runs, +13 % in a
/// profiling build; at ~100 ns no change measurable (README, tenth
/// round). Every 16 on both rings was 5 % slower at ~100 ns.
const CQ_PUBLISH_EVERY: usize = 32;

/// A free slot of a submission ring ([`QueueRings::sq_slot`]).
#[derive(Debug)]
pub struct SqSlot<'a>(Vacant<'a, RingCapsule>);

impl SqSlot<'_> {
    /// Writes the capsule of `sqe` and `buf`, unpublished (the doorbell,
    /// [`QueueRings::ring_doorbell`], shows it to the target).
    #[inline(always)]
    pub fn fill(self, sqe: &SubmissionEntry, buf: DataBuf) {
        self.0.write(RingCapsule::new(sqe, buf));
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
        let (sq_p, sq_c) = ring(entries);
        let (cq_p, cq_c) = ring(entries + 1);
        let shared = Arc::new(Shared {
            state: AtomicU8::new(LIVE),
            returned_sq: Mutex::new(None),
        });
        (
            Self {
                sq: sq_p,
                cq: Some(cq_c),
                reclaim: None,
                shared: shared.clone(),
                entries,
                sqid: 0,
            },
            RingTransport {
                sq: Some(sq_c),
                cq: cq_p,
                shared,
            },
        )
    }

    /// Host side: submits a capsule and rings the doorbell. `Err` when the
    /// ring is full or the target has destroyed the queue.
    #[inline]
    pub fn submit(&mut self, c: Capsule) -> Result<(), Capsule> {
        self.submit_deferred(c)?;
        self.sq.publish();
        Ok(())
    }

    /// Host side: writes a capsule into the ring without ringing the
    /// doorbell: the target sees it after [`QueueRings::ring_doorbell`].
    #[inline]
    pub fn submit_deferred(&mut self, c: Capsule) -> Result<(), Capsule> {
        match self.sq_slot() {
            Some(slot) => {
                slot.fill(&c.sqe, c.buf);
                Ok(())
            }
            None => Err(c),
        }
    }

    /// Host side: the submission ring's next slot, when the queue is live
    /// and the ring has room; `None` otherwise ([`QueueRings::is_live`]
    /// tells which). Filling it cannot fail, so a caller keeps its buffer
    /// until it knows the command goes, and then moves it once, into the
    /// slot, with the SQE built there too.
    #[inline(always)]
    pub fn sq_slot(&mut self) -> Option<SqSlot<'_>> {
        if self.shared.state.load(Ordering::Acquire) != LIVE {
            return None;
        }
        self.sq.vacant().map(SqSlot)
    }

    /// Host side: makes every capsule submitted so far visible to the target.
    #[inline]
    pub fn ring_doorbell(&mut self) {
        self.sq.publish();
    }

    /// Host side: takes the next response. The slot goes back to the
    /// target every few responses and at [`QueueRings::release_cq`].
    #[inline]
    pub fn reap(&mut self) -> Option<Response> {
        let sqid = self.sqid;
        self.cq.as_mut()?.pop().map(|r| r.into_response(sqid))
    }

    /// Names the queue these rings serve, for the SQ ID of reaped CQEs.
    pub fn set_sqid(&mut self, sqid: u16) {
        self.sqid = sqid;
    }

    /// Host side: responses waiting to be reaped.
    #[inline]
    pub fn ready_responses(&mut self) -> usize {
        self.cq.as_mut().map_or(0, |c| c.available())
    }

    /// Host side: gives every reaped completion slot back to the target
    /// (the CQ head doorbell).
    #[inline]
    pub fn release_cq(&mut self) {
        if let Some(c) = self.cq.as_mut() {
            c.release();
        }
    }

    /// Host side: lends out the completion ring's consumer, so a reap loop
    /// can work on each response where it lies
    /// ([`super::doorbell_ring::Consumer::pop_with`]) while it updates the
    /// rest of the queue pair. Give it back with [`QueueRings::put_cq`];
    /// until then `reap` finds nothing.
    #[inline]
    pub fn take_cq(&mut self) -> Option<Consumer<RingResponse>> {
        self.cq.take()
    }

    /// Returns what [`QueueRings::take_cq`] lent out.
    #[inline]
    pub fn put_cq(&mut self, cq: Consumer<RingResponse>) {
        self.cq = Some(cq);
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
        self.reclaim.as_mut()?.pop().map(RingCapsule::into_capsule)
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

/// The target's end of a queue pair. Aligned to its own lines: the target
/// writes its ring indices here per command, and no host-read neighbour may
/// share them.
#[repr(align(128))]
pub struct RingTransport {
    sq: Option<Consumer<RingCapsule>>,
    cq: Producer<RingResponse>,
    shared: Arc<Shared>,
}

impl fmt::Debug for RingTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingTransport")
            .field("state", &self.shared.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl RingTransport {
    /// [`QpairTransport::send`] of a CQE and a buffer passed apart: only
    /// the buffer goes to `push_with` (to come back if the ring is full),
    /// so the CQE's fields stay in registers and the entry is built in its
    /// slot. A whole `Response` passed in was copied through the stack
    /// first: ~40 instructions per I/O on the completion path, measured.
    #[inline(always)]
    fn send_cqe(&mut self, cqe: CompletionEntry, buf: DataBuf) -> Result<(), Response> {
        if cqe.dw1 != 0 {
            return self.cq.push_with(Response { cqe, buf }, RingResponse::new);
        }
        self.cq
            .push_with(buf, |buf| RingResponse::plain(&cqe, buf))
            .map_err(|buf| Response { cqe, buf })?;
        self.cq.publish_every(CQ_PUBLISH_EVERY);
        Ok(())
    }
}

impl QpairTransport for RingTransport {
    #[inline]
    fn recv(&mut self) -> Option<Capsule> {
        self.sq.as_mut()?.pop().map(RingCapsule::into_capsule)
    }

    #[inline]
    fn ready(&mut self) -> usize {
        self.sq.as_mut().map_or(0, |c| c.available())
    }

    #[inline]
    fn send(&mut self, resp: Response) -> Result<(), Response> {
        self.send_cqe(resp.cqe, resp.buf)
    }

    #[inline]
    fn publish(&mut self) {
        if let Some(sq) = self.sq.as_mut() {
            sq.release();
        }
        self.cq.publish();
    }

    fn host_closed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == HOST_CLOSED
    }

    fn close(&mut self) {
        self.publish();
        self.shared.state.store(TARGET_CLOSING, Ordering::Release);
    }

    fn finish(&mut self) {
        // Every response posted is published before DONE. The submission
        // ring's consumer goes to the host first, so that when it sees DONE
        // it can take back what was never fetched (from the consumer's own
        // head: what the target took stays taken).
        self.publish();
        let sq = self.sq.take();
        *self
            .shared
            .returned_sq
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = sq;
        self.shared.state.store(TARGET_DONE, Ordering::Release);
    }
}

/// A queue pair's transport end as the engine holds it: the in-memory rings
/// by value, so their `recv`/`send` inline into the fetch and completion
/// loops (no indirect call per command, no capsule copied through a return
/// slot), and any other transport behind its trait object.
#[derive(Debug)]
pub enum QpTransport {
    /// The loop transport's rings.
    Ring(RingTransport),
    /// Any other transport (NVMe/TCP...).
    Other(Box<dyn QpairTransport>),
}

impl From<RingTransport> for QpTransport {
    fn from(r: RingTransport) -> Self {
        QpTransport::Ring(r)
    }
}

impl From<Box<dyn QpairTransport>> for QpTransport {
    fn from(t: Box<dyn QpairTransport>) -> Self {
        QpTransport::Other(t)
    }
}

macro_rules! dispatch {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            QpTransport::Ring($t) => $e,
            QpTransport::Other($t) => $e,
        }
    };
}

impl QpTransport {
    /// See [`QpairTransport::capsule_params`].
    pub fn capsule_params(&self) -> CapsuleParams {
        dispatch!(self, t => t.capsule_params())
    }
    /// See [`QpairTransport::recv`].
    #[inline]
    pub fn recv(&mut self) -> Option<Capsule> {
        dispatch!(self, t => t.recv())
    }
    /// The rings' submission consumer, lent out for an in-place fetch loop
    /// ([`super::doorbell_ring::Consumer::pop_with`]); `None` for other
    /// transports and once the rings were finished. Give it back with
    /// [`QpTransport::put_ring_sq`] before anything else uses the queue.
    #[inline]
    pub fn take_ring_sq(&mut self) -> Option<Consumer<RingCapsule>> {
        match self {
            QpTransport::Ring(t) => t.sq.take(),
            QpTransport::Other(_) => None,
        }
    }
    /// Returns what [`QpTransport::take_ring_sq`] lent out.
    #[inline]
    pub fn put_ring_sq(&mut self, sq: Consumer<RingCapsule>) {
        if let QpTransport::Ring(t) = self {
            t.sq = Some(sq);
        }
    }
    /// See [`QpairTransport::ready`].
    #[inline]
    pub fn ready(&mut self) -> usize {
        dispatch!(self, t => t.ready())
    }
    /// See [`QpairTransport::send`].
    #[inline]
    pub fn send(&mut self, resp: Response) -> Result<(), Response> {
        dispatch!(self, t => t.send(resp))
    }
    /// [`QpTransport::send`] of a CQE and its buffer: the rings build
    /// their entry in its slot from them (see `RingTransport::send_cqe`).
    /// `sqhd` gives the SQ head, asked only by a transport whose responses
    /// carry it (a ring's do not: it has flow control of its own).
    #[inline(always)]
    pub fn send_cqe(
        &mut self,
        mut cqe: CompletionEntry,
        buf: DataBuf,
        sqhd: impl FnOnce() -> u16,
    ) -> Result<(), Response> {
        match self {
            QpTransport::Ring(t) => t.send_cqe(cqe, buf),
            QpTransport::Other(t) => {
                cqe.sqhd = sqhd();
                t.send(Response { cqe, buf })
            }
        }
    }
    /// See [`QpairTransport::host_closed`].
    #[inline]
    pub fn host_closed(&self) -> bool {
        dispatch!(self, t => t.host_closed())
    }
    /// See [`QpairTransport::close`].
    pub fn close(&mut self) {
        dispatch!(self, t => t.close())
    }
    /// See [`QpairTransport::finish`].
    pub fn finish(&mut self) {
        dispatch!(self, t => t.finish())
    }
    /// See [`QpairTransport::publish`].
    #[inline]
    pub fn publish(&mut self) {
        dispatch!(self, t => t.publish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iobuf::IoBuf;
    use crate::spec::Status;

    fn response(dw0: u32, dw1: u32, buf: DataBuf) -> Response {
        let mut cqe = CompletionEntry::new(0x1234, Status::INVALID_FIELD.with_dnr());
        cqe.dw0 = dw0;
        cqe.dw1 = dw1;
        cqe.sqhd = 9;
        cqe.sqid = 3;
        Response { cqe, buf }
    }

    /// Each body shape comes back whole: DW0, DW1, CID, status and the
    /// buffer's bytes, with the reaping queue's SQ ID and SQHD 0.
    #[test]
    fn ring_response_carries_everything_but_sqhd() {
        let many = || DataBuf::many(vec![IoBuf::from_slice(b"ab"), IoBuf::from_slice(b"cd")]);
        for (dw1, data, as_many) in [
            (0, Some(&b"abc"[..]), false),
            (7, None, false),
            (7, Some(&b"xyz"[..]), false),
            (0, None, false),
            (u32::MAX, Some(&b"abcd"[..]), true),
            (0, Some(&b"abcd"[..]), true),
        ] {
            let buf = match data {
                _ if as_many => many(),
                Some(d) => DataBuf::One(IoBuf::from_slice(d)),
                None => DataBuf::None,
            };
            let mut r = RingResponse::new(response(0xdead, dw1, buf));
            let (cqe, buf) = r.take(5);
            assert!(r.is_spent(), "what take leaves owns nothing");
            assert_eq!((cqe.dw0, cqe.dw1, cqe.cid), (0xdead, dw1, 0x1234));
            assert_eq!((cqe.sqhd, cqe.sqid), (0, 5));
            assert_eq!(cqe.status(), Status::INVALID_FIELD.with_dnr());
            match (data, buf) {
                (None, DataBuf::None) => {}
                (Some(d), DataBuf::One(b)) if !as_many => assert_eq!(b.as_slice(), d),
                (Some(d), DataBuf::Many(v)) if as_many => {
                    let got: Vec<u8> = v.iter().flat_map(|b| b.as_slice().to_vec()).collect();
                    assert_eq!(got, d);
                }
                (d, b) => panic!("sent {d:?}, got {b:?}"),
            }
        }
    }

    /// A response still holding its buffer is not spent (the ring drops it).
    #[test]
    fn ring_response_with_a_buffer_is_not_spent() {
        let r = RingResponse::new(response(0, 0, DataBuf::One(IoBuf::new(8))));
        assert!(!r.is_spent());
        let r = RingResponse::new(response(0, 1, DataBuf::One(IoBuf::new(8))));
        assert!(!r.is_spent());
    }
}
