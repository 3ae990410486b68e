//! Jobs over NVMe/TCP: a [`Port`] on a `transport_tcp` host queue pair and
//! the connect step that `nvmf-bench` and `nvmf-tgt`'s host jobs share.
//!
//! One job instance is one host controller with one I/O queue pair, i.e.
//! one admin and one I/O TCP connection, as `--numjobs` promises (the
//! Linux host also gives each controller its own admin connection). The
//! TCP host splits I/O above MDTS itself, so no [`crate::runner::SplitPort`]
//! is needed on top.
//!
//! The runner drives every port through `&mut dyn Port` already, so TCP
//! adds no dispatch to the loop path: [`crate::runner::LoopPort`] is
//! untouched.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use target_core::host_cmds::{AdminCommands, NvmCommands};
use target_core::iobuf::{DataBuf, IoBuf};
use transport_tcp::host::{ConnectOptions, HostController, HostQpair, QpairState};

use crate::runner::Port;
use crate::workload::Op;

/// Why a TCP job's queue was lost (written once, by the job's thread, when
/// the queue turns dead during the run), shared with whoever reports the
/// run: a vanished target must end the run with a clear line.
pub type LostReason = Arc<Mutex<Option<String>>>;

/// An NVMe/TCP queue pair and the namespace it targets.
#[derive(Debug)]
pub struct TcpPort {
    /// The queue pair (one TCP connection).
    pub qp: HostQpair,
    /// Namespace ID.
    pub nsid: u32,
    lost: LostReason,
}

impl TcpPort {
    /// Wraps `qp`; the returned [`LostReason`] fills if the queue dies.
    pub fn new(qp: HostQpair, nsid: u32) -> (Self, LostReason) {
        let lost = LostReason::default();
        (
            Self {
                qp,
                nsid,
                lost: lost.clone(),
            },
            lost,
        )
    }

    fn note_dead(&self) {
        if self.qp.state() == QpairState::Dead {
            let mut l = self.lost.lock().unwrap_or_else(|p| p.into_inner());
            if l.is_none() {
                *l = Some(
                    self.qp
                        .last_error()
                        .unwrap_or_else(|| "the connection is gone".into()),
                );
            }
        }
    }
}

impl Port for TcpPort {
    #[inline]
    fn submit(&mut self, op: Op, lba: u64, blocks: u32, buf: IoBuf, tag: u64) -> Result<(), IoBuf> {
        let buf = DataBuf::One(buf);
        let r = match op {
            Op::Read => self.qp.read(self.nsid, lba, blocks, buf, tag),
            Op::Write => self.qp.write(self.nsid, lba, blocks, buf, tag),
        };
        r.map(|_| ()).map_err(|e| match e.into_buf() {
            DataBuf::One(b) => b,
            _ => IoBuf::new(0),
        })
    }

    #[inline]
    fn poll(&mut self, f: &mut dyn FnMut(u64, bool, DataBuf)) -> usize {
        self.qp
            .poll(64, &mut |c| f(c.tag, c.status().is_success(), c.buf))
    }

    fn alive(&self) -> bool {
        let st = self.qp.state();
        if st == QpairState::Dead {
            self.note_dead();
        }
        matches!(st, QpairState::Live | QpairState::Reconnecting) || self.qp.outstanding() > 0
    }

    fn recovery(&self) -> (u64, u64) {
        let s = self.qp.stats();
        (s.retries, s.reconnects)
    }
}

/// Where and how a TCP job connects.
#[derive(Clone, Debug)]
pub struct TcpTarget {
    /// `host:port`.
    pub traddr: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Pause between reconnect attempts (error recovery).
    pub reconnect_delay: Duration,
    /// How long to keep reconnecting; zero turns recovery off.
    pub ctrl_loss_tmo: Duration,
}

/// One job instance's connection: the controller (keep-alive, AER and
/// recovery run on its background thread) and the port for the runner.
#[derive(Debug)]
pub struct TcpJobHost {
    /// The controller; disconnect it after the job's port is dropped.
    pub ctrl: HostController,
    /// Namespace size in blocks.
    pub blocks: u64,
    /// Namespace block size in bytes.
    pub block_size: u32,
}

/// Connects one job instance: a controller with one I/O queue of
/// `iodepth + 1` entries (capped by the target's MQES), and the geometry
/// of namespace `nsid`. Errors are one line naming the address.
pub fn connect(
    t: &TcpTarget,
    nsid: u32,
    iodepth: u32,
) -> Result<(TcpJobHost, TcpPort, LostReason), String> {
    let mut o = ConnectOptions::new(&t.traddr, &t.subnqn, &t.hostnqn)
        .with_recovery(t.reconnect_delay, t.ctrl_loss_tmo);
    o.queue_depth = (iodepth + 1).clamp(2, u32::from(transport_tcp::host::MAX_DEPTH)) as u16;
    // A target that vanished must not hold the run for the default 30 s
    // per admin wait.
    o.timeout = Duration::from_secs(10);
    let mut ctrl = HostController::connect(o)
        .map_err(|e| format!("connect to {} ({}): {e}", t.traddr, t.subnqn))?;
    let (blocks, block_size) = ctrl
        .namespace_geometry(nsid)
        .map_err(|e| format!("{} ({}): namespace {nsid}: {e}", t.traddr, t.subnqn))?;
    let qp = ctrl
        .take_qpairs()
        .pop()
        .ok_or_else(|| format!("{} ({}): no I/O queue granted", t.traddr, t.subnqn))?;
    let (port, lost) = TcpPort::new(qp, nsid);
    Ok((
        TcpJobHost {
            ctrl,
            blocks,
            block_size,
        },
        port,
        lost,
    ))
}
