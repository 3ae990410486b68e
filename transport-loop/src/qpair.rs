//! A host I/O queue pair: owned by one thread, no locks on submit or poll.
//!
//! CIDs are `slot | sequence << 12`: a completion whose slot is not busy,
//! or whose sequence does not match, is stale and counted, never delivered
//! (so a late completion can never complete a newer request). Commands the
//! target never fetched before destroying the queue are taken back from the
//! ring and completed here with *Command Aborted due to SQ Deletion*: each
//! capsule is popped by exactly one side, so each command completes once.
//!
//! With error recovery on (`ConnectOptions::ctrl_loss_tmo`), a command that
//! ends with a retryable status (DNR clear) is not delivered but parked and
//! resubmitted, up to `max_retries` times; a queue that ends asks the
//! controller's poller to reconnect, connects again to the new association
//! and then resubmits what it parked. The caller sees one completion per
//! command still: the last one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use target_core::host_cmds::NvmCommands;
use target_core::iobuf::DataBuf;
use target_core::nvmf::{Capsule, QueueRings};
use target_core::spec::{CompletionEntry, FabricsType, NvmOpcode, Status, SubmissionEntry};

use crate::host::Assoc;
use crate::{HostError, SubmitError};

const SLOT_BITS: u16 = 12;
const SLOT_MASK: u16 = (1 << SLOT_BITS) - 1;
/// Deepest queue a host qpair supports (CID slot bits).
pub const MAX_DEPTH: u16 = 1 << SLOT_BITS;

/// A finished command as the host sees it.
#[derive(Debug)]
pub struct HostCompletion {
    /// The caller's tag from submission.
    pub tag: u64,
    /// The completion entry. Its SQHD reads 0: the in-memory rings have
    /// flow control of their own and do not carry it
    /// ([`target_core::nvmf::RingResponse`]).
    pub cqe: CompletionEntry,
    /// The buffer, given back.
    pub buf: DataBuf,
}

impl HostCompletion {
    /// The completion status.
    pub fn status(&self) -> Status {
        self.cqe.status()
    }
}

/// Where a queue pair stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpairState {
    /// Submissions accepted.
    Live,
    /// The target is draining it: poll until outstanding reaches zero.
    Closing,
    /// Destroyed on the target; nothing more will arrive.
    Dead,
    /// Ended, and the host is reconnecting (error recovery): submissions
    /// are refused for now, parked commands are resubmitted once the queue
    /// is connected again.
    Reconnecting,
}

/// Counters of one host queue pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostQpairStats {
    /// Commands submitted.
    pub submitted: u64,
    /// Completions delivered.
    pub completed: u64,
    /// Completions that matched no outstanding command (must stay 0).
    pub stale: u64,
    /// Commands completed with Aborted due to SQ Deletion.
    pub aborted_sq_deletion: u64,
    /// Of those, taken back from the ring by the host.
    pub reclaimed: u64,
    /// Resubmissions after a retryable failure (error recovery).
    pub retries: u64,
    /// Times this queue connected again after it ended (error recovery).
    pub reconnects: u64,
    /// Commands the target never answered before destroying the queue,
    /// completed by the host (error recovery; their buffers stay with the
    /// target).
    pub cancelled: u64,
}

/// 16 bytes, four to a cache line: what submit and complete touch per
/// command. The SQE kept for a retry lives apart, in
/// [`HostQpair::sqes`], and only when recovery is on.
#[derive(Clone, Copy, Debug, Default)]
struct HostSlot {
    busy: bool,
    seq: u16,
    retries: u32,
    tag: u64,
}

/// Fabrics commands (Disconnect...) belong to their queue: never retried.
const FABRICS_OPCODE: u8 = 0x7f;

/// An I/O queue pair of a [`crate::HostController`].
#[derive(Debug)]
pub struct HostQpair {
    assoc: Arc<Assoc>,
    qid: u16,
    depth: u16,
    rings: QueueRings,
    slots: Box<[HostSlot]>,
    /// The commands as submitted, by slot, for a retry. Empty when error
    /// recovery is off (nothing is ever retried then), so a queue without
    /// recovery does not copy 64 bytes per submission.
    sqes: Box<[SubmissionEntry]>,
    /// Idle slots. Every other slot is busy, so the count outstanding is
    /// what this lacks of `slots` ([`HostQpair::outstanding`]): no counter
    /// to keep per command.
    free: Vec<u16>,
    stats: HostQpairStats,
    /// Association generation the rings belong to.
    generation: u32,
    /// Commands waiting for a resubmission: slot, buffer, last status.
    parked: VecDeque<(u16, DataBuf, Status)>,
    /// No reconnect attempt before this.
    next_attempt: Option<Instant>,
    /// The host is disconnecting this queue: no recovery.
    closing: bool,
    /// Submissions wait for [`HostQpair::ring_doorbell`] (or the next
    /// `poll`) to become visible to the target.
    batch_doorbell: bool,
}

impl HostQpair {
    pub(crate) fn new(assoc: Arc<Assoc>, qid: u16, depth: u16, rings: QueueRings) -> Self {
        // One entry stays free so the target can always post a completion.
        let usable = depth.saturating_sub(1).max(1);
        let keep_sqes = assoc.recovery();
        let generation = assoc.generation.load(Ordering::Acquire);
        Self {
            assoc,
            qid,
            depth,
            rings,
            slots: vec![HostSlot::default(); usable as usize].into_boxed_slice(),
            sqes: if keep_sqes {
                vec![SubmissionEntry::default(); usable as usize].into_boxed_slice()
            } else {
                Box::default()
            },
            free: (0..usable).rev().collect(),
            stats: HostQpairStats::default(),
            generation,
            parked: VecDeque::new(),
            next_attempt: None,
            closing: false,
            batch_doorbell: false,
        }
    }

    /// Batches doorbells, as SPDK's `delay_cmd_submit` does: a submission
    /// is written into the ring but the target sees it only at
    /// [`HostQpair::ring_doorbell`] or at the start of the next
    /// [`HostQpair::poll`]. The ring's tail is then published once per
    /// batch instead of once per command; with host and target on two
    /// cores that is one cache-line transfer per batch rather than per
    /// command. Off by default (each submission is visible at once).
    pub fn set_batch_doorbell(&mut self, on: bool) {
        self.batch_doorbell = on;
        if !on {
            self.rings.ring_doorbell();
        }
    }

    /// Makes every submission so far visible to the target.
    #[inline]
    pub fn ring_doorbell(&mut self) {
        self.rings.ring_doorbell();
    }

    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Commands that can be outstanding at once.
    pub fn depth(&self) -> u16 {
        self.slots.len() as u16
    }

    /// Commands submitted and not yet completed.
    #[inline]
    pub fn outstanding(&self) -> u32 {
        (self.slots.len() - self.free.len()) as u32
    }

    /// Counters.
    pub fn stats(&self) -> HostQpairStats {
        // Every command submitted either completed (which freed its slot)
        // or holds a slot still: no counter per completion.
        HostQpairStats {
            completed: self.stats.submitted - u64::from(self.outstanding()),
            ..self.stats
        }
    }

    /// Live, closing or dead.
    pub fn state(&self) -> QpairState {
        if self.rings.target_done() {
            if self.recovering() {
                QpairState::Reconnecting
            } else {
                QpairState::Dead
            }
        } else if self.rings.is_live() {
            QpairState::Live
        } else {
            QpairState::Closing
        }
    }

    /// Submits any command with the given buffer. The tag comes back with
    /// its completion.
    #[inline(always)]
    pub fn submit(
        &mut self,
        sqe: SubmissionEntry,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, SubmitError> {
        self.submit_with(
            move |cid| {
                let mut sqe = sqe;
                sqe.set_cid(cid);
                sqe
            },
            buf,
            tag,
        )
    }

    /// [`HostQpair::submit`] of the SQE `make_sqe` builds for the command
    /// identifier this queue picks: built where it goes, in the ring slot.
    #[inline(always)]
    fn submit_with(
        &mut self,
        make_sqe: impl Fn(u16) -> SubmissionEntry,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, SubmitError> {
        // Both checks first, so the buffer moves once, into the ring, and
        // a refused one goes back untouched.
        let Some(&slot) = self.free.last() else {
            return Err(SubmitError::QueueFull(buf));
        };
        let Some(sq) = self.rings.sq_slot() else {
            return Err(if self.rings.is_live() {
                SubmitError::QueueFull(buf)
            } else {
                SubmitError::Closed(buf)
            });
        };
        self.free.pop();
        let s = &mut self.slots[slot as usize];
        let cid = slot | ((s.seq & 0xf) << SLOT_BITS);
        sq.fill(&make_sqe(cid), buf);
        if !self.batch_doorbell {
            self.rings.ring_doorbell();
        }
        s.busy = true;
        s.tag = tag;
        s.retries = 0;
        if let Some(keep) = self.sqes.get_mut(slot as usize) {
            *keep = make_sqe(cid);
        }
        self.stats.submitted += 1;
        Ok(cid)
    }

    /// Delivers up to `max` completions to `f`. Returns how many.
    #[inline]
    pub fn poll(&mut self, max: usize, f: &mut impl FnMut(HostCompletion)) -> usize {
        self.rings.ring_doorbell();
        let mut n = 0;
        // Take what is there by count: the loop does not end on an empty
        // reap (a branch that alternates at queue depth 1).
        let ready = self.rings.ready_responses();
        // Each response is completed where it lies in the ring (its buffer
        // moved out once), with the ring's consumer lent out of the queue
        // pair for the loop.
        if let Some(mut cq) = self.rings.take_cq() {
            let mut taken = 0;
            let qid = self.qid;
            while taken < ready && n < max {
                let Some(done) = cq.pop_with(|r| match r.plain_cqe(qid) {
                    // The buffer moves once, from the ring to the caller's
                    // completion, instead of through two stack copies.
                    Some(cqe) => self.complete(cqe, r.buf_mut(), f),
                    None => {
                        let (cqe, mut buf) = r.take(qid);
                        self.complete(cqe, &mut buf, f)
                    }
                }) else {
                    break;
                };
                taken += 1;
                n += done as usize;
            }
            cq.release();
            self.rings.put_cq(cq);
        }
        if n == 0 && self.outstanding() > 0 && self.rings.target_done() {
            // Everything the target will say has been said: what is still
            // in the submission ring was never fetched.
            while let Some(mut resp) = self.rings.reap() {
                if self.complete(resp.cqe, &mut resp.buf, f) {
                    n += 1;
                }
            }
            while let Some(cap) = self.rings.reclaim() {
                let mut cqe = CompletionEntry::new(cap.sqe.cid(), Status::ABORTED_SQ_DELETION);
                cqe.sqid = self.qid;
                self.stats.reclaimed += 1;
                if self.complete(cqe, &mut { cap.buf }, f) {
                    n += 1;
                }
            }
            if self.recovering() {
                n += self.cancel_orphans(f);
            }
        }
        if !self.parked.is_empty() || (self.recovering() && self.rings.target_done()) {
            n += self.recover_step(f);
        }
        n
    }

    /// `true` when a queue the target is closing will be reconnected
    /// (recovery on and not given up): a caller must not take the closing
    /// for the end, even with nothing outstanding at that moment.
    pub fn will_reconnect(&self) -> bool {
        self.recovering()
    }

    /// Error recovery is on for this queue and has not given up.
    #[inline]
    fn recovering(&self) -> bool {
        self.assoc.recovery() && !self.closing && !self.assoc.gone.load(Ordering::Acquire)
    }

    /// Recovery, one non-blocking step (except the Connect round trip):
    /// once everything of a dead queue is back, ask for (or wait for) a new
    /// association and connect to it; on a live queue resubmit what is
    /// parked. When recovery gave up, the parked commands complete with
    /// their last status.
    fn recover_step(&mut self, f: &mut impl FnMut(HostCompletion)) -> usize {
        if !self.recovering() {
            let mut n = 0;
            while let Some((slot, buf, status)) = self.parked.pop_front() {
                let mut cqe = CompletionEntry::new(slot, status);
                cqe.sqid = self.qid;
                self.count_failure(status);
                self.finish(slot as usize, cqe, &mut { buf }, f);
                n += 1;
            }
            return n;
        }
        if self.rings.target_done() {
            if self.outstanding() as usize != self.parked.len() {
                // Completions still to reap or reclaim.
                return 0;
            }
            let generation = self.assoc.generation.load(Ordering::Acquire);
            if generation == self.generation {
                // Tagged with the generation that ended: a request that
                // arrives after the poller replaced it is ignored.
                self.assoc.recover_req.request(self.generation);
                return 0;
            }
            if !self.assoc.ready.load(Ordering::Acquire)
                || self.next_attempt.is_some_and(|t| Instant::now() < t)
            {
                return 0;
            }
            match self.assoc.connect_io_queue(self.qid, self.depth) {
                Ok(rings) => {
                    self.rings.host_close();
                    self.rings = rings;
                    self.generation = generation;
                    self.stats.reconnects += 1;
                    self.next_attempt = None;
                }
                Err(e) => {
                    // The new association does not take its I/O queue (a
                    // controller of a subsystem being deleted, say): the
                    // controller's poller starts over, bounded by
                    // ctrl_loss_tmo.
                    tracing::debug!(qid = self.qid, error = %e, "I/O queue reconnect");
                    self.next_attempt = Some(Instant::now() + self.assoc.reconnect_delay);
                    self.assoc.recover_req.request(generation);
                    return 0;
                }
            }
        }
        while let Some((slot, buf, status)) = self.parked.pop_front() {
            let s = &mut self.slots[slot as usize];
            // Parked only with recovery on, when `sqes` holds every slot.
            let mut sqe = self.sqes.get(slot as usize).copied().unwrap_or_default();
            sqe.set_cid(slot | ((s.seq & 0xf) << SLOT_BITS));
            match self.rings.submit(Capsule { sqe, buf }) {
                Ok(()) => {}
                Err(c) => {
                    self.parked.push_front((slot, c.buf, status));
                    break;
                }
            }
        }
        0
    }

    /// With recovery on: commands the target kept when it destroyed the
    /// queue (a backend that never gave them back, then a failed
    /// controller) get no answer, ever: the host completes them itself, as
    /// Linux cancels a failed controller's requests, with a host pathing
    /// error and DNR (not retried: the backend may still write them late).
    /// Without this the queue could never reconnect.
    fn cancel_orphans(&mut self, f: &mut impl FnMut(HostCompletion)) -> usize {
        if self.outstanding() as usize == self.parked.len() {
            return 0;
        }
        let mut parked = vec![false; self.slots.len()];
        for (slot, _, _) in &self.parked {
            parked[*slot as usize] = true;
        }
        let orphans: Vec<usize> = (self.slots.iter().zip(&parked).enumerate())
            .filter(|(_, (s, p))| s.busy && !**p)
            .map(|(i, _)| i)
            .collect();
        let mut n = 0;
        for slot in orphans {
            let mut cqe = CompletionEntry::new(slot as u16, Status::HOST_PATHING_ERROR.with_dnr());
            cqe.sqid = self.qid;
            self.stats.cancelled += 1;
            self.count_failure(cqe.status());
            self.finish(slot, cqe, &mut DataBuf::None, f);
            n += 1;
        }
        n
    }

    /// Delivers the completion of busy slot `slot`, with the buffer taken
    /// from `buf` (a ring slot, for a reaped response). A caller with a
    /// failed status counts it first ([`HostQpair::count_failure`]).
    #[inline]
    fn finish(
        &mut self,
        slot: usize,
        cqe: CompletionEntry,
        buf: &mut DataBuf,
        f: &mut impl FnMut(HostCompletion),
    ) {
        let s = &mut self.slots[slot];
        s.busy = false;
        s.seq = s.seq.wrapping_add(1);
        let tag = s.tag;
        self.free.push(slot as u16);
        f(HostCompletion {
            tag,
            cqe,
            buf: std::mem::take(buf),
        });
    }

    /// Completes a response: its buffer is taken from `buf` only when the
    /// command is delivered (a stale response leaves it there, to be
    /// dropped with its ring slot or by the caller).
    #[inline(always)]
    fn complete(
        &mut self,
        cqe: CompletionEntry,
        buf: &mut DataBuf,
        f: &mut impl FnMut(HostCompletion),
    ) -> bool {
        let slot = (cqe.cid & SLOT_MASK) as usize;
        let seq = cqe.cid >> SLOT_BITS;
        let Some(s) = self.slots.get_mut(slot) else {
            self.stats.stale += 1;
            return false;
        };
        if !s.busy || (s.seq & 0xf) != seq {
            self.stats.stale += 1;
            return false;
        }
        // Only a failure pays for the recovery checks, out of line.
        if !cqe.status().is_success() {
            return self.complete_failed(slot, cqe, std::mem::take(buf), f);
        }
        self.finish(slot, cqe, buf, f);
        true
    }

    /// [`HostQpair::complete`] of a failed command (its slot checked): a
    /// retryable failure parks it for resubmission, anything else
    /// completes.
    #[cold]
    #[inline(never)]
    fn complete_failed(
        &mut self,
        slot: usize,
        cqe: CompletionEntry,
        buf: DataBuf,
        f: &mut impl FnMut(HostCompletion),
    ) -> bool {
        let status = cqe.status();
        let retry_on = !status.dnr() && self.recovering();
        let fabrics = self
            .sqes
            .get(slot)
            .is_none_or(|q| q.opcode() == FABRICS_OPCODE);
        let max_retries = self.assoc.max_retries;
        if let Some(s) = self.slots.get_mut(slot)
            && retry_on
            && s.retries < max_retries
            && !fabrics
        {
            // Retryable: keep the slot busy under a new sequence (a late
            // duplicate is stale) and resubmit when the queue is live.
            s.retries += 1;
            s.seq = s.seq.wrapping_add(1);
            self.stats.retries += 1;
            self.parked.push_back((slot as u16, buf, status));
            return false;
        }
        self.count_failure(status);
        self.finish(slot, cqe, &mut { buf }, f);
        true
    }

    /// Counts a failed command as it completes. Only the failure paths call
    /// it, so a successful completion tests nothing for it.
    fn count_failure(&mut self, status: Status) {
        if status.same_code(Status::ABORTED_SQ_DELETION) {
            self.stats.aborted_sq_deletion += 1;
        }
    }

    /// Polls until nothing is outstanding (bounded by `limit`).
    pub fn drain(
        &mut self,
        limit: Duration,
        f: &mut impl FnMut(HostCompletion),
    ) -> Result<(), HostError> {
        let target = self.assoc.transport.target().clone();
        crate::wait::until(&target, limit, "queue pair drain", || {
            self.poll(usize::MAX, f);
            (self.outstanding() == 0).then_some(())
        })
    }

    /// Fabrics Disconnect: the target drains the queue, answers the
    /// Disconnect last and destroys it. Completions of other commands go to
    /// `f`.
    pub fn disconnect(
        &mut self,
        limit: Duration,
        f: &mut impl FnMut(HostCompletion),
    ) -> Result<(), HostError> {
        const DISCONNECT_TAG: u64 = u64::MAX;
        self.closing = true;
        let mut sqe = SubmissionEntry::fabrics(FabricsType::DISCONNECT, 0);
        sqe.cdw10 = 0;
        let mut status = None;
        match self.submit(sqe, DataBuf::None, DISCONNECT_TAG) {
            Ok(_) => {}
            Err(SubmitError::Closed(_)) => {}
            Err(SubmitError::QueueFull(_)) => return Err(HostError::Busy(self.outstanding())),
        }
        let target = self.assoc.transport.target().clone();
        crate::wait::until(&target, limit, "disconnect", || {
            self.poll(usize::MAX, &mut |c| {
                if c.tag == DISCONNECT_TAG {
                    status = Some(c.status());
                } else {
                    f(c);
                }
            });
            (self.outstanding() == 0 && self.rings.target_done()).then_some(())
        })?;
        match status {
            Some(s) if !s.is_success() && !s.same_code(Status::ABORTED_SQ_DELETION) => {
                Err(HostError::Status {
                    what: "Disconnect",
                    status: s,
                    dw0: 0,
                })
            }
            _ => Ok(()),
        }
    }

    /// Connects this queue again after a reset (same QID and depth). The
    /// queue must be idle; waits (bounded) for the controller to be ready.
    pub fn reconnect(&mut self) -> Result<(), HostError> {
        if self.outstanding() > 0 {
            return Err(HostError::Busy(self.outstanding()));
        }
        let generation = self.assoc.generation.load(Ordering::Acquire);
        let rings = self.assoc.connect_io_queue(self.qid, self.depth)?;
        self.rings.host_close();
        self.rings = rings;
        self.generation = generation;
        self.closing = false;
        Ok(())
    }
}

impl Drop for HostQpair {
    fn drop(&mut self) {
        // A transport-level disconnect: the target drains and destroys its end.
        self.rings.host_close();
    }
}

impl NvmCommands for HostQpair {
    type SubmitError = SubmitError;

    #[inline(always)]
    fn submit_command(
        &mut self,
        sqe: SubmissionEntry,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, SubmitError> {
        self.submit(sqe, buf, tag)
    }

    #[inline(always)]
    fn submit_rw(
        &mut self,
        opcode: NvmOpcode,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, SubmitError> {
        self.submit_with(
            |cid| SubmissionEntry::nvm_rw(opcode.0, cid, nsid, lba, blocks),
            buf,
            tag,
        )
    }
}
