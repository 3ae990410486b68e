//! Host jobs over NVMe/TCP: a `[[job]]` with `transport = "tcp"` soaks a
//! target over TCP. Here the target is the service's own TCP listener (no
//! `traddr`: the first listener) and, for a "remote" job, a second
//! `nvmf-tgt` process; the job status says so; SIGTERM ends both jobs with
//! their read-back over TCP intact and exit 0. Bounded waits throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tgt::rpc::client::RpcClient;

struct Daemon {
    child: Option<Child>,
    sock: PathBuf,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(dir: &Path, name: &str, config: &str) -> Daemon {
    let sock = dir.join(format!("{name}.sock"));
    let log = dir.join(format!("{name}.log"));
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_nvmf-tgt"))
        .arg("--config")
        .arg(&cfg)
        .arg("--rpc-socket")
        .arg(&sock)
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

fn jobs(d: &Daemon) -> Vec<Value> {
    let mut c = RpcClient::connect(&d.sock, Duration::from_secs(30)).unwrap();
    c.call("job_get_jobs", &Value::Null)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn job(d: &Daemon, name: &str) -> Value {
    jobs(d)
        .into_iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name}"))
}

/// The port of the daemon's TCP listener, from its log.
fn listener_port(d: &Daemon) -> u16 {
    let t0 = Instant::now();
    loop {
        let log = std::fs::read_to_string(&d.log).unwrap_or_default();
        if let Some(p) = log
            .lines()
            .find_map(|l| l.split("listener added addr=127.0.0.1:").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
        {
            return p;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no listener: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm_and_wait(d: &mut Daemon) -> String {
    let mut child = d.child.take().unwrap();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            panic!(
                "no exit within 40 s: {}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    log
}

const TARGET: &str = r#"
[target]
drain_timeout_ms = 2000

[reactors]
cores = [0]

[[backend]]
name = "ram0"
kind = "malloc"
size = "32MiB"

[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-rs:svc-tcp"
allow_any_host = true

  [[subsystem.namespace]]
  nsid = 1
  backend = "ram0"

[[listener]]
transport = "tcp"
address = "127.0.0.1:0"
subsystem = "*"
"#;

#[test]
fn tcp_host_jobs_soak_the_own_listener_and_a_remote_target() {
    let dir = tempfile::tempdir().unwrap();
    // The "remote" target: a plain nvmf-tgt with a TCP listener.
    let mut remote = start(dir.path(), "remote", TARGET);
    let port = listener_port(&remote);
    let config = format!(
        "{TARGET}\n[[job]]\nname = \"own\"\ntransport = \"tcp\"\nrw = \"verify\"\nbs = \"4KiB\"\niodepth = 8\nsize = \"8MiB\"\nruntime = \"24h\"\n\n\
         [[job]]\nname = \"remote\"\ntransport = \"tcp\"\ntraddr = \"127.0.0.1\"\ntrsvcid = {port}\nsubnqn = \"nqn.2026-11.io.nvmf-rs:svc-tcp\"\nrw = \"verify\"\nbs = \"64KiB\"\niodepth = 4\nsize = \"8MiB\"\nruntime = \"24h\"\n"
    );
    let mut d = start(dir.path(), "svc", &config);
    let t0 = Instant::now();
    while !["own", "remote"]
        .iter()
        .all(|j| job(&d, j)["ios"].as_u64().unwrap() > 300)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no job I/O: {:?}\n{}",
            jobs(&d),
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let own = job(&d, "own");
    assert_eq!(own["transport"], "tcp", "{own}");
    assert_eq!(own["errors"], 0, "{own}");
    let r = job(&d, "remote");
    assert_eq!(r["traddr"], format!("127.0.0.1:{port}"), "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    let log = sigterm_and_wait(&mut d);
    for j in ["own", "remote"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("job {j}:")))
            .unwrap_or_else(|| panic!("no summary for {j}\n{log}"));
        assert!(
            line.contains("verify ok") && line.contains("read back intact"),
            "{line}"
        );
    }
    sigterm_and_wait(&mut remote);
}
