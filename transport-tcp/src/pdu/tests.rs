//! Byte layouts checked by hand against the NVMe/TCP transport
//! specification's figures, then every PDU type round-tripped.

use super::*;
use target_core::spec::Status;

fn plain() -> CodecParams {
    CodecParams {
        header_digest: false,
        data_digest: false,
        max_plen: 1 << 20,
    }
}

fn both() -> CodecParams {
    CodecParams {
        header_digest: true,
        data_digest: true,
        max_plen: 1 << 20,
    }
}

fn one<'a>(buf: &'a [u8], p: &CodecParams) -> (Pdu<'a>, usize, bool) {
    match decode(buf, p) {
        Ok(Decoded::Pdu {
            pdu,
            len,
            data_digest_error,
        }) => (pdu, len, data_digest_error),
        other => panic!("expected a PDU, got {other:?}"),
    }
}

#[test]
fn crc32c_check_value() {
    // The CRC-32C (Castagnoli) check value of "123456789" (RFC 3720 B.4).
    assert_eq!(digest(b"123456789"), 0xe306_9283);
}

#[test]
fn icreq_layout() {
    // A Linux host asking for both digests, MAXR2T 0 (one R2T), HPDA 0.
    let mut b = vec![0x00, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00];
    b.extend_from_slice(&[0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00]);
    b.resize(128, 0);
    let (pdu, len, _) = one(&b, &plain());
    assert_eq!(len, 128);
    assert_eq!(
        pdu,
        Pdu::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: true,
            ddgst: true,
            maxr2t: 0
        })
    );
    let mut out = Vec::new();
    encode(&pdu, &both(), &mut out);
    assert_eq!(out, b, "ICReq never carries digests, even when negotiated");
}

#[test]
fn icresp_layout() {
    let mut out = Vec::new();
    let r = IcResp {
        pfv: 0,
        cpda: 0,
        hdgst: false,
        ddgst: true,
        maxh2cdata: 0x10000,
    };
    encode(&Pdu::IcResp(r), &plain(), &mut out);
    let mut want = vec![0x01, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00];
    want.extend_from_slice(&[0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00]);
    want.resize(128, 0);
    assert_eq!(out, want);
    assert_eq!(one(&out, &plain()).0, Pdu::IcResp(r));
}

#[test]
fn capsule_resp_layout() {
    let mut cqe = CompletionEntry::new(0x1234, Status::SUCCESS);
    cqe.dw0 = 0xaabb_ccdd;
    cqe.sqhd = 5;
    cqe.sqid = 1;
    let mut out = Vec::new();
    encode(&Pdu::CapsuleResp(cqe), &plain(), &mut out);
    let want = [
        0x05, 0x00, 0x18, 0x00, 0x18, 0x00, 0x00, 0x00, // CH: plen 24
        0xdd, 0xcc, 0xbb, 0xaa, 0, 0, 0, 0, // DW0, DW1
        0x05, 0x00, 0x01, 0x00, 0x34, 0x12, 0x00, 0x00, // SQHD, SQID, CID, status
    ];
    assert_eq!(out, want);
    assert_eq!(one(&out, &plain()).0, Pdu::CapsuleResp(cqe));
}

#[test]
fn c2h_data_last_success_layout() {
    let d = DataPdu {
        cccid: 0x0102,
        ttag: 0,
        datao: 0x1000,
        last: true,
        success: true,
        data: &[1, 2, 3, 4],
    };
    let mut out = Vec::new();
    encode(&Pdu::C2HData(d), &plain(), &mut out);
    let want = [
        0x07, 0x0c, 0x18, 0x18, 0x1c, 0x00, 0x00, 0x00, // LAST|SUCCESS, PDO 24, PLEN 28
        0x02, 0x01, 0x00, 0x00, // CCCID, reserved TTAG
        0x00, 0x10, 0x00, 0x00, // DATAO
        0x04, 0x00, 0x00, 0x00, // DATAL
        0, 0, 0, 0, // reserved
        1, 2, 3, 4,
    ];
    assert_eq!(out, want);
    assert_eq!(one(&out, &plain()).0, Pdu::C2HData(d));
}

#[test]
fn r2t_with_header_digest_layout() {
    let p = CodecParams {
        header_digest: true,
        ..plain()
    };
    let r = R2t {
        cccid: 7,
        ttag: 3,
        r2to: 0,
        r2tl: 0x2000,
    };
    let mut out = Vec::new();
    encode(&Pdu::R2t(r), &p, &mut out);
    let hdr = [
        0x09, 0x01, 0x18, 0x00, 0x1c, 0x00, 0x00, 0x00, // HDGSTF, no data: PDO 0
        0x07, 0x00, 0x03, 0x00, 0, 0, 0, 0, 0x00, 0x20, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(out[..24], hdr);
    assert_eq!(out[24..], digest(&hdr).to_le_bytes());
    assert_eq!(one(&out, &p).0, Pdu::R2t(r));
}

#[test]
fn capsule_cmd_with_data_and_both_digests_layout() {
    let mut sqe = SubmissionEntry::new(0x01, 0x0042);
    sqe.nsid = 1;
    let data = [0xabu8; 512];
    let mut out = Vec::new();
    encode(
        &Pdu::CapsuleCmd(CapsuleCmd { sqe, data: &data }),
        &both(),
        &mut out,
    );
    assert_eq!(out[0], 0x04);
    assert_eq!(out[1], flags::HDGSTF | flags::DDGSTF);
    assert_eq!(out[2], 72);
    assert_eq!(out[3], 76, "PDO: header plus its digest");
    assert_eq!(
        u32::from_le_bytes(out[4..8].try_into().unwrap()),
        72 + 4 + 512 + 4
    );
    assert_eq!(out[8..72], sqe.to_bytes());
    assert_eq!(out[72..76], digest(&out[..72]).to_le_bytes());
    assert_eq!(out[76..588], data);
    assert_eq!(out[588..], digest(&data).to_le_bytes());
    let (pdu, len, dde) = one(&out, &both());
    assert_eq!(len, out.len());
    assert!(!dde);
    assert_eq!(pdu, Pdu::CapsuleCmd(CapsuleCmd { sqe, data: &data }));
}

#[test]
fn term_req_layout() {
    let t = TermReq {
        fes: Fes::HEADER_DIGEST_ERROR,
        fei: 0,
        data: &[9; 8],
    };
    let mut out = Vec::new();
    encode(&Pdu::C2HTermReq(t), &both(), &mut out);
    let mut want = vec![0x03, 0x00, 0x18, 0x00, 0x20, 0x00, 0x00, 0x00, 0x03, 0x00];
    want.resize(24, 0);
    want.extend_from_slice(&[9; 8]);
    assert_eq!(out, want);
    assert_eq!(one(&out, &both()).0, Pdu::C2HTermReq(t));
}

#[test]
fn every_type_round_trips_with_and_without_digests() {
    let sqe = SubmissionEntry::new(0x02, 9);
    let pdus = [
        Pdu::IcReq(IcReq {
            maxr2t: 3,
            hpda: 1,
            ..Default::default()
        }),
        Pdu::IcResp(IcResp {
            maxh2cdata: 4096,
            ..Default::default()
        }),
        Pdu::H2CTermReq(TermReq {
            fes: Fes::PDU_SEQUENCE_ERROR,
            fei: 17,
            data: &[],
        }),
        Pdu::CapsuleCmd(CapsuleCmd { sqe, data: &[] }),
        Pdu::CapsuleCmd(CapsuleCmd {
            sqe,
            data: &[5; 33],
        }),
        Pdu::CapsuleResp(CompletionEntry::new(9, Status::INVALID_FIELD)),
        Pdu::H2CData(DataPdu {
            cccid: 9,
            ttag: 2,
            datao: 512,
            last: false,
            success: false,
            data: &[1; 100],
        }),
        Pdu::C2HData(DataPdu {
            cccid: 9,
            ttag: 0,
            datao: 0,
            last: true,
            success: false,
            data: &[2; 7],
        }),
        Pdu::R2t(R2t {
            cccid: 1,
            ttag: 2,
            r2to: 3,
            r2tl: 4,
        }),
    ];
    for p in [plain(), both()] {
        let mut stream = Vec::new();
        for pdu in &pdus {
            let before = stream.len();
            encode(pdu, &p, &mut stream);
            assert_eq!(stream.len() - before, encoded_len(pdu, &p));
        }
        let mut off = 0;
        for pdu in &pdus {
            let (got, len, dde) = one(&stream[off..], &p);
            assert_eq!(&got, pdu);
            assert!(!dde);
            off += len;
        }
        assert_eq!(off, stream.len());
    }
}

#[test]
fn incomplete_input_asks_for_more() {
    let mut out = Vec::new();
    encode(
        &Pdu::CapsuleCmd(CapsuleCmd {
            sqe: SubmissionEntry::new(1, 1),
            data: &[0; 64],
        }),
        &plain(),
        &mut out,
    );
    assert_eq!(
        decode(&out[..3], &plain()),
        Ok(Decoded::Incomplete { need: 8 })
    );
    assert_eq!(
        decode(&out[..100], &plain()),
        Ok(Decoded::Incomplete { need: 72 + 64 })
    );
}

fn err(buf: &[u8], p: &CodecParams) -> PduError {
    match decode(buf, p) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn bad_headers_name_the_field() {
    let mut b = vec![0x08, 0, 24, 0, 24, 0, 0, 0];
    b.resize(24, 0);
    let e = err(&b, &plain());
    assert_eq!(
        (e.fes, e.fei),
        (Fes::INVALID_PDU_HEADER_FIELD, offset::PDU_TYPE)
    );
    b[0] = 0x05;
    b[2] = 25;
    let e = err(&b, &plain());
    assert_eq!(
        (e.fes, e.fei),
        (Fes::INVALID_PDU_HEADER_FIELD, offset::HLEN)
    );
    b[2] = 24;
    b[4] = 20; // PLEN below HLEN
    assert_eq!(err(&b, &plain()).fei, offset::PLEN);
    b[4..8].copy_from_slice(&(2u32 << 20).to_le_bytes());
    assert_eq!(err(&b, &plain()).fes, Fes::DATA_TRANSFER_LIMIT_EXCEEDED);
    // HDGSTF set but digests were not negotiated.
    b[4..8].copy_from_slice(&28u32.to_le_bytes());
    b[1] = flags::HDGSTF;
    assert_eq!(err(&b, &plain()).fei, offset::FLAGS);
}

#[test]
fn header_digest_error_is_fatal_data_digest_error_is_reported() {
    let mut out = Vec::new();
    let data = [7u8; 16];
    encode(
        &Pdu::CapsuleCmd(CapsuleCmd {
            sqe: SubmissionEntry::new(1, 1),
            data: &data,
        }),
        &both(),
        &mut out,
    );
    let mut bad = out.clone();
    bad[20] ^= 1;
    assert_eq!(err(&bad, &both()).fes, Fes::HEADER_DIGEST_ERROR);
    let mut bad = out.clone();
    let n = bad.len();
    bad[n - 5] ^= 1; // last data byte
    assert!(one(&bad, &both()).2, "data digest mismatch is flagged");
}

#[test]
fn data_pdus_check_datal_and_flags() {
    let d = DataPdu {
        cccid: 1,
        ttag: 1,
        datao: 0,
        last: true,
        success: false,
        data: &[0; 8],
    };
    let mut out = Vec::new();
    encode(&Pdu::H2CData(d), &plain(), &mut out);
    let mut bad = out.clone();
    bad[16] = 9; // DATAL 9 with 8 bytes of data
    assert_eq!(err(&bad, &plain()).fei, offset::DATAL);
    let mut bad = out.clone();
    bad[1] |= flags::SUCCESS;
    assert_eq!(err(&bad, &plain()).fei, offset::FLAGS);
    let mut out = Vec::new();
    encode(
        &Pdu::C2HData(DataPdu {
            last: false,
            success: true,
            ..d
        }),
        &plain(),
        &mut out,
    );
    assert_eq!(
        err(&out, &plain()).fei,
        offset::FLAGS,
        "SUCCESS needs LAST_PDU"
    );
}
