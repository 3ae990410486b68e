//! The listener and the host controller: connect, bring-up, keep-alive,
//! asynchronous events, reset, shutdown and disconnect.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use target_core::iobuf::DataBuf;
use target_core::nvmf::raw;
use target_core::nvmf::{Capsule, NvmfTarget, QueueRings};
use target_core::spec::{AdminOpcode, CompletionEntry, SubmissionEntry};

use crate::admin::{self, AdminQueue, lock};
use crate::qpair::{HostQpair, MAX_DEPTH};
use crate::{HostError, wait};
pub use target_core::host_cmds::AsyncEvent;
use target_core::host_cmds::{AdminCommands, PROP_CAP, PROP_VS, host_id_for, is_namespace_notice};
use target_core::host_ctrl::{
    AssocState, ControllerData, ReconnectEnd, ReconnectPolicy, StopFlag, reconnect,
};

/// The loop listener: which subsystems hosts in this process may reach.
pub struct LoopTransport {
    target: Arc<NvmfTarget>,
    listening: Mutex<Vec<String>>,
}

impl fmt::Debug for LoopTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopTransport").finish_non_exhaustive()
    }
}

impl LoopTransport {
    /// A listener on `target` exposing nothing yet.
    pub fn new(target: Arc<NvmfTarget>) -> Arc<Self> {
        Arc::new(Self {
            target,
            listening: Mutex::new(Vec::new()),
        })
    }

    /// The target behind the listener.
    pub fn target(&self) -> &Arc<NvmfTarget> {
        &self.target
    }

    /// Exposes a subsystem (`"*"`: all of them).
    pub fn listen(&self, nqn: &str) {
        let mut l = self.listening.lock().unwrap_or_else(|p| p.into_inner());
        if !l.iter().any(|n| n == nqn) {
            l.push(nqn.to_owned());
        }
    }

    /// Stops exposing a subsystem to new connections.
    pub fn unlisten(&self, nqn: &str) {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n| n != nqn);
    }

    fn exposes(&self, nqn: &str) -> bool {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| n == nqn || n == "*")
    }

    /// Connects a host controller: Fabrics Connect, the property handshake,
    /// Identify, Number of Queues, then the I/O queue pairs.
    pub fn connect(self: &Arc<Self>, opts: ConnectOptions) -> Result<HostController, HostError> {
        HostController::connect(self.clone(), opts)
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier (128 bits, non-zero).
    pub hostid: [u8; 16],
    /// I/O queue pairs to create.
    pub io_queues: u16,
    /// Entries per I/O queue.
    pub queue_depth: u16,
    /// Entries of the admin queue (at least 32).
    pub admin_depth: u16,
    /// Keep-alive timeout asked of the target, ms (0 = none).
    pub kato_ms: u32,
    /// Bound for every wait of the host.
    pub timeout: Duration,
    /// Run a background thread for keep-alive and asynchronous events.
    /// Off: call [`HostController::service`] yourself.
    pub background: bool,
    /// Error recovery, as Linux's `ctrl_loss_tmo`: how long the host keeps
    /// trying to reconnect after it lost the controller (a target-side
    /// reset, a controller-fatal, a deleted controller, a dead queue).
    /// `Duration::ZERO` (the default here) turns recovery off: a queue that
    /// ends stays ended and the caller reconnects (the behaviour tests of
    /// the target's teardown rely on).
    pub ctrl_loss_tmo: Duration,
    /// Pause between reconnect attempts (Linux's `reconnect_delay`); the
    /// first attempt is immediate.
    pub reconnect_delay: Duration,
    /// With recovery on: how often one command is resubmitted after a
    /// retryable failure (DNR clear: Aborted - SQ Deletion, Namespace Not
    /// Ready...), as Linux's `nvme_core.max_retries`.
    pub max_retries: u32,
}

impl ConnectOptions {
    /// Defaults: one queue of 128 entries, 10 s keep-alive, background on.
    pub fn new(subnqn: &str, hostnqn: &str) -> Self {
        Self {
            subnqn: subnqn.to_owned(),
            hostnqn: hostnqn.to_owned(),
            hostid: host_id_for(hostnqn),
            io_queues: 1,
            queue_depth: 128,
            admin_depth: 32,
            kato_ms: 10_000,
            timeout: Duration::from_secs(30),
            background: true,
            ctrl_loss_tmo: Duration::ZERO,
            reconnect_delay: Duration::from_millis(100),
            max_retries: 5,
        }
    }

    /// Turns error recovery on: reconnect every `reconnect_delay` for up to
    /// `ctrl_loss_tmo`, and resubmit retryable failures up to `max_retries`
    /// times each.
    pub fn with_recovery(mut self, reconnect_delay: Duration, ctrl_loss_tmo: Duration) -> Self {
        self.reconnect_delay = reconnect_delay;
        self.ctrl_loss_tmo = ctrl_loss_tmo;
        self
    }
}

/// What queue pairs need to reconnect, and the recovery state they share
/// with the controller's poller.
#[derive(Debug)]
pub(crate) struct Assoc {
    pub transport: Arc<LoopTransport>,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub kato_ms: u32,
    pub timeout: Duration,
    pub admin_depth: u16,
    pub io_queues: u16,
    /// Recovery options (`ctrl_loss_tmo` zero: off).
    pub ctrl_loss_tmo: Duration,
    pub reconnect_delay: Duration,
    pub max_retries: u32,
    /// What the queue pairs and the poller share of the association.
    pub state: AssocState,
}

impl Deref for Assoc {
    type Target = AssocState;
    fn deref(&self) -> &AssocState {
        &self.state
    }
}

impl Assoc {
    /// Error recovery is on.
    pub(crate) fn recovery(&self) -> bool {
        !self.ctrl_loss_tmo.is_zero()
    }

    pub(crate) fn connect_io_queue(&self, qid: u16, depth: u16) -> Result<QueueRings, HostError> {
        let target = self.transport.target.clone();
        wait::until(&target, self.timeout, "controller ready", || {
            (self.ready.load(Ordering::Acquire) || self.gone.load(Ordering::Acquire)).then_some(())
        })?;
        if self.gone.load(Ordering::Acquire) {
            return Err(HostError::Disconnected("controller".into()));
        }
        let (rings, _) = connect_queue(self, qid, depth, self.cntlid.load(Ordering::Acquire))?;
        Ok(rings)
    }
}

/// Creates rings, hands the target end to the target, and runs Fabrics
/// Connect on them.
fn connect_queue(
    a: &Assoc,
    qid: u16,
    depth: u16,
    cntlid: u16,
) -> Result<(QueueRings, CompletionEntry), HostError> {
    let (mut rings, tr) = QueueRings::pair(depth as usize);
    rings.set_sqid(qid);
    a.transport
        .target
        .accept(tr, depth)
        .map_err(|e| HostError::Target(e.to_string()))?;
    let data = raw::connect_data(&a.hostid, cntlid, &a.subnqn, &a.hostnqn);
    let sqe = raw::connect_sqe(qid, depth, a.kato_ms);
    rings
        .submit(Capsule {
            sqe,
            buf: DataBuf::One(data),
        })
        .map_err(|_| HostError::Disconnected("new queue".into()))?;
    let target = a.transport.target.clone();
    let cqe = wait::until(&target, a.timeout, "Connect", || {
        rings.reap().map(|r| r.cqe)
    });
    let cqe = match cqe {
        Ok(c) => c,
        Err(e) => {
            rings.host_close();
            return Err(e);
        }
    };
    if !cqe.status().is_success() {
        rings.host_close();
        return Err(HostError::Status {
            what: "Connect",
            status: cqe.status(),
            dw0: cqe.dw0,
        });
    }
    Ok((rings, cqe))
}

/// Connects I/O queue pairs of one controller; cheap to clone and send.
#[derive(Clone, Debug)]
pub struct QpairConnector(Arc<Assoc>);

impl QpairConnector {
    /// Connects queue `qid` with `depth` entries (waits, bounded, for the
    /// controller to be ready; fails once the association is gone).
    pub fn connect(&self, qid: u16, depth: u16) -> Result<HostQpair, HostError> {
        let rings = self.0.connect_io_queue(qid, depth)?;
        Ok(HostQpair::new(self.0.clone(), qid, depth, rings))
    }

    /// Controller ID.
    pub fn cntlid(&self) -> u16 {
        self.0.cntlid.load(Ordering::Acquire)
    }
}

/// A connected host controller (one association). What it read at
/// connect (CAP, Identify, the queues granted) and its untaken queue pairs
/// and events are its [`ControllerData`], which it dereferences to (read-only).
pub struct HostController {
    assoc: Arc<Assoc>,
    admin: Arc<Mutex<AdminQueue>>,
    data: ControllerData<HostQpair>,
}

impl Deref for HostController {
    type Target = ControllerData<HostQpair>;
    fn deref(&self) -> &ControllerData<HostQpair> {
        &self.data
    }
}

impl fmt::Debug for HostController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostController")
            .field("cntlid", &self.assoc.cntlid.load(Ordering::Relaxed))
            .field("subnqn", &self.assoc.subnqn)
            .finish()
    }
}

impl HostController {
    fn connect(transport: Arc<LoopTransport>, opts: ConnectOptions) -> Result<Self, HostError> {
        if !transport.exposes(&opts.subnqn) {
            return Err(HostError::NoListener(opts.subnqn));
        }
        if opts.queue_depth < 2 || opts.queue_depth > MAX_DEPTH || opts.admin_depth < 32 {
            return Err(HostError::Invalid(format!(
                "queue depth must be 2..={MAX_DEPTH} and admin depth at least 32 (got {} and {})",
                opts.queue_depth, opts.admin_depth
            )));
        }
        let assoc = Assoc {
            transport,
            subnqn: opts.subnqn.clone(),
            hostnqn: opts.hostnqn.clone(),
            hostid: opts.hostid,
            kato_ms: opts.kato_ms,
            timeout: opts.timeout,
            admin_depth: opts.admin_depth,
            io_queues: opts.io_queues,
            ctrl_loss_tmo: opts.ctrl_loss_tmo,
            reconnect_delay: opts.reconnect_delay,
            max_retries: opts.max_retries,
            state: AssocState::new(0xffff),
        };
        let (rings, cqe) = connect_queue(&assoc, 0, opts.admin_depth, 0xffff)?;
        assoc.cntlid.store(cqe.dw0 as u16, Ordering::Release);
        let assoc = Arc::new(assoc);
        let mut c = Self {
            assoc,
            admin: Arc::new(Mutex::new(AdminQueue::new(rings))),
            data: ControllerData::default(),
        };
        let r = c.bring_up(&opts);
        if let Err(e) = r {
            c.close_admin();
            return Err(e);
        }
        if opts.background {
            c.start_poller();
        }
        Ok(c)
    }

    fn bring_up(&mut self, opts: &ConnectOptions) -> Result<(), HostError> {
        let cap = self.property_get(PROP_CAP, true)?;
        let vs = self.property_get(PROP_VS, false)? as u32;
        self.data.set_registers(cap, vs);
        self.enable()?;
        let (_, buf) = self.identify_raw(1, 0)?;
        self.data.set_identify(&buf);
        self.set_queues(opts.io_queues)?;
        self.mark_ready();
        let mqes = (self.cap() & 0xffff) as u16 + 1;
        let depth = opts.queue_depth.min(mqes);
        for qid in 1..=opts.io_queues.min(self.io_queues_granted()) {
            let rings = self.assoc.connect_io_queue(qid, depth)?;
            let q = HostQpair::new(self.assoc.clone(), qid, depth, rings);
            self.data.keep_qpair(q);
        }
        Ok(())
    }

    /// CC.EN = 1, wait for CSTS.RDY, submit AERs.
    fn enable(&mut self) -> Result<(), HostError> {
        self.admin_on().enable(self.cap(), self.aers())
    }

    /// The admin queue as the poller uses it (no controller borrowed).
    fn admin_on(&self) -> AdminOn<'_> {
        AdminOn {
            target: self.target(),
            admin: &self.admin,
            limit: self.assoc.timeout,
        }
    }

    /// I/O queues may connect now. Only after Number of Queues: a queue
    /// connected earlier would make that Set Features a sequence error.
    fn mark_ready(&self) {
        self.assoc.ready.store(true, Ordering::Release);
    }

    fn set_queues(&mut self, n: u16) -> Result<(), HostError> {
        let granted = self.set_number_of_queues(n)?;
        self.data.set_granted(granted);
        Ok(())
    }

    fn target(&self) -> &Arc<NvmfTarget> {
        &self.assoc.transport.target
    }

    /// Runs any admin command; returns its completion whatever the status.
    pub fn admin_raw(
        &self,
        sqe: SubmissionEntry,
        buf: DataBuf,
    ) -> Result<(CompletionEntry, DataBuf), HostError> {
        admin::command(self.target(), &self.admin, sqe, buf, self.assoc.timeout)
    }

    /// Controller ID the target assigned.
    pub fn cntlid(&self) -> u16 {
        self.assoc.cntlid.load(Ordering::Acquire)
    }

    /// Times the host reconnected this controller after losing it.
    pub fn reconnects(&self) -> u64 {
        self.assoc.reconnects.load(Ordering::Relaxed)
    }

    /// `true` while the host is reconnecting after losing the controller.
    pub fn is_recovering(&self) -> bool {
        self.assoc.recovering.load(Ordering::Acquire)
    }

    /// `true` once the association is over for good (disconnected, or
    /// recovery ran past `ctrl_loss_tmo` or met a permanent refusal).
    pub fn is_gone(&self) -> bool {
        self.assoc.gone.load(Ordering::Acquire)
    }

    /// Takes the I/O queue pairs (each is then owned by one thread).
    pub fn take_qpairs(&mut self) -> Vec<HostQpair> {
        self.data.take_qpairs()
    }

    /// Connects one more I/O queue pair.
    pub fn create_qpair(&self, qid: u16, depth: u16) -> Result<HostQpair, HostError> {
        self.connector().connect(qid, depth)
    }

    /// A handle that connects I/O queue pairs of this controller from any
    /// thread, without borrowing the controller (which a reset needs).
    pub fn connector(&self) -> QpairConnector {
        QpairConnector(self.assoc.clone())
    }

    /// One round of admin housekeeping: reap, turn events into
    /// [`AsyncEvent`]s (reading the Changed Namespace List), keep AERs
    /// outstanding. The background poller calls this; without it, call it.
    pub fn service(&self) -> Result<(), HostError> {
        if !self.has_poller()
            && self.assoc.recovery()
            && !self.assoc.gone.load(Ordering::Acquire)
            && !self.stop_flag().is_set()
            && (self.assoc.recovery_pending() || lock(&self.admin).rings.target_done())
        {
            recover(
                self.target(),
                &self.assoc,
                &self.admin,
                self.aers(),
                self.stop_flag(),
            );
        }
        service(
            self.target(),
            &self.assoc,
            &self.admin,
            self.event_sink(),
            self.aers(),
        )
    }

    fn start_poller(&mut self) {
        let (target, assoc, admin, aers) = (
            self.target().clone(),
            self.assoc.clone(),
            self.admin.clone(),
            self.aers(),
        );
        let name = format!("nvmf-host-{}", assoc.cntlid());
        self.data.start_poller(name, move |stop, events| {
            let ka_every = Duration::from_millis((assoc.kato_ms / 2).max(1) as u64);
            // A Keep Alive unanswered for KATO means the controller is
            // lost (a controller-fatal answers nothing more).
            let ka_limit = match assoc.kato_ms {
                0 => assoc.timeout,
                k => assoc.timeout.min(Duration::from_millis(k as u64)),
            };
            let mut last_ka = Instant::now();
            while !stop.is_set() {
                if assoc.recovery() && assoc.recovery_pending() {
                    recover(&target, &assoc, &admin, aers, &stop);
                    if assoc.gone.load(Ordering::Acquire) {
                        break;
                    }
                    last_ka = Instant::now();
                    continue;
                }
                if let Err(e) = service(&target, &assoc, &admin, &events, aers) {
                    tracing::debug!(error = %e, "host admin service");
                }
                if assoc.kato_ms != 0 && last_ka.elapsed() >= ka_every {
                    let sqe = SubmissionEntry::new(AdminOpcode::KEEP_ALIVE.0, 0);
                    match admin::command(&target, &admin, sqe, DataBuf::None, ka_limit) {
                        Ok((c, _)) if c.status().is_success() => {}
                        Ok((c, _)) => {
                            tracing::warn!(status = %c.status(), "keep alive refused");
                            assoc.request_recovery();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "keep alive failed");
                            assoc.request_recovery();
                        }
                    }
                    last_ka = Instant::now();
                }
                if lock(&admin).rings.target_done() {
                    if assoc.recovery() && !stop.is_set() {
                        assoc.request_recovery();
                        continue;
                    }
                    assoc.gone.store(true, Ordering::Release);
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
    }

    /// Controller reset (CC.EN = 0). The target drains every I/O queue:
    /// commands already with a backend complete normally, the rest are
    /// aborted with SQ Deletion. Then the controller is enabled again;
    /// queue pairs reconnect with [`HostQpair::reconnect`].
    pub fn reset(&mut self) -> Result<(), HostError> {
        self.assoc.ready.store(false, Ordering::Release);
        self.disable_controller(self.cap())?;
        self.enable()?;
        let n = self.io_queues_granted();
        self.set_queues(n)?;
        self.mark_ready();
        Ok(())
    }

    /// Normal shutdown (CC.SHN): the target drains the I/O queues and
    /// reports CSTS.SHST complete; then the association is closed.
    pub fn shutdown(mut self) -> Result<(), HostError> {
        self.assoc.ready.store(false, Ordering::Release);
        let r = self.shutdown_controller(self.assoc.timeout);
        self.close_admin();
        r
    }

    /// Ends the association: the target deletes the controller (draining
    /// its I/O queues, then the admin queue).
    pub fn disconnect(mut self) -> Result<(), HostError> {
        self.close_admin();
        let rings = lock(&self.admin).rings.state();
        let target = self.target().clone();
        wait::until(&target, self.assoc.timeout, "controller deletion", || {
            rings.target_done().then_some(())
        })
    }

    fn close_admin(&mut self) {
        self.data.stop_poller();
        self.assoc.ready.store(false, Ordering::Release);
        self.assoc.gone.store(true, Ordering::Release);
        lock(&self.admin).rings.host_close();
    }
}

impl Drop for HostController {
    fn drop(&mut self) {
        self.close_admin();
    }
}

/// The admin queue with what a command needs besides (the target to drive
/// in manual mode, the bound): what the poller thread and recovery use,
/// holding no controller.
struct AdminOn<'a> {
    target: &'a NvmfTarget,
    admin: &'a Mutex<AdminQueue>,
    limit: Duration,
}

impl AdminOn<'_> {
    /// Enables the controller and submits `aers` AERs.
    fn enable(&self, cap: u64, aers: usize) -> Result<(), HostError> {
        self.enable_controller(cap)?;
        let mut a = lock(self.admin);
        while a.aer_cids.len() < aers {
            a.submit_aer()?;
        }
        Ok(())
    }
}

impl AdminCommands for AdminOn<'_> {
    type Error = HostError;

    fn admin_checked(
        &self,
        what: &'static str,
        sqe: SubmissionEntry,
        buf: DataBuf,
    ) -> Result<(CompletionEntry, DataBuf), HostError> {
        admin::checked(self.target, self.admin, what, sqe, buf, self.limit)
    }
}

/// How long recovery waits for the target to delete the lost controller.
const OLD_ASSOC_WAIT: Duration = Duration::from_secs(2);

/// A refusal that no retry will change: the target is stopping, the
/// subsystem is no longer exposed, or the Connect status has DNR set.
fn permanent(e: &HostError) -> bool {
    match e {
        HostError::Target(_) | HostError::NoListener(_) | HostError::Invalid(_) => true,
        HostError::Status { status, .. } => status.dnr(),
        _ => false,
    }
}

/// Error recovery, as Linux's fabrics hosts do it: end the old association
/// (the target deletes that controller, draining its queues), then connect
/// a new one every `reconnect_delay` until it works or `ctrl_loss_tmo`
/// runs out. I/O queue pairs see the new generation and reconnect
/// themselves; their retryable commands are resubmitted then.
fn recover(
    target: &NvmfTarget,
    assoc: &Assoc,
    admin: &Mutex<AdminQueue>,
    aers: usize,
    stop: &StopFlag,
) {
    assoc.ready.store(false, Ordering::Release);
    assoc.recovering.store(true, Ordering::Release);
    let old = assoc.cntlid();
    tracing::warn!(
        subnqn = assoc.subnqn,
        cntlid = old,
        "controller lost; reconnecting"
    );
    let rs = {
        let a = lock(admin);
        a.rings.host_close();
        a.rings.state()
    };
    // Give the target a moment to delete the old controller (its queues
    // drain), but do not depend on it: Linux's hosts do not wait either.
    let limit = assoc.timeout.min(OLD_ASSOC_WAIT);
    if wait::until(target, limit, "controller deletion", || {
        (rs.target_done() || stop.is_set()).then_some(())
    })
    .is_err()
    {
        tracing::warn!(
            cntlid = old,
            "old controller not deleted within {limit:?}; connecting anew anyway"
        );
    }
    let policy = ReconnectPolicy {
        delay: assoc.reconnect_delay,
        ctrl_loss_tmo: assoc.ctrl_loss_tmo,
    };
    let pause = |d| {
        let _ = wait::until(target, d, "reconnect delay", || stop.is_set().then_some(()));
    };
    let r = reconnect(
        assoc,
        policy,
        stop,
        pause,
        || reassociate(target, assoc, admin, aers),
        permanent,
        |e, attempt| tracing::debug!(error = %e, attempt, "reconnect attempt failed"),
    );
    match r {
        Ok(attempt) => tracing::info!(
            subnqn = assoc.subnqn,
            old_cntlid = old,
            cntlid = assoc.cntlid(),
            attempt,
            "controller reconnected"
        ),
        Err(ReconnectEnd::Stopped) => {}
        Err(ReconnectEnd::Refused { error, attempts }) => tracing::warn!(
            subnqn = assoc.subnqn,
            error = %error,
            attempts,
            "reconnect refused for good; giving the controller up"
        ),
        Err(ReconnectEnd::LossTimeout { error, attempts }) => tracing::error!(
            subnqn = assoc.subnqn,
            error = %error,
            attempts,
            "reconnect failed through ctrl_loss_tmo; giving the controller up"
        ),
    }
}

/// One reconnect attempt: admin queue Connect (dynamic controller), enable,
/// Number of Queues.
fn reassociate(
    target: &NvmfTarget,
    assoc: &Assoc,
    admin: &Mutex<AdminQueue>,
    aers: usize,
) -> Result<(), HostError> {
    if !assoc.transport.exposes(&assoc.subnqn) {
        return Err(HostError::NoListener(assoc.subnqn.clone()));
    }
    let (rings, cqe) = connect_queue(assoc, 0, assoc.admin_depth, 0xffff)?;
    *lock(admin) = AdminQueue::new(rings);
    let a = AdminOn {
        target,
        admin,
        limit: assoc.timeout,
    };
    let r = (|| {
        let cap = a.property_get(PROP_CAP, true)?;
        a.enable(cap, aers)?;
        a.set_number_of_queues(assoc.io_queues)
    })();
    match r {
        Ok(_) => {
            assoc.cntlid.store(cqe.dw0 as u16, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            lock(admin).rings.host_close();
            Err(e)
        }
    }
}

fn service(
    target: &NvmfTarget,
    assoc: &Assoc,
    admin: &Mutex<AdminQueue>,
    events: &Mutex<Vec<AsyncEvent>>,
    aers: usize,
) -> Result<(), HostError> {
    let raw = {
        let mut a = lock(admin);
        a.reap();
        std::mem::take(&mut a.events)
    };
    let a = AdminOn {
        target,
        admin,
        limit: assoc.timeout,
    };
    for dw0 in raw {
        let ev = if is_namespace_notice(dw0) {
            // The event counts even when its list cannot be read: the
            // host rescans then.
            let list = a.changed_namespaces().unwrap_or_else(|e| {
                tracing::debug!(error = %e, "Changed Namespace List");
                Vec::new()
            });
            AsyncEvent::NamespaceChanged(list)
        } else {
            AsyncEvent::Other(dw0)
        };
        events.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
    }
    if assoc.ready.load(Ordering::Acquire) {
        let mut a = lock(admin);
        while a.aer_cids.len() < aers && a.rings.is_live() {
            a.submit_aer()?;
        }
    }
    Ok(())
}

impl AdminCommands for HostController {
    type Error = HostError;

    fn admin_checked(
        &self,
        what: &'static str,
        sqe: SubmissionEntry,
        buf: DataBuf,
    ) -> Result<(CompletionEntry, DataBuf), HostError> {
        admin::checked(
            self.target(),
            &self.admin,
            what,
            sqe,
            buf,
            self.assoc.timeout,
        )
    }
}
