//! Per-job latency and throughput recording, and the merged results.
//!
//! A [`Recorder`] is owned by its job's thread and takes no locks: each
//! completed I/O is one counter update and one increment in a
//! [`FastHistogram`] of the current one-second interval (a flat array with
//! HdrHistogram's bucket layout, ~15 instructions). When an
//! interval closes ([`Recorder::tick`]) its buckets are folded into the job
//! totals (`hdrhistogram` histograms, bit-identical to recording each value
//! directly) and a compact V2-encoded copy is kept for the `.hlog` interval
//! log and the IOPS-over-time plot (about a few hundred bytes per second
//! instead of a ~200 KiB histogram). Results of several jobs are merged once
//! at the end ([`JobResult::merge`]).
//!
//! The progress line runs on another thread; it reads a [`LiveStats`] (a
//! few atomics) that the recorder publishes every [`LIVE_PUBLISH_EVERY`]
//! I/Os and at each interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use crate::workload::Op;
pub use target_core::hist::{FastHistogram, MAX_LATENCY_NS, SIGFIG, merge_into, new_histogram};

/// Length of one interval of the time series.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Completed I/Os between two updates of the [`LiveStats`].
pub const LIVE_PUBLISH_EVERY: u32 = 1024;

fn encode(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    if V2Serializer::new().serialize(h, &mut out).is_err() {
        out.clear();
    }
    out
}

/// Counters the recorder publishes for a progress display on another
/// thread. Monotonic totals including ramp time; readers take deltas.
#[derive(Debug, Default)]
pub struct LiveStats {
    ios: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    p99_ns: AtomicU64,
    measuring: AtomicBool,
    done: AtomicBool,
    retries: AtomicU64,
    reconnects: AtomicU64,
}

/// A consistent-enough copy of a [`LiveStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveSnapshot {
    /// Completed I/Os so far (ramp included).
    pub ios: u64,
    /// Bytes transferred so far (ramp included).
    pub bytes: u64,
    /// Failed I/Os so far.
    pub errors: u64,
    /// p99 latency of the last closed interval, ns (0 = none yet).
    pub p99_ns: u64,
    /// Ramp time is over.
    pub measuring: bool,
    /// The job finished.
    pub done: bool,
    /// Commands the host resubmitted after a retryable failure.
    pub retries: u64,
    /// Times the host reconnected the job's queue.
    pub reconnects: u64,
}

impl LiveStats {
    /// A fresh, shareable set of counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            ios: self.ios.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            p99_ns: self.p99_ns.load(Ordering::Relaxed),
            measuring: self.measuring.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Publishes the host's recovery counters (retries, reconnects).
    pub fn set_recovery(&self, retries: u64, reconnects: u64) {
        self.retries.store(retries, Ordering::Relaxed);
        self.reconnects.store(reconnects, Ordering::Relaxed);
    }
}

/// I/O and byte counts of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounters {
    /// Completed I/Os.
    pub ios: u64,
    /// Bytes transferred.
    pub bytes: u64,
}

impl OpCounters {
    fn add(&mut self, o: OpCounters) {
        self.ios += o.ios;
        self.bytes += o.bytes;
    }
}

/// One closed interval of the time series.
#[derive(Clone, Debug, PartialEq)]
pub struct IntervalSnapshot {
    /// Start, relative to the end of ramp time.
    pub start: Duration,
    /// Length (about one second; the last one may be shorter).
    pub duration: Duration,
    /// Reads completed in the interval.
    pub read: OpCounters,
    /// Writes completed in the interval.
    pub write: OpCounters,
    /// Failed I/Os in the interval.
    pub errors: u64,
    /// p99 latency of reads and writes together, ns (0 without histogram).
    pub p99_ns: u64,
    /// Latencies of reads and writes together, V2-encoded (HdrHistogram
    /// V2, no compression); empty when histograms are disabled.
    pub encoded: Vec<u8>,
}

impl IntervalSnapshot {
    /// I/Os completed in the interval.
    pub fn ios(&self) -> u64 {
        self.read.ios + self.write.ios
    }

    /// I/Os per second over the interval.
    pub fn iops(&self) -> f64 {
        per_sec(self.ios(), self.duration)
    }

    /// Bytes per second over the interval.
    pub fn bytes_per_sec(&self) -> f64 {
        per_sec(self.read.bytes + self.write.bytes, self.duration)
    }

    /// Decodes the interval's histogram.
    pub fn histogram(&self) -> Option<Histogram<u64>> {
        if self.encoded.is_empty() {
            return None;
        }
        Deserializer::new().deserialize(&mut &self.encoded[..]).ok()
    }
}

/// What [`Recorder::tick`] reports when it closes an interval: enough for
/// a progress line, no allocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntervalSummary {
    /// Index of the interval (0 = first second after ramp).
    pub index: usize,
    /// Measured time at the end of the interval.
    pub elapsed: Duration,
    /// I/Os per second in the interval.
    pub iops: f64,
    /// Bytes per second in the interval.
    pub bytes_per_sec: f64,
    /// p99 latency in the interval, ns (0 without histogram).
    pub p99_ns: u64,
    /// Failed I/Os in the interval.
    pub errors: u64,
}

fn per_sec(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

/// Records one job's completions; see the module docs.
#[derive(Debug)]
pub struct Recorder {
    name: String,
    live: Arc<LiveStats>,
    created: Instant,
    ramp: Duration,
    measure_start: Option<Instant>,
    totals: [OpCounters; 2],
    errors: u64,
    /// Job totals per direction (`None` = histograms disabled).
    hist: Option<[Histogram<u64>; 2]>,
    /// Current interval, per direction; folded into `hist` and `scratch`
    /// when the interval closes.
    iv_hist: Option<[FastHistogram; 2]>,
    /// Reused to combine the two directions when an interval closes.
    scratch: Option<Histogram<u64>>,
    iv_start: Instant,
    /// `iv_start + INTERVAL`: `tick` runs every step, and comparing two
    /// instants is cheaper than a `duration_since` subtraction.
    iv_end: Instant,
    iv: [OpCounters; 2],
    iv_errors: u64,
    intervals: Vec<IntervalSnapshot>,
    /// The part of `iv` already added to `live`. The live view is fed
    /// from the interval counters by difference, so recording an I/O
    /// updates one pair of counters, not two.
    published: OpCounters,
    pending_errors: u64,
}

fn idx(op: Op) -> usize {
    match op {
        Op::Read => 0,
        Op::Write => 1,
    }
}

impl Recorder {
    /// A recorder for job `name`, created at `now`. I/Os completing in the
    /// first `ramp` are not recorded; measuring starts at the first
    /// [`Recorder::tick`] after the ramp (or at [`Recorder::start_measuring`]).
    /// With `histogram == false` only counters are kept.
    pub fn new(
        name: &str,
        histogram: bool,
        live: Arc<LiveStats>,
        now: Instant,
        ramp: Duration,
    ) -> Self {
        let pair = || [new_histogram(), new_histogram()];
        let mut r = Self {
            name: name.to_owned(),
            live,
            created: now,
            ramp,
            measure_start: None,
            totals: Default::default(),
            errors: 0,
            hist: histogram.then(pair),
            iv_hist: histogram.then(|| [FastHistogram::new(), FastHistogram::new()]),
            scratch: histogram.then(new_histogram),
            iv_start: now,
            iv_end: now + INTERVAL,
            iv: Default::default(),
            iv_errors: 0,
            intervals: Vec::with_capacity(64),
            published: OpCounters::default(),
            pending_errors: 0,
        };
        if ramp.is_zero() {
            r.start_measuring(now);
        }
        r
    }

    /// Records a completed I/O: direction, latency in ns, bytes moved.
    /// Failed I/Os go to [`Recorder::error`] instead.
    #[inline]
    /// During the ramp the interval counts too; measuring starts from zero
    /// ([`Recorder::start_measuring`] discards what the ramp counted after
    /// publishing it), so the per-I/O path tests nothing. The live view
    /// catches up at [`Recorder::sync_live`].
    pub fn record(&mut self, op: Op, lat_ns: u64, bytes: u64) {
        let c = &mut self.iv[idx(op)];
        c.ios += 1;
        c.bytes += bytes;
        if let Some(h) = &mut self.iv_hist {
            h[idx(op)].record(lat_ns);
        }
    }

    /// Publishes to the live view once [`LIVE_PUBLISH_EVERY`] I/Os have
    /// been recorded since it last did. Once per batch of completions (the
    /// job runner calls it after each poll), so the check is not paid per
    /// I/O; [`Recorder::tick`] calls it too.
    #[inline]
    pub fn sync_live(&mut self) {
        let ios = self.iv[0].ios + self.iv[1].ios;
        if ios - self.published.ios >= u64::from(LIVE_PUBLISH_EVERY) {
            self.publish();
        }
    }

    /// Counts a failed I/O.
    #[inline]
    pub fn error(&mut self) {
        self.pending_errors += 1;
        if self.measure_start.is_some() {
            self.iv_errors += 1;
        }
    }

    /// Ends ramp time now (if not yet ended): what completes from here on
    /// is measured.
    pub fn start_measuring(&mut self, now: Instant) {
        if self.measure_start.is_none() {
            // What the ramp counted reaches the live view, not the results.
            self.publish();
            self.iv = Default::default();
            self.published = OpCounters::default();
            if let Some(iv) = &mut self.iv_hist {
                for h in iv.iter_mut() {
                    h.drain(|_, _| {});
                }
            }
            self.measure_start = Some(now);
            self.iv_start = now;
            self.iv_end = now + INTERVAL;
            self.live.measuring.store(true, Ordering::Relaxed);
        }
    }

    /// Call often (each poll loop or each batch of completions): ends the
    /// ramp when due, and closes the current interval once it is a second
    /// old. Cheap when nothing is due.
    #[inline]
    pub fn tick(&mut self, now: Instant) -> Option<IntervalSummary> {
        self.sync_live();
        match self.measure_start {
            None => {
                if now.saturating_duration_since(self.created) >= self.ramp {
                    self.start_measuring(now);
                    self.publish();
                }
                None
            }
            Some(_) if now >= self.iv_end => Some(self.close_interval(now)),
            Some(_) => None,
        }
    }

    /// When [`Recorder::tick`] next has something to do: the end of the
    /// ramp, or of the current interval. A caller may skip `tick` until
    /// then (the job runner does, and reads no `Instant` meanwhile).
    pub fn next_due(&self) -> Instant {
        match self.measure_start {
            None => self.created + self.ramp,
            Some(_) => self.iv_end,
        }
    }

    /// `true` once ramp time is over.
    pub fn measuring(&self) -> bool {
        self.measure_start.is_some()
    }

    /// I/Os measured so far (after ramp), for `io_count` limits.
    pub fn measured_ios(&self) -> u64 {
        if self.measure_start.is_none() {
            return 0;
        }
        self.totals[0].ios + self.totals[1].ios + self.iv[0].ios + self.iv[1].ios
    }

    /// Time measured so far at `now` (zero during ramp), for runtime limits.
    pub fn measured_time(&self, now: Instant) -> Duration {
        self.measure_start
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Ends the job at `now`: closes the last (partial) interval and
    /// returns the results.
    pub fn finish(mut self, now: Instant) -> JobResult {
        let elapsed = self.measured_time(now);
        if self.measure_start.is_some()
            && (self.iv.iter().any(|c| c.ios > 0)
                || self.iv_errors > 0
                || self.intervals.is_empty())
            && now > self.iv_start
        {
            self.close_interval(now);
        }
        self.publish();
        self.live.done.store(true, Ordering::Relaxed);
        let [rh, wh] = match self.hist {
            Some([r, w]) => [Some(r), Some(w)],
            None => [None, None],
        };
        let histogram = match (&rh, &wh) {
            (Some(r), Some(w)) => {
                let mut t = r.clone();
                merge_into(&mut t, w);
                Some(t)
            }
            _ => None,
        };
        JobResult {
            name: self.name,
            read: OpResult {
                counters: self.totals[0],
                histogram: rh,
            },
            write: OpResult {
                counters: self.totals[1],
                histogram: wh,
            },
            errors: self.errors,
            retries: 0,
            reconnects: 0,
            elapsed,
            histogram,
            intervals: self.intervals,
        }
    }

    fn close_interval(&mut self, now: Instant) -> IntervalSummary {
        let start = self.measured_time(self.iv_start);
        let duration = now.saturating_duration_since(self.iv_start);
        let mut p99_ns = 0;
        let mut encoded = Vec::new();
        if let (Some(iv), Some(tot), Some(scratch)) =
            (&mut self.iv_hist, &mut self.hist, &mut self.scratch)
        {
            scratch.reset();
            for (fast, tot) in iv.iter_mut().zip(tot.iter_mut()) {
                fast.drain(|v, n| {
                    scratch.saturating_record_n(v, n);
                    tot.saturating_record_n(v, n);
                });
            }
            if !scratch.is_empty() {
                p99_ns = scratch.value_at_quantile(0.99);
            }
            encoded = encode(scratch);
        }
        for d in 0..2 {
            self.totals[d].add(self.iv[d]);
        }
        self.errors += self.iv_errors;
        let snap = IntervalSnapshot {
            start,
            duration,
            read: self.iv[0],
            write: self.iv[1],
            errors: self.iv_errors,
            p99_ns,
            encoded,
        };
        let summary = IntervalSummary {
            index: self.intervals.len(),
            elapsed: start + duration,
            iops: snap.iops(),
            bytes_per_sec: snap.bytes_per_sec(),
            p99_ns,
            errors: self.iv_errors,
        };
        self.intervals.push(snap);
        self.publish();
        self.iv = Default::default();
        self.published = OpCounters::default();
        self.iv_errors = 0;
        self.iv_start = now;
        self.iv_end = now + INTERVAL;
        self.live.p99_ns.store(p99_ns, Ordering::Relaxed);
        summary
    }

    fn publish(&mut self) {
        let now = OpCounters {
            ios: self.iv[0].ios + self.iv[1].ios,
            bytes: self.iv[0].bytes + self.iv[1].bytes,
        };
        self.live
            .ios
            .fetch_add(now.ios - self.published.ios, Ordering::Relaxed);
        self.live
            .bytes
            .fetch_add(now.bytes - self.published.bytes, Ordering::Relaxed);
        self.live
            .errors
            .fetch_add(self.pending_errors, Ordering::Relaxed);
        self.published = now;
        self.pending_errors = 0;
    }
}

/// Results of one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct OpResult {
    /// I/O and byte totals.
    pub counters: OpCounters,
    /// Latencies in ns (`None` when histograms were disabled).
    pub histogram: Option<Histogram<u64>>,
}

/// Everything one job (or a merge of jobs) measured after ramp time.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    /// Job name.
    pub name: String,
    /// Reads.
    pub read: OpResult,
    /// Writes.
    pub write: OpResult,
    /// Failed I/Os.
    pub errors: u64,
    /// Commands the host resubmitted after a retryable failure (error
    /// recovery; counted over the whole run, ramp included).
    pub retries: u64,
    /// Times the host reconnected after losing the controller.
    pub reconnects: u64,
    /// Measured wall time (the longest job's, for a merge).
    pub elapsed: Duration,
    /// Latencies of reads and writes together, ns.
    pub histogram: Option<Histogram<u64>>,
    /// Per-second time series.
    pub intervals: Vec<IntervalSnapshot>,
}

impl JobResult {
    /// Completed I/Os.
    pub fn ios(&self) -> u64 {
        self.read.counters.ios + self.write.counters.ios
    }

    /// Bytes transferred.
    pub fn bytes(&self) -> u64 {
        self.read.counters.bytes + self.write.counters.bytes
    }

    /// I/Os per second over the measured time.
    pub fn iops(&self) -> f64 {
        per_sec(self.ios(), self.elapsed)
    }

    /// Bytes per second over the measured time.
    pub fn bytes_per_sec(&self) -> f64 {
        per_sec(self.bytes(), self.elapsed)
    }

    /// Combines jobs that ran at the same time into one result named
    /// `name`: counts and histograms add up, elapsed is the longest, and
    /// intervals are added index by index (jobs start together).
    pub fn merge(name: &str, results: &[JobResult]) -> JobResult {
        let merge_hist = |get: &dyn Fn(&JobResult) -> Option<&Histogram<u64>>| {
            let mut out: Option<Histogram<u64>> = None;
            for h in results.iter().filter_map(get) {
                match &mut out {
                    Some(o) => merge_into(o, h),
                    None => out = Some(h.clone()),
                }
            }
            out
        };
        let mut read = OpCounters::default();
        let mut write = OpCounters::default();
        for r in results {
            read.add(r.read.counters);
            write.add(r.write.counters);
        }
        let n_iv = results.iter().map(|r| r.intervals.len()).max().unwrap_or(0);
        let intervals = (0..n_iv)
            .map(|i| {
                let parts: Vec<&IntervalSnapshot> =
                    results.iter().filter_map(|r| r.intervals.get(i)).collect();
                let mut iv = IntervalSnapshot {
                    start: parts.iter().map(|p| p.start).min().unwrap_or_default(),
                    duration: parts.iter().map(|p| p.duration).max().unwrap_or_default(),
                    read: OpCounters::default(),
                    write: OpCounters::default(),
                    errors: 0,
                    p99_ns: 0,
                    encoded: Vec::new(),
                };
                let mut h: Option<Histogram<u64>> = None;
                for p in &parts {
                    iv.read.add(p.read);
                    iv.write.add(p.write);
                    iv.errors += p.errors;
                    if let Some(ph) = p.histogram() {
                        match &mut h {
                            Some(h) => merge_into(h, &ph),
                            None => h = Some(ph),
                        }
                    }
                }
                if let Some(h) = h {
                    if !h.is_empty() {
                        iv.p99_ns = h.value_at_quantile(0.99);
                    }
                    iv.encoded = encode(&h);
                }
                iv
            })
            .collect();
        JobResult {
            name: name.to_owned(),
            read: OpResult {
                counters: read,
                histogram: merge_hist(&|r| r.read.histogram.as_ref()),
            },
            write: OpResult {
                counters: write,
                histogram: merge_hist(&|r| r.write.histogram.as_ref()),
            },
            errors: results.iter().map(|r| r.errors).sum(),
            retries: results.iter().map(|r| r.retries).sum(),
            reconnects: results.iter().map(|r| r.reconnects).sum(),
            elapsed: results.iter().map(|r| r.elapsed).max().unwrap_or_default(),
            histogram: merge_hist(&|r| r.histogram.as_ref()),
            intervals,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use target_core::hist::SATURATE_FROM;

    /// Records `n` I/Os per simulated second for `secs` seconds.
    pub(crate) fn simulated(name: &str, secs: u64, n: u64, ramp: Duration) -> JobResult {
        let t0 = Instant::now();
        let mut r = Recorder::new(name, true, LiveStats::new(), t0, ramp);
        let ms = |m: u64| t0 + ramp + Duration::from_millis(m);
        r.tick(ms(0));
        for s in 0..secs {
            for i in 0..n {
                let op = if i % 4 == 0 { Op::Write } else { Op::Read };
                r.record(op, 1000 + i * 10, 4096);
            }
            r.error();
            r.tick(ms(s * 1000 + 1000));
        }
        r.finish(ms(secs * 1000 + 1000))
    }

    #[test]
    fn counts_intervals_and_ramp() {
        let t0 = Instant::now();
        let live = LiveStats::new();
        let mut r = Recorder::new("j", true, live.clone(), t0, Duration::from_secs(2));
        r.record(Op::Read, 5, 512); // ramp: not measured
        assert!(r.tick(t0 + Duration::from_secs(1)).is_none());
        assert!(!r.measuring());
        r.tick(t0 + Duration::from_secs(2));
        assert!(r.measuring());
        for _ in 0..100 {
            r.record(Op::Read, 2000, 4096);
        }
        r.record(Op::Write, 50_000, 8192);
        r.error();
        let s = r.tick(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(s.index, 0);
        assert!((s.iops - 101.0).abs() < 1e-6);
        assert!(s.p99_ns >= 1999 && s.p99_ns <= 2002, "{}", s.p99_ns);
        r.record(Op::Read, 1000, 4096);
        let res = r.finish(t0 + Duration::from_millis(3500));
        assert_eq!(
            res.read.counters,
            OpCounters {
                ios: 101,
                bytes: 101 * 4096
            }
        );
        assert_eq!(res.write.counters.ios, 1);
        assert_eq!(res.errors, 1);
        assert_eq!(res.elapsed, Duration::from_millis(1500));
        assert_eq!(res.intervals.len(), 2);
        assert_eq!(res.histogram.as_ref().unwrap().len(), 102);
        assert_eq!(res.intervals[1].histogram().unwrap().len(), 1);
        let l = live.snapshot();
        assert_eq!((l.ios, l.errors, l.done), (103, 1, true));
    }

    #[test]
    fn live_view_catches_up_by_batches() {
        let t0 = Instant::now();
        let live = LiveStats::new();
        let mut r = Recorder::new("j", true, live.clone(), t0, Duration::from_secs(5));
        let n = u64::from(LIVE_PUBLISH_EVERY);
        for _ in 0..n - 1 {
            r.record(Op::Read, 100, 512);
        }
        r.sync_live();
        assert_eq!(live.snapshot().ios, 0, "published before a batch was full");
        r.record(Op::Write, 100, 512);
        r.sync_live();
        assert_eq!((live.snapshot().ios, live.snapshot().bytes), (n, n * 512));
        // Measuring starts: the ramp's I/Os stay in the live view only.
        r.start_measuring(t0 + Duration::from_secs(1));
        r.record(Op::Read, 100, 512);
        r.sync_live();
        assert_eq!(live.snapshot().ios, n);
        assert_eq!(r.measured_ios(), 1);
        let res = r.finish(t0 + Duration::from_secs(2));
        assert_eq!(res.ios(), 1);
        assert_eq!(res.histogram.as_ref().map(|h| h.len()), Some(1));
        assert_eq!(live.snapshot().ios, n + 1);
    }

    #[test]
    fn no_histogram_keeps_counters() {
        let t0 = Instant::now();
        let mut r = Recorder::new("j", false, LiveStats::new(), t0, Duration::ZERO);
        r.record(Op::Write, 10, 4096);
        let s = r.tick(t0 + INTERVAL).unwrap();
        assert_eq!(s.p99_ns, 0);
        let res = r.finish(t0 + INTERVAL);
        assert_eq!(res.ios(), 1);
        assert!(res.histogram.is_none());
        assert!(res.intervals[0].histogram().is_none());
    }

    #[test]
    fn huge_latency_saturates() {
        let t0 = Instant::now();
        let mut r = Recorder::new("j", true, LiveStats::new(), t0, Duration::ZERO);
        r.record(Op::Read, u64::MAX, 1);
        let res = r.finish(t0 + INTERVAL);
        assert!(res.histogram.unwrap().max() >= MAX_LATENCY_NS / 2);
    }

    /// Latencies for the equivalence tests: every magnitude from 0 to
    /// u64::MAX (log-uniform), dense small values, and the edges of bucket
    /// 0, of the range and of saturation.
    fn test_latencies(n: usize, seed: u64) -> Vec<u64> {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut v = vec![
            0,
            1,
            2,
            2047,
            2048,
            2049,
            4095,
            4096,
            MAX_LATENCY_NS - 1,
            MAX_LATENCY_NS,
            MAX_LATENCY_NS + 1,
            SATURATE_FROM - 1,
            SATURATE_FROM,
            SATURATE_FROM + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        while v.len() < n {
            let x = match rng.random_range(0..4u32) {
                0 => rng.random_range(0..5_000u64),
                1 => rng.random_range(5_000..2_000_000u64),
                _ => rng.random::<u64>() >> rng.random_range(0..64u32),
            };
            v.push(x);
        }
        v
    }

    fn assert_same(fast: &Histogram<u64>, direct: &Histogram<u64>) {
        // PartialEq: total count, max(), min_nz() and the count at every index.
        assert_eq!(fast, direct);
        assert_eq!(fast.len(), direct.len());
        assert_eq!(fast.distinct_values(), direct.distinct_values());
        assert_eq!((fast.min(), fast.max()), (direct.min(), direct.max()));
        assert_eq!(fast.min_nz(), direct.min_nz());
        assert_eq!(fast.mean().to_bits(), direct.mean().to_bits());
        assert_eq!(fast.stdev().to_bits(), direct.stdev().to_bits());
        for q in [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(
                fast.value_at_quantile(q),
                direct.value_at_quantile(q),
                "q {q}"
            );
        }
        let a: Vec<_> = fast
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        let b: Vec<_> = direct
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        assert_eq!(a, b);
        assert_eq!(encode(fast), encode(direct));
    }

    #[test]
    fn fast_histogram_equals_saturating_record() {
        let lats = test_latencies(300_000, 7);
        let mut direct = new_histogram();
        let mut fast = FastHistogram::new();
        for &v in &lats {
            direct.saturating_record(v);
            fast.record(v);
        }
        assert_eq!(fast.len(), lats.len() as u64);
        let mut folded = new_histogram();
        fast.drain_into(&mut folded);
        assert!(fast.is_empty());
        assert_same(&folded, &direct);
        assert_eq!(
            direct.max(),
            new_histogram().highest_equivalent(SATURATE_FROM - 1)
        );
        // Drained means empty: nothing is folded twice.
        let mut again = new_histogram();
        fast.drain_into(&mut again);
        assert!(again.is_empty());

        // Folding interval by interval into a running total, after the
        // counts array was reused, is the same as recording it all directly.
        let mut total = new_histogram();
        let mut direct_total = new_histogram();
        for (k, part) in test_latencies(200_000, 11).chunks(30_000).enumerate() {
            let mut direct_iv = new_histogram();
            for &v in part {
                fast.record(v);
                direct_iv.saturating_record(v);
                direct_total.saturating_record(v);
            }
            let mut iv = new_histogram();
            fast.drain(|v, n| {
                iv.saturating_record_n(v, n);
                total.saturating_record_n(v, n);
            });
            assert_same(&iv, &direct_iv);
            assert_same(&total, &direct_total);
            assert!(fast.is_empty(), "interval {k}");
        }

        // Only small values (early stop of the drain) and only zeros.
        for vals in [
            vec![0u64; 1000],
            (0..5000u64).map(|i| 1000 + i % 37).collect(),
        ] {
            let mut d = new_histogram();
            let mut f = new_histogram();
            for &v in &vals {
                d.saturating_record(v);
                fast.record(v);
            }
            fast.drain_into(&mut f);
            assert_same(&f, &d);
        }
    }

    #[test]
    fn recorder_histograms_equal_direct_recording() {
        let t0 = Instant::now();
        let lats = test_latencies(200_000, 3);
        let mut r = Recorder::new("j", true, LiveStats::new(), t0, Duration::ZERO);
        let mut direct = [new_histogram(), new_histogram()];
        let mut direct_iv = Vec::new();
        for (s, part) in lats.chunks(70_000).enumerate() {
            let mut iv = new_histogram();
            for (i, &v) in part.iter().enumerate() {
                let op = if i % 3 == 0 { Op::Write } else { Op::Read };
                r.record(op, v, 4096);
                direct[idx(op)].saturating_record(v);
                iv.saturating_record(v);
            }
            direct_iv.push(iv);
            r.tick(t0 + INTERVAL * (s as u32 + 1));
        }
        let res = r.finish(t0 + INTERVAL * 3);
        assert_eq!(res.intervals.len(), direct_iv.len());
        for (iv, d) in res.intervals.iter().zip(&direct_iv) {
            assert_eq!(iv.encoded, encode(d));
            assert_eq!(iv.p99_ns, d.value_at_quantile(0.99));
            assert_same(&iv.histogram().unwrap(), d);
        }
        assert_same(res.read.histogram.as_ref().unwrap(), &direct[0]);
        assert_same(res.write.histogram.as_ref().unwrap(), &direct[1]);
        let mut all = direct[0].clone();
        all.add(&direct[1]).unwrap();
        assert_same(res.histogram.as_ref().unwrap(), &all);
    }

    #[test]
    fn merge_adds_up() {
        let a = simulated("a", 3, 1000, Duration::ZERO);
        let b = simulated("b", 2, 500, Duration::from_secs(1));
        let t = JobResult::merge("total", &[a.clone(), b.clone()]);
        assert_eq!(t.ios(), a.ios() + b.ios());
        assert_eq!(t.errors, 5);
        assert_eq!(t.histogram.as_ref().unwrap().len(), t.ios());
        assert_eq!(
            t.read.histogram.as_ref().unwrap().len(),
            t.read.counters.ios
        );
        assert_eq!(t.intervals.len(), 3);
        assert_eq!(t.intervals[0].ios(), 1500);
        assert_eq!(t.intervals[0].histogram().unwrap().len(), 1500);
        assert_eq!(t.elapsed, a.elapsed.max(b.elapsed));
    }
}
