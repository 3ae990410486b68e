//! Hot removal through the VFIO *device request*.
//!
//! When the kernel wants a vfio-pci function back (PCIe hot unplug: the
//! slot's attention button, QEMU's `device_del`; or an unbind), it does not
//! take the device from a user that holds it open: it signals the device
//! request interrupt (`VFIO_PCI_REQ_IRQ_INDEX`) again and again and waits
//! until every user closed the device. Without a listener it waits forever.
//!
//! This module holds the listener: one non-blocking eventfd per controller,
//! wired to that interrupt at open. Nothing blocks on it and no thread
//! watches it: a poller (the facade's, the service's housekeeping) asks
//! [`crate::NvmeController::removal_requested`], which reads the eventfd
//! once per call. From the first signal on, the controller is *removed*:
//! new I/O fails at once with [`target_core::bdev::IoError::Removed`] (a
//! path status without DNR), commands already at the device still complete
//! normally (the device keeps working until it is released), and the owner
//! takes the namespaces away and calls
//! [`crate::NvmeController::release_device`], which disables the controller
//! and closes the device so the kernel's unplug completes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::controller::{CtrlState, NvmeController};
use crate::error::DriverError;
use crate::vfio::PciFunction;

/// Where a controller is in its removal, as reports show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalState {
    /// No removal asked for.
    Present,
    /// The kernel asked for the device: I/O is refused, its namespaces are
    /// being taken away.
    Removing,
    /// The device was closed and given back to the kernel.
    Removed,
}

impl RemovalState {
    /// Lower-case name for logs and RPC answers.
    pub fn name(self) -> &'static str {
        match self {
            Self::Present => "present",
            Self::Removing => "removing",
            Self::Removed => "removed",
        }
    }
}

/// The device-request listener of one controller.
#[derive(Debug)]
pub(crate) struct RemovalWatch {
    /// `None` when the kernel offers no device request interrupt (then only
    /// a surprise removal, seen as all-ones reads, is noticed).
    fd: Option<EventFd>,
    requested: AtomicBool,
    released: AtomicBool,
    /// Signals counted (the kernel repeats its request until released).
    signals: AtomicU64,
    since: std::sync::Mutex<Option<Instant>>,
}

impl RemovalWatch {
    /// Wires a fresh non-blocking eventfd to `pci`'s device request. A
    /// failure is logged, not fatal: the controller works without it.
    pub fn register(pci: &PciFunction) -> Self {
        let fd = match EventFd::new(libc::EFD_NONBLOCK) {
            Ok(fd) => match pci.watch_device_request(&fd) {
                Ok(()) => Some(fd),
                Err(e) => {
                    tracing::warn!(addr = pci.addr(), "hot removal not watched: {e}");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(addr = pci.addr(), "hot removal not watched: eventfd: {e}");
                None
            }
        };
        Self::with_fd(fd)
    }

    fn with_fd(fd: Option<EventFd>) -> Self {
        Self {
            fd,
            requested: AtomicBool::new(false),
            released: AtomicBool::new(false),
            signals: AtomicU64::new(0),
            since: std::sync::Mutex::new(None),
        }
    }

    /// `true` when the device request interrupt is wired.
    pub fn is_armed(&self) -> bool {
        self.fd.is_some()
    }

    /// Reads the eventfd without blocking; returns `true` when this call
    /// saw the *first* request (the caller starts the removal then).
    pub fn poll(&self) -> bool {
        let Some(fd) = &self.fd else { return false };
        match fd.read() {
            Ok(n) if n > 0 => {
                self.signals.fetch_add(n, Ordering::Relaxed);
                self.mark_requested()
            }
            // EAGAIN: nothing signalled. Other errors cannot happen on an
            // eventfd we own; treat them as "nothing".
            _ => false,
        }
    }

    /// Marks the removal requested (also for callers that learn of it some
    /// other way); `true` the first time.
    pub fn mark_requested(&self) -> bool {
        let first = !self.requested.swap(true, Ordering::AcqRel);
        if first {
            *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        first
    }

    /// The hot I/O path's check: one atomic load.
    #[inline]
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub fn mark_released(&self) {
        self.released.store(true, Ordering::Release);
    }

    pub fn state(&self) -> RemovalState {
        if self.released.load(Ordering::Acquire) {
            RemovalState::Removed
        } else if self.is_requested() {
            RemovalState::Removing
        } else {
            RemovalState::Present
        }
    }

    /// Device request signals read so far.
    pub fn signals(&self) -> u64 {
        self.signals.load(Ordering::Relaxed)
    }

    /// When the first request was seen.
    pub fn requested_at(&self) -> Option<Instant> {
        *self.since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl NvmeController {
    /// Polls the device request (one non-blocking eventfd read): `true`
    /// exactly once, on the call that first sees the kernel ask for the
    /// device back. From then on new I/O fails with
    /// [`target_core::bdev::IoError::Removed`]; the caller removes what is
    /// built on the controller and then calls
    /// [`NvmeController::release_device`].
    pub fn removal_requested(&self) -> bool {
        let first = self.removal().poll();
        if first {
            tracing::warn!(
                addr = self.pci_addr(),
                serial = %self.identity().serial,
                "device request: the kernel wants the device back (hot removal); \
                 new I/O fails with a path error, in-flight I/O completes"
            );
        }
        first
    }

    /// Starts a removal without the kernel's request (tests, an operator).
    pub fn request_removal(&self) -> bool {
        self.removal().mark_requested()
    }

    /// Where the controller is in a hot removal.
    pub fn removal_state(&self) -> RemovalState {
        self.removal().state()
    }

    /// `true` when the device request interrupt is wired (the kernel can
    /// tell this controller that its device is being unplugged).
    pub fn hot_removal_watched(&self) -> bool {
        self.removal().is_armed()
    }

    /// Gives the device back to the kernel: refuses new I/O, drains what is
    /// at the device (bounded by `drain_timeout`; the kernel keeps the
    /// device working until it is released) and shuts the controller down
    /// (disabled at the end, or failed with bus mastering off), so nothing
    /// outstanding can be written any more; then closes the VFIO device
    /// (BAR0 revoked, device request unwired, fd closed, group detached),
    /// which lets the kernel's unplug complete. The queues' DMA memory is
    /// freed with the last reference to the controller. Idempotent.
    pub fn release_device(&self) -> Result<(), DriverError> {
        self.removal().mark_requested();
        if self.pci().is_closed() {
            return Ok(());
        }
        let t0 = Instant::now();
        match self.state() {
            CtrlState::Failed | CtrlState::Shutdown => {}
            _ => {
                if let Err(e) = self.shutdown() {
                    // shutdown() failed the controller: CC.EN = 0 and bus
                    // mastering off, so the device no longer does DMA.
                    tracing::warn!(addr = self.pci_addr(), "shutdown before release: {e}");
                }
            }
        }
        if self.state() == CtrlState::Failed {
            let _ = self.pci().disable_bus_master();
        }
        self.pci().close()?;
        self.removal().mark_released();
        tracing::warn!(
            addr = self.pci_addr(),
            signals = self.removal().signals(),
            since_request_ms = self
                .removal()
                .requested_at()
                .map(|t| t.elapsed().as_millis() as u64),
            release_ms = t0.elapsed().as_millis() as u64,
            "NVMe controller removed: device closed and given back to the kernel"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_signal_is_seen_once_and_counted() {
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let w = RemovalWatch::with_fd(Some(fd.try_clone().unwrap()));
        assert!(w.is_armed());
        assert!(!w.poll(), "nothing signalled yet");
        assert_eq!(w.state(), RemovalState::Present);
        fd.write(1).unwrap();
        fd.write(1).unwrap();
        assert!(w.poll(), "first request starts the removal");
        assert!(w.is_requested());
        assert_eq!(w.state(), RemovalState::Removing);
        assert_eq!(w.signals(), 2);
        // The kernel repeats the request: counted, but not a new removal.
        fd.write(1).unwrap();
        assert!(!w.poll());
        assert_eq!(w.signals(), 3);
        assert!(w.requested_at().is_some());
        w.mark_released();
        assert_eq!(w.state(), RemovalState::Removed);
    }

    #[test]
    fn without_the_interrupt_nothing_fires() {
        let w = RemovalWatch::with_fd(None);
        assert!(!w.is_armed());
        assert!(!w.poll());
        assert!(w.mark_requested());
        assert!(!w.mark_requested());
    }
}
