//! A verify job end to end against an in-memory "disk", the way the runner
//! drives the library: workload → fill → write → ack → read → check, with
//! iodepth I/Os in flight completing out of order. Then a lost write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bench::job::{JobSpec, RwMode};
use bench::stats::{LiveStats, Recorder};
use bench::verify::{MismatchReason, Verifier};
use bench::workload::{IoSpec, Op, Workload};

const BS: u32 = 512;
const NS_BYTES: u64 = 4 << 20;

struct Pending {
    io: IoSpec,
    seq: u64,
    buf: Vec<u8>,
}

#[test]
fn verify_job_passes_then_catches_a_lost_write() {
    let spec = JobSpec {
        rw: RwMode::Verify,
        verify: true,
        bs: 4096,
        align: 4096,
        iodepth: 16,
        size: Some(1 << 20),
        rwmixread: 60,
        ..JobSpec::default()
    };
    let mut w = Workload::new(&spec, BS, NS_BYTES).unwrap();
    let (start, blocks) = w.range();
    let mut v = Verifier::new(start, blocks, BS);
    let mut disk = vec![0u8; NS_BYTES as usize];
    let t0 = Instant::now();
    let mut rec = Recorder::new(&spec.name, true, LiveStats::new(), t0, Duration::ZERO);
    let mut inflight: VecDeque<Pending> = VecDeque::new();
    let mut reads_checked = 0;
    let mut lose_next_write = false;
    let mut lost: Option<u64> = None;

    for i in 0..20_000u32 {
        // Submit up to iodepth.
        while inflight.len() < spec.iodepth as usize {
            let io = w.next_io();
            let len = (io.blocks * BS) as usize;
            let mut buf = vec![0u8; len];
            let seq = if io.op == Op::Write {
                v.fill(&mut buf, io.lba, io.blocks)
            } else {
                0
            };
            inflight.push_back(Pending { io, seq, buf });
        }
        // Complete one, out of order.
        let k = (i as usize * 7) % inflight.len();
        let mut p = inflight.remove(k).unwrap();
        let off = (p.io.lba * u64::from(BS)) as usize;
        let len = p.buf.len();
        match p.io.op {
            Op::Write => {
                if lose_next_write {
                    lose_next_write = false;
                    lost = Some(p.io.lba);
                } else {
                    disk[off..off + len].copy_from_slice(&p.buf);
                }
                v.on_write_done(p.io.lba, p.io.blocks, p.seq);
            }
            Op::Read => {
                p.buf.copy_from_slice(&disk[off..off + len]);
                match v.check(&p.buf, p.io.lba, p.io.blocks) {
                    Ok(()) => reads_checked += 1,
                    Err(m) => {
                        assert_eq!(Some(m.lba), lost, "{m}");
                        assert_eq!(m.reason, MismatchReason::Stale);
                        w.complete(&p.io);
                        return assert!(reads_checked > 1000, "{reads_checked}");
                    }
                }
            }
        }
        w.complete(&p.io);
        rec.record(p.io.op, 1000, len as u64);
        if i == 15_000 && !w.in_fill_phase() {
            lose_next_write = true;
        }
    }
    panic!("the lost write at {lost:?} was never detected ({reads_checked} reads checked)");
}
