//! The one facade: a parsed TOML config becomes a running target, and
//! `stop` tears it down by quiesce and drain. The bench tool and the
//! `nvmf-tgt` daemon both start targets through here, so nothing is set up
//! twice.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

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
    config: TargetConfig,
    controllers: Mutex<HashMap<String, Arc<NvmeController>>>,
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
        let target = Self {
            transport: LoopTransport::new(nvmf.clone()),
            nvmf,
            config: cfg.clone(),
            controllers: Mutex::new(HashMap::new()),
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
            self.transport.listen(l.subsystem.get_ref());
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
            })
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
            s.push_str(&format!("listener loop: {}\n", l.subsystem.get_ref()));
        }
        s
    }

    /// Stops: controllers drained and deleted, reactors stopped, NVMe
    /// controllers shut down (their DMA memory is unmapped only after).
    pub fn stop(&self) -> Result<(), TargetError> {
        let r = self.nvmf.stop();
        for c in lock(&self.controllers).values() {
            if let Err(e) = c.shutdown() {
                tracing::warn!(error = %e, "NVMe controller shutdown");
            }
        }
        r
    }
}
