//! [`NvmeBdev`]: one namespace of a controller as a
//! `target_core::bdev::BlockDevice`, with channels bound to I/O queue pairs.
//!
//! An I/O larger than the controller's transfer limit is split into several
//! commands and completed once, when the last one finishes. Buffers whose
//! segments all carry an IOVA and line up on pages go to the device as they
//! are (zero copy); others are bounced through the queue pair's DMA area.
//!
//! A channel that ends while the controller still has some of its commands
//! does not free their buffers: they go to its queue's quarantine (see
//! `quarantine.rs`) until the completion arrives or the controller is
//! disabled. `IoChannel::reset` starts the escalation (Abort, then a
//! controller reset advanced by polls, see `reset.rs`) and returns at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use target_core::bdev::{
    BdevCompletion, BdevError, BdevInfo, BdevIo, BlockDevice, IoChannel, IoError, IoOp, check_io,
    dsm_ranges,
};
use target_core::iobuf::DataBuf;
use target_core::spec::{NvmOpcode, Status, SubmissionEntry};

use crate::controller::{CtrlState, IoQueue, NamespaceInfo, NvmeController, SharedQueue};
use crate::error::DriverError;
use crate::quarantine::Held;
use crate::queue::SubmitError;

/// Largest NLB of one read/write/write-zeroes command (16-bit, zero-based).
const MAX_NLB: u64 = 1 << 16;
/// Dataset Management ranges per command.
const MAX_DSM_RANGES: u32 = 256;
/// Polls between looks at the oldest command's age.
const HEALTH_EVERY: u32 = 4096;
/// Polls between reaps of other queues' quarantine (when there is any).
const REAP_EVERY: u32 = 64;
/// Abort commands one channel reset sends at most (the controller's Abort
/// Command Limit is small; the controller reset catches the rest).
const MAX_ABORTS_PER_RESET: usize = 4;

/// Maps a completion status to the bdev result.
pub(crate) fn status_result(s: Status) -> Result<(), IoError> {
    if s.is_success() {
        Ok(())
    } else {
        Err(IoError::Nvme(s))
    }
}

/// One namespace of an [`NvmeController`] as a block device.
#[derive(Debug)]
pub struct NvmeBdev {
    ctrl: Arc<NvmeController>,
    ns: NamespaceInfo,
    info: BdevInfo,
    max_cmd_blocks: u64,
}

impl NvmeController {
    /// The block device for namespace `nsid`.
    pub fn bdev(self: &Arc<Self>, nsid: u32) -> Result<Arc<NvmeBdev>, DriverError> {
        let ns = self
            .namespaces()
            .iter()
            .find(|n| n.nsid == nsid)
            .cloned()
            .ok_or_else(|| DriverError::NoNamespace {
                addr: self.pci_addr().into(),
                nsid,
            })?;
        let id = self.identity();
        let max_cmd_blocks =
            ((self.max_command_bytes() / ns.block_size as usize) as u64).clamp(1, MAX_NLB);
        let info = BdevInfo {
            name: format!("nvme-{}-n{}", self.pci_addr(), nsid),
            kind: "nvme",
            block_size: ns.block_size,
            num_blocks: ns.blocks,
            volatile_write_cache: id.vwc,
            max_transfer_blocks: None,
            supports_write_zeroes: id.write_zeroes(),
            supports_deallocate: id.dsm() && ns.dealloc_reads_zero,
        };
        Ok(Arc::new(NvmeBdev {
            ctrl: self.clone(),
            ns,
            info,
            max_cmd_blocks,
        }))
    }
}

impl NvmeBdev {
    /// The namespace.
    pub fn namespace(&self) -> &NamespaceInfo {
        &self.ns
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<NvmeController> {
        &self.ctrl
    }

    /// Blocks per command (the split size).
    pub fn max_command_blocks(&self) -> u64 {
        self.max_cmd_blocks
    }

    /// A channel, as [`BlockDevice::open_channel`] but with the concrete type.
    pub fn channel(&self) -> Result<NvmeChannel, DriverError> {
        let q = self.ctrl.acquire_queue()?;
        let cap = { q.lock().qp.capacity() };
        Ok(NvmeChannel {
            ctrl: self.ctrl.clone(),
            id: self.ctrl.new_channel_id(),
            q,
            nsid: self.ns.nsid,
            info: self.info.clone(),
            max_cmd_blocks: self.max_cmd_blocks,
            ios: (0..cap).map(|_| None).collect(),
            free: (0..cap as u32).rev().collect(),
            ready: VecDeque::with_capacity(cap),
            segs: Vec::with_capacity(64),
            polls: 0,
            polls_since_reap: 0,
            abort_sent: None,
            escalate_at: None,
        })
    }
}

impl BlockDevice for NvmeBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        self.channel()
            .map(|c| Box::new(c) as Box<dyn IoChannel>)
            .map_err(|e| BdevError::Unavailable {
                name: self.info.name.clone(),
                reason: e.to_string(),
            })
    }
}

#[derive(Debug)]
struct Parent {
    io: BdevIo,
    remaining: u32,
    err: Option<IoError>,
    /// Bounce (offset, bytes) in the queue pair's area.
    bounce: Option<(usize, usize)>,
}

/// A channel: one reactor's handle on an I/O queue pair.
#[derive(Debug)]
pub struct NvmeChannel {
    ctrl: Arc<NvmeController>,
    id: u32,
    q: Arc<SharedQueue>,
    nsid: u32,
    info: BdevInfo,
    max_cmd_blocks: u64,
    ios: Vec<Option<Parent>>,
    free: Vec<u32>,
    ready: VecDeque<BdevCompletion>,
    segs: Vec<(u64, usize)>,
    polls: u32,
    polls_since_reap: u32,
    abort_sent: Option<u16>,
    /// `reset()` sent Aborts: reset the controller if commands are still
    /// outstanding at this instant.
    escalate_at: Option<Instant>,
}

impl NvmeChannel {
    /// The queue pair this channel submits to.
    pub fn qid(&self) -> u16 {
        self.q.qid
    }

    fn token(&self, idx: u32) -> u64 {
        (self.id as u64) << 32 | idx as u64
    }

    fn fail_now(&mut self, io: BdevIo, e: IoError) {
        self.ready.push_back(BdevCompletion {
            tag: io.tag,
            result: Err(e),
            buf: io.buf,
        });
    }

    fn commands_needed(&self, io: &BdevIo) -> u64 {
        match io.op {
            IoOp::Read | IoOp::Write => (io.blocks as u64).div_ceil(self.max_cmd_blocks),
            IoOp::WriteZeroes => (io.blocks as u64).div_ceil(MAX_NLB),
            IoOp::Flush | IoOp::Deallocate => 1,
        }
    }

    /// Fills `self.segs` with the IOVA segments of bytes `[off, off+len)` of
    /// `buf`; `false` if some segment has no IOVA.
    fn direct_segments(
        segs: &mut Vec<(u64, usize)>,
        buf: &DataBuf,
        off: usize,
        len: usize,
    ) -> bool {
        segs.clear();
        let mut skip = off;
        let mut left = len;
        for s in buf.segments() {
            if left == 0 {
                break;
            }
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let Some(iova) = s.iova() else {
                return false;
            };
            let n = (s.len() - skip).min(left);
            segs.push((iova + skip as u64, n));
            left -= n;
            skip = 0;
        }
        left == 0
    }

    fn submit_locked(&mut self, g: &mut IoQueue, io: BdevIo) -> Result<(), BdevIo> {
        let n = self.commands_needed(&io);
        if n as usize > g.qp.capacity() {
            self.fail_now(io, IoError::Unsupported);
            return Ok(());
        }
        if !g.qp.can_submit(n as usize) {
            return Err(io);
        }
        let Some(idx) = self.free.pop() else {
            return Err(io);
        };
        let token = self.token(idx);
        let bs = self.info.block_size as usize;
        let mut parent = Parent {
            io,
            remaining: 0,
            err: None,
            bounce: None,
        };
        let io = &parent.io;
        let fua = if io.fua { 1 << 30 } else { 0 };
        let mut submitted = 0u32;
        let mut err = None;
        match io.op {
            IoOp::Read | IoOp::Write => {
                let bytes = io.blocks as usize * bs;
                let direct = Self::direct_segments(&mut self.segs, &io.buf, 0, bytes)
                    && crate::prp::is_prp_compatible(&self.segs);
                if !direct {
                    if bytes > g.qp.bounce_capacity() {
                        return self.undo(idx, parent.io, IoError::Os(libc::ENOMEM));
                    }
                    let Some(off) = g.qp.bounce_alloc(bytes) else {
                        self.free.push(idx);
                        return Err(parent.io);
                    };
                    if io.op == IoOp::Write {
                        let mut tmp = [0u8; 4096];
                        let mut done = 0;
                        while done < bytes {
                            let k = (bytes - done).min(tmp.len());
                            io.buf.copy_out(done, &mut tmp[..k]);
                            g.qp.bounce_write(off + done, &tmp[..k]);
                            done += k;
                        }
                    }
                    parent.bounce = Some((off, bytes));
                }
                let opcode = if io.op == IoOp::Read {
                    NvmOpcode::READ
                } else {
                    NvmOpcode::WRITE
                };
                let mut blk = 0u64;
                while blk < io.blocks as u64 {
                    let nb = (io.blocks as u64 - blk).min(self.max_cmd_blocks);
                    let (off, len) = (blk as usize * bs, nb as usize * bs);
                    match parent.bounce {
                        Some((b, _)) => {
                            self.segs.clear();
                            self.segs.push((g.qp.bounce_iova(b + off), len));
                        }
                        None => {
                            Self::direct_segments(&mut self.segs, &io.buf, off, len);
                        }
                    }
                    let mut sqe =
                        SubmissionEntry::nvm_rw(opcode.0, 0, self.nsid, io.lba + blk, nb as u32);
                    sqe.cdw12 |= fua;
                    match g.qp.submit(sqe, &self.segs, token) {
                        Ok(_) => submitted += 1,
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                    blk += nb;
                }
            }
            IoOp::Flush => {
                let mut sqe = SubmissionEntry::new(NvmOpcode::FLUSH.0, 0);
                sqe.nsid = self.nsid;
                match g.qp.submit(sqe, &[], token) {
                    Ok(_) => submitted += 1,
                    Err(e) => err = Some(e),
                }
            }
            IoOp::WriteZeroes => {
                let mut blk = 0u64;
                while blk < io.blocks as u64 {
                    let nb = (io.blocks as u64 - blk).min(MAX_NLB);
                    let mut sqe = SubmissionEntry::nvm_rw(
                        NvmOpcode::WRITE_ZEROES.0,
                        0,
                        self.nsid,
                        io.lba + blk,
                        nb as u32,
                    );
                    sqe.cdw12 |= fua;
                    match g.qp.submit(sqe, &[], token) {
                        Ok(_) => submitted += 1,
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                    blk += nb;
                }
            }
            IoOp::Deallocate => {
                if io.blocks == 0 || io.blocks > MAX_DSM_RANGES {
                    return self.undo(idx, parent.io, IoError::Unsupported);
                }
                let bytes = io.blocks as usize * 16;
                let Some(off) = g.qp.bounce_alloc(bytes) else {
                    self.free.push(idx);
                    return Err(parent.io);
                };
                for (i, r) in dsm_ranges(&io.buf, io.blocks).enumerate() {
                    let mut raw = [0u8; 16];
                    raw[0..4].copy_from_slice(&r.attributes.to_le_bytes());
                    raw[4..8].copy_from_slice(&r.blocks.to_le_bytes());
                    raw[8..16].copy_from_slice(&r.slba.to_le_bytes());
                    g.qp.bounce_write(off + i * 16, &raw);
                }
                parent.bounce = Some((off, bytes));
                let mut sqe = SubmissionEntry::new(NvmOpcode::DATASET_MANAGEMENT.0, 0);
                sqe.nsid = self.nsid;
                sqe.cdw10 = io.blocks - 1;
                sqe.cdw11 = 1 << 2; // AD: deallocate
                self.segs.clear();
                self.segs.push((g.qp.bounce_iova(off), bytes));
                match g.qp.submit(sqe, &self.segs, token) {
                    Ok(_) => submitted += 1,
                    Err(e) => err = Some(e),
                }
            }
        }
        if let Some(e) = err {
            tracing::warn!(?e, "command not queued");
            parent.err = Some(match e {
                SubmitError::QueueFull => IoError::Aborted,
                SubmitError::Prp(_) => IoError::Unsupported,
            });
        }
        if let Err(e) = g.qp.ring(self.ctrl.bar()) {
            tracing::error!("doorbell: {e}");
        }
        if submitted == 0 {
            if let Some((off, bytes)) = parent.bounce.take() {
                g.qp.bounce_free(off, bytes);
            }
            let e = parent.err.unwrap_or(IoError::Aborted);
            self.free.push(idx);
            self.fail_now(parent.io, e);
            return Ok(());
        }
        parent.remaining = submitted;
        self.ios[idx as usize] = Some(parent);
        Ok(())
    }

    fn undo(&mut self, idx: u32, io: BdevIo, e: IoError) -> Result<(), BdevIo> {
        self.free.push(idx);
        self.fail_now(io, e);
        Ok(())
    }

    /// Takes this channel's completions out of the queue's list and
    /// finishes parents whose last command completed.
    fn collect(&mut self, g: &mut IoQueue) {
        let id = self.id;
        let mut i = 0;
        while i < g.done.len() {
            let (token, res) = g.done[i];
            if (token >> 32) as u32 != id {
                i += 1;
                continue;
            }
            let _ = g.done.swap_remove(i);
            let idx = token as u32;
            let Some(slot) = self.ios.get_mut(idx as usize) else {
                continue;
            };
            let Some(p) = slot.as_mut() else {
                tracing::warn!(idx, "completion for an idle request dropped");
                continue;
            };
            if let Err(e) = res {
                p.err.get_or_insert(e);
            }
            p.remaining -= 1;
            if p.remaining > 0 {
                continue;
            }
            let Some(mut p) = slot.take() else { continue };
            if let Some((off, bytes)) = p.bounce.take() {
                if p.io.op == IoOp::Read && p.err.is_none() {
                    let mut tmp = [0u8; 4096];
                    let mut done = 0;
                    while done < bytes {
                        let k = (bytes - done).min(tmp.len());
                        g.qp.bounce_read(off + done, &mut tmp[..k]);
                        p.io.buf.copy_in(done, &tmp[..k]);
                        done += k;
                    }
                }
                g.qp.bounce_free(off, bytes);
            }
            self.free.push(idx);
            self.ready.push_back(BdevCompletion {
                tag: p.io.tag,
                result: p.err.map_or(Ok(()), Err),
                buf: p.io.buf,
            });
        }
    }

    fn outstanding(&self) -> usize {
        self.ios.len() - self.free.len()
    }
}

impl IoChannel for NvmeChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        if let Err(e) = check_io(&self.info, &io) {
            self.fail_now(io, e);
            return Ok(());
        }
        if self.ctrl.removal().is_requested() {
            // Hot removal under way: a path error the host may retry
            // elsewhere; what is already at the device still completes.
            self.fail_now(io, IoError::Removed);
            return Ok(());
        }
        match self.ctrl.state() {
            CtrlState::Failed => {
                self.fail_now(io, IoError::DeviceFailed);
                return Ok(());
            }
            CtrlState::ShuttingDown | CtrlState::Shutdown => {
                self.fail_now(io, IoError::Aborted);
                return Ok(());
            }
            // Quiesced: give it back; the caller polls and retries.
            CtrlState::Resetting => {
                self.ctrl.poll_admin();
                return Err(io);
            }
            CtrlState::Running => {}
        }
        let q = self.q.clone();
        let mut g = q.lock();
        // Again under the queue's lock: a reset that started meanwhile
        // counts on no doorbell moving once it has held this lock.
        if self.ctrl.state() != CtrlState::Running || g.frozen {
            return Err(io);
        }
        self.submit_locked(&mut g, io)
    }

    fn poll(&mut self, done: &mut dyn FnMut(BdevCompletion)) -> usize {
        let q = self.q.clone();
        let mut check_health = false;
        let mut timed_out = None;
        let mut resetting = self.ctrl.state() == CtrlState::Resetting;
        if resetting {
            resetting = self.ctrl.poll_admin();
        }
        {
            let mut g = q.lock();
            let counters = &self.ctrl.counters;
            if self.ctrl.state() == CtrlState::Failed {
                // The controller was disabled and bus mastering is off.
                g.abort_all(IoError::DeviceFailed, counters);
            } else if g.frozen {
                // A reset owns the rings until the queue exists again; what
                // it aborted is handed out then.
            } else if g.qp.active() > 0 {
                let max = self.ctrl.options().max_completions_per_poll;
                match g.poll(self.ctrl.bar(), max, counters) {
                    Ok(0) => {
                        self.polls = self.polls.wrapping_add(1);
                        if self.polls.is_multiple_of(HEALTH_EVERY) {
                            check_health = true;
                            if let Some((cid, t)) = g.qp.oldest()
                                && t.elapsed() > self.ctrl.options().io_timeout
                            {
                                timed_out = Some((cid, t));
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => check_health = true,
                }
            }
            if !g.frozen || self.ctrl.state() == CtrlState::Failed {
                self.collect(&mut g);
            }
        }
        if !resetting {
            self.polls_since_reap += 1;
            if self.polls_since_reap >= REAP_EVERY {
                self.polls_since_reap = 0;
                self.ctrl.poll_admin();
            }
        }
        if let Some(at) = self.escalate_at {
            if self.outstanding() == 0 {
                self.escalate_at = None;
            } else if Instant::now() >= at {
                self.escalate_at = None;
                tracing::warn!(
                    qid = self.q.qid,
                    outstanding = self.outstanding(),
                    "commands still outstanding after Abort: resetting the controller"
                );
                if let Err(e) = self.ctrl.start_reset(std::time::Duration::ZERO) {
                    tracing::warn!("escalation: {e}");
                }
            }
        }
        if check_health
            && self.ctrl.health_check()
            && let Some((cid, t)) = timed_out
        {
            self.handle_timeout(cid, t);
        }
        let mut n = 0;
        while let Some(c) = self.ready.pop_front() {
            done(c);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.outstanding() + self.ready.len()
    }

    /// Starts the escalation and returns at once: Abort for this channel's
    /// outstanding commands, then, if any is still outstanding after
    /// `abort_timeout`, a controller reset advanced by polls. Every command
    /// comes back through `poll` (completed, or `Aborted` at the reset).
    /// Returns the commands still held (all outstanding ones, right now).
    fn reset(&mut self) -> usize {
        let n = self.outstanding();
        if n == 0 || self.ctrl.state() != CtrlState::Running || self.escalate_at.is_some() {
            // Nothing to do, or a reset / failure / escalation already
            // takes care of them.
            return n;
        }
        let id = self.id;
        let cids = { self.q.lock().qp.active_cids(|t| (t >> 32) as u32 == id) };
        let mut sent = 0;
        for &cid in cids.iter().take(MAX_ABORTS_PER_RESET) {
            if self.ctrl.abort_command(self.q.qid, cid) {
                sent += 1;
            }
        }
        tracing::warn!(
            qid = self.q.qid,
            outstanding = n,
            aborts = sent,
            "channel reset: Abort sent, controller reset if they stay"
        );
        self.escalate_at = Some(Instant::now() + self.ctrl.options().abort_timeout);
        n
    }
}

impl NvmeChannel {
    fn handle_timeout(&mut self, cid: u16, started: Instant) {
        let age = started.elapsed();
        if self.abort_sent != Some(cid) {
            self.ctrl.note_timeout();
            tracing::warn!(
                qid = self.q.qid,
                cid,
                ?age,
                "command timed out: sending Abort"
            );
            self.abort_sent = Some(cid);
            if !self.ctrl.abort_command(self.q.qid, cid) {
                tracing::warn!(qid = self.q.qid, cid, "Abort not sent (admin queue busy)");
            }
        } else if age > 2 * self.ctrl.options().io_timeout {
            tracing::error!(
                qid = self.q.qid,
                cid,
                ?age,
                "abort did not help: resetting controller"
            );
            self.abort_sent = None;
            if let Err(e) = self.ctrl.start_reset(std::time::Duration::ZERO) {
                tracing::error!("reset after timeout: {e}");
            }
        }
    }
}

impl Drop for NvmeChannel {
    /// Commands still at the controller keep their buffers and bounce
    /// ranges: they go to the queue's quarantine until their completion is
    /// reaped or the controller is disabled.
    fn drop(&mut self) {
        let q = self.q.clone();
        let mut held = 0;
        let ctrl = self.ctrl.clone();
        {
            let mut g = q.lock();
            let counters = &ctrl.counters;
            let state = self.ctrl.state();
            if state == CtrlState::Failed {
                g.abort_all(IoError::DeviceFailed, counters);
            } else if !g.frozen && g.qp.active() > 0 {
                let _ = g.poll(self.ctrl.bar(), usize::MAX, counters);
            }
            // Completions already taken off the CQ (also those a reset
            // aborted after CSTS.RDY = 0) end here; their buffers are free.
            self.collect(&mut g);
            for idx in 0..self.ios.len() {
                let Some(p) = self.ios[idx].take() else {
                    continue;
                };
                let h = Held {
                    item: p.io,
                    bounce: p.bounce,
                    remaining: p.remaining,
                };
                g.quarantine(self.token(idx as u32), h, counters);
                held += 1;
            }
        }
        if held > 0 {
            tracing::warn!(
                qid = self.q.qid,
                held,
                "channel closed with commands at the controller: buffers quarantined"
            );
        }
        let left = self.ctrl.release_queue(&self.q);
        if left == 0 && self.ctrl.state() == CtrlState::Resetting {
            // Nobody polls this controller any more: finish the reset off
            // the reactors, so the controller does not stay quiesced.
            let ctrl = self.ctrl.clone();
            let r = std::thread::Builder::new()
                .name("nvme-reset".into())
                .spawn(move || {
                    if let Err(e) = ctrl.finish_reset() {
                        tracing::warn!("reset finished by the last channel: {e}");
                    }
                });
            if let Err(e) = r {
                tracing::error!("cannot finish the reset: {e}");
            }
        }
    }
}
