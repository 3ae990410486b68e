//! Every file in `configs/` loads, and saving it gives back an equal config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use target_core::config::TargetConfig;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn every_example_config_loads_and_round_trips() {
    let mut n = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let cfg = TargetConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let text = cfg.to_toml_string().unwrap();
        let again = TargetConfig::from_str(&text, &path)
            .unwrap_or_else(|e| panic!("round trip of {}: {e}\n{text}", path.display()));
        assert_eq!(cfg, again, "{}", path.display());
        n += 1;
    }
    assert!(n >= 7, "only {n} example configs");
}

#[test]
fn embedded_default_has_ram_and_null() {
    let cfg = TargetConfig::embedded_default();
    assert_eq!(cfg.backends.len(), 2);
    assert_eq!(cfg.subsystems[0].namespaces.len(), 2);
    let order: Vec<_> = cfg
        .backends_in_build_order()
        .iter()
        .map(|b| b.name.get_ref().clone())
        .collect();
    assert_eq!(order, ["ram0", "null0"]);
}

#[test]
fn wrappers_are_built_after_their_base() {
    let cfg = TargetConfig::load(&configs_dir().join("delay.toml")).unwrap();
    let order: Vec<_> = cfg
        .backends_in_build_order()
        .iter()
        .map(|b| b.name.get_ref().clone())
        .collect();
    assert_eq!(order[0], "ram0");
}
