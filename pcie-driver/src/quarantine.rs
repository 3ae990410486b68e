//! DMA quarantine: the buffers and bounce ranges of commands that are still
//! at the controller when their channel ends.
//!
//! The device may write a command's data buffer until the command completes
//! or the controller is disabled (CSTS.RDY = 0). A channel that goes away
//! earlier (namespace view removed, stop after its deadline) must therefore
//! not give those buffers back to their pool, nor its bounce ranges back to
//! the queue's arena: a late completion would write into memory that already
//! serves another request (the seed's bug in DMA form). The channel hands
//! them to its queue's quarantine instead, keyed by the command token; they
//! are released when the last completion of that token is reaped (by
//! whoever polls the queue next) or when the controller is disabled.

use std::collections::HashMap;

/// One I/O held back: what the device may still touch.
#[derive(Debug)]
pub(crate) struct Held<T> {
    /// The request (owns the data buffer).
    pub item: T,
    /// Bounce range (offset, bytes) in the queue pair's area.
    pub bounce: Option<(usize, usize)>,
    /// Commands of this I/O still at the controller.
    pub remaining: u32,
}

/// The quarantine of one queue pair.
#[derive(Debug)]
pub(crate) struct Quarantine<T> {
    held: HashMap<u64, Held<T>>,
}

/// What a completion meant to the quarantine.
#[derive(Debug)]
pub(crate) enum Reaped<T> {
    /// The token is not quarantined: the completion belongs to a live channel.
    NotHeld,
    /// Quarantined, and more commands of the same I/O are outstanding.
    StillHeld,
    /// The last command completed: the device is done with it.
    Released(Held<T>),
}

impl<T> Default for Quarantine<T> {
    fn default() -> Self {
        Self {
            held: HashMap::new(),
        }
    }
}

impl<T> Quarantine<T> {
    /// I/Os held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Nothing held (the fast path checks this before any lookup).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds `h` until `h.remaining` completions for `token` were reaped.
    /// An I/O with nothing outstanding is given straight back.
    pub fn hold(&mut self, token: u64, h: Held<T>) -> Option<Held<T>> {
        if h.remaining == 0 {
            return Some(h);
        }
        self.held.insert(token, h)
    }

    /// Accounts one completion of `token`.
    pub fn complete(&mut self, token: u64) -> Reaped<T> {
        let Some(h) = self.held.get_mut(&token) else {
            return Reaped::NotHeld;
        };
        h.remaining = h.remaining.saturating_sub(1);
        if h.remaining > 0 {
            return Reaped::StillHeld;
        }
        match self.held.remove(&token) {
            Some(h) => Reaped::Released(h),
            None => Reaped::NotHeld,
        }
    }

    /// Everything held: call only once the controller can no longer DMA
    /// (disabled, or bus mastering off).
    pub fn release_all(&mut self) -> Vec<Held<T>> {
        self.held.drain().map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(item: u32, remaining: u32) -> Held<u32> {
        Held {
            item,
            bounce: Some((item as usize * 4096, 4096)),
            remaining,
        }
    }

    #[test]
    fn released_after_its_last_completion_only() {
        let mut q = Quarantine::default();
        assert!(q.hold(7, held(1, 2)).is_none());
        assert!(q.hold(8, held(2, 1)).is_none());
        assert_eq!(q.len(), 2);
        assert!(matches!(q.complete(9), Reaped::NotHeld));
        assert!(matches!(q.complete(7), Reaped::StillHeld));
        match q.complete(7) {
            Reaped::Released(h) => assert_eq!((h.item, h.bounce), (1, Some((4096, 4096)))),
            other => panic!("{other:?}"),
        }
        // A duplicate completion of a released token is not ours any more.
        assert!(matches!(q.complete(7), Reaped::NotHeld));
        assert_eq!(q.len(), 1);
        let rest = q.release_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].item, 2);
        assert!(q.is_empty());
    }

    #[test]
    fn nothing_outstanding_is_not_held() {
        let mut q = Quarantine::default();
        let back = q.hold(1, held(3, 0));
        assert_eq!(back.map(|h| h.item), Some(3));
        assert!(q.is_empty());
    }
}
