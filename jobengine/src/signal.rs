//! SIGINT/SIGTERM as stop requests, shared by `nvmf-bench` and `nvmf-tgt`.
//!
//! The first signal asks for a graceful stop (jobs stop issuing and still
//! write results; the daemon drains). A signal repeated within
//! [`SAME_REQUEST`] of the first is the *same* request: GNU `timeout`
//! signals the process and then its whole group, and a shell's Ctrl-C
//! reaches every process of the foreground group, so one user action often
//! arrives twice. A signal after that window forces the exit (status 130).
//!
//! Built on `signal-hook`'s iterator (a self-pipe and a thread), so no
//! `unsafe` and no hand-written handler live here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Window in which a repeated signal counts as the first one's duplicate.
pub const SAME_REQUEST: Duration = Duration::from_secs(1);

/// What a received signal means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    /// The first: stop gracefully.
    Stop(i32),
    /// A repeat within [`SAME_REQUEST`] of the first: nothing new.
    Repeat(i32),
    /// A later one: the user insists; exit without finishing.
    Force(i32),
}

/// Turns a stream of signals into actions (pure, so it is testable).
#[derive(Debug, Default)]
pub struct Debounce {
    first: Option<Instant>,
}

impl Debounce {
    /// Classifies signal `sig` received at `now`.
    pub fn on_signal(&mut self, sig: i32, now: Instant) -> SignalAction {
        match self.first {
            None => {
                self.first = Some(now);
                SignalAction::Stop(sig)
            }
            Some(t) if now.saturating_duration_since(t) < SAME_REQUEST => SignalAction::Repeat(sig),
            Some(_) => SignalAction::Force(sig),
        }
    }
}

/// The installed stop-signal listener.
#[derive(Debug)]
pub struct StopSignals {
    stop: Arc<AtomicBool>,
    rx: Mutex<mpsc::Receiver<i32>>,
}

impl StopSignals {
    /// `true` once a stop was asked for.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits for the first stop request; returns its signal number
    /// (`None` if the listener thread is gone).
    pub fn wait(&self) -> Option<i32> {
        self.rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv()
            .ok()
    }
}

static LISTENER: OnceLock<StopSignals> = OnceLock::new();

/// Installs the listener for SIGINT and SIGTERM (once per process; later
/// calls return the same one). `on_force` runs on the listener thread
/// before a forced exit (say why in the log); then the process exits 130.
pub fn install_with(on_force: fn(i32)) -> std::io::Result<&'static StopSignals> {
    if let Some(l) = LISTENER.get() {
        return Ok(l);
    }
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut d = Debounce::default();
            for sig in signals.forever() {
                match d.on_signal(sig, Instant::now()) {
                    SignalAction::Stop(s) => {
                        flag.store(true, Ordering::SeqCst);
                        let _ = tx.send(s);
                    }
                    SignalAction::Repeat(s) => {
                        tracing::info!(signal = s, "repeated signal: already stopping");
                    }
                    SignalAction::Force(s) => {
                        on_force(s);
                        std::process::exit(130);
                    }
                }
            }
        })?;
    Ok(LISTENER.get_or_init(|| StopSignals {
        stop,
        rx: Mutex::new(rx),
    }))
}

/// Installs the listener with a plain message on a forced exit.
pub fn install() -> std::io::Result<&'static StopSignals> {
    install_with(|s| eprintln!("signal {s} again: exiting without finishing"))
}

/// `true` once a stop was asked for (`false` before [`install`]).
pub fn stop_requested() -> bool {
    LISTENER.get().is_some_and(StopSignals::stop_requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_within_the_window_is_the_same_request_a_later_one_forces() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert_eq!(d.on_signal(SIGTERM, t0), SignalAction::Stop(SIGTERM));
        // GNU timeout: the process, then its group, microseconds apart.
        assert_eq!(
            d.on_signal(SIGTERM, t0 + Duration::from_micros(50)),
            SignalAction::Repeat(SIGTERM)
        );
        assert_eq!(
            d.on_signal(SIGINT, t0 + Duration::from_millis(999)),
            SignalAction::Repeat(SIGINT)
        );
        assert_eq!(
            d.on_signal(SIGINT, t0 + SAME_REQUEST),
            SignalAction::Force(SIGINT)
        );
    }
}
