//! `nvmf-bench`: runs benchmark jobs against the target and writes the
//! results (summary table, JSON, HdrHistogram logs, plots).

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use bench::job::JobTransport;
use bench::progress::{Progress, ProgressMode};
use bench::runner::{self, AnyPort, JobOutcome, JobRun, LoopPort, SplitPort};
use bench::stats::{JobResult, LiveStats};
use bench::tcp::{self, LostReason, TcpJobHost, TcpTarget};
use bench::{Cli, JobSpec, jobs_from_cli, report, signal};
use clap::Parser;
use target_core::config::TargetConfig;
use target_facade::{StartOptions, Target};
use transport_loop::{ConnectOptions, HostController};

const HOSTNQN: &str = "nqn.2026-11.io.nvmf-rs:nvmf-bench";

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("nvmf-bench: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let jobs = match jobs_from_cli(&cli) {
        Ok(j) => j,
        Err(e) => return usage(e),
    };
    let (origin, text) = match cli.target_config() {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let mut cfg = match TargetConfig::from_str(&text, Path::new(&origin)) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    if let Some(cores) = &cli.reactor_cores {
        cfg.reactors.cores = toml::Spanned::new(0..0, cores.0.clone());
    }
    if let Err(e) = signal::install() {
        eprintln!("nvmf-bench: cannot listen for signals: {e}");
        return ExitCode::FAILURE;
    }
    match run(&cli, &cfg, jobs) {
        Ok(code) => code,
        Err(RunError::Usage(e)) => usage(e),
        Err(RunError::Failed(e)) => {
            eprintln!("nvmf-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a run did not produce results.
enum RunError {
    /// The jobs do not fit the target (exit 2).
    Usage(String),
    /// Something broke while running (exit 1).
    Failed(String),
}

impl From<String> for RunError {
    fn from(s: String) -> Self {
        RunError::Failed(s)
    }
}

impl From<&str> for RunError {
    fn from(s: &str) -> Self {
        RunError::Failed(s.to_owned())
    }
}

struct Prepared {
    job: JobRun,
    port: AnyPort,
    inline: bool,
}

/// A job instance's host controller, disconnected after the run.
enum Host {
    Loop(HostController),
    Tcp(TcpJobHost),
}

/// The in-process target: started unless every job is NVMe/TCP and no
/// `--config` asks for one.
fn wants_target(cli: &Cli, jobs: &[JobSpec]) -> bool {
    cli.config.is_some() || jobs.iter().any(|j| !j.transport.is_tcp())
}

/// How busy a reactor was over the run, from its own pass counters (no
/// clock read per pass). In a two-core run a reactor that found work in
/// only a small share of its passes was waiting on the host (or on the
/// cache lines between them), not computing.
#[derive(Debug, serde::Serialize)]
struct ReactorFigures {
    id: usize,
    core: Option<usize>,
    busy_passes: u64,
    idle_passes: u64,
    /// Commands fetched plus completions delivered plus other pollers' work.
    work_items: u64,
}

impl ReactorFigures {
    fn busy_share(&self) -> f64 {
        self.busy_passes as f64 / (self.busy_passes + self.idle_passes).max(1) as f64
    }

    fn items_per_busy_pass(&self) -> f64 {
        self.work_items as f64 / self.busy_passes.max(1) as f64
    }
}

/// Reads the counters from the reactors' shared stats. Called after the
/// reactors have stopped: a reactor adds its counts to the shared ones only
/// every 256 passes or when idle, and always before it exits, so a read
/// while it runs can miss its last few thousand items.
fn reactor_figures(stats: ReactorStatsList) -> Vec<ReactorFigures> {
    stats
        .into_iter()
        .map(|(id, core, st)| ReactorFigures {
            id,
            core,
            busy_passes: st.busy_polls.load(Ordering::Relaxed),
            idle_passes: st.idle_polls.load(Ordering::Relaxed),
            work_items: st.work_items.load(Ordering::Relaxed),
        })
        .collect()
}

/// Each reactor's id, core and shared counters.
type ReactorStatsList = Vec<(
    usize,
    Option<usize>,
    std::sync::Arc<target_core::reactor::ReactorStats>,
)>;

/// Stops the target (if one was started) on the way out of a failed run.
fn stop_target(target: Option<&Target>) {
    if let Some(t) = target
        && let Err(e) = t.stop()
    {
        eprintln!("nvmf-bench: target stop: {e}");
    }
}

fn run(cli: &Cli, cfg: &TargetConfig, jobs: Vec<JobSpec>) -> Result<ExitCode, RunError> {
    if cli.target == bench::cli::TargetKind::Direct && jobs.iter().any(|j| j.transport.is_tcp()) {
        return Err(RunError::Usage(
            "--target direct runs on the in-process block device; not with --transport tcp".into(),
        ));
    }
    // Before the reactors start spinning on their cores: a two-core loop
    // run's IOPS follow the machine's core-to-core latency, recorded with it.
    let probe =
        if wants_target(cli, &jobs) && jobs.iter().any(|j| !j.inline && !j.transport.is_tcp()) {
            let reactor = cfg.reactors.cores.get_ref().first().copied();
            let host = match &cli.host_cores {
                Some(c) => c.0.first().copied(),
                None => target_core::reactor::affinity::allowed_cores()
                    .into_iter()
                    .find(|c| Some(*c) != reactor),
            };
            reactor
                .zip(host)
                .and_then(|(r, h)| bench::core_probe::probe(h, r, 200_000))
        } else {
            None
        };
    let target = if wants_target(cli, &jobs) {
        Some(
            Target::start(
                cfg,
                &StartOptions {
                    unpinned: false,
                    idle_backoff: None,
                },
            )
            .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let r = run_jobs(cli, cfg, jobs, target.as_ref(), probe);
    if r.is_err() {
        stop_target(target.as_ref());
    }
    r
}

/// Connects the instances of one NVMe/TCP job (one controller and one
/// queue pair each) and prepares them.
#[allow(clippy::too_many_arguments)]
fn prepare_tcp(
    cli: &Cli,
    spec: &JobSpec,
    default_nqn: &str,
    target: Option<&Target>,
    stop: &Arc<AtomicBool>,
    hosts: &mut Vec<Host>,
    prepared: &mut Vec<Prepared>,
    live: &mut Vec<Arc<LiveStats>>,
    lost: &mut Vec<(String, String, LostReason)>,
) -> Result<(), RunError> {
    let JobTransport::Tcp { traddr, hostnqn } = &spec.transport else {
        return Ok(());
    };
    let traddr = match traddr {
        Some(a) => a.clone(),
        None => target
            .and_then(|t| t.tcp().listeners().first().map(|l| l.bound.to_string()))
            .ok_or_else(|| {
                RunError::Usage(format!(
                    "job '{}': --transport tcp needs --traddr (or a --config whose target has a TCP listener)",
                    spec.name
                ))
            })?,
    };
    let subnqn = match &spec.subsystem {
        Some(n) => n.clone(),
        None if !default_nqn.is_empty() => default_nqn.to_owned(),
        None => {
            return Err(RunError::Usage(format!(
                "job '{}': --transport tcp needs --subnqn NQN (or -r with subnqn:)",
                spec.name
            )));
        }
    };
    let t = TcpTarget {
        traddr,
        subnqn,
        hostnqn: hostnqn.clone().unwrap_or_else(|| HOSTNQN.to_owned()),
        reconnect_delay: cli.reconnect_delay,
        ctrl_loss_tmo: cli.ctrl_loss_tmo,
    };
    let nsid = cli.nsid.unwrap_or(spec.nsid);
    let mut first = Some(tcp::connect(&t, nsid, spec.iodepth)?);
    let (blocks, bs) = match &first {
        Some((h, _, _)) => (h.blocks, h.block_size),
        None => (0, 0),
    };
    for inst in spec.instances(blocks * bs as u64) {
        let (h, port, why) = match first.take() {
            Some(c) => c,
            None => tcp::connect(&t, nsid, inst.iodepth)?,
        };
        hosts.push(Host::Tcp(h));
        let l = LiveStats::new();
        let job = JobRun::new(inst.clone(), bs, blocks, l.clone(), stop.clone())
            .map_err(RunError::Usage)?;
        lost.push((inst.name.clone(), t.traddr.clone(), why));
        live.push(l);
        prepared.push(Prepared {
            job,
            port: AnyPort::Boxed(Box::new(port)),
            inline: false,
        });
    }
    Ok(())
}

fn run_jobs(
    cli: &Cli,
    cfg: &TargetConfig,
    jobs: Vec<JobSpec>,
    target: Option<&Target>,
    probe: Option<bench::core_probe::CoreProbe>,
) -> Result<ExitCode, RunError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut hosts: Vec<Host> = Vec::new();
    let mut prepared = Vec::new();
    let mut live = Vec::new();
    let mut lost = Vec::new();
    let default_nqn = cfg
        .subsystems
        .first()
        .filter(|_| target.is_some())
        .map(|s| s.nqn.get_ref().clone())
        .unwrap_or_default();
    let reactor_cores = match target {
        Some(_) => cfg.reactors.cores.get_ref().clone(),
        None => Vec::new(),
    };
    for spec in &jobs {
        if spec.transport.is_tcp() {
            prepare_tcp(
                cli,
                spec,
                &default_nqn,
                target,
                &stop,
                &mut hosts,
                &mut prepared,
                &mut live,
                &mut lost,
            )?;
            continue;
        }
        let Some(target) = target else {
            return Err(RunError::Failed("no in-process target".into()));
        };
        let nqn = spec
            .subsystem
            .clone()
            .unwrap_or_else(|| default_nqn.clone());
        let nsid = cli.nsid.unwrap_or(spec.nsid);
        let sub = target
            .nvmf()
            .subsystem(&nqn)
            .map_err(|e| RunError::Usage(e.to_string()))?;
        let ns = sub
            .namespace(nsid)
            .ok_or_else(|| RunError::Usage(format!("subsystem {nqn} has no namespace {nsid}")))?;
        let (bs, blocks) = (ns.block_size(), ns.num_blocks());
        for inst in spec.instances(blocks * bs as u64) {
            let l = LiveStats::new();
            let job = JobRun::new(inst.clone(), bs, blocks, l.clone(), stop.clone())
                .map_err(RunError::Usage)?;
            let port = match cli.target {
                bench::cli::TargetKind::Direct => AnyPort::Direct(runner::direct_port(&ns.bdev)?),
                bench::cli::TargetKind::Loop => {
                    // Inline jobs poll on a reactor: a reconnect's blocking
                    // Connect round trip would wait on that very reactor.
                    let tmo = if inst.inline {
                        Duration::ZERO
                    } else {
                        cli.ctrl_loss_tmo
                    };
                    let mut o =
                        ConnectOptions::new(&nqn, HOSTNQN).with_recovery(cli.reconnect_delay, tmo);
                    // A queue of at least 128 entries (SPDK's and Linux's
                    // default I/O queue size) whatever the job's depth: a
                    // 2-entry ring at QD 1 would look full to its producer
                    // every other push.
                    o.queue_depth = (inst.iodepth + 1).clamp(128, 4096) as u16;
                    let mut c = target
                        .transport()
                        .connect(o)
                        .map_err(|e| format!("connect to {nqn}: {e}"))?;
                    let qp = c.take_qpairs().pop().ok_or("no I/O queue granted")?;
                    let mdts = c.max_transfer();
                    hosts.push(Host::Loop(c));
                    // I/O above MDTS is split and recombined; a job whose
                    // I/Os all fit goes without the wrapper (one closure
                    // layer less per completion).
                    if mdts == 0 || u64::from(inst.bs) <= mdts {
                        AnyPort::Loop(LoopPort::new(qp, nsid))
                    } else {
                        AnyPort::Boxed(Box::new(SplitPort::new(LoopPort::new(qp, nsid), bs, mdts)))
                    }
                }
            };
            live.push(l);
            prepared.push(Prepared {
                job,
                port,
                inline: inst.inline,
            });
        }
    }
    let total = jobs
        .iter()
        .map(|j| j.ramp + j.runtime.unwrap_or_default())
        .max()
        .filter(|_| jobs.iter().all(|j| j.runtime.is_some()));
    let mode = if cli.quiet {
        ProgressMode::Hidden
    } else {
        ProgressMode::Auto
    };
    let mut progress = Progress::new(live, total, mode, Instant::now());
    let start_wall = SystemTime::now();
    let (tx, rx) = mpsc::channel::<(usize, JobOutcome)>();
    let host_cores: Vec<usize> = match &cli.host_cores {
        Some(c) => c.0.clone(),
        None => target_core::reactor::affinity::allowed_cores()
            .into_iter()
            .filter(|c| !reactor_cores.contains(c))
            .collect(),
    };
    let n = prepared.len();
    for (i, p) in prepared.into_iter().enumerate() {
        if p.inline {
            let Some(target) = target else {
                return Err(RunError::Failed(
                    "inline jobs need the in-process target".into(),
                ));
            };
            let (otx, orx) = mpsc::channel();
            let poller = p.port.inline_job(p.job, otx);
            let r = i % target.nvmf().reactor_count().max(1);
            target
                .nvmf()
                .run_on_reactor(
                    r,
                    Box::new(move |core| {
                        core.add_poller(poller);
                    }),
                )
                .map_err(|e| e.to_string())?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                if let Ok(o) = orx.recv() {
                    let _ = tx.send((i, o));
                }
            });
        } else {
            let core = (!host_cores.is_empty()).then(|| host_cores[i % host_cores.len()]);
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("bench-job-{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        let _ = target_core::reactor::affinity::pin_current_thread(c);
                    }
                    let _ = tx.send((i, p.port.run_on_thread(p.job)));
                })
                .map_err(|e| e.to_string())?;
        }
    }
    drop(tx);
    let mut outcomes: Vec<Option<JobOutcome>> = (0..n).map(|_| None).collect();
    let mut got = 0;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    while got < n {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((i, o)) => {
                outcomes[i] = Some(o);
                got += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if signal::stop_requested() {
            stop.store(true, Ordering::Relaxed);
        }
        if Instant::now() >= next_tick {
            progress.update(Instant::now());
            next_tick += Duration::from_secs(1);
        }
    }
    progress.finish();
    let stats = target.map(|t| t.nvmf().reactor_stats()).unwrap_or_default();
    for h in hosts {
        let _ = match h {
            Host::Loop(c) => c.disconnect().map_err(|e| e.to_string()),
            Host::Tcp(h) => h.ctrl.disconnect().map_err(|e| e.to_string()),
        };
    }
    stop_target(target);
    let reactors = reactor_figures(stats);
    // Once more with the reactors gone: a placement that changed during
    // the run shows as two different figures.
    let probe_after =
        probe.and_then(|p| bench::core_probe::probe(p.host_core, p.reactor_core, 200_000));
    // A TCP job whose connection died for good: the target vanished (or
    // recovery gave up). Its results are written; the run fails.
    let lost: Vec<String> = lost
        .iter()
        .filter_map(|(job, addr, why)| {
            let w = why.lock().unwrap_or_else(|p| p.into_inner());
            w.as_ref()
                .map(|w| format!("job '{job}' lost the target at {addr}: {w}"))
        })
        .collect();
    let mut results: Vec<JobResult> = Vec::new();
    let mut mismatch = None;
    for o in outcomes.into_iter().flatten() {
        if mismatch.is_none() {
            mismatch = o.mismatch;
        }
        results.push(o.result);
    }
    if results.len() < n {
        return Err(RunError::Failed(format!(
            "{} of {n} jobs did not report",
            n - results.len()
        )));
    }
    let total = JobResult::merge("total", &results);
    let dir = cli.output_dir(start_wall);
    let table =
        report::write_report(&dir, &results, &total, start_wall).map_err(|e| e.to_string())?;
    if cli.json {
        let json = std::fs::read_to_string(dir.join("summary.json")).map_err(|e| e.to_string())?;
        print!("{json}");
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    if let Some(p) = probe {
        let after = probe_after.map_or("-".to_string(), |a| format!("{:.0}", a.round_trip_ns));
        eprintln!(
            "core {} <-> core {} (host, reactor): cache-line round trip {:.0} ns before the run, {after} ns after",
            p.host_core, p.reactor_core, p.round_trip_ns
        );
    }
    for r in &reactors {
        eprintln!(
            "reactor {} (core {}): {:.1} % of {} passes found work, {:.1} items per busy pass",
            r.id,
            r.core.map_or("-".to_string(), |c| c.to_string()),
            r.busy_share() * 100.0,
            r.busy_passes + r.idle_passes,
            r.items_per_busy_pass()
        );
    }
    if probe.is_some() || !reactors.is_empty() {
        let f = dir.join("machine.json");
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "core_probe": probe,
            "core_probe_after": probe_after,
            "reactors": reactors,
        }))
        .map_err(|e| e.to_string())?;
        std::fs::write(&f, json + "\n").map_err(|e| format!("{}: {e}", f.display()))?;
    }
    eprintln!("results: {}", dir.display());
    if !lost.is_empty() {
        for l in &lost {
            eprintln!("nvmf-bench: FAILED: {l}");
        }
        if let Some(m) = mismatch {
            eprintln!("nvmf-bench: verify FAILED: {m}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if let Some(m) = mismatch {
        eprintln!("nvmf-bench: verify FAILED: {m}");
        return Ok(ExitCode::FAILURE);
    }
    if total.errors > 0 && total.ios() == 0 {
        eprintln!(
            "nvmf-bench: FAILED: all {} I/Os failed, none completed",
            total.errors
        );
        return Ok(ExitCode::FAILURE);
    }
    if total.errors > 0 {
        eprintln!(
            "nvmf-bench: {} of {} I/Os failed",
            total.errors,
            total.errors + total.ios()
        );
    }
    Ok(ExitCode::SUCCESS)
}
