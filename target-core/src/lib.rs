//! The target's core: NVMe wire types, DMA-able buffers, block devices,
//! reactors, and the NVMe-oF target engine (subsystems, namespaces,
//! controllers, queue pairs and command execution).
//!
//! # Architecture
//!
//! ```text
//!  host (transport) ──SQE+buf──▶ queue pair ──▶ controller ──▶ namespace
//!                                   ▲  (one reactor owns it)       │
//!                                   └──CQE+buf◀── bdev channel ◀───┘
//! ```
//!
//! Every queue pair is owned by one reactor; each reactor has its own channel
//! on each block device, so no lock or allocation sits on the I/O path.

pub mod bdev;
pub mod clock;
pub mod config;
pub mod hist;
pub mod host_cmds;
pub mod host_ctrl;
pub mod host_error;
pub mod iobuf;
pub mod nvmf;
pub mod reactor;
pub mod spec;
