//! Connect, identify and basic I/O over the loop transport.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use target_core::host_cmds::{AdminCommands, NvmCommands};
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::target::ReactorMode;
use target_core::spec::Status;

#[test]
fn connect_identify_write_read_manual() {
    let (t, lt) = target(ReactorMode::Manual(2));
    let mut c = manual_host(&lt, 2);
    assert_eq!(c.version(), 0x0002_0000);
    assert_eq!(c.cap() & 0xffff, 1023);
    let id = c.identify_controller();
    assert_eq!(&id[4..11], b"SN-TEST");
    assert_eq!(c.active_namespaces().unwrap(), vec![1]);
    assert_eq!(c.namespace_geometry(1).unwrap(), (8192, 512));
    let mut qps = c.take_qpairs();
    assert_eq!(qps.len(), 2);
    let q = &mut qps[0];
    let mut buf = IoBuf::new(4096);
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    q.write(1, 8, 8, DataBuf::One(buf), 1).unwrap();
    let mut got = Vec::new();
    while got.is_empty() {
        t.poll();
        q.poll(16, &mut |c| got.push(c));
    }
    assert!(got[0].status().is_success(), "{:?}", got[0].status());
    q.read(1, 8, 8, DataBuf::One(IoBuf::new(4096)), 2).unwrap();
    got.clear();
    while got.is_empty() {
        t.poll();
        q.poll(16, &mut |c| got.push(c));
    }
    assert_eq!(got[0].tag, 2);
    let mut out = [0u8; 4096];
    got[0].buf.copy_out(0, &mut out);
    assert!(out.iter().enumerate().all(|(i, &b)| b == (i * 7) as u8));
    // Out of range: the exact status comes back over the transport.
    q.read(1, 8190, 8, DataBuf::One(IoBuf::new(4096)), 3)
        .unwrap();
    got.clear();
    while got.is_empty() {
        t.poll();
        q.poll(16, &mut |c| got.push(c));
    }
    assert_eq!(got[0].status(), Status::LBA_OUT_OF_RANGE.with_dnr());
    assert_eq!(q.stats().stale, 0);
    drop(qps);
    c.disconnect().unwrap();
    t.stop().unwrap();
}

#[test]
fn threaded_target_serves_io() {
    let (t, lt) = target(threaded(2));
    let mut c = lt.connect(host_opts(2, 64)).unwrap();
    let mut qps = c.take_qpairs();
    for (qi, q) in qps.iter_mut().enumerate() {
        for i in 0..32u64 {
            let mut b = IoBuf::new(512);
            b.as_mut_slice().fill((qi as u8) * 64 + i as u8);
            q.write(1, qi as u64 * 100 + i, 1, DataBuf::One(b), i)
                .unwrap();
        }
        let mut n = 0;
        q.drain(std::time::Duration::from_secs(10), &mut |c| {
            assert!(c.status().is_success());
            n += 1;
        })
        .unwrap();
        assert_eq!(n, 32);
        for i in 0..32u64 {
            q.read(1, qi as u64 * 100 + i, 1, DataBuf::One(IoBuf::new(512)), i)
                .unwrap();
        }
        q.drain(std::time::Duration::from_secs(10), &mut |c| {
            assert!(c.status().is_success());
            let mut x = [0u8; 512];
            c.buf.copy_out(0, &mut x);
            assert!(x.iter().all(|&b| b == (qi as u8) * 64 + c.tag as u8));
        })
        .unwrap();
    }
    drop(qps);
    c.disconnect().unwrap();
    t.stop().unwrap();
}

#[test]
fn server_side_latency_histogram_counts_every_command() {
    let (t, lt) = target(threaded(2));
    // Off by default: no histogram.
    assert!(t.ns_latency(NQN, 1, false).unwrap().is_none());
    t.set_latency_tracking(NQN, 1, true).unwrap();
    let mut c = lt.connect(host_opts(2, 64)).unwrap();
    let mut qps = c.take_qpairs();
    for q in qps.iter_mut() {
        for i in 0..50u64 {
            q.write(1, i, 1, DataBuf::One(IoBuf::new(512)), i).unwrap();
        }
        q.drain(std::time::Duration::from_secs(10), &mut |c| {
            assert!(c.status().is_success())
        })
        .unwrap();
    }
    // Both queue pairs' poll groups contribute; reset clears atomically.
    let h = t.ns_latency(NQN, 1, true).unwrap().unwrap();
    assert_eq!(h.len(), 100);
    assert!(h.max() > 0);
    let per_reactor = t.reactor_latency().unwrap();
    assert_eq!(per_reactor.len(), 2);
    let total: u64 = per_reactor.iter().flatten().map(|h| h.len()).sum();
    assert_eq!(total, 0, "reset cleared every poll group");
    t.set_latency_tracking(NQN, 1, false).unwrap();
    assert!(t.ns_latency(NQN, 1, false).unwrap().is_none());
    assert!(t.ns_latency(NQN, 9, false).is_err());
    c.disconnect().ok();
    t.stop().unwrap();
}
