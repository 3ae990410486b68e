//! `nvmf-vm-loop quarantine` (the `limits` guest): the DMA quarantine seen
//! from the target, on the QEMU drive throttled to 4 IOPS.
//!
//! Twenty rounds, each on a freshly started target that exports the slow
//! drive over loop with a 30 ms drain bound. In a round the host sends two
//! writes and four reads (of the previous round's data) that the drive
//! holds for a second or more (six commands at 4 IOPS); then, in even rounds, the namespace is removed
//! (drain past its bound, backend reset, stage 3) and the target stopped;
//! in odd rounds the target is only stopped (drain past its bound,
//! destroy). Either way the NVMe channel goes while those commands are at
//! the controller, so their bounce pages must go to the quarantine.
//!
//! The poison: every 4 KiB chunk this test writes names its own LBA in a
//! header. The bounce area is cut to one maximum command and a round's two
//! writes take a quarter of it each, so its next-fit allocator wraps every
//! other round. If a dropped command's pages were handed out again, the
//! device would meet a later round's data there: a held write would carry
//! chunks naming other LBAs to the disk, or a held read would land in a
//! staged write. Once the device has finished everything (the quarantine
//! empty), every chunk must read back as its own data or as data this test
//! never wrote (the write did not land), the quarantine counters must
//! balance and the bounce area be back where it started.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pcie_driver::{ControllerCounters, ControllerOptions, NvmeController};
use target_core::config::TargetConfig;
use target_core::host_cmds::NvmCommands;
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::target::NamespaceParams;
use target_facade::{StartOptions, Target};
use transport_loop::{ConnectOptions, HostController, HostQpair};

use super::{T, find_by_serial, one};

const NQN: &str = "nqn.2026-11.io.nvmf-rs:vm-quarantine";
const ROUNDS: u64 = 20;
/// Writes per round (each a quarter of the bounce area, LBA 0 onwards),
/// plus [`READS`] 4 KiB reads: two rounds do not fit in the area, so its
/// next-fit allocator wraps every other round.
const WRITES: u64 = 2;
/// Reads per round: with the writes, 1.5 s of work at 4 IOPS, so some is
/// still at the drive however long the teardown takes.
const READS: u64 = 4;
/// Sectors (512 B) per 4 KiB chunk; every chunk names its own LBA.
const CHUNK: u64 = 8;

const MAGIC: &[u8; 4] = b"QTST";

/// The poison: a 4 KiB block that names its own LBA (magic, LBA, then a
/// pattern of it), so data that lands anywhere else is recognised.
fn block(lba: u64) -> IoBuf {
    let mut b = IoBuf::new(4096);
    let s = b.as_mut_slice();
    for (i, x) in s.iter_mut().enumerate() {
        *x = 0xa5 ^ (lba as u8) ^ ((lba >> 8) as u8).rotate_left(3) ^ (i as u8).wrapping_mul(7);
    }
    s[..4].copy_from_slice(MAGIC);
    s[8..16].copy_from_slice(&lba.to_le_bytes());
    b
}

/// What a 4 KiB block read from `lba` holds: `Ok(false)` for data this test
/// never wrote (the write did not land), `Ok(true)` for its own block,
/// `Err` for another block's data (a reused bounce page) or a torn one.
fn classify(got: &[u8], lba: u64) -> Result<bool, String> {
    if &got[..4] != MAGIC {
        return Ok(false);
    }
    let at = u64::from_le_bytes(got[8..16].try_into().map_err(|_| "short block")?);
    if at != lba {
        return Err(format!("LBA {lba} holds the block of LBA {at}"));
    }
    if got != block(lba).as_slice() {
        return Err(format!("LBA {lba}: torn block"));
    }
    Ok(true)
}

fn start_target() -> Result<Target, String> {
    let text = format!(
        "[target]\ndrain_timeout_ms = 30\n[reactors]\ncores = [0]\n\
         [[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
         [[listener]]\ntransport = \"loop\"\nsubsystem = \"{NQN}\"\n"
    );
    let cfg = TargetConfig::from_str(&text, std::path::Path::new("vm-quarantine.toml"))
        .map_err(|e| e.to_string())?;
    Target::start(
        &cfg,
        &StartOptions {
            unpinned: true,
            idle_backoff: Some(Duration::from_micros(20)),
        },
    )
    .map_err(|e| e.to_string())
}

fn export(target: &Target, c: &Arc<NvmeController>) -> Result<(HostController, HostQpair), String> {
    let nsid = c.namespaces().first().ok_or("no namespace")?.nsid;
    let b = c.bdev(nsid).map_err(|e| e.to_string())?;
    let nvmf = target.nvmf();
    nvmf.add_bdev_as("slow", b).map_err(|e| e.to_string())?;
    nvmf.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(1),
            bdev: "slow".into(),
            read_only: false,
            nguid: None,
            uuid: None,
            latency_histogram: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let mut o = ConnectOptions::new(NQN, "nqn.2026-11.io.nvmf-rs:vm-host");
    o.io_queues = 1;
    o.queue_depth = 16;
    o.timeout = T;
    let mut h = target.transport().connect(o).map_err(|e| e.to_string())?;
    let q = h.take_qpairs().pop().ok_or("no I/O queue")?;
    Ok((h, q))
}

/// Target-side teardown counters summed over the poll groups.
fn target_counts(target: &Target) -> (u64, u64) {
    target
        .nvmf()
        .engine()
        .pgs()
        .iter()
        .fold((0, 0), |(r, f), h| {
            (
                r + h
                    .stats
                    .backend_resets
                    .load(std::sync::atomic::Ordering::Relaxed),
                f + h
                    .stats
                    .controllers_failed
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
        })
}

struct Tally {
    held_at_drop: Vec<u64>,
    resets: u64,
    failed: u64,
}

/// A write of `chunks` 4 KiB chunks at `lba`, each naming its own LBA.
fn chunks(lba: u64, chunks: u64) -> IoBuf {
    let mut b = IoBuf::new(chunks as usize * 4096);
    for (i, c) in b.as_mut_slice().chunks_mut(4096).enumerate() {
        c.copy_from_slice(block(lba + i as u64 * CHUNK).as_slice());
    }
    b
}

/// Where round `r`'s write `i` goes.
fn write_lba(r: u64, i: u64, wchunks: u64) -> u64 {
    (r * WRITES + i) * wchunks * CHUNK
}

/// Puts a backlog of reads ahead of the first round (and spends the
/// throttle's initial burst), so that round 0's commands wait at the drive
/// like every later round's, which queue behind the rounds before them.
/// The target stops with them held: they are quarantined too.
fn warm_up(c: &Arc<NvmeController>) -> Result<(), String> {
    let target = start_target()?;
    let (h, mut q) = export(&target, c)?;
    for i in 0..8u64 {
        q.read(
            1,
            i * CHUNK,
            CHUNK as u32,
            DataBuf::One(IoBuf::new(4096)),
            i,
        )
        .map_err(|_| "submit warm-up read")?;
    }
    std::thread::sleep(Duration::from_millis(20));
    target.stop_engine().map_err(|e| e.to_string())?;
    drop(q);
    drop(h);
    Ok(())
}

fn round(c: &Arc<NvmeController>, r: u64, wchunks: u64, t: &mut Tally) -> Result<(), String> {
    // Room in the bounce area for this round: the late completions of
    // the rounds before give their pages back as they are reaped.
    let cap = bounce_capacity(c);
    let need = (WRITES * wchunks + READS) as usize * 4096;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.bounce_in_use() + need > cap {
        c.reap_quarantine();
        if Instant::now() > deadline {
            return Err(format!(
                "round {r}: no bounce room in 30 s: {:?}",
                c.counters()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let target = start_target()?;
    let (h, mut q) = export(&target, c)?;
    for i in 0..WRITES {
        let lba = write_lba(r, i, wchunks);
        let n = (wchunks * CHUNK) as u32;
        q.write(1, lba, n, DataBuf::One(chunks(lba, wchunks)), i)
            .map_err(|_| "submit write")?;
    }
    // Reads of the previous round's first chunks, landing wherever they land.
    for i in 0..READS {
        let lba = write_lba(r.saturating_sub(1), 0, wchunks) + i * CHUNK;
        q.read(
            1,
            lba,
            CHUNK as u32,
            DataBuf::One(IoBuf::new(4096)),
            WRITES + i,
        )
        .map_err(|_| "submit read")?;
    }
    // Let the reactor hand them to the controller.
    std::thread::sleep(Duration::from_millis(20));
    let k0 = c.counters();
    if r.is_multiple_of(2) {
        target
            .nvmf()
            .remove_namespace(NQN, 1)
            .map_err(|e| format!("round {r}: remove namespace: {e}"))?;
    }
    let (resets, failed) = target_counts(&target);
    target
        .stop_engine()
        .map_err(|e| format!("round {r}: stop: {e}"))?;
    let (resets2, failed2) = target_counts(&target);
    t.resets += resets.max(resets2);
    t.failed += failed.max(failed2);
    let k1 = c.counters();
    t.held_at_drop
        .push(k1.quarantined_total - k0.quarantined_total);
    drop(q);
    drop(h);
    Ok(())
}

/// The bounce area of the one I/O queue: the driver makes it at least one
/// maximum command (MDTS) large.
fn bounce_capacity(c: &NvmeController) -> usize {
    c.options()
        .bounce_bytes
        .max(c.max_command_bytes())
        .next_multiple_of(4096)
}

fn balanced(k: &ControllerCounters, k0: &ControllerCounters) -> bool {
    k.quarantined == 0
        && k.quarantine_released - k0.quarantine_released
            == k.quarantined_total - k0.quarantined_total
}

pub(super) fn run() -> Result<String, String> {
    let addr = find_by_serial("slow")?;
    let c = NvmeController::open(
        &addr,
        ControllerOptions {
            // One queue: every round's channel shares it and reaps the late
            // completions of the rounds before.
            max_io_queues: 1,
            // As small as the driver allows: one maximum command.
            bounce_bytes: 0,
            io_timeout: Duration::from_secs(120),
            // The target's backend reset sends Abort (QEMU does not abort
            // I/O) and would reset the controller after this; the rounds
            // end long before, so nothing but the completions and the
            // final shutdown gives the quarantine back.
            abort_timeout: Duration::from_secs(120),
            drain_timeout: Duration::ZERO,
            ..ControllerOptions::default()
        },
    )
    .map_err(|e| format!("open slow: {e}"))?;
    let r = run_on(&c);
    let _ = c.shutdown();
    r
}

fn run_on(c: &Arc<NvmeController>) -> Result<String, String> {
    let bounce_start = c.bounce_in_use();
    let k0 = c.counters();
    let t0 = Instant::now();
    let mut t = Tally {
        held_at_drop: Vec::new(),
        resets: 0,
        failed: 0,
    };
    let wchunks = (bounce_capacity(c) / 4 / 4096) as u64;
    let blocks = c.namespaces().first().map_or(0, |n| n.blocks);
    if wchunks == 0 || write_lba(ROUNDS, 0, wchunks) > blocks {
        return Err(format!(
            "drive too small for {ROUNDS} rounds of {wchunks}-chunk writes"
        ));
    }
    warm_up(c)?;
    for r in 0..ROUNDS {
        round(c, r, wchunks, &mut t)?;
    }
    let rounds_time = t0.elapsed();
    let k1 = c.counters();
    let quarantined_after = k1.quarantined;
    // The late completions arrive at 4 IOPS; once the last is reaped the
    // device has done everything it was told.
    let deadline = Instant::now() + Duration::from_secs(90);
    while c.reap_quarantine() > 0 {
        if Instant::now() > deadline {
            return Err(format!("still quarantined after 90 s: {:?}", c.counters()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained = t0.elapsed();
    // One more target: read every block back.
    let target = start_target()?;
    let (h, mut q) = export(&target, c)?;
    let mut bad = Vec::new();
    let (mut new, mut old) = (0, 0);
    for w in 0..ROUNDS * WRITES {
        let lba = write_lba(0, w, wchunks);
        let bytes = wchunks as usize * 4096;
        q.read(
            1,
            lba,
            (wchunks * CHUNK) as u32,
            DataBuf::One(IoBuf::new(bytes)),
            w,
        )
        .map_err(|_| "submit read-back")?;
        let got = one(&mut q, &format!("read-back at LBA {lba}"))?;
        let mut v = vec![0u8; bytes];
        got.copy_out(0, &mut v);
        for (j, blk) in v.chunks(4096).enumerate() {
            match classify(blk, lba + j as u64 * CHUNK) {
                Ok(true) => new += 1,
                Ok(false) => old += 1,
                Err(e) => bad.push(e),
            }
        }
    }
    drop(q);
    h.disconnect().map_err(|e| e.to_string())?;
    target.stop_engine().map_err(|e| e.to_string())?;
    let k2 = c.counters();
    let held: u64 = t.held_at_drop.iter().sum();
    let note = format!(
        "{ROUNDS} rounds ({} with namespace removal) in {rounds_time:.2?}: commands quarantined \
         at each drop {:?} ({held} in all, {quarantined_after} still held after the last round, all reaped after {drained:.2?}); \
         target backend resets {}, controllers failed (stage 3) {}; 4 KiB chunks of {wchunks}-chunk writes read back: \
         {new} written, {old} not written, {} holding other data; \
         bounce {} B at the end, {bounce_start} B at the start; quarantined_total {} = released {}",
        ROUNDS.div_ceil(2),
        t.held_at_drop,
        t.resets,
        t.failed,
        bad.len(),
        c.bounce_in_use(),
        k2.quarantined_total - k0.quarantined_total,
        k2.quarantine_released - k0.quarantine_released,
    );
    println!("  quarantine: {note}");
    if let Some(r) = t.held_at_drop.iter().position(|&n| n == 0) {
        return Err(format!(
            "round {r}: no read was at the controller when its channel went: {note}"
        ));
    }
    if t.resets == 0 || t.failed == 0 {
        return Err(format!(
            "the drains did not escalate (reset, stage 3): {note}"
        ));
    }
    if !bad.is_empty() {
        return Err(format!(
            "a late command met a reused bounce page: {:?}...: {note}",
            &bad[..bad.len().min(3)]
        ));
    }
    if !balanced(&k2, &k0) {
        return Err(format!("quarantine not balanced {k2:?}: {note}"));
    }
    if c.bounce_in_use() != bounce_start {
        return Err(format!("bounce pages leaked: {note}"));
    }
    Ok(note)
}
