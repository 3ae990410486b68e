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
/// larger, and every buffer is moved several times per I/O).
pub struct PoolHandle(Arc<dyn BufPool>);

impl PoolHandle {
    /// The handle a pool gives each buffer it makes (cloned per buffer).
    pub fn new(pool: Arc<dyn BufPool>) -> Arc<Self> {
        Arc::new(Self(pool))
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PoolHandle")
    }
}

/// What [`IoBuf::word`] holds. Its unused values are where [`DataBuf`]
/// keeps its variant, so a `DataBuf` is no larger than an `IoBuf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Word {
    /// A heap buffer: the allocation's size (alignment [`BUF_ALIGN`]).
    HeapSize,
    /// A pool buffer mapped for DMA: its IOVA.
    Iova,
    /// A pool buffer without an IOVA: nothing.
    Unused,
}

/// An owned, page-aligned data buffer.
///
/// 32 bytes, and a [`DataBuf`] too: buffers travel with their commands
/// through the rings (a capsule is an SQE and a `DataBuf`, a response a
/// CQE and one), and every byte of them is moved several times per I/O.
pub struct IoBuf {
    ptr: NonNull<u8>,
    /// See [`Word`].
    word: u64,
    /// The pool to give the memory back to; `None` for the heap.
    pool: Option<Arc<PoolHandle>>,
    len: u32,
    holds: Word,
}

const _: () = assert!(std::mem::size_of::<IoBuf>() == 32);
const _: () = assert!(std::mem::size_of::<DataBuf>() == 32);

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
        Self {
            ptr,
            word: layout.size() as u64,
            pool: None,
            len: len as u32,
            holds: Word::HeapSize,
        }
    }

    /// A heap buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::new(data.len());
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    /// Wraps pool memory that is already mapped for DMA at `iova`. A `len`
    /// of 4 GiB or more is cut to the largest a buffer can say (4 GiB − 1);
    /// the pool gets the shorter length back, as after [`IoBuf::truncate`].
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must be valid for reads and writes, aligned to
    /// [`BUF_ALIGN`], not accessed through any other handle until `pool`'s
    /// `release` is called for it, and stay valid until then.
    pub unsafe fn from_pool(
        ptr: NonNull<u8>,
        len: usize,
        iova: Option<u64>,
        pool: Arc<PoolHandle>,
    ) -> Self {
        Self {
            ptr,
            word: iova.unwrap_or(0),
            pool: Some(pool),
            len: u32::try_from(len).unwrap_or(u32::MAX),
            holds: if iova.is_some() {
                Word::Iova
            } else {
                Word::Unused
            },
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
        (self.holds == Word::Iova).then_some(self.word)
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
        match &self.pool {
            None => {
                // `new` built this very layout, so it cannot fail here; were
                // it to, leaking beats freeing with a wrong layout.
                if let Ok(layout) = Layout::from_size_align(self.word as usize, BUF_ALIGN) {
                    // SAFETY: a buffer without a pool came from `new`, whose
                    // alloc_zeroed used this layout (its size is in `word`).
                    unsafe { dealloc(self.ptr.as_ptr(), layout) }
                }
            }
            Some(pool) => pool.0.release(self.ptr, self.len()),
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
    /// Several buffers, used in order.
    Many(Vec<IoBuf>),
}

#[cold]
fn many_len(v: &[IoBuf]) -> usize {
    v.iter().map(IoBuf::len).sum()
}

impl DataBuf {
    /// Total length in bytes. Inlined: every command's validation asks,
    /// and the one-buffer case is a load.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            DataBuf::None => 0,
            DataBuf::One(b) => b.len(),
            DataBuf::Many(v) => many_len(v),
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
    fn pool_buffers_report_their_iova_and_go_back_once_with_their_length() {
        let pool = Arc::new(Returns(Default::default()));
        let handle = PoolHandle::new(pool.clone());
        let mut backing = IoBuf::new(8192);
        let at = NonNull::new(backing.as_mut_ptr()).unwrap();
        // SAFETY: `backing` outlives both buffers, and only one of them
        // exists at a time.
        let mut b = unsafe { IoBuf::from_pool(at, 8192, Some(0x4000), handle.clone()) };
        assert_eq!((b.len(), b.iova()), (8192, Some(0x4000)));
        b.truncate(512);
        let d = DataBuf::One(b);
        assert_eq!(d.len(), 512);
        drop(d);
        // SAFETY: as above.
        let c = unsafe { IoBuf::from_pool(at, 4096, None, handle) };
        assert_eq!(c.iova(), None);
        drop(c);
        let got = pool.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![(at.as_ptr() as usize, 512), (at.as_ptr() as usize, 4096)]
        );
        // The handle went with the last buffer, and with it its hold on
        // the pool: only the test's own remains.
        assert_eq!(Arc::strong_count(&pool), 1);
    }

    #[test]
    fn vectored_copy_crosses_segments() {
        let mut d = DataBuf::Many(vec![IoBuf::new(3), IoBuf::new(5)]);
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
