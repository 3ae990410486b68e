//! The NVMe-oF target engine.
