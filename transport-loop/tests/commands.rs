//! Every admin, fabrics and I/O command over the loop transport: a success
//! case and each bad input with the exact NVMe status. Manual mode: the
//! target runs only when the host waits, so results are deterministic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use target_core::bdev::DsmRange;
use target_core::host_cmds::{AdminCommands, NvmCommands};
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::NvmfTarget;
use target_core::nvmf::raw::{RawQueue, connect_data};
use target_core::nvmf::target::{NamespaceParams, ReactorMode};
use target_core::spec::{
    AdminOpcode, CompletionEntry, FabricsType, NvmOpcode, Status, SubmissionEntry,
};
use transport_loop::{ConnectOptions, HostController, HostError, HostQpair};

const DNR: fn(Status) -> Status = |s| s.with_dnr();

fn setup() -> (std::sync::Arc<NvmfTarget>, HostController) {
    let (t, lt) = target(ReactorMode::Manual(2));
    t.add_bdev(ram("ro", 512, 64)).unwrap();
    t.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(3),
            bdev: "ro".into(),
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let c = manual_host(&lt, 1);
    (t, c)
}

fn admin(c: &HostController, sqe: SubmissionEntry, len: usize) -> (CompletionEntry, DataBuf) {
    let buf = if len == 0 {
        DataBuf::None
    } else {
        DataBuf::One(IoBuf::new(len))
    };
    c.admin_raw(sqe, buf).unwrap()
}

fn admin_status(c: &HostController, sqe: SubmissionEntry, len: usize) -> Status {
    admin(c, sqe, len).0.status()
}

fn sqe(op: AdminOpcode, nsid: u32, cdw10: u32, cdw11: u32) -> SubmissionEntry {
    let mut s = SubmissionEntry::new(op.0, 0);
    s.nsid = nsid;
    s.cdw10 = cdw10;
    s.cdw11 = cdw11;
    s
}

fn bytes(b: &DataBuf, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    b.copy_out(0, &mut v);
    v
}

fn io(t: &NvmfTarget, q: &mut HostQpair, sqe: SubmissionEntry, buf: DataBuf) -> (Status, DataBuf) {
    q.submit(sqe, buf, 7).map_err(|_| "submit").unwrap();
    let mut out = None;
    for _ in 0..10_000 {
        t.poll();
        q.poll(1, &mut |c| out = Some((c.status(), c.buf)));
        if let Some(o) = out.take() {
            return o;
        }
    }
    panic!("no completion");
}

#[test]
fn identify() {
    let (_t, c) = setup();
    let (cqe, b) = admin(&c, sqe(AdminOpcode::IDENTIFY, 0, 1, 0), 4096);
    assert!(cqe.status().is_success());
    let id = bytes(&b, 4096);
    assert_eq!(&id[24..36], b"nvmf-rs test");
    assert_eq!(u16::from_le_bytes([id[78], id[79]]), c.cntlid());
    assert_eq!(
        u32::from_le_bytes(id[80..84].try_into().unwrap()),
        0x0002_0000
    );
    assert_eq!((id[77], id[512], id[513]), (5, 0x66, 0x44));
    assert_eq!(u32::from_le_bytes(id[516..520].try_into().unwrap()), 16);
    assert_eq!(&id[768..768 + NQN.len()], NQN.as_bytes());
    assert_eq!(u32::from_le_bytes(id[1792..1796].try_into().unwrap()), 4);
    // Namespace 1 and the active list from NSID 1 (strictly greater).
    let (_, b) = admin(&c, sqe(AdminOpcode::IDENTIFY, 1, 0, 0), 4096);
    let ns = bytes(&b, 4096);
    assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), 8192);
    assert_eq!(ns[130], 9);
    assert_ne!(&ns[104..120], &[0u8; 16]);
    let (_, b) = admin(&c, sqe(AdminOpcode::IDENTIFY, 1, 2, 0), 4096);
    assert_eq!(&bytes(&b, 8)[..], &[3, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.active_namespaces().unwrap(), vec![1, 3]);
    let (_, b) = admin(&c, sqe(AdminOpcode::IDENTIFY, 1, 3, 0), 4096);
    let d = bytes(&b, 48);
    assert_eq!((d[0], d[1]), (2, 16));
    assert_eq!((d[20], d[21]), (3, 16));
    assert_eq!((d[40], d[41], d[44]), (4, 1, 0));
    // Inactive but valid NSID: zeros. Bad ones: Invalid Namespace.
    let (cqe, b) = admin(&c, sqe(AdminOpcode::IDENTIFY, 2, 0, 0), 4096);
    assert!(cqe.status().is_success());
    assert!(bytes(&b, 4096).iter().all(|&x| x == 0));
    assert_eq!(
        admin_status(&c, sqe(AdminOpcode::IDENTIFY, 17, 0, 0), 4096),
        DNR(Status::INVALID_NAMESPACE_OR_FORMAT)
    );
    assert_eq!(
        admin_status(&c, sqe(AdminOpcode::IDENTIFY, 2, 3, 0), 4096),
        DNR(Status::INVALID_NAMESPACE_OR_FORMAT)
    );
    assert_eq!(
        admin_status(&c, sqe(AdminOpcode::IDENTIFY, 0, 0x1f, 0), 4096),
        DNR(Status::INVALID_FIELD)
    );
    assert_eq!(
        admin_status(&c, sqe(AdminOpcode::IDENTIFY, 0, 1, 0), 512),
        DNR(Status::DATA_SGL_LENGTH_INVALID)
    );
}

fn log_sqe(lid: u8, nsid: u32, len: usize, rae: bool, offset: u64) -> SubmissionEntry {
    let numd = (len / 4 - 1) as u32;
    let mut s = sqe(
        AdminOpcode::GET_LOG_PAGE,
        nsid,
        lid as u32 | ((rae as u32) << 15) | ((numd & 0xffff) << 16),
        numd >> 16,
    );
    s.cdw12 = offset as u32;
    s.cdw13 = (offset >> 32) as u32;
    s
}

#[test]
fn log_pages() {
    let (t, mut c) = setup();
    let (cqe, b) = admin(&c, log_sqe(0, 0, 1024, false, 0), 1024);
    assert!(cqe.status().is_success());
    let sup = bytes(&b, 24);
    assert!((0..6).all(|l| sup[l * 4] == 1));
    // SMART counts I/O.
    let mut q = c.take_qpairs().pop().unwrap();
    for i in 0..3 {
        let (s, _) = io(
            &t,
            &mut q,
            SubmissionEntry::nvm_rw(NvmOpcode::WRITE.0, 0, 1, i, 1),
            DataBuf::One(IoBuf::new(512)),
        );
        assert!(s.is_success());
    }
    let (_, b) = admin(&c, log_sqe(2, 0xffff_ffff, 512, false, 0), 512);
    let smart = bytes(&b, 512);
    assert_eq!(smart[3], 100);
    assert_eq!(smart[80], 3, "host write commands");
    assert_eq!(
        smart[48], 1,
        "data units written (1000 x 512 B, rounded up)"
    );
    assert_eq!(
        admin_status(&c, log_sqe(2, 1, 512, false, 0), 512),
        DNR(Status::INVALID_FIELD)
    );
    // Offset reads, firmware slot, effects, error log.
    let (_, b) = admin(&c, log_sqe(0, 0, 8, false, 4), 8);
    assert_eq!(bytes(&b, 8), vec![1, 0, 0, 0, 1, 0, 0, 0]);
    let (_, b) = admin(&c, log_sqe(3, 0, 512, false, 0), 512);
    assert_eq!(bytes(&b, 1), vec![1]);
    let (_, b) = admin(&c, log_sqe(5, 0, 4096, false, 0), 4096);
    let e = bytes(&b, 4096);
    assert_eq!(e[0x06 * 4], 1, "identify supported");
    assert_eq!(e[1024 + 4], 0b11, "write: supported, changes LBAs");
    assert_eq!(e[1024 + 2 * 4], 0b01, "read: supported");
    let (cqe, _) = admin(&c, log_sqe(1, 0, 64, false, 0), 64);
    assert!(cqe.status().is_success());
    assert_eq!(
        admin_status(&c, log_sqe(0x42, 0, 64, false, 0), 64),
        DNR(Status::INVALID_LOG_PAGE)
    );
    assert_eq!(
        admin_status(&c, log_sqe(0, 0, 64, false, 2), 64),
        DNR(Status::INVALID_FIELD)
    );
    assert_eq!(
        admin_status(&c, log_sqe(0, 0, 64, false, 0), 16),
        DNR(Status::DATA_SGL_LENGTH_INVALID)
    );
    // Changed namespace list: kept with RAE, cleared without.
    t.remove_namespace(NQN, 3).unwrap();
    let (_, b) = admin(&c, log_sqe(4, 0, 4096, true, 0), 4096);
    assert_eq!(bytes(&b, 8), vec![3, 0, 0, 0, 0, 0, 0, 0]);
    let (_, b) = admin(&c, log_sqe(4, 0, 4096, false, 0), 4096);
    assert_eq!(bytes(&b, 4), vec![3, 0, 0, 0]);
    let (_, b) = admin(&c, log_sqe(4, 0, 4096, false, 0), 4096);
    assert_eq!(bytes(&b, 4), vec![0; 4]);
}

#[test]
fn features() {
    let (_t, c) = setup();
    let get = |fid: u8, sel: u32, cdw11: u32| {
        admin(
            &c,
            sqe(AdminOpcode::GET_FEATURES, 0, fid as u32 | (sel << 8), cdw11),
            16,
        )
    };
    let set = |fid: u8, cdw11: u32| {
        admin_status(&c, sqe(AdminOpcode::SET_FEATURES, 0, fid as u32, cdw11), 0)
    };
    assert!(set(0x01, 0x0403_0203).is_success());
    assert_eq!(get(0x01, 0, 0).0.dw0, 0x0403_0203);
    assert_eq!(get(0x01, 1, 0).0.dw0, 0, "default");
    assert_eq!(get(0x01, 3, 0).0.dw0, 1 << 2, "changeable, not saveable");
    assert_eq!(set(0x02, 1), DNR(Status::INVALID_FIELD), "one power state");
    assert!(set(0x02, 0x40).is_success());
    assert!(
        set(0x04, 0x0010_0100).is_success(),
        "under-temperature threshold"
    );
    assert_eq!(get(0x04, 0, 0x0010_0000).0.dw0, 0x100);
    assert_eq!(get(0x04, 0, 0).0.dw0, 0x157);
    assert_eq!(
        set(0x04, 0x0020_0000),
        DNR(Status::INVALID_FIELD),
        "THSEL 2"
    );
    assert_eq!(set(0x05, 1 << 16), DNR(Status::INVALID_FIELD), "DULBE");
    assert!(set(0x05, 10).is_success());
    assert!(set(0x06, 0).is_success());
    assert_eq!(get(0x06, 0, 0).0.dw0, 0);
    assert_eq!(get(0x07, 0, 0).0.dw0, 0, "one queue granted at connect");
    assert_eq!(set(0x07, 3 | (3 << 16)), Status::COMMAND_SEQUENCE_ERROR);
    assert!(set(0x0b, 1 << 8).is_success());
    assert_eq!(set(0x0b, 1 << 12), DNR(Status::INVALID_FIELD));
    assert!(set(0x0f, 5000).is_success());
    assert_eq!(get(0x0f, 0, 0).0.dw0, 5000);
    assert_eq!(
        set(0x0f, 10_000_000),
        DNR(Status::KEEP_ALIVE_TIMEOUT_INVALID)
    );
    let (cqe, b) = get(0x81, 0, 1);
    assert!(cqe.status().is_success());
    assert_eq!(
        bytes(&b, 16),
        ConnectOptions::new(NQN, HOST).hostid.to_vec()
    );
    assert_eq!(
        get(0x81, 0, 0).0.status(),
        DNR(Status::INVALID_FIELD),
        "EXHID required"
    );
    assert_eq!(set(0x81, 1), DNR(Status::COMMAND_SEQUENCE_ERROR));
    assert_eq!(
        admin_status(
            &c,
            sqe(AdminOpcode::SET_FEATURES, 0, 0x01 | (1 << 31), 0),
            0
        ),
        DNR(Status::FEATURE_ID_NOT_SAVEABLE)
    );
    assert_eq!(set(0x55, 0), DNR(Status::INVALID_FIELD));
    assert_eq!(
        admin_status(&c, sqe(AdminOpcode::SET_FEATURES, 1, 0x01, 0), 0),
        DNR(Status::FEATURE_NOT_NAMESPACE_SPECIFIC)
    );
}

#[test]
fn misc_admin_commands() {
    let (_t, c) = setup();
    let _t = _t;
    c.keep_alive().unwrap();
    assert_eq!(
        admin(&c, sqe(AdminOpcode::ABORT, 0, 1, 0), 0).0.dw0 & 1,
        1,
        "not aborted"
    );
    assert_eq!(
        admin_status(&c, sqe(AdminOpcode::CREATE_IO_SQ, 0, 0, 0), 0),
        DNR(Status::INVALID_OPCODE)
    );
    assert_eq!(
        admin_status(&c, sqe(AdminOpcode(0x55), 0, 0, 0), 0),
        DNR(Status::INVALID_OPCODE)
    );
    let mut fused = sqe(AdminOpcode::IDENTIFY, 0, 1, 0);
    fused.cdw0 |= 1 << 8;
    assert_eq!(admin_status(&c, fused, 4096), DNR(Status::INVALID_FIELD));
    let mut rsvd = sqe(AdminOpcode::IDENTIFY, 0, 1, 0);
    rsvd.cdw0 |= 1 << 12;
    assert_eq!(admin_status(&c, rsvd, 4096), DNR(Status::INVALID_FIELD));
    // AER limit (AERL + 1 = 4): on a raw admin queue, four stay
    // outstanding and a fifth is refused.
    let t = _t;
    let mut q = RawQueue::open(&t, 32).unwrap();
    assert!(
        q.connect(0, 32, 0, connect_data(&[5; 16], 0xffff, NQN, HOST))
            .unwrap()
            .status()
            .is_success()
    );
    let en = target_core::spec::fabrics::PropertyAccess::set_sqe(
        false,
        0x14,
        1 | (6 << 16) | (4 << 20),
        0,
    );
    assert!(
        q.execute(en, DataBuf::None)
            .unwrap()
            .0
            .status()
            .is_success()
    );
    for _ in 0..4 {
        q.submit(
            SubmissionEntry::new(AdminOpcode::ASYNC_EVENT_REQUEST.0, 0),
            DataBuf::None,
        )
        .unwrap();
    }
    let (cqe, _) = q
        .execute(
            SubmissionEntry::new(AdminOpcode::ASYNC_EVENT_REQUEST.0, 0),
            DataBuf::None,
        )
        .unwrap();
    let s_fifth_status = cqe.status();
    assert_eq!(
        s_fifth_status,
        DNR(Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED)
    );
}

#[test]
fn fabrics_properties_and_queue_rules() {
    let (t, mut c) = setup();
    assert_eq!(c.property_get(0x00, true).unwrap() & 0xffff, 1023);
    assert_eq!(c.property_get(0x08, false).unwrap(), 0x0002_0000);
    assert_eq!(c.property_get(0x14, false).unwrap() & 1, 1);
    assert_eq!(c.property_get(0x1c, false).unwrap() & 1, 1);
    let st = |e: HostError| e.status().unwrap();
    assert_eq!(
        st(c.property_get(0x00, false).unwrap_err()),
        DNR(Status::INVALID_FIELD),
        "CAP is 8 bytes"
    );
    assert_eq!(
        st(c.property_get(0x24, false).unwrap_err()),
        DNR(Status::INVALID_FIELD),
        "no AQA on fabrics"
    );
    assert_eq!(
        st(c.property_set(0x1c, 0).unwrap_err()),
        DNR(Status::INVALID_FIELD),
        "CSTS is read-only"
    );
    let mut disc = SubmissionEntry::fabrics(FabricsType::DISCONNECT, 0);
    disc.cdw10 = 0;
    assert_eq!(admin_status(&c, disc, 0), DNR(Status::INVALID_QUEUE_TYPE));
    assert_eq!(
        admin_status(&c, SubmissionEntry::fabrics(FabricsType::CONNECT, 0), 1024),
        DNR(Status::COMMAND_SEQUENCE_ERROR)
    );
    let mut q = c.take_qpairs().pop().unwrap();
    let (s, _) = io(
        &t,
        &mut q,
        SubmissionEntry::fabrics(FabricsType::PROPERTY_GET, 0),
        DataBuf::None,
    );
    assert_eq!(s, DNR(Status::INVALID_OPCODE));
    let (s, _) = io(
        &t,
        &mut q,
        SubmissionEntry::fabrics(FabricsType::CONNECT, 0),
        DataBuf::One(IoBuf::new(1024)),
    );
    assert_eq!(s, DNR(Status::COMMAND_SEQUENCE_ERROR));
    // A command before Connect on a fresh queue.
    let mut raw = RawQueue::open(&t, 32).unwrap();
    let (cqe, _) = raw
        .execute(
            SubmissionEntry::new(AdminOpcode::IDENTIFY.0, 0),
            DataBuf::One(IoBuf::new(4096)),
        )
        .unwrap();
    assert_eq!(cqe.status(), DNR(Status::COMMAND_SEQUENCE_ERROR));
}

#[test]
fn enabling_with_bad_entry_sizes_sets_cfs() {
    let (t, _c) = setup();
    let mut q = RawQueue::open(&t, 32).unwrap();
    let cqe = q
        .connect(0, 32, 0, connect_data(&[9; 16], 0xffff, NQN, HOST))
        .unwrap();
    assert!(cqe.status().is_success());
    let set = target_core::spec::fabrics::PropertyAccess::set_sqe(
        false,
        0x14,
        1 | (5 << 16) | (4 << 20),
        0,
    );
    assert!(
        q.execute(set, DataBuf::None)
            .unwrap()
            .0
            .status()
            .is_success()
    );
    let get = target_core::spec::fabrics::PropertyAccess::get_sqe(false, 0x1c, 0);
    let csts = q.execute(get, DataBuf::None).unwrap().0.dw0;
    assert_eq!(csts & 0b11, 0b10, "CFS set, not ready");
}

#[test]
fn connect_errors() {
    let (t, lt) = target(ReactorMode::Manual(1));
    let raw_connect = |qid: u16, entries: u16, data: IoBuf| {
        let mut q = RawQueue::open(&t, entries.max(32)).unwrap();
        q.connect(qid, entries, 0, data).unwrap()
    };
    let hid = [7u8; 16];
    let c = raw_connect(
        0,
        32,
        connect_data(&hid, 0xffff, "nqn.2026-11.io.nvmf-rs:nope", HOST),
    );
    assert_eq!(
        (c.status(), c.dw0),
        (DNR(Status::CONNECT_INVALID_PARAMETERS), (1 << 16) | 256)
    );
    let c = raw_connect(0, 16, connect_data(&hid, 0xffff, NQN, HOST));
    assert_eq!(
        (c.status(), c.dw0),
        (DNR(Status::CONNECT_INVALID_PARAMETERS), 44),
        "admin SQSIZE below 32"
    );
    let c = raw_connect(0, 2048, connect_data(&hid, 0xffff, NQN, HOST));
    assert_eq!(
        (c.status(), c.dw0),
        (DNR(Status::CONNECT_INVALID_PARAMETERS), 44),
        "above CAP.MQES"
    );
    let c = raw_connect(0, 32, connect_data(&[0; 16], 0xffff, NQN, HOST));
    assert_eq!(
        c.status(),
        DNR(Status::CONNECT_INVALID_PARAMETERS),
        "zero host ID"
    );
    let c = raw_connect(1, 32, connect_data(&hid, 0x1234, NQN, HOST));
    assert_eq!(
        (c.status(), c.dw0),
        (DNR(Status::CONNECT_INVALID_PARAMETERS), (1 << 16) | 16),
        "unknown CNTLID"
    );
    let mut q = RawQueue::open(&t, 32).unwrap();
    let mut s = target_core::nvmf::raw::connect_sqe(0, 32, 0);
    s.cdw10 |= 1;
    let (c, _) = q
        .execute(s, DataBuf::One(connect_data(&hid, 0xffff, NQN, HOST)))
        .unwrap();
    assert_eq!(c.status(), DNR(Status::CONNECT_INCOMPATIBLE_FORMAT));
    // Too many queues: QID above the granted count.
    let mut o = host_opts(2, 32);
    o.background = false;
    let h = lt.connect(o).unwrap();
    assert_eq!(h.io_queues_granted(), 2);
    let e = h.create_qpair(3, 32).unwrap_err();
    assert_eq!(e.status(), Some(DNR(Status::CONNECT_INVALID_PARAMETERS)));
    assert!(matches!(e, HostError::Status { dw0: 42, .. }), "{e:?}");
    let e = h.create_qpair(1, 32).unwrap_err();
    assert!(
        matches!(e, HostError::Status { dw0: 42, .. }),
        "QID 1 already connected: {e:?}"
    );
    // Two hosts get different controllers.
    let mut o = ConnectOptions::new(NQN, "nqn.2026-11.io.nvmf-rs:host2");
    o.background = false;
    o.io_queues = 0;
    let h2 = lt.connect(o).unwrap();
    assert_ne!(h.cntlid(), h2.cntlid());
    // A listener that does not expose the subsystem.
    let lt2 = transport_loop::LoopTransport::new(t.clone());
    assert!(matches!(
        lt2.connect(host_opts(1, 32)),
        Err(HostError::NoListener(_))
    ));
}

#[test]
fn host_access_list() {
    let t = NvmfTarget::start(target_core::nvmf::TargetOptions {
        engine: engine_opts(),
        reactors: ReactorMode::Manual(1),
    })
    .unwrap();
    let nqn = "nqn.2026-11.io.nvmf-rs:private";
    t.add_subsystem(target_core::nvmf::SubsystemParams {
        nqn: nqn.into(),
        serial: "P".into(),
        model: "p".into(),
        max_namespaces: 1,
        allow_any_host: false,
        hosts: vec!["nqn.2026-11.io.nvmf-rs:allowed".into()],
    })
    .unwrap();
    let lt = transport_loop::LoopTransport::new(t.clone());
    lt.listen(nqn);
    let mut o = ConnectOptions::new(nqn, HOST);
    o.background = false;
    o.io_queues = 0;
    assert_eq!(
        lt.connect(o.clone()).unwrap_err().status(),
        Some(DNR(Status::CONNECT_INVALID_HOST))
    );
    t.allow_host(nqn, HOST).unwrap();
    lt.connect(o).unwrap();
}

#[test]
fn io_commands() {
    let (t, mut c) = setup();
    let mut q = c.take_qpairs().pop().unwrap();
    let rw = |op: NvmOpcode, nsid, lba, n| SubmissionEntry::nvm_rw(op.0, 0, nsid, lba, n);
    let buf = |n: usize| DataBuf::One(IoBuf::new(n));
    // Write, read back, write zeroes, deallocate, flush.
    let mut b = IoBuf::new(1024);
    b.as_mut_slice().fill(0x5a);
    assert!(
        io(&t, &mut q, rw(NvmOpcode::WRITE, 1, 100, 2), DataBuf::One(b))
            .0
            .is_success()
    );
    let (s, r) = io(
        &t,
        &mut q,
        rw(NvmOpcode::READ, 1, 100, 2),
        DataBuf::many(vec![IoBuf::new(512), IoBuf::new(512)]),
    );
    assert!(s.is_success());
    assert!(bytes(&r, 1024).iter().all(|&x| x == 0x5a), "vectored read");
    assert!(
        io(
            &t,
            &mut q,
            rw(NvmOpcode::WRITE_ZEROES, 1, 100, 1),
            DataBuf::None
        )
        .0
        .is_success()
    );
    assert!(
        bytes(
            &io(&t, &mut q, rw(NvmOpcode::READ, 1, 100, 1), buf(512)).1,
            512
        )
        .iter()
        .all(|&x| x == 0)
    );
    q.deallocate(
        1,
        &[DsmRange {
            attributes: 0,
            blocks: 1,
            slba: 101,
        }],
        9,
    )
    .unwrap();
    let mut st = None;
    q.drain(Duration::from_secs(5), &mut |c| st = Some(c.status()))
        .unwrap();
    assert!(st.unwrap().is_success());
    assert!(
        bytes(
            &io(&t, &mut q, rw(NvmOpcode::READ, 1, 101, 1), buf(512)).1,
            512
        )
        .iter()
        .all(|&x| x == 0)
    );
    let mut fl = SubmissionEntry::new(NvmOpcode::FLUSH.0, 0);
    fl.nsid = 1;
    assert!(io(&t, &mut q, fl, DataBuf::None).0.is_success());
    // Bad inputs.
    assert_eq!(
        io(&t, &mut q, rw(NvmOpcode(0x7e), 1, 0, 1), buf(512)).0,
        DNR(Status::INVALID_OPCODE)
    );
    for nsid in [0, 2, 0xffff_ffff] {
        assert_eq!(
            io(&t, &mut q, rw(NvmOpcode::READ, nsid, 0, 1), buf(512)).0,
            DNR(Status::INVALID_NAMESPACE_OR_FORMAT),
            "nsid {nsid:#x}"
        );
    }
    assert_eq!(
        io(&t, &mut q, rw(NvmOpcode::READ, 1, 8191, 2), buf(1024)).0,
        DNR(Status::LBA_OUT_OF_RANGE)
    );
    assert_eq!(
        io(
            &t,
            &mut q,
            rw(NvmOpcode::READ, 1, u64::MAX - 1, 4),
            buf(2048)
        )
        .0,
        DNR(Status::LBA_OUT_OF_RANGE)
    );
    assert_eq!(
        io(&t, &mut q, rw(NvmOpcode::READ, 1, 0, 257), buf(257 * 512)).0,
        DNR(Status::INVALID_FIELD),
        "above MDTS (128 KiB)"
    );
    assert_eq!(
        io(&t, &mut q, rw(NvmOpcode::READ, 1, 0, 8), buf(1024)).0,
        DNR(Status::DATA_SGL_LENGTH_INVALID)
    );
    assert_eq!(
        io(&t, &mut q, rw(NvmOpcode::WRITE, 3, 0, 1), buf(512)).0,
        DNR(Status::NAMESPACE_WRITE_PROTECTED)
    );
    assert!(
        io(&t, &mut q, rw(NvmOpcode::READ, 3, 0, 1), buf(512))
            .0
            .is_success(),
        "reads of a read-only namespace work"
    );
    let mut pi = rw(NvmOpcode::READ, 1, 0, 1);
    pi.cdw12 |= 1 << 27;
    assert_eq!(io(&t, &mut q, pi, buf(512)).0, DNR(Status::INVALID_FIELD));
    let mut fl = SubmissionEntry::new(NvmOpcode::FLUSH.0, 0);
    fl.nsid = 1;
    fl.cdw13 = 1;
    assert_eq!(
        io(&t, &mut q, fl, DataBuf::None).0,
        DNR(Status::INVALID_FIELD)
    );
}

#[test]
fn command_id_conflict_and_queue_full() {
    let (t, lt) = target(ReactorMode::Manual(1));
    let mut o = host_opts(1, 4);
    o.background = false;
    o.kato_ms = 0;
    let mut c = lt.connect(o).unwrap();
    let mut q = c.take_qpairs().pop().unwrap();
    // Depth 4: three usable slots, then QueueFull until a completion.
    for i in 0..3 {
        q.read(1, i, 1, DataBuf::One(IoBuf::new(512)), i).unwrap();
    }
    assert!(matches!(
        q.read(1, 9, 1, DataBuf::One(IoBuf::new(512)), 9),
        Err(transport_loop::SubmitError::QueueFull(_))
    ));
    q.drain(Duration::from_secs(5), &mut |_| {}).unwrap();
    q.read(1, 9, 1, DataBuf::One(IoBuf::new(512)), 9).unwrap();
    q.drain(Duration::from_secs(5), &mut |_| {}).unwrap();
    drop(q);
    // Two commands with one CID: the second is refused while the first is
    // with the backend (a delay backend keeps it there).
    let d = target_core::bdev::DelayBdev::new(
        target_core::bdev::DelayParams {
            name: "slow".into(),
            latency: target_core::bdev::Latency::Fixed(Duration::from_millis(50)),
            seed: 0,
        },
        t.bdev("ram0").unwrap(),
    )
    .unwrap();
    t.add_bdev(std::sync::Arc::new(d)).unwrap();
    t.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(5),
            bdev: "slow".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let mut raw = RawQueue::open(&t, 32).unwrap();
    assert!(
        raw.connect(0, 32, 0, connect_data(&[3; 16], 0xffff, NQN, HOST))
            .unwrap()
            .status()
            .is_success()
    );
    let cntlid = t
        .subsystem(NQN)
        .unwrap()
        .state()
        .controllers
        .keys()
        .copied()
        .max()
        .unwrap();
    let set = target_core::spec::fabrics::PropertyAccess::set_sqe(
        false,
        0x14,
        1 | (6 << 16) | (4 << 20),
        0,
    );
    raw.execute(set, DataBuf::None).unwrap();
    let mut ioq = RawQueue::open(&t, 32).unwrap();
    assert!(
        ioq.connect(1, 32, 0, connect_data(&[3; 16], cntlid, NQN, HOST))
            .unwrap()
            .status()
            .is_success()
    );
    let mut a = SubmissionEntry::nvm_rw(NvmOpcode::READ.0, 77, 5, 0, 1);
    a.set_cid(77);
    ioq.submit_exact(a, DataBuf::One(IoBuf::new(512))).unwrap();
    ioq.submit_exact(a, DataBuf::One(IoBuf::new(512))).unwrap();
    let first = ioq.next_response().unwrap();
    assert_eq!(first.cqe.status(), DNR(Status::COMMAND_ID_CONFLICT));
    let second = ioq.next_response().unwrap();
    assert!(second.cqe.status().is_success());
}
