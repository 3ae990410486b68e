//! The `nvmf-bench` binary end to end: a verify run passes, a corrupting
//! backend is caught at the right LBA, the result files agree with each
//! other and with the I/O count, and bad input exits 2 with one line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nvmf-bench"))
        .args(["--quiet", "--reactor-cores", "0"])
        .args(args)
        .output()
        .unwrap()
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

/// Total count over the intervals of a job's `.hlog`, read with
/// hdrhistogram's own log reader.
fn hlog_total(out: &Path, job: &serde_json::Value) -> u64 {
    let hlog =
        std::fs::read(out.join(format!("{}.hlog", job["jobname"].as_str().unwrap()))).unwrap();
    let mut total = 0;
    let mut de = Deserializer::new();
    for e in IntervalLogIterator::new(&hlog) {
        if let LogEntry::Interval(h) = e.unwrap() {
            let raw = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                h.encoded_histogram(),
            )
            .unwrap();
            let hist: hdrhistogram::Histogram<u64> = de.deserialize(&mut raw.as_slice()).unwrap();
            total += hist.len();
        }
    }
    total
}

#[test]
fn verify_run_over_loop_passes_and_files_agree() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = bench(&[
        "--rw",
        "verify",
        "--bs",
        "4k",
        "-q",
        "16",
        "--io-count",
        "20000",
        "--size",
        "8MiB",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let j = json(&out);
    let job = &j["jobs"][0];
    let ios =
        job["read"]["total_ios"].as_u64().unwrap() + job["write"]["total_ios"].as_u64().unwrap();
    assert_eq!(ios, 20000, "{j}");
    assert_eq!(job["errors"].as_u64(), Some(0));
    let table = std::fs::read_to_string(out.join("summary.txt")).unwrap();
    assert!(table.contains("20000 I/Os"), "{table}");
    // The interval log reads back with hdrhistogram's reader; counts add up.
    assert_eq!(hlog_total(&out, job), ios);
    for f in ["latency.svg", "iops.svg"] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 500, "{f}");
    }
}

#[test]
fn corrupting_backend_is_caught_with_its_lba() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("corrupt.toml");
    std::fs::write(
        &cfg,
        r#"
[reactors]
cores = [0]
[[backend]]
name = "ram"
kind = "malloc"
size = "4MiB"
[[backend]]
name = "bad"
kind = "error"
base = "ram"
  [[backend.inject]]
  op = "read"
  lba_start = 808
  lba_end = 809
  action = "corrupt"
[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-rs:corrupt"
allow_any_host = true
  [[subsystem.namespace]]
  nsid = 1
  backend = "bad"
[[listener]]
transport = "loop"
subsystem = "*"
"#,
    )
    .unwrap();
    let out = dir.path().join("r");
    let o = bench(&[
        "--config",
        cfg.to_str().unwrap(),
        "--rw",
        "verify",
        "--bs",
        "4k",
        "-q",
        "4",
        "--io-count",
        "20000",
        "--output",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("verify FAILED"), "{t}");
    // Blocks of 512 B: the corrupted 4 KiB read covers LBAs 808..816; the
    // byte flipped is in the middle of the buffer, LBA 812.
    assert!(t.contains("LBA 812"), "{t}");
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    for args in [
        &["--bs", "3k7"][..],
        &["--rw", "sideways"],
        &["--iodepth", "0"],
        &["--config", "/nonexistent.toml"],
        &["--job-file", "/nonexistent.toml"],
    ] {
        let o = bench(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{args:?}: no message");
        assert!(lines.len() <= 3, "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let jf = dir.path().join("jobs.toml");
    std::fs::write(
        &jf,
        "[global]\nbs = \"4k\"\n\n[[job]]\nname = \"a\"\niodeph = 4\n",
    )
    .unwrap();
    let o = bench(&["--job-file", jf.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("jobs.toml:6") && err.contains("iodeph"),
        "{err}"
    );
}

#[test]
fn inline_and_direct_modes_run() {
    let dir = tempfile::tempdir().unwrap();
    for (i, extra) in [&["--inline"][..], &["--target", "direct"]]
        .iter()
        .enumerate()
    {
        let out = dir.path().join(format!("r{i}"));
        let mut args = vec![
            "--nsid",
            "2",
            "--io-count",
            "50000",
            "-q",
            "32",
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = bench(&args);
        assert!(o.status.success(), "{extra:?}: {}", text(&o));
        let j = json(&out);
        assert_eq!(
            j["jobs"][0]["read"]["total_ios"].as_u64(),
            Some(50000),
            "{extra:?}: {j}"
        );
        if i == 0 {
            // The inline job's reactor fetched and completed every I/O:
            // its counters in machine.json say so.
            let m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("machine.json")).unwrap())
                    .unwrap();
            let r = &m["reactors"][0];
            assert!(r["busy_passes"].as_u64().unwrap() > 0, "{m}");
            assert!(r["work_items"].as_u64().unwrap() >= 2 * 50000, "{m}");
        }
    }
}

/// Ctrl-C (SIGINT) ends a long run early: exit 0, and the result files are
/// written for what ran, with the histogram agreeing with the I/O count.
#[test]
fn sigint_stops_cleanly_and_writes_results() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvmf-bench"))
        .args([
            "--quiet",
            "--reactor-cores",
            "0",
            "--rw",
            "verify",
            "-q",
            "8",
        ])
        .args(["--size", "8MiB", "--runtime", "120s", "--output"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("nvmf-bench still running 30 s after SIGINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let j = json(&out);
    let job = &j["jobs"][0];
    let ios =
        job["read"]["total_ios"].as_u64().unwrap() + job["write"]["total_ios"].as_u64().unwrap();
    assert!(ios > 0, "{j}");
    assert_eq!(job["errors"].as_u64(), Some(0));
    assert_eq!(hlog_total(&out, job), ios);
}

/// I/O above the controller's MDTS (128 KiB on the embedded default) is
/// split and recombined: a 1 MiB verify run completes I/Os without errors
/// (it used to run 0 I/Os with thousands of errors and exit 0).
#[test]
fn verify_above_mdts_is_split_and_recombined() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = bench(&[
        "--rw",
        "verify",
        "--bs",
        "1m",
        "-q",
        "4",
        "--size",
        "32MiB",
        "--io-count",
        "200",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&out);
    assert_eq!(v["total"]["errors"], 0, "{}", text(&o));
    assert_eq!(v["jobs"][0]["mixed"]["total_ios"], 200, "{v}");
}

fn error_config(dir: &Path, probability: &str) -> std::path::PathBuf {
    let p = dir.join("err.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[reactors]
cores = [0]
[[backend]]
name = "ram0"
kind = "malloc"
size = "16MiB"
[[backend]]
name = "bad0"
kind = "error"
base = "ram0"
seed = 3
  [[backend.inject]]
  op = "read"
  probability = {probability}
  action = "fail"
  status = "unrecovered_read_error"
[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-rs:err"
allow_any_host = true
  [[subsystem.namespace]]
  nsid = 1
  backend = "bad0"
[[listener]]
transport = "loop"
subsystem = "*"
"#
        ),
    )
    .unwrap();
    p
}

/// Every I/O failed: exit 1 with one line saying so.
#[test]
fn a_run_whose_ios_all_failed_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = error_config(dir.path(), "1.0");
    let out = dir.path().join("r");
    let o = bench(&[
        "--config",
        cfg.to_str().unwrap(),
        "--rw",
        "randread",
        "--io-count",
        "500",
        "--ctrl-loss-tmo",
        "0",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("FAILED: all 500 I/Os failed"), "{t}");
    assert_eq!(json(&out)["total"]["errors"], 500);
}

/// Some errors: exit 0, and the count is in the summary and the JSON.
#[test]
fn a_run_with_some_errors_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = error_config(dir.path(), "0.1");
    let out = dir.path().join("r");
    let o = bench(&[
        "--config",
        cfg.to_str().unwrap(),
        "--rw",
        "randread",
        "--io-count",
        "2000",
        "--ctrl-loss-tmo",
        "0",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    let errors = json(&out)["total"]["errors"].as_u64().unwrap();
    assert!(errors > 0 && errors < 2000, "{t}");
    assert!(t.contains(&format!("{errors} I/O(s) failed")), "{t}");
    assert!(t.contains(&format!("{errors} of 2000 I/Os failed")), "{t}");
}

/// `scripts/compare.sh`, the tool every ratio in the README comes from:
/// two rounds of two short direct runs give both sides' figures, each
/// round's own ratio, and the order of the sides alternates by round
/// (seen in when each run's summary was written).
#[test]
fn compare_script_alternates_sides_and_reports_round_ratios() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let bin = env!("CARGO_BIN_EXE_nvmf-bench");
    let side = |qd: &str| {
        format!(
            "{bin} --quiet --config configs/null-bench.toml --reactor-cores 0 \
             --target direct --inline --io-count 20000 -q {qd}"
        )
    };
    let o = Command::new("bash")
        .arg(root.join("scripts/compare.sh"))
        .args(["-n", "2", "--", &side("1"), &side("8")])
        .env("COMPARE_OUT", &out)
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ratio by round: median"), "{}", text(&o));
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(c["a"]["iops"].as_array().unwrap().len(), 2);
    assert_eq!(c["b"]["iops"].as_array().unwrap().len(), 2);
    let ratios = c["round_ratios_b_over_a"].as_array().unwrap();
    assert_eq!(ratios.len(), 2);
    let (a, b) = (&c["a"]["iops"], &c["b"]["iops"]);
    for (i, r) in ratios.iter().enumerate() {
        let want = b[i].as_f64().unwrap() / a[i].as_f64().unwrap();
        assert!(
            (r.as_f64().unwrap() - want).abs() < 1e-9,
            "round {i}: {r} vs {want}"
        );
    }
    let won = c["rounds_b_faster"].as_u64().unwrap();
    assert_eq!(
        won,
        ratios.iter().filter(|r| r.as_f64().unwrap() > 1.0).count() as u64
    );
    let written = |run: &str| {
        std::fs::metadata(out.join(run).join("summary.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    assert!(written("a-1") < written("b-1"), "round 1 runs A first");
    assert!(written("b-2") < written("a-2"), "round 2 runs B first");
}
