//! `delay`: another device with added latency, fixed or uniformly random,
//! for teardown tests that need I/O to stay in flight a while.
//!
//! I/O goes to the inner device at once; its completion is held until the
//! deadline drawn at submission. The clock is read once per poll.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{BdevCompletion, BdevError, BdevInfo, BdevIo, BdevRef, BlockDevice, IoChannel};

/// Added latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniform in `[min, max]`.
    Uniform {
        /// Shortest.
        min: Duration,
        /// Longest.
        max: Duration,
    },
}

/// Parameters of a delay device.
#[derive(Clone, Debug)]
pub struct DelayParams {
    /// Device name.
    pub name: String,
    /// Added latency.
    pub latency: Latency,
    /// Seed of the latency draws (per channel it is mixed with a counter).
    pub seed: u64,
}

/// A device that answers late.
#[derive(Debug)]
pub struct DelayBdev {
    info: BdevInfo,
    inner: BdevRef,
    latency: Latency,
    seed: u64,
    channels: std::sync::atomic::AtomicU64,
}

const SLOTS: usize = 4096;

impl DelayBdev {
    /// Wraps `inner`.
    pub fn new(p: DelayParams, inner: BdevRef) -> Result<Self, BdevError> {
        if let Latency::Uniform { min, max } = p.latency
            && min > max
        {
            return Err(BdevError::InvalidParameter {
                name: p.name,
                reason: format!("min latency {min:?} is above max {max:?}"),
            });
        }
        let mut info = inner.info().clone();
        info.name = p.name;
        info.kind = "delay";
        Ok(Self {
            info,
            inner,
            latency: p.latency,
            seed: p.seed,
            channels: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

impl BlockDevice for DelayBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let n = self
            .channels
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Box::new(DelayChannel {
            inner: self.inner.open_channel()?,
            latency: self.latency,
            rng: SmallRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            slots: (0..SLOTS).map(|_| None).collect(),
            free: (0..SLOTS as u32).rev().collect(),
            due: BinaryHeap::with_capacity(SLOTS),
            done: Vec::with_capacity(SLOTS),
            in_flight: 0,
            epoch: Instant::now(),
        }))
    }
}

#[derive(Debug)]
struct Slot {
    tag: u64,
    deadline_ns: u64,
    done: Option<BdevCompletion>,
}

#[derive(Debug)]
struct DelayChannel {
    inner: Box<dyn IoChannel>,
    latency: Latency,
    rng: SmallRng,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    due: BinaryHeap<Reverse<(u64, u32)>>,
    done: Vec<BdevCompletion>,
    in_flight: usize,
    epoch: Instant,
}

impl DelayChannel {
    fn draw(&mut self) -> u64 {
        match self.latency {
            Latency::Fixed(d) => d.as_nanos() as u64,
            Latency::Uniform { min, max } => self
                .rng
                .random_range(min.as_nanos() as u64..=max.as_nanos() as u64),
        }
    }

    fn take_inner(&mut self) {
        let Self {
            inner, slots, due, ..
        } = self;
        inner.poll(&mut |mut c| {
            let idx = c.tag as u32;
            if let Some(Some(s)) = slots.get_mut(idx as usize) {
                c.tag = s.tag;
                due.push(Reverse((s.deadline_ns, idx)));
                s.done = Some(c);
            }
        });
    }

    fn deliver(&mut self, idx: u32, out: &mut dyn FnMut(BdevCompletion)) -> bool {
        let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::take) else {
            return false;
        };
        self.free.push(idx);
        self.in_flight -= 1;
        if let Some(c) = slot.done {
            out(c);
            true
        } else {
            false
        }
    }
}

impl IoChannel for DelayChannel {
    fn submit(&mut self, mut io: BdevIo) -> Result<(), BdevIo> {
        let Some(idx) = self.free.pop() else {
            return Err(io);
        };
        let deadline_ns = self.epoch.elapsed().as_nanos() as u64 + self.draw();
        let tag = io.tag;
        io.tag = idx as u64;
        match self.inner.submit(io) {
            Ok(()) => {
                self.slots[idx as usize] = Some(Slot {
                    tag,
                    deadline_ns,
                    done: None,
                });
                self.in_flight += 1;
                Ok(())
            }
            Err(mut io) => {
                io.tag = tag;
                self.free.push(idx);
                Err(io)
            }
        }
    }

    fn poll(&mut self, out: &mut dyn FnMut(BdevCompletion)) -> usize {
        self.take_inner();
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut n = 0;
        while let Some(&Reverse((deadline, idx))) = self.due.peek() {
            if deadline > now {
                break;
            }
            self.due.pop();
            if self.deliver(idx, out) {
                n += 1;
            }
        }
        for c in self.done.drain(..) {
            out(c);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Gives back at once every I/O the inner device has finished (the
    /// added latency is ours to waive); the inner device is reset too.
    fn reset(&mut self) -> usize {
        let still = self.inner.reset();
        self.take_inner();
        let mut ready = Vec::new();
        while let Some(Reverse((_, idx))) = self.due.pop() {
            ready.push(idx);
        }
        let mut out = Vec::new();
        for idx in ready {
            self.deliver(idx, &mut |c| out.push(c));
        }
        self.done.extend(out);
        still
    }
}
