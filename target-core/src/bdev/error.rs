//! `error`: another device with injected failures, for tests of error paths
//! and teardown.
//!
//! Rules match I/O by operation and LBA range and fire every Nth match or
//! with a probability, a limited number of times or forever. A rule either
//! fails the I/O with an NVMe status, corrupts the data of a read, or
//! *holds* the I/O: it is kept, never completed, until
//! [`ErrorBdev::release_held`] (then it proceeds normally) or a channel
//! reset (then it completes as aborted). A *stuck* I/O is held through
//! resets too: only [`ErrorBdev::release_held`] lets it go, which is how the
//! engine's stage 3 (a backend that keeps commands after its reset) is
//! tested. A held or stuck I/O keeps its buffer, as a device doing DMA
//! would.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{
    BdevCompletion, BdevError, BdevInfo, BdevIo, BdevRef, BlockDevice, IoChannel, IoError, IoOp,
};
use crate::spec::Status;

/// Which operations a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpMatch {
    /// Any operation.
    Any,
    /// Just this one.
    Op(IoOp),
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// Complete with this NVMe status.
    Fail(Status),
    /// Read the data, then flip bytes in it (to test verifiers).
    Corrupt,
    /// Keep the I/O until released or reset.
    Hold,
    /// Keep the I/O until released; a reset does not give it back (it
    /// counts in what [`IoChannel::reset`] reports as still held).
    Stuck,
}

/// When a matching rule fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trigger {
    /// Every Nth matching I/O (1 = every one).
    EveryNth(u64),
    /// With this probability (0..=1).
    Probability(f64),
}

/// One injection rule.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorRule {
    /// Operations matched.
    pub op: OpMatch,
    /// LBA range `[start, end)` the I/O must overlap; `None`: any.
    pub lba_range: Option<(u64, u64)>,
    /// When it fires.
    pub trigger: Trigger,
    /// Fires at most this many times.
    pub count: Option<u64>,
    /// What it does.
    pub action: ErrorAction,
}

/// Parameters of an error device.
#[derive(Clone, Debug)]
pub struct ErrorParams {
    /// Device name.
    pub name: String,
    /// Rules, checked in order; the first that fires wins.
    pub rules: Vec<ErrorRule>,
    /// Seed for probability rules.
    pub seed: u64,
}

#[derive(Debug)]
struct RuleState {
    rule: ErrorRule,
    matches: AtomicU64,
    fired: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    rules: Mutex<Arc<Vec<RuleState>>>,
    generation: AtomicU64,
    release: AtomicU64,
    held: AtomicUsize,
    injected: AtomicU64,
    resets: AtomicU64,
}

/// A device that fails on purpose.
#[derive(Debug)]
pub struct ErrorBdev {
    info: BdevInfo,
    inner: BdevRef,
    shared: Arc<Shared>,
    seed: u64,
    channels: AtomicU64,
}

fn states(rules: Vec<ErrorRule>) -> Arc<Vec<RuleState>> {
    Arc::new(
        rules
            .into_iter()
            .map(|rule| RuleState {
                rule,
                matches: AtomicU64::new(0),
                fired: AtomicU64::new(0),
            })
            .collect(),
    )
}

fn check_rules(name: &str, rules: &[ErrorRule]) -> Result<(), BdevError> {
    for (i, r) in rules.iter().enumerate() {
        let bad = match r.trigger {
            Trigger::EveryNth(0) => Some("every_nth must be at least 1".to_owned()),
            Trigger::Probability(p) if !(0.0..=1.0).contains(&p) => {
                Some(format!("probability {p} is outside 0..=1"))
            }
            _ => None,
        };
        if let Some(reason) = bad {
            return Err(BdevError::InvalidParameter {
                name: name.to_owned(),
                reason: format!("rule {i}: {reason}"),
            });
        }
    }
    Ok(())
}

impl ErrorBdev {
    /// Wraps `inner`.
    pub fn new(p: ErrorParams, inner: BdevRef) -> Result<Self, BdevError> {
        check_rules(&p.name, &p.rules)?;
        let mut info = inner.info().clone();
        info.name = p.name;
        info.kind = "error";
        Ok(Self {
            info,
            inner,
            shared: Arc::new(Shared {
                rules: Mutex::new(states(p.rules)),
                generation: AtomicU64::new(0),
                release: AtomicU64::new(0),
                held: AtomicUsize::new(0),
                injected: AtomicU64::new(0),
                resets: AtomicU64::new(0),
            }),
            seed: p.seed,
            channels: AtomicU64::new(0),
        })
    }

    /// Replaces the rules (channels pick them up on their next submit).
    pub fn set_rules(&self, rules: Vec<ErrorRule>) -> Result<(), BdevError> {
        check_rules(&self.info.name, &rules)?;
        *self.shared.rules.lock().unwrap_or_else(|p| p.into_inner()) = states(rules);
        self.shared.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Lets every held I/O proceed to the inner device.
    pub fn release_held(&self) {
        self.shared.release.fetch_add(1, Ordering::Release);
    }

    /// Channel resets seen, over all channels.
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::Relaxed)
    }

    /// I/Os held (or stuck) right now, over all channels.
    pub fn held_count(&self) -> usize {
        self.shared.held.load(Ordering::Acquire)
    }

    /// Failures, corruptions and holds injected so far.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::Relaxed)
    }
}

impl BlockDevice for ErrorBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let n = self.channels.fetch_add(1, Ordering::Relaxed);
        let rules = self
            .shared
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(Box::new(ErrorChannel {
            inner: self.inner.open_channel()?,
            shared: self.shared.clone(),
            rules,
            generation: self.shared.generation.load(Ordering::Acquire),
            release_seen: self.shared.release.load(Ordering::Acquire),
            rng: SmallRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            held: Vec::new(),
            stuck: Vec::new(),
            done: VecDeque::new(),
            corrupt: Vec::new(),
            in_inner: 0,
        }))
    }
}

#[derive(Debug)]
struct ErrorChannel {
    inner: Box<dyn IoChannel>,
    shared: Arc<Shared>,
    rules: Arc<Vec<RuleState>>,
    generation: u64,
    release_seen: u64,
    rng: SmallRng,
    held: Vec<BdevIo>,
    /// Held through resets ([`ErrorAction::Stuck`]).
    stuck: Vec<BdevIo>,
    done: VecDeque<BdevCompletion>,
    /// Tags of reads to corrupt when they complete.
    corrupt: Vec<u64>,
    in_inner: usize,
}

impl ErrorChannel {
    fn fire(&mut self, io: &BdevIo) -> Option<ErrorAction> {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.rules = self
                .shared
                .rules
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.generation = g;
        }
        for r in self.rules.iter() {
            let rule = &r.rule;
            if let OpMatch::Op(op) = rule.op
                && op != io.op
            {
                continue;
            }
            if let Some((start, end)) = rule.lba_range {
                let io_end = io.lba.saturating_add(io.blocks.max(1) as u64);
                if io_end <= start || io.lba >= end {
                    continue;
                }
            }
            let m = r.matches.fetch_add(1, Ordering::Relaxed) + 1;
            let hit = match rule.trigger {
                Trigger::EveryNth(n) => m % n.max(1) == 0,
                Trigger::Probability(p) => self.rng.random::<f64>() < p,
            };
            if !hit {
                continue;
            }
            if let Some(limit) = rule.count
                && r.fired.fetch_add(1, Ordering::Relaxed) >= limit
            {
                continue;
            }
            self.shared.injected.fetch_add(1, Ordering::Relaxed);
            return Some(rule.action);
        }
        None
    }

    fn forward(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        self.inner.submit(io)?;
        self.in_inner += 1;
        Ok(())
    }
}

impl IoChannel for ErrorChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        match self.fire(&io) {
            None => self.forward(io),
            Some(ErrorAction::Fail(status)) => {
                self.done.push_back(BdevCompletion {
                    tag: io.tag,
                    result: Err(IoError::Nvme(status)),
                    buf: io.buf,
                });
                Ok(())
            }
            Some(ErrorAction::Corrupt) => {
                let tag = io.tag;
                let is_read = io.op == IoOp::Read;
                self.forward(io)?;
                if is_read {
                    self.corrupt.push(tag);
                }
                Ok(())
            }
            Some(ErrorAction::Hold) => {
                self.held.push(io);
                self.shared.held.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Some(ErrorAction::Stuck) => {
                self.stuck.push(io);
                self.shared.held.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
        }
    }

    fn poll(&mut self, out: &mut dyn FnMut(BdevCompletion)) -> usize {
        let rel = self.shared.release.load(Ordering::Acquire);
        if rel != self.release_seen {
            self.release_seen = rel;
            let mut held = std::mem::take(&mut self.held);
            held.append(&mut self.stuck);
            for io in held {
                self.shared.held.fetch_sub(1, Ordering::AcqRel);
                if let Err(io) = self.forward(io) {
                    self.done.push_back(BdevCompletion {
                        tag: io.tag,
                        result: Err(IoError::Aborted),
                        buf: io.buf,
                    });
                }
            }
        }
        let mut n = 0;
        while let Some(c) = self.done.pop_front() {
            out(c);
            n += 1;
        }
        let Self {
            inner,
            corrupt,
            in_inner,
            ..
        } = self;
        n += inner.poll(&mut |mut c| {
            *in_inner -= 1;
            if let Some(i) = corrupt.iter().position(|&t| t == c.tag) {
                corrupt.swap_remove(i);
                if let Some(seg) = c.buf.segments_mut().first_mut() {
                    let mid = seg.len() / 2;
                    if let Some(b) = seg.as_mut_slice().get_mut(mid) {
                        *b ^= 0x5a;
                    }
                }
            }
            out(c);
        });
        n
    }

    fn in_flight(&self) -> usize {
        self.held.len() + self.stuck.len() + self.done.len() + self.in_inner
    }

    fn reset(&mut self) -> usize {
        self.shared.resets.fetch_add(1, Ordering::Relaxed);
        for io in self.held.drain(..) {
            self.shared.held.fetch_sub(1, Ordering::AcqRel);
            self.done.push_back(BdevCompletion {
                tag: io.tag,
                result: Err(IoError::Aborted),
                buf: io.buf,
            });
        }
        self.stuck.len() + self.inner.reset()
    }
}
