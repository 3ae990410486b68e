//! Runs jobs against a target: host threads over the loop transport,
//! pollers on a reactor (`--inline`, like bdevperf), or straight on a block
//! device (`--target direct`, the backend without the NVMe-oF layer).
//!
//! One job is one loop: keep `iodepth` I/Os in flight, time each from
//! submission to completion, feed the recorder, stop on runtime, I/O count,
//! Ctrl-C, or a verify mismatch (which names the LBA). Buffers are
//! allocated once per job and reused, so the loop does not allocate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use target_core::bdev::{BdevIo, BdevRef, IoChannel, IoOp};
use target_core::clock::mono_ns;
use target_core::host_cmds::NvmCommands;
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::reactor::Poller;
use transport_loop::HostQpair;

use crate::job::JobSpec;
use crate::stats::{JobResult, LiveStats, Recorder};
use crate::verify::{Mismatch, Verifier};
use crate::workload::{IoSpec, Op, Workload};

/// Where a job's I/O goes.
pub trait Port: Send {
    /// Submits; gives the buffer back when the queue is full or closed.
    fn submit(&mut self, op: Op, lba: u64, blocks: u32, buf: IoBuf, tag: u64) -> Result<(), IoBuf>;
    /// Delivers completions as `(tag, ok, buffer)`.
    fn poll(&mut self, f: &mut dyn FnMut(u64, bool, DataBuf)) -> usize;
    /// [`Port::poll`] for a caller that knows the port's type: a port
    /// whose reap loop is generic overrides it, and the job's completion
    /// handler is then compiled into that loop instead of being called
    /// through a pointer once per completion.
    #[inline]
    fn poll_each(&mut self, f: &mut impl FnMut(u64, bool, DataBuf)) -> usize
    where
        Self: Sized,
    {
        self.poll(f)
    }
    /// Makes what `submit` queued visible to the target, for ports that
    /// batch their doorbell (the loop port, as an NVMe driver writes its SQ
    /// tail once per batch); `poll` does it too. The job calls it after
    /// each burst of submissions.
    fn doorbell(&mut self) {}
    /// `false` once the queue can take no more (torn down, and not
    /// reconnecting).
    fn alive(&self) -> bool {
        true
    }
    /// The host's error-recovery counters: (retries, reconnects).
    fn recovery(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// A loop-transport queue pair and the namespace it targets.
#[derive(Debug)]
pub struct LoopPort {
    /// The queue pair.
    pub qp: HostQpair,
    /// Namespace ID.
    pub nsid: u32,
}

impl LoopPort {
    /// A port on `qp` with its doorbell batched: the job rings it once per
    /// burst of submissions ([`Port::doorbell`]).
    pub fn new(mut qp: HostQpair, nsid: u32) -> Self {
        qp.set_batch_doorbell(true);
        Self { qp, nsid }
    }
}

impl Port for LoopPort {
    #[inline]
    fn submit(&mut self, op: Op, lba: u64, blocks: u32, buf: IoBuf, tag: u64) -> Result<(), IoBuf> {
        let buf = DataBuf::One(buf);
        let r = match op {
            Op::Read => self.qp.read(self.nsid, lba, blocks, buf, tag),
            Op::Write => self.qp.write(self.nsid, lba, blocks, buf, tag),
        };
        r.map(|_| ()).map_err(|e| match e.into_buf() {
            DataBuf::One(b) => b,
            _ => IoBuf::new(0),
        })
    }

    #[inline]
    fn poll(&mut self, f: &mut dyn FnMut(u64, bool, DataBuf)) -> usize {
        self.poll_each(&mut &mut *f)
    }

    #[inline]
    fn poll_each(&mut self, f: &mut impl FnMut(u64, bool, DataBuf)) -> usize {
        self.qp
            .poll(64, &mut |c| f(c.tag, c.status().is_success(), c.buf))
    }

    #[inline]
    fn doorbell(&mut self) {
        self.qp.ring_doorbell();
    }

    fn alive(&self) -> bool {
        match self.qp.state() {
            transport_loop::QpairState::Live | transport_loop::QpairState::Reconnecting => true,
            // Between the target's closing and its end the queue holds
            // nothing for a while: with recovery on that is not the end
            // (a job ended there on a reset it should have ridden through).
            transport_loop::QpairState::Closing => {
                self.qp.will_reconnect() || self.qp.outstanding() > 0
            }
            transport_loop::QpairState::Dead => self.qp.outstanding() > 0,
        }
    }

    fn recovery(&self) -> (u64, u64) {
        let s = self.qp.stats();
        (s.retries, s.reconnects)
    }
}

/// Splits I/Os larger than the controller's largest transfer (MDTS) into
/// commands that fit, and completes the original once all of them have,
/// as the Linux block layer does: a job's `bs` is not bounded by the
/// controller. Transport-agnostic (any [`Port`]); smaller I/Os pass
/// straight through. A split I/O goes through chunk buffers (copied in for
/// writes, out for reads): only I/O above MDTS pays for it.
#[derive(Debug)]
pub struct SplitPort<P: Port> {
    inner: P,
    block_size: u32,
    /// Blocks per command (`u32::MAX`: no limit).
    max_blocks: u32,
    parents: Vec<Option<SplitParent>>,
    free_parents: Vec<u32>,
    chunks: Vec<IoBuf>,
    /// Children accepted but not yet taken by the queue (it was full).
    pending: std::collections::VecDeque<(u32, u32)>,
}

#[derive(Debug)]
struct SplitParent {
    tag: u64,
    op: Op,
    lba: u64,
    blocks: u32,
    buf: IoBuf,
    outstanding: u32,
    ok: bool,
}

/// Child tags: bit 62 set, bit 63 clear (jobs use slot indexes and
/// `u64::MAX`), parent index above the child number.
const CHILD_TAG: u64 = 1 << 62;
const CHILD_BITS: u32 = 20;

impl<P: Port> SplitPort<P> {
    /// Wraps `inner`; `max_transfer` bytes per command (0: unlimited).
    pub fn new(inner: P, block_size: u32, max_transfer: u64) -> Self {
        let max_blocks = match max_transfer / block_size.max(1) as u64 {
            0 if max_transfer == 0 => u32::MAX,
            0 => 1,
            n => n.min(u32::MAX as u64) as u32,
        };
        Self {
            inner,
            block_size,
            max_blocks,
            parents: Vec::new(),
            free_parents: Vec::new(),
            chunks: Vec::new(),
            pending: std::collections::VecDeque::new(),
        }
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Blocks per command.
    pub fn max_blocks(&self) -> u32 {
        self.max_blocks
    }

    /// Submits child `child` of parent `pi`; `false` if the queue refused.
    fn submit_child(&mut self, pi: u32, child: u32) -> bool {
        let Some(Some(p)) = self.parents.get(pi as usize) else {
            return true;
        };
        let first = child as u64 * self.max_blocks as u64;
        let blocks = (p.blocks as u64 - first).min(self.max_blocks as u64) as u32;
        let bytes = blocks as usize * self.block_size as usize;
        let chunk_len = self.max_blocks as usize * self.block_size as usize;
        let mut chunk = self.chunks.pop().unwrap_or_else(|| IoBuf::new(chunk_len));
        if p.op == Op::Write {
            let off = first as usize * self.block_size as usize;
            chunk.as_mut_slice()[..bytes].copy_from_slice(&p.buf.as_slice()[off..off + bytes]);
        }
        let (op, lba) = (p.op, p.lba + first);
        let tag = CHILD_TAG | ((pi as u64) << CHILD_BITS) | child as u64;
        match self.inner.submit(op, lba, blocks, chunk, tag) {
            Ok(()) => true,
            Err(c) => {
                if c.len() == chunk_len {
                    self.chunks.push(c);
                }
                false
            }
        }
    }

    fn flush_pending(&mut self) {
        while let Some(&(pi, child)) = self.pending.front() {
            if !self.submit_child(pi, child) {
                if !self.inner.alive() {
                    // The queue is gone: these children never ran.
                    while let Some((pi, _)) = self.pending.pop_front() {
                        if let Some(Some(p)) = self.parents.get_mut(pi as usize) {
                            p.ok = false;
                            p.outstanding -= 1;
                        }
                    }
                }
                break;
            }
            self.pending.pop_front();
        }
    }
}

impl<P: Port> Port for SplitPort<P> {
    fn submit(&mut self, op: Op, lba: u64, blocks: u32, buf: IoBuf, tag: u64) -> Result<(), IoBuf> {
        if blocks <= self.max_blocks {
            return self.inner.submit(op, lba, blocks, buf, tag);
        }
        if !self.pending.is_empty() || !self.inner.alive() {
            return Err(buf);
        }
        let n = blocks.div_ceil(self.max_blocks);
        let pi = match self.free_parents.pop() {
            Some(i) => i,
            None => {
                self.parents.push(None);
                self.parents.len() as u32 - 1
            }
        };
        self.parents[pi as usize] = Some(SplitParent {
            tag,
            op,
            lba,
            blocks,
            buf,
            outstanding: n,
            ok: true,
        });
        for child in 0..n {
            self.pending.push_back((pi, child));
        }
        self.flush_pending();
        Ok(())
    }

    fn poll(&mut self, f: &mut dyn FnMut(u64, bool, DataBuf)) -> usize {
        let Self {
            inner,
            parents,
            chunks,
            block_size,
            max_blocks,
            ..
        } = self;
        let chunk_len = *max_blocks as usize * *block_size as usize;
        let mut n = inner.poll(&mut |tag, ok, buf| {
            if tag >> 62 != 1 {
                f(tag, ok, buf);
                return;
            }
            let pi = ((tag & !CHILD_TAG) >> CHILD_BITS) as usize;
            let child = tag & ((1 << CHILD_BITS) - 1);
            let Some(Some(p)) = parents.get_mut(pi) else {
                return;
            };
            let chunk = match buf {
                DataBuf::One(b) => Some(b),
                _ => None,
            };
            if !ok || chunk.is_none() {
                p.ok = false;
            }
            if let Some(c) = chunk {
                if p.op == Op::Read && ok {
                    let first = child * *max_blocks as u64;
                    let blocks = (p.blocks as u64 - first).min(*max_blocks as u64) as usize;
                    let off = first as usize * *block_size as usize;
                    let bytes = blocks * *block_size as usize;
                    p.buf.as_mut_slice()[off..off + bytes].copy_from_slice(&c.as_slice()[..bytes]);
                }
                if c.len() == chunk_len {
                    chunks.push(c);
                }
            }
            p.outstanding -= 1;
        });
        // Parents whose children all came back (or never ran).
        for (i, slot) in self.parents.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|p| p.outstanding == 0)
                && let Some(p) = slot.take()
            {
                f(p.tag, p.ok, DataBuf::One(p.buf));
                self.free_parents.push(i as u32);
                n += 1;
            }
        }
        if !self.pending.is_empty() {
            self.flush_pending();
        }
        n
    }

    fn alive(&self) -> bool {
        self.inner.alive() || self.parents.iter().any(Option::is_some)
    }

    fn doorbell(&mut self) {
        self.inner.doorbell();
    }

    fn recovery(&self) -> (u64, u64) {
        self.inner.recovery()
    }
}

/// A block-device channel used directly.
#[derive(Debug)]
pub struct DirectPort {
    /// The channel (opened on the job's thread or reactor).
    pub ch: Box<dyn IoChannel>,
}

impl Port for DirectPort {
    #[inline]
    fn submit(&mut self, op: Op, lba: u64, blocks: u32, buf: IoBuf, tag: u64) -> Result<(), IoBuf> {
        let io = BdevIo {
            tag,
            op: if op == Op::Read {
                IoOp::Read
            } else {
                IoOp::Write
            },
            lba,
            blocks,
            fua: false,
            buf: DataBuf::One(buf),
        };
        self.ch.submit(io).map_err(|io| match io.buf {
            DataBuf::One(b) => b,
            _ => IoBuf::new(0),
        })
    }

    #[inline]
    fn poll(&mut self, f: &mut dyn FnMut(u64, bool, DataBuf)) -> usize {
        self.poll_each(&mut &mut *f)
    }

    #[inline]
    fn poll_each(&mut self, f: &mut impl FnMut(u64, bool, DataBuf)) -> usize {
        self.ch.poll(&mut |c| f(c.tag, c.result.is_ok(), c.buf))
    }
}

/// A boxed port is a port: jobs on ports of other kinds (NVMe/TCP, split
/// I/O, test fakes) run through it, one call through a pointer per
/// submission and completion.
impl<P: Port + ?Sized> Port for Box<P> {
    #[inline]
    fn submit(&mut self, op: Op, lba: u64, blocks: u32, buf: IoBuf, tag: u64) -> Result<(), IoBuf> {
        (**self).submit(op, lba, blocks, buf, tag)
    }

    #[inline]
    fn poll(&mut self, f: &mut dyn FnMut(u64, bool, DataBuf)) -> usize {
        (**self).poll(f)
    }

    fn doorbell(&mut self) {
        (**self).doorbell()
    }

    fn alive(&self) -> bool {
        (**self).alive()
    }

    fn recovery(&self) -> (u64, u64) {
        (**self).recovery()
    }
}

/// A job's port, kept as its own type where the job engine has a fast
/// path for it: a job stepping a [`LoopPort`] or [`DirectPort`] has the
/// port's submit and reap compiled into its loop (one indirect call per
/// step instead of two per I/O). Any other port runs boxed.
///
/// Built once per job and unpacked into its poller or thread at once, so
/// the size of the loop variant costs nothing per I/O (and boxing it would
/// put a pointer back between the job and its port).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AnyPort {
    /// A loop-transport queue pair.
    Loop(LoopPort),
    /// A block device's channel.
    Direct(DirectPort),
    /// Anything else.
    Boxed(Box<dyn Port>),
}

impl std::fmt::Debug for dyn Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Port")
    }
}

impl AnyPort {
    /// Runs `job` on the calling thread until it finishes.
    pub fn run_on_thread(self, job: JobRun) -> JobOutcome {
        match self {
            AnyPort::Loop(p) => run_on_thread(job, p),
            AnyPort::Direct(p) => run_on_thread(job, p),
            AnyPort::Boxed(p) => run_on_thread(job, p),
        }
    }

    /// `job` as a reactor poller; its outcome is sent on `done`.
    pub fn inline_job(self, job: JobRun, done: mpsc::Sender<JobOutcome>) -> Box<dyn Poller> {
        match self {
            AnyPort::Loop(p) => Box::new(InlineJob::new(job, p, done)),
            AnyPort::Direct(p) => Box::new(InlineJob::new(job, p, done)),
            AnyPort::Boxed(p) => Box::new(InlineJob::new(job, p, done)),
        }
    }
}

/// Opens a direct port on `bdev`.
pub fn direct_port(bdev: &BdevRef) -> Result<DirectPort, String> {
    bdev.open_channel()
        .map(|ch| DirectPort { ch })
        .map_err(|e| e.to_string())
}

#[derive(Debug)]
struct Slot {
    io: IoSpec,
    /// Submission time, ns since `JobRun::epoch_mono`.
    start_ns: u64,
    seq: u64,
    busy: bool,
    /// The slot's data buffer while it is idle (`None` while the port has
    /// it). Kept with the rest of the slot: one index, one bounds check
    /// and one cache line per I/O instead of two.
    buf: Option<IoBuf>,
}

/// How a job ended.
#[derive(Debug)]
pub struct JobOutcome {
    /// Figures.
    pub result: JobResult,
    /// The first verify mismatch, if any.
    pub mismatch: Option<Mismatch>,
}

/// One job's state: what [`JobRun::step`] advances.
pub struct JobRun {
    spec: JobSpec,
    block_size: u32,
    workload: Workload,
    verifier: Option<Verifier>,
    recorder: Option<Recorder>,
    slots: Vec<Slot>,
    /// Idle slots; the others are in flight ([`JobRun::in_flight`]).
    free: Vec<u32>,
    issued: u64,
    stop: Arc<AtomicBool>,
    mismatch: Option<Mismatch>,
    draining: bool,
    /// The port's recovery counters as last seen (retries, reconnects).
    recovery: (u64, u64),
    live: Arc<LiveStats>,
    /// When the job was made: the origin of `deadline_ns` and `due_ns`.
    epoch: Instant,
    /// The same moment on [`mono_ns`]'s clock: the origin of the slots'
    /// `start_ns`. A step reads that clock once and keeps plain integers
    /// per I/O, so neither a submission nor a completion pays for an
    /// `Instant` subtraction.
    epoch_mono: u64,
    /// When to stop issuing (the ramp and the runtime), in ns since `epoch`.
    deadline_ns: Option<u64>,
    /// When (ns since `epoch`) the recorder next has something to do: the
    /// end of the ramp, or of the current interval. Until then a step does
    /// not build an `Instant`.
    due_ns: u64,
}

impl std::fmt::Debug for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRun")
            .field("name", &self.spec.name)
            .finish()
    }
}

impl JobRun {
    /// Prepares a job on a namespace of `ns_blocks` blocks of `block_size`.
    pub fn new(
        spec: JobSpec,
        block_size: u32,
        ns_blocks: u64,
        live: Arc<LiveStats>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        let ns_bytes = ns_blocks * block_size as u64;
        spec.validate(ns_bytes, block_size)
            .map_err(|e| e.to_string())?;
        let workload = Workload::new(&spec, block_size, ns_bytes).map_err(|e| e.to_string())?;
        let verifier = spec.verify.then(|| {
            let (start, blocks) = workload.range();
            Verifier::new(start, blocks, block_size)
        });
        let qd = spec.iodepth.max(1) as usize;
        let now = Instant::now();
        let recorder = Recorder::new(&spec.name, spec.histogram, live.clone(), now, spec.ramp);
        Ok(Self {
            block_size,
            workload,
            verifier,
            recorder: Some(recorder),
            slots: (0..qd)
                .map(|_| Slot {
                    io: IoSpec {
                        op: Op::Read,
                        lba: 0,
                        blocks: 0,
                    },
                    start_ns: 0,
                    seq: 0,
                    busy: false,
                    buf: Some(IoBuf::new(spec.bs as usize)),
                })
                .collect(),
            free: (0..qd as u32).rev().collect(),
            issued: 0,
            stop,
            mismatch: None,
            draining: false,
            recovery: (0, 0),
            live,
            epoch: now,
            epoch_mono: mono_ns(),
            deadline_ns: spec
                .runtime
                .map(|r| (spec.ramp + r).as_nanos().try_into().unwrap_or(u64::MAX)),
            due_ns: 0,
            spec,
        })
    }

    fn done_issuing(&self, now_ns: u64) -> bool {
        self.draining
            || self.stop.load(Ordering::Relaxed)
            || self.mismatch.is_some()
            || self.deadline_ns.is_some_and(|d| now_ns >= d)
            || self.spec.io_count.is_some_and(|n| self.issued >= n)
    }

    /// One pass: reap completions, submit up to the queue depth. Returns
    /// `true` when the job has finished (nothing in flight, nothing more to
    /// issue).
    ///
    /// Generic over the port so that a [`LoopPort`] or [`DirectPort`]
    /// job's submit and completion handling compile into one loop; a
    /// `Box<dyn Port>` is a port too.
    #[inline]
    pub fn step<P: Port>(&mut self, port: &mut P) -> bool {
        let Self {
            slots,
            free,
            workload,
            verifier,
            recorder,
            mismatch,
            block_size,
            ..
        } = self;
        let Some(rec) = recorder.as_mut() else {
            return true;
        };
        // One clock read per step, at the first completion a poll delivers:
        // a port delivers what had arrived when its poll looked (the loop
        // host takes the count published before its first delivery), so
        // every completion is stamped no earlier than it arrived (latencies
        // err high by the batch, never low). The same reading stamps this
        // step's submissions, each no later than it was submitted.
        let epoch = self.epoch_mono;
        let mut now: Option<u64> = None;
        port.poll_each(&mut |tag, ok, buf| {
            let now_ns = *now.get_or_insert_with(|| mono_ns().wrapping_sub(epoch));
            let i = tag as usize;
            let Some(s) = slots.get_mut(i) else {
                return;
            };
            if let DataBuf::One(buf) = buf {
                s.buf = Some(buf);
            }
            if !s.busy {
                return;
            }
            s.busy = false;
            let bytes = s.io.blocks as u64 * *block_size as u64;
            if ok {
                rec.record(s.io.op, now_ns.saturating_sub(s.start_ns), bytes);
            } else {
                rec.error();
            }
            // A transport that handed back no buffer (or another shape):
            // a fresh one keeps the slot usable.
            let b = s.buf.get_or_insert_with(|| IoBuf::new(bytes as usize));
            if let Some(v) = verifier.as_mut() {
                match (s.io.op, ok) {
                    (Op::Write, true) => v.on_write_done(s.io.lba, s.io.blocks, s.seq),
                    (Op::Write, false) => v.on_write_failed(s.io.lba, s.io.blocks),
                    (Op::Read, true) => {
                        if let Err(m) =
                            v.check(&b.as_slice()[..bytes as usize], s.io.lba, s.io.blocks)
                            && mismatch.is_none()
                        {
                            *mismatch = Some(m);
                        }
                    }
                    (Op::Read, false) => {}
                }
            }
            workload.complete(&s.io);
            free.push(i as u32);
        });
        let now_ns = now.unwrap_or_else(|| mono_ns().wrapping_sub(epoch));
        rec.sync_live();
        // The recorder's ramp end and interval closes need an `Instant`:
        // one is built only once either is due. The deadline is a plain ns
        // comparison in `done_issuing`.
        if now_ns >= self.due_ns {
            let now = Instant::now();
            rec.tick(now);
            self.due_ns = rec
                .next_due()
                .saturating_duration_since(self.epoch)
                .as_nanos()
                .try_into()
                .unwrap_or(u64::MAX);
            self.note_recovery(port);
        }
        if !self.done_issuing(now_ns) && port.alive() {
            let limit = self.spec.io_count.unwrap_or(u64::MAX);
            while let Some(i) = self.free.pop() {
                if self.issued >= limit {
                    self.free.push(i);
                    break;
                }
                let io = self.workload.next_io();
                let Some(slot) = self.slots.get_mut(i as usize) else {
                    self.free.push(i);
                    break;
                };
                let Some(mut buf) = slot.buf.take() else {
                    self.free.push(i);
                    break;
                };
                let bytes = io.blocks as usize * self.block_size as usize;
                let mut seq = 0;
                if io.op == Op::Write
                    && let Some(v) = self.verifier.as_mut()
                {
                    seq = v.fill(&mut buf.as_mut_slice()[..bytes], io.lba, io.blocks);
                }
                match port.submit(io.op, io.lba, io.blocks, buf, i as u64) {
                    Ok(()) => {
                        slot.io = io;
                        slot.start_ns = now_ns;
                        slot.seq = seq;
                        slot.busy = true;
                        self.issued += 1;
                    }
                    Err(b) => {
                        slot.buf = Some(b);
                        self.free.push(i);
                        // Give the slot back to the workload (verify mode).
                        self.workload.complete(&io);
                        if !port.alive() {
                            self.draining = true;
                        }
                        break;
                    }
                }
            }
            port.doorbell();
        } else if !port.alive() && self.in_flight() > 0 {
            // The queue died with I/O outstanding; its completions still come.
            self.draining = true;
        }
        let done = self.in_flight() == 0 && (self.done_issuing(now_ns) || !port.alive());
        if done {
            self.note_recovery(port);
        }
        done
    }

    /// I/Os submitted and not completed: the slots not idle.
    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Copies the port's recovery counters (retries, reconnects) to the
    /// live view and the result: when the recorder is due (once a second)
    /// and when the job ends, not on every step.
    fn note_recovery(&mut self, port: &dyn Port) {
        let rc = port.recovery();
        if rc != self.recovery {
            self.recovery = rc;
            self.live.set_recovery(rc.0, rc.1);
        }
    }

    /// Reads back every block whose last write was acknowledged and checks
    /// it: after a run (or a target stop) this proves no acknowledged write
    /// was lost. Uses its own buffer, one read at a time; `Ok(blocks)`
    /// checked, `Err` names the first bad block or a failed read. A job
    /// without verify checks nothing.
    pub fn read_back(&self, port: &mut dyn Port, limit: Duration) -> Result<u64, String> {
        let Some(v) = &self.verifier else {
            return Ok(0);
        };
        let max_blocks = (self.spec.bs / self.block_size).max(1);
        let deadline = Instant::now() + limit;
        let mut buf = Some(IoBuf::new((max_blocks * self.block_size) as usize));
        let mut checked = 0u64;
        for (lba, blocks) in v.acknowledged_runs(max_blocks) {
            let Some(b) = buf.take() else {
                return Err("read-back buffer lost".into());
            };
            if let Err(_b) = port.submit(Op::Read, lba, blocks, b, u64::MAX) {
                return Err(format!("read-back of LBA {lba}: queue refused the read"));
            }
            let mut got: Option<(bool, DataBuf)> = None;
            while got.is_none() {
                port.poll(&mut |_, ok, b| got = Some((ok, b)));
                if got.is_none() && Instant::now() > deadline {
                    return Err(format!(
                        "read-back of LBA {lba}: no completion in {limit:?}"
                    ));
                }
            }
            let Some((ok, data)) = got else { break };
            let DataBuf::One(b) = data else {
                return Err(format!("read-back of LBA {lba}: buffer not returned"));
            };
            if !ok {
                return Err(format!("read-back of LBA {lba}: read failed"));
            }
            let bytes = (blocks * self.block_size) as usize;
            v.check(&b.as_slice()[..bytes], lba, blocks)
                .map_err(|m| m.to_string())?;
            checked += blocks as u64;
            buf = Some(b);
        }
        Ok(checked)
    }

    /// `true` when the job checks its data.
    pub fn verifies(&self) -> bool {
        self.verifier.is_some()
    }

    /// The job's spec.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Closes the recorder.
    pub fn finish(&mut self) -> JobOutcome {
        let now = Instant::now();
        let mut result = match self.recorder.take() {
            Some(r) => r.finish(now),
            None => JobResult::merge(&self.spec.name, &[]),
        };
        (result.retries, result.reconnects) = self.recovery;
        JobOutcome {
            result,
            mismatch: self.mismatch.take(),
        }
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// Runs a job on the calling thread until it finishes.
pub fn run_on_thread<P: Port>(mut job: JobRun, mut port: P) -> JobOutcome {
    let mut idle = 0u32;
    loop {
        if job.step(&mut port) {
            break;
        }
        idle = idle.wrapping_add(1);
        if idle.is_multiple_of(4096) {
            std::hint::spin_loop();
        }
    }
    job.finish()
}

/// A job as a reactor poller: host work shares the reactor's core.
pub struct InlineJob<P: Port = Box<dyn Port>> {
    job: JobRun,
    port: P,
    done: Option<mpsc::Sender<JobOutcome>>,
}

impl<P: Port> std::fmt::Debug for InlineJob<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineJob").field("job", &self.job).finish()
    }
}

impl<P: Port> InlineJob<P> {
    /// Wraps a job; the outcome is sent on `done` when it finishes.
    pub fn new(job: JobRun, port: P, done: mpsc::Sender<JobOutcome>) -> Self {
        Self {
            job,
            port,
            done: Some(done),
        }
    }
}

impl<P: Port> Poller for InlineJob<P> {
    fn poll(&mut self) -> usize {
        let Some(tx) = &self.done else { return 0 };
        if self.job.step(&mut self.port) {
            let _ = tx.send(self.job.finish());
            self.done = None;
        }
        1
    }

    fn stop(&mut self) {
        if let Some(tx) = self.done.take() {
            self.job.note_recovery(&self.port);
            let _ = tx.send(self.job.finish());
        }
    }
}

/// How long to wait for a job's last completions after it stopped issuing.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory disk behind a queue of `depth` slots that completes
    /// on the next poll; refuses commands above `max_blocks` as a target
    /// refuses transfers above MDTS.
    struct FakePort {
        disk: Vec<u8>,
        bs: usize,
        depth: usize,
        max_blocks: u32,
        queued: Vec<(u64, bool, IoBuf)>,
        commands: u64,
    }

    impl Port for FakePort {
        fn submit(
            &mut self,
            op: Op,
            lba: u64,
            blocks: u32,
            mut buf: IoBuf,
            tag: u64,
        ) -> Result<(), IoBuf> {
            if self.queued.len() >= self.depth {
                return Err(buf);
            }
            self.commands += 1;
            let ok = blocks <= self.max_blocks;
            if ok {
                let (off, n) = (lba as usize * self.bs, blocks as usize * self.bs);
                match op {
                    Op::Write => self.disk[off..off + n].copy_from_slice(&buf.as_slice()[..n]),
                    Op::Read => buf.as_mut_slice()[..n].copy_from_slice(&self.disk[off..off + n]),
                }
            }
            self.queued.push((tag, ok, buf));
            Ok(())
        }

        fn poll(&mut self, f: &mut dyn FnMut(u64, bool, DataBuf)) -> usize {
            let n = self.queued.len();
            for (tag, ok, buf) in self.queued.drain(..) {
                f(tag, ok, DataBuf::One(buf));
            }
            n
        }
    }

    fn wait_one(p: &mut SplitPort<FakePort>) -> (u64, bool, IoBuf) {
        for _ in 0..100 {
            let mut got = None;
            p.poll(&mut |t, ok, b| {
                if let DataBuf::One(b) = b {
                    got = Some((t, ok, b));
                }
            });
            if let Some(g) = got {
                return g;
            }
        }
        panic!("no completion");
    }

    #[test]
    fn split_port_splits_above_the_limit_and_recombines_through_a_shallow_queue() {
        let fake = FakePort {
            disk: vec![0; 64 * 512],
            bs: 512,
            depth: 2,
            max_blocks: 4,
            queued: Vec::new(),
            commands: 0,
        };
        let mut p = SplitPort::new(fake, 512, 4 * 512);
        assert_eq!(p.max_blocks(), 4);
        // 18 blocks = 5 commands through a 2-deep queue.
        let mut w = IoBuf::new(18 * 512);
        for (i, x) in w.as_mut_slice().iter_mut().enumerate() {
            *x = (i * 7 + i / 512) as u8;
        }
        let want = w.as_slice().to_vec();
        p.submit(Op::Write, 3, 18, w, 7).unwrap();
        let (tag, ok, _) = wait_one(&mut p);
        assert_eq!((tag, ok), (7, true));
        assert_eq!(p.inner().commands, 5, "18 blocks in commands of 4");
        assert_eq!(&p.inner().disk[3 * 512..21 * 512], &want[..]);
        p.submit(Op::Read, 3, 18, IoBuf::new(18 * 512), u64::MAX)
            .unwrap();
        let (tag, ok, buf) = wait_one(&mut p);
        assert_eq!((tag, ok), (u64::MAX, true));
        assert_eq!(buf.as_slice(), &want[..], "recombined in order");
        // At or below the limit: one command, passed straight through.
        p.submit(Op::Read, 0, 4, IoBuf::new(4 * 512), 1).unwrap();
        assert_eq!(wait_one(&mut p).0, 1);
        assert_eq!(p.inner().commands, 11);
    }
}
