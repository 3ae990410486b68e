//! The NVMe/TCP PDU codec (NVMe/TCP Transport Specification 1.0, §3.6):
//! bytes in, PDUs out, and back. No I/O, no state beyond what the caller
//! passes in, so the target, the host and the fuzzer share it.
//!
//! Every PDU starts with the 8-byte common header (CH): type, flags, header
//! length (HLEN), PDU data offset (PDO) and total PDU length (PLEN). Then the
//! PDU-specific header, an optional header digest (HDGST, CRC32C of the
//! HLEN header bytes), padding up to PDO, the data, and an optional data
//! digest (DDGST, CRC32C of the data). Digests are stored little endian.
//! ICReq, ICResp and the two TermReq PDUs never carry digests.
//!
//! [`decode`] takes the front of a byte stream and returns either how many
//! bytes it needs or one PDU borrowing its data from the input; [`encode`]
//! appends one PDU to a byte vector. Errors carry the Fatal Error Status
//! and Fatal Error Information a C2HTermReq/H2CTermReq reports.
#![forbid(unsafe_code)]

use target_core::spec::{CompletionEntry, SubmissionEntry};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Length of a header or data digest.
pub const DIGEST_LEN: usize = 4;
/// Length of the common header.
pub const CH_LEN: usize = 8;
/// Smallest MAXH2CDATA a controller may advertise (§3.6.2.3).
pub const MIN_MAXH2CDATA: u32 = 4096;
/// Largest TermReq PDU: a 24-byte header and up to 128 bytes of the
/// offending PDU's header.
pub const MAX_TERM_PLEN: usize = 152;

/// PDU type (CH byte 0), an open set so any byte read off the wire is
/// representable.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct PduType(pub u8);

impl PduType {
    /// Initialize Connection Request.
    pub const IC_REQ: Self = Self(0x00);
    /// Initialize Connection Response.
    pub const IC_RESP: Self = Self(0x01);
    /// Host to Controller Terminate Connection Request.
    pub const H2C_TERM_REQ: Self = Self(0x02);
    /// Controller to Host Terminate Connection Request.
    pub const C2H_TERM_REQ: Self = Self(0x03);
    /// Command Capsule.
    pub const CAPSULE_CMD: Self = Self(0x04);
    /// Response Capsule.
    pub const CAPSULE_RESP: Self = Self(0x05);
    /// Host to Controller Data.
    pub const H2C_DATA: Self = Self(0x06);
    /// Controller to Host Data.
    pub const C2H_DATA: Self = Self(0x07);
    /// Ready to Transfer.
    pub const R2T: Self = Self(0x09);

    /// The fixed HLEN of this type, `None` for an unknown type.
    pub fn hlen(self) -> Option<usize> {
        Some(match self {
            Self::IC_REQ | Self::IC_RESP => 128,
            Self::H2C_TERM_REQ | Self::C2H_TERM_REQ => 24,
            Self::CAPSULE_CMD => 72,
            Self::CAPSULE_RESP | Self::H2C_DATA | Self::C2H_DATA | Self::R2T => 24,
            _ => return None,
        })
    }

    /// Whether PDUs of this type carry digests when they are negotiated.
    pub fn has_digests(self) -> bool {
        !matches!(
            self,
            Self::IC_REQ | Self::IC_RESP | Self::H2C_TERM_REQ | Self::C2H_TERM_REQ
        )
    }
}

/// CH flags (byte 1).
pub mod flags {
    /// HDGSTF: a header digest follows the header.
    pub const HDGSTF: u8 = 1 << 0;
    /// DDGSTF: a data digest follows the data.
    pub const DDGSTF: u8 = 1 << 1;
    /// LAST_PDU (H2CData, C2HData): the last data PDU of a transfer.
    pub const LAST_PDU: u8 = 1 << 2;
    /// SUCCESS (C2HData): the command completed successfully; no response
    /// capsule follows. Only with LAST_PDU, and only when the host disabled
    /// SQ flow control at Connect.
    pub const SUCCESS: u8 = 1 << 3;
}

/// ICReq/ICResp DGST byte.
pub mod dgst {
    /// HDGST_ENABLE.
    pub const HEADER: u8 = 1 << 0;
    /// DDGST_ENABLE.
    pub const DATA: u8 = 1 << 1;
}

/// Fatal Error Status of a TermReq (§3.6.2.4, Figure 28), an open set.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Fes(pub u16);

impl Fes {
    /// Invalid PDU Header Field; FEI is the byte offset of the field.
    pub const INVALID_PDU_HEADER_FIELD: Self = Self(0x01);
    /// PDU Sequence Error: a PDU the state of the connection does not allow.
    pub const PDU_SEQUENCE_ERROR: Self = Self(0x02);
    /// Header Digest Error.
    pub const HEADER_DIGEST_ERROR: Self = Self(0x03);
    /// Data Transfer Out of Range: data outside the command's buffer or
    /// the R2T's window.
    pub const DATA_TRANSFER_OUT_OF_RANGE: Self = Self(0x04);
    /// Data Transfer Limit Exceeded (R2T Limit Exceeded).
    pub const DATA_TRANSFER_LIMIT_EXCEEDED: Self = Self(0x05);
    /// Unsupported Parameter; FEI is the byte offset of the parameter.
    pub const UNSUPPORTED_PARAMETER: Self = Self(0x06);
}

// ---- wire structures (spec field names, sizes pinned) --------------------

/// Common header, 8 bytes (Figure 21).
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct CommonHeader {
    /// PDU type.
    pub pdu_type: u8,
    /// PDU-type-specific flags.
    pub flags: u8,
    /// Header length (CH and PSH).
    pub hlen: u8,
    /// PDU data offset from the start of the PDU (0: no data).
    pub pdo: u8,
    /// Total PDU length including digests.
    pub plen: U32,
}
const _: () = assert!(size_of::<CommonHeader>() == 8);

/// ICReq PDU, 128 bytes (Figure 26).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IcReqPdu {
    /// Common header.
    pub ch: CommonHeader,
    /// PDU Format Version (0).
    pub pfv: U16,
    /// Host PDU Data Alignment, in dwords, 0's based.
    pub hpda: u8,
    /// Digest types enabled ([`dgst`]).
    pub dgst: u8,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: U32,
    /// Reserved.
    pub rsvd: [u8; 112],
}
const _: () = assert!(size_of::<IcReqPdu>() == 128);

/// ICResp PDU, 128 bytes (Figure 27).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IcRespPdu {
    /// Common header.
    pub ch: CommonHeader,
    /// PDU Format Version (0).
    pub pfv: U16,
    /// Controller PDU Data Alignment, in dwords, 0's based.
    pub cpda: u8,
    /// Digest types enabled ([`dgst`]).
    pub dgst: u8,
    /// Largest H2CData PDU data the controller accepts, bytes.
    pub maxh2cdata: U32,
    /// Reserved.
    pub rsvd: [u8; 112],
}
const _: () = assert!(size_of::<IcRespPdu>() == 128);

/// H2CTermReq / C2HTermReq header, 24 bytes (Figures 28, 29).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TermReqPdu {
    /// Common header.
    pub ch: CommonHeader,
    /// Fatal Error Status.
    pub fes: U16,
    /// Fatal Error Information.
    pub fei: U32,
    /// Reserved.
    pub rsvd: [u8; 10],
}
const _: () = assert!(size_of::<TermReqPdu>() == 24);

/// CapsuleCmd header, 72 bytes (Figure 30): the SQE follows the CH.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CapsuleCmdPdu {
    /// Common header.
    pub ch: CommonHeader,
    /// Submission queue entry, as 64 raw bytes.
    pub sqe: [u8; 64],
}
const _: () = assert!(size_of::<CapsuleCmdPdu>() == 72);

/// CapsuleResp, 24 bytes (Figure 31): the CQE follows the CH.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CapsuleRespPdu {
    /// Common header.
    pub ch: CommonHeader,
    /// Completion queue entry, as 16 raw bytes.
    pub cqe: [u8; 16],
}
const _: () = assert!(size_of::<CapsuleRespPdu>() == 24);

/// H2CData / C2HData header, 24 bytes (Figures 32, 33).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DataPduHeader {
    /// Common header.
    pub ch: CommonHeader,
    /// Command Capsule CID.
    pub cccid: U16,
    /// Transfer tag from the R2T (H2CData); reserved in C2HData.
    pub ttag: U16,
    /// Data offset in the command's buffer.
    pub datao: U32,
    /// Data length in this PDU.
    pub datal: U32,
    /// Reserved.
    pub rsvd: [u8; 4],
}
const _: () = assert!(size_of::<DataPduHeader>() == 24);

/// R2T, 24 bytes (Figure 34).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct R2tPdu {
    /// Common header.
    pub ch: CommonHeader,
    /// Command Capsule CID.
    pub cccid: U16,
    /// Transfer tag the H2CData PDUs must carry.
    pub ttag: U16,
    /// R2T offset in the command's buffer.
    pub r2to: U32,
    /// R2T length.
    pub r2tl: U32,
    /// Reserved.
    pub rsvd: [u8; 4],
}
const _: () = assert!(size_of::<R2tPdu>() == 24);

/// Byte offsets named by FEI in errors.
pub mod offset {
    /// CH PDU-type byte.
    pub const PDU_TYPE: u32 = 0;
    /// CH flags byte.
    pub const FLAGS: u32 = 1;
    /// CH HLEN byte.
    pub const HLEN: u32 = 2;
    /// CH PDO byte.
    pub const PDO: u32 = 3;
    /// CH PLEN.
    pub const PLEN: u32 = 4;
    /// ICReq PFV.
    pub const PFV: u32 = 8;
    /// ICReq HPDA.
    pub const HPDA: u32 = 10;
    /// ICReq DGST.
    pub const DGST: u32 = 11;
    /// ICReq MAXR2T.
    pub const MAXR2T: u32 = 12;
    /// H2CData CCCID.
    pub const CCCID: u32 = 8;
    /// H2CData TTAG.
    pub const TTAG: u32 = 10;
    /// H2CData DATAO.
    pub const DATAO: u32 = 12;
    /// H2CData DATAL.
    pub const DATAL: u32 = 16;
}

// ---- logical PDUs ---------------------------------------------------------

/// ICReq fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IcReq {
    /// PDU Format Version.
    pub pfv: u16,
    /// Host PDU data alignment (0's based dwords).
    pub hpda: u8,
    /// Header digest requested.
    pub hdgst: bool,
    /// Data digest requested.
    pub ddgst: bool,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

/// ICResp fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IcResp {
    /// PDU Format Version.
    pub pfv: u16,
    /// Controller PDU data alignment (0's based dwords).
    pub cpda: u8,
    /// Header digest enabled.
    pub hdgst: bool,
    /// Data digest enabled.
    pub ddgst: bool,
    /// Largest H2CData data length the controller accepts.
    pub maxh2cdata: u32,
}

/// A TermReq (either direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermReq<'a> {
    /// Fatal Error Status.
    pub fes: Fes,
    /// Fatal Error Information.
    pub fei: u32,
    /// The offending PDU header (up to 128 bytes).
    pub data: &'a [u8],
}

/// A command capsule: the SQE and its in-capsule data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsuleCmd<'a> {
    /// The submission entry.
    pub sqe: SubmissionEntry,
    /// In-capsule data (empty when none).
    pub data: &'a [u8],
}

/// An H2CData or C2HData PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPdu<'a> {
    /// Command Capsule CID.
    pub cccid: u16,
    /// Transfer tag (H2CData only).
    pub ttag: u16,
    /// Offset of `data` in the command's buffer.
    pub datao: u32,
    /// LAST_PDU flag.
    pub last: bool,
    /// SUCCESS flag (C2HData only).
    pub success: bool,
    /// The data.
    pub data: &'a [u8],
}

/// An R2T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct R2t {
    /// Command Capsule CID.
    pub cccid: u16,
    /// Transfer tag.
    pub ttag: u16,
    /// Offset requested.
    pub r2to: u32,
    /// Length requested.
    pub r2tl: u32,
}

/// One PDU, borrowing its data from the buffer it was decoded from (or
/// that it will be encoded from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pdu<'a> {
    /// Initialize Connection Request (host → controller).
    IcReq(IcReq),
    /// Initialize Connection Response (controller → host).
    IcResp(IcResp),
    /// Host terminates the connection.
    H2CTermReq(TermReq<'a>),
    /// Controller terminates the connection.
    C2HTermReq(TermReq<'a>),
    /// Command capsule (host → controller).
    CapsuleCmd(CapsuleCmd<'a>),
    /// Response capsule (controller → host).
    CapsuleResp(CompletionEntry),
    /// Write data (host → controller), answering an R2T.
    H2CData(DataPdu<'a>),
    /// Read data (controller → host).
    C2HData(DataPdu<'a>),
    /// Ready to Transfer (controller → host).
    R2t(R2t),
}

impl Pdu<'_> {
    /// The PDU type.
    pub fn pdu_type(&self) -> PduType {
        match self {
            Pdu::IcReq(_) => PduType::IC_REQ,
            Pdu::IcResp(_) => PduType::IC_RESP,
            Pdu::H2CTermReq(_) => PduType::H2C_TERM_REQ,
            Pdu::C2HTermReq(_) => PduType::C2H_TERM_REQ,
            Pdu::CapsuleCmd(_) => PduType::CAPSULE_CMD,
            Pdu::CapsuleResp(_) => PduType::CAPSULE_RESP,
            Pdu::H2CData(_) => PduType::H2C_DATA,
            Pdu::C2HData(_) => PduType::C2H_DATA,
            Pdu::R2t(_) => PduType::R2T,
        }
    }

    /// The PDU's data section (empty when it has none).
    pub fn data(&self) -> &[u8] {
        match self {
            Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => t.data,
            Pdu::CapsuleCmd(c) => c.data,
            Pdu::H2CData(d) | Pdu::C2HData(d) => d.data,
            _ => &[],
        }
    }
}

/// Which digests the connection negotiated, and the largest PDU accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecParams {
    /// Header digests on.
    pub header_digest: bool,
    /// Data digests on.
    pub data_digest: bool,
    /// Largest PLEN accepted (the receive buffer's size).
    pub max_plen: usize,
}

impl Default for CodecParams {
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            max_plen: 8192 + 128,
        }
    }
}

/// Why a byte stream is not a valid PDU: what a TermReq reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} (FES {fes:?}, FEI {fei})")]
pub struct PduError {
    /// Fatal Error Status.
    pub fes: Fes,
    /// Fatal Error Information (usually the offending byte offset).
    pub fei: u32,
    /// What was wrong, for the log line.
    pub what: &'static str,
}

impl PduError {
    fn field(fei: u32, what: &'static str) -> Self {
        Self {
            fes: Fes::INVALID_PDU_HEADER_FIELD,
            fei,
            what,
        }
    }
}

/// Result of [`decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The input holds less than one PDU: at least `need` bytes are needed.
    Incomplete {
        /// Bytes the whole PDU (or its common header) needs.
        need: usize,
    },
    /// One PDU of `len` bytes.
    Pdu {
        /// The PDU.
        pdu: Pdu<'a>,
        /// Bytes it took from the input.
        len: usize,
        /// The data digest did not match. Not fatal by itself: the spec
        /// completes the command with Transient Transport Error.
        data_digest_error: bool,
    },
}

/// CRC32C as NVMe/TCP digests use it.
#[inline]
pub fn digest(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Decodes the PDU at the front of `buf`. Never panics on any input.
pub fn decode<'a>(buf: &'a [u8], p: &CodecParams) -> Result<Decoded<'a>, PduError> {
    if buf.len() < CH_LEN {
        return Ok(Decoded::Incomplete { need: CH_LEN });
    }
    let ty = PduType(buf[0]);
    let fl = buf[1];
    let hlen = buf[2] as usize;
    let pdo = buf[3] as usize;
    let plen = u32_at(buf, 4) as usize;
    let Some(want_hlen) = ty.hlen() else {
        return Err(PduError::field(offset::PDU_TYPE, "unknown PDU type"));
    };
    if hlen != want_hlen {
        return Err(PduError::field(offset::HLEN, "wrong HLEN for the PDU type"));
    }
    let digests = ty.has_digests();
    let hd = if digests && p.header_digest {
        DIGEST_LEN
    } else {
        0
    };
    if digests && ((fl & flags::HDGSTF != 0) != p.header_digest) {
        return Err(PduError::field(
            offset::FLAGS,
            "HDGSTF does not match the negotiated header digest",
        ));
    }
    if !digests && fl & (flags::HDGSTF | flags::DDGSTF) != 0 {
        return Err(PduError::field(
            offset::FLAGS,
            "digest flag on a PDU without digests",
        ));
    }
    let max = if matches!(ty, PduType::H2C_TERM_REQ | PduType::C2H_TERM_REQ) {
        MAX_TERM_PLEN
    } else {
        p.max_plen.max(hlen + hd)
    };
    if plen < hlen + hd || plen > max {
        return Err(PduError {
            fes: if plen > max {
                Fes::DATA_TRANSFER_LIMIT_EXCEEDED
            } else {
                Fes::INVALID_PDU_HEADER_FIELD
            },
            fei: offset::PLEN,
            what: "PLEN out of range",
        });
    }
    if ty.has_digests() && plen == hlen + hd && pdo != 0 {
        return Err(PduError::field(
            offset::PDO,
            "PDO set on a PDU without data",
        ));
    }
    if buf.len() < plen {
        return Ok(Decoded::Incomplete { need: plen });
    }
    let pdu_bytes = &buf[..plen];
    let hdr = &pdu_bytes[..hlen];
    if hd != 0 && u32_at(pdu_bytes, hlen) != digest(hdr) {
        return Err(PduError {
            fes: Fes::HEADER_DIGEST_ERROR,
            fei: 0,
            what: "header digest mismatch",
        });
    }
    // The data section: TermReq data follows the header directly; other
    // PDUs place it at PDO and may end it with a data digest.
    let mut data: &[u8] = &[];
    let mut data_digest_error = false;
    if !digests {
        data = &pdu_bytes[hlen..];
        if !data.is_empty() && !matches!(ty, PduType::H2C_TERM_REQ | PduType::C2H_TERM_REQ) {
            return Err(PduError::field(offset::PLEN, "data on an ICReq/ICResp"));
        }
    } else if plen > hlen + hd {
        let dd = if fl & flags::DDGSTF != 0 {
            DIGEST_LEN
        } else {
            0
        };
        if (dd != 0) != p.data_digest {
            return Err(PduError::field(
                offset::FLAGS,
                "DDGSTF does not match the negotiated data digest",
            ));
        }
        if pdo < hlen + hd || pdo + dd > plen {
            return Err(PduError::field(offset::PDO, "PDO out of range"));
        }
        data = &pdu_bytes[pdo..plen - dd];
        if dd != 0 {
            data_digest_error = u32_at(pdu_bytes, plen - dd) != digest(data);
        }
        if data.is_empty() {
            return Err(PduError::field(offset::PLEN, "empty data section"));
        }
    } else if fl & flags::DDGSTF != 0 {
        return Err(PduError::field(
            offset::FLAGS,
            "DDGSTF on a PDU without data",
        ));
    }
    let pdu = match ty {
        PduType::IC_REQ => Pdu::IcReq(IcReq {
            pfv: u16_at(hdr, 8),
            hpda: hdr[10],
            hdgst: hdr[11] & dgst::HEADER != 0,
            ddgst: hdr[11] & dgst::DATA != 0,
            maxr2t: u32_at(hdr, 12),
        }),
        PduType::IC_RESP => Pdu::IcResp(IcResp {
            pfv: u16_at(hdr, 8),
            cpda: hdr[10],
            hdgst: hdr[11] & dgst::HEADER != 0,
            ddgst: hdr[11] & dgst::DATA != 0,
            maxh2cdata: u32_at(hdr, 12),
        }),
        PduType::H2C_TERM_REQ | PduType::C2H_TERM_REQ => {
            let t = TermReq {
                fes: Fes(u16_at(hdr, 8)),
                fei: u32_at(hdr, 10),
                data,
            };
            if ty == PduType::H2C_TERM_REQ {
                Pdu::H2CTermReq(t)
            } else {
                Pdu::C2HTermReq(t)
            }
        }
        PduType::CAPSULE_CMD => {
            let sqe = SubmissionEntry::read_from_bytes(&hdr[CH_LEN..72])
                .map_err(|_| PduError::field(offset::HLEN, "short SQE"))?;
            Pdu::CapsuleCmd(CapsuleCmd { sqe, data })
        }
        PduType::CAPSULE_RESP => {
            if !data.is_empty() {
                return Err(PduError::field(offset::PDO, "data on a response capsule"));
            }
            let cqe = CompletionEntry::read_from_bytes(&hdr[CH_LEN..24])
                .map_err(|_| PduError::field(offset::HLEN, "short CQE"))?;
            Pdu::CapsuleResp(cqe)
        }
        PduType::H2C_DATA | PduType::C2H_DATA => {
            let datal = u32_at(hdr, 16) as usize;
            if datal != data.len() || data.is_empty() {
                return Err(PduError::field(
                    offset::DATAL,
                    "DATAL does not match the data",
                ));
            }
            let success = fl & flags::SUCCESS != 0;
            let last = fl & flags::LAST_PDU != 0;
            if ty == PduType::H2C_DATA && success {
                return Err(PduError::field(offset::FLAGS, "SUCCESS on H2CData"));
            }
            if success && !last {
                return Err(PduError::field(offset::FLAGS, "SUCCESS without LAST_PDU"));
            }
            let d = DataPdu {
                cccid: u16_at(hdr, 8),
                ttag: u16_at(hdr, 10),
                datao: u32_at(hdr, 12),
                last,
                success,
                data,
            };
            if ty == PduType::H2C_DATA {
                Pdu::H2CData(d)
            } else {
                Pdu::C2HData(d)
            }
        }
        PduType::R2T => {
            if !data.is_empty() {
                return Err(PduError::field(offset::PDO, "data on an R2T"));
            }
            Pdu::R2t(R2t {
                cccid: u16_at(hdr, 8),
                ttag: u16_at(hdr, 10),
                r2to: u32_at(hdr, 12),
                r2tl: u32_at(hdr, 16),
            })
        }
        _ => return Err(PduError::field(offset::PDU_TYPE, "unknown PDU type")),
    };
    Ok(Decoded::Pdu {
        pdu,
        len: plen,
        data_digest_error,
    })
}

/// Bytes [`encode`] will append for `pdu`.
pub fn encoded_len(pdu: &Pdu<'_>, p: &CodecParams) -> usize {
    let ty = pdu.pdu_type();
    let hlen = ty.hlen().unwrap_or(0);
    let data = pdu.data().len();
    if !ty.has_digests() {
        return hlen + data;
    }
    let hd = if p.header_digest { DIGEST_LEN } else { 0 };
    let dd = if p.data_digest && data > 0 {
        DIGEST_LEN
    } else {
        0
    };
    hlen + hd + data + dd
}

/// Appends `pdu` to `out`, with the digests `p` asks for (PDO = HLEN plus
/// the header digest: no padding, CPDA/HPDA 0).
pub fn encode(pdu: &Pdu<'_>, p: &CodecParams, out: &mut Vec<u8>) {
    let ty = pdu.pdu_type();
    let hlen = ty.hlen().unwrap_or(0);
    let data = pdu.data();
    let digests = ty.has_digests();
    let hd = digests && p.header_digest;
    let dd = digests && p.data_digest && !data.is_empty();
    let mut fl = 0u8;
    if hd {
        fl |= flags::HDGSTF;
    }
    if dd {
        fl |= flags::DDGSTF;
    }
    let pdo = if digests && !data.is_empty() {
        hlen + if hd { DIGEST_LEN } else { 0 }
    } else {
        0
    };
    let plen = encoded_len(pdu, p);
    let start = out.len();
    let mut ch = CommonHeader {
        pdu_type: ty.0,
        flags: fl,
        hlen: hlen as u8,
        pdo: pdo as u8,
        plen: U32::new(plen as u32),
    };
    match pdu {
        Pdu::IcReq(r) => {
            let w = IcReqPdu {
                ch,
                pfv: U16::new(r.pfv),
                hpda: r.hpda,
                dgst: (r.hdgst as u8 * dgst::HEADER) | (r.ddgst as u8 * dgst::DATA),
                maxr2t: U32::new(r.maxr2t),
                rsvd: [0; 112],
            };
            out.extend_from_slice(w.as_bytes());
        }
        Pdu::IcResp(r) => {
            let w = IcRespPdu {
                ch,
                pfv: U16::new(r.pfv),
                cpda: r.cpda,
                dgst: (r.hdgst as u8 * dgst::HEADER) | (r.ddgst as u8 * dgst::DATA),
                maxh2cdata: U32::new(r.maxh2cdata),
                rsvd: [0; 112],
            };
            out.extend_from_slice(w.as_bytes());
        }
        Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => {
            let w = TermReqPdu {
                ch,
                fes: U16::new(t.fes.0),
                fei: U32::new(t.fei),
                rsvd: [0; 10],
            };
            out.extend_from_slice(w.as_bytes());
        }
        Pdu::CapsuleCmd(c) => {
            let w = CapsuleCmdPdu {
                ch,
                sqe: c.sqe.to_bytes(),
            };
            out.extend_from_slice(w.as_bytes());
        }
        Pdu::CapsuleResp(cqe) => {
            let mut raw = [0u8; 16];
            raw.copy_from_slice(cqe.as_bytes());
            let w = CapsuleRespPdu { ch, cqe: raw };
            out.extend_from_slice(w.as_bytes());
        }
        Pdu::H2CData(d) | Pdu::C2HData(d) => {
            if d.last {
                ch.flags |= flags::LAST_PDU;
            }
            if d.success {
                ch.flags |= flags::SUCCESS;
            }
            let w = DataPduHeader {
                ch,
                cccid: U16::new(d.cccid),
                ttag: U16::new(d.ttag),
                datao: U32::new(d.datao),
                datal: U32::new(d.data.len() as u32),
                rsvd: [0; 4],
            };
            out.extend_from_slice(w.as_bytes());
        }
        Pdu::R2t(r) => {
            let w = R2tPdu {
                ch,
                cccid: U16::new(r.cccid),
                ttag: U16::new(r.ttag),
                r2to: U32::new(r.r2to),
                r2tl: U32::new(r.r2tl),
                rsvd: [0; 4],
            };
            out.extend_from_slice(w.as_bytes());
        }
    }
    if hd {
        let d = digest(&out[start..start + hlen]);
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(data);
    if dd {
        out.extend_from_slice(&digest(data).to_le_bytes());
    }
}

#[cfg(test)]
mod tests;
