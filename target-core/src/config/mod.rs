//! The target's configuration model: one TOML file describing reactors,
//! backends, subsystems, namespaces and listeners.
//!
//! Every error names the file, line, column and key path, with a reason a
//! user can act on: `configs/x.toml:12:5: subsystem[0].namespace[1].backend:
//! no backend named "ram9"`. Syntax, type and unknown-key errors come from
//! the TOML deserializer (its span, plus the path recorded on the way down);
//! semantic errors come from `validate`, which keeps the spans of the values
//! it checks.

mod backend;
mod error;
mod size;
mod validate;

pub use validate::parse_nguid;

use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use backend::{BackendConfig, BackendKind, BackendSpec, InjectConfig};
pub use error::ConfigError;
pub use size::Size;

/// The embedded default: one reactor, a 256 MiB RAM disk and a 1 TiB null
/// device in one subsystem any host may reach over the loop transport.
pub const DEFAULT_TOML: &str = include_str!("../../../configs/default.toml");

/// A whole target configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Engine limits and service endpoints.
    #[serde(default)]
    pub target: TargetSection,
    /// Reactor cores.
    #[serde(default)]
    pub reactors: ReactorsSection,
    /// Block devices.
    #[serde(default, rename = "backend", skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendConfig>,
    /// Subsystems.
    #[serde(default, rename = "subsystem", skip_serializing_if = "Vec::is_empty")]
    pub subsystems: Vec<SubsystemConfig>,
    /// Listeners.
    #[serde(default, rename = "listener", skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerConfig>,
    /// Host jobs run by the service (bench job format; checked by the runner).
    #[serde(default, rename = "job", skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<toml::Table>,
}

/// `[target]`: engine limits and service endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSection {
    /// Maximum data transfer size, as a power of two of 4 KiB pages.
    pub mdts: u8,
    /// Largest queue a host may create (CAP.MQES + 1).
    pub max_queue_depth: Spanned<u32>,
    /// I/O queues per controller.
    pub max_io_queues: u16,
    /// Largest keep-alive timeout, ms.
    pub keep_alive_timeout_ms: u32,
    /// Bounded wait for in-flight I/O during teardown before a backend reset.
    pub drain_timeout_ms: u64,
    /// Namespaces keep a server-side latency histogram (fetch to backend
    /// completion) unless they say otherwise; off by default (it costs a
    /// clock read per poll pass and a record per command).
    pub latency_histograms: bool,
    /// JSON-RPC control socket path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_socket: Option<String>,
    /// Prometheus metrics address (loopback only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<Spanned<String>>,
}

impl Default for TargetSection {
    fn default() -> Self {
        Self {
            mdts: 5,
            max_queue_depth: Spanned::new(0..0, 1024),
            max_io_queues: 16,
            keep_alive_timeout_ms: 120_000,
            drain_timeout_ms: 5_000,
            latency_histograms: false,
            rpc_socket: None,
            metrics_addr: None,
        }
    }
}

/// `[reactors]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactorsSection {
    /// Cores, one reactor each.
    pub cores: Spanned<Vec<usize>>,
    /// Idle back-off in µs (0: busy poll). Otherwise an idle reactor blocks
    /// in `ppoll` on its connections' sockets and a wake-up eventfd, so it
    /// leaves the CPU to peers sharing it (see `reactor::wait`).
    #[serde(default)]
    pub idle_backoff_us: u64,
}

impl Default for ReactorsSection {
    fn default() -> Self {
        Self {
            cores: Spanned::new(0..0, vec![0]),
            idle_backoff_us: 0,
        }
    }
}

/// `[[subsystem]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    /// NQN.
    pub nqn: Spanned<String>,
    /// Serial number (≤ 20 printable ASCII).
    #[serde(default = "default_serial")]
    pub serial: Spanned<String>,
    /// Model number (≤ 40 printable ASCII).
    #[serde(default = "default_model")]
    pub model: Spanned<String>,
    /// Highest NSID.
    #[serde(default = "default_max_ns")]
    pub max_namespaces: u32,
    /// Any host may connect.
    #[serde(default)]
    pub allow_any_host: bool,
    /// Allowed host NQNs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Spanned<String>>,
    /// Namespaces.
    #[serde(default, rename = "namespace", skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceConfig>,
}

fn default_serial() -> Spanned<String> {
    Spanned::new(0..0, "NVMF-RS-0001".into())
}
fn default_model() -> Spanned<String> {
    Spanned::new(0..0, "nvmf-rs target".into())
}
fn default_max_ns() -> u32 {
    32
}

/// `[[subsystem.namespace]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// NSID (default: the next free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<Spanned<u32>>,
    /// Backend name.
    pub backend: Spanned<String>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// NGUID, 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nguid: Option<Spanned<String>>,
    /// UUID, 8-4-4-4-12 hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Spanned<String>>,
    /// Latency histogram for this namespace (default: the target's
    /// `latency_histograms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_histogram: Option<bool>,
}

/// `[[listener]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Transport: `loop` (in-process hosts) or `tcp` (NVMe/TCP).
    pub transport: Spanned<String>,
    /// Subsystem NQN, or `*` for every subsystem.
    pub subsystem: Spanned<String>,
    /// `tcp`: `host:port` to listen on (IPv6 as `[addr]:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Spanned<String>>,
    /// `tcp`: in-capsule data size for I/O queues, bytes (default 8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_capsule_data_size: Option<Spanned<u32>>,
    /// `tcp`: largest queue a host may connect (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_depth: Option<Spanned<u16>>,
    /// `tcp`: grant header digests when a host asks (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_digest: Option<bool>,
    /// `tcp`: grant data digests when a host asks (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_digest: Option<bool>,
}

impl TargetConfig {
    /// Parses and validates `text`; `origin` names the file in errors.
    pub fn from_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let file = origin.display().to_string();
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::from_toml(&file, text, "", &e))?;
        let cfg: TargetConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::from_toml(&file, text, if path == "." { "" } else { &path }, e.inner())
        })?;
        validate::validate(&cfg, &file, text)?;
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            col: 0,
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_str(&text, path)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Self {
        match Self::from_str(DEFAULT_TOML, Path::new("<embedded default>")) {
            Ok(c) => c,
            // The default is checked by a test; keep going with an empty
            // config rather than panicking in a service.
            Err(e) => {
                tracing::error!(error = %e, "embedded default config is invalid");
                Self::default()
            }
        }
    }

    /// Serializes back to TOML that loads to an equal value.
    pub fn to_toml_string(&self) -> Result<String, String> {
        toml::to_string_pretty(self).map_err(|e| e.to_string())
    }

    /// Backends with every base before the backends wrapping it.
    pub fn backends_in_build_order(&self) -> Vec<&BackendConfig> {
        let mut out: Vec<&BackendConfig> = Vec::new();
        let mut left: Vec<&BackendConfig> = self.backends.iter().collect();
        while !left.is_empty() {
            let before = left.len();
            left.retain(|b| match b.base.as_ref() {
                Some(base) if !out.iter().any(|o| *o.name.get_ref() == *base.get_ref()) => true,
                _ => {
                    out.push(b);
                    false
                }
            });
            if left.len() == before {
                // Cycles are rejected by validation; don't loop forever.
                out.append(&mut left);
            }
        }
        out
    }
}
