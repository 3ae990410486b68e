//! Prometheus text exposition on a loopback address (`GET /metrics`):
//! counters per namespace and per reactor, and latency summaries computed
//! from the engine's histograms. Served by `tiny_http` on its own thread;
//! each scrape reads the same figures as `nvmf_get_stats`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use target_core::nvmf::latency::LatencyHistogram;

use crate::service::Service;
use crate::stats;

/// A running metrics endpoint.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Listens on `addr`, which must be a loopback address (the figures
    /// name subsystems and hosts; they are not for the network).
    pub fn start(addr: &str, svc: Arc<Service>) -> Result<Self, String> {
        let sa: SocketAddr = addr
            .parse()
            .map_err(|e| format!("metrics address {addr}: {e}"))?;
        if !sa.ip().is_loopback() {
            return Err(format!(
                "metrics address {addr}: only loopback addresses are served"
            ));
        }
        let server = tiny_http::Server::http(sa).map_err(|e| format!("metrics {addr}: {e}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("metrics {addr}: not an IP listener"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(200)) else {
                        continue;
                    };
                    let path = req.url().split('?').next().unwrap_or("");
                    let resp = if *req.method() == tiny_http::Method::Get && path == "/metrics" {
                        let ct = tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"text/plain; version=0.0.4"[..],
                        );
                        let r = tiny_http::Response::from_string(render(&svc));
                        match ct {
                            Ok(h) => r.with_header(h),
                            Err(()) => r,
                        }
                    } else {
                        tiny_http::Response::from_string("only GET /metrics is served\n")
                            .with_status_code(404)
                    };
                    let _ = req.respond(resp);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port is resolved when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn summary(out: &mut String, name: &str, labels: &str, h: &LatencyHistogram) {
    for q in [0.5, 0.9, 0.99, 0.999] {
        let _ = writeln!(
            out,
            "{name}{{{labels},quantile=\"{q}\"}} {}",
            h.value_at_quantile(q) as f64 / 1e9
        );
    }
    let _ = writeln!(
        out,
        "{name}_sum{{{labels}}} {}",
        h.mean() * h.len() as f64 / 1e9
    );
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

/// The exposition text.
pub fn render(svc: &Service) -> String {
    let t = svc.target();
    let mut out = String::new();
    let nss = stats::namespaces(t);
    type Getter = fn(&stats::NsFigures) -> u64;
    let ns_counters: [(&str, &str, Getter); 6] = [
        ("nvmf_namespace_reads_total", "Read commands", |n| {
            n.totals.reads
        }),
        ("nvmf_namespace_writes_total", "Write commands", |n| {
            n.totals.writes
        }),
        (
            "nvmf_namespace_other_commands_total",
            "Flush, write zeroes, deallocate",
            |n| n.totals.others,
        ),
        ("nvmf_namespace_read_bytes_total", "Bytes read", |n| {
            n.totals.bytes_read
        }),
        ("nvmf_namespace_written_bytes_total", "Bytes written", |n| {
            n.totals.bytes_written
        }),
        ("nvmf_namespace_errors_total", "Commands that failed", |n| {
            n.totals.errors
        }),
    ];
    let labels = |n: &stats::NsFigures| {
        format!(
            "subsystem=\"{}\",nsid=\"{}\",backend=\"{}\"",
            esc(&n.nqn),
            n.nsid,
            esc(&n.backend)
        )
    };
    for (name, help, get) in ns_counters {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
        for n in &nss {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(n), get(n));
        }
    }
    let name = "nvmf_namespace_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Command latency from fetch to backend completion.\n# TYPE {name} summary"
    );
    for n in &nss {
        if let Some(h) = &n.latency {
            summary(&mut out, name, &labels(n), h);
        }
    }
    let rs = stats::reactors(t);
    let mut names: Vec<&str> = Vec::new();
    for r in &rs {
        for (k, _) in &r.counters {
            if !names.contains(k) {
                names.push(k);
            }
        }
    }
    for k in names {
        let gauge = k == "qpairs";
        let name = if gauge {
            "nvmf_reactor_qpairs".to_owned()
        } else {
            format!("nvmf_reactor_{k}_total")
        };
        let _ = writeln!(
            out,
            "# HELP {name} Reactor {}.\n# TYPE {name} {}",
            k.replace('_', " "),
            if gauge { "gauge" } else { "counter" }
        );
        for r in &rs {
            if let Some((_, v)) = r.counters.iter().find(|(n, _)| *n == k) {
                let _ = writeln!(
                    out,
                    "{name}{{reactor=\"{}\",core=\"{}\"}} {v}",
                    r.id,
                    r.core.map_or("-".into(), |c| c.to_string())
                );
            }
        }
    }
    let name = "nvmf_reactor_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Command latency over every namespace of a reactor.\n# TYPE {name} summary"
    );
    for r in &rs {
        if let Some(h) = &r.latency {
            summary(&mut out, name, &format!("reactor=\"{}\"", r.id), h);
        }
    }
    let name = "nvmf_subsystem_controllers";
    let _ = writeln!(out, "# HELP {name} Live controllers.\n# TYPE {name} gauge");
    for s in t.nvmf().engine().subsystems() {
        let _ = writeln!(
            out,
            "{name}{{subsystem=\"{}\"}} {}",
            esc(&s.nqn),
            s.state().controllers.len()
        );
    }
    out
}
