//! Teardown: quiesce → drain → escalate → destroy, the rule this project
//! exists for, in one place.
//!
//! Reset, shutdown, disconnect, controller deletion, keep-alive expiry,
//! namespace removal and target stop all end here:
//!
//! 1. **Quiesce.** A queue pair stops fetching ([`QpState::Draining`]); a
//!    namespace pauses (its new commands park). Backend completions keep
//!    flowing and are answered as usual.
//! 2. **Drain.** Wait, by timer on the poll group, never by blocking it,
//!    until every command handed to a backend has come back and its
//!    completion was posted. Bound: [`EngineOptions::drain_timeout`].
//! 3. **Escalate.** When the bound passes, reset the backend channels still
//!    holding commands. [`IoChannel::reset`] only *starts* the backend's
//!    escalation and returns at once; what it gives back arrives through
//!    `poll` like any completion and is answered to its queue pair. One
//!    reset per channel per bound, however many drains meet it.
//! 4. **Stage 3.** If the backend still holds commands one more bound after
//!    its reset, the controller owning them is failed to its host
//!    ([`Controller::fail`]: CSTS.CFS = 1; its admin queue answers Property
//!    Get only). The held commands are never answered and their buffers stay
//!    with the backend: we never free what a device may still write. A
//!    queue pair destroyed with commands held leaves its index quarantined
//!    ([`QpEntry::orphans`]) until they come back, so nothing late can match
//!    a later queue pair.
//! 5. **Destroy.** Only now: never-fetched commands are answered with
//!    *Command Aborted due to SQ Deletion*, the queue pair goes, the admin
//!    queue last.
//!
//! A removed namespace whose backend still holds commands *retires*: its
//! view leaves the index (new commands see Invalid Namespace) but stays in
//! the table, polled with the others, so every command it drains is
//! answered to its queue pair; it escalates on the same bounds.
//!
//! Every command gets at most one completion, and exactly one unless stage
//! 3 struck it.
//!
//! [`EngineOptions::drain_timeout`]: super::engine::EngineOptions::drain_timeout
//! [`IoChannel::reset`]: crate::bdev::IoChannel::reset
//! [`QpState::Draining`]: super::qpair::QpState::Draining
//! [`QpEntry::orphans`]: super::poll_group::QpEntry::orphans

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::admin::AdminOutcome;
use super::ctrlr::{Controller, QpairRef, TeardownKind, csts};
use super::engine::{Countdown, bump};
use super::fabrics;
use super::poll_group::{NsView, PollGroup};
use super::qpair::{Drain, QpState};
use crate::iobuf::DataBuf;
use crate::spec::Status;

/// Escalation stage of a retiring namespace view that gave up: it is still
/// polled until its backend gives everything back, but no timer runs for it.
pub(super) const RETIRE_GAVE_UP: u8 = 2;

/// A namespace view removed while its backend held commands.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retire {
    /// Next escalation step, ms since the epoch.
    pub(super) deadline_ms: u64,
    /// 0: waiting; 1: reset sent; [`RETIRE_GAVE_UP`]: controllers failed.
    pub(super) stage: u8,
}

/// Resets a view's channel unless a reset already started within the last
/// bound. Returns `true` if it reset. Skipping is sound: a drain escalates
/// one bound after its quiesce, and nothing is submitted by a quiesced
/// queue pair or to a retiring view, so a reset within the last bound was
/// issued after every command this drain waits for.
fn reset_view(
    v: &mut NsView,
    now_ms: u64,
    bound_ms: u64,
    resets: &std::sync::atomic::AtomicU64,
) -> bool {
    if v.reset_ms != 0 && now_ms.saturating_sub(v.reset_ms) < bound_ms {
        return false;
    }
    let still = v.ch.reset();
    v.reset_ms = now_ms.max(1);
    bump(resets, 1);
    if still > 0 {
        tracing::warn!(
            nsid = v.nsid,
            still,
            "backend still holds I/O after reset; waiting one more bound"
        );
    }
    true
}

/// Stage 3: fails `ctrl` to its host, once.
fn fail_controller(ctrl: &Controller, why: &'static str, failed: &std::sync::atomic::AtomicU64) {
    if ctrl.fail() {
        bump(failed, 1);
        tracing::error!(
            cntlid = ctrl.cntlid,
            subsystem = %ctrl.subsys.nqn,
            why,
            "controller failed to its host (CSTS.CFS = 1); its held commands stay with the backend"
        );
    }
}

impl PollGroup {
    fn bound_ms(&self) -> u64 {
        self.engine.opts.drain_timeout.as_millis() as u64
    }

    // ---- queue pairs -----------------------------------------------------

    pub(super) fn on_host_closed(&mut self, me: QpairRef) {
        let Some(qp) = self.qp_mut(me) else { return };
        if qp.qid == 0 && qp.state == QpState::Active && qp.ctrl.is_some() {
            self.start_ctrl_teardown(me, TeardownKind::Delete);
        } else {
            self.quiesce_qpair_with(me, None, None);
        }
    }

    /// Quiesces a queue pair and destroys it once drained; `done` runs after.
    pub fn quiesce_qpair(&mut self, r: QpairRef, done: Box<dyn FnOnce() + Send>) {
        self.quiesce_qpair_with(r, Some(done), None);
    }

    pub(super) fn quiesce_qpair_with(
        &mut self,
        r: QpairRef,
        done: Option<Box<dyn FnOnce() + Send>>,
        disconnect_cid: Option<u16>,
    ) {
        let deadline_ms = self.engine.now_ms() + self.bound_ms();
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

    /// Keep-alive expiry, drain deadlines and retiring views.
    pub(super) fn timers(&mut self) {
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
        self.retire_timers(now);
    }

    fn try_finish_drain(&mut self, r: QpairRef) {
        let now = self.engine.now_ms();
        let bound = self.bound_ms();
        let Self { qps, ns, stats, .. } = self;
        let Some(qp) = qps
            .get_mut(r.idx as usize)
            .filter(|e| e.generation == r.generation)
            .and_then(|e| e.qp.as_deref_mut())
        else {
            return;
        };
        let in_backend = qp.in_backend();
        let Some(drain) = qp.drain.as_mut() else {
            return;
        };
        if in_backend > 0 {
            if now < drain.deadline_ms {
                return;
            }
            if drain.stage == 0 {
                // Bounded wait over: escalate on every backend still
                // holding our commands; their answers come through poll.
                tracing::warn!(
                    qid = qp.qid,
                    in_flight = in_backend,
                    "drain timed out; resetting backends"
                );
                let mut views: Vec<u32> = Vec::new();
                for s in qp.slots.iter().filter(|s| s.busy) {
                    if !views.contains(&s.view) {
                        views.push(s.view);
                    }
                }
                for vi in views {
                    if let Some(Some(v)) = ns.views.get_mut(vi as usize) {
                        reset_view(v, now, bound, &stats.backend_resets);
                    }
                }
                drain.stage = 1;
                drain.deadline_ms = now + bound;
                return;
            }
            // Stage 3: the backend kept them through its reset.
            tracing::error!(
                qid = qp.qid,
                in_flight = in_backend,
                "backend still holds commands after its reset; failing the controller"
            );
            drain.stage = 2;
            if let Some(ctrl) = qp.ctrl.clone() {
                fail_controller(&ctrl, "drain", &stats.controllers_failed);
            }
        }
        self.destroy_qpair(r);
    }

    pub(super) fn destroy_qpair(&mut self, r: QpairRef) {
        let Some(e) = self
            .qps
            .get_mut(r.idx as usize)
            .filter(|e| e.generation == r.generation)
        else {
            return;
        };
        let Some(mut qp) = e.qp.take() else { return };
        e.generation = e.generation.wrapping_add(1);
        if qp.in_backend() > 0 {
            // Stage 3: the index waits for these before anyone reuses it.
            e.orphans += qp.in_backend();
        } else if e.orphans == 0 {
            self.free_qps.push(r.idx);
        }
        self.draining = self.draining.saturating_sub(qp.drain.is_some() as usize);
        if let Some(h) = self.engine.pgs().get(self.id) {
            h.qpairs.fetch_sub(1, Ordering::Relaxed);
        }
        bump(&self.stats.qpairs_destroyed, 1);
        let failed = qp.ctrl.as_ref().is_some_and(|c| c.is_failed());
        // Stop the host from submitting, then answer whatever it had queued
        // that we never fetched (a failed controller's admin queue answers
        // nothing more).
        qp.tr.close();
        let silent = failed && qp.qid == 0;
        if let Some(cap) = qp.parked.take()
            && !silent
        {
            qp.respond(cap.sqe.cid(), Status::ABORTED_SQ_DELETION, 0, cap.buf);
        }
        while let Some(cap) = qp.tr.recv() {
            bump(&self.stats.commands, 1);
            if !silent {
                qp.respond(cap.sqe.cid(), Status::ABORTED_SQ_DELETION, 0, cap.buf);
            }
        }
        let drain = qp.drain.take();
        if let Some(ctrl) = qp.ctrl.clone() {
            let mut st = ctrl.state();
            if qp.qid == 0 {
                let aers: Vec<u16> = st.aer_cids.drain(..).collect();
                drop(st);
                if !silent {
                    for cid in aers {
                        qp.respond(cid, Status::ABORTED_SQ_DELETION, 0, DataBuf::None);
                    }
                    if let Some(cid) = qp.pending_property_set.take() {
                        qp.respond(cid, Status::ABORTED_SQ_DELETION, 0, DataBuf::None);
                    }
                    while let Some(sqe) = qp.queued_property_sets.pop_front() {
                        qp.respond(sqe.cid(), Status::ABORTED_SQ_DELETION, 0, DataBuf::None);
                    }
                }
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
        // A Disconnect is answered only when the queue really drained.
        if let Some(cid) = drain.as_ref().and_then(|d| d.disconnect_cid)
            && qp.in_backend() == 0
        {
            qp.respond(cid, Status::SUCCESS, 0, DataBuf::None);
        }
        bump(&self.stats.responses, qp.responses);
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

    // ---- controllers -----------------------------------------------------

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
            TeardownKind::Reset | TeardownKind::Shutdown if ctrl.is_failed() => {
                // Stage 3 struck during the reset: CFS stays, nothing more is
                // answered; the host's recovery ends the association.
                ctrl.state().teardown = None;
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
                self.run_queued_property_sets(admin);
            }
        }
    }

    /// Runs the Property Sets that arrived while another one waited for its
    /// reset or shutdown, in order, until one of them starts a teardown.
    fn run_queued_property_sets(&mut self, admin: QpairRef) {
        let engine = self.engine.clone();
        let Some(qp) = self.qp_mut(admin) else { return };
        while qp.pending_property_set.is_none() {
            let Some(sqe) = qp.queued_property_sets.pop_front() else {
                break;
            };
            let cid = sqe.cid();
            match fabrics::property_set(qp, &sqe) {
                AdminOutcome::Done { status, dw0, dw1 } => {
                    qp.respond_dw(cid, status, dw0, dw1, DataBuf::None)
                }
                AdminOutcome::Teardown(kind) => {
                    qp.pending_property_set = Some(cid);
                    if let Some(h) = engine.pgs().get(admin.pg) {
                        h.send(move |pg| pg.start_ctrl_teardown(admin, kind));
                    }
                }
                AdminOutcome::Parked | AdminOutcome::Disconnect => {}
            }
        }
    }

    // ---- namespaces ------------------------------------------------------

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

    /// Starts a backend reset of one namespace's channel here: the
    /// escalation when a namespace drain runs out of time. Returns at once;
    /// what the backend gives back is answered as it comes.
    pub fn reset_ns_channel(&mut self, sid: u32, nsid: u32) {
        let now = self.engine.now_ms();
        let bound = self.bound_ms();
        if let Some(vi) = self.ns.lookup(sid, nsid)
            && let Some(v) = self.ns.views[vi as usize].as_mut()
        {
            reset_view(v, now, bound, &self.stats.backend_resets);
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

    /// Removes a namespace view. Call after [`PollGroup::pause_ns`] finished
    /// (or ran out of time): parked commands then fail with Invalid
    /// Namespace. A view whose backend still holds commands retires instead
    /// of going away (see the module docs).
    pub fn remove_ns_view(&mut self, sid: u32, nsid: u32) {
        self.retire_view(sid, nsid);
    }

    /// Takes a view out of the index; drops it if its backend holds
    /// nothing, else keeps it polled, escalating on the drain bounds.
    pub(super) fn retire_view(&mut self, sid: u32, nsid: u32) {
        let deadline_ms = self.engine.now_ms() + self.bound_ms();
        let Some(vi) = self.ns.unindex(sid, nsid) else {
            return;
        };
        let Some(slot) = self.ns.views.get_mut(vi as usize) else {
            return;
        };
        match slot {
            Some(v) if v.outstanding > 0 => {
                tracing::warn!(
                    nsid,
                    outstanding = v.outstanding,
                    "namespace removed with I/O at its backend; retiring its channel"
                );
                v.paused = false;
                v.retiring = Some(Retire {
                    deadline_ms,
                    stage: 0,
                });
                self.draining += 1;
            }
            _ => *slot = None,
        }
        self.count_lat_views();
    }

    fn retire_timers(&mut self, now: u64) {
        let bound = self.bound_ms();
        let mut fail_views: Vec<u32> = Vec::new();
        for (vi, v) in self.ns.views.iter_mut().enumerate() {
            let Some(v) = v.as_mut() else { continue };
            let Some(r) = v.retiring.as_mut() else {
                continue;
            };
            if r.stage >= RETIRE_GAVE_UP || now < r.deadline_ms {
                continue;
            }
            if r.stage == 0 {
                r.stage = 1;
                r.deadline_ms = now + bound;
                reset_view(v, now, bound, &self.stats.backend_resets);
            } else {
                r.stage = RETIRE_GAVE_UP;
                self.draining = self.draining.saturating_sub(1);
                tracing::error!(
                    nsid = v.nsid,
                    held = v.outstanding,
                    "removed namespace's backend still holds commands after its reset"
                );
                fail_views.push(vi as u32);
            }
        }
        if fail_views.is_empty() {
            return;
        }
        for e in &self.qps {
            let Some(qp) = e.qp.as_deref() else { continue };
            if qp
                .slots
                .iter()
                .any(|s| s.busy && fail_views.contains(&s.view))
                && let Some(ctrl) = &qp.ctrl
            {
                fail_controller(ctrl, "namespace removal", &self.stats.controllers_failed);
            }
        }
    }

    // ---- stop ------------------------------------------------------------

    /// The reactor is ending: drive the teardown machinery (completions,
    /// drains, escalation) until no backend holds anything or the bound
    /// runs out, then destroy what is left, failing the controllers of
    /// commands still held.
    pub(super) fn stop_all(&mut self) {
        let deadline =
            Instant::now() + self.engine.opts.drain_timeout * 2 + Duration::from_millis(100);
        loop {
            let held = self.ns.views.iter().flatten().any(|v| v.outstanding > 0);
            if (!held && self.draining == 0) || Instant::now() >= deadline {
                break;
            }
            if self.poll() == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for i in 0..self.qps.len() {
            let Some(qp) = self.qps[i].qp.as_deref() else {
                continue;
            };
            if qp.in_backend() > 0
                && let Some(ctrl) = &qp.ctrl
            {
                fail_controller(ctrl, "target stop", &self.stats.controllers_failed);
            }
            let r = QpairRef {
                pg: self.id,
                idx: i as u32,
                generation: self.qps[i].generation,
            };
            self.destroy_qpair(r);
        }
    }
}

impl crate::reactor::Poller for PollGroup {
    fn poll(&mut self) -> usize {
        PollGroup::poll(self)
    }

    fn stop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use crate::bdev::error::Trigger;
    use crate::bdev::{
        ErrorAction, ErrorBdev, ErrorParams, ErrorRule, IoOp, MallocBdev, MallocParams, OpMatch,
    };
    use crate::iobuf::{DataBuf, IoBuf};
    use crate::nvmf::raw::{RawQueue, connect_data};
    use crate::nvmf::target::{NamespaceParams, ReactorMode};
    use crate::nvmf::{EngineOptions, NvmfTarget, SubsystemParams, TargetOptions};
    use crate::spec::{FabricsType, NvmOpcode, SubmissionEntry};

    const NQN: &str = "nqn.2026-11.io.nvmf-rs:orphans";
    const HOST: &str = "nqn.2026-11.io.nvmf-rs:orphans-host";

    fn poll_for(t: &NvmfTarget, limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            t.poll();
            if f() {
                return true;
            }
        }
        f()
    }

    /// A queue pair destroyed at stage 3 leaves its index quarantined until
    /// the backend gives its commands back: a later queue pair never shares
    /// an index with a command that may still complete, so the 16-bit
    /// generation in the tag never has to hold across a wrap.
    #[test]
    fn stage3_quarantines_the_qpair_index_until_its_orphans_return() {
        let t = NvmfTarget::start(TargetOptions {
            engine: EngineOptions {
                drain_timeout: Duration::from_millis(30),
                ..EngineOptions::default()
            },
            reactors: ReactorMode::Manual(1),
        })
        .unwrap();
        let ram = Arc::new(
            MallocBdev::new(MallocParams {
                name: "ram".into(),
                block_size: 512,
                num_blocks: 64,
            })
            .unwrap(),
        );
        let err = Arc::new(
            ErrorBdev::new(
                ErrorParams {
                    name: "err".into(),
                    rules: vec![ErrorRule {
                        op: OpMatch::Op(IoOp::Write),
                        lba_range: Some((0, 1)),
                        trigger: Trigger::EveryNth(1),
                        count: Some(1),
                        action: ErrorAction::Stuck,
                    }],
                    seed: 1,
                },
                ram,
            )
            .unwrap(),
        );
        t.add_bdev(err.clone()).unwrap();
        t.add_subsystem(SubsystemParams {
            nqn: NQN.into(),
            serial: "O".into(),
            model: "orphans".into(),
            max_namespaces: 1,
            allow_any_host: true,
            hosts: vec![],
        })
        .unwrap();
        t.add_namespace(
            NQN,
            NamespaceParams {
                nsid: Some(1),
                bdev: "err".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let hostid = [5u8; 16];
        // A controller: its admin queue, enabled.
        let controller = |t: &Arc<NvmfTarget>| {
            let mut admin = RawQueue::open(t, 32).unwrap();
            let cqe = admin
                .connect(0, 32, 0, connect_data(&hostid, 0xffff, NQN, HOST))
                .unwrap();
            assert!(cqe.status().is_success());
            let mut en = SubmissionEntry::fabrics(FabricsType::PROPERTY_SET, 0);
            en.cdw11 = 0x14;
            en.cdw12 = 1 | (6 << 16) | (4 << 20);
            let r = admin.execute(en, DataBuf::None).unwrap().0;
            assert!(r.status().is_success());
            (admin, cqe.dw0 as u16)
        };
        let io_queue = |t: &Arc<NvmfTarget>, cntlid: u16, qid: u16| {
            let mut q = RawQueue::open(t, 8).unwrap();
            let c = q
                .connect(qid, 8, 0, connect_data(&hostid, cntlid, NQN, HOST))
                .unwrap();
            assert!(c.status().is_success(), "{:?}", c.status());
            q
        };
        let slots = |t: &NvmfTarget| {
            t.with_manual_pg(0, |pg| {
                (
                    pg.qps
                        .iter()
                        .map(|e| (e.qp.as_ref().map(|q| q.qid), e.orphans))
                        .collect::<Vec<_>>(),
                    pg.free_qps.clone(),
                )
            })
            .unwrap()
        };

        let (admin, cntlid) = controller(&t);
        let mut q1 = io_queue(&t, cntlid, 1);
        let (before, _) = slots(&t);
        let idx = before.iter().position(|e| e.0 == Some(1)).unwrap();
        q1.submit(
            SubmissionEntry::nvm_rw(NvmOpcode::WRITE.0, 0, 1, 0, 1),
            DataBuf::One(IoBuf::new(512)),
        )
        .unwrap();
        assert!(poll_for(&t, Duration::from_secs(5), || err.held_count() == 1));
        // The host closes the queue: drain, reset, one more bound, stage 3.
        drop(q1);
        assert!(poll_for(&t, Duration::from_secs(5), || slots(&t).0[idx]
            .0
            .is_none()));
        let (after, free) = slots(&t);
        assert_eq!(
            after[idx].1, 1,
            "the stuck command is not counted as an orphan"
        );
        assert!(
            !free.contains(&(idx as u32)),
            "quarantined index on the free list"
        );

        // New queue pairs (the failed controller takes none: a new one)
        // go elsewhere.
        let (admin2, cntlid2) = controller(&t);
        let mut q2 = io_queue(&t, cntlid2, 2);
        let (now, _) = slots(&t);
        assert!(
            now[idx].0.is_none(),
            "a queue pair took the quarantined index"
        );
        assert!(now.iter().any(|e| e.0 == Some(2)));

        // The backend lets go: dropped as late, the index comes back, and
        // the new queue pair hears nothing.
        let late = |t: &NvmfTarget| {
            t.engine().pgs()[0]
                .stats
                .late_completions
                .load(Ordering::Relaxed)
        };
        let late0 = late(&t);
        err.release_held();
        assert!(poll_for(&t, Duration::from_secs(5), || late(&t) == late0 + 1));
        let (end, free) = slots(&t);
        assert_eq!(end[idx].1, 0);
        assert!(free.contains(&(idx as u32)));
        assert!(q2.rings_mut().reap().is_none());
        drop(q2);
        drop(admin2);
        drop(admin);
        t.stop().unwrap();
    }
}
