//! `null`: completes every I/O at once without touching data. The
//! benchmark backend: what is left is the cost of the target itself.

use super::{BdevCompletion, BdevError, BdevInfo, BdevIo, BlockDevice, IoChannel, IoOp, check_io};

/// Parameters of a null device.
#[derive(Clone, Debug)]
pub struct NullParams {
    /// Device name.
    pub name: String,
    /// Logical block size.
    pub block_size: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Fill read buffers with zeros (costs a memset per read).
    pub read_zeroes: bool,
}

/// A device that stores nothing.
#[derive(Debug)]
pub struct NullBdev {
    info: BdevInfo,
    read_zeroes: bool,
}

/// Completions one channel can hold before `submit` says full.
const NULL_QUEUE: usize = 4096;

impl NullBdev {
    /// Validates the parameters.
    pub fn new(p: NullParams) -> Result<Self, BdevError> {
        super::check_geometry(&p.name, p.block_size, p.num_blocks)?;
        Ok(Self {
            info: BdevInfo {
                name: p.name,
                kind: "null",
                block_size: p.block_size,
                num_blocks: p.num_blocks,
                volatile_write_cache: false,
                max_transfer_blocks: None,
                supports_write_zeroes: true,
                supports_deallocate: true,
            },
            read_zeroes: p.read_zeroes,
        })
    }
}

impl BlockDevice for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(NullChannel {
            info: self.info.clone(),
            read_zeroes: self.read_zeroes,
            done: Vec::with_capacity(NULL_QUEUE),
        }))
    }
}

#[derive(Debug)]
struct NullChannel {
    info: BdevInfo,
    read_zeroes: bool,
    /// Completions in submission order. A plain `Vec` drained whole each
    /// poll: no ring wrap-around arithmetic per push and pop.
    done: Vec<BdevCompletion>,
}

impl IoChannel for NullChannel {
    #[inline]
    fn submit(&mut self, mut io: BdevIo) -> Result<(), BdevIo> {
        if self.done.len() >= NULL_QUEUE {
            return Err(io);
        }
        let result = check_io(&self.info, &io);
        if result.is_ok() && self.read_zeroes && io.op == IoOp::Read {
            let len = io.blocks as usize * self.info.block_size as usize;
            io.buf.fill_zero(0, len);
        }
        self.done.push(BdevCompletion {
            tag: io.tag,
            result,
            buf: io.buf,
        });
        Ok(())
    }

    #[inline]
    fn poll(&mut self, done: &mut dyn FnMut(BdevCompletion)) -> usize {
        let n = self.done.len();
        for c in self.done.drain(..) {
            done(c);
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn reset(&mut self) -> usize {
        0
    }
}
