//! The host controller: connect, bring-up, keep-alive, asynchronous
//! events, error recovery, reset, shutdown and disconnect.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use target_core::host_cmds::AsyncEvent;
use target_core::host_cmds::{AdminCommands, PROP_CAP, PROP_VS, host_id_for, is_namespace_notice};
use target_core::host_ctrl::{
    AssocState, ControllerData, ReconnectEnd, ReconnectPolicy, StopFlag, reconnect,
};
use target_core::iobuf::DataBuf;
use target_core::nvmf::raw;
use target_core::spec::{AdminOpcode, CompletionEntry, SubmissionEntry};

use super::conn::{HostConn, MAX_DEPTH};
use super::qpair::HostQpair;
use super::wire::Wire;
use super::{HostError, SubmitError};

/// In-capsule data every controller takes on the admin queue (NVMe/TCP
/// 1.0 §3.3: 8 KiB regardless of IOCCSZ).
const ADMIN_IN_CAPSULE: u32 = 8192;
/// Largest admin data transfer the host asks for.
const ADMIN_MAX_XFER: usize = 128 * 1024;
/// Connect CATTR bit 2 (in CDW11 bits 23:16): SQ flow control disabled.
const CATTR_DISABLE_SQFLOW: u32 = 1 << (16 + 2);
/// Tag of the host's own Asynchronous Event Requests.
const AER_TAG: u64 = u64::MAX;
const ADMIN_POLL: Duration = Duration::from_micros(20);

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Target address, `host:port` (IPv6 as `[addr]:port`).
    pub traddr: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier (128 bits, non-zero).
    pub hostid: [u8; 16],
    /// I/O queue pairs to create (one TCP connection each).
    pub io_queues: u16,
    /// Entries per I/O queue (capped by CAP.MQES).
    pub queue_depth: u16,
    /// Entries of the admin queue (at least 32).
    pub admin_depth: u16,
    /// Keep-alive timeout asked of the target, ms (0 = none).
    pub kato_ms: u32,
    /// Bound for every wait of the host (connect, admin commands).
    pub timeout: Duration,
    /// Run a background thread for keep-alive, asynchronous events and
    /// error recovery. Off: call [`HostController::service`] yourself.
    pub background: bool,
    /// Ask for header digests (the target may refuse).
    pub header_digest: bool,
    /// Ask for data digests (the target may refuse).
    pub data_digest: bool,
    /// Connect I/O queues with SQ flow control disabled, which lets the
    /// target end a read with C2HData SUCCESS instead of a response capsule.
    pub disable_sqflow: bool,
    /// Largest data of one command the host sends (the controller's MDTS
    /// lowers it); longer reads and writes are split.
    pub max_transfer: u32,
    /// Error recovery, as Linux's `ctrl_loss_tmo`: how long the host keeps
    /// trying to reconnect after it lost the controller. `Duration::ZERO`
    /// (the default) turns recovery off.
    pub ctrl_loss_tmo: Duration,
    /// Pause between reconnect attempts; the first is immediate.
    pub reconnect_delay: Duration,
    /// With recovery on: how often one command is resubmitted after a
    /// retryable failure (DNR clear).
    pub max_retries: u32,
}

impl ConnectOptions {
    /// Defaults: one queue of 128 entries, 10 s keep-alive, background on,
    /// no digests, SQ flow control off, 128 KiB transfers, recovery off.
    pub fn new(traddr: &str, subnqn: &str, hostnqn: &str) -> Self {
        Self {
            traddr: traddr.to_owned(),
            subnqn: subnqn.to_owned(),
            hostnqn: hostnqn.to_owned(),
            hostid: host_id_for(hostnqn),
            io_queues: 1,
            queue_depth: 128,
            admin_depth: 32,
            kato_ms: 10_000,
            timeout: Duration::from_secs(30),
            background: true,
            header_digest: false,
            data_digest: false,
            disable_sqflow: true,
            max_transfer: 128 * 1024,
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

    /// Options from an SPDK transport ID string, as `spdk_nvme_perf -r`
    /// takes it: `trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420
    /// subnqn:nqn...` (keys case-insensitive, `hostnqn:` optional, `=` also
    /// accepted as separator). `trtype` must be TCP; `subnqn` and `traddr`
    /// are required; `trsvcid` defaults to 4420. IPv6 addresses get their
    /// brackets.
    pub fn from_trid(trid: &str, default_hostnqn: &str) -> Result<Self, HostError> {
        let (mut trtype, mut adrfam, mut traddr, mut svc, mut subnqn, mut hostnqn) =
            (None, None, None, None, None, None);
        for kv in trid.split_whitespace() {
            let Some((k, v)) = kv.split_once([':', '=']) else {
                return Err(HostError::Invalid(format!(
                    "transport ID: {kv:?} is not key:value"
                )));
            };
            let slot = match k.to_ascii_lowercase().as_str() {
                "trtype" => &mut trtype,
                "adrfam" => &mut adrfam,
                "traddr" => &mut traddr,
                "trsvcid" => &mut svc,
                "subnqn" => &mut subnqn,
                "hostnqn" => &mut hostnqn,
                _ => {
                    return Err(HostError::Invalid(format!(
                        "transport ID: unknown key {k:?}"
                    )));
                }
            };
            *slot = Some(v.to_owned());
        }
        match trtype.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("tcp") => {}
            other => {
                return Err(HostError::Invalid(format!(
                    "transport ID: trtype {other:?} (only TCP is supported)"
                )));
            }
        }
        let addr = traddr.ok_or_else(|| HostError::Invalid("transport ID: no traddr".into()))?;
        let subnqn = subnqn.ok_or_else(|| HostError::Invalid("transport ID: no subnqn".into()))?;
        let v6 = adrfam
            .as_deref()
            .is_some_and(|f| f.eq_ignore_ascii_case("ipv6"))
            || (addr.contains(':') && !addr.starts_with('['));
        let host = if v6 && !addr.starts_with('[') {
            format!("[{addr}]")
        } else {
            addr
        };
        let port = svc.unwrap_or_else(|| "4420".into());
        let traddr = format!("{host}:{port}");
        Ok(Self::new(
            &traddr,
            &subnqn,
            hostnqn.as_deref().unwrap_or(default_hostnqn),
        ))
    }

    /// Asks for header and data digests.
    pub fn with_digests(mut self, header: bool, data: bool) -> Self {
        self.header_digest = header;
        self.data_digest = data;
        self
    }
}

/// What queue pairs need to (re)connect, and the recovery state they share
/// with the controller.
#[derive(Debug)]
pub(crate) struct Assoc {
    pub opts: ConnectOptions,
    /// In-capsule data the I/O queues take (IOCCSZ × 16 − 64).
    pub in_capsule: AtomicU32,
    /// Largest data of one I/O command (MDTS and `max_transfer`).
    pub max_xfer: AtomicU32,
    /// What the queue pairs and the poller share of the association.
    pub state: AssocState,
    /// Why the controller was lost, last time.
    pub last_error: Mutex<Option<String>>,
}

impl Deref for Assoc {
    type Target = AssocState;
    fn deref(&self) -> &AssocState {
        &self.state
    }
}

impl Assoc {
    pub(crate) fn recovery(&self) -> bool {
        !self.opts.ctrl_loss_tmo.is_zero()
    }

    fn note(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A new connection for I/O queue `qid`: waits (bounded) for the
    /// controller to be ready, ICReq, Connect.
    pub(crate) fn open_io(&self, qid: u16, depth: u16) -> Result<Wire, HostError> {
        let deadline = Instant::now() + self.opts.timeout;
        while !self.ready.load(Ordering::Acquire) {
            if self.gone.load(Ordering::Acquire) {
                return Err(HostError::Disconnected(
                    self.last_error()
                        .unwrap_or_else(|| "controller is gone".into()),
                ));
            }
            if Instant::now() > deadline {
                return Err(HostError::Timeout("controller ready"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let max_xfer = self.max_xfer.load(Ordering::Acquire) as usize;
        let mut w = Wire::open(
            &self.opts.traddr,
            self.opts.header_digest,
            self.opts.data_digest,
            max_xfer.max(ADMIN_IN_CAPSULE as usize) + 1024,
            self.opts.timeout,
        )?;
        let mut sqe = raw::connect_sqe(qid, depth, 0);
        if self.opts.disable_sqflow {
            sqe.cdw11 |= CATTR_DISABLE_SQFLOW;
        }
        let cntlid = self.cntlid.load(Ordering::Acquire);
        let data = raw::connect_data(
            &self.opts.hostid,
            cntlid,
            &self.opts.subnqn,
            &self.opts.hostnqn,
        );
        let cqe = w.exchange(
            sqe,
            data.as_slice(),
            self.in_capsule.load(Ordering::Acquire) as usize,
            self.opts.timeout,
        )?;
        if !cqe.status().is_success() {
            return Err(HostError::Status {
                what: "Connect (I/O queue)",
                status: cqe.status(),
                dw0: cqe.dw0,
            });
        }
        Ok(w)
    }
}

/// The admin queue: its command table and what its AERs brought.
#[derive(Debug)]
struct Admin {
    conn: HostConn,
    events: Vec<u32>,
    aers_out: usize,
    next_tag: u64,
}

impl Admin {
    fn new(conn: HostConn) -> Self {
        Self {
            conn,
            events: Vec::new(),
            aers_out: 0,
            next_tag: 1,
        }
    }

    /// Drives the queue once; AER completions become events. Returns the
    /// completion with `tag`, if it came.
    fn poll(&mut self, tag: u64) -> Option<(CompletionEntry, DataBuf)> {
        let Admin {
            conn,
            events,
            aers_out,
            ..
        } = self;
        let mut got = None;
        conn.poll(usize::MAX, &mut |c| {
            if c.tag == AER_TAG {
                *aers_out = aers_out.saturating_sub(1);
                if c.status().is_success() {
                    events.push(c.cqe.dw0);
                }
            } else if c.tag == tag {
                got = Some((c.cqe, c.buf));
            }
        });
        got
    }

    fn reason(&self) -> String {
        self.conn
            .dead_reason
            .clone()
            .unwrap_or_else(|| "admin queue closed".into())
    }
}

fn lock(m: &Mutex<Admin>) -> MutexGuard<'_, Admin> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one admin command; returns its completion whatever the status.
fn command(
    admin: &Mutex<Admin>,
    sqe: SubmissionEntry,
    buf: DataBuf,
    limit: Duration,
    what: &'static str,
) -> Result<(CompletionEntry, DataBuf), HostError> {
    let mut a = lock(admin);
    let tag = a.next_tag;
    a.next_tag += 1;
    match a.conn.submit(sqe, buf, tag) {
        Ok(_) => {}
        Err(SubmitError::QueueFull(_)) => return Err(HostError::Busy(a.conn.outstanding())),
        Err(SubmitError::Closed(_)) => return Err(HostError::Disconnected(a.reason())),
    }
    let deadline = Instant::now() + limit;
    loop {
        if let Some(r) = a.poll(tag) {
            return Ok(r);
        }
        if !a.conn.is_live() {
            return Err(HostError::Disconnected(a.reason()));
        }
        if Instant::now() > deadline {
            return Err(HostError::Timeout(what));
        }
        std::thread::sleep(ADMIN_POLL);
    }
}

fn checked(
    admin: &Mutex<Admin>,
    what: &'static str,
    sqe: SubmissionEntry,
    buf: DataBuf,
    limit: Duration,
) -> Result<(CompletionEntry, DataBuf), HostError> {
    let (cqe, buf) = command(admin, sqe, buf, limit, what)?;
    if !cqe.status().is_success() {
        return Err(HostError::Status {
            what,
            status: cqe.status(),
            dw0: cqe.dw0,
        });
    }
    Ok((cqe, buf))
}

/// The admin queue with its bound: what the poller thread and recovery
/// use, holding no controller.
struct AdminOn<'a> {
    admin: &'a Mutex<Admin>,
    limit: Duration,
}

impl AdminOn<'_> {
    /// Enables the controller and submits `aers` AERs.
    fn enable(&self, cap: u64, aers: usize) -> Result<(), HostError> {
        self.enable_controller(cap)?;
        submit_aers(self.admin, aers);
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
        checked(self.admin, what, sqe, buf, self.limit)
    }
}

fn submit_aers(admin: &Mutex<Admin>, aers: usize) {
    let mut a = lock(admin);
    while a.aers_out < aers && a.conn.is_live() {
        let sqe = SubmissionEntry::new(AdminOpcode::ASYNC_EVENT_REQUEST.0, 0);
        if a.conn.submit(sqe, DataBuf::None, AER_TAG).is_err() {
            break;
        }
        a.aers_out += 1;
    }
}

/// Opens the admin connection and runs Connect (dynamic controller).
/// Returns the queue and the CNTLID.
fn open_admin(o: &ConnectOptions) -> Result<(HostConn, u16), HostError> {
    let mut w = Wire::open(
        &o.traddr,
        o.header_digest,
        o.data_digest,
        ADMIN_MAX_XFER + 1024,
        o.timeout,
    )?;
    let sqe = raw::connect_sqe(0, o.admin_depth, o.kato_ms);
    let data = raw::connect_data(&o.hostid, 0xffff, &o.subnqn, &o.hostnqn);
    let cqe = w.exchange(sqe, data.as_slice(), ADMIN_IN_CAPSULE as usize, o.timeout)?;
    if !cqe.status().is_success() {
        return Err(HostError::Status {
            what: "Connect (admin queue)",
            status: cqe.status(),
            dw0: cqe.dw0,
        });
    }
    let conn = HostConn::new(w, 0, o.admin_depth, ADMIN_IN_CAPSULE, 0);
    Ok((conn, cqe.dw0 as u16))
}

/// Connects I/O queue pairs of one controller; cheap to clone and send.
#[derive(Clone, Debug)]
pub struct QpairConnector(Arc<Assoc>);

impl QpairConnector {
    /// Connects queue `qid` with `depth` entries (waits, bounded, for the
    /// controller to be ready; fails once the association is gone).
    pub fn connect(&self, qid: u16, depth: u16) -> Result<HostQpair, HostError> {
        let wire = self.0.open_io(qid, depth)?;
        Ok(HostQpair::new(self.0.clone(), qid, depth, wire))
    }

    /// Controller ID.
    pub fn cntlid(&self) -> u16 {
        self.0.cntlid.load(Ordering::Acquire)
    }
}

/// A connected NVMe/TCP host controller (one association). What it read
/// at connect (CAP, Identify, the queues granted) and its untaken queue
/// pairs and events are its [`ControllerData`], which it dereferences to (read-only).
pub struct HostController {
    assoc: Arc<Assoc>,
    admin: Arc<Mutex<Admin>>,
    data: ControllerData<HostQpair>,
    last_ka: Mutex<Instant>,
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
            .field("traddr", &self.assoc.opts.traddr)
            .field("cntlid", &self.assoc.cntlid.load(Ordering::Relaxed))
            .field("subnqn", &self.assoc.opts.subnqn)
            .finish()
    }
}

impl HostController {
    /// Connects a host controller: admin queue, property handshake,
    /// Identify, Number of Queues, then the I/O queue pairs.
    pub fn connect(opts: ConnectOptions) -> Result<Self, HostError> {
        if opts.queue_depth < 2 || opts.queue_depth > MAX_DEPTH || opts.admin_depth < 32 {
            return Err(HostError::Invalid(format!(
                "queue depth must be 2..={MAX_DEPTH} and admin depth at least 32 (got {} and {})",
                opts.queue_depth, opts.admin_depth
            )));
        }
        if opts.max_transfer < 4096 {
            return Err(HostError::Invalid(format!(
                "max_transfer must be at least 4096 (got {})",
                opts.max_transfer
            )));
        }
        let (conn, cntlid) = open_admin(&opts)?;
        let assoc = Arc::new(Assoc {
            opts: opts.clone(),
            in_capsule: AtomicU32::new(0),
            max_xfer: AtomicU32::new(opts.max_transfer),
            state: AssocState::new(cntlid),
            last_error: Mutex::new(None),
        });
        let mut c = Self {
            assoc,
            admin: Arc::new(Mutex::new(Admin::new(conn))),
            data: ControllerData::default(),
            last_ka: Mutex::new(Instant::now()),
        };
        if let Err(e) = c.bring_up(&opts) {
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
        self.admin_on().enable(self.cap(), self.aers())?;
        let (_, buf) = self.identify_raw(1, 0)?;
        self.data.set_identify(&buf);
        let id = self.identify_controller();
        let ioccsz = u32::from_le_bytes([id[1792], id[1793], id[1794], id[1795]]);
        self.assoc.in_capsule.store(
            ioccsz.saturating_mul(16).saturating_sub(64),
            Ordering::Release,
        );
        let mdts = self.max_transfer();
        let max = match mdts {
            0 => opts.max_transfer as u64,
            m => m.min(opts.max_transfer as u64),
        };
        self.assoc.max_xfer.store(max as u32, Ordering::Release);
        let granted = self.set_number_of_queues(opts.io_queues)?;
        self.data.set_granted(granted);
        self.assoc.ready.store(true, Ordering::Release);
        let mqes = (self.cap() & 0xffff) as u16 + 1;
        let depth = opts.queue_depth.min(mqes.max(2));
        for qid in 1..=opts.io_queues.min(self.io_queues_granted()) {
            let q = self.connector().connect(qid, depth)?;
            self.data.keep_qpair(q);
        }
        Ok(())
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

    /// `true` once the association is over for good (disconnected, lost
    /// without recovery, or recovery ran past `ctrl_loss_tmo`).
    pub fn is_gone(&self) -> bool {
        self.assoc.gone.load(Ordering::Acquire)
    }

    /// Why the controller was last lost (a closed connection, a protocol
    /// error, an unanswered Keep Alive), if it was.
    pub fn last_error(&self) -> Option<String> {
        self.assoc.last_error()
    }

    /// Largest data of one command the host sends on I/O queues: the
    /// lesser of MDTS ([`ControllerData::max_transfer`]) and
    /// `ConnectOptions::max_transfer`; longer reads and writes are split.
    pub fn host_max_transfer(&self) -> u32 {
        self.assoc.max_xfer.load(Ordering::Acquire)
    }

    /// In-capsule data the I/O queues take (IOCCSZ × 16 − 64 bytes).
    pub fn in_capsule_data_size(&self) -> u32 {
        self.assoc.in_capsule.load(Ordering::Acquire)
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
    /// thread.
    pub fn connector(&self) -> QpairConnector {
        QpairConnector(self.assoc.clone())
    }

    /// Runs any admin command; returns its completion whatever the status.
    pub fn admin_raw(
        &self,
        sqe: SubmissionEntry,
        buf: DataBuf,
    ) -> Result<(CompletionEntry, DataBuf), HostError> {
        command(
            &self.admin,
            sqe,
            buf,
            self.assoc.opts.timeout,
            "admin command",
        )
    }

    /// The admin queue as the poller uses it (no controller borrowed).
    fn admin_on(&self) -> AdminOn<'_> {
        AdminOn {
            admin: &self.admin,
            limit: self.assoc.opts.timeout,
        }
    }

    /// One round of admin housekeeping: reap, turn events into
    /// [`AsyncEvent`]s, keep AERs outstanding, send Keep Alive when KATO/2
    /// passed, and (with recovery on) reconnect a lost controller. The
    /// background poller calls this; without it, call it.
    pub fn service(&self) -> Result<(), HostError> {
        let mut last = *self.last_ka.lock().unwrap_or_else(|p| p.into_inner());
        let r = service_round(
            &self.assoc,
            &self.admin,
            self.event_sink(),
            self.aers(),
            self.stop_flag(),
            &mut last,
        );
        *self.last_ka.lock().unwrap_or_else(|p| p.into_inner()) = last;
        r
    }

    fn start_poller(&mut self) {
        let (assoc, admin, aers) = (self.assoc.clone(), self.admin.clone(), self.aers());
        let name = format!("nvmf-tcp-host-{}", assoc.cntlid());
        self.data.start_poller(name, move |stop, events| {
            let mut last_ka = Instant::now();
            while !stop.is_set() && !assoc.is_gone() {
                if let Err(e) = service_round(&assoc, &admin, &events, aers, &stop, &mut last_ka) {
                    tracing::debug!(error = %e, "host admin service");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
    }

    /// Controller reset (CC.EN = 0, then enable again). The target ends
    /// the I/O queues; queue pairs reconnect themselves with recovery on,
    /// else with [`HostQpair::reconnect`].
    pub fn reset(&mut self) -> Result<(), HostError> {
        self.assoc.ready.store(false, Ordering::Release);
        self.assoc.generation.fetch_add(1, Ordering::AcqRel);
        self.disable_controller(self.cap())?;
        lock(&self.admin).aers_out = 0;
        self.admin_on().enable(self.cap(), self.aers())?;
        let granted = self.set_number_of_queues(self.io_queues_granted())?;
        self.data.set_granted(granted);
        self.assoc.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Normal shutdown (CC.SHN), waiting for CSTS.SHST complete; then the
    /// association is closed.
    pub fn shutdown(mut self) -> Result<(), HostError> {
        self.assoc.ready.store(false, Ordering::Release);
        let r = self.shutdown_controller(self.assoc.opts.timeout);
        self.close_admin();
        r
    }

    /// Ends the association: the admin connection closes, and the target
    /// deletes the controller with its I/O queues.
    pub fn disconnect(mut self) -> Result<(), HostError> {
        self.close_admin();
        Ok(())
    }

    fn close_admin(&mut self) {
        self.data.stop_poller();
        self.assoc.ready.store(false, Ordering::Release);
        self.assoc.gone.store(true, Ordering::Release);
        let mut a = lock(&self.admin);
        if let Some(mut w) = a.conn.wire.take() {
            w.close();
        }
    }
}

impl Drop for HostController {
    fn drop(&mut self) {
        self.close_admin();
    }
}

/// Admin housekeeping, shared by the poller thread and
/// [`HostController::service`].
fn service_round(
    assoc: &Assoc,
    admin: &Mutex<Admin>,
    events: &Mutex<Vec<AsyncEvent>>,
    aers: usize,
    stop: &StopFlag,
    last_ka: &mut Instant,
) -> Result<(), HostError> {
    if assoc.gone.load(Ordering::Acquire) || stop.is_set() {
        return Ok(());
    }
    let timeout = assoc.opts.timeout;
    let dead = {
        let mut a = lock(admin);
        a.poll(0);
        (!a.conn.is_live()).then(|| a.reason())
    };
    if let Some(why) = dead {
        lost(assoc, why);
    }
    if assoc.recovery_pending() {
        if assoc.recovery() {
            recover(assoc, admin, aers, stop);
            *last_ka = Instant::now();
        }
        return Ok(());
    }
    let raw = std::mem::take(&mut lock(admin).events);
    let a = AdminOn {
        admin,
        limit: timeout,
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
        submit_aers(admin, aers);
    }
    let kato = assoc.opts.kato_ms;
    if kato != 0 && last_ka.elapsed() >= Duration::from_millis((kato / 2).max(1) as u64) {
        *last_ka = Instant::now();
        // A Keep Alive unanswered within KATO means the controller is lost.
        let limit = timeout.min(Duration::from_millis(kato as u64));
        let sqe = SubmissionEntry::new(AdminOpcode::KEEP_ALIVE.0, 0);
        match command(admin, sqe, DataBuf::None, limit, "Keep Alive") {
            Ok((c, _)) if c.status().is_success() => {}
            Ok((c, _)) => lost(assoc, format!("Keep Alive refused: {}", c.status())),
            Err(e) => lost(assoc, format!("Keep Alive failed: {e}")),
        }
    }
    Ok(())
}

/// The controller is lost: recover (when on) or give it up.
fn lost(assoc: &Assoc, why: String) {
    if assoc.gone.load(Ordering::Acquire) {
        return;
    }
    tracing::warn!(
        traddr = assoc.opts.traddr,
        subnqn = assoc.opts.subnqn,
        reason = why,
        "NVMe/TCP controller lost"
    );
    assoc.note(why);
    if assoc.recovery() {
        assoc.request_recovery();
    } else {
        assoc.ready.store(false, Ordering::Release);
        assoc.gone.store(true, Ordering::Release);
    }
}

/// A refusal no retry will change.
fn permanent(e: &HostError) -> bool {
    match e {
        HostError::Invalid(_) => true,
        HostError::Status { status, .. } => status.dnr(),
        _ => false,
    }
}

/// Error recovery: drop the old association, connect a new one every
/// `reconnect_delay` until it works or `ctrl_loss_tmo` runs out. I/O queue
/// pairs see the new generation and reconnect themselves.
fn recover(assoc: &Assoc, admin: &Mutex<Admin>, aers: usize, stop: &StopFlag) {
    assoc.ready.store(false, Ordering::Release);
    assoc.recovering.store(true, Ordering::Release);
    // Every I/O queue of the old association is stale from here on.
    assoc.generation.fetch_add(1, Ordering::AcqRel);
    if let Some(mut w) = lock(admin).conn.wire.take() {
        w.close();
    }
    let policy = ReconnectPolicy {
        delay: assoc.opts.reconnect_delay,
        ctrl_loss_tmo: assoc.opts.ctrl_loss_tmo,
    };
    let pause = |d| {
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.is_set() {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let r = reconnect(
        assoc,
        policy,
        stop,
        pause,
        || reassociate(assoc, admin, aers),
        permanent,
        |e, attempt| tracing::debug!(error = %e, attempt, "reconnect attempt failed"),
    );
    match r {
        Ok(attempt) => tracing::info!(
            traddr = assoc.opts.traddr,
            cntlid = assoc.cntlid(),
            attempt,
            "NVMe/TCP controller reconnected"
        ),
        Err(ReconnectEnd::Stopped) => {}
        Err(ReconnectEnd::Refused { error, attempts })
        | Err(ReconnectEnd::LossTimeout { error, attempts }) => {
            tracing::error!(traddr = assoc.opts.traddr, error = %error, attempts, "reconnect failed; giving the controller up");
            assoc.note(format!(
                "reconnect gave up after {attempts} attempts: {error}"
            ));
        }
    }
}

fn reassociate(assoc: &Assoc, admin: &Mutex<Admin>, aers: usize) -> Result<(), HostError> {
    let (conn, cntlid) = open_admin(&assoc.opts)?;
    *lock(admin) = Admin::new(conn);
    let a = AdminOn {
        admin,
        limit: assoc.opts.timeout,
    };
    let r = (|| {
        let cap = a.property_get(PROP_CAP, true)?;
        a.enable(cap, aers)?;
        a.set_number_of_queues(assoc.opts.io_queues)
    })();
    match r {
        Ok(_) => {
            assoc.cntlid.store(cntlid, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            if let Some(mut w) = lock(admin).conn.wire.take() {
                w.close();
            }
            Err(e)
        }
    }
}

impl AdminCommands for HostController {
    type Error = HostError;

    fn admin_checked(
        &self,
        what: &'static str,
        sqe: SubmissionEntry,
        buf: DataBuf,
    ) -> Result<(CompletionEntry, DataBuf), HostError> {
        checked(&self.admin, what, sqe, buf, self.assoc.opts.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdk_transport_id() {
        let o = ConnectOptions::from_trid(
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2026-11.io:a",
            "nqn.h",
        )
        .unwrap();
        assert_eq!(o.traddr, "127.0.0.1:4420");
        assert_eq!(o.subnqn, "nqn.2026-11.io:a");
        assert_eq!(o.hostnqn, "nqn.h");
        let o = ConnectOptions::from_trid(
            "trtype=tcp adrfam=IPv6 traddr=::1 subnqn=nqn.x hostnqn=nqn.y",
            "nqn.h",
        )
        .unwrap();
        assert_eq!(o.traddr, "[::1]:4420");
        assert_eq!(o.hostnqn, "nqn.y");
        for bad in [
            "trtype:RDMA traddr:1.2.3.4 subnqn:nqn.x",
            "trtype:TCP subnqn:nqn.x",
            "trtype:TCP traddr:1.2.3.4",
            "trtype:TCP traddr:1.2.3.4 subnqn:nqn.x bogus:1",
            "trtype:TCP traddr",
        ] {
            assert!(ConnectOptions::from_trid(bad, "h").is_err(), "{bad}");
        }
    }
}
