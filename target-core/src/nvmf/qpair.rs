//! A target-side queue pair: pre-allocated request slots, the CID table, and
//! the state a quiesce and drain walks through.

use std::collections::VecDeque;
use std::sync::Arc;

use super::ctrlr::Controller;
use super::transport::{Capsule, QpTransport, Response};
use crate::spec::{CompletionEntry, Status, SubmissionEntry};

/// Life of a queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// Waiting for its Fabrics Connect.
    Connecting,
    /// Fetching and executing commands.
    Active,
    /// Quiesced: no new fetches; waiting for commands handed to a backend.
    Draining,
}

/// One request slot: a command handed to a backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// Bumped each time the slot is freed, so a stale completion tag never
    /// matches the next command in this slot.
    pub generation: u16,
    /// In use.
    pub busy: bool,
    /// Host's command identifier.
    pub cid: u16,
    /// Namespace view the command went to.
    pub view: u32,
    /// When it was fetched (ns since the engine epoch; 0 when latency
    /// tracking is off).
    pub start_ns: u64,
}

/// A drain in progress.
pub struct Drain {
    /// Escalate (backend reset) when this passes, in ms since the epoch.
    pub deadline_ms: u64,
    /// 0: waiting; 1: backend reset sent; 2: gave up on the backend
    /// (stage 3: the controller was failed to its host).
    pub stage: u8,
    /// Run when the queue pair is destroyed.
    pub waiters: Vec<Box<dyn FnOnce() + Send>>,
    /// CID of a Fabrics Disconnect to answer just before destruction.
    pub disconnect_cid: Option<u16>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("deadline_ms", &self.deadline_ms)
            .field("stage", &self.stage)
            .field("waiters", &self.waiters.len())
            .finish()
    }
}

/// The SQ head after `fetched` entries of a queue of `entries`.
#[inline]
fn sq_head(fetched: u64, entries: u16) -> u16 {
    (fetched % u64::from(entries.max(1))) as u16
}

/// Words of the command-identifier bitmap: one bit for each `u16`.
const CID_WORDS: usize = 1 << 10;

/// A queue pair as its poll group holds it.
#[derive(Debug)]
pub struct Qpair {
    /// Queue ID (0 = admin).
    pub qid: u16,
    /// Submission queue entries.
    pub entries: u16,
    /// Entries fetched from the submission queue since it was created.
    /// The SQ head a completion reports is this modulo `entries`: computed
    /// where a CQE is built, not kept per fetch (a ring-transport response
    /// carries no SQ head at all). 64 bits, so it never wraps.
    pub fetched: u64,
    /// Subsystem index, once connected.
    pub sid: u32,
    /// Controller, once connected.
    pub ctrl: Option<Arc<Controller>>,
    /// The transport end.
    pub tr: QpTransport,
    /// Request slots.
    pub slots: Box<[Slot]>,
    /// Free slot indices. A slot not here is a command at a backend, so
    /// their count is [`Qpair::in_backend`], with no counter per command.
    pub free: Vec<u16>,
    /// One bit per command identifier in use. A fixed array covering all
    /// 65,536 identifiers, so the index (`cid >> 6`) needs no bounds check.
    cid_busy: Box<[u64; CID_WORDS]>,
    /// State.
    pub state: QpState,
    /// An I/O queue whose Connect succeeded: its commands other than
    /// Fabrics ones take the I/O path. Never cleared (a queue pair does
    /// not go back to connecting), so one flag replaces a three-way test
    /// of state, queue ID and opcode for each command.
    pub io_connected: bool,
    /// A fetched command that could not proceed yet (paused namespace,
    /// full backend channel). While set, nothing more is fetched.
    pub parked: Option<Capsule>,
    /// Responses the completion ring had no room for.
    pub backlog: VecDeque<Response>,
    /// The drain, while draining.
    pub drain: Option<Drain>,
    /// Admin queue: a Property Set waiting for a reset or shutdown.
    pub pending_property_set: Option<u16>,
    /// Admin queue: Property Sets fetched while one was pending; they run,
    /// in order, once it has been answered.
    pub queued_property_sets: VecDeque<SubmissionEntry>,
    /// Completions posted since the poll group last added them to its
    /// `responses` counter (a plain field: one writer, no shared line per
    /// command).
    pub responses: u64,
}

impl Qpair {
    /// A new queue pair waiting for Connect. Allocates its slots now, so the
    /// I/O path never does.
    pub fn new(tr: QpTransport, entries: u16) -> Self {
        let entries = entries.max(2);
        Self {
            qid: 0,
            entries,
            fetched: 0,
            sid: u32::MAX,
            ctrl: None,
            tr,
            slots: vec![Slot::default(); entries as usize].into_boxed_slice(),
            free: (0..entries).rev().collect(),
            cid_busy: Box::new([0u64; CID_WORDS]),
            state: QpState::Connecting,
            io_connected: false,
            parked: None,
            backlog: VecDeque::with_capacity(entries as usize),
            drain: None,
            pending_property_set: None,
            queued_property_sets: VecDeque::new(),
            responses: 0,
        }
    }

    /// Resizes the slot table once Connect gives the real queue size.
    pub fn set_entries(&mut self, entries: u16) {
        let entries = entries.max(2);
        self.entries = entries;
        self.slots = vec![Slot::default(); entries as usize].into_boxed_slice();
        self.free = (0..entries).rev().collect();
        self.backlog = VecDeque::with_capacity(entries as usize);
    }

    /// Commands handed to a backend and not yet completed.
    #[inline]
    pub fn in_backend(&self) -> u32 {
        (self.slots.len() - self.free.len()) as u32
    }

    /// Counts one fetched entry (the SQ head advances by one).
    #[inline]
    pub fn advance_sqhd(&mut self) {
        self.fetched += 1;
    }

    /// The SQ head: the slot after the last one fetched.
    #[inline]
    pub fn sqhd(&self) -> u16 {
        sq_head(self.fetched, self.entries)
    }

    /// `true` if `cid` is outstanding.
    #[inline]
    pub fn cid_in_use(&self, cid: u16) -> bool {
        self.cid_busy[(cid >> 6) as usize] & (1 << (cid & 63)) != 0
    }

    /// Marks `cid` outstanding or done.
    #[inline]
    pub fn set_cid(&mut self, cid: u16, busy: bool) {
        let w = &mut self.cid_busy[(cid >> 6) as usize];
        if busy {
            *w |= 1 << (cid & 63);
        } else {
            *w &= !(1 << (cid & 63));
        }
    }

    /// Sends a completion for `cid`; a full ring keeps it in the backlog.
    #[inline]
    pub fn respond(&mut self, cid: u16, status: Status, dw0: u32, buf: crate::iobuf::DataBuf) {
        self.respond_dw(cid, status, dw0, 0, buf);
    }

    /// Sends a completion with both command-specific dwords. Inlined into
    /// each caller: the CQE is then built where it goes.
    #[inline(always)]
    pub fn respond_dw(
        &mut self,
        cid: u16,
        status: Status,
        dw0: u32,
        dw1: u32,
        buf: crate::iobuf::DataBuf,
    ) {
        let mut cqe = CompletionEntry::new(cid, status);
        cqe.dw0 = dw0;
        cqe.dw1 = dw1;
        cqe.sqid = self.qid;
        self.responses += 1;
        if !self.backlog.is_empty() {
            cqe.sqhd = self.sqhd();
            self.backlog.push_back(Response { cqe, buf });
            return;
        }
        // Borrowed, not copied: only a transport that asks reads them.
        let (fetched, entries) = (&self.fetched, &self.entries);
        let sqhd = || sq_head(*fetched, *entries);
        if let Err(resp) = self.tr.send_cqe(cqe, buf, sqhd) {
            self.backlog.push_back(resp);
        }
    }

    /// Retries backlogged responses. Returns how many went out. The empty
    /// case (every pass of every queue pair) is one inlined test.
    #[inline]
    pub fn flush_backlog(&mut self) -> usize {
        if self.backlog.is_empty() {
            return 0;
        }
        self.flush_backlog_slow()
    }

    #[cold]
    fn flush_backlog_slow(&mut self) -> usize {
        let mut n = 0;
        while let Some(r) = self.backlog.pop_front() {
            if let Err(r) = self.tr.send(r) {
                self.backlog.push_front(r);
                break;
            }
            n += 1;
        }
        n
    }

    /// `true` when the completion backlog is too long to fetch more.
    pub fn backlogged(&self) -> bool {
        self.backlog.len() >= self.entries as usize
    }
}
