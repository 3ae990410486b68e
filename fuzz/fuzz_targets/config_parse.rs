//! Config parsing never panics: any text either loads or yields a
//! `ConfigError` that names the file and, when it gives a line, a line that
//! exists.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use target_core::config::TargetConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = TargetConfig::from_str(text, Path::new("fuzz.toml")) {
        let msg = e.to_string();
        assert!(
            msg.starts_with("fuzz.toml"),
            "error without the file: {msg}"
        );
        assert!(
            e.line <= text.split('\n').count(),
            "line {} beyond the text: {msg}",
            e.line
        );
        assert!(!e.reason.is_empty(), "error without a reason: {msg}");
    }
});
