//! Reactors: one pinned polling thread per configured core.
//!
//! A reactor runs to completion: each loop iteration drains a bounded batch
//! of messages from its lock-free queue, then polls every poller once.
//! Anything owned by a reactor (queue pairs, block-device channels) is
//! touched only from that reactor's thread; other threads send it a message.
//! Idle reactors may back off after a configurable number of empty
//! iterations (or `idle_backoff` of idleness): they then block in `ppoll`
//! on the sockets their pollers registered ([`wait::register`]) and a
//! wake-up eventfd written by [`Reactor::send`], for at most `idle_backoff`
//! (or until the next timer). Busy ones never sleep.
//!
//! Pollers are plain objects with a `poll` method, so tests can also drive
//! them on one thread without any reactor (see `nvmf::PollGroup`).

pub mod affinity;
pub mod wait;

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
    /// Times an idle reactor blocked waiting for a socket or message.
    pub idle_waits: AtomicU64,
}

/// Options for starting a reactor.
#[derive(Clone, Debug)]
pub struct ReactorOptions {
    /// Core to pin to; `None` leaves the thread unpinned (tests, CI).
    pub core: Option<usize>,
    /// Zero = busy poll. Otherwise, after `idle_spins` empty iterations or
    /// this long without work, the reactor waits for a registered socket or
    /// a message; each wait lasts at most this long at first, doubling while
    /// idle up to [`MAX_IDLE_WAIT`] (so fd-less pollers are still polled).
    pub idle_backoff: Duration,
    /// Empty iterations before backing off (at most; see `idle_backoff`).
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

/// Longest single idle wait when `idle_backoff` is shorter: pollers with no
/// descriptor to wait on (device queues) are polled at least this often.
pub const MAX_IDLE_WAIT: Duration = Duration::from_millis(1);

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
    waiter: Option<Arc<wait::WaitSet>>,
    sleeping: Arc<AtomicBool>,
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
        let waiter = if opts.idle_backoff.is_zero() {
            None
        } else {
            match wait::WaitSet::new() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(reactor = id, error = %e, "no eventfd; idle reactor sleeps blind");
                    None
                }
            }
        };
        let sleeping = Arc::new(AtomicBool::new(false));
        let (m, s, st) = (msgs.clone(), stop.clone(), stats.clone());
        let (w, sl) = (waiter.clone(), sleeping.clone());
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
                if let Some(w) = &w {
                    w.install();
                }
                for p in pollers {
                    core.add_poller(p);
                }
                let idle = Idle {
                    waiter: w.as_deref(),
                    sleeping: &sl,
                    stats: &st,
                };
                run_loop(&mut core, &opts, &m, &s, &st, idle);
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
            waiter,
            sleeping,
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
        if let Some(w) = &self.waiter {
            // Pairs with the fence in `Idle::wait`: either the reactor sees
            // the message before it blocks, or we see it sleeping and wake it.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.sleeping.load(Ordering::Relaxed) {
                w.wake();
            }
        }
    }

    /// The reactor's counters.
    pub fn stats(&self) -> &Arc<ReactorStats> {
        &self.stats
    }

    /// Asks the reactor to stop and waits for its thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = &self.waiter {
            w.wake();
        }
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

/// How an idle reactor waits: on its wait set when it has one, else a sleep.
struct Idle<'a> {
    waiter: Option<&'a wait::WaitSet>,
    sleeping: &'a AtomicBool,
    stats: &'a ReactorStats,
}

impl Idle<'_> {
    fn wait(
        &self,
        core: &ReactorCore,
        msgs: &SegQueue<Message>,
        max: Duration,
        fds: &mut Vec<libc::pollfd>,
    ) {
        let Some(w) = self.waiter else {
            std::thread::sleep(max);
            return;
        };
        let now = Instant::now();
        let timeout = core
            .timers
            .iter()
            .map(|t| t.due.saturating_duration_since(now))
            .fold(max, Duration::min);
        if timeout.is_zero() {
            return;
        }
        self.sleeping.store(true, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        if msgs.is_empty() {
            self.stats.idle_waits.fetch_add(1, Ordering::Relaxed);
            w.wait(timeout, fds);
        }
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

// Never inlined: `scripts/per-io.sh` counts instructions from here
// (`--toggle-collect=*run_loop*`), and fat LTO would otherwise fold it into
// the thread's closure.
#[inline(never)]
fn run_loop(
    core: &mut ReactorCore,
    opts: &ReactorOptions,
    msgs: &SegQueue<Message>,
    stop: &AtomicBool,
    stats: &ReactorStats,
    idle_how: Idle<'_>,
) {
    let mut idle_iters: u32 = 0;
    let mut idle_since: Option<Instant> = None;
    let mut wait_for = opts.idle_backoff;
    let mut fds: Vec<libc::pollfd> = Vec::new();
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
            idle_since = None;
            wait_for = opts.idle_backoff;
        } else {
            idle += 1;
            idle_iters = idle_iters.saturating_add(1);
            // The idle time is measured from the 32nd idle pass and looked
            // at every 32nd: no clock read in short gaps between work.
            let long_idle = !opts.idle_backoff.is_zero()
                && (idle_iters >= opts.idle_spins
                    || (idle_iters.is_multiple_of(32)
                        && idle_since.get_or_insert_with(Instant::now).elapsed()
                            >= opts.idle_backoff));
            if long_idle {
                idle_how.wait(core, msgs, wait_for, &mut fds);
                // Woken by an fd, a message or the next timer's due time.
                if !core.timers.is_empty() {
                    work += core.run_timers(Instant::now()) as u64;
                }
                wait_for = (wait_for * 2).min(opts.idle_backoff.max(MAX_IDLE_WAIT));
            } else {
                std::hint::spin_loop();
            }
        }
        iter = iter.wrapping_add(1);
        // Timers, counters and the stop flag every 256 iterations (or when
        // idle), keeping clock reads and shared cache lines off the
        // per-iteration path.
        if iter.is_multiple_of(256) || did == 0 {
            // The clock only every 32nd idle pass: a spinning reactor would
            // otherwise read it on every one (costly where the clock source
            // is emulated, see `PollGroup::poll`).
            if !core.timers.is_empty()
                && (iter.is_multiple_of(256) || idle_iters.is_multiple_of(32))
            {
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

    /// Registers one end of a socket pair on its first poll and counts
    /// the bytes it reads from it.
    struct SockPoller {
        sock: std::os::unix::net::UnixStream,
        reg: Option<wait::WaitRegistration>,
        got: Arc<AtomicUsize>,
    }
    impl Poller for SockPoller {
        fn poll(&mut self) -> usize {
            use std::io::Read;
            if self.reg.is_none() {
                self.reg = wait::register(&self.sock);
                assert!(self.reg.as_ref().is_some_and(|r| r.is_current()));
            }
            let mut b = [0u8; 64];
            match self.sock.read(&mut b) {
                Ok(n) => {
                    self.got.fetch_add(n, Ordering::SeqCst);
                    n
                }
                Err(_) => 0,
            }
        }
    }

    fn wait_until(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !what() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        what()
    }

    #[test]
    fn idle_reactor_waits_and_wakes_on_socket_and_message() {
        use std::io::Write;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let got = Arc::new(AtomicUsize::new(0));
        // A wait of up to 60 s: only a wake-up (not the timeout) lets the
        // writes and the message below be seen before the 20 s deadline.
        let opts = ReactorOptions {
            idle_backoff: Duration::from_secs(60),
            idle_spins: 10,
            ..Default::default()
        };
        let poller = SockPoller {
            sock: a,
            reg: None,
            got: got.clone(),
        };
        let mut r = Reactor::start(0, opts, vec![Box::new(poller)]).unwrap();
        let stats = r.stats().clone();
        for round in 1..=3u64 {
            assert!(
                wait_until(|| stats.idle_waits.load(Ordering::Relaxed) >= round),
                "reactor never went to wait"
            );
            b.write_all(b"ping").unwrap();
            assert!(
                wait_until(|| got.load(Ordering::SeqCst) == 4 * round as usize),
                "idle reactor did not wake on socket data"
            );
        }
        let ran = Arc::new(AtomicUsize::new(0));
        // Back to waiting after the third read.
        assert!(wait_until(|| stats.idle_waits.load(Ordering::Relaxed) >= 4));
        let r2 = ran.clone();
        r.send(Box::new(move |_| {
            r2.store(1, Ordering::SeqCst);
        }));
        assert!(
            wait_until(|| ran.load(Ordering::SeqCst) == 1),
            "idle reactor did not wake on a message"
        );
        r.stop();
    }

    #[test]
    fn busy_polling_reactor_registers_nothing() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(wait::register(&a).is_none(), "not a reactor thread");
        let registered = Arc::new(AtomicUsize::new(usize::MAX));
        let mut r = Reactor::start(0, ReactorOptions::default(), vec![]).unwrap();
        let reg2 = registered.clone();
        r.send(Box::new(move |_| {
            reg2.store(usize::from(wait::register(&a).is_some()), Ordering::SeqCst);
        }));
        assert!(wait_until(
            || registered.load(Ordering::SeqCst) != usize::MAX
        ));
        assert_eq!(registered.load(Ordering::SeqCst), 0);
        r.stop();
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
