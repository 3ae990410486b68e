//! Shared test fixtures: a target in manual or threaded mode with a RAM
//! namespace, and a connected host.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use target_core::bdev::{
    BdevCompletion, BdevError, BdevInfo, BdevIo, BlockDevice, IoChannel, IoOp, check_io, dsm_ranges,
};
use target_core::nvmf::target::{NamespaceParams, ReactorMode};
use target_core::nvmf::{EngineOptions, NvmfTarget, SubsystemParams, TargetOptions};
use transport_loop::{ConnectOptions, HostController, LoopTransport};

pub const NQN: &str = "nqn.2026-11.io.nvmf-rs:test";
pub const HOST: &str = "nqn.2026-11.io.nvmf-rs:host1";

/// Minimal RAM disk used until the real backends are wired in here.
#[derive(Debug)]
pub struct Ram {
    info: BdevInfo,
    data: Arc<Mutex<Vec<u8>>>,
}

#[derive(Debug)]
struct RamCh {
    info: BdevInfo,
    data: Arc<Mutex<Vec<u8>>>,
    done: VecDeque<BdevCompletion>,
}

impl Ram {
    pub fn new(name: &str, block_size: u32, blocks: u64) -> Arc<Self> {
        Arc::new(Self {
            info: BdevInfo {
                name: name.into(),
                kind: "malloc",
                block_size,
                num_blocks: blocks,
                volatile_write_cache: false,
                max_transfer_blocks: None,
                supports_write_zeroes: true,
                supports_deallocate: true,
            },
            data: Arc::new(Mutex::new(vec![0; (block_size as u64 * blocks) as usize])),
        })
    }
}

impl BlockDevice for Ram {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(RamCh {
            info: self.info.clone(),
            data: self.data.clone(),
            done: VecDeque::new(),
        }))
    }
}

impl IoChannel for RamCh {
    fn submit(&mut self, mut io: BdevIo) -> Result<(), BdevIo> {
        let result = check_io(&self.info, &io).map(|_| {
            let bs = self.info.block_size as usize;
            let mut d = self.data.lock().unwrap();
            let off = io.lba as usize * bs;
            let len = io.blocks as usize * bs;
            match io.op {
                IoOp::Read => {
                    io.buf.copy_in(0, &d[off..off + len]);
                }
                IoOp::Write => {
                    io.buf.copy_out(0, &mut d[off..off + len]);
                }
                IoOp::WriteZeroes => d[off..off + len].fill(0),
                IoOp::Deallocate => {
                    for r in dsm_ranges(&io.buf, io.blocks) {
                        let o = r.slba as usize * bs;
                        d[o..o + r.blocks as usize * bs].fill(0);
                    }
                }
                IoOp::Flush => {}
            }
        });
        self.done.push_back(BdevCompletion {
            tag: io.tag,
            result,
            buf: io.buf,
        });
        Ok(())
    }
    fn poll(&mut self, done: &mut dyn FnMut(BdevCompletion)) -> usize {
        let n = self.done.len();
        while let Some(c) = self.done.pop_front() {
            done(c);
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
    fn reset(&mut self) -> usize {
        0
    }
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
    t.add_bdev(Ram::new("ram0", 512, 8192)).unwrap();
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
