//! The control methods. Names follow SPDK's JSON-RPC (`bdev_*`, `nvmf_*`,
//! `framework_*`) so SPDK users find their way; parameters are by name and
//! unknown ones are refused.
//!
//! Every change is checked the way a config file is: the running config is
//! edited as TOML and parsed again with the config parser, so a request
//! gets exactly the validation (and the key-naming messages) a file would,
//! and the running config always loads again. Only then is the engine
//! changed, and only when that succeeds is the new config kept.

use std::path::Path;

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use target_core::config::TargetConfig;
use target_core::nvmf::TargetError;

use crate::rpc::proto::{self, RpcError};
use crate::service::{Service, lock, start_err};
use crate::stats;

/// A method: name, one line of help, and the function.
pub struct Method {
    /// Name clients call.
    pub name: &'static str,
    /// What it does (and its parameters).
    pub help: &'static str,
    f: fn(&Service, Value) -> Result<Value, RpcError>,
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every method, in the order `rpc_get_methods` lists them.
pub const METHODS: &[Method] = &[
    Method {
        name: "rpc_get_methods",
        help: "list the methods",
        f: rpc_get_methods,
    },
    Method {
        name: "target_get_info",
        help: "version, uptime, reactors, stopping",
        f: target_get_info,
    },
    Method {
        name: "framework_get_reactors",
        help: "reactors: core, poll and command counters, queue pairs",
        f: framework_get_reactors,
    },
    Method {
        name: "bdev_get_bdevs",
        help: "backends: kind, geometry, which namespaces use them",
        f: bdev_get_bdevs,
    },
    Method {
        name: "bdev_create",
        help: "create a backend; params are a [[backend]] table (name, kind, ...)",
        f: bdev_create,
    },
    Method {
        name: "bdev_delete",
        help: "delete an unused backend {name}",
        f: bdev_delete,
    },
    Method {
        name: "nvmf_get_subsystems",
        help: "subsystems with hosts, namespaces and controller counts",
        f: nvmf_get_subsystems,
    },
    Method {
        name: "nvmf_create_subsystem",
        help: "create a subsystem {nqn, serial?, model?, max_namespaces?, allow_any_host?, hosts?, listen? = true}",
        f: nvmf_create_subsystem,
    },
    Method {
        name: "nvmf_delete_subsystem",
        help: "delete a subsystem {nqn}: controllers drained, namespaces removed",
        f: nvmf_delete_subsystem,
    },
    Method {
        name: "nvmf_subsystem_add_host",
        help: "allow a host {nqn, host}",
        f: nvmf_subsystem_add_host,
    },
    Method {
        name: "nvmf_subsystem_remove_host",
        help: "disallow a host {nqn, host} (live controllers stay)",
        f: nvmf_subsystem_remove_host,
    },
    Method {
        name: "nvmf_subsystem_add_ns",
        help: "add a namespace {nqn, backend, nsid?, read_only?, nguid?, uuid?, latency_histogram?}; hosts get a namespace-change event",
        f: nvmf_subsystem_add_ns,
    },
    Method {
        name: "nvmf_subsystem_remove_ns",
        help: "remove a namespace {nqn, nsid} after draining its I/O; hosts get a namespace-change event",
        f: nvmf_subsystem_remove_ns,
    },
    Method {
        name: "nvmf_get_namespaces",
        help: "namespaces {nqn?}",
        f: nvmf_get_namespaces,
    },
    Method {
        name: "nvmf_get_controllers",
        help: "controllers {nqn?}: host, state, queues, keep-alive",
        f: nvmf_get_controllers,
    },
    Method {
        name: "nvmf_get_listeners",
        help: "listeners: transport, subsystem, address (tcp: bound address, settings, connections)",
        f: nvmf_get_listeners,
    },
    Method {
        name: "nvmf_subsystem_add_listener",
        help: "add a listener {nqn (or \"*\"), transport = \"tcp\", address, in_capsule_data_size?, max_queue_depth?, header_digest?, data_digest?}",
        f: nvmf_subsystem_add_listener,
    },
    Method {
        name: "nvmf_subsystem_remove_listener",
        help: "remove a listener {nqn, transport = \"tcp\", address?}; live connections stay",
        f: nvmf_subsystem_remove_listener,
    },
    Method {
        name: "nvmf_get_qpairs",
        help: "queue pairs {nqn?}: controller, QID, reactor",
        f: nvmf_get_qpairs,
    },
    Method {
        name: "nvmf_reset_controller",
        help: "reset a controller {nqn, cntlid}: I/O queues drained and deleted, CSTS.RDY cleared",
        f: nvmf_reset_controller,
    },
    Method {
        name: "nvmf_delete_controller",
        help: "delete a controller {nqn, cntlid} after draining it",
        f: nvmf_delete_controller,
    },
    Method {
        name: "nvmf_get_stats",
        help: "per-namespace and per-reactor I/Os, bytes, errors, latency percentiles (ns)",
        f: nvmf_get_stats,
    },
    Method {
        name: "nvmf_namespace_enable_histogram",
        help: "turn a namespace's latency histogram on or off {nqn, nsid, enable}",
        f: nvmf_namespace_enable_histogram,
    },
    Method {
        name: "nvmf_get_histogram",
        help: "a namespace's latency histogram {nqn, nsid, reset? = false} as base64 HdrHistogram V2, plus percentiles",
        f: nvmf_get_histogram,
    },
    Method {
        name: "job_get_jobs",
        help: "host jobs: state, I/Os, errors, IOPS, verify result",
        f: job_get_jobs,
    },
    Method {
        name: "save_config",
        help: "the running config as TOML {path?}; with a path it is also written there",
        f: save_config,
    },
];

/// Runs a method.
pub fn dispatch(svc: &Service, method: &str, params: Value) -> Result<Value, RpcError> {
    let m = METHODS.iter().find(|m| m.name == method).ok_or_else(|| {
        RpcError::new(
            proto::METHOD_NOT_FOUND,
            format!("method not found: {method} (rpc_get_methods lists them)"),
        )
    })?;
    (m.f)(svc, params)
}

/// Maps an engine error to a JSON-RPC error.
pub fn target_err(e: TargetError) -> RpcError {
    let code = match &e {
        TargetError::Exists(_) => proto::ALREADY_EXISTS,
        TargetError::NotFound(_) => proto::NOT_FOUND,
        TargetError::Invalid { .. } => proto::INVALID_PARAMS,
        TargetError::InUse(_) => proto::IN_USE,
        TargetError::Stopping => proto::STOPPING,
        _ => proto::OPERATION_FAILED,
    };
    RpcError::new(code, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(proto::INTERNAL_ERROR, e.to_string())
}

fn params<T: DeserializeOwned>(p: Value) -> Result<T, RpcError> {
    let p = if p.is_null() { json!({}) } else { p };
    serde_json::from_value(p).map_err(|e| RpcError::params(format!("invalid params: {e}")))
}

fn object(p: Value) -> Result<Map<String, Value>, RpcError> {
    match p {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(RpcError::params("params must be an object")),
    }
}

fn take_str(m: &mut Map<String, Value>, key: &str) -> Result<String, RpcError> {
    match m.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RpcError::params(format!(
            "invalid params: {key} must be a string"
        ))),
        None => Err(RpcError::params(format!(
            "invalid params: missing field `{key}`"
        ))),
    }
}

/// A JSON object as a TOML table (nulls dropped: TOML has none).
fn toml_table(m: Map<String, Value>) -> Result<toml::Table, RpcError> {
    let m: Map<String, Value> = m.into_iter().filter(|(_, v)| !v.is_null()).collect();
    toml::Table::try_from(Value::Object(m))
        .map_err(|e| RpcError::params(format!("invalid params: {e}")))
}

fn array<'a>(t: &'a mut toml::Table, key: &str) -> Result<&'a mut Vec<toml::Value>, RpcError> {
    t.entry(key)
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| internal(format!("config key {key} is not an array")))
}

fn subsystem_table<'a>(t: &'a mut toml::Table, nqn: &str) -> Result<&'a mut toml::Table, RpcError> {
    array(t, "subsystem")?
        .iter_mut()
        .filter_map(toml::Value::as_table_mut)
        .find(|s| s.get("nqn").and_then(toml::Value::as_str) == Some(nqn))
        .ok_or_else(|| RpcError::new(proto::NOT_FOUND, format!("subsystem {nqn} not found")))
}

impl Service {
    /// Edits the running config as TOML and parses it again: the new
    /// config, or the config parser's complaint as invalid params.
    fn edit(
        &self,
        f: impl FnOnce(&mut toml::Table) -> Result<(), RpcError>,
    ) -> Result<TargetConfig, RpcError> {
        let text = lock(&self.running).to_toml_string().map_err(internal)?;
        let mut t: toml::Table = toml::from_str(&text).map_err(internal)?;
        f(&mut t)?;
        let text = toml::to_string(&t).map_err(internal)?;
        TargetConfig::from_str(&text, Path::new("<rpc>")).map_err(|e| {
            let code = if e.reason.contains("already exists") || e.reason.contains("duplicate") {
                proto::ALREADY_EXISTS
            } else {
                proto::INVALID_PARAMS
            };
            RpcError::new(code, format!("{}: {}", e.key, e.reason))
        })
    }

    fn commit(&self, cfg: TargetConfig) {
        *lock(&self.running) = cfg;
    }
}

// ---- methods ---------------------------------------------------------------

fn rpc_get_methods(_: &Service, p: Value) -> Result<Value, RpcError> {
    let _: Empty = params(p)?;
    Ok(Value::Array(
        METHODS
            .iter()
            .map(|m| json!({"name": m.name, "help": m.help}))
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByNqn {
    #[serde(default)]
    nqn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnNsid {
    nqn: String,
    nsid: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnCntlid {
    nqn: String,
    cntlid: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnHost {
    nqn: String,
    host: String,
}

fn target_get_info(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let _: Empty = params(p)?;
    let cfg = lock(&svc.running);
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": svc.started.elapsed().as_secs(),
        "config": svc.origin.display().to_string(),
        "reactor_cores": cfg.reactors.cores.get_ref(),
        "rpc_socket": cfg.target.rpc_socket,
        "metrics_addr": cfg.target.metrics_addr.as_ref().map(|a| a.get_ref().clone()),
        "stopping": svc.is_stopping(),
    }))
}

fn framework_get_reactors(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let _: Empty = params(p)?;
    Ok(Value::Array(
        stats::reactors(&svc.target)
            .into_iter()
            .map(|r| {
                let mut v = json!({"id": r.id, "core": r.core});
                for (k, c) in r.counters {
                    v[k] = json!(c);
                }
                v
            })
            .collect(),
    ))
}

fn bdev_get_bdevs(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let _: Empty = params(p)?;
    let mut users: Vec<(String, String)> = Vec::new();
    for s in svc.target.nvmf().engine().subsystems() {
        for (nsid, ns) in &s.state().namespaces {
            users.push((ns.bdev.info().name.clone(), format!("{}/{nsid}", s.nqn)));
        }
    }
    let mut out: Vec<Value> = svc
        .target
        .nvmf()
        .bdevs()
        .into_iter()
        .map(|(name, b)| {
            let i = b.info();
            let used: Vec<&String> = users
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, u)| u)
                .collect();
            json!({
                "name": name,
                "kind": i.kind,
                "state": "online",
                "block_size": i.block_size,
                "num_blocks": i.num_blocks,
                "size_mib": (i.num_blocks * i.block_size as u64) >> 20,
                "namespaces": used,
            })
        })
        .collect();
    // Backends whose NVMe device was hot-removed: no longer usable (not
    // registered, no namespace), listed so an operator sees what happened.
    for r in svc.target.hot_removals() {
        for name in &r.backends {
            out.push(json!({
                "name": name,
                "kind": Value::Null,
                "state": "removed",
                "pci_addr": r.pci_addr,
                "serial": r.serial,
                "namespaces": Vec::<String>::new(),
                "removed_namespaces": r
                    .namespaces
                    .iter()
                    .map(|(q, n)| format!("{q}/{n}"))
                    .collect::<Vec<_>>(),
                "device_released": r.released.is_ok(),
                "removal_ms": r.took.as_millis() as u64,
            }));
        }
    }
    Ok(Value::Array(out))
}

fn bdev_create(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let mut m = object(p)?;
    let name = take_str(&mut m, "name")?;
    m.insert("name".into(), json!(name));
    let table = toml_table(m)?;
    let _g = svc.begin_change()?;
    let cfg = svc.edit(|t| {
        array(t, "backend")?.push(toml::Value::Table(table));
        Ok(())
    })?;
    let b = cfg
        .backends
        .iter()
        .find(|b| *b.name.get_ref() == name)
        .ok_or_else(|| internal("new backend missing from the config"))?;
    svc.target
        .add_backend(b, cfg.reactors.cores.get_ref().len())
        .map_err(start_err)?;
    svc.commit(cfg);
    Ok(json!({"name": name}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

fn bdev_delete(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let ByName { name } = params(p)?;
    let _g = svc.begin_change()?;
    let running = svc.running_config();
    if !running.backends.iter().any(|b| *b.name.get_ref() == name) {
        return Err(RpcError::new(
            proto::NOT_FOUND,
            format!("backend {name} not found"),
        ));
    }
    for s in &running.subsystems {
        for ns in &s.namespaces {
            if *ns.backend.get_ref() == name {
                return Err(RpcError::new(
                    proto::IN_USE,
                    format!(
                        "backend {name} is namespace {} of {}; remove the namespace first",
                        ns.nsid.as_ref().map_or(0, |n| *n.get_ref()),
                        s.nqn.get_ref()
                    ),
                ));
            }
        }
    }
    if let Some(user) = running
        .backends
        .iter()
        .find(|b| b.base.as_ref().is_some_and(|x| *x.get_ref() == name))
    {
        return Err(RpcError::new(
            proto::IN_USE,
            format!(
                "backend {name} is the base of {}; delete that first",
                user.name.get_ref()
            ),
        ));
    }
    let cfg = svc.edit(|t| {
        array(t, "backend")?.retain(|b| b.get("name").and_then(toml::Value::as_str) != Some(&name));
        Ok(())
    })?;
    svc.target.nvmf().remove_bdev(&name).map_err(target_err)?;
    svc.commit(cfg);
    Ok(json!({"name": name}))
}

fn nvmf_get_subsystems(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let _: Empty = params(p)?;
    let listening: Vec<String> = lock(&svc.running)
        .listeners
        .iter()
        .map(|l| l.subsystem.get_ref().clone())
        .collect();
    Ok(Value::Array(
        svc.target
            .nvmf()
            .engine()
            .subsystems()
            .into_iter()
            .map(|s| {
                let st = s.state();
                json!({
                    "nqn": s.nqn,
                    "serial": s.serial,
                    "model": s.model,
                    "max_namespaces": s.max_namespaces,
                    "allow_any_host": st.allow_any_host,
                    "hosts": st.hosts,
                    "namespaces": st.namespaces.keys().collect::<Vec<_>>(),
                    "controllers": st.controllers.len(),
                    "listening": listening.iter().any(|l| l == "*" || *l == s.nqn),
                })
            })
            .collect(),
    ))
}

fn listener_json(l: &target_core::config::ListenerConfig, svc: &Service) -> Value {
    let mut v = json!({
        "transport": l.transport.get_ref(),
        "subsystem": l.subsystem.get_ref(),
    });
    if l.transport.get_ref() == "tcp" {
        let c = target_facade::tcp_listener_config(l);
        let bound = svc
            .target
            .tcp()
            .listeners()
            .into_iter()
            .find(|i| i.config.address == c.address)
            .map(|i| i.bound.to_string());
        v["address"] = json!(c.address);
        v["bound"] = json!(bound);
        v["in_capsule_data_size"] = json!(c.in_capsule_data_size);
        v["max_queue_depth"] = json!(c.max_queue_depth);
        v["header_digest"] = json!(c.header_digest);
        v["data_digest"] = json!(c.data_digest);
    }
    v
}

fn nvmf_get_listeners(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let _: Empty = params(p)?;
    let running = lock(&svc.running).listeners.clone();
    let list: Vec<Value> = running.iter().map(|l| listener_json(l, svc)).collect();
    Ok(json!({
        "listeners": list,
        "tcp_connections": svc.target.tcp().connections(),
        "tcp_accepted": svc.target.tcp().accepted(),
    }))
}

fn nvmf_subsystem_add_listener(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let mut m = object(p)?;
    let nqn = take_str(&mut m, "nqn")?;
    if !m.contains_key("transport") {
        m.insert("transport".into(), json!("tcp"));
    }
    m.insert("subsystem".into(), json!(nqn));
    let table = toml_table(m)?;
    let _g = svc.begin_change()?;
    let before = lock(&svc.running).listeners.len();
    let cfg = svc.edit(|t| {
        array(t, "listener")?.push(toml::Value::Table(table));
        Ok(())
    })?;
    let l = cfg
        .listeners
        .get(before)
        .ok_or_else(|| internal("new listener missing from the config"))?;
    if l.transport.get_ref() == "tcp" {
        let c = target_facade::tcp_listener_config(l);
        if cfg.listeners[..before].iter().any(|o| {
            o.transport.get_ref() == "tcp"
                && target_facade::tcp_listener_config(o).address == c.address
        }) {
            return Err(RpcError::new(
                proto::ALREADY_EXISTS,
                format!("a listener on {} exists already", c.address),
            ));
        }
        svc.target
            .tcp()
            .add_listener(c)
            .map_err(|e| RpcError::new(proto::OPERATION_FAILED, e.to_string()))?;
    } else {
        svc.target.transport().listen(&nqn);
    }
    let out = listener_json(l, svc);
    svc.commit(cfg);
    Ok(out)
}

fn nvmf_subsystem_remove_listener(svc: &Service, p: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        nqn: String,
        #[serde(default)]
        transport: Option<String>,
        #[serde(default)]
        address: Option<String>,
    }
    let P {
        nqn,
        transport,
        address,
    } = params(p)?;
    let transport = transport.unwrap_or_else(|| "tcp".into());
    let _g = svc.begin_change()?;
    let matches = |l: &toml::Value| {
        l.get("subsystem").and_then(toml::Value::as_str) == Some(&nqn)
            && l.get("transport").and_then(toml::Value::as_str) == Some(&transport)
            && (address.is_none()
                || l.get("address").and_then(toml::Value::as_str) == address.as_deref())
    };
    let mut removed: Vec<String> = Vec::new();
    let cfg = svc.edit(|t| {
        let ls = array(t, "listener")?;
        for l in ls.iter().filter(|l| matches(l)) {
            removed.push(
                l.get("address")
                    .and_then(toml::Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            );
        }
        if removed.is_empty() {
            return Err(RpcError::new(
                proto::NOT_FOUND,
                format!("no {transport} listener for {nqn}"),
            ));
        }
        ls.retain(|l| !matches(l));
        Ok(())
    })?;
    if transport == "tcp" {
        for a in &removed {
            svc.target.tcp().remove_listener(a);
        }
    } else {
        svc.target.transport().unlisten(&nqn);
    }
    svc.commit(cfg);
    Ok(json!({"nqn": nqn, "transport": transport, "removed": removed}))
}

fn nvmf_create_subsystem(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let mut m = object(p)?;
    let nqn = take_str(&mut m, "nqn")?;
    let listen = match m.remove("listen") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(RpcError::params("invalid params: listen must be a boolean")),
    };
    if m.contains_key("namespace") || m.contains_key("namespaces") {
        return Err(RpcError::params(
            "invalid params: add namespaces with nvmf_subsystem_add_ns",
        ));
    }
    m.insert("nqn".into(), json!(nqn));
    let table = toml_table(m)?;
    let _g = svc.begin_change()?;
    if svc.target.nvmf().subsystem(&nqn).is_ok() {
        return Err(RpcError::new(
            proto::ALREADY_EXISTS,
            format!("subsystem {nqn} already exists"),
        ));
    }
    let cfg = svc.edit(|t| {
        array(t, "subsystem")?.push(toml::Value::Table(table));
        let wildcard = array(t, "listener")?.iter().any(|l| {
            l.get("subsystem").and_then(toml::Value::as_str) == Some("*")
                && l.get("transport").and_then(toml::Value::as_str) == Some("loop")
        });
        if listen && !wildcard {
            let mut l = toml::Table::new();
            l.insert("transport".into(), "loop".into());
            l.insert("subsystem".into(), nqn.clone().into());
            array(t, "listener")?.push(toml::Value::Table(l));
        }
        Ok(())
    })?;
    let s = cfg
        .subsystems
        .iter()
        .find(|s| *s.nqn.get_ref() == nqn)
        .ok_or_else(|| internal("new subsystem missing from the config"))?;
    svc.target.add_subsystem(s).map_err(start_err)?;
    if listen {
        svc.target.transport().listen(&nqn);
    }
    svc.commit(cfg);
    Ok(json!({"nqn": nqn}))
}

fn nvmf_delete_subsystem(svc: &Service, p: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        nqn: String,
    }
    let P { nqn } = params(p)?;
    let _g = svc.begin_change()?;
    let cfg = svc.edit(|t| {
        let subs = array(t, "subsystem")?;
        let was_first = subs
            .first()
            .and_then(|s| s.get("nqn"))
            .and_then(toml::Value::as_str)
            == Some(&nqn);
        let before = subs.len();
        subs.retain(|s| s.get("nqn").and_then(toml::Value::as_str) != Some(&nqn));
        if subs.len() == before {
            return Err(RpcError::new(
                proto::NOT_FOUND,
                format!("subsystem {nqn} not found"),
            ));
        }
        // Host jobs on it end with it; a saved config must not start them
        // against a subsystem that is gone (a job without `subsystem` runs
        // on the first one).
        array(t, "job")?.retain(|j| match j.get("subsystem").and_then(toml::Value::as_str) {
            Some(s) => s != nqn,
            None => !was_first,
        });
        if t.get("job")
            .and_then(toml::Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            t.remove("job");
        }
        array(t, "listener")?
            .retain(|l| l.get("subsystem").and_then(toml::Value::as_str) != Some(&nqn));
        Ok(())
    })?;
    svc.target.transport().unlisten(&nqn);
    for l in svc.target.tcp().listeners() {
        if l.config.subsystem.as_deref() == Some(nqn.as_str()) {
            svc.target.tcp().remove_listener(&l.config.address);
        }
    }
    svc.target
        .nvmf()
        .remove_subsystem(&nqn)
        .map_err(target_err)?;
    svc.commit(cfg);
    Ok(json!({"nqn": nqn}))
}

fn nvmf_subsystem_add_host(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let NqnHost { nqn, host } = params(p)?;
    let _g = svc.begin_change()?;
    let cfg = svc.edit(|t| {
        let s = subsystem_table(t, &nqn)?;
        let hosts = array(s, "hosts")?;
        if hosts.iter().any(|h| h.as_str() == Some(&host)) {
            return Err(RpcError::new(
                proto::ALREADY_EXISTS,
                format!("host {host} is already allowed on {nqn}"),
            ));
        }
        hosts.push(host.clone().into());
        Ok(())
    })?;
    svc.target
        .nvmf()
        .allow_host(&nqn, &host)
        .map_err(target_err)?;
    svc.commit(cfg);
    Ok(json!({"nqn": nqn, "host": host}))
}

fn nvmf_subsystem_remove_host(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let NqnHost { nqn, host } = params(p)?;
    let _g = svc.begin_change()?;
    let cfg = svc.edit(|t| {
        let hosts = array(subsystem_table(t, &nqn)?, "hosts")?;
        let before = hosts.len();
        hosts.retain(|h| h.as_str() != Some(&host));
        if hosts.len() == before {
            return Err(RpcError::new(
                proto::NOT_FOUND,
                format!("host {host} is not on the list of {nqn}"),
            ));
        }
        Ok(())
    })?;
    svc.target
        .nvmf()
        .disallow_host(&nqn, &host)
        .map_err(target_err)?;
    svc.commit(cfg);
    Ok(json!({"nqn": nqn, "host": host}))
}

fn ns_index(cfg: &TargetConfig, nqn: &str, nsid: u32) -> Option<(usize, usize)> {
    let si = cfg
        .subsystems
        .iter()
        .position(|s| *s.nqn.get_ref() == nqn)?;
    let ni = cfg.subsystems[si]
        .namespaces
        .iter()
        .position(|n| n.nsid.as_ref().is_some_and(|x| *x.get_ref() == nsid))?;
    Some((si, ni))
}

fn nvmf_subsystem_add_ns(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let mut m = object(p)?;
    let nqn = take_str(&mut m, "nqn")?;
    let table = toml_table(m)?;
    let _g = svc.begin_change()?;
    svc.target.nvmf().subsystem(&nqn).map_err(target_err)?;
    let cfg = svc.edit(|t| {
        let s = subsystem_table(t, &nqn)?;
        array(s, "namespace")?.push(toml::Value::Table(table));
        Ok(())
    })?;
    let ns = cfg
        .subsystems
        .iter()
        .find(|s| *s.nqn.get_ref() == nqn)
        .and_then(|s| s.namespaces.last())
        .ok_or_else(|| internal("new namespace missing from the config"))?;
    let nsid = svc.target.add_namespace(&nqn, ns).map_err(start_err)?;
    // Record the NSID the engine chose, so a saved config reproduces it.
    let mut cfg = cfg;
    if let Some(s) = cfg.subsystems.iter_mut().find(|s| *s.nqn.get_ref() == nqn)
        && let Some(n) = s.namespaces.last_mut()
    {
        n.nsid = Some(toml::Spanned::new(0..0, nsid));
    }
    svc.commit(cfg);
    Ok(json!({"nqn": nqn, "nsid": nsid}))
}

fn nvmf_subsystem_remove_ns(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let NqnNsid { nqn, nsid } = params(p)?;
    let _g = svc.begin_change()?;
    let mut cfg = svc.running_config();
    let (si, ni) = ns_index(&cfg, &nqn, nsid).ok_or_else(|| {
        RpcError::new(
            proto::NOT_FOUND,
            format!("namespace {nsid} of {nqn} not found"),
        )
    })?;
    svc.target
        .nvmf()
        .remove_namespace(&nqn, nsid)
        .map_err(target_err)?;
    cfg.subsystems[si].namespaces.remove(ni);
    svc.commit(cfg);
    Ok(json!({"nqn": nqn, "nsid": nsid}))
}

fn nvmf_get_namespaces(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let ByNqn { nqn } = params(p)?;
    let mut out = Vec::new();
    for s in svc.target.nvmf().engine().subsystems() {
        if nqn.as_ref().is_some_and(|n| *n != s.nqn) {
            continue;
        }
        for (nsid, ns) in &s.state().namespaces {
            out.push(json!({
                "subsystem": s.nqn,
                "nsid": nsid,
                "backend": ns.bdev.info().name,
                "block_size": ns.block_size(),
                "num_blocks": ns.num_blocks(),
                "read_only": ns.read_only,
                "nguid": hex(&ns.nguid),
                "latency_histogram": ns.latency_tracking.load(std::sync::atomic::Ordering::Relaxed),
            }));
        }
    }
    if let Some(n) = nqn {
        svc.target.nvmf().subsystem(&n).map_err(target_err)?;
    }
    Ok(Value::Array(out))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn controllers(
    svc: &Service,
    nqn: Option<&str>,
) -> Result<Vec<std::sync::Arc<target_core::nvmf::ctrlr::Controller>>, RpcError> {
    if let Some(n) = nqn {
        svc.target.nvmf().subsystem(n).map_err(target_err)?;
    }
    Ok(svc
        .target
        .nvmf()
        .engine()
        .subsystems()
        .into_iter()
        .filter(|s| nqn.is_none_or(|n| n == s.nqn))
        .flat_map(|s| s.state().controllers.values().cloned().collect::<Vec<_>>())
        .collect())
}

fn nvmf_get_controllers(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let ByNqn { nqn } = params(p)?;
    Ok(Value::Array(
        controllers(svc, nqn.as_deref())?
            .into_iter()
            .map(|c| {
                let st = c.state();
                let shst = match (st.csts >> 2) & 3 {
                    0 => "normal",
                    1 => "occurring",
                    _ => "complete",
                };
                json!({
                    "subsystem": c.subsys.nqn,
                    "cntlid": c.cntlid,
                    "hostnqn": c.hostnqn,
                    "hostid": hex(&c.hostid),
                    "ready": st.csts & 1 != 0,
                    "shutdown_status": shst,
                    "io_queues": st.io_qpairs.iter().flatten().count(),
                    "io_queues_granted": st.io_queues_granted,
                    "kato_ms": st.features.kato_ms,
                    "errors": st.error_count,
                })
            })
            .collect(),
    ))
}

fn nvmf_get_qpairs(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let ByNqn { nqn } = params(p)?;
    let mut out = Vec::new();
    for c in controllers(svc, nqn.as_deref())? {
        out.push(json!({
            "subsystem": c.subsys.nqn, "cntlid": c.cntlid, "qid": 0, "reactor": c.admin.pg,
        }));
        let st = c.state();
        for (i, q) in st.io_qpairs.iter().enumerate() {
            if let Some(q) = q {
                out.push(json!({
                    "subsystem": c.subsys.nqn, "cntlid": c.cntlid, "qid": i + 1, "reactor": q.pg,
                }));
            }
        }
    }
    Ok(Value::Array(out))
}

/// A controller operation: validated, serialised with other changes.
fn controller_op(
    svc: &Service,
    p: Value,
    op: fn(&target_core::nvmf::NvmfTarget, &str, u16) -> Result<(), TargetError>,
) -> Result<Value, RpcError> {
    let NqnCntlid { nqn, cntlid } = params(p)?;
    let _g = svc.begin_change()?;
    op(svc.target.nvmf(), &nqn, cntlid).map_err(target_err)?;
    Ok(json!({"nqn": nqn, "cntlid": cntlid}))
}

fn nvmf_reset_controller(svc: &Service, p: Value) -> Result<Value, RpcError> {
    controller_op(svc, p, |t, nqn, id| t.reset_controller(nqn, id))
}

fn nvmf_delete_controller(svc: &Service, p: Value) -> Result<Value, RpcError> {
    controller_op(svc, p, |t, nqn, id| t.delete_controller(nqn, id))
}

fn nvmf_get_stats(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let _: Empty = params(p)?;
    Ok(stats::stats_json(&svc.target))
}

fn nvmf_namespace_enable_histogram(svc: &Service, p: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        nqn: String,
        nsid: u32,
        enable: bool,
    }
    let P { nqn, nsid, enable } = params(p)?;
    let _g = svc.begin_change()?;
    let mut cfg = svc.running_config();
    let (si, ni) = ns_index(&cfg, &nqn, nsid).ok_or_else(|| {
        RpcError::new(
            proto::NOT_FOUND,
            format!("namespace {nsid} of {nqn} not found"),
        )
    })?;
    svc.target
        .nvmf()
        .set_latency_tracking(&nqn, nsid, enable)
        .map_err(target_err)?;
    cfg.subsystems[si].namespaces[ni].latency_histogram = Some(enable);
    svc.commit(cfg);
    Ok(json!({"nqn": nqn, "nsid": nsid, "enable": enable}))
}

fn nvmf_get_histogram(svc: &Service, p: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        nqn: String,
        nsid: u32,
        #[serde(default)]
        reset: bool,
    }
    let P { nqn, nsid, reset } = params(p)?;
    let h = svc
        .target
        .nvmf()
        .ns_latency(&nqn, nsid, reset)
        .map_err(target_err)?
        .ok_or_else(|| {
            RpcError::new(
                proto::NOT_FOUND,
                format!(
                    "namespace {nsid} of {nqn} keeps no latency histogram; \
                     turn it on with nvmf_namespace_enable_histogram"
                ),
            )
        })?;
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(&h, &mut bytes)
        .map_err(|e| internal(format!("histogram encoding: {e:?}")))?;
    Ok(json!({
        "subsystem": nqn,
        "nsid": nsid,
        "unit": "ns",
        "encoding": "HdrHistogram V2, base64",
        "histogram": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "reset": reset,
        "latency_ns": stats::latency_json(Some(&h)),
    }))
}

fn job_get_jobs(svc: &Service, p: Value) -> Result<Value, RpcError> {
    let _: Empty = params(p)?;
    Ok(Value::Array(
        svc.jobs.all().iter().map(|j| j.status()).collect(),
    ))
}

fn save_config(svc: &Service, p: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        #[serde(default)]
        path: Option<String>,
    }
    let P { path } = params(p)?;
    let text = svc.running_config().to_toml_string().map_err(internal)?;
    let text = format!("# Saved by nvmf-tgt save_config from the running target.\n{text}");
    if let Some(path) = &path {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| RpcError::new(proto::OPERATION_FAILED, format!("{path}: {e}")))?;
    }
    Ok(json!({"config": text, "path": path}))
}
