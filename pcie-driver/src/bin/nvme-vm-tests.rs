//! Tests of the VFIO NVMe driver against QEMU's NVMe model, run inside a
//! throwaway VM by `scripts/vm/run.sh` (static binary, no libraries).
//!
//! `nvme-vm-tests multi|limits` runs the test set for that VM configuration
//! and prints `TEST <name> ... ok|FAILED: reason` lines and a `SUMMARY`
//! line. `nvme-vm-tests bench [seconds]` runs 4 KiB random reads at QD1 and
//! QD32 on the first controller and prints IOPS (not a test).

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pcie_driver::{ControllerOptions, DmaPool, DriverError, NvmeBdev, NvmeController};
use target_core::bdev::{
    BdevCompletion, BdevIo, BlockDevice, DsmRange, IoChannel, IoError, IoOp, encode_dsm_ranges,
};
use target_core::iobuf::{DataBuf, IoBuf};

type TestResult = Result<(), String>;

macro_rules! ensure {
    ($c:expr, $($fmt:tt)*) => {
        if !$c {
            return Err(format!($($fmt)*));
        }
    };
}

/// Known pattern the harness looks for in the raw disk images.
const DISK_MARK: &[u8] = b"NVME-VM-TEST-PATTERN:";

fn nvme_functions() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/bus/pci/devices") {
        for e in rd.flatten() {
            let class = std::fs::read_to_string(e.path().join("class")).unwrap_or_default();
            if class.trim() == "0x010802" {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    v.sort();
    v
}

/// The throttled controller of the `limits` guest (run.sh pins it to slot
/// 5); opened on its own with a short I/O timeout by `t_timeout_recovery`.
const SLOW_ADDR: &str = "0000:00:05.0";

fn open_all(
    opts: ControllerOptions,
    only_vfio: bool,
) -> Result<HashMap<String, Arc<NvmeController>>, String> {
    let mut m = HashMap::new();
    for addr in nvme_functions() {
        if addr == SLOW_ADDR {
            continue;
        }
        let driver = std::fs::read_link(format!("/sys/bus/pci/devices/{addr}/driver"))
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
        if only_vfio && driver.as_deref() != Some("vfio-pci") {
            continue; // left to the kernel on purpose (bench)
        }
        let c =
            NvmeController::open(&addr, opts.clone()).map_err(|e| format!("open {addr}: {e}"))?;
        m.insert(c.identity().serial.clone(), c);
    }
    Ok(m)
}

fn get(
    ctrls: &HashMap<String, Arc<NvmeController>>,
    serial: &str,
) -> Result<Arc<NvmeController>, String> {
    ctrls.get(serial).cloned().ok_or_else(|| {
        format!(
            "no controller with serial {serial} (have {:?})",
            ctrls.keys()
        )
    })
}

/// The byte at `off` of block `lba` for pattern `seed`.
fn pattern_byte(lba: u64, off: usize, seed: u64) -> u8 {
    let x = lba
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(seed.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(off as u64 / 8);
    (x >> ((off % 8) * 8)) as u8 ^ (x >> 56) as u8
}

fn fill(buf: &mut DataBuf, lba: u64, bs: usize, bytes: usize, seed: u64) {
    let mut tmp = vec![0u8; bytes];
    for (i, b) in tmp.iter_mut().enumerate() {
        *b = pattern_byte(lba + (i / bs) as u64, i % bs, seed);
    }
    buf.copy_in(0, &tmp);
}

fn check(buf: &DataBuf, lba: u64, bs: usize, bytes: usize, seed: u64) -> TestResult {
    let mut tmp = vec![0u8; bytes];
    ensure!(
        buf.copy_out(0, &mut tmp) == bytes,
        "buffer shorter than {bytes}"
    );
    for (i, b) in tmp.iter().enumerate() {
        let want = pattern_byte(lba + (i / bs) as u64, i % bs, seed);
        ensure!(
            *b == want,
            "mismatch at byte {i} (lba {}, offset {}): got {b:#04x} want {want:#04x}",
            lba + (i / bs) as u64,
            i % bs
        );
    }
    Ok(())
}

/// Runs one I/O to completion on `ch`.
fn run(ch: &mut dyn IoChannel, mut io: BdevIo) -> BdevCompletion {
    let tag = io.tag;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ch.submit(io) {
            Ok(()) => break,
            Err(back) => {
                io = back;
                ch.poll(&mut |_| {});
            }
        }
    }
    let mut out = None;
    while out.is_none() {
        ch.poll(&mut |c| {
            if c.tag == tag {
                out = Some(c);
            }
        });
        if Instant::now() > deadline {
            panic!("I/O {tag} did not complete in 60 s");
        }
    }
    out.unwrap_or_else(|| unreachable!())
}

fn io(tag: u64, op: IoOp, lba: u64, blocks: u32, buf: DataBuf) -> BdevIo {
    BdevIo {
        tag,
        op,
        lba,
        blocks,
        fua: false,
        buf,
    }
}

#[derive(Clone, Copy, Debug)]
enum BufKind {
    /// Heap memory: bounced.
    Heap,
    /// One pool buffer: zero copy.
    Pool,
    /// Page-sized pool segments: zero copy over several segments.
    PoolPages,
    /// Odd-sized heap segments: bounced.
    HeapOdd,
}

fn make_buf(kind: BufKind, bytes: usize, pool: &Arc<DmaPool>) -> Result<DataBuf, String> {
    make_buf2(kind, bytes, pool, pool)
}

fn make_buf2(
    kind: BufKind,
    bytes: usize,
    pool: &Arc<DmaPool>,
    pages: &Arc<DmaPool>,
) -> Result<DataBuf, String> {
    Ok(match kind {
        BufKind::Heap => DataBuf::One(IoBuf::new(bytes)),
        BufKind::Pool => {
            ensure!(bytes <= pool.buf_size(), "pool buffer too small");
            let mut b = pool.alloc().ok_or("pool empty")?;
            b.truncate(bytes);
            DataBuf::One(b)
        }
        BufKind::PoolPages => {
            let mut v = Vec::new();
            let mut left = bytes;
            while left > 0 {
                let mut b = pages.alloc().ok_or("page pool empty")?;
                let n = left.min(4096);
                b.truncate(n);
                v.push(b);
                left -= n;
            }
            DataBuf::many(v)
        }
        BufKind::HeapOdd => {
            let mut v = Vec::new();
            let mut left = bytes;
            let mut k = 0;
            while left > 0 {
                let n = left.min(if k % 2 == 0 { 1536 } else { 5120 });
                v.push(IoBuf::new(n));
                left -= n;
                k += 1;
            }
            DataBuf::many(v)
        }
    })
}

fn write_read(
    ch: &mut dyn IoChannel,
    (pool, pages): (&Arc<DmaPool>, &Arc<DmaPool>),
    bs: usize,
    lba: u64,
    bytes: usize,
    kind: BufKind,
    seed: u64,
) -> TestResult {
    let blocks = (bytes / bs) as u32;
    let mut w = make_buf2(kind, bytes, pool, pages)?;
    fill(&mut w, lba, bs, bytes, seed);
    let c = run(ch, io(1, IoOp::Write, lba, blocks, w));
    c.result
        .map_err(|e| format!("write lba {lba} {bytes} B {kind:?}: {e}"))?;
    let r = make_buf2(kind, bytes, pool, pages)?;
    let c = run(ch, io(2, IoOp::Read, lba, blocks, r));
    c.result
        .map_err(|e| format!("read lba {lba} {bytes} B {kind:?}: {e}"))?;
    check(&c.buf, lba, bs, bytes, seed).map_err(|e| format!("lba {lba} {bytes} B {kind:?}: {e}"))
}

fn rw_matrix(bdev: &Arc<NvmeBdev>, sizes: &[usize], seed: u64) -> TestResult {
    let bs = bdev.info().block_size as usize;
    let pool = bdev
        .controller()
        .dma_pool(1 << 20, 4)
        .map_err(|e| e.to_string())?;
    let pages = bdev
        .controller()
        .dma_pool(4096, 600)
        .map_err(|e| e.to_string())?;
    let mut ch = bdev.open_channel().map_err(|e| e.to_string())?;
    let mut n = 0;
    for (si, &bytes) in sizes.iter().enumerate() {
        if bytes % bs != 0 {
            continue;
        }
        // Offsets: aligned and unaligned to 4 KiB, and near the end.
        let blocks = (bytes / bs) as u64;
        let last = bdev.info().num_blocks - blocks;
        let offsets = [
            0u64,
            1,
            7,
            8 + si as u64 * 1000,
            4096 / bs as u64 * 33 + 3,
            last,
        ];
        for (oi, &lba) in offsets.iter().enumerate() {
            let lba = lba.min(last);
            let kinds = [
                BufKind::Heap,
                BufKind::Pool,
                BufKind::PoolPages,
                BufKind::HeapOdd,
            ];
            let kind = kinds[(si + oi) % kinds.len()];
            write_read(&mut *ch, (&pool, &pages), bs, lba, bytes, kind, seed + n)?;
            n += 1;
        }
    }
    ensure!(
        ch.in_flight() == 0,
        "channel still has {} in flight",
        ch.in_flight()
    );
    Ok(())
}

const SIZES: &[usize] = &[
    512,
    1024,
    4096,
    4608,
    8192,
    12288,
    65536,
    69632,
    131072 + 512,
    512 << 10,
    (512 << 10) + 4096,
    1 << 20,
];

// ---------------------------------------------------------------- tests

fn t_bringup(ctrls: &HashMap<String, Arc<NvmeController>>) -> TestResult {
    ensure!(
        ctrls.len() >= 2,
        "expected two controllers, found {}",
        ctrls.len()
    );
    for (sn, c) in ctrls {
        let id = c.identity();
        println!(
            "  {} sn={sn} mn={} fr={} mdts={} vwc={} oncs={:#x} ioqs={} ns={:?}",
            c.pci_addr(),
            id.model,
            id.firmware,
            id.mdts,
            id.vwc,
            id.oncs,
            c.granted_io_queues(),
            c.namespaces()
        );
        ensure!(!c.namespaces().is_empty(), "{sn}: no namespaces");
    }
    Ok(())
}

fn t_four_k(c: &Arc<NvmeController>) -> TestResult {
    let ns = c
        .namespaces()
        .iter()
        .find(|n| n.block_size == 4096)
        .ok_or("no 4 KiB namespace")?;
    let b = c.bdev(ns.nsid).map_err(|e| e.to_string())?;
    rw_matrix(&b, SIZES, 400)
}

fn t_two_namespaces(c: &Arc<NvmeController>) -> TestResult {
    ensure!(
        c.namespaces().len() == 2,
        "want 2 namespaces, have {:?}",
        c.namespaces()
    );
    let b1 = c.bdev(c.namespaces()[0].nsid).map_err(|e| e.to_string())?;
    let b2 = c.bdev(c.namespaces()[1].nsid).map_err(|e| e.to_string())?;
    let pool = c.dma_pool(65536, 4).map_err(|e| e.to_string())?;
    let mut c1 = b1.open_channel().map_err(|e| e.to_string())?;
    let mut c2 = b2.open_channel().map_err(|e| e.to_string())?;
    let (bs1, bs2) = (b1.info().block_size as usize, b2.info().block_size as usize);
    // Same LBA, different patterns: namespaces are independent.
    let mut w1 = make_buf(BufKind::Pool, 8 * bs1, &pool)?;
    fill(&mut w1, 10, bs1, 8 * bs1, 71);
    run(&mut *c1, io(1, IoOp::Write, 10, 8, w1))
        .result
        .map_err(|e| e.to_string())?;
    let mut w2 = make_buf(BufKind::Pool, 8 * bs2.min(8192), &pool)?;
    let n2 = (8 * bs2.min(8192)) / bs2;
    fill(&mut w2, 10, bs2, n2 * bs2, 72);
    run(&mut *c2, io(2, IoOp::Write, 10, n2 as u32, w2))
        .result
        .map_err(|e| e.to_string())?;
    let r = run(
        &mut *c1,
        io(
            3,
            IoOp::Read,
            10,
            8,
            make_buf(BufKind::Heap, 8 * bs1, &pool)?,
        ),
    );
    r.result.map_err(|e| e.to_string())?;
    check(&r.buf, 10, bs1, 8 * bs1, 71).map_err(|e| format!("ns1: {e}"))?;
    let r = run(
        &mut *c2,
        io(
            4,
            IoOp::Read,
            10,
            n2 as u32,
            make_buf(BufKind::Heap, n2 * bs2, &pool)?,
        ),
    );
    r.result.map_err(|e| e.to_string())?;
    check(&r.buf, 10, bs2, n2 * bs2, 72).map_err(|e| format!("ns2: {e}"))?;
    Ok(())
}

fn t_flush_zeroes_dealloc(b: &Arc<NvmeBdev>) -> TestResult {
    let bs = b.info().block_size as usize;
    let mut ch = b.open_channel().map_err(|e| e.to_string())?;
    let pool = b
        .controller()
        .dma_pool(65536, 2)
        .map_err(|e| e.to_string())?;
    let lba = 5000;
    let n = 64u32;
    let bytes = n as usize * bs;
    // Flush.
    run(&mut *ch, io(1, IoOp::Flush, 0, 0, DataBuf::None))
        .result
        .map_err(|e| format!("flush: {e}"))?;
    // Write zeroes over a written range.
    let mut w = make_buf(BufKind::Pool, bytes, &pool)?;
    fill(&mut w, lba, bs, bytes, 9);
    run(&mut *ch, io(2, IoOp::Write, lba, n, w))
        .result
        .map_err(|e| e.to_string())?;
    ensure!(
        b.info().supports_write_zeroes,
        "controller lacks write zeroes"
    );
    run(&mut *ch, io(3, IoOp::WriteZeroes, lba, n, DataBuf::None))
        .result
        .map_err(|e| format!("write zeroes: {e}"))?;
    let r = run(
        &mut *ch,
        io(
            4,
            IoOp::Read,
            lba,
            n,
            make_buf(BufKind::Pool, bytes, &pool)?,
        ),
    );
    r.result.map_err(|e| e.to_string())?;
    let mut tmp = vec![1u8; bytes];
    r.buf.copy_out(0, &mut tmp);
    ensure!(tmp.iter().all(|&x| x == 0), "write zeroes left data");
    // Deallocate two ranges.
    let mut w = make_buf(BufKind::Pool, bytes, &pool)?;
    fill(&mut w, lba, bs, bytes, 10);
    run(&mut *ch, io(5, IoOp::Write, lba, n, w))
        .result
        .map_err(|e| e.to_string())?;
    let mut d = DataBuf::One(IoBuf::new(4096));
    let ranges = [
        DsmRange {
            attributes: 0,
            blocks: n / 2,
            slba: lba,
        },
        DsmRange {
            attributes: 0,
            blocks: n / 2,
            slba: lba + n as u64 / 2,
        },
    ];
    encode_dsm_ranges(&ranges, &mut d);
    run(&mut *ch, io(6, IoOp::Deallocate, 0, 2, d))
        .result
        .map_err(|e| format!("deallocate: {e}"))?;
    let ns = b.namespace();
    if ns.dealloc_reads_zero {
        let r = run(
            &mut *ch,
            io(
                7,
                IoOp::Read,
                lba,
                n,
                make_buf(BufKind::Heap, bytes, &pool)?,
            ),
        );
        r.result.map_err(|e| e.to_string())?;
        r.buf.copy_out(0, &mut tmp);
        ensure!(
            tmp.iter().all(|&x| x == 0),
            "deallocated blocks did not read zero"
        );
        println!("  deallocate: DLFEAT says reads zero; verified");
    } else {
        println!("  deallocate: DLFEAT does not promise zeros; success only");
    }
    // Bad input fails cleanly.
    let c = run(
        &mut *ch,
        io(
            8,
            IoOp::Read,
            b.info().num_blocks,
            1,
            DataBuf::One(IoBuf::new(bs)),
        ),
    );
    ensure!(
        c.result == Err(IoError::OutOfRange),
        "out of range read gave {:?}",
        c.result
    );
    let c = run(
        &mut *ch,
        io(9, IoOp::Read, 0, 8, DataBuf::One(IoBuf::new(bs))),
    );
    ensure!(
        c.result == Err(IoError::BufferTooShort),
        "short buffer gave {:?}",
        c.result
    );
    Ok(())
}

/// Several channels on threads doing verified I/O at queue depth.
fn t_channels(b: &Arc<NvmeBdev>, nch: usize, base_lba: u64) -> TestResult {
    let bs = b.info().block_size as usize;
    let mut handles = Vec::new();
    for k in 0..nch {
        let b = b.clone();
        handles.push(std::thread::spawn(move || -> TestResult {
            let mut ch = b.channel().map_err(|e| e.to_string())?;
            let qid = ch.qid();
            let lba0 = base_lba + k as u64 * 4096;
            let qd = 16u64;
            let blocks = (8192 / bs) as u32;
            // Write qd I/Os at once, then read them back at once.
            for round in 0..4u64 {
                for i in 0..qd {
                    let lba = lba0 + i * blocks as u64;
                    let mut w = DataBuf::One(IoBuf::new(8192));
                    fill(&mut w, lba, bs, 8192, round * 100 + k as u64);
                    let mut x = io(i, IoOp::Write, lba, blocks, w);
                    loop {
                        match ch.submit(x) {
                            Ok(()) => break,
                            Err(back) => {
                                x = back;
                                ch.poll(&mut |c| assert!(c.result.is_ok()));
                            }
                        }
                    }
                }
                let mut got = HashSet::new();
                let mut err = None;
                while got.len() < qd as usize {
                    ch.poll(&mut |c| {
                        if let Err(e) = c.result {
                            err = Some(e);
                        }
                        got.insert(c.tag);
                    });
                }
                if let Some(e) = err {
                    return Err(format!("channel {k} write: {e}"));
                }
                for i in 0..qd {
                    let lba = lba0 + i * blocks as u64;
                    let c = run(
                        &mut ch,
                        io(
                            100 + i,
                            IoOp::Read,
                            lba,
                            blocks,
                            DataBuf::One(IoBuf::new(8192)),
                        ),
                    );
                    c.result.map_err(|e| e.to_string())?;
                    check(&c.buf, lba, bs, 8192, round * 100 + k as u64)
                        .map_err(|e| format!("channel {k} (qid {qid}): {e}"))?;
                }
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join()
            .map_err(|_| "channel thread panicked".to_string())??;
    }
    Ok(())
}

/// The teardown test: several channels keep writes in flight while the
/// main thread resets or shuts down the controller. Every I/O must complete
/// exactly once; every acknowledged write must read back afterwards.
fn t_teardown_in_flight(b: &Arc<NvmeBdev>, shutdown: bool) -> TestResult {
    let c = b.controller().clone();
    let bs = b.info().block_size as usize;
    let nch = 3;
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let seed = if shutdown { 77 } else { 55 };
    for k in 0..nch {
        // Opened here, before the reset: a channel cannot be opened while
        // the controller resets, and a slow thread start must not meet it.
        let mut ch = b.channel().map_err(|e| e.to_string())?;
        let stop = stop.clone();
        handles.push(std::thread::spawn(
            move || -> Result<(Vec<u64>, usize, usize), String> {
                let lba0 = 20_000 + k as u64 * 20_000 + if shutdown { 70_000 } else { 0 };
                let mut next = 0u64;
                let mut completed: HashMap<u64, Result<(), IoError>> = HashMap::new();
                let mut dup = None;
                let qd = 32;
                let mut outstanding = 0usize;
                let limit = 4000u64;
                let start = Instant::now();
                loop {
                    while outstanding < qd && !stop.load(Ordering::Relaxed) && next < limit {
                        let lba = lba0 + next * 4;
                        let bytes = 4 * bs;
                        let mut w = DataBuf::One(IoBuf::new(bytes));
                        fill(&mut w, lba, bs, bytes, seed);
                        match ch.submit(io(next, IoOp::Write, lba, 4, w)) {
                            Ok(()) => {
                                next += 1;
                                outstanding += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    ch.poll(&mut |c| {
                        if completed.insert(c.tag, c.result).is_some() {
                            dup = Some(c.tag);
                        }
                        outstanding -= 1;
                    });
                    if let Some(t) = dup {
                        return Err(format!("tag {t} completed twice"));
                    }
                    if (stop.load(Ordering::Relaxed) || next >= limit) && outstanding == 0 {
                        break;
                    }
                    if start.elapsed() > Duration::from_secs(60) {
                        return Err(format!("channel {k}: {outstanding} I/Os never completed"));
                    }
                }
                if ch.in_flight() != 0 {
                    return Err(format!("channel {k}: in_flight {} at end", ch.in_flight()));
                }
                if completed.len() as u64 != next {
                    return Err(format!(
                        "channel {k}: {} completions for {next} I/Os",
                        completed.len()
                    ));
                }
                let aborted = completed.values().filter(|r| r.is_err()).count();
                let mut acked: Vec<u64> = completed
                    .iter()
                    .filter(|(_, r)| r.is_ok())
                    .map(|(&t, _)| lba0 + t * 4)
                    .collect();
                acked.sort_unstable();
                Ok((acked, aborted, next as usize))
            },
        ));
    }
    // Let I/O get going, then pull the rug.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = if shutdown { c.shutdown() } else { c.reset() };
    let took = t.elapsed();
    if shutdown {
        stop.store(true, Ordering::Relaxed);
    }
    r.map_err(|e| format!("{}: {e}", if shutdown { "shutdown" } else { "reset" }))?;
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| "I/O thread panicked".to_string())??);
    }
    if shutdown {
        c.reset()
            .map_err(|e| format!("reset after shutdown: {e}"))?;
    }
    // Read back every acknowledged write, after re-init.
    let mut ch = b.open_channel().map_err(|e| e.to_string())?;
    let (mut total, mut aborted, mut acked_n) = (0, 0, 0);
    for (acked, ab, n) in &results {
        total += n;
        aborted += ab;
        acked_n += acked.len();
        for &lba in acked {
            let c = run(
                &mut *ch,
                io(lba, IoOp::Read, lba, 4, DataBuf::One(IoBuf::new(4 * bs))),
            );
            c.result.map_err(|e| format!("read back lba {lba}: {e}"))?;
            check(&c.buf, lba, bs, 4 * bs, seed)
                .map_err(|e| format!("acknowledged write lost: {e}"))?;
        }
    }
    println!(
        "  {}: {total} writes on {nch} channels, {acked_n} acknowledged and read back, {aborted} aborted; {} took {:?}",
        if shutdown { "shutdown" } else { "reset" },
        if shutdown { "shutdown" } else { "reset" },
        took
    );
    ensure!(acked_n > 0, "no write completed");
    Ok(())
}

fn t_mark_disk(b: &Arc<NvmeBdev>, lba: u64, tag: &str) -> TestResult {
    let bs = b.info().block_size as usize;
    let mut ch = b.open_channel().map_err(|e| e.to_string())?;
    let mut data = vec![0u8; bs];
    let mark = [DISK_MARK, tag.as_bytes()].concat();
    data[..mark.len()].copy_from_slice(&mark);
    let w = IoBuf::from_slice(&data);
    let mut x = io(1, IoOp::Write, lba, 1, DataBuf::One(w));
    x.fua = true;
    run(&mut *ch, x).result.map_err(|e| e.to_string())?;
    run(&mut *ch, io(2, IoOp::Flush, 0, 0, DataBuf::None))
        .result
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn t_not_bound(addr_nvme: &str) -> TestResult {
    // A non-NVMe function (the host bridge has no driver at all).
    match NvmeController::open("0000:00:00.0", ControllerOptions::default()) {
        Err(e @ DriverError::NotBoundToVfio { .. }) => {
            println!(
                "  0000:00:00.0: {}",
                e.to_string().lines().next().unwrap_or("")
            );
            ensure!(
                e.to_string().contains("driver_override"),
                "message lacks the fix: {e}"
            );
        }
        other => {
            return Err(format!(
                "host bridge: expected NotBoundToVfio, got {other:?}"
            ));
        }
    }
    // An NVMe function unbound from vfio-pci.
    std::fs::write("/sys/bus/pci/drivers/vfio-pci/unbind", addr_nvme)
        .map_err(|e| format!("unbind {addr_nvme}: {e}"))?;
    match NvmeController::open(addr_nvme, ControllerOptions::default()) {
        Err(e @ DriverError::NotBoundToVfio { .. }) => {
            println!(
                "  {addr_nvme}: {}",
                e.to_string().lines().next().unwrap_or("")
            );
        }
        other => {
            return Err(format!(
                "unbound NVMe: expected NotBoundToVfio, got {other:?}"
            ));
        }
    }
    match NvmeController::open("0000:7f:1f.7", ControllerOptions::default()) {
        Err(DriverError::NotFound { .. }) => Ok(()),
        other => Err(format!("missing device: expected NotFound, got {other:?}")),
    }
}

// ---------------------------------------------------------------- runner

struct Runner {
    passed: usize,
    failed: usize,
}

impl Runner {
    fn test(&mut self, name: &str, f: impl FnOnce() -> TestResult) {
        println!("TEST {name} ... started");
        let t = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
            Err(format!(
                "panic: {:?}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or(p.downcast_ref::<&str>().copied())
            ))
        });
        match r {
            Ok(()) => {
                self.passed += 1;
                println!("TEST {name} ... ok ({:.2?})", t.elapsed());
            }
            Err(e) => {
                self.failed += 1;
                println!("TEST {name} ... FAILED: {e}");
            }
        }
    }
}

fn bdev1(c: &Arc<NvmeController>) -> Result<Arc<NvmeBdev>, String> {
    let ns = c.namespaces().first().ok_or("no namespace")?;
    c.bdev(ns.nsid).map_err(|e| e.to_string())
}

fn multi(r: &mut Runner) {
    let ctrls = match open_all(ControllerOptions::default(), false) {
        Ok(c) => c,
        Err(e) => {
            r.test("bringup_two_controllers", || Err(e));
            return;
        }
    };
    r.test("bringup_two_controllers", || t_bringup(&ctrls));
    let (Ok(a), Ok(b)) = (get(&ctrls, "ctrla"), get(&ctrls, "ctrlb")) else {
        r.test("controllers_present", || Err("ctrla/ctrlb missing".into()));
        return;
    };
    r.test("rw_matrix_512", || rw_matrix(&bdev1(&a)?, SIZES, 100));
    r.test("rw_two_controllers_at_once", || {
        let (ba, bb) = (bdev1(&a)?, bdev1(&b)?);
        let h = std::thread::spawn(move || rw_matrix(&ba, &SIZES[..8], 200));
        rw_matrix(&bb, &SIZES[..8], 300)?;
        h.join().map_err(|_| "thread panicked".to_string())?
    });
    r.test("rw_4k_namespace", || t_four_k(&b));
    r.test("two_namespaces", || t_two_namespaces(&b));
    r.test("flush_write_zeroes_deallocate", || {
        t_flush_zeroes_dealloc(&bdev1(&a)?)
    });
    r.test("channels_4_on_own_queues", || {
        let bd = bdev1(&a)?;
        t_channels(&bd, 4, 200_000)?;
        ensure!(
            a.io_queues_created() >= 4,
            "only {} queues created",
            a.io_queues_created()
        );
        Ok(())
    });
    r.test("reset_with_io_in_flight", || {
        t_teardown_in_flight(&bdev1(&a)?, false)
    });
    r.test("shutdown_with_io_in_flight", || {
        t_teardown_in_flight(&bdev1(&a)?, true)
    });
    r.test("rw_after_shutdown_and_reset", || {
        rw_matrix(&bdev1(&a)?, &SIZES[..6], 500)
    });
    r.test("mark_disk_images", || {
        t_mark_disk(&bdev1(&a)?, 2000, "ctrla")?;
        let ns2 = b.namespaces().get(1).ok_or("no ns2")?.nsid;
        t_mark_disk(&b.bdev(ns2).map_err(|e| e.to_string())?, 100, "ctrlb-ns2")
    });
    let addr_a = a.pci_addr().to_owned();
    r.test("clean_shutdown_both", || {
        a.shutdown().map_err(|e| e.to_string())?;
        b.shutdown().map_err(|e| e.to_string())
    });
    drop(ctrls);
    drop(a);
    drop(b);
    r.test("not_bound_to_vfio_error", || t_not_bound(&addr_a));
}

fn limits(r: &mut Runner) {
    // No drain before a reset: in-flight commands meet CC.EN = 0 (the hard path).
    // The driver still waits for the controller to fetch what it was told
    // about (NvmeController::settle_fetches): QEMU's NVMe reset crashes on
    // commands it fetches while resetting.
    let opts = ControllerOptions {
        drain_timeout: Duration::ZERO,
        ..ControllerOptions::default()
    };
    let ctrls = match open_all(opts, false) {
        Ok(c) => c,
        Err(e) => {
            r.test("bringup", || Err(e));
            return;
        }
    };
    r.test("bringup", || t_bringup(&ctrls));
    let (Ok(m), Ok(q)) = (get(&ctrls, "mdts2"), get(&ctrls, "qp1")) else {
        r.test("controllers_present", || Err("mdts2/qp1 missing".into()));
        return;
    };
    r.test("mdts2_limits", || {
        ensure!(m.identity().mdts == 2, "mdts {}", m.identity().mdts);
        ensure!(
            m.max_command_bytes() == 16384,
            "max command {}",
            m.max_command_bytes()
        );
        Ok(())
    });
    r.test("rw_above_mdts_split", || rw_matrix(&bdev1(&m)?, SIZES, 600));
    r.test("hard_reset_with_io_in_flight_mdts2", || {
        t_teardown_in_flight(&bdev1(&m)?, false)
    });
    r.test("qp1_granted_one_queue", || {
        ensure!(
            q.granted_io_queues() == 1,
            "granted {}",
            q.granted_io_queues()
        );
        Ok(())
    });
    r.test("qp1_four_channels_share_a_queue", || {
        let bd = bdev1(&q)?;
        t_channels(&bd, 4, 1000)?;
        ensure!(
            q.io_queues_created() == 1,
            "{} queues created",
            q.io_queues_created()
        );
        Ok(())
    });
    r.test("qp1_hard_reset_with_shared_queue", || {
        t_teardown_in_flight(&bdev1(&q)?, false)
    });
    r.test("mark_disk_images", || {
        t_mark_disk(&bdev1(&m)?, 3000, "mdts2")
    });
    r.test("timeout_abort_then_reset", t_timeout_recovery);
    r.test("quarantine_drop_channel_x20", t_quarantine);
    r.test("channel_reset_escalates_by_polls", t_channel_reset_polled);
}

/// `IoChannel::reset` on the throttled drive: it returns with the commands
/// still held and the controller still running (nothing done in the call
/// but sending Abort); the controller reset starts from a later poll after
/// `abort_timeout` and advances by polls; meanwhile another channel's
/// submission is given back (retry later); every command comes back once
/// through `poll`, and the controller serves I/O again.
fn t_channel_reset_polled() -> TestResult {
    let opts = ControllerOptions {
        max_io_queues: 2,
        abort_timeout: Duration::from_millis(200),
        io_timeout: Duration::from_secs(120),
        ..ControllerOptions::default()
    };
    let c = NvmeController::open(SLOW_ADDR, opts).map_err(|e| format!("open {SLOW_ADDR}: {e}"))?;
    let b = bdev1(&c)?;
    let bs = b.info().block_size as u64;
    let per = (4096 / bs) as u32;
    let mut ch1 = b.channel().map_err(|e| e.to_string())?;
    let mut ch2 = b.channel().map_err(|e| e.to_string())?;
    let n = 6u64;
    for t in 0..n {
        ch1.submit(io(
            t,
            IoOp::Read,
            3000 + t * per as u64,
            per,
            DataBuf::One(IoBuf::new(4096)),
        ))
        .map_err(|_| "submit refused")?;
    }
    let mut results: HashMap<u64, Result<(), IoError>> = HashMap::new();
    let mut dup = None;
    let mut poll1 = |ch: &mut pcie_driver::NvmeChannel,
                     results: &mut HashMap<u64, Result<(), IoError>>| {
        ch.poll(&mut |c: BdevCompletion| {
            if results.insert(c.tag, c.result).is_some() {
                dup = Some(c.tag);
            }
        });
    };
    let until = Instant::now() + Duration::from_millis(30);
    while Instant::now() < until {
        poll1(&mut ch1, &mut results);
    }
    let k0 = c.counters();
    let outstanding = ch1.in_flight();
    let held = ch1.reset();
    let (state, k1) = (c.state(), c.counters());
    ensure!(outstanding > 0, "nothing outstanding before the reset");
    ensure!(
        held == outstanding,
        "reset() returned {held}, {outstanding} outstanding"
    );
    ensure!(
        state == pcie_driver::CtrlState::Running && k1.resets == k0.resets,
        "reset() did more than send Abort: state {state:?}, {k1:?}"
    );
    ensure!(k1.aborts_sent > k0.aborts_sent, "no Abort sent: {k1:?}");
    // Poll until the reset is seen in progress, then try the other channel.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = false;
    let mut polls_in_reset = 0u32;
    while (results.len() as u64) < n && Instant::now() < deadline {
        poll1(&mut ch1, &mut results);
        if c.state() == pcie_driver::CtrlState::Resetting {
            polls_in_reset += 1;
            if !refused {
                let x = io(99, IoOp::Read, 0, per, DataBuf::One(IoBuf::new(4096)));
                ensure!(
                    ch2.submit(x).is_err(),
                    "submission accepted during the reset"
                );
                refused = true;
            }
        }
    }
    ensure!(dup.is_none(), "tag {dup:?} completed twice");
    ensure!(
        results.len() as u64 == n,
        "{} of {n} came back",
        results.len()
    );
    ensure!(refused, "the reset was never seen in progress");
    let aborted = results
        .values()
        .filter(|r| matches!(r, Err(IoError::Aborted)))
        .count();
    let ok = results.values().filter(|r| r.is_ok()).count();
    ensure!(ok + aborted == n as usize, "unexpected results {results:?}");
    ensure!(aborted > 0, "nothing aborted by the reset");
    let k2 = c.counters();
    ensure!(k2.resets_done > k0.resets_done, "reset not done: {k2:?}");
    run(
        &mut ch2,
        io(100, IoOp::Read, 0, per, DataBuf::One(IoBuf::new(4096))),
    )
    .result
    .map_err(|e| format!("read after the reset: {e}"))?;
    println!(
        "  channel reset: {outstanding} held, {ok} completed, {aborted} aborted; the reset took \
         {polls_in_reset} polls, {:.2} ms; {k2:?}",
        k2.last_reset_us as f64 / 1000.0
    );
    drop(ch1);
    drop(ch2);
    c.shutdown().map_err(|e| e.to_string())
}

/// Poison the test writes into the pool buffers handed out after a channel
/// was dropped; the throttled drive's late reads (zeros) must not reach them.
const POISON: u8 = 0xa5;

/// DMA quarantine on the throttled drive (4 IOPS): 20 times, a channel is
/// dropped (as a namespace view removal or a stop past its drain bound
/// does) with reads still at the controller: one into a DMA pool buffer
/// (zero copy), one through the bounce area. The pool buffers handed out
/// next are filled with poison, which must survive the late completions;
/// at the end the quarantine is empty, the pool and the bounce area are
/// where they started. Then once more, released by a controller reset
/// (CSTS.RDY = 0) instead of the completion.
fn t_quarantine() -> TestResult {
    let opts = ControllerOptions {
        // One queue: every channel shares it, so the next channel reaps
        // the late completions of the one before.
        max_io_queues: 1,
        io_timeout: Duration::from_secs(120),
        drain_timeout: Duration::ZERO,
        ..ControllerOptions::default()
    };
    let c = NvmeController::open(SLOW_ADDR, opts).map_err(|e| format!("open {SLOW_ADDR}: {e}"))?;
    ensure!(
        c.identity().serial == "slow",
        "serial {}",
        c.identity().serial
    );
    let b = bdev1(&c)?;
    let bs = b.info().block_size as u64;
    let per = (4096 / bs) as u32;
    let pool = c.dma_pool(4096, 64).map_err(|e| e.to_string())?;
    let pool_start = pool.available();
    let bounce_start = c.bounce_in_use();
    let k0 = c.counters();
    let mut poisoned: Vec<IoBuf> = Vec::new();
    let (mut held_at_drop, mut rounds_with_held, mut early) = (0usize, 0, 0);
    let t0 = Instant::now();
    for round in 0..20u64 {
        let mut ch = b.channel().map_err(|e| e.to_string())?;
        let pb = pool.alloc().ok_or("pool empty")?;
        let lba = 200 + round * 2 * per as u64;
        ch.submit(io(1, IoOp::Read, lba, per, DataBuf::One(pb)))
            .map_err(|_| "submit refused")?;
        ch.submit(io(
            2,
            IoOp::Read,
            lba + per as u64,
            per,
            DataBuf::One(IoBuf::new(4096)),
        ))
        .map_err(|_| "submit refused")?;
        // The drain bound: a short wait, then the channel goes.
        let until = Instant::now() + Duration::from_millis(30);
        while Instant::now() < until {
            ch.poll(&mut |_| early += 1);
        }
        let held = ch.in_flight();
        held_at_drop += held;
        if held > 0 {
            rounds_with_held += 1;
        }
        drop(ch);
        // Without the quarantine the pool would hand the dropped read's
        // buffer out again right here.
        let mut nb = pool.alloc().ok_or("pool empty")?;
        nb.as_mut_slice().fill(POISON);
        poisoned.push(nb);
    }
    let k1 = c.counters();
    ensure!(
        rounds_with_held == 20,
        "only {rounds_with_held} of 20 drops met commands at the controller"
    );
    ensure!(
        (k1.quarantined_total - k0.quarantined_total) as usize == held_at_drop,
        "{} quarantined for {held_at_drop} held at drop ({k1:?})",
        k1.quarantined_total - k0.quarantined_total
    );
    // The late completions arrive at 4 IOPS; reap them.
    let deadline = Instant::now() + Duration::from_secs(90);
    while c.reap_quarantine() > 0 {
        ensure!(
            Instant::now() < deadline,
            "still quarantined after 90 s: {:?}",
            c.counters()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained = t0.elapsed();
    for (i, p) in poisoned.iter().enumerate() {
        ensure!(
            p.as_slice().iter().all(|&x| x == POISON),
            "poison of buffer {i} overwritten: a late completion wrote into a reused buffer"
        );
    }
    drop(poisoned);
    let k2 = c.counters();
    ensure!(
        k2.quarantined == 0
            && k2.quarantine_released - k0.quarantine_released
                == k2.quarantined_total - k0.quarantined_total,
        "counters {k2:?}"
    );
    ensure!(
        pool.available() == pool_start,
        "pool {} of {pool_start} free",
        pool.available()
    );
    ensure!(
        c.bounce_in_use() == bounce_start,
        "bounce {} bytes in use, {bounce_start} at start",
        c.bounce_in_use()
    );
    // Released by the controller's disable instead of a completion.
    let mut ch = b.channel().map_err(|e| e.to_string())?;
    for t in 0..4u64 {
        ch.submit(io(
            t,
            IoOp::Read,
            900 + t * per as u64,
            per,
            DataBuf::One(IoBuf::new(4096)),
        ))
        .map_err(|_| "submit refused")?;
    }
    std::thread::sleep(Duration::from_millis(30));
    let held = ch.in_flight();
    drop(ch);
    let k3 = c.counters();
    ensure!(
        held > 0 && k3.quarantined > 0,
        "nothing held before the reset: {k3:?}"
    );
    c.reset().map_err(|e| format!("reset: {e}"))?;
    let k4 = c.counters();
    ensure!(
        k4.quarantined == 0,
        "quarantine not released by the reset: {k4:?}"
    );
    ensure!(
        c.bounce_in_use() == bounce_start && pool.available() == pool_start,
        "after reset: bounce {} pool {}",
        c.bounce_in_use(),
        pool.available()
    );
    let mut ch = b.channel().map_err(|e| e.to_string())?;
    run(
        &mut ch,
        io(9, IoOp::Read, 0, per, DataBuf::One(IoBuf::new(4096))),
    )
    .result
    .map_err(|e| format!("read after reset: {e}"))?;
    drop(ch);
    println!(
        "  quarantine: 20 drops, {held_at_drop} I/Os held at drop ({early} completed before), all released after {drained:.2?}; \
         {held} more released by a reset; pool {pool_start}/{pool_start}, bounce {bounce_start} B; {k4:?}"
    );
    c.shutdown().map_err(|e| e.to_string())
}

/// Command timeout recovery against a drive QEMU throttles to a few IOPS:
/// commands outlive a short `io_timeout`, the driver sends Abort (QEMU's
/// model answers "not aborted" for I/O commands), then escalates to a
/// controller reset at twice the timeout. Every command completes exactly
/// once (the fast ones with data, the rest with Aborted) and the
/// controller serves I/O again afterwards.
fn t_timeout_recovery() -> TestResult {
    let opts = ControllerOptions {
        io_timeout: Duration::from_millis(250),
        drain_timeout: Duration::ZERO,
        ..ControllerOptions::default()
    };
    let c = NvmeController::open(SLOW_ADDR, opts).map_err(|e| format!("open {SLOW_ADDR}: {e}"))?;
    ensure!(
        c.identity().serial == "slow",
        "serial {} at {SLOW_ADDR}",
        c.identity().serial
    );
    let b = bdev1(&c)?;
    let bs = b.info().block_size as u64;
    let per = (4096 / bs) as u32;
    let mut ch = b.channel().map_err(|e| e.to_string())?;
    let n = 24u64;
    for tag in 0..n {
        let buf = DataBuf::One(IoBuf::new(4096));
        ch.submit(io(tag, IoOp::Read, tag * per as u64, per, buf))
            .map_err(|_| format!("submit {tag} refused"))?;
    }
    let mut results: HashMap<u64, Result<(), IoError>> = HashMap::new();
    let mut dup = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (results.len() as u64) < n && Instant::now() < deadline {
        ch.poll(&mut |done| {
            if results.insert(done.tag, done.result).is_some() {
                dup = Some(done.tag);
            }
        });
    }
    ensure!(dup.is_none(), "tag {dup:?} completed twice");
    ensure!(
        results.len() as u64 == n,
        "{} of {n} completed in 60 s",
        results.len()
    );
    ensure!(ch.in_flight() == 0, "in_flight {} at end", ch.in_flight());
    let ok = results.values().filter(|r| r.is_ok()).count();
    let aborted = results
        .values()
        .filter(|r| matches!(r, Err(IoError::Aborted)))
        .count();
    ensure!(
        ok + aborted == n as usize,
        "unexpected errors: {:?}",
        results
            .values()
            .filter(|r| !matches!(r, Ok(()) | Err(IoError::Aborted)))
            .collect::<Vec<_>>()
    );
    let k = c.counters();
    ensure!(
        k.timeouts >= 1 && k.aborts_sent >= 1 && k.resets >= 1,
        "counters {k:?}"
    );
    ensure!(aborted >= 1, "nothing aborted by the reset ({ok} ok)");
    // Recovered: a write and its read-back go through. The throttle may
    // still owe time for the requests QEMU flushed during the reset, so a
    // first attempt can time out again; each such attempt must end Aborted
    // (by the next escalation), and one must succeed within 30 s.
    let lba = 1000;
    let t0 = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut w = DataBuf::One(IoBuf::new(4096));
        fill(&mut w, lba, bs as usize, 4096, 99);
        match run(&mut ch, io(100 + attempts, IoOp::Write, lba, per, w)).result {
            Ok(()) => break,
            Err(IoError::Aborted) if t0.elapsed() < Duration::from_secs(30) => continue,
            Err(e) => {
                return Err(format!(
                    "write after recovery, attempt {attempts} at {:.2?}: {e}; {:?}",
                    t0.elapsed(),
                    c.counters()
                ));
            }
        }
    }
    let r = run(
        &mut ch,
        io(1000, IoOp::Read, lba, per, DataBuf::One(IoBuf::new(4096))),
    );
    r.result.map_err(|e| format!("read after recovery: {e}"))?;
    check(&r.buf, lba, bs as usize, 4096, 99)?;
    let k = c.counters();
    println!(
        "  timeout: {ok} completed, {aborted} aborted by the reset; write after recovery took {attempts} attempt(s), {:.2?}; {k:?}",
        t0.elapsed()
    );
    drop(ch);
    c.shutdown().map_err(|e| e.to_string())
}

fn bench(secs: u64) {
    let ctrls = match open_all(ControllerOptions::default(), true) {
        Ok(c) => c,
        Err(e) => {
            println!("BENCH error: {e}");
            return;
        }
    };
    let mut names: Vec<_> = ctrls.keys().cloned().collect();
    names.sort();
    let Some(c) = names.first().and_then(|n| ctrls.get(n)) else {
        println!("BENCH error: no controller bound to vfio-pci");
        return;
    };
    let b = match bdev1(c) {
        Ok(b) => b,
        Err(e) => {
            println!("BENCH error: {e}");
            return;
        }
    };
    let Ok(pool) = c.dma_pool(4096, 64) else {
        println!("BENCH error: pool");
        return;
    };
    let Ok(mut ch) = b.open_channel() else {
        println!("BENCH error: channel");
        return;
    };
    let bs = b.info().block_size as u64;
    let span = b.info().num_blocks / (4096 / bs);
    for qd in [1usize, 32] {
        let mut rng = 0x1234_5678u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % span) * (4096 / bs)
        };
        let mut bufs: Vec<IoBuf> = (0..qd).filter_map(|_| pool.alloc()).collect();
        let start = Instant::now();
        let mut done = 0u64;
        let mut errors = 0u64;
        let mut outstanding = 0;
        let dur = Duration::from_secs(secs);
        while start.elapsed() < dur || outstanding > 0 {
            while outstanding < qd && start.elapsed() < dur {
                let Some(buf) = bufs.pop() else { break };
                match ch.submit(io(
                    0,
                    IoOp::Read,
                    next(),
                    (4096 / bs) as u32,
                    DataBuf::One(buf),
                )) {
                    Ok(()) => outstanding += 1,
                    Err(back) => {
                        if let DataBuf::One(b) = back.buf {
                            bufs.push(b);
                        }
                        break;
                    }
                }
            }
            ch.poll(&mut |c| {
                outstanding -= 1;
                done += 1;
                if c.result.is_err() {
                    errors += 1;
                }
                if let DataBuf::One(b) = c.buf {
                    bufs.push(b);
                }
            });
        }
        let el = start.elapsed().as_secs_f64();
        println!(
            "BENCH vfio randread 4k qd={qd}: {:.0} IOPS ({done} I/Os in {el:.1}s, {errors} errors)",
            done as f64 / el
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("multi");
    println!(
        "nvme-vm-tests: mode {mode}, NVMe functions {:?}",
        nvme_functions()
    );
    let mut r = Runner {
        passed: 0,
        failed: 0,
    };
    match mode {
        "multi" => multi(&mut r),
        "limits" => limits(&mut r),
        "bench" => {
            let secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
            bench(secs);
            println!("SUMMARY bench done");
            return;
        }
        other => {
            println!("unknown mode {other}");
            r.failed += 1;
        }
    }
    println!("SUMMARY passed={} failed={}", r.passed, r.failed);
}
