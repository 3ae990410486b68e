//! A poll group: every queue pair and block-device channel one reactor owns.
//!
//! `poll` is the whole data path of one reactor: a bounded batch of control
//! messages, then each queue pair's new commands (validate, hand to the
//! namespace's channel of *this* poll group), then every channel's
//! completions (build the CQE, post it). Nothing here locks or allocates per
//! I/O; the slot table, CID bitmap and backlog of each queue pair were sized
//! when it connected.
//!
//! Teardown never frees what a backend still holds: a queue pair being
//! destroyed stops fetching, waits for its backend commands, answers the
//! never-fetched ones with *Command Aborted due to SQ Deletion*, and only
//! then goes away. Completions are routed by a tag carrying the queue pair's
//! and the slot's generations, so one that arrives after its queue pair was
//! destroyed is dropped without touching anything else.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_queue::SegQueue;

use super::admin::{self, AdminOutcome};
use super::ctrlr::{Controller, QpairRef, TeardownKind, csts};
use super::engine::{Countdown, Engine, PgMsg, PgStats, bump};
use super::io::{self, NsLimits};
use super::latency::{FastHistogram, LatencyHistogram};
use super::qpair::{Drain, QpState, Qpair};
use super::stats::NsIoStats;
use super::subsystem::Namespace;
use super::transport::{Capsule, QpairTransport};
use crate::bdev::{BdevCompletion, BdevIo, IoChannel};
use crate::iobuf::DataBuf;
use crate::spec::{AdminOpcode, Status};

/// Commands fetched from one queue pair per poll, so one busy queue cannot
/// starve the others.
const FETCH_BATCH: usize = 64;
/// Messages handled per poll.
const MSG_BATCH: usize = 16;
/// Polls between timer checks (keep-alive, drain deadlines).
const TIMER_EVERY: u32 = 256;

struct QpEntry {
    generation: u32,
    qp: Option<Box<Qpair>>,
}

/// A poll group's own view of one namespace: its channel and limits.
pub(crate) struct NsView {
    sid: u32,
    nsid: u32,
    ns: Arc<Namespace>,
    ch: Box<dyn IoChannel>,
    limits: NsLimits,
    paused: bool,
    outstanding: u32,
    pause_waiters: Vec<Box<dyn FnOnce() + Send>>,
    stats: Arc<NsIoStats>,
    /// Latency from fetch to backend completion, ns; `None` when tracking
    /// is off. Owned by this poll group, so recording takes no lock; others
    /// get a copy by message.
    lat: Option<Box<FastHistogram>>,
}

/// Namespace views indexed by subsystem and NSID.
#[derive(Default)]
struct NsTable {
    /// `[sid][nsid-1]` → view index + 1 (0: none).
    index: Vec<Vec<u32>>,
    views: Vec<Option<NsView>>,
}

impl NsTable {
    #[inline]
    fn lookup(&self, sid: u32, nsid: u32) -> Option<u32> {
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

    fn remove(&mut self, sid: u32, nsid: u32) -> Option<NsView> {
        let idx = self.lookup(sid, nsid)?;
        self.index[sid as usize][nsid as usize - 1] = 0;
        self.views.get_mut(idx as usize).and_then(Option::take)
    }
}

/// One reactor's share of the target.
pub struct PollGroup {
    id: usize,
    engine: Arc<Engine>,
    msgs: Arc<SegQueue<PgMsg>>,
    stats: Arc<PgStats>,
    qps: Vec<QpEntry>,
    free_qps: Vec<u32>,
    ns: NsTable,
    polls: u32,
    now_ms: u64,
    draining: usize,
    /// Views with latency tracking on; the clock is read only when > 0.
    lat_views: usize,
    /// Clock of the current fetch or completion pass (ns since the engine
    /// epoch), read once per pass rather than once per command.
    now_ns: u64,
}

impl std::fmt::Debug for PollGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollGroup").field("id", &self.id).finish()
    }
}

#[inline]
fn encode_tag(qi: u32, qgen: u32, slot: u16, sgen: u16) -> u64 {
    ((qi as u64) << 48) | (((qgen & 0xffff) as u64) << 32) | ((slot as u64) << 16) | sgen as u64
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
        for _ in 0..MSG_BATCH {
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
        if self.polls.is_multiple_of(TIMER_EVERY) || work == 0 || self.draining > 0 {
            self.now_ms = self.engine.now_ms();
            if self.polls.is_multiple_of(TIMER_EVERY) || self.draining > 0 {
                self.timers();
            }
        }
        work
    }

    // ---- queue pairs -----------------------------------------------------

    /// Takes ownership of a new queue pair's transport; it waits for Connect.
    pub fn add_qpair(&mut self, tr: Box<dyn QpairTransport>, entries: u16) -> QpairRef {
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

    fn qp_mut(&mut self, r: QpairRef) -> Option<&mut Qpair> {
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
        if let Some(cap) = qp.parked.take() {
            if !Self::exec(engine, ns, qp, me, cap, false, *now_ms, *now_ns) {
                return work;
            }
            work += 1;
        }
        let mut n = 0;
        while n < FETCH_BATCH && qp.state != QpState::Draining && !qp.backlogged() {
            let Some(cap) = qp.tr.recv() else { break };
            n += 1;
            if !Self::exec(engine, ns, qp, me, cap, true, *now_ms, *now_ns) {
                break;
            }
        }
        if n > 0 {
            bump(&stats.commands, n as u64);
        } else if qp.tr.host_closed() && qp.state != QpState::Draining {
            self.on_host_closed(me);
            return work + 1;
        }
        work + n
    }

    /// Executes one capsule. Returns `false` when it was parked (stop fetching).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn exec(
        engine: &Arc<Engine>,
        ns: &mut NsTable,
        qp: &mut Qpair,
        me: QpairRef,
        cap: Capsule,
        fresh: bool,
        now_ms: u64,
        now_ns: u64,
    ) -> bool {
        if fresh {
            qp.advance_sqhd();
        }
        if qp.state == QpState::Connecting
            || qp.qid == 0
            || cap.sqe.opcode() == AdminOpcode::FABRICS.0
        {
            Self::exec_admin(engine, qp, me, cap, now_ms);
            return true;
        }
        Self::exec_io(ns, qp, me, cap, now_ns)
    }

    #[inline]
    fn exec_io(ns: &mut NsTable, qp: &mut Qpair, me: QpairRef, cap: Capsule, now_ns: u64) -> bool {
        let sqe = cap.sqe;
        let cid = sqe.cid();
        if let Err(s) = io::check_common(&sqe) {
            qp.respond(cid, s, 0, cap.buf);
            return true;
        }
        if qp.cid_in_use(cid) {
            qp.respond(cid, Status::COMMAND_ID_CONFLICT.with_dnr(), 0, cap.buf);
            return true;
        }
        let Some(vi) = ns.lookup(qp.sid, sqe.nsid) else {
            qp.respond(
                cid,
                Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr(),
                0,
                cap.buf,
            );
            return true;
        };
        let Some(view) = ns.views[vi as usize].as_mut() else {
            qp.respond(
                cid,
                Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr(),
                0,
                cap.buf,
            );
            return true;
        };
        if view.paused {
            qp.parked = Some(cap);
            return false;
        }
        let plan = match io::plan(&sqe, &view.limits, cap.buf.len()) {
            Ok(p) => p,
            Err(s) => {
                view.stats.record_error();
                qp.respond(cid, s, 0, cap.buf);
                return true;
            }
        };
        if io::is_dsm_hint_only(&sqe) {
            qp.respond(cid, Status::SUCCESS, 0, cap.buf);
            return true;
        }
        let Some(si) = qp.free.pop() else {
            qp.parked = Some(cap);
            return false;
        };
        let sgen = qp.slots[si as usize].generation;
        let io = BdevIo {
            tag: encode_tag(me.idx, me.generation, si, sgen),
            op: plan.op,
            lba: plan.lba,
            blocks: plan.blocks,
            fua: plan.fua,
            buf: cap.buf,
        };
        match view.ch.submit(io) {
            Ok(()) => {
                let slot = &mut qp.slots[si as usize];
                slot.busy = true;
                slot.cid = cid;
                slot.view = vi;
                // 0: not timed (tracking was off when it was fetched).
                slot.start_ns = if view.lat.is_some() { now_ns } else { 0 };
                qp.in_backend += 1;
                qp.set_cid(cid, true);
                view.outstanding += 1;
                view.stats.record_submit(plan.op, plan.xfer_bytes);
                true
            }
            Err(io) => {
                qp.free.push(si);
                qp.parked = Some(Capsule { sqe, buf: io.buf });
                false
            }
        }
    }

    fn exec_admin(engine: &Arc<Engine>, qp: &mut Qpair, me: QpairRef, cap: Capsule, now_ms: u64) {
        let cid = cap.sqe.cid();
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

    fn poll_channels(&mut self) -> usize {
        let Self {
            qps,
            ns,
            stats,
            now_ns,
            ..
        } = self;
        let now_ns = *now_ns;
        let mut total = 0;
        for view in ns.views.iter_mut().flatten() {
            if view.outstanding == 0 {
                continue;
            }
            let mut done = 0u32;
            let mut late = 0u64;
            let vstats = &view.stats;
            let lat = &mut view.lat;
            view.ch.poll(&mut |c: BdevCompletion| {
                done += 1;
                let (qi, qgen, si, sgen) = decode_tag(c.tag);
                let Some(e) = qps.get_mut(qi as usize) else {
                    late += 1;
                    return;
                };
                let Some(qp) = e.qp.as_deref_mut() else {
                    late += 1;
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
                qp.in_backend -= 1;
                qp.set_cid(cid, false);
                let status = match c.result {
                    Ok(()) => Status::SUCCESS,
                    Err(e) => {
                        vstats.record_error();
                        e.to_status()
                    }
                };
                qp.respond(cid, status, 0, c.buf);
            });
            view.outstanding -= done.min(view.outstanding);
            if view.outstanding == 0 && !view.pause_waiters.is_empty() {
                for w in view.pause_waiters.drain(..) {
                    w();
                }
            }
            if late > 0 {
                bump(&stats.late_completions, late);
            }
            total += done as usize;
        }
        if total > 0 {
            bump(&stats.completions, total as u64);
        }
        total
    }

    // ---- teardown --------------------------------------------------------

    fn on_host_closed(&mut self, me: QpairRef) {
        let Some(qp) = self.qp_mut(me) else { return };
        if qp.qid == 0
            && qp.state == QpState::Active
            && let Some(ctrl) = qp.ctrl.clone()
        {
            drop(ctrl);
            self.start_ctrl_teardown(me, TeardownKind::Delete);
        } else {
            self.quiesce_qpair_with(me, None, None);
        }
    }

    /// Quiesces a queue pair and destroys it once drained; `done` runs after.
    pub fn quiesce_qpair(&mut self, r: QpairRef, done: Box<dyn FnOnce() + Send>) {
        self.quiesce_qpair_with(r, Some(done), None);
    }

    fn quiesce_qpair_with(
        &mut self,
        r: QpairRef,
        done: Option<Box<dyn FnOnce() + Send>>,
        disconnect_cid: Option<u16>,
    ) {
        let deadline_ms = self.engine.now_ms() + self.engine.opts.drain_timeout.as_millis() as u64;
        let Some(qp) = self.qp_mut(r) else {
            if let Some(d) = done {
                d();
            }
            return;
        };
        if let Some(drain) = qp.drain.as_mut() {
            drain.waiters.extend(done);
            if disconnect_cid.is_some() {
                drain.disconnect_cid = disconnect_cid;
            }
            return;
        }
        qp.state = QpState::Draining;
        qp.drain = Some(Drain {
            deadline_ms,
            stage: 0,
            waiters: done.into_iter().collect(),
            disconnect_cid,
        });
        self.draining += 1;
        self.try_finish_drain(r);
    }

    fn timers(&mut self) {
        let now = self.now_ms;
        let mut expired = Vec::new();
        let mut due = Vec::new();
        for (i, e) in self.qps.iter().enumerate() {
            let Some(qp) = e.qp.as_deref() else { continue };
            let r = QpairRef {
                pg: self.id,
                idx: i as u32,
                generation: e.generation,
            };
            if qp.state == QpState::Draining {
                due.push(r);
            } else if qp.qid == 0
                && qp.state == QpState::Active
                && let Some(ctrl) = &qp.ctrl
            {
                let kato = ctrl.state().features.kato_ms;
                if ctrl.keep_alive_expired(now, kato) {
                    expired.push((r, ctrl.cntlid));
                }
            }
        }
        for (r, cntlid) in expired {
            tracing::warn!(cntlid, "keep-alive timeout: tearing the controller down");
            self.start_ctrl_teardown(r, TeardownKind::Delete);
        }
        for r in due {
            self.try_finish_drain(r);
        }
    }

    fn try_finish_drain(&mut self, r: QpairRef) {
        let now = self.engine.now_ms();
        let drain_ms = self.engine.opts.drain_timeout.as_millis() as u64;
        let Self { qps, ns, stats, .. } = self;
        let Some(qp) = qps
            .get_mut(r.idx as usize)
            .filter(|e| e.generation == r.generation)
            .and_then(|e| e.qp.as_deref_mut())
        else {
            return;
        };
        let Some(drain) = qp.drain.as_mut() else {
            return;
        };
        if qp.in_backend > 0 {
            if now < drain.deadline_ms {
                return;
            }
            if drain.stage == 0 {
                // Bounded wait over: reset the backends still holding our commands.
                tracing::warn!(
                    qid = qp.qid,
                    in_flight = qp.in_backend,
                    "drain timed out; resetting backends"
                );
                let mut reset_views: Vec<u32> = Vec::new();
                for s in qp.slots.iter().filter(|s| s.busy) {
                    if !reset_views.contains(&s.view) {
                        reset_views.push(s.view);
                    }
                }
                for vi in reset_views {
                    if let Some(Some(v)) = ns.views.get_mut(vi as usize) {
                        let still = v.ch.reset();
                        bump(&stats.backend_resets, 1);
                        if still > 0 {
                            tracing::warn!(
                                nsid = v.nsid,
                                still,
                                "backend still holds I/O after reset"
                            );
                        }
                    }
                }
                drain.stage = 1;
                drain.deadline_ms = now + drain_ms;
                return;
            }
            // The backend did not give the commands back even after a
            // reset. Their buffers stay owned by the backend; the slot
            // generations make any later completion a no-op.
            tracing::error!(
                qid = qp.qid,
                in_flight = qp.in_backend,
                "backend never completed; destroying queue pair anyway"
            );
            drain.stage = 2;
        }
        self.destroy_qpair(r);
    }

    fn destroy_qpair(&mut self, r: QpairRef) {
        let Some(e) = self
            .qps
            .get_mut(r.idx as usize)
            .filter(|e| e.generation == r.generation)
        else {
            return;
        };
        let Some(mut qp) = e.qp.take() else { return };
        e.generation = e.generation.wrapping_add(1);
        self.free_qps.push(r.idx);
        self.draining = self.draining.saturating_sub(1);
        if let Some(h) = self.engine.pgs().get(self.id) {
            h.qpairs.fetch_sub(1, Ordering::Relaxed);
        }
        bump(&self.stats.qpairs_destroyed, 1);
        // Stop the host from submitting, then answer whatever it had queued
        // that we never fetched.
        qp.tr.close();
        if let Some(cap) = qp.parked.take() {
            qp.respond(cap.sqe.cid(), Status::ABORTED_SQ_DELETION, 0, cap.buf);
        }
        while let Some(cap) = qp.tr.recv() {
            qp.respond(cap.sqe.cid(), Status::ABORTED_SQ_DELETION, 0, cap.buf);
        }
        let drain = qp.drain.take();
        if let Some(ctrl) = qp.ctrl.clone() {
            let mut st = ctrl.state();
            if qp.qid == 0 {
                for cid in st.aer_cids.drain(..).collect::<Vec<_>>() {
                    qp.respond(cid, Status::ABORTED_SQ_DELETION, 0, DataBuf::None);
                }
                if let Some(cid) = qp.pending_property_set.take() {
                    qp.respond(cid, Status::ABORTED_SQ_DELETION, 0, DataBuf::None);
                }
                drop(st);
                let mut sst = ctrl.subsys.state();
                if sst
                    .controllers
                    .get(&ctrl.cntlid)
                    .is_some_and(|c| Arc::ptr_eq(c, &ctrl))
                {
                    sst.controllers.remove(&ctrl.cntlid);
                }
            } else if let Some(slot) = st.io_qpairs.get_mut(qp.qid as usize - 1)
                && *slot == Some(r)
            {
                *slot = None;
            }
        }
        if let Some(cid) = drain.as_ref().and_then(|d| d.disconnect_cid) {
            qp.respond(cid, Status::SUCCESS, 0, DataBuf::None);
        }
        qp.flush_backlog();
        if !qp.backlog.is_empty() {
            tracing::debug!(
                qid = qp.qid,
                left = qp.backlog.len(),
                "completion ring full at destroy; host is gone"
            );
        }
        qp.tr.finish();
        if let Some(d) = drain {
            for w in d.waiters {
                w();
            }
        }
    }

    /// Starts a controller teardown from its admin queue pair `admin`: every
    /// I/O queue pair is quiesced and destroyed on its own poll group, then
    /// [`PollGroup::finish_ctrl_teardown`] runs here.
    pub fn start_ctrl_teardown(&mut self, admin: QpairRef, kind: TeardownKind) {
        let Some(qp) = self.qp_mut(admin) else { return };
        let Some(ctrl) = qp.ctrl.clone() else { return };
        let refs: Vec<QpairRef> = {
            let mut st = ctrl.state();
            if st.teardown.is_some() {
                // A teardown is already running; a Delete supersedes a reset.
                if kind == TeardownKind::Delete {
                    st.teardown = Some(TeardownKind::Delete);
                }
                return;
            }
            st.teardown = Some(kind);
            match kind {
                TeardownKind::Shutdown => {
                    st.csts = (st.csts & !csts::SHST_MASK) | csts::SHST_OCCURRING;
                }
                TeardownKind::Reset | TeardownKind::Delete => ctrl.set_ready(&mut st, false),
            }
            st.io_qpairs.iter_mut().filter_map(Option::take).collect()
        };
        if kind == TeardownKind::Delete {
            // Stop fetching admin commands (Keep Alive included: the
            // association is ending); the queue stays for the answers.
            qp.state = QpState::Draining;
        }
        let engine = self.engine.clone();
        let cd = Countdown::new(refs.len(), move || {
            if let Some(h) = engine.pgs().get(admin.pg) {
                h.send(move |pg| pg.finish_ctrl_teardown(admin, ctrl));
            }
        });
        for r in refs {
            let cd = cd.clone();
            if let Some(h) = self.engine.pgs().get(r.pg) {
                h.send(move |pg| pg.quiesce_qpair(r, Box::new(move || cd.arrive())));
            } else {
                cd.arrive();
            }
        }
    }

    /// Runs when every I/O queue pair of a controller has been destroyed.
    pub fn finish_ctrl_teardown(&mut self, admin: QpairRef, ctrl: Arc<Controller>) {
        let kind = ctrl.state().teardown;
        let Some(kind) = kind else { return };
        match kind {
            TeardownKind::Delete => {
                let mut newly = false;
                if let Some(qp) = self.qp_mut(admin) {
                    qp.state = QpState::Draining;
                    if qp.drain.is_none() {
                        qp.drain = Some(Drain {
                            deadline_ms: 0,
                            stage: 0,
                            waiters: Vec::new(),
                            disconnect_cid: None,
                        });
                        newly = true;
                    }
                } else {
                    return;
                }
                if newly {
                    self.draining += 1;
                }
                self.try_finish_drain(admin);
            }
            TeardownKind::Reset | TeardownKind::Shutdown => {
                let aers: Vec<u16> = {
                    let mut st = ctrl.state();
                    st.teardown = None;
                    if kind == TeardownKind::Shutdown {
                        st.csts = (st.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
                        Vec::new()
                    } else {
                        st.csts = 0;
                        st.io_queues_set = false;
                        st.io_queues_granted = self.engine.opts.max_io_queues;
                        st.pending_events.clear();
                        st.masked_events = 0;
                        st.aer_cids.drain(..).collect()
                    }
                };
                if let Some(qp) = self.qp_mut(admin) {
                    for cid in aers {
                        qp.respond(cid, Status::ABORTED_SQ_DELETION, 0, DataBuf::None);
                    }
                    if let Some(cid) = qp.pending_property_set.take() {
                        qp.respond(cid, Status::SUCCESS, 0, DataBuf::None);
                    }
                }
            }
        }
    }

    /// Completes waiting Asynchronous Event Requests with pending events.
    pub fn deliver_events(&mut self, admin: QpairRef) {
        let Some(qp) = self.qp_mut(admin) else { return };
        let Some(ctrl) = qp.ctrl.clone() else { return };
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
            max_xfer: self.engine.opts.max_xfer_bytes(),
        };
        if let Some(old) = self.ns.remove(sid, ns.nsid) {
            tracing::warn!(nsid = old.nsid, "replacing an existing namespace view");
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
        });
        self.count_lat_views();
        Ok(())
    }

    fn count_lat_views(&mut self) {
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

    /// Pauses a namespace: its new commands park; `done` runs once the
    /// commands already handed to its backend have completed.
    pub fn pause_ns(&mut self, sid: u32, nsid: u32, done: Box<dyn FnOnce() + Send>) {
        let Some(vi) = self.ns.lookup(sid, nsid) else {
            done();
            return;
        };
        let Some(v) = self.ns.views[vi as usize].as_mut() else {
            done();
            return;
        };
        v.paused = true;
        if v.outstanding == 0 {
            done();
        } else {
            v.pause_waiters.push(done);
        }
    }

    /// Backend reset of one namespace's channel here: the escalation when a
    /// namespace drain runs out of time.
    pub fn reset_ns_channel(&mut self, sid: u32, nsid: u32) {
        if let Some(vi) = self.ns.lookup(sid, nsid)
            && let Some(v) = self.ns.views[vi as usize].as_mut()
        {
            let still = v.ch.reset();
            bump(&self.stats.backend_resets, 1);
            if still > 0 {
                tracing::warn!(nsid, still, "backend still holds I/O after reset");
            }
        }
    }

    /// Resumes a paused namespace.
    pub fn resume_ns(&mut self, sid: u32, nsid: u32) {
        if let Some(vi) = self.ns.lookup(sid, nsid)
            && let Some(v) = self.ns.views[vi as usize].as_mut()
        {
            v.paused = false;
        }
    }

    /// Removes a namespace view. Call after [`PollGroup::pause_ns`] finished:
    /// parked commands then fail with Invalid Namespace.
    pub fn remove_ns_view(&mut self, sid: u32, nsid: u32) {
        if let Some(mut v) = self.ns.remove(sid, nsid)
            && v.outstanding > 0
        {
            // Should not happen after a pause; keep the channel alive until
            // its backend gives everything back.
            tracing::error!(
                nsid,
                outstanding = v.outstanding,
                "removing a namespace with I/O in flight; resetting its channel"
            );
            v.ch.reset();
            let deadline = std::time::Instant::now() + self.engine.opts.drain_timeout;
            while v.ch.in_flight() > 0 && std::time::Instant::now() < deadline {
                v.ch.poll(&mut |_c| {});
            }
        }
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

impl crate::reactor::Poller for PollGroup {
    fn poll(&mut self) -> usize {
        PollGroup::poll(self)
    }

    fn stop(&mut self) {
        // Last chance: drain everything so no completion is lost.
        let deadline = std::time::Instant::now() + self.engine.opts.drain_timeout * 2;
        while self.ns.views.iter().flatten().any(|v| v.outstanding > 0)
            && std::time::Instant::now() < deadline
        {
            self.poll_channels();
        }
        for i in 0..self.qps.len() {
            let r = QpairRef {
                pg: self.id,
                idx: i as u32,
                generation: self.qps[i].generation,
            };
            if self.qps[i].qp.is_some() {
                self.destroy_qpair(r);
            }
        }
    }
}
