//! The service's side of hot removal that runs without a VFIO device (the
//! device side is the `hotplug` VM guest, scripts/vm/run.sh): the poll finds
//! nothing on software backends and disturbs nothing, live backends say
//! `online`, and a job whose namespace was removed under it ends with the
//! reason, skips its read-back and does not count as lost data.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use target_core::config::TargetConfig;

const NQN: &str = "nqn.2026-11.io.nvmf-rs:hp";

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn removed_namespace_ends_its_job_with_the_reason() {
    let text = r#"
[reactors]
cores = [0]
[[backend]]
name = "ram0"
kind = "malloc"
size = "8MiB"
[[backend]]
name = "ram1"
kind = "malloc"
size = "8MiB"
[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-rs:hp"
allow_any_host = true
  [[subsystem.namespace]]
  nsid = 1
  backend = "ram0"
  [[subsystem.namespace]]
  nsid = 2
  backend = "ram1"
[[listener]]
transport = "loop"
subsystem = "*"
[[job]]
name = "gone"
rw = "verify"
nsid = 1
iodepth = 8
runtime = "1h"
[[job]]
name = "stays"
rw = "verify"
nsid = 2
iodepth = 8
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
    let job = |name: &str| {
        svc.jobs()
            .all()
            .into_iter()
            .find(|j| j.name() == name)
            .unwrap()
    };
    wait_for("job I/O", || {
        job("gone").status()["ios"].as_u64().unwrap() > 500
            && job("stays").status()["ios"].as_u64().unwrap() > 500
    });
    // Software backends: no device request to find, nothing changes.
    assert!(svc.poll_hot_removal().is_empty());
    assert!(svc.target().hot_removals().is_empty());
    let bdevs = tgt::methods::dispatch(&svc, "bdev_get_bdevs", Value::Null).unwrap();
    let bdevs = bdevs.as_array().unwrap();
    assert_eq!(bdevs.len(), 2);
    assert!(bdevs.iter().all(|b| b["state"] == "online"), "{bdevs:?}");

    let reason = "namespace removed: NVMe device 0000:01:00.0 (serial t) hot-removed";
    svc.jobs().namespace_removed(NQN, 1, reason);
    wait_for("removed job ends", || {
        job("gone").status()["state"] == "done"
    });
    let st = job("gone").status();
    assert_eq!(st["error"], reason, "{st}");
    assert_eq!(
        st["verify_result"],
        format!("not checked: {reason}"),
        "{st}"
    );
    assert!(!job("gone").failed(), "{st}");
    // The other job is untouched.
    let other = job("stays").status();
    assert_eq!(other["state"], "running", "{other}");
    assert!(other.get("error").is_none(), "{other}");

    let lines = svc.stop(Duration::from_secs(10)).unwrap();
    let line = lines.iter().find(|l| l.starts_with("job gone:")).unwrap();
    assert!(line.contains("hot-removed"), "{line}");
    let line = lines.iter().find(|l| l.starts_with("job stays:")).unwrap();
    assert!(line.contains("verify ok"), "{line}");
}
