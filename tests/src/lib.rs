//! Cross-crate integration and stress tests live in `tests/`; this library
//! holds their shared fixtures.

use std::sync::Arc;
use std::time::Duration;

use target_core::bdev::{BdevRef, MallocBdev, MallocParams};
use target_core::nvmf::target::ReactorMode;
use target_core::nvmf::{EngineOptions, NvmfTarget, TargetOptions};

/// A RAM disk, or `None` with the reason when it cannot be made.
pub fn ram(name: &str, block_size: u32, blocks: u64) -> Result<BdevRef, String> {
    MallocBdev::new(MallocParams {
        name: name.into(),
        block_size,
        num_blocks: blocks,
    })
    .map(|b| Arc::new(b) as BdevRef)
    .map_err(|e| e.to_string())
}

/// A target with `reactors` unpinned reactor threads that back off when idle
/// (tests share two cores with the test harness).
pub fn threaded_target(reactors: usize, drain: Duration) -> Result<Arc<NvmfTarget>, String> {
    NvmfTarget::start(TargetOptions {
        engine: EngineOptions {
            drain_timeout: drain,
            max_io_queues: 8,
            ..EngineOptions::default()
        },
        reactors: ReactorMode::Threads {
            cores: vec![None; reactors],
            idle_backoff: Duration::from_micros(50),
        },
    })
    .map_err(|e| e.to_string())
}
