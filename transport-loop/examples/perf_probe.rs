//! Throwaway probe: loop + inline null backend, randread 4k at QD N.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use target_core::bdev::*;
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::target::{NamespaceParams, ReactorMode};
use target_core::nvmf::*;
use transport_loop::*;

#[derive(Debug)]
struct Null(BdevInfo);
#[derive(Debug)]
struct NullCh(VecDeque<BdevCompletion>);
impl BlockDevice for Null {
    fn info(&self) -> &BdevInfo {
        &self.0
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(NullCh(VecDeque::with_capacity(4096))))
    }
}
impl IoChannel for NullCh {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        self.0.push_back(BdevCompletion {
            tag: io.tag,
            result: Ok(()),
            buf: io.buf,
        });
        Ok(())
    }
    fn poll(&mut self, done: &mut dyn FnMut(BdevCompletion)) -> usize {
        let n = self.0.len();
        while let Some(c) = self.0.pop_front() {
            done(c)
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.0.len()
    }
    fn reset(&mut self) -> usize {
        0
    }
}

fn main() {
    let qd: u16 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(128);
    let secs: u64 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(3);
    let t = NvmfTarget::start(TargetOptions {
        engine: EngineOptions::default(),
        reactors: ReactorMode::Threads {
            cores: vec![Some(0)],
            idle_backoff: Duration::ZERO,
        },
    })
    .unwrap();
    t.add_bdev(Arc::new(Null(BdevInfo {
        name: "null0".into(),
        kind: "null",
        block_size: 512,
        num_blocks: 1 << 31,
        volatile_write_cache: false,
        max_transfer_blocks: None,
        supports_write_zeroes: true,
        supports_deallocate: true,
    })))
    .unwrap();
    let nqn = "nqn.2026-11.io.nvmf-rs:perf";
    t.add_subsystem(SubsystemParams {
        nqn: nqn.into(),
        serial: "P".into(),
        model: "p".into(),
        max_namespaces: 4,
        allow_any_host: true,
        hosts: vec![],
    })
    .unwrap();
    t.add_namespace(
        nqn,
        NamespaceParams {
            nsid: Some(1),
            bdev: "null0".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let lt = LoopTransport::new(t.clone());
    lt.listen(nqn);
    let mut o = ConnectOptions::new(nqn, "nqn.2026-11.io.nvmf-rs:h");
    o.queue_depth = qd + 1;
    let mut c = lt.connect(o).unwrap();
    let mut q = c.take_qpairs().pop().unwrap();
    target_core::reactor::affinity::pin_current_thread(1).unwrap();
    let mut bufs: Vec<IoBuf> = (0..qd).map(|_| IoBuf::new(4096)).collect();
    let mut rng: u64 = 0x9e3779b97f4a7c15;
    let mut lat = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut starts = vec![Instant::now(); qd as usize];
    let mut done = 0u64;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    for i in 0..qd as u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let b = bufs.pop().unwrap();
        starts[i as usize] = Instant::now();
        q.read(1, (rng % (1 << 28)) * 8, 8, DataBuf::One(b), i)
            .unwrap();
    }
    let mut ret: Vec<(u64, DataBuf)> = Vec::with_capacity(qd as usize);
    loop {
        q.poll(64, &mut |c| ret.push((c.tag, c.buf)));
        let now = Instant::now();
        for (tag, buf) in ret.drain(..) {
            done += 1;
            lat.record((now - starts[tag as usize]).as_nanos() as u64)
                .ok();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            starts[tag as usize] = now;
            q.read(1, (rng % (1 << 28)) * 8, 8, buf, tag).unwrap();
        }
        if done & 0xfff == 0 && now > end {
            break;
        }
    }
    let el = t0.elapsed().as_secs_f64();
    println!(
        "qd={qd} iops={:.0} p50={}ns p99={}ns p99.9={}ns",
        done as f64 / el,
        lat.value_at_quantile(0.5),
        lat.value_at_quantile(0.99),
        lat.value_at_quantile(0.999)
    );
    for (id, core, st) in t.reactor_stats() {
        use std::sync::atomic::Ordering::Relaxed;
        println!(
            "reactor {id} core {core:?}: busy {} idle {} work {}",
            st.busy_polls.load(Relaxed),
            st.idle_polls.load(Relaxed),
            st.work_items.load(Relaxed)
        );
    }
    let _ = q.drain(Duration::from_secs(5), &mut |_| {});
    drop(q);
    let _ = c.disconnect();
    t.stop().unwrap();
}
