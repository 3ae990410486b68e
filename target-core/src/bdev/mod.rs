//! The block-device layer: software backends and the contract every backend,
//! including the VFIO NVMe driver, fulfils.
//!
//! # Architecture
//!
//! A [`BlockDevice`] is shared by every reactor. Each reactor opens its own
//! [`IoChannel`] on it and uses it only from that reactor's thread, so the
//! I/O path needs no lock. I/O is *submitted* with a caller-chosen `tag` and
//! *completed* when the reactor polls the channel: a backend never calls back
//! into the engine from inside `submit`, and synchronous backends queue their
//! completions locally so every caller has one code path.
//!
//! The [`BdevIo`] owns its data buffer; the completion gives it back. A
//! backend that has not completed an I/O still owns that buffer, which is why
//! teardown waits for completions instead of freeing requests.

pub mod delay;
pub mod error;
pub mod file;
pub mod malloc;
pub mod null;

pub use delay::{DelayBdev, DelayParams, Latency};
pub use error::{ErrorAction, ErrorBdev, ErrorParams, ErrorRule, OpMatch};
pub use file::{FileBdev, FileParams};
pub use malloc::{MallocBdev, MallocParams};
pub use null::{NullBdev, NullParams};

use std::fmt;
use std::sync::Arc;

use crate::iobuf::DataBuf;
use crate::spec::Status;

/// What an I/O does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Read `blocks` blocks at `lba` into the buffer.
    Read,
    /// Write `blocks` blocks at `lba` from the buffer.
    Write,
    /// Make every completed write durable.
    Flush,
    /// Write zeros to `blocks` blocks at `lba`; no buffer.
    WriteZeroes,
    /// Deallocate (trim) the ranges in the buffer: `blocks` Dataset
    /// Management ranges of 16 bytes each (see [`dsm_ranges`]).
    Deallocate,
}

impl IoOp {
    /// How many operations there are: the size of a table indexed by one
    /// (`op as usize`). `Deallocate` is the last; `last_is_deallocate`
    /// stops compiling when a variant is added.
    pub const COUNT: usize = IoOp::Deallocate as usize + 1;
}

/// Every variant, by name: adding one breaks this match, which is where
/// `IoOp::COUNT` is to be checked.
const fn last_is_deallocate(op: IoOp) -> bool {
    match op {
        IoOp::Read | IoOp::Write | IoOp::Flush | IoOp::WriteZeroes => false,
        IoOp::Deallocate => true,
    }
}
const _: () = assert!(last_is_deallocate(IoOp::Deallocate) && IoOp::COUNT == 5);

/// One I/O handed to a channel.
#[derive(Debug)]
pub struct BdevIo {
    /// Caller's identifier, returned unchanged in the completion.
    pub tag: u64,
    /// The operation.
    pub op: IoOp,
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (a count, not zero-based); for
    /// [`IoOp::Deallocate`], the number of ranges in `buf`.
    pub blocks: u32,
    /// Force Unit Access: the write is durable when it completes.
    pub fua: bool,
    /// The data; owned by the backend until completion.
    pub buf: DataBuf,
}

/// A finished I/O.
#[derive(Debug)]
pub struct BdevCompletion {
    /// The tag the I/O was submitted with.
    pub tag: u64,
    /// Outcome.
    pub result: Result<(), IoError>,
    /// The buffer, given back.
    pub buf: DataBuf,
}

/// Why an I/O failed. Small and `Copy`: the failure path must not allocate.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// LBA range outside the device.
    OutOfRange,
    /// The backend does not implement this operation.
    Unsupported,
    /// The buffer is shorter than the transfer.
    BufferTooShort,
    /// Data could not be read (media error).
    ReadError,
    /// Data could not be written (media error).
    WriteFault,
    /// The OS returned this errno.
    Os(i32),
    /// The I/O was aborted (backend reset, queue deletion).
    Aborted,
    /// The device is gone or failed (surprise removal, fatal status).
    DeviceFailed,
    /// The device is being removed in an orderly way (hot unplug through
    /// the VFIO device request): this path to the data is going away, the
    /// data itself may be reachable through another one.
    Removed,
    /// The device completed with this NVMe status (pass-through backends and
    /// injected errors).
    Nvme(Status),
}

impl IoError {
    /// The NVMe status a host sees for this error: the one place where
    /// backend failures become spec statuses.
    pub fn to_status(self) -> Status {
        match self {
            IoError::OutOfRange => Status::LBA_OUT_OF_RANGE.with_dnr(),
            IoError::Unsupported => Status::INVALID_OPCODE.with_dnr(),
            IoError::BufferTooShort => Status::DATA_SGL_LENGTH_INVALID.with_dnr(),
            IoError::ReadError => Status::UNRECOVERED_READ_ERROR,
            IoError::WriteFault => Status::WRITE_FAULT,
            IoError::Os(_) => Status::INTERNAL_ERROR,
            IoError::Aborted => Status::ABORT_REQUESTED,
            IoError::DeviceFailed => Status::INTERNAL_PATH_ERROR.with_dnr(),
            // Internal Path Error (SCT 3h, SC 00h) without DNR: the fault is
            // in this controller's path to the media, so a host may retry,
            // and a multipath host fails over to another path (Linux treats
            // every SCT 3h status as a path error). The ANA statuses
            // (01h-03h) would point hosts at an ANA log this target does not
            // keep; 60h/70h name transport faults.
            IoError::Removed => Status::INTERNAL_PATH_ERROR,
            IoError::Nvme(s) => s,
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::Os(e) => write!(f, "os error {e}"),
            IoError::Nvme(s) => write!(f, "NVMe status {s}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Static facts about a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BdevInfo {
    /// Unique name, as in the config.
    pub name: String,
    /// Backend kind (`null`, `malloc`, `delay`, `error`, `file`, `nvme`).
    pub kind: &'static str,
    /// Logical block size in bytes (512 or 4096 usually).
    pub block_size: u32,
    /// Number of logical blocks.
    pub num_blocks: u64,
    /// The device has a volatile write cache: flush matters.
    pub volatile_write_cache: bool,
    /// Largest transfer the backend takes in one I/O, in blocks (`None`: no limit).
    pub max_transfer_blocks: Option<u32>,
    /// Write Zeroes is implemented.
    pub supports_write_zeroes: bool,
    /// Deallocate is implemented (reads of deallocated blocks return zeros).
    pub supports_deallocate: bool,
}

/// A block device shared by every reactor.
pub trait BlockDevice: Send + Sync + fmt::Debug {
    /// Size, block size and capabilities.
    fn info(&self) -> &BdevInfo;

    /// Opens a channel for the calling reactor. Called once per reactor,
    /// off the I/O path (it may allocate).
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError>;
}

/// Completions a poller's batch vector is made to hold without growing
/// (see [`IoChannel::poll_into`]).
pub const POLL_BATCH: usize = 4096;

/// A reactor's private handle for doing I/O on one device.
pub trait IoChannel: Send + fmt::Debug {
    /// Starts an I/O. Never completes it inline: the completion comes from
    /// [`IoChannel::poll`]. `Err` gives the I/O back when the channel is full;
    /// retry after polling.
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo>;

    /// Delivers finished I/Os to `done`. Returns how many were delivered.
    fn poll(&mut self, done: &mut dyn FnMut(BdevCompletion)) -> usize;

    /// Appends finished I/Os to `out`. Returns how many. For a caller that
    /// handles completions in its own loop (the poll group): one call
    /// through the channel's pointer per poll instead of one per
    /// completion. The default goes through [`IoChannel::poll`]; a backend
    /// that keeps its completions in a `Vec` hands the batch over whole.
    /// `out` keeps its capacity: give it [`POLL_BATCH`] and pushes within
    /// a batch of that size do not allocate.
    fn poll_into(&mut self, out: &mut Vec<BdevCompletion>) -> usize {
        self.poll(&mut |c| out.push(c))
    }

    /// I/Os submitted and not yet delivered by `poll`.
    fn in_flight(&self) -> usize;

    /// Backend reset, the escalation after a bounded wait. Starts the
    /// escalation and returns at once (it runs on a reactor: it never waits
    /// for a device); completions arrive through [`IoChannel::poll`]: every
    /// I/O the backend can safely give back comes back there, completed
    /// normally or with [`IoError::Aborted`]. A device backend (NVMe) sends
    /// Abort, then resets its controller step by step from later polls;
    /// meanwhile its other channels give submissions back (`Err`, retry
    /// later). Returns how many I/Os the channel still holds right now
    /// (for a device backend usually all of them, until the polls that
    /// follow): keep polling while [`IoChannel::in_flight`] is above 0,
    /// up to the caller's own bound.
    fn reset(&mut self) -> usize;
}

/// Errors setting up a block device. Unlike [`IoError`] these carry context
/// and may allocate: they happen at configuration time.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    /// A parameter is out of range or inconsistent.
    #[error("backend {name}: {reason}")]
    InvalidParameter {
        /// Backend name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Opening or sizing a file or device failed.
    #[error("backend {name}: {op} {path}: {source}")]
    Io {
        /// Backend name.
        name: String,
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A facility the backend needs is missing on this machine.
    #[error("backend {name}: {reason}")]
    Unavailable {
        /// Backend name.
        name: String,
        /// What is missing and how to get it.
        reason: String,
    },
}

/// A shared handle to a block device.
pub type BdevRef = Arc<dyn BlockDevice>;

/// One Dataset Management range (NVM 1.0c Figure 39), 16 bytes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsmRange {
    /// Context Attributes.
    pub attributes: u32,
    /// Length in logical blocks (a count).
    pub blocks: u32,
    /// Starting LBA.
    pub slba: u64,
}

/// The Dataset Management ranges in `buf`, at most `count` of them.
pub fn dsm_ranges(buf: &DataBuf, count: u32) -> impl Iterator<Item = DsmRange> + '_ {
    (0..count as usize).map_while(move |i| {
        let mut raw = [0u8; 16];
        if buf.copy_out(i * 16, &mut raw) != 16 {
            return None;
        }
        let word = |o: usize| u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        Some(DsmRange {
            attributes: word(0),
            blocks: word(4),
            slba: word(8) as u64 | ((word(12) as u64) << 32),
        })
    })
}

/// Encodes Dataset Management ranges for a host building a deallocate.
pub fn encode_dsm_ranges(ranges: &[DsmRange], out: &mut DataBuf) -> usize {
    let mut n = 0;
    for (i, r) in ranges.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&r.attributes.to_le_bytes());
        raw[4..8].copy_from_slice(&r.blocks.to_le_bytes());
        raw[8..16].copy_from_slice(&r.slba.to_le_bytes());
        n += out.copy_in(i * 16, &raw);
    }
    n
}

/// Checks an I/O's range and buffer against a device, as every backend must
/// before touching data. Reads and writes (every I/O of a benchmark) are
/// checked inline at the call site; the other operations in a function of
/// their own (the deallocate check walks its ranges).
#[inline(always)]
pub fn check_io(info: &BdevInfo, io: &BdevIo) -> Result<(), IoError> {
    if matches!(io.op, IoOp::Read | IoOp::Write) {
        let end = io
            .lba
            .checked_add(io.blocks as u64)
            .ok_or(IoError::OutOfRange)?;
        if end > info.num_blocks {
            return Err(IoError::OutOfRange);
        }
        if (io.buf.len() as u64) < io.blocks as u64 * info.block_size as u64 {
            return Err(IoError::BufferTooShort);
        }
        return Ok(());
    }
    check_io_slow(info, io)
}

#[inline(never)]
fn check_io_slow(info: &BdevInfo, io: &BdevIo) -> Result<(), IoError> {
    match io.op {
        IoOp::Read | IoOp::Write | IoOp::WriteZeroes => {
            let end = io
                .lba
                .checked_add(io.blocks as u64)
                .ok_or(IoError::OutOfRange)?;
            if end > info.num_blocks {
                return Err(IoError::OutOfRange);
            }
            if io.op != IoOp::WriteZeroes
                && (io.buf.len() as u64) < io.blocks as u64 * info.block_size as u64
            {
                return Err(IoError::BufferTooShort);
            }
            Ok(())
        }
        IoOp::Flush => Ok(()),
        IoOp::Deallocate => {
            if io.buf.len() < io.blocks as usize * 16 {
                return Err(IoError::BufferTooShort);
            }
            for r in dsm_ranges(&io.buf, io.blocks) {
                let end = r
                    .slba
                    .checked_add(r.blocks as u64)
                    .ok_or(IoError::OutOfRange)?;
                if end > info.num_blocks {
                    return Err(IoError::OutOfRange);
                }
            }
            Ok(())
        }
    }
}

/// Checks a block size (power of two, 512..=64 KiB) and a non-zero size.
pub(crate) fn check_geometry(
    name: &str,
    block_size: u32,
    num_blocks: u64,
) -> Result<(), BdevError> {
    if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
        return Err(BdevError::InvalidParameter {
            name: name.to_owned(),
            reason: format!("block size {block_size} is not a power of two between 512 and 65536"),
        });
    }
    if num_blocks == 0 {
        return Err(BdevError::InvalidParameter {
            name: name.to_owned(),
            reason: "size is zero".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iobuf::IoBuf;

    #[test]
    fn dsm_ranges_round_trip() {
        let ranges = [
            DsmRange {
                attributes: 0,
                blocks: 8,
                slba: 0x1_0000_0000,
            },
            DsmRange {
                attributes: 4,
                blocks: 1,
                slba: 3,
            },
        ];
        let mut buf = DataBuf::One(IoBuf::new(4096));
        assert_eq!(encode_dsm_ranges(&ranges, &mut buf), 32);
        let back: Vec<_> = dsm_ranges(&buf, 2).collect();
        assert_eq!(back, ranges);
    }

    #[test]
    fn errors_map_to_spec_statuses() {
        assert!(
            IoError::OutOfRange
                .to_status()
                .same_code(Status::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            IoError::Nvme(Status::WRITE_FAULT).to_status(),
            Status::WRITE_FAULT
        );
        assert!(
            IoError::ReadError
                .to_status()
                .same_code(Status::UNRECOVERED_READ_ERROR)
        );
        // Hot removal: a path status the host may retry elsewhere (no DNR);
        // a failed device: the same code, but final.
        let removed = IoError::Removed.to_status();
        assert!(removed.same_code(Status::INTERNAL_PATH_ERROR));
        assert!(!removed.dnr());
        assert!(IoError::DeviceFailed.to_status().dnr());
    }
}
