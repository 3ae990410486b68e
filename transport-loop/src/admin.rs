//! The host's admin queue: shared by the caller and the background poller
//! (keep-alive, asynchronous events), so it sits behind a mutex that is
//! held only to submit or to reap, never while waiting.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use target_core::iobuf::DataBuf;
use target_core::nvmf::{Capsule, NvmfTarget, QueueRings};
use target_core::spec::{AdminOpcode, CompletionEntry, Status, SubmissionEntry};

use crate::HostError;

/// Admin queue state.
#[derive(Debug)]
pub(crate) struct AdminQueue {
    pub rings: QueueRings,
    next_cid: u16,
    pending: HashMap<u16, Option<(CompletionEntry, DataBuf)>>,
    pub aer_cids: Vec<u16>,
    /// Completed asynchronous events (CQE dword 0), not yet handled.
    pub events: Vec<u32>,
    pub stale: u64,
}

impl AdminQueue {
    pub fn new(rings: QueueRings) -> Self {
        Self {
            rings,
            next_cid: 1,
            pending: HashMap::new(),
            aer_cids: Vec::new(),
            events: Vec::new(),
            stale: 0,
        }
    }

    fn alloc_cid(&mut self) -> u16 {
        loop {
            let cid = self.next_cid;
            self.next_cid = self.next_cid.wrapping_add(1).max(1);
            if !self.pending.contains_key(&cid) && !self.aer_cids.contains(&cid) {
                return cid;
            }
        }
    }

    /// Reaps every completion, filing each under its command.
    pub fn reap(&mut self) {
        // The slots reaped last time go back to the target now (the CQ head
        // doorbell is batched; every admin wait reaps again).
        self.rings.release_cq();
        while let Some(r) = self.rings.reap() {
            let cid = r.cqe.cid;
            if let Some(slot) = self.pending.get_mut(&cid) {
                *slot = Some((r.cqe, r.buf));
            } else if let Some(i) = self.aer_cids.iter().position(|&c| c == cid) {
                self.aer_cids.swap_remove(i);
                if r.cqe.status().is_success() {
                    self.events.push(r.cqe.dw0);
                }
            } else {
                self.stale += 1;
            }
        }
    }

    /// Submits an Asynchronous Event Request.
    pub fn submit_aer(&mut self) -> Result<(), HostError> {
        let cid = self.alloc_cid();
        let sqe = SubmissionEntry::new(AdminOpcode::ASYNC_EVENT_REQUEST.0, cid);
        self.rings
            .submit(Capsule {
                sqe,
                buf: DataBuf::None,
            })
            .map_err(|_| HostError::Disconnected("admin queue".into()))?;
        self.aer_cids.push(cid);
        Ok(())
    }
}

pub(crate) fn lock(q: &Mutex<AdminQueue>) -> MutexGuard<'_, AdminQueue> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one admin command and waits (bounded) for its completion. Returns
/// the CQE whatever its status; transport failures are errors.
pub(crate) fn command(
    target: &NvmfTarget,
    q: &Mutex<AdminQueue>,
    mut sqe: SubmissionEntry,
    buf: DataBuf,
    limit: Duration,
) -> Result<(CompletionEntry, DataBuf), HostError> {
    let cid = {
        let mut a = lock(q);
        let cid = a.alloc_cid();
        sqe.set_cid(cid);
        a.rings
            .submit(Capsule { sqe, buf })
            .map_err(|_| HostError::Disconnected("admin queue".into()))?;
        a.pending.insert(cid, None);
        cid
    };
    let r = crate::wait::until(target, limit, "admin command", || {
        let mut a = lock(q);
        a.reap();
        if a.pending.get(&cid).is_some_and(Option::is_some) {
            return a.pending.remove(&cid).flatten();
        }
        if a.rings.target_done() {
            // The association is gone; nothing will answer.
            a.pending.remove(&cid);
            return Some((
                CompletionEntry::new(cid, Status::ABORTED_SQ_DELETION),
                DataBuf::None,
            ));
        }
        None
    });
    if r.is_err() {
        lock(q).pending.remove(&cid);
    }
    r
}

/// Like [`command`], but a non-success status is an error.
pub(crate) fn checked(
    target: &NvmfTarget,
    q: &Mutex<AdminQueue>,
    what: &'static str,
    sqe: SubmissionEntry,
    buf: DataBuf,
    limit: Duration,
) -> Result<(CompletionEntry, DataBuf), HostError> {
    let (cqe, buf) = command(target, q, sqe, buf, limit)?;
    if cqe.status().is_success() {
        Ok((cqe, buf))
    } else {
        Err(HostError::Status {
            what,
            status: cqe.status(),
            dw0: cqe.dw0,
        })
    }
}
