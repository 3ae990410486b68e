//! Reactors: one pinned polling thread per configured core.
//!
//! A reactor runs to completion: each loop iteration drains a bounded batch
//! of messages from its lock-free queue, then polls every poller once.
//! Anything owned by a reactor (queue pairs, block-device channels) is
//! touched only from that reactor's thread; other threads send it a message.
//! Idle reactors may back off (sleep) after a configurable number of empty
//! iterations; busy ones never sleep.
//!
//! Pollers are plain objects with a `poll` method, so tests can also drive
//! them on one thread without any reactor (see `nvmf::PollGroup`).

pub mod affinity;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

/// Something a reactor polls. Returns how much work it did (0 = idle).
pub trait Poller: Send {
    /// One non-blocking pass over the poller's work.
    fn poll(&mut self) -> usize;

    /// Called once when the reactor stops, on the reactor's thread.
    fn stop(&mut self) {}
}

/// A message: a closure run on the reactor's thread with access to it.
pub type Message = Box<dyn FnOnce(&mut ReactorCore) + Send>;

/// Counters a reactor keeps; readable from any thread.
#[derive(Debug, Default)]
pub struct ReactorStats {
    /// Loop iterations in which some poller or message did work.
    pub busy_polls: AtomicU64,
    /// Loop iterations in which nothing happened.
    pub idle_polls: AtomicU64,
    /// Messages executed.
    pub messages: AtomicU64,
    /// Units of work reported by pollers (commands processed, completions).
    pub work_items: AtomicU64,
}

/// Options for starting a reactor.
#[derive(Clone, Debug)]
pub struct ReactorOptions {
    /// Core to pin to; `None` leaves the thread unpinned (tests, CI).
    pub core: Option<usize>,
    /// Sleep this long after `idle_spins` empty iterations; zero = busy poll.
    pub idle_backoff: Duration,
    /// Empty iterations before backing off.
    pub idle_spins: u32,
    /// Messages handled per iteration at most, so pollers are never starved.
    pub msg_batch: usize,
}

impl Default for ReactorOptions {
    fn default() -> Self {
        Self {
            core: None,
            idle_backoff: Duration::ZERO,
            idle_spins: 1000,
            msg_batch: 16,
        }
    }
}

/// The part of a reactor that messages can change: its pollers.
pub struct ReactorCore {
    id: usize,
    pollers: Vec<(u64, Box<dyn Poller>)>,
    timers: Vec<Timer>,
    next_poller: u64,
}

/// A poller run every `period` rather than every iteration (SPDK's timed
/// pollers): keep-alive checks, statistics, housekeeping.
struct Timer {
    id: u64,
    period: Duration,
    due: Instant,
    poller: Box<dyn Poller>,
}

impl fmt::Debug for ReactorCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactorCore")
            .field("id", &self.id)
            .field("pollers", &self.pollers.len())
            .finish()
    }
}

impl ReactorCore {
    /// The reactor's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Adds a poller; returns its id for removal.
    pub fn add_poller(&mut self, p: Box<dyn Poller>) -> u64 {
        self.next_poller += 1;
        self.pollers.push((self.next_poller, p));
        self.next_poller
    }

    /// Adds a timed poller, run every `period`; returns its id.
    pub fn add_timer(&mut self, period: Duration, p: Box<dyn Poller>) -> u64 {
        self.next_poller += 1;
        self.timers.push(Timer {
            id: self.next_poller,
            period,
            due: Instant::now() + period,
            poller: p,
        });
        self.next_poller
    }

    /// Removes a poller or timer (calling its `stop`).
    pub fn remove_poller(&mut self, id: u64) -> bool {
        if let Some(i) = self.pollers.iter().position(|(pid, _)| *pid == id) {
            let (_, mut p) = self.pollers.swap_remove(i);
            p.stop();
            true
        } else if let Some(i) = self.timers.iter().position(|t| t.id == id) {
            let mut t = self.timers.swap_remove(i);
            t.poller.stop();
            true
        } else {
            false
        }
    }

    /// Runs the timers that are due. Returns work done.
    fn run_timers(&mut self, now: Instant) -> usize {
        let mut work = 0;
        for t in self.timers.iter_mut() {
            if now >= t.due {
                work += t.poller.poll();
                t.due = now + t.period;
            }
        }
        work
    }
}

/// A handle to a running reactor thread.
pub struct Reactor {
    id: usize,
    core: Option<usize>,
    msgs: Arc<SegQueue<Message>>,
    stop: Arc<AtomicBool>,
    stats: Arc<ReactorStats>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("id", &self.id)
            .field("core", &self.core)
            .finish()
    }
}

/// Errors starting a reactor.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    /// The thread could not be spawned.
    #[error("reactor {id}: cannot spawn thread: {source}")]
    Spawn {
        /// Reactor index.
        id: usize,
        /// OS error.
        source: std::io::Error,
    },
    /// The core is not one this process may run on.
    #[error("reactor {id}: core {core} is not available (allowed cores: {allowed:?})")]
    CoreUnavailable {
        /// Reactor index.
        id: usize,
        /// Requested core.
        core: usize,
        /// Cores in the process's affinity mask.
        allowed: Vec<usize>,
    },
}

impl Reactor {
    /// Starts a reactor thread with the given pollers.
    pub fn start(
        id: usize,
        opts: ReactorOptions,
        pollers: Vec<Box<dyn Poller>>,
    ) -> Result<Self, ReactorError> {
        if let Some(core) = opts.core {
            let allowed = affinity::allowed_cores();
            if !allowed.contains(&core) {
                return Err(ReactorError::CoreUnavailable { id, core, allowed });
            }
        }
        let msgs: Arc<SegQueue<Message>> = Arc::new(SegQueue::new());
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ReactorStats::default());
        let pinned = opts.core;
        let (m, s, st) = (msgs.clone(), stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name(format!("reactor-{id}"))
            .spawn(move || {
                if let Some(core) = opts.core
                    && let Err(e) = affinity::pin_current_thread(core)
                {
                    tracing::warn!(reactor = id, core, error = %e, "cannot pin reactor");
                }
                let mut core = ReactorCore {
                    id,
                    pollers: Vec::new(),
                    timers: Vec::new(),
                    next_poller: 0,
                };
                for p in pollers {
                    core.add_poller(p);
                }
                run_loop(&mut core, &opts, &m, &s, &st);
                // Drain messages sent before the stop so their senders are not left waiting.
                while let Some(msg) = m.pop() {
                    msg(&mut core);
                }
                for (_, p) in core.pollers.iter_mut() {
                    p.stop();
                }
                for t in core.timers.iter_mut() {
                    t.poller.stop();
                }
            })
            .map_err(|source| ReactorError::Spawn { id, source })?;
        Ok(Self {
            id,
            core: pinned,
            msgs,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// The reactor's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The core it is pinned to.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// Sends a message to run on the reactor's thread.
    pub fn send(&self, msg: Message) {
        self.msgs.push(msg);
    }

    /// The reactor's counters.
    pub fn stats(&self) -> &Arc<ReactorStats> {
        &self.stats
    }

    /// Asks the reactor to stop and waits for its thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(reactor = self.id, "reactor thread panicked");
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_loop(
    core: &mut ReactorCore,
    opts: &ReactorOptions,
    msgs: &SegQueue<Message>,
    stop: &AtomicBool,
    stats: &ReactorStats,
) {
    let mut idle_iters: u32 = 0;
    let (mut busy, mut idle, mut nmsg, mut work) = (0u64, 0u64, 0u64, 0u64);
    let mut iter: u32 = 0;
    loop {
        let mut did = 0usize;
        // Two loads when no message waits, instead of a `pop` attempt.
        let batch = if msgs.is_empty() { 0 } else { opts.msg_batch };
        for _ in 0..batch {
            match msgs.pop() {
                Some(m) => {
                    m(core);
                    did += 1;
                    nmsg += 1;
                }
                None => break,
            }
        }
        for (_, p) in core.pollers.iter_mut() {
            let n = p.poll();
            did += n;
            work += n as u64;
        }
        if did > 0 {
            busy += 1;
            idle_iters = 0;
        } else {
            idle += 1;
            idle_iters = idle_iters.saturating_add(1);
            if !opts.idle_backoff.is_zero() && idle_iters >= opts.idle_spins {
                std::thread::sleep(opts.idle_backoff);
            } else {
                std::hint::spin_loop();
            }
        }
        iter = iter.wrapping_add(1);
        // Timers, counters and the stop flag every 256 iterations (or when
        // idle), keeping clock reads and shared cache lines off the
        // per-iteration path.
        if iter.is_multiple_of(256) || did == 0 {
            if !core.timers.is_empty() {
                work += core.run_timers(Instant::now()) as u64;
            }
            stats.busy_polls.fetch_add(busy, Ordering::Relaxed);
            stats.idle_polls.fetch_add(idle, Ordering::Relaxed);
            stats.messages.fetch_add(nmsg, Ordering::Relaxed);
            stats.work_items.fetch_add(work, Ordering::Relaxed);
            (busy, idle, nmsg, work) = (0, 0, 0, 0);
            if stop.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counter(Arc<AtomicUsize>);
    impl Poller for Counter {
        fn poll(&mut self) -> usize {
            self.0.fetch_add(1, Ordering::Relaxed);
            0
        }
    }

    #[test]
    fn runs_pollers_and_messages_then_stops() {
        let n = Arc::new(AtomicUsize::new(0));
        let opts = ReactorOptions {
            idle_backoff: Duration::from_micros(50),
            idle_spins: 10,
            ..Default::default()
        };
        let mut r = Reactor::start(0, opts, vec![Box::new(Counter(n.clone()))]).unwrap();
        let got = Arc::new(AtomicUsize::new(usize::MAX));
        let g = got.clone();
        r.send(Box::new(move |core| g.store(core.id(), Ordering::SeqCst)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while (got.load(Ordering::SeqCst) == usize::MAX || n.load(Ordering::Relaxed) < 100)
            && Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        assert_eq!(got.load(Ordering::SeqCst), 0);
        assert!(n.load(Ordering::Relaxed) >= 100);
        r.stop();
        assert!(r.stats().idle_polls.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn timers_run_periodically() {
        let n = Arc::new(AtomicUsize::new(0));
        let opts = ReactorOptions {
            idle_backoff: Duration::from_micros(100),
            idle_spins: 10,
            ..Default::default()
        };
        let mut r = Reactor::start(0, opts, vec![]).unwrap();
        let n2 = n.clone();
        r.send(Box::new(move |core| {
            core.add_timer(Duration::from_millis(5), Box::new(Counter(n2)));
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while n.load(Ordering::Relaxed) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        r.stop();
        assert!(n.load(Ordering::Relaxed) >= 3);
    }

    #[test]
    fn unavailable_core_is_a_clear_error() {
        let opts = ReactorOptions {
            core: Some(100_000),
            ..Default::default()
        };
        let err = Reactor::start(3, opts, vec![]).unwrap_err();
        assert!(
            err.to_string().contains("core 100000 is not available"),
            "{err}"
        );
    }
}
