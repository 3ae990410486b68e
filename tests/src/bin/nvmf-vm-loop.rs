//! Runs inside the QEMU guest (see `scripts/vm/run.sh`): exports a namespace
//! of a VFIO-attached NVMe controller through a subsystem, from a TOML
//! config with `kind = "nvme"`, and writes and verifies data over a loop
//! host. The harness then finds the marker block in the raw disk image.
//! Prints `TEST <name> ... ok|FAILED: reason` lines and a `SUMMARY` line.

use std::time::{Duration, Instant};

use pcie_driver::{ControllerOptions, NvmeController};
use target_core::config::TargetConfig;
use target_core::iobuf::{DataBuf, IoBuf};
use target_facade::{StartOptions, Target};
use transport_loop::{ConnectOptions, HostController, HostQpair};

const NQN: &str = "nqn.2026-11.io.nvmf-rs:vm-ssd";
const MARK: &[u8] = b"NVME-VM-TEST-PATTERN:loop-export";
const MARK_LBA: u64 = 2500;
const T: Duration = Duration::from_secs(60);

/// The PCI address of the NVMe function whose serial number is `serial`.
fn find_by_serial(serial: &str) -> Result<String, String> {
    let mut addrs: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .map_err(|e| e.to_string())?
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("class")).is_ok_and(|c| c.trim() == "0x010802")
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    addrs.sort();
    for a in addrs {
        bind_vfio(&a);
        if let Ok(c) = NvmeController::open(&a, ControllerOptions::default()) {
            let found = c.identity().serial.trim() == serial;
            let _ = c.shutdown();
            drop(c);
            if found {
                return Ok(a);
            }
        }
    }
    Err(format!("no NVMe function with serial {serial}"))
}

/// Binds a PCI function to vfio-pci if it is not (an earlier test in the
/// guest unbinds one to check the driver's error message).
fn bind_vfio(addr: &str) {
    let dev = format!("/sys/bus/pci/devices/{addr}");
    let bound = std::fs::read_link(format!("{dev}/driver")).is_ok_and(|d| d.ends_with("vfio-pci"));
    if !bound {
        let _ = std::fs::write(format!("{dev}/driver_override"), "vfio-pci");
        let _ = std::fs::write("/sys/bus/pci/drivers_probe", addr);
    }
}

fn pattern(lba: u64, len: usize) -> IoBuf {
    let mut b = IoBuf::new(len);
    for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
        *x = (lba as u8).wrapping_mul(31) ^ (i as u8) ^ ((i >> 9) as u8);
    }
    b
}

fn one(q: &mut HostQpair, what: &str) -> Result<DataBuf, String> {
    let mut out = None;
    q.drain(T, &mut |c| {
        out = Some(if c.status().is_success() {
            Ok(c.buf)
        } else {
            Err(format!("{what}: {:?}", c.status()))
        });
    })
    .map_err(|e| e.to_string())?;
    out.unwrap_or_else(|| Err(format!("{what}: no completion")))
}

fn write_verify(q: &mut HostQpair) -> Result<String, String> {
    let mut n = 0;
    for (lba, blocks) in [
        (0u64, 1u32),
        (8, 8),
        (100, 16),
        (777, 3),
        (4096, 128),
        (60_000, 256),
    ] {
        let len = blocks as usize * 512;
        q.write(1, lba, blocks, DataBuf::One(pattern(lba, len)), lba)
            .map_err(|_| "submit write")?;
        one(q, "write")?;
        q.read(1, lba, blocks, DataBuf::One(IoBuf::new(len)), lba)
            .map_err(|_| "submit read")?;
        let got = one(q, "read")?;
        let mut v = vec![0u8; len];
        got.copy_out(0, &mut v);
        if v != pattern(lba, len).as_slice() {
            return Err(format!("data mismatch at LBA {lba} ({blocks} blocks)"));
        }
        n += blocks;
    }
    Ok(format!("{n} blocks written and read back"))
}

fn main() {
    let mut pass = 0;
    let mut fail = 0;
    let mut report = |name: &str, r: Result<String, String>| match r {
        Ok(note) => {
            println!("TEST {name} ... ok ({note})");
            pass += 1;
        }
        Err(e) => {
            println!("TEST {name} ... FAILED: {e}");
            fail += 1;
        }
    };
    let t0 = Instant::now();
    let setup = (|| -> Result<(Target, HostController), String> {
        let addr = find_by_serial("ctrla")?;
        let text = format!(
            "[reactors]\ncores = [0]\n[[backend]]\nname = \"ssd\"\nkind = \"nvme\"\npci_addr = \"{addr}\"\nnsid = 1\n\
             [[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n  [[subsystem.namespace]]\n  nsid = 1\n  backend = \"ssd\"\n\
             [[listener]]\ntransport = \"loop\"\nsubsystem = \"{NQN}\"\n"
        );
        let cfg = TargetConfig::from_str(&text, std::path::Path::new("vm-loop.toml"))
            .map_err(|e| e.to_string())?;
        let target = Target::start(
            &cfg,
            &StartOptions {
                unpinned: true,
                idle_backoff: Some(Duration::from_micros(20)),
            },
        )
        .map_err(|e| e.to_string())?;
        let mut o = ConnectOptions::new(NQN, "nqn.2026-11.io.nvmf-rs:vm-host");
        o.io_queues = 2;
        o.queue_depth = 64;
        o.timeout = T;
        let c = target.transport().connect(o).map_err(|e| e.to_string())?;
        Ok((target, c))
    })();
    let (target, mut c) = match setup {
        Ok(v) => {
            report(
                "loop_export_connect",
                Ok(format!("controller {} over loop", v.1.cntlid())),
            );
            v
        }
        Err(e) => {
            report("loop_export_connect", Err(e));
            println!("SUMMARY passed={pass} failed={fail}");
            return;
        }
    };
    report(
        "loop_export_identify",
        match c.namespace_geometry(1) {
            Ok((blocks, 512)) if blocks > 0 => Ok(format!("{blocks} blocks of 512 B")),
            Ok(g) => Err(format!("unexpected geometry {g:?}")),
            Err(e) => Err(e.to_string()),
        },
    );
    let mut qps = c.take_qpairs();
    for (i, q) in qps.iter_mut().enumerate() {
        report(
            &format!("loop_export_write_verify_q{}", i + 1),
            write_verify(q),
        );
    }
    let mark = (|| -> Result<String, String> {
        let q = qps.first_mut().ok_or("no queue")?;
        let mut b = IoBuf::new(512);
        b.as_mut_slice()[..MARK.len()].copy_from_slice(MARK);
        q.write(1, MARK_LBA, 1, DataBuf::One(b), 1)
            .map_err(|_| "submit")?;
        one(q, "mark write")?;
        q.flush(1, 2).map_err(|_| "submit flush")?;
        one(q, "flush")?;
        Ok(format!("marker at LBA {MARK_LBA}"))
    })();
    report("loop_export_mark", mark);
    drop(qps);
    let stop = c
        .disconnect()
        .map_err(|e| e.to_string())
        .and_then(|_| target.stop().map_err(|e| e.to_string()));
    report(
        "loop_export_stop",
        stop.map(|_| format!("drained and shut down in {:.1?} total", t0.elapsed())),
    );
    println!("SUMMARY passed={pass} failed={fail}");
}
