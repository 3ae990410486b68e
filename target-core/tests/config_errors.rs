//! Broken configs: each fails with one message naming file, line and key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use target_core::config::TargetConfig;

const BASE: &str = r#"[reactors]
cores = [0]

[[backend]]
name = "ram0"
kind = "malloc"
size = "1MiB"

[[subsystem]]
nqn = "nqn.2026-11.io.example:s"
allow_any_host = true

  [[subsystem.namespace]]
  nsid = 1
  backend = "ram0"
"#;

/// Applies `edit` to the base config and checks the error's line and key.
fn fails(edit: impl Fn(&str) -> String, line: usize, key: &str, reason: &str) {
    let text = edit(BASE);
    let err = TargetConfig::from_str(&text, Path::new("bad.toml")).expect_err(&text);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("bad.toml:{line}:")),
        "wrong line: {msg}\n{text}"
    );
    assert_eq!(err.key, key, "{msg}");
    assert!(err.reason.contains(reason), "{msg}");
    assert!(msg.contains(key));
}

#[test]
fn base_is_valid() {
    TargetConfig::from_str(BASE, Path::new("ok.toml")).unwrap();
}

#[test]
fn unknown_key() {
    fails(
        |b| {
            b.replace(
                "allow_any_host = true",
                "allow_any_host = true\nallow_anyhost = 1",
            )
        },
        12,
        "subsystem[0].allow_anyhost",
        "unknown field",
    );
}

#[test]
fn wrong_type() {
    fails(
        |b| b.replace("nsid = 1", "nsid = \"one\""),
        14,
        "subsystem[0].namespace[0].nsid",
        "invalid type",
    );
}

#[test]
fn duplicate_nsid() {
    fails(
        |b| format!("{b}\n  [[subsystem.namespace]]\n  nsid = 1\n  backend = \"ram0\"\n"),
        18,
        "subsystem[0].namespace[1].nsid",
        "used twice",
    );
}

#[test]
fn duplicate_nqn() {
    fails(
        |b| format!("{b}\n[[subsystem]]\nnqn = \"nqn.2026-11.io.example:s\"\n"),
        18,
        "subsystem[1].nqn",
        "defined twice",
    );
}

#[test]
fn bad_nqn() {
    fails(
        |b| b.replace("nqn.2026-11.io.example:s", "nqn.2026-13.io.example:s"),
        10,
        "subsystem[0].nqn",
        "month",
    );
}

#[test]
fn missing_backend() {
    fails(
        |b| b.replace("backend = \"ram0\"", "backend = \"ram9\""),
        15,
        "subsystem[0].namespace[0].backend",
        "no backend named \"ram9\"",
    );
}

#[test]
fn empty_core_list() {
    fails(
        |b| b.replace("cores = [0]", "cores = []"),
        2,
        "reactors.cores",
        "at least one core",
    );
}

#[test]
fn duplicate_core() {
    fails(
        |b| b.replace("cores = [0]", "cores = [0, 0]"),
        2,
        "reactors.cores",
        "twice",
    );
}

#[test]
fn duplicate_backend_name() {
    fails(
        |b| {
            b.replace(
                "[[subsystem]]",
                "[[backend]]\nname = \"ram0\"\nkind = \"null\"\nsize = \"1MiB\"\n\n[[subsystem]]",
            )
        },
        10,
        "backend[1].name",
        "already exists",
    );
}

#[test]
fn wrapper_base_missing_and_cycle() {
    fails(
        |b| {
            b.replace("[[subsystem]]", "[[backend]]\nname = \"d\"\nkind = \"delay\"\nbase = \"nope\"\nlatency_us = 5\n\n[[subsystem]]")
        },
        12,
        "backend[1].base",
        "no backend named \"nope\"",
    );
    fails(
        |b| {
            b.replace("[[subsystem]]", "[[backend]]\nname = \"a\"\nkind = \"delay\"\nbase = \"b\"\nlatency_us = 5\n\n[[backend]]\nname = \"b\"\nkind = \"delay\"\nbase = \"a\"\nlatency_us = 5\n\n[[subsystem]]")
        },
        12,
        "backend[1].base",
        "cycle",
    );
}

#[test]
fn bad_block_size_and_sizes() {
    fails(
        |b| b.replace("size = \"1MiB\"", "size = \"1MiB\"\nblock_size = 1000"),
        8,
        "backend[0].block_size",
        "power of two",
    );
    fails(
        |b| b.replace("size = \"1MiB\"", "size = \"1MiB\"\nnum_blocks = 8"),
        7,
        "backend[0].size",
        "not both",
    );
    fails(
        |b| b.replace("size = \"1MiB\"", ""),
        5,
        "backend[0].size",
        "needs num_blocks or size",
    );
    fails(
        |b| b.replace("size = \"1MiB\"", "size = \"1Q\""),
        7,
        "backend[0].size",
        "unit",
    );
}

#[test]
fn bad_pci_address_and_foreign_keys() {
    fails(
        |b| {
            b.replace("[[subsystem]]", "[[backend]]\nname = \"n\"\nkind = \"nvme\"\npci_addr = \"00:04.0\"\n\n[[subsystem]]")
        },
        12,
        "backend[1].pci_addr",
        "not a PCI address",
    );
    fails(
        |b| b.replace("size = \"1MiB\"", "size = \"1MiB\"\npath = \"/x\""),
        8,
        "backend[0].path",
        "not used by kind",
    );
}

#[test]
fn bad_inject_rules() {
    fn err_backend(rule: &'static str) -> impl Fn(&str) -> String {
        move |b: &str| {
            b.replace("[[subsystem]]", &format!("[[backend]]\nname = \"e\"\nkind = \"error\"\nbase = \"ram0\"\n  [[backend.inject]]\n{rule}\n\n[[subsystem]]"))
        }
    }
    fails(
        err_backend("  probability = 1.5\n  action = \"hold\""),
        14,
        "backend[1].inject[0].probability",
        "outside 0..=1",
    );
    fails(
        err_backend("  every_nth = 0\n  action = \"hold\""),
        14,
        "backend[1].inject[0].every_nth",
        "at least 1",
    );
    fails(
        err_backend("  action = \"fail\"\n  status = \"oops\""),
        15,
        "backend[1].inject[0].status",
        "unknown status",
    );
    fails(
        err_backend("  action = \"wedge\""),
        14,
        "backend[1].inject[0].action",
        "(fail, corrupt, hold, stuck)",
    );
}

#[test]
fn metrics_must_be_loopback_and_nsid_in_range() {
    fails(
        |b| format!("[target]\nmetrics_addr = \"10.0.0.1:9464\"\n{b}"),
        2,
        "target.metrics_addr",
        "loopback",
    );
    fails(
        |b| b.replace("nsid = 1", "nsid = 0"),
        14,
        "subsystem[0].namespace[0].nsid",
        "outside",
    );
    fails(
        |b| b.replace("allow_any_host = true", "hosts = [\"bogus\"]"),
        11,
        "subsystem[0].hosts[0]",
        "nqn.",
    );
}

#[test]
fn unknown_listener_transport() {
    fails(
        |b| format!("{b}\n[[listener]]\ntransport = \"rdma\"\nsubsystem = \"*\"\n"),
        18,
        "listener[0].transport",
        "unknown transport",
    );
    fails(
        |b| format!("{b}\n[[listener]]\ntransport = \"tcp\"\nsubsystem = \"*\"\n"),
        18,
        "listener[0].address",
        "needs address",
    );
    fails(
        |b| {
            format!(
                "{b}\n[[listener]]\ntransport = \"tcp\"\nsubsystem = \"*\"\naddress = \"4420\"\n"
            )
        },
        20,
        "listener[0].address",
        "host:port",
    );
    fails(
        |b| {
            format!(
                "{b}\n[[listener]]\ntransport = \"loop\"\nsubsystem = \"nqn.2026-11.io.example:zz\"\n"
            )
        },
        19,
        "listener[0].subsystem",
        "no subsystem",
    );
}

#[test]
fn unreadable_file_names_it() {
    let e = TargetConfig::load(Path::new("/nonexistent/x.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/x.toml: cannot read"),
        "{e}"
    );
}
