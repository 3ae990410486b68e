//! `nvmf-tgt`: the TOML-configured target daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use target_core::config::TargetConfig;
use target_facade::{StartOptions, Target};

/// Runs an NVMe-oF target from a TOML config until SIGINT or SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "nvmf-tgt", version, about)]
struct Cli {
    /// Target config (TOML). Default: the embedded RAM config.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the config, print it resolved, and exit.
    #[arg(long)]
    check_config: bool,
    /// Log level (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn wait_for_signal() -> i32 {
    #[allow(unsafe_code)]
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it,
    // and pthread_sigmask/sigwait only read it. Blocking the signals in
    // this thread before waiting is the documented sigwait pattern.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cfg = match &cli.config {
        Some(p) => match TargetConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => TargetConfig::embedded_default(),
    };
    if cli.check_config {
        match cfg.to_toml_string() {
            Ok(s) => {
                println!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let target = match Target::start(&cfg, &StartOptions::default()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for line in target.summary().lines() {
        tracing::info!("{line}");
    }
    tracing::info!("running; SIGINT or SIGTERM stops (draining in-flight I/O)");
    let sig = wait_for_signal();
    tracing::info!(signal = sig, "stopping: draining controllers");
    match target.stop() {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "stop");
            ExitCode::FAILURE
        }
    }
}
