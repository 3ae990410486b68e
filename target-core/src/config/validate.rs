//! Semantic checks after parsing: names resolve, IDs are unique, values are
//! in range. Each failure points at the offending value.

use std::collections::HashSet;

use toml::Spanned;

use super::{BackendKind, ConfigError, TargetConfig};

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(self.file, self.text, span, key, reason)
    }
}

fn printable(s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{} characters, at most {max}", s.len()));
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("only printable ASCII is allowed".into());
    }
    Ok(())
}

fn hex_id(s: &str, uuid: bool) -> bool {
    if uuid {
        s.len() == 36
            && s.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            })
    } else {
        s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
    }
}

fn pci_addr_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.char_indices()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
        && (b[11] as char).is_digit(8)
}

pub(super) fn validate(cfg: &TargetConfig, file: &str, text: &str) -> Result<(), ConfigError> {
    let cx = Ctx { file, text };
    // Target limits.
    let mqd = &cfg.target.max_queue_depth;
    if !(2..=65536).contains(mqd.get_ref()) {
        return Err(cx.err(mqd.span(), "target.max_queue_depth", "must be 2..=65536"));
    }
    if let Some(addr) = &cfg.target.metrics_addr {
        match addr.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => {}
            Ok(_) => {
                return Err(cx.err(
                    addr.span(),
                    "target.metrics_addr",
                    "must be a loopback address (127.0.0.0/8 or ::1)",
                ));
            }
            Err(_) => {
                return Err(cx.err(addr.span(), "target.metrics_addr", "not an address:port"));
            }
        }
    }
    // Reactors.
    let cores = &cfg.reactors.cores;
    if cores.get_ref().is_empty() {
        return Err(cx.err(cores.span(), "reactors.cores", "needs at least one core"));
    }
    let mut seen = HashSet::new();
    for c in cores.get_ref() {
        if !seen.insert(*c) {
            return Err(cx.err(
                cores.span(),
                "reactors.cores",
                format!("core {c} is listed twice"),
            ));
        }
    }
    // Backends.
    let mut names = HashSet::new();
    for (i, b) in cfg.backends.iter().enumerate() {
        let key = |k: &str| format!("backend[{i}].{k}");
        let name = b.name.get_ref();
        if name.is_empty() {
            return Err(cx.err(b.name.span(), key("name"), "must not be empty"));
        }
        if !names.insert(name.as_str()) {
            return Err(cx.err(
                b.name.span(),
                key("name"),
                format!("a backend named \"{name}\" already exists"),
            ));
        }
        if let Some((k, span)) = b.foreign_keys().into_iter().next() {
            return Err(cx.err(
                span,
                key(k),
                format!("not used by kind \"{:?}\"", b.kind.get_ref()).to_lowercase(),
            ));
        }
        if let Some(bs) = &b.block_size {
            let v = *bs.get_ref();
            if !v.is_power_of_two() || !(512..=65536).contains(&v) {
                return Err(cx.err(
                    bs.span(),
                    key("block_size"),
                    format!("{v} is not a power of two between 512 and 65536"),
                ));
            }
        }
        match b.kind.get_ref() {
            BackendKind::Null | BackendKind::Malloc => match (&b.num_blocks, &b.size) {
                (Some(_), Some(s)) => {
                    return Err(cx.err(s.span(), key("size"), "set num_blocks or size, not both"));
                }
                (None, None) => {
                    return Err(cx.err(b.name.span(), key("size"), "needs num_blocks or size"));
                }
                (Some(n), None) if *n.get_ref() == 0 => {
                    return Err(cx.err(n.span(), key("num_blocks"), "must not be zero"));
                }
                (None, Some(s)) => {
                    let bs = b.block_size.as_ref().map_or(512, |v| *v.get_ref()) as u64;
                    if s.get_ref().0 < bs || s.get_ref().0 % bs != 0 {
                        return Err(cx.err(
                            s.span(),
                            key("size"),
                            format!("must be a non-zero multiple of the block size {bs}"),
                        ));
                    }
                }
                _ => {}
            },
            BackendKind::Delay | BackendKind::Error => {
                let Some(base) = &b.base else {
                    return Err(cx.err(
                        b.kind.span(),
                        key("base"),
                        "needs the name of the backend it wraps",
                    ));
                };
                if !cfg
                    .backends
                    .iter()
                    .any(|o| o.name.get_ref() == base.get_ref())
                {
                    return Err(cx.err(
                        base.span(),
                        key("base"),
                        format!("no backend named \"{}\"", base.get_ref()),
                    ));
                }
                if *b.kind.get_ref() == BackendKind::Delay {
                    match (&b.latency_us, &b.min_latency_us, &b.max_latency_us) {
                        (Some(_), Some(s), _) | (Some(_), _, Some(s)) => {
                            return Err(cx.err(
                                s.span(),
                                key("latency_us"),
                                "set latency_us or min/max_latency_us, not both",
                            ));
                        }
                        (None, Some(lo), Some(hi)) if lo.get_ref() > hi.get_ref() => {
                            return Err(cx.err(
                                lo.span(),
                                key("min_latency_us"),
                                "is above max_latency_us",
                            ));
                        }
                        (None, None, None) => {
                            return Err(cx.err(
                                b.kind.span(),
                                key("latency_us"),
                                "needs latency_us or min/max_latency_us",
                            ));
                        }
                        _ => {}
                    }
                }
                for (j, r) in b.inject.iter().enumerate() {
                    if let Err((k, span, reason)) = r.rule() {
                        return Err(cx.err(span, format!("backend[{i}].inject[{j}].{k}"), reason));
                    }
                }
            }
            BackendKind::File => {
                if b.path.is_none() {
                    return Err(cx.err(b.kind.span(), key("path"), "needs a path"));
                }
            }
            BackendKind::Nvme => match &b.pci_addr {
                None => {
                    return Err(cx.err(
                        b.kind.span(),
                        key("pci_addr"),
                        "needs a PCI address like \"0000:00:04.0\"",
                    ));
                }
                Some(a) if !pci_addr_ok(a.get_ref()) => {
                    return Err(cx.err(
                        a.span(),
                        key("pci_addr"),
                        format!(
                            "\"{}\" is not a PCI address (DDDD:BB:DD.F in hex)",
                            a.get_ref()
                        ),
                    ));
                }
                _ => {}
            },
        }
    }
    // Wrapper cycles.
    for (i, b) in cfg.backends.iter().enumerate() {
        let mut cur = b;
        for _ in 0..=cfg.backends.len() {
            let Some(base) = &cur.base else { break };
            match cfg
                .backends
                .iter()
                .find(|o| o.name.get_ref() == base.get_ref())
            {
                Some(next) if next.name.get_ref() == b.name.get_ref() => {
                    return Err(cx.err(
                        b.base.as_ref().map_or(0..0, Spanned::span),
                        format!("backend[{i}].base"),
                        "backends wrap each other in a cycle",
                    ));
                }
                Some(next) => cur = next,
                None => break,
            }
        }
    }
    // Subsystems.
    let mut nqns = HashSet::new();
    for (i, s) in cfg.subsystems.iter().enumerate() {
        let key = |k: &str| format!("subsystem[{i}].{k}");
        if let Err(r) = crate::nvmf::nqn::validate(s.nqn.get_ref()) {
            return Err(cx.err(s.nqn.span(), key("nqn"), r));
        }
        if !nqns.insert(s.nqn.get_ref().as_str()) {
            return Err(cx.err(
                s.nqn.span(),
                key("nqn"),
                format!("subsystem \"{}\" is defined twice", s.nqn.get_ref()),
            ));
        }
        if let Err(r) = printable(s.serial.get_ref(), 20) {
            return Err(cx.err(s.serial.span(), key("serial"), r));
        }
        if let Err(r) = printable(s.model.get_ref(), 40) {
            return Err(cx.err(s.model.span(), key("model"), r));
        }
        if s.max_namespaces == 0 {
            return Err(cx.err(s.nqn.span(), key("max_namespaces"), "must be at least 1"));
        }
        for (j, h) in s.hosts.iter().enumerate() {
            if let Err(r) = crate::nvmf::nqn::validate(h.get_ref()) {
                return Err(cx.err(h.span(), format!("subsystem[{i}].hosts[{j}]"), r));
            }
        }
        let mut nsids = HashSet::new();
        let mut next = 1u32;
        for (j, ns) in s.namespaces.iter().enumerate() {
            let key = |k: &str| format!("subsystem[{i}].namespace[{j}].{k}");
            let (nsid, span) = match &ns.nsid {
                Some(n) => (*n.get_ref(), n.span()),
                None => {
                    while nsids.contains(&next) {
                        next += 1;
                    }
                    (next, ns.backend.span())
                }
            };
            if nsid == 0 || nsid > s.max_namespaces {
                return Err(cx.err(
                    span,
                    key("nsid"),
                    format!("{nsid} is outside 1..={}", s.max_namespaces),
                ));
            }
            if !nsids.insert(nsid) {
                return Err(cx.err(
                    span,
                    key("nsid"),
                    format!("NSID {nsid} is used twice in this subsystem"),
                ));
            }
            if !cfg
                .backends
                .iter()
                .any(|b| b.name.get_ref() == ns.backend.get_ref())
            {
                return Err(cx.err(
                    ns.backend.span(),
                    key("backend"),
                    format!("no backend named \"{}\"", ns.backend.get_ref()),
                ));
            }
            if let Some(g) = &ns.nguid
                && !hex_id(g.get_ref(), false)
            {
                return Err(cx.err(g.span(), key("nguid"), "must be 32 hex digits"));
            }
            if let Some(u) = &ns.uuid
                && !hex_id(u.get_ref(), true)
            {
                return Err(cx.err(
                    u.span(),
                    key("uuid"),
                    "must be a UUID (8-4-4-4-12 hex digits)",
                ));
            }
        }
    }
    // Listeners.
    for (i, l) in cfg.listeners.iter().enumerate() {
        let tcp = match l.transport.get_ref().as_str() {
            "loop" => false,
            "tcp" => true,
            other => {
                return Err(cx.err(
                    l.transport.span(),
                    format!("listener[{i}].transport"),
                    format!("unknown transport \"{other}\" (\"loop\" or \"tcp\")"),
                ));
            }
        };
        match (&l.address, tcp) {
            (None, true) => {
                return Err(cx.err(
                    l.transport.span(),
                    format!("listener[{i}].address"),
                    "a tcp listener needs address = \"host:port\"",
                ));
            }
            (Some(a), false) => {
                return Err(cx.err(
                    a.span(),
                    format!("listener[{i}].address"),
                    "only tcp listeners have an address",
                ));
            }
            (Some(a), true) => {
                let ok = a
                    .get_ref()
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(cx.err(
                        a.span(),
                        format!("listener[{i}].address"),
                        "must be host:port (IPv6 as [addr]:port)",
                    ));
                }
            }
            (None, false) => {}
        }
        if !tcp
            && (l.in_capsule_data_size.is_some()
                || l.max_queue_depth.is_some()
                || l.header_digest.is_some()
                || l.data_digest.is_some())
        {
            return Err(cx.err(
                l.transport.span(),
                format!("listener[{i}]"),
                "in_capsule_data_size, max_queue_depth and digests are tcp settings",
            ));
        }
        if let Some(icd) = &l.in_capsule_data_size
            && (!icd.get_ref().is_multiple_of(16) || *icd.get_ref() > 1 << 20)
        {
            return Err(cx.err(
                icd.span(),
                format!("listener[{i}].in_capsule_data_size"),
                "must be a multiple of 16, at most 1048576",
            ));
        }
        if let Some(q) = &l.max_queue_depth
            && *q.get_ref() < 2
        {
            return Err(cx.err(
                q.span(),
                format!("listener[{i}].max_queue_depth"),
                "must be at least 2",
            ));
        }
        let sub = l.subsystem.get_ref();
        if sub != "*" && !cfg.subsystems.iter().any(|s| s.nqn.get_ref() == sub) {
            return Err(cx.err(
                l.subsystem.span(),
                format!("listener[{i}].subsystem"),
                format!("no subsystem \"{sub}\""),
            ));
        }
    }
    Ok(())
}

/// Parses `nguid = "..."` (32 hex digits) into bytes.
pub fn parse_nguid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}
