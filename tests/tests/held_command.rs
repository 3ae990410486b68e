//! A command a backend never completes: the reset waits the bounded drain
//! time, escalates to a backend reset, and completes; Keep Alive is served
//! meanwhile; releasing the held command afterwards completes nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use target_core::bdev::error::Trigger;
use target_core::bdev::*;
use target_core::host_cmds::{AdminCommands, NvmCommands};
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::SubsystemParams;
use target_core::nvmf::target::NamespaceParams;
use target_core::spec::Status;
use transport_loop::{ConnectOptions, LoopTransport, QpairState};

const NQN: &str = "nqn.2026-11.io.nvmf-rs:held";
const DRAIN: Duration = Duration::from_millis(400);

#[test]
fn held_command_across_a_reset() {
    let t = tests::threaded_target(2, DRAIN).unwrap();
    t.add_bdev(tests::ram("ram", 512, 1024).unwrap()).unwrap();
    let hold = ErrorRule {
        op: OpMatch::Op(IoOp::Write),
        lba_range: Some((7, 8)),
        trigger: Trigger::EveryNth(1),
        count: Some(1),
        action: ErrorAction::Hold,
    };
    let err = Arc::new(
        ErrorBdev::new(
            ErrorParams {
                name: "err".into(),
                rules: vec![hold],
                seed: 1,
            },
            t.bdev("ram").unwrap(),
        )
        .unwrap(),
    );
    t.add_bdev(err.clone()).unwrap();
    t.add_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial: "H".into(),
        model: "held".into(),
        max_namespaces: 2,
        allow_any_host: true,
        hosts: vec![],
    })
    .unwrap();
    t.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(1),
            bdev: "err".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let lt = LoopTransport::new(t.clone());
    lt.listen(NQN);
    let mut o = ConnectOptions::new(NQN, "nqn.2026-11.io.nvmf-rs:h");
    o.queue_depth = 32;
    let mut c = lt.connect(o).unwrap();
    let mut q = c.take_qpairs().pop().unwrap();

    // The held write and a normal one.
    q.write(1, 7, 1, DataBuf::One(IoBuf::new(512)), 7).unwrap();
    q.write(1, 9, 1, DataBuf::One(IoBuf::new(512)), 9).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while err.held_count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(err.held_count(), 1);

    // Reset from one thread; Keep Alive from this one while the drain waits.
    let t0 = Instant::now();
    let mut ka_during = 0;
    std::thread::scope(|s| {
        let reset = s.spawn(|| {
            let r = c.property_set(0x14, 0);
            (r, t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        while !reset.is_finished() {
            let k = Instant::now();
            c.keep_alive().expect("keep alive during a quiesce");
            assert!(k.elapsed() < DRAIN, "keep alive waited for the drain");
            ka_during += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let (r, took) = reset.join().unwrap();
        r.expect("reset completes after escalation");
        assert!(
            took >= DRAIN - Duration::from_millis(20),
            "reset returned before the bounded wait ({took:?})"
        );
        assert!(took < DRAIN * 4, "reset took {took:?}");
    });
    assert!(
        ka_during >= 2,
        "keep alive was not exercised during the quiesce"
    );

    // Both writes completed exactly once: the normal one, the held one aborted.
    let mut got = Vec::new();
    q.drain(Duration::from_secs(10), &mut |cpl| {
        got.push((cpl.tag, cpl.status()))
    })
    .unwrap();
    got.sort_by_key(|g| g.0);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], (7, Status::ABORT_REQUESTED));
    assert!(got[1].1.is_success());
    assert_eq!(q.state(), QpairState::Dead);
    assert_eq!(err.held_count(), 0);
    let resets: u64 = t
        .engine()
        .pgs()
        .iter()
        .map(|h| {
            h.stats
                .backend_resets
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(resets >= 1);

    // Releasing now is harmless: nothing else completes, nothing crashes.
    err.release_held();
    std::thread::sleep(Duration::from_millis(50));
    let mut extra = 0;
    q.poll(64, &mut |_| extra += 1);
    assert_eq!(extra, 0);
    assert_eq!(q.stats().stale, 0);

    // The controller comes back and the queue reconnects.
    c.property_set(0x14, 1 | (6 << 16) | (4 << 20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.property_get(0x1c, false).unwrap() & 1 == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    q.reconnect().unwrap();
    q.write(1, 7, 1, DataBuf::One(IoBuf::new(512)), 70).unwrap();
    let mut st = None;
    q.drain(Duration::from_secs(10), &mut |cpl| st = Some(cpl.status()))
        .unwrap();
    assert!(st.unwrap().is_success());
    drop(q);
    c.disconnect().unwrap();
    t.stop().unwrap();
}
