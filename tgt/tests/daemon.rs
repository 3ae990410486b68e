//! The daemon as a real process: control socket, host jobs with verify,
//! namespace changes under I/O, statistics, histogram export, metrics,
//! save-config round trip, JSON-RPC errors, and SIGTERM during I/O.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use serde_json::{Value, json};
use target_core::config::TargetConfig;
use tgt::rpc::client::{ClientError, RpcClient};
use tgt::rpc::proto;

const NQN: &str = "nqn.2026-11.io.nvmf-rs:service";

struct Daemon {
    child: Option<Child>,
    sock: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `nvmf-tgt` on `configs/service.toml` with a private socket and
/// metrics port; waits for the socket.
fn start(metrics_port: u16) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tgt.sock");
    let log = dir.path().join("tgt.log");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/service.toml"),
    )
    .unwrap()
    .replace("/var/tmp/nvmf-tgt.sock", sock.to_str().unwrap())
    .replace("127.0.0.1:9464", &format!("127.0.0.1:{metrics_port}"));
    let cfg = dir.path().join("service.toml");
    std::fs::write(&cfg, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_nvmf-tgt"))
        .arg("--config")
        .arg(&cfg)
        .arg("--unpinned")
        .arg("--stop-timeout")
        .arg("20")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child: Some(child),
        sock,
        log,
        _dir: dir,
    };
    let t0 = Instant::now();
    while RpcClient::connect(&d.sock, Duration::from_secs(5)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "daemon did not open its socket: {}",
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

fn client(d: &Daemon) -> RpcClient {
    RpcClient::connect(&d.sock, Duration::from_secs(30)).unwrap()
}

fn call(c: &mut RpcClient, m: &str, p: Value) -> Value {
    c.call(m, &p).unwrap_or_else(|e| panic!("{m} {p}: {e}"))
}

fn rpc_err(c: &mut RpcClient, m: &str, p: Value) -> proto::RpcError {
    match c.call(m, &p) {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("{m} {p}: expected an RPC error, got {other:?}"),
    }
}

fn job(c: &mut RpcClient, name: &str) -> Value {
    let jobs = call(c, "job_get_jobs", Value::Null);
    jobs.as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .cloned()
        .unwrap()
}

fn ns_stats(c: &mut RpcClient, nsid: u32) -> Value {
    let s = call(c, "nvmf_get_stats", Value::Null);
    s["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["nsid"] == nsid)
        .cloned()
        .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn control_socket_under_io_then_sigterm() {
    let port = free_port();
    let mut d = start(port);
    let mut c = client(&d);

    // The socket is private to the daemon's user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Listings.
    let methods = call(&mut c, "rpc_get_methods", Value::Null);
    assert!(methods.as_array().unwrap().len() >= 20);
    let bdevs = call(&mut c, "bdev_get_bdevs", Value::Null);
    assert_eq!(bdevs.as_array().unwrap().len(), 3);
    let subs = call(&mut c, "nvmf_get_subsystems", Value::Null);
    assert_eq!(subs[0]["nqn"], NQN);
    assert_eq!(subs[0]["namespaces"], json!([1, 2]));
    wait_for("both job controllers", || {
        call(&mut c, "nvmf_get_controllers", json!({"nqn": NQN}))
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    let qps = call(&mut c, "nvmf_get_qpairs", Value::Null);
    assert_eq!(qps.as_array().unwrap().len(), 4, "{qps}");
    let reactors = call(&mut c, "framework_get_reactors", Value::Null);
    assert_eq!(reactors.as_array().unwrap().len(), 2);
    assert_eq!(
        call(&mut c, "nvmf_get_namespaces", json!({"nqn": NQN}))
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The jobs run and their I/O shows in the statistics.
    let s1 = ns_stats(&mut c, 1);
    wait_for("I/O on namespace 1", || {
        let s = ns_stats(&mut c, 1);
        s["reads"].as_u64().unwrap() > s1["reads"].as_u64().unwrap() + 100
            && s["writes"].as_u64().unwrap() > 100
    });
    assert!(ns_stats(&mut c, 1)["latency_ns"]["p99"].as_u64().unwrap() > 0);

    // Namespace changes while the verify jobs run: a new namespace comes
    // and goes; then namespace 2, under soak2, is removed and re-added.
    call(
        &mut c,
        "bdev_create",
        json!({"name": "ram2", "kind": "malloc", "size": "4MiB"}),
    );
    let added = call(
        &mut c,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "backend": "ram2"}),
    );
    assert_eq!(added["nsid"], 3);
    call(
        &mut c,
        "nvmf_subsystem_remove_ns",
        json!({"nqn": NQN, "nsid": 3}),
    );
    call(&mut c, "bdev_delete", json!({"name": "ram2"}));
    let w2 = ns_stats(&mut c, 2)["writes"].as_u64().unwrap();
    call(
        &mut c,
        "nvmf_subsystem_remove_ns",
        json!({"nqn": NQN, "nsid": 2}),
    );
    std::thread::sleep(Duration::from_millis(300));
    call(
        &mut c,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "backend": "ram1", "nsid": 2}),
    );
    wait_for("soak2 writes again after re-add", || {
        ns_stats(&mut c, 2)["writes"].as_u64().unwrap() > 50
    });
    assert!(w2 > 0);
    let j1 = job(&mut c, "soak1");
    assert_eq!(j1["state"], "running");
    assert_eq!(
        j1["errors"], 0,
        "soak1 is on a namespace nobody touched: {j1}"
    );
    let j2 = job(&mut c, "soak2");
    assert_eq!(j2["state"], "running", "{j2}");

    // Histogram export decodes and matches the server's own count.
    let h = call(
        &mut c,
        "nvmf_get_histogram",
        json!({"nqn": NQN, "nsid": 1, "reset": true}),
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(h["histogram"].as_str().unwrap())
        .unwrap();
    let hist: hdrhistogram::Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .unwrap();
    assert!(!hist.is_empty());
    assert_eq!(hist.len(), h["latency_ns"]["count"].as_u64().unwrap());
    assert_eq!(
        hist.value_at_quantile(0.99),
        h["latency_ns"]["p99"].as_u64().unwrap()
    );
    // Reset: the next export starts again from (nearly) nothing.
    let h2 = call(&mut c, "nvmf_get_histogram", json!({"nqn": NQN, "nsid": 1}));
    assert!(h2["latency_ns"]["count"].as_u64().unwrap() < hist.len() * 10);

    // Metrics.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.") && body.contains(" 200 "),
        "{body}"
    );
    assert!(body.contains(&format!(
        "nvmf_namespace_reads_total{{subsystem=\"{NQN}\",nsid=\"1\",backend=\"slow0\"}}"
    )));
    assert!(body.contains("nvmf_namespace_latency_seconds{"));
    assert!(body.contains("nvmf_reactor_commands_total{reactor=\"0\""));

    // Host list and subsystem changes.
    let sub2 = "nqn.2026-11.io.nvmf-rs:second";
    call(
        &mut c,
        "nvmf_create_subsystem",
        json!({"nqn": sub2, "serial": "SN2"}),
    );
    call(
        &mut c,
        "nvmf_subsystem_add_host",
        json!({"nqn": sub2, "host": "nqn.2026-11.io.nvmf-rs:h1"}),
    );
    assert_eq!(
        rpc_err(
            &mut c,
            "nvmf_subsystem_add_host",
            json!({"nqn": sub2, "host": "nqn.2026-11.io.nvmf-rs:h1"})
        )
        .code,
        proto::ALREADY_EXISTS
    );

    // Save the running config: it loads again and saves identically.
    let saved = call(&mut c, "save_config", Value::Null)["config"]
        .as_str()
        .unwrap()
        .to_owned();
    let cfg = TargetConfig::from_str(&saved, Path::new("saved.toml")).unwrap();
    let again = cfg.to_toml_string().unwrap();
    assert!(saved.ends_with(&again), "round trip changed the config");
    assert!(saved.contains(sub2) && saved.contains("nqn.2026-11.io.nvmf-rs:h1"));
    assert!(!saved.contains("ram2"));
    // ... and it passes --check-config, jobs included.
    let f = d._dir.path().join("saved.toml");
    std::fs::write(&f, &saved).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nvmf-tgt"))
        .args(["--check-config", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    call(
        &mut c,
        "nvmf_subsystem_remove_host",
        json!({"nqn": sub2, "host": "nqn.2026-11.io.nvmf-rs:h1"}),
    );
    call(&mut c, "nvmf_delete_subsystem", json!({"nqn": sub2}));

    // Errors: each with its JSON-RPC code and a message naming the problem.
    let e = rpc_err(&mut c, "no_such_method", Value::Null);
    assert_eq!(e.code, proto::METHOD_NOT_FOUND);
    let e = rpc_err(&mut c, "nvmf_subsystem_remove_ns", json!({"nqn": NQN}));
    assert_eq!(e.code, proto::INVALID_PARAMS);
    assert!(e.message.contains("nsid"), "{}", e.message);
    let e = rpc_err(
        &mut c,
        "nvmf_subsystem_remove_ns",
        json!({"nqn": NQN, "nsid": "x"}),
    );
    assert_eq!(e.code, proto::INVALID_PARAMS);
    let e = rpc_err(&mut c, "bdev_get_bdevs", json!({"verbose": true}));
    assert_eq!(e.code, proto::INVALID_PARAMS);
    let e = rpc_err(
        &mut c,
        "bdev_create",
        json!({"name": "bad", "kind": "malloc", "size": "1MiB", "blok_size": 512}),
    );
    assert_eq!(e.code, proto::INVALID_PARAMS);
    assert!(e.message.contains("blok_size"), "{}", e.message);
    let e = rpc_err(
        &mut c,
        "nvmf_subsystem_remove_ns",
        json!({"nqn": NQN, "nsid": 9}),
    );
    assert_eq!(e.code, proto::NOT_FOUND);
    let e = rpc_err(&mut c, "bdev_delete", json!({"name": "slow0"}));
    assert_eq!(e.code, proto::IN_USE);
    let e = rpc_err(&mut c, "bdev_delete", json!({"name": "ram0"}));
    assert_eq!(e.code, proto::IN_USE, "ram0 is the base of slow0");
    let e = rpc_err(
        &mut c,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "backend": "nope"}),
    );
    assert_eq!(e.code, proto::INVALID_PARAMS);
    assert!(e.message.contains("nope"), "{}", e.message);
    let e = rpc_err(
        &mut c,
        "nvmf_create_subsystem",
        json!({"nqn": "not-an-nqn"}),
    );
    assert_eq!(e.code, proto::INVALID_PARAMS);
    let r = c
        .raw(b"{\"jsonrpc\":\"1.0\",\"method\":\"rpc_get_methods\",\"id\":5}\n")
        .unwrap();
    assert_eq!(r["error"]["code"], proto::INVALID_REQUEST);
    assert_eq!(r["id"], 5);
    let r = c.raw(b"[]").unwrap();
    assert_eq!(r["error"]["code"], proto::INVALID_REQUEST);
    let r = c
        .raw(br#"[{"jsonrpc":"2.0","method":"target_get_info","id":1},{"jsonrpc":"2.0","method":"x","id":2}]"#)
        .unwrap();
    assert_eq!(r[0]["result"]["stopping"], false);
    assert_eq!(r[1]["error"]["code"], proto::METHOD_NOT_FOUND);
    // Malformed JSON: a parse error, then the server closes this connection.
    let mut bad = client(&d);
    let r = bad.raw(b"{\"jsonrpc\": \"2.0\", \"method\": }").unwrap();
    assert_eq!(r["error"]["code"], proto::PARSE_ERROR);
    assert_eq!(r["id"], Value::Null);
    // Other connections are unaffected.
    call(&mut c, "target_get_info", Value::Null);

    // The verify jobs are still clean.
    let j1 = job(&mut c, "soak1");
    assert_eq!(
        (j1["errors"].as_u64(), j1["state"].as_str()),
        (Some(0), Some("running"))
    );

    // SIGTERM during I/O: exit 0 within the bound, every acknowledged write
    // read back intact after the drain.
    let pid = d.child.as_ref().unwrap().id();
    let t0 = Instant::now();
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
    let mut child = d.child.take().unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(25),
            "no exit within the bound"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    for j in ["soak1", "soak2"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("job {j}:")))
            .unwrap_or_else(|| panic!("no summary for {j}\n{log}"));
        assert!(
            line.contains("verify ok") && line.contains("acknowledged blocks read back intact"),
            "{line}"
        );
    }
    // (Errors there are the commands the stop aborted before they were
    // fetched: Command Aborted due to SQ Deletion.)
    assert!(!d.sock.exists(), "socket removed on exit");
}

#[test]
fn requests_during_a_stop_are_refused_whole() {
    let cfg = TargetConfig::embedded_default();
    let svc = tgt::Service::start(
        &cfg,
        Path::new("<embedded default>"),
        target_core::config::DEFAULT_TOML,
        &target_facade::StartOptions {
            unpinned: true,
            idle_backoff: Some(Duration::from_micros(50)),
        },
    )
    .unwrap();
    let before = svc.running_config();
    svc.stop(Duration::from_secs(10)).unwrap();
    for (m, p) in [
        (
            "bdev_create",
            json!({"name": "r", "kind": "malloc", "size": "1MiB"}),
        ),
        (
            "nvmf_subsystem_remove_ns",
            json!({"nqn": "nqn.2026-11.io.nvmf-rs:default", "nsid": 1}),
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": "nqn.2026-11.io.nvmf-rs:late"}),
        ),
    ] {
        let e = tgt::methods::dispatch(&svc, m, p).unwrap_err();
        assert_eq!(e.code, proto::STOPPING, "{m}: {e}");
    }
    assert_eq!(svc.running_config(), before, "nothing half-applied");
    // Reads still answer.
    assert!(
        tgt::methods::dispatch(&svc, "target_get_info", Value::Null).unwrap()["stopping"] == true
    );
}

#[test]
fn deleting_a_subsystem_under_a_verify_job_loses_no_acknowledged_write() {
    let text = r#"
[target]
drain_timeout_ms = 2000
[reactors]
cores = [0, 1]
idle_backoff_us = 50
[[backend]]
name = "ram0"
kind = "malloc"
size = "8MiB"
[[backend]]
name = "slow0"
kind = "delay"
base = "ram0"
min_latency_us = 50
max_latency_us = 500
[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-rs:b"
allow_any_host = true
  [[subsystem.namespace]]
  nsid = 1
  backend = "slow0"
[[listener]]
transport = "loop"
subsystem = "*"
[[job]]
name = "v"
rw = "verify"
subsystem = "nqn.2026-11.io.nvmf-rs:b"
iodepth = 32
runtime = "1h"
"#;
    let origin = Path::new("inline.toml");
    let cfg = TargetConfig::from_str(text, origin).unwrap();
    let svc = tgt::Service::start(
        &cfg,
        origin,
        text,
        &target_facade::StartOptions {
            unpinned: true,
            idle_backoff: Some(Duration::from_micros(50)),
        },
    )
    .unwrap();
    let status = |svc: &tgt::Service| svc.jobs().all()[0].status();
    wait_for("job I/O", || status(&svc)["ios"].as_u64().unwrap() > 2000);
    // Deleted with 32 commands in flight on a 50-500 µs backend.
    tgt::methods::dispatch(
        &svc,
        "nvmf_delete_subsystem",
        json!({"nqn": "nqn.2026-11.io.nvmf-rs:b"}),
    )
    .unwrap();
    wait_for("job end", || status(&svc)["state"] == "done");
    let st = status(&svc);
    let verdict = st["verify_result"].as_str().unwrap();
    assert!(verdict.starts_with("ok, "), "{st}");
    let n: u64 = verdict
        .trim_start_matches("ok, ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 1000, "{st}");
    assert!(svc.jobs().all().iter().all(|j| !j.failed()));
    // The saved config has neither the subsystem nor the job that ran on
    // it, and loads again.
    let saved = tgt::methods::dispatch(&svc, "save_config", Value::Null).unwrap();
    let text = saved["config"].as_str().unwrap();
    let again = TargetConfig::from_str(text, Path::new("saved.toml")).unwrap();
    assert!(
        again.subsystems.is_empty() && again.jobs.is_empty(),
        "{text}"
    );
    svc.stop(Duration::from_secs(10)).unwrap();
}

/// GNU `timeout` sends its signal to the daemon and then to the whole
/// process group, so the daemon sees SIGTERM twice within microseconds:
/// one stop request, which drains (exit 0, read-backs intact), not a
/// forced exit (130).
#[test]
fn gnu_timeout_double_signal_drains_instead_of_forcing() {
    if Command::new("timeout").arg("--version").output().is_err() {
        panic!("GNU timeout (coreutils) is needed for this test");
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tgt.sock");
    let log = dir.path().join("tgt.log");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/service.toml"),
    )
    .unwrap()
    .replace("/var/tmp/nvmf-tgt.sock", sock.to_str().unwrap())
    .replace("127.0.0.1:9464", &format!("127.0.0.1:{}", free_port()));
    let cfg = dir.path().join("service.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut child = Command::new("timeout")
        .arg("--preserve-status")
        .arg("-k")
        .arg("40")
        .arg("3")
        .arg(env!("CARGO_BIN_EXE_nvmf-tgt"))
        .arg("--config")
        .arg(&cfg)
        .arg("--unpinned")
        .arg("--stop-timeout")
        .arg("20")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("no exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(!log.contains("exiting without finishing"), "{log}");
    for j in ["soak1", "soak2"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("job {j}:")))
            .unwrap_or_else(|| panic!("no summary for {j}\n{log}"));
        assert!(
            line.contains("acknowledged blocks read back intact"),
            "{line}"
        );
    }
}

/// Two SIGTERMs 200 ms apart (a user pressing twice, or a supervisor and
/// its process group): one stop request, exit 0 with the read-backs intact.
#[test]
fn a_signal_repeated_within_a_second_is_the_same_stop_request() {
    let mut d = start(free_port());
    std::thread::sleep(Duration::from_millis(500));
    let pid = d.child.as_ref().unwrap().id().to_string();
    for _ in 0..2 {
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut child = d.child.take().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("no exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("repeated signal"), "second signal seen\n{log}");
    assert!(log.contains("stopped in"), "{log}");
}

/// `nvmf_reset_controller` 10 times on every job controller while the
/// verify jobs run: the job hosts reconnect and retry (counted), no job
/// sees an error, and after SIGTERM every acknowledged block reads back.
#[test]
fn host_jobs_ride_through_ten_target_side_resets() {
    let mut d = start(free_port());
    let mut c = client(&d);
    wait_for("job I/O", || {
        job(&mut c, "soak1")["ios"].as_u64().unwrap() > 500
            && job(&mut c, "soak2")["ios"].as_u64().unwrap() > 500
    });
    let mut resets = 0;
    for round in 0..10u64 {
        let ctrls = call(&mut c, "nvmf_get_controllers", json!({"nqn": NQN}));
        for ctrl in ctrls.as_array().unwrap() {
            call(
                &mut c,
                "nvmf_reset_controller",
                json!({"nqn": NQN, "cntlid": ctrl["cntlid"]}),
            );
            resets += 1;
        }
        // Each job is back (a new association) before the next round.
        let t0 = Instant::now();
        while !["soak1", "soak2"]
            .iter()
            .all(|j| job(&mut c, j)["reconnects"].as_u64().unwrap() > round)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "round {round}: no reconnect: {}\n{}",
                call(&mut c, "job_get_jobs", Value::Null),
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(resets, 20);
    let before: Vec<u64> = ["soak1", "soak2"]
        .iter()
        .map(|j| job(&mut c, j)["ios"].as_u64().unwrap())
        .collect();
    wait_for("I/O after the resets", || {
        ["soak1", "soak2"]
            .iter()
            .zip(&before)
            .all(|(j, b)| job(&mut c, j)["ios"].as_u64().unwrap() > b + 100)
    });
    for j in ["soak1", "soak2"] {
        let st = job(&mut c, j);
        assert_eq!(st["state"], "running", "{st}");
        assert_eq!(st["errors"], 0, "{st}");
        assert_eq!(st["reconnects"], 10, "{st}");
    }
    let pid = d.child.as_ref().unwrap().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut child = d.child.take().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("no exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    for j in ["soak1", "soak2"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("job {j}:")))
            .unwrap_or_else(|| panic!("no summary for {j}\n{log}"));
        assert!(
            line.contains("verify ok") && line.contains("read back intact"),
            "{line}"
        );
        assert!(line.contains("(10 reconnects"), "{line}");
    }
}
