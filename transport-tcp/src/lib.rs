//! NVMe/TCP (NVMe/TCP Transport Specification 1.0, NVMe-oF 1.1).
//!
//! # Architecture
//!
//! * [`pdu`]: the PDU codec, pure (bytes in, PDUs out and back), shared by
//!   the target, a host and the fuzzer.
//! * [`host`]: the NVMe/TCP host (initiator), polled, with the loop
//!   host's API shape.
//!
//! # Not implemented
//!
//! TLS, CPDA/HPDA other than 0 (no padding is ever sent).

pub mod conn;
pub mod discovery;
pub mod host;
pub mod listener;
pub mod pdu;
mod pool;

pub use conn::{ConnCore, ConnSettings, ConnStats, DISCOVERY_NQN, TcpConn};
pub use listener::{ListenError, ListenerConfig, ListenerInfo, TcpTransport};
