//! The NVMe/TCP host against a scripted fake target (a std TcpListener
//! answering by hand) that misbehaves at one point: a wrong PDU type, a
//! short PDU, a header or data digest error, C2HData past the buffer, an
//! R2T out of range, a C2HTermReq. Every case ends in a clear error within
//! a bound, never a panic or a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use target_core::spec::{CompletionEntry, Status, SubmissionEntry};
use transport_tcp::host::{ConnectOptions, HostController, HostError};
use transport_tcp::pdu::{self, CodecParams, DataPdu, Decoded, Fes, IcResp, Pdu, R2t, TermReq};

const NQN: &str = "nqn.2026-11.io.nvmf-rs:fake";
const HOST: &str = "nqn.2026-11.io.nvmf-rs:host";

/// Where the fake misbehaves.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answers the admin Connect with PDU type 0x0f.
    UnknownPduType,
    /// Answers the admin Connect with a CapsuleCmd (a host's PDU).
    WrongPduType,
    /// Sends 10 bytes of a response capsule, then closes.
    ShortPdu,
    /// A response capsule whose PLEN is below HLEN.
    ShortPlen,
    /// A header digest that does not match (header digests negotiated).
    HeaderDigest,
    /// Identify data with a wrong data digest (data digests negotiated).
    DataDigest,
    /// Identify C2HData reaching past the 4096-byte buffer.
    C2HPastBuffer,
    /// C2HData for a CID that is not outstanding.
    C2HUnknownCid,
    /// SUCCESS before all the data came.
    C2HEarlySuccess,
    /// A C2HTermReq instead of the Identify data.
    TermReq,
    /// Closes the connection when Identify arrives.
    CloseAtIdentify,
    /// Answers Identify with nothing at all (the host's timeout bounds it).
    SilentAtIdentify,
    /// Sets CSTS.CFS instead of CSTS.RDY.
    ControllerFatal,
    /// After Number of Queues, an R2T for a CID the host never used.
    R2tForNothing,
}

struct Fake {
    s: TcpStream,
    codec: CodecParams,
    rx: Vec<u8>,
}

impl Fake {
    fn read_cmd(&mut self) -> Option<(SubmissionEntry, Vec<u8>)> {
        loop {
            match pdu::decode(&self.rx, &self.codec).expect("host PDU") {
                Decoded::Pdu { pdu, len, .. } => {
                    let out = match pdu {
                        Pdu::CapsuleCmd(c) => Some((c.sqe, c.data.to_vec())),
                        _ => None,
                    };
                    self.rx.drain(..len);
                    if out.is_some() {
                        return out;
                    }
                }
                Decoded::Incomplete { .. } => {
                    let mut b = [0u8; 65536];
                    let n = self.s.read(&mut b).ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.rx.extend_from_slice(&b[..n]);
                }
            }
        }
    }

    fn send(&mut self, p: &Pdu<'_>) {
        let mut out = Vec::new();
        pdu::encode(p, &self.codec, &mut out);
        let _ = self.s.write_all(&out);
    }

    fn resp(&mut self, sqe: &SubmissionEntry, dw0: u32, dw1: u32) {
        let mut cqe = CompletionEntry::new(sqe.cid(), Status::SUCCESS);
        cqe.dw0 = dw0;
        cqe.dw1 = dw1;
        self.send(&Pdu::CapsuleResp(cqe));
    }
}

/// Starts the fake; returns its address.
fn fake(fault: Fault) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut f = Fake {
            s,
            codec: CodecParams {
                max_plen: 1 << 20,
                ..CodecParams::default()
            },
            rx: Vec::new(),
        };
        // ICReq: 128 bytes, no digests.
        let mut icreq = [0u8; 128];
        if f.s.read_exact(&mut icreq).is_err() {
            return;
        }
        let hd = icreq[11] & 1 != 0;
        let dd = icreq[11] & 2 != 0;
        f.send(&Pdu::IcResp(IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: hd,
            ddgst: dd,
            maxh2cdata: 65536,
        }));
        f.codec.header_digest = hd;
        f.codec.data_digest = dd;
        while let Some((sqe, _data)) = f.read_cmd() {
            let opcode = sqe.opcode();
            let fctype = sqe.nsid as u8;
            if opcode == 0x7f && fctype == 0x01 {
                match fault {
                    Fault::UnknownPduType => {
                        let _ = f.s.write_all(&[0x0f, 0, 24, 0, 24, 0, 0, 0]);
                        let _ = f.s.write_all(&[0u8; 16]);
                        continue;
                    }
                    Fault::WrongPduType => {
                        f.send(&Pdu::CapsuleCmd(pdu::CapsuleCmd { sqe, data: &[] }));
                        continue;
                    }
                    Fault::ShortPdu => {
                        let mut out = Vec::new();
                        pdu::encode(
                            &Pdu::CapsuleResp(CompletionEntry::new(sqe.cid(), Status::SUCCESS)),
                            &f.codec,
                            &mut out,
                        );
                        let _ = f.s.write_all(&out[..10]);
                        return;
                    }
                    Fault::ShortPlen => {
                        let _ = f.s.write_all(&[0x05, 0, 24, 0, 12, 0, 0, 0, 0, 0, 0, 0]);
                        continue;
                    }
                    Fault::HeaderDigest => {
                        let mut out = Vec::new();
                        pdu::encode(
                            &Pdu::CapsuleResp(CompletionEntry::new(sqe.cid(), Status::SUCCESS)),
                            &f.codec,
                            &mut out,
                        );
                        out[24] ^= 0xff;
                        let _ = f.s.write_all(&out);
                        continue;
                    }
                    _ => f.resp(&sqe, 1, 0),
                }
            } else if opcode == 0x7f && fctype == 0x04 {
                // Property Get: CAP (MQES 127, CQR, TO 1), VS 1.3, CSTS.
                let v: u64 = match sqe.cdw11 {
                    0x00 => 127 | (1 << 16) | (1 << 24) | (1 << 37),
                    0x08 => 0x0001_0300,
                    0x1c if matches!(fault, Fault::ControllerFatal) => 0b10,
                    0x1c => 1,
                    _ => 0,
                };
                f.resp(&sqe, v as u32, (v >> 32) as u32);
            } else if opcode == 0x06 {
                let len = 4096usize;
                let data = vec![0x5au8; len];
                match fault {
                    Fault::DataDigest => {
                        let mut out = Vec::new();
                        pdu::encode(
                            &Pdu::C2HData(DataPdu {
                                cccid: sqe.cid(),
                                ttag: 0,
                                datao: 0,
                                last: true,
                                success: false,
                                data: &data,
                            }),
                            &f.codec,
                            &mut out,
                        );
                        let n = out.len();
                        out[n - 1] ^= 0xff;
                        let _ = f.s.write_all(&out);
                        f.resp(&sqe, 0, 0);
                    }
                    Fault::C2HPastBuffer => f.send(&Pdu::C2HData(DataPdu {
                        cccid: sqe.cid(),
                        ttag: 0,
                        datao: 4000,
                        last: true,
                        success: false,
                        data: &data[..200],
                    })),
                    Fault::C2HUnknownCid => f.send(&Pdu::C2HData(DataPdu {
                        cccid: sqe.cid() ^ 0x0800,
                        ttag: 0,
                        datao: 0,
                        last: true,
                        success: false,
                        data: &data,
                    })),
                    Fault::C2HEarlySuccess => f.send(&Pdu::C2HData(DataPdu {
                        cccid: sqe.cid(),
                        ttag: 0,
                        datao: 0,
                        last: true,
                        success: true,
                        data: &data[..512],
                    })),
                    Fault::TermReq => f.send(&Pdu::C2HTermReq(TermReq {
                        fes: Fes::PDU_SEQUENCE_ERROR,
                        fei: 0,
                        data: &[],
                    })),
                    Fault::CloseAtIdentify => return,
                    Fault::SilentAtIdentify => {
                        std::thread::sleep(Duration::from_secs(5));
                        return;
                    }
                    _ => {
                        f.send(&Pdu::C2HData(DataPdu {
                            cccid: sqe.cid(),
                            ttag: 0,
                            datao: 0,
                            last: true,
                            success: false,
                            data: &data,
                        }));
                        f.resp(&sqe, 0, 0);
                    }
                }
            } else if opcode == 0x09 {
                // Set Features: one I/O queue.
                f.resp(&sqe, 0, 0);
                if matches!(fault, Fault::R2tForNothing) {
                    f.send(&Pdu::R2t(R2t {
                        cccid: 0x0abc,
                        ttag: 1,
                        r2to: 0,
                        r2tl: 4096,
                    }));
                }
            } else if opcode != 0x0c {
                f.resp(&sqe, 0, 0);
            }
        }
    });
    addr
}

/// Connects to a fake with `fault`; returns the error text. Bounded.
fn connect_err(fault: Fault, hd: bool, dd: bool) -> (HostError, String) {
    let addr = fake(fault);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut o = ConnectOptions::new(&addr, NQN, HOST).with_digests(hd, dd);
        o.timeout = Duration::from_secs(2);
        o.io_queues = 0;
        let _ = tx.send(HostController::connect(o).map(|_| ()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{fault:?}: host hung"));
    let e = r.expect_err("connect to a misbehaving target succeeded");
    let text = e.to_string();
    (e, text)
}

fn expect(fault: Fault, hd: bool, dd: bool, words: &[&str]) {
    let (_, text) = connect_err(fault, hd, dd);
    for w in words {
        assert!(text.contains(w), "{fault:?}: {text:?} lacks {w:?}");
    }
}

#[test]
fn unknown_pdu_type() {
    expect(Fault::UnknownPduType, false, false, &["unknown PDU type"]);
}

#[test]
fn wrong_pdu_type() {
    expect(Fault::WrongPduType, false, false, &["expected", "0x04"]);
}

#[test]
fn short_pdu_then_close() {
    expect(Fault::ShortPdu, false, false, &["closed the connection"]);
}

#[test]
fn plen_below_hlen() {
    expect(Fault::ShortPlen, false, false, &["PLEN"]);
}

#[test]
fn header_digest_error() {
    expect(Fault::HeaderDigest, true, false, &["header digest"]);
}

#[test]
fn data_digest_error_fails_the_command() {
    let (e, text) = connect_err(Fault::DataDigest, false, true);
    assert_eq!(
        e.status(),
        Some(Status::TRANSIENT_TRANSPORT_ERROR),
        "Identify with a bad data digest: {text}"
    );
}

#[test]
fn c2h_data_past_the_buffer() {
    expect(Fault::C2HPastBuffer, false, false, &["past the buffer"]);
}

#[test]
fn c2h_data_for_an_unknown_command() {
    expect(Fault::C2HUnknownCid, false, false, &["not outstanding"]);
}

#[test]
fn c2h_success_before_the_data() {
    expect(
        Fault::C2HEarlySuccess,
        false,
        false,
        &["SUCCESS", "512 of 4096"],
    );
}

#[test]
fn c2h_term_req() {
    expect(Fault::TermReq, false, false, &["C2HTermReq", "FES 0x2"]);
}

#[test]
fn target_closes_mid_command() {
    expect(
        Fault::CloseAtIdentify,
        false,
        false,
        &["closed the connection"],
    );
}

#[test]
fn silent_target_times_out() {
    expect(
        Fault::SilentAtIdentify,
        false,
        false,
        &["timed out", "Identify"],
    );
}

#[test]
fn controller_fatal_at_enable() {
    expect(Fault::ControllerFatal, false, false, &["CFS"]);
}

#[test]
fn r2t_for_no_write() {
    // Everything goes well up to Number of Queues; then an R2T for a CID
    // the host never used: the admin queue dies with a clear reason and
    // the controller is marked gone (no recovery asked for).
    let addr = fake(Fault::R2tForNothing);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut o = ConnectOptions::new(&addr, NQN, HOST);
        o.timeout = Duration::from_secs(2);
        o.io_queues = 0;
        let c = HostController::connect(o).expect("bring-up succeeds");
        let start = std::time::Instant::now();
        while !c.is_gone() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = tx.send((c.is_gone(), c.last_error()));
    });
    let (gone, why) = rx.recv_timeout(Duration::from_secs(20)).expect("host hung");
    assert!(gone, "controller not marked gone");
    let why = why.unwrap_or_default();
    assert!(
        why.contains("R2T") && why.contains("not outstanding"),
        "{why}"
    );
}
