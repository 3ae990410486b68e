//! The live status line: once a second, IOPS, MiB/s and p99 of the last
//! interval, and elapsed/total time.
//!
//! On a terminal it is an indicatif bar redrawn in place; otherwise (a log
//! file, CI) one plain line per update. Both go to stderr, so `--json`
//! output on stdout stays clean. The runner owns the [`Progress`] on its
//! control thread and calls [`Progress::update`] about once a second; the
//! numbers come from the jobs' [`LiveStats`], never from their recorders.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::{LiveSnapshot, LiveStats};

/// How to show progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Always the indicatif bar.
    Bar,
    /// Always plain lines.
    Plain,
    /// Nothing (`--quiet`).
    Hidden,
}

enum Sink {
    Bar(ProgressBar),
    Plain(Box<dyn Write + Send>),
    Hidden,
}

/// The progress display; see the module docs.
pub struct Progress {
    live: Vec<Arc<LiveStats>>,
    total: Option<Duration>,
    start: Instant,
    last: Option<(Instant, LiveSnapshot)>,
    sink: Sink,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("jobs", &self.live.len())
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// Sums the jobs' counters; p99 is the worst job's (percentiles of
/// different jobs cannot be merged from atomics).
fn sum(live: &[Arc<LiveStats>]) -> LiveSnapshot {
    live.iter().map(|l| l.snapshot()).fold(
        LiveSnapshot {
            measuring: true,
            done: true,
            ..Default::default()
        },
        |a, s| LiveSnapshot {
            ios: a.ios + s.ios,
            bytes: a.bytes + s.bytes,
            errors: a.errors + s.errors,
            p99_ns: a.p99_ns.max(s.p99_ns),
            measuring: a.measuring && s.measuring,
            done: a.done && s.done,
            retries: a.retries + s.retries,
            reconnects: a.reconnects + s.reconnects,
        },
    )
}

fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

impl Progress {
    /// A display for the jobs publishing into `live`, started at `now`.
    /// `total` is the expected run time including ramp (`None` when the
    /// jobs stop on an I/O count).
    pub fn new(
        live: Vec<Arc<LiveStats>>,
        total: Option<Duration>,
        mode: ProgressMode,
        now: Instant,
    ) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let sink = match mode {
            ProgressMode::Bar => {
                let bar = ProgressBar::with_draw_target(
                    total.map(|t| t.as_secs().max(1)),
                    ProgressDrawTarget::stderr(),
                );
                let template = if total.is_some() {
                    "{bar:24.cyan/blue} {msg}"
                } else {
                    "{spinner} {msg}"
                };
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                Sink::Bar(bar)
            }
            ProgressMode::Plain => Sink::Plain(Box::new(std::io::stderr())),
            _ => Sink::Hidden,
        };
        Self {
            live,
            total,
            start: now,
            last: None,
            sink,
        }
    }

    /// Plain lines into `out` instead of stderr (tests, log files).
    pub fn with_writer(mut self, out: Box<dyn Write + Send>) -> Self {
        self.sink = Sink::Plain(out);
        self
    }

    /// Computes the status at `now` from the change since the previous
    /// call, and shows it. Returns the line (also when hidden).
    pub fn update(&mut self, now: Instant) -> String {
        let cur = sum(&self.live);
        let (iops, bw) = match self.last {
            Some((t, prev)) => {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                if dt > 0.0 {
                    (
                        (cur.ios - prev.ios.min(cur.ios)) as f64 / dt,
                        (cur.bytes - prev.bytes.min(cur.bytes)) as f64 / dt,
                    )
                } else {
                    (0.0, 0.0)
                }
            }
            None => {
                let dt = now.saturating_duration_since(self.start).as_secs_f64();
                if dt > 0.0 {
                    (cur.ios as f64 / dt, cur.bytes as f64 / dt)
                } else {
                    (0.0, 0.0)
                }
            }
        };
        self.last = Some((now, cur));
        let elapsed = now.saturating_duration_since(self.start);
        let time = match self.total {
            Some(t) => format!("{:>4}s/{}s", elapsed.as_secs(), t.as_secs()),
            None => format!("{:>4}s", elapsed.as_secs()),
        };
        let p99 = if cur.p99_ns > 0 {
            format!("{:.1} µs", cur.p99_ns as f64 / 1000.0)
        } else {
            "-".into()
        };
        let line = format!(
            "[{time}]{} {:>8} IOPS {:>9.1} MiB/s  p99 {p99}  errors {}",
            if cur.measuring { "" } else { " ramp" },
            fmt_count(iops),
            bw / (1024.0 * 1024.0),
            cur.errors
        );
        match &mut self.sink {
            Sink::Bar(bar) => {
                bar.set_position(elapsed.as_secs());
                bar.set_message(line.clone());
            }
            Sink::Plain(w) => {
                let _ = writeln!(w, "{line}");
            }
            Sink::Hidden => {}
        }
        line
    }

    /// Removes the bar (the summary follows) or flushes the plain output.
    pub fn finish(self) {
        match self.sink {
            Sink::Bar(bar) => bar.finish_and_clear(),
            Sink::Plain(mut w) => {
                let _ = w.flush();
            }
            Sink::Hidden => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use crate::workload::Op;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_show_rates() {
        let t0 = Instant::now();
        let live = LiveStats::new();
        let mut r = Recorder::new("j", true, live.clone(), t0, Duration::ZERO);
        let out = Shared::default();
        let mut p = Progress::new(
            vec![live],
            Some(Duration::from_secs(10)),
            ProgressMode::Hidden,
            t0,
        )
        .with_writer(Box::new(out.clone()));
        for _ in 0..2048 {
            r.record(Op::Read, 20_000, 1 << 20);
        }
        r.tick(t0 + Duration::from_secs(1));
        let line = p.update(t0 + Duration::from_secs(1));
        assert!(line.contains("2.0k IOPS"), "{line}");
        assert!(line.contains("2048.0 MiB/s"), "{line}");
        assert!(line.contains("p99 20.0 µs"), "{line}");
        assert!(line.starts_with("[   1s/10s]"), "{line}");
        let line = p.update(t0 + Duration::from_secs(2));
        assert!(line.contains("  0 IOPS"), "{line}");
        p.finish();
        assert_eq!(
            String::from_utf8(out.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .count(),
            2
        );
    }

    #[test]
    fn hidden_bar_does_not_panic() {
        let t0 = Instant::now();
        let mut p = Progress::new(vec![LiveStats::new()], None, ProgressMode::Bar, t0);
        assert!(p.update(t0 + Duration::from_secs(1)).contains(" ramp "));
        p.finish();
    }
}
