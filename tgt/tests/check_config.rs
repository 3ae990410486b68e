//! `nvmf-tgt --check-config`: every example passes, a broken file names
//! its file, line and key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn check_config_accepts_examples_and_names_errors() {
    let bin = env!("CARGO_BIN_EXE_nvmf-tgt");
    for entry in std::fs::read_dir(configs()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(bin)
                .arg("--check-config")
                .arg("--config")
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    // Target keys, the service's own keys and its [[job]] tables.
    let cases = [
        (
            "[reactors]\ncores = [0]\n\n[[backend]]\nname = \"x\"\nkind = \"malloc\"\nsize = \"1MiB\"\nblok_size = 512\n",
            "bad.toml:8:1: backend[0].blok_size: unknown field",
        ),
        (
            "[target]\nmetrics_addr = \"0.0.0.0:9464\"\n",
            "bad.toml:2:16: target.metrics_addr: must be a loopback address",
        ),
        (
            "[[backend]]\nname = \"r\"\nkind = \"malloc\"\nsize = \"1MiB\"\n\n[[job]]\nname = \"j\"\nrw = \"verify\"\niodepht = 4\n",
            "bad.toml:9: unknown field `iodepht`",
        ),
        ("[[job]]\nname = \"j\"\nrw = \"sideways\"\n", "bad.toml:3:"),
        (
            "[[job]]\nname = \"j\"\ntransport = \"rdma\"\n",
            "bad.toml:3: key 'transport': 'rdma' is not a transport (loop, tcp)",
        ),
        (
            "[[job]]\nname = \"j\"\ntransport = \"tcp\"\ntraddr = \"10.0.0.1\"\ntrsvcid = 0\n",
            "bad.toml:5: key 'trsvcid': port 0",
        ),
        (
            "[[job]]\nname = \"j\"\ntraddr = \"10.0.0.1\"\n",
            "bad.toml:3: job 'j': key 'traddr': only for transport = \"tcp\"",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(bin)
            .arg("--check-config")
            .arg("--config")
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(want), "{text}: wanted {want}, got {err}");
    }
}
