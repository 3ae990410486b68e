//! Fabrics commands (NVMe-oF 1.1a §3): Connect, Property Get/Set, Disconnect.
//!
//! Connect is where a queue pair learns its subsystem, controller and size;
//! Property Set of CC is where enable, reset and shutdown start. Properties
//! are table-driven: one row per property with its offset and size.

use std::sync::Arc;

use super::admin::AdminOutcome;
use super::ctrlr::{Controller, QpairRef, TeardownKind, csts};
use super::engine::Engine;
use super::qpair::{QpState, Qpair};
use super::subsystem::Subsystem;
use crate::iobuf::DataBuf;
use crate::spec::{FabricsType, Status, SubmissionEntry};

/// Offsets inside the 1024-byte Connect data (NVMe-oF 1.1a Figure 20).
mod connect_data {
    pub const HOSTID: usize = 0;
    pub const CNTLID: usize = 16;
    pub const SUBNQN: usize = 256;
    pub const HOSTNQN: usize = 512;
    pub const LEN: usize = 1024;
}

/// Byte offsets of Connect fields inside the SQE, for IPO in errors.
const IPO_QID: u32 = 42;
const IPO_SQSIZE: u32 = 44;

use crate::spec::properties::{Cap, Cc, offset as prop};

/// The version this target implements: 2.0.0.
pub const VERSION: u32 = 0x0002_0000;

/// CAP.TO in 500 ms units: how long a host should wait for CSTS.RDY.
const CAP_TO: u8 = 30;

/// CAP as the target advertises it.
pub fn cap_value(engine: &Engine) -> u64 {
    Cap::new(
        engine.opts.max_queue_entries.saturating_sub(1),
        true,
        CAP_TO,
        true,
    )
    .0
}

/// Connect Invalid Parameters with IATTR/IPO pointing at the field.
fn invalid_param(in_data: bool, offset: u32) -> AdminOutcome {
    AdminOutcome::Done {
        status: Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
        dw0: ((in_data as u32) << 16) | (offset & 0xffff),
        dw1: 0,
    }
}

fn nqn_at(data: &[u8], off: usize) -> Option<&str> {
    let raw = data.get(off..off + 256)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end]).ok()
}

/// Executes a fabrics command.
pub(crate) fn execute(
    engine: &Arc<Engine>,
    qp: &mut Qpair,
    me: QpairRef,
    sqe: &SubmissionEntry,
    buf: &mut DataBuf,
    now_ms: u64,
) -> AdminOutcome {
    let fctype = sqe.fctype();
    if qp.state == QpState::Connecting {
        if fctype != FabricsType::CONNECT {
            return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        return connect(engine, qp, me, sqe, buf, now_ms);
    }
    match fctype {
        FabricsType::CONNECT => AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr()),
        FabricsType::PROPERTY_GET if qp.qid == 0 => property_get(engine, qp, sqe),
        FabricsType::PROPERTY_SET if qp.qid == 0 => property_set(qp, sqe),
        FabricsType::DISCONNECT if qp.qid != 0 => AdminOutcome::Disconnect,
        FabricsType::DISCONNECT => AdminOutcome::status(Status::INVALID_QUEUE_TYPE.with_dnr()),
        _ => AdminOutcome::status(Status::INVALID_OPCODE.with_dnr()),
    }
}

fn connect(
    engine: &Arc<Engine>,
    qp: &mut Qpair,
    me: QpairRef,
    sqe: &SubmissionEntry,
    buf: &mut DataBuf,
    now_ms: u64,
) -> AdminOutcome {
    let mut data = [0u8; connect_data::LEN];
    if buf.copy_out(0, &mut data) < connect_data::LEN {
        return AdminOutcome::status(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    }
    if sqe.cdw10 & 0xffff != 0 {
        return AdminOutcome::status(Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr());
    }
    let qid = (sqe.cdw10 >> 16) as u16;
    let sqsize_z = (sqe.cdw11 & 0xffff) as u16;
    let kato = sqe.cdw12;
    let Some(subnqn) = nqn_at(&data, connect_data::SUBNQN) else {
        return invalid_param(true, connect_data::SUBNQN as u32);
    };
    let Some(hostnqn) = nqn_at(&data, connect_data::HOSTNQN) else {
        return invalid_param(true, connect_data::HOSTNQN as u32);
    };
    let Some(subsys) = engine.subsystem_by_nqn(subnqn) else {
        return invalid_param(true, connect_data::SUBNQN as u32);
    };
    if !subsys.host_allowed(hostnqn) {
        return AdminOutcome::status(Status::CONNECT_INVALID_HOST.with_dnr());
    }
    let min_z = if qid == 0 { 31 } else { 1 };
    if sqsize_z < min_z || sqsize_z as u32 + 1 > engine.opts.max_queue_entries as u32 {
        return invalid_param(false, IPO_SQSIZE);
    }
    // The host's ring must hold what it asked for, or the SQ size is a lie.
    let cntlid = u16::from_le_bytes([data[connect_data::CNTLID], data[connect_data::CNTLID + 1]]);
    let mut hostid = [0u8; 16];
    hostid.copy_from_slice(&data[connect_data::HOSTID..connect_data::HOSTID + 16]);
    if qid == 0 {
        connect_admin(
            engine, qp, me, &subsys, hostnqn, hostid, cntlid, sqsize_z, kato, now_ms,
        )
    } else {
        connect_io(qp, me, &subsys, hostnqn, cntlid, qid, sqsize_z)
    }
}

#[allow(clippy::too_many_arguments)]
fn connect_admin(
    engine: &Arc<Engine>,
    qp: &mut Qpair,
    me: QpairRef,
    subsys: &Arc<Subsystem>,
    hostnqn: &str,
    hostid: [u8; 16],
    cntlid: u16,
    sqsize_z: u16,
    kato: u32,
    now_ms: u64,
) -> AdminOutcome {
    if cntlid != 0xffff && cntlid != 0xfffe {
        return invalid_param(true, connect_data::CNTLID as u32);
    }
    if hostid == [0u8; 16] {
        return invalid_param(true, connect_data::HOSTID as u32);
    }
    let kato = kato.min(engine.opts.max_kato_ms);
    let ctrl = {
        let mut st = subsys.state();
        if st.deleting {
            return invalid_param(true, connect_data::SUBNQN as u32);
        }
        let Some(id) = Subsystem::alloc_cntlid(&mut st) else {
            return AdminOutcome::status(Status::CONNECT_CONTROLLER_BUSY);
        };
        let c = Arc::new(Controller::new(
            id,
            subsys.clone(),
            hostnqn.to_owned(),
            hostid,
            me,
            kato,
            now_ms,
        ));
        st.controllers.insert(id, c.clone());
        c
    };
    {
        let mut st = ctrl.state();
        // Until the host sets Number of Queues, it may use all of them.
        st.io_queues_granted = engine.opts.max_io_queues;
        st.capsule = qp.tr.capsule_params();
    }
    qp.qid = 0;
    qp.sid = subsys.id;
    qp.set_entries(sqsize_z + 1);
    qp.state = QpState::Active;
    let id = ctrl.cntlid;
    qp.ctrl = Some(ctrl);
    AdminOutcome::Done {
        status: Status::SUCCESS,
        dw0: id as u32,
        dw1: 0,
    }
}

fn connect_io(
    qp: &mut Qpair,
    me: QpairRef,
    subsys: &Arc<Subsystem>,
    hostnqn: &str,
    cntlid: u16,
    qid: u16,
    sqsize_z: u16,
) -> AdminOutcome {
    let ctrl = {
        let st = subsys.state();
        st.controllers
            .get(&cntlid)
            .filter(|_| !st.deleting)
            .cloned()
    };
    let Some(ctrl) = ctrl else {
        return invalid_param(true, connect_data::CNTLID as u32);
    };
    if ctrl.hostnqn != hostnqn {
        return invalid_param(true, connect_data::HOSTNQN as u32);
    }
    {
        let mut st = ctrl.state();
        if !ctrl.is_ready() || st.teardown.is_some() || ctrl.is_failed() {
            return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR);
        }
        let granted = st.io_queues_granted;
        if qid > granted {
            return invalid_param(false, IPO_QID);
        }
        if st.io_qpairs.len() < granted as usize {
            st.io_qpairs.resize(granted as usize, None);
        }
        let slot = &mut st.io_qpairs[qid as usize - 1];
        if slot.is_some() {
            return invalid_param(false, IPO_QID);
        }
        *slot = Some(me);
    }
    qp.qid = qid;
    qp.sid = subsys.id;
    qp.set_entries(sqsize_z + 1);
    qp.state = QpState::Active;
    qp.io_connected = true;
    qp.ctrl = Some(ctrl);
    AdminOutcome::Done {
        status: Status::SUCCESS,
        dw0: cntlid as u32,
        dw1: 0,
    }
}

fn property_get(engine: &Engine, qp: &Qpair, sqe: &SubmissionEntry) -> AdminOutcome {
    let Some(ctrl) = &qp.ctrl else {
        return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    };
    let size8 = match sqe.cdw10 & 0x7 {
        0 => false,
        1 => true,
        _ => return AdminOutcome::status(Status::INVALID_FIELD.with_dnr()),
    };
    let st = ctrl.state();
    let (value, is8): (u64, bool) = match sqe.cdw11 {
        prop::CAP => (cap_value(engine), true),
        prop::VS => (VERSION as u64, false),
        prop::CC => (st.cc as u64, false),
        prop::CSTS => (st.csts as u64, false),
        prop::NSSR => (0, false),
        _ => return AdminOutcome::status(Status::INVALID_FIELD.with_dnr()),
    };
    if is8 != size8 {
        return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
    }
    AdminOutcome::Done {
        status: Status::SUCCESS,
        dw0: value as u32,
        dw1: (value >> 32) as u32,
    }
}

pub(crate) fn property_set(qp: &mut Qpair, sqe: &SubmissionEntry) -> AdminOutcome {
    let Some(ctrl) = qp.ctrl.clone() else {
        return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    };
    if sqe.cdw10 & 0x7 != 0 {
        return AdminOutcome::status(Status::INVALID_FIELD.with_dnr());
    }
    match sqe.cdw11 {
        prop::CC => {}
        // NVM Subsystem Reset is not supported (CAP.NSSRS = 0): writes are ignored.
        prop::NSSR => return AdminOutcome::status(Status::SUCCESS),
        _ => return AdminOutcome::status(Status::INVALID_FIELD.with_dnr()),
    }
    let new = sqe.cdw12;
    let mut st = ctrl.state();
    if st.teardown.is_some() {
        return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR);
    }
    let (old, new_cc) = (Cc(st.cc), Cc(new));
    st.cc = new;
    if new_cc.shn() != 0 && old.shn() == 0 {
        return AdminOutcome::Teardown(TeardownKind::Shutdown);
    }
    if old.en() && !new_cc.en() {
        return AdminOutcome::Teardown(TeardownKind::Reset);
    }
    if !old.en() && new_cc.en() {
        let valid = new_cc.iosqes() == 6
            && new_cc.iocqes() == 4
            && new_cc.mps() == 0
            && new_cc.css() == 0
            && new_cc.ams() == 0;
        if valid {
            st.csts &= !(csts::SHST_MASK | csts::CFS);
            ctrl.set_ready(&mut st, true);
        } else {
            // Linux's nvmet does the same: an unusable configuration is a
            // controller fatal status, not a failed Property Set.
            st.csts |= csts::CFS;
        }
    }
    AdminOutcome::status(Status::SUCCESS)
}
