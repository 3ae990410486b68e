//! tgt
