//! Command line and TOML job files.
//!
//! Options follow fio's names where fio has one (`--rw`, `--bs`,
//! `--iodepth`, `--numjobs`, `--runtime`, `--ramp_time` → `--ramp-time`,
//! `--number_ios` → `--io-count`, `--rwmixread`, `--offset`, `--size`) and
//! bdevperf's `-q` for the queue depth.
//!
//! A job file holds an optional `[global]` table and `[[job]]` tables with
//! the job options' long names in snake_case (`bs`, `iodepth`, `io_count`,
//! `ramp_time`, `no_histogram`...). Sizes and durations may be numbers or
//! strings (`bs = 4096`, `bs = "4k"`, `runtime = "1m"`). Precedence, most
//! specific first: a `[[job]]` table, the command line, `[global]`, the
//! built-in defaults. Mistakes are reported as `FILE:LINE: ...` naming the
//! key.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Parser, ValueEnum};
use serde::Deserialize;
use toml::Spanned;

use crate::error::UsageError;
use crate::job::{JobSpec, JobTransport, RwMode};
use crate::units::{parse_cpu_list, parse_duration, parse_size};

/// The target configuration used without `--config`: a RAM namespace.
/// The target used without `--config`: the embedded default of the
/// target itself (a 256 MiB RAM namespace 1 and a null namespace 2).
pub const DEFAULT_TARGET_CONFIG: &str = target_core::config::DEFAULT_TOML;

/// How the jobs reach the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// Through the NVMe-oF loop transport: host queue pairs, real SQEs and
    /// CQEs, the target's reactors (the full data path).
    Loop,
    /// Straight to the block device, bypassing the NVMe-oF layer (what the
    /// backend alone can do).
    Direct,
}

/// The transport of a job (`--transport`, `transport = "..."`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// The in-process target's loop transport.
    Loop,
    /// NVMe/TCP (`--traddr`/`--trsvcid`, or `-r` with a transport ID).
    Tcp,
}

/// NVMe/TCP's IANA port, the default `trsvcid`.
pub const DEFAULT_TRSVCID: u16 = 4420;

/// `host:port` from a `traddr` and an optional `trsvcid`: a `traddr` that
/// already carries a port is taken as is (unless `trsvcid` is given); a
/// bare IPv6 address gets its brackets.
pub fn tcp_address(traddr: &str, trsvcid: Option<u16>) -> String {
    let t = traddr.trim();
    if let Ok(sa) = t.parse::<std::net::SocketAddr>() {
        return match trsvcid {
            Some(p) => std::net::SocketAddr::new(sa.ip(), p).to_string(),
            None => sa.to_string(),
        };
    }
    let port = trsvcid.unwrap_or(DEFAULT_TRSVCID);
    if t.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{t}]:{port}");
    }
    match t.rsplit_once(':') {
        Some((host, p)) if trsvcid.is_none() && !host.contains(':') && p.parse::<u16>().is_ok() => {
            t.to_owned()
        }
        _ => format!("{t}:{port}"),
    }
}

/// A list of CPU numbers, parsed from `0-3,6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

fn cpu_list(s: &str) -> Result<CpuList, String> {
    parse_cpu_list(s).map(CpuList)
}

fn size_u32(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    u32::try_from(v).map_err(|_| format!("'{s}' is too large (at most 4GiB - 1)"))
}

fn rw_mode(s: &str) -> Result<RwMode, String> {
    s.parse()
}

const AFTER_HELP: &str = "\
Sizes take k/m/g/t or KiB/MiB/GiB suffixes (powers of 1024): 512, 4k, 64KiB, 1m.
Durations take us/ms/s/m/h (a bare number is seconds): 500ms, 10s, 1m.

Job files (--job-file): TOML with an optional [global] table and [[job]] tables
using the job options above in snake_case, e.g.

  [global]
  runtime = \"30s\"
  iodepth = 64

  [[job]]
  name = \"randread-4k\"
  rw = \"randread\"
  bs = \"4k\"

  [[job]]
  name = \"seqwrite-128k\"
  rw = \"write\"
  bs = \"128k\"
  iodepth = 8

A [[job]] table wins over the command line, which wins over [global].

Examples:
  nvmf-bench --rw randread --bs 4k -q 128 --runtime 30s
  nvmf-bench --rw randrw --rwmixread 70 --numjobs 4 --ramp-time 5s --json
  nvmf-bench --config target.toml --subsystem nqn.2024-01.io.spdk:cnode1 --rw verify --size 256m
  nvmf-bench --job-file jobs.toml --output results/run1";

/// `nvmf-bench` command line.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "nvmf-bench",
    version,
    about = "Benchmark an NVMe-oF target in-process: fio/bdevperf-style jobs with HdrHistogram latencies",
    long_about = None,
    after_help = AFTER_HELP,
    max_term_width = 100
)]
pub struct Cli {
    /// Target configuration (TOML); default: the embedded one (ns 1: 256 MiB RAM, ns 2: null)
    #[arg(long, value_name = "FILE", help_heading = "Target")]
    pub config: Option<PathBuf>,

    /// Data path: `loop` = NVMe-oF loop transport, `direct` = the block device alone
    #[arg(long, value_enum, value_name = "KIND", default_value_t = TargetKind::Loop, help_heading = "Target")]
    pub target: TargetKind,

    /// Subsystem to connect to [default: the first in the config]
    #[arg(
        long,
        visible_alias = "subnqn",
        value_name = "NQN",
        help_heading = "Target"
    )]
    pub subsystem: Option<String>,

    /// Transport of the jobs: `loop` (the in-process target) or `tcp`
    /// (NVMe/TCP to --traddr; with --config, an in-process target is
    /// started too and is the default --traddr) [default: loop]
    #[arg(long, value_enum, value_name = "KIND", help_heading = "Target")]
    pub transport: Option<TransportKind>,

    /// NVMe/TCP target address (IPv4, IPv6 or name; `host:port` accepted)
    #[arg(long, value_name = "ADDR", help_heading = "Target")]
    pub traddr: Option<String>,

    /// NVMe/TCP target port [default: 4420]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..), help_heading = "Target")]
    pub trsvcid: Option<u16>,

    /// Host NQN to connect with [default: nvmf-bench's own]
    #[arg(long, value_name = "NQN", help_heading = "Target")]
    pub hostnqn: Option<String>,

    /// SPDK transport ID, as spdk_nvme_perf -r: 'trtype:TCP adrfam:IPv4
    /// traddr:127.0.0.1 trsvcid:4420 subnqn:NQN' (implies --transport tcp)
    #[arg(short = 'r', long = "trid", value_name = "TRID", conflicts_with_all = ["traddr", "trsvcid"], help_heading = "Target")]
    pub trid: Option<String>,

    /// Namespace ID [default: 1]
    #[arg(long, value_name = "N", help_heading = "Target")]
    pub nsid: Option<u32>,

    /// CPUs for the target's reactors, e.g. 0-1 [default: from the config]
    #[arg(long, value_name = "LIST", value_parser = cpu_list, help_heading = "Target")]
    pub reactor_cores: Option<CpuList>,

    /// CPUs for the host-side job threads, e.g. 2-3 [default: not pinned]
    #[arg(long, value_name = "LIST", value_parser = cpu_list, help_heading = "Target")]
    pub host_cores: Option<CpuList>,

    /// Host error recovery: pause between reconnect attempts after the
    /// host lost its controller (target reset, deleted controller,
    /// controller-fatal), as Linux's reconnect_delay
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "100ms", help_heading = "Target")]
    pub reconnect_delay: Duration,

    /// Host error recovery: how long to keep reconnecting before the jobs
    /// fail, as Linux's ctrl_loss_tmo (0 = no recovery: a reset ends the run;
    /// inline jobs run without recovery)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s", help_heading = "Target")]
    pub ctrl_loss_tmo: Duration,

    /// Job name, used for output files [default: the rw mode]
    #[arg(long, value_name = "NAME", help_heading = "Job")]
    pub name: Option<String>,

    /// I/O pattern: read, write, randread, randwrite, rw (sequential mix), randrw, verify [default: randread]
    #[arg(long, value_name = "MODE", value_parser = rw_mode, help_heading = "Job")]
    pub rw: Option<RwMode>,

    /// Percentage of reads in mixed modes (rw, randrw, verify) [default: 50]
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u32).range(0..=100), help_heading = "Job")]
    pub rwmixread: Option<u32>,

    /// Block size of each I/O [default: 4k]
    #[arg(long, value_name = "SIZE", value_parser = size_u32, help_heading = "Job")]
    pub bs: Option<u32>,

    /// I/Os kept in flight per job (queue depth) [default: 32]
    #[arg(long, short = 'q', value_name = "N", help_heading = "Job")]
    pub iodepth: Option<u32>,

    /// Parallel copies of each job, each with its own queue pair [default: 1]
    #[arg(long, value_name = "N", help_heading = "Job")]
    pub numjobs: Option<u32>,

    /// Run each job as a poller on a target reactor (no host thread)
    #[arg(long, help_heading = "Job")]
    pub inline: bool,

    /// Measured run time after ramp-up [default: 10s, unless --io-count is given]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Job")]
    pub runtime: Option<Duration>,

    /// Stop each job after N I/Os (with --runtime: whichever comes first)
    #[arg(
        long,
        visible_alias = "number-ios",
        value_name = "N",
        help_heading = "Job"
    )]
    pub io_count: Option<u64>,

    /// Warm-up time before measuring; its I/Os are excluded from the results [default: 0]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Job")]
    pub ramp_time: Option<Duration>,

    /// Seed of the random offsets and read/write mix; same seed, same sequence
    #[arg(long, value_name = "N", help_heading = "Job")]
    pub seed: Option<u64>,

    /// Start of the I/O range in the namespace [default: 0]
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Job")]
    pub offset: Option<u64>,

    /// Length of the I/O range [default: to the end of the namespace]
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Job")]
    pub size: Option<u64>,

    /// Alignment of random offsets [default: --bs]
    #[arg(long, value_name = "SIZE", value_parser = size_u32, help_heading = "Job")]
    pub align: Option<u32>,

    /// Record only counters, no latency histogram (measures the recording cost)
    #[arg(long, help_heading = "Job")]
    pub no_histogram: bool,

    /// TOML job file with `[global]` and `[[job]]` tables.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Job",
        help = "TOML job file with [global] and [[job]] tables (see below)"
    )]
    pub job_file: Option<PathBuf>,

    /// Output folder, default `./out/bench-<unix-time>`.
    #[arg(
        long,
        value_name = "DIR",
        help_heading = "Output",
        help = "Output folder for summary.json, .hlog, .hgrm and .svg files [default: ./out/bench-<unix-time>]"
    )]
    pub output: Option<PathBuf>,

    /// No progress line
    #[arg(long, help_heading = "Output")]
    pub quiet: bool,

    /// Print the JSON summary on stdout (progress and table go to stderr)
    #[arg(long, help_heading = "Output")]
    pub json: bool,
}

impl Cli {
    /// The target configuration text and where it came from (the file
    /// name, or `"<built-in>"`), for the runner to parse.
    pub fn target_config(&self) -> Result<(String, String), UsageError> {
        match &self.config {
            None => Ok(("<built-in>".into(), DEFAULT_TARGET_CONFIG.into())),
            Some(p) => std::fs::read_to_string(p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|e| UsageError::new(format!("--config {}: {e}", p.display()))),
        }
    }

    /// The output folder: `--output`, or `./out/bench-<unix seconds>`.
    pub fn output_dir(&self, now: SystemTime) -> PathBuf {
        self.output.clone().unwrap_or_else(|| {
            let ts = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from(format!("./out/bench-{ts}"))
        })
    }
}

/// Job options from one layer (defaults, `[global]`, command line, `[[job]]`).
#[derive(Clone, Debug, Default)]
struct Layer {
    name: Option<String>,
    rw: Option<RwMode>,
    rwmixread: Option<u32>,
    bs: Option<u32>,
    iodepth: Option<u32>,
    numjobs: Option<u32>,
    inline: Option<bool>,
    runtime: Option<Duration>,
    io_count: Option<u64>,
    ramp: Option<Duration>,
    seed: Option<u64>,
    offset: Option<u64>,
    size: Option<u64>,
    align: Option<u32>,
    subsystem: Option<String>,
    nsid: Option<u32>,
    no_histogram: Option<bool>,
    transport: Option<TransportKind>,
    traddr: Option<String>,
    trsvcid: Option<u16>,
    hostnqn: Option<String>,
    /// Where the transport keys were given (`FILE:LINE` or the option), for
    /// errors found once the layers are merged.
    transport_at: Option<String>,
}

impl Layer {
    /// Fields set in `top` win.
    fn over(self, top: Layer) -> Layer {
        let loop_top = top.transport == Some(TransportKind::Loop);
        Layer {
            name: top.name.or(self.name),
            rw: top.rw.or(self.rw),
            rwmixread: top.rwmixread.or(self.rwmixread),
            bs: top.bs.or(self.bs),
            iodepth: top.iodepth.or(self.iodepth),
            numjobs: top.numjobs.or(self.numjobs),
            inline: top.inline.or(self.inline),
            runtime: top.runtime.or(self.runtime),
            io_count: top.io_count.or(self.io_count),
            ramp: top.ramp.or(self.ramp),
            seed: top.seed.or(self.seed),
            offset: top.offset.or(self.offset),
            size: top.size.or(self.size),
            align: top.align.or(self.align),
            subsystem: top.subsystem.or(self.subsystem),
            nsid: top.nsid.or(self.nsid),
            no_histogram: top.no_histogram.or(self.no_histogram),
            // A layer that picks the loop transport drops the TCP keys it
            // would inherit (a `[global]` traddr for the other jobs).
            traddr: top.traddr.or(self.traddr.filter(|_| !loop_top)),
            trsvcid: top.trsvcid.or(self.trsvcid.filter(|_| !loop_top)),
            hostnqn: top.hostnqn.or(self.hostnqn.filter(|_| !loop_top)),
            transport: top.transport.or(self.transport),
            transport_at: top.transport_at.or(self.transport_at),
        }
    }

    fn from_cli(c: &Cli) -> Layer {
        Layer {
            name: c.name.clone(),
            rw: c.rw,
            rwmixread: c.rwmixread,
            bs: c.bs,
            iodepth: c.iodepth,
            numjobs: c.numjobs,
            inline: c.inline.then_some(true),
            runtime: c.runtime,
            io_count: c.io_count,
            ramp: c.ramp_time,
            seed: c.seed,
            offset: c.offset,
            size: c.size,
            align: c.align,
            subsystem: c.subsystem.clone(),
            nsid: c.nsid,
            no_histogram: c.no_histogram.then_some(true),
            transport: c.transport,
            traddr: c.traddr.clone(),
            trsvcid: c.trsvcid,
            hostnqn: c.hostnqn.clone(),
            transport_at: (c.transport.is_some() || c.traddr.is_some() || c.trsvcid.is_some())
                .then(|| "--transport".to_owned()),
        }
    }

    /// The job's transport from the merged layer: TCP keys only with
    /// `transport = "tcp"`, and TCP jobs on host threads.
    fn job_transport(&self, job: &str) -> Result<JobTransport, UsageError> {
        let at = self.transport_at.as_deref().unwrap_or("--transport");
        let err = |key: &str, m: &str| {
            Err(UsageError::new(format!(
                "{at}: job '{job}': key '{key}': {m}"
            )))
        };
        match self.transport.unwrap_or(TransportKind::Loop) {
            TransportKind::Loop => {
                for (key, set) in [
                    ("traddr", self.traddr.is_some()),
                    ("trsvcid", self.trsvcid.is_some()),
                    ("hostnqn", self.hostnqn.is_some()),
                ] {
                    if set {
                        return err(key, "only for transport = \"tcp\"");
                    }
                }
                Ok(JobTransport::Loop)
            }
            TransportKind::Tcp => {
                if self.inline == Some(true) {
                    return err(
                        "inline",
                        "inline jobs poll the loop transport on a reactor; NVMe/TCP jobs run on host threads",
                    );
                }
                if self.traddr.is_none() && self.trsvcid.is_some() {
                    return err("trsvcid", "needs traddr");
                }
                Ok(JobTransport::Tcp {
                    traddr: self.traddr.as_deref().map(|a| tcp_address(a, self.trsvcid)),
                    hostnqn: self.hostnqn.clone(),
                })
            }
        }
    }

    fn into_spec(self, default_name: &str, default_seed: u64) -> Result<JobSpec, UsageError> {
        let d = JobSpec::default();
        let rw = self.rw.unwrap_or(d.rw);
        let bs = self.bs.unwrap_or(d.bs);
        let runtime = match (self.runtime, self.io_count) {
            (None, None) => d.runtime,
            (r, _) => r,
        };
        let name = self.name.clone().unwrap_or_else(|| default_name.to_owned());
        let transport = self.job_transport(&name)?;
        Ok(JobSpec {
            name,
            rw,
            rwmixread: self.rwmixread.unwrap_or(d.rwmixread),
            bs,
            iodepth: self.iodepth.unwrap_or(d.iodepth),
            numjobs: self.numjobs.unwrap_or(d.numjobs),
            inline: self.inline.unwrap_or(d.inline),
            runtime,
            io_count: self.io_count,
            ramp: self.ramp.unwrap_or(d.ramp),
            seed: self.seed.unwrap_or(default_seed),
            offset: self.offset.unwrap_or(d.offset),
            size: self.size,
            align: self.align.unwrap_or(bs),
            verify: rw == RwMode::Verify,
            subsystem: self.subsystem,
            nsid: self.nsid.unwrap_or(d.nsid),
            histogram: !self.no_histogram.unwrap_or(false),
            transport,
        })
    }
}

type Val = Option<Spanned<toml::Value>>;

/// One table of a job file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Val,
    rw: Val,
    rwmixread: Val,
    bs: Val,
    iodepth: Val,
    numjobs: Val,
    inline: Val,
    runtime: Val,
    #[serde(alias = "number_ios")]
    io_count: Val,
    ramp_time: Val,
    seed: Val,
    offset: Val,
    size: Val,
    align: Val,
    #[serde(alias = "subnqn")]
    subsystem: Val,
    nsid: Val,
    no_histogram: Val,
    transport: Val,
    traddr: Val,
    trsvcid: Val,
    hostnqn: Val,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    global: Option<RawJob>,
    #[serde(default)]
    job: Vec<RawJob>,
}

/// Reads values out of one job file, naming file and line in errors.
struct FileCtx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl FileCtx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        self.text
            .get(..span.start)
            .map_or(1, |t| t.matches('\n').count() + 1)
    }

    fn err(&self, span: &Range<usize>, key: &str, msg: impl std::fmt::Display) -> UsageError {
        UsageError::new(format!(
            "{}:{}: key '{key}': {msg}",
            self.path.display(),
            self.line(span)
        ))
    }

    fn string(&self, v: &Val, key: &str) -> Result<Option<String>, UsageError> {
        v.as_ref()
            .map(|s| match s.get_ref() {
                toml::Value::String(x) => Ok(x.clone()),
                other => Err(self.err(
                    &s.span(),
                    key,
                    format!("expected a string, found {}", other.type_str()),
                )),
            })
            .transpose()
    }

    fn boolean(&self, v: &Val, key: &str) -> Result<Option<bool>, UsageError> {
        v.as_ref()
            .map(|s| match s.get_ref() {
                toml::Value::Boolean(b) => Ok(*b),
                other => Err(self.err(
                    &s.span(),
                    key,
                    format!("expected true or false, found {}", other.type_str()),
                )),
            })
            .transpose()
    }

    /// An integer, or a string parsed by `parse` (sizes, durations, modes).
    fn parsed<T>(
        &self,
        v: &Val,
        key: &str,
        from_int: impl Fn(i64) -> Result<T, String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, UsageError> {
        v.as_ref()
            .map(|s| {
                match s.get_ref() {
                    toml::Value::Integer(i) => from_int(*i),
                    toml::Value::String(x) => parse(x),
                    other => Err(format!(
                        "expected a number or a string, found {}",
                        other.type_str()
                    )),
                }
                .map_err(|m| self.err(&s.span(), key, m))
            })
            .transpose()
    }

    fn int<T: TryFrom<i64>>(&self, v: &Val, key: &str) -> Result<Option<T>, UsageError> {
        self.parsed(
            v,
            key,
            |i| T::try_from(i).map_err(|_| format!("{i} is out of range")),
            |s| {
                let i: i64 = s
                    .trim()
                    .parse()
                    .map_err(|_| format!("'{s}' is not a number"))?;
                T::try_from(i).map_err(|_| format!("{i} is out of range"))
            },
        )
    }

    fn size<T: TryFrom<u64>>(&self, v: &Val, key: &str) -> Result<Option<T>, UsageError> {
        let conv = |n: u64| T::try_from(n).map_err(|_| format!("{n} is too large"));
        self.parsed(
            v,
            key,
            |i| {
                u64::try_from(i)
                    .map_err(|_| format!("{i} is negative"))
                    .and_then(conv)
            },
            |s| parse_size(s).and_then(conv),
        )
    }

    fn duration(&self, v: &Val, key: &str) -> Result<Option<Duration>, UsageError> {
        self.parsed(
            v,
            key,
            |i| {
                u64::try_from(i)
                    .map(Duration::from_secs)
                    .map_err(|_| format!("{i} is negative"))
            },
            parse_duration,
        )
    }

    fn layer(&self, r: &RawJob) -> Result<Layer, UsageError> {
        let rw = self.parsed(
            &r.rw,
            "rw",
            |i| Err(format!("expected a mode name, found {i}")),
            |s| s.parse(),
        )?;
        let rwmixread: Option<u32> = self.int(&r.rwmixread, "rwmixread")?;
        if let (Some(p), Some(s)) = (rwmixread, &r.rwmixread)
            && p > 100
        {
            return Err(self.err(
                &s.span(),
                "rwmixread",
                format!("{p} is not a percentage (0-100)"),
            ));
        }
        let transport = self.parsed(
            &r.transport,
            "transport",
            |i| Err(format!("expected \"loop\" or \"tcp\", found {i}")),
            |s| match s.to_ascii_lowercase().as_str() {
                "loop" => Ok(TransportKind::Loop),
                "tcp" => Ok(TransportKind::Tcp),
                _ => Err(format!("'{s}' is not a transport (loop, tcp)")),
            },
        )?;
        let trsvcid: Option<u16> = self.int(&r.trsvcid, "trsvcid")?;
        if let (Some(0), Some(s)) = (trsvcid, &r.trsvcid) {
            return Err(self.err(&s.span(), "trsvcid", "port 0 is not a port (1-65535)"));
        }
        let traddr = self.string(&r.traddr, "traddr")?;
        if let (Some(a), Some(s)) = (&traddr, &r.traddr)
            && a.trim().is_empty()
        {
            return Err(self.err(&s.span(), "traddr", "is empty"));
        }
        let transport_at = [&r.transport, &r.traddr, &r.trsvcid, &r.hostnqn]
            .into_iter()
            .flatten()
            .map(|v| format!("{}:{}", self.path.display(), self.line(&v.span())))
            .next();
        Ok(Layer {
            transport,
            traddr,
            trsvcid,
            hostnqn: self.string(&r.hostnqn, "hostnqn")?,
            transport_at,
            name: self.string(&r.name, "name")?,
            rw,
            rwmixread,
            bs: self.size(&r.bs, "bs")?,
            iodepth: self.int(&r.iodepth, "iodepth")?,
            numjobs: self.int(&r.numjobs, "numjobs")?,
            inline: self.boolean(&r.inline, "inline")?,
            runtime: self.duration(&r.runtime, "runtime")?,
            io_count: self.int(&r.io_count, "io_count")?,
            ramp: self.duration(&r.ramp_time, "ramp_time")?,
            seed: self.int(&r.seed, "seed")?,
            offset: self.size(&r.offset, "offset")?,
            size: self.size(&r.size, "size")?,
            align: self.size(&r.align, "align")?,
            subsystem: self.string(&r.subsystem, "subsystem")?,
            nsid: self.int(&r.nsid, "nsid")?,
            no_histogram: self.boolean(&r.no_histogram, "no_histogram")?,
        })
    }
}

/// Parses a job file's text into its `[global]` layer and `[[job]]` layers.
fn parse_job_file(path: &Path, text: &str) -> Result<(Layer, Vec<Layer>), UsageError> {
    let ctx = FileCtx { path, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| ctx.line(&s));
        let msg = e.message().trim();
        let msg = match msg.strip_prefix("unknown field ") {
            Some(rest) => {
                let key = rest.split(',').next().unwrap_or(rest);
                format!("unknown key {key} (job files take the long options in snake_case: bs, iodepth, rw, runtime...)")
            }
            None => msg.to_owned(),
        };
        UsageError::new(format!("{}:{line}: {msg}", path.display()))
    })?;
    let global = raw
        .global
        .as_ref()
        .map(|g| ctx.layer(g))
        .transpose()?
        .unwrap_or_default();
    let jobs = raw
        .job
        .iter()
        .map(|j| ctx.layer(j))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((global, jobs))
}

/// Resolves the jobs to run: the `[[job]]` tables of `--job-file` (or one
/// job from the command line alone), each layered as described in the
/// module docs. Checks what can be checked without the namespace (unique
/// names, ranges of percentages); [`JobSpec::validate`] does the rest.
pub fn jobs_from_cli(cli: &Cli) -> Result<Vec<JobSpec>, UsageError> {
    let mut cmdline = Layer::from_cli(cli);
    if let Some(trid) = &cli.trid {
        let o = transport_tcp::host::ConnectOptions::from_trid(trid, "")
            .map_err(|e| UsageError::new(format!("-r: {e}")))?;
        if cli.transport == Some(TransportKind::Loop) {
            return Err(UsageError::new(
                "-r names an NVMe/TCP target; not with --transport loop",
            ));
        }
        cmdline.transport = Some(TransportKind::Tcp);
        cmdline.traddr = Some(o.traddr);
        cmdline.transport_at = Some("-r".into());
        if cmdline.subsystem.is_none() {
            cmdline.subsystem = Some(o.subnqn);
        }
        if cmdline.hostnqn.is_none() && !o.hostnqn.is_empty() {
            cmdline.hostnqn = Some(o.hostnqn);
        }
    }
    let default_seed = JobSpec::default().seed;
    let jobs = match &cli.job_file {
        None => {
            let name = cli.rw.unwrap_or(JobSpec::default().rw).to_string();
            vec![
                Layer::default()
                    .over(cmdline)
                    .into_spec(&name, default_seed)?,
            ]
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| UsageError::new(format!("--job-file {}: {e}", path.display())))?;
            jobs_from_text(path, &text, cmdline)?
        }
    };
    Ok(jobs)
}

/// The `[[job]]` tables of a target config: the service's host jobs, in
/// the job-file format. Read from the config file's own text, so errors name
/// its lines; the config's other sections are left to the config parser.
pub fn jobs_from_target_config(path: &Path, text: &str) -> Result<Vec<JobSpec>, UsageError> {
    /// Only the job tables; other keys are ignored (not denied) here.
    #[derive(Deserialize)]
    struct RawConfigJobs {
        #[serde(default)]
        job: Vec<RawJob>,
    }
    let ctx = FileCtx { path, text };
    let raw: RawConfigJobs = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| ctx.line(&s));
        UsageError::new(format!("{}:{line}: {}", path.display(), e.message().trim()))
    })?;
    if raw.job.is_empty() {
        return Ok(Vec::new());
    }
    let tables = raw
        .job
        .iter()
        .map(|j| ctx.layer(j))
        .collect::<Result<Vec<_>, _>>()?;
    name_jobs(path, Layer::default(), tables)
}

fn jobs_from_text(path: &Path, text: &str, cmdline: Layer) -> Result<Vec<JobSpec>, UsageError> {
    let (global, tables) = parse_job_file(path, text)?;
    name_jobs(path, global.over(cmdline), tables)
}

/// Layers each job table over `base`, names and seeds them, and checks the
/// names are unique.
fn name_jobs(path: &Path, base: Layer, tables: Vec<Layer>) -> Result<Vec<JobSpec>, UsageError> {
    let default_seed = JobSpec::default().seed;
    let jobs: Vec<JobSpec> = if tables.is_empty() {
        vec![base.into_spec("job0", default_seed)?]
    } else {
        tables
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                base.clone().over(t).into_spec(
                    &format!("job{i}"),
                    default_seed.wrapping_add(1000 * i as u64),
                )
            })
            .collect::<Result<_, _>>()?
    };
    for (i, j) in jobs.iter().enumerate() {
        if jobs[..i].iter().any(|o| o.name == j.name) {
            return Err(UsageError::new(format!(
                "{}: two jobs are named '{}'; names must be unique (they name the output files)",
                path.display(),
                j.name
            )));
        }
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("nvmf-bench").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_sound() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let jobs = jobs_from_cli(&parse(&[]).unwrap()).unwrap();
        assert_eq!(jobs.len(), 1);
        let j = &jobs[0];
        assert_eq!(j.name, "randread");
        assert_eq!(
            (j.bs, j.align, j.iodepth, j.numjobs, j.rwmixread),
            (4096, 4096, 32, 1, 50)
        );
        assert_eq!(j.runtime, Some(Duration::from_secs(10)));
        assert!(j.histogram && !j.inline && !j.verify);
    }

    #[test]
    fn options() {
        let cli = parse(&[
            "--rw",
            "verify",
            "--bs",
            "64KiB",
            "-q",
            "8",
            "--io-count",
            "1000",
            "--ramp-time",
            "2s",
            "--offset",
            "1m",
            "--size",
            "16m",
            "--no-histogram",
            "--inline",
            "--reactor-cores",
            "0-1",
            "--target",
            "direct",
        ])
        .unwrap();
        assert_eq!(cli.reactor_cores, Some(CpuList(vec![0, 1])));
        assert_eq!(cli.target, TargetKind::Direct);
        let j = &jobs_from_cli(&cli).unwrap()[0];
        assert_eq!(
            (j.rw, j.bs, j.align, j.iodepth),
            (RwMode::Verify, 65536, 65536, 8)
        );
        assert!(j.verify && !j.histogram && j.inline);
        assert_eq!((j.runtime, j.io_count), (None, Some(1000)));
        assert_eq!((j.offset, j.size), (1 << 20, Some(16 << 20)));
        assert_eq!(j.ramp, Duration::from_secs(2));
        assert_eq!(parse(&["--number-ios", "5"]).unwrap().io_count, Some(5));
        assert_eq!(parse(&["--rw", "rw"]).unwrap().rw, Some(RwMode::ReadWrite));
    }

    #[test]
    fn bad_options_are_one_line() {
        for args in [
            &["--bs", "4x"][..],
            &["--rw", "trim"],
            &["--rwmixread", "101"],
            &["--runtime", "10y"],
            &["--reactor-cores", "x"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
    }

    #[test]
    fn job_file_layers() {
        let text = r#"
[global]
runtime = "30s"
iodepth = 64
bs = 8192

[[job]]
name = "a"
rw = "randwrite"

[[job]]
rw = "read"
bs = "128k"
number_ios = 100
"#;
        let cli = parse(&["--iodepth", "4", "--runtime", "5s"]).unwrap();
        let jobs = jobs_from_text(Path::new("j.toml"), text, Layer::from_cli(&cli)).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (
                jobs[0].name.as_str(),
                jobs[0].rw,
                jobs[0].bs,
                jobs[0].iodepth
            ),
            ("a", RwMode::RandWrite, 8192, 4)
        );
        assert_eq!(jobs[0].runtime, Some(Duration::from_secs(5)));
        assert_eq!(
            (jobs[1].name.as_str(), jobs[1].bs, jobs[1].io_count),
            ("job1", 131072, Some(100))
        );
        assert_ne!(jobs[0].seed, jobs[1].seed);
    }

    #[test]
    fn job_file_errors_name_file_line_and_key() {
        let cli = Layer::default();
        let e = jobs_from_text(
            Path::new("j.toml"),
            "[[job]]\nrw = \"read\"\nbsz = 4096\n",
            cli.clone(),
        )
        .unwrap_err();
        assert!(e.0.starts_with("j.toml:3: unknown key `bsz`"), "{e}");
        assert!(!e.0.contains('\n'));
        let e = jobs_from_text(
            Path::new("j.toml"),
            "[global]\n\nbs = \"4q\"\n",
            cli.clone(),
        )
        .unwrap_err();
        assert!(e.0.starts_with("j.toml:3: key 'bs': invalid size"), "{e}");
        let e = jobs_from_text(Path::new("j.toml"), "[[job]]\nrw = 3\n", cli.clone()).unwrap_err();
        assert!(e.0.starts_with("j.toml:2: key 'rw'"), "{e}");
        let e =
            jobs_from_text(Path::new("j.toml"), "[[job]]\ninline = 1\n", cli.clone()).unwrap_err();
        assert!(e.0.starts_with("j.toml:2: key 'inline'"), "{e}");
        let e = jobs_from_text(
            Path::new("j.toml"),
            "[[job]]\nname=\"x\"\n[[job]]\nname=\"x\"\n",
            cli.clone(),
        )
        .unwrap_err();
        assert!(e.0.contains("named 'x'"), "{e}");
        let e = jobs_from_text(Path::new("j.toml"), "[[job]\n", cli.clone()).unwrap_err();
        assert!(e.0.starts_with("j.toml:1: "), "{e}");
        assert!(!e.0.contains('\n'));
        let e = jobs_from_text(Path::new("j.toml"), "[jobs]\n", cli).unwrap_err();
        assert!(e.0.contains("unknown key `jobs`"), "{e}");
    }

    #[test]
    fn transport_from_the_command_line_trid_and_job_files() {
        let tcp = |a: &str| JobTransport::Tcp {
            traddr: Some(a.into()),
            hostnqn: None,
        };
        let jobs = jobs_from_cli(&parse(&[]).unwrap()).unwrap();
        assert_eq!(jobs[0].transport, JobTransport::Loop);
        let cli = parse(&[
            "--transport",
            "tcp",
            "--traddr",
            "10.0.0.1",
            "--trsvcid",
            "4421",
            "--subnqn",
            "nqn.x",
        ])
        .unwrap();
        let jobs = jobs_from_cli(&cli).unwrap();
        assert_eq!(jobs[0].transport, tcp("10.0.0.1:4421"));
        assert_eq!(jobs[0].subsystem.as_deref(), Some("nqn.x"));
        // --config's target listener is the default address.
        let jobs = jobs_from_cli(&parse(&["--transport", "tcp"]).unwrap()).unwrap();
        assert_eq!(
            jobs[0].transport,
            JobTransport::Tcp {
                traddr: None,
                hostnqn: None
            }
        );
        let cli = parse(&[
            "-r",
            "trtype:TCP adrfam:IPv6 traddr:::1 trsvcid:4420 subnqn:nqn.y hostnqn:nqn.h",
        ])
        .unwrap();
        let jobs = jobs_from_cli(&cli).unwrap();
        assert_eq!(
            jobs[0].transport,
            JobTransport::Tcp {
                traddr: Some("[::1]:4420".into()),
                hostnqn: Some("nqn.h".into())
            }
        );
        assert_eq!(jobs[0].subsystem.as_deref(), Some("nqn.y"));
        assert!(parse(&["-r", "trtype:TCP", "--traddr", "x"]).is_err());
        let e = jobs_from_cli(&parse(&["-r", "trtype:RDMA traddr:1.2.3.4 subnqn:n"]).unwrap())
            .unwrap_err();
        assert!(e.0.starts_with("-r: "), "{e}");
        let e = jobs_from_cli(&parse(&["--transport", "tcp", "--inline"]).unwrap()).unwrap_err();
        assert!(e.0.contains("key 'inline'"), "{e}");
        let e = jobs_from_cli(&parse(&["--traddr", "1.2.3.4"]).unwrap()).unwrap_err();
        assert!(e.0.contains("key 'traddr': only for transport"), "{e}");

        assert_eq!(tcp_address("127.0.0.1", None), "127.0.0.1:4420");
        assert_eq!(tcp_address("127.0.0.1:99", None), "127.0.0.1:99");
        assert_eq!(tcp_address("127.0.0.1:99", Some(7)), "127.0.0.1:7");
        assert_eq!(tcp_address("fe80::1", Some(7)), "[fe80::1]:7");
        assert_eq!(tcp_address("host.example", None), "host.example:4420");
        assert_eq!(tcp_address("host.example:5", None), "host.example:5");

        let cli = Layer::default();
        let text = "[global]\ntransport = \"tcp\"\ntraddr = \"10.0.0.2\"\nsubnqn = \"nqn.g\"\n\n[[job]]\nname = \"remote\"\ntrsvcid = \"4430\"\n\n[[job]]\nname = \"local\"\ntransport = \"loop\"\ntraddr = \"1.1.1.1\"\n";
        let e = jobs_from_text(Path::new("j.toml"), text, cli.clone()).unwrap_err();
        assert!(
            e.0.starts_with("j.toml:12: job 'local': key 'traddr': only for transport"),
            "{e}"
        );
        let text = text.replace("traddr = \"1.1.1.1\"\n", "");
        let jobs = jobs_from_text(Path::new("j.toml"), &text, cli.clone()).unwrap();
        assert_eq!(jobs[0].transport, tcp("10.0.0.2:4430"));
        assert_eq!(jobs[0].subsystem.as_deref(), Some("nqn.g"));
        assert_eq!(jobs[1].transport, JobTransport::Loop);
        for (bad, want) in [
            (
                "[[job]]\ntransport = \"rdma\"\n",
                "j.toml:2: key 'transport': 'rdma' is not a transport",
            ),
            (
                "[[job]]\ntransport = \"tcp\"\ntrsvcid = 0\n",
                "j.toml:3: key 'trsvcid': port 0",
            ),
            (
                "[[job]]\ntransport = \"tcp\"\ntrsvcid = 70000\n",
                "j.toml:3: key 'trsvcid': 70000 is out of range",
            ),
            (
                "[[job]]\n\ntransport = \"tcp\"\ninline = true\n",
                "j.toml:3: job 'job0': key 'inline'",
            ),
        ] {
            let e = jobs_from_text(Path::new("j.toml"), bad, cli.clone()).unwrap_err();
            assert!(e.0.starts_with(want), "{bad}: {e}");
        }
    }

    #[test]
    fn config_and_output() {
        let cli = parse(&[]).unwrap();
        let (origin, text) = cli.target_config().unwrap();
        assert_eq!(origin, "<built-in>");
        assert!(text.parse::<toml::Table>().is_ok());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(42);
        assert_eq!(cli.output_dir(t), PathBuf::from("./out/bench-42"));
        let e = parse(&["--config", "/nonexistent.toml"])
            .unwrap()
            .target_config()
            .unwrap_err();
        assert!(e.0.starts_with("--config /nonexistent.toml: "), "{e}");
    }
}
