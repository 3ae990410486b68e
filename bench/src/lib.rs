//! `nvmf-bench`: a bdevperf/fio-like benchmark for the NVMe-oF target.
//!
//! # Architecture
//!
//! The binary (`main.rs` + the `jobengine` crate's `runner`) drives jobs
//! against a target over the loop transport, inline on a reactor, or
//! directly on a backend. The job engine (cli, job, workload, verify,
//! stats, runner, signal) is the `jobengine` crate, shared with nvmf-tgt's
//! host jobs and re-exported here; this crate adds the output side:
//!
//! * [`cli`]: command line and TOML job files, merged into [`job::JobSpec`]s.
//! * [`job`]: one job's parameters and their validation against a namespace.
//! * [`workload`]: the I/O sequence of a job (sequential, random, mixed,
//!   verify), deterministic for a seed, no allocation per I/O.
//! * [`verify`]: self-describing block contents and the checker.
//! * [`stats`]: per-job lock-free recording (HdrHistogram), per-second
//!   intervals, merged results; [`stats::LiveStats`] for the progress line.
//! * [`progress`]: the one-line live status.
//! * [`report`]: summary table, `.hlog`, `.hgrm`, `summary.json`, SVG plots.
//!
//! # How a runner drives one job instance
//!
//! ```text
//! let jobs = jobs_from_cli(&cli)?;                       // UsageError -> exit 2
//! for spec in jobs.iter().flat_map(|j| j.instances(ns_bytes)) {
//!     let mut wl = Workload::new(&spec, block_size, ns_bytes)?;   // validates
//!     let (start, blocks) = wl.range();
//!     let mut ver = spec.verify.then(|| Verifier::new(start, blocks, block_size));
//!     let live = LiveStats::new();                        // Arc, shared with Progress
//!     let mut rec = Recorder::new(&spec.name, spec.histogram, live.clone(), now, spec.ramp);
//!     // keep spec.iodepth in flight:
//!     //   io = wl.next_io(); if Write && verify: seq = ver.fill(buf, io.lba, io.blocks)
//!     // on completion:
//!     //   ok:  rec.record(io.op, lat_ns, bytes); Write: ver.on_write_done(lba, blocks, seq)
//!     //        Read: ver.check(buf, lba, blocks) -> Err(Mismatch) is a verify failure
//!     //   err: rec.error(); Write: ver.on_write_failed(lba, blocks)
//!     //   always: wl.complete(&io)
//!     //   rec.tick(now) often; stop when rec.measured_time(now) >= runtime
//!     //   or rec.measured_ios() >= io_count
//!     let result = rec.finish(now);
//! }
//! let total = JobResult::merge("total", &results);
//! let table = report::write_report(&dir, &results, &total, measure_start_wallclock)?;
//! ```
//!
//! # Not implemented
//!
//! Latency targets (fio `latency_target`), rate limiting, trim/flush mixes,
//! zoned namespaces, think time.
//!
//! # Key constants
//!
//! Latencies are recorded in nanoseconds with 3 significant digits up to
//! [`stats::MAX_LATENCY_NS`] (60 s); larger values saturate.

pub mod core_probe;
pub mod progress;
pub mod report;

// The job engine moved to the `jobengine` crate (shared with nvmf-tgt);
// re-exported here so `bench::runner`, `bench::stats`... keep working.
pub use jobengine::{cli, error, job, runner, signal, stats, tcp, units, verify, workload};

pub use jobengine::cli::{Cli, jobs_from_cli, jobs_from_target_config};
pub use jobengine::error::UsageError;
pub use jobengine::job::{JobSpec, RwMode};
pub use jobengine::stats::{JobResult, LiveStats, Recorder};
pub use jobengine::workload::{IoSpec, Op, Workload};
