//! Listeners and the accept poller.
//!
//! [`TcpTransport`] is the NVMe/TCP transport of one target: its listening
//! sockets (non-blocking), and one poller that accepts new connections and
//! hands each to the engine, which places it on the least loaded poll group
//! (ties round robin), so the admin and I/O queues of one controller spread
//! over reactors as loop queues do. The same poller finishes flushing the
//! last bytes of connections the engine has destroyed. No thread is
//! started: the poller runs on reactor 0 (or is polled by the caller when
//! the target runs in manual mode).

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use target_core::nvmf::NvmfTarget;
use target_core::reactor::Poller;

use target_core::nvmf::SubsystemParams;

use crate::conn::{ConnSettings, DISCOVERY_NQN, Linger, TcpConn};
use crate::discovery::{self, DiscoveryEntry};

/// One listener as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// `host:port`, IPv4 or IPv6 (`[::1]:4420`).
    pub address: String,
    /// Subsystem NQN admitted, `None` for every subsystem.
    pub subsystem: Option<String>,
    /// In-capsule data size for I/O queues, bytes (IOCCSZ − 64).
    pub in_capsule_data_size: u32,
    /// Largest queue a host may connect (SQSIZE + 1).
    pub max_queue_depth: u16,
    /// Grant header digests.
    pub header_digest: bool,
    /// Grant data digests.
    pub data_digest: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:4420".into(),
            subsystem: None,
            in_capsule_data_size: 8192,
            max_queue_depth: 128,
            header_digest: true,
            data_digest: true,
        }
    }
}

/// A live listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    /// The configuration it was added with.
    pub config: ListenerConfig,
    /// The address it is bound to (the real port when 0 was asked for).
    pub bound: SocketAddr,
}

/// Why a listener could not be added.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address does not parse or resolve.
    #[error("listener address {0:?}: expected host:port (IPv6 as [addr]:port)")]
    BadAddress(String),
    /// Binding failed (in use, permission...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listener on that address exists.
    #[error("a listener on {0} exists already")]
    Exists(String),
    /// A parameter is out of range.
    #[error("listener {0}: {1}")]
    Invalid(String, String),
}

struct Entry {
    info: ListenerInfo,
    sock: TcpListener,
    settings: Arc<ConnSettings>,
}

/// The NVMe/TCP transport of one target.
pub struct TcpTransport {
    target: Weak<NvmfTarget>,
    listeners: Mutex<Vec<Entry>>,
    linger: Arc<SegQueue<Linger>>,
    live: Arc<AtomicUsize>,
    accepted: AtomicU64,
    max_xfer: u32,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("listeners", &self.lock().len())
            .finish()
    }
}

/// Resolves `host:port` to one socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, ListenError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| ListenError::BadAddress(addr.to_owned()))
}

impl TcpTransport {
    /// The transport of `target`, with no listeners yet. It serves the
    /// Discovery Log Page; the first listener registers the discovery
    /// subsystem.
    pub fn new(target: &Arc<NvmfTarget>) -> Arc<Self> {
        let max = target.engine().opts.max_xfer_bytes();
        let max_xfer = if max == 0 {
            2 << 20
        } else {
            max.min(16 << 20) as u32
        };
        let me = Arc::new(Self {
            target: Arc::downgrade(target),
            listeners: Mutex::new(Vec::new()),
            linger: Arc::new(SegQueue::new()),
            live: Arc::new(AtomicUsize::new(0)),
            accepted: AtomicU64::new(0),
            max_xfer,
        });
        let weak = Arc::downgrade(&me);
        target
            .engine()
            .set_discovery_log(Arc::new(move |host: &str| match weak.upgrade() {
                Some(t) => discovery::build(&t.discovery_entries(host)),
                None => discovery::build(&[]),
            }));
        me
    }

    /// Registers the well-known discovery subsystem, once.
    fn register_discovery(target: &NvmfTarget) {
        if target.subsystem(DISCOVERY_NQN).is_err()
            && let Err(e) = target.add_subsystem(SubsystemParams {
                nqn: DISCOVERY_NQN.into(),
                serial: "NVMF-RS-DISCOVERY".into(),
                model: "nvmf-rs discovery".into(),
                max_namespaces: 1,
                allow_any_host: true,
                hosts: Vec::new(),
            })
        {
            tracing::warn!(error = %e, "cannot register the discovery subsystem");
        }
    }

    /// What the Discovery Log Page lists for `hostnqn`.
    pub fn discovery_entries(&self, hostnqn: &str) -> Vec<DiscoveryEntry> {
        let Some(target) = self.target.upgrade() else {
            return Vec::new();
        };
        let subs = target.engine().subsystems();
        let mut out = Vec::new();
        for (i, e) in self.lock().iter().enumerate() {
            let portid = i as u16 + 1;
            for s in &subs {
                if s.nqn == DISCOVERY_NQN || !s.host_allowed(hostnqn) {
                    continue;
                }
                if e.settings.subsystem.as_ref().is_some_and(|n| *n != s.nqn) {
                    continue;
                }
                out.push(DiscoveryEntry {
                    addr: e.info.bound,
                    portid,
                    subnqn: s.nqn.clone(),
                    subtype: 2,
                    asqsz: e.info.config.max_queue_depth.min(32),
                });
            }
            out.push(DiscoveryEntry {
                addr: e.info.bound,
                portid,
                subnqn: DISCOVERY_NQN.into(),
                subtype: 3,
                asqsz: 32,
            });
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the accept poller on reactor 0 (every millisecond). In manual
    /// mode there are no reactors: call [`TcpTransport::poll`] instead.
    pub fn start_poller(self: &Arc<Self>) -> Result<(), target_core::nvmf::TargetError> {
        let Some(t) = self.target.upgrade() else {
            return Err(target_core::nvmf::TargetError::Stopping);
        };
        if t.is_manual() {
            return Ok(());
        }
        let me = self.clone();
        t.run_on_reactor(
            0,
            Box::new(move |core| {
                core.add_timer(Duration::from_millis(1), Box::new(AcceptPoller(me)));
            }),
        )
    }

    /// Binds a listener.
    pub fn add_listener(&self, config: ListenerConfig) -> Result<ListenerInfo, ListenError> {
        let addr = resolve(&config.address)?;
        if config.max_queue_depth < 2 {
            return Err(ListenError::Invalid(
                config.address.clone(),
                "max_queue_depth must be at least 2".into(),
            ));
        }
        if !config.in_capsule_data_size.is_multiple_of(16) || config.in_capsule_data_size > 1 << 20
        {
            return Err(ListenError::Invalid(
                config.address.clone(),
                "in_capsule_data_size must be a multiple of 16, at most 1 MiB".into(),
            ));
        }
        if let Some(target) = self.target.upgrade() {
            Self::register_discovery(&target);
        }
        let mut ls = self.lock();
        if ls
            .iter()
            .any(|e| e.info.bound == addr || e.info.config.address == config.address)
        {
            return Err(ListenError::Exists(config.address.clone()));
        }
        let sock = TcpListener::bind(addr).map_err(|source| ListenError::Bind {
            addr: config.address.clone(),
            source,
        })?;
        sock.set_nonblocking(true)
            .map_err(|source| ListenError::Bind {
                addr: config.address.clone(),
                source,
            })?;
        let bound = sock.local_addr().unwrap_or(addr);
        let settings = Arc::new(ConnSettings {
            in_capsule_data_size: config.in_capsule_data_size,
            maxh2cdata: 128 * 1024,
            max_xfer: self.max_xfer,
            header_digest: config.header_digest,
            data_digest: config.data_digest,
            subsystem: config.subsystem.clone(),
            max_queue_depth: config.max_queue_depth,
        });
        let info = ListenerInfo { config, bound };
        tracing::info!(addr = %bound, "NVMe/TCP listener added");
        ls.push(Entry {
            info: info.clone(),
            sock,
            settings,
        });
        Ok(info)
    }

    /// Removes the listener with that configured or bound address: new
    /// connections are refused, live ones stay.
    pub fn remove_listener(&self, address: &str) -> bool {
        let want = resolve(address).ok();
        let mut ls = self.lock();
        let before = ls.len();
        ls.retain(|e| e.info.config.address != address && Some(e.info.bound) != want);
        before != ls.len()
    }

    /// Live listeners.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.lock().iter().map(|e| e.info.clone()).collect()
    }

    /// Connections open now (accepted and not yet destroyed).
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// One pass: accepts pending connections, flushes closing ones.
    pub fn poll(&self) -> usize {
        let mut work = 0;
        let Some(target) = self.target.upgrade() else {
            return 0;
        };
        {
            let ls = self.lock();
            for e in ls.iter() {
                for _ in 0..16 {
                    let (s, peer) = match e.sock.accept() {
                        Ok(v) => v,
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(err) => {
                            tracing::warn!(addr = %e.info.bound, error = %err, "accept failed");
                            break;
                        }
                    };
                    work += 1;
                    if s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = s.set_nodelay(true);
                    tracing::debug!(%peer, addr = %e.info.bound, "NVMe/TCP connection accepted");
                    let conn = TcpConn::new(
                        s,
                        peer,
                        e.settings.clone(),
                        self.linger.clone(),
                        self.live.clone(),
                    );
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                    if let Err(err) = target.accept(
                        Box::new(conn) as Box<dyn target_core::nvmf::transport::QpairTransport>,
                        e.info.config.max_queue_depth,
                    ) {
                        tracing::warn!(%peer, error = %err, "connection refused by the target");
                    }
                }
            }
        }
        for _ in 0..self.linger.len() {
            if let Some(mut l) = self.linger.pop() {
                if !l.flush() {
                    self.linger.push(l);
                }
                work += 1;
            }
        }
        work
    }
}

struct AcceptPoller(Arc<TcpTransport>);

impl Poller for AcceptPoller {
    fn poll(&mut self) -> usize {
        self.0.poll()
    }

    fn stop(&mut self) {
        self.0.lock().clear();
    }
}
