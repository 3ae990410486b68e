//! VFIO: the container (one IOMMU domain shared by every controller this
//! process opens), the group and device of one PCI function, its PCI config
//! space and its mapped BAR0, plus the IOVA-range query VFIO offers.
#![allow(unsafe_code)] // pread/pwrite on the device fd and the VFIO_IOMMU_GET_INFO ioctl.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio::VFIO_PCI_REQ_IRQ_INDEX;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError};
use vmm_sys_util::eventfd::EventFd;

use crate::error::DriverError;
use crate::mmio::Bar;

/// VFIO region index of BAR0.
const BAR0_REGION: u32 = 0;
/// VFIO region index of PCI config space.
const CONFIG_REGION: u32 = 7;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
const REGION_FLAG_MMAP: u32 = 1 << 2;
/// PCI config: Command register.
const PCI_COMMAND: u64 = 0x04;
/// Command: Memory Space Enable.
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command: Bus Master Enable.
const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Command: INTx disable (the driver polls).
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// `VFIO_IOMMU_GET_INFO` = `_IO(VFIO_TYPE, VFIO_BASE + 12)`.
const VFIO_IOMMU_GET_INFO: libc::c_ulong = (b';' as libc::c_ulong) << 8 | (100 + 12);
/// `VFIO_IOMMU_INFO_CAPS` flag.
const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE` capability id.
const CAP_IOVA_RANGE: u16 = 1;

/// Opens the process's VFIO container.
pub fn open_container() -> Result<Arc<VfioContainer>, DriverError> {
    VfioContainer::new(None).map(Arc::new).map_err(|e| match e {
        VfioError::OpenContainer(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            DriverError::PermissionDenied {
                path: "/dev/vfio/vfio".into(),
            }
        }
        VfioError::OpenContainer(io) if io.kind() == std::io::ErrorKind::NotFound => {
            DriverError::Vfio {
                addr: "-".into(),
                op: "open /dev/vfio/vfio",
                detail: "not found: load the vfio, vfio_iommu_type1 and vfio-pci modules".into(),
            }
        }
        other => DriverError::Vfio {
            addr: "-".into(),
            op: "open container",
            detail: other.to_string(),
        },
    })
}

/// The valid IOVA ranges of a container with at least one group attached,
/// as inclusive `(start, last)` pairs. Falls back to the low 39 bits (the
/// narrowest common IOMMU) when the kernel reports no range capability.
pub fn iova_ranges(container: &VfioContainer) -> Result<Vec<(u64, u64)>, DriverError> {
    let fallback = vec![(0, (1u64 << 39) - 1)];
    let fd = container.as_raw_fd();
    // struct vfio_iommu_type1_info { argsz, flags, iova_pgsizes: u64, cap_offset, pad }
    let mut buf = vec![0u64; 3];
    set_u32(&mut buf, 0, 24);
    ioctl_get_info(fd, &mut buf)?;
    let need = get_u32(&buf, 0) as usize;
    if need > 24 {
        buf = vec![0u64; need.div_ceil(8)];
        set_u32(&mut buf, 0, need as u32);
        ioctl_get_info(fd, &mut buf)?;
    }
    let flags = get_u32(&buf, 4);
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return Ok(fallback);
    }
    let bytes = buf.len() * 8;
    let mut off = get_u32(&buf, 16) as usize;
    let mut hops = 0;
    while off != 0 && off + 8 <= bytes && hops < 64 {
        hops += 1;
        let id = get_u32(&buf, off) as u16;
        let next = get_u32(&buf, off + 4) as usize;
        if id == CAP_IOVA_RANGE && off + 16 <= bytes {
            let n = get_u32(&buf, off + 8) as usize;
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let at = off + 16 + 16 * i;
                if at + 16 > bytes {
                    break;
                }
                out.push((get_u64(&buf, at), get_u64(&buf, at + 8)));
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
        off = next;
    }
    Ok(fallback)
}

fn get_u32(buf: &[u64], off: usize) -> u32 {
    let w = buf.get(off / 8).copied().unwrap_or(0);
    (w >> ((off % 8) * 8)) as u32
}

fn get_u64(buf: &[u64], off: usize) -> u64 {
    get_u32(buf, off) as u64 | (get_u32(buf, off + 4) as u64) << 32
}

fn set_u32(buf: &mut [u64], off: usize, v: u32) {
    if let Some(w) = buf.get_mut(off / 8) {
        let sh = (off % 8) * 8;
        *w = (*w & !(0xffff_ffffu64 << sh)) | (v as u64) << sh;
    }
}

fn ioctl_get_info(fd: RawFd, buf: &mut [u64]) -> Result<(), DriverError> {
    // SAFETY: buf is a writable, 8-byte aligned buffer whose first u32 (argsz)
    // is at most its length in bytes; the kernel writes at most argsz bytes.
    let rc = unsafe { libc::ioctl(fd, VFIO_IOMMU_GET_INFO as _, buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(DriverError::Os {
            op: "VFIO_IOMMU_GET_INFO",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// One PCI function opened through VFIO, with BAR0 mapped.
pub struct PciFunction {
    addr: String,
    bar0: Bar,
    // Dropped after bar0 (field order): the mapping goes before the fd.
    // `None` once closed for a hot removal ([`PciFunction::close`]).
    device: Mutex<Option<VfioDevice>>,
    config_offset: u64,
}

impl std::fmt::Debug for PciFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciFunction")
            .field("addr", &self.addr)
            .field("bar0_len", &self.bar0.len())
            .finish()
    }
}

fn sysfs_path(addr: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(addr)
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_owned)
}

/// Checks that `addr` exists, is bound to vfio-pci and has an IOMMU group,
/// returning the group number. Gives the errors that say what to run.
pub fn precheck(addr: &str) -> Result<u32, DriverError> {
    let path = sysfs_path(addr);
    if !path.exists() {
        return Err(DriverError::NotFound { addr: addr.into() });
    }
    let driver = link_name(&path.join("driver"));
    if driver.as_deref() != Some("vfio-pci") {
        return Err(DriverError::NotBoundToVfio {
            addr: addr.into(),
            current: driver.unwrap_or_else(|| "none".into()),
        });
    }
    let group = link_name(&path.join("iommu_group"))
        .and_then(|g| g.parse::<u32>().ok())
        .ok_or_else(|| DriverError::NoIommuGroup { addr: addr.into() })?;
    let node = format!("/dev/vfio/{group}");
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(DriverError::PermissionDenied { path: node });
    }
    // EBUSY: already open in this process (another controller of the
    // same group); VfioContainer reuses its own handle then.
    Ok(group)
}

fn group_members(addr: &str, group: u32) -> String {
    let dir = format!("/sys/kernel/iommu_groups/{group}/devices");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return "unknown".into();
    };
    let mut v = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == addr {
            continue;
        }
        let drv = link_name(&sysfs_path(&name).join("driver")).unwrap_or_else(|| "none".into());
        v.push(format!("{name} -> {drv}"));
    }
    if v.is_empty() {
        "no other devices".into()
    } else {
        v.join(", ")
    }
}

impl PciFunction {
    /// Opens `addr` in `container`, enables memory decoding and bus
    /// mastering, and maps BAR0.
    pub fn open(addr: &str, container: Arc<VfioContainer>) -> Result<Self, DriverError> {
        let group = precheck(addr)?;
        let path = sysfs_path(addr);
        let device = VfioDevice::new(&path, container, false).map_err(|e| match e {
            VfioError::GroupViable => DriverError::GroupNotViable {
                addr: addr.into(),
                group,
                others: group_members(addr, group),
            },
            VfioError::OpenGroup(io, g) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                DriverError::PermissionDenied {
                    path: format!("/dev/vfio/{g}"),
                }
            }
            other => DriverError::Vfio {
                addr: addr.into(),
                op: "open device",
                detail: other.to_string(),
            },
        })?;
        if device.get_region_flags(BAR0_REGION) & REGION_FLAG_MMAP == 0 {
            return Err(DriverError::Unsupported {
                addr: addr.into(),
                reason: "BAR0 cannot be mmapped".into(),
            });
        }
        let size = device.get_region_size(BAR0_REGION) as usize;
        let bar0 = Bar::map(
            device.as_raw_fd(),
            device.get_region_offset(BAR0_REGION),
            size,
        )
        .map_err(|source| DriverError::Os {
            op: "mmap BAR0",
            source,
        })?;
        let f = Self {
            addr: addr.into(),
            bar0,
            config_offset: device.get_region_offset(CONFIG_REGION),
            device: Mutex::new(Some(device)),
        };
        let cmd = f.config_read16(PCI_COMMAND)?;
        f.config_write16(
            PCI_COMMAND,
            cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE,
        )?;
        Ok(f)
    }

    /// The PCI address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// BAR0.
    pub fn bar0(&self) -> &Bar {
        &self.bar0
    }

    fn lock_device(&self) -> MutexGuard<'_, Option<VfioDevice>> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closed_err(&self, op: &'static str) -> DriverError {
        DriverError::Vfio {
            addr: self.addr.clone(),
            op,
            detail: "device closed (hot removal)".into(),
        }
    }

    fn config_read16(&self, off: u64) -> Result<u16, DriverError> {
        let g = self.lock_device();
        let dev = g
            .as_ref()
            .ok_or_else(|| self.closed_err("read PCI config"))?;
        let mut b = [0u8; 2];
        let pos = self.config_offset + off;
        // SAFETY: b is a valid 2-byte buffer; pread writes at most 2 bytes.
        let n = unsafe {
            libc::pread(
                dev.as_raw_fd(),
                b.as_mut_ptr().cast(),
                2,
                pos as libc::off_t,
            )
        };
        if n != 2 {
            return Err(DriverError::Os {
                op: "read PCI config",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(u16::from_le_bytes(b))
    }

    fn config_write16(&self, off: u64, v: u16) -> Result<(), DriverError> {
        let g = self.lock_device();
        let dev = g
            .as_ref()
            .ok_or_else(|| self.closed_err("write PCI config"))?;
        let b = v.to_le_bytes();
        let pos = self.config_offset + off;
        // SAFETY: b is a valid 2-byte buffer; pwrite reads at most 2 bytes.
        let n = unsafe { libc::pwrite(dev.as_raw_fd(), b.as_ptr().cast(), 2, pos as libc::off_t) };
        if n != 2 {
            return Err(DriverError::Os {
                op: "write PCI config",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Clears Bus Master Enable: the function can no longer DMA.
    pub fn disable_bus_master(&self) -> Result<(), DriverError> {
        let cmd = self.config_read16(PCI_COMMAND)?;
        self.config_write16(PCI_COMMAND, cmd & !PCI_COMMAND_MASTER)
    }

    /// Wires `fd` to the VFIO *device request* interrupt
    /// (`VFIO_PCI_REQ_IRQ_INDEX`, DATA_EVENTFD | ACTION_TRIGGER): the kernel
    /// signals it when it wants the device back (hot unplug, unbind) and
    /// then waits until every user closed the device.
    pub fn watch_device_request(&self, fd: &EventFd) -> Result<(), DriverError> {
        let g = self.lock_device();
        let dev = g
            .as_ref()
            .ok_or_else(|| self.closed_err("enable device request"))?;
        match dev.get_irq_info(VFIO_PCI_REQ_IRQ_INDEX) {
            Some(i) if i.count > 0 => {}
            _ => {
                return Err(DriverError::Unsupported {
                    addr: self.addr.clone(),
                    reason: "no VFIO device request interrupt".into(),
                });
            }
        }
        dev.enable_irq(VFIO_PCI_REQ_IRQ_INDEX, vec![fd])
            .map_err(|e| DriverError::Vfio {
                addr: self.addr.clone(),
                op: "VFIO_DEVICE_SET_IRQS (device request)",
                detail: e.to_string(),
            })
    }

    /// Gives the function back to the kernel: BAR0 is replaced by memory
    /// reading all ones ([`Bar::revoke`], so late register accesses are
    /// harmless), the device request is unwired and the device fd closed,
    /// which also detaches its group from the container when it was the
    /// group's last open device. Call only with the controller disabled
    /// (or bus mastering off): DMA memory is not touched here. Idempotent.
    pub fn close(&self) -> Result<(), DriverError> {
        let mut g = self.lock_device();
        if g.is_none() {
            return Ok(());
        }
        self.bar0.revoke().map_err(|source| DriverError::Os {
            op: "revoke BAR0 mapping",
            source,
        })?;
        if let Some(dev) = g.take() {
            // Best effort: closing the fd tears the trigger down anyway.
            let _ = dev.disable_irq(VFIO_PCI_REQ_IRQ_INDEX);
            // vfio-ioctls' drop of a device looks its IOMMU group up in
            // sysfs (and unwraps) after closing the fd; once the fd is
            // closed the kernel finishes the unplug and that sysfs entry
            // vanishes under it. A second reference to the same open file
            // keeps the device (and its sysfs entry) until the drop is
            // done; closing it then lets the unplug go on. The group stays
            // attached to the container (the kernel refuses to detach it
            // while the device is open), empty, until the process ends.
            // SAFETY: the fd belongs to `dev`, which is alive here; the
            // borrow ends before `dev` is dropped.
            let hold = unsafe { std::os::fd::BorrowedFd::borrow_raw(dev.as_raw_fd()) }
                .try_clone_to_owned();
            drop(dev);
            drop(hold);
        }
        Ok(())
    }

    /// `true` once [`PciFunction::close`] gave the device back.
    pub fn is_closed(&self) -> bool {
        self.lock_device().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_buffer_accessors() {
        let mut b = vec![0u64; 4];
        set_u32(&mut b, 0, 24);
        set_u32(&mut b, 4, 3);
        set_u32(&mut b, 16, 0xabcd);
        assert_eq!(get_u32(&b, 0), 24);
        assert_eq!(get_u32(&b, 4), 3);
        assert_eq!(get_u32(&b, 16), 0xabcd);
        set_u32(&mut b, 24, 0xffff_ffff);
        set_u32(&mut b, 28, 1);
        assert_eq!(get_u64(&b, 24), 0x1_ffff_ffff);
        assert_eq!(get_u32(&b, 800), 0);
    }

    #[test]
    fn missing_device_is_reported() {
        assert!(matches!(
            precheck("0000:ff:1f.7"),
            Err(DriverError::NotFound { .. })
        ));
    }
}
