//! transport-loop
