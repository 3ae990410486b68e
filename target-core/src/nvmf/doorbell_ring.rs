//! A single-producer, single-consumer ring whose indices are published by
//! batch, the way an NVMe queue's doorbells are written.
//!
//! A ring that publishes its tail on every push and its head on every pop
//! (what `rtrb` does) moves the index cache lines between the two cores once
//! per entry when the consumer keeps up with the producer: every pop finds
//! the ring empty, reloads the tail the producer has just written, and the
//! producer's next store has to take the line back. With many commands in
//! flight that per-entry ping-pong is what makes a two-core loop run fast or
//! slow depending on how the two threads happen to line up. Here the
//! producer publishes its tail when it rings the doorbell
//! ([`Producer::publish`]), once per batch (or more often, at the
//! producer's choice: [`Producer::publish_every`]), and the consumer
//! publishes its head once per batch ([`Consumer::release`], also every
//! [`RELEASE_EVERY`] pops so a consumer that never calls it cannot starve
//! the producer for long).
//!
//! Each slot is written by the producer only while it is outside the
//! published window `[head, tail)` and read by the consumer only inside it:
//! the `Release` store of an index and the other side's `Acquire` load of it
//! order the slot's contents. Entries the producer pushed but has not
//! published yet are invisible to the consumer; both ends publish when they
//! are dropped, so the ring drops exactly the entries still in it.

#![allow(unsafe_code)] // Slots are `MaybeUninit` cells written and read across threads.

use std::cell::UnsafeCell;
use std::fmt;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A consumer publishes its head at least this often while popping.
pub const RELEASE_EVERY: usize = 16;

/// How many slots ahead the consumer asks for the cache lines it will
/// read next. Across two cores an entry's lines come from the other
/// core's cache (~100 ns a trip on the machines measured); on one core
/// the rings and everything else a command touches outgrow L1. Asked for
/// a few entries (some hundreds of instructions) ahead, the fetches
/// overlap the work instead of stalling it: +9 to +16 % loop IOPS on one
/// core in alternating runs (README, sixth round). A distance of 8 was
/// tried too (twice), without a gain. The producer's side of the same
/// idea is [`CLAIM_AHEAD`].
const PREFETCH_AHEAD: usize = 4;

/// Asks for the cache lines of the slot at `slot`, to be read soon. Takes
/// a raw address: a prefetch reads nothing, so the caller need not prove
/// the slot published (or even in bounds) and pays no check for it.
#[inline(always)]
fn prefetch<T>(slot: *const Slot<T>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = slot.cast::<i8>();
        // Every 64 bytes from the slot's start. A packed entry that starts
        // late in a line ends one line further; asking for that line too
        // measured no different (alternating runs, one and two cores).
        let mut off = 0;
        while off < std::mem::size_of::<Slot<T>>() {
            // SAFETY: a prefetch is a hint: it neither faults nor changes
            // memory, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

/// How many slots ahead of its tail the producer claims the lines it will
/// write ([`claim_ahead`]). A slot the producer is about to fill was last
/// written by the consumer (taking the entry's buffer out), so across two
/// cores each store into it has to fetch the line back first; with the
/// request only at the store, the store buffer fills behind it and the
/// producer stalls for a cross-core trip per line. Asked a few entries
/// (some hundreds of nanoseconds of work) ahead, the trip overlaps the
/// work instead. Measured on an Intel Xeon (Emerald Rapids) guest whose
/// two vCPUs were ~350 ns apart: two cores 1.47× in alternating runs (6
/// of 6 rounds), the host's stall on its submission stores (`perf`,
/// `cpu-clock`) from 44 % of its samples to about 25 %; 16 ahead measured
/// the same as 8 (README, eleventh round). On the AMD EPYC guest of
/// earlier rounds, at ~100 ns, it made no difference either way.
///
/// The claimed slot is never one the consumer may still read as long as
/// the ring has at least this many slots beyond its capacity (the loop
/// transport's rings: 256 slots for 129 or 130 entries at queue depth
/// 128). In a ring whose capacity fills every slot, the claim may take a
/// line the consumer has yet to read: a trip more, never an error.
const CLAIM_AHEAD: usize = 8;

/// Asks, with intent to write (`prefetchw`), for the line that starts the
/// slot [`CLAIM_AHEAD`] past `slot` in memory, so it is this core's by the
/// time the producer writes it. Past `slot` in memory, not modulo the
/// ring: the offset is then a constant of the instruction, where the
/// masked index cost 14 instructions per I/O for both rings together
/// (this: 4). The last `CLAIM_AHEAD` slots of the array claim past its
/// end (a hint, harmless) and the first ones are written unclaimed: 8 of
/// 256 in the loop transport's rings. One line per slot: a 64-byte entry's
/// slot is one line, and smaller entries claim every line as each is
/// written.
#[inline(always)]
fn claim_ahead<T>(slot: &Slot<T>) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = std::ptr::from_ref(slot).cast::<u8>();
        // SAFETY: `prefetchw` is a hint: it neither faults nor changes
        // memory, whatever the address (x86-64 CPUs without the feature
        // run it as a NOP).
        // `std::arch`'s `_MM_HINT_ET0` emits it only when the build
        // targets `prfchw`, which the baseline x86-64 target does not.
        unsafe {
            std::arch::asm!(
                "prefetchw byte ptr [{p} + {off}]",
                p = in(reg) p,
                off = const CLAIM_AHEAD * std::mem::size_of::<Slot<T>>(),
                options(nostack, preserves_flags, readonly)
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

/// An index on a cache line of its own (128 bytes: adjacent-line prefetch
/// pairs lines on x86).
#[repr(align(128))]
struct Padded(AtomicUsize);

/// Slots are packed: an entry takes its own size, not whole lines of its
/// own (a 32-byte `RingResponse` half a line instead of 1), and across
/// two cores every line is a trip between them. An entry type that wants whole
/// lines says so with its own alignment (`RingCapsule`: one line).
/// Entries change hands a batch at a time, so a line shared by the
/// producer's newest entry and the consumer's current one is the
/// exception at a batch's edge. Measured when capsules were 96 bytes and
/// responses 48, host and reactor on two cores at one vCPU placement:
/// 15.4 M IOPS line-aligned, 18.4 M packed; one core: no difference
/// (README, seventh round).
struct Slot<T>(UnsafeCell<MaybeUninit<T>>);

struct Inner<T> {
    /// The consumer's published head: entries below it have been taken.
    head: Padded,
    /// The producer's published tail: entries below it are readable.
    tail: Padded,
    slots: Box<[Slot<T>]>,
    mask: usize,
    capacity: usize,
}

// SAFETY: the ring hands each `T` from the one producer thread to the one
// consumer thread; slots are never accessed by both sides at once (see the
// module comment), so sharing `Inner` needs only `T: Send`.
unsafe impl<T: Send> Sync for Inner<T> {}
// SAFETY: as above; `Inner` owns the `T`s in its slots.
unsafe impl<T: Send> Send for Inner<T> {}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        // Both ends are gone and both published on drop: what lies between
        // the published head and tail is exactly what is still in the ring.
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        let mut i = head;
        while i != tail {
            let cell = self.slots[i & self.mask].0.get_mut();
            // SAFETY: every index in [head, tail) was written by the producer
            // and not taken by the consumer; each is dropped once, here.
            unsafe { cell.assume_init_drop() };
            i = i.wrapping_add(1);
        }
    }
}

/// What [`Consumer::pop_with`] leaves of an entry: usually a shell whose
/// owned parts were moved out. Saying so skips an out-of-line drop call
/// per entry (the drop glue of a buffer enum is not inlined).
pub trait Remains {
    /// `true` when dropping `self` would free nothing.
    fn is_spent(&self) -> bool {
        false
    }
}

/// Creates a ring holding at most `capacity` entries (at least 1).
pub fn ring<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity.max(1);
    let len = capacity.next_power_of_two();
    let slots = (0..len)
        .map(|_| Slot(UnsafeCell::new(MaybeUninit::uninit())))
        .collect::<Vec<_>>()
        .into_boxed_slice();
    let inner = Arc::new(Inner {
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
        slots,
        mask: len - 1,
        capacity,
    });
    (
        Producer {
            inner: inner.clone(),
            tail: 0,
            published: 0,
            cached_head: 0,
        },
        Consumer {
            inner,
            head: 0,
            released: 0,
            cached_tail: 0,
        },
    )
}

/// The producing end.
pub struct Producer<T: Send> {
    inner: Arc<Inner<T>>,
    /// Next index to write (published or not).
    tail: usize,
    /// The tail as last published.
    published: usize,
    /// The consumer's head as last loaded.
    cached_head: usize,
}

impl<T: Send> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("published", &self.published)
            .finish()
    }
}

impl<T: Send> Producer<T> {
    /// Writes `v` into the ring without publishing it. `Err` gives it back
    /// when the ring is full.
    #[inline(always)]
    pub fn push(&mut self, v: T) -> Result<(), T> {
        self.push_with(v, |v| v)
    }

    /// Writes `make(arg)` into the ring without publishing it; `Err` gives
    /// `arg` back when the ring is full. `make` runs only once there is
    /// room, so what it builds can be written straight into the slot
    /// (`push` needs the whole entry first, to give it back when full).
    #[inline(always)]
    pub fn push_with<A>(&mut self, arg: A, make: impl FnOnce(A) -> T) -> Result<(), A> {
        let cap = self.inner.capacity;
        if self.tail.wrapping_sub(self.cached_head) >= cap {
            self.cached_head = self.inner.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.cached_head) >= cap {
                return Err(arg);
            }
        }
        let slot = &self.inner.slots[self.tail & self.inner.mask];
        claim_ahead(slot);
        let cell = slot.0.get();
        // SAFETY: as in `push`: the slot holds no entry the consumer may
        // still read, and only this producer writes slots.
        unsafe { (*cell).write(make(arg)) };
        self.tail = self.tail.wrapping_add(1);
        Ok(())
    }

    /// Publishes once `every` entries wait unpublished: a producer that
    /// calls it after each push lets a consumer on another core start on
    /// a long burst's first entries while the rest are written.
    #[inline(always)]
    pub fn publish_every(&mut self, every: usize) {
        if self.tail.wrapping_sub(self.published) >= every {
            self.publish_midway();
        }
    }

    /// Out of line: it runs once per many entries, and inlined it costs
    /// the caller registers.
    #[cold]
    #[inline(never)]
    fn publish_midway(&mut self) {
        self.publish();
    }

    /// The next slot, when the ring has room: writing it then cannot
    /// fail. A caller that would otherwise hand its entry's parts to a
    /// fallible push, only to get them back when the ring is full, checks
    /// first and moves them once, straight into the slot.
    #[inline(always)]
    pub fn vacant(&mut self) -> Option<Vacant<'_, T>> {
        let cap = self.inner.capacity;
        if self.tail.wrapping_sub(self.cached_head) >= cap {
            self.cached_head = self.inner.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.cached_head) >= cap {
                return None;
            }
        }
        // The slot is found (and bounds-checked) before the caller builds
        // its entry, so the entry is built where it goes, not on the stack.
        let slot = &self.inner.slots[self.tail & self.inner.mask];
        claim_ahead(slot);
        let cell = slot.0.get();
        Some(Vacant { p: self, cell })
    }

    /// Makes every pushed entry visible to the consumer (the doorbell).
    #[inline]
    pub fn publish(&mut self) {
        if self.published != self.tail {
            self.inner.tail.0.store(self.tail, Ordering::Release);
            self.published = self.tail;
        }
    }
}

/// A free slot at the producer's tail ([`Producer::vacant`]); dropped
/// unwritten, it leaves the ring as it was.
#[derive(Debug)]
pub struct Vacant<'a, T: Send> {
    p: &'a mut Producer<T>,
    /// The slot at `p.tail`, inside `p`'s ring (which the borrow keeps).
    cell: *mut MaybeUninit<T>,
}

impl<T: Send> Vacant<'_, T> {
    /// Writes `v` into the slot, unpublished (see [`Producer::publish`]).
    #[inline(always)]
    pub fn write(self, v: T) {
        // SAFETY: `cell` is the slot at the producer's tail, in the ring the
        // `&mut` borrow keeps alive and whose tail it keeps where
        // `Producer::vacant` checked it: outside the window the consumer
        // may read (`tail - head < capacity` with the head it published).
        // Only this producer writes slots.
        unsafe { (*self.cell).write(v) };
        self.p.tail = self.p.tail.wrapping_add(1);
    }
}

impl<T: Send> Drop for Producer<T> {
    fn drop(&mut self) {
        self.publish();
    }
}

/// The consuming end.
pub struct Consumer<T: Send> {
    inner: Arc<Inner<T>>,
    /// Next index to read.
    head: usize,
    /// The head as last published.
    released: usize,
    /// The producer's tail as last loaded.
    cached_tail: usize,
}

impl<T: Send> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .field("released", &self.released)
            .finish()
    }
}

impl<T: Send> Consumer<T> {
    /// Takes the next published entry.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.cached_tail {
            self.cached_tail = self.inner.tail.0.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        let cell = self.inner.slots[self.head & self.inner.mask].0.get();
        // SAFETY: `head < cached_tail`, a tail the producer published with
        // `Release` after writing this slot (loaded here with `Acquire`);
        // the producer does not write it again before the head moves past
        // it, and advancing `head` now means it is read exactly once.
        let v = unsafe { (*cell).assume_init_read() };
        self.head = self.head.wrapping_add(1);
        if self.head.wrapping_sub(self.released) >= RELEASE_EVERY {
            self.release();
        }
        Some(v)
    }

    /// Takes the next published entry in place: `f` works on it where it
    /// lies (moving out what it keeps, e.g. with `std::mem::take`), and
    /// whatever `f` leaves is dropped there. A large entry is then read
    /// once, by `f`, instead of being copied out through a return value
    /// and again into each callee (four copies of a 112-byte capsule per
    /// command on the fetch path, measured).
    ///
    /// Moving parts out writes the consumer's slot, so its line leaves the
    /// producer's cache. Reading the entry by value instead and leaving
    /// the slot untouched was tried (eighth round) and measured far
    /// slower across two cores: 0.65× with both rings, 0.69× with the
    /// submission ring alone, 0.88× with the completion ring alone. So
    /// was asking for the slots ahead with write intent (`prefetchw`),
    /// since the consumer writes them anyway: 0.97×.
    #[inline]
    pub fn pop_with<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> Option<R>
    where
        T: Remains,
    {
        if self.head == self.cached_tail {
            self.cached_tail = self.inner.tail.0.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        // The slot a few ahead, published or not: near the end of a batch
        // that is a slot the producer has yet to write, whose line then
        // travels once more, but a check costs more than those few trips
        // (a branch mispredicts at every batch's end, a branchless choice
        // cost ~10 instructions per entry, measured).
        let slots = self.inner.slots.as_ptr();
        prefetch(slots.wrapping_add(self.head.wrapping_add(PREFETCH_AHEAD) & self.inner.mask));
        let cell = self.inner.slots[self.head & self.inner.mask].0.get();
        // The slot counts as taken before `f` runs: were `f` to unwind, the
        // entry is leaked (its buffer never freed behind anyone's back),
        // never dropped twice.
        self.head = self.head.wrapping_add(1);
        // SAFETY: as in `pop`: the slot below `cached_tail` holds an entry
        // the producer published and will not write again before the head
        // moves past it. The head moved past it above, so no later pop can
        // reach it; `&mut` is the only access until the drop below.
        let r = f(unsafe { (*cell).assume_init_mut() });
        // SAFETY: the entry is initialised (`f` got `&mut T`, so it cannot
        // have moved it out); it is dropped at most once, here, and not at
        // all when what is left owns nothing (`is_spent`).
        unsafe {
            if !(*cell).assume_init_ref().is_spent() {
                (*cell).assume_init_drop();
            }
        }
        if self.head.wrapping_sub(self.released) >= RELEASE_EVERY {
            self.release();
        }
        Some(r)
    }

    /// Entries published and not yet taken (looks at the producer's tail
    /// only when the last look found none left). A caller that takes
    /// exactly this many ends its loop on a count instead of on an empty
    /// `pop`: one branch that does not alternate between "one more" and
    /// "none left" on every pass.
    #[inline]
    pub fn available(&mut self) -> usize {
        if self.head == self.cached_tail {
            self.cached_tail = self.inner.tail.0.load(Ordering::Acquire);
        }
        self.cached_tail.wrapping_sub(self.head)
    }

    /// Gives the slots taken so far back to the producer.
    #[inline]
    pub fn release(&mut self) {
        if self.released != self.head {
            self.inner.head.0.store(self.head, Ordering::Release);
            self.released = self.head;
        }
    }
}

impl<T: Send> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_with_builds_in_place_or_gives_the_argument_back() {
        let (mut p, mut c) = ring::<(u32, String)>(2);
        p.push_with("a".to_string(), |s| (1, s)).unwrap();
        p.push_with("b".to_string(), |s| (2, s)).unwrap();
        let mut built = false;
        let full = p.push_with("c".to_string(), |s| {
            built = true;
            (3, s)
        });
        assert_eq!(full, Err("c".to_string()));
        assert!(!built, "nothing is built for a full ring");
        p.publish();
        assert_eq!(c.pop(), Some((1, "a".to_string())));
        assert_eq!(c.pop(), Some((2, "b".to_string())));
    }

    #[test]
    fn a_vacant_slot_is_there_only_while_the_ring_has_room() {
        let (mut p, mut c) = ring::<u32>(2);
        p.vacant().expect("empty ring has room").write(1);
        // Asked for and left unwritten: nothing changes.
        assert!(p.vacant().is_some());
        p.vacant().expect("one slot left").write(2);
        assert!(p.vacant().is_none(), "full");
        p.publish();
        assert_eq!(c.pop(), Some(1));
        c.release();
        p.vacant().expect("a slot came back").write(3);
        p.publish();
        assert_eq!(c.pop(), Some(2));
        assert_eq!(c.pop(), Some(3));
        assert_eq!(c.pop(), None);
    }

    #[test]
    fn unpublished_entries_are_invisible_until_the_doorbell() {
        let (mut p, mut c) = ring::<u32>(4);
        p.push(1).unwrap();
        p.push(2).unwrap();
        assert_eq!(c.pop(), None);
        p.publish();
        assert_eq!(c.pop(), Some(1));
        assert_eq!(c.pop(), Some(2));
        assert_eq!(c.pop(), None);
    }

    #[test]
    fn publish_every_publishes_a_long_burst_as_it_is_written() {
        const EVERY: usize = 8;
        let (mut p, mut c) = ring::<usize>(4 * EVERY);
        for i in 0..EVERY - 1 {
            p.push(i).unwrap();
            p.publish_every(EVERY);
        }
        assert_eq!(c.available(), 0, "below the interval: the doorbell's");
        p.push(EVERY - 1).unwrap();
        p.publish_every(EVERY);
        assert_eq!(c.available(), EVERY, "published at the interval");
        p.vacant().unwrap().write(EVERY);
        p.publish_every(EVERY);
        assert_eq!(c.available(), EVERY, "the next one waits again");
        for i in 0..=EVERY {
            assert_eq!(c.pop(), Some(i).filter(|_| i < EVERY));
        }
        p.publish();
        assert_eq!(c.pop(), Some(EVERY));
    }

    #[test]
    fn full_until_the_consumer_releases() {
        let (mut p, mut c) = ring::<u32>(3);
        for i in 0..3 {
            p.push(i).unwrap();
        }
        assert_eq!(p.push(9), Err(9));
        p.publish();
        assert_eq!(c.pop(), Some(0));
        // Taken but not released: still full for the producer.
        assert_eq!(p.push(9), Err(9));
        c.release();
        p.push(9).unwrap();
        assert_eq!(p.push(10), Err(10));
    }

    impl Remains for (u32, Option<Arc<()>>) {
        fn is_spent(&self) -> bool {
            self.1.is_none()
        }
    }

    #[test]
    fn pop_with_works_in_place_and_drops_what_is_left() {
        let live = Arc::new(());
        let (mut p, mut c) = ring::<(u32, Option<Arc<()>>)>(4);
        p.push((1, Some(live.clone()))).unwrap();
        p.push((2, Some(live.clone()))).unwrap();
        p.publish();
        // The first entry's Arc is moved out and kept; the second's is left
        // in the slot and dropped there.
        let kept = c.pop_with(|e| (e.0, e.1.take())).unwrap();
        assert_eq!(kept.0, 1);
        assert_eq!(c.pop_with(|e| e.0), Some(2));
        assert_eq!(c.pop_with(|e| e.0), None);
        assert_eq!(Arc::strong_count(&live), 2);
        drop(kept);
        drop((p, c));
        assert_eq!(Arc::strong_count(&live), 1);
    }

    #[test]
    fn drops_exactly_what_is_left() {
        let live = Arc::new(());
        let (mut p, mut c) = ring::<Arc<()>>(8);
        for _ in 0..5 {
            p.push(live.clone()).unwrap();
        }
        p.publish();
        drop(c.pop());
        p.push(live.clone()).unwrap(); // never published: the drop publishes it
        assert_eq!(Arc::strong_count(&live), 6);
        drop(p);
        drop(c);
        assert_eq!(Arc::strong_count(&live), 1);
    }

    #[test]
    fn every_entry_crosses_threads_once_in_order() {
        const N: u64 = 200_000;
        let (mut p, mut c) = ring::<u64>(64);
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                let mut batch = 0;
                while i < N && batch < 7 {
                    match p.push(i) {
                        Ok(()) => {
                            i += 1;
                            batch += 1;
                        }
                        Err(_) => break,
                    }
                }
                p.publish();
                std::hint::spin_loop();
            }
        });
        let mut next = 0;
        while next < N {
            if let Some(v) = c.pop() {
                assert_eq!(v, next);
                next += 1;
            } else {
                c.release();
                std::hint::spin_loop();
            }
        }
        t.join().unwrap();
        assert_eq!(c.pop(), None);
    }
}
