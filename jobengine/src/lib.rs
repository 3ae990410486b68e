//! The host job engine: what `nvmf-bench` and `nvmf-tgt`'s host jobs share.
//!
//! It lives in its own crate so the service does not depend on the
//! benchmark binary's crate (reports, plots, progress line) to run a job.
//!
//! * [`cli`]: command line and TOML job files (also the service config's
//!   `[[job]]` tables), merged into [`job::JobSpec`]s.
//! * [`job`]: one job's parameters and their validation against a namespace.
//! * [`workload`]: the I/O sequence of a job (sequential, random, mixed,
//!   verify), deterministic for a seed, no allocation per I/O.
//! * [`verify`]: self-describing block contents and the checker.
//! * [`stats`]: per-job lock-free recording (HdrHistogram), per-second
//!   intervals, merged results; [`stats::LiveStats`] for live views.
//! * [`runner`]: drives one job over a [`runner::Port`] (host queue pair,
//!   inline on a reactor, or directly on a backend).
//! * [`tcp`]: jobs over NVMe/TCP (a [`runner::Port`] on a `transport_tcp`
//!   host queue pair, and the connect step).
//! * [`signal`]: SIGINT/SIGTERM handling shared by both binaries.
//!
//! How a runner drives one job instance is described in the `bench`
//! crate's documentation.

pub mod cli;
pub mod error;
pub mod job;
pub mod runner;
pub mod signal;
pub mod stats;
pub mod tcp;
pub mod units;
pub mod verify;
pub mod workload;

pub use cli::{Cli, jobs_from_cli, jobs_from_target_config};
pub use error::UsageError;
pub use job::{JobSpec, RwMode};
pub use stats::{JobResult, LiveStats, Recorder};
pub use workload::{IoSpec, Op, Workload};
