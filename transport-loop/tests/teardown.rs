//! Reset, shutdown, disconnect, namespace removal and keep-alive expiry
//! while I/O is outstanding: every command completes exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use target_core::host_cmds::{AdminCommands, NvmCommands};
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::target::NamespaceParams;
use target_core::spec::Status;
use transport_loop::{AsyncEvent, HostQpair, QpairState};

const T: Duration = Duration::from_secs(10);

fn pattern(lba: u64) -> IoBuf {
    let mut b = IoBuf::new(512);
    for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
        *x = (lba as u8) ^ (i as u8);
    }
    b
}

/// Submits writes to `count` LBAs from `base`; returns the number submitted.
fn submit_writes(q: &mut HostQpair, base: u64, count: u64) -> u64 {
    let mut n = 0;
    for lba in base..base + count {
        if q.write(1, lba, 1, DataBuf::One(pattern(lba)), lba).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// Collects completions until nothing is outstanding; returns the LBAs
/// whose writes were acknowledged, checking each status is legal.
fn collect(q: &mut HostQpair) -> (Vec<u64>, usize) {
    let mut acked = Vec::new();
    let mut aborted = 0;
    q.drain(T, &mut |c| {
        if c.status().is_success() {
            acked.push(c.tag);
        } else {
            assert!(
                c.status().same_code(Status::ABORTED_SQ_DELETION),
                "unexpected {:?}",
                c.status()
            );
            aborted += 1;
        }
    })
    .unwrap();
    (acked, aborted)
}

fn verify(q: &mut HostQpair, lbas: &[u64]) {
    for &lba in lbas {
        q.read(1, lba, 1, DataBuf::One(IoBuf::new(512)), lba)
            .unwrap();
        q.drain(T, &mut |c| {
            assert!(c.status().is_success());
            let mut got = [0u8; 512];
            c.buf.copy_out(0, &mut got);
            assert_eq!(&got[..], pattern(c.tag).as_slice(), "lba {}", c.tag);
        })
        .unwrap();
    }
}

#[test]
fn reset_with_io_outstanding_completes_everything_once() {
    let (t, lt) = target(threaded(2));
    let mut c = lt.connect(host_opts(3, 64)).unwrap();
    let mut qps = c.take_qpairs();
    let mut submitted = 0;
    for (i, q) in qps.iter_mut().enumerate() {
        submitted += submit_writes(q, i as u64 * 1000, 60);
    }
    c.reset().unwrap();
    let mut acked = Vec::new();
    let mut total = 0;
    for q in qps.iter_mut() {
        let (a, ab) = collect(q);
        total += a.len() + ab;
        acked.extend(a);
        assert_eq!(q.state(), QpairState::Dead);
        assert_eq!(q.stats().stale, 0);
        q.reconnect().unwrap();
    }
    assert_eq!(total as u64, submitted);
    verify(&mut qps[0], &acked);
    drop(qps);
    c.disconnect().unwrap();
    t.stop().unwrap();
}

#[test]
fn shutdown_drains_and_reports_shst() {
    let (t, lt) = target(threaded(1));
    let mut c = lt.connect(host_opts(2, 64)).unwrap();
    let mut qps = c.take_qpairs();
    let n = submit_writes(&mut qps[0], 0, 50) + submit_writes(&mut qps[1], 100, 50);
    c.shutdown().unwrap();
    let mut total = 0;
    for q in qps.iter_mut() {
        let (a, ab) = collect(q);
        total += a.len() + ab;
    }
    assert_eq!(total as u64, n);
    t.stop().unwrap();
}

#[test]
fn disconnect_of_one_queue_leaves_the_others() {
    let (t, lt) = target(threaded(2));
    let mut c = lt.connect(host_opts(2, 64)).unwrap();
    let mut qps = c.take_qpairs();
    let n = submit_writes(&mut qps[0], 0, 40);
    let mut got = 0;
    qps[0].disconnect(T, &mut |_| got += 1).unwrap();
    assert_eq!(got as u64, n);
    assert_eq!(qps[0].state(), QpairState::Dead);
    submit_writes(&mut qps[1], 500, 10);
    let (a, ab) = collect(&mut qps[1]);
    assert_eq!((a.len(), ab), (10, 0));
    // The queue can come back with the same QID.
    qps[0].reconnect().unwrap();
    verify(&mut qps[0], &a);
    drop(qps);
    c.disconnect().unwrap();
    t.stop().unwrap();
}

#[test]
fn controller_delete_with_io_outstanding() {
    let (t, lt) = target(threaded(2));
    let mut c = lt.connect(host_opts(2, 64)).unwrap();
    let cntlid = c.cntlid();
    let mut qps = c.take_qpairs();
    let n = submit_writes(&mut qps[0], 0, 60) + submit_writes(&mut qps[1], 100, 60);
    t.delete_controller(NQN, cntlid).unwrap();
    let mut total = 0;
    for q in qps.iter_mut() {
        let (a, ab) = collect(q);
        total += a.len() + ab;
        assert!(q.reconnect().is_err(), "the controller is gone");
    }
    assert_eq!(total as u64, n);
    assert!(t.subsystem(NQN).unwrap().state().controllers.is_empty());
    t.stop().unwrap();
}

#[test]
fn namespace_removal_drains_and_notifies() {
    let (t, lt) = target(threaded(2));
    t.add_bdev(ram("ram1", 512, 1024)).unwrap();
    let mut c = lt.connect(host_opts(1, 64)).unwrap();
    let mut qps = c.take_qpairs();
    let n = submit_writes(&mut qps[0], 0, 50);
    t.remove_namespace(NQN, 1).unwrap();
    let mut ok = 0;
    let mut invalid = 0;
    qps[0]
        .drain(T, &mut |c| {
            if c.status().is_success() {
                ok += 1;
            } else {
                assert_eq!(c.status(), Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr());
                invalid += 1;
            }
        })
        .unwrap();
    assert_eq!(ok + invalid, n);
    let deadline = Instant::now() + T;
    let mut events = Vec::new();
    while events.is_empty() && Instant::now() < deadline {
        events = c.take_events();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(events, vec![AsyncEvent::NamespaceChanged(vec![1])]);
    assert!(c.active_namespaces().unwrap().is_empty());
    t.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(1),
            bdev: "ram1".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let deadline = Instant::now() + T;
    events.clear();
    while events.is_empty() && Instant::now() < deadline {
        events = c.take_events();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(events, vec![AsyncEvent::NamespaceChanged(vec![1])]);
    assert_eq!(c.namespace_geometry(1).unwrap(), (1024, 512));
    drop(qps);
    c.disconnect().unwrap();
    t.stop().unwrap();
}

#[test]
fn keep_alive_timeout_tears_the_controller_down() {
    let (t, lt) = target(threaded(1));
    let mut o = host_opts(1, 32);
    o.background = false;
    o.kato_ms = 300;
    let mut c = lt.connect(o).unwrap();
    let qps = c.take_qpairs();
    let deadline = Instant::now() + T;
    while qps[0].state() != QpairState::Dead && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(qps[0].state(), QpairState::Dead);
    assert!(t.subsystem(NQN).unwrap().state().controllers.is_empty());
    // A host that keeps alive stays connected past the timeout.
    let mut o = host_opts(1, 32);
    o.kato_ms = 300;
    let mut c2 = lt.connect(o).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let mut q2 = c2.take_qpairs();
    submit_writes(&mut q2[0], 0, 4);
    assert_eq!(collect(&mut q2[0]).0.len(), 4);
    drop(qps);
    drop(q2);
    drop(c);
    c2.disconnect().unwrap();
    t.stop().unwrap();
}
