//! I/O virtual address allocation inside the ranges the IOMMU accepts.
//!
//! VFIO reports the valid IOVA ranges (VFIO_IOMMU_GET_INFO, IOVA range
//! capability); reserved windows such as the MSI doorbell at 0xfee00000 are
//! holes between them. This is a first-fit allocator over a sorted free list:
//! allocations are rare (set-up time) and few.

/// Lowest IOVA handed out: keeps 0 (and small values a bug might produce)
/// unmapped so a stray DMA faults instead of corrupting memory.
pub const IOVA_FLOOR: u64 = 1 << 20;

/// A first-fit IOVA allocator.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    /// Free ranges `[start, end)`, sorted and non-adjacent.
    free: Vec<(u64, u64)>,
}

impl IovaAllocator {
    /// An allocator over the given inclusive ranges `(start, last)`.
    pub fn new(ranges: &[(u64, u64)]) -> Self {
        let mut free: Vec<(u64, u64)> = ranges
            .iter()
            .filter_map(|&(s, last)| {
                let s = s.max(IOVA_FLOOR);
                let end = last.saturating_add(1);
                (s < end).then_some((s, end))
            })
            .collect();
        free.sort_unstable();
        Self { free }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        for i in 0..self.free.len() {
            let (s, e) = self.free[i];
            let a = s.checked_next_multiple_of(align)?;
            let Some(end) = a.checked_add(size) else {
                continue;
            };
            if end > e {
                continue;
            }
            // Split: [s, a) stays free, [a, end) is taken, [end, e) stays free.
            let mut repl = Vec::with_capacity(2);
            if s < a {
                repl.push((s, a));
            }
            if end < e {
                repl.push((end, e));
            }
            self.free.splice(i..=i, repl);
            return Some(a);
        }
        None
    }

    /// Gives back `[iova, iova + size)`.
    pub fn free(&mut self, iova: u64, size: u64) {
        let end = iova.saturating_add(size);
        let pos = self.free.partition_point(|&(s, _)| s < iova);
        self.free.insert(pos, (iova, end));
        // Merge with neighbours.
        if pos + 1 < self.free.len() && self.free[pos].1 == self.free[pos + 1].0 {
            self.free[pos].1 = self.free[pos + 1].1;
            self.free.remove(pos + 1);
        }
        if pos > 0 && self.free[pos - 1].1 == self.free[pos].0 {
            self.free[pos - 1].1 = self.free[pos].1;
            self.free.remove(pos);
        }
    }

    /// Total free bytes.
    #[cfg(test)]
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|&(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB2: u64 = 2 << 20;

    #[test]
    fn allocates_inside_ranges_and_skips_holes() {
        // QEMU intel-iommu: 39-bit space with the MSI window carved out.
        let mut a = IovaAllocator::new(&[(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)]);
        let x = a.alloc(4096, 4096).unwrap();
        assert_eq!(x, IOVA_FLOOR);
        let y = a.alloc(MB2, MB2).unwrap();
        assert_eq!(y % MB2, 0);
        assert!(y >= x + 4096);
        // A request that does not fit below the hole lands above it.
        let big = a.alloc(0x1_0000_0000, 4096).unwrap();
        assert!(big >= 0xfef0_0000);
        assert!(big + 0x1_0000_0000 <= 1 << 39);
    }

    #[test]
    fn free_merges_and_reuses() {
        let mut a = IovaAllocator::new(&[(0, (1 << 30) - 1)]);
        let total = a.free_bytes();
        let xs: Vec<u64> = (0..8).map(|_| a.alloc(8192, 4096).unwrap()).collect();
        assert_eq!(a.free_bytes(), total - 8 * 8192);
        for &x in xs.iter().rev().step_by(2) {
            a.free(x, 8192);
        }
        for &x in xs.iter().step_by(2) {
            a.free(x, 8192);
        }
        assert_eq!(a.free_bytes(), total);
        assert_eq!(a.free.len(), 1);
        assert_eq!(a.alloc(4096, 4096), Some(IOVA_FLOOR));
    }

    #[test]
    fn rejects_what_cannot_fit() {
        let mut a = IovaAllocator::new(&[(0, IOVA_FLOOR + 0xffff)]);
        assert_eq!(a.alloc(0x20000, 4096), None);
        assert_eq!(a.alloc(0, 4096), None);
        assert_eq!(a.alloc(4096, 3), None);
        assert!(a.alloc(0x10000, 4096).is_some());
        assert_eq!(a.alloc(4096, 4096), None);
    }
}
