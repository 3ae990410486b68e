//! Micro-benchmarks of the per-I/O hot path, to see what each step costs
//! apart from the rest: SQE build and parse, a ring round trip, command
//! validation, histogram recording, and the workload generator.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use bench::job::{JobSpec, RwMode};
use bench::stats::{FastHistogram, LiveStats, Recorder, new_histogram};
use bench::workload::{Op, Workload};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use target_core::iobuf::DataBuf;
use target_core::nvmf::io::{NsLimits, plan};
use target_core::nvmf::transport::{Capsule, QpairTransport, QueueRings};
use target_core::spec::{NvmOpcode, SubmissionEntry};

fn sqe(c: &mut Criterion) {
    let mut g = c.benchmark_group("sqe");
    g.bench_function("build_nvm_rw", |b| {
        let mut lba = 0u64;
        b.iter(|| {
            lba = lba.wrapping_add(8);
            black_box(SubmissionEntry::nvm_rw(
                NvmOpcode::READ.0,
                7,
                1,
                black_box(lba),
                8,
            ))
        })
    });
    let s = SubmissionEntry::nvm_rw(NvmOpcode::WRITE.0, 7, 1, 123_456, 8);
    g.bench_function("parse_slba_nlb", |b| {
        b.iter(|| {
            let s = black_box(&s);
            black_box((s.slba(), s.block_count()))
        })
    });
    g.finish();
}

fn ring(c: &mut Criterion) {
    let (mut rings, mut target) = QueueRings::pair(128);
    let mut spare = Some(Capsule {
        sqe: SubmissionEntry::nvm_rw(NvmOpcode::READ.0, 1, 1, 0, 8),
        buf: DataBuf::None,
    });
    c.bench_function("ring/submit_recv", |b| {
        b.iter(|| {
            let cap = spare.take().unwrap();
            if rings.submit(cap).is_err() {
                unreachable!("ring full");
            }
            spare = target.recv();
            black_box(&spare);
        })
    });
}

fn validate(c: &mut Criterion) {
    let ns = NsLimits {
        block_shift: 9,
        num_blocks: 1 << 21,
        read_only: false,
        max_xfer: 1 << 20,
    };
    let s = SubmissionEntry::nvm_rw(NvmOpcode::READ.0, 3, 1, 4096, 8);
    c.bench_function("io/plan", |b| {
        b.iter(|| black_box(plan(black_box(&s), &ns, 4096)))
    });
}

fn histogram(c: &mut Criterion) {
    let mut g = c.benchmark_group("histogram");
    let mut h = new_histogram();
    let mut v = 1_000u64;
    g.bench_function("record", |b| {
        b.iter(|| {
            v = (v * 7 + 13) % 1_000_000;
            h.record(black_box(v + 500)).unwrap();
        })
    });
    // What the recorder did per I/O before FastHistogram.
    g.bench_function("saturating_record", |b| {
        b.iter(|| {
            v = (v * 7 + 13) % 1_000_000;
            h.saturating_record(black_box(v + 500));
        })
    });
    // What it does now: one increment, folded into `h` once per interval.
    let mut f = FastHistogram::new();
    g.bench_function("fast_record", |b| {
        b.iter(|| {
            v = (v * 7 + 13) % 1_000_000;
            f.record(black_box(v + 500));
        })
    });
    // The once-per-interval fold (not per I/O): 1M I/Os spread from 500 ns
    // to 1 ms (~10k non-zero buckets) into `h`.
    g.bench_function("fast_drain_1M", |b| {
        b.iter_batched_ref(
            || {
                let mut f = FastHistogram::new();
                for _ in 0..1_000_000 {
                    v = (v * 7 + 13) % 1_000_000;
                    f.record(v + 500);
                }
                f
            },
            |f| f.drain_into(&mut h),
            BatchSize::LargeInput,
        )
    });
    let t0 = Instant::now();
    let mut r = Recorder::new(
        "bench",
        true,
        LiveStats::new(),
        t0,
        std::time::Duration::ZERO,
    );
    g.bench_function("recorder_record", |b| {
        b.iter(|| {
            v = (v * 7 + 13) % 1_000_000;
            r.record(Op::Read, black_box(v + 500), 4096);
        })
    });
    g.finish();
}

fn workload(c: &mut Criterion) {
    let spec = JobSpec {
        rw: RwMode::RandRw,
        ..JobSpec::default()
    };
    let mut w = Workload::new(&spec, 512, 1 << 30).unwrap();
    c.bench_function("workload/randrw_next", |b| {
        b.iter(|| black_box(w.next_io()))
    });
}

criterion_group!(benches, sqe, ring, validate, histogram, workload);
criterion_main!(benches);
