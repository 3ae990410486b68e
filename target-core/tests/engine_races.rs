//! Engine races, driven deterministically (manual reactors, raw rings):
//! Property Sets fetched in one batch, and subsystem deletion racing
//! Connect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use target_core::bdev::{MallocBdev, MallocParams};
use target_core::iobuf::DataBuf;
use target_core::nvmf::raw::{RawQueue, connect_data};
use target_core::nvmf::target::{NamespaceParams, ReactorMode};
use target_core::nvmf::{EngineOptions, NvmfTarget, SubsystemParams, TargetOptions};
use target_core::spec::{CompletionEntry, FabricsType, Status, SubmissionEntry};

const NQN: &str = "nqn.2026-11.io.nvmf-rs:races";
const HOST: &str = "nqn.2026-11.io.nvmf-rs:races-host";
const CC: u32 = 0x14;
const CSTS: u32 = 0x1c;
const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
const CC_SHN_NORMAL: u32 = 1 << 14;

fn target(pgs: usize) -> Arc<NvmfTarget> {
    NvmfTarget::start(TargetOptions {
        engine: EngineOptions {
            drain_timeout: Duration::from_millis(500),
            ..EngineOptions::default()
        },
        reactors: ReactorMode::Manual(pgs),
    })
    .unwrap()
}

fn add_subsystem(t: &NvmfTarget) {
    t.add_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial: "RACES".into(),
        model: "races".into(),
        max_namespaces: 4,
        allow_any_host: true,
        hosts: vec![],
    })
    .unwrap();
    t.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(1),
            bdev: "ram".into(),
            ..Default::default()
        },
    )
    .unwrap();
}

fn with_ram(t: &NvmfTarget) {
    t.add_bdev(Arc::new(
        MallocBdev::new(MallocParams {
            name: "ram".into(),
            block_size: 512,
            num_blocks: 64,
        })
        .unwrap(),
    ))
    .unwrap();
}

fn prop_set(offset: u32, value: u32) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::fabrics(FabricsType::PROPERTY_SET, 0);
    sqe.cdw10 = 0;
    sqe.cdw11 = offset;
    sqe.cdw12 = value;
    sqe
}

fn prop_get(q: &mut RawQueue, offset: u32) -> u32 {
    let mut sqe = SubmissionEntry::fabrics(FabricsType::PROPERTY_GET, 0);
    sqe.cdw10 = 0;
    sqe.cdw11 = offset;
    let (cqe, _) = q.execute(sqe, DataBuf::None).expect("property get");
    assert!(cqe.status().is_success());
    cqe.dw0
}

fn admin(t: &Arc<NvmfTarget>) -> RawQueue {
    let mut q = RawQueue::open(t, 32).unwrap();
    q.timeout = Duration::from_secs(5);
    let cqe = q
        .connect(0, 32, 0, connect_data(&[7; 16], 0xffff, NQN, HOST))
        .expect("connect answered");
    assert!(cqe.status().is_success(), "{:?}", cqe.status());
    q
}

/// Submits `sqes` without polling (so one poll fetches them in one batch),
/// then collects exactly `sqes.len()` responses; more would be a bug too.
fn batch(
    t: &NvmfTarget,
    q: &mut RawQueue,
    sqes: &[SubmissionEntry],
) -> Vec<(u16, CompletionEntry)> {
    let cids: Vec<u16> = sqes
        .iter()
        .map(|s| q.submit(*s, DataBuf::None).unwrap())
        .collect();
    let mut got = Vec::new();
    for _ in &cids {
        let r = q.next_response().expect("every Property Set is answered");
        got.push((r.cqe.cid, r.cqe));
    }
    for _ in 0..200 {
        t.poll();
    }
    assert!(
        q.rings_mut().reap().is_none(),
        "a Property Set was answered twice"
    );
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        cids,
        "answers out of order"
    );
    got
}

#[test]
fn two_property_sets_in_one_batch_are_each_answered_once_in_order() {
    let t = target(2);
    with_ram(&t);
    add_subsystem(&t);
    let mut q = admin(&t);
    let (cqe, _) = q.execute(prop_set(CC, CC_ENABLE), DataBuf::None).unwrap();
    assert!(cqe.status().is_success());
    assert_eq!(prop_get(&mut q, CSTS) & 1, 1);

    // Reset then enable, fetched together: the enable must not overtake
    // the reset, and the controller ends up ready.
    let got = batch(&t, &mut q, &[prop_set(CC, 0), prop_set(CC, CC_ENABLE)]);
    assert!(got.iter().all(|g| g.1.status().is_success()), "{got:?}");
    assert_eq!(prop_get(&mut q, CSTS) & 1, 1, "enable ran before the reset");

    // Reset then shutdown: both start a teardown; the first answer used to
    // be overwritten by the second.
    let got = batch(&t, &mut q, &[prop_set(CC, 0), prop_set(CC, CC_SHN_NORMAL)]);
    assert!(got.iter().all(|g| g.1.status().is_success()), "{got:?}");
    assert_eq!(
        (prop_get(&mut q, CSTS) >> 2) & 3,
        2,
        "shutdown not complete"
    );

    // Three at once, the middle one invalid: answered in order too.
    let got = batch(
        &t,
        &mut q,
        &[prop_set(CC, 0), prop_set(0x30, 1), prop_set(CC, CC_ENABLE)],
    );
    assert!(got[0].1.status().is_success());
    assert!(got[1].1.status().same_code(Status::INVALID_FIELD));
    assert!(got[2].1.status().is_success());
    assert_eq!(prop_get(&mut q, CSTS) & 1, 1);
    drop(q);
    t.stop().unwrap();
}

#[test]
fn subsystem_delete_racing_connect_leaves_no_orphan_controller() {
    let t = target(2);
    with_ram(&t);
    let (mut refused, mut deleted) = (0, 0);
    for i in 0..1000u32 {
        add_subsystem(&t);
        let s = t.subsystem(NQN).unwrap();
        let mut q = RawQueue::open(&t, 32).unwrap();
        q.timeout = Duration::from_secs(5);
        q.submit(
            target_core::nvmf::raw::connect_sqe(0, 32, 0),
            DataBuf::One(connect_data(&[7; 16], 0xffff, NQN, HOST)),
        )
        .unwrap();
        // Let the Connect land at different points: before the deletion
        // takes its list of controllers, or during its namespace removal.
        for _ in 0..(i % 3) {
            t.poll();
        }
        t.remove_subsystem(NQN).unwrap();
        let r = q.next_response().expect("the Connect is answered");
        if r.cqe.status().is_success() {
            // It joined before the deletion: it must have been torn down.
            for _ in 0..1000 {
                if q.rings().target_done() {
                    break;
                }
                t.poll();
            }
            assert!(
                q.rings().target_done(),
                "iteration {i}: controller survived"
            );
            deleted += 1;
        } else {
            assert!(
                r.cqe.status().same_code(Status::CONNECT_INVALID_PARAMETERS),
                "{:?}",
                r.cqe.status()
            );
            refused += 1;
        }
        assert!(
            s.state().controllers.is_empty(),
            "iteration {i}: orphan controller in a deleted subsystem"
        );
        assert!(t.engine().subsystems().is_empty());
    }
    // Both windows were met.
    assert!(
        refused > 0 && deleted > 0,
        "refused {refused}, deleted {deleted}"
    );
    t.stop().unwrap();
}

#[test]
fn subsystem_delete_racing_connect_on_reactor_threads() {
    let t = NvmfTarget::start(TargetOptions {
        engine: EngineOptions {
            drain_timeout: Duration::from_millis(500),
            ..EngineOptions::default()
        },
        reactors: ReactorMode::Threads {
            cores: vec![None; 2],
            idle_backoff: Duration::from_micros(20),
        },
    })
    .unwrap();
    with_ram(&t);
    let (mut refused, mut deleted) = (0, 0);
    for i in 0..1000u32 {
        add_subsystem(&t);
        let s = t.subsystem(NQN).unwrap();
        let mut q = RawQueue::open(&t, 32).unwrap();
        q.timeout = Duration::from_secs(5);
        let t2 = t.clone();
        let r = std::thread::scope(|sc| {
            let conn = sc.spawn(|| {
                q.connect(0, 32, 0, connect_data(&[7; 16], 0xffff, NQN, HOST))
                    .expect("the Connect is answered")
            });
            if i % 2 == 0 {
                std::thread::yield_now();
            }
            t2.remove_subsystem(NQN).unwrap();
            conn.join().unwrap()
        });
        if r.status().is_success() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !q.rings().target_done() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(100));
            }
            assert!(
                q.rings().target_done(),
                "iteration {i}: controller survived"
            );
            deleted += 1;
        } else {
            assert!(r.status().same_code(Status::CONNECT_INVALID_PARAMETERS));
            refused += 1;
        }
        assert!(
            s.state().controllers.is_empty(),
            "iteration {i}: orphan controller in a deleted subsystem"
        );
    }
    eprintln!("threaded race: {refused} Connects refused, {deleted} deleted with the subsystem");
    assert_eq!(refused + deleted, 1000);
    t.stop().unwrap();
}
