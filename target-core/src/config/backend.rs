//! `[[backend]]` tables: one flat table per device, `kind` choosing which
//! keys apply. (A flat table keeps the span of every value for error
//! messages, which serde's tagged enums would lose.)

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::Size;

/// Backend kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Discards writes, reads do not touch data.
    Null,
    /// RAM disk.
    Malloc,
    /// Adds latency to `base`.
    Delay,
    /// Injects errors into `base`.
    Error,
    /// File or block device through io_uring.
    File,
    /// NVMe namespace through the VFIO driver.
    Nvme,
}

/// `[[backend.inject]]`: one error rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// `read`, `write`, `flush`, `write_zeroes`, `deallocate` or `any`.
    #[serde(default = "any_op")]
    pub op: Spanned<String>,
    /// First LBA of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lba_start: Option<u64>,
    /// End LBA of the range (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lba_end: Option<u64>,
    /// Fire every Nth match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_nth: Option<Spanned<u64>>,
    /// Fire with this probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<Spanned<f64>>,
    /// Fire at most this many times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// `fail`, `corrupt`, `hold` (a reset gives it back) or `stuck` (held
    /// through resets too, as a device that keeps DMA-ing).
    pub action: Spanned<String>,
    /// For `fail`: a status name (e.g. `unrecovered_read_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Spanned<String>>,
}

fn any_op() -> Spanned<String> {
    Spanned::new(0..0, "any".into())
}

/// One `[[backend]]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Unique name.
    pub name: Spanned<String>,
    /// Kind.
    pub kind: Spanned<BackendKind>,
    /// Logical block size (null, malloc, file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<Spanned<u32>>,
    /// Size in blocks (null, malloc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_blocks: Option<Spanned<u64>>,
    /// Size in bytes (null, malloc, file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Spanned<Size>>,
    /// null: fill read buffers with zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_zeroes: Option<bool>,
    /// delay, error: the wrapped backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Spanned<String>>,
    /// delay: fixed latency in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Spanned<u64>>,
    /// delay: uniform latency lower bound in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_latency_us: Option<Spanned<u64>>,
    /// delay: uniform latency upper bound in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_us: Option<Spanned<u64>>,
    /// delay, error: random seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// error: injection rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inject: Vec<InjectConfig>,
    /// file: path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
    /// file: use O_DIRECT when possible (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<bool>,
    /// file: io_uring entries per reactor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u32>,
    /// nvme: PCI address `DDDD:BB:DD.F`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_addr: Option<Spanned<String>>,
    /// nvme: namespace ID on the controller (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<u32>,
}

/// A validated backend, as the target builds it.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendSpec {
    /// Null device.
    Null {
        /// Block size.
        block_size: u32,
        /// Blocks.
        num_blocks: u64,
        /// Zero read buffers.
        read_zeroes: bool,
    },
    /// RAM disk.
    Malloc {
        /// Block size.
        block_size: u32,
        /// Blocks.
        num_blocks: u64,
    },
    /// Latency wrapper: fixed when min == max.
    Delay {
        /// Wrapped backend.
        base: String,
        /// Lower bound, µs.
        min_us: u64,
        /// Upper bound, µs.
        max_us: u64,
        /// Seed.
        seed: u64,
    },
    /// Error injection wrapper.
    Error {
        /// Wrapped backend.
        base: String,
        /// Rules (validated).
        rules: Vec<InjectConfig>,
        /// Seed.
        seed: u64,
    },
    /// File.
    File {
        /// Path.
        path: String,
        /// Block size.
        block_size: u32,
        /// Create or extend to this size.
        size: Option<u64>,
        /// Try O_DIRECT.
        direct: bool,
        /// io_uring entries.
        queue_depth: u32,
    },
    /// NVMe over VFIO.
    Nvme {
        /// PCI address.
        pci_addr: String,
        /// Namespace on the controller.
        nsid: u32,
    },
}

impl BackendConfig {
    /// The typed view (call after validation).
    pub fn spec(&self) -> BackendSpec {
        let bs = self.block_size.as_ref().map_or(512, |b| *b.get_ref());
        let blocks = match (&self.num_blocks, &self.size) {
            (Some(n), _) => *n.get_ref(),
            (None, Some(s)) => s.get_ref().0 / bs.max(1) as u64,
            (None, None) => 0,
        };
        let s = |o: &Option<Spanned<String>>| {
            o.as_ref().map(|v| v.get_ref().clone()).unwrap_or_default()
        };
        match self.kind.get_ref() {
            BackendKind::Null => BackendSpec::Null {
                block_size: bs,
                num_blocks: blocks,
                read_zeroes: self.read_zeroes.unwrap_or(false),
            },
            BackendKind::Malloc => BackendSpec::Malloc {
                block_size: bs,
                num_blocks: blocks,
            },
            BackendKind::Delay => {
                let (min, max) =
                    match (&self.latency_us, &self.min_latency_us, &self.max_latency_us) {
                        (Some(l), _, _) => (*l.get_ref(), *l.get_ref()),
                        (None, lo, hi) => (
                            lo.as_ref().map_or(0, |v| *v.get_ref()),
                            hi.as_ref().map_or(0, |v| *v.get_ref()),
                        ),
                    };
                BackendSpec::Delay {
                    base: s(&self.base),
                    min_us: min,
                    max_us: max,
                    seed: self.seed.unwrap_or(0),
                }
            }
            BackendKind::Error => BackendSpec::Error {
                base: s(&self.base),
                rules: self.inject.clone(),
                seed: self.seed.unwrap_or(0),
            },
            BackendKind::File => BackendSpec::File {
                path: s(&self.path),
                block_size: bs,
                size: self.size.as_ref().map(|v| v.get_ref().0),
                direct: self.direct.unwrap_or(true),
                queue_depth: self.queue_depth.unwrap_or(128),
            },
            BackendKind::Nvme => BackendSpec::Nvme {
                pci_addr: s(&self.pci_addr),
                nsid: self.nsid.unwrap_or(1),
            },
        }
    }

    /// Keys set in this table that its kind does not use.
    pub(crate) fn foreign_keys(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        use BackendKind::*;
        let k = *self.kind.get_ref();
        let mut out = Vec::new();
        let mut check =
            |name: &'static str, set: Option<std::ops::Range<usize>>, kinds: &[BackendKind]| {
                if let Some(span) = set
                    && !kinds.contains(&k)
                {
                    out.push((name, span));
                }
            };
        check(
            "block_size",
            self.block_size.as_ref().map(Spanned::span),
            &[Null, Malloc, File],
        );
        check(
            "num_blocks",
            self.num_blocks.as_ref().map(Spanned::span),
            &[Null, Malloc],
        );
        check(
            "size",
            self.size.as_ref().map(Spanned::span),
            &[Null, Malloc, File],
        );
        check(
            "base",
            self.base.as_ref().map(Spanned::span),
            &[Delay, Error],
        );
        check(
            "latency_us",
            self.latency_us.as_ref().map(Spanned::span),
            &[Delay],
        );
        check(
            "min_latency_us",
            self.min_latency_us.as_ref().map(Spanned::span),
            &[Delay],
        );
        check(
            "max_latency_us",
            self.max_latency_us.as_ref().map(Spanned::span),
            &[Delay],
        );
        check("path", self.path.as_ref().map(Spanned::span), &[File]);
        check(
            "pci_addr",
            self.pci_addr.as_ref().map(Spanned::span),
            &[Nvme],
        );
        if !self.inject.is_empty() && k != Error {
            out.push(("inject", self.kind.span()));
        }
        out
    }
}

/// Status names accepted by `status =` in an inject rule.
const STATUS_NAMES: &[(&str, crate::spec::Status)] = &[
    (
        "unrecovered_read_error",
        crate::spec::Status::UNRECOVERED_READ_ERROR,
    ),
    ("write_fault", crate::spec::Status::WRITE_FAULT),
    ("internal_error", crate::spec::Status::INTERNAL_ERROR),
    ("lba_out_of_range", crate::spec::Status::LBA_OUT_OF_RANGE),
    (
        "namespace_not_ready",
        crate::spec::Status::NAMESPACE_NOT_READY,
    ),
    (
        "data_transfer_error",
        crate::spec::Status::DATA_TRANSFER_ERROR,
    ),
    ("compare_failure", crate::spec::Status::COMPARE_FAILURE),
    ("access_denied", crate::spec::Status::ACCESS_DENIED),
];

impl InjectConfig {
    /// The rule this table describes, or the key, span and reason of what
    /// is wrong with it.
    pub fn rule(
        &self,
    ) -> Result<crate::bdev::ErrorRule, (&'static str, std::ops::Range<usize>, String)> {
        use crate::bdev::error::Trigger;
        use crate::bdev::{ErrorAction, ErrorRule, IoOp, OpMatch};
        let op = match self.op.get_ref().as_str() {
            "any" => OpMatch::Any,
            "read" => OpMatch::Op(IoOp::Read),
            "write" => OpMatch::Op(IoOp::Write),
            "flush" => OpMatch::Op(IoOp::Flush),
            "write_zeroes" => OpMatch::Op(IoOp::WriteZeroes),
            "deallocate" => OpMatch::Op(IoOp::Deallocate),
            other => {
                return Err((
                    "op",
                    self.op.span(),
                    format!(
                        "unknown op \"{other}\" (read, write, flush, write_zeroes, deallocate, any)"
                    ),
                ));
            }
        };
        let trigger = match (&self.every_nth, &self.probability) {
            (Some(_), Some(p)) => {
                return Err((
                    "probability",
                    p.span(),
                    "set every_nth or probability, not both".into(),
                ));
            }
            (Some(n), None) if *n.get_ref() == 0 => {
                return Err(("every_nth", n.span(), "must be at least 1".into()));
            }
            (Some(n), None) => Trigger::EveryNth(*n.get_ref()),
            (None, Some(p)) if !(0.0..=1.0).contains(p.get_ref()) => {
                return Err((
                    "probability",
                    p.span(),
                    format!("{} is outside 0..=1", p.get_ref()),
                ));
            }
            (None, Some(p)) => Trigger::Probability(*p.get_ref()),
            (None, None) => Trigger::EveryNth(1),
        };
        let action = match self.action.get_ref().as_str() {
            "fail" => {
                let Some(s) = &self.status else {
                    return Err((
                        "action",
                        self.action.span(),
                        "action \"fail\" needs a status".into(),
                    ));
                };
                match STATUS_NAMES.iter().find(|(n, _)| n == s.get_ref()) {
                    Some((_, st)) => ErrorAction::Fail(*st),
                    None => {
                        let names: Vec<&str> = STATUS_NAMES.iter().map(|(n, _)| *n).collect();
                        return Err((
                            "status",
                            s.span(),
                            format!(
                                "unknown status \"{}\" (one of {})",
                                s.get_ref(),
                                names.join(", ")
                            ),
                        ));
                    }
                }
            }
            "corrupt" => ErrorAction::Corrupt,
            "hold" => ErrorAction::Hold,
            "stuck" => ErrorAction::Stuck,
            other => {
                return Err((
                    "action",
                    self.action.span(),
                    format!("unknown action \"{other}\" (fail, corrupt, hold, stuck)"),
                ));
            }
        };
        let lba_range = match (self.lba_start, self.lba_end) {
            (None, None) => None,
            (s, e) => Some((s.unwrap_or(0), e.unwrap_or(u64::MAX))),
        };
        Ok(ErrorRule {
            op,
            lba_range,
            trigger,
            count: self.count,
            action,
        })
    }
}
