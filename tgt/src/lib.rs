//! The `nvmf-tgt` service around the facade: a JSON-RPC control socket and
//! its client, Prometheus metrics, and host jobs run from the config.
