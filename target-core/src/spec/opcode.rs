//! Command opcodes: admin (Base 2.0c §5), NVM I/O (NVM Command Set 1.0c §3)
//! and fabrics command types (NVMe-oF 1.1a §3.3).

use crate::open_enum;

open_enum! {
    /// Admin command set opcodes (Base 2.0c Figure 138).
    pub struct AdminOpcode(u8) {
        DELETE_IO_SQ = 0x00,
        CREATE_IO_SQ = 0x01,
        GET_LOG_PAGE = 0x02,
        DELETE_IO_CQ = 0x04,
        CREATE_IO_CQ = 0x05,
        IDENTIFY = 0x06,
        ABORT = 0x08,
        SET_FEATURES = 0x09,
        GET_FEATURES = 0x0a,
        ASYNC_EVENT_REQUEST = 0x0c,
        NAMESPACE_MANAGEMENT = 0x0d,
        FIRMWARE_COMMIT = 0x10,
        FIRMWARE_IMAGE_DOWNLOAD = 0x11,
        DEVICE_SELF_TEST = 0x14,
        NAMESPACE_ATTACHMENT = 0x15,
        KEEP_ALIVE = 0x18,
        DIRECTIVE_SEND = 0x19,
        DIRECTIVE_RECEIVE = 0x1a,
        VIRTUALIZATION_MANAGEMENT = 0x1c,
        NVME_MI_SEND = 0x1d,
        NVME_MI_RECEIVE = 0x1e,
        DOORBELL_BUFFER_CONFIG = 0x7c,
        FABRICS = 0x7f,
        FORMAT_NVM = 0x80,
        SECURITY_SEND = 0x81,
        SECURITY_RECEIVE = 0x82,
        SANITIZE = 0x84,
        GET_LBA_STATUS = 0x86,
    }
}

open_enum! {
    /// NVM command set I/O opcodes (NVM Command Set 1.0c Figure 17).
    pub struct NvmOpcode(u8) {
        FLUSH = 0x00,
        WRITE = 0x01,
        READ = 0x02,
        WRITE_UNCORRECTABLE = 0x04,
        COMPARE = 0x05,
        WRITE_ZEROES = 0x08,
        DATASET_MANAGEMENT = 0x09,
        VERIFY = 0x0c,
        RESERVATION_REGISTER = 0x0d,
        RESERVATION_REPORT = 0x0e,
        RESERVATION_ACQUIRE = 0x11,
        RESERVATION_RELEASE = 0x15,
        COPY = 0x19,
        FABRICS = 0x7f,
    }
}

open_enum! {
    /// Fabrics command type, byte 4 of a fabrics command (NVMe-oF 1.1a Figure 9).
    pub struct FabricsType(u8) {
        PROPERTY_SET = 0x00,
        CONNECT = 0x01,
        PROPERTY_GET = 0x04,
        AUTHENTICATION_SEND = 0x05,
        AUTHENTICATION_RECEIVE = 0x06,
        DISCONNECT = 0x08,
    }
}

impl NvmOpcode {
    /// Data direction from the opcode's two low bits (Base 2.0c Figure 136):
    /// `true` when the host sends data to the controller.
    pub fn is_host_to_controller(self) -> bool {
        self.0 & 0b11 == 0b01
    }

    /// `true` when the controller sends data to the host.
    pub fn is_controller_to_host(self) -> bool {
        self.0 & 0b11 == 0b10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_enums_keep_unknown_values() {
        let op = AdminOpcode(0x55);
        assert_eq!(op.name(), None);
        assert_eq!(format!("{op:?}"), "AdminOpcode(0x55)");
        assert_eq!(
            format!("{:?}", AdminOpcode::IDENTIFY),
            "AdminOpcode::IDENTIFY"
        );
    }

    #[test]
    fn data_direction_follows_low_bits() {
        assert!(NvmOpcode::WRITE.is_host_to_controller());
        assert!(NvmOpcode::READ.is_controller_to_host());
        assert!(!NvmOpcode::FLUSH.is_host_to_controller());
        assert!(!NvmOpcode::FLUSH.is_controller_to_host());
    }
}
