//! Config → running target → host I/O → stop, through the one facade.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use target_core::config::TargetConfig;
use target_core::host_cmds::NvmCommands;
use target_core::iobuf::{DataBuf, IoBuf};
use target_facade::{StartOptions, Target};
use transport_loop::ConnectOptions;

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn test_opts() -> StartOptions {
    StartOptions {
        unpinned: true,
        idle_backoff: Some(Duration::from_micros(50)),
    }
}

#[test]
fn embedded_default_serves_io_and_stops() {
    let t = Target::start(&TargetConfig::embedded_default(), &test_opts()).unwrap();
    let s = t.summary();
    assert!(
        s.contains("backend ram0: malloc") && s.contains("namespace 2: null0"),
        "{s}"
    );
    let mut c = t
        .transport()
        .connect(ConnectOptions::new(
            "nqn.2026-11.io.nvmf-rs:default",
            "nqn.2026-11.io.nvmf-rs:facade",
        ))
        .unwrap();
    let mut q = c.take_qpairs().pop().unwrap();
    let mut b = IoBuf::new(4096);
    b.as_mut_slice().fill(0xab);
    q.write(1, 0, 8, DataBuf::One(b), 1).unwrap();
    q.read(1, 0, 8, DataBuf::One(IoBuf::new(4096)), 2).unwrap();
    let mut ok = 0;
    q.drain(Duration::from_secs(10), &mut |cpl| {
        assert!(cpl.status().is_success());
        if cpl.tag == 2 {
            let mut x = [0u8; 4096];
            cpl.buf.copy_out(0, &mut x);
            assert!(x.iter().all(|&v| v == 0xab));
        }
        ok += 1;
    })
    .unwrap();
    assert_eq!(ok, 2);
    drop(q);
    c.disconnect().unwrap();
    t.stop().unwrap();
}

#[test]
fn every_software_example_starts() {
    for name in [
        "malloc.toml",
        "null-bench.toml",
        "delay.toml",
        "error-inject.toml",
        "file.toml",
        "multi-subsystem.toml",
    ] {
        let cfg = TargetConfig::load(&configs().join(name)).unwrap();
        let t = Target::start(&cfg, &test_opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
        t.stop().unwrap();
    }
}

#[test]
fn a_missing_nvme_device_is_a_clear_error() {
    let cfg = TargetConfig::load(&configs().join("nvme-vfio.toml")).unwrap();
    let e = Target::start(&cfg, &test_opts()).unwrap_err().to_string();
    assert!(
        e.contains("backend ssd0n1") && e.contains("0000:00:04.0"),
        "{e}"
    );
}
