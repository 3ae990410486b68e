//! Data buffers for one connection, kept for reuse.
//!
//! Buffers come in power-of-two size classes from 4 KiB up to the largest
//! transfer. A command takes the smallest class that holds its data (the
//! engine and the backends use only the bytes the command transfers, so a
//! larger buffer is fine) and its buffer comes back with the response. The
//! free lists fill while the connection warms up and are then reused, so
//! the steady state allocates nothing. A buffer the engine never gives
//! back (a queue pair destroyed under a backend that never completed) is
//! simply not reused: the pool never frees what a backend still holds.

use target_core::iobuf::IoBuf;

const MIN_SHIFT: u32 = 12;
/// Buffers kept per class.
const KEEP: usize = 256;

/// Free lists by size class.
#[derive(Debug)]
pub struct BufPool {
    classes: Vec<Vec<IoBuf>>,
    max: usize,
}

impl BufPool {
    /// A pool for buffers of up to `max` bytes.
    pub fn new(max: usize) -> Self {
        let max = max.max(1 << MIN_SHIFT).next_power_of_two();
        let n = (max.trailing_zeros() - MIN_SHIFT + 1) as usize;
        Self {
            classes: (0..n).map(|_| Vec::new()).collect(),
            max,
        }
    }

    fn class(len: usize) -> usize {
        let size = len.max(1 << MIN_SHIFT).next_power_of_two();
        (size.trailing_zeros() - MIN_SHIFT) as usize
    }

    /// A buffer of at least `len` bytes.
    pub fn get(&mut self, len: usize) -> IoBuf {
        let c = Self::class(len);
        match self.classes.get_mut(c).and_then(Vec::pop) {
            Some(b) => b,
            None => IoBuf::new(len.max(1 << MIN_SHIFT).next_power_of_two()),
        }
    }

    /// Takes a buffer back.
    pub fn put(&mut self, buf: IoBuf) {
        let len = buf.len();
        if !len.is_power_of_two() || len > self.max || len < (1 << MIN_SHIFT) {
            return;
        }
        if let Some(list) = self.classes.get_mut(Self::class(len))
            && list.len() < KEEP
        {
            list.push(buf);
        }
    }

    /// Buffers held for reuse.
    #[cfg(test)]
    pub fn cached(&self) -> usize {
        self.classes.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_class() {
        let mut p = BufPool::new(128 * 1024);
        let a = p.get(100);
        assert_eq!(a.len(), 4096);
        let ptr = a.as_ptr();
        p.put(a);
        assert_eq!(p.cached(), 1);
        let b = p.get(4096);
        assert_eq!(b.as_ptr(), ptr, "the same memory comes back");
        let c = p.get(5000);
        assert_eq!(c.len(), 8192);
        p.put(c);
        p.put(IoBuf::new(3000)); // foreign size: not kept
        assert_eq!(p.cached(), 1);
    }
}
