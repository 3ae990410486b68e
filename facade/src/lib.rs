//! The one facade: a parsed TOML config becomes a running target, and
//! `stop` tears it down by quiesce and drain. The bench tool and the
//! `nvmf-tgt` daemon both start targets through here, so nothing is set up
//! twice.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pcie_driver::{ControllerOptions, NvmeController};
use target_core::bdev::{
    BdevError, BdevRef, DelayBdev, DelayParams, ErrorBdev, ErrorParams, FileBdev, FileParams,
    Latency, MallocBdev, MallocParams, NullBdev, NullParams,
};
use target_core::config::{
    BackendConfig, BackendSpec, NamespaceConfig, SubsystemConfig, TargetConfig, parse_nguid,
};
use target_core::nvmf::target::{NamespaceParams, ReactorMode};
use target_core::nvmf::{EngineOptions, NvmfTarget, SubsystemParams, TargetError, TargetOptions};
use toml::Spanned;
use transport_loop::LoopTransport;

/// Why a target did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A backend could not be built.
    #[error("backend {name}: {reason}")]
    Backend {
        /// Backend name from the config.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The engine refused part of the config.
    #[error("{what}: {source}")]
    Target {
        /// Which part.
        what: String,
        /// The engine's error.
        source: TargetError,
    },
    /// A listener could not be added (address in use, permission...).
    #[error("listener: {0}")]
    Listener(#[from] transport_tcp::listener::ListenError),
}

/// The TCP transport's listener settings for a `[[listener]]` of
/// transport `tcp`.
pub fn tcp_listener_config(
    l: &target_core::config::ListenerConfig,
) -> transport_tcp::ListenerConfig {
    let d = transport_tcp::ListenerConfig::default();
    let sub = l.subsystem.get_ref();
    transport_tcp::ListenerConfig {
        address: l
            .address
            .as_ref()
            .map_or(d.address.clone(), |a| a.get_ref().clone()),
        subsystem: (sub != "*").then(|| sub.clone()),
        in_capsule_data_size: l
            .in_capsule_data_size
            .as_ref()
            .map_or(d.in_capsule_data_size, |v| *v.get_ref()),
        max_queue_depth: l
            .max_queue_depth
            .as_ref()
            .map_or(d.max_queue_depth, |v| *v.get_ref()),
        header_digest: l.header_digest.unwrap_or(d.header_digest),
        data_digest: l.data_digest.unwrap_or(d.data_digest),
    }
}

/// How to run reactors, beyond what the config says.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Don't pin reactors (tests, shared machines).
    pub unpinned: bool,
    /// Override the idle back-off (tests want one; benchmarks want none).
    pub idle_backoff: Option<Duration>,
}

/// A running target.
pub struct Target {
    nvmf: Arc<NvmfTarget>,
    transport: Arc<LoopTransport>,
    tcp: Arc<transport_tcp::TcpTransport>,
    config: TargetConfig,
    controllers: Mutex<HashMap<String, Arc<NvmeController>>>,
    /// Backend name -> PCI address of the NVMe device under it (`nvme`
    /// backends, and `delay`/`error` ones stacked on them): what a hot
    /// removal of that device takes away.
    nvme_backends: Mutex<HashMap<String, String>>,
    /// Devices taken away by hot removal, oldest first.
    removed: Mutex<Vec<HotRemoval>>,
}

/// One NVMe device taken away by hot removal (the kernel asked for it
/// through the VFIO device request), and what went with it.
#[derive(Clone, Debug)]
pub struct HotRemoval {
    /// PCI address of the function.
    pub pci_addr: String,
    /// Controller serial number.
    pub serial: String,
    /// Backends unregistered with it (the `nvme` ones and those stacked on them).
    pub backends: Vec<String>,
    /// Namespaces removed (hosts got Namespace Attribute Changed).
    pub namespaces: Vec<(String, u32)>,
    /// Whether the device was closed and given back to the kernel.
    pub released: Result<(), String>,
    /// From the start of the removal to the device closed.
    pub took: Duration,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target").field("nvmf", &self.nvmf).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn backend_err(name: &str, e: impl fmt::Display) -> StartError {
    StartError::Backend {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

impl Target {
    /// Starts everything the config describes.
    pub fn start(cfg: &TargetConfig, opts: &StartOptions) -> Result<Self, StartError> {
        let t = &cfg.target;
        let engine = EngineOptions {
            mdts: t.mdts,
            max_queue_entries: (*t.max_queue_depth.get_ref()).min(u16::MAX as u32) as u16,
            max_io_queues: t.max_io_queues,
            max_kato_ms: t.keep_alive_timeout_ms,
            drain_timeout: Duration::from_millis(t.drain_timeout_ms),
            latency_histograms: t.latency_histograms,
        };
        let cores = cfg.reactors.cores.get_ref();
        let reactors = ReactorMode::Threads {
            cores: cores
                .iter()
                .map(|&c| if opts.unpinned { None } else { Some(c) })
                .collect(),
            idle_backoff: opts
                .idle_backoff
                .unwrap_or(Duration::from_micros(cfg.reactors.idle_backoff_us)),
        };
        let nvmf = NvmfTarget::start(TargetOptions { engine, reactors }).map_err(|source| {
            StartError::Target {
                what: "reactors".into(),
                source,
            }
        })?;
        let tcp = transport_tcp::TcpTransport::new(&nvmf);
        if let Err(source) = tcp.start_poller() {
            let _ = nvmf.stop();
            return Err(StartError::Target {
                what: "tcp accept poller".into(),
                source,
            });
        }
        let target = Self {
            tcp,
            transport: LoopTransport::new(nvmf.clone()),
            nvmf,
            config: cfg.clone(),
            controllers: Mutex::new(HashMap::new()),
            nvme_backends: Mutex::new(HashMap::new()),
            removed: Mutex::new(Vec::new()),
        };
        match target.build(cfg) {
            Ok(resolved) => Ok(Self {
                config: resolved,
                ..target
            }),
            Err(e) => {
                let _ = target.stop();
                Err(e)
            }
        }
    }

    /// Loads a config file and starts it.
    pub fn start_file(path: &Path, opts: &StartOptions) -> Result<Self, String> {
        let cfg = TargetConfig::load(path).map_err(|e| e.to_string())?;
        Self::start(&cfg, opts).map_err(|e| e.to_string())
    }

    /// Builds what `cfg` describes; returns it with every namespace's NSID
    /// made explicit, so a saved config reproduces the same NSIDs.
    fn build(&self, cfg: &TargetConfig) -> Result<TargetConfig, StartError> {
        let mut resolved = cfg.clone();
        for b in cfg.backends_in_build_order() {
            self.add_backend(b, cfg.reactors.cores.get_ref().len())?;
        }
        for s in resolved.subsystems.iter_mut() {
            self.add_subsystem(s)?;
            let nqn = s.nqn.get_ref().clone();
            for ns in s.namespaces.iter_mut() {
                let nsid = self.add_namespace(&nqn, ns)?;
                ns.nsid = Some(Spanned::new(0..0, nsid));
            }
        }
        for l in &cfg.listeners {
            if l.transport.get_ref() == "tcp" {
                self.tcp.add_listener(tcp_listener_config(l))?;
            } else {
                self.transport.listen(l.subsystem.get_ref());
            }
        }
        Ok(resolved)
    }

    /// Builds one backend from its config and registers it (its base, for
    /// `delay` and `error`, must already be registered). `nvme` backends
    /// share one controller per PCI address, opened with one I/O queue per
    /// reactor.
    pub fn add_backend(&self, b: &BackendConfig, reactors: usize) -> Result<(), StartError> {
        let name = b.name.get_ref().clone();
        let base = |n: &str| {
            self.nvmf
                .bdev(n)
                .ok_or_else(|| backend_err(&name, format!("base \"{n}\" does not exist")))
        };
        let dev: BdevRef = match b.spec() {
            BackendSpec::Null {
                block_size,
                num_blocks,
                read_zeroes,
            } => Arc::new(
                NullBdev::new(NullParams {
                    name: name.clone(),
                    block_size,
                    num_blocks,
                    read_zeroes,
                })
                .map_err(|e| backend_err(&name, e))?,
            ),
            BackendSpec::Malloc {
                block_size,
                num_blocks,
            } => Arc::new(
                MallocBdev::new(MallocParams {
                    name: name.clone(),
                    block_size,
                    num_blocks,
                })
                .map_err(|e| backend_err(&name, e))?,
            ),
            BackendSpec::Delay {
                base: b,
                min_us,
                max_us,
                seed,
            } => {
                let latency = if min_us == max_us {
                    Latency::Fixed(Duration::from_micros(min_us))
                } else {
                    Latency::Uniform {
                        min: Duration::from_micros(min_us),
                        max: Duration::from_micros(max_us),
                    }
                };
                Arc::new(
                    DelayBdev::new(
                        DelayParams {
                            name: name.clone(),
                            latency,
                            seed,
                        },
                        base(&b)?,
                    )
                    .map_err(|e| backend_err(&name, e))?,
                )
            }
            BackendSpec::Error {
                base: b,
                rules,
                seed,
            } => {
                let rules = rules
                    .iter()
                    .map(|r| {
                        r.rule()
                            .map_err(|(k, _, reason)| backend_err(&name, format!("{k}: {reason}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(
                    ErrorBdev::new(
                        ErrorParams {
                            name: name.clone(),
                            rules,
                            seed,
                        },
                        base(&b)?,
                    )
                    .map_err(|e| backend_err(&name, e))?,
                )
            }
            BackendSpec::File {
                path,
                block_size,
                size,
                direct,
                queue_depth,
            } => Arc::new(
                FileBdev::new(FileParams {
                    name: name.clone(),
                    path: path.into(),
                    block_size,
                    size,
                    direct,
                    queue_depth,
                })
                .map_err(|e: BdevError| backend_err(&name, e))?,
            ),
            BackendSpec::Nvme { pci_addr, nsid } => {
                let ctrl = {
                    let mut ctrls = lock(&self.controllers);
                    match ctrls.get(&pci_addr) {
                        Some(c) => c.clone(),
                        None => {
                            let drain = Duration::from_millis(self.config.target.drain_timeout_ms);
                            let opts = ControllerOptions {
                                max_io_queues: reactors.max(1) as u16,
                                drain_timeout: drain,
                                // Abort, then the controller reset, must end
                                // inside the target's bound after a backend
                                // reset (drain_timeout again).
                                abort_timeout: (drain / 4)
                                    .min(ControllerOptions::default().abort_timeout),
                                ..ControllerOptions::default()
                            };
                            let c = NvmeController::open(&pci_addr, opts)
                                .map_err(|e| backend_err(&name, format!("{pci_addr}: {e}")))?;
                            ctrls.insert(pci_addr.clone(), c.clone());
                            c
                        }
                    }
                };
                ctrl.bdev(nsid).map_err(|e| backend_err(&name, e))?
            }
        };
        self.nvmf
            .add_bdev_as(&name, dev)
            .map_err(|source| StartError::Target {
                what: format!("backend {name}"),
                source,
            })?;
        let on_pci = match b.spec() {
            BackendSpec::Nvme { pci_addr, .. } => Some(pci_addr),
            _ => b
                .base
                .as_ref()
                .and_then(|base| lock(&self.nvme_backends).get(base.get_ref()).cloned()),
        };
        if let Some(addr) = on_pci {
            lock(&self.nvme_backends).insert(name, addr);
        }
        Ok(())
    }

    /// Polls every NVMe controller's device request (one non-blocking read
    /// each; call it periodically from a thread that may block, never from
    /// a reactor) and carries out each hot removal it finds: the
    /// controller already fails new I/O with a path status (Internal Path
    /// Error, no DNR); its namespaces are removed through the engine's
    /// namespace removal (drain, then Namespace Attribute Changed to the
    /// hosts), its backends unregistered, and the device closed so the
    /// kernel's unplug completes. Every other namespace keeps serving.
    /// Returns the removals done by this call.
    pub fn poll_hot_removal(&self) -> Vec<HotRemoval> {
        let ctrls: Vec<(String, Arc<NvmeController>)> = lock(&self.controllers)
            .iter()
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect();
        let mut out = Vec::new();
        for (addr, c) in ctrls {
            if c.removal_requested() {
                out.push(self.remove_device(&addr, &c));
            }
        }
        out
    }

    /// Devices taken away by hot removal so far, oldest first.
    pub fn hot_removals(&self) -> Vec<HotRemoval> {
        lock(&self.removed).clone()
    }

    fn remove_device(&self, addr: &str, ctrl: &Arc<NvmeController>) -> HotRemoval {
        let t0 = Instant::now();
        let mut names: Vec<String> = lock(&self.nvme_backends)
            .iter()
            .filter(|(_, a)| a.as_str() == addr)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        let devs: Vec<(String, BdevRef)> = names
            .iter()
            .filter_map(|n| self.nvmf.bdev(n).map(|b| (n.clone(), b)))
            .collect();
        let mut namespaces = Vec::new();
        for s in self.nvmf.engine().subsystems() {
            for (nsid, ns) in &s.state().namespaces {
                if devs.iter().any(|(_, d)| Arc::ptr_eq(d, &ns.bdev)) {
                    namespaces.push((s.nqn.clone(), *nsid));
                }
            }
        }
        tracing::warn!(
            addr,
            backends = ?names,
            namespaces = ?namespaces,
            "hot removal: removing the device's namespaces and backends"
        );
        for (nqn, nsid) in &namespaces {
            match self.nvmf.remove_namespace(nqn, *nsid) {
                Ok(()) => tracing::warn!(
                    addr,
                    subsystem = %nqn,
                    nsid,
                    "hot removal: namespace removed (hosts notified: Namespace Attribute Changed)"
                ),
                Err(e) => {
                    tracing::error!(addr, subsystem = %nqn, nsid, "hot removal: namespace removal: {e}")
                }
            }
        }
        // Stacked backends first: a base is in use while one sits on it.
        let mut left: Vec<String> = devs.into_iter().map(|(n, _)| n).collect();
        let mut backends = Vec::new();
        while !left.is_empty() {
            let before = left.len();
            left.retain(|n| match self.nvmf.remove_bdev(n) {
                Ok(_) => {
                    backends.push(n.clone());
                    false
                }
                Err(_) => true,
            });
            if left.len() == before {
                tracing::error!(addr, still = ?left, "hot removal: backends still in use");
                break;
            }
        }
        lock(&self.nvme_backends).retain(|_, a| a.as_str() != addr);
        lock(&self.controllers).remove(addr);
        let released = ctrl.release_device().map_err(|e| e.to_string());
        if let Err(e) = &released {
            tracing::error!(addr, "hot removal: device not released: {e}");
        }
        // The device is closed either way; the queues' DMA memory goes with
        // the last reference (a host job keeping its backend for a
        // read-back, say).
        tracing::info!(
            addr,
            other_references = Arc::strong_count(ctrl).saturating_sub(1),
            "hot removal: controller memory is freed when the other references go"
        );
        let r = HotRemoval {
            pci_addr: addr.to_owned(),
            serial: ctrl.identity().serial.clone(),
            backends,
            namespaces,
            released,
            took: t0.elapsed(),
        };
        lock(&self.removed).push(r.clone());
        r
    }

    /// Creates a subsystem (without its namespaces) from its config.
    pub fn add_subsystem(&self, s: &SubsystemConfig) -> Result<(), StartError> {
        let nqn = s.nqn.get_ref().clone();
        self.nvmf
            .add_subsystem(SubsystemParams {
                nqn: nqn.clone(),
                serial: s.serial.get_ref().clone(),
                model: s.model.get_ref().clone(),
                max_namespaces: s.max_namespaces,
                allow_any_host: s.allow_any_host,
                hosts: s.hosts.iter().map(|h| h.get_ref().clone()).collect(),
            })
            .map(|_| ())
            .map_err(|source| StartError::Target {
                what: format!("subsystem {nqn}"),
                source,
            })
    }

    /// Adds a namespace from its config; returns its NSID.
    pub fn add_namespace(&self, nqn: &str, ns: &NamespaceConfig) -> Result<u32, StartError> {
        self.nvmf
            .add_namespace(
                nqn,
                NamespaceParams {
                    nsid: ns.nsid.as_ref().map(|n| *n.get_ref()),
                    bdev: ns.backend.get_ref().clone(),
                    read_only: ns.read_only,
                    nguid: ns.nguid.as_ref().and_then(|g| parse_nguid(g.get_ref())),
                    uuid: ns.uuid.as_ref().and_then(|u| parse_nguid(u.get_ref())),
                    latency_histogram: ns.latency_histogram,
                },
            )
            .map_err(|source| StartError::Target {
                what: format!("subsystem {nqn} namespace on {}", ns.backend.get_ref()),
                source,
            })
    }

    /// The engine (control operations, statistics).
    pub fn nvmf(&self) -> &Arc<NvmfTarget> {
        &self.nvmf
    }

    /// The loop transport, for in-process hosts.
    pub fn transport(&self) -> &Arc<LoopTransport> {
        &self.transport
    }

    /// The NVMe/TCP transport: its listeners and connections.
    pub fn tcp(&self) -> &Arc<transport_tcp::TcpTransport> {
        &self.tcp
    }

    /// The config it was started from, NSIDs resolved (the service tracks
    /// later changes).
    pub fn config(&self) -> &TargetConfig {
        &self.config
    }

    /// A human start-up summary: reactors, backends, subsystems, listeners.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let cores = self.config.reactors.cores.get_ref();
        s.push_str(&format!("reactors: {} on cores {:?}\n", cores.len(), cores));
        for (name, b) in self.nvmf.bdevs() {
            let i = b.info();
            s.push_str(&format!(
                "backend {name}: {} {} blocks of {} B ({} MiB)\n",
                i.kind,
                i.num_blocks,
                i.block_size,
                (i.num_blocks * i.block_size as u64) >> 20
            ));
        }
        for sub in self.nvmf.engine().subsystems() {
            let st = sub.state();
            s.push_str(&format!(
                "subsystem {} ({} host{})\n",
                sub.nqn,
                if st.allow_any_host { "any" } else { "listed" },
                if st.allow_any_host { "" } else { "s" }
            ));
            for (nsid, ns) in &st.namespaces {
                s.push_str(&format!(
                    "  namespace {nsid}: {}{}\n",
                    ns.bdev.info().name,
                    if ns.read_only { " (read-only)" } else { "" }
                ));
            }
        }
        for l in &self.config.listeners {
            if l.transport.get_ref() != "tcp" {
                s.push_str(&format!("listener loop: {}\n", l.subsystem.get_ref()));
            }
        }
        for l in self.tcp.listeners() {
            s.push_str(&format!(
                "listener tcp {}: {}\n",
                l.bound,
                l.config.subsystem.as_deref().unwrap_or("*")
            ));
        }
        s
    }

    /// Stops: controllers drained and deleted, reactors stopped, NVMe
    /// controllers shut down (their DMA memory is unmapped only after).
    pub fn stop(&self) -> Result<(), TargetError> {
        let r = self.stop_engine();
        self.shutdown_devices();
        r
    }

    /// The first half of [`Target::stop`]: the NVMe-oF engine drains and
    /// deletes its controllers and stops its reactors, but the backends
    /// stay usable. A caller that must still read a backend directly after
    /// the drain (the service's verify read-back) does so before
    /// [`Target::shutdown_devices`]: a shut-down NVMe controller answers
    /// nothing.
    pub fn stop_engine(&self) -> Result<(), TargetError> {
        self.nvmf.stop()
    }

    /// The second half of [`Target::stop`]: shuts the NVMe controllers
    /// down (CC.SHN). Channels opened on them afterwards fail; I/O still
    /// at them is aborted.
    pub fn shutdown_devices(&self) {
        for c in lock(&self.controllers).values() {
            if let Err(e) = c.shutdown() {
                tracing::warn!(error = %e, "NVMe controller shutdown");
            }
        }
    }
}
