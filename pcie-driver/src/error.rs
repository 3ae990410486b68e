//! The driver's error type for setup and admin paths (the I/O path uses
//! `target_core::bdev::IoError`).

use target_core::spec::Status;

/// What went wrong opening or managing a controller.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No such PCI function.
    #[error(
        "PCI device {addr} not found under /sys/bus/pci/devices (check the address with lspci -D)"
    )]
    NotFound {
        /// PCI address.
        addr: String,
    },
    /// The function is bound to another driver, or to none.
    #[error(
        "PCI device {addr} is not bound to vfio-pci (current driver: {current}); bind it with:\n  \
         echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override\n  \
         echo {addr} > /sys/bus/pci/devices/{addr}/driver/unbind   # if it has a driver\n  \
         echo {addr} > /sys/bus/pci/drivers_probe\n\
         or: driverctl set-override {addr} vfio-pci"
    )]
    NotBoundToVfio {
        /// PCI address.
        addr: String,
        /// The driver it is bound to, or `none`.
        current: String,
    },
    /// The function has no IOMMU group.
    #[error(
        "PCI device {addr} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on \
         on the kernel command line, VT-d/AMD-Vi in firmware) and load vfio-pci"
    )]
    NoIommuGroup {
        /// PCI address.
        addr: String,
    },
    /// Some function in the group is bound to a non-VFIO driver.
    #[error(
        "IOMMU group {group} of {addr} is not viable: every device in \
         /sys/kernel/iommu_groups/{group}/devices must be bound to vfio-pci or unbound ({others})"
    )]
    GroupNotViable {
        /// PCI address.
        addr: String,
        /// Group number.
        group: u32,
        /// The other devices in the group and their drivers.
        others: String,
    },
    /// Opening a VFIO node was refused.
    #[error(
        "permission denied opening {path}: run as root, or give this user access to it \
         (chown/udev rule) and raise RLIMIT_MEMLOCK (ulimit -l) for DMA memory"
    )]
    PermissionDenied {
        /// The node.
        path: String,
    },
    /// A VFIO call failed.
    #[error("VFIO {op} for {addr}: {detail}")]
    Vfio {
        /// PCI address.
        addr: String,
        /// What was being done.
        op: &'static str,
        /// The error text.
        detail: String,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A register access was out of bounds or the device is gone.
    #[error("register access: {0}")]
    Mmio(#[from] crate::mmio::MmioError),
    /// Out of IOVA space or DMA memory.
    #[error("DMA memory: {0}")]
    Dma(String),
    /// The controller did not reach a state in time.
    #[error("controller {addr}: timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// PCI address.
        addr: String,
        /// What was awaited.
        what: &'static str,
        /// How long.
        ms: u64,
    },
    /// The controller reported a fatal status (CSTS.CFS) or vanished.
    #[error("controller {addr} failed: {reason}")]
    ControllerFailed {
        /// PCI address.
        addr: String,
        /// What was seen.
        reason: &'static str,
    },
    /// An admin command completed with an error status.
    #[error("controller {addr}: admin command {opcode:#04x} failed with {status}")]
    AdminCommand {
        /// PCI address.
        addr: String,
        /// Opcode.
        opcode: u8,
        /// Status.
        status: Status,
    },
    /// The controller lacks something this driver needs.
    #[error("controller {addr}: unsupported: {reason}")]
    Unsupported {
        /// PCI address.
        addr: String,
        /// What is missing.
        reason: String,
    },
    /// No such active namespace.
    #[error("controller {addr}: namespace {nsid} is not active")]
    NoNamespace {
        /// PCI address.
        addr: String,
        /// Namespace id.
        nsid: u32,
    },
    /// The controller was shut down or failed; reset it first.
    #[error("controller {addr} is not running ({state})")]
    NotRunning {
        /// PCI address.
        addr: String,
        /// Its state.
        state: &'static str,
    },
}
