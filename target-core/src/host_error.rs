//! What a host (the loop transport's or NVMe/TCP's) reports when an
//! operation fails or a submission is refused: one pair of types for both,
//! so code that drives either host (the bench, the service's jobs, tests)
//! matches on the same variants.

use crate::iobuf::DataBuf;
use crate::spec::Status;

/// Errors of host operations (connect, admin commands, reset...).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The loop transport has no listener for this subsystem.
    #[error("no loop listener for subsystem {0}")]
    NoListener(String),
    /// The TCP connection could not be made or broke (address in the text).
    #[error("connection: {0}")]
    Io(String),
    /// The target sent something the NVMe/TCP binding does not allow: a
    /// PDU of the wrong type, a short or malformed PDU, a digest error,
    /// data outside a command's buffer, a C2HTermReq.
    #[error("protocol error from the target: {0}")]
    Protocol(String),
    /// The target refused a command; `status` is its NVMe status.
    #[error("{what} failed: {status}")]
    Status {
        /// The command.
        what: &'static str,
        /// NVMe status.
        status: Status,
        /// Completion dword 0 (for Connect: IATTR/IPO).
        dw0: u32,
    },
    /// A bounded wait ran out.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The queue or controller is gone; the text says which, or why.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The target rejected the queue pair (stopping).
    #[error("target: {0}")]
    Target(String),
    /// The operation needs an idle queue pair.
    #[error("queue pair has {0} commands outstanding")]
    Busy(u32),
    /// Bad argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl From<crate::host_cmds::UnusableResponse> for HostError {
    fn from(e: crate::host_cmds::UnusableResponse) -> Self {
        HostError::Invalid(e.0)
    }
}

impl From<crate::host_cmds::ControllerStateError> for HostError {
    fn from(e: crate::host_cmds::ControllerStateError) -> Self {
        use crate::host_cmds::ControllerStateError as E;
        match e {
            E::Fatal { what, csts } => HostError::Status {
                what,
                status: Status::INTERNAL_ERROR,
                dw0: csts,
            },
            E::Timeout(what) => HostError::Timeout(what),
        }
    }
}

impl HostError {
    /// The NVMe status, when the target answered with one.
    pub fn status(&self) -> Option<Status> {
        match self {
            HostError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Why a submission was not accepted; the buffer is given back.
#[derive(Debug)]
pub enum SubmitError {
    /// Every slot is in use: poll, then retry.
    QueueFull(DataBuf),
    /// The queue is closed (quiesced, destroyed, or its connection gone):
    /// drain, then reconnect.
    Closed(DataBuf),
}

impl SubmitError {
    /// The buffer that was not submitted.
    pub fn into_buf(self) -> DataBuf {
        match self {
            SubmitError::QueueFull(b) | SubmitError::Closed(b) => b,
        }
    }
}
