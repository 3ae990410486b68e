//! The NVMe/TCP host against our own TCP target over 127.0.0.1: connect,
//! identify, write/read/verify below and above the in-capsule size and
//! MDTS, digests on and off, keep-alive, and error recovery through a
//! proxy that cuts every connection mid-run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BLOCKS, HOST, NQN, fixture};
use target_core::host_cmds::{AdminCommands, NvmCommands};
use target_core::iobuf::{DataBuf, IoBuf};
use transport_tcp::ListenerConfig;
use transport_tcp::host::{ConnectOptions, HostCompletion, HostController, HostQpair, QpairState};

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) >> 7 ^ seed.wrapping_mul(131)) as u8)
        .collect()
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`
/// (an error path must never hang).
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("test body hung")
}

/// Submits and waits for one request.
fn exec(q: &mut HostQpair, write: bool, lba: u64, buf: DataBuf, bs: usize) -> HostCompletion {
    let blocks = (buf.len() / bs) as u32;
    let r = if write {
        q.write(1, lba, blocks, buf, 7)
    } else {
        q.read(1, lba, blocks, buf, 7)
    };
    assert!(r.is_ok(), "submit");
    let mut out = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.is_none() {
        q.poll(usize::MAX, &mut |c| out = Some(c));
        assert!(Instant::now() < deadline, "completion never came");
    }
    out.unwrap()
}

fn verify(q: &mut HostQpair, lba: u64, len: usize, seed: u64) {
    let data = pattern(len, seed);
    let c = exec(q, true, lba, DataBuf::One(IoBuf::from_slice(&data)), 512);
    assert!(
        c.status().is_success(),
        "write {len} at {lba}: {}",
        c.status()
    );
    let c = exec(q, false, lba, DataBuf::One(IoBuf::new(len)), 512);
    assert!(
        c.status().is_success(),
        "read {len} at {lba}: {}",
        c.status()
    );
    let mut back = vec![0u8; len];
    c.buf.copy_out(0, &mut back);
    assert!(back == data, "read back {len} bytes at LBA {lba}");
}

fn run(hdgst: bool, ddgst: bool, sqflow_off: bool) {
    let f = fixture(ListenerConfig::default());
    let mut opts = ConnectOptions::new(&f.addr, NQN, HOST).with_digests(hdgst, ddgst);
    opts.disable_sqflow = sqflow_off;
    opts.queue_depth = 32;
    let mut ctrl = HostController::connect(opts).unwrap();
    let id = ctrl.identify_controller();
    assert_eq!(&id[768..768 + NQN.len()], NQN.as_bytes(), "SUBNQN");
    assert_eq!(ctrl.in_capsule_data_size(), 8192, "IOCCSZ read");
    assert_eq!(ctrl.max_transfer(), 128 * 1024, "MDTS read");
    assert_eq!(ctrl.host_max_transfer(), 128 * 1024);
    assert_eq!(ctrl.namespace_geometry(1).unwrap(), (BLOCKS, 512));
    assert_eq!(ctrl.active_namespaces().unwrap(), vec![1]);
    let mut q = ctrl.take_qpairs().pop().expect("one I/O queue");
    assert_eq!(q.state(), QpairState::Live);
    // In capsule (<= 8 KiB), by R2T (above), at MDTS, above MDTS (split).
    let mut lba = 0;
    for (i, len) in [
        512,
        4096,
        8192,
        8704,
        65536,
        128 * 1024,
        1 << 20,
        384 * 1024 + 512,
    ]
    .into_iter()
    .enumerate()
    {
        verify(&mut q, lba, len, i as u64 + 1);
        lba += (len / 512) as u64;
    }
    let s = q.stats();
    assert!(s.in_capsule >= 3, "writes in capsule: {s:?}");
    assert!(s.r2ts >= 4, "writes by R2T: {s:?}");
    assert_eq!(s.split, 4, "1 MiB and 384.5 KiB split both ways: {s:?}");
    if sqflow_off {
        assert!(s.c2h_success >= 8, "reads end with C2HData SUCCESS: {s:?}");
    } else {
        assert_eq!(s.c2h_success, 0, "SQ flow control on: response capsules");
    }
    assert_eq!(s.stale, 0);
    assert_eq!(s.data_digest_errors, 0);
    // Queue depth with mixed sizes: every completion once, data intact.
    let n = 64u64;
    let mut tags = vec![false; n as usize];
    let mut submitted = 0u64;
    let mut done = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while done < n {
        while submitted < n {
            let len = if submitted.is_multiple_of(3) {
                256 * 1024
            } else {
                4096
            };
            let data = pattern(len, 100 + submitted);
            let lba = 4096 + submitted * 8;
            let lba = if len > 4096 { 2048 } else { lba };
            match q.write(
                1,
                lba,
                (len / 512) as u32,
                DataBuf::One(IoBuf::from_slice(&data)),
                submitted,
            ) {
                Ok(_) => submitted += 1,
                Err(_) => break,
            }
        }
        done += q.poll(usize::MAX, &mut |c| {
            assert!(c.status().is_success(), "write at depth: {}", c.status());
            assert!(!tags[c.tag as usize], "one completion per request");
            tags[c.tag as usize] = true;
        }) as u64;
        assert!(Instant::now() < deadline, "queue never drained");
    }
    assert!(tags.iter().all(|&t| t));
    verify(&mut q, 100, 4096, 77);
    q.disconnect(Duration::from_secs(5), &mut |_| {}).unwrap();
    ctrl.disconnect().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.tcp.connections() > 0 {
        assert!(Instant::now() < deadline, "target kept the connections");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn host_io_without_digests() {
    bounded(Duration::from_secs(120), || run(false, false, true));
}

#[test]
fn host_io_with_digests() {
    bounded(Duration::from_secs(120), || run(true, true, true));
}

#[test]
fn host_io_sq_flow_control_on() {
    bounded(Duration::from_secs(120), || run(false, true, false));
}

#[test]
fn host_split_follows_a_smaller_host_limit() {
    bounded(Duration::from_secs(60), || {
        let f = fixture(ListenerConfig::default());
        let mut opts = ConnectOptions::new(&f.addr, NQN, HOST);
        opts.max_transfer = 16 * 1024;
        let mut ctrl = HostController::connect(opts).unwrap();
        assert_eq!(ctrl.host_max_transfer(), 16 * 1024);
        let mut q = ctrl.take_qpairs().pop().unwrap();
        verify(&mut q, 0, 100 * 1024, 3);
        let s = q.stats();
        assert_eq!(s.split, 2, "write and read split");
        assert_eq!(s.commands, 2 * 7, "100 KiB in 16 KiB commands, both ways");
    });
}

#[test]
fn keep_alive_holds_the_controller_and_its_absence_loses_it() {
    bounded(Duration::from_secs(60), || {
        let f = fixture(ListenerConfig::default());
        // With the background poller: Keep Alive every KATO/2.
        let mut opts = ConnectOptions::new(&f.addr, NQN, HOST);
        opts.kato_ms = 600;
        let mut ctrl = HostController::connect(opts.clone()).unwrap();
        let mut q = ctrl.take_qpairs().pop().unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!ctrl.is_gone(), "controller lost: {:?}", ctrl.last_error());
        verify(&mut q, 0, 4096, 1);
        // Without it (and without service()): the target's keep-alive
        // timer ends the controller; the host says so, no hang.
        opts.background = false;
        opts.hostnqn = "nqn.2026-11.io.nvmf-rs:host2".into();
        let mut quiet = HostController::connect(opts).unwrap();
        let mut q2 = quiet.take_qpairs().pop().unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut failed = None;
        let _ = q2.read(1, 0, 8, DataBuf::One(IoBuf::new(4096)), 1);
        while failed.is_none() && q2.state() == QpairState::Live {
            q2.poll(usize::MAX, &mut |c| failed = Some(c.status()));
            assert!(
                Instant::now() < deadline,
                "queue of an expired controller still live"
            );
        }
        q2.poll(usize::MAX, &mut |c| failed = Some(c.status()));
        let st = failed.expect("the read completed");
        assert!(!st.is_success(), "read on an expired controller succeeded");
        assert!(q2.last_error().is_some(), "no reason given");
        // The kept-alive one is still fine.
        verify(&mut q, 8, 4096, 2);
    });
}

/// A TCP proxy that can cut every connection it carries.
struct Proxy {
    addr: String,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(target: String) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (c2, a2) = (conns.clone(), accepted.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(a) = s else { break };
                let Ok(b) = TcpStream::connect(&target) else {
                    continue;
                };
                a.set_nodelay(true).unwrap();
                b.set_nodelay(true).unwrap();
                a2.fetch_add(1, Ordering::SeqCst);
                let mut v = c2.lock().unwrap();
                v.push(a.try_clone().unwrap());
                v.push(b.try_clone().unwrap());
                drop(v);
                for (mut x, mut y) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            match x.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if y.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = x.shutdown(Shutdown::Both);
                        let _ = y.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self {
            addr,
            cut,
            conns,
            accepted,
        }
    }

    fn cut_all(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Verify workload at depth over a connection that is cut three times:
/// with recovery on, the host reconnects, resubmits, and every block reads
/// back what was last acknowledged.
#[test]
fn recovery_rides_through_cut_connections() {
    bounded(Duration::from_secs(120), || {
        let f = fixture(ListenerConfig::default());
        let proxy = Proxy::start(f.addr.clone());
        let opts = ConnectOptions::new(&proxy.addr, NQN, HOST)
            .with_recovery(Duration::from_millis(50), Duration::from_secs(20));
        let mut ctrl = HostController::connect(opts).unwrap();
        let mut q = ctrl.take_qpairs().pop().unwrap();
        const SLOTS: u64 = 64;
        const LEN: usize = 16 * 1024;
        let mut genr = [0u64; SLOTS as usize];
        let mut acked = [0u64; SLOTS as usize];
        let mut busy = [false; SLOTS as usize];
        let mut writes = 0u64;
        let mut cuts = 0;
        let start = Instant::now();
        while cuts < 3 || writes < 600 {
            for s in 0..SLOTS {
                if !busy[s as usize] {
                    genr[s as usize] += 1;
                    let data = pattern(LEN, s * 1_000_000 + genr[s as usize]);
                    if q.write(1, s * 32, 32, DataBuf::One(IoBuf::from_slice(&data)), s)
                        .is_ok()
                    {
                        busy[s as usize] = true;
                    } else {
                        genr[s as usize] -= 1;
                    }
                }
            }
            q.poll(usize::MAX, &mut |c| {
                assert!(
                    c.status().is_success(),
                    "write failed under recovery: {}",
                    c.status()
                );
                busy[c.tag as usize] = false;
                acked[c.tag as usize] = genr[c.tag as usize];
                writes += 1;
            });
            if writes > 150 * (cuts + 1) as u64 && cuts < 3 {
                proxy.cut_all();
                cuts += 1;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "no progress: {:?}",
                q.stats()
            );
        }
        q.drain(Duration::from_secs(20), &mut |c| {
            assert!(c.status().is_success());
            acked[c.tag as usize] = genr[c.tag as usize];
        })
        .unwrap();
        for s in 0..SLOTS {
            let c = exec(&mut q, false, s * 32, DataBuf::One(IoBuf::new(LEN)), 512);
            assert!(c.status().is_success());
            let mut back = vec![0u8; LEN];
            c.buf.copy_out(0, &mut back);
            assert!(
                back == pattern(LEN, s * 1_000_000 + acked[s as usize]),
                "slot {s}"
            );
        }
        assert!(
            ctrl.reconnects() >= 3,
            "controller reconnects: {}",
            ctrl.reconnects()
        );
        let st = q.stats();
        assert!(st.reconnects >= 3, "queue reconnects: {st:?}");
        assert!(
            proxy.accepted.load(Ordering::SeqCst) >= 8,
            "2 connections per association"
        );
        let _ = proxy.cut.load(Ordering::SeqCst);
    });
}

/// Without recovery, a target that vanishes mid-run ends every command
/// with an error and a reason, promptly.
#[test]
fn vanished_target_is_a_clear_error_without_recovery() {
    bounded(Duration::from_secs(60), || {
        let f = fixture(ListenerConfig::default());
        let proxy = Proxy::start(f.addr.clone());
        let mut ctrl =
            HostController::connect(ConnectOptions::new(&proxy.addr, NQN, HOST)).unwrap();
        let mut q = ctrl.take_qpairs().pop().unwrap();
        for i in 0..32u64 {
            q.read(1, i * 8, 8, DataBuf::One(IoBuf::new(4096)), i)
                .unwrap();
        }
        proxy.cut_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut failed = 0;
        let mut ok = 0;
        while q.outstanding() > 0 {
            q.poll(usize::MAX, &mut |c| {
                if c.status().is_success() {
                    ok += 1
                } else {
                    failed += 1
                }
            });
            assert!(Instant::now() < deadline, "commands never completed");
        }
        assert_eq!(ok + failed, 32);
        assert_eq!(q.state(), QpairState::Dead);
        let why = q.last_error().unwrap_or_default();
        assert!(
            why.contains("closed") || why.contains("onnection"),
            "reason: {why}"
        );
        assert!(q.read(1, 0, 8, DataBuf::One(IoBuf::new(4096)), 0).is_err());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ctrl.is_gone() {
            assert!(Instant::now() < deadline, "controller not marked gone");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ctrl.last_error().is_some());
    });
}

/// A controller reset (CC.EN = 0, then 1) without recovery: the I/O queue
/// ends with a reason, reconnects on request, and I/O works again. With
/// recovery, the queue reconnects by itself and its commands go through.
#[test]
fn controller_reset_then_reconnect() {
    bounded(Duration::from_secs(60), || {
        let f = fixture(ListenerConfig::default());
        let mut ctrl = HostController::connect(ConnectOptions::new(&f.addr, NQN, HOST)).unwrap();
        let mut q = ctrl.take_qpairs().pop().unwrap();
        verify(&mut q, 0, 4096, 1);
        ctrl.reset().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.state() == QpairState::Live {
            q.poll(usize::MAX, &mut |_| {});
            assert!(Instant::now() < deadline, "queue survived the reset");
        }
        assert_eq!(q.state(), QpairState::Dead);
        // Either the target closed the connection first or the host saw
        // the reset first; both say so.
        let why = q.last_error().unwrap_or_default();
        assert!(why.contains("reset") || why.contains("closed"), "{why}");
        q.reconnect().unwrap();
        verify(&mut q, 8, 8192, 2);

        let opts = ConnectOptions::new(&f.addr, NQN, "nqn.2026-11.io.nvmf-rs:host3")
            .with_recovery(Duration::from_millis(20), Duration::from_secs(10));
        let mut ctrl = HostController::connect(opts).unwrap();
        let mut q = ctrl.take_qpairs().pop().unwrap();
        ctrl.reset().unwrap();
        verify(&mut q, 16, 65536, 3);
        assert_eq!(q.stats().reconnects, 1, "{:?}", q.stats());
    });
}
