//! The command table of one host queue (admin or I/O) over a [`Wire`]:
//! CIDs, in-capsule data or R2T/H2CData for writes, C2HData (with SUCCESS)
//! for reads, splitting of transfers above the controller's MDTS and
//! their recombination, bounded retries of retryable statuses.
//!
//! A *request* is what the caller submitted (one tag, one buffer, one
//! completion). It is carried by one or more *parts*, each a byte range of
//! the request's buffer sent as one NVMe command with its own CID. CIDs
//! are `slot | sequence << 12`: a response whose slot is idle or whose
//! sequence does not match is stale and counted, never delivered.
//!
//! The wire may die (end of stream, a bad PDU, a C2HTermReq); the table
//! survives it, so the owner can either fail what is outstanding or park
//! it and resubmit on a new connection.

use std::collections::VecDeque;

use target_core::iobuf::DataBuf;
use target_core::spec::{CompletionEntry, NvmOpcode, Status, SubmissionEntry};

use super::wire::{Wire, set_sgl, term_error};
use super::{HostCompletion, HostError, SubmitError};
use crate::pdu::{self, CapsuleCmd, DataPdu, Fes, Pdu};

const SLOT_BITS: u16 = 12;
const SLOT_MASK: u16 = (1 << SLOT_BITS) - 1;
/// Deepest queue a host queue pair supports (CID slot bits).
pub const MAX_DEPTH: u16 = 1 << SLOT_BITS;
const FABRICS_OPCODE: u8 = 0x7f;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Dir {
    #[default]
    None,
    Write,
    Read,
}

/// One command's share of a request.
#[derive(Clone, Copy, Debug)]
struct Part {
    req: u16,
    off: u32,
    len: u32,
    retries: u32,
}

#[derive(Debug, Default)]
struct Req {
    busy: bool,
    tag: u64,
    buf: DataBuf,
    sqe: SubmissionEntry,
    dir: Dir,
    /// Bytes per block when the request is split (0: sent whole).
    bs: u32,
    /// Parts not yet completed.
    parts_left: u32,
    /// First failed completion, else the last one.
    fail: Option<CompletionEntry>,
    last: CompletionEntry,
}

#[derive(Clone, Copy, Debug)]
struct Cmd {
    busy: bool,
    seq: u16,
    part: Part,
    recvd: u32,
    digest_error: bool,
}

/// Counters of one host queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostQpairStats {
    /// Requests submitted.
    pub submitted: u64,
    /// Requests completed (delivered to the caller).
    pub completed: u64,
    /// NVMe commands sent (a split request sends several).
    pub commands: u64,
    /// Requests split because they exceed the transfer limit (MDTS).
    pub split: u64,
    /// Writes whose data went in the command capsule.
    pub in_capsule: u64,
    /// R2Ts answered.
    pub r2ts: u64,
    /// Reads that ended with C2HData SUCCESS (no response capsule).
    pub c2h_success: u64,
    /// Responses that matched no outstanding command (must stay 0).
    pub stale: u64,
    /// Data digest errors in C2HData (the command is retried or fails
    /// with Transient Transport Error).
    pub data_digest_errors: u64,
    /// Resubmissions after a retryable failure (DNR clear).
    pub retries: u64,
    /// Commands resubmitted because their connection was lost.
    pub requeued: u64,
    /// Times this queue connected again after it was lost.
    pub reconnects: u64,
}

/// The command table and its connection.
#[derive(Debug)]
pub(crate) struct HostConn {
    pub wire: Option<Wire>,
    /// Why the wire died (kept until the next attach).
    pub dead_reason: Option<String>,
    pub qid: u16,
    reqs: Box<[Req]>,
    free_reqs: Vec<u16>,
    cmds: Box<[Cmd]>,
    free_cmds: Vec<u16>,
    queued: VecDeque<Part>,
    /// Largest write data sent in capsule.
    pub in_capsule: u32,
    /// Largest data of one command; longer reads and writes are split
    /// (0: no limit).
    pub max_xfer: u32,
    /// Retryable failures are resubmitted this often (0: delivered).
    pub max_retries: u32,
    /// Accept submissions while the wire is down (recovery on): they wait.
    pub queue_while_down: bool,
    scratch: Vec<u8>,
    outstanding: u32,
    pub stats: HostQpairStats,
}

impl HostConn {
    pub fn new(wire: Wire, qid: u16, depth: u16, in_capsule: u32, max_xfer: u32) -> Self {
        let usable = depth.saturating_sub(1).clamp(1, MAX_DEPTH);
        let cmds = (0..usable)
            .map(|_| Cmd {
                busy: false,
                seq: 0,
                part: Part {
                    req: 0,
                    off: 0,
                    len: 0,
                    retries: 0,
                },
                recvd: 0,
                digest_error: false,
            })
            .collect();
        Self {
            wire: Some(wire),
            dead_reason: None,
            qid,
            reqs: (0..usable).map(|_| Req::default()).collect(),
            free_reqs: (0..usable).rev().collect(),
            cmds,
            free_cmds: (0..usable).rev().collect(),
            queued: VecDeque::with_capacity(usable as usize * 2),
            in_capsule,
            max_xfer,
            max_retries: 0,
            queue_while_down: false,
            scratch: Vec::new(),
            outstanding: 0,
            stats: HostQpairStats::default(),
        }
    }

    /// Requests that can be outstanding at once.
    pub fn depth(&self) -> u16 {
        self.reqs.len() as u16
    }

    /// Requests submitted and not completed.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    pub fn is_live(&self) -> bool {
        self.wire.is_some()
    }

    /// A new connection for the same table (after a reconnect).
    pub fn attach(&mut self, wire: Wire) {
        self.wire = Some(wire);
        self.dead_reason = None;
    }

    /// Submits a request. Reads and writes above `max_xfer` are split.
    pub fn submit(
        &mut self,
        sqe: SubmissionEntry,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, SubmitError> {
        if self.wire.is_none() && !self.queue_while_down {
            return Err(SubmitError::Closed(buf));
        }
        let Some(r) = self.free_reqs.pop() else {
            return Err(SubmitError::QueueFull(buf));
        };
        let len = buf.len() as u32;
        let dir = if len == 0 {
            Dir::None
        } else {
            let bits = if sqe.opcode() == FABRICS_OPCODE {
                sqe.fctype().0
            } else {
                sqe.opcode()
            };
            match bits & 3 {
                2 => Dir::Read,
                _ => Dir::Write,
            }
        };
        let rw = sqe.opcode() == NvmOpcode::READ.0 || sqe.opcode() == NvmOpcode::WRITE.0;
        let mut bs = 0;
        if self.qid != 0 && rw && self.max_xfer > 0 && len > self.max_xfer {
            let blocks = sqe.block_count().max(1);
            let per = len / blocks;
            if per * blocks == len && per > 0 && per <= self.max_xfer {
                bs = per;
            }
        }
        let req = &mut self.reqs[r as usize];
        req.busy = true;
        req.tag = tag;
        req.buf = buf;
        req.sqe = sqe;
        req.dir = dir;
        req.bs = bs;
        req.fail = None;
        if let Some(per_chunk) = self.max_xfer.checked_div(bs) {
            let chunk = per_chunk * bs;
            let mut off = 0;
            let mut n = 0;
            while off < len {
                let l = chunk.min(len - off);
                self.queued.push_back(Part {
                    req: r,
                    off,
                    len: l,
                    retries: 0,
                });
                off += l;
                n += 1;
            }
            req.parts_left = n;
            self.stats.split += 1;
        } else {
            req.parts_left = 1;
            self.queued.push_back(Part {
                req: r,
                off: 0,
                len,
                retries: 0,
            });
        }
        self.outstanding += 1;
        self.stats.submitted += 1;
        self.pump();
        Ok(r)
    }

    /// Sends queued parts while command slots are free.
    fn pump(&mut self) {
        let Some(w) = self.wire.as_mut() else { return };
        while !self.queued.is_empty() {
            let Some(slot) = self.free_cmds.pop() else {
                break;
            };
            let Some(part) = self.queued.pop_front() else {
                break;
            };
            let req = &self.reqs[part.req as usize];
            let c = &mut self.cmds[slot as usize];
            c.busy = true;
            c.part = part;
            c.recvd = 0;
            c.digest_error = false;
            let mut sqe = req.sqe;
            sqe.set_cid(slot | ((c.seq & 0xf) << SLOT_BITS));
            if let (Some(first), Some(blocks)) =
                (part.off.checked_div(req.bs), part.len.checked_div(req.bs))
            {
                sqe.set_slba(req.sqe.slba() + first as u64);
                sqe.cdw12 = (sqe.cdw12 & !0xffff) | (blocks.saturating_sub(1) & 0xffff);
            }
            let inline = req.dir == Dir::Write && part.len <= self.in_capsule;
            set_sgl(&mut sqe, part.len, inline);
            let data: &[u8] = if inline {
                self.stats.in_capsule += 1;
                slice_of(&req.buf, part.off, part.len, &mut self.scratch)
            } else {
                &[]
            };
            pdu::encode(
                &Pdu::CapsuleCmd(CapsuleCmd { sqe, data }),
                &w.codec,
                &mut w.tx,
            );
            self.stats.commands += 1;
        }
    }

    /// Drives the connection: sends, receives, completes. Delivers up to
    /// `max` request completions to `f`; returns how many. A dead wire
    /// delivers nothing (see [`Self::fail_all`] and [`Self::park_inflight`]).
    pub fn poll(&mut self, max: usize, f: &mut impl FnMut(HostCompletion)) -> usize {
        if self.wire.is_none() {
            return 0;
        }
        self.pump();
        let mut n = 0;
        let r = self.process(max, &mut n, f);
        if let Err((e, term)) = r {
            self.kill(e.to_string(), term);
        }
        n
    }

    fn process(
        &mut self,
        max: usize,
        n: &mut usize,
        f: &mut impl FnMut(HostCompletion),
    ) -> Result<(), (HostError, Option<(Fes, u32)>)> {
        for _ in 0..16 {
            let Some(w) = self.wire.as_mut() else {
                return Ok(());
            };
            w.flush().map_err(|e| (e, None))?;
            loop {
                if *n >= max {
                    return Ok(());
                }
                let Some(w) = self.wire.as_mut() else {
                    return Ok(());
                };
                let ev = match pdu::decode(&w.rx[w.rx_start..w.rx_end], &w.codec) {
                    Ok(pdu::Decoded::Incomplete { .. }) => break,
                    Ok(pdu::Decoded::Pdu {
                        pdu,
                        len,
                        data_digest_error,
                    }) => {
                        let ev = Ev::from(&pdu, &w.rx, data_digest_error);
                        w.rx_start += len;
                        ev
                    }
                    Err(e) => {
                        return Err((
                            HostError::Protocol(format!("bad PDU: {e}")),
                            Some((e.fes, e.fei)),
                        ));
                    }
                };
                self.handle(ev, n, f)?;
            }
            self.pump();
            let Some(w) = self.wire.as_mut() else {
                return Ok(());
            };
            w.flush().map_err(|e| (e, None))?;
            if !w.fill().map_err(|e| (e, None))? {
                break;
            }
        }
        Ok(())
    }

    fn cmd_of(&self, cid: u16) -> Option<usize> {
        let slot = (cid & SLOT_MASK) as usize;
        let c = self.cmds.get(slot)?;
        (c.busy && (c.seq & 0xf) == cid >> SLOT_BITS).then_some(slot)
    }

    fn handle(
        &mut self,
        ev: Ev,
        n: &mut usize,
        f: &mut impl FnMut(HostCompletion),
    ) -> Result<(), (HostError, Option<(Fes, u32)>)> {
        let proto = |s: String, fes: Fes, fei: u32| (HostError::Protocol(s), Some((fes, fei)));
        match ev {
            Ev::Resp(cqe) => match self.cmd_of(cqe.cid) {
                Some(slot) => {
                    let c = &self.cmds[slot];
                    let req = &self.reqs[c.part.req as usize];
                    if cqe.status().is_success() && req.dir == Dir::Read && c.recvd != c.part.len {
                        return Err(proto(
                            format!(
                                "read CID {:#x} answered with {} of {} bytes",
                                cqe.cid, c.recvd, c.part.len
                            ),
                            Fes::PDU_SEQUENCE_ERROR,
                            0,
                        ));
                    }
                    *n += self.complete(slot, cqe, f) as usize;
                }
                None => self.stats.stale += 1,
            },
            Ev::C2H {
                cccid,
                datao,
                start,
                len,
                success,
                digest_error,
            } => {
                let Some(slot) = self.cmd_of(cccid) else {
                    return Err(proto(
                        format!("C2HData for CID {cccid:#x}, which is not outstanding"),
                        Fes::INVALID_PDU_HEADER_FIELD,
                        pdu::offset::CCCID,
                    ));
                };
                let c = &mut self.cmds[slot];
                let req = &mut self.reqs[c.part.req as usize];
                if req.dir != Dir::Read {
                    return Err(proto(
                        format!("C2HData for CID {cccid:#x}, which reads nothing"),
                        Fes::PDU_SEQUENCE_ERROR,
                        0,
                    ));
                }
                if datao as u64 + len as u64 > c.part.len as u64 {
                    return Err(proto(
                        format!(
                            "C2HData past the buffer: offset {datao} + {len} bytes > {} for CID {cccid:#x}",
                            c.part.len
                        ),
                        Fes::DATA_TRANSFER_OUT_OF_RANGE,
                        pdu::offset::DATAO,
                    ));
                }
                let Some(w) = self.wire.as_ref() else {
                    return Ok(());
                };
                req.buf.copy_in(
                    (c.part.off + datao) as usize,
                    &w.rx[start..start + len as usize],
                );
                c.recvd = c.recvd.saturating_add(len);
                if digest_error {
                    c.digest_error = true;
                    self.stats.data_digest_errors += 1;
                }
                if success {
                    if c.recvd != c.part.len {
                        return Err(proto(
                            format!(
                                "C2HData SUCCESS for CID {cccid:#x} after {} of {} bytes",
                                c.recvd, c.part.len
                            ),
                            Fes::PDU_SEQUENCE_ERROR,
                            0,
                        ));
                    }
                    self.stats.c2h_success += 1;
                    let mut cqe = CompletionEntry::new(cccid, Status::SUCCESS);
                    cqe.sqid = self.qid;
                    *n += self.complete(slot, cqe, f) as usize;
                }
            }
            Ev::R2t(r) => {
                let Some(slot) = self.cmd_of(r.cccid) else {
                    return Err(proto(
                        format!("R2T for CID {:#x}, which is not outstanding", r.cccid),
                        Fes::INVALID_PDU_HEADER_FIELD,
                        pdu::offset::CCCID,
                    ));
                };
                let c = &self.cmds[slot];
                let req = &self.reqs[c.part.req as usize];
                if req.dir != Dir::Write
                    || r.r2tl == 0
                    || r.r2to as u64 + r.r2tl as u64 > c.part.len as u64
                {
                    return Err(proto(
                        format!(
                            "R2T for CID {:#x} asks for {} bytes at {} of a {}-byte write",
                            r.cccid, r.r2tl, r.r2to, c.part.len
                        ),
                        Fes::DATA_TRANSFER_OUT_OF_RANGE,
                        pdu::offset::DATAO,
                    ));
                }
                let Some(w) = self.wire.as_mut() else {
                    return Ok(());
                };
                self.stats.r2ts += 1;
                let chunk = w.maxh2cdata.max(pdu::MIN_MAXH2CDATA);
                let (mut off, end) = (r.r2to, r.r2to + r.r2tl);
                while off < end {
                    let l = (end - off).min(chunk);
                    let data = slice_of(&req.buf, c.part.off + off, l, &mut self.scratch);
                    pdu::encode(
                        &Pdu::H2CData(DataPdu {
                            cccid: r.cccid,
                            ttag: r.ttag,
                            datao: off,
                            last: off + l == end,
                            success: false,
                            data,
                        }),
                        &w.codec,
                        &mut w.tx,
                    );
                    off += l;
                }
            }
            Ev::Term(fes, fei) => {
                return Err((
                    term_error(&pdu::TermReq {
                        fes,
                        fei,
                        data: &[],
                    }),
                    None,
                ));
            }
            Ev::Other(ty) => {
                return Err(proto(
                    format!("a controller never sends PDU type {ty:#04x}"),
                    Fes::INVALID_PDU_HEADER_FIELD,
                    pdu::offset::PDU_TYPE,
                ));
            }
        }
        Ok(())
    }

    /// Ends command `slot` with `cqe`. Returns whether a request completed.
    fn complete(
        &mut self,
        slot: usize,
        mut cqe: CompletionEntry,
        f: &mut impl FnMut(HostCompletion),
    ) -> bool {
        let c = &mut self.cmds[slot];
        c.busy = false;
        c.seq = c.seq.wrapping_add(1);
        let mut part = c.part;
        if c.digest_error && cqe.status().is_success() {
            cqe.set_status(Status::TRANSIENT_TRANSPORT_ERROR);
        }
        self.free_cmds.push(slot as u16);
        let status = cqe.status();
        let req = &mut self.reqs[part.req as usize];
        if !status.is_success()
            && !status.dnr()
            && part.retries < self.max_retries
            && req.sqe.opcode() != FABRICS_OPCODE
        {
            part.retries += 1;
            self.stats.retries += 1;
            self.queued.push_front(part);
            return false;
        }
        self.finish_part(part.req, cqe, f)
    }

    fn finish_part(
        &mut self,
        r: u16,
        cqe: CompletionEntry,
        f: &mut impl FnMut(HostCompletion),
    ) -> bool {
        let req = &mut self.reqs[r as usize];
        if !cqe.status().is_success() && req.fail.is_none() {
            req.fail = Some(cqe);
        }
        req.last = cqe;
        req.parts_left = req.parts_left.saturating_sub(1);
        if req.parts_left > 0 {
            return false;
        }
        req.busy = false;
        let cqe = req.fail.take().unwrap_or(req.last);
        let buf = std::mem::take(&mut req.buf);
        let tag = req.tag;
        self.free_reqs.push(r);
        self.outstanding -= 1;
        self.stats.completed += 1;
        f(HostCompletion { tag, cqe, buf });
        true
    }

    /// The wire is dead: tell the target why when it is a protocol error,
    /// then close. Commands stay in the table.
    pub fn kill(&mut self, reason: String, term: Option<(Fes, u32)>) {
        if let Some(mut w) = self.wire.take() {
            match term {
                Some((fes, fei)) => w.terminate(fes, fei),
                None => w.close(),
            }
            tracing::warn!(qid = self.qid, peer = %w.peer, reason, "NVMe/TCP host queue lost");
        }
        if self.dead_reason.is_none() {
            self.dead_reason = Some(reason);
        }
    }

    /// Moves every command in flight back to the front of the queue, to be
    /// sent again on the next connection.
    pub fn park_inflight(&mut self) {
        for slot in (0..self.cmds.len()).rev() {
            let c = &mut self.cmds[slot];
            if c.busy {
                c.busy = false;
                c.seq = c.seq.wrapping_add(1);
                self.queued.push_front(c.part);
                self.free_cmds.push(slot as u16);
                self.stats.requeued += 1;
            }
        }
    }

    /// Completes everything outstanding (in flight or queued) with
    /// `status`; returns how many requests completed.
    pub fn fail_all(&mut self, status: Status, f: &mut impl FnMut(HostCompletion)) -> usize {
        let mut n = 0;
        for slot in 0..self.cmds.len() {
            if self.cmds[slot].busy {
                let c = &mut self.cmds[slot];
                c.busy = false;
                c.seq = c.seq.wrapping_add(1);
                let part = c.part;
                self.free_cmds.push(slot as u16);
                let mut cqe = CompletionEntry::new(slot as u16, status);
                cqe.sqid = self.qid;
                n += self.finish_part(part.req, cqe, f) as usize;
            }
        }
        while let Some(part) = self.queued.pop_front() {
            let mut cqe = CompletionEntry::new(0xffff, status);
            cqe.sqid = self.qid;
            n += self.finish_part(part.req, cqe, f) as usize;
        }
        n
    }
}

/// `len` bytes at `off` of `buf` as one slice: borrowed when the buffer is
/// one segment, else gathered into `scratch` (kept for the next time).
fn slice_of<'a>(buf: &'a DataBuf, off: u32, len: u32, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    let (off, len) = (off as usize, len as usize);
    if let DataBuf::One(b) = buf
        && let Some(s) = b.as_slice().get(off..off + len)
    {
        return s;
    }
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    let got = buf.copy_out(off, &mut scratch[..len]);
    scratch[got..len].fill(0);
    &scratch[..len]
}

/// A decoded PDU without the borrow of the receive buffer (data as a
/// range of it), so handling it may touch the rest of the connection.
enum Ev {
    Resp(CompletionEntry),
    C2H {
        cccid: u16,
        datao: u32,
        start: usize,
        len: u32,
        success: bool,
        digest_error: bool,
    },
    R2t(pdu::R2t),
    Term(Fes, u32),
    Other(u8),
}

impl Ev {
    fn from(p: &Pdu<'_>, rx: &[u8], digest_error: bool) -> Self {
        match p {
            Pdu::CapsuleResp(c) => Ev::Resp(*c),
            Pdu::C2HData(d) => Ev::C2H {
                cccid: d.cccid,
                datao: d.datao,
                start: d.data.as_ptr() as usize - rx.as_ptr() as usize,
                len: d.data.len() as u32,
                success: d.success,
                digest_error,
            },
            Pdu::R2t(r) => Ev::R2t(*r),
            Pdu::C2HTermReq(t) => Ev::Term(t.fes, t.fei),
            p => Ev::Other(p.pdu_type().0),
        }
    }
}
