//! Hot removal in the service: one housekeeping thread for the whole
//! daemon (not one per device) polls the facade every
//! [`POLL_INTERVAL`]; each NVMe device the kernel asks back (VFIO device
//! request, e.g. PCIe hot unplug) loses its namespaces and backends
//! through the facade (hosts get Namespace Attribute Changed), the running
//! config forgets them (so `save_config` writes what runs), host jobs on
//! those namespaces end with the reason, and `bdev_get_bdevs` lists the
//! device as `removed`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use target_facade::HotRemoval;

use crate::service::{Service, lock};

/// How often the device requests are polled: well inside the kernel's
/// patience (it repeats the request every 10 s and waits indefinitely).
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Starts the housekeeping thread; it ends when the service stops or is
/// dropped.
pub(crate) fn spawn(svc: &Arc<Service>) {
    let weak: Weak<Service> = Arc::downgrade(svc);
    let r = std::thread::Builder::new()
        .name("hotplug".into())
        .spawn(move || {
            loop {
                std::thread::sleep(POLL_INTERVAL);
                let Some(svc) = weak.upgrade() else { break };
                if svc.is_stopping() {
                    break;
                }
                svc.poll_hot_removal();
            }
        });
    if let Err(e) = r {
        tracing::error!("hot removal watch not started: {e}");
    }
}

impl Service {
    /// Carries out the hot removals the facade finds (see the module doc);
    /// serialised with control requests, skipped once a stop began.
    pub fn poll_hot_removal(&self) -> Vec<HotRemoval> {
        let Ok(_g) = self.begin_change() else {
            return Vec::new();
        };
        let removals = self.target.poll_hot_removal();
        for r in &removals {
            let mut cfg = self.running_config();
            for s in cfg.subsystems.iter_mut() {
                let nqn = s.nqn.get_ref().clone();
                s.namespaces.retain(|ns| {
                    let nsid = ns.nsid.as_ref().map(|n| *n.get_ref());
                    !r.namespaces
                        .iter()
                        .any(|(q, id)| *q == nqn && Some(*id) == nsid)
                });
            }
            cfg.backends
                .retain(|b| !r.backends.iter().any(|n| n == b.name.get_ref()));
            *lock(&self.running) = cfg;
            let reason = format!(
                "namespace removed: NVMe device {} (serial {}) hot-removed",
                r.pci_addr, r.serial
            );
            for (nqn, nsid) in &r.namespaces {
                self.jobs.namespace_removed(nqn, *nsid, &reason);
            }
            match &r.released {
                Ok(()) => tracing::warn!(
                    addr = r.pci_addr,
                    namespaces = ?r.namespaces,
                    backends = ?r.backends,
                    took_ms = r.took.as_millis() as u64,
                    "hot removal done: device released; other namespaces keep serving"
                ),
                Err(e) => tracing::error!(
                    addr = r.pci_addr,
                    "hot removal: namespaces removed but the device was not released: {e}"
                ),
            }
        }
        removals
    }
}
