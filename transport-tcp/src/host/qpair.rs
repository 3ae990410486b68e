//! A host I/O queue pair over NVMe/TCP: one connection, owned by one
//! thread, driven by [`HostQpair::poll`]. No locks on submit or poll (one
//! atomic load per poll checks the association).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use target_core::host_cmds::NvmCommands;
use target_core::iobuf::DataBuf;
use target_core::spec::{Status, SubmissionEntry};

use super::conn::HostConn;
use super::ctrl::Assoc;
use super::wire::Wire;
use super::{HostCompletion, HostError, HostQpairStats, QpairState, SubmitError};

/// An I/O queue pair of a [`super::HostController`].
#[derive(Debug)]
pub struct HostQpair {
    assoc: Arc<Assoc>,
    qid: u16,
    depth: u16,
    conn: HostConn,
    /// Association generation the connection belongs to.
    generation: u32,
    /// The host is closing this queue: no recovery.
    closing: bool,
    next_attempt: Option<Instant>,
}

impl HostQpair {
    pub(crate) fn new(assoc: Arc<Assoc>, qid: u16, depth: u16, wire: Wire) -> Self {
        let generation = assoc.generation.load(Ordering::Acquire);
        let mut conn = HostConn::new(
            wire,
            qid,
            depth,
            assoc.in_capsule.load(Ordering::Acquire),
            assoc.max_xfer.load(Ordering::Acquire),
        );
        if assoc.recovery() {
            conn.max_retries = assoc.opts.max_retries;
            conn.queue_while_down = true;
        }
        Self {
            assoc,
            qid,
            depth,
            conn,
            generation,
            closing: false,
            next_attempt: None,
        }
    }

    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Requests that can be outstanding at once.
    pub fn depth(&self) -> u16 {
        self.conn.depth()
    }

    /// Requests submitted and not yet completed.
    pub fn outstanding(&self) -> u32 {
        self.conn.outstanding()
    }

    /// Counters.
    pub fn stats(&self) -> HostQpairStats {
        self.conn.stats
    }

    /// Largest data of one command; longer reads and writes are split.
    pub fn max_transfer(&self) -> u32 {
        self.conn.max_xfer
    }

    /// Header and data digests in use on the current connection.
    pub fn digests(&self) -> (bool, bool) {
        self.conn.wire.as_ref().map_or((false, false), |w| {
            (w.codec.header_digest, w.codec.data_digest)
        })
    }

    /// Live, reconnecting or dead.
    pub fn state(&self) -> QpairState {
        if self.conn.is_live() {
            QpairState::Live
        } else if self.recovering() {
            QpairState::Reconnecting
        } else {
            QpairState::Dead
        }
    }

    /// Why the connection was lost (or the controller given up), if it was.
    pub fn last_error(&self) -> Option<String> {
        self.conn
            .dead_reason
            .clone()
            .or_else(|| self.assoc.last_error())
    }

    /// Submits any command with the given buffer (its length is the
    /// transfer length). The tag comes back with its completion. With
    /// recovery on, submissions made while reconnecting wait for the new
    /// connection.
    #[inline]
    pub fn submit(
        &mut self,
        sqe: SubmissionEntry,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, SubmitError> {
        if !self.conn.is_live() && !self.recovering() {
            return Err(SubmitError::Closed(buf));
        }
        self.conn.submit(sqe, buf, tag)
    }

    /// Drives the connection and delivers up to `max` completions to `f`.
    /// Returns how many. On a lost connection: without recovery, every
    /// outstanding request completes with Host Pathing Error (and
    /// [`Self::last_error`] says why); with recovery, they wait and are
    /// resubmitted once the queue is connected again.
    #[inline]
    pub fn poll(&mut self, max: usize, f: &mut impl FnMut(HostCompletion)) -> usize {
        let mut n = self.conn.poll(max, f);
        if self.conn.is_live() {
            let gone = self.assoc.gone.load(Ordering::Acquire);
            if !gone && self.assoc.generation.load(Ordering::Acquire) == self.generation {
                return n;
            }
            let why = if gone {
                self.assoc
                    .last_error()
                    .unwrap_or_else(|| "the controller is gone".into())
            } else {
                "the controller was reset or reconnected".into()
            };
            self.conn.kill(why, None);
        }
        if self.recovering() {
            n += self.recover_step();
        } else {
            n += self.conn.fail_all(Status::HOST_PATHING_ERROR, f);
        }
        n
    }

    #[inline]
    fn recovering(&self) -> bool {
        self.assoc.recovery() && !self.closing && !self.assoc.gone.load(Ordering::Acquire)
    }

    /// Recovery, one step: park what was in flight; ask for (or wait for)
    /// a new association; connect to it. The parked commands go out on the
    /// next poll.
    fn recover_step(&mut self) -> usize {
        self.conn.park_inflight();
        if !self.assoc.ready.load(Ordering::Acquire) {
            // Tagged with this queue's generation: ignored if the poller
            // has replaced that association already.
            self.assoc.recover_req.request(self.generation);
            return 0;
        }
        let generation = self.assoc.generation.load(Ordering::Acquire);
        if generation == self.generation {
            // Only this queue failed: the controller's poller reconnects
            // the whole association, as Linux's error recovery does.
            self.assoc.recover_req.request(generation);
            return 0;
        }
        if self.next_attempt.is_some_and(|t| Instant::now() < t) {
            return 0;
        }
        match self.assoc.open_io(self.qid, self.depth) {
            Ok(w) => {
                self.conn.attach(w);
                self.generation = generation;
                self.conn.stats.reconnects += 1;
                self.next_attempt = None;
            }
            Err(e) => {
                tracing::debug!(qid = self.qid, error = %e, "I/O queue reconnect");
                self.next_attempt = Some(Instant::now() + self.assoc.opts.reconnect_delay);
                self.assoc.recover_req.request(generation);
            }
        }
        0
    }

    /// Polls until nothing is outstanding (bounded by `limit`).
    pub fn drain(
        &mut self,
        limit: Duration,
        f: &mut impl FnMut(HostCompletion),
    ) -> Result<(), HostError> {
        let deadline = Instant::now() + limit;
        while self.conn.outstanding() > 0 {
            if self.poll(usize::MAX, f) == 0 {
                if Instant::now() > deadline {
                    return Err(HostError::Timeout("queue pair drain"));
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        Ok(())
    }

    /// Drains the queue (bounded by `limit`), then closes its connection;
    /// the target deletes the queue. Completions go to `f`.
    pub fn disconnect(
        &mut self,
        limit: Duration,
        f: &mut impl FnMut(HostCompletion),
    ) -> Result<(), HostError> {
        self.closing = true;
        let r = self.drain(limit, f);
        if let Some(mut w) = self.conn.wire.take() {
            w.close();
        }
        self.conn.dead_reason = Some("disconnected by the host".into());
        r
    }

    /// Connects this queue again after a reset or a lost connection (same
    /// QID and depth). The queue must be idle.
    pub fn reconnect(&mut self) -> Result<(), HostError> {
        if self.conn.outstanding() > 0 {
            return Err(HostError::Busy(self.conn.outstanding()));
        }
        let generation = self.assoc.generation.load(Ordering::Acquire);
        let w = self.assoc.open_io(self.qid, self.depth)?;
        self.conn.attach(w);
        self.generation = generation;
        self.closing = false;
        Ok(())
    }
}

impl NvmCommands for HostQpair {
    type SubmitError = SubmitError;

    #[inline]
    fn submit_command(
        &mut self,
        sqe: SubmissionEntry,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, SubmitError> {
        self.submit(sqe, buf, tag)
    }
}
