//! The commands a host builds, written once for every host transport.
//!
//! The loop host and the NVMe/TCP host differ in how a command travels and
//! how a lost queue recovers, not in what an Identify or a Read looks like.
//! Each implements one method (send an admin command and check its status;
//! submit an I/O command) and gets the builders here, so a fix to one (the
//! LBA format a namespace's block size comes from, say) reaches both.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::bdev::{DsmRange, encode_dsm_ranges};
use crate::iobuf::{DataBuf, IoBuf};
use crate::spec::{AdminOpcode, CompletionEntry, NvmOpcode, SubmissionEntry};

/// A response that is well-formed NVMe but not what the host can use (an
/// inactive namespace, an LBA size out of range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableResponse(pub String);

/// Set Features for `fid` with `cdw11` (for the features whose value fits
/// in dword 11: Number of Queues, Keep Alive Timer, Async Event Config...).
pub fn set_features_sqe(fid: u8, cdw11: u32) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(AdminOpcode::SET_FEATURES.0, 0);
    sqe.cdw10 = fid as u32;
    sqe.cdw11 = cdw11;
    sqe
}

/// Admin commands over a host's admin queue.
pub trait AdminCommands {
    /// The host's error type.
    type Error: From<UnusableResponse>;

    /// Runs an admin command and turns a non-success status into an error
    /// naming `what`.
    fn admin_checked(
        &self,
        what: &'static str,
        sqe: SubmissionEntry,
        buf: DataBuf,
    ) -> Result<(CompletionEntry, DataBuf), Self::Error>;

    /// Identify with `cns` for `nsid`; returns the 4096-byte data.
    fn identify_raw(&self, cns: u8, nsid: u32) -> Result<(CompletionEntry, DataBuf), Self::Error> {
        let mut sqe = SubmissionEntry::new(AdminOpcode::IDENTIFY.0, 0);
        sqe.nsid = nsid;
        sqe.cdw10 = cns as u32;
        self.admin_checked("Identify", sqe, DataBuf::One(IoBuf::new(4096)))
    }

    /// Active namespace IDs (Identify CNS 02h).
    fn active_namespaces(&self) -> Result<Vec<u32>, Self::Error> {
        let (_, buf) = self.identify_raw(2, 0)?;
        let mut raw = [0u8; 4096];
        buf.copy_out(0, &mut raw);
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&id| id != 0)
            .collect())
    }

    /// Size in blocks and block size of a namespace (Identify Namespace:
    /// NSZE, and LBADS of the LBA format FLBAS selects).
    fn namespace_geometry(&self, nsid: u32) -> Result<(u64, u32), Self::Error> {
        let (_, buf) = self.identify_raw(0, nsid)?;
        let mut raw = [0u8; 4096];
        buf.copy_out(0, &mut raw);
        let nsze = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        // FLBAS bits 3:0 (and 6:5 above 16 formats) pick the LBA format;
        // LBADS is byte 2 of its 4-byte descriptor at 128.
        let flbas = (raw[26] & 0xf) as usize | (((raw[26] >> 5) & 3) as usize) << 4;
        let lbads = raw.get(128 + flbas * 4 + 2).copied().unwrap_or(0);
        if nsze == 0 || !(9..=16).contains(&lbads) {
            return Err(UnusableResponse(format!("namespace {nsid} is not active")).into());
        }
        Ok((nsze, 1u32 << lbads))
    }

    /// Get Log Page of `len` bytes at `offset`.
    fn get_log_page(
        &self,
        lid: u8,
        nsid: u32,
        len: usize,
        offset: u64,
    ) -> Result<DataBuf, Self::Error> {
        let numd_z = (len / 4).max(1) as u32 - 1;
        let mut sqe = SubmissionEntry::new(AdminOpcode::GET_LOG_PAGE.0, 0);
        sqe.nsid = nsid;
        sqe.cdw10 = lid as u32 | ((numd_z & 0xffff) << 16);
        sqe.cdw11 = numd_z >> 16;
        sqe.cdw12 = offset as u32;
        sqe.cdw13 = (offset >> 32) as u32;
        self.admin_checked("Get Log Page", sqe, DataBuf::One(IoBuf::new(len)))
            .map(|(_, b)| b)
    }

    /// Get Features; returns completion dword 0.
    fn get_features(&self, fid: u8, cdw11: u32) -> Result<u32, Self::Error> {
        let mut sqe = SubmissionEntry::new(AdminOpcode::GET_FEATURES.0, 0);
        sqe.cdw10 = fid as u32;
        sqe.cdw11 = cdw11;
        self.admin_checked("Get Features", sqe, DataBuf::None)
            .map(|(c, _)| c.dw0)
    }

    /// Set Features; returns completion dword 0.
    fn set_features(&self, fid: u8, cdw11: u32) -> Result<u32, Self::Error> {
        self.admin_checked("Set Features", set_features_sqe(fid, cdw11), DataBuf::None)
            .map(|(c, _)| c.dw0)
    }

    /// Sends a Keep Alive now.
    fn keep_alive(&self) -> Result<(), Self::Error> {
        let sqe = SubmissionEntry::new(AdminOpcode::KEEP_ALIVE.0, 0);
        self.admin_checked("Keep Alive", sqe, DataBuf::None)
            .map(|_| ())
    }
}

/// NVM I/O commands over a host I/O queue pair.
pub trait NvmCommands {
    /// What a refused submission gives back.
    type SubmitError;

    /// Submits any command with the given buffer; the tag comes back with
    /// its completion. Returns the command identifier.
    fn submit_command(
        &mut self,
        sqe: SubmissionEntry,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, Self::SubmitError>;

    /// Reads `blocks` blocks at `lba` of namespace `nsid` into `buf`.
    #[inline]
    fn read(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, Self::SubmitError> {
        self.submit_command(
            SubmissionEntry::nvm_rw(NvmOpcode::READ.0, 0, nsid, lba, blocks),
            buf,
            tag,
        )
    }

    /// Writes `blocks` blocks at `lba` from `buf`.
    #[inline]
    fn write(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DataBuf,
        tag: u64,
    ) -> Result<u16, Self::SubmitError> {
        self.submit_command(
            SubmissionEntry::nvm_rw(NvmOpcode::WRITE.0, 0, nsid, lba, blocks),
            buf,
            tag,
        )
    }

    /// Flushes the namespace's volatile write cache.
    fn flush(&mut self, nsid: u32, tag: u64) -> Result<u16, Self::SubmitError> {
        let mut sqe = SubmissionEntry::new(NvmOpcode::FLUSH.0, 0);
        sqe.nsid = nsid;
        self.submit_command(sqe, DataBuf::None, tag)
    }

    /// Writes zeros to `blocks` blocks at `lba`.
    fn write_zeroes(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        tag: u64,
    ) -> Result<u16, Self::SubmitError> {
        self.submit_command(
            SubmissionEntry::nvm_rw(NvmOpcode::WRITE_ZEROES.0, 0, nsid, lba, blocks),
            DataBuf::None,
            tag,
        )
    }

    /// Deallocates the ranges (Dataset Management with AD; at most 256).
    /// Allocates the range buffer: a control-path call, not a benchmark one.
    fn deallocate(
        &mut self,
        nsid: u32,
        ranges: &[DsmRange],
        tag: u64,
    ) -> Result<u16, Self::SubmitError> {
        let n = ranges.len().clamp(1, 256);
        let mut buf = DataBuf::One(IoBuf::new(n * 16));
        encode_dsm_ranges(&ranges[..n.min(ranges.len())], &mut buf);
        let mut sqe = SubmissionEntry::new(NvmOpcode::DATASET_MANAGEMENT.0, 0);
        sqe.nsid = nsid;
        sqe.cdw10 = (n as u32 - 1) & 0xff;
        sqe.cdw11 = 1 << 2;
        self.submit_command(sqe, buf, tag)
    }
}

/// A request to replace a host's association, tagged with the generation
/// it was made in, shared by the controller's poller and its queue pairs.
///
/// A plain flag is racy: a queue pair that read the old generation, then
/// saw no recovery running (the poller having just finished one), would
/// raise it again and have the brand-new association torn down for nothing
/// (one reset, two reconnects). Tagged, a request made in generation `g`
/// stops counting as soon as the association is `g + 1`.
#[derive(Debug, Default)]
pub struct RecoveryRequest(AtomicU32);

impl RecoveryRequest {
    /// Asks for the association current in `generation` to be replaced.
    pub fn request_current(&self, generation: &AtomicU32) {
        self.request(generation.load(Ordering::Acquire));
    }

    /// A replacement of the association current in `generation` was asked
    /// for.
    pub fn pending_current(&self, generation: &AtomicU32) -> bool {
        self.pending(generation.load(Ordering::Acquire))
    }

    /// Asks for association `generation` to be replaced (a no-op once it
    /// has been).
    pub fn request(&self, generation: u32) {
        self.0
            .fetch_max(generation.saturating_add(1), Ordering::AcqRel);
    }

    /// `true` while a request for the association now current
    /// (`generation`) is pending.
    pub fn pending(&self, generation: u32) -> bool {
        self.0.load(Ordering::Acquire) > generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_made_in_an_old_generation_does_not_count_in_the_new_one() {
        let r = RecoveryRequest::default();
        assert!(!r.pending(0));
        r.request(0);
        assert!(r.pending(0));
        // The poller replaced association 0 with 1; a queue pair that saw
        // 0 end only now asks again: nothing is pending for 1.
        r.request(0);
        assert!(!r.pending(1));
        r.request(1);
        assert!(r.pending(1));
        r.request(0);
        assert!(r.pending(1));
        assert!(!r.pending(2));
    }
}
