//! `malloc`: a RAM disk shared by every channel of the device.
//!
//! The memory is split into 1 MiB chunks, each behind its own mutex, so
//! channels on different reactors rarely meet; an I/O spanning chunks takes
//! them one at a time. (The no-lock rule is the engine's; a backend is free
//! to use uncontended locks inside.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::{
    BdevCompletion, BdevError, BdevInfo, BdevIo, BlockDevice, IoChannel, IoError, IoOp, check_io,
    dsm_ranges,
};

const CHUNK: usize = 1 << 20;
const QUEUE: usize = 4096;

/// Parameters of a RAM disk.
#[derive(Clone, Debug)]
pub struct MallocParams {
    /// Device name.
    pub name: String,
    /// Logical block size.
    pub block_size: u32,
    /// Size in blocks.
    pub num_blocks: u64,
}

/// A RAM disk.
#[derive(Debug)]
pub struct MallocBdev {
    info: BdevInfo,
    mem: Arc<Memory>,
}

#[derive(Debug)]
struct Memory {
    chunks: Vec<Mutex<Box<[u8]>>>,
    len: usize,
}

impl Memory {
    /// Applies `f(chunk_bytes, offset_in_io)` to each piece of `[off, off+len)`.
    fn for_range(&self, off: usize, len: usize, mut f: impl FnMut(&mut [u8], usize)) {
        let mut done = 0;
        while done < len {
            let pos = off + done;
            let (ci, co) = (pos / CHUNK, pos % CHUNK);
            let n = (CHUNK - co).min(len - done);
            if let Some(chunk) = self.chunks.get(ci) {
                let mut c = chunk.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(slice) = c.get_mut(co..co + n) {
                    f(slice, done);
                }
            }
            done += n;
        }
    }
}

impl MallocBdev {
    /// Allocates the memory (zeroed).
    pub fn new(p: MallocParams) -> Result<Self, BdevError> {
        super::check_geometry(&p.name, p.block_size, p.num_blocks)?;
        let len = usize::try_from(p.num_blocks.saturating_mul(p.block_size as u64))
            .ok()
            .filter(|&l| l <= 1 << 40)
            .ok_or_else(|| BdevError::InvalidParameter {
                name: p.name.clone(),
                reason: "size is larger than this machine can hold in RAM".into(),
            })?;
        let chunks = (0..len.div_ceil(CHUNK))
            .map(|i| Mutex::new(vec![0u8; CHUNK.min(len - i * CHUNK)].into_boxed_slice()))
            .collect();
        Ok(Self {
            info: BdevInfo {
                name: p.name,
                kind: "malloc",
                block_size: p.block_size,
                num_blocks: p.num_blocks,
                volatile_write_cache: false,
                max_transfer_blocks: None,
                supports_write_zeroes: true,
                supports_deallocate: true,
            },
            mem: Arc::new(Memory { chunks, len }),
        })
    }
}

impl BlockDevice for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(MallocChannel {
            info: self.info.clone(),
            mem: self.mem.clone(),
            done: VecDeque::with_capacity(QUEUE),
        }))
    }
}

#[derive(Debug)]
struct MallocChannel {
    info: BdevInfo,
    mem: Arc<Memory>,
    done: VecDeque<BdevCompletion>,
}

impl MallocChannel {
    fn execute(&self, io: &mut BdevIo) -> Result<(), IoError> {
        check_io(&self.info, io)?;
        let bs = self.info.block_size as usize;
        let off = io.lba as usize * bs;
        let len = io.blocks as usize * bs;
        if off + len > self.mem.len && io.op != IoOp::Deallocate && io.op != IoOp::Flush {
            return Err(IoError::OutOfRange);
        }
        match io.op {
            IoOp::Read => self.mem.for_range(off, len, |m, at| {
                io.buf.copy_in(at, m);
            }),
            IoOp::Write => self.mem.for_range(off, len, |m, at| {
                io.buf.copy_out(at, m);
            }),
            IoOp::WriteZeroes => self.mem.for_range(off, len, |m, _| m.fill(0)),
            IoOp::Deallocate => {
                for r in dsm_ranges(&io.buf, io.blocks) {
                    self.mem
                        .for_range(r.slba as usize * bs, r.blocks as usize * bs, |m, _| {
                            m.fill(0)
                        });
                }
            }
            IoOp::Flush => {}
        }
        Ok(())
    }
}

impl IoChannel for MallocChannel {
    fn submit(&mut self, mut io: BdevIo) -> Result<(), BdevIo> {
        if self.done.len() >= QUEUE {
            return Err(io);
        }
        let result = self.execute(&mut io);
        self.done.push_back(BdevCompletion {
            tag: io.tag,
            result,
            buf: io.buf,
        });
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(BdevCompletion)) -> usize {
        let n = self.done.len();
        while let Some(c) = self.done.pop_front() {
            done(c);
        }
        n
    }

    fn poll_into(&mut self, out: &mut Vec<BdevCompletion>) -> usize {
        let n = self.done.len();
        out.extend(self.done.drain(..));
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn reset(&mut self) -> usize {
        0
    }
}
