//! The controller reset as a state machine advanced by polls, so that no
//! reactor ever waits for a controller (NVMe Base 2.0c §3.7.2 and §7.6.2).
//!
//! ```text
//!  Drain ──> Settle ──> (CC.EN = 0) WaitNotReady ──> (release, CC.EN = 1)
//!  WaitReady ──> SetQueues ──> Create(CQ, SQ per queue) ──> running
//! ```
//!
//! Each step does what it can without waiting and returns; whoever polls a
//! channel of the controller, submits to it, or calls
//! `NvmeController::poll_admin` moves it on. While it runs the controller
//! state is `Resetting`: submissions are given back (`Err(io)`, retry
//! later) and completions of the frozen queues wait for the end of the
//! reset. At CSTS.RDY = 0 every outstanding command is completed with
//! `Aborted` and every quarantined I/O released. Admin commands are
//! submitted and reaped without waiting. Every step has a deadline; a
//! missed one fails the controller (I/O then ends with `DeviceFailed`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use target_core::bdev::IoError;

use crate::controller::{CtrlState, FETCH_SETTLE_TIMEOUT, NvmeController, SharedQueue, create_sqe};
use crate::error::DriverError;
use crate::regs;

#[derive(Debug)]
enum Step {
    /// Quiesced; completions keep being reaped until nothing is
    /// outstanding or the deadline passes.
    Drain { deadline: Instant },
    /// Waiting until the controller reported every announced submission
    /// entry fetched (see `NvmeController::settle_fetches`).
    Settle { deadline: Instant },
    /// CC.EN = 0 written; waiting for CSTS.RDY = 0.
    WaitNotReady { deadline: Instant },
    /// CC.EN = 1 written; waiting for CSTS.RDY = 1.
    WaitReady { deadline: Instant },
    /// Set Features / Number of Queues in flight.
    SetQueues {
        token: Option<u64>,
        deadline: Instant,
    },
    /// Re-creating queue `i` (its CQ, then its SQ).
    Create {
        i: usize,
        sq: bool,
        token: Option<u64>,
        deadline: Instant,
    },
}

/// A reset in progress.
#[derive(Debug)]
pub(crate) struct ResetMachine {
    step: Step,
    /// The I/O queues to re-create, fixed when the controller is disabled.
    queues: Vec<Arc<SharedQueue>>,
    started: Instant,
}

enum Progress {
    /// Nothing more to do until a later poll.
    Wait,
    /// The step changed: try the next one now.
    Next,
    /// Running again.
    Done,
}

impl NvmeController {
    /// Starts a controller reset (or joins the one in progress) and returns
    /// at once; polls advance it. `drain` bounds how long it first waits for
    /// outstanding commands to complete normally.
    pub(crate) fn start_reset(&self, drain: Duration) -> Result<(), DriverError> {
        let mut m = self.resetting.lock().unwrap_or_else(|p| p.into_inner());
        if m.is_some() {
            return Ok(());
        }
        let state = self.state();
        match state {
            CtrlState::Running | CtrlState::Shutdown => {}
            CtrlState::Resetting | CtrlState::ShuttingDown | CtrlState::Failed => {
                return Err(DriverError::NotRunning {
                    addr: self.addr(),
                    state: state.name(),
                });
            }
        }
        self.counters.resets.fetch_add(1, Ordering::Relaxed);
        // Channels check the state under their queue's lock before they
        // submit, so once the drain step locked each queue no doorbell
        // moves any more.
        self.state
            .store(CtrlState::Resetting as u8, Ordering::Release);
        tracing::info!(addr = self.pci_addr(), ?drain, "controller reset started");
        *m = Some(ResetMachine {
            step: Step::Drain {
                deadline: Instant::now() + drain,
            },
            queues: Vec::new(),
            started: Instant::now(),
        });
        Ok(())
    }

    /// Moves a reset in progress on as far as it can without waiting.
    /// Returns `true` while it is still in progress. Never blocks: if
    /// another thread is advancing it, returns at once.
    pub(crate) fn advance_reset(&self) -> bool {
        let mut g = match self.resetting.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return true,
        };
        if g.is_none() {
            return false;
        }
        let t = Instant::now();
        let r = self.advance_locked(&mut g);
        let us = t.elapsed().as_micros() as u64;
        self.counters
            .longest_reset_poll_us
            .fetch_max(us, Ordering::Relaxed);
        r
    }

    fn advance_locked(&self, g: &mut Option<ResetMachine>) -> bool {
        let Some(m) = g.as_mut() else {
            return false;
        };
        loop {
            let r = if self.state() == CtrlState::Failed {
                Err(DriverError::ControllerFailed {
                    addr: self.addr(),
                    reason: "failed during reset",
                })
            } else {
                self.step(m)
            };
            match r {
                Ok(Progress::Next) => continue,
                Ok(Progress::Wait) => return true,
                Ok(Progress::Done) => {
                    for q in &m.queues {
                        q.lock().frozen = false;
                    }
                    self.counters.resets_done.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .last_reset_us
                        .store(m.started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    self.state
                        .store(CtrlState::Running as u8, Ordering::Release);
                    tracing::info!(
                        addr = self.pci_addr(),
                        took = ?m.started.elapsed(),
                        "controller reset done"
                    );
                    *g = None;
                    return false;
                }
                Err(e) => {
                    tracing::error!(addr = self.pci_addr(), "reset failed: {e}");
                    self.fail("reset failed");
                    // Disabled and bus mastering off: nothing can DMA.
                    let queues: Vec<Arc<SharedQueue>> = if m.queues.is_empty() {
                        self.ioqs.lock().unwrap_or_else(|p| p.into_inner()).clone()
                    } else {
                        m.queues.clone()
                    };
                    for q in &queues {
                        let mut q = q.lock();
                        q.abort_all(IoError::DeviceFailed, &self.counters);
                        q.frozen = false;
                    }
                    *g = None;
                    return false;
                }
            }
        }
    }

    /// Polls the reset to its end from a thread that may wait (off the
    /// reactors).
    pub(crate) fn finish_reset(&self) -> Result<(), DriverError> {
        while self.advance_reset() {
            std::thread::sleep(Duration::from_micros(100));
        }
        match self.state() {
            CtrlState::Running => Ok(()),
            s => Err(DriverError::NotRunning {
                addr: self.addr(),
                state: s.name(),
            }),
        }
    }

    fn try_queue_list(&self) -> Option<Vec<Arc<SharedQueue>>> {
        match self.ioqs.try_lock() {
            Ok(g) => Some(g.clone()),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().clone()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn csts(&self) -> Result<u32, DriverError> {
        Ok(self.bar().read32_present(regs::CSTS)?)
    }

    fn step(&self, m: &mut ResetMachine) -> Result<Progress, DriverError> {
        let now = Instant::now();
        let to = Duration::from_millis(self.cap.timeout_ms().max(500));
        match m.step {
            Step::Drain { deadline } => {
                // A channel being opened holds the list while it creates
                // its queue (admin commands): try again on a later poll.
                let Some(ioqs) = self.try_queue_list() else {
                    return Ok(Progress::Wait);
                };
                let mut busy = 0;
                for q in &ioqs {
                    let mut g = q.lock();
                    if g.qp.active() > 0 {
                        g.poll(self.bar(), usize::MAX, &self.counters)?;
                    }
                    busy += g.qp.active();
                }
                if busy > 0 && now < deadline {
                    return Ok(Progress::Wait);
                }
                if busy > 0 {
                    tracing::info!(busy, "reset: commands outstanding at disable");
                }
                m.step = Step::Settle {
                    deadline: now + FETCH_SETTLE_TIMEOUT,
                };
                Ok(Progress::Next)
            }
            Step::Settle { deadline } => {
                // The admin queue first, as every admin path: a queue being
                // created right now is in the list once we hold it.
                let Some(adm) = self.try_lock_admin() else {
                    return Ok(Progress::Wait);
                };
                let Some(ioqs) = self.try_queue_list() else {
                    return Ok(Progress::Wait);
                };
                let unfetched: usize = ioqs.iter().map(|q| q.lock().qp.unfetched()).sum();
                let failed = self.csts().map_or(true, |c| c & regs::CSTS_CFS != 0);
                if unfetched > 0 && !failed && now < deadline {
                    return Ok(Progress::Wait);
                }
                if unfetched > 0 {
                    tracing::warn!(
                        unfetched,
                        failed,
                        "disabling with submission entries not reported fetched"
                    );
                }
                for q in &ioqs {
                    q.lock().frozen = true;
                }
                m.queues = ioqs;
                let bar = self.bar();
                let cc = bar.read32(regs::CC)?;
                bar.write32(regs::CC, cc & !regs::CC_EN)?;
                drop(adm);
                m.step = Step::WaitNotReady { deadline: now + to };
                Ok(Progress::Next)
            }
            Step::WaitNotReady { deadline } => {
                if self.csts()? & regs::CSTS_RDY != 0 {
                    if now > deadline {
                        return Err(DriverError::Timeout {
                            addr: self.addr(),
                            what: "CSTS.RDY=0",
                            ms: to.as_millis() as u64,
                        });
                    }
                    return Ok(Progress::Wait);
                }
                let Some(mut adm) = self.try_lock_admin() else {
                    return Ok(Progress::Wait);
                };
                // Disabled: the device no longer touches any queue memory.
                for q in &m.queues {
                    let mut g = q.lock();
                    let n = g.abort_all(IoError::Aborted, &self.counters);
                    if n > 0 {
                        tracing::info!(qid = g.qp.qid(), n, "reset aborted in-flight commands");
                    }
                }
                self.admin_forget_all(&mut adm);
                self.start_enable(&adm)?;
                m.step = Step::WaitReady { deadline: now + to };
                Ok(Progress::Next)
            }
            Step::WaitReady { deadline } => {
                let csts = self.csts()?;
                if csts & regs::CSTS_CFS != 0 {
                    return Err(DriverError::ControllerFailed {
                        addr: self.addr(),
                        reason: "CSTS.CFS set while enabling",
                    });
                }
                if csts & regs::CSTS_RDY == 0 {
                    if now > deadline {
                        return Err(DriverError::Timeout {
                            addr: self.addr(),
                            what: "CSTS.RDY=1",
                            ms: to.as_millis() as u64,
                        });
                    }
                    return Ok(Progress::Wait);
                }
                m.step = Step::SetQueues {
                    token: None,
                    deadline: now + self.options().admin_timeout,
                };
                Ok(Progress::Next)
            }
            Step::SetQueues { token, deadline } => {
                let Some(dw0) = self.admin_step(token, deadline, || self.queue_count_sqe())? else {
                    return Ok(Progress::Wait);
                };
                let dw0 = match dw0 {
                    Ok(dw0) => dw0,
                    Err(t) => {
                        m.step = Step::SetQueues {
                            token: Some(t),
                            deadline,
                        };
                        return Ok(Progress::Wait);
                    }
                };
                let granted = self.queues_granted(dw0);
                if (granted as usize) < m.queues.len() {
                    return Err(DriverError::Unsupported {
                        addr: self.addr(),
                        reason: format!(
                            "after reset the controller grants {granted} queues, {} in use",
                            m.queues.len()
                        ),
                    });
                }
                m.step = Step::Create {
                    i: 0,
                    sq: false,
                    token: None,
                    deadline: now + self.options().admin_timeout,
                };
                Ok(Progress::Next)
            }
            Step::Create {
                i,
                sq,
                token,
                deadline,
            } => {
                let Some(q) = m.queues.get(i).cloned() else {
                    return Ok(Progress::Done);
                };
                let r = self.admin_step(token, deadline, || create_sqe(&q.lock().qp, sq))?;
                match r {
                    None => Ok(Progress::Wait),
                    Some(Err(t)) => {
                        m.step = Step::Create {
                            i,
                            sq,
                            token: Some(t),
                            deadline,
                        };
                        Ok(Progress::Wait)
                    }
                    Some(Ok(_)) => {
                        let (i, sq) = if sq { (i + 1, false) } else { (i, true) };
                        m.step = Step::Create {
                            i,
                            sq,
                            token: None,
                            deadline: now + self.options().admin_timeout,
                        };
                        Ok(Progress::Next)
                    }
                }
            }
        }
    }

    /// One admin command without waiting: submits it (`token` = None) or
    /// looks for its completion. `None`: admin queue busy, try later;
    /// `Some(Err(token))`: in flight; `Some(Ok(dw0))`: completed
    /// successfully.
    fn admin_step(
        &self,
        token: Option<u64>,
        deadline: Instant,
        sqe: impl FnOnce() -> target_core::spec::SubmissionEntry,
    ) -> Result<Option<Result<u32, u64>>, DriverError> {
        let Some(mut adm) = self.try_lock_admin() else {
            return Ok(None);
        };
        let Some(t) = token else {
            let e = sqe();
            let opcode = e.opcode();
            let t = self.admin_submit(&mut adm, e)?;
            tracing::debug!(opcode, t, "reset: admin command submitted");
            return Ok(Some(Err(t)));
        };
        self.admin_reap(&mut adm)?;
        if let Some(i) = adm.done.iter().position(|c| c.token == t) {
            let c = adm.done.swap_remove(i);
            if !c.status.is_success() {
                return Err(DriverError::AdminCommand {
                    addr: self.addr(),
                    opcode: 0,
                    status: c.status,
                });
            }
            return Ok(Some(Ok(c.dw0)));
        }
        if Instant::now() > deadline {
            return Err(DriverError::Timeout {
                addr: self.addr(),
                what: "admin command completion (reset)",
                ms: self.options().admin_timeout.as_millis() as u64,
            });
        }
        Ok(Some(Err(t)))
    }
}
