//! Subsystems and namespaces: what a host connects to and what it reads.
//!
//! A subsystem's mutable state (namespaces, allowed hosts, controllers) sits
//! behind a mutex: it is touched by control operations and admin commands
//! only. The I/O path never reads it; each poll group keeps its own copy of
//! the namespace table, updated by messages.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::ctrlr::Controller;
use crate::bdev::BdevRef;

/// A namespace: a block device exported under an NSID.
#[derive(Debug)]
pub struct Namespace {
    /// Namespace ID, 1-based.
    pub nsid: u32,
    /// Backing block device.
    pub bdev: BdevRef,
    /// Writes are refused with Namespace Write Protected.
    pub read_only: bool,
    /// Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// Namespace UUID.
    pub uuid: [u8; 16],
    /// I/O counters, one set per poll group (index = poll group id).
    pub stats: Vec<Arc<super::stats::NsIoStats>>,
    /// Latency histograms on (read by poll groups when they open a view).
    pub latency_tracking: std::sync::atomic::AtomicBool,
}

impl Namespace {
    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.bdev.info().block_size
    }

    /// Size in logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.bdev.info().num_blocks
    }

    /// Counters summed over every poll group.
    pub fn totals(&self) -> super::stats::NsIoTotals {
        let mut t = super::stats::NsIoTotals::default();
        for s in &self.stats {
            s.add_to(&mut t);
        }
        t
    }
}

/// Parameters of a new subsystem.
#[derive(Clone, Debug)]
pub struct SubsystemParams {
    /// NVMe Qualified Name.
    pub nqn: String,
    /// Serial number reported in Identify Controller (≤ 20 ASCII).
    pub serial: String,
    /// Model number reported in Identify Controller (≤ 40 ASCII).
    pub model: String,
    /// Highest NSID allowed.
    pub max_namespaces: u32,
    /// Any host may connect.
    pub allow_any_host: bool,
    /// Host NQNs allowed to connect when `allow_any_host` is false.
    pub hosts: Vec<String>,
}

/// Mutable subsystem state.
#[derive(Debug, Default)]
pub struct SubsystemState {
    /// Namespaces by NSID.
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
    /// Any host may connect.
    pub allow_any_host: bool,
    /// Allowed host NQNs.
    pub hosts: Vec<String>,
    /// Live controllers by controller ID.
    pub controllers: BTreeMap<u16, Arc<Controller>>,
    /// Being deleted (or the target is stopping): Connect is refused from
    /// the moment this is set, under the same lock a Connect takes to add
    /// its controller, so no controller can join after the deletion took
    /// its list of controllers to tear down (and outlive the subsystem,
    /// whose index a new one may reuse).
    pub deleting: bool,
    next_cntlid: u16,
}

/// An NVM subsystem.
pub struct Subsystem {
    /// Index in the target (stable for the subsystem's life).
    pub id: u32,
    /// NQN.
    pub nqn: String,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Highest NSID allowed.
    pub max_namespaces: u32,
    state: Mutex<SubsystemState>,
}

impl fmt::Debug for Subsystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subsystem")
            .field("id", &self.id)
            .field("nqn", &self.nqn)
            .finish()
    }
}

impl Subsystem {
    /// A subsystem with no namespaces.
    pub fn new(id: u32, p: SubsystemParams) -> Self {
        Self {
            id,
            nqn: p.nqn,
            serial: p.serial,
            model: p.model,
            max_namespaces: p.max_namespaces,
            state: Mutex::new(SubsystemState {
                allow_any_host: p.allow_any_host,
                hosts: p.hosts,
                next_cntlid: 1,
                ..Default::default()
            }),
        }
    }

    /// Locks the mutable state. A poisoned lock (a panic elsewhere while
    /// holding it) is recovered: the state is plain data and stays usable.
    pub fn state(&self) -> MutexGuard<'_, SubsystemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `true` if `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let st = self.state();
        st.allow_any_host || st.hosts.iter().any(|h| h == hostnqn)
    }

    /// The namespace with `nsid`, if active.
    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.state().namespaces.get(&nsid).cloned()
    }

    /// Active NSIDs in increasing order.
    pub fn active_nsids(&self) -> Vec<u32> {
        self.state().namespaces.keys().copied().collect()
    }

    /// Allocates a controller ID (1..=0xffef, the dynamic range).
    pub fn alloc_cntlid(st: &mut SubsystemState) -> Option<u16> {
        for _ in 0..0xffef {
            let id = st.next_cntlid;
            st.next_cntlid = if id >= 0xffef { 1 } else { id + 1 };
            if !st.controllers.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }
}
