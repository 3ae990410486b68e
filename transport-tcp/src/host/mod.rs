//! The NVMe/TCP host: connects to any NVMe/TCP controller (ours, the Linux
//! kernel's `nvmet-tcp`, SPDK's `nvmf_tgt`, an array) with the same API
//! shape as the loop host (`transport_loop::{HostController, HostQpair,
//! ConnectOptions}`), so a caller of one can switch to the other.
//!
//! # Architecture
//!
//! * [`HostController`]: one association. The admin queue is one TCP
//!   connection: ICReq (digests on request), Fabrics Connect (host NQN,
//!   host ID, KATO), Property Get CAP/VS, Property Set CC.EN and a wait for
//!   CSTS.RDY bounded by CAP.TO, Identify Controller (MDTS, IOCCSZ), Set
//!   Features Number of Queues, then the I/O queues. An optional background
//!   thread (one per controller, not per connection) sends Keep Alive every
//!   KATO/2, keeps an AER outstanding and runs error recovery; without it
//!   the caller calls [`HostController::service`].
//! * [`HostQpair`]: one I/O queue, one TCP connection, owned by one thread
//!   and driven by its [`HostQpair::poll`] (non-blocking socket, no thread).
//!   Writes go in capsule when they fit the controller's IOCCSZ, else by
//!   R2T/H2CData; reads come by C2HData, ending with SUCCESS or a response
//!   capsule. Reads and writes larger than MDTS are split and recombined:
//!   the caller sees one completion per submission.
//! * Error recovery (off unless `ctrl_loss_tmo` is set), as Linux's fabrics
//!   hosts: a lost connection, a C2HTermReq or an unanswered Keep Alive
//!   ends the association; the host connects a new one every
//!   `reconnect_delay` for up to `ctrl_loss_tmo` and resubmits what was in
//!   flight; commands failing with DNR clear are resubmitted up to
//!   `max_retries` times. Without recovery, a lost connection completes
//!   every outstanding command with Host Pathing Error and the queue says
//!   why ([`HostQpair::last_error`]).
//!
//! # Not implemented
//!
//! TLS, HPDA other than 0, more than one outstanding R2T per command
//! (MAXR2T 0), Fabrics Disconnect (a queue is closed by closing its
//! connection, as the Linux host does), I/O command timeouts other than by
//! Keep Alive.

mod conn;
mod ctrl;
mod qpair;
mod wire;

use target_core::iobuf::DataBuf;
use target_core::spec::{CompletionEntry, Status};

pub use conn::{HostQpairStats, MAX_DEPTH};
pub use ctrl::{AsyncEvent, ConnectOptions, HostController, QpairConnector};
pub use qpair::HostQpair;
/// The command builders every host shares (in scope for `read`, `identify_raw`...).
pub use target_core::host_cmds::{AdminCommands, NvmCommands};
pub use target_core::host_error::{HostError, SubmitError};

/// A finished request as the host sees it.
#[derive(Debug)]
pub struct HostCompletion {
    /// The caller's tag from submission.
    pub tag: u64,
    /// The completion entry (for a split request: the first failure, else
    /// the last part's).
    pub cqe: CompletionEntry,
    /// The buffer, given back.
    pub buf: DataBuf,
}

impl HostCompletion {
    /// The completion status.
    pub fn status(&self) -> Status {
        self.cqe.status()
    }
}

/// Where a queue pair stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpairState {
    /// Submissions accepted.
    Live,
    /// The connection is gone for good; [`HostQpair::last_error`] says why.
    Dead,
    /// The connection was lost and the host is reconnecting (error
    /// recovery): submissions wait, in-flight commands are resubmitted.
    Reconnecting,
}
