//! Arbitrary submission entries against the engine, through its plain API
//! (`RawQueue`): a fresh manual-mode target per input with a connected,
//! enabled controller, one I/O queue, a 512-byte RAM namespace (NSID 1) and
//! a read-only 4 KiB one (NSID 2). The fuzzer then sends commands as it
//! likes on either queue (fabrics commands included, so it may also reset,
//! shut down or disconnect).
//!
//! Input: records of 68 bytes. Byte 0 bit 0 picks the queue (admin / I/O),
//! bit 1 splits the buffer in two; bytes 1..3 are the buffer length (LE,
//! capped at 256 KiB by shifting); byte 3 fills the buffer; bytes 4..68 are
//! the SQE.
//!
//! Checked: no panic; every response answers an outstanding command, once,
//! with its CID and the right SQ ID; no command is answered twice.
#![no_main]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use target_core::bdev::{MallocBdev, MallocParams};
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::raw::{RawQueue, connect_data};
use target_core::nvmf::target::{NamespaceParams, ReactorMode};
use target_core::nvmf::{EngineOptions, NvmfTarget, SubsystemParams, TargetOptions};
use target_core::spec::{FabricsType, SubmissionEntry};
use zerocopy::FromBytes;

const NQN: &str = "nqn.2026-11.io.nvmf-rs:fuzz";
const HOST: &str = "nqn.2026-11.io.nvmf-rs:fuzz-host";
const HOSTID: [u8; 16] = [7; 16];
const RECORD: usize = 68;
const ENTRIES: u16 = 32;

fn setup() -> Option<(Arc<NvmfTarget>, RawQueue, RawQueue)> {
    let t = NvmfTarget::start(TargetOptions {
        engine: EngineOptions {
            drain_timeout: Duration::from_millis(20),
            max_io_queues: 4,
            ..EngineOptions::default()
        },
        reactors: ReactorMode::Manual(1),
    })
    .ok()?;
    for (name, bs, blocks) in [("ram512", 512u32, 256u64), ("ram4k", 4096, 32)] {
        let b = MallocBdev::new(MallocParams {
            name: name.into(),
            block_size: bs,
            num_blocks: blocks,
        })
        .ok()?;
        t.add_bdev(Arc::new(b)).ok()?;
    }
    t.add_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial: "FUZZ".into(),
        model: "fuzz".into(),
        max_namespaces: 4,
        allow_any_host: true,
        hosts: vec![],
    })
    .ok()?;
    for (nsid, bdev, read_only) in [(1, "ram512", false), (2, "ram4k", true)] {
        t.add_namespace(
            NQN,
            NamespaceParams {
                nsid: Some(nsid),
                bdev: bdev.into(),
                read_only,
                ..Default::default()
            },
        )
        .ok()?;
    }
    let mut admin = RawQueue::open(&t, ENTRIES).ok()?;
    admin.timeout = Duration::from_millis(200);
    let cqe = admin.connect(0, ENTRIES, 0, connect_data(&HOSTID, 0xffff, NQN, HOST))?;
    if !cqe.status().is_success() {
        return None;
    }
    let cntlid = cqe.dw0 as u16;
    // Property Set CC: EN, IOSQES 6, IOCQES 4.
    let mut cc = SubmissionEntry::fabrics(FabricsType::PROPERTY_SET, 0);
    cc.cdw11 = 0x14;
    cc.cdw12 = 1 | (6 << 16) | (4 << 20);
    let (cqe, _) = admin.execute(cc, DataBuf::None)?;
    if !cqe.status().is_success() {
        return None;
    }
    let mut io = RawQueue::open(&t, ENTRIES).ok()?;
    io.timeout = Duration::from_millis(200);
    let cqe = io.connect(1, ENTRIES, 0, connect_data(&HOSTID, cntlid, NQN, HOST))?;
    if !cqe.status().is_success() {
        return None;
    }
    Some((t, admin, io))
}

/// Outstanding CIDs per queue; a response must match one of its own queue
/// (the rings carry no SQ ID: a response's ring is its queue).
struct Book {
    outstanding: [HashSet<u16>; 2],
}

impl Book {
    fn reap(&mut self, q: &mut RawQueue, which: usize) {
        while let Some(r) = q.rings_mut().reap() {
            let cid = r.cqe.cid;
            assert!(
                self.outstanding[which].remove(&cid),
                "queue {which}: response for CID {cid} that is not outstanding: {:?}",
                r.cqe
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((t, mut admin, mut io)) = setup() else {
        panic!("fixture failed to start");
    };
    let mut book = Book {
        outstanding: [HashSet::new(), HashSet::new()],
    };
    let mut cid: u16 = 0x100;
    for rec in data.chunks_exact(RECORD) {
        let Ok(sqe) = SubmissionEntry::read_from_bytes(&rec[4..]) else {
            return;
        };
        let raw_len = u16::from_le_bytes([rec[1], rec[2]]) as usize;
        let len = if rec[0] & 0x80 != 0 {
            raw_len << 2
        } else {
            raw_len
        };
        let fill = rec[3];
        let buf = match (len, rec[0] & 2 != 0) {
            (0, _) => DataBuf::None,
            (n, false) => DataBuf::One(IoBuf::from_slice(&vec![fill; n])),
            (n, true) => DataBuf::many(vec![
                IoBuf::from_slice(&vec![fill; n / 2]),
                IoBuf::from_slice(&vec![fill; n - n / 2]),
            ]),
        };
        let which = (rec[0] & 1) as usize;
        let q = if which == 0 { &mut admin } else { &mut io };
        let mut sqe = sqe;
        sqe.set_cid(cid);
        if book.outstanding[which].contains(&cid) {
            // The host side owns CID uniqueness; skip rather than reuse.
            cid = cid.wrapping_add(1);
            continue;
        }
        if q.submit_exact(sqe, buf).is_ok() {
            book.outstanding[which].insert(cid);
        }
        cid = cid.wrapping_add(1);
        for _ in 0..4 {
            t.poll();
            book.reap(&mut admin, 0);
            book.reap(&mut io, 1);
        }
    }
    for _ in 0..64 {
        t.poll();
        book.reap(&mut admin, 0);
        book.reap(&mut io, 1);
    }
    drop(admin);
    drop(io);
    if let Err(e) = t.stop() {
        panic!("target stop failed: {e}");
    }
});
