//! Figures the control socket and the metrics endpoint share: namespace and
//! reactor counters, and latency percentiles computed here from the
//! engine's histograms (clients never need an HdrHistogram library to read
//! a p99).

use serde_json::{Value, json};
use target_core::nvmf::latency::{LatencyHistogram, PERCENTILES};
use target_facade::Target;

/// Latency summary of a histogram in nanoseconds (`null` when absent).
pub fn latency_json(h: Option<&LatencyHistogram>) -> Value {
    let Some(h) = h else { return Value::Null };
    let mut m = serde_json::Map::new();
    m.insert("count".into(), json!(h.len()));
    if h.is_empty() {
        return Value::Object(m);
    }
    m.insert("min".into(), json!(h.min()));
    m.insert("mean".into(), json!(h.mean().round() as u64));
    for (label, q) in PERCENTILES {
        m.insert(label.into(), json!(h.value_at_quantile(q)));
    }
    Value::Object(m)
}

/// One namespace's figures.
#[derive(Debug)]
pub struct NsFigures {
    /// Subsystem NQN.
    pub nqn: String,
    /// NSID.
    pub nsid: u32,
    /// Backend name.
    pub backend: String,
    /// Counters.
    pub totals: target_core::nvmf::stats::NsIoTotals,
    /// Latency (tracking on).
    pub latency: Option<LatencyHistogram>,
}

/// Every namespace's counters and latency.
pub fn namespaces(t: &Target) -> Vec<NsFigures> {
    let mut out = Vec::new();
    for s in t.nvmf().engine().subsystems() {
        let nss: Vec<_> = s.state().namespaces.values().cloned().collect();
        for ns in nss {
            let latency = t.nvmf().ns_latency(&s.nqn, ns.nsid, false).ok().flatten();
            out.push(NsFigures {
                nqn: s.nqn.clone(),
                nsid: ns.nsid,
                backend: ns.bdev.info().name.clone(),
                totals: ns.totals(),
                latency,
            });
        }
    }
    out
}

/// One reactor's figures.
#[derive(Debug)]
pub struct ReactorFigures {
    /// Reactor (and poll group) index.
    pub id: usize,
    /// Pinned core.
    pub core: Option<usize>,
    /// Counters, by name.
    pub counters: Vec<(&'static str, u64)>,
    /// Latency of every namespace on this reactor.
    pub latency: Option<LatencyHistogram>,
}

/// Every reactor's counters and latency.
pub fn reactors(t: &Target) -> Vec<ReactorFigures> {
    use std::sync::atomic::Ordering::Relaxed;
    let lat = t.nvmf().reactor_latency().unwrap_or_default();
    let rs = t.nvmf().reactor_stats();
    let pgs = t.nvmf().engine().pgs();
    pgs.iter()
        .map(|h| {
            let r = rs.iter().find(|(id, _, _)| *id == h.id);
            let mut counters = vec![
                ("commands", h.stats.commands.load(Relaxed)),
                ("completions", h.stats.completions.load(Relaxed)),
                ("responses", h.stats.responses.load(Relaxed)),
                ("late_completions", h.stats.late_completions.load(Relaxed)),
                ("backend_resets", h.stats.backend_resets.load(Relaxed)),
                ("qpairs_destroyed", h.stats.qpairs_destroyed.load(Relaxed)),
                (
                    "controllers_failed",
                    h.stats.controllers_failed.load(Relaxed),
                ),
                ("qpairs", h.qpairs.load(Relaxed) as u64),
            ];
            if let Some((_, _, st)) = r {
                counters.extend([
                    ("busy_polls", st.busy_polls.load(Relaxed)),
                    ("idle_polls", st.idle_polls.load(Relaxed)),
                    ("messages", st.messages.load(Relaxed)),
                ]);
            }
            ReactorFigures {
                id: h.id,
                core: r.and_then(|(_, c, _)| *c),
                counters,
                latency: lat.get(h.id).cloned().flatten(),
            }
        })
        .collect()
}

/// The `nvmf_get_stats` result.
pub fn stats_json(t: &Target) -> Value {
    let nss: Vec<Value> = namespaces(t)
        .into_iter()
        .map(|n| {
            let mut v = serde_json::to_value(n.totals).unwrap_or_else(|_| json!({}));
            v["subsystem"] = json!(n.nqn);
            v["nsid"] = json!(n.nsid);
            v["backend"] = json!(n.backend);
            v["latency_ns"] = latency_json(n.latency.as_ref());
            v
        })
        .collect();
    let rs: Vec<Value> = reactors(t)
        .into_iter()
        .map(|r| {
            let mut v = json!({"id": r.id, "core": r.core});
            for (k, c) in r.counters {
                v[k] = json!(c);
            }
            v["latency_ns"] = latency_json(r.latency.as_ref());
            v
        })
        .collect();
    json!({"namespaces": nss, "reactors": rs})
}
