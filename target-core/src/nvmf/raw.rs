//! The engine's plain Rust API: submit an SQE with a buffer, get the CQE.
//!
//! No transport and no host logic: a [`RawQueue`] is one queue pair's rings
//! plus a bounded wait that also drives a manual-mode target. Tests of the
//! engine use it to send exactly the bytes they mean, including bad ones;
//! the loop transport builds its host on the same rings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::target::NvmfTarget;
use super::transport::{Capsule, QueueRings, Response};
use crate::iobuf::{DataBuf, IoBuf};
use zerocopy::IntoBytes;

use crate::spec::fabrics::ConnectData;
use crate::spec::{CompletionEntry, FabricsType, SubmissionEntry};

/// Builds the 1024-byte Connect data (NVMe-oF 1.1a Figure 20).
pub fn connect_data(hostid: &[u8; 16], cntlid: u16, subnqn: &str, hostnqn: &str) -> IoBuf {
    IoBuf::from_slice(ConnectData::new(*hostid, cntlid, subnqn, hostnqn).as_bytes())
}

/// A Fabrics Connect command for queue `qid` with `entries` entries.
pub fn connect_sqe(qid: u16, entries: u16, kato_ms: u32) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::fabrics(FabricsType::CONNECT, 0);
    sqe.cdw10 = (qid as u32) << 16;
    sqe.cdw11 = entries.saturating_sub(1) as u32;
    sqe.cdw12 = kato_ms;
    sqe
}

/// One queue pair's rings, driven directly.
#[derive(Debug)]
pub struct RawQueue {
    target: Arc<NvmfTarget>,
    rings: QueueRings,
    next_cid: u16,
    /// Bound for every wait.
    pub timeout: Duration,
}

impl RawQueue {
    /// Opens a queue pair of `entries` entries on `target` (not yet connected).
    pub fn open(target: &Arc<NvmfTarget>, entries: u16) -> Result<Self, super::TargetError> {
        let (rings, tr) = QueueRings::pair(entries as usize);
        target.accept(tr, entries)?;
        Ok(Self {
            target: target.clone(),
            rings,
            next_cid: 1,
            timeout: Duration::from_secs(10),
        })
    }

    /// The rings (to check their state).
    pub fn rings(&self) -> &QueueRings {
        &self.rings
    }

    /// The rings, to reap responses without waiting (a fuzzer or a test
    /// that drives the target itself).
    pub fn rings_mut(&mut self) -> &mut QueueRings {
        &mut self.rings
    }

    /// Submits `sqe` (its CID replaced by a fresh one) without waiting.
    /// Returns the CID, or the capsule if the ring refused it.
    pub fn submit(&mut self, mut sqe: SubmissionEntry, buf: DataBuf) -> Result<u16, Capsule> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        sqe.set_cid(cid);
        self.rings.submit(Capsule { sqe, buf }).map(|_| cid)
    }

    /// Submits `sqe` with its CID as given.
    pub fn submit_exact(&mut self, sqe: SubmissionEntry, buf: DataBuf) -> Result<(), Capsule> {
        self.rings.submit(Capsule { sqe, buf })
    }

    /// Waits (bounded) for the next response.
    pub fn next_response(&mut self) -> Option<Response> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(r) = self.rings.reap() {
                return Some(r);
            }
            if Instant::now() > deadline {
                return None;
            }
            if self.target.is_manual() {
                self.target.poll();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Submits and waits for that command's response. `None` on timeout or
    /// when the ring refused the command.
    pub fn execute(
        &mut self,
        sqe: SubmissionEntry,
        buf: DataBuf,
    ) -> Option<(CompletionEntry, DataBuf)> {
        self.submit(sqe, buf).ok()?;
        self.next_response().map(|r| (r.cqe, r.buf))
    }

    /// Fabrics Connect on this queue.
    pub fn connect(
        &mut self,
        qid: u16,
        entries: u16,
        kato_ms: u32,
        data: IoBuf,
    ) -> Option<CompletionEntry> {
        self.rings.set_sqid(qid);
        self.execute(connect_sqe(qid, entries, kato_ms), DataBuf::One(data))
            .map(|r| r.0)
    }
}

impl Drop for RawQueue {
    fn drop(&mut self) {
        self.rings.host_close();
    }
}
