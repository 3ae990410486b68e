//! Shared test fixtures: a target in manual or threaded mode with a RAM
//! namespace, and a connected host.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use target_core::bdev::{BdevRef, MallocBdev, MallocParams};
use target_core::nvmf::target::{NamespaceParams, ReactorMode};
use target_core::nvmf::{EngineOptions, NvmfTarget, SubsystemParams, TargetOptions};
use transport_loop::{ConnectOptions, HostController, LoopTransport};

pub const NQN: &str = "nqn.2026-11.io.nvmf-rs:test";
pub const HOST: &str = "nqn.2026-11.io.nvmf-rs:host1";

/// A RAM disk (the `malloc` backend).
pub fn ram(name: &str, block_size: u32, blocks: u64) -> BdevRef {
    Arc::new(
        MallocBdev::new(MallocParams {
            name: name.into(),
            block_size,
            num_blocks: blocks,
        })
        .unwrap(),
    )
}

pub fn engine_opts() -> EngineOptions {
    EngineOptions {
        drain_timeout: Duration::from_secs(2),
        max_io_queues: 8,
        ..EngineOptions::default()
    }
}

/// A target with one subsystem (`NQN`, any host) and namespace 1 on a
/// 4 MiB RAM disk of 512-byte blocks.
pub fn target(mode: ReactorMode) -> (Arc<NvmfTarget>, Arc<LoopTransport>) {
    let t = NvmfTarget::start(TargetOptions {
        engine: engine_opts(),
        reactors: mode,
    })
    .unwrap();
    t.add_bdev(ram("ram0", 512, 8192)).unwrap();
    t.add_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial: "SN-TEST".into(),
        model: "nvmf-rs test".into(),
        max_namespaces: 16,
        allow_any_host: true,
        hosts: vec![],
    })
    .unwrap();
    t.add_namespace(
        NQN,
        NamespaceParams {
            nsid: Some(1),
            bdev: "ram0".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let lt = LoopTransport::new(t.clone());
    lt.listen(NQN);
    (t, lt)
}

pub fn threaded(n: usize) -> ReactorMode {
    ReactorMode::Threads {
        cores: vec![None; n],
        idle_backoff: Duration::from_micros(50),
    }
}

pub fn host_opts(io_queues: u16, depth: u16) -> ConnectOptions {
    let mut o = ConnectOptions::new(NQN, HOST);
    o.io_queues = io_queues;
    o.queue_depth = depth;
    o.timeout = Duration::from_secs(10);
    o
}

pub fn manual_host(lt: &Arc<LoopTransport>, io_queues: u16) -> HostController {
    let mut o = host_opts(io_queues, 32);
    o.background = false;
    o.kato_ms = 0;
    lt.connect(o).unwrap()
}
