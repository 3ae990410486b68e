//! A minimal blocking NVMe/TCP test host built on the crate's codec, and a
//! threaded target with a RAM namespace and a TCP listener on an
//! ephemeral port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use target_core::bdev::{MallocBdev, MallocParams};
use target_core::nvmf::target::{NamespaceParams, ReactorMode};
use target_core::nvmf::{EngineOptions, NvmfTarget, SubsystemParams, TargetOptions};
use target_core::spec::sqe::Psdt;
use target_core::spec::{CompletionEntry, FabricsType, SubmissionEntry};
use transport_tcp::pdu::{self, CapsuleCmd, CodecParams, DataPdu, Decoded, IcReq, Pdu};
use transport_tcp::{ListenerConfig, TcpTransport};

pub const NQN: &str = "nqn.2026-11.io.nvmf-rs:tcp";
pub const HOST: &str = "nqn.2026-11.io.nvmf-rs:host1";
pub const BLOCKS: u64 = 8192;

pub struct Fixture {
    pub target: Arc<NvmfTarget>,
    pub tcp: Arc<TcpTransport>,
    pub addr: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.target.stop();
    }
}

pub fn fixture(cfg: ListenerConfig) -> Fixture {
    let target = NvmfTarget::start(TargetOptions {
        engine: EngineOptions {
            drain_timeout: Duration::from_secs(2),
            max_io_queues: 4,
            ..EngineOptions::default()
        },
        reactors: ReactorMode::Threads {
            cores: vec![None; 2],
            idle_backoff: Duration::from_micros(50),
        },
    })
    .unwrap();
    target
        .add_bdev(Arc::new(
            MallocBdev::new(MallocParams {
                name: "ram0".into(),
                block_size: 512,
                num_blocks: BLOCKS,
            })
            .unwrap(),
        ))
        .unwrap();
    target
        .add_subsystem(SubsystemParams {
            nqn: NQN.into(),
            serial: "SN-TCP".into(),
            model: "nvmf-rs tcp".into(),
            max_namespaces: 4,
            allow_any_host: true,
            hosts: vec![],
        })
        .unwrap();
    target
        .add_namespace(
            NQN,
            NamespaceParams {
                nsid: Some(1),
                bdev: "ram0".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let tcp = TcpTransport::new(&target);
    let info = tcp
        .add_listener(ListenerConfig {
            address: "127.0.0.1:0".into(),
            ..cfg
        })
        .unwrap();
    tcp.start_poller().unwrap();
    Fixture {
        target,
        tcp,
        addr: info.bound.to_string(),
    }
}

/// What came back for one command.
#[derive(Debug)]
pub struct Reply {
    pub cqe: Option<CompletionEntry>,
    pub data: Vec<u8>,
    pub c2h_success: bool,
    pub r2ts: u32,
}

pub struct TestHost {
    pub sock: TcpStream,
    pub codec: CodecParams,
    rx: Vec<u8>,
    pub icdata: usize,
    pub maxh2cdata: u32,
}

pub const SGL_IN_CAPSULE: u64 = 0x01;
pub const SGL_TRANSPORT: u64 = 0x5a;

impl TestHost {
    pub fn raw(addr: &str) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// A connection that has not sent its ICReq.
    pub fn connect_tcp_raw(addr: &str) -> Self {
        Self {
            sock: Self::raw(addr),
            codec: CodecParams {
                header_digest: false,
                data_digest: false,
                max_plen: 4 << 20,
            },
            rx: Vec::new(),
            icdata: 8192,
            maxh2cdata: 0,
        }
    }

    pub fn connect_tcp(addr: &str, hdgst: bool, ddgst: bool) -> Self {
        let sock = Self::raw(addr);
        let mut h = Self {
            sock,
            codec: CodecParams {
                header_digest: false,
                data_digest: false,
                max_plen: 4 << 20,
            },
            rx: Vec::new(),
            icdata: 8192,
            maxh2cdata: 0,
        };
        h.send(&Pdu::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst,
            ddgst,
            maxr2t: 0,
        }));
        match h.read_pdu() {
            (Owned::IcResp(r), _) => {
                h.codec.header_digest = r.hdgst;
                h.codec.data_digest = r.ddgst;
                h.maxh2cdata = r.maxh2cdata;
            }
            other => panic!("expected ICResp, got {other:?}"),
        }
        h
    }

    pub fn send(&mut self, p: &Pdu<'_>) {
        let mut out = Vec::new();
        pdu::encode(p, &self.codec, &mut out);
        self.sock.write_all(&out).unwrap();
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.sock.write_all(b).unwrap();
    }

    /// Reads one PDU; `None` at end of stream.
    pub fn try_read_pdu(&mut self) -> Option<(Owned, bool)> {
        loop {
            match pdu::decode(&self.rx, &self.codec) {
                Ok(Decoded::Pdu {
                    pdu,
                    len,
                    data_digest_error,
                }) => {
                    let o = Owned::from(&pdu);
                    self.rx.drain(..len);
                    return Some((o, data_digest_error));
                }
                Ok(Decoded::Incomplete { .. }) => {
                    let mut b = [0u8; 65536];
                    let n = self.sock.read(&mut b).ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.rx.extend_from_slice(&b[..n]);
                }
                Err(e) => panic!("bad PDU from the target: {e}"),
            }
        }
    }

    pub fn read_pdu(&mut self) -> (Owned, bool) {
        self.try_read_pdu().expect("connection closed")
    }

    /// Sends `sqe` with `write` data (in capsule when `in_capsule`), expects
    /// `read_len` bytes back; answers R2Ts.
    pub fn exec(
        &mut self,
        mut sqe: SubmissionEntry,
        write: &[u8],
        in_capsule: bool,
        read_len: u32,
    ) -> Reply {
        sqe.set_psdt(Psdt::SglMptrContiguous);
        let (ty, len) = if !write.is_empty() {
            (
                if in_capsule {
                    SGL_IN_CAPSULE
                } else {
                    SGL_TRANSPORT
                },
                write.len() as u64,
            )
        } else {
            (SGL_TRANSPORT, read_len as u64)
        };
        sqe.dptr = [0, len | (ty << 56)];
        let data = if in_capsule { write } else { &[] };
        self.send(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data }));
        let cid = sqe.cid();
        let mut reply = Reply {
            cqe: None,
            data: vec![0; read_len as usize],
            c2h_success: false,
            r2ts: 0,
        };
        loop {
            match self.read_pdu().0 {
                Owned::R2t {
                    cccid,
                    ttag,
                    r2to,
                    r2tl,
                } => {
                    assert_eq!(cccid, cid);
                    reply.r2ts += 1;
                    let (mut off, end) = (r2to as usize, (r2to + r2tl) as usize);
                    while off < end {
                        let n = (end - off).min(self.maxh2cdata as usize);
                        self.send(&Pdu::H2CData(DataPdu {
                            cccid,
                            ttag,
                            datao: off as u32,
                            last: off + n == end,
                            success: false,
                            data: &write[off..off + n],
                        }));
                        off += n;
                    }
                }
                Owned::C2HData {
                    cccid,
                    datao,
                    data,
                    success,
                    last,
                } => {
                    assert_eq!(cccid, cid);
                    reply.data[datao as usize..datao as usize + data.len()].copy_from_slice(&data);
                    if success {
                        assert!(last);
                        reply.c2h_success = true;
                        return reply;
                    }
                }
                Owned::CapsuleResp(cqe) => {
                    assert_eq!(cqe.cid, cid);
                    reply.cqe = Some(cqe);
                    return reply;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    pub fn connect(&mut self, qid: u16, sqsize: u16, cntlid: u16, subnqn: &str) -> CompletionEntry {
        let mut sqe = SubmissionEntry::fabrics(FabricsType::CONNECT, 1);
        sqe.cdw10 = (qid as u32) << 16;
        sqe.cdw11 = (sqsize - 1) as u32;
        sqe.cdw12 = 30_000;
        let mut d = vec![0u8; 1024];
        d[..16].copy_from_slice(&[7u8; 16]);
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        d[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
        self.exec(sqe, &d, true, 0).cqe.unwrap()
    }

    pub fn prop_set(&mut self, off: u32, v: u32) -> CompletionEntry {
        let mut sqe = SubmissionEntry::fabrics(FabricsType::PROPERTY_SET, 2);
        sqe.cdw11 = off;
        sqe.cdw12 = v;
        self.exec(sqe, &[], false, 0).cqe.unwrap()
    }

    pub fn prop_get(&mut self, off: u32, size8: bool) -> CompletionEntry {
        let mut sqe = SubmissionEntry::fabrics(FabricsType::PROPERTY_GET, 3);
        sqe.cdw10 = size8 as u32;
        sqe.cdw11 = off;
        self.exec(sqe, &[], false, 0).cqe.unwrap()
    }

    /// Admin queue up: Connect, CC.EN = 1, wait for CSTS.RDY. Returns CNTLID.
    pub fn admin(addr: &str, hdgst: bool, ddgst: bool) -> (Self, u16) {
        Self::admin_to(addr, NQN, hdgst, ddgst)
    }

    pub fn admin_to(addr: &str, nqn: &str, hdgst: bool, ddgst: bool) -> (Self, u16) {
        let mut h = Self::connect_tcp(addr, hdgst, ddgst);
        let c = h.connect(0, 32, 0xffff, nqn);
        assert!(c.status().is_success(), "admin connect: {:?}", c.status());
        let cntlid = c.dw0 as u16;
        let c = h.prop_set(0x14, 1 | (6 << 16) | (4 << 20));
        assert!(c.status().is_success());
        for _ in 0..100 {
            if h.prop_get(0x1c, false).dw0 & 1 == 1 {
                return (h, cntlid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("controller never ready");
    }

    pub fn io(addr: &str, cntlid: u16, qid: u16, hdgst: bool, ddgst: bool) -> Self {
        let mut h = Self::connect_tcp(addr, hdgst, ddgst);
        let c = h.connect(qid, 64, cntlid, NQN);
        assert!(c.status().is_success(), "I/O connect: {:?}", c.status());
        h
    }
}

/// An owned copy of a decoded PDU.
#[derive(Debug)]
pub enum Owned {
    IcResp(pdu::IcResp),
    C2HTermReq {
        fes: u16,
        fei: u32,
    },
    CapsuleResp(CompletionEntry),
    C2HData {
        cccid: u16,
        datao: u32,
        data: Vec<u8>,
        success: bool,
        last: bool,
    },
    R2t {
        cccid: u16,
        ttag: u16,
        r2to: u32,
        r2tl: u32,
    },
    Other(u8),
}

impl From<&Pdu<'_>> for Owned {
    fn from(p: &Pdu<'_>) -> Self {
        match p {
            Pdu::IcResp(r) => Owned::IcResp(*r),
            Pdu::C2HTermReq(t) => Owned::C2HTermReq {
                fes: t.fes.0,
                fei: t.fei,
            },
            Pdu::CapsuleResp(c) => Owned::CapsuleResp(*c),
            Pdu::C2HData(d) => Owned::C2HData {
                cccid: d.cccid,
                datao: d.datao,
                data: d.data.to_vec(),
                success: d.success,
                last: d.last,
            },
            Pdu::R2t(r) => Owned::R2t {
                cccid: r.cccid,
                ttag: r.ttag,
                r2to: r.r2to,
                r2tl: r.r2tl,
            },
            other => Owned::Other(other.pdu_type().0),
        }
    }
}
