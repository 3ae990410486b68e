//! The blktests nvme/040 analogue: teardown while I/O runs.
//!
//! Four queue pairs at depth 128 run reads and writes on a `delay`
//! namespace (0–2 ms) and an `error` namespace (injected read and write
//! failures), while the main thread cycles through controller reset,
//! shutdown and reconnect, disconnect and reconnect, controller deletion by
//! the target, and namespace removal and re-adding. Checked: every command
//! completes exactly once (by tag and by the host's CID sequence), no stale
//! completion ever reaches a host queue, every status is one the situation
//! allows, and every acknowledged write reads back at the end.
//!
//! `NVMF_STRESS_CYCLES=N` runs N cycles (default 200); the ignored test
//! `teardown_stress_long` runs 20,000 unless told otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use target_core::bdev::error::Trigger;
use target_core::bdev::*;
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::SubsystemParams;
use target_core::nvmf::target::NamespaceParams;
use target_core::spec::Status;
use transport_loop::{
    ConnectOptions, HostController, HostQpair, LoopTransport, QpairConnector, QpairState,
};

const NQN: &str = "nqn.2026-11.io.nvmf-rs:stress";
const HOST: &str = "nqn.2026-11.io.nvmf-rs:stress-host";
const WORKERS: usize = 4;
const DEPTH: u16 = 129; // 128 usable slots
const REGION: u64 = 1024; // blocks per worker per namespace
const BS: usize = 512;

fn block(lba: u64, version: u64) -> IoBuf {
    let mut b = IoBuf::new(BS);
    let s = b.as_mut_slice();
    s[..8].copy_from_slice(&lba.to_le_bytes());
    s[8..16].copy_from_slice(&version.to_le_bytes());
    for (i, x) in s[16..].iter_mut().enumerate() {
        *x = (lba as u8) ^ (version as u8).rotate_left(3) ^ i as u8;
    }
    b
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Write { ns: u32, lba: u64, version: u64 },
    Read { ns: u32, lba: u64 },
}

#[derive(Default, Debug)]
struct Tally {
    submitted: u64,
    completed: u64,
    statuses: HashMap<String, u64>,
}

struct Worker {
    qid: u16,
    qp: Option<HostQpair>,
    /// Last acknowledged version per (ns index, block); None = unknown.
    acked: [Vec<Option<u64>>; 2],
    busy: [Vec<bool>; 2],
    outstanding: HashMap<u64, Op>,
    next_tag: u64,
    version: u64,
    rng: SmallRng,
    tally: Tally,
    host_stale: u64,
}

impl Worker {
    fn new(w: usize) -> Self {
        Self {
            qid: w as u16 + 1,
            qp: None,
            acked: [vec![None; REGION as usize], vec![None; REGION as usize]],
            busy: [vec![false; REGION as usize], vec![false; REGION as usize]],
            outstanding: HashMap::new(),
            next_tag: (w as u64) << 48,
            version: 1,
            rng: SmallRng::seed_from_u64(w as u64 + 11),
            tally: Tally::default(),
            host_stale: 0,
        }
    }

    fn base(&self) -> u64 {
        (self.qid as u64 - 1) * REGION
    }

    fn submit_some(&mut self) {
        let base = self.base();
        let Some(qp) = self.qp.as_mut() else { return };
        while qp.state() == QpairState::Live && qp.outstanding() < qp.depth() as u32 {
            let ni = self.rng.random_range(0..2usize);
            let off = self.rng.random_range(0..REGION) as usize;
            if self.busy[ni][off] {
                continue;
            }
            let ns = ni as u32 + 1;
            let lba = base + off as u64;
            let tag = self.next_tag;
            let (op, r) = if self.acked[ni][off].is_some() && self.rng.random_bool(0.4) {
                (
                    Op::Read { ns, lba },
                    qp.read(ns, lba, 1, DataBuf::One(IoBuf::new(BS)), tag),
                )
            } else {
                self.version += 1;
                let v = self.version;
                (
                    Op::Write {
                        ns,
                        lba,
                        version: v,
                    },
                    qp.write(ns, lba, 1, DataBuf::One(block(lba, v)), tag),
                )
            };
            if r.is_err() {
                break;
            }
            self.next_tag += 1;
            self.busy[ni][off] = true;
            self.outstanding.insert(tag, op);
            self.tally.submitted += 1;
        }
    }

    fn reap(&mut self) -> usize {
        let base = self.base();
        let Some(qp) = self.qp.as_mut() else { return 0 };
        let mut done = Vec::new();
        qp.poll(256, &mut |c| done.push(c));
        let n = done.len();
        for c in done {
            let op = self.outstanding.remove(&c.tag).unwrap_or_else(|| {
                panic!(
                    "completion for tag {:#x} that is not outstanding (double completion?)",
                    c.tag
                )
            });
            self.tally.completed += 1;
            let st = c.status();
            *self.tally.statuses.entry(format!("{st:?}")).or_default() += 1;
            let allowed = st.is_success()
                || st.same_code(Status::ABORTED_SQ_DELETION)
                || st.same_code(Status::INVALID_NAMESPACE_OR_FORMAT)
                || st.same_code(Status::UNRECOVERED_READ_ERROR)
                || st.same_code(Status::WRITE_FAULT)
                || st.same_code(Status::ABORT_REQUESTED);
            assert!(allowed, "unexpected status {st:?} for {op:?}");
            match op {
                Op::Write { ns, lba, version } => {
                    let (ni, off) = ((ns - 1) as usize, (lba - base) as usize);
                    self.busy[ni][off] = false;
                    // A failed write may or may not have reached the media.
                    self.acked[ni][off] = if st.is_success() { Some(version) } else { None };
                }
                Op::Read { ns, lba } => {
                    let (ni, off) = ((ns - 1) as usize, (lba - base) as usize);
                    self.busy[ni][off] = false;
                    if st.is_success()
                        && let Some(v) = self.acked[ni][off]
                    {
                        let mut got = vec![0u8; BS];
                        c.buf.copy_out(0, &mut got);
                        assert_eq!(
                            &got[..],
                            block(lba, v).as_slice(),
                            "ns {ns} lba {lba}: acknowledged version {v} not read back"
                        );
                    }
                }
            }
        }
        n
    }

    /// One step: keep the queue busy, or replace it once it is finished.
    fn step(&mut self, conn: &Mutex<Option<QpairConnector>>) {
        match self.qp.as_ref().map(|q| (q.state(), q.outstanding())) {
            None => {
                let c = conn.lock().unwrap().clone();
                if let Some(c) = c
                    && let Ok(q) = c.connect(self.qid, DEPTH)
                {
                    self.qp = Some(q);
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Some((QpairState::Live, _)) => {
                self.submit_some();
                if self.reap() == 0 {
                    std::thread::yield_now();
                }
            }
            Some((_, n)) if n > 0 => {
                if self.reap() == 0 {
                    std::thread::yield_now();
                }
            }
            Some(_) => {
                // Dead and empty: nothing may arrive any more.
                assert_eq!(
                    self.reap(),
                    0,
                    "a completion arrived after its queue was destroyed"
                );
                let mut q = self.qp.take().unwrap();
                self.host_stale += q.stats().stale;
                assert_eq!(q.stats().stale, 0, "stale completions reached the host");
                if q.reconnect().is_ok() {
                    self.qp = Some(q);
                }
            }
        }
    }
}

fn connect(lt: &Arc<LoopTransport>) -> HostController {
    let mut o = ConnectOptions::new(NQN, HOST);
    o.io_queues = WORKERS as u16 + 1; // one spare for the final verification
    o.queue_depth = DEPTH;
    o.kato_ms = 5_000;
    o.timeout = Duration::from_secs(20);
    let mut c = lt.connect(o).expect("connect");
    drop(c.take_qpairs()); // workers connect their own
    c
}

fn run(cycles: u64) {
    let t = tests::threaded_target(2, Duration::from_millis(500)).unwrap();
    let size = REGION * WORKERS as u64;
    t.add_bdev(tests::ram("ram-d", BS as u32, size).unwrap())
        .unwrap();
    t.add_bdev(tests::ram("ram-e", BS as u32, size).unwrap())
        .unwrap();
    let delay = DelayBdev::new(
        DelayParams {
            name: "delay0".into(),
            latency: Latency::Uniform {
                min: Duration::ZERO,
                max: Duration::from_millis(2),
            },
            seed: 40,
        },
        t.bdev("ram-d").unwrap(),
    )
    .unwrap();
    t.add_bdev(Arc::new(delay)).unwrap();
    let rules = vec![
        ErrorRule {
            op: OpMatch::Op(IoOp::Read),
            lba_range: None,
            trigger: Trigger::Probability(0.02),
            count: None,
            action: ErrorAction::Fail(Status::UNRECOVERED_READ_ERROR),
        },
        ErrorRule {
            op: OpMatch::Op(IoOp::Write),
            lba_range: None,
            trigger: Trigger::Probability(0.01),
            count: None,
            action: ErrorAction::Fail(Status::WRITE_FAULT),
        },
    ];
    let err = ErrorBdev::new(
        ErrorParams {
            name: "err0".into(),
            rules,
            seed: 40,
        },
        t.bdev("ram-e").unwrap(),
    )
    .unwrap();
    t.add_bdev(Arc::new(err)).unwrap();
    t.add_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial: "STRESS".into(),
        model: "nvme/040 analogue".into(),
        max_namespaces: 4,
        allow_any_host: true,
        hosts: vec![],
    })
    .unwrap();
    t.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(1),
            bdev: "delay0".into(),
            ..Default::default()
        },
    )
    .unwrap();
    t.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(2),
            bdev: "err0".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let lt = LoopTransport::new(t.clone());
    lt.listen(NQN);

    let mut ctrl = Some(connect(&lt));
    let conn = Arc::new(Mutex::new(ctrl.as_ref().map(HostController::connector)));
    let stop = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (conn, stop, steps) = (conn.clone(), stop.clone(), steps.clone());
            std::thread::spawn(move || {
                let mut wk = Worker::new(w);
                while !stop.load(Ordering::Acquire) {
                    wk.step(&conn);
                    steps.fetch_add(1, Ordering::Relaxed);
                }
                // Finish: drain what is outstanding (bounded).
                let deadline = Instant::now() + Duration::from_secs(30);
                while !wk.outstanding.is_empty() && Instant::now() < deadline {
                    if wk.qp.is_none() {
                        break;
                    }
                    if wk.reap() == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                assert!(
                    wk.outstanding.is_empty(),
                    "worker {w}: {} commands never completed",
                    wk.outstanding.len()
                );
                wk
            })
        })
        .collect();

    let mut rng = SmallRng::seed_from_u64(40);
    let t0 = Instant::now();
    let mut actions: HashMap<&str, u64> = HashMap::new();
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_micros(rng.random_range(500..4000)));
        let action =
            ["reset", "shutdown", "disconnect", "delete", "ns-remove"][(cycle % 5) as usize];
        *actions.entry(action).or_default() += 1;
        match action {
            "reset" => ctrl.as_mut().unwrap().reset().expect("reset"),
            "shutdown" | "disconnect" | "delete" => {
                *conn.lock().unwrap() = None;
                let c = ctrl.take().unwrap();
                match action {
                    "shutdown" => c.shutdown().expect("shutdown"),
                    "disconnect" => c.disconnect().expect("disconnect"),
                    _ => {
                        t.delete_controller(NQN, c.cntlid())
                            .expect("delete controller");
                        drop(c);
                    }
                }
                let c = connect(&lt);
                *conn.lock().unwrap() = Some(c.connector());
                ctrl = Some(c);
            }
            _ => {
                t.remove_namespace(NQN, 2).expect("remove namespace");
                t.add_namespace(
                    NQN,
                    NamespaceParams {
                        nsid: Some(2),
                        bdev: "err0".into(),
                        ..Default::default()
                    },
                )
                .expect("re-add namespace");
            }
        }
    }
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Release);
    let workers: Vec<Worker> = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect();

    // Every acknowledged write reads back, on a fresh queue.
    let c = ctrl.as_ref().unwrap();
    let mut q = c
        .create_qpair(WORKERS as u16 + 1, DEPTH)
        .expect("verification queue");
    let mut checked = 0u64;
    let (mut total, mut statuses) = (Tally::default(), HashMap::<String, u64>::new());
    for wk in &workers {
        total.submitted += wk.tally.submitted;
        total.completed += wk.tally.completed;
        for (k, v) in &wk.tally.statuses {
            *statuses.entry(k.clone()).or_default() += v;
        }
        assert_eq!(
            wk.tally.submitted, wk.tally.completed,
            "worker {}: submitted != completed",
            wk.qid
        );
        assert_eq!(wk.host_stale, 0);
        for ni in 0..2 {
            for (off, v) in wk.acked[ni].iter().enumerate() {
                let Some(v) = *v else { continue };
                let lba = wk.base() + off as u64;
                q.read(ni as u32 + 1, lba, 1, DataBuf::One(IoBuf::new(BS)), lba)
                    .unwrap();
                q.drain(Duration::from_secs(10), &mut |cpl| {
                    if cpl.status().is_success() {
                        let mut got = vec![0u8; BS];
                        cpl.buf.copy_out(0, &mut got);
                        assert_eq!(
                            &got[..],
                            block(lba, v).as_slice(),
                            "final check ns {} lba {lba}",
                            ni + 1
                        );
                        checked += 1;
                    } else {
                        // Only the error namespace may fail a read, by injection.
                        assert!(
                            ni == 1 && cpl.status().same_code(Status::UNRECOVERED_READ_ERROR),
                            "{:?}",
                            cpl.status()
                        );
                    }
                })
                .unwrap();
            }
        }
    }
    let late: u64 = t
        .engine()
        .pgs()
        .iter()
        .map(|h| h.stats.late_completions.load(Ordering::Relaxed))
        .sum();
    let resets: u64 = t
        .engine()
        .pgs()
        .iter()
        .map(|h| h.stats.backend_resets.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "teardown stress: {cycles} cycles {actions:?} in {elapsed:.1?}; {} commands, all completed once; {checked} acknowledged blocks read back; late completions dropped by the target: {late}; backend resets: {resets}; statuses {statuses:?}",
        total.submitted
    );
    assert!(
        total.submitted > cycles,
        "too little I/O ran ({})",
        total.submitted
    );
    assert!(
        statuses.get("ABORTED_SQ_DELETION").copied().unwrap_or(0)
            + statuses.keys().filter(|k| k.starts_with("SUCCESS")).count() as u64
            > 0
    );
    drop(q);
    ctrl.take().unwrap().disconnect().unwrap();
    t.stop().unwrap();
}

#[test]
fn teardown_stress() {
    let cycles = std::env::var("NVMF_STRESS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    run(cycles);
}

#[test]
#[ignore = "long mode: hours with NVMF_STRESS_CYCLES"]
fn teardown_stress_long() {
    let cycles = std::env::var("NVMF_STRESS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    run(cycles);
}
