//! What a host keeps of a connected controller, written once for every host
//! transport: the association state its queue pairs share, the data read
//! at connect, and the reconnect loop of error recovery.
//!
//! The loop host and the NVMe/TCP host differ in how a queue is opened (a
//! ring pair handed to the target in this process, a TCP connection with
//! ICReq) and how a wait is spent (driving a manual-mode target, sleeping);
//! what a lost controller means, when a reconnect counts and when recovery
//! gives up is the same, and lives here.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::host_cmds::{AsyncEvent, RecoveryRequest};
use crate::iobuf::DataBuf;

/// The state of one host controller's association that its queue pairs
/// and its admin poller share (atomics: queue pairs read it on their own
/// threads without a lock).
#[derive(Debug)]
pub struct AssocState {
    /// Controller ID of the current association (changes on recovery).
    pub cntlid: AtomicU16,
    /// The controller is enabled and its I/O queues may connect.
    pub ready: AtomicBool,
    /// The association is over for good (disconnected, or recovery gave up).
    pub gone: AtomicBool,
    /// Counts associations: a queue pair connected in generation `g` knows
    /// its queue is stale once this moved past `g`.
    pub generation: AtomicU32,
    /// A queue pair saw its queue end in the current generation.
    pub recover_req: RecoveryRequest,
    /// A recovery is under way (I/O queues wait for it).
    pub recovering: AtomicBool,
    /// Successful reconnects of the controller.
    pub reconnects: AtomicU64,
}

impl AssocState {
    /// The state of a new association with controller `cntlid`.
    pub fn new(cntlid: u16) -> Self {
        Self {
            cntlid: AtomicU16::new(cntlid),
            ready: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            recover_req: RecoveryRequest::default(),
            recovering: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        }
    }

    /// Controller ID of the current association.
    pub fn cntlid(&self) -> u16 {
        self.cntlid.load(Ordering::Acquire)
    }

    /// `true` once the association is over for good.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Asks the poller to replace the current association.
    pub fn request_recovery(&self) {
        self.recover_req.request_current(&self.generation);
    }

    /// A replacement of the current association was asked for.
    pub fn recovery_pending(&self) -> bool {
        self.recover_req.pending_current(&self.generation)
    }

    /// The association is over for good: queue pairs stop waiting.
    pub fn end(&self) {
        self.ready.store(false, Ordering::Release);
        self.gone.store(true, Ordering::Release);
        self.recovering.store(false, Ordering::Release);
    }
}

/// When error recovery tries again and when it gives up (Linux's
/// `reconnect_delay` and `ctrl_loss_tmo`).
#[derive(Clone, Copy, Debug)]
pub struct ReconnectPolicy {
    /// Pause between attempts; the first is immediate.
    pub delay: Duration,
    /// How long after the loss the host keeps trying.
    pub ctrl_loss_tmo: Duration,
}

/// Set when the controller's owner closes it: the poller and recovery stop.
/// Only [`ControllerData::stop_poller`] sets it; everything else reads it.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// The controller is being closed.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Why [`reconnect`] stopped without a new association.
#[derive(Debug)]
pub enum ReconnectEnd<E> {
    /// The controller is being closed by its owner.
    Stopped,
    /// A refusal no retry changes (after `attempts` attempts).
    Refused { error: E, attempts: u32 },
    /// `ctrl_loss_tmo` ran out (after `attempts` attempts).
    LossTimeout { error: E, attempts: u32 },
}

/// Error recovery's reconnect loop, as Linux's fabrics hosts run it: an
/// attempt at once, then one every `delay` (spent in `pause`, which may
/// drive a manual-mode target or return early on `stop`; `failed` hears of
/// each failed attempt that is tried again), until one works
/// (`Ok(attempts)`: the generation moved on, I/O queues may connect), a
/// refusal is `permanent`, or `ctrl_loss_tmo` ran out. On any end but
/// success the association is over for good ([`AssocState::end`]).
pub fn reconnect<E>(
    state: &AssocState,
    policy: ReconnectPolicy,
    stop: &StopFlag,
    mut pause: impl FnMut(Duration),
    mut attempt: impl FnMut() -> Result<(), E>,
    permanent: impl Fn(&E) -> bool,
    mut failed: impl FnMut(&E, u32),
) -> Result<u32, ReconnectEnd<E>> {
    let start = Instant::now();
    let mut attempts = 0u32;
    let end = loop {
        if stop.is_set() {
            break ReconnectEnd::Stopped;
        }
        if attempts > 0 {
            pause(policy.delay);
            if stop.is_set() {
                break ReconnectEnd::Stopped;
            }
        }
        attempts += 1;
        match attempt() {
            Ok(()) => {
                state.reconnects.fetch_add(1, Ordering::Relaxed);
                state.generation.fetch_add(1, Ordering::AcqRel);
                state.recovering.store(false, Ordering::Release);
                state.ready.store(true, Ordering::Release);
                return Ok(attempts);
            }
            Err(error) if permanent(&error) => break ReconnectEnd::Refused { error, attempts },
            Err(error) if start.elapsed() >= policy.ctrl_loss_tmo => {
                break ReconnectEnd::LossTimeout { error, attempts };
            }
            Err(e) => failed(&e, attempts),
        }
    };
    state.end();
    Err(end)
}

/// What a host read of its controller at connect, its I/O queue pairs not
/// yet taken, the events its AERs brought and its admin poller thread.
///
/// A host controller dereferences to it (read-only): what a user may read
/// is the `&self` methods; the host sets the rest through its own field.
#[derive(Debug)]
pub struct ControllerData<Q> {
    cap: u64,
    vs: u32,
    identify: Box<[u8; 4096]>,
    granted: u16,
    /// Behind a mutex so the controller stays `Sync` (queue pairs are
    /// `Send` only).
    qpairs: Mutex<Vec<Q>>,
    events: Arc<Mutex<Vec<AsyncEvent>>>,
    stop: StopFlag,
    poller: Option<JoinHandle<()>>,
    aers: usize,
}

impl<Q> Default for ControllerData<Q> {
    fn default() -> Self {
        Self {
            cap: 0,
            vs: 0,
            identify: Box::new([0u8; 4096]),
            granted: 0,
            qpairs: Mutex::new(Vec::new()),
            events: Arc::new(Mutex::new(Vec::new())),
            stop: StopFlag::default(),
            poller: None,
            aers: 1,
        }
    }
}

impl<Q> ControllerData<Q> {
    /// CAP as read at connect.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// VS as read at connect.
    pub fn version(&self) -> u32 {
        self.vs
    }

    /// Identify Controller data read at connect.
    pub fn identify_controller(&self) -> &[u8; 4096] {
        &self.identify
    }

    /// Largest transfer in bytes the controller takes (MDTS, in units of
    /// CAP.MPSMIN), 0 = unlimited. MDTS comes from the peer: a shift that
    /// leaves 64 bits means no limit.
    pub fn max_transfer(&self) -> u64 {
        let mpsmin = 4096u64 << ((self.cap >> 48) & 0xf);
        match self.identify[77] {
            0 => 0,
            m if m < 32 => mpsmin << m,
            _ => u64::MAX,
        }
    }

    /// I/O queues granted by the target.
    pub fn io_queues_granted(&self) -> u16 {
        self.granted
    }

    /// AERs the host keeps outstanding.
    pub fn aers(&self) -> usize {
        self.aers
    }

    /// Asynchronous events received since the last call.
    pub fn take_events(&self) -> Vec<AsyncEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Where the host's poller files the events it receives.
    pub fn event_sink(&self) -> &Arc<Mutex<Vec<AsyncEvent>>> {
        &self.events
    }

    /// Set once the controller is being closed.
    pub fn stop_flag(&self) -> &StopFlag {
        &self.stop
    }

    /// A background poller runs (else the owner calls the host's
    /// `service`).
    pub fn has_poller(&self) -> bool {
        self.poller.is_some()
    }

    /// CAP and VS, as read at connect.
    pub fn set_registers(&mut self, cap: u64, vs: u32) {
        self.cap = cap;
        self.vs = vs;
    }

    /// Identify Controller data (the first 4096 bytes of `buf`).
    pub fn set_identify(&mut self, buf: &DataBuf) {
        buf.copy_out(0, &mut self.identify[..]);
    }

    /// I/O queues granted by Number of Queues.
    pub fn set_granted(&mut self, n: u16) {
        self.granted = n;
    }

    /// Takes the I/O queue pairs (each is then owned by one thread).
    pub fn take_qpairs(&mut self) -> Vec<Q> {
        std::mem::take(self.qpairs.get_mut().unwrap_or_else(|p| p.into_inner()))
    }

    /// Keeps a queue pair connected at bring-up for [`Self::take_qpairs`].
    pub fn keep_qpair(&mut self, q: Q) {
        self.qpairs
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(q);
    }

    /// Starts the admin poller thread `name`; `run` gets the stop flag and
    /// the event sink, and should return once the flag is set. A thread
    /// that cannot start leaves the owner to call the host's `service`.
    pub fn start_poller(
        &mut self,
        name: String,
        run: impl FnOnce(StopFlag, Arc<Mutex<Vec<AsyncEvent>>>) + Send + 'static,
    ) {
        let (stop, events) = (self.stop.clone(), self.events.clone());
        match std::thread::Builder::new()
            .name(name)
            .spawn(move || run(stop, events))
        {
            Ok(h) => self.poller = Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the host admin poller; call service() yourself")
            }
        }
    }

    /// Sets the stop flag and waits for the poller.
    pub fn stop_poller(&mut self) {
        self.stop.set();
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_counts_a_success_and_moves_the_generation() {
        let s = AssocState::new(1);
        s.recovering.store(true, Ordering::Release);
        let stop = StopFlag::default();
        let mut tries = 0;
        let mut pauses = 0;
        let r = reconnect(
            &s,
            ReconnectPolicy {
                delay: Duration::from_millis(1),
                ctrl_loss_tmo: Duration::from_secs(60),
            },
            &stop,
            |_| pauses += 1,
            || {
                tries += 1;
                if tries < 3 { Err("refused") } else { Ok(()) }
            },
            |_| false,
            |_, _| {},
        );
        assert_eq!(r.ok(), Some(3));
        assert_eq!(pauses, 2, "no pause before the first attempt");
        assert_eq!(s.generation.load(Ordering::Acquire), 1);
        assert_eq!(s.reconnects.load(Ordering::Acquire), 1);
        assert!(s.ready.load(Ordering::Acquire) && !s.recovering.load(Ordering::Acquire));
        assert!(!s.is_gone());
    }

    #[test]
    fn reconnect_ends_the_association_on_a_permanent_refusal_or_a_stop() {
        let s = AssocState::new(1);
        let stop = StopFlag::default();
        let r = reconnect(
            &s,
            ReconnectPolicy {
                delay: Duration::ZERO,
                ctrl_loss_tmo: Duration::from_secs(60),
            },
            &stop,
            |_| {},
            || Err::<(), _>("dnr"),
            |e| *e == "dnr",
            |_, _| {},
        );
        assert!(matches!(r, Err(ReconnectEnd::Refused { attempts: 1, .. })));
        assert!(s.is_gone());
        let s = AssocState::new(1);
        let stop = StopFlag::default();
        let r = reconnect(
            &s,
            ReconnectPolicy {
                delay: Duration::ZERO,
                ctrl_loss_tmo: Duration::from_secs(60),
            },
            &stop,
            |_| stop.set(),
            || Err::<(), _>("again"),
            |_| false,
            |_, _| {},
        );
        assert!(matches!(r, Err(ReconnectEnd::Stopped)));
        assert!(s.is_gone());
        assert_eq!(s.generation.load(Ordering::Acquire), 0);
    }

    #[test]
    fn mdts_from_the_peer_never_overflows() {
        let mut d = ControllerData::<()>::default();
        assert_eq!(d.max_transfer(), 0);
        let mut id = crate::iobuf::IoBuf::new(4096);
        id.as_mut_slice()[77] = 5;
        let mut id = DataBuf::One(id);
        d.set_identify(&id);
        assert_eq!(d.max_transfer(), 128 * 1024);
        d.set_registers(1 << 48, 0); // MPSMIN 8 KiB
        assert_eq!(d.max_transfer(), 256 * 1024);
        if let DataBuf::One(b) = &mut id {
            b.as_mut_slice()[77] = 200;
        }
        d.set_identify(&id);
        assert_eq!(d.max_transfer(), u64::MAX);
    }
}
