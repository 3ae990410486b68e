//! A page-granular first-fit allocator for a queue pair's bounce area:
//! buffers without an IOVA are copied through it.

use crate::dma::PAGE;

/// Tracks which pages of a bounce area are in use.
#[derive(Debug)]
pub struct PageArena {
    used: Vec<bool>,
    /// Search hint: where the last allocation ended.
    hint: usize,
}

impl PageArena {
    /// An arena of `bytes` (rounded down to pages).
    pub fn new(bytes: usize) -> Self {
        Self {
            used: vec![false; bytes / PAGE],
            hint: 0,
        }
    }

    /// Total bytes.
    pub fn capacity(&self) -> usize {
        self.used.len() * PAGE
    }

    /// Allocates `bytes` (rounded up to pages); returns the byte offset.
    pub fn alloc(&mut self, bytes: usize) -> Option<usize> {
        let n = bytes.max(1).div_ceil(PAGE);
        let total = self.used.len();
        if n > total {
            return None;
        }
        for start in [self.hint, 0] {
            let mut i = start;
            while i + n <= total {
                match self.used[i..i + n].iter().rposition(|&u| u) {
                    Some(busy) => i += busy + 1,
                    None => {
                        self.used[i..i + n].fill(true);
                        self.hint = (i + n) % total.max(1);
                        return Some(i * PAGE);
                    }
                }
            }
        }
        None
    }

    /// Frees `bytes` at `off` (as returned by `alloc`).
    pub fn free(&mut self, off: usize, bytes: usize) {
        let i = off / PAGE;
        let n = bytes.max(1).div_ceil(PAGE);
        let end = (i + n).min(self.used.len());
        if i < end {
            self.used[i..end].fill(false);
        }
    }

    /// Pages in use.
    pub fn used_pages(&self) -> usize {
        self.used.iter().filter(|&&u| u).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_with_reuse() {
        let mut a = PageArena::new(8 * PAGE);
        let x = a.alloc(3 * PAGE).unwrap();
        let y = a.alloc(512).unwrap();
        let z = a.alloc(4 * PAGE).unwrap();
        assert_eq!((x, y, z), (0, 3 * PAGE, 4 * PAGE));
        assert_eq!(a.alloc(1), None);
        a.free(x, 3 * PAGE);
        assert_eq!(a.alloc(4 * PAGE), None);
        assert_eq!(a.alloc(2 * PAGE), Some(0));
        a.free(y, 512);
        a.free(0, 2 * PAGE);
        assert_eq!(a.alloc(4 * PAGE), Some(0));
        assert_eq!(a.used_pages(), 8);
        assert_eq!(a.alloc(9 * PAGE), None);
    }
}
