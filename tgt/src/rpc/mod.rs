//! The JSON-RPC 2.0 control plane: wire types ([`proto`]), the Unix-socket
//! server ([`server`]), the client behind `nvmf-tgt rpc` ([`client`]) and
//! its human rendering ([`render`]). The methods themselves live in
//! [`crate::methods`].

pub mod client;
pub mod proto;
pub mod render;
pub mod server;
