//! One job's parameters, as the runner consumes them, and their checks
//! against the namespace the job runs on.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::UsageError;
use crate::units::format_size;

/// The I/O pattern of a job, named as in fio's `rw=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RwMode {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Uniform random reads.
    RandRead,
    /// Uniform random writes.
    RandWrite,
    /// Sequential mixed reads and writes (`rw` / `readwrite`).
    ReadWrite,
    /// Uniform random mixed reads and writes.
    RandRw,
    /// Write every block of the range once, then random reads (checked)
    /// and writes; see [`crate::verify`].
    Verify,
}

impl RwMode {
    /// The accepted spellings, for help and error messages.
    pub const NAMES: &'static str =
        "read, write, randread, randwrite, rw (readwrite), randrw, verify";

    /// `true` for the modes that pick offsets at random.
    pub fn is_random(self) -> bool {
        matches!(
            self,
            Self::RandRead | Self::RandWrite | Self::RandRw | Self::Verify
        )
    }

    /// `true` for the modes that mix reads and writes by `rwmixread`.
    pub fn is_mixed(self) -> bool {
        matches!(self, Self::ReadWrite | Self::RandRw | Self::Verify)
    }

    /// `true` when the job issues writes.
    pub fn writes(self) -> bool {
        !matches!(self, Self::Read | Self::RandRead)
    }
}

impl FromStr for RwMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "read" => Self::Read,
            "write" => Self::Write,
            "randread" => Self::RandRead,
            "randwrite" => Self::RandWrite,
            "rw" | "readwrite" => Self::ReadWrite,
            "randrw" => Self::RandRw,
            "verify" => Self::Verify,
            _ => {
                return Err(format!(
                    "invalid rw mode '{s}': expected one of {}",
                    Self::NAMES
                ));
            }
        })
    }
}

impl fmt::Display for RwMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::RandRead => "randread",
            Self::RandWrite => "randwrite",
            Self::ReadWrite => "rw",
            Self::RandRw => "randrw",
            Self::Verify => "verify",
        })
    }
}

/// Largest queue depth a job may ask for (an NVMe queue holds at most
/// 65536 entries, and the CID space is 16 bits).
pub const MAX_IODEPTH: u32 = 65535;
/// Largest number of copies of one job.
pub const MAX_NUMJOBS: u32 = 1024;

/// Everything one job needs, resolved from the command line and job file.
///
/// `numjobs` copies run in parallel; [`JobSpec::instances`] produces them.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// Job name: names the output files (`<name>.hlog`) and summary rows.
    pub name: String,
    /// I/O pattern.
    pub rw: RwMode,
    /// Percentage of reads in mixed modes (0..=100).
    pub rwmixread: u32,
    /// Bytes per I/O.
    pub bs: u32,
    /// I/Os kept in flight.
    pub iodepth: u32,
    /// Parallel copies of this job.
    pub numjobs: u32,
    /// Run as a poller on a target reactor instead of a host thread.
    pub inline: bool,
    /// Time limit of the measured part (after ramp). `None` with `io_count`
    /// set: run until the count is reached. Both set: whichever comes first.
    pub runtime: Option<Duration>,
    /// Number of I/Os to complete (after ramp).
    pub io_count: Option<u64>,
    /// Warm-up time whose I/Os are excluded from the results.
    pub ramp: Duration,
    /// Seed of the random offsets and read/write choice.
    pub seed: u64,
    /// Start of the range, bytes into the namespace.
    pub offset: u64,
    /// Length of the range in bytes; `None` = to the end of the namespace.
    pub size: Option<u64>,
    /// Random offsets are multiples of this many bytes (from `offset`).
    pub align: u32,
    /// Write self-checking data and check every read (`rw = verify`).
    pub verify: bool,
    /// Subsystem NQN; `None` = the first one in the target config.
    pub subsystem: Option<String>,
    /// Namespace ID.
    pub nsid: u32,
    /// Record latencies in a histogram (off: counters only, to measure the
    /// cost of recording).
    pub histogram: bool,
    /// How the job reaches its subsystem.
    pub transport: JobTransport,
}

/// How a job reaches its subsystem: a job, not the process, chooses, so one
/// job file (or service config) can drive the in-process target over the
/// loop transport and a remote one over NVMe/TCP side by side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum JobTransport {
    /// The in-process target's loop transport.
    #[default]
    Loop,
    /// NVMe/TCP to any target.
    Tcp {
        /// `host:port` (IPv6 as `[addr]:port`); `None`: the first TCP
        /// listener of the in-process target (the bench's `--config`, the
        /// service's own config), so a test needs no fixed port.
        traddr: Option<String>,
        /// Host NQN to connect with; `None`: the tool's own.
        hostnqn: Option<String>,
    },
}

impl JobTransport {
    /// `true` for NVMe/TCP.
    pub fn is_tcp(&self) -> bool {
        matches!(self, JobTransport::Tcp { .. })
    }
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            name: "job0".into(),
            rw: RwMode::RandRead,
            rwmixread: 50,
            bs: 4096,
            iodepth: 32,
            numjobs: 1,
            inline: false,
            runtime: Some(Duration::from_secs(10)),
            io_count: None,
            ramp: Duration::ZERO,
            seed: 0x6e76_6d66_6265_6e63,
            offset: 0,
            size: None,
            align: 4096,
            verify: false,
            subsystem: None,
            nsid: 1,
            histogram: true,
            transport: JobTransport::Loop,
        }
    }
}

impl JobSpec {
    /// Checks the job against a namespace of `ns_bytes` bytes in blocks of
    /// `block_size` bytes: I/O size and alignment in whole blocks, the range
    /// inside the namespace and large enough for one I/O, and for verify
    /// enough distinct I/O slots that no two in-flight I/Os overlap.
    pub fn validate(&self, ns_bytes: u64, block_size: u32) -> Result<(), UsageError> {
        let n = &self.name;
        let err = |m: String| Err(UsageError::new(format!("job '{n}': {m}")));
        if block_size == 0 || !block_size.is_power_of_two() {
            return err(format!(
                "namespace block size {block_size} is not a power of two"
            ));
        }
        let bsz = u64::from(block_size);
        if self.bs == 0 || !self.bs.is_multiple_of(block_size) {
            return err(format!(
                "bs={} is not a multiple of the namespace block size ({block_size})",
                self.bs
            ));
        }
        if self.bs / block_size > 65536 {
            return err(format!(
                "bs={} is more than 65536 blocks per command",
                format_size(self.bs.into())
            ));
        }
        if self.align == 0 || !self.align.is_multiple_of(block_size) {
            return err(format!(
                "align={} is not a multiple of the namespace block size ({block_size})",
                self.align
            ));
        }
        if !self.offset.is_multiple_of(bsz) {
            return err(format!(
                "offset={} is not a multiple of the block size ({block_size})",
                self.offset
            ));
        }
        if self.offset >= ns_bytes {
            return err(format!(
                "offset={} is beyond the namespace ({} bytes)",
                format_size(self.offset),
                ns_bytes
            ));
        }
        let range = self.range_bytes(ns_bytes);
        if let Some(size) = self.size {
            if size == 0 {
                return err("size=0: the range must hold at least one I/O".into());
            }
            if self
                .offset
                .checked_add(size)
                .is_none_or(|end| end > ns_bytes)
            {
                return err(format!(
                    "offset+size ({}+{}) ends beyond the namespace ({ns_bytes} bytes)",
                    self.offset, size
                ));
            }
        }
        if range < u64::from(self.bs) {
            return err(format!(
                "the range ({range} bytes) is smaller than one I/O (bs={})",
                self.bs
            ));
        }
        if self.rwmixread > 100 {
            return err(format!(
                "rwmixread={} is not a percentage (0-100)",
                self.rwmixread
            ));
        }
        if self.iodepth == 0 || self.iodepth > MAX_IODEPTH {
            return err(format!(
                "iodepth={} is outside 1..={MAX_IODEPTH}",
                self.iodepth
            ));
        }
        if self.numjobs == 0 || self.numjobs > MAX_NUMJOBS {
            return err(format!(
                "numjobs={} is outside 1..={MAX_NUMJOBS}",
                self.numjobs
            ));
        }
        if self.nsid == 0 || self.nsid == u32::MAX {
            return err(format!("nsid={} is not a valid namespace ID", self.nsid));
        }
        if self.runtime.is_none() && self.io_count.is_none() {
            return err("neither runtime nor io_count is set: the job would never end".into());
        }
        if self.runtime.is_some_and(|r| r.is_zero()) || self.io_count == Some(0) {
            return err("runtime and io_count must be greater than zero".into());
        }
        if self.verify {
            // Each copy gets its own slice of the range (see `instances`).
            let slots = range / u64::from(self.bs) / u64::from(self.numjobs);
            if slots < 2 * u64::from(self.iodepth) {
                return err(format!(
                    "verify needs at least 2*iodepth ({}) distinct bs-sized blocks per job, the range has {slots}",
                    2 * self.iodepth
                ));
            }
        }
        Ok(())
    }

    /// Bytes of the range the job works in, given the namespace size.
    pub fn range_bytes(&self, ns_bytes: u64) -> u64 {
        let avail = ns_bytes.saturating_sub(self.offset);
        self.size.map_or(avail, |s| s.min(avail))
    }

    /// The `numjobs` copies to run, each with `numjobs = 1`, a name of
    /// `name.N` (just `name` when there is one copy) and seed `seed + N`
    /// so copies do not issue identical sequences. Verify copies get
    /// disjoint slices of the range (whole `bs` blocks), because two
    /// writers to the same block cannot know which write the device kept.
    pub fn instances(&self, ns_bytes: u64) -> Vec<JobSpec> {
        let n = self.numjobs.max(1);
        let range = self.range_bytes(ns_bytes);
        let slice = range / u64::from(self.bs.max(1)) / u64::from(n) * u64::from(self.bs);
        (0..n)
            .map(|i| {
                let mut j = self.clone();
                j.numjobs = 1;
                if n > 1 {
                    j.name = format!("{}.{i}", self.name);
                }
                j.seed = self.seed.wrapping_add(u64::from(i));
                if self.verify && n > 1 {
                    j.offset = self.offset + u64::from(i) * slice;
                    j.size = Some(slice);
                }
                j
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn rw_names_round_trip() {
        for s in [
            "read",
            "write",
            "randread",
            "randwrite",
            "rw",
            "randrw",
            "verify",
        ] {
            assert_eq!(s.parse::<RwMode>().unwrap().to_string(), s);
        }
        assert_eq!("readwrite".parse::<RwMode>(), Ok(RwMode::ReadWrite));
        assert!("trim".parse::<RwMode>().is_err());
    }

    #[test]
    fn default_is_valid() {
        JobSpec::default().validate(GIB, 512).unwrap();
        JobSpec::default().validate(GIB, 4096).unwrap();
    }

    #[test]
    fn rejects_bad_jobs() {
        let j = JobSpec {
            bs: 512,
            ..JobSpec::default()
        };
        let e = j.validate(GIB, 4096).unwrap_err();
        assert!(e.0.contains("bs=512"), "{e}");
        let j = JobSpec {
            align: 1000,
            ..JobSpec::default()
        };
        assert!(j.validate(GIB, 512).unwrap_err().0.contains("align"));
        let j = JobSpec {
            offset: GIB - 4096,
            size: Some(8192),
            ..JobSpec::default()
        };
        assert!(j.validate(GIB, 512).unwrap_err().0.contains("beyond"));
        let j = JobSpec {
            offset: GIB,
            ..JobSpec::default()
        };
        assert!(j.validate(GIB, 512).is_err());
        let j = JobSpec {
            rwmixread: 101,
            ..JobSpec::default()
        };
        assert!(j.validate(GIB, 512).is_err());
        let j = JobSpec {
            iodepth: 0,
            ..JobSpec::default()
        };
        assert!(j.validate(GIB, 512).is_err());
        let j = JobSpec {
            runtime: None,
            io_count: None,
            ..JobSpec::default()
        };
        assert!(j.validate(GIB, 512).is_err());
        let j = JobSpec {
            rw: RwMode::Verify,
            verify: true,
            size: Some(16 * 4096),
            ..JobSpec::default()
        };
        assert!(j.validate(GIB, 512).unwrap_err().0.contains("verify"));
        let j = JobSpec {
            size: Some(1024),
            ..JobSpec::default()
        };
        assert!(j.validate(GIB, 512).unwrap_err().0.contains("smaller"));
    }

    #[test]
    fn instances_split_verify_ranges() {
        let j = JobSpec {
            rw: RwMode::Verify,
            verify: true,
            numjobs: 4,
            size: Some(1 << 20),
            offset: 1 << 20,
            ..JobSpec::default()
        };
        let v = j.instances(GIB);
        assert_eq!(v.len(), 4);
        assert_eq!(v[1].name, "job0.1");
        assert_eq!(v[1].offset, (1 << 20) + (256 << 10));
        assert_eq!(v[3].size, Some(256 << 10));
        assert_ne!(v[0].seed, v[1].seed);
        assert!(
            v.iter()
                .all(|c| c.numjobs == 1 && c.validate(GIB, 512).is_ok())
        );
    }
}
