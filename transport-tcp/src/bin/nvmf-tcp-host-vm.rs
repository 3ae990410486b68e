//! Guest-side test of the NVMe/TCP host against a peer written by others:
//! the Linux kernel's `nvmet-tcp` target (scripts/vm/ktgt-guest.sh sets it
//! up over null_blk and brd). Prints `TEST name ... ok|FAILED: why`,
//! `BENCH ...` and one `SUMMARY passed=N failed=M` line.
//!
//! `nvmf-tcp-host-vm LABEL TRADDR SUBNQN [CUT_CMD RESTORE_CMD]`: with the
//! two shell commands, the port is removed and re-added mid-run, once with
//! error recovery on (the run must ride through it, verify intact) and
//! once with it off (a clear error, no hang).
//!
//! `nvmf-tcp-host-vm --blk DEVICE LABEL [SECS [QD,QD..]]`: the same 4 KiB random-read load
//! on a block device (the kernel's NVMe/TCP host), O_DIRECT `pread` from
//! QD threads, for comparison. Benchmark only: prints `BENCH` lines.

use std::time::{Duration, Instant};

use target_core::host_cmds::{AdminCommands, NvmCommands};
use target_core::iobuf::{DataBuf, IoBuf};
use transport_tcp::host::{ConnectOptions, HostController, HostQpair, QpairState};

const HOSTNQN: &str = "nqn.2026-11.io.nvmf-rs:vm-host";

struct Run {
    label: String,
    passed: u32,
    failed: u32,
}

impl Run {
    fn test(&mut self, name: &str, f: impl FnOnce() -> Result<String, String>) {
        let name = format!("{}_{name}", self.label);
        println!("TEST {name} ... started");
        let t = Instant::now();
        match f() {
            Ok(note) => {
                self.passed += 1;
                println!(
                    "TEST {name} ... ok ({:.1} s) {note}",
                    t.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                self.failed += 1;
                println!("TEST {name} ... FAILED: {e}");
            }
        }
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn opts(traddr: &str, subnqn: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(traddr, subnqn, HOSTNQN);
    o.timeout = Duration::from_secs(20);
    o
}

fn connect(o: ConnectOptions) -> Result<(HostController, HostQpair, u32), String> {
    let mut c = HostController::connect(o).map_err(|e| format!("connect: {e}"))?;
    let (_, bs) = c
        .namespace_geometry(1)
        .map_err(|e| format!("namespace 1: {e}"))?;
    let q = c.take_qpairs().pop().ok_or("no I/O queue granted")?;
    Ok((c, q, bs))
}

/// Writes `count` blocks of `len` bytes at LBAs `lba(i)` with up to `qd`
/// outstanding, then reads them back with the same depth and compares.
fn verify(
    q: &mut HostQpair,
    bs: u32,
    len: usize,
    count: u64,
    qd: u32,
    seed: u64,
    lba: impl Fn(u64) -> u64,
) -> Result<(), String> {
    let blocks = (len / bs as usize) as u32;
    for write in [true, false] {
        let (mut next, mut done) = (0u64, 0u64);
        let mut bad = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        while done < count {
            while next < count && q.outstanding() < qd {
                let r = if write {
                    let d = pattern(len, seed + next);
                    q.write(
                        1,
                        lba(next),
                        blocks,
                        DataBuf::One(IoBuf::from_slice(&d)),
                        next,
                    )
                } else {
                    q.read(1, lba(next), blocks, DataBuf::One(IoBuf::new(len)), next)
                };
                if r.is_err() {
                    return Err(format!("submit refused: {:?}", q.last_error()));
                }
                next += 1;
            }
            done += q.poll(usize::MAX, &mut |c| {
                if !c.status().is_success() {
                    bad.get_or_insert(format!("I/O {} failed: {}", c.tag, c.status()));
                } else if !write {
                    let mut back = vec![0u8; len];
                    c.buf.copy_out(0, &mut back);
                    if back != pattern(len, seed + c.tag) {
                        bad.get_or_insert(format!(
                            "mismatch in I/O {} at LBA {}",
                            c.tag,
                            lba(c.tag)
                        ));
                    }
                }
            }) as u64;
            if let Some(b) = bad.take() {
                return Err(b);
            }
            if q.state() == QpairState::Dead {
                return Err(format!("queue dead: {:?}", q.last_error()));
            }
            if Instant::now() > deadline {
                return Err("no progress".into());
            }
        }
    }
    Ok(())
}

fn randread(q: &mut HostQpair, bs: u32, qd: u32, secs: u64, span: u64) -> Result<f64, String> {
    let blocks = 4096 / bs;
    let mut rng = Rng(0x1234_5678);
    let mut bufs: Vec<DataBuf> = (0..qd).map(|_| DataBuf::One(IoBuf::new(4096))).collect();
    let mut done = 0u64;
    let mut err = None;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    while Instant::now() < end {
        while let Some(b) = bufs.pop() {
            let lba = (rng.next() % (span / 4096)) * blocks as u64;
            if let Err(e) = q.read(1, lba, blocks, b, 0) {
                bufs.push(e.into_buf());
                break;
            }
        }
        q.poll(usize::MAX, &mut |c| {
            if !c.status().is_success() {
                err.get_or_insert(c.status());
            }
            done += 1;
            bufs.push(c.buf);
        });
        if let Some(e) = err {
            return Err(format!("read failed: {e}"));
        }
        if q.state() == QpairState::Dead {
            return Err(format!("queue dead: {:?}", q.last_error()));
        }
    }
    let iops = done as f64 / start.elapsed().as_secs_f64();
    q.drain(Duration::from_secs(20), &mut |_| {})
        .map_err(|e| e.to_string())?;
    Ok(iops)
}

fn sh(cmd: &str) -> Result<(), String> {
    let st = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd}: {st}"))
    }
}

/// A verify workload over 64 slots while the port goes away for 2 s and
/// comes back; every block must read back what was last acknowledged.
fn cut_with_recovery(
    traddr: &str,
    subnqn: &str,
    cut: &str,
    restore: &str,
) -> Result<String, String> {
    let mut o =
        opts(traddr, subnqn).with_recovery(Duration::from_millis(200), Duration::from_secs(60));
    o.kato_ms = 5000;
    let (ctrl, mut q, bs) = connect(o)?;
    const SLOTS: u64 = 64;
    const LEN: usize = 16 * 1024;
    let blocks = (LEN / bs as usize) as u32;
    let lba = |s: u64| 65536 + s * blocks as u64;
    let mut genr = [0u64; SLOTS as usize];
    let mut acked = [0u64; SLOTS as usize];
    let mut busy = [false; SLOTS as usize];
    let mut failed = None;
    let mut writes = 0u64;
    let start = Instant::now();
    let mut phase = 0;
    let mut t_cut = start;
    let mut during = 0u64;
    loop {
        for s in 0..SLOTS {
            if !busy[s as usize] {
                genr[s as usize] += 1;
                let d = pattern(LEN, s * 1_000_000 + genr[s as usize]);
                if q.write(1, lba(s), blocks, DataBuf::One(IoBuf::from_slice(&d)), s)
                    .is_ok()
                {
                    busy[s as usize] = true;
                } else {
                    genr[s as usize] -= 1;
                }
            }
        }
        q.poll(usize::MAX, &mut |c| {
            let s = c.tag as usize;
            busy[s] = false;
            if c.status().is_success() {
                acked[s] = genr[s];
                writes += 1;
            } else {
                failed.get_or_insert(format!("write failed: {}", c.status()));
            }
        });
        if let Some(f) = failed.take() {
            return Err(f);
        }
        let t = start.elapsed();
        if phase == 0 && t > Duration::from_secs(2) {
            println!("  {}: removing the port after {writes} writes", subnqn);
            sh(cut)?;
            t_cut = Instant::now();
            during = writes;
            phase = 1;
        } else if phase == 1 && t_cut.elapsed() > Duration::from_secs(3) {
            println!(
                "  port removed for 3 s: {} writes completed meanwhile; re-adding",
                writes - during
            );
            sh(restore)?;
            phase = 2;
        } else if phase == 2 && t_cut.elapsed() > Duration::from_secs(8) {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("no end: phase {phase}, {:?}", q.stats()));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    q.drain(Duration::from_secs(60), &mut |c| {
        if c.status().is_success() {
            acked[c.tag as usize] = genr[c.tag as usize];
        }
    })
    .map_err(|e| format!("drain: {e}"))?;
    for s in 0..SLOTS {
        let mut got = None;
        q.read(1, lba(s), blocks, DataBuf::One(IoBuf::new(LEN)), s)
            .map_err(|_| "read refused")?;
        q.drain(Duration::from_secs(20), &mut |c| got = Some(c))
            .map_err(|e| format!("read-back: {e}"))?;
        let c = got.ok_or("no read-back completion")?;
        if !c.status().is_success() {
            return Err(format!("read-back of slot {s}: {}", c.status()));
        }
        let mut back = vec![0u8; LEN];
        c.buf.copy_out(0, &mut back);
        if back != pattern(LEN, s * 1_000_000 + acked[s as usize]) {
            return Err(format!(
                "slot {s} does not hold its last acknowledged write"
            ));
        }
    }
    let st = q.stats();
    if ctrl.reconnects() < 1 || st.reconnects < 1 {
        return Err(format!(
            "no reconnect counted: ctrl {}, queue {st:?}",
            ctrl.reconnects()
        ));
    }
    Ok(format!(
        "{writes} writes, controller reconnects {}, queue reconnects {}, requeued {}, retries {}",
        ctrl.reconnects(),
        st.reconnects,
        st.requeued,
        st.retries
    ))
}

/// Recovery off: the port goes away under 32 reads; all of them end with
/// an error and the queue says why, within a bound.
fn cut_without_recovery(
    traddr: &str,
    subnqn: &str,
    cut: &str,
    restore: &str,
) -> Result<String, String> {
    let (ctrl, mut q, bs) = connect(opts(traddr, subnqn))?;
    let blocks = 4096 / bs;
    let r = (|| {
        // Keep 32 reads in flight, then cut.
        let mut n = 0u64;
        let start = Instant::now();
        let mut cut_at = None;
        let mut errors = 0u64;
        loop {
            while q.outstanding() < 32 && q.state() == QpairState::Live {
                if q.read(
                    1,
                    (n % 1024) * blocks as u64,
                    blocks,
                    DataBuf::One(IoBuf::new(4096)),
                    n,
                )
                .is_err()
                {
                    break;
                }
                n += 1;
            }
            q.poll(usize::MAX, &mut |c| {
                if !c.status().is_success() {
                    errors += 1;
                }
            });
            if cut_at.is_none() && start.elapsed() > Duration::from_secs(1) {
                sh(cut)?;
                cut_at = Some(Instant::now());
            }
            if let Some(t) = cut_at {
                if q.state() == QpairState::Dead && q.outstanding() == 0 {
                    let why = q.last_error().unwrap_or_default();
                    if why.is_empty() {
                        return Err("dead queue without a reason".into());
                    }
                    return Ok(format!(
                        "ended {:.1} s after the cut, {errors} I/Os failed: {why}",
                        t.elapsed().as_secs_f64()
                    ));
                }
                if t.elapsed() > Duration::from_secs(30) {
                    return Err(format!("still {:?} 30 s after the cut", q.state()));
                }
            }
        }
    })();
    let restored = sh(restore);
    drop(ctrl);
    let note = r?;
    restored?;
    Ok(note)
}

/// O_DIRECT on x86_64 Linux (kept literal: no libc dependency for one flag).
const O_DIRECT: i32 = 0o40000;

/// `dev` opened for O_DIRECT reads (the page cache out of the figures).
fn open_direct(dev: &str) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECT)
        .open(dev)
        .map_err(|e| format!("{dev}: {e}"))
}

/// 4 KiB random reads at `qd` (one thread per outstanding read) on a block
/// device for `secs`; returns IOPS.
fn blk_randread(dev: &str, qd: u32, secs: u64, span: u64) -> Result<f64, String> {
    use std::os::unix::fs::FileExt;
    let f = std::sync::Arc::new(open_direct(dev)?);
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..qd)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let mut buf = IoBuf::new(4096);
                let mut rng = Rng(0x1234_5678 + t as u64 * 7919);
                let mut n = 0;
                while Instant::now() < end {
                    let off = (rng.next() % (span / 4096)) * 4096;
                    f.read_exact_at(buf.as_mut_slice(), off)
                        .map_err(|e| format!("pread at {off}: {e}"))?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| "thread panicked")??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// 4 KiB random reads at `qd` from one thread through io_uring (what fio's
/// `ioengine=io_uring iodepth=QD` does, interrupt-driven completions): the
/// usual way to hold a queue depth, with none of the 32 threads' wake-ups
/// that `blk_randread` pays for; returns IOPS.
#[allow(unsafe_code)] // io_uring submission takes raw buffer pointers.
fn blk_randread_uring(dev: &str, qd: u32, secs: u64, span: u64) -> Result<f64, String> {
    use io_uring::{IoUring, opcode, types};
    use std::os::fd::AsRawFd;
    let f = open_direct(dev)?;
    let mut ring = IoUring::new(qd.next_power_of_two()).map_err(|e| format!("io_uring: {e}"))?;
    let mut bufs: Vec<IoBuf> = (0..qd).map(|_| IoBuf::new(4096)).collect();
    let mut rng = Rng(0x1234_5678);
    let fd = types::Fd(f.as_raw_fd());
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let queue = |ring: &mut IoUring, bufs: &mut [IoBuf], slot: usize, rng: &mut Rng| {
        let off = (rng.next() % (span / 4096)) * 4096;
        let b = bufs[slot].as_mut_slice();
        let e = opcode::Read::new(fd, b.as_mut_ptr(), b.len() as u32)
            .offset(off)
            .build()
            .user_data(slot as u64);
        // SAFETY: the buffer is `bufs[slot]`, which outlives the ring's use of
        // it: a slot is requeued only after its completion is reaped, and the
        // function reaps every outstanding read before `bufs` is dropped.
        unsafe { ring.submission().push(&e) }.is_ok()
    };
    let mut outstanding = 0u32;
    for slot in 0..qd as usize {
        if queue(&mut ring, &mut bufs, slot, &mut rng) {
            outstanding += 1;
        }
    }
    let mut n = 0u64;
    let mut err = None;
    while outstanding > 0 {
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            err = Some(format!("io_uring_enter: {e}"));
            break;
        }
        let done: Vec<(usize, i32)> = ring
            .completion()
            .map(|c| (c.user_data() as usize, c.result()))
            .collect();
        for (slot, res) in done {
            outstanding -= 1;
            if res != 4096 {
                err.get_or_insert_with(|| format!("read returned {res}"));
                continue;
            }
            n += 1;
            if err.is_none() && Instant::now() < end && queue(&mut ring, &mut bufs, slot, &mut rng)
            {
                outstanding += 1;
            }
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(n as f64 / start.elapsed().as_secs_f64()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if (4..=6).contains(&args.len()) && args[1] == "--blk" {
        // Optional: seconds per figure and a comma-separated QD list, so a
        // guest script can alternate targets with short runs.
        let secs = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5);
        let qds: Vec<u32> = args
            .get(5)
            .map(|s| s.split(',').filter_map(|q| q.parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 32]);
        // BLK_ENGINE=threads: one blocking thread per outstanding read.
        let threads = std::env::var("BLK_ENGINE").is_ok_and(|e| e == "threads");
        let engine = if threads { "threads" } else { "io_uring" };
        for qd in qds {
            let r = if threads {
                blk_randread(&args[2], qd, secs, 32 << 20)
            } else {
                blk_randread_uring(&args[2], qd, secs, 32 << 20)
            };
            match r {
                Ok(iops) => println!(
                    "BENCH {} kernel-host randread 4k {engine} qd={qd}: {iops:.0} IOPS",
                    args[3]
                ),
                Err(e) => println!(
                    "BENCH {} kernel-host randread 4k {engine} qd={qd}: failed: {e}",
                    args[3]
                ),
            }
        }
        return;
    }
    if args.len() < 4 {
        eprintln!(
            "usage: {} LABEL TRADDR SUBNQN [CUT_CMD RESTORE_CMD]",
            args[0]
        );
        std::process::exit(2);
    }
    let bench_only = args[1] == "--bench";
    let args = if bench_only { &args[1..] } else { &args[..] };
    if args.len() < 4 {
        eprintln!("usage: nvmf-tcp-host-vm --bench LABEL TRADDR SUBNQN");
        std::process::exit(2);
    }
    let (label, traddr, subnqn) = (&args[1], &args[2], &args[3]);
    let cut = args.get(4).zip(args.get(5));
    let mut run = Run {
        label: label.clone(),
        passed: 0,
        failed: 0,
    };
    if bench_only {
        // NVMF_BENCH_QDS="1 128" picks the depths (default 1 and 32).
        let qds: Vec<u32> = std::env::var("NVMF_BENCH_QDS")
            .ok()
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|q| q.parse().ok())
                    .collect()
            })
            .filter(|v: &Vec<u32>| !v.is_empty())
            .unwrap_or_else(|| vec![1, 32]);
        for qd in qds {
            match connect(opts(traddr, subnqn))
                .and_then(|(_c, mut q, bs)| randread(&mut q, bs, qd, 5, 32 << 20))
            {
                Ok(iops) => {
                    println!("BENCH {label} nvmf-tcp-host randread 4k qd={qd}: {iops:.0} IOPS")
                }
                Err(e) => println!("BENCH {label} nvmf-tcp-host randread 4k qd={qd}: failed: {e}"),
            }
        }
        return;
    }
    run.test("connect_identify", || {
        let (c, q, bs) = connect(opts(traddr, subnqn))?;
        let id = c.identify_controller();
        let s = |r: std::ops::Range<usize>| String::from_utf8_lossy(&id[r]).trim().to_string();
        let (nsze, _) = c.namespace_geometry(1).map_err(|e| e.to_string())?;
        Ok(format!(
            "model '{}' serial '{}' MDTS {} B (host splits at {}), in-capsule {} B, queues {}, ns1 {} x {} B, digests {:?}",
            s(24..64),
            s(4..24),
            c.max_transfer(),
            q.max_transfer(),
            c.in_capsule_data_size(),
            c.io_queues_granted(),
            nsze,
            bs,
            q.digests()
        ))
    });
    run.test("verify_4k_qd32", || {
        let (_c, mut q, bs) = connect(opts(traddr, subnqn))?;
        let per = 4096 / bs as u64;
        verify(&mut q, bs, 4096, 2048, 32, 1, |i| (i * 7919 % 2048) * per)?;
        Ok(format!("{:?}", q.stats()))
    });
    run.test("verify_1m", || {
        let (_c, mut q, bs) = connect(opts(traddr, subnqn))?;
        let per = (1 << 20) / bs as u64;
        verify(&mut q, bs, 1 << 20, 16, 4, 2, |i| 32768 + i * per)?;
        let s = q.stats();
        if s.split == 0 {
            return Err("1 MiB was not split".into());
        }
        Ok(format!("{s:?}"))
    });
    run.test("verify_digests", || {
        let (_c, mut q, bs) = connect(opts(traddr, subnqn).with_digests(true, true))?;
        if q.digests() != (true, true) {
            return Err(format!("digests not granted: {:?}", q.digests()));
        }
        let per = 4096 / bs as u64;
        verify(&mut q, bs, 4096, 256, 32, 3, |i| 8192 + i * per)?;
        verify(&mut q, bs, 1 << 20, 2, 2, 4, |i| 16384 + i * 2048)?;
        Ok(format!("{:?}", q.stats()))
    });
    for qd in [1u32, 32] {
        run.test(&format!("randread_4k_qd{qd}"), || {
            let (_c, mut q, bs) = connect(opts(traddr, subnqn))?;
            let iops = randread(&mut q, bs, qd, 5, 32 << 20)?;
            println!("BENCH {label} nvmf-tcp-host randread 4k qd={qd}: {iops:.0} IOPS");
            Ok(format!("{iops:.0} IOPS"))
        });
    }
    if let Some((c, r)) = cut {
        run.test("port_removed_with_recovery", || {
            cut_with_recovery(traddr, subnqn, c, r)
        });
        run.test("port_removed_without_recovery", || {
            cut_without_recovery(traddr, subnqn, c, r)
        });
    }
    println!("SUMMARY passed={} failed={}", run.passed, run.failed);
}
