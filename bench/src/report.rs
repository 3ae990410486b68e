//! Result files written into the output folder.
//!
//! | file            | format                                                          |
//! |-----------------|-----------------------------------------------------------------|
//! | `summary.txt`   | the human table of [`summary_table`]                            |
//! | `summary.json`  | fio-like JSON ([`Summary`]): `jobs[]`, `total`                  |
//! | `<job>.hlog`    | HdrHistogram interval log, one V2+deflate histogram per second, latencies in ns, timestamps relative to `BaseTime` (= `StartTime`, the end of ramp) |
//! | `<job>.hgrm`    | HdrHistogram percentile distribution (`outputPercentileDistribution` text, 5 ticks per half distance), values in **microseconds** |
//! | `total.hgrm`    | the same for all jobs merged (only with several jobs)           |
//! | `latency.svg`   | latency (µs) by percentile on a log "nines" axis, one line per job |
//! | `iops.svg`      | IOPS per second, one line per job (and the total)               |
//! | `machine.json`  | written by `nvmf-bench` itself: for a run with host and reactor on two cores, the cache-line round trip between them before and after the run ([`crate::core_probe`]); for any run with the in-process target, each reactor's passes with and without work and the work items done (its own counters, no clock read per pass) |
//!
//! The `.hlog` files load in HdrHistogram's `HistogramLogProcessor` and
//! HistogramLogAnalyzer; the `.hgrm` files in the HdrHistogram plotter
//! (<https://hdrhistogram.github.io/HdrHistogram/plotFiles.html>).

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stats::{JobResult, OpResult};

/// Percentiles reported in the table and JSON, as in fio's defaults plus
/// p99.99 and beyond for fast devices.
pub const PERCENTILES: [f64; 20] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99, 99.999, 99.9999, 100.0,
];

/// Where writing the report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Encoding a histogram or drawing a plot failed.
    #[error("cannot write {path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The cause.
        msg: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_owned(),
        source,
    }
}

fn fmt_err(path: &Path) -> impl FnOnce(String) -> ReportError + '_ {
    move |msg| ReportError::Format {
        path: path.to_owned(),
        msg,
    }
}

/// A job name made safe for a file name.
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("job{s}")
    } else {
        s
    }
}

/// Writes every file of the table above into `dir` (created if needed) and
/// returns the summary table. `start` is the wall-clock time measuring
/// started (the end of ramp time), used as the `.hlog` base time.
pub fn write_report(
    dir: &Path,
    jobs: &[JobResult],
    total: &JobResult,
    start: SystemTime,
) -> Result<String, ReportError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let table = summary_table(jobs, total);
    let p = dir.join("summary.txt");
    fs::write(&p, &table).map_err(io_err(&p))?;

    let p = dir.join("summary.json");
    let json = serde_json::to_string_pretty(&Summary::new(jobs, total, start))
        .map_err(|e| fmt_err(&p)(e.to_string()))?;
    fs::write(&p, json + "\n").map_err(io_err(&p))?;

    for job in jobs {
        let stem = file_stem(&job.name);
        if job.histogram.is_some() {
            let p = dir.join(format!("{stem}.hlog"));
            let mut buf = Vec::new();
            write_hlog(&mut buf, job, start).map_err(fmt_err(&p))?;
            fs::write(&p, buf).map_err(io_err(&p))?;
        }
        if let Some(h) = &job.histogram {
            let p = dir.join(format!("{stem}.hgrm"));
            let mut buf = Vec::new();
            write_hgrm(&mut buf, h, 1000.0).map_err(io_err(&p))?;
            fs::write(&p, buf).map_err(io_err(&p))?;
        }
    }
    if jobs.len() > 1
        && let Some(h) = &total.histogram
    {
        let p = dir.join("total.hgrm");
        let mut buf = Vec::new();
        write_hgrm(&mut buf, h, 1000.0).map_err(io_err(&p))?;
        fs::write(&p, buf).map_err(io_err(&p))?;
    }
    let p = dir.join("latency.svg");
    latency_svg(&p, jobs).map_err(fmt_err(&p))?;
    let p = dir.join("iops.svg");
    let mut series: Vec<&JobResult> = jobs.iter().collect();
    if jobs.len() > 1 {
        series.push(total);
    }
    iops_svg(&p, &series).map_err(fmt_err(&p))?;
    Ok(table)
}

// ---------------------------------------------------------------- table

fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

fn table_row(
    out: &mut String,
    label: &str,
    ios: u64,
    bytes: u64,
    elapsed: Duration,
    h: Option<&Histogram<u64>>,
    errors: Option<u64>,
) {
    let secs = elapsed.as_secs_f64();
    let (iops, mibs) = if secs > 0.0 {
        (ios as f64 / secs, bytes as f64 / secs / (1024.0 * 1024.0))
    } else {
        (0.0, 0.0)
    };
    let _ = write!(out, "{label:<16} {iops:>12.0} {mibs:>10.2}");
    match h.filter(|h| !h.is_empty()) {
        Some(h) => {
            let _ = write!(
                out,
                " {:>9} {:>9}",
                us(h.min()),
                format!("{:.2}", h.mean() / 1000.0)
            );
            for q in [0.5, 0.9, 0.99, 0.999, 0.9999] {
                let _ = write!(out, " {:>9}", us(h.value_at_quantile(q)));
            }
            let _ = write!(out, " {:>10}", us(h.max()));
        }
        None => {
            let _ = write!(out, " {:>9} {:>9}", "-", "-");
            for _ in 0..5 {
                let _ = write!(out, " {:>9}", "-");
            }
            let _ = write!(out, " {:>10}", "-");
        }
    }
    match errors {
        Some(e) => {
            let _ = writeln!(out, " {e:>7}");
        }
        None => out.push('\n'),
    }
}

fn job_rows(out: &mut String, label: &str, j: &JobResult) {
    table_row(
        out,
        label,
        j.ios(),
        j.bytes(),
        j.elapsed,
        j.histogram.as_ref(),
        Some(j.errors),
    );
    if j.read.counters.ios > 0 && j.write.counters.ios > 0 {
        for (name, d) in [("  read", &j.read), ("  write", &j.write)] {
            let OpResult {
                counters,
                histogram,
            } = d;
            table_row(
                out,
                name,
                counters.ios,
                counters.bytes,
                j.elapsed,
                histogram.as_ref(),
                None,
            );
        }
    }
}

/// The human summary: one row per job (plus read/write rows for mixed
/// jobs) and a total row; IOPS, MiB/s and latencies in microseconds.
pub fn summary_table(jobs: &[JobResult], total: &JobResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
        "job",
        "IOPS",
        "MiB/s",
        "min",
        "mean",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "errors"
    );
    let _ = writeln!(
        out,
        "{:<40}{:^82}",
        "", "----------------- latency (µs) -----------------"
    );
    for j in jobs {
        job_rows(&mut out, &j.name, j);
    }
    if jobs.len() != 1 {
        job_rows(&mut out, "total", total);
    }
    let _ = writeln!(
        out,
        "elapsed {:.2} s, {} I/Os, {:.1} MiB",
        total.elapsed.as_secs_f64(),
        total.ios(),
        total.bytes() as f64 / (1024.0 * 1024.0)
    );
    if total.errors > 0 {
        let _ = writeln!(
            out,
            "{} I/O(s) failed ({:.3} % of {} completed)",
            total.errors,
            total.errors as f64 * 100.0 / (total.ios() + total.errors).max(1) as f64,
            total.ios() + total.errors
        );
    }
    if total.retries > 0 || total.reconnects > 0 {
        let _ = writeln!(
            out,
            "host recovery: {} reconnect(s), {} command(s) retried",
            total.reconnects, total.retries
        );
    }
    out
}

// ----------------------------------------------------------------- JSON

/// Percentile → latency map, serialized in numeric order with fio's key
/// spelling (`"99.900000"`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Percentiles(pub Vec<(String, u64)>);

impl Serialize for Percentiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for Percentiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by(|a, b| {
            a.0.parse::<f64>()
                .unwrap_or(0.0)
                .total_cmp(&b.0.parse::<f64>().unwrap_or(0.0))
        });
        Ok(Self(v))
    }
}

/// Completion latency statistics in ns, as fio's `clat_ns`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClatNs {
    /// Smallest latency.
    pub min: u64,
    /// Largest latency.
    pub max: u64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stddev: f64,
    /// Number of samples.
    #[serde(rename = "N")]
    pub n: u64,
    /// Latency at each of [`PERCENTILES`].
    pub percentile: Percentiles,
}

impl ClatNs {
    fn from_hist(h: &Histogram<u64>) -> Self {
        let empty = h.is_empty();
        Self {
            min: if empty { 0 } else { h.min() },
            max: h.max(),
            mean: h.mean(),
            stddev: h.stdev(),
            n: h.len(),
            percentile: Percentiles(
                PERCENTILES
                    .iter()
                    .map(|p| {
                        (
                            format!("{p:.6}"),
                            if empty { 0 } else { h.value_at_percentile(*p) },
                        )
                    })
                    .collect(),
            ),
        }
    }
}

/// One direction of a job, as fio's `read` / `write` objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirJson {
    /// Bytes transferred.
    pub io_bytes: u64,
    /// KiB transferred.
    pub io_kbytes: u64,
    /// Bytes per second.
    pub bw_bytes: u64,
    /// KiB per second.
    pub bw: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Measured time, ms.
    pub runtime: u64,
    /// Completed I/Os.
    pub total_ios: u64,
    /// Completion latency; `null` when histograms were disabled.
    pub clat_ns: Option<ClatNs>,
}

impl DirJson {
    fn new(ios: u64, bytes: u64, elapsed: Duration, h: Option<&Histogram<u64>>) -> Self {
        let s = elapsed.as_secs_f64();
        let rate = |n: u64| if s > 0.0 { n as f64 / s } else { 0.0 };
        Self {
            io_bytes: bytes,
            io_kbytes: bytes / 1024,
            bw_bytes: rate(bytes) as u64,
            bw: (rate(bytes) / 1024.0) as u64,
            iops: rate(ios),
            runtime: elapsed.as_millis() as u64,
            total_ios: ios,
            clat_ns: h.map(ClatNs::from_hist),
        }
    }
}

/// One job (or the total) in `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobJson {
    /// Job name.
    pub jobname: String,
    /// Reads.
    pub read: DirJson,
    /// Writes.
    pub write: DirJson,
    /// Reads and writes together (not in fio; handy for mixed jobs).
    pub mixed: DirJson,
    /// Failed I/Os.
    pub errors: u64,
    /// Commands resubmitted by the host after a retryable failure.
    #[serde(default)]
    pub retries: u64,
    /// Reconnects of the host after it lost the controller.
    #[serde(default)]
    pub reconnects: u64,
    /// Measured time, ms.
    pub elapsed_ms: u64,
    /// IOPS per one-second interval, in order.
    pub iops_series: Vec<f64>,
}

impl JobJson {
    fn new(j: &JobResult) -> Self {
        Self {
            jobname: j.name.clone(),
            read: DirJson::new(
                j.read.counters.ios,
                j.read.counters.bytes,
                j.elapsed,
                j.read.histogram.as_ref(),
            ),
            write: DirJson::new(
                j.write.counters.ios,
                j.write.counters.bytes,
                j.elapsed,
                j.write.histogram.as_ref(),
            ),
            mixed: DirJson::new(j.ios(), j.bytes(), j.elapsed, j.histogram.as_ref()),
            errors: j.errors,
            retries: j.retries,
            reconnects: j.reconnects,
            elapsed_ms: j.elapsed.as_millis() as u64,
            iops_series: j
                .intervals
                .iter()
                .map(|i| (i.iops() * 10.0).round() / 10.0)
                .collect(),
        }
    }
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// `"nvmf-bench"`.
    pub tool: String,
    /// Crate version.
    pub version: String,
    /// Unix time (s) when measuring started.
    pub timestamp: u64,
    /// One entry per job.
    pub jobs: Vec<JobJson>,
    /// All jobs merged.
    pub total: JobJson,
}

impl Summary {
    /// Builds the JSON summary.
    pub fn new(jobs: &[JobResult], total: &JobResult, start: SystemTime) -> Self {
        Self {
            tool: "nvmf-bench".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            timestamp: start
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            jobs: jobs.iter().map(JobJson::new).collect(),
            total: JobJson::new(total),
        }
    }
}

// ------------------------------------------------------------ HdrHistogram

/// Writes `job`'s intervals as an HdrHistogram interval log (format 1.3,
/// V2 deflate histograms, ns). Timestamps are seconds since `start`,
/// which is written as both StartTime and BaseTime.
pub fn write_hlog<W: Write>(out: &mut W, job: &JobResult, start: SystemTime) -> Result<(), String> {
    let mut head = Vec::new();
    IntervalLogWriterBuilder::new()
        .add_comment("[Histogram log format version 1.3]")
        .add_comment(&format!(
            "[nvmf-bench job '{}': latencies in nanoseconds]",
            job.name
        ))
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut head, &mut V2DeflateSerializer::new())
        .map_err(|e| e.to_string())?;
    head.extend_from_slice(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    );
    out.write_all(&head).map_err(|e| e.to_string())?;
    let mut ser = V2DeflateSerializer::new();
    let mut w = IntervalLogWriterBuilder::new()
        .begin_log_with(out, &mut ser)
        .map_err(|e| e.to_string())?;
    for iv in &job.intervals {
        let h = iv.histogram().unwrap_or_else(crate::stats::new_histogram);
        w.write_histogram(&h, iv.start, iv.duration, None)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes `h` in the text format of HdrHistogram's
/// `outputPercentileDistribution(out, 5, scale)`: values divided by
/// `scale` (1000.0 turns ns into µs), printed with 3 decimals.
pub fn write_hgrm<W: Write>(out: &mut W, h: &Histogram<u64>, scale: f64) -> io::Result<()> {
    let d = usize::from(h.sigfig());
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / scale;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            writeln!(
                out,
                "{value:12.d$} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:12.d$} {q:2.12} {total:10}")?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:12.d$}, StdDeviation   = {:12.d$}]",
        h.mean() / scale,
        h.stdev() / scale
    )?;
    writeln!(
        out,
        "#[Max     = {:12.d$}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    )?;
    // SubBuckets: the smallest power of two covering 2 * 10^sigfig.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    )
}

// ----------------------------------------------------------------- plots

fn pct_label(x: f64) -> String {
    if x <= 1.0 {
        return "0%".into();
    }
    let p = 100.0 * (1.0 - 1.0 / x);
    let s = format!("{p:.5}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// Points (1/(1-q), latency µs) of a histogram, q < 1.
fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    h.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, v)| (1.0 / (1.0 - q), v as f64 / 1000.0))
        .collect()
}

/// Draws latency by percentile (log "nines" x-axis, µs y-axis), one
/// line per job that has a histogram.
pub fn latency_svg(path: &Path, jobs: &[JobResult]) -> Result<(), String> {
    let series: Vec<(&str, Vec<(f64, f64)>)> = jobs
        .iter()
        .filter_map(|j| {
            j.histogram
                .as_ref()
                .map(|h| (j.name.as_str(), percentile_points(h)))
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let max_x = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(100.0f64, f64::max);
    let max_x = 10f64.powf(max_x.log10().ceil());
    let max_y = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (1024, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency by percentile", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((1.0f64..max_x).log_scale(), 0.0f64..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| pct_label(*x))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Draws IOPS per one-second interval over time, one line per result.
pub fn iops_svg(path: &Path, jobs: &[&JobResult]) -> Result<(), String> {
    let point =
        |iv: &crate::stats::IntervalSnapshot| ((iv.start + iv.duration).as_secs_f64(), iv.iops());
    let max_x = jobs
        .iter()
        .flat_map(|j| j.intervals.iter().map(point))
        .fold(1.0f64, |m, p| m.max(p.0));
    let max_y = jobs
        .iter()
        .flat_map(|j| j.intervals.iter().map(point))
        .fold(1.0f64, |m, p| m.max(p.1))
        * 1.1;
    let root = SVGBackend::new(path, (1024, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("IOPS over time", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0f64..max_x, 0.0f64..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("IOPS")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, j) in jobs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = j.intervals.iter().map(point).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(j.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LiveStats, Recorder};
    use crate::workload::Op;
    use std::time::Instant;

    /// Records `n` I/Os per simulated second for `secs` seconds (a copy of
    /// the job engine's test helper, which is private to its crate).
    fn simulated(name: &str, secs: u64, n: u64, ramp: Duration) -> JobResult {
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
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    fn results() -> (Vec<JobResult>, JobResult) {
        let jobs = vec![
            simulated("randread", 3, 2000, Duration::ZERO),
            simulated("rw/mix", 2, 1000, Duration::ZERO),
        ];
        let total = JobResult::merge("total", &jobs);
        (jobs, total)
    }

    #[test]
    fn hlog_reads_back() {
        let (jobs, _) = results();
        let mut buf = Vec::new();
        write_hlog(&mut buf, &jobs[0], SystemTime::now()).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(
            text.starts_with("#[Histogram log format version 1.3]\n"),
            "{text}"
        );
        assert!(text.contains("#[BaseTime: "));
        let mut count = 0;
        let mut intervals = 0;
        for e in IntervalLogIterator::new(&buf) {
            if let LogEntry::Interval(ilh) = e.unwrap() {
                let h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut std::io::Cursor::new(base64_decode(
                        ilh.encoded_histogram(),
                    )))
                    .unwrap();
                assert_eq!(ilh.start_timestamp(), Duration::from_secs(intervals));
                count += h.len();
                intervals += 1;
            }
        }
        assert_eq!(intervals, 3);
        assert_eq!(count, jobs[0].ios());
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    #[test]
    fn hgrm_format() {
        let (jobs, _) = results();
        let mut buf = Vec::new();
        let h = jobs[0].histogram.as_ref().unwrap();
        write_hgrm(&mut buf, h, 1000.0).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first.len(), 4);
        assert_eq!(first[1], "0.000000000000");
        let last: Vec<&str> = lines[lines.len() - 4].split_whitespace().collect();
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2].parse::<u64>().unwrap(), h.len());
        assert!(lines[lines.len() - 3].starts_with("#[Mean    = "));
        assert!(lines[lines.len() - 2].ends_with(&format!("Total count    = {:>12}]", h.len())));
        assert!(lines[lines.len() - 1].contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn json_matches_summary() {
        let (jobs, total) = results();
        let dir = tempfile::tempdir().unwrap();
        let table = write_report(dir.path(), &jobs, &total, SystemTime::now()).unwrap();
        let json = fs::read_to_string(dir.path().join("summary.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["jobs"][0]["jobname"], "randread");
        assert_eq!(
            v["total"]["read"]["total_ios"].as_u64().unwrap()
                + v["total"]["write"]["total_ios"].as_u64().unwrap(),
            total.ios()
        );
        assert_eq!(v["total"]["errors"], 5);
        let s: Summary = serde_json::from_str(&json).unwrap();
        assert_eq!(s.jobs.len(), 2);
        assert_eq!(s.total.mixed.total_ios, total.ios());
        assert_eq!(
            s.jobs.iter().map(|j| j.read.io_bytes).sum::<u64>(),
            total.read.counters.bytes
        );
        let p99 = total.histogram.as_ref().unwrap().value_at_percentile(99.0);
        assert_eq!(
            v["total"]["mixed"]["clat_ns"]["percentile"]["99.000000"],
            p99
        );
        assert!(json.find("\"5.000000\"").unwrap() < json.find("\"10.000000\"").unwrap());
        // The table shows the same total IOPS and p99 (µs).
        let total_row = table.lines().find(|l| l.starts_with("total ")).unwrap();
        let cols: Vec<&str> = total_row.split_whitespace().collect();
        assert_eq!(cols[1], format!("{:.0}", s.total.mixed.iops));
        assert_eq!(cols[7], format!("{:.2}", p99 as f64 / 1000.0));
        assert!(table.contains("  read"));
        for f in [
            "summary.txt",
            "randread.hlog",
            "randread.hgrm",
            "rw_mix.hlog",
            "total.hgrm",
            "latency.svg",
            "iops.svg",
        ] {
            let len = fs::metadata(dir.path().join(f)).unwrap().len();
            assert!(len > 0, "{f} empty");
        }
        let svg = fs::read_to_string(dir.path().join("latency.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("99%"),
            "labels missing"
        );
    }

    #[test]
    fn report_without_histograms() {
        let t0 = std::time::Instant::now();
        let mut r = crate::stats::Recorder::new(
            "nohist",
            false,
            crate::stats::LiveStats::new(),
            t0,
            Duration::ZERO,
        );
        r.record(crate::workload::Op::Read, 100, 4096);
        let j = r.finish(t0 + Duration::from_secs(1));
        let total = JobResult::merge("total", std::slice::from_ref(&j));
        let dir = tempfile::tempdir().unwrap();
        let table = write_report(dir.path(), &[j], &total, SystemTime::now()).unwrap();
        assert!(table.contains("nohist"));
        assert!(!dir.path().join("nohist.hlog").exists());
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join("summary.json")).unwrap())
                .unwrap();
        assert!(v["jobs"][0]["read"]["clat_ns"].is_null());
        assert!(fs::metadata(dir.path().join("latency.svg")).unwrap().len() > 0);
    }

    #[test]
    fn labels_and_stems() {
        assert_eq!(pct_label(10.0), "90%");
        assert_eq!(pct_label(1000.0), "99.9%");
        assert_eq!(file_stem("a/b c"), "a_b_c");
        assert_eq!(file_stem(".."), "job..");
    }
}
