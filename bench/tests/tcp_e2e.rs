//! `nvmf-bench` over NVMe/TCP against our own target on 127.0.0.1, the
//! binary end to end: verify at 4 KiB and 1 MiB (split above MDTS), with
//! `--traddr` and with spdk_nvme_perf's `-r`; randread with `--config`
//! (the in-process target's listener) and its result files; Ctrl-C mid-run
//! disconnects and writes results; a target that goes away mid-run ends
//! the run, with recovery and without, with one clear line and exit 1.
//! Every wait is bounded: a hang fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use target_core::config::TargetConfig;
use target_facade::{StartOptions, Target};

const NQN: &str = "nqn.2026-11.io.nvmf-rs:tcp";

/// A 64 MiB RAM namespace (512 B blocks, MDTS 128 KiB) behind a TCP
/// listener on a free port of 127.0.0.1.
const CONFIG: &str = r#"
[target]
mdts = 5

[reactors]
cores = [0]

[[backend]]
name = "ram0"
kind = "malloc"
block_size = 512
size = "64MiB"

[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-rs:tcp"
allow_any_host = true

  [[subsystem.namespace]]
  nsid = 1
  backend = "ram0"

[[listener]]
transport = "tcp"
address = "127.0.0.1:0"
subsystem = "*"
in_capsule_data_size = 8192
"#;

/// Our target in this process; returns it and its port.
fn target() -> (Target, u16) {
    let cfg = TargetConfig::from_str(CONFIG, Path::new("tcp-test.toml")).unwrap();
    let t = Target::start(
        &cfg,
        &StartOptions {
            unpinned: true,
            idle_backoff: None,
        },
    )
    .unwrap();
    let port = t.tcp().listeners()[0].bound.port();
    (t, port)
}

fn spawn(args: &[&str], out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nvmf-bench"))
        .arg("--quiet")
        .args(args)
        .arg("--output")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the child at most `limit`; kills it and fails if it is late.
fn wait(mut child: Child, limit: Duration, what: &str) -> (Output, Duration) {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "{what}: nvmf-bench still running after {limit:?}\n{}",
                text(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed();
    (child.wait_with_output().unwrap(), took)
}

fn run(args: &[&str], out: &Path) -> Output {
    wait(spawn(args, out), Duration::from_secs(120), "run").0
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn ios(job: &serde_json::Value) -> u64 {
    job["read"]["total_ios"].as_u64().unwrap() + job["write"]["total_ios"].as_u64().unwrap()
}

/// Waits until the bench has connected (admin and I/O queue) and has run
/// for a second.
fn running(t: &Target) {
    let t0 = Instant::now();
    while t.tcp().accepted() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "bench never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1000));
}

/// Waits until the target has no TCP connection left (the host closed
/// them all), bounded.
fn connections_gone(t: &Target) {
    let t0 = Instant::now();
    while t.tcp().connections() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} connection(s) still open after the bench exited",
            t.tcp().connections()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn verify_over_tcp_at_4k_and_1m() {
    let (t, port) = target();
    let port = port.to_string();
    let dir = tempfile::tempdir().unwrap();

    // 4 KiB, two jobs = two controllers, each its own slice.
    let out = dir.path().join("4k");
    let o = run(
        &[
            "--transport",
            "tcp",
            "--traddr",
            "127.0.0.1",
            "--trsvcid",
            &port,
            "--subnqn",
            NQN,
            "--rw",
            "verify",
            "--bs",
            "4k",
            "-q",
            "16",
            "--numjobs",
            "2",
            "--size",
            "16MiB",
            "--io-count",
            "4000",
        ],
        &out,
    );
    assert!(o.status.success(), "{}", text(&o));
    let j = json(&out);
    let jobs = j["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{j}");
    for job in jobs {
        assert_eq!(ios(job), 4000, "{j}");
        assert_eq!(job["errors"].as_u64(), Some(0), "{j}");
    }
    assert!(t.tcp().accepted() >= 4, "2 controllers x (admin + I/O)");
    connections_gone(&t);

    // 1 MiB: eight 128 KiB commands each (MDTS), by spdk_nvme_perf's -r.
    let out = dir.path().join("1m");
    let trid = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}");
    let o = run(
        &[
            "-r",
            &trid,
            "--rw",
            "verify",
            "--bs",
            "1m",
            "-q",
            "4",
            "--io-count",
            "200",
        ],
        &out,
    );
    assert!(o.status.success(), "{}", text(&o));
    let j = json(&out);
    let job = &j["jobs"][0];
    assert_eq!(ios(job), 200, "{j}");
    assert_eq!(job["errors"].as_u64(), Some(0), "{j}");
    assert!(job["write"]["total_ios"].as_u64().unwrap() > 0, "{j}");
    assert!(job["read"]["total_ios"].as_u64().unwrap() > 0, "{j}");
    connections_gone(&t);
    t.stop().unwrap();
}

/// `--config` starts our target in the bench's process; `--transport tcp`
/// without `--traddr` connects to its TCP listener over 127.0.0.1. The
/// result files are those of a loop run.
#[test]
fn randread_over_tcp_to_the_config_target_writes_every_result_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tcp.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = dir.path().join("r");
    let o = run(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--transport",
            "tcp",
            "--rw",
            "randread",
            "--bs",
            "4k",
            "-q",
            "32",
            "--io-count",
            "5000",
            "--json",
        ],
        &out,
    );
    assert!(o.status.success(), "{}", text(&o));
    let stdout: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ios(&stdout["jobs"][0]), 5000, "{stdout}");
    assert_eq!(stdout["jobs"][0]["errors"].as_u64(), Some(0));
    for f in [
        "summary.txt",
        "summary.json",
        "randread.hlog",
        "randread.hgrm",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
}

/// Ctrl-C during a TCP run: exit 0 with results, the connections closed.
#[test]
fn sigint_during_a_tcp_run_disconnects_and_writes_results() {
    let (t, port) = target();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let port = port.to_string();
    let child = spawn(
        &[
            "--transport",
            "tcp",
            "--traddr",
            "127.0.0.1",
            "--trsvcid",
            &port,
            "--subnqn",
            NQN,
            "--rw",
            "verify",
            "-q",
            "8",
            "--size",
            "8MiB",
            "--runtime",
            "120s",
        ],
        &out,
    );
    running(&t);
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (o, _) = wait(child, Duration::from_secs(30), "SIGINT");
    assert!(o.status.success(), "{}", text(&o));
    let j = json(&out);
    let job = &j["jobs"][0];
    assert!(ios(job) > 0, "{j}");
    assert_eq!(job["errors"].as_u64(), Some(0), "{j}");
    connections_gone(&t);
    t.stop().unwrap();
}

/// The target goes away mid-run: with recovery (reconnecting for
/// `--ctrl-loss-tmo`) and without, the run ends within a bound, writes
/// its results, says which target was lost and exits 1.
#[test]
fn a_target_gone_mid_run_fails_the_run_with_one_line() {
    for tmo in ["0", "1s"] {
        let (t, port) = target();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r");
        let port = port.to_string();
        let child = spawn(
            &[
                "--transport",
                "tcp",
                "--traddr",
                "127.0.0.1",
                "--trsvcid",
                &port,
                "--subnqn",
                NQN,
                "--rw",
                "randrw",
                "-q",
                "16",
                "--runtime",
                "120s",
                "--ctrl-loss-tmo",
                tmo,
                "--reconnect-delay",
                "100ms",
            ],
            &out,
        );
        running(&t);
        t.stop().unwrap();
        drop(t);
        let (o, took) = wait(child, Duration::from_secs(40), "target gone");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "ctrl-loss-tmo {tmo}: {}",
            text(&o)
        );
        let line = err
            .lines()
            .find(|l| {
                l.starts_with("nvmf-bench: FAILED: job 'randrw' lost the target at 127.0.0.1:")
            })
            .unwrap_or_else(|| panic!("ctrl-loss-tmo {tmo}: no clear line: {err}"));
        assert!(line.len() < 300, "{line}");
        assert!(out.join("summary.json").exists(), "results not written");
        assert!(ios(&json(&out)["jobs"][0]) > 0);
        eprintln!("ctrl-loss-tmo {tmo}: ended {took:?} after the target stopped: {line}");
    }
}
