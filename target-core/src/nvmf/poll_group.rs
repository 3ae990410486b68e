//! A poll group: every queue pair and block-device channel one reactor owns.
//!
//! `poll` is the whole data path of one reactor: a bounded batch of control
//! messages, then each queue pair's new commands (validate, hand to the
//! namespace's channel of *this* poll group), then every channel's
//! completions (build the CQE, post it). Nothing here locks or allocates per
//! I/O; the slot table, CID bitmap and backlog of each queue pair were sized
//! when it connected.
//!
//! Teardown (quiesce, drain, escalate, destroy) lives in
//! [`super::teardown`]; this file is the steady state. Completions are
//! routed by a tag carrying the queue pair's index and generation and the
//! slot's index and generation. A queue pair index is reused only once no
//! command of an earlier queue pair in it can still complete (see
//! [`QpEntry::orphans`]), so the 16-bit generations in the tag are a second
//! line of defence, not the one that has to hold across wrap-around.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_queue::SegQueue;

use super::admin::{self, AdminOutcome};
use super::ctrlr::QpairRef;
use super::engine::{Engine, PgMsg, PgStats, bump};
use super::io::{self, NsLimits};
use super::latency::{FastHistogram, LatencyHistogram};
use super::qpair::{QpState, Qpair};
use super::stats::NsIoStats;
use super::subsystem::Namespace;
use super::transport::{Capsule, QpTransport};
use crate::bdev::{BdevCompletion, BdevIo, IoChannel, POLL_BATCH};
use crate::iobuf::DataBuf;
use crate::spec::{AdminOpcode, FabricsType, Status, SubmissionEntry};

/// Commands fetched from one queue pair per poll, so one busy queue cannot
/// starve the others.
const FETCH_BATCH: usize = 64;
/// Messages handled per poll.
const MSG_BATCH: usize = 16;
/// Polls between timer checks (keep-alive, drain deadlines).
const TIMER_EVERY: u32 = 256;
/// Idle passes between clock refreshes.
const IDLE_CLOCK_EVERY: u32 = 32;

pub(super) struct QpEntry {
    pub(super) generation: u32,
    pub(super) qp: Option<Box<Qpair>>,
    /// Commands of a queue pair destroyed here while a backend still held
    /// them (stage 3). The index is not reused until they have all come
    /// back, so no stale completion can ever meet a later queue pair in
    /// this index, however often the generation wraps.
    pub(super) orphans: u32,
}

/// A poll group's own view of one namespace: its channel and limits.
pub(crate) struct NsView {
    pub(super) sid: u32,
    pub(super) nsid: u32,
    pub(super) ns: Arc<Namespace>,
    pub(super) ch: Box<dyn IoChannel>,
    pub(super) limits: NsLimits,
    pub(super) paused: bool,
    pub(super) outstanding: u32,
    pub(super) pause_waiters: Vec<Box<dyn FnOnce() + Send>>,
    pub(super) stats: Arc<NsIoStats>,
    /// Latency from fetch to backend completion, ns; `None` when tracking
    /// is off. Owned by this poll group, so recording takes no lock; others
    /// get a copy by message.
    pub(super) lat: Option<Box<FastHistogram>>,
    /// When this channel was last reset (ms since the epoch; 0: never), so
    /// several drains meeting the same backend start one escalation per
    /// bound, not one each.
    pub(super) reset_ms: u64,
    /// Set once the namespace was removed here while its backend still held
    /// commands: the view is out of the index (no new commands reach it)
    /// but stays in the table, polled, until the backend gives everything
    /// back. See [`super::teardown`].
    pub(super) retiring: Option<super::teardown::Retire>,
}

/// Namespace views indexed by subsystem and NSID.
#[derive(Default)]
pub(super) struct NsTable {
    /// `[sid][nsid-1]` → view index + 1 (0: none).
    index: Vec<Vec<u32>>,
    pub(super) views: Vec<Option<NsView>>,
}

impl NsTable {
    #[inline]
    pub(super) fn lookup(&self, sid: u32, nsid: u32) -> Option<u32> {
        let v = *self
            .index
            .get(sid as usize)?
            .get((nsid as usize).wrapping_sub(1))?;
        if v == 0 { None } else { Some(v - 1) }
    }

    fn insert(&mut self, view: NsView) -> u32 {
        let (sid, nsid) = (view.sid as usize, view.nsid as usize);
        let idx = match self.views.iter().position(Option::is_none) {
            Some(i) => {
                self.views[i] = Some(view);
                i
            }
            None => {
                self.views.push(Some(view));
                self.views.len() - 1
            }
        };
        if self.index.len() <= sid {
            self.index.resize_with(sid + 1, Vec::new);
        }
        if self.index[sid].len() < nsid {
            self.index[sid].resize(nsid, 0);
        }
        self.index[sid][nsid - 1] = idx as u32 + 1;
        idx as u32
    }

    /// Takes a view out of the index but leaves it in the table (where it
    /// keeps its position, so slots pointing at it stay valid). Returns its
    /// position.
    pub(super) fn unindex(&mut self, sid: u32, nsid: u32) -> Option<u32> {
        let idx = self.lookup(sid, nsid)?;
        self.index[sid as usize][nsid as usize - 1] = 0;
        Some(idx)
    }
}

/// One reactor's share of the target.
pub struct PollGroup {
    pub(super) id: usize,
    pub(super) engine: Arc<Engine>,
    msgs: Arc<SegQueue<PgMsg>>,
    pub(super) stats: Arc<PgStats>,
    pub(super) qps: Vec<QpEntry>,
    pub(super) free_qps: Vec<u32>,
    pub(super) ns: NsTable,
    polls: u32,
    pub(super) now_ms: u64,
    /// Teardown work with deadlines: queue pairs draining plus namespace
    /// views retiring before their escalation gave up. While > 0 the
    /// timers run on every poll.
    pub(super) draining: usize,
    /// Views with latency tracking on; the clock is read only when > 0.
    lat_views: usize,
    /// Clock of the current fetch or completion pass (ns since the engine
    /// epoch), read once per pass rather than once per command.
    now_ns: u64,
    /// A channel's completions of one poll ([`IoChannel::poll_into`]);
    /// empty between polls, capacity kept.
    batch: Vec<BdevCompletion>,
}

impl std::fmt::Debug for PollGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollGroup").field("id", &self.id).finish()
    }
}

/// What executing a capsule needs of its pass besides the queue pair and
/// the namespaces: the same for every capsule one pass fetches from one
/// queue pair, so it is built once and lent to each.
#[derive(Clone, Copy)]
struct ExecCtx<'a> {
    engine: &'a Arc<Engine>,
    me: QpairRef,
    /// `tag_prefix(me.idx, me.generation)`.
    tag_prefix: u64,
    now_ms: u64,
    now_ns: u64,
}

/// The fetch loop: up to `budget` capsules while the queue pair may take
/// more. `next` executes one and says whether to go on (`None`: nothing
/// left). Returns how many were fetched.
#[inline(always)]
fn fetch(qp: &mut Qpair, budget: usize, mut next: impl FnMut(&mut Qpair) -> Option<bool>) -> usize {
    let mut n = 0;
    while n < budget && qp.state != QpState::Draining && !qp.backlogged() {
        let Some(more) = next(qp) else { break };
        n += 1;
        if !more {
            break;
        }
    }
    n
}

/// Stage-3 orphans came back: an index whose last one has is free again.
#[cold]
fn reclaim_qp_indices(qps: &[QpEntry], free_qps: &mut Vec<u32>) {
    for (qi, e) in qps.iter().enumerate() {
        let qi = qi as u32;
        if e.qp.is_none() && e.orphans == 0 && !free_qps.contains(&qi) {
            free_qps.push(qi);
        }
    }
}

/// The queue pair's half of a backend tag ([`encode_tag`]): the same for
/// each of its commands, so built once per pass, not per command.
#[inline]
fn tag_prefix(qi: u32, qgen: u32) -> u64 {
    ((qi as u64) << 48) | (((qgen & 0xffff) as u64) << 32)
}

/// A backend tag: queue pair index and generation ([`tag_prefix`]), request
/// slot and its generation ([`decode_tag`] takes it apart).
#[inline]
fn encode_tag(prefix: u64, slot: u16, sgen: u16) -> u64 {
    prefix | ((slot as u64) << 16) | sgen as u64
}

#[inline]
fn decode_tag(tag: u64) -> (u32, u32, u16, u16) {
    (
        (tag >> 48) as u32,
        ((tag >> 32) & 0xffff) as u32,
        (tag >> 16) as u16,
        tag as u16,
    )
}

impl PollGroup {
    pub(crate) fn new(
        id: usize,
        engine: Arc<Engine>,
        msgs: Arc<SegQueue<PgMsg>>,
        stats: Arc<PgStats>,
    ) -> Self {
        Self {
            id,
            engine,
            msgs,
            stats,
            qps: Vec::new(),
            free_qps: Vec::new(),
            ns: NsTable::default(),
            polls: 0,
            now_ms: 0,
            draining: 0,
            lat_views: 0,
            now_ns: 0,
            batch: Vec::with_capacity(POLL_BATCH),
        }
    }

    /// The poll group's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The shared engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// One pass over messages, queue pairs and channels. Returns work done.
    pub fn poll(&mut self) -> usize {
        let mut work = 0;
        // `is_empty` is two loads; `pop` on an empty queue costs ~30
        // instructions, paid on every pass of an idle message queue.
        let msgs = if self.msgs.is_empty() { 0 } else { MSG_BATCH };
        for _ in 0..msgs {
            match self.msgs.pop() {
                Some(m) => {
                    m(self);
                    work += 1;
                }
                None => break,
            }
        }
        if self.lat_views > 0 {
            self.now_ns = self.engine.now_ns();
        }
        for qi in 0..self.qps.len() {
            work += self.poll_qpair(qi as u32);
        }
        if self.lat_views > 0 {
            self.now_ns = self.engine.now_ns();
        }
        work += self.poll_channels();
        self.polls = self.polls.wrapping_add(1);
        // Every 32nd idle pass refreshes the clock so the next command sees
        // a fresh one (to well under a millisecond), but only with queue
        // pairs to serve: a poll group without any (a reactor running
        // direct-mode jobs) would read the clock for nothing, and
        // `add_qpair` refreshes it anyway. Not on every idle pass: where
        // the clock source is not the TSC (a VM falling back to the HPET),
        // a clock read is an emulated device access, and reading it on
        // every pass of a spinning reactor took a quarter of its time
        // (perf in the `tcp` guest).
        let idle = work == 0 && !self.qps.is_empty() && self.polls.is_multiple_of(IDLE_CLOCK_EVERY);
        if self.polls.is_multiple_of(TIMER_EVERY) || idle || self.draining > 0 {
            self.now_ms = self.engine.now_ms();
            if self.polls.is_multiple_of(TIMER_EVERY) || self.draining > 0 {
                self.timers();
            }
        }
        // One doorbell per queue pair and pass: the SQ head for what was
        // fetched, the CQ tail for what was answered (by the fetch, the
        // backends' completions, messages or timers).
        for e in self.qps.iter_mut() {
            if let Some(qp) = e.qp.as_deref_mut() {
                qp.tr.publish();
            }
        }
        work
    }

    // ---- queue pairs -----------------------------------------------------

    /// Takes ownership of a new queue pair's transport; it waits for Connect.
    pub fn add_qpair(&mut self, tr: QpTransport, entries: u16) -> QpairRef {
        self.now_ms = self.engine.now_ms();
        let qp = Box::new(Qpair::new(tr, entries));
        let idx = match self.free_qps.pop() {
            Some(i) => {
                self.qps[i as usize].qp = Some(qp);
                i
            }
            None => {
                self.qps.push(QpEntry {
                    generation: 0,
                    qp: Some(qp),
                    orphans: 0,
                });
                self.qps.len() as u32 - 1
            }
        };
        if let Some(h) = self.engine.pgs().get(self.id) {
            h.qpairs.fetch_add(1, Ordering::Relaxed);
        }
        QpairRef {
            pg: self.id,
            idx,
            generation: self.qps[idx as usize].generation,
        }
    }

    pub(super) fn qp_mut(&mut self, r: QpairRef) -> Option<&mut Qpair> {
        let e = self.qps.get_mut(r.idx as usize)?;
        if e.generation != r.generation {
            return None;
        }
        e.qp.as_deref_mut()
    }

    fn poll_qpair(&mut self, qi: u32) -> usize {
        let Self {
            qps,
            ns,
            engine,
            stats,
            id,
            now_ms,
            now_ns,
            ..
        } = self;
        let entry = &mut qps[qi as usize];
        let qgen = entry.generation;
        let Some(qp) = entry.qp.as_deref_mut() else {
            return 0;
        };
        let mut work = qp.flush_backlog();
        match qp.state {
            QpState::Draining => return work,
            QpState::Connecting | QpState::Active => {}
        }
        let me = QpairRef {
            pg: *id,
            idx: qi,
            generation: qgen,
        };
        let cx = ExecCtx {
            engine,
            me,
            tag_prefix: tag_prefix(qi, qgen),
            now_ms: *now_ms,
            now_ns: *now_ns,
        };
        if qp.parked.is_some()
            && let Some(mut cap) = qp.parked.take()
        {
            if !Self::exec(&cx, ns, qp, &cap.sqe, &mut cap.buf, false) {
                return work;
            }
            work += 1;
        }
        let budget = qp.tr.ready().min(FETCH_BATCH);
        let n = if budget == 0 {
            0
        } else if let Some(mut sq) = qp.tr.take_ring_sq() {
            // The rings: each capsule is worked on where it lies in the
            // submission ring. The ring's consumer is out of the queue pair
            // for the loop (what `exec` uses of the transport is the
            // completion ring) and goes back right after it.
            let n = fetch(qp, budget, |qp| {
                sq.pop_with(|cap| Self::exec(&cx, ns, qp, &cap.sqe(), &mut cap.buf, true))
            });
            qp.tr.put_ring_sq(sq);
            n
        } else {
            fetch(qp, budget, |qp| {
                let mut cap = qp.tr.recv()?;
                Some(Self::exec(&cx, ns, qp, &cap.sqe, &mut cap.buf, true))
            })
        };
        if n > 0 {
            bump(&stats.commands, n as u64);
        }
        if qp.responses > 0 {
            bump(&stats.responses, qp.responses);
            qp.responses = 0;
        }
        if n == 0 && qp.tr.host_closed() && qp.state != QpState::Draining {
            self.on_host_closed(me);
            return work + 1;
        }
        work + n
    }

    /// Executes one capsule. Returns `false` when it was parked (stop fetching).
    #[inline]
    fn exec(
        cx: &ExecCtx<'_>,
        ns: &mut NsTable,
        qp: &mut Qpair,
        sqe: &SubmissionEntry,
        buf: &mut DataBuf,
        fresh: bool,
    ) -> bool {
        // The context's fields are read where used, not copied up front.
        if fresh {
            qp.advance_sqhd();
        }
        if !qp.io_connected || sqe.opcode() == AdminOpcode::FABRICS.0 {
            let cap = Capsule {
                sqe: *sqe,
                buf: std::mem::take(buf),
            };
            Self::exec_admin(cx.engine, qp, cx.me, cap, cx.now_ms);
            return true;
        }
        Self::exec_io(ns, qp, cx.tag_prefix, sqe, buf, cx.now_ns)
    }

    #[inline]
    fn exec_io(
        ns: &mut NsTable,
        qp: &mut Qpair,
        tag_prefix: u64,
        sqe: &SubmissionEntry,
        buf: &mut DataBuf,
        now_ns: u64,
    ) -> bool {
        // The buffer is moved out of where the capsule lies to wherever the
        // command goes.
        let cid = sqe.cid();
        if let Err(s) = io::check_common(sqe) {
            qp.respond(cid, s, 0, std::mem::take(buf));
            return true;
        }
        if qp.cid_in_use(cid) {
            qp.respond(
                cid,
                Status::COMMAND_ID_CONFLICT.with_dnr(),
                0,
                std::mem::take(buf),
            );
            return true;
        }
        let Some(vi) = ns.lookup(qp.sid, sqe.nsid) else {
            qp.respond(
                cid,
                Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr(),
                0,
                std::mem::take(buf),
            );
            return true;
        };
        let Some(view) = ns.views[vi as usize].as_mut() else {
            qp.respond(
                cid,
                Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr(),
                0,
                std::mem::take(buf),
            );
            return true;
        };
        if view.paused {
            qp.parked = Some(Capsule {
                sqe: *sqe,
                buf: std::mem::take(buf),
            });
            return false;
        }
        let plan = match io::plan(sqe, &view.limits, buf.len()) {
            Ok(p) => p,
            Err(s) => {
                view.stats.record_error();
                qp.respond(cid, s, 0, std::mem::take(buf));
                return true;
            }
        };
        if io::is_dsm_hint_only(sqe) {
            qp.respond(cid, Status::SUCCESS, 0, std::mem::take(buf));
            return true;
        }
        let Some(si) = qp.free.pop() else {
            qp.parked = Some(Capsule {
                sqe: *sqe,
                buf: std::mem::take(buf),
            });
            return false;
        };
        let sgen = qp.slots[si as usize].generation;
        let io = BdevIo {
            tag: encode_tag(tag_prefix, si, sgen),
            op: plan.op,
            lba: plan.lba,
            blocks: plan.blocks,
            fua: plan.fua,
            buf: std::mem::take(buf),
        };
        match view.ch.submit(io) {
            Ok(()) => {
                let slot = &mut qp.slots[si as usize];
                slot.busy = true;
                slot.cid = cid;
                slot.view = vi;
                // 0: not timed (tracking was off when it was fetched).
                slot.start_ns = if view.lat.is_some() { now_ns } else { 0 };
                qp.set_cid(cid, true);
                view.outstanding += 1;
                view.stats.record_submit(plan.op, plan.xfer_bytes);
                true
            }
            Err(io) => {
                qp.free.push(si);
                qp.parked = Some(Capsule {
                    sqe: *sqe,
                    buf: io.buf,
                });
                false
            }
        }
    }

    fn exec_admin(engine: &Arc<Engine>, qp: &mut Qpair, me: QpairRef, cap: Capsule, now_ms: u64) {
        let cid = cap.sqe.cid();
        let fabrics = cap.sqe.opcode() == AdminOpcode::FABRICS.0;
        if qp.qid == 0 && qp.ctrl.as_ref().is_some_and(|c| c.is_failed()) {
            // Stage 3 (see `teardown`): a failed controller's admin queue
            // answers register reads only, so the host sees CSTS.CFS and its
            // own recovery ends the association.
            if !(fabrics && cap.sqe.fctype() == FabricsType::PROPERTY_GET) {
                return;
            }
        }
        if fabrics
            && qp.qid == 0
            && qp.pending_property_set.is_some()
            && cap.sqe.fctype() == FabricsType::PROPERTY_SET
        {
            // One Property Set is waiting for its reset or shutdown: later
            // ones run (and are answered) after it, in order.
            qp.queued_property_sets.push_back(cap.sqe);
            return;
        }
        let mut buf = cap.buf;
        match admin::execute(engine, qp, me, &cap.sqe, &mut buf, now_ms) {
            AdminOutcome::Done { status, dw0, dw1 } => qp.respond_dw(cid, status, dw0, dw1, buf),
            AdminOutcome::Parked => {}
            AdminOutcome::Teardown(kind) => {
                qp.pending_property_set = Some(cid);
                drop(buf);
                if let Some(h) = engine.pgs().get(me.pg) {
                    h.send(move |pg| pg.start_ctrl_teardown(me, kind));
                }
            }
            AdminOutcome::Disconnect => {
                drop(buf);
                if let Some(h) = engine.pgs().get(me.pg) {
                    h.send(move |pg| pg.quiesce_qpair_with(me, None, Some(cid)));
                }
            }
        }
    }

    // ---- completions -----------------------------------------------------

    /// Delivers the backends' completions. Once per pass, so kept out of
    /// line: a profile then tells completion work from fetch work.
    #[inline(never)]
    pub(super) fn poll_channels(&mut self) -> usize {
        let Self {
            qps,
            free_qps,
            ns,
            stats,
            now_ns,
            draining,
            batch,
            ..
        } = self;
        let now_ns = *now_ns;
        let mut total = 0;
        for entry in ns.views.iter_mut() {
            let Some(view) = entry.as_mut() else { continue };
            if view.outstanding == 0 {
                continue;
            }
            let mut done = 0u32;
            let mut late = 0u64;
            let mut orphans_back = false;
            let vstats = &view.stats;
            let lat = &mut view.lat;
            view.ch.poll_into(batch);
            let mut handle = |c: BdevCompletion| {
                done += 1;
                let (qi, qgen, si, sgen) = decode_tag(c.tag);
                let Some(e) = qps.get_mut(qi as usize) else {
                    late += 1;
                    return;
                };
                let Some(qp) = e.qp.as_deref_mut() else {
                    // A command of a queue pair destroyed at stage 3: its
                    // buffer was the backend's until now; it goes no further.
                    late += 1;
                    e.orphans = e.orphans.saturating_sub(1);
                    orphans_back = true;
                    return;
                };
                if e.generation & 0xffff != qgen {
                    late += 1;
                    return;
                }
                let Some(slot) = qp.slots.get_mut(si as usize) else {
                    late += 1;
                    return;
                };
                if !slot.busy || slot.generation != sgen {
                    late += 1;
                    return;
                }
                slot.busy = false;
                slot.generation = slot.generation.wrapping_add(1);
                let cid = slot.cid;
                if let Some(h) = lat.as_deref_mut()
                    && slot.start_ns != 0
                {
                    h.record(now_ns.saturating_sub(slot.start_ns).max(1));
                }
                qp.free.push(si);
                qp.set_cid(cid, false);
                let status = match c.result {
                    Ok(()) => Status::SUCCESS,
                    Err(e) => {
                        vstats.record_error();
                        e.to_status()
                    }
                };
                qp.respond(cid, status, 0, c.buf);
            };
            for c in batch.drain(..) {
                handle(c);
            }
            view.outstanding -= done.min(view.outstanding);
            if view.outstanding == 0 {
                if !view.pause_waiters.is_empty() {
                    for w in view.pause_waiters.drain(..) {
                        w();
                    }
                }
                if let Some(r) = view.retiring {
                    // A removed namespace's last command came back.
                    if r.stage < super::teardown::RETIRE_GAVE_UP {
                        *draining = draining.saturating_sub(1);
                    }
                    *entry = None;
                }
            }
            if late > 0 {
                bump(&stats.late_completions, late);
            }
            if orphans_back {
                reclaim_qp_indices(qps, free_qps);
            }
            total += done as usize;
        }
        if total > 0 {
            bump(&stats.completions, total as u64);
        }
        total
    }

    /// Completes waiting Asynchronous Event Requests with pending events.
    pub fn deliver_events(&mut self, admin: QpairRef) {
        let Some(qp) = self.qp_mut(admin) else { return };
        let Some(ctrl) = qp.ctrl.clone() else { return };
        if ctrl.is_failed() {
            // Stage 3: the admin queue answers nothing more.
            return;
        }
        let mut out = Vec::new();
        {
            let mut st = ctrl.state();
            while !st.aer_cids.is_empty() && !st.pending_events.is_empty() {
                if let (Some(cid), Some(ev)) =
                    (st.aer_cids.pop_front(), st.pending_events.pop_front())
                {
                    st.masked_events |= 1 << (ev & 7);
                    out.push((cid, ev));
                }
            }
        }
        for (cid, ev) in out {
            qp.respond(cid, Status::SUCCESS, ev, DataBuf::None);
        }
    }

    // ---- namespaces ------------------------------------------------------

    /// Adds this poll group's view (and channel) of a namespace.
    pub fn add_ns_view(
        &mut self,
        sid: u32,
        ns: Arc<Namespace>,
        stats: Arc<NsIoStats>,
    ) -> Result<(), String> {
        let ch = ns.bdev.open_channel().map_err(|e| e.to_string())?;
        let info = ns.bdev.info();
        let limits = NsLimits {
            block_shift: info.block_size.trailing_zeros(),
            num_blocks: info.num_blocks,
            read_only: ns.read_only,
            max_xfer: NsLimits::max_xfer_from(self.engine.opts.max_xfer_bytes()),
        };
        if self.ns.lookup(sid, ns.nsid).is_some() {
            tracing::warn!(nsid = ns.nsid, "replacing an existing namespace view");
            self.retire_view(sid, ns.nsid);
        }
        let lat = ns
            .latency_tracking
            .load(Ordering::Relaxed)
            .then(|| Box::new(FastHistogram::new()));
        self.ns.insert(NsView {
            sid,
            nsid: ns.nsid,
            ns,
            ch,
            limits,
            paused: false,
            outstanding: 0,
            pause_waiters: Vec::new(),
            stats,
            lat,
            reset_ms: 0,
            retiring: None,
        });
        self.count_lat_views();
        Ok(())
    }

    pub(super) fn count_lat_views(&mut self) {
        self.lat_views = self
            .ns
            .views
            .iter()
            .flatten()
            .filter(|v| v.lat.is_some())
            .count();
    }

    /// Turns latency tracking of a namespace on or off on this poll group
    /// (on keeps what was recorded; off drops it).
    pub fn set_ns_latency(&mut self, sid: u32, nsid: u32, on: bool) {
        if let Some(vi) = self.ns.lookup(sid, nsid)
            && let Some(v) = self.ns.views[vi as usize].as_mut()
        {
            match (on, v.lat.is_some()) {
                (true, false) => v.lat = Some(Box::new(FastHistogram::new())),
                (false, true) => v.lat = None,
                _ => {}
            }
        }
        self.count_lat_views();
    }

    /// A copy of this poll group's latency histogram of a namespace
    /// (`None`: no view here or tracking off); `reset` clears it after.
    pub fn ns_latency(&mut self, sid: u32, nsid: u32, reset: bool) -> Option<LatencyHistogram> {
        let vi = self.ns.lookup(sid, nsid)?;
        let h = self.ns.views[vi as usize].as_mut()?.lat.as_deref_mut()?;
        let mut copy = super::latency::new_histogram();
        if reset {
            h.drain_into(&mut copy);
        } else {
            h.add_to(&mut copy);
        }
        Some(copy)
    }

    /// Every namespace's latency on this poll group, merged.
    pub fn latency(&self) -> Option<LatencyHistogram> {
        let mut out: Option<LatencyHistogram> = None;
        for h in self
            .ns
            .views
            .iter()
            .flatten()
            .filter_map(|v| v.lat.as_deref())
        {
            h.add_to(out.get_or_insert_with(super::latency::new_histogram));
        }
        out
    }

    /// Queue pairs alive here.
    pub fn qpair_count(&self) -> usize {
        self.qps.iter().filter(|e| e.qp.is_some()).count()
    }

    /// Namespace views here and their outstanding I/O.
    pub fn ns_outstanding(&self) -> Vec<(u32, u32, u32)> {
        self.ns
            .views
            .iter()
            .flatten()
            .map(|v| (v.sid, v.nsid, v.outstanding))
            .collect()
    }

    #[allow(dead_code)]
    pub(crate) fn view_ns(&self, sid: u32, nsid: u32) -> Option<&Arc<Namespace>> {
        let vi = self.ns.lookup(sid, nsid)?;
        self.ns.views.get(vi as usize)?.as_ref().map(|v| &v.ns)
    }
}
