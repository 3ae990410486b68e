//! The target: poll groups on reactors, block devices, subsystems, and the
//! control operations on them.
//!
//! Control operations run on the caller's thread and reach the data path
//! only as messages to poll groups, waiting (bounded) for their answers.
//! With [`ReactorMode::Manual`] no threads are started: the caller drives
//! every poll group from one thread with [`NvmfTarget::poll`], which makes
//! engine tests deterministic (SPDK's `poll_threads()`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::ctrlr::{AEN_NS_ATTR_CHANGED, Controller, QpairRef, TeardownKind};
use super::engine::{Countdown, Engine, EngineOptions, PgHandle};
use super::latency::{LatencyHistogram, merge_into};
use super::poll_group::PollGroup;
use super::stats::NsIoStats;
use super::subsystem::{Namespace, Subsystem, SubsystemParams};
use super::transport::QpTransport;
use crate::bdev::BdevRef;
use crate::reactor::{Poller, Reactor, ReactorOptions};

/// How poll groups are run.
#[derive(Clone, Debug)]
pub enum ReactorMode {
    /// One reactor thread per entry, pinned to the core if given.
    Threads {
        /// Cores (None = unpinned).
        cores: Vec<Option<usize>>,
        /// Idle back-off (zero = busy poll).
        idle_backoff: Duration,
    },
    /// `n` poll groups, polled by the caller through [`NvmfTarget::poll`].
    Manual(usize),
}

/// Options for starting a target.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// Engine limits.
    pub engine: EngineOptions,
    /// Reactors.
    pub reactors: ReactorMode,
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            engine: EngineOptions::default(),
            reactors: ReactorMode::Threads {
                cores: vec![None],
                idle_backoff: Duration::from_micros(100),
            },
        }
    }
}

/// Errors of control operations.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A name or NQN is already taken.
    #[error("{0} already exists")]
    Exists(String),
    /// Nothing by that name.
    #[error("{0} not found")]
    NotFound(String),
    /// A parameter is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which parameter.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The resource is in use.
    #[error("{0} is in use")]
    InUse(String),
    /// The target is stopping or stopped.
    #[error("the target is stopping")]
    Stopping,
    /// A bounded wait ran out.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// Starting a reactor failed.
    #[error(transparent)]
    Reactor(#[from] crate::reactor::ReactorError),
    /// A backend could not open a channel.
    #[error("backend: {0}")]
    Backend(String),
}

/// Parameters of a new namespace.
#[derive(Clone, Debug, Default)]
pub struct NamespaceParams {
    /// NSID, or the lowest free one.
    pub nsid: Option<u32>,
    /// Block device name.
    pub bdev: String,
    /// Refuse writes.
    pub read_only: bool,
    /// NGUID (zero = derive one).
    pub nguid: Option<[u8; 16]>,
    /// UUID (zero = derive one).
    pub uuid: Option<[u8; 16]>,
    /// Latency histogram (`None`: the engine's default).
    pub latency_histogram: Option<bool>,
}

/// A running target.
pub struct NvmfTarget {
    engine: Arc<Engine>,
    reactors: Mutex<Vec<Reactor>>,
    manual: Option<Mutex<Vec<PollGroup>>>,
    bdevs: Mutex<BTreeMap<String, BdevRef>>,
    stopping: AtomicBool,
}

impl fmt::Debug for NvmfTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvmfTarget")
            .field("pgs", &self.engine.pgs().len())
            .finish()
    }
}

fn merge_all(parts: Vec<Option<LatencyHistogram>>) -> Option<LatencyHistogram> {
    let mut out: Option<LatencyHistogram> = None;
    for h in parts.into_iter().flatten() {
        match &mut out {
            Some(o) => merge_into(o, &h),
            None => out = Some(h),
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct PgPoller(PollGroup);

impl Poller for PgPoller {
    fn poll(&mut self) -> usize {
        self.0.poll()
    }
    fn stop(&mut self) {
        Poller::stop(&mut self.0);
    }
}

impl NvmfTarget {
    /// Starts poll groups (and reactor threads unless manual).
    pub fn start(opts: TargetOptions) -> Result<Arc<Self>, TargetError> {
        let engine = Engine::new(opts.engine.clone());
        let n = match &opts.reactors {
            ReactorMode::Threads { cores, .. } => cores.len().max(1),
            ReactorMode::Manual(n) => (*n).max(1),
        };
        let mut handles = Vec::with_capacity(n);
        let mut groups = Vec::with_capacity(n);
        for i in 0..n {
            let (h, q) = PgHandle::new(i);
            groups.push(PollGroup::new(i, engine.clone(), q, h.stats.clone()));
            handles.push(h);
        }
        engine.set_pgs(handles);
        let mut target = Self {
            engine,
            reactors: Mutex::new(Vec::new()),
            manual: None,
            bdevs: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
        };
        match opts.reactors {
            ReactorMode::Manual(_) => target.manual = Some(Mutex::new(groups)),
            ReactorMode::Threads {
                cores,
                idle_backoff,
            } => {
                let mut rs = Vec::new();
                for (i, pg) in groups.into_iter().enumerate() {
                    let ropts = ReactorOptions {
                        core: cores.get(i).copied().flatten(),
                        idle_backoff,
                        ..Default::default()
                    };
                    rs.push(Reactor::start(i, ropts, vec![Box::new(PgPoller(pg))])?);
                }
                *lock(&target.reactors) = rs;
            }
        }
        Ok(Arc::new(target))
    }

    /// The shared engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Reactor handles (empty in manual mode), for their counters.
    pub fn reactor_stats(&self) -> Vec<(usize, Option<usize>, Arc<crate::reactor::ReactorStats>)> {
        lock(&self.reactors)
            .iter()
            .map(|r| (r.id(), r.core(), r.stats().clone()))
            .collect()
    }

    /// Runs `msg` on reactor `idx` (e.g. to add a poller that should share
    /// the reactor's core, like an inline benchmark job).
    pub fn run_on_reactor(
        &self,
        idx: usize,
        msg: crate::reactor::Message,
    ) -> Result<(), TargetError> {
        let rs = lock(&self.reactors);
        let r = rs
            .get(idx)
            .ok_or_else(|| TargetError::NotFound(format!("reactor {idx}")))?;
        r.send(msg);
        Ok(())
    }

    /// Number of reactor threads (0 in manual mode).
    pub fn reactor_count(&self) -> usize {
        lock(&self.reactors).len()
    }

    /// `true` in manual mode.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Manual mode: polls every poll group once. Returns work done.
    pub fn poll(&self) -> usize {
        match &self.manual {
            Some(m) => lock(m).iter_mut().map(PollGroup::poll).sum(),
            None => 0,
        }
    }

    /// Manual mode: runs `f` on poll group `i` (white-box engine tests).
    #[cfg(test)]
    pub(crate) fn with_manual_pg<R>(
        &self,
        i: usize,
        f: impl FnOnce(&mut PollGroup) -> R,
    ) -> Option<R> {
        let m = self.manual.as_ref()?;
        lock(m).get_mut(i).map(f)
    }

    /// Waits for a control answer: polls the groups in manual mode, blocks
    /// (bounded) otherwise.
    fn wait<T>(
        &self,
        rx: &mpsc::Receiver<T>,
        what: &str,
        limit: Duration,
    ) -> Result<T, TargetError> {
        let deadline = Instant::now() + limit;
        loop {
            if self.manual.is_some() {
                self.poll();
                if let Ok(v) = rx.try_recv() {
                    return Ok(v);
                }
            } else if let Ok(v) = rx.recv_timeout(Duration::from_millis(10)) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(TargetError::Timeout(what.to_owned()));
            }
        }
    }

    fn control_limit(&self) -> Duration {
        self.engine.opts.drain_timeout * 3 + Duration::from_secs(2)
    }

    /// Runs `f` on every poll group and waits for all of them.
    fn broadcast<T: Send + 'static>(
        &self,
        what: &str,
        f: impl Fn(&mut PollGroup) -> T + Send + Sync + 'static,
    ) -> Result<Vec<T>, TargetError> {
        let f = Arc::new(f);
        let (tx, rx) = mpsc::channel();
        for h in self.engine.pgs() {
            let (f, tx) = (f.clone(), tx.clone());
            h.send(move |pg| {
                let _ = tx.send(f(pg));
            });
        }
        let mut out = Vec::new();
        for _ in self.engine.pgs() {
            out.push(self.wait(&rx, what, self.control_limit())?);
        }
        Ok(out)
    }

    fn check_running(&self) -> Result<(), TargetError> {
        if self.stopping.load(Ordering::Acquire) {
            Err(TargetError::Stopping)
        } else {
            Ok(())
        }
    }

    // ---- block devices ---------------------------------------------------

    /// Registers a block device under its name.
    pub fn add_bdev(&self, bdev: BdevRef) -> Result<(), TargetError> {
        let name = bdev.info().name.clone();
        self.add_bdev_as(&name, bdev)
    }

    /// Registers a block device under `name` (a config's name for a device
    /// whose own name is fixed, like an NVMe namespace).
    pub fn add_bdev_as(&self, name: &str, bdev: BdevRef) -> Result<(), TargetError> {
        self.check_running()?;
        let name = name.to_owned();
        let mut b = lock(&self.bdevs);
        if b.contains_key(&name) {
            return Err(TargetError::Exists(format!("backend {name}")));
        }
        b.insert(name, bdev);
        Ok(())
    }

    /// The block device called `name`.
    pub fn bdev(&self, name: &str) -> Option<BdevRef> {
        lock(&self.bdevs).get(name).cloned()
    }

    /// Every block device, by registered name.
    pub fn bdevs(&self) -> Vec<(String, BdevRef)> {
        lock(&self.bdevs)
            .iter()
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect()
    }

    /// Unregisters a block device no namespace uses.
    pub fn remove_bdev(&self, name: &str) -> Result<BdevRef, TargetError> {
        self.check_running()?;
        let mut b = lock(&self.bdevs);
        let Some(dev) = b.get(name).cloned() else {
            return Err(TargetError::NotFound(format!("backend {name}")));
        };
        for s in self.engine.subsystems() {
            if s.state()
                .namespaces
                .values()
                .any(|ns| Arc::ptr_eq(&ns.bdev, &dev))
            {
                return Err(TargetError::InUse(format!(
                    "backend {name} (namespace of {})",
                    s.nqn
                )));
            }
        }
        b.remove(name);
        Ok(dev)
    }

    // ---- subsystems ------------------------------------------------------

    /// Creates a subsystem with no namespaces.
    pub fn add_subsystem(&self, p: SubsystemParams) -> Result<Arc<Subsystem>, TargetError> {
        self.check_running()?;
        if let Err(reason) = super::nqn::validate(&p.nqn) {
            return Err(TargetError::Invalid {
                what: "NQN",
                reason,
            });
        }
        for h in &p.hosts {
            if let Err(reason) = super::nqn::validate(h) {
                return Err(TargetError::Invalid {
                    what: "host NQN",
                    reason,
                });
            }
        }
        if p.max_namespaces == 0 {
            return Err(TargetError::Invalid {
                what: "max_namespaces",
                reason: "must be at least 1".into(),
            });
        }
        if self.engine.subsystem_by_nqn(&p.nqn).is_some() {
            return Err(TargetError::Exists(format!("subsystem {}", p.nqn)));
        }
        Ok(self.engine.insert_subsystem(|id| Subsystem::new(id, p)))
    }

    /// The subsystem called `nqn`.
    pub fn subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, TargetError> {
        self.engine
            .subsystem_by_nqn(nqn)
            .ok_or_else(|| TargetError::NotFound(format!("subsystem {nqn}")))
    }

    /// Deletes a subsystem: its controllers are torn down (drained), then
    /// its namespaces removed.
    pub fn remove_subsystem(&self, nqn: &str) -> Result<(), TargetError> {
        self.check_running()?;
        let s = self.subsystem(nqn)?;
        // From here no Connect can add a controller (see
        // `SubsystemState::deleting`); a deletion that fails leaves the
        // subsystem refusing connections.
        s.state().deleting = true;
        self.delete_all_controllers(&s)?;
        for nsid in s.active_nsids() {
            self.remove_namespace_inner(&s, nsid, false)?;
        }
        self.engine.remove_subsystem(s.id);
        Ok(())
    }

    /// Lets `hostnqn` connect.
    pub fn allow_host(&self, nqn: &str, hostnqn: &str) -> Result<(), TargetError> {
        self.check_running()?;
        if let Err(reason) = super::nqn::validate(hostnqn) {
            return Err(TargetError::Invalid {
                what: "host NQN",
                reason,
            });
        }
        let s = self.subsystem(nqn)?;
        let mut st = s.state();
        if st.hosts.iter().any(|h| h == hostnqn) {
            return Err(TargetError::Exists(format!("host {hostnqn}")));
        }
        st.hosts.push(hostnqn.to_owned());
        Ok(())
    }

    /// Stops `hostnqn` from making new connections (existing ones stay).
    pub fn disallow_host(&self, nqn: &str, hostnqn: &str) -> Result<(), TargetError> {
        self.check_running()?;
        let s = self.subsystem(nqn)?;
        let mut st = s.state();
        let before = st.hosts.len();
        st.hosts.retain(|h| h != hostnqn);
        if st.hosts.len() == before {
            return Err(TargetError::NotFound(format!("host {hostnqn}")));
        }
        Ok(())
    }

    // ---- namespaces ------------------------------------------------------

    /// Adds a namespace; connected hosts get a namespace-change event.
    pub fn add_namespace(&self, nqn: &str, p: NamespaceParams) -> Result<u32, TargetError> {
        self.check_running()?;
        let s = self.subsystem(nqn)?;
        let bdev = self
            .bdev(&p.bdev)
            .ok_or_else(|| TargetError::NotFound(format!("backend {}", p.bdev)))?;
        let nsid = {
            let st = s.state();
            let nsid = match p.nsid {
                Some(n) => n,
                None => (1..=s.max_namespaces)
                    .find(|n| !st.namespaces.contains_key(n))
                    .ok_or_else(|| TargetError::Invalid {
                        what: "nsid",
                        reason: format!("subsystem is full ({} namespaces)", s.max_namespaces),
                    })?,
            };
            if nsid == 0 || nsid > s.max_namespaces {
                return Err(TargetError::Invalid {
                    what: "nsid",
                    reason: format!("{nsid} is outside 1..={}", s.max_namespaces),
                });
            }
            if st.namespaces.contains_key(&nsid) {
                return Err(TargetError::Exists(format!("namespace {nsid} of {nqn}")));
            }
            nsid
        };
        let derived = derive_id(&s.nqn, nsid);
        let ns = Arc::new(Namespace {
            nsid,
            bdev,
            read_only: p.read_only,
            nguid: p.nguid.unwrap_or(derived),
            uuid: p.uuid.unwrap_or(uuid_v4_shape(derived)),
            stats: self
                .engine
                .pgs()
                .iter()
                .map(|_| Arc::new(NsIoStats::default()))
                .collect(),
            latency_tracking: AtomicBool::new(
                p.latency_histogram
                    .unwrap_or(self.engine.opts.latency_histograms),
            ),
        });
        let sid = s.id;
        let ns2 = ns.clone();
        let results = self.broadcast("namespace channels", move |pg| {
            let st = ns2.stats.get(pg.id()).cloned().unwrap_or_default();
            pg.add_ns_view(sid, ns2.clone(), st)
        })?;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            self.broadcast("namespace cleanup", move |pg| pg.remove_ns_view(sid, nsid))?;
            return Err(TargetError::Backend(e));
        }
        s.state().namespaces.insert(nsid, ns);
        self.notify_ns_change(&s, nsid);
        Ok(nsid)
    }

    /// Removes a namespace: its I/O is paused and drained on every poll
    /// group first, so no acknowledged write is lost; connected hosts get a
    /// namespace-change event.
    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), TargetError> {
        self.check_running()?;
        let s = self.subsystem(nqn)?;
        self.remove_namespace_inner(&s, nsid, true)
    }

    fn remove_namespace_inner(
        &self,
        s: &Arc<Subsystem>,
        nsid: u32,
        notify: bool,
    ) -> Result<(), TargetError> {
        if s.namespace(nsid).is_none() {
            return Err(TargetError::NotFound(format!(
                "namespace {nsid} of {}",
                s.nqn
            )));
        }
        let sid = s.id;
        // 1. Pause and drain everywhere (bounded, then backend reset).
        let (tx, rx) = mpsc::channel();
        let cd = Countdown::new(self.engine.pgs().len(), move || {
            let _ = tx.send(());
        });
        for h in self.engine.pgs() {
            let cd = cd.clone();
            h.send(move |pg| pg.pause_ns(sid, nsid, Box::new(move || cd.arrive())));
        }
        if self
            .wait(&rx, "namespace drain", self.engine.opts.drain_timeout)
            .is_err()
        {
            tracing::warn!(
                nsid,
                "namespace drain timed out; resetting its backend channels"
            );
            self.broadcast("namespace reset", move |pg| pg.reset_ns_channel(sid, nsid))?;
            let _ = self.wait(
                &rx,
                "namespace drain after reset",
                self.engine.opts.drain_timeout,
            );
        }
        // 2. Invisible to Identify, then gone from every poll group; parked
        // commands now fail with Invalid Namespace.
        s.state().namespaces.remove(&nsid);
        self.broadcast("namespace removal", move |pg| pg.remove_ns_view(sid, nsid))?;
        if notify {
            self.notify_ns_change(s, nsid);
        }
        Ok(())
    }

    /// Records a namespace change for every controller and completes an
    /// Asynchronous Event Request where one is waiting.
    fn notify_ns_change(&self, s: &Subsystem, nsid: u32) {
        let ctrls: Vec<_> = s.state().controllers.values().cloned().collect();
        for c in ctrls {
            {
                let mut st = c.state();
                if !st.changed_nsids.contains(&nsid) && st.changed_nsids.len() <= 1024 {
                    st.changed_nsids.push(nsid);
                }
                let enabled = st.features.async_event_config & (1 << 8) != 0;
                let masked = st.masked_events & (1 << 2) != 0;
                if enabled && !masked && !st.pending_events.contains(&AEN_NS_ATTR_CHANGED) {
                    st.pending_events.push_back(AEN_NS_ATTR_CHANGED);
                }
            }
            let admin = c.admin;
            if let Some(h) = self.engine.pgs().get(admin.pg) {
                h.send(move |pg| pg.deliver_events(admin));
            }
        }
    }

    // ---- latency ---------------------------------------------------------

    /// Turns a namespace's latency histogram on or off on every poll group.
    pub fn set_latency_tracking(&self, nqn: &str, nsid: u32, on: bool) -> Result<(), TargetError> {
        self.check_running()?;
        let s = self.subsystem(nqn)?;
        let ns = s
            .namespace(nsid)
            .ok_or_else(|| TargetError::NotFound(format!("namespace {nsid} of {nqn}")))?;
        ns.latency_tracking.store(on, Ordering::Relaxed);
        let sid = s.id;
        self.broadcast("latency tracking", move |pg| {
            pg.set_ns_latency(sid, nsid, on)
        })?;
        Ok(())
    }

    /// A namespace's latency histogram merged over every poll group
    /// (`None` when tracking is off); `reset` clears it in the same message,
    /// so nothing recorded between the copy and the reset is lost.
    pub fn ns_latency(
        &self,
        nqn: &str,
        nsid: u32,
        reset: bool,
    ) -> Result<Option<LatencyHistogram>, TargetError> {
        let s = self.subsystem(nqn)?;
        if s.namespace(nsid).is_none() {
            return Err(TargetError::NotFound(format!("namespace {nsid} of {nqn}")));
        }
        let sid = s.id;
        let parts = self.broadcast("latency snapshot", move |pg| {
            pg.ns_latency(sid, nsid, reset)
        })?;
        Ok(merge_all(parts))
    }

    /// Each poll group's latency over all its namespaces, by poll group.
    pub fn reactor_latency(&self) -> Result<Vec<Option<LatencyHistogram>>, TargetError> {
        let mut v = self.broadcast("reactor latency", |pg| (pg.id(), pg.latency()))?;
        v.sort_by_key(|(id, _)| *id);
        Ok(v.into_iter().map(|(_, h)| h).collect())
    }

    // ---- controllers -----------------------------------------------------

    /// Tears a controller down (as if its host disconnected): I/O queues
    /// drained and destroyed, then the admin queue.
    pub fn delete_controller(&self, nqn: &str, cntlid: u16) -> Result<(), TargetError> {
        self.check_running()?;
        let (s, c) = self.controller(nqn, cntlid)?;
        self.teardown_and_wait(&s, &[c.admin], TeardownKind::Delete)
    }

    /// A live controller and its subsystem.
    fn controller(
        &self,
        nqn: &str,
        cntlid: u16,
    ) -> Result<(Arc<Subsystem>, Arc<Controller>), TargetError> {
        let s = self.subsystem(nqn)?;
        let c = s
            .state()
            .controllers
            .get(&cntlid)
            .cloned()
            .ok_or_else(|| TargetError::NotFound(format!("controller {cntlid} of {nqn}")))?;
        Ok((s, c))
    }

    /// Resets a controller from the target side, as if its host had cleared
    /// CC.EN: its I/O queues are quiesced, drained and destroyed, CSTS.RDY
    /// drops, and the host must enable it again and reconnect its queues.
    /// The admin queue (and the association) stays.
    pub fn reset_controller(&self, nqn: &str, cntlid: u16) -> Result<(), TargetError> {
        self.check_running()?;
        let (s, c) = self.controller(nqn, cntlid)?;
        let admin = c.admin;
        if let Some(h) = self.engine.pgs().get(admin.pg) {
            h.send(move |pg| pg.start_ctrl_teardown(admin, TeardownKind::Reset));
        }
        let deadline = Instant::now() + self.control_limit();
        loop {
            {
                let st = c.state();
                if st.teardown.is_none() && st.csts & 1 == 0 {
                    if c.is_failed() {
                        return Err(TargetError::Backend(format!(
                            "controller {cntlid} of {nqn} failed (CSTS.CFS): a backend kept commands after its reset"
                        )));
                    }
                    return Ok(());
                }
            }
            // Its host may end the association meanwhile (a host that
            // recovers from the reset by reconnecting): deleted is reset.
            if !s.state().controllers.values().any(|x| x.admin == admin) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TargetError::Timeout(format!(
                    "reset of controller {cntlid} of {nqn}"
                )));
            }
            if self.manual.is_some() {
                self.poll();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn delete_all_controllers(&self, s: &Arc<Subsystem>) -> Result<(), TargetError> {
        let admins: Vec<QpairRef> = s.state().controllers.values().map(|c| c.admin).collect();
        self.teardown_and_wait(s, &admins, TeardownKind::Delete)
    }

    fn teardown_and_wait(
        &self,
        s: &Arc<Subsystem>,
        admins: &[QpairRef],
        kind: TeardownKind,
    ) -> Result<(), TargetError> {
        for &a in admins {
            if let Some(h) = self.engine.pgs().get(a.pg) {
                h.send(move |pg| pg.start_ctrl_teardown(a, kind));
            }
        }
        let deadline = Instant::now() + self.control_limit();
        loop {
            let left = {
                let st = s.state();
                admins
                    .iter()
                    .filter(|a| st.controllers.values().any(|c| c.admin == **a))
                    .count()
            };
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TargetError::Timeout(format!(
                    "{left} controller(s) of {} to tear down",
                    s.nqn
                )));
            }
            if self.manual.is_some() {
                self.poll();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    // ---- transports ------------------------------------------------------

    /// Takes a new queue pair from a transport (a [`RingTransport`] or a
    /// `Box<dyn QpairTransport>`); it is placed on a poll group and waits
    /// for its Fabrics Connect.
    pub fn accept(&self, tr: impl Into<QpTransport>, entries: u16) -> Result<(), TargetError> {
        let tr = tr.into();
        self.check_running()?;
        let pg = self.engine.place_qpair();
        let h = self.engine.pgs().get(pg).ok_or(TargetError::Stopping)?;
        h.qpairs.fetch_add(0, Ordering::Relaxed);
        h.send(move |pg| {
            pg.add_qpair(tr, entries);
        });
        Ok(())
    }

    /// Stops the target: every controller torn down by quiesce and drain
    /// (bounded), then the reactors. New control requests are refused.
    pub fn stop(&self) -> Result<(), TargetError> {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut first_err = None;
        for s in self.engine.subsystems() {
            s.state().deleting = true;
            if let Err(e) = self.delete_all_controllers(&s) {
                tracing::error!(nqn = %s.nqn, error = %e, "controller teardown during stop");
                first_err.get_or_insert(e);
            }
        }
        let mut rs = std::mem::take(&mut *lock(&self.reactors));
        for r in rs.iter_mut() {
            r.stop();
        }
        if let Some(m) = &self.manual {
            for pg in lock(m).iter_mut() {
                Poller::stop(pg);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `true` once [`NvmfTarget::stop`] has been called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

impl Drop for NvmfTarget {
    fn drop(&mut self) {
        if !self.stopping.load(Ordering::Acquire) {
            let _ = self.stop();
        }
    }
}

/// A stable identifier derived from the subsystem NQN and NSID (FNV-1a),
/// so a namespace keeps its NGUID across restarts of the same config.
fn derive_id(nqn: &str, nsid: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (half, seed) in [
        (0usize, 0xcbf2_9ce4_8422_2325u64),
        (8, 0x8422_2325_cbf2_9ce4),
    ] {
        let mut h = seed;
        for b in nqn.bytes().chain(nsid.to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        out[half..half + 8].copy_from_slice(&h.to_be_bytes());
    }
    out
}

/// Marks 16 bytes as an RFC 4122 version 4 / variant 1 UUID.
fn uuid_v4_shape(mut b: [u8; 16]) -> [u8; 16] {
    b.reverse();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}
