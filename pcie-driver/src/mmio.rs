//! BAR0 register access: a mapping of the device's register space with
//! bounds-checked volatile 32- and 64-bit accesses.
#![allow(unsafe_code)] // Maps BAR0 and does volatile loads/stores on it.

use std::os::fd::RawFd;
use std::ptr::NonNull;

/// A register access that could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmioError {
    /// Offset or alignment outside the BAR.
    #[error("offset {offset:#x} (width {width}) outside the {len:#x}-byte BAR or unaligned")]
    OutOfBounds {
        /// Byte offset.
        offset: usize,
        /// Access width in bytes.
        width: usize,
        /// BAR length.
        len: usize,
    },
    /// The read returned all ones: the device is gone (surprise removal).
    #[error("register {offset:#x} read all ones: device removed")]
    DeviceGone {
        /// Byte offset.
        offset: usize,
    },
}

/// A mapped BAR.
#[derive(Debug)]
pub struct Bar {
    base: NonNull<u8>,
    len: usize,
    /// Set once [`Bar::revoke`] put anonymous memory in place of the device.
    revoked: std::sync::atomic::AtomicBool,
}

// SAFETY: the mapping is device memory reached only through volatile
// accesses; no Rust reference into it exists, so sharing between threads is
// as safe as the device's own register semantics allow.
unsafe impl Send for Bar {}
// SAFETY: as above; every access is a single volatile load or store.
unsafe impl Sync for Bar {}

impl Bar {
    /// Maps `len` bytes of `fd` at `offset` (a VFIO region) read/write.
    pub fn map(fd: RawFd, offset: u64, len: usize) -> std::io::Result<Self> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh shared mapping of a device fd; the kernel checks fd,
        // offset and length. The result is only used through volatile accesses.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFAULT))?;
        Ok(Self {
            base,
            len,
            revoked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Replaces the device mapping, in one step and at the same address,
    /// with private anonymous memory reading all ones, so the device file
    /// can be closed (an mmap holds it open) while other threads may still
    /// touch the registers: their reads see a removed device
    /// ([`MmioError::DeviceGone`]), their writes land nowhere. Idempotent.
    pub fn revoke(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if self.revoked.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // SAFETY: a fresh private anonymous mapping, owned here until it is
        // moved over the BAR below (or unmapped on error).
        let tmp = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if tmp == libc::MAP_FAILED {
            self.revoked.store(false, Ordering::Release);
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: tmp is a writable mapping of self.len bytes that nobody
        // else knows about.
        unsafe { std::ptr::write_bytes(tmp.cast::<u8>(), 0xff, self.len) };
        // SAFETY: MREMAP_FIXED moves tmp onto [base, base+len), unmapping
        // the device pages there atomically (under the mm lock), so a
        // concurrent volatile access hits either the device or the
        // all-ones page, never a hole. No Rust reference points into either.
        let r = unsafe {
            libc::mremap(
                tmp,
                self.len,
                self.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.base.as_ptr().cast::<libc::c_void>(),
            )
        };
        if r == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: tmp is still ours (the move failed).
            unsafe { libc::munmap(tmp, self.len) };
            self.revoked.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    fn check(&self, offset: usize, width: usize) -> Result<*mut u8, MmioError> {
        let end = offset.checked_add(width);
        if !offset.is_multiple_of(width) || end.is_none_or(|e| e > self.len) {
            return Err(MmioError::OutOfBounds {
                offset,
                width,
                len: self.len,
            });
        }
        // SAFETY: offset + width <= len, so the pointer stays inside the mapping.
        Ok(unsafe { self.base.as_ptr().add(offset) })
    }

    /// Volatile 32-bit read.
    pub fn read32(&self, offset: usize) -> Result<u32, MmioError> {
        let p = self.check(offset, 4)?;
        // SAFETY: p is in bounds and 4-byte aligned (check), inside a live mapping.
        Ok(unsafe { p.cast::<u32>().read_volatile() })
    }

    /// Volatile 32-bit read that treats all ones as a removed device.
    pub fn read32_present(&self, offset: usize) -> Result<u32, MmioError> {
        match self.read32(offset)? {
            u32::MAX => Err(MmioError::DeviceGone { offset }),
            v => Ok(v),
        }
    }

    /// Volatile 32-bit write.
    pub fn write32(&self, offset: usize, value: u32) -> Result<(), MmioError> {
        let p = self.check(offset, 4)?;
        // SAFETY: p is in bounds and aligned, inside a live mapping.
        unsafe { p.cast::<u32>().write_volatile(value) };
        Ok(())
    }

    /// 64-bit read as two 32-bit reads, low dword first (the spec allows
    /// controllers to not support 64-bit accesses).
    pub fn read64(&self, offset: usize) -> Result<u64, MmioError> {
        self.check(offset, 8)?;
        let lo = self.read32(offset)? as u64;
        let hi = self.read32(offset + 4)? as u64;
        let v = lo | (hi << 32);
        if v == u64::MAX {
            return Err(MmioError::DeviceGone { offset });
        }
        Ok(v)
    }

    /// 64-bit write as two 32-bit writes, low dword first.
    pub fn write64(&self, offset: usize, value: u64) -> Result<(), MmioError> {
        self.check(offset, 8)?;
        self.write32(offset, value as u32)?;
        self.write32(offset + 4, (value >> 32) as u32)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned; nothing uses the
        // mapping after drop (accesses need &self).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps anonymous memory through /dev/zero to stand in for a BAR.
    fn fake_bar(len: usize) -> Bar {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        use std::os::fd::AsRawFd;
        // MAP_SHARED of /dev/zero gives shared anonymous memory.
        Bar::map(f.as_raw_fd(), 0, len).unwrap()
    }

    #[test]
    fn accesses_are_bounds_checked() {
        let bar = fake_bar(4096);
        bar.write32(0x14, 0x1234).unwrap();
        assert_eq!(bar.read32(0x14).unwrap(), 0x1234);
        bar.write64(0x28, 0x1_0000_2000).unwrap();
        assert_eq!(bar.read64(0x28).unwrap(), 0x1_0000_2000);
        assert!(matches!(
            bar.read32(4096),
            Err(MmioError::OutOfBounds { .. })
        ));
        assert!(matches!(bar.read32(2), Err(MmioError::OutOfBounds { .. })));
        assert!(matches!(
            bar.write64(4092, 0),
            Err(MmioError::OutOfBounds { .. })
        ));
        bar.write32(0x1c, u32::MAX).unwrap();
        assert_eq!(
            bar.read32_present(0x1c),
            Err(MmioError::DeviceGone { offset: 0x1c })
        );
    }

    #[test]
    fn revoke_keeps_the_address_and_reads_all_ones() {
        let bar = fake_bar(8192);
        bar.write32(0x1c, 1).unwrap();
        assert_eq!(bar.read32_present(0x1c), Ok(1));
        bar.revoke().unwrap();
        assert_eq!(
            bar.read32_present(0x1c),
            Err(MmioError::DeviceGone { offset: 0x1c })
        );
        assert_eq!(bar.read32(8188), Ok(u32::MAX));
        // Writes go to the private page; nothing faults.
        bar.write32(0x1000, 7).unwrap();
        bar.revoke().unwrap();
    }
}
