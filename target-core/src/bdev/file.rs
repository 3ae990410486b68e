//! `file`: a regular file or block device through io_uring, with O_DIRECT
//! where the file system allows it.
//!
//! One ring per channel. The in-flight slot owns the I/O (and so its
//! buffer) until the kernel's completion is reaped, which is what keeps the
//! pointers handed to the kernel valid; a channel dropped with I/O in flight
//! waits for those completions first.
#![allow(unsafe_code)] // io_uring submission takes raw buffer pointers.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use io_uring::{IoUring, opcode, types};

use super::{
    BdevCompletion, BdevError, BdevInfo, BdevIo, BlockDevice, IoChannel, IoError, IoOp, check_io,
    dsm_ranges,
};

/// Parameters of a file device.
#[derive(Clone, Debug)]
pub struct FileParams {
    /// Device name.
    pub name: String,
    /// File or block device path.
    pub path: PathBuf,
    /// Logical block size.
    pub block_size: u32,
    /// Create or extend the file to this many bytes.
    pub size: Option<u64>,
    /// Try O_DIRECT (falls back to buffered I/O where unsupported).
    pub direct: bool,
    /// io_uring entries per channel.
    pub queue_depth: u32,
}

/// A file-backed device.
#[derive(Debug)]
pub struct FileBdev {
    info: BdevInfo,
    file: Arc<File>,
    path: PathBuf,
    direct: bool,
    queue_depth: u32,
}

impl FileBdev {
    /// Opens (and sizes) the file.
    pub fn new(p: FileParams) -> Result<Self, BdevError> {
        let io_err = |op: &'static str, source: std::io::Error| BdevError::Io {
            name: p.name.clone(),
            op,
            path: p.path.display().to_string(),
            source,
        };
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true).create(p.size.is_some());
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&p.path)
        };
        let (mut file, direct) = match open(p.direct) {
            Ok(f) => (f, p.direct),
            Err(e) if p.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(path = %p.path.display(), "O_DIRECT not supported here; using buffered I/O");
                (open(false).map_err(|e| io_err("open", e))?, false)
            }
            Err(e) => return Err(io_err("open", e)),
        };
        if let Some(size) = p.size {
            let cur = file.seek(SeekFrom::End(0)).map_err(|e| io_err("size", e))?;
            if cur < size {
                file.set_len(size).map_err(|e| io_err("extend", e))?;
            }
        }
        // Seeking to the end sizes block devices as well as files.
        let bytes = file.seek(SeekFrom::End(0)).map_err(|e| io_err("size", e))?;
        super::check_geometry(&p.name, p.block_size, bytes / p.block_size.max(1) as u64)?;
        Ok(Self {
            info: BdevInfo {
                name: p.name,
                kind: "file",
                block_size: p.block_size,
                num_blocks: bytes / p.block_size as u64,
                volatile_write_cache: true,
                max_transfer_blocks: None,
                supports_write_zeroes: true,
                supports_deallocate: true,
            },
            file: Arc::new(file),
            path: p.path,
            direct,
            queue_depth: p.queue_depth.clamp(1, 4096),
        })
    }

    /// `true` when O_DIRECT is in use.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

impl BlockDevice for FileBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let ring = IoUring::new(self.queue_depth).map_err(|e| BdevError::Unavailable {
            name: self.info.name.clone(),
            reason: format!(
                "io_uring is unavailable ({e}); the file backend needs a kernel with io_uring enabled \
                 (check /proc/sys/kernel/io_uring_disabled and seccomp filters)"
            ),
        })?;
        let qd = self.queue_depth as usize;
        Ok(Box::new(FileChannel {
            info: self.info.clone(),
            file: self.file.clone(),
            ring,
            slots: (0..qd).map(|_| None).collect(),
            iovecs: vec![Vec::new(); qd],
            free: (0..qd as u32).rev().collect(),
            done: VecDeque::new(),
            unsubmitted: 0,
            path: self.path.display().to_string(),
        }))
    }
}

struct FileChannel {
    info: BdevInfo,
    file: Arc<File>,
    ring: IoUring,
    slots: Vec<Option<BdevIo>>,
    iovecs: Vec<Vec<libc::iovec>>,
    free: Vec<u32>,
    done: VecDeque<BdevCompletion>,
    unsubmitted: usize,
    path: String,
}

impl std::fmt::Debug for FileChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileChannel")
            .field("path", &self.path)
            .finish()
    }
}

// SAFETY: the ring and the iovec arrays are only used by the thread that
// owns the channel; moving the channel moves that ownership. The raw
// pointers inside iovecs point into buffers owned by `slots`.
unsafe impl Send for FileChannel {}

impl FileChannel {
    fn sync_op(&self, io: &BdevIo) -> Result<(), IoError> {
        let fd = self.file.as_raw_fd();
        let bs = self.info.block_size as i64;
        for r in dsm_ranges(&io.buf, io.blocks) {
            // SAFETY: fallocate on an fd we own, with plain integers.
            let rc = unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    r.slba as i64 * bs,
                    r.blocks as i64 * bs,
                )
            };
            if rc != 0 {
                return Err(IoError::Os(
                    std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO),
                ));
            }
        }
        Ok(())
    }

    /// The SQE for `io`, which is about to live in slot `idx`. Buffer
    /// memory does not move when the `BdevIo` moves into the slot.
    fn entry(&mut self, idx: u32, io: &mut BdevIo) -> io_uring::squeue::Entry {
        let fd = types::Fd(self.file.as_raw_fd());
        let bs = self.info.block_size as u64;
        let off = io.lba * bs;
        let len = io.blocks as u64 * bs;
        let e = match io.op {
            IoOp::Read | IoOp::Write => {
                let segs = io.buf.segments_mut();
                if segs.len() == 1 {
                    let ptr = segs[0].as_mut_ptr();
                    if io.op == IoOp::Read {
                        opcode::Read::new(fd, ptr, len as u32).offset(off).build()
                    } else {
                        opcode::Write::new(fd, ptr, len as u32).offset(off).build()
                    }
                } else {
                    let iov = &mut self.iovecs[idx as usize];
                    iov.clear();
                    let mut left = len as usize;
                    for s in segs.iter_mut() {
                        let n = s.len().min(left);
                        iov.push(libc::iovec {
                            iov_base: s.as_mut_ptr().cast(),
                            iov_len: n,
                        });
                        left -= n;
                    }
                    if io.op == IoOp::Read {
                        opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32)
                            .offset(off)
                            .build()
                    } else {
                        opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                            .offset(off)
                            .build()
                    }
                }
            }
            IoOp::Flush => opcode::Fsync::new(fd).build(),
            IoOp::WriteZeroes => opcode::Fallocate::new(fd, len)
                .offset(off)
                .mode(libc::FALLOC_FL_ZERO_RANGE)
                .build(),
            // Done synchronously in `submit`; never reaches the ring.
            IoOp::Deallocate => opcode::Nop::new().build(),
        };
        e.user_data(idx as u64)
    }

    fn reap(&mut self) {
        let mut cq = Vec::new();
        for c in self.ring.completion() {
            cq.push((c.user_data() as u32, c.result()));
        }
        for (idx, res) in cq {
            let Some(io) = self.slots.get_mut(idx as usize).and_then(Option::take) else {
                continue;
            };
            self.free.push(idx);
            let want = match io.op {
                IoOp::Read | IoOp::Write => io.blocks as i64 * self.info.block_size as i64,
                _ => 0,
            };
            let result = if res < 0 {
                Err(match -res {
                    libc::EOPNOTSUPP if io.op == IoOp::WriteZeroes => IoError::Unsupported,
                    e => IoError::Os(e),
                })
            } else if (res as i64) < want {
                Err(IoError::Os(libc::EIO))
            } else {
                Ok(())
            };
            self.done.push_back(BdevCompletion {
                tag: io.tag,
                result,
                buf: io.buf,
            });
        }
    }
}

impl IoChannel for FileChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        if let Err(e) = check_io(&self.info, &io) {
            self.done.push_back(BdevCompletion {
                tag: io.tag,
                result: Err(e),
                buf: io.buf,
            });
            return Ok(());
        }
        if io.op == IoOp::Deallocate {
            let result = self.sync_op(&io);
            self.done.push_back(BdevCompletion {
                tag: io.tag,
                result,
                buf: io.buf,
            });
            return Ok(());
        }
        let Some(idx) = self.free.pop() else {
            return Err(io);
        };
        let mut io = io;
        let entry = self.entry(idx, &mut io);
        self.slots[idx as usize] = Some(io);
        // SAFETY: the entry points into the buffer (and iovec array) owned
        // by slot `idx`, which stays put until its completion is reaped.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.free.push(idx);
            if let Some(io) = self.slots[idx as usize].take() {
                return Err(io);
            }
        }
        self.unsubmitted += 1;
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn FnMut(BdevCompletion)) -> usize {
        if self.unsubmitted > 0 {
            match self.ring.submit() {
                Ok(_) => self.unsubmitted = 0,
                Err(e) => tracing::warn!(path = %self.path, error = %e, "io_uring submit"),
            }
        }
        self.reap();
        let n = self.done.len();
        while let Some(c) = self.done.pop_front() {
            out(c);
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count() + self.done.len()
    }

    /// The kernel owns submitted buffers until it completes them, so a
    /// reset can only wait for it; returns what it still holds.
    fn reset(&mut self) -> usize {
        let _ = self.ring.submit_and_wait(0);
        self.reap();
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

impl Drop for FileChannel {
    fn drop(&mut self) {
        // Never free a buffer the kernel may still write into.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.slots.iter().any(Option::is_some) && std::time::Instant::now() < deadline {
            let _ = self.ring.submit_and_wait(1);
            self.reap();
        }
        if self.slots.iter().any(Option::is_some) {
            // Leak rather than free memory the kernel still targets.
            for s in self.slots.iter_mut() {
                if let Some(io) = s.take() {
                    std::mem::forget(io);
                }
            }
        }
    }
}
