//! `nvmf-tgt`: the TOML-configured target daemon, and `nvmf-tgt rpc`, the
//! client of its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::Value;
use target_core::config::TargetConfig;
use target_facade::StartOptions;
use tgt::Service;
use tgt::metrics::MetricsServer;
use tgt::rpc::client::{ClientError, RpcClient, params_from_args};
use tgt::rpc::render::render;
use tgt::rpc::server::RpcServer;

/// Default control socket (SPDK keeps its own in /var/tmp too).
const DEFAULT_SOCKET: &str = "/var/tmp/nvmf-tgt.sock";

/// Runs an NVMe-oF target from a TOML config until SIGINT or SIGTERM, with
/// a JSON-RPC control socket; `nvmf-tgt rpc` talks to it.
#[derive(Parser, Debug)]
#[command(
    name = "nvmf-tgt",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Target config (TOML). Default: the embedded RAM config.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the config (and its [[job]] tables), print it resolved, exit.
    #[arg(long)]
    check_config: bool,
    /// Log level (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Control socket path (overrides target.rpc_socket;
    /// default /var/tmp/nvmf-tgt.sock).
    #[arg(long, value_name = "PATH")]
    rpc_socket: Option<PathBuf>,
    /// Upper bound on the graceful stop, seconds (a second signal forces
    /// an immediate exit).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    stop_timeout: u64,
    /// Don't pin reactors to their cores (shared machines, tests).
    #[arg(long)]
    unpinned: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Calls a method on a running nvmf-tgt, e.g.
    /// `nvmf-tgt rpc nvmf_subsystem_add_ns nqn=nqn.2026-01.io.x:disk backend=ram1`.
    Rpc {
        /// Control socket of the daemon.
        #[arg(long, short, env = "NVMF_TGT_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the raw JSON result instead of a table.
        #[arg(long)]
        json: bool,
        /// How long to wait for the answer, seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Method (`rpc_get_methods` lists them).
        method: String,
        /// Params: key=value pairs (values read as JSON when they parse)
        /// or one JSON object.
        params: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Rpc {
        socket,
        json,
        timeout,
        method,
        params,
    }) = &cli.cmd
    {
        return rpc(socket, *json, *timeout, method, params);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (origin, text) = match &cli.config {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (p.clone(), t),
            Err(e) => {
                eprintln!("error: {}: cannot read: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => (
            PathBuf::from("<embedded default>"),
            target_core::config::DEFAULT_TOML.to_owned(),
        ),
    };
    let cfg = match TargetConfig::from_str(&text, &origin) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        return check_config(&cfg, &origin, &text);
    }
    daemon(&cli, cfg, &origin, &text)
}

fn check_config(cfg: &TargetConfig, origin: &Path, text: &str) -> ExitCode {
    let jobs = match jobengine::jobs_from_target_config(origin, text) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cfg.to_toml_string() {
        Ok(s) => {
            println!("{s}");
            if !jobs.is_empty() {
                eprintln!(
                    "{} host job(s): {}",
                    jobs.len(),
                    jobs.iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn daemon(cli: &Cli, cfg: TargetConfig, origin: &Path, text: &str) -> ExitCode {
    // First, so a signal during start-up is a stop request too.
    let signals = match jobengine::signal::install_with(|s| {
        tracing::error!(
            signal = s,
            "signal again: exiting without finishing the drain"
        );
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = StartOptions {
        unpinned: cli.unpinned,
        idle_backoff: None,
    };
    let svc = match Service::start(&cfg, origin, text, &opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sock = cli
        .rpc_socket
        .clone()
        .or_else(|| cfg.target.rpc_socket.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let handler_svc = svc.clone();
    let mut rpc = match RpcServer::start(
        &sock,
        Arc::new(move |m: &str, p: Value| tgt::methods::dispatch(&handler_svc, m, p)),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: control socket {}: {e}", sock.display());
            let _ = svc.stop(Duration::from_secs(cli.stop_timeout));
            return ExitCode::FAILURE;
        }
    };
    let mut metrics = match &cfg.target.metrics_addr {
        Some(a) => match MetricsServer::start(a.get_ref(), svc.clone()) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("error: {e}");
                rpc.stop();
                let _ = svc.stop(Duration::from_secs(cli.stop_timeout));
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    for line in svc.target().summary().lines() {
        tracing::info!("{line}");
    }
    tracing::info!("control socket: {}", rpc.path().display());
    if let Some(m) = &metrics {
        tracing::info!("metrics: http://{}/metrics", m.addr());
    }
    for j in svc.jobs().all() {
        tracing::info!("host job: {}", j.status());
    }
    tracing::info!("running; SIGINT or SIGTERM stops (draining in-flight I/O)");
    let Some(sig) = signals.wait() else {
        return ExitCode::FAILURE;
    };
    let (tx, rx) = mpsc::channel();
    let bound = Duration::from_secs(cli.stop_timeout);
    tracing::info!(
        signal = sig,
        "stopping within {bound:?}: draining {} (a signal repeated within {:?} is the same request; a later one forces exit)",
        svc.waiting_for(),
        jobengine::signal::SAME_REQUEST
    );
    let stopper = svc.clone();
    let _ = std::thread::Builder::new()
        .name("stop".into())
        .spawn(move || {
            let _ = tx.send(stopper.stop(bound));
        });
    let t0 = Instant::now();
    let code = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(lines)) => {
                for l in lines {
                    tracing::info!("{l}");
                }
                tracing::info!("stopped in {:.2?}", t0.elapsed());
                break ExitCode::SUCCESS;
            }
            Ok(Err(e)) => {
                tracing::error!("stop: {e}");
                break ExitCode::FAILURE;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if t0.elapsed() > bound + Duration::from_secs(5) {
                    tracing::error!(
                        "stop did not finish within {bound:?}: {}",
                        svc.waiting_for()
                    );
                    std::process::exit(1);
                }
                tracing::info!("still stopping: waiting for {}", svc.waiting_for());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break ExitCode::FAILURE,
        }
    };
    rpc.stop();
    if let Some(m) = metrics.as_mut() {
        m.stop();
    }
    code
}

fn rpc(socket: &Path, json: bool, timeout: u64, method: &str, args: &[String]) -> ExitCode {
    let params = match params_from_args(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nvmf-tgt rpc: {e}");
            return ExitCode::from(2);
        }
    };
    let r = RpcClient::connect(socket, Duration::from_secs(timeout))
        .and_then(|mut c| c.call(method, &params));
    match r {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if let Some(cfg) = v.get("config").and_then(Value::as_str)
                && method == "save_config"
            {
                print!("{cfg}");
            } else {
                print!("{}", render(&v));
            }
            ExitCode::SUCCESS
        }
        Err(ClientError::Rpc(e)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
            }
            eprintln!("nvmf-tgt rpc {method}: {} (code {})", e.message, e.code);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("nvmf-tgt rpc {method}: {e}");
            ExitCode::FAILURE
        }
    }
}
