//! One NVMe/TCP connection on the target: one queue pair, owned by the
//! reactor whose poll group holds it.
//!
//! The engine polls the connection through [`QpairTransport`]: each
//! `recv` flushes what is queued for the socket, reads what the socket has
//! (non-blocking), runs the PDU state machine over it and hands out the
//! next complete capsule. A write's data is complete before its capsule is
//! handed out: in-capsule data, or data fetched with one R2T per command
//! (so at most one R2T is outstanding per command, within any MAXR2T) and
//! its H2CData PDUs. `send` turns a response into C2HData PDUs (for reads)
//! and a CapsuleResp, or only the C2HData with SUCCESS when the host
//! disabled SQ flow control at Connect.
//!
//! Bad input ends only this connection: a C2HTermReq with the Fatal Error
//! Status goes out, the socket is shut down, and the engine sees the host
//! gone and drains the queue pair as for any host that left. Nothing is
//! written to a socket that is gone; a response for it just gives its
//! buffer back.
//!
//! The state machine has no I/O of its own ([`ConnCore`]): it consumes
//! bytes and produces bytes, so the fuzzer drives it without a socket.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_queue::SegQueue;
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::nvmf::transport::{Capsule, CapsuleParams, QpairTransport, Response};
use target_core::reactor::wait::{self, WaitRegistration};
use target_core::spec::{AdminOpcode, CompletionEntry, FabricsType, Status, SubmissionEntry};

use crate::pdu::{
    self, CodecParams, DataPdu, Decoded, Fes, IcResp, Pdu, PduError, R2t, TermReq, offset,
};
use crate::pool::BufPool;

/// The discovery subsystem's well-known NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// SGL descriptor type byte: Data Block, Offset subtype: in-capsule data.
const SGL_IN_CAPSULE: u8 = 0x01;
/// SGL descriptor type byte: Transport Data Block, Transport-specific
/// subtype: data moved by R2T/H2CData or C2HData.
const SGL_TRANSPORT: u8 = 0x5a;
/// Connect CATTR bit 2: SQ flow control disabled.
const CATTR_DISABLE_SQFLOW: u32 = 1 << 2;
/// Connect data: SUBNQN offset.
const CONNECT_SUBNQN: usize = 256;
/// Largest C2HData PDU sent.
const C2H_CHUNK: usize = 128 * 1024;
/// Bytes queued for the socket above which responses wait in the engine's
/// backlog (the host is not reading).
const TX_LIMIT: usize = 8 << 20;

/// Per-listener settings every connection of it shares.
#[derive(Clone, Debug)]
pub struct ConnSettings {
    /// Largest in-capsule data accepted on I/O queues (IOCCSZ − 64 bytes).
    pub in_capsule_data_size: u32,
    /// MAXH2CDATA advertised in ICResp.
    pub maxh2cdata: u32,
    /// Largest data transfer of one command (MDTS), bytes.
    pub max_xfer: u32,
    /// Grant a header digest when the host asks for one.
    pub header_digest: bool,
    /// Grant a data digest when the host asks for one.
    pub data_digest: bool,
    /// Subsystem NQN this listener admits (`None`: any). The discovery
    /// subsystem is always admitted.
    pub subsystem: Option<String>,
    /// Largest queue (SQSIZE + 1) a Connect may ask for.
    pub max_queue_depth: u16,
}

impl Default for ConnSettings {
    fn default() -> Self {
        Self {
            in_capsule_data_size: 8192,
            maxh2cdata: 128 * 1024,
            max_xfer: 128 * 1024,
            header_digest: true,
            data_digest: true,
            subsystem: None,
            max_queue_depth: 128,
        }
    }
}

impl ConnSettings {
    /// In-capsule data accepted on any queue: the admin queue of a Linux
    /// host sends up to 8 KiB in capsule regardless of IOCCSZ.
    fn in_capsule_limit(&self) -> usize {
        self.in_capsule_data_size.max(8192) as usize
    }

    /// Largest PDU this connection receives.
    pub fn max_plen(&self) -> usize {
        let capsule = 72 + 4 + self.in_capsule_limit() + 4;
        let data = 24 + 4 + self.maxh2cdata as usize + 4;
        capsule.max(data).max(pdu::MAX_TERM_PLEN)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    None,
    HostToCtrl,
    CtrlToHost,
}

fn direction(sqe: &SubmissionEntry) -> Option<Dir> {
    let bits = if sqe.opcode() == AdminOpcode::FABRICS.0 {
        sqe.fctype().0
    } else {
        sqe.opcode()
    } & 3;
    match bits {
        0 => Some(Dir::None),
        1 => Some(Dir::HostToCtrl),
        2 => Some(Dir::CtrlToHost),
        _ => None,
    }
}

/// A command the connection knows about: waiting for its R2T data, or
/// with the engine.
#[derive(Debug)]
struct Cmd {
    dir: Dir,
    len: u32,
    /// Data being received (R2T in progress).
    pending: Option<(SubmissionEntry, IoBuf)>,
    received: u32,
    ttag: u16,
    digest_error: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitIcReq,
    Ready,
    /// A C2HTermReq is queued; nothing more is read.
    Failed,
}

/// Counters of one connection, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Capsules handed to the engine.
    pub capsules: u64,
    /// R2Ts sent.
    pub r2ts: u64,
    /// H2CData PDUs received.
    pub h2c_pdus: u64,
    /// C2HData PDUs sent.
    pub c2h_pdus: u64,
    /// Responses answered by the transport itself (bad SGL, digest error).
    pub transport_responses: u64,
    /// Responses for a connection already gone (dropped).
    pub dropped_responses: u64,
}

/// The connection's protocol state, without a socket: bytes in through
/// [`ConnCore::feed`], bytes out in [`ConnCore::tx`].
#[derive(Debug)]
pub struct ConnCore {
    settings: Arc<ConnSettings>,
    state: State,
    codec: CodecParams,
    /// Bytes queued for the socket, from `tx_pos`.
    pub(crate) tx: Vec<u8>,
    pub(crate) tx_pos: usize,
    ready: VecDeque<Capsule>,
    cmds: HashMap<u16, Cmd>,
    pool: BufPool,
    next_ttag: u16,
    sqflow_disabled: bool,
    qid: u16,
    /// The fatal error that ended the connection, if any.
    pub fatal: Option<PduError>,
    /// Counters.
    pub stats: ConnStats,
}

impl ConnCore {
    /// A connection waiting for its ICReq.
    pub fn new(settings: Arc<ConnSettings>) -> Self {
        let codec = CodecParams {
            header_digest: false,
            data_digest: false,
            max_plen: settings.max_plen(),
        };
        let max_buf = (settings.max_xfer as usize).max(settings.in_capsule_limit());
        Self {
            settings,
            state: State::AwaitIcReq,
            codec,
            tx: Vec::with_capacity(64 * 1024),
            tx_pos: 0,
            ready: VecDeque::with_capacity(128),
            cmds: HashMap::with_capacity(128),
            pool: BufPool::new(max_buf),
            next_ttag: 0,
            sqflow_disabled: false,
            qid: 0,
            fatal: None,
            stats: ConnStats::default(),
        }
    }

    /// Codec parameters negotiated so far.
    pub fn codec(&self) -> CodecParams {
        self.codec
    }

    /// `true` once a fatal error ended the connection.
    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Bytes queued and not yet written.
    pub fn tx_pending(&self) -> &[u8] {
        &self.tx[self.tx_pos..]
    }

    /// Marks `n` queued bytes written.
    pub fn tx_consume(&mut self, n: usize) {
        self.tx_pos = (self.tx_pos + n).min(self.tx.len());
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
        }
    }

    /// `true` when capsules already parsed wait to be taken.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Takes the next complete capsule.
    pub fn next_capsule(&mut self) -> Option<Capsule> {
        self.ready.pop_front()
    }

    /// Runs the state machine over `buf` (the front of the received byte
    /// stream). Returns how many bytes it consumed and, when it stopped at
    /// an incomplete PDU, how many bytes that PDU needs in all.
    pub fn feed(&mut self, buf: &[u8]) -> (usize, Option<usize>) {
        let mut used = 0;
        while self.state != State::Failed {
            let rest = &buf[used..];
            match pdu::decode(rest, &self.codec) {
                Ok(Decoded::Incomplete { need }) => return (used, Some(need)),
                Ok(Decoded::Pdu {
                    pdu,
                    len,
                    data_digest_error,
                }) => {
                    if let Err(e) = self.handle(pdu, data_digest_error) {
                        self.fail(e, &rest[..len.min(128)]);
                    }
                    used += len;
                }
                Err(e) => {
                    self.fail(e, &rest[..rest.len().min(128)]);
                }
            }
        }
        (used, None)
    }

    /// Ends the connection with a C2HTermReq.
    fn fail(&mut self, e: PduError, hdr: &[u8]) {
        tracing::warn!(error = %e, qid = self.qid, "NVMe/TCP protocol error; terminating the connection");
        let t = TermReq {
            fes: e.fes,
            fei: e.fei,
            data: hdr,
        };
        pdu::encode(&Pdu::C2HTermReq(t), &self.codec, &mut self.tx);
        self.fatal = Some(e);
        self.state = State::Failed;
    }

    fn seq_error(what: &'static str) -> PduError {
        PduError {
            fes: Fes::PDU_SEQUENCE_ERROR,
            fei: 0,
            what,
        }
    }

    fn handle(&mut self, p: Pdu<'_>, ddgst_err: bool) -> Result<(), PduError> {
        if self.state == State::AwaitIcReq {
            let Pdu::IcReq(req) = p else {
                return Err(Self::seq_error("PDU before ICReq"));
            };
            if req.pfv != 0 {
                return Err(PduError {
                    fes: Fes::INVALID_PDU_HEADER_FIELD,
                    fei: offset::PFV,
                    what: "unsupported PDU format version",
                });
            }
            if req.hpda > 31 {
                return Err(PduError {
                    fes: Fes::INVALID_PDU_HEADER_FIELD,
                    fei: offset::HPDA,
                    what: "HPDA out of range",
                });
            }
            let resp = IcResp {
                pfv: 0,
                cpda: 0,
                hdgst: req.hdgst && self.settings.header_digest,
                ddgst: req.ddgst && self.settings.data_digest,
                maxh2cdata: self.settings.maxh2cdata,
            };
            pdu::encode(&Pdu::IcResp(resp), &self.codec, &mut self.tx);
            self.codec.header_digest = resp.hdgst;
            self.codec.data_digest = resp.ddgst;
            self.state = State::Ready;
            return Ok(());
        }
        match p {
            Pdu::CapsuleCmd(c) => {
                self.capsule(c.sqe, c.data, ddgst_err);
                Ok(())
            }
            Pdu::H2CData(d) => self.h2c_data(d, ddgst_err),
            Pdu::H2CTermReq(t) => {
                tracing::warn!(fes = t.fes.0, fei = t.fei, "host terminated the connection");
                self.fatal = Some(PduError {
                    fes: t.fes,
                    fei: t.fei,
                    what: "H2CTermReq from the host",
                });
                // No C2HTermReq in answer: the host already gave up.
                self.state = State::Failed;
                Ok(())
            }
            Pdu::IcReq(_) => Err(Self::seq_error("second ICReq")),
            _ => Err(PduError {
                fes: Fes::INVALID_PDU_HEADER_FIELD,
                fei: offset::PDU_TYPE,
                what: "controller-to-host PDU type from the host",
            }),
        }
    }

    /// A response the transport gives itself, for a command the engine
    /// never saw.
    fn respond_direct(&mut self, cid: u16, status: Status, dw0: u32) {
        let mut cqe = CompletionEntry::new(cid, status);
        cqe.dw0 = dw0;
        cqe.sqid = self.qid;
        pdu::encode(&Pdu::CapsuleResp(cqe), &self.codec, &mut self.tx);
        self.stats.transport_responses += 1;
    }

    fn capsule(&mut self, sqe: SubmissionEntry, data: &[u8], ddgst_err: bool) {
        let cid = sqe.cid();
        if self.cmds.contains_key(&cid) {
            self.respond_direct(cid, Status::COMMAND_ID_CONFLICT.with_dnr(), 0);
            return;
        }
        if ddgst_err {
            tracing::warn!(cid, "data digest error in a command capsule");
            self.respond_direct(cid, Status::TRANSIENT_TRANSPORT_ERROR, 0);
            return;
        }
        let sgl_type = (sqe.dptr[1] >> 56) as u8;
        let sgl_len = sqe.dptr[1] as u32;
        let Some(dir) = direction(&sqe) else {
            self.respond_direct(cid, Status::INVALID_FIELD.with_dnr(), 0);
            return;
        };
        let max = self
            .settings
            .max_xfer
            .max(self.settings.in_capsule_limit() as u32);
        match sgl_type {
            SGL_IN_CAPSULE => {
                if dir != Dir::HostToCtrl {
                    return self.respond_direct(cid, Status::INVALID_FIELD.with_dnr(), 0);
                }
                if sqe.dptr[0] != 0 {
                    return self.respond_direct(cid, Status::SGL_OFFSET_INVALID.with_dnr(), 0);
                }
                if sgl_len as usize != data.len() || data.len() > self.settings.in_capsule_limit() {
                    return self.respond_direct(cid, Status::DATA_SGL_LENGTH_INVALID.with_dnr(), 0);
                }
                let mut buf = self.pool.get(data.len());
                buf.as_mut_slice()[..data.len()].copy_from_slice(data);
                self.track(cid, dir, sgl_len, None);
                self.ready_capsule(sqe, DataBuf::One(buf));
            }
            SGL_TRANSPORT | 0 if !data.is_empty() => {
                self.respond_direct(cid, Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr(), 0);
            }
            SGL_TRANSPORT | 0 if sgl_len == 0 => {
                self.track(cid, Dir::None, 0, None);
                self.ready_capsule(sqe, DataBuf::None);
            }
            SGL_TRANSPORT => {
                if sgl_len > max {
                    return self.respond_direct(cid, Status::DATA_SGL_LENGTH_INVALID.with_dnr(), 0);
                }
                match dir {
                    Dir::CtrlToHost => {
                        let buf = self.pool.get(sgl_len as usize);
                        self.track(cid, dir, sgl_len, None);
                        self.ready_capsule(sqe, DataBuf::One(buf));
                    }
                    Dir::HostToCtrl => {
                        let buf = self.pool.get(sgl_len as usize);
                        let ttag = self.next_ttag;
                        self.next_ttag = self.next_ttag.wrapping_add(1);
                        self.track(cid, dir, sgl_len, Some((sqe, buf)));
                        if let Some(c) = self.cmds.get_mut(&cid) {
                            c.ttag = ttag;
                        }
                        let r2t = R2t {
                            cccid: cid,
                            ttag,
                            r2to: 0,
                            r2tl: sgl_len,
                        };
                        pdu::encode(&Pdu::R2t(r2t), &self.codec, &mut self.tx);
                        self.stats.r2ts += 1;
                    }
                    Dir::None => {
                        self.respond_direct(cid, Status::INVALID_FIELD.with_dnr(), 0);
                    }
                }
            }
            _ => self.respond_direct(cid, Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr(), 0),
        }
    }

    fn track(&mut self, cid: u16, dir: Dir, len: u32, pending: Option<(SubmissionEntry, IoBuf)>) {
        self.cmds.insert(
            cid,
            Cmd {
                dir,
                len,
                pending,
                received: 0,
                ttag: 0,
                digest_error: false,
            },
        );
    }

    /// Hands a complete capsule to the engine, after the transport's own
    /// checks of a Connect (listener's subsystem, SQ flow control).
    fn ready_capsule(&mut self, sqe: SubmissionEntry, buf: DataBuf) {
        if sqe.opcode() == AdminOpcode::FABRICS.0 && sqe.fctype() == FabricsType::CONNECT {
            let mut nqn = [0u8; 256];
            buf.copy_out(CONNECT_SUBNQN, &mut nqn);
            let end = nqn.iter().position(|&b| b == 0).unwrap_or(nqn.len());
            let subnqn = String::from_utf8_lossy(&nqn[..end]);
            if let Some(only) = &self.settings.subsystem
                && subnqn != only.as_str()
                && subnqn != DISCOVERY_NQN
            {
                tracing::warn!(%subnqn, "Connect to a subsystem this listener does not expose");
                self.cmds.remove(&sqe.cid());
                self.give_back(buf);
                // Connect Invalid Parameters, IATTR 1 (in data), IPO SUBNQN.
                return self.respond_direct(
                    sqe.cid(),
                    Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
                    (1 << 16) | CONNECT_SUBNQN as u32,
                );
            }
            let sqsize = (sqe.cdw11 & 0xffff) + 1;
            if sqsize > self.settings.max_queue_depth as u32 {
                tracing::warn!(
                    sqsize,
                    "Connect asks for a queue above the listener's limit"
                );
                self.cmds.remove(&sqe.cid());
                self.give_back(buf);
                // Connect Invalid Parameters, IATTR 0 (in the SQE), IPO SQSIZE.
                return self.respond_direct(
                    sqe.cid(),
                    Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
                    44,
                );
            }
            self.qid = (sqe.cdw10 >> 16) as u16;
            self.sqflow_disabled = (sqe.cdw11 >> 16) & CATTR_DISABLE_SQFLOW != 0;
        }
        self.stats.capsules += 1;
        tracing::trace!(
            qid = self.qid,
            opcode = sqe.opcode(),
            cid = sqe.cid(),
            nsid = sqe.nsid,
            cdw10 = sqe.cdw10,
            len = buf.len(),
            "capsule"
        );
        self.ready.push_back(Capsule { sqe, buf });
    }

    fn h2c_data(&mut self, d: DataPdu<'_>, ddgst_err: bool) -> Result<(), PduError> {
        self.stats.h2c_pdus += 1;
        let bad = |fes: Fes, fei: u32, what: &'static str| PduError { fes, fei, what };
        let Some(cmd) = self.cmds.get_mut(&d.cccid) else {
            return Err(bad(
                Fes::INVALID_PDU_HEADER_FIELD,
                offset::CCCID,
                "H2CData for a command without an R2T",
            ));
        };
        if cmd.pending.is_none() {
            return Err(bad(
                Fes::INVALID_PDU_HEADER_FIELD,
                offset::CCCID,
                "H2CData for a command without an R2T",
            ));
        }
        if cmd.ttag != d.ttag {
            return Err(bad(
                Fes::INVALID_PDU_HEADER_FIELD,
                offset::TTAG,
                "H2CData with a wrong transfer tag",
            ));
        }
        if d.data.len() > self.settings.maxh2cdata as usize {
            return Err(bad(
                Fes::DATA_TRANSFER_LIMIT_EXCEEDED,
                offset::DATAL,
                "H2CData above MAXH2CDATA",
            ));
        }
        let end = d.datao as u64 + d.data.len() as u64;
        if d.datao != cmd.received || end > cmd.len as u64 {
            return Err(bad(
                Fes::DATA_TRANSFER_OUT_OF_RANGE,
                offset::DATAO,
                "H2CData outside the R2T's window",
            ));
        }
        if d.last != (end == cmd.len as u64) {
            return Err(bad(
                Fes::PDU_SEQUENCE_ERROR,
                offset::FLAGS,
                "LAST_PDU does not match the end of the transfer",
            ));
        }
        if let Some((_, buf)) = cmd.pending.as_mut() {
            buf.as_mut_slice()[d.datao as usize..end as usize].copy_from_slice(d.data);
        }
        cmd.received = end as u32;
        cmd.digest_error |= ddgst_err;
        if !d.last {
            return Ok(());
        }
        let digest_error = cmd.digest_error;
        let Some((sqe, buf)) = cmd.pending.take() else {
            return Ok(());
        };
        if digest_error {
            tracing::warn!(cid = d.cccid, "data digest error in H2CData");
            self.cmds.remove(&d.cccid);
            self.pool.put(buf);
            self.respond_direct(d.cccid, Status::TRANSIENT_TRANSPORT_ERROR, 0);
            return Ok(());
        }
        self.ready_capsule(sqe, DataBuf::One(buf));
        Ok(())
    }

    fn give_back(&mut self, buf: DataBuf) {
        if let DataBuf::One(b) = buf {
            self.pool.put(b);
        }
    }

    /// `true` when so much is queued for the socket that responses should
    /// wait in the engine.
    pub fn tx_full(&self) -> bool {
        self.tx.len() - self.tx_pos > TX_LIMIT
    }

    /// Encodes a response: C2HData for a successful read, then the
    /// CapsuleResp unless SQ flow control is off (SUCCESS flag instead).
    pub fn respond(&mut self, resp: Response) {
        let cid = resp.cqe.cid;
        tracing::trace!(
            qid = self.qid,
            cid,
            status = resp.cqe.status,
            dw0 = resp.cqe.dw0,
            "response"
        );
        let cmd = self.cmds.remove(&cid);
        let (dir, len) = cmd.map_or((Dir::None, 0), |c| (c.dir, c.len as usize));
        let ok = resp.cqe.status().is_success();
        // SUCCESS stands for a CQE of all zeros but the CID and status, so
        // it is only used when the command returned no dwords.
        let may_skip = self.sqflow_disabled && resp.cqe.dw0 == 0 && resp.cqe.dw1 == 0;
        let mut skip_resp = false;
        if dir == Dir::CtrlToHost && ok && len > 0 {
            let total = len.min(resp.buf.len());
            let mut off = 0usize;
            for seg in resp.buf.segments() {
                let s = &seg.as_slice()[..seg.len().min(total - off)];
                for chunk in s.chunks(C2H_CHUNK) {
                    let last = off + chunk.len() == total;
                    let success = last && may_skip;
                    let d = DataPdu {
                        cccid: cid,
                        ttag: 0,
                        datao: off as u32,
                        last,
                        success,
                        data: chunk,
                    };
                    pdu::encode(&Pdu::C2HData(d), &self.codec, &mut self.tx);
                    self.stats.c2h_pdus += 1;
                    off += chunk.len();
                    skip_resp = success;
                }
                if off == total {
                    break;
                }
            }
        }
        if !skip_resp {
            pdu::encode(&Pdu::CapsuleResp(resp.cqe), &self.codec, &mut self.tx);
        }
        self.give_back(resp.buf);
    }

    /// Drops a response for a connection that is gone, keeping its buffer.
    pub fn drop_response(&mut self, resp: Response) {
        self.cmds.remove(&resp.cqe.cid);
        self.stats.dropped_responses += 1;
        self.give_back(resp.buf);
    }

    /// Capsule parameters to advertise.
    pub fn capsule_params(&self) -> CapsuleParams {
        CapsuleParams {
            ioccsz: (64 + self.settings.in_capsule_data_size) / 16,
            iorcsz: 1,
            icdoff: 0,
            msdbd: 1,
            // SGLs supported; SGL offset (in-capsule data) when there is any.
            sgls: 1 | if self.settings.in_capsule_data_size > 0 {
                1 << 20
            } else {
                0
            },
        }
    }
}

/// Queued response bytes that are written at once even mid-batch.
const TX_BATCH: usize = 64 * 1024;

/// A socket the engine is done with, still flushing its last bytes.
#[derive(Debug)]
pub(crate) struct Linger {
    pub sock: TcpStream,
    pub buf: Vec<u8>,
    pub pos: usize,
    pub deadline: Instant,
}

impl Linger {
    /// Writes what it can. `true` when finished (flushed, failed or late).
    pub fn flush(&mut self) -> bool {
        while self.pos < self.buf.len() {
            match self.sock.write(&self.buf[self.pos..]) {
                Ok(0) => break,
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() < self.deadline {
                        return false;
                    }
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = self.sock.shutdown(Shutdown::Both);
        true
    }
}

/// A connection as the engine holds it: the state machine plus its
/// non-blocking socket and receive buffer.
pub struct TcpConn {
    core: ConnCore,
    sock: Option<TcpStream>,
    /// The socket registered with the owning reactor's idle wait, so an idle
    /// reactor sleeps in `ppoll` and wakes when the host sends a PDU.
    wait: Option<WaitRegistration>,
    peer: SocketAddr,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    target_closing: bool,
    linger: Arc<SegQueue<Linger>>,
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConn")
            .field("peer", &self.peer)
            .field("open", &self.sock.is_some())
            .finish()
    }
}

impl TcpConn {
    pub(crate) fn new(
        sock: TcpStream,
        peer: SocketAddr,
        settings: Arc<ConnSettings>,
        linger: Arc<SegQueue<Linger>>,
        live: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        let rx_len = settings.max_plen() * 2;
        live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            core: ConnCore::new(settings),
            sock: Some(sock),
            wait: None,
            peer,
            rx: vec![0u8; rx_len].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            target_closing: false,
            linger,
            live,
        }
    }

    fn gone(&mut self, why: &str) {
        self.wait = None;
        if let Some(s) = self.sock.take() {
            tracing::info!(peer = %self.peer, qid = self.core.qid, why, "NVMe/TCP connection closed");
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn flush(&mut self) {
        let Some(sock) = self.sock.as_mut() else {
            return;
        };
        let mut blocked = false;
        loop {
            let pending = self.core.tx_pending();
            if pending.is_empty() {
                break;
            }
            match sock.write(pending) {
                Ok(0) => return self.gone("write returned 0"),
                Ok(n) => self.core.tx_consume(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(_) => return self.gone("write error"),
            }
        }
        if let Some(w) = &self.wait {
            w.want_write(blocked);
        }
        if self.core.failed() && self.core.tx_pending().is_empty() {
            self.gone("protocol error");
        }
    }

    fn read_and_parse(&mut self) {
        // Read while there is room, then parse; a PDU larger than what is
        // left of the buffer moves the partial PDU to the front.
        for _ in 0..4 {
            let Some(sock) = self.sock.as_mut() else {
                return;
            };
            if self.rx_end == self.rx.len() {
                if self.rx_start == 0 {
                    break;
                }
                self.rx.copy_within(self.rx_start..self.rx_end, 0);
                self.rx_end -= self.rx_start;
                self.rx_start = 0;
            }
            let n = match sock.read(&mut self.rx[self.rx_end..]) {
                Ok(0) => {
                    let partial = self.rx_end > self.rx_start;
                    self.gone(if partial {
                        "peer closed mid-PDU"
                    } else {
                        "peer closed"
                    });
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.gone("read error");
                    return;
                }
            };
            self.rx_end += n;
            let (used, need) = self.core.feed(&self.rx[self.rx_start..self.rx_end]);
            self.rx_start += used;
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
            } else if let Some(need) = need
                && self.rx_start + need > self.rx.len()
            {
                self.rx.copy_within(self.rx_start..self.rx_end, 0);
                self.rx_end -= self.rx_start;
                self.rx_start = 0;
            }
            if self.core.failed() {
                break;
            }
        }
    }

    /// The connection's counters.
    pub fn stats(&self) -> ConnStats {
        self.core.stats
    }
}

impl QpairTransport for TcpConn {
    fn capsule_params(&self) -> CapsuleParams {
        self.core.capsule_params()
    }

    fn recv(&mut self) -> Option<Capsule> {
        if let Some(c) = self.core.next_capsule() {
            return Some(c);
        }
        if self.target_closing {
            return None;
        }
        if let Some(sock) = &self.sock
            && !self.wait.as_ref().is_some_and(|w| w.is_current())
        {
            // First poll, or the queue pair moved to another reactor.
            self.wait = None;
            self.wait = wait::register(sock);
        }
        self.flush();
        if !self.core.failed() {
            self.read_and_parse();
            self.flush();
        }
        self.core.next_capsule()
    }

    fn send(&mut self, resp: Response) -> Result<(), Response> {
        if self.sock.is_none() || self.core.failed() {
            self.core.drop_response(resp);
            return Ok(());
        }
        if self.core.tx_full() {
            self.flush();
            if self.core.tx_full() {
                return Err(resp);
            }
        }
        self.core.respond(resp);
        // The poll group calls `publish` once per pass, after the fetch and
        // the backends' completions: one write then carries every response
        // of the pass. A write per response (what the backends' completion
        // loop would otherwise cause) is a syscall and a wake-up of the
        // host's receive worker each, on another CPU: what a queue depth
        // of 32 pays most for.
        if self.core.tx_pending().len() >= TX_BATCH {
            self.flush();
        }
        Ok(())
    }

    fn publish(&mut self) {
        if !self.core.tx_pending().is_empty() {
            self.flush();
        }
    }

    fn host_closed(&self) -> bool {
        self.sock.is_none()
    }

    fn close(&mut self) {
        self.target_closing = true;
    }

    fn finish(&mut self) {
        self.target_closing = true;
        self.wait = None;
        let Some(sock) = self.sock.take() else { return };
        let pending = self.core.tx_pending().to_vec();
        self.core.tx_consume(pending.len());
        tracing::info!(peer = %self.peer, qid = self.core.qid, "NVMe/TCP queue pair destroyed; closing the connection");
        let mut l = Linger {
            sock,
            buf: pending,
            pos: 0,
            deadline: Instant::now() + std::time::Duration::from_secs(2),
        };
        if !l.flush() {
            self.linger.push(l);
        }
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.wait = None;
        if let Some(s) = self.sock.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
