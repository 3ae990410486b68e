//! State shared by every poll group: options, the subsystem table and the
//! handles used to send messages between poll groups.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use super::poll_group::PollGroup;
use super::subsystem::Subsystem;

/// Engine limits advertised to hosts and enforced on commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Maximum Data Transfer Size as a power of two of 4 KiB pages.
    pub mdts: u8,
    /// Largest queue a host may create (CAP.MQES + 1).
    pub max_queue_entries: u16,
    /// I/O queues per controller at most.
    pub max_io_queues: u16,
    /// Largest keep-alive timeout accepted, ms; also the default.
    pub max_kato_ms: u32,
    /// Bounded wait for in-flight I/O during a drain, before the backend is
    /// reset; the same again after the reset before the target gives up.
    pub drain_timeout: Duration,
    /// New namespaces track command latency (fetch to backend completion)
    /// in a histogram; off by default, like SPDK's bdev histograms, because
    /// it reads the clock twice per poll and records once per command.
    pub latency_histograms: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            mdts: 5,
            max_queue_entries: 1024,
            max_io_queues: 16,
            max_kato_ms: 120_000,
            drain_timeout: Duration::from_secs(5),
            latency_histograms: false,
        }
    }
}

impl EngineOptions {
    /// MDTS in bytes (0 = unlimited).
    pub fn max_xfer_bytes(&self) -> u64 {
        if self.mdts == 0 {
            0
        } else {
            4096u64 << self.mdts
        }
    }
}

/// A message for a poll group: runs on its thread with access to it.
pub type PgMsg = Box<dyn FnOnce(&mut PollGroup) + Send>;

/// Counters a poll group keeps (single writer, read by anyone).
#[derive(Debug, Default)]
pub struct PgStats {
    /// Commands fetched from queue pairs.
    pub commands: AtomicU64,
    /// Backend completions processed.
    pub completions: AtomicU64,
    /// Completions posted to queue pairs (every fetched command gets one,
    /// exactly one, unless teardown stage 3 failed its controller): at
    /// rest, with `controllers_failed` at 0, this equals `commands`.
    pub responses: AtomicU64,
    /// Completions that arrived for a queue pair already destroyed.
    pub late_completions: AtomicU64,
    /// Backend resets issued by drains that ran out of time.
    pub backend_resets: AtomicU64,
    /// Queue pairs destroyed.
    pub qpairs_destroyed: AtomicU64,
    /// Controllers failed to their hosts (teardown stage 3: a backend kept
    /// commands after its reset).
    pub controllers_failed: AtomicU64,
}

/// Single-writer counter bump: a plain load and store, no locked
/// instruction, because only the owning poll group writes.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// The way to reach a poll group from another thread.
pub struct PgHandle {
    /// Index.
    pub id: usize,
    msgs: Arc<SegQueue<PgMsg>>,
    /// Live queue pairs (for placement).
    pub qpairs: AtomicUsize,
    /// Counters.
    pub stats: Arc<PgStats>,
}

impl fmt::Debug for PgHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgHandle").field("id", &self.id).finish()
    }
}

impl PgHandle {
    pub(crate) fn new(id: usize) -> (Self, Arc<SegQueue<PgMsg>>) {
        let msgs = Arc::new(SegQueue::new());
        (
            Self {
                id,
                msgs: msgs.clone(),
                qpairs: AtomicUsize::new(0),
                stats: Arc::new(PgStats::default()),
            },
            msgs,
        )
    }

    /// Sends a message to run on the poll group's thread.
    pub fn send(&self, f: impl FnOnce(&mut PollGroup) + Send + 'static) {
        self.msgs.push(Box::new(f));
    }
}

/// Runs a closure once `n` parties have arrived: how a control operation
/// waits for several poll groups without blocking any of them.
pub struct Countdown {
    remaining: AtomicUsize,
    then: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl fmt::Debug for Countdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Countdown")
            .field("remaining", &self.remaining.load(Ordering::Relaxed))
            .finish()
    }
}

impl Countdown {
    /// Waits for `n` arrivals; with `n == 0`, runs `then` at once.
    pub fn new(n: usize, then: impl FnOnce() + Send + 'static) -> Arc<Self> {
        let cd = Arc::new(Self {
            remaining: AtomicUsize::new(n),
            then: Mutex::new(Some(Box::new(then))),
        });
        if n == 0 {
            cd.fire();
        }
        cd
    }

    /// One party arrived.
    pub fn arrive(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.fire();
        }
    }

    fn fire(&self) {
        let f = self.then.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = f {
            f();
        }
    }
}

/// Shared engine state.
pub struct Engine {
    /// Limits.
    pub opts: EngineOptions,
    subsystems: RwLock<Vec<Option<Arc<Subsystem>>>>,
    pgs: OnceLock<Vec<PgHandle>>,
    epoch: Instant,
    next_pg: AtomicUsize,
    discovery: RwLock<Option<DiscoveryLogFn>>,
}

/// Builds the Discovery Log Page (log identifier 70h) for a host NQN: the
/// transports know their listeners, the engine serves the page.
pub type DiscoveryLogFn = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("opts", &self.opts).finish()
    }
}

impl Engine {
    pub(crate) fn new(opts: EngineOptions) -> Arc<Self> {
        Arc::new(Self {
            opts,
            subsystems: RwLock::new(Vec::new()),
            pgs: OnceLock::new(),
            epoch: Instant::now(),
            next_pg: AtomicUsize::new(0),
            discovery: RwLock::new(None),
        })
    }

    /// Installs the builder of the Discovery Log Page.
    pub fn set_discovery_log(&self, f: DiscoveryLogFn) {
        *self.discovery.write().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// The Discovery Log Page for `hostnqn` (header only when no transport
    /// installed a builder).
    pub fn discovery_log(&self, hostnqn: &str) -> Vec<u8> {
        let f = self
            .discovery
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match f {
            Some(f) => f(hostnqn),
            None => vec![0u8; 1024],
        }
    }

    pub(crate) fn set_pgs(&self, pgs: Vec<PgHandle>) {
        let _ = self.pgs.set(pgs);
    }

    /// Poll group handles.
    pub fn pgs(&self) -> &[PgHandle] {
        self.pgs.get().map_or(&[], |v| v.as_slice())
    }

    /// Milliseconds since the engine started.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Nanoseconds since the engine started (latency timestamps).
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Picks a poll group for a new queue pair: the least loaded, ties
    /// broken round-robin.
    pub fn place_qpair(&self) -> usize {
        let pgs = self.pgs();
        if pgs.is_empty() {
            return 0;
        }
        let start = self.next_pg.fetch_add(1, Ordering::Relaxed);
        let mut best = start % pgs.len();
        for k in 0..pgs.len() {
            let i = (start + k) % pgs.len();
            if pgs[i].qpairs.load(Ordering::Relaxed) < pgs[best].qpairs.load(Ordering::Relaxed) {
                best = i;
            }
        }
        best
    }

    /// Every live subsystem.
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The subsystem named `nqn`.
    pub fn subsystem_by_nqn(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .find(|s| s.nqn == nqn)
            .cloned()
    }

    /// The subsystem with index `id`.
    pub fn subsystem(&self, id: u32) -> Option<Arc<Subsystem>> {
        self.subsystems
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id as usize)
            .and_then(|s| s.clone())
    }

    /// Registers a subsystem, giving it the first free index.
    pub(crate) fn insert_subsystem(&self, make: impl FnOnce(u32) -> Subsystem) -> Arc<Subsystem> {
        let mut subs = self.subsystems.write().unwrap_or_else(|p| p.into_inner());
        let id = subs.iter().position(Option::is_none).unwrap_or(subs.len());
        let s = Arc::new(make(id as u32));
        if id == subs.len() {
            subs.push(Some(s.clone()));
        } else {
            subs[id] = Some(s.clone());
        }
        s
    }

    /// Unregisters a subsystem.
    pub(crate) fn remove_subsystem(&self, id: u32) -> Option<Arc<Subsystem>> {
        let mut subs = self.subsystems.write().unwrap_or_else(|p| p.into_inner());
        subs.get_mut(id as usize).and_then(Option::take)
    }
}
