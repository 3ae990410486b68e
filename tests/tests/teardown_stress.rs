//! The blktests nvme/040 analogue: teardown while I/O runs.
//!
//! Four host queue pairs at depth 128 run reads and writes on a `delay`
//! namespace (0–2 ms) and an `error` namespace (injected read and write
//! failures, and *held* commands that only a backend reset gives back, so
//! drains really run out of time and escalate), while the main thread
//! cycles through: controller reset, shutdown and reconnect, disconnect and
//! reconnect, controller deletion by the target, namespace removal and
//! re-adding, subsystem deletion and re-creation, and a full target stop and
//! restart on the same block devices.
//!
//! What cannot pass by accident:
//! * every teardown is counted with the commands at the backend when it
//!   struck (a counting layer under both namespaces), and most must have met
//!   in-flight work;
//! * before each teardown every worker must have completed, successfully,
//!   a command it submitted after the previous one: a worker that dies or
//!   stalls fails the run instead of thinning it;
//! * backend resets (escalations) must have happened;
//! * every command completes exactly once (by tag), every host queue is
//!   checked for stale completions when it is retired and at the end;
//! * data: a write that succeeded must read back as its data; a write that
//!   failed may have landed or not, so the block must read back as its old
//!   or its new data ("reported failed but written" is counted); any read,
//!   during the run and at the end over every block, must match one of the
//!   versions allowed at that point.
//!
//! The default test runs a fixed, short mix. The long run is the ignored
//! test: `NVMF_STRESS_CYCLES=N cargo test -p tests --test teardown_stress
//! -- --ignored` (default 20,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use target_core::bdev::error::Trigger;
use target_core::bdev::*;
use target_core::host_cmds::NvmCommands;
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::target::NamespaceParams;
use target_core::nvmf::{NvmfTarget, SubsystemParams};
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
/// The target's drain bound unless `NVMF_STRESS_DRAIN_MS` says otherwise:
/// the held commands wait this long before escalation, so it sets the pace
/// of long runs.
const DRAIN: Duration = Duration::from_millis(100);
const DEFAULT_CYCLES: u64 = 105;
/// How long a worker may take to show progress after a teardown.
const PROGRESS_LIMIT: Duration = Duration::from_secs(30);
const ACTIONS: [&str; 7] = [
    "reset",
    "shutdown",
    "disconnect",
    "delete",
    "ns-remove",
    "subsystem-delete",
    "target-stop",
];

fn block(lba: u64, version: u64) -> IoBuf {
    let mut b = IoBuf::new(BS);
    if version == 0 {
        return b; // never written: zeros
    }
    let s = b.as_mut_slice();
    s[..8].copy_from_slice(&lba.to_le_bytes());
    s[8..16].copy_from_slice(&version.to_le_bytes());
    for (i, x) in s[16..].iter_mut().enumerate() {
        *x = (lba as u8) ^ (version as u8).rotate_left(3) ^ i as u8;
    }
    b
}

// ---- a counting layer: commands at the backend right now ---------------

#[derive(Debug)]
struct Counting {
    info: BdevInfo,
    inner: BdevRef,
    at_backend: Arc<AtomicI64>,
}

#[derive(Debug)]
struct CountingChannel {
    inner: Box<dyn IoChannel>,
    at_backend: Arc<AtomicI64>,
}

impl BlockDevice for Counting {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(CountingChannel {
            inner: self.inner.open_channel()?,
            at_backend: self.at_backend.clone(),
        }))
    }
}

impl IoChannel for CountingChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        self.inner.submit(io)?;
        self.at_backend.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn poll(&mut self, done: &mut dyn FnMut(BdevCompletion)) -> usize {
        let at = &self.at_backend;
        self.inner.poll(&mut |c| {
            at.fetch_sub(1, Ordering::Relaxed);
            done(c)
        })
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn reset(&mut self) -> usize {
        self.inner.reset()
    }
}

fn counting(name: &str, inner: BdevRef, at: &Arc<AtomicI64>) -> BdevRef {
    let mut info = inner.info().clone();
    info.name = name.into();
    Arc::new(Counting {
        info,
        inner,
        at_backend: at.clone(),
    })
}

// ---- workers -----------------------------------------------------------

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
    /// Failed writes later seen on the media.
    failed_but_written: u64,
    /// Failed writes later seen not to have landed.
    failed_not_written: u64,
    reads_checked: u64,
    queues_retired: u64,
}

/// What a block may hold: its last acknowledged version, plus versions of
/// writes that failed since (they may or may not have landed).
#[derive(Clone, Debug, Default)]
struct BlockState {
    committed: u64,
    maybe: Vec<u64>,
}

impl BlockState {
    /// Checks data read back; returns `true` when it was a failed write's
    /// (reported failed but written).
    fn observe(&mut self, lba: u64, got: &[u8], what: &str) -> bool {
        if got == block(lba, self.committed).as_slice() {
            self.maybe.clear();
            return false;
        }
        if let Some(&v) = self
            .maybe
            .iter()
            .find(|&&v| got == block(lba, v).as_slice())
        {
            self.committed = v;
            self.maybe.clear();
            return true;
        }
        panic!(
            "{what}: lba {lba} holds none of the allowed versions (acknowledged {}, failed {:?}); first bytes {:?}",
            self.committed,
            self.maybe,
            &got[..16]
        );
    }

    /// Checks a read and counts what it says about failed writes.
    fn check(&mut self, lba: u64, got: &[u8], what: &str, tally: &mut Tally) {
        let had_maybe = !self.maybe.is_empty();
        if self.observe(lba, got, what) {
            tally.failed_but_written += 1;
        } else if had_maybe {
            tally.failed_not_written += 1;
        }
        tally.reads_checked += 1;
    }
}

struct Shared {
    conn: Mutex<Option<QpairConnector>>,
    stop: AtomicBool,
    /// Teardowns finished so far.
    epoch: AtomicU64,
    /// Per worker: highest epoch in which a command it submitted then
    /// completed successfully.
    progress: Vec<AtomicU64>,
}

struct Worker {
    w: usize,
    qid: u16,
    qp: Option<HostQpair>,
    blocks: [Vec<BlockState>; 2],
    busy: [Vec<bool>; 2],
    outstanding: HashMap<u64, (Op, u64)>,
    next_tag: u64,
    version: u64,
    rng: SmallRng,
    tally: Tally,
    host_stale: u64,
}

impl Worker {
    fn new(w: usize) -> Self {
        Self {
            w,
            qid: w as u16 + 1,
            qp: None,
            blocks: [
                vec![BlockState::default(); REGION as usize],
                vec![BlockState::default(); REGION as usize],
            ],
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

    fn submit_some(&mut self, epoch: u64) {
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
            let (op, r) = if self.rng.random_bool(0.4) {
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
            self.outstanding.insert(tag, (op, epoch));
            self.tally.submitted += 1;
        }
    }

    fn reap(&mut self, sh: &Shared) -> usize {
        let base = self.base();
        let Some(qp) = self.qp.as_mut() else { return 0 };
        let mut done = Vec::new();
        qp.poll(256, &mut |c| done.push(c));
        let n = done.len();
        for c in done {
            let (op, epoch) = self.outstanding.remove(&c.tag).unwrap_or_else(|| {
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
            if st.is_success() {
                sh.progress[self.w].fetch_max(epoch, Ordering::AcqRel);
            }
            match op {
                Op::Write { ns, lba, version } => {
                    let (ni, off) = ((ns - 1) as usize, (lba - base) as usize);
                    self.busy[ni][off] = false;
                    let b = &mut self.blocks[ni][off];
                    if st.is_success() {
                        b.committed = version;
                        b.maybe.clear();
                    } else {
                        b.maybe.push(version);
                    }
                }
                Op::Read { ns, lba } => {
                    let (ni, off) = ((ns - 1) as usize, (lba - base) as usize);
                    self.busy[ni][off] = false;
                    if st.is_success() {
                        let mut got = vec![0u8; BS];
                        c.buf.copy_out(0, &mut got);
                        self.blocks[ni][off].check(lba, &got, "read during run", &mut self.tally);
                    }
                }
            }
        }
        n
    }

    fn retire_queue(&mut self, q: &HostQpair) {
        let stale = q.stats().stale;
        assert_eq!(
            stale, 0,
            "worker {}: stale completions reached the host",
            self.w
        );
        self.host_stale += stale;
        self.tally.queues_retired += 1;
    }

    /// One step: keep the queue busy, or replace it once it is finished.
    fn step(&mut self, sh: &Shared) {
        let epoch = sh.epoch.load(Ordering::Acquire);
        match self.qp.as_ref().map(|q| (q.state(), q.outstanding())) {
            None => {
                let c = sh.conn.lock().unwrap().clone();
                if let Some(c) = c
                    && let Ok(q) = c.connect(self.qid, DEPTH)
                {
                    self.qp = Some(q);
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Some((QpairState::Live, _)) => {
                self.submit_some(epoch);
                if self.reap(sh) == 0 {
                    std::thread::yield_now();
                }
            }
            Some((_, n)) if n > 0 => {
                if self.reap(sh) == 0 {
                    std::thread::yield_now();
                }
            }
            Some(_) => {
                // Dead and empty: nothing may arrive any more.
                assert_eq!(
                    self.reap(sh),
                    0,
                    "a completion arrived after its queue was destroyed"
                );
                let mut q = self.qp.take().unwrap();
                self.retire_queue(&q);
                if q.reconnect().is_ok() {
                    self.qp = Some(q);
                }
            }
        }
    }
}

// ---- the target side ---------------------------------------------------

struct Devs {
    ns1: BdevRef,
    ns2: BdevRef,
    err: Arc<ErrorBdev>,
    at_backend: Arc<AtomicI64>,
}

fn error_rules() -> Vec<ErrorRule> {
    vec![
        // Held until a backend reset: drains run out of time and escalate.
        ErrorRule {
            op: OpMatch::Any,
            lba_range: None,
            trigger: Trigger::Probability(0.0004),
            count: None,
            action: ErrorAction::Hold,
        },
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
    ]
}

fn devs() -> Devs {
    let size = REGION * WORKERS as u64;
    let at_backend = Arc::new(AtomicI64::new(0));
    let delay = DelayBdev::new(
        DelayParams {
            name: "delay0".into(),
            latency: Latency::Uniform {
                min: Duration::ZERO,
                max: Duration::from_millis(2),
            },
            seed: 40,
        },
        tests::ram("ram-d", BS as u32, size).unwrap(),
    )
    .unwrap();
    let err = Arc::new(
        ErrorBdev::new(
            ErrorParams {
                name: "err0".into(),
                rules: error_rules(),
                seed: 40,
            },
            tests::ram("ram-e", BS as u32, size).unwrap(),
        )
        .unwrap(),
    );
    Devs {
        ns1: counting("ns1dev", Arc::new(delay), &at_backend),
        ns2: counting("ns2dev", err.clone(), &at_backend),
        err,
        at_backend,
    }
}

fn add_namespace(t: &NvmfTarget, nsid: u32) {
    t.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(nsid),
            bdev: format!("ns{nsid}dev"),
            ..Default::default()
        },
    )
    .expect("add namespace");
}

fn add_subsystem(t: &NvmfTarget) {
    t.add_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial: "STRESS".into(),
        model: "nvme/040 analogue".into(),
        max_namespaces: 4,
        allow_any_host: true,
        hosts: vec![],
    })
    .expect("add subsystem");
    add_namespace(t, 1);
    add_namespace(t, 2);
}

fn drain_bound() -> Duration {
    std::env::var("NVMF_STRESS_DRAIN_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DRAIN, Duration::from_millis)
}

fn start(d: &Devs) -> (Arc<NvmfTarget>, Arc<LoopTransport>) {
    let t = tests::threaded_target(2, drain_bound()).unwrap();
    t.add_bdev(d.ns1.clone()).unwrap();
    t.add_bdev(d.ns2.clone()).unwrap();
    add_subsystem(&t);
    let lt = LoopTransport::new(t.clone());
    lt.listen(NQN);
    (t, lt)
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

/// Counters of a target, kept across restarts.
#[derive(Default, Debug)]
struct TargetTotals {
    resets: u64,
    late: u64,
    failed: u64,
    commands: u64,
    responses: u64,
}

fn add_totals(t: &NvmfTarget, tot: &mut TargetTotals) {
    for h in t.engine().pgs() {
        tot.resets += h.stats.backend_resets.load(Ordering::Relaxed);
        tot.late += h.stats.late_completions.load(Ordering::Relaxed);
        tot.failed += h.stats.controllers_failed.load(Ordering::Relaxed);
        tot.commands += h.stats.commands.load(Ordering::Relaxed);
        tot.responses += h.stats.responses.load(Ordering::Relaxed);
    }
}

fn run(cycles: u64) {
    println!(
        "teardown stress: {cycles} cycles, drain bound {:?}",
        drain_bound()
    );
    let d = devs();
    let (mut t, mut lt) = start(&d);
    let mut ctrl = Some(connect(&lt));
    let sh = Arc::new(Shared {
        conn: Mutex::new(ctrl.as_ref().map(HostController::connector)),
        stop: AtomicBool::new(false),
        epoch: AtomicU64::new(0),
        progress: (0..WORKERS).map(|_| AtomicU64::new(0)).collect(),
    });
    let handles: Vec<_> = (0..WORKERS)
        .map(|w| {
            let sh = sh.clone();
            std::thread::spawn(move || {
                let mut wk = Worker::new(w);
                while !sh.stop.load(Ordering::Acquire) {
                    wk.step(&sh);
                }
                // Finish: drain what is outstanding (bounded).
                let deadline = Instant::now() + Duration::from_secs(30);
                while !wk.outstanding.is_empty() && Instant::now() < deadline {
                    if wk.qp.is_none() {
                        break;
                    }
                    if wk.reap(&sh) == 0 {
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
    let mut met_inflight = 0u64;
    let mut inflight_sum = 0u64;
    let mut inflight_max = 0i64;
    let mut totals = TargetTotals::default();
    let mut shown = Instant::now();
    for cycle in 0..cycles {
        if shown.elapsed() >= Duration::from_secs(30) {
            shown = Instant::now();
            let el = t0.elapsed().as_secs_f64();
            println!(
                "  cycle {cycle}/{cycles} after {el:.0} s ({:.1} ms per cycle), {met_inflight} met in-flight work",
                el * 1000.0 / cycle.max(1) as f64
            );
        }
        // Every worker has done its share since the last teardown.
        let since = Instant::now();
        for (w, p) in sh.progress.iter().enumerate() {
            while p.load(Ordering::Acquire) < cycle {
                assert!(
                    since.elapsed() < PROGRESS_LIMIT,
                    "cycle {cycle}: worker {w} made no progress since the last teardown"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(500..4000)));
        let action = ACTIONS[(cycle % ACTIONS.len() as u64) as usize];
        *actions.entry(action).or_default() += 1;
        let at = d.at_backend.load(Ordering::Relaxed);
        if at > 0 {
            met_inflight += 1;
        }
        inflight_sum += at.max(0) as u64;
        inflight_max = inflight_max.max(at);
        match action {
            "reset" => ctrl.as_mut().unwrap().reset().expect("reset"),
            "ns-remove" => {
                t.remove_namespace(NQN, 2).expect("remove namespace");
                add_namespace(&t, 2);
            }
            _ => {
                *sh.conn.lock().unwrap() = None;
                let c = ctrl.take().unwrap();
                match action {
                    "shutdown" => c.shutdown().expect("shutdown"),
                    "disconnect" => c.disconnect().expect("disconnect"),
                    "delete" => {
                        t.delete_controller(NQN, c.cntlid())
                            .expect("delete controller");
                        drop(c);
                    }
                    "subsystem-delete" => {
                        t.remove_subsystem(NQN).expect("remove subsystem");
                        drop(c);
                        add_subsystem(&t);
                    }
                    _ => {
                        t.stop().expect("target stop");
                        drop(c);
                        add_totals(&t, &mut totals);
                        (t, lt) = start(&d);
                    }
                }
                let c = connect(&lt);
                *sh.conn.lock().unwrap() = Some(c.connector());
                ctrl = Some(c);
            }
        }
        sh.epoch.store(cycle + 1, Ordering::Release);
    }
    let elapsed = t0.elapsed();
    // No teardown comes after the last one, so nothing would give back a
    // command held after it: injection ends, and holds are released while
    // the workers drain (the 100,000-cycle run met this once, at its end).
    d.err.set_rules(Vec::new()).unwrap();
    sh.stop.store(true, Ordering::Release);
    let until = Instant::now() + Duration::from_secs(40);
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < until {
        d.err.release_held();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut workers: Vec<Worker> = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect();

    // Every block reads back as an allowed version, on a fresh queue with
    // injection off (since the workers stopped).
    d.err.release_held();
    let c = ctrl.as_ref().unwrap();
    let mut q = c
        .create_qpair(WORKERS as u16 + 1, DEPTH)
        .expect("verification queue");
    let mut checked = 0u64;
    let mut end = Tally::default();
    let (mut total, mut statuses) = (Tally::default(), HashMap::<String, u64>::new());
    for wk in &mut workers {
        if let Some(q) = wk.qp.take() {
            wk.retire_queue(&q);
        }
        total.submitted += wk.tally.submitted;
        total.completed += wk.tally.completed;
        total.failed_but_written += wk.tally.failed_but_written;
        total.failed_not_written += wk.tally.failed_not_written;
        total.reads_checked += wk.tally.reads_checked;
        total.queues_retired += wk.tally.queues_retired;
        for (k, v) in &wk.tally.statuses {
            *statuses.entry(k.clone()).or_default() += v;
        }
        assert_eq!(
            wk.tally.submitted, wk.tally.completed,
            "worker {}: submitted != completed",
            wk.qid
        );
        assert_eq!(wk.host_stale, 0);
        let base = wk.base();
        for ni in 0..2 {
            for off in 0..REGION as usize {
                let lba = base + off as u64;
                q.read(ni as u32 + 1, lba, 1, DataBuf::One(IoBuf::new(BS)), lba)
                    .unwrap();
                let b = &mut wk.blocks[ni][off];
                q.drain(Duration::from_secs(10), &mut |cpl| {
                    assert!(cpl.status().is_success(), "final read: {:?}", cpl.status());
                    let mut got = vec![0u8; BS];
                    cpl.buf.copy_out(0, &mut got);
                    b.check(lba, &got, "final check", &mut end);
                    checked += 1;
                })
                .unwrap();
            }
        }
    }
    assert_eq!(q.stats().stale, 0);
    total.failed_but_written += end.failed_but_written;
    total.failed_not_written += end.failed_not_written;
    drop(q);
    // At rest, so the target's own counters balance.
    ctrl.take().unwrap().disconnect().unwrap();
    t.stop().unwrap();
    add_totals(&t, &mut totals);
    let resets = totals.resets;
    eprintln!(
        "teardown stress: {cycles} cycles {actions:?} in {elapsed:.1?}\n  \
         teardowns that met commands at the backend: {met_inflight}/{cycles} \
         (mean {:.1}, max {inflight_max})\n  \
         {} commands, each completed once; {} host queues retired, 0 stale completions\n  \
         reads checked during the run: {}; blocks checked at the end: {checked}\n  \
         failed writes later found written: {}, found not written: {}\n  \
         backend resets: {resets} (error backend saw {}); holds and failures injected: {}; \
         late completions dropped by the target: {}; controllers failed (stage 3): {}\n  \
         target: {} commands fetched, {} completions posted\n  \
         statuses {statuses:?}",
        inflight_sum as f64 / cycles.max(1) as f64,
        total.submitted,
        total.queues_retired,
        total.reads_checked,
        total.failed_but_written,
        total.failed_not_written,
        d.err.resets(),
        d.err.injected(),
        totals.late,
        totals.failed,
        totals.commands,
        totals.responses,
    );
    // Every hold here is one a reset gives back: stage 3 must never strike.
    assert_eq!(totals.failed, 0, "a controller was failed to its host");
    assert!(
        met_inflight * 4 >= cycles * 3,
        "only {met_inflight} of {cycles} teardowns met commands at the backend"
    );
    assert!(resets > 0, "no drain ever escalated to a backend reset");
    assert!(d.err.resets() > 0);
    assert!(
        statuses
            .iter()
            .any(|(k, v)| k.starts_with("ABORT_REQUESTED") && *v > 0),
        "no held command was given back by a reset: {statuses:?}"
    );
    assert!(total.queues_retired >= cycles, "queues were not replaced");
    // The target's side of "each completed once": every command it fetched
    // got one completion from it, over every target instance of the run.
    assert_eq!(
        totals.commands, totals.responses,
        "target: {} commands fetched, {} completions posted",
        totals.commands, totals.responses
    );
    assert!(totals.commands >= total.submitted);
}

#[test]
fn teardown_stress() {
    run(DEFAULT_CYCLES);
}

#[test]
#[ignore = "long mode: NVMF_STRESS_CYCLES=N (default 20,000)"]
fn teardown_stress_long() {
    let cycles = std::env::var("NVMF_STRESS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    run(cycles);
}
