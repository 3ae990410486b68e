//! A user-space NVMe PCIe driver over VFIO, and an NVMe block device for
//! `target-core`.
//!
//! ```no_run
//! use pcie_driver::{ControllerOptions, NvmeController};
//! use target_core::bdev::BlockDevice;
//! let ctrl = NvmeController::open("0000:00:04.0", ControllerOptions::default())?;
//! let ns = ctrl.namespaces()[0].nsid;
//! let bdev = ctrl.bdev(ns)?;
//! let mut ch = bdev.open_channel()?; // one per reactor
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Architecture
//!
//! ```text
//!  bdev.rs        NvmeBdev / NvmeChannel: split, bounce, complete once   (safe)
//!  controller.rs  bring-up, admin, queue creation, shutdown, counters   (safe)
//!  reset.rs       controller reset as a state machine advanced by polls (safe)
//!  quarantine.rs  buffers of commands whose channel ended, until done   (safe)
//!  queue.rs       SQ/CQ rings, doorbells, phase, CIDs (tracker.rs)      (safe)
//!  prp.rs         PRP1/PRP2/PRP lists; arena.rs bounce pages            (safe)
//!  ------------------------------------------------------------------------
//!  mmio.rs        BAR0 volatile register access                         (unsafe)
//!  dma.rs         DMA regions, IOVA space (iova.rs), buffer pool        (unsafe)
//!  vfio.rs        container / group / device, PCI config, IOVA ranges   (unsafe)
//! ```
//!
//! Unsafe code lives in the three bottom modules only; everything above
//! them is safe Rust. DMA memory is reached with volatile loads/stores or
//! raw-pointer copies, never through Rust references.
//!
//! Every controller of a process shares one VFIO container (one IOMMU
//! domain), so a [`DmaPool`] buffer's IOVA is valid for all of them. Queue
//! pairs are created lazily, one per channel, up to what Set Features /
//! Number of Queues grants; later channels share the least used queue.
//!
//! Teardown follows DESIGN.md: DMA memory is unmapped only after the
//! controller is disabled (CSTS.RDY = 0) or has bus mastering turned off;
//! every submitted I/O completes exactly once — with its status, with
//! `Aborted` when a reset or shutdown disabled the controller under it, or
//! with `DeviceFailed` after CSTS.CFS or surprise removal (all-ones reads).
//!
//! A channel that ends while the controller still has some of its commands
//! (a namespace view removed, a stop past its deadline) moves their
//! requests and bounce ranges into its queue's quarantine; they are
//! released when the completion is reaped (by any poll of that queue, or
//! [`NvmeController::poll_admin`]) or at CSTS.RDY = 0, never earlier.
//! [`ControllerCounters`] shows them (`quarantined`, `quarantined_total`,
//! `quarantine_released`); [`NvmeController::bounce_in_use`] and
//! [`DmaPool::available`] show that nothing leaks.
//!
//! Escalation never blocks a reactor: `IoChannel::reset` sends Abort and
//! returns; if the commands are still outstanding after `abort_timeout`,
//! a controller reset starts that advances one step per poll (drain,
//! settle fetches, CC.EN = 0, wait RDY = 0, release, CC.EN = 1, wait
//! RDY = 1, Number of Queues, re-create the I/O queues, with admin commands
//! submitted and reaped without waiting). Meanwhile submissions to this
//! controller are given back (retry later); other controllers are not
//! involved. [`NvmeController::reset`] runs the same machine to its end for
//! callers off the reactors.
//!
//! Hot removal: each controller listens on the VFIO device request
//! (`hotplug.rs`); once the kernel asks for the device, new I/O fails with
//! `IoError::Removed` and [`NvmeController::release_device`] disables the
//! controller and closes the device so the unplug completes.
//!
//! # Not implemented
//!
//! - Interrupts (the driver only polls), SGLs, metadata / protection
//!   information formats (such namespaces are skipped), CMB/PMR, multiple
//!   command sets, namespace management, hot-add.
//! - Each queue pair has a mutex even when one channel owns it (uncontended
//!   then; needed so reset/shutdown can reach every queue).
//! - Non-DMA buffers larger than the bounce area (default 4 MiB per queue)
//!   fail with `IoError::Os(ENOMEM)`.
//! - One I/O may need at most as many commands as a queue has slots.
//!
//! # Key constants
//!
//! - Memory page size 4 KiB (CC.MPS = 0); SQE 64 B, CQE 16 B.
//! - Admin queue 32 entries; I/O queues 256 entries (capped by CAP.MQES).
//! - Largest command 2 MiB ([`MAX_COMMAND_BYTES`]) or MDTS if lower; one
//!   PRP-list page per request slot; unused list entries hold
//!   `0xffff_ffff_ffff_f000`.
//! - CID = slot index | sequence << index bits.
//! - 2 MiB huge pages for DMA regions of 1 MiB and more when available.
//! - IOVAs start at 1 MiB, inside the ranges VFIO reports.

mod arena;
mod bdev;
mod controller;
mod dma;
mod error;
mod hotplug;
pub mod identify;
mod iova;
mod mmio;
mod prp;
mod quarantine;
mod queue;
pub mod regs;
mod reset;
mod tracker;
mod vfio;

pub use bdev::{NvmeBdev, NvmeChannel};
pub use controller::{
    ADMIN_QUEUE_ENTRIES, ControllerCounters, ControllerOptions, CtrlState, MAX_COMMAND_BYTES,
    NamespaceInfo, NvmeController,
};
pub use dma::DmaPool;
pub use error::DriverError;
pub use hotplug::RemovalState;
pub use mmio::MmioError;
pub use vfio::precheck;
