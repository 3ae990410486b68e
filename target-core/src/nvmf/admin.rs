//! Admin commands (Base 2.0c §5): dispatch, features, keep alive,
//! asynchronous events and abort. Identify and log pages are built in
//! [`super::pages`]; fabrics commands in [`super::fabrics`].

use std::sync::Arc;

use super::ctrlr::{AER_LIMIT, QpairRef, TeardownKind};
use super::engine::Engine;
use super::pages;
use super::qpair::{QpState, Qpair};
use crate::iobuf::DataBuf;
use crate::spec::{AdminOpcode, Status, SubmissionEntry};

/// What an admin command handler decided.
#[derive(Debug)]
pub(crate) enum AdminOutcome {
    /// Complete now with this status and dwords.
    Done {
        /// Status.
        status: Status,
        /// Completion dword 0.
        dw0: u32,
        /// Completion dword 1.
        dw1: u32,
    },
    /// Completes later (an Asynchronous Event Request).
    Parked,
    /// A Property Set that starts a reset or shutdown; it completes when
    /// the I/O queues are drained.
    Teardown(TeardownKind),
    /// A Fabrics Disconnect of an I/O queue: answer when it is drained.
    Disconnect,
}

impl AdminOutcome {
    /// Completes now with `status` and zero dwords.
    pub(crate) fn status(status: Status) -> Self {
        Self::Done {
            status,
            dw0: 0,
            dw1: 0,
        }
    }

    fn dw0(dw0: u32) -> Self {
        Self::Done {
            status: Status::SUCCESS,
            dw0,
            dw1: 0,
        }
    }
}

/// Executes an admin or fabrics command on the admin queue.
pub(crate) fn execute(
    engine: &Arc<Engine>,
    qp: &mut Qpair,
    me: QpairRef,
    sqe: &SubmissionEntry,
    buf: &mut DataBuf,
    now_ms: u64,
) -> AdminOutcome {
    if sqe.opcode() == AdminOpcode::FABRICS.0 {
        return super::fabrics::execute(engine, qp, me, sqe, buf, now_ms);
    }
    if qp.state == QpState::Connecting {
        return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    if let Err(s) = super::io::check_common(sqe) {
        return AdminOutcome::status(s);
    }
    let Some(ctrl) = qp.ctrl.clone() else {
        return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    };
    let op = AdminOpcode(sqe.opcode());
    if op == AdminOpcode::KEEP_ALIVE {
        ctrl.touch_keep_alive(now_ms);
        return AdminOutcome::status(Status::SUCCESS);
    }
    if !ctrl.is_ready() {
        return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR);
    }
    match op {
        AdminOpcode::IDENTIFY => pages::identify(engine, &ctrl, sqe, buf),
        AdminOpcode::GET_LOG_PAGE => pages::get_log_page(engine, &ctrl, sqe, buf),
        AdminOpcode::GET_FEATURES => get_features(engine, &ctrl, sqe, buf),
        AdminOpcode::SET_FEATURES => set_features(engine, &ctrl, sqe),
        AdminOpcode::ASYNC_EVENT_REQUEST => {
            let mut st = ctrl.state();
            if st.aer_cids.len() >= AER_LIMIT {
                return AdminOutcome::status(Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED.with_dnr());
            }
            if let Some(ev) = st.pending_events.pop_front() {
                st.masked_events |= 1 << (ev & 7);
                return AdminOutcome::dw0(ev);
            }
            st.aer_cids.push_back(sqe.cid());
            AdminOutcome::Parked
        }
        // Commands are never stuck in a way an Abort could help (they are
        // either queued in order or with a backend that drains): report
        // "not aborted" (dword 0 bit 0), as the spec allows.
        AdminOpcode::ABORT => AdminOutcome::dw0(1),
        _ => AdminOutcome::status(Status::INVALID_OPCODE.with_dnr()),
    }
}

/// Feature identifiers handled here, as raw bytes for matching.
mod fid {
    use crate::spec::features::FeatureId;
    pub const ARBITRATION: u8 = FeatureId::ARBITRATION.0;
    pub const POWER_MANAGEMENT: u8 = FeatureId::POWER_MANAGEMENT.0;
    pub const TEMPERATURE_THRESHOLD: u8 = FeatureId::TEMPERATURE_THRESHOLD.0;
    pub const ERROR_RECOVERY: u8 = FeatureId::ERROR_RECOVERY.0;
    pub const VOLATILE_WRITE_CACHE: u8 = FeatureId::VOLATILE_WRITE_CACHE.0;
    pub const NUMBER_OF_QUEUES: u8 = FeatureId::NUMBER_OF_QUEUES.0;
    pub const ASYNC_EVENT_CONFIGURATION: u8 = FeatureId::ASYNC_EVENT_CONFIGURATION.0;
    pub const KEEP_ALIVE_TIMER: u8 = FeatureId::KEEP_ALIVE_TIMER.0;
    pub const HOST_IDENTIFIER: u8 = FeatureId::HOST_IDENTIFIER.0;
}

/// Asynchronous event configuration bits we can report: SMART critical
/// warnings (7:0) and Namespace Attribute Notices (8).
const AEC_SUPPORTED: u32 = 0x1ff;

fn check_feature_nsid(nsid: u32) -> Result<(), Status> {
    if nsid == 0 || nsid == u32::MAX {
        Ok(())
    } else {
        Err(Status::FEATURE_NOT_NAMESPACE_SPECIFIC.with_dnr())
    }
}

fn temp_index(cdw11: u32) -> Result<usize, Status> {
    let tmpsel = ((cdw11 >> 16) & 0xf) as usize;
    let thsel = ((cdw11 >> 20) & 0x3) as usize;
    // One composite sensor and eight optional ones; THSEL 0 over, 1 under.
    if tmpsel > 8 || thsel > 1 {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    Ok(tmpsel * 2 + thsel)
}

fn get_features(
    engine: &Engine,
    ctrl: &super::ctrlr::Controller,
    sqe: &SubmissionEntry,
    buf: &mut DataBuf,
) -> AdminOutcome {
    let f = (sqe.cdw10 & 0xff) as u8;
    let sel = (sqe.cdw10 >> 8) & 0x7;
    if let Err(s) = check_feature_nsid(sqe.nsid) {
        return AdminOutcome::status(s);
    }
    let known = matches!(
        f,
        fid::ARBITRATION
            | fid::POWER_MANAGEMENT
            | fid::TEMPERATURE_THRESHOLD
            | fid::ERROR_RECOVERY
            | fid::VOLATILE_WRITE_CACHE
            | fid::NUMBER_OF_QUEUES
            | fid::ASYNC_EVENT_CONFIGURATION
            | fid::KEEP_ALIVE_TIMER
            | fid::HOST_IDENTIFIER
    );
    if !known {
        return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
    }
    match sel {
        0..=2 => {}
        // Supported capabilities: changeable (bit 2), never saveable or
        // namespace specific.
        3 => return AdminOutcome::dw0(if f == fid::HOST_IDENTIFIER { 0 } else { 1 << 2 }),
        _ => return AdminOutcome::status(Status::INVALID_FIELD.with_dnr()),
    }
    let st = ctrl.state();
    // Nothing is saveable, so "saved" reports the default (Base 2.0c §5.15.1).
    let defaults =
        super::ctrlr::FeatureValues::defaults(engine.opts.max_kato_ms, ctrl.hostid, true);
    let fv = if sel == 0 { &st.features } else { &defaults };
    let granted_z = if sel == 0 {
        st.io_queues_granted
    } else {
        engine.opts.max_io_queues
    }
    .saturating_sub(1) as u32;
    let dw0 = match f {
        fid::ARBITRATION => fv.arbitration,
        fid::POWER_MANAGEMENT => fv.power_management,
        fid::TEMPERATURE_THRESHOLD => match temp_index(sqe.cdw11) {
            Ok(i) => fv.temperature_threshold[i] as u32,
            Err(s) => return AdminOutcome::status(s),
        },
        fid::ERROR_RECOVERY => fv.error_recovery,
        fid::VOLATILE_WRITE_CACHE => fv.write_cache as u32,
        fid::NUMBER_OF_QUEUES => granted_z | (granted_z << 16),
        fid::ASYNC_EVENT_CONFIGURATION => fv.async_event_config,
        fid::KEEP_ALIVE_TIMER => fv.kato_ms,
        fid::HOST_IDENTIFIER => {
            // Fabrics hosts use the 128-bit extended identifier (EXHID).
            if sqe.cdw11 & 1 == 0 {
                return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
            }
            if buf.len() < 16 {
                return AdminOutcome::status(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            buf.copy_in(0, &fv.host_id);
            0
        }
        _ => return AdminOutcome::status(Status::INVALID_FIELD.with_dnr()),
    };
    AdminOutcome::dw0(dw0)
}

fn set_features(
    engine: &Engine,
    ctrl: &super::ctrlr::Controller,
    sqe: &SubmissionEntry,
) -> AdminOutcome {
    let f = (sqe.cdw10 & 0xff) as u8;
    if sqe.cdw10 & (1 << 31) != 0 {
        return AdminOutcome::status(Status::FEATURE_ID_NOT_SAVEABLE.with_dnr());
    }
    if let Err(s) = check_feature_nsid(sqe.nsid) {
        return AdminOutcome::status(s);
    }
    let v = sqe.cdw11;
    let mut st = ctrl.state();
    match f {
        fid::ARBITRATION => st.features.arbitration = v,
        fid::POWER_MANAGEMENT => {
            // One power state (NPSS = 0); workload hint 7:5 must be 0..=2.
            if v & 0x1f != 0 || (v >> 5) & 0x7 > 2 || v >> 8 != 0 {
                return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
            }
            st.features.power_management = v;
        }
        fid::TEMPERATURE_THRESHOLD => match temp_index(v) {
            Ok(i) => st.features.temperature_threshold[i] = v as u16,
            Err(s) => return AdminOutcome::status(s),
        },
        fid::ERROR_RECOVERY => {
            // DULBE (bit 16) needs deallocated-block error reporting, which
            // no namespace here offers.
            if v & !0xffff != 0 {
                return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
            }
            st.features.error_recovery = v;
        }
        fid::VOLATILE_WRITE_CACHE => {
            if v & !1 != 0 {
                return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
            }
            st.features.write_cache = v & 1 != 0;
        }
        fid::NUMBER_OF_QUEUES => {
            let (nsqr, ncqr) = (v & 0xffff, v >> 16);
            if nsqr == 0xffff || ncqr == 0xffff {
                return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
            }
            if st.io_queues_set || st.io_qpairs.iter().any(Option::is_some) {
                return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR);
            }
            let want = nsqr.max(ncqr) + 1;
            let granted = want.min(engine.opts.max_io_queues as u32) as u16;
            st.io_queues_granted = granted;
            st.io_queues_set = true;
            let z = granted.saturating_sub(1) as u32;
            return AdminOutcome::dw0(z | (z << 16));
        }
        fid::ASYNC_EVENT_CONFIGURATION => {
            if v & !AEC_SUPPORTED != 0 {
                return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
            }
            st.features.async_event_config = v;
        }
        fid::KEEP_ALIVE_TIMER => {
            if v > engine.opts.max_kato_ms {
                return AdminOutcome::status(Status::KEEP_ALIVE_TIMEOUT_INVALID.with_dnr());
            }
            st.features.kato_ms = v;
        }
        // The host identifier comes from Connect on fabrics.
        fid::HOST_IDENTIFIER => {
            return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        _ => return AdminOutcome::status(Status::INVALID_FIELD.with_dnr()),
    }
    AdminOutcome::status(Status::SUCCESS)
}
