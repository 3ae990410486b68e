//! The NVMe-oF target engine: subsystems, namespaces, controllers, queue
//! pairs and command execution.
//!
//! # Architecture
//!
//! * [`target::NvmfTarget`] owns the engine, its poll groups (one per
//!   reactor) and the control operations (add a namespace, remove a
//!   subsystem...), which travel to poll groups as messages.
//! * [`poll_group::PollGroup`] is the data path of one reactor; `teardown`
//!   holds its quiesce → drain → escalate → destroy rule.
//! * [`transport`] is what a transport hands the engine: capsules in,
//!   responses out.
//! * Command handlers: [`io`] (NVM I/O validation), [`admin`], [`fabrics`],
//!   [`pages`] (Identify and log pages).
//!
//! # Not implemented
//!
//! Reservations, fused commands, protection information, namespace
//! management, firmware download, authentication. (The discovery subsystem
//! is served here, its log page built by the TCP transport.)

pub(crate) mod admin;
pub mod ctrlr;
pub mod doorbell_ring;
pub mod engine;
pub(crate) mod fabrics;
pub mod io;
pub mod latency;
pub mod nqn;
pub(crate) mod pages;
pub mod poll_group;
pub mod qpair;
pub mod raw;
pub mod stats;
pub mod subsystem;
pub mod target;
pub(crate) mod teardown;
pub mod transport;

pub use engine::EngineOptions;
pub use poll_group::PollGroup;
pub use subsystem::{Namespace, Subsystem, SubsystemParams};
pub use target::{NvmfTarget, TargetError, TargetOptions};
pub use transport::{
    Capsule, CapsuleParams, QpTransport, QueueRings, Response, RingCapsule, RingResponse, SqSlot,
};
