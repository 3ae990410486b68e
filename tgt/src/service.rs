//! The running service: the facade's target, the live config that every
//! control request keeps current (so `save_config` writes what runs), the
//! host jobs, and the stop sequence.
//!
//! Control requests are serialised by one lock and checked against a stop
//! flag taken under the same lock, so a request is either applied whole
//! before the stop begins or refused with *target is stopping*; none is
//! half-applied.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use target_core::config::TargetConfig;
use target_facade::{StartError, StartOptions, Target};

use crate::jobs::Jobs;
use crate::rpc::proto::{self, RpcError};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running target service.
#[derive(Debug)]
pub struct Service {
    pub(crate) target: Target,
    /// The config as it runs now (NSIDs explicit).
    pub(crate) running: Mutex<TargetConfig>,
    /// Serialises control requests that change something.
    pub(crate) ctl: Mutex<()>,
    stopping: AtomicBool,
    pub(crate) jobs: Jobs,
    pub(crate) started: Instant,
    pub(crate) origin: PathBuf,
}

impl Service {
    /// Starts the target a config describes, then its host jobs (read from
    /// `config_text`, the file's own text, so job errors name its lines).
    pub fn start(
        cfg: &TargetConfig,
        origin: &Path,
        config_text: &str,
        opts: &StartOptions,
    ) -> Result<Arc<Self>, String> {
        let specs =
            jobengine::jobs_from_target_config(origin, config_text).map_err(|e| e.to_string())?;
        let target = Target::start(cfg, opts).map_err(|e| e.to_string())?;
        let svc = Arc::new(Self {
            running: Mutex::new(target.config().clone()),
            target,
            ctl: Mutex::new(()),
            stopping: AtomicBool::new(false),
            jobs: Jobs::default(),
            started: Instant::now(),
            origin: origin.to_owned(),
        });
        if let Err(e) = svc.jobs.start(&svc.target, &specs) {
            let _ = svc.stop(Duration::from_secs(10));
            return Err(e);
        }
        crate::hotplug::spawn(&svc);
        Ok(svc)
    }

    /// The facade's target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The config as it runs now.
    pub fn running_config(&self) -> TargetConfig {
        lock(&self.running).clone()
    }

    /// The host jobs.
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// `true` once a stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Takes the control lock for a change, refusing once stopping.
    pub(crate) fn begin_change(&self) -> Result<MutexGuard<'_, ()>, RpcError> {
        let g = lock(&self.ctl);
        if self.is_stopping() {
            return Err(RpcError::new(
                proto::STOPPING,
                "the target is stopping; nothing was applied",
            ));
        }
        Ok(g)
    }

    /// What a stop waits for, in words.
    pub fn waiting_for(&self) -> String {
        let mut ctrls = 0;
        let mut qps = 0;
        for s in self.target.nvmf().engine().subsystems() {
            ctrls += s.state().controllers.len();
        }
        for h in self.target.nvmf().engine().pgs() {
            qps += h.qpairs.load(Ordering::Relaxed);
        }
        let jobs = self
            .jobs
            .all()
            .iter()
            .filter(|j| j.status()["state"] != "done")
            .count();
        format!("{ctrls} controller(s), {qps} queue pair(s), {jobs} host job(s)")
    }

    /// Stops: refuses new control requests (waiting for one in progress),
    /// drains and stops the target while host jobs still run, then waits
    /// for the jobs, whose verify reads back every acknowledged block. Returns the
    /// jobs' summary lines; `Err` when the drain failed or a job lost data.
    pub fn stop(&self, bound: Duration) -> Result<Vec<String>, String> {
        {
            let _g = lock(&self.ctl);
            if self.stopping.swap(true, Ordering::AcqRel) {
                return Ok(Vec::new());
            }
        }
        // NVMe/TCP jobs end first, while the target still serves them.
        if !self.jobs.stop_tcp(bound) {
            tracing::warn!("NVMe/TCP host jobs did not end within {bound:?}");
        }
        // The loop jobs keep issuing while the target drains, so the drain
        // meets real in-flight I/O; their queues end with it.
        let stop = self.target.stop_engine().map_err(|e| e.to_string());
        self.jobs.signal_stop();
        if !self.jobs.join(bound) {
            tracing::warn!("host jobs did not end within {bound:?}");
        }
        // Only now: the verify jobs read their backends back directly, and a
        // shut-down NVMe controller fails every read (this ordering was the
        // `read-back of LBA 0: read failed` of the NVMe backend).
        self.target.shutdown_devices();
        let lines = self.jobs.summary();
        stop?;
        if self.jobs.all().iter().any(|j| j.failed()) {
            return Err(format!("a host job lost data: {}", lines.join("; ")));
        }
        Ok(lines)
    }
}

/// Maps a facade start error to a JSON-RPC error.
pub(crate) fn start_err(e: StartError) -> RpcError {
    match e {
        StartError::Target { what, source } => {
            let mut r = crate::methods::target_err(source);
            r.message = format!("{what}: {}", r.message);
            r
        }
        StartError::Backend { .. } | StartError::Listener(_) => {
            RpcError::new(proto::OPERATION_FAILED, e.to_string())
        }
    }
}
