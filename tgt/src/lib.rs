//! The `nvmf-tgt` service around the facade ([`target_facade`]): the
//! running [`service::Service`] (live config, host jobs, stop sequence), a
//! JSON-RPC 2.0 control socket and its client ([`rpc`], methods in
//! [`methods`]), and a Prometheus text endpoint ([`metrics`]).

pub mod hotplug;
pub mod jobs;
pub mod methods;
pub mod metrics;
pub mod rpc;
pub mod service;
pub mod stats;

pub use service::Service;
