//! A submission/completion queue pair in DMA memory: SQ tail, CQ head and
//! phase, request slots with their own PRP-list page, and a bounce area.
//!
//! Rules (STYLE.md "Queues"): a full SQ is `Err(QueueFull)`; the SQ doorbell
//! is written once per batch after a fence, the CQ head doorbell once per
//! poll; the phase bit is read before the rest of the CQE with Acquire
//! ordering; completions per poll are capped.

use std::sync::atomic::{Ordering, fence};
use std::time::Instant;

use target_core::spec::{CompletionEntry, Status, SubmissionEntry};

use crate::arena::PageArena;
use crate::dma::{DmaRegion, DmaSpace, PAGE};
use crate::error::DriverError;
use crate::mmio::{Bar, MmioError};
use crate::prp::{self, POISON, PrpError};
use crate::regs;
use crate::tracker::Tracker;

/// Why a command was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// No free slot or SQ entry: poll, then retry.
    QueueFull,
    /// The data cannot be described with this queue's PRP lists.
    Prp(PrpError),
}

/// One completion taken off the CQ.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The token given at submission.
    pub token: u64,
    /// Status field.
    pub status: Status,
    /// Command specific dword 0.
    pub dw0: u32,
}

/// Sizes of a queue pair.
#[derive(Clone, Copy, Debug)]
pub struct QueueLayout {
    /// Entries in each of SQ and CQ.
    pub entries: u16,
    /// PRP-list pages per request slot.
    pub prp_pages: usize,
    /// Bounce area bytes.
    pub bounce_bytes: usize,
}

/// A queue pair.
#[derive(Debug)]
pub struct QueuePair {
    qid: u16,
    entries: u16,
    mem: DmaRegion,
    cq_off: usize,
    prp_off: usize,
    bounce_off: usize,
    prp_pages: usize,
    sq_tail: u16,
    sq_head: u16,
    cq_head: u16,
    phase: bool,
    tail_dirty: bool,
    sq_db: usize,
    cq_db: usize,
    tracker: Tracker,
    arena: PageArena,
}

impl QueuePair {
    /// Allocates the memory of queue `qid` (0 for admin).
    pub fn new(
        space: &std::sync::Arc<DmaSpace>,
        qid: u16,
        layout: QueueLayout,
        dstrd: u32,
    ) -> Result<Self, DriverError> {
        let entries = layout.entries.max(2);
        let sq_bytes = (entries as usize * 64).next_multiple_of(PAGE);
        let cq_bytes = (entries as usize * 16).next_multiple_of(PAGE);
        // One slot fewer than entries: a full SQ keeps one entry empty.
        let slots = entries - 1;
        let prp_bytes = slots as usize * layout.prp_pages * PAGE;
        let cq_off = sq_bytes;
        let prp_off = cq_off + cq_bytes;
        let bounce_off = prp_off + prp_bytes;
        let mem = DmaRegion::new(space, bounce_off + layout.bounce_bytes)?;
        mem.fill(0, mem.len(), 0);
        // Poison every PRP-list entry up front.
        for o in (prp_off..bounce_off).step_by(8) {
            mem.write_u64(o, POISON);
        }
        Ok(Self {
            qid,
            entries,
            cq_off,
            prp_off,
            bounce_off,
            prp_pages: layout.prp_pages,
            sq_tail: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
            tail_dirty: false,
            sq_db: regs::doorbell_offset(qid, false, dstrd),
            cq_db: regs::doorbell_offset(qid, true, dstrd),
            tracker: Tracker::new(slots),
            arena: PageArena::new(layout.bounce_bytes),
            mem,
        })
    }

    /// Queue identifier.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Entries per queue.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// IOVA of the SQ.
    pub fn sq_iova(&self) -> u64 {
        self.mem.iova(0)
    }

    /// IOVA of the CQ.
    pub fn cq_iova(&self) -> u64 {
        self.mem.iova(self.cq_off)
    }

    /// DMA memory is on huge pages.
    pub fn is_huge(&self) -> bool {
        self.mem.is_huge()
    }

    /// Request slots.
    pub fn capacity(&self) -> usize {
        self.tracker.capacity()
    }

    /// Commands submitted and not completed.
    pub fn active(&self) -> usize {
        self.tracker.active()
    }

    /// Submission entries the controller has not yet reported fetched: the
    /// distance from the SQ Head Pointer of the newest completion posted so
    /// far to the tail (0 when nothing is outstanding). Reads the CQ without
    /// consuming anything. Every submit path rings the doorbell before it
    /// lets go of the queue, so the tail was announced.
    pub fn unfetched(&self) -> usize {
        if self.tracker.active() == 0 {
            return 0;
        }
        let mut sq_head = self.sq_head;
        let (mut head, mut phase) = (self.cq_head, self.phase);
        // At most entries - 1 commands are outstanding, so at most that
        // many new entries.
        for _ in 1..self.entries {
            let Some(cqe) = self.posted_cqe(head, phase) else {
                break;
            };
            if cqe.sqhd < self.entries {
                sq_head = cqe.sqhd;
            }
            (head, phase) = self.next_cq_slot(head, phase);
        }
        (self.sq_tail as usize + self.entries as usize - sq_head as usize) % self.entries as usize
    }

    /// Oldest outstanding command: (CID, submit time).
    pub fn oldest(&self) -> Option<(u16, Instant)> {
        self.tracker.oldest()
    }

    fn sq_free(&self) -> usize {
        let used = (self.sq_tail as usize + self.entries as usize - self.sq_head as usize)
            % self.entries as usize;
        self.entries as usize - 1 - used
    }

    /// `true` when `n` more commands fit now.
    pub fn can_submit(&self, n: usize) -> bool {
        self.tracker.available() >= n && self.sq_free() >= n
    }

    /// Queues `sqe` with data `segs` (IOVA, length) for `token`; the
    /// doorbell is written by [`QueuePair::ring`]. Returns the CID.
    pub fn submit(
        &mut self,
        mut sqe: SubmissionEntry,
        segs: &[(u64, usize)],
        token: u64,
    ) -> Result<u16, SubmitError> {
        if self.sq_free() == 0 {
            return Err(SubmitError::QueueFull);
        }
        let (cid, slot) = self
            .tracker
            .alloc(token, Some(Instant::now()))
            .ok_or(SubmitError::QueueFull)?;
        if !segs.is_empty() {
            let list_off = self.prp_off + slot * self.prp_pages * PAGE;
            let mem = &self.mem;
            match prp::build(segs, mem.iova(list_off), self.prp_pages, |o, v| {
                mem.write_u64(list_off + o, v)
            }) {
                Ok(p) => sqe.dptr = [p.prp1, p.prp2],
                Err(e) => {
                    self.tracker.unalloc(cid);
                    return Err(SubmitError::Prp(e));
                }
            }
        }
        sqe.set_cid(cid);
        self.mem.write_sqe(self.sq_tail as usize * 64, &sqe);
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        self.tail_dirty = true;
        Ok(cid)
    }

    /// Writes the SQ tail doorbell if entries were queued since the last
    /// ring (after a fence, so the device sees the entries first).
    pub fn ring(&mut self, bar: &Bar) -> Result<(), MmioError> {
        if self.tail_dirty {
            fence(Ordering::SeqCst);
            bar.write32(self.sq_db, self.sq_tail as u32)?;
            self.tail_dirty = false;
        }
        Ok(())
    }

    /// Takes up to `max` completions off the CQ, then writes the CQ head
    /// doorbell once. Stale CIDs are consumed and dropped.
    pub fn poll(
        &mut self,
        bar: &Bar,
        max: usize,
        mut f: impl FnMut(Completion),
    ) -> Result<usize, MmioError> {
        let mut n = 0;
        while n < max {
            let Some(cqe) = self.posted_cqe(self.cq_head, self.phase) else {
                break;
            };
            (self.cq_head, self.phase) = self.next_cq_slot(self.cq_head, self.phase);
            if cqe.sqhd < self.entries {
                self.sq_head = cqe.sqhd;
            }
            n += 1;
            match self.tracker.complete(cqe.cid) {
                Some(token) => f(Completion {
                    token,
                    status: cqe.status(),
                    dw0: cqe.dw0,
                }),
                None => tracing::warn!(qid = self.qid, cid = cqe.cid, "stale completion dropped"),
            }
        }
        if n > 0 {
            bar.write32(self.cq_db, self.cq_head as u32)?;
        }
        Ok(n)
    }

    /// The completion entry at CQ slot `head` if the controller posted it
    /// (its phase tag equals `phase`).
    #[inline]
    fn posted_cqe(&self, head: u16, phase: bool) -> Option<CompletionEntry> {
        let off = self.cq_off + head as usize * 16;
        let status = self.mem.read_u16(off + 14);
        if (status & 1 != 0) != phase {
            return None;
        }
        // The rest of the entry is valid only once the phase matched.
        fence(Ordering::Acquire);
        Some(self.mem.read_cqe(off, status))
    }

    /// The CQ slot after `head`, and the phase expected there.
    #[inline]
    fn next_cq_slot(&self, head: u16, phase: bool) -> (u16, bool) {
        if head + 1 == self.entries {
            (0, !phase)
        } else {
            (head + 1, phase)
        }
    }

    /// After the controller was disabled: releases every outstanding slot,
    /// calling `f` with its token, and resets the rings to their initial
    /// state (zeroed CQ, indices 0, phase 1) for re-creation.
    pub fn reset_after_disable(&mut self, f: impl FnMut(u64)) -> usize {
        let n = self.tracker.drain(f);
        self.mem.fill(0, self.prp_off, 0);
        self.sq_tail = 0;
        self.sq_head = 0;
        self.cq_head = 0;
        self.phase = true;
        self.tail_dirty = false;
        n
    }

    /// Allocates `bytes` of bounce space; returns its offset.
    pub fn bounce_alloc(&mut self, bytes: usize) -> Option<usize> {
        self.arena.alloc(bytes)
    }

    /// Frees bounce space.
    pub fn bounce_free(&mut self, off: usize, bytes: usize) {
        self.arena.free(off, bytes)
    }

    /// Bounce bytes allocated now (whole pages).
    pub fn bounce_in_use(&self) -> usize {
        self.arena.used_pages() * PAGE
    }

    /// CIDs of the outstanding commands whose token satisfies `f`.
    pub fn active_cids(&self, f: impl Fn(u64) -> bool) -> Vec<u16> {
        self.tracker.active_cids(f)
    }

    /// Bounce area size.
    pub fn bounce_capacity(&self) -> usize {
        self.arena.capacity()
    }

    /// IOVA of bounce offset `off`.
    pub fn bounce_iova(&self, off: usize) -> u64 {
        self.mem.iova(self.bounce_off + off)
    }

    /// Copies into the bounce area.
    pub fn bounce_write(&self, off: usize, src: &[u8]) {
        self.mem.copy_in(self.bounce_off + off, src)
    }

    /// Copies out of the bounce area (only after the command completed).
    pub fn bounce_read(&self, off: usize, dst: &mut [u8]) {
        self.mem.copy_out(self.bounce_off + off, dst)
    }
}
