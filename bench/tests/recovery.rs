//! The bench's job engine (the runner nvmf-bench and the service's host
//! jobs use) over the loop transport rides through target-side controller
//! resets: a 1 MiB verify job (above the embedded default's 128 KiB MDTS,
//! so split) keeps running through 5 resets with no error, its result
//! counts the reconnects and retries, and every acknowledged block reads
//! back intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bench::job::{JobSpec, RwMode};
use bench::runner::{self, JobRun, LoopPort, Port, SplitPort};
use bench::stats::LiveStats;
use target_core::config::TargetConfig;
use target_facade::{StartOptions, Target};
use transport_loop::ConnectOptions;

#[test]
fn a_split_verify_job_rides_through_target_resets() {
    let cfg = TargetConfig::embedded_default();
    let t = Target::start(
        &cfg,
        &StartOptions {
            unpinned: true,
            idle_backoff: Some(Duration::from_micros(50)),
        },
    )
    .unwrap();
    let nqn = cfg.subsystems[0].nqn.get_ref().clone();
    let ns = t.nvmf().subsystem(&nqn).unwrap().namespace(1).unwrap();
    let (bs, blocks) = (ns.block_size(), ns.num_blocks());
    let spec = JobSpec {
        rw: RwMode::Verify,
        verify: true,
        bs: 1 << 20,
        align: 1 << 20,
        iodepth: 4,
        size: Some(32 << 20),
        runtime: Some(Duration::from_secs(600)),
        ..JobSpec::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut run = JobRun::new(spec, bs, blocks, LiveStats::new(), stop.clone()).unwrap();
    let o = ConnectOptions::new(&nqn, "nqn.2026-11.io.nvmf-rs:bench-test")
        .with_recovery(Duration::from_millis(20), Duration::from_secs(10));
    let mut host = t.transport().connect(o).unwrap();
    let mdts = host.max_transfer();
    assert!(
        mdts > 0 && mdts < 1 << 20,
        "the job must be split: MDTS {mdts}"
    );
    let qp = host.take_qpairs().pop().unwrap();
    let mut port = SplitPort::new(LoopPort::new(qp, 1), bs, mdts);

    let t0 = Instant::now();
    let mut resets = 0;
    // Commands outstanding at the host queue when each reset struck.
    let mut met = Vec::new();
    let mut next_reset = Instant::now() + Duration::from_millis(200);
    loop {
        assert!(t0.elapsed() < Duration::from_secs(120), "job did not end");
        if resets < 5 && Instant::now() >= next_reset && host.reconnects() == resets {
            met.push(port.inner().qp.outstanding());
            t.nvmf().reset_controller(&nqn, host.cntlid()).unwrap();
            resets += 1;
            next_reset = Instant::now() + Duration::from_millis(200);
        }
        if resets == 5
            && host.reconnects() == 5
            && Instant::now() >= next_reset
            && !stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if run.step(&mut port) {
            break;
        }
    }
    let checked = run
        .read_back(&mut port as &mut dyn Port, runner::DRAIN_LIMIT)
        .unwrap();
    let out = run.finish();
    assert!(out.mismatch.is_none(), "{:?}", out.mismatch);
    assert_eq!(out.result.errors, 0, "no I/O failed through 5 resets");
    assert_eq!(out.result.reconnects, 5);
    // Every reset struck with commands at the target. Whether any of them
    // was still unfetched (and so aborted and retried rather than drained)
    // depends on the reactor's timing, so retries are reported, not required;
    // transport-loop/tests/recovery.rs covers the retry path itself.
    assert!(
        met.iter().all(|&n| n > 0),
        "every reset met outstanding commands: {met:?}"
    );
    eprintln!(
        "resets met {met:?} outstanding commands; {} retries, {} reconnects",
        out.result.retries, out.result.reconnects
    );
    assert!(out.result.ios() > 0);
    assert!(checked > 0);
    drop(port);
    let _ = host.disconnect();
    t.stop().unwrap();
}
