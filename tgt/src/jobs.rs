//! Host jobs: the daemon's own workloads (`[[job]]` tables of its config,
//! in the bench's job format) run against its subsystems through loop
//! hosts, each on a background thread. This is the soak-test mode; the
//! control socket reports their figures. A job with `transport = "tcp"`
//! runs over NVMe/TCP instead: against `traddr` (a remote target to soak)
//! or, without `traddr`, this service's own first TCP listener.
//!
//! On stop, the job threads are told to stop issuing *while the target
//! drains*, so the drain meets real in-flight I/O; afterwards each verify
//! job reads back, straight from its backend, every block whose write was
//! acknowledged: the proof that the stop lost nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jobengine::JobSpec;
use jobengine::job::JobTransport;
use jobengine::runner::{self, JobOutcome, JobRun, LoopPort, Port, SplitPort};
use jobengine::stats::LiveStats;
use jobengine::tcp::{self, LostReason, TcpJobHost, TcpTarget};
use serde_json::{Value, json};
use target_core::bdev::BdevRef;
use target_facade::Target;
use transport_loop::{ConnectOptions, HostController};

/// Host NQN the jobs connect with.
pub const JOB_HOSTNQN: &str = "nqn.2026-11.io.nvmf-rs:nvmf-tgt-job";
/// Pause between a job host's reconnect attempts.
pub const JOB_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// How long a job host keeps reconnecting before its job fails.
pub const JOB_CTRL_LOSS_TMO: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a job is in its life.
#[derive(Debug)]
enum State {
    Running,
    Done {
        outcome: Box<JobOutcome>,
        /// Blocks read back intact after the run (verify jobs), or why not.
        readback: Option<Result<u64, String>>,
    },
}

/// One running job instance.
#[derive(Debug)]
pub struct HostJob {
    spec: JobSpec,
    nqn: String,
    /// The namespace's backend, for a loop job's read-back; `None` for a
    /// TCP job (its namespace may be remote: it reads back over its queue).
    bdev: Option<BdevRef>,
    /// `host:port` of a TCP job.
    traddr: Option<String>,
    live: Arc<LiveStats>,
    stop: Arc<AtomicBool>,
    started: Instant,
    state: Mutex<State>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Why the job was ended from outside (its namespace hot-removed);
    /// such a job skips the read-back: its backend is gone.
    ended_by: Mutex<Option<String>>,
}

impl HostJob {
    /// Its figures, as the control socket reports them.
    pub fn status(&self) -> Value {
        let snap = self.live.snapshot();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let mut v = json!({
            "name": self.spec.name,
            "subsystem": self.nqn,
            "transport": if self.traddr.is_some() { "tcp" } else { "loop" },
            "nsid": self.spec.nsid,
            "rw": self.spec.rw.to_string(),
            "bs": self.spec.bs,
            "iodepth": self.spec.iodepth,
            "verify": self.spec.verify,
            "ios": snap.ios,
            "bytes": snap.bytes,
            "errors": snap.errors,
            "retries": snap.retries,
            "reconnects": snap.reconnects,
            "iops": (snap.ios as f64 / secs).round(),
            "p99_ns": snap.p99_ns,
            "elapsed_s": (secs * 10.0).round() / 10.0,
        });
        let (state, verify_result) = match &*lock(&self.state) {
            State::Running => ("running", Value::Null),
            State::Done { outcome, readback } => {
                let r = match (&outcome.mismatch, readback) {
                    (Some(m), _) => json!(format!("FAILED: {m}")),
                    (None, Some(Err(e))) => json!(format!("FAILED: read-back: {e}")),
                    (None, Some(Ok(n))) => {
                        json!(format!("ok, {n} acknowledged blocks read back intact"))
                    }
                    (None, None) if self.spec.verify => json!("ok"),
                    (None, None) => Value::Null,
                };
                ("done", r)
            }
        };
        if let Some(a) = &self.traddr {
            v["traddr"] = json!(a);
        }
        v["state"] = json!(state);
        v["verify_result"] = verify_result;
        if let Some(reason) = &*lock(&self.ended_by) {
            v["error"] = json!(reason);
            if self.spec.verify && state == "done" {
                v["verify_result"] = json!(format!("not checked: {reason}"));
            }
        }
        v
    }

    /// `true` when it verified and found something wrong.
    pub fn failed(&self) -> bool {
        match &*lock(&self.state) {
            State::Done { outcome, readback } => {
                outcome.mismatch.is_some() || matches!(readback, Some(Err(_)))
            }
            _ => false,
        }
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// The daemon's jobs.
#[derive(Debug, Default)]
pub struct Jobs {
    list: Mutex<Vec<Arc<HostJob>>>,
}

impl Jobs {
    /// Starts every instance of `specs` against `target`. Errors name the
    /// job (a namespace that does not exist, a range that does not fit).
    pub fn start(&self, target: &Target, specs: &[JobSpec]) -> Result<(), String> {
        let default_nqn = target
            .config()
            .subsystems
            .first()
            .map(|s| s.nqn.get_ref().clone())
            .unwrap_or_default();
        for spec in specs {
            let nqn = spec
                .subsystem
                .clone()
                .unwrap_or_else(|| default_nqn.clone());
            if spec.transport.is_tcp() {
                self.start_tcp(target, spec, &nqn)?;
                continue;
            }
            let sub = target
                .nvmf()
                .subsystem(&nqn)
                .map_err(|e| format!("job '{}': {e}", spec.name))?;
            let ns = sub.namespace(spec.nsid).ok_or_else(|| {
                format!("job '{}': {nqn} has no namespace {}", spec.name, spec.nsid)
            })?;
            let (bs, blocks) = (ns.block_size(), ns.num_blocks());
            for inst in spec.instances(blocks * bs as u64) {
                if inst.inline {
                    return Err(format!(
                        "job '{}': inline jobs are a benchmark mode; the service runs host threads",
                        inst.name
                    ));
                }
                let live = LiveStats::new();
                let stop = Arc::new(AtomicBool::new(false));
                let run = JobRun::new(inst.clone(), bs, blocks, live.clone(), stop.clone())?;
                // Host recovery as Linux's defaults for fabrics, scaled to an
                // in-process transport: a target-side reset or controller
                // loss is ridden through, not the end of the job.
                let mut o = ConnectOptions::new(&nqn, JOB_HOSTNQN)
                    .with_recovery(JOB_RECONNECT_DELAY, JOB_CTRL_LOSS_TMO);
                o.queue_depth = (inst.iodepth + 1).min(4096) as u16;
                let mut host = target
                    .transport()
                    .connect(o)
                    .map_err(|e| format!("job '{}': connect to {nqn}: {e}", inst.name))?;
                let qp = host
                    .take_qpairs()
                    .pop()
                    .ok_or_else(|| format!("job '{}': no I/O queue granted", inst.name))?;
                let job = Arc::new(HostJob {
                    spec: inst.clone(),
                    nqn: nqn.clone(),
                    bdev: Some(ns.bdev.clone()),
                    traddr: None,
                    live,
                    stop,
                    started: Instant::now(),
                    state: Mutex::new(State::Running),
                    thread: Mutex::new(None),
                    ended_by: Mutex::new(None),
                });
                // I/O above the controller's MDTS is split and recombined.
                let port = SplitPort::new(LoopPort::new(qp, inst.nsid), bs, host.max_transfer());
                let j2 = job.clone();
                let h = std::thread::Builder::new()
                    .name(format!("job-{}", inst.name))
                    .spawn(move || run_job(j2, run, port, JobHost::Loop(host)))
                    .map_err(|e| e.to_string())?;
                *lock(&job.thread) = Some(h);
                tracing::info!(
                    job = inst.name,
                    subsystem = nqn,
                    nsid = inst.nsid,
                    rw = %inst.rw,
                    "host job started"
                );
                lock(&self.list).push(job);
            }
        }
        Ok(())
    }

    /// Starts the instances of one NVMe/TCP job: one controller and one
    /// queue pair (two connections) each, with the same recovery as loop
    /// jobs.
    fn start_tcp(&self, target: &Target, spec: &JobSpec, nqn: &str) -> Result<(), String> {
        let JobTransport::Tcp { traddr, hostnqn } = &spec.transport else {
            return Ok(());
        };
        let traddr = match traddr {
            Some(a) => a.clone(),
            None => target
                .tcp()
                .listeners()
                .first()
                .map(|l| l.bound.to_string())
                .ok_or_else(|| {
                    format!(
                        "job '{}': transport = \"tcp\" without traddr needs a TCP [[listener]] in this config",
                        spec.name
                    )
                })?,
        };
        let t = TcpTarget {
            traddr,
            subnqn: nqn.to_owned(),
            hostnqn: hostnqn.clone().unwrap_or_else(|| JOB_HOSTNQN.to_owned()),
            reconnect_delay: JOB_RECONNECT_DELAY,
            ctrl_loss_tmo: JOB_CTRL_LOSS_TMO,
        };
        let err = |name: &str, e: String| format!("job '{name}': {e}");
        let mut first =
            Some(tcp::connect(&t, spec.nsid, spec.iodepth).map_err(|e| err(&spec.name, e))?);
        let (blocks, bs) = match &first {
            Some((h, _, _)) => (h.blocks, h.block_size),
            None => (0, 0),
        };
        for inst in spec.instances(blocks * bs as u64) {
            if inst.inline {
                return Err(err(&inst.name, "inline jobs are a benchmark mode".into()));
            }
            let (host, port, lost) = match first.take() {
                Some(c) => c,
                None => {
                    tcp::connect(&t, inst.nsid, inst.iodepth).map_err(|e| err(&inst.name, e))?
                }
            };
            let live = LiveStats::new();
            let stop = Arc::new(AtomicBool::new(false));
            let run = JobRun::new(inst.clone(), bs, blocks, live.clone(), stop.clone())
                .map_err(|e| err(&inst.name, e))?;
            let job = Arc::new(HostJob {
                spec: inst.clone(),
                nqn: nqn.to_owned(),
                bdev: None,
                traddr: Some(t.traddr.clone()),
                live,
                stop,
                started: Instant::now(),
                state: Mutex::new(State::Running),
                thread: Mutex::new(None),
                ended_by: Mutex::new(None),
            });
            let j2 = job.clone();
            let h = std::thread::Builder::new()
                .name(format!("job-{}", inst.name))
                .spawn(move || run_job(j2, run, port, JobHost::Tcp(Box::new(host), lost)))
                .map_err(|e| e.to_string())?;
            *lock(&job.thread) = Some(h);
            tracing::info!(
                job = inst.name,
                subsystem = nqn,
                traddr = t.traddr,
                nsid = inst.nsid,
                rw = %inst.rw,
                "host job started (NVMe/TCP)"
            );
            lock(&self.list).push(job);
        }
        Ok(())
    }

    /// Every job.
    pub fn all(&self) -> Vec<Arc<HostJob>> {
        lock(&self.list).clone()
    }

    /// Ends the jobs on namespace `nsid` of `nqn` (it was removed under
    /// them, by hot removal of its device): they stop issuing, say why, and
    /// skip the read-back.
    pub fn namespace_removed(&self, nqn: &str, nsid: u32, reason: &str) {
        for j in lock(&self.list).iter() {
            if j.nqn == nqn && j.spec.nsid == nsid {
                *lock(&j.ended_by) = Some(reason.to_owned());
                j.stop.store(true, Ordering::Relaxed);
                tracing::error!(job = j.spec.name, "host job ended: {reason}");
            }
        }
    }

    /// Tells every job to stop issuing (in-flight I/O still completes).
    pub fn signal_stop(&self) {
        for j in lock(&self.list).iter() {
            j.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Stops the NVMe/TCP jobs and waits (bounded) for them, read-back
    /// included: first in a service stop, while the target (which may be
    /// their own) still serves them. A stopped target would close their
    /// connections, and their host would spend its `ctrl_loss_tmo`
    /// reconnecting. `false` if some did not end.
    pub fn stop_tcp(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let tcp: Vec<_> = self
            .all()
            .into_iter()
            .filter(|j| j.traddr.is_some())
            .collect();
        for j in &tcp {
            j.stop.store(true, Ordering::Relaxed);
        }
        for j in tcp {
            while lock(&j.thread).as_ref().is_some_and(|h| !h.is_finished()) {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(h) = lock(&j.thread).take() {
                let _ = h.join();
            }
        }
        true
    }

    /// Waits (bounded) for every job thread; `false` if some did not end.
    pub fn join(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        for j in self.all() {
            while lock(&j.thread).as_ref().is_some_and(|h| !h.is_finished()) {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(h) = lock(&j.thread).take() {
                let _ = h.join();
            }
        }
        true
    }

    /// One summary line per job (call after [`Jobs::join`]).
    pub fn summary(&self) -> Vec<String> {
        self.all()
            .iter()
            .map(|j| {
                let st = j.status();
                let mut line = format!(
                    "job {}: {}: {} I/Os, {} errors, verify {} ({} reconnects, {} retries)",
                    j.name(),
                    st["state"].as_str().unwrap_or("?"),
                    st["ios"],
                    st["errors"],
                    st["verify_result"].as_str().unwrap_or("off"),
                    st["reconnects"],
                    st["retries"]
                );
                if let Some(e) = st["error"].as_str()
                    && !j.spec.verify
                {
                    line.push_str(&format!(" (ended: {e})"));
                }
                line
            })
            .collect()
    }
}

/// Bound on a verify job's read-back.
const READBACK_LIMIT: Duration = Duration::from_secs(120);

/// A job's host controller.
enum JobHost {
    Loop(HostController),
    /// With the reason its queue died, if it did.
    Tcp(Box<TcpJobHost>, LostReason),
}

/// Runs a job until it ends: its runtime or I/O count, a stop request, or
/// its queue ending (controller reset or deleted, namespace or subsystem
/// removed, target stopped). Then a verify job reads back every block whose
/// write was acknowledged. A loop job reads straight from its backend after
/// its queue has ended, so the target has drained it: anything acknowledged
/// is on the backend, and a block that is not is a lost write. A TCP job
/// (its target may be remote) reads back over its own queue before closing
/// it.
fn run_job<P: Port>(job: Arc<HostJob>, mut run: JobRun, mut port: P, host: JobHost) {
    while !run.step(&mut port) {}
    let readback = match host {
        JobHost::Loop(host) => {
            // Namespace Attribute Changed and friends, as this job's host
            // saw them (a hot removal's AEN shows here).
            let events = host.take_events();
            if !events.is_empty() {
                tracing::info!(
                    job = job.spec.name,
                    ?events,
                    "host job: asynchronous events received"
                );
            }
            let _ = host.disconnect();
            drop(port);
            let removed = lock(&job.ended_by).is_some();
            (run.verifies() && !removed).then(|| match &job.bdev {
                Some(b) => runner::direct_port(b)
                    .and_then(|mut p| run.read_back(&mut p as &mut dyn Port, READBACK_LIMIT)),
                None => Err("no backend to read back from".into()),
            })
        }
        JobHost::Tcp(host, lost) => {
            let events = host.ctrl.take_events();
            if !events.is_empty() {
                tracing::info!(
                    job = job.spec.name,
                    ?events,
                    "host job: asynchronous events received"
                );
            }
            let why = lock(&lost).clone();
            if let Some(w) = &why {
                tracing::error!(job = job.spec.name, "host job lost its target: {w}");
                lock(&job.ended_by).get_or_insert_with(|| format!("lost the target: {w}"));
            }
            let removed = lock(&job.ended_by).is_some();
            let rb = (run.verifies() && !removed && port.alive())
                .then(|| run.read_back(&mut port, READBACK_LIMIT));
            drop(port);
            let _ = host.ctrl.disconnect();
            rb
        }
    };
    let outcome = run.finish();
    tracing::info!(
        job = job.spec.name,
        ios = outcome.result.ios(),
        errors = outcome.result.errors,
        mismatch = outcome.mismatch.map(|m| m.to_string()),
        readback = ?readback,
        "host job ended"
    );
    *lock(&job.state) = State::Done {
        outcome: Box::new(outcome),
        readback,
    };
}
