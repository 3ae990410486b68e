//! A host that vanishes with commands at the backend: the queue pair
//! drains (every command the backend holds completes first), nothing is
//! written to the closed socket, and the engine sees no late completion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use target_core::bdev::{DelayBdev, DelayParams, Latency};
use target_core::nvmf::target::NamespaceParams;
use target_core::spec::{NvmOpcode, SubmissionEntry};
use transport_tcp::ListenerConfig;
use transport_tcp::pdu::{self, CapsuleCmd, Pdu};

#[test]
fn host_gone_with_commands_at_the_backend_drains() {
    let f = fixture(ListenerConfig::default());
    let slow = DelayBdev::new(
        DelayParams {
            name: "slow0".into(),
            latency: Latency::Fixed(Duration::from_millis(300)),
            seed: 1,
        },
        f.target.bdev("ram0").unwrap(),
    )
    .unwrap();
    f.target.add_bdev(Arc::new(slow)).unwrap();
    f.target
        .add_namespace(
            NQN,
            NamespaceParams {
                nsid: Some(2),
                bdev: "slow0".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let (_admin, cntlid) = TestHost::admin(&f.addr, false, false);
    let mut io = TestHost::io(&f.addr, cntlid, 1, false, false);
    let before = f.tcp.connections();
    // 16 reads to the slow namespace, then the host vanishes.
    let mut out = Vec::new();
    for cid in 0..16u16 {
        let mut sqe = SubmissionEntry::nvm_rw(NvmOpcode::READ.0, cid, 2, cid as u64 * 8, 8);
        sqe.set_psdt(target_core::spec::sqe::Psdt::SglMptrContiguous);
        sqe.dptr = [0, 4096 | (0x5a << 56)];
        pdu::encode(
            &Pdu::CapsuleCmd(CapsuleCmd { sqe, data: &[] }),
            &io.codec.clone(),
            &mut out,
        );
    }
    io.send_raw(&out);
    // Let the target fetch them (they sit at the delay backend for 300 ms).
    let pgs = f.target.engine().pgs();
    let fetched = |pgs: &[target_core::nvmf::engine::PgHandle]| {
        pgs.iter()
            .map(|h| h.stats.commands.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let base = fetched(pgs);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetched(pgs) < base + 16 {
        assert!(Instant::now() < deadline, "commands never fetched");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(io);
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.tcp.connections() >= before {
        assert!(Instant::now() < deadline, "connection never torn down");
        std::thread::sleep(Duration::from_millis(10));
    }
    let completions: u64 = pgs
        .iter()
        .map(|h| h.stats.completions.load(Ordering::Relaxed))
        .sum();
    let late: u64 = pgs
        .iter()
        .map(|h| h.stats.late_completions.load(Ordering::Relaxed))
        .sum();
    assert!(
        completions >= 16,
        "the queue pair waited for the backend: {completions} completions"
    );
    assert_eq!(
        late, 0,
        "no completion arrived after its queue pair was gone"
    );
    // The controller and its admin connection are still fine.
    let (_a2, c2) = TestHost::admin(&f.addr, false, false);
    let mut io2 = TestHost::io(&f.addr, c2, 1, false, false);
    let sqe = SubmissionEntry::nvm_rw(NvmOpcode::READ.0, 1, 2, 0, 8);
    assert!(
        io2.exec(sqe, &[], false, 4096)
            .cqe
            .unwrap()
            .status()
            .is_success()
    );
}
