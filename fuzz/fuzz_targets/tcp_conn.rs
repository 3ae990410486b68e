//! One NVMe/TCP connection's state machine (transport-tcp `ConnCore`) fed
//! an arbitrary byte stream in arbitrary pieces: it never panics, every
//! capsule it hands out can be answered, and once it has failed it reads
//! nothing more and has queued a C2HTermReq (or the host sent an
//! H2CTermReq).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use target_core::nvmf::transport::Response;
use target_core::spec::{CompletionEntry, Status};
use transport_tcp::{ConnCore, ConnSettings};

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let settings = Arc::new(ConnSettings {
        in_capsule_data_size: 4096,
        maxh2cdata: 8192,
        max_xfer: 16384,
        ..ConnSettings::default()
    });
    let mut c = ConnCore::new(settings);
    // Feed in pieces of `split + 1` bytes, keeping what was not consumed,
    // as the socket loop does.
    let piece = split as usize + 1;
    let mut buf: Vec<u8> = Vec::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        let (used, _) = c.feed(&buf);
        assert!(used <= buf.len());
        buf.drain(..used);
        while let Some(cap) = c.next_capsule() {
            let status = if cap.sqe.cdw15 & 1 == 0 {
                Status::SUCCESS
            } else {
                Status::INVALID_FIELD
            };
            c.respond(Response {
                cqe: CompletionEntry::new(cap.sqe.cid(), status),
                buf: cap.buf,
            });
        }
        let n = c.tx_pending().len();
        c.tx_consume(n);
        if c.failed() {
            assert!(c.fatal.is_some());
            let (used, need) = c.feed(&buf);
            assert_eq!((used, need), (0, None), "a failed connection reads nothing");
            break;
        }
    }
});
