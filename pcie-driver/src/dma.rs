//! DMA memory: regions mapped into the IOMMU at an allocated IOVA, the
//! process-wide IOVA space they share, and a buffer pool that hands out
//! zero-copy [`IoBuf`]s carrying their IOVA.
//!
//! Device-visible memory is never touched through Rust references by this
//! module: every access is a volatile load/store or a raw-pointer copy.
//! (Pool buffers are the exception by contract: an [`IoBuf`] is owned by the
//! host *or* the device, never both; see `target_core::iobuf`.)
#![allow(unsafe_code)] // mmap/mlock, vfio_dma_map and volatile access to DMA memory.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

use target_core::iobuf::{BufPool, IoBuf, PoolHandle};
use target_core::spec::{CompletionEntry, SubmissionEntry};
use vfio_ioctls::VfioContainer;

use crate::error::DriverError;
use crate::iova::IovaAllocator;
use crate::vfio;

/// Size of a huge page.
pub const HUGE_PAGE: usize = 2 << 20;
/// Size of a small page, and the NVMe memory page size this driver uses.
pub const PAGE: usize = 4096;

/// The IOMMU domain every controller of this process shares, so that a
/// pool buffer's IOVA is valid for any of them.
pub struct DmaSpace {
    container: Arc<VfioContainer>,
    iova: Mutex<IovaAllocator>,
    ranges: Vec<(u64, u64)>,
}

impl std::fmt::Debug for DmaSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaSpace")
            .field("iova_ranges", &self.ranges)
            .finish()
    }
}

static SPACE: Mutex<Weak<DmaSpace>> = Mutex::new(Weak::new());

/// Runs `open` (which attaches a device's group) with the shared container,
/// creating container and IOVA space on first use.
pub fn with_space<T>(
    open: impl FnOnce(Arc<VfioContainer>) -> Result<T, DriverError>,
) -> Result<(T, Arc<DmaSpace>), DriverError> {
    let mut g = SPACE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = g.upgrade() {
        let t = open(s.container.clone())?;
        return Ok((t, s));
    }
    let container = vfio::open_container()?;
    let t = open(container.clone())?;
    // The IOVA ranges are known only once a group is attached.
    let ranges = vfio::iova_ranges(&container)?;
    tracing::debug!(?ranges, "VFIO IOVA ranges");
    let s = Arc::new(DmaSpace {
        container,
        iova: Mutex::new(IovaAllocator::new(&ranges)),
        ranges,
    });
    *g = Arc::downgrade(&s);
    Ok((t, s))
}

impl DmaSpace {
    /// The valid IOVA ranges, inclusive.
    pub fn iova_ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

/// A block of memory mapped for device DMA.
pub struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    iova: u64,
    huge: bool,
    space: Arc<DmaSpace>,
}

// SAFETY: the region is raw memory reached only through volatile/raw-pointer
// accesses of plain data; moving the owner between threads is sound.
unsafe impl Send for DmaRegion {}
// SAFETY: shared access is volatile loads and stores of plain integers.
unsafe impl Sync for DmaRegion {}

impl std::fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaRegion")
            .field("len", &self.len)
            .field("iova", &format_args!("{:#x}", self.iova))
            .field("huge", &self.huge)
            .finish()
    }
}

fn mmap_anon(len: usize, huge: bool) -> Option<NonNull<u8>> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    if huge {
        flags |= libc::MAP_HUGETLB;
    }
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p.cast())
}

impl DmaRegion {
    /// Allocates at least `len` zeroed bytes and maps them for DMA. Uses 2 MiB
    /// huge pages for regions of 1 MiB and more when the system has them,
    /// else locked 4 KiB pages.
    pub fn new(space: &Arc<DmaSpace>, len: usize) -> Result<Self, DriverError> {
        let small = len.max(1).next_multiple_of(PAGE);
        let (ptr, len, huge) = match (small >= HUGE_PAGE / 2)
            .then(|| mmap_anon(small.next_multiple_of(HUGE_PAGE), true))
            .flatten()
        {
            Some(p) => (p, small.next_multiple_of(HUGE_PAGE), true),
            None => {
                let p = mmap_anon(small, false).ok_or_else(|| DriverError::Os {
                    op: "mmap DMA memory",
                    source: std::io::Error::last_os_error(),
                })?;
                // SAFETY: p..p+small is the mapping just created.
                if unsafe { libc::mlock(p.as_ptr().cast(), small) } != 0 {
                    let source = std::io::Error::last_os_error();
                    // SAFETY: unmapping the mapping just created, unused.
                    unsafe { libc::munmap(p.as_ptr().cast(), small) };
                    return Err(DriverError::Os {
                        op: "mlock DMA memory (raise ulimit -l)",
                        source,
                    });
                }
                (p, small, false)
            }
        };
        let align = if huge { HUGE_PAGE } else { PAGE } as u64;
        let iova = space
            .iova
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .alloc(len as u64, align);
        let Some(iova) = iova else {
            // SAFETY: unmapping the mapping just created, unused.
            unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
            return Err(DriverError::Dma(format!("no IOVA space for {len} bytes")));
        };
        // SAFETY: ptr..ptr+len is a private mapping owned by this region; no
        // Rust reference to it exists or will be created (all access below
        // is volatile or raw-pointer based), and it stays mapped until Drop
        // unmaps the IOVA first.
        let r = unsafe { space.container.vfio_dma_map(iova, len, ptr.as_ptr()) };
        if let Err(e) = r {
            space
                .iova
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .free(iova, len as u64);
            // SAFETY: unmapping the mapping just created, never mapped for DMA.
            unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
            return Err(DriverError::Dma(format!(
                "vfio_dma_map iova {iova:#x} len {len:#x}: {e}"
            )));
        }
        Ok(Self {
            ptr,
            len,
            iova,
            huge,
            space: space.clone(),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The IOVA of byte `off`.
    pub fn iova(&self, off: usize) -> u64 {
        self.iova + off as u64
    }

    /// Backed by huge pages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }

    fn at(&self, off: usize, width: usize) -> *mut u8 {
        assert!(
            off.checked_add(width).is_some_and(|e| e <= self.len),
            "DMA region access {off:#x}+{width} outside {:#x}",
            self.len
        );
        // SAFETY: bounds checked just above.
        unsafe { self.ptr.as_ptr().add(off) }
    }

    /// Volatile 16-bit load.
    pub fn read_u16(&self, off: usize) -> u16 {
        let p = self.at(off, 2);
        assert!(off.is_multiple_of(2));
        // SAFETY: in bounds and aligned; plain integer from mapped memory.
        unsafe { p.cast::<u16>().read_volatile() }
    }

    /// Volatile 32-bit load.
    pub fn read_u32(&self, off: usize) -> u32 {
        let p = self.at(off, 4);
        assert!(off.is_multiple_of(4));
        // SAFETY: in bounds and aligned.
        unsafe { p.cast::<u32>().read_volatile() }
    }

    /// Volatile 64-bit store.
    pub fn write_u64(&self, off: usize, v: u64) {
        let p = self.at(off, 8);
        assert!(off.is_multiple_of(8));
        // SAFETY: in bounds and aligned.
        unsafe { p.cast::<u64>().write_volatile(v) }
    }

    /// Writes a submission entry at `off` (volatile, 8 bytes at a time).
    pub fn write_sqe(&self, off: usize, sqe: &SubmissionEntry) {
        let b = sqe.to_bytes();
        for (i, c) in b.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(off + 8 * i, u64::from_le_bytes(w));
        }
    }

    /// Reads the completion entry at `off` except its status word, which the
    /// caller has already read (with Acquire ordering after it).
    pub fn read_cqe(&self, off: usize, status: u16) -> CompletionEntry {
        let dw0 = self.read_u32(off);
        let dw1 = self.read_u32(off + 4);
        let dw2 = self.read_u32(off + 8);
        let cid = self.read_u16(off + 12);
        CompletionEntry {
            dw0,
            dw1,
            sqhd: dw2 as u16,
            sqid: (dw2 >> 16) as u16,
            cid,
            status,
        }
    }

    /// Copies `src` into the region at `off`.
    pub fn copy_in(&self, off: usize, src: &[u8]) {
        let p = self.at(off, src.len());
        // SAFETY: in bounds; src is ordinary memory that cannot overlap a
        // private anonymous mapping nobody borrows.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) }
    }

    /// Copies from the region at `off` into `dst`. Call only when the device
    /// is done writing that range (after the command's completion).
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) {
        let p = self.at(off, dst.len());
        // SAFETY: in bounds; dst cannot overlap the region (see copy_in).
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) }
    }

    /// Fills `len` bytes at `off` with `byte`.
    pub fn fill(&self, off: usize, len: usize, byte: u8) {
        let p = self.at(off, len);
        // SAFETY: in bounds.
        unsafe { std::ptr::write_bytes(p, byte, len) }
    }

    fn raw(&self, off: usize) -> NonNull<u8> {
        let p = self.at(off, 0);
        // SAFETY: derived from a NonNull base plus an in-bounds offset.
        unsafe { NonNull::new_unchecked(p) }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // Owners drop regions only after the controller is disabled
        // (CSTS.RDY = 0), so no DMA is in flight.
        if let Err(e) = self.space.container.vfio_dma_unmap(self.iova, self.len) {
            // The IOVA stays reserved and the memory stays mapped: leaking is
            // the safe choice when the IOMMU may still point at it.
            tracing::error!(iova = self.iova, len = self.len, "vfio_dma_unmap: {e}");
            return;
        }
        self.space
            .iova
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .free(self.iova, self.len as u64);
        // SAFETY: the mapping is ours and no longer mapped for DMA.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A pool of equal-sized DMA buffers for zero-copy I/O: hand its [`IoBuf`]s
/// to an `NvmeBdev` and the device reads/writes them directly.
pub struct DmaPool {
    slots: Arc<PoolSlots>,
    /// What each buffer holds to keep `slots` (and so the mapping) alive
    /// and to give its memory back.
    handle: Arc<PoolHandle>,
}

/// The pool's memory and free list, apart from [`DmaPool`] so that the
/// buffers' handle can own them without a cycle.
struct PoolSlots {
    region: DmaRegion,
    buf_size: usize,
    free: Mutex<Vec<u32>>,
}

impl std::fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaPool")
            .field("buf_size", &self.slots.buf_size)
            .field("region", &self.slots.region)
            .finish()
    }
}

impl DmaPool {
    /// `count` buffers of `buf_size` bytes (rounded up to 4 KiB) each.
    pub fn new(
        space: &Arc<DmaSpace>,
        buf_size: usize,
        count: usize,
    ) -> Result<Arc<Self>, DriverError> {
        let buf_size = buf_size.max(1).next_multiple_of(PAGE);
        let total = buf_size
            .checked_mul(count)
            .ok_or_else(|| DriverError::Dma("pool size overflows".into()))?;
        let region = DmaRegion::new(space, total)?;
        let free = (0..count as u32).rev().collect();
        let slots = Arc::new(PoolSlots {
            region,
            buf_size,
            free: Mutex::new(free),
        });
        let handle = PoolHandle::new(
            slots.clone(),
            slots.region.raw(0),
            Some(slots.region.iova(0)),
        );
        Ok(Arc::new(Self { slots, handle }))
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.slots.buf_size
    }

    /// Buffers currently free.
    pub fn available(&self) -> usize {
        self.slots
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Takes a buffer (contents unspecified), or `None` when all are out.
    pub fn alloc(&self) -> Option<IoBuf> {
        let s = &self.slots;
        let idx = s.free.lock().unwrap_or_else(|p| p.into_inner()).pop()? as usize;
        let off = idx * s.buf_size;
        // SAFETY: slot idx was free, so no other handle covers
        // off..off+buf_size; it lies in the region (whose start and IOVA the
        // handle has), is page aligned, and stays mapped while the IoBuf
        // holds `handle` (which owns the slots, which own the region).
        Some(unsafe { IoBuf::from_pool(s.region.raw(off), s.buf_size, self.handle.clone()) })
    }
}

// SAFETY: release takes back exactly the pointers alloc handed out (checked
// by offset), after the IoBuf that held them is dropped.
unsafe impl BufPool for PoolSlots {
    fn release(&self, ptr: NonNull<u8>, _len: usize) {
        let off = ptr.as_ptr() as usize - self.region.ptr.as_ptr() as usize;
        let idx = off / self.buf_size;
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(idx as u32);
    }
}
