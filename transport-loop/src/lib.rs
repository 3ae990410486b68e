//! The loop transport: an in-process NVMe-oF transport, the user-space
//! sibling of Linux's `nvme-loop`.
//!
//! # Architecture
//!
//! A host in the same process connects to a subsystem by NQN. Each queue
//! pair is a pair of lock-free rings ([`target_core::nvmf::QueueRings`])
//! carrying real 64-byte SQEs and 16-byte CQEs; data buffers move by
//! ownership, so nothing is copied. The target end of each ring pair is
//! handed to the target ([`target_core::nvmf::NvmfTarget::accept`]), which
//! places it on a poll group.
//!
//! * [`LoopTransport`]: the listener; which subsystems it exposes.
//! * [`HostController`]: one association: Connect, property handshake,
//!   Identify, Number of Queues, keep-alive, async events, reset, shutdown,
//!   disconnect.
//! * [`HostQpair`]: an I/O queue pair owned by one thread: submit, poll,
//!   drain, reconnect. Every submission gets exactly one completion.
//!
//! # Not implemented
//!
//! Multipath, in-capsule data limits (there are none in memory),
//! authentication.

mod admin;
mod host;
mod qpair;
mod wait;

pub use host::{AsyncEvent, ConnectOptions, HostController, LoopTransport, QpairConnector};
pub use qpair::{HostCompletion, HostQpair, HostQpairStats, QpairState};
/// The command builders every host shares (in scope for `read`, `identify_raw`...).
pub use target_core::host_cmds::{AdminCommands, NvmCommands};
pub use target_core::host_error::{HostError, SubmitError};
