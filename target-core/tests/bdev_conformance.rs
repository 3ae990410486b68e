//! One conformance suite run over every backend's channel, plus the
//! behaviour of the `delay` and `error` wrappers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use target_core::bdev::error::Trigger;
use target_core::bdev::*;
use target_core::iobuf::{DataBuf, IoBuf};
use target_core::spec::Status;

const BS: u32 = 512;
const BLOCKS: u64 = 4096;

fn malloc(name: &str) -> BdevRef {
    Arc::new(
        MallocBdev::new(MallocParams {
            name: name.into(),
            block_size: BS,
            num_blocks: BLOCKS,
        })
        .unwrap(),
    )
}

/// Submits one I/O and waits (bounded) for its completion.
fn run(ch: &mut dyn IoChannel, op: IoOp, lba: u64, blocks: u32, buf: DataBuf) -> BdevCompletion {
    let io = BdevIo {
        tag: 42,
        op,
        lba,
        blocks,
        fua: false,
        buf,
    };
    ch.submit(io).map_err(|_| "full").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut got = None;
        ch.poll(&mut |c| got = Some(c));
        if let Some(c) = got {
            assert_eq!(c.tag, 42);
            return c;
        }
        assert!(Instant::now() < deadline, "no completion for {op:?}");
        std::thread::yield_now();
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn read_back(ch: &mut dyn IoChannel, lba: u64, blocks: u32) -> Vec<u8> {
    let c = run(
        ch,
        IoOp::Read,
        lba,
        blocks,
        DataBuf::One(IoBuf::new(blocks as usize * BS as usize)),
    );
    assert_eq!(c.result, Ok(()));
    let mut out = vec![0u8; blocks as usize * BS as usize];
    c.buf.copy_out(0, &mut out);
    out
}

/// The checks every data-keeping backend must pass.
fn conformance(dev: &dyn BlockDevice) {
    let mut ch = dev.open_channel().unwrap();
    let ch = ch.as_mut();
    for (lba, blocks, seed) in [
        (0u64, 1u32, 1u8),
        (7, 8, 2),
        (1000, 64, 3),
        (BLOCKS - 4, 4, 4),
    ] {
        let data = pattern(blocks as usize * BS as usize, seed);
        let c = run(
            ch,
            IoOp::Write,
            lba,
            blocks,
            DataBuf::One(IoBuf::from_slice(&data)),
        );
        assert_eq!(c.result, Ok(()), "write lba {lba}");
        assert_eq!(read_back(ch, lba, blocks), data, "read back lba {lba}");
    }
    // Vectored write, read back contiguous.
    let data = pattern(3 * BS as usize, 9);
    let v = DataBuf::many(vec![
        IoBuf::from_slice(&data[..BS as usize]),
        IoBuf::from_slice(&data[BS as usize..]),
    ]);
    assert_eq!(run(ch, IoOp::Write, 200, 3, v).result, Ok(()));
    assert_eq!(read_back(ch, 200, 3), data);
    assert_eq!(run(ch, IoOp::Flush, 0, 0, DataBuf::None).result, Ok(()));
    assert_eq!(
        run(ch, IoOp::WriteZeroes, 7, 8, DataBuf::None).result,
        Ok(())
    );
    assert!(
        read_back(ch, 7, 8).iter().all(|&b| b == 0),
        "write zeroes reads back zeros"
    );
    let mut ranges = DataBuf::One(IoBuf::new(32));
    encode_dsm_ranges(
        &[
            DsmRange {
                attributes: 0,
                blocks: 64,
                slba: 1000,
            },
            DsmRange {
                attributes: 0,
                blocks: 1,
                slba: 0,
            },
        ],
        &mut ranges,
    );
    assert_eq!(run(ch, IoOp::Deallocate, 0, 2, ranges).result, Ok(()));
    assert!(
        read_back(ch, 1000, 64).iter().all(|&b| b == 0),
        "deallocated blocks read zeros"
    );
    assert!(read_back(ch, 0, 1).iter().all(|&b| b == 0));
    assert_eq!(
        run(
            ch,
            IoOp::Read,
            BLOCKS - 1,
            2,
            DataBuf::One(IoBuf::new(1024))
        )
        .result,
        Err(IoError::OutOfRange)
    );
    assert_eq!(
        run(ch, IoOp::Read, 0, 4, DataBuf::One(IoBuf::new(512))).result,
        Err(IoError::BufferTooShort)
    );
    assert_eq!(ch.in_flight(), 0);
}

#[test]
fn malloc_conforms() {
    conformance(malloc("m").as_ref());
}

#[test]
fn delay_over_malloc_conforms() {
    let d = DelayBdev::new(
        DelayParams {
            name: "d".into(),
            latency: Latency::Uniform {
                min: Duration::ZERO,
                max: Duration::from_micros(200),
            },
            seed: 1,
        },
        malloc("m"),
    )
    .unwrap();
    conformance(&d);
}

#[test]
fn error_without_rules_conforms() {
    let e = ErrorBdev::new(
        ErrorParams {
            name: "e".into(),
            rules: vec![],
            seed: 1,
        },
        malloc("m"),
    )
    .unwrap();
    conformance(&e);
}

#[test]
fn file_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let p = FileParams {
        name: "f".into(),
        path: dir.path().join("disk.img"),
        block_size: BS,
        size: Some(BLOCKS * BS as u64),
        direct: true,
        queue_depth: 32,
    };
    match FileBdev::new(p) {
        Ok(f) => match f.open_channel() {
            Ok(_) => conformance(&f),
            Err(e) => eprintln!("SKIPPED file backend: {e}"),
        },
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn null_completes_and_checks_ranges() {
    let n = NullBdev::new(NullParams {
        name: "n".into(),
        block_size: BS,
        num_blocks: BLOCKS,
        read_zeroes: true,
    })
    .unwrap();
    let mut ch = n.open_channel().unwrap();
    let mut b = IoBuf::new(512);
    b.as_mut_slice().fill(7);
    let c = run(ch.as_mut(), IoOp::Read, 0, 1, DataBuf::One(b));
    assert_eq!(c.result, Ok(()));
    let mut out = [1u8; 512];
    c.buf.copy_out(0, &mut out);
    assert!(out.iter().all(|&x| x == 0));
    assert_eq!(
        run(
            ch.as_mut(),
            IoOp::Write,
            BLOCKS,
            1,
            DataBuf::One(IoBuf::new(512))
        )
        .result,
        Err(IoError::OutOfRange)
    );
}

#[test]
fn bad_parameters_are_refused_with_a_reason() {
    let e = MallocBdev::new(MallocParams {
        name: "x".into(),
        block_size: 1000,
        num_blocks: 1,
    })
    .unwrap_err();
    assert!(e.to_string().contains("power of two"), "{e}");
    let e = ErrorBdev::new(
        ErrorParams {
            name: "e".into(),
            rules: vec![ErrorRule {
                op: OpMatch::Any,
                lba_range: None,
                trigger: Trigger::EveryNth(0),
                count: None,
                action: ErrorAction::Hold,
            }],
            seed: 0,
        },
        malloc("m"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("every_nth"), "{e}");
}

fn rule(
    op: OpMatch,
    range: Option<(u64, u64)>,
    trigger: Trigger,
    action: ErrorAction,
) -> ErrorRule {
    ErrorRule {
        op,
        lba_range: range,
        trigger,
        count: None,
        action,
    }
}

#[test]
fn error_injects_by_op_range_and_every_nth() {
    let e = ErrorBdev::new(
        ErrorParams {
            name: "e".into(),
            rules: vec![
                rule(
                    OpMatch::Op(IoOp::Write),
                    Some((100, 200)),
                    Trigger::EveryNth(1),
                    ErrorAction::Fail(Status::WRITE_FAULT),
                ),
                rule(
                    OpMatch::Op(IoOp::Read),
                    None,
                    Trigger::EveryNth(3),
                    ErrorAction::Fail(Status::UNRECOVERED_READ_ERROR),
                ),
            ],
            seed: 1,
        },
        malloc("m"),
    )
    .unwrap();
    let mut ch = e.open_channel().unwrap();
    let ch = ch.as_mut();
    assert_eq!(
        run(ch, IoOp::Write, 150, 1, DataBuf::One(IoBuf::new(512))).result,
        Err(IoError::Nvme(Status::WRITE_FAULT))
    );
    assert_eq!(
        run(ch, IoOp::Write, 99, 1, DataBuf::One(IoBuf::new(512))).result,
        Ok(())
    );
    assert_eq!(
        run(ch, IoOp::Write, 99, 2, DataBuf::One(IoBuf::new(1024))).result,
        Err(IoError::Nvme(Status::WRITE_FAULT)),
        "overlap"
    );
    let reads: Vec<_> = (0..6)
        .map(|_| run(ch, IoOp::Read, 0, 1, DataBuf::One(IoBuf::new(512))).result)
        .collect();
    let failed = reads.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 2);
    assert_eq!(reads[2], Err(IoError::Nvme(Status::UNRECOVERED_READ_ERROR)));
    assert_eq!(e.injected(), 4);
}

#[test]
fn error_probability_is_reproducible_with_a_seed() {
    let count = |seed| {
        let e = ErrorBdev::new(
            ErrorParams {
                name: "e".into(),
                rules: vec![rule(
                    OpMatch::Any,
                    None,
                    Trigger::Probability(0.25),
                    ErrorAction::Fail(Status::INTERNAL_ERROR),
                )],
                seed,
            },
            malloc("m"),
        )
        .unwrap();
        let mut ch = e.open_channel().unwrap();
        (0..400)
            .filter(|_| {
                run(ch.as_mut(), IoOp::Flush, 0, 0, DataBuf::None)
                    .result
                    .is_err()
            })
            .count()
    };
    let a = count(7);
    assert_eq!(a, count(7));
    assert!((50..150).contains(&a), "{a} of 400 at p=0.25");
}

#[test]
fn error_corrupts_reads() {
    let e = ErrorBdev::new(
        ErrorParams {
            name: "e".into(),
            rules: vec![],
            seed: 1,
        },
        malloc("m"),
    )
    .unwrap();
    let mut ch = e.open_channel().unwrap();
    let data = pattern(512, 5);
    run(
        ch.as_mut(),
        IoOp::Write,
        10,
        1,
        DataBuf::One(IoBuf::from_slice(&data)),
    );
    e.set_rules(vec![rule(
        OpMatch::Op(IoOp::Read),
        Some((10, 11)),
        Trigger::EveryNth(1),
        ErrorAction::Corrupt,
    )])
    .unwrap();
    assert_ne!(read_back(ch.as_mut(), 10, 1), data);
    e.set_rules(vec![]).unwrap();
    assert_eq!(
        read_back(ch.as_mut(), 10, 1),
        data,
        "the stored data was not touched"
    );
}

#[test]
fn error_holds_until_release_and_reset_gives_back() {
    let e = ErrorBdev::new(
        ErrorParams {
            name: "e".into(),
            rules: vec![ErrorRule {
                op: OpMatch::Op(IoOp::Write),
                lba_range: None,
                trigger: Trigger::EveryNth(1),
                count: Some(2),
                action: ErrorAction::Hold,
            }],
            seed: 1,
        },
        malloc("m"),
    )
    .unwrap();
    let mut ch = e.open_channel().unwrap();
    let io = |tag| BdevIo {
        tag,
        op: IoOp::Write,
        lba: 1,
        blocks: 1,
        fua: false,
        buf: DataBuf::One(IoBuf::new(512)),
    };
    ch.submit(io(1)).unwrap();
    let mut got = Vec::new();
    std::thread::sleep(Duration::from_millis(20));
    ch.poll(&mut |c| got.push(c));
    assert!(got.is_empty());
    assert_eq!((ch.in_flight(), e.held_count()), (1, 1));
    e.release_held();
    ch.poll(&mut |c| got.push(c));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].result, Ok(()));
    // The second hold (count 2) comes back aborted on reset; a later release does nothing.
    ch.submit(io(2)).unwrap();
    assert_eq!(e.held_count(), 1);
    assert_eq!(ch.reset(), 0);
    got.clear();
    ch.poll(&mut |c| got.push(c));
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].tag, got[0].result), (2, Err(IoError::Aborted)));
    e.release_held();
    got.clear();
    ch.poll(&mut |c| got.push(c));
    assert!(got.is_empty());
    assert_eq!((ch.in_flight(), e.held_count()), (0, 0));
    // The count is spent: the next write goes through.
    assert_eq!(
        run(
            ch.as_mut(),
            IoOp::Write,
            1,
            1,
            DataBuf::One(IoBuf::new(512))
        )
        .result,
        Ok(())
    );
}

#[test]
fn error_stuck_survives_resets_until_released() {
    let e = ErrorBdev::new(
        ErrorParams {
            name: "e".into(),
            rules: vec![ErrorRule {
                op: OpMatch::Op(IoOp::Write),
                lba_range: None,
                trigger: Trigger::EveryNth(1),
                count: Some(1),
                action: ErrorAction::Stuck,
            }],
            seed: 1,
        },
        malloc("m"),
    )
    .unwrap();
    let mut ch = e.open_channel().unwrap();
    let mut data = IoBuf::new(512);
    data.as_mut_slice().fill(0xab);
    ch.submit(BdevIo {
        tag: 5,
        op: IoOp::Write,
        lba: 3,
        blocks: 1,
        fua: false,
        buf: DataBuf::One(data),
    })
    .unwrap();
    let mut got = Vec::new();
    // Resets report it as still held and give nothing back.
    for _ in 0..3 {
        assert_eq!(ch.reset(), 1);
        ch.poll(&mut |c| got.push(c));
        assert!(got.is_empty());
    }
    assert_eq!((ch.in_flight(), e.held_count(), e.resets()), (1, 1, 3));
    // Released, it proceeds normally: written, completed once.
    e.release_held();
    ch.poll(&mut |c| got.push(c));
    ch.poll(&mut |c| got.push(c));
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].tag, got[0].result), (5, Ok(())));
    assert_eq!((ch.in_flight(), e.held_count(), ch.reset()), (0, 0, 0));
    assert_eq!(read_back(ch.as_mut(), 3, 1), vec![0xab; 512]);
}

#[test]
fn delay_holds_completions_until_the_deadline() {
    let d = DelayBdev::new(
        DelayParams {
            name: "d".into(),
            latency: Latency::Fixed(Duration::from_millis(50)),
            seed: 1,
        },
        malloc("m"),
    )
    .unwrap();
    let mut ch = d.open_channel().unwrap();
    let t0 = Instant::now();
    ch.submit(BdevIo {
        tag: 1,
        op: IoOp::Flush,
        lba: 0,
        blocks: 0,
        fua: false,
        buf: DataBuf::None,
    })
    .unwrap();
    let mut got = 0;
    ch.poll(&mut |_| got += 1);
    assert_eq!((got, ch.in_flight()), (0, 1));
    while got == 0 && t0.elapsed() < Duration::from_secs(10) {
        ch.poll(&mut |_| got += 1);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got, 1);
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert_eq!(ch.in_flight(), 0);
}
