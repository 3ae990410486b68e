//! Data buffers that travel with a command from host to backend and back.
//!
//! A buffer is *owned* by whoever holds the command: the host hands it over
//! with the submission, the target lends it to the backend, and it comes
//! back with the completion. Moving ownership is what makes the data path
//! zero copy and what keeps a buffer alive while a backend (or a device
//! doing DMA) still holds it: nothing can free it behind the backend's back.
//!
//! Memory is page aligned so that the VFIO driver can hand it to a device
//! directly. A buffer that a DMA pool made carries its IOVA; others are
//! bounced by the driver.
#![allow(unsafe_code)] // Owns raw aligned allocations; the safe API is below.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Page size every buffer is aligned to.
pub const BUF_ALIGN: usize = 4096;

/// Gives memory back to the pool an [`IoBuf`] came from.
///
/// # Safety
///
/// `release` receives exactly the pointer the implementor passed to
/// [`IoBuf::from_pool`], with the buffer's length at that time (at most the
/// length passed: [`IoBuf::truncate`] may have shortened it), once, after
/// every access through the buffer has ended. Implementors must keep that
/// memory valid until then.
pub unsafe trait BufPool: Send + Sync {
    /// Takes back a buffer's memory.
    fn release(&self, ptr: NonNull<u8>, len: usize);
}

/// A pool as its buffers hold it: one thin pointer (the pool itself is a
/// trait object, whose fat pointer would make every [`IoBuf`] 8 bytes
/// larger, and every buffer is moved several times per I/O), and where
/// the pool's memory starts for the process and for devices, so a buffer
/// works its IOVA out instead of carrying it.
pub struct PoolHandle {
    pool: Arc<dyn BufPool>,
    base: usize,
    base_iova: Option<u64>,
}

impl PoolHandle {
    /// The handle a pool gives each buffer it makes (cloned per buffer):
    /// `pool` takes the memory back; the pool's memory starts at `base`,
    /// mapped for DMA at `base_iova` (one contiguous mapping) if at all.
    pub fn new(pool: Arc<dyn BufPool>, base: NonNull<u8>, base_iova: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            pool,
            base: base.as_ptr() as usize,
            base_iova,
        })
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolHandle")
            .field("base_iova", &self.base_iova)
            .finish()
    }
}

/// A heap allocation too large for [`IoBuf::heap_pages`], freed through a
/// handle of its own (allocated once, with the buffer: not per I/O).
struct BigHeap(Layout);

// SAFETY: the one pointer it gets back is the allocation it was made for
// (`IoBuf::new`), and it frees it with the layout it was allocated with.
unsafe impl BufPool for BigHeap {
    fn release(&self, ptr: NonNull<u8>, _len: usize) {
        // SAFETY: see the impl: `ptr` came from alloc_zeroed(self.0).
        unsafe { dealloc(ptr.as_ptr(), self.0) }
    }
}

/// Where an [`IoBuf`]'s memory goes back to. Its unused values are where
/// [`DataBuf`] keeps its variant, so a `DataBuf` is no larger than an
/// `IoBuf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Origin {
    /// The heap, `heap_pages` pages.
    Heap,
    /// The pool in `pool`.
    Pool,
}

/// An owned, page-aligned data buffer.
///
/// 24 bytes, and a [`DataBuf`] too: buffers travel with their commands
/// through the rings (a capsule is an SQE and a `DataBuf`, a response a
/// CQE and one), and every byte of them is moved several times per I/O
/// and, across two cores, every cache line of them is a trip.
pub struct IoBuf {
    ptr: NonNull<u8>,
    /// The pool to give the memory back to (`Origin::Pool`).
    pool: Option<Arc<PoolHandle>>,
    len: u32,
    /// The allocation's size in pages (`Origin::Heap`).
    heap_pages: u16,
    origin: Origin,
}

const _: () = assert!(std::mem::size_of::<IoBuf>() == 24);
const _: () = assert!(std::mem::size_of::<DataBuf>() == 24);

// SAFETY: IoBuf owns its memory exclusively (no aliasing handles exist), so
// moving it to another thread moves that exclusive access with it.
unsafe impl Send for IoBuf {}
// SAFETY: shared references only give `&[u8]`, which is safe to read from
// several threads.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// A zero-filled heap buffer of `len` bytes, page aligned.
    ///
    /// Allocates: call it when setting up, not per I/O. A length of 4 GiB
    /// or more fails as an allocation does (no command moves that much:
    /// transfers are bounded by MDTS long before).
    pub fn new(len: usize) -> Self {
        let size = len.max(1).next_multiple_of(BUF_ALIGN);
        let layout = match Layout::from_size_align(size, BUF_ALIGN) {
            Ok(l) if u32::try_from(len).is_ok() => l,
            _ => std::alloc::handle_alloc_error(Layout::new::<u8>()),
        };
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        match u16::try_from(size / BUF_ALIGN) {
            Ok(heap_pages) => Self {
                ptr,
                pool: None,
                len: len as u32,
                heap_pages,
                origin: Origin::Heap,
            },
            // 256 MiB or more: the size goes in a handle of its own.
            Err(_) => Self {
                ptr,
                pool: Some(PoolHandle::new(Arc::new(BigHeap(layout)), ptr, None)),
                len: len as u32,
                heap_pages: 0,
                origin: Origin::Pool,
            },
        }
    }

    /// A heap buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::new(data.len());
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    /// Wraps pool memory; its IOVA, when the pool has one, follows from
    /// the pool's (see [`PoolHandle::new`]). A `len` of 4 GiB or more is
    /// cut to the largest a buffer can say (4 GiB − 1); the pool gets the
    /// shorter length back, as after [`IoBuf::truncate`].
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must lie in the pool's memory (at or after the
    /// handle's `base`, within its DMA mapping when it has one), be valid
    /// for reads and writes, aligned to [`BUF_ALIGN`], not accessed through
    /// any other handle until the pool's `release` is called for it, and
    /// stay valid until then.
    pub unsafe fn from_pool(ptr: NonNull<u8>, len: usize, pool: Arc<PoolHandle>) -> Self {
        Self {
            ptr,
            pool: Some(pool),
            len: u32::try_from(len).unwrap_or(u32::MAX),
            heap_pages: 0,
            origin: Origin::Pool,
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// `true` for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The I/O virtual address the memory is mapped at, when a DMA pool made it.
    pub fn iova(&self) -> Option<u64> {
        let p = self.pool.as_ref()?;
        let off = (self.ptr.as_ptr() as usize).wrapping_sub(p.base) as u64;
        p.base_iova.map(|b| b.wrapping_add(off))
    }

    /// Raw start address, for drivers that program a device with it.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Raw mutable start address, for drivers that program a device with it.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for as long as self lives and
        // we hold the only handle (constructor contracts).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }

    /// Shrinks the visible length (capacity is kept and given back on drop).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        match (self.origin, &self.pool) {
            (Origin::Heap, _) => {
                // `new` built this very layout, so it cannot fail here; were
                // it to, leaking beats freeing with a wrong layout.
                let size = self.heap_pages as usize * BUF_ALIGN;
                if let Ok(layout) = Layout::from_size_align(size, BUF_ALIGN) {
                    // SAFETY: a heap buffer came from `new`, whose
                    // alloc_zeroed used this layout (`heap_pages` pages).
                    unsafe { dealloc(self.ptr.as_ptr(), layout) }
                }
            }
            (Origin::Pool, Some(p)) => p.pool.release(self.ptr, self.len()),
            // Not made by any constructor; nothing known to give back to.
            (Origin::Pool, None) => {}
        }
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("iova", &self.iova())
            .finish()
    }
}

/// The data of one command: none, one buffer, or a vector of buffers
/// (scatter-gather). The one-buffer case never allocates.
#[derive(Debug, Default)]
pub enum DataBuf {
    /// No data (flush, write zeroes, or a command the host sent without a buffer).
    #[default]
    None,
    /// One contiguous buffer.
    One(IoBuf),
    /// Several buffers, used in order (a boxed slice: 16 bytes, so a
    /// `DataBuf` stays 24; see [`DataBuf::many`]).
    Many(Box<[IoBuf]>),
}

#[cold]
fn many_len(v: &[IoBuf]) -> usize {
    v.iter().map(IoBuf::len).sum()
}

impl DataBuf {
    /// Several buffers, used in order.
    pub fn many(v: Vec<IoBuf>) -> Self {
        DataBuf::Many(v.into_boxed_slice())
    }

    /// Total length in bytes. Inlined: every command's validation asks,
    /// and the one-buffer case is a load.
    #[inline]
    pub fn len(&self) -> usize {
        // One buffer first, by itself: a three-way `match` decodes the
        // niche-packed discriminant in full (nine instructions), a test
        // for `One` is one compare of the tag byte.
        if let DataBuf::One(b) = self {
            return b.len();
        }
        match self {
            DataBuf::Many(v) => many_len(v),
            _ => 0,
        }
    }

    /// `true` when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segments in order.
    pub fn segments(&self) -> &[IoBuf] {
        match self {
            DataBuf::None => &[],
            DataBuf::One(b) => std::slice::from_ref(b),
            DataBuf::Many(v) => v,
        }
    }

    /// The segments in order, mutably.
    pub fn segments_mut(&mut self) -> &mut [IoBuf] {
        match self {
            DataBuf::None => &mut [],
            DataBuf::One(b) => std::slice::from_mut(b),
            DataBuf::Many(v) => v,
        }
    }

    /// Calls `f(segment_bytes, position_in_range)` for each piece of
    /// `[offset, offset + len)`; returns the bytes covered (short when the
    /// buffer is).
    fn walk(&mut self, offset: usize, len: usize, mut f: impl FnMut(&mut [u8], usize)) -> usize {
        let mut done = 0;
        let mut skip = offset;
        for seg in self.segments_mut() {
            if done == len {
                break;
            }
            let s = seg.as_mut_slice();
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(len - done);
            f(&mut s[skip..skip + n], done);
            done += n;
            skip = 0;
        }
        done
    }

    /// Copies bytes starting at byte `offset` out into `dst`.
    /// Returns the number of bytes copied (short when the buffer is).
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) -> usize {
        let mut done = 0;
        let mut skip = offset;
        for seg in self.segments() {
            if done == dst.len() {
                break;
            }
            let s = seg.as_slice();
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&s[skip..skip + n]);
            done += n;
            skip = 0;
        }
        done
    }

    /// Copies `src` in starting at byte `offset`. Returns bytes copied.
    pub fn copy_in(&mut self, offset: usize, src: &[u8]) -> usize {
        self.walk(offset, src.len(), |seg, at| {
            seg.copy_from_slice(&src[at..at + seg.len()])
        })
    }

    /// Fills `len` bytes from `offset` with zeros. Returns bytes written.
    pub fn fill_zero(&mut self, offset: usize, len: usize) -> usize {
        self.walk(offset, len, |seg, _| seg.fill(0))
    }
}

impl From<IoBuf> for DataBuf {
    fn from(b: IoBuf) -> Self {
        DataBuf::One(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_buffers_are_aligned_and_zeroed() {
        let b = IoBuf::new(100);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN, 0);
        assert_eq!(b.len(), 100);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        assert_eq!(b.iova(), None);
    }

    /// Counts what comes back, and from where.
    struct Returns(std::sync::Mutex<Vec<(usize, usize)>>);

    // SAFETY: it frees nothing; the memory is the test's own heap buffer.
    unsafe impl BufPool for Returns {
        fn release(&self, ptr: NonNull<u8>, len: usize) {
            self.0.lock().unwrap().push((ptr.as_ptr() as usize, len));
        }
    }

    #[test]
    fn pool_buffers_work_out_their_iova_and_go_back_once_with_their_length() {
        let pool = Arc::new(Returns(Default::default()));
        let mut backing = IoBuf::new(8192);
        let base = NonNull::new(backing.as_mut_ptr()).unwrap();
        let second = NonNull::new(backing.as_mut_ptr().wrapping_add(4096)).unwrap();
        let mapped = PoolHandle::new(pool.clone(), base, Some(0x40_0000));
        // SAFETY: `backing` outlives the buffers, which do not overlap.
        let mut b = unsafe { IoBuf::from_pool(second, 4096, mapped.clone()) };
        assert_eq!((b.len(), b.iova()), (4096, Some(0x40_1000)));
        b.truncate(512);
        let d = DataBuf::One(b);
        assert_eq!(d.len(), 512);
        drop(d);
        let unmapped = PoolHandle::new(pool.clone(), base, None);
        // SAFETY: as above.
        let c = unsafe { IoBuf::from_pool(base, 4096, unmapped) };
        assert_eq!(c.iova(), None);
        drop(c);
        let got = pool.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                (second.as_ptr() as usize, 512),
                (base.as_ptr() as usize, 4096)
            ]
        );
        // The unmapped handle went with its buffer; the mapped one is
        // still held here.
        drop(mapped);
        assert_eq!(Arc::strong_count(&pool), 1);
    }

    #[test]
    fn big_heap_buffers_free_through_their_own_handle() {
        // 256 MiB: one page more than the inline page count can say.
        let mut b = IoBuf::new(65536 * BUF_ALIGN);
        assert_eq!(b.len(), 65536 * BUF_ALIGN);
        assert_eq!(b.iova(), None);
        b.as_mut_slice()[65536 * BUF_ALIGN - 1] = 7;
        let small = IoBuf::new(65535 * BUF_ALIGN);
        assert!(matches!(small.origin, Origin::Heap));
        assert!(matches!(b.origin, Origin::Pool));
    }

    #[test]
    fn vectored_copy_crosses_segments() {
        let mut d = DataBuf::many(vec![IoBuf::new(3), IoBuf::new(5)]);
        assert_eq!(d.len(), 8);
        assert_eq!(d.copy_in(2, &[1, 2, 3, 4]), 4);
        let mut out = [0u8; 8];
        assert_eq!(d.copy_out(0, &mut out), 8);
        assert_eq!(out, [0, 0, 1, 2, 3, 4, 0, 0]);
        assert_eq!(d.fill_zero(3, 2), 2);
        d.copy_out(0, &mut out);
        assert_eq!(out, [0, 0, 1, 0, 0, 4, 0, 0]);
        assert_eq!(d.copy_out(6, &mut out), 2);
    }
}
