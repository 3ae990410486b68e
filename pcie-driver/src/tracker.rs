//! Request slots and command identifiers: a fixed table of slots (SPDK's
//! trackers) whose CID is `slot index | sequence << index_bits`, so a late or
//! duplicated completion for a reused slot never matches the new command.

use std::time::Instant;

/// CID the driver never issues (Abort and error logs use 0xffff for "none").
const RESERVED_CID: u16 = 0xffff;

#[derive(Clone, Copy, Debug)]
struct Slot {
    seq: u16,
    token: u64,
    active: bool,
    started: Option<Instant>,
}

/// The slot table of one queue.
#[derive(Debug)]
pub struct Tracker {
    slots: Vec<Slot>,
    free: Vec<u16>,
    index_bits: u32,
}

impl Tracker {
    /// `count` slots (at most 4096).
    pub fn new(count: u16) -> Self {
        let count = count.clamp(1, 4096);
        let index_bits = (u16::BITS - (count - 1).leading_zeros()).max(1);
        Self {
            slots: vec![
                Slot {
                    seq: 0,
                    token: 0,
                    active: false,
                    started: None,
                };
                count as usize
            ],
            free: (0..count).rev().collect(),
            index_bits,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Free slots.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Slots in use.
    pub fn active(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn cid(&self, idx: u16, seq: u16) -> u16 {
        idx | (seq << self.index_bits)
    }

    /// The slot index of `cid`.
    pub fn index_of(&self, cid: u16) -> usize {
        (cid & ((1u16 << self.index_bits) - 1)) as usize
    }

    /// Takes a slot for `token`; returns its CID and slot index.
    pub fn alloc(&mut self, token: u64, now: Option<Instant>) -> Option<(u16, usize)> {
        let idx = self.free.pop()?;
        let seq_mask = (1u32 << (16 - self.index_bits)) - 1;
        let s = &mut self.slots[idx as usize];
        s.seq = ((s.seq as u32 + 1) & seq_mask) as u16;
        let mut cid = idx | (s.seq << self.index_bits);
        if cid == RESERVED_CID {
            s.seq = 0;
            cid = idx;
        }
        s.token = token;
        s.active = true;
        s.started = now;
        Some((cid, idx as usize))
    }

    /// Gives back a slot taken by `alloc` whose command was never submitted.
    pub fn unalloc(&mut self, cid: u16) {
        let idx = self.index_of(cid);
        if let Some(s) = self.slots.get_mut(idx)
            && s.active
        {
            s.active = false;
            self.free.push(idx as u16);
        }
    }

    /// Completes `cid`: the token when it matches an active slot, `None`
    /// for a stale or corrupt CID (which changes nothing).
    pub fn complete(&mut self, cid: u16) -> Option<u64> {
        let idx = self.index_of(cid);
        let expected = {
            let s = self.slots.get(idx)?;
            if !s.active {
                return None;
            }
            self.cid(idx as u16, s.seq)
        };
        if cid != expected {
            return None;
        }
        let s = &mut self.slots[idx];
        s.active = false;
        self.free.push(idx as u16);
        Some(s.token)
    }

    /// Completes every active slot (the device was disabled), calling `f`
    /// with each token.
    pub fn drain(&mut self, mut f: impl FnMut(u64)) -> usize {
        let mut n = 0;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.active {
                s.active = false;
                self.free.push(i as u16);
                f(s.token);
                n += 1;
            }
        }
        n
    }

    /// CIDs of the active slots whose token satisfies `f`.
    pub fn active_cids(&self, f: impl Fn(u64) -> bool) -> Vec<u16> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active && f(s.token))
            .map(|(i, s)| self.cid(i as u16, s.seq))
            .collect()
    }

    /// The active slot that started first: (CID, start time).
    pub fn oldest(&self) -> Option<(u16, Instant)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active)
            .filter_map(|(i, s)| Some((self.cid(i as u16, s.seq), s.started?)))
            .min_by_key(|&(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_carry_index_and_sequence() {
        let mut t = Tracker::new(255);
        assert_eq!(t.index_bits, 8);
        let (c1, i1) = t.alloc(10, None).unwrap();
        assert_eq!(t.index_of(c1), i1);
        assert_eq!(t.complete(c1), Some(10));
        // The same slot comes back with a new sequence number.
        let (c2, i2) = t.alloc(11, None).unwrap();
        assert_eq!(i2, i1);
        assert_ne!(c2, c1);
        // A stale completion for the old CID does not complete the new one.
        assert_eq!(t.complete(c1), None);
        assert_eq!(t.active(), 1);
        assert_eq!(t.complete(c2), Some(11));
        // A duplicate completion is ignored.
        assert_eq!(t.complete(c2), None);
        assert_eq!(t.active(), 0);
        // Garbage CIDs are ignored.
        assert_eq!(t.complete(0xfffe), None);
    }

    #[test]
    fn sequences_wrap_and_never_issue_ffff() {
        let mut t = Tracker::new(256);
        let mut seen = std::collections::HashSet::new();
        for k in 0..1000u64 {
            let (c, _) = t.alloc(k, None).unwrap();
            assert_ne!(c, RESERVED_CID);
            seen.insert(c);
            assert_eq!(t.complete(c), Some(k));
        }
        assert!(seen.len() > 200);
        // Odd sizes round the index field up.
        let t = Tracker::new(100);
        assert_eq!(t.index_bits, 7);
        let t = Tracker::new(1);
        assert_eq!(t.index_bits, 1);
    }

    #[test]
    fn exhaustion_drain_and_oldest() {
        let mut t = Tracker::new(4);
        let now = Instant::now();
        let cids: Vec<u16> = (0..4).map(|k| t.alloc(k, Some(now)).unwrap().0).collect();
        assert!(t.alloc(9, None).is_none());
        assert_eq!(t.available(), 0);
        assert!(t.oldest().is_some());
        assert_eq!(t.active_cids(|tok| tok % 2 == 1), vec![cids[1], cids[3]]);
        t.unalloc(cids[3]);
        assert_eq!(t.available(), 1);
        let mut got = vec![];
        assert_eq!(t.drain(|tok| got.push(tok)), 3);
        got.sort();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(t.available(), 4);
        assert!(t.oldest().is_none());
        // Completions after a drain are stale.
        assert_eq!(t.complete(cids[0]), None);
    }
}
