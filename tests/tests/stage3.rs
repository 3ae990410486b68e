//! Stage 3 of a teardown: a backend keeps a command even after its reset.
//!
//! The `error` backend's `Stuck` action holds a write through resets. A
//! host reset (CC.EN = 0) drains, escalates after the bound, waits one more
//! bound, and then the controller is failed to its host: CSTS.CFS = 1, the
//! admin queue answers Property Get only, the I/O queue is destroyed with
//! the stuck command unanswered. When the backend finally gives the command
//! back, nothing reaches the host (at most one completion per command). The
//! host ends the association; a new one works.
//!
//! The same for a namespace removed while its backend holds a command: the
//! view retires, is still polled, and answers what it drains.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use target_core::bdev::error::Trigger;
use target_core::bdev::*;
use target_core::host_cmds::{AdminCommands, NvmCommands};
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::target::NamespaceParams;
use target_core::nvmf::{NvmfTarget, SubsystemParams};
use transport_loop::{ConnectOptions, HostError, LoopTransport, QpairState};

const NQN: &str = "nqn.2026-11.io.nvmf-rs:stage3";
const HOST: &str = "nqn.2026-11.io.nvmf-rs:stage3-host";
const DRAIN: Duration = Duration::from_millis(300);
const CC: u32 = 0x14;
const CSTS: u32 = 0x1c;

fn setup(stuck_lba: u64) -> (Arc<NvmfTarget>, Arc<ErrorBdev>, Arc<LoopTransport>) {
    let t = tests::threaded_target(2, DRAIN).unwrap();
    t.add_bdev(tests::ram("ram", 512, 1024).unwrap()).unwrap();
    let stuck = ErrorRule {
        op: OpMatch::Op(IoOp::Write),
        lba_range: Some((stuck_lba, stuck_lba + 1)),
        trigger: Trigger::EveryNth(1),
        count: Some(1),
        action: ErrorAction::Stuck,
    };
    let err = Arc::new(
        ErrorBdev::new(
            ErrorParams {
                name: "err".into(),
                rules: vec![stuck],
                seed: 3,
            },
            t.bdev("ram").unwrap(),
        )
        .unwrap(),
    );
    t.add_bdev(err.clone()).unwrap();
    t.add_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial: "S3".into(),
        model: "stage3".into(),
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
    (t, err, lt)
}

fn opts() -> ConnectOptions {
    let mut o = ConnectOptions::new(NQN, HOST);
    o.queue_depth = 32;
    o.kato_ms = 0;
    o.timeout = Duration::from_secs(2);
    o
}

fn pg_sum(t: &NvmfTarget, f: impl Fn(&target_core::nvmf::engine::PgStats) -> u64) -> u64 {
    t.engine().pgs().iter().map(|h| f(&h.stats)).sum()
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

#[test]
fn stage3_fails_the_controller_and_answers_each_command_at_most_once() {
    let (t, err, lt) = setup(7);
    let mut c = lt.connect(opts()).unwrap();
    let mut q = c.take_qpairs().pop().unwrap();
    let mut got: Vec<(u64, bool)> = Vec::new();

    q.write(1, 7, 1, DataBuf::One(IoBuf::new(512)), 7).unwrap();
    q.write(1, 9, 1, DataBuf::One(IoBuf::new(512)), 9).unwrap();
    assert!(wait_for(Duration::from_secs(10), || {
        q.poll(8, &mut |cpl| got.push((cpl.tag, cpl.status().is_success())));
        err.held_count() == 1 && got.len() == 1
    }));
    assert_eq!(got, vec![(9, true)]);

    // The host resets; the target drains, resets the backend, waits again,
    // and fails the controller. The Property Set is never answered.
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let reset = s.spawn(|| c.property_set(CC, 0));
        assert!(
            wait_for(Duration::from_secs(10), || q.state() == QpairState::Dead),
            "the I/O queue was not destroyed"
        );
        let took = t0.elapsed();
        assert!(
            took >= DRAIN * 2 - Duration::from_millis(20),
            "stage 3 before two bounds ({took:?})"
        );
        let csts = c
            .property_get(CSTS, false)
            .expect("Property Get still answers") as u32;
        assert_eq!(csts & 0b10, 0b10, "CSTS.CFS not set: {csts:#x}");
        assert_eq!(csts & 1, 0, "CSTS.RDY still set after CC.EN = 0");
        match reset.join().unwrap() {
            Err(HostError::Timeout(_)) => {}
            other => panic!("the reset's Property Set was answered: {other:?}"),
        }
    });
    match c.keep_alive() {
        Err(HostError::Timeout(_)) => {}
        other => panic!("a failed controller answered Keep Alive: {other:?}"),
    }
    assert!(c.identify_raw(1, 0).is_err(), "Identify answered");

    // The stuck write got nothing; the backend still holds its buffer.
    q.poll(64, &mut |cpl| {
        got.push((cpl.tag, cpl.status().is_success()))
    });
    assert_eq!(got, vec![(9, true)]);
    assert_eq!(q.outstanding(), 1);
    assert_eq!(err.held_count(), 1);
    assert!(err.resets() >= 1, "the backend was never reset");
    assert!(pg_sum(&t, |s| s.backend_resets.load(Ordering::Relaxed)) >= 1);
    assert_eq!(
        pg_sum(&t, |s| s.controllers_failed.load(Ordering::Relaxed)),
        1
    );
    let late_before = pg_sum(&t, |s| s.late_completions.load(Ordering::Relaxed));

    // The backend lets go: the completion is dropped by the target.
    err.release_held();
    assert!(wait_for(Duration::from_secs(10), || {
        pg_sum(&t, |s| s.late_completions.load(Ordering::Relaxed)) > late_before
    }));
    assert_eq!(err.held_count(), 0);
    q.poll(64, &mut |cpl| {
        got.push((cpl.tag, cpl.status().is_success()))
    });
    assert_eq!(got, vec![(9, true)], "a second answer reached the host");
    assert_eq!(q.stats().stale, 0);

    // The host's recovery ends the association; the controller goes.
    let s = t.subsystem(NQN).unwrap();
    drop(q);
    drop(c);
    assert!(wait_for(Duration::from_secs(10), || s
        .state()
        .controllers
        .is_empty()));

    // A new association works, on the same LBA.
    let mut c = lt.connect(opts()).unwrap();
    let mut q = c.take_qpairs().pop().unwrap();
    q.write(1, 7, 1, DataBuf::One(IoBuf::new(512)), 70).unwrap();
    let mut st = None;
    q.drain(Duration::from_secs(10), &mut |cpl| st = Some(cpl.status()))
        .unwrap();
    assert!(st.unwrap().is_success());
    drop(q);
    c.disconnect().unwrap();
    t.stop().unwrap();
}

#[test]
fn removed_namespace_retires_and_answers_what_it_drains() {
    let (t, err, lt) = setup(5);
    let mut c = lt.connect(opts()).unwrap();
    let mut q = c.take_qpairs().pop().unwrap();
    q.write(1, 5, 1, DataBuf::One(IoBuf::new(512)), 5).unwrap();
    assert!(wait_for(Duration::from_secs(10), || err.held_count() == 1));

    // Pause times out, the reset cannot free it, the view retires.
    let t0 = Instant::now();
    t.remove_namespace(NQN, 1).unwrap();
    assert!(t0.elapsed() >= DRAIN * 2 - Duration::from_millis(20));
    let mut got = Vec::new();
    q.poll(8, &mut |cpl| got.push((cpl.tag, cpl.status())));
    assert!(got.is_empty(), "answered while the backend holds it");

    // New commands to the removed namespace fail at once.
    q.write(1, 6, 1, DataBuf::One(IoBuf::new(512)), 6).unwrap();
    assert!(wait_for(Duration::from_secs(10), || {
        q.poll(8, &mut |cpl| got.push((cpl.tag, cpl.status())));
        !got.is_empty()
    }));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 6);
    assert!(
        got[0]
            .1
            .same_code(target_core::spec::Status::INVALID_NAMESPACE_OR_FORMAT)
    );

    // The retiring view is still polled: the release is answered, once.
    err.release_held();
    assert!(wait_for(Duration::from_secs(10), || {
        q.poll(8, &mut |cpl| got.push((cpl.tag, cpl.status())));
        got.len() == 2
    }));
    assert_eq!(got[1].0, 5);
    assert!(got[1].1.is_success(), "{:?}", got[1].1);
    std::thread::sleep(Duration::from_millis(50));
    q.poll(8, &mut |cpl| got.push((cpl.tag, cpl.status())));
    assert_eq!(got.len(), 2);
    assert_eq!(q.stats().stale, 0);
    assert_eq!(q.state(), QpairState::Live);
    drop(q);
    c.disconnect().unwrap();
    t.stop().unwrap();
}

#[test]
fn removed_namespace_stuck_past_its_reset_fails_the_controller() {
    let (t, err, lt) = setup(5);
    let mut c = lt.connect(opts()).unwrap();
    let mut q = c.take_qpairs().pop().unwrap();
    q.write(1, 5, 1, DataBuf::One(IoBuf::new(512)), 5).unwrap();
    assert!(wait_for(Duration::from_secs(10), || err.held_count() == 1));
    t.remove_namespace(NQN, 1).unwrap();
    // The retiring view escalates on its own bounds, then gives up.
    assert!(
        wait_for(Duration::from_secs(10), || {
            c.property_get(CSTS, false).is_ok_and(|v| v & 0b10 != 0)
        }),
        "CSTS.CFS never set"
    );
    assert!(err.resets() >= 2, "resets {}", err.resets());
    let mut n = 0;
    q.poll(8, &mut |_| n += 1);
    assert_eq!(n, 0);
    // Released late: the queue is still there, so the command is answered.
    err.release_held();
    assert!(wait_for(Duration::from_secs(10), || {
        q.poll(8, &mut |_| n += 1);
        n == 1
    }));
    assert_eq!(q.stats().stale, 0);
    // CSTS.RDY is still 1 here, but a failed controller takes no new queue.
    assert_eq!(c.property_get(CSTS, false).unwrap() & 1, 1);
    drop(q);
    std::thread::sleep(Duration::from_millis(100)); // the old queue is gone
    assert!(
        c.create_qpair(1, 8).is_err(),
        "an I/O queue connected to a failed controller"
    );
    drop(c);
    t.stop().unwrap();
}
