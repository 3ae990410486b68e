//! Idle waiting: a reactor with nothing to do blocks in `ppoll(2)` on the
//! sockets its pollers registered and on a wake-up `eventfd`, instead of
//! spinning or sleeping blind.
//!
//! Why: on a machine whose CPUs also run the peer (the Linux host in the
//! same VM, other daemons), a spinning reactor takes the CPU the peer needs
//! to produce the next command, and a blind sleep adds its whole length to
//! every idle-to-busy transition. Waiting on the sockets wakes the reactor
//! the moment a PDU arrives; a message sent to it writes the eventfd.
//! Pollers without a file descriptor (device queues) are still polled at
//! least every `idle_backoff`, as before.
#![allow(unsafe_code)] // ppoll(2), eventfd(2), read(2), write(2) are only reachable through libc FFI.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

struct Entry {
    fd: RawFd,
    write: AtomicBool,
}

/// The descriptors one reactor waits on when idle, plus its wake-up eventfd.
pub(crate) struct WaitSet {
    entries: Mutex<Vec<Arc<Entry>>>,
    event: OwnedFd,
}

impl std::fmt::Debug for WaitSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitSet")
            .field("event", &self.event.as_raw_fd())
            .finish()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<WaitSet>>> = const { RefCell::new(None) };
}

impl WaitSet {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        // SAFETY: eventfd takes no pointers; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Self {
            entries: Mutex::new(Vec::new()),
            // SAFETY: `fd` was just returned by eventfd and is owned by no one else.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    /// Makes this the set `register` uses on the calling (reactor) thread.
    pub(crate) fn install(self: &Arc<Self>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes a reactor blocked in [`WaitSet::wait`] (any thread).
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own; a
        // failure (counter saturated) still leaves the fd readable.
        let _ = unsafe {
            libc::write(
                self.event.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Blocks until a registered descriptor is ready, the set is woken, or
    /// `timeout` passes.
    pub(crate) fn wait(&self, timeout: Duration, fds: &mut Vec<libc::pollfd>) {
        fds.clear();
        fds.push(libc::pollfd {
            fd: self.event.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for e in self.lock().iter() {
            let mut events = libc::POLLIN | libc::POLLRDHUP;
            if e.write.load(Ordering::Relaxed) {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: e.fd,
                events,
                revents: 0,
            });
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos().into(),
        };
        // SAFETY: `fds` is a live, initialised slice of pollfd of the given
        // length; `ts` outlives the call; no signal mask is passed.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if n > 0 && fds[0].revents != 0 {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
            let _ = unsafe {
                libc::read(
                    self.event.as_raw_fd(),
                    (&mut v as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }
}

/// A descriptor registered with the idle wait of the reactor that polls its
/// owner; dropping it removes it. Drop it before closing the descriptor.
pub struct WaitRegistration {
    set: Weak<WaitSet>,
    entry: Arc<Entry>,
}

impl std::fmt::Debug for WaitRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitRegistration")
            .field("fd", &self.entry.fd)
            .finish()
    }
}

impl WaitRegistration {
    /// Also wake on writability (the owner has bytes the socket refused).
    pub fn want_write(&self, on: bool) {
        self.entry.write.store(on, Ordering::Relaxed);
    }

    /// Whether this registration belongs to the calling thread's reactor
    /// (a queue pair moved to another reactor must register again there).
    pub fn is_current(&self) -> bool {
        CURRENT.with(|c| {
            c.borrow()
                .as_ref()
                .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), self.set.as_ptr()))
        })
    }
}

impl Drop for WaitRegistration {
    fn drop(&mut self) {
        if let Some(set) = self.set.upgrade() {
            set.lock().retain(|e| !Arc::ptr_eq(e, &self.entry));
        }
    }
}

/// Registers `fd` (a socket a poller reads) with the idle wait of the
/// reactor running on this thread, so an idle reactor wakes when it becomes
/// readable. `None` off a reactor thread or when the reactor does not wait
/// (busy polling); the poller then simply keeps being polled.
pub fn register(fd: &impl AsRawFd) -> Option<WaitRegistration> {
    CURRENT.with(|c| {
        let c = c.borrow();
        let set = c.as_ref()?;
        let entry = Arc::new(Entry {
            fd: fd.as_raw_fd(),
            write: AtomicBool::new(false),
        });
        set.lock().push(entry.clone());
        Some(WaitRegistration {
            set: Arc::downgrade(set),
            entry,
        })
    })
}
