//! Target configuration model (filled in by the config work).
