//! A test host over 127.0.0.1 against the target: connect, identify,
//! writes in capsule and by R2T, reads by C2HData, with and without digests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use target_core::spec::{AdminOpcode, NvmOpcode, SubmissionEntry};
use transport_tcp::ListenerConfig;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn write_read(io: &mut TestHost, lba: u64, len: usize, seed: u8, in_capsule: bool) {
    let data = pattern(len, seed);
    let blocks = (len / 512) as u32;
    let mut sqe = SubmissionEntry::nvm_rw(NvmOpcode::WRITE.0, 10, 1, lba, blocks);
    sqe.set_cid(10);
    let r = io.exec(sqe, &data, in_capsule, 0);
    let cqe = r.cqe.expect("write response");
    assert!(cqe.status().is_success(), "write: {:?}", cqe.status());
    assert_eq!(
        r.r2ts,
        if in_capsule { 0 } else { 1 },
        "one R2T per command"
    );
    let sqe = SubmissionEntry::nvm_rw(NvmOpcode::READ.0, 11, 1, lba, blocks);
    let r = io.exec(sqe, &[], false, len as u32);
    assert!(r.cqe.expect("read response").status().is_success());
    assert!(r.data == data, "read back {len} bytes at {lba}");
}

fn run(hdgst: bool, ddgst: bool) {
    let f = fixture(ListenerConfig::default());
    let (mut admin, cntlid) = TestHost::admin(&f.addr, hdgst, ddgst);
    assert_eq!(admin.codec.header_digest, hdgst);
    assert_eq!(admin.codec.data_digest, ddgst);
    let mut sqe = SubmissionEntry::new(AdminOpcode::IDENTIFY.0, 5);
    sqe.cdw10 = 1;
    let r = admin.exec(sqe, &[], false, 4096);
    assert!(r.cqe.unwrap().status().is_success());
    let id = r.data;
    let ioccsz = u32::from_le_bytes(id[1792..1796].try_into().unwrap());
    assert_eq!(ioccsz, (64 + 8192) / 16, "IOCCSZ reflects in-capsule data");
    let sgls = u32::from_le_bytes(id[536..540].try_into().unwrap());
    assert_eq!(sgls & ((1 << 20) | 1), (1 << 20) | 1);
    assert_eq!(&id[768..768 + NQN.len()], NQN.as_bytes());
    let mut io = TestHost::io(&f.addr, cntlid, 1, hdgst, ddgst);
    write_read(&mut io, 0, 4096, 1, true);
    write_read(&mut io, 8, 8192, 2, true);
    write_read(&mut io, 64, 64 * 1024, 3, false);
    write_read(&mut io, 512, 128 * 1024, 4, false);
    drop(io);
    drop(admin);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.tcp.connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "connections never torn down"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn io_without_digests() {
    run(false, false);
}

#[test]
fn io_with_header_and_data_digests() {
    run(true, true);
}

#[test]
fn sq_flow_control_disabled_gets_c2h_success() {
    let f = fixture(ListenerConfig::default());
    let (_admin, cntlid) = TestHost::admin(&f.addr, false, false);
    let mut io = TestHost::connect_tcp(&f.addr, false, false);
    let mut sqe = SubmissionEntry::fabrics(target_core::spec::FabricsType::CONNECT, 1);
    sqe.cdw10 = 1 << 16;
    sqe.cdw11 = 63 | (1 << 2) << 16; // CATTR: disable SQ flow control
    let mut d = vec![0u8; 1024];
    d[..16].copy_from_slice(&[7u8; 16]);
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    d[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
    d[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
    assert!(io.exec(sqe, &d, true, 0).cqe.unwrap().status().is_success());
    let sqe = SubmissionEntry::nvm_rw(NvmOpcode::READ.0, 11, 1, 0, 8);
    let r = io.exec(sqe, &[], false, 4096);
    assert!(
        r.c2h_success && r.cqe.is_none(),
        "read ends with C2HData SUCCESS"
    );
}

#[test]
fn listener_subsystem_filter_and_queue_limit() {
    let f = fixture(ListenerConfig {
        subsystem: Some("nqn.2026-11.io.nvmf-rs:other".into()),
        max_queue_depth: 32,
        ..ListenerConfig::default()
    });
    let mut h = TestHost::connect_tcp(&f.addr, false, false);
    let c = h.connect(0, 32, 0xffff, NQN);
    assert_eq!(c.status().sc(), 0x82, "Connect Invalid Parameters");
    assert_eq!(c.dw0, (1 << 16) | 256, "IATTR/IPO point at SUBNQN");
    let f = fixture(ListenerConfig {
        max_queue_depth: 32,
        ..ListenerConfig::default()
    });
    let mut h = TestHost::connect_tcp(&f.addr, false, false);
    let c = h.connect(0, 64, 0xffff, NQN);
    assert_eq!(c.status().sc(), 0x82);
    assert_eq!(c.dw0, 44, "IPO points at SQSIZE");
}

#[test]
fn discovery_controller_lists_listener_and_subsystem() {
    let f = fixture(ListenerConfig::default());
    let (mut d, _) = TestHost::admin_to(&f.addr, transport_tcp::DISCOVERY_NQN, false, false);
    let mut sqe = SubmissionEntry::new(AdminOpcode::IDENTIFY.0, 5);
    sqe.cdw10 = 1;
    let id = d.exec(sqe, &[], false, 4096).data;
    assert_eq!(id[111], 2, "CNTRLTYPE: discovery controller");
    let log = |d: &mut TestHost, len: u32| {
        let mut sqe = SubmissionEntry::new(AdminOpcode::GET_LOG_PAGE.0, 6);
        sqe.cdw10 = 0x70 | ((len / 4 - 1) << 16);
        let r = d.exec(sqe, &[], false, len);
        assert!(r.cqe.unwrap().status().is_success());
        r.data
    };
    let hdr = log(&mut d, 1024);
    let numrec = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    assert_eq!(numrec, 2, "the subsystem and the discovery subsystem");
    let page = log(&mut d, 1024 * 3);
    assert_eq!(page[..16], hdr[..16], "same generation and count");
    let e = &page[1024..2048];
    assert_eq!(&e[0..3], &[3, 1, 2], "TCP, IPv4, NVM subsystem");
    assert_eq!(&e[256..256 + NQN.len()], NQN.as_bytes());
    let port = f.addr.rsplit(':').next().unwrap();
    assert_eq!(&e[32..32 + port.len()], port.as_bytes());
    assert_eq!(&e[512..521], b"127.0.0.1");
    assert_eq!(page[2048 + 2], 3, "current discovery subsystem entry");
    // The generation changes when what the host sees changes.
    f.target
        .add_subsystem(target_core::nvmf::SubsystemParams {
            nqn: "nqn.2026-11.io.nvmf-rs:second".into(),
            serial: "S2".into(),
            model: "m".into(),
            max_namespaces: 1,
            allow_any_host: true,
            hosts: vec![],
        })
        .unwrap();
    let hdr2 = log(&mut d, 1024);
    assert_eq!(u64::from_le_bytes(hdr2[8..16].try_into().unwrap()), 3);
    assert_ne!(hdr2[..8], hdr[..8], "GENCTR changed");
}
