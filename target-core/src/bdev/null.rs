//! `null`: completes every I/O at once without touching data. The
//! benchmark backend: what is left is the cost of the target itself.

use super::{
    BdevCompletion, BdevError, BdevInfo, BdevIo, BlockDevice, IoChannel, IoOp, POLL_BATCH, check_io,
};

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

/// Completions one channel can hold before `submit` says full: a poller's
/// batch, so that handing the batch over by swapping vectors keeps both at
/// full capacity.
const NULL_QUEUE: usize = POLL_BATCH;

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

    /// The batch changes hands by swapping vectors when the caller's is
    /// empty and as large: no completion is copied.
    #[inline]
    fn poll_into(&mut self, out: &mut Vec<BdevCompletion>) -> usize {
        let n = self.done.len();
        if out.is_empty() && out.capacity() >= NULL_QUEUE {
            std::mem::swap(out, &mut self.done);
        } else {
            out.append(&mut self.done);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iobuf::{DataBuf, IoBuf};

    fn channel() -> Box<dyn IoChannel> {
        let dev = NullBdev::new(NullParams {
            name: "n".into(),
            block_size: 512,
            num_blocks: 64,
            read_zeroes: false,
        })
        .unwrap();
        dev.open_channel().unwrap()
    }

    fn read(tag: u64, lba: u64) -> BdevIo {
        BdevIo {
            tag,
            op: IoOp::Read,
            lba,
            blocks: 1,
            fua: false,
            buf: DataBuf::One(IoBuf::new(512)),
        }
    }

    #[test]
    fn poll_into_hands_over_the_batch_in_order() {
        let mut ch = channel();
        for t in 0..3 {
            ch.submit(read(t, t)).unwrap();
        }
        // Out of range: completes with an error, in its turn.
        ch.submit(read(3, 64)).unwrap();
        // An empty batch of full capacity changes hands whole.
        let mut out = Vec::with_capacity(POLL_BATCH);
        assert_eq!(ch.poll_into(&mut out), 4);
        assert_eq!(ch.in_flight(), 0);
        let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        assert_eq!(tags, [0, 1, 2, 3]);
        assert!(
            out[..3]
                .iter()
                .all(|c| c.result.is_ok() && c.buf.len() == 512)
        );
        assert!(out[3].result.is_err());
        // A batch holding completions already gets the new ones appended.
        ch.submit(read(4, 0)).unwrap();
        assert_eq!(ch.poll_into(&mut out), 1);
        assert_eq!(out.len(), 5);
        assert_eq!(out[4].tag, 4);
        // Both vectors kept a batch's capacity: the channel takes a full
        // queue without growing.
        for t in 0..NULL_QUEUE as u64 {
            ch.submit(read(t, 0)).unwrap();
        }
        assert!(ch.submit(read(0, 0)).is_err());
        out.clear();
        assert_eq!(ch.poll_into(&mut out), NULL_QUEUE);
        assert!(out.capacity() >= POLL_BATCH);
    }
}
