//! Physical Region Page lists (NVMe Base 2.0c §4.1.1): turning a transfer's
//! IOVA segments into PRP1, PRP2 and a PRP list, without allocating.
//!
//! Rules: the first entry may start at an offset inside a page; every later
//! entry is page aligned; every segment but the last must end on a page
//! boundary. A transfer of one page uses PRP1 only, of two pages PRP1+PRP2,
//! of more PRP1 plus a list whose pages chain through their last entry.

use crate::dma::PAGE;

/// Entries per list page.
pub const ENTRIES_PER_PAGE: usize = PAGE / 8;
/// Written into list entries the device must not use: an IOVA outside every
/// IOMMU range, so a device that overreads faults instead of corrupting.
pub const POISON: u64 = 0xffff_ffff_ffff_f000;

/// Why a transfer cannot be described with PRPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrpError {
    /// A segment boundary is not page aligned where PRPs need it (bounce it).
    NotPageAligned,
    /// More entries than the list pages hold.
    TooLong,
    /// No data.
    Empty,
}

/// The data pointer of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prp {
    /// PRP Entry 1.
    pub prp1: u64,
    /// PRP Entry 2 (a data page, a list pointer, or 0).
    pub prp2: u64,
    /// List entries written (0 when no list is used).
    pub list_entries: usize,
}

/// Calls `f` with each page entry of the transfer, in order, without
/// allocating. Fails on a misaligned segment boundary.
fn for_each_entry(segs: &[(u64, usize)], mut f: impl FnMut(usize, u64)) -> Result<usize, PrpError> {
    let pg = PAGE as u64;
    let segs_nz = segs.iter().filter(|s| s.1 > 0);
    let count = segs_nz.clone().count();
    let mut n = 0;
    for (k, &(iova, len)) in segs_nz.enumerate() {
        let is_last = k + 1 == count;
        if (k > 0 && iova % pg != 0) || (!is_last && !(iova + len as u64).is_multiple_of(pg)) {
            return Err(PrpError::NotPageAligned);
        }
        let start = iova & !(pg - 1);
        let pages = (iova + len as u64 - start).div_ceil(pg);
        for i in 0..pages {
            f(n, if i == 0 { iova } else { start + i * pg });
            n += 1;
        }
    }
    Ok(n)
}

/// Number of page entries a transfer needs, validating alignment.
pub fn entry_count(segs: &[(u64, usize)]) -> Result<usize, PrpError> {
    for_each_entry(segs, |_, _| ())
}

/// List pages needed for `entries` page entries (0 when PRP1/PRP2 suffice).
pub fn list_pages_needed(entries: usize) -> usize {
    if entries <= 2 {
        return 0;
    }
    let rest = entries - 1;
    // Each page but the last holds ENTRIES_PER_PAGE - 1 entries plus a chain.
    if rest <= ENTRIES_PER_PAGE {
        1
    } else {
        1 + (rest - ENTRIES_PER_PAGE).div_ceil(ENTRIES_PER_PAGE - 1)
    }
}

/// Builds the data pointer for `segs` (IOVA, length), writing list entries
/// through `write(byte_offset_in_list_area, value)`. The list area is
/// `list_pages` contiguous pages starting at IOVA `list_iova`. The entry
/// after the last one written is poisoned when it exists.
pub fn build(
    segs: &[(u64, usize)],
    list_iova: u64,
    list_pages: usize,
    mut write: impl FnMut(usize, u64),
) -> Result<Prp, PrpError> {
    let n = entry_count(segs)?;
    if n == 0 {
        return Err(PrpError::Empty);
    }
    if list_pages_needed(n) > list_pages {
        return Err(PrpError::TooLong);
    }
    let mut prp = Prp {
        prp1: 0,
        prp2: 0,
        list_entries: 0,
    };
    let use_list = n > 2;
    // Position in the list area, counted in 8-byte slots.
    let mut slot = 0usize;
    let remaining_after = |i: usize| n - i;
    for_each_entry(segs, |i, e| {
        if i == 0 {
            prp.prp1 = e;
        } else if !use_list {
            prp.prp2 = e;
        } else {
            // Last slot of a page chains to the next page when more than
            // one entry remains.
            if slot % ENTRIES_PER_PAGE == ENTRIES_PER_PAGE - 1 && remaining_after(i) > 1 {
                let next_page = slot / ENTRIES_PER_PAGE + 1;
                write(slot * 8, list_iova + (next_page * PAGE) as u64);
                slot += 1;
            }
            write(slot * 8, e);
            slot += 1;
        }
    })?;
    if use_list {
        prp.prp2 = list_iova;
        prp.list_entries = slot;
        if slot < list_pages * ENTRIES_PER_PAGE {
            write(slot * 8, POISON);
        }
    }
    Ok(prp)
}

/// `true` when `segs` can be described with PRPs (else bounce).
pub fn is_prp_compatible(segs: &[(u64, usize)]) -> bool {
    entry_count(segs).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const P: u64 = PAGE as u64;
    const LIST: u64 = 0x7000_0000;

    fn run(segs: &[(u64, usize)], pages: usize) -> (Result<Prp, PrpError>, BTreeMap<usize, u64>) {
        let mut m = BTreeMap::new();
        let r = build(segs, LIST, pages, |o, v| {
            m.insert(o, v);
        });
        (r, m)
    }

    /// Walks PRP1/PRP2/list as a device would and returns the data pages.
    fn walk(prp: Prp, list: &BTreeMap<usize, u64>, total_pages: usize) -> Vec<u64> {
        let mut out = vec![prp.prp1];
        if total_pages == 2 {
            out.push(prp.prp2);
        } else if total_pages > 2 {
            let mut addr = prp.prp2;
            let mut left = total_pages - 1;
            while left > 0 {
                let off = (addr - LIST) as usize;
                let idx = (off / 8) % ENTRIES_PER_PAGE;
                let v = list[&off];
                if idx == ENTRIES_PER_PAGE - 1 && left > 1 {
                    addr = v; // chain
                    continue;
                }
                out.push(v);
                left -= 1;
                addr += 8;
            }
        }
        out
    }

    #[test]
    fn one_and_two_pages_need_no_list() {
        let (r, m) = run(&[(0x10_0000, 512)], 1);
        assert_eq!(r.unwrap().prp1, 0x10_0000);
        assert_eq!(r.unwrap().prp2, 0);
        assert!(m.is_empty());
        // Unaligned 4 KiB crosses into a second page.
        let (r, m) = run(&[(0x10_0200, 4096)], 1);
        let r = r.unwrap();
        assert_eq!((r.prp1, r.prp2), (0x10_0200, 0x10_1000));
        assert!(m.is_empty());
    }

    #[test]
    fn lists_hold_the_rest_and_poison_the_next_entry() {
        let (r, m) = run(&[(0x20_0000, 16 * PAGE)], 1);
        let r = r.unwrap();
        assert_eq!(r.prp1, 0x20_0000);
        assert_eq!(r.prp2, LIST);
        assert_eq!(r.list_entries, 15);
        for i in 0..15 {
            assert_eq!(m[&(i * 8)], 0x20_0000 + (i as u64 + 1) * P);
        }
        assert_eq!(m[&(15 * 8)], POISON);
        assert_eq!(walk(r, &m, 16).len(), 16);
    }

    #[test]
    fn long_lists_chain_across_list_pages() {
        // 1100 pages with an unaligned start: 1101 entries, three list pages.
        let base = 0x4000_0800;
        let len = 1100 * PAGE;
        let n = entry_count(&[(base, len)]).unwrap();
        assert_eq!(n, 1101);
        assert_eq!(list_pages_needed(n), 3);
        let (r, _) = run(&[(base, len)], 2);
        assert_eq!(r, Err(PrpError::TooLong));
        let (r, m) = run(&[(base, len)], 3);
        let r = r.unwrap();
        // The chain entry of page 0 points at page 1.
        assert_eq!(m[&((ENTRIES_PER_PAGE - 1) * 8)], LIST + P);
        let pages = walk(r, &m, n);
        assert_eq!(pages.len(), n);
        assert_eq!(pages[0], base);
        for w in pages.windows(2).skip(1) {
            assert_eq!(w[1], w[0] + P);
        }
        assert_eq!(pages[1], 0x4000_1000);
        // Exactly 512 entries fit one page without a chain.
        assert_eq!(list_pages_needed(513), 1);
        assert_eq!(list_pages_needed(514), 2);
    }

    #[test]
    fn vectored_page_aligned_segments() {
        let segs = [(0x10_0000, 2 * PAGE), (0x90_0000, PAGE), (0x50_0000, 100)];
        assert!(is_prp_compatible(&segs));
        let (r, m) = run(&segs, 1);
        let pages = walk(r.unwrap(), &m, 4);
        assert_eq!(pages, vec![0x10_0000, 0x10_1000, 0x90_0000, 0x50_0000]);
    }

    #[test]
    fn misaligned_segments_need_a_bounce() {
        let segs = [(0x10_0000, 512), (0x20_0000, 512)];
        assert!(!is_prp_compatible(&segs));
        assert_eq!(run(&segs, 1).0, Err(PrpError::NotPageAligned));
        let segs = [(0x10_0000, PAGE), (0x20_0200, 512)];
        assert_eq!(run(&segs, 1).0, Err(PrpError::NotPageAligned));
        assert_eq!(run(&[], 1).0, Err(PrpError::Empty));
    }
}
