//! Bad input from the network ends only that connection, with a
//! C2HTermReq carrying the right Fatal Error Status; a healthy connection
//! on the same target keeps working throughout. Every read has a timeout,
//! so a bug fails the test instead of hanging it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use target_core::spec::{NvmOpcode, SubmissionEntry};
use transport_tcp::ListenerConfig;
use transport_tcp::pdu::{self, CapsuleCmd, CodecParams, DataPdu, Fes, IcReq, Pdu};

/// Reads until the C2HTermReq and then the end of the stream.
fn expect_term(h: &mut TestHost, fes: Fes) -> u32 {
    let mut fei = None;
    while let Some((p, _)) = h.try_read_pdu() {
        match p {
            Owned::C2HTermReq { fes: f, fei: i } => {
                assert_eq!(f, fes.0, "fatal error status");
                fei = Some(i);
            }
            other => panic!("expected C2HTermReq, got {other:?}"),
        }
    }
    fei.expect("no C2HTermReq before the connection closed")
}

fn healthy_io(io: &mut TestHost, seed: u8) {
    let data = vec![seed; 4096];
    let sqe = SubmissionEntry::nvm_rw(NvmOpcode::WRITE.0, 20, 1, 100, 8);
    assert!(
        io.exec(sqe, &data, true, 0)
            .cqe
            .unwrap()
            .status()
            .is_success()
    );
    let sqe = SubmissionEntry::nvm_rw(NvmOpcode::READ.0, 21, 1, 100, 8);
    let r = io.exec(sqe, &[], false, 4096);
    assert!(r.cqe.unwrap().status().is_success());
    assert_eq!(r.data, data);
}

fn capsule(sqe: SubmissionEntry, data: &[u8], p: &CodecParams) -> Vec<u8> {
    let mut out = Vec::new();
    pdu::encode(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data }), p, &mut out);
    out
}

#[test]
fn each_bad_input_ends_only_its_connection() {
    let f = fixture(ListenerConfig::default());
    let (_admin, cntlid) = TestHost::admin(&f.addr, false, false);
    let mut io = TestHost::io(&f.addr, cntlid, 1, false, false);
    healthy_io(&mut io, 1);
    let plain = CodecParams::default();
    let read = {
        let mut s = SubmissionEntry::nvm_rw(NvmOpcode::READ.0, 1, 1, 0, 8);
        s.dptr = [0, 4096 | (0x5a << 56)];
        s
    };

    // A PDU before ICReq.
    let mut h = TestHost::connect_tcp_raw(&f.addr);
    h.send_raw(&capsule(read, &[], &plain));
    expect_term(&mut h, Fes::PDU_SEQUENCE_ERROR);
    healthy_io(&mut io, 2);

    // An unknown PDU type.
    let mut h = TestHost::connect_tcp(&f.addr, false, false);
    let mut b = vec![0x08, 0, 24, 0, 24, 0, 0, 0];
    b.resize(24, 0);
    h.send_raw(&b);
    assert_eq!(expect_term(&mut h, Fes::INVALID_PDU_HEADER_FIELD), 0);
    healthy_io(&mut io, 3);

    // A wrong header length.
    let mut h = TestHost::connect_tcp(&f.addr, false, false);
    let mut b = capsule(read, &[], &plain);
    b[2] = 80;
    h.send_raw(&b);
    assert_eq!(expect_term(&mut h, Fes::INVALID_PDU_HEADER_FIELD), 2);

    // A PDU length beyond what the connection accepts.
    let mut h = TestHost::connect_tcp(&f.addr, false, false);
    let mut b = capsule(read, &[], &plain);
    b[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    h.send_raw(&b);
    expect_term(&mut h, Fes::DATA_TRANSFER_LIMIT_EXCEEDED);

    // A header digest error.
    let mut h = TestHost::connect_tcp(&f.addr, true, true);
    let mut b = capsule(read, &[], &h.codec.clone());
    b[10] ^= 0xff;
    h.send_raw(&b);
    expect_term(&mut h, Fes::HEADER_DIGEST_ERROR);
    healthy_io(&mut io, 4);

    // A controller-to-host PDU type from the host.
    let mut h = TestHost::connect_tcp(&f.addr, false, false);
    let mut b = Vec::new();
    pdu::encode(
        &Pdu::R2t(pdu::R2t {
            cccid: 1,
            ttag: 0,
            r2to: 0,
            r2tl: 1,
        }),
        &plain,
        &mut b,
    );
    h.send_raw(&b);
    expect_term(&mut h, Fes::INVALID_PDU_HEADER_FIELD);

    // A second ICReq.
    let mut h = TestHost::connect_tcp(&f.addr, false, false);
    h.send(&Pdu::IcReq(IcReq::default()));
    expect_term(&mut h, Fes::PDU_SEQUENCE_ERROR);

    // H2CData for a command that got no R2T.
    let mut h = TestHost::connect_tcp(&f.addr, false, false);
    h.send(&Pdu::H2CData(DataPdu {
        cccid: 9,
        ttag: 0,
        datao: 0,
        last: true,
        success: false,
        data: &[0; 512],
    }));
    assert_eq!(expect_term(&mut h, Fes::INVALID_PDU_HEADER_FIELD), 8);
    healthy_io(&mut io, 5);

    // H2CData past the R2T's window.
    let mut h = TestHost::io(&f.addr, cntlid, 2, false, false);
    let mut w = SubmissionEntry::nvm_rw(NvmOpcode::WRITE.0, 7, 1, 0, 8);
    w.dptr = [0, 4096 | (0x5a << 56)];
    h.send(&Pdu::CapsuleCmd(CapsuleCmd { sqe: w, data: &[] }));
    let (ttag, r2tl) = match h.read_pdu().0 {
        Owned::R2t { ttag, r2tl, .. } => (ttag, r2tl),
        other => panic!("expected R2T, got {other:?}"),
    };
    assert_eq!(r2tl, 4096);
    h.send(&Pdu::H2CData(DataPdu {
        cccid: 7,
        ttag,
        datao: 0,
        last: true,
        success: false,
        data: &[0; 8192],
    }));
    expect_term(&mut h, Fes::DATA_TRANSFER_OUT_OF_RANGE);
    healthy_io(&mut io, 6);

    // A peer that vanishes mid-PDU: no answer, the target just closes.
    let before = f.tcp.connections();
    let mut h = TestHost::connect_tcp(&f.addr, false, false);
    let b = capsule(read, &[], &plain);
    h.send_raw(&b[..30]);
    drop(h);
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.tcp.connections() > before {
        assert!(
            Instant::now() < deadline,
            "half-PDU connection never closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    healthy_io(&mut io, 7);
}

#[test]
fn data_digest_error_fails_the_command_not_the_connection() {
    let f = fixture(ListenerConfig::default());
    let (_admin, cntlid) = TestHost::admin(&f.addr, false, false);
    let mut io = TestHost::io(&f.addr, cntlid, 1, true, true);
    let data = vec![3u8; 4096];
    let mut w = SubmissionEntry::nvm_rw(NvmOpcode::WRITE.0, 30, 1, 0, 8);
    w.set_psdt(target_core::spec::sqe::Psdt::SglMptrContiguous);
    w.dptr = [0, 4096 | (0x01 << 56)];
    let mut b = capsule(w, &data, &io.codec.clone());
    let n = b.len();
    b[n - 1] ^= 0xff; // the data digest
    io.send_raw(&b);
    match io.read_pdu().0 {
        Owned::CapsuleResp(c) => {
            assert_eq!(c.cid, 30);
            assert_eq!(c.status().sc(), 0x22, "Transient Transport Error");
        }
        other => panic!("expected a response, got {other:?}"),
    }
    healthy_io(&mut io, 8);
}
