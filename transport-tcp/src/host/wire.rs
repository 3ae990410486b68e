//! One NVMe/TCP connection as the host sees it: a non-blocking socket, a
//! receive buffer the codec decodes from, and a send buffer it encodes
//! into. Both buffers are allocated once per connection; nothing on the
//! I/O path allocates once they reached their working size.
//!
//! Besides the polled byte pump it offers two blocking, bounded helpers
//! for set-up only: [`Wire::open`] (TCP connect, ICReq/ICResp) and
//! [`Wire::exchange`] (one command, e.g. Fabrics Connect, before the queue
//! pair's command table exists).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use target_core::spec::sqe::Psdt;
use target_core::spec::{CompletionEntry, SubmissionEntry};

use super::HostError;
use crate::pdu::{self, CapsuleCmd, CodecParams, DataPdu, Decoded, Fes, IcReq, Pdu, TermReq};

/// SGL descriptor type byte: Data Block, Offset subtype (in-capsule data).
pub(crate) const SGL_IN_CAPSULE: u64 = 0x01;
/// SGL descriptor type byte: Transport Data Block, transport subtype
/// (data moved by R2T/H2CData or C2HData).
pub(crate) const SGL_TRANSPORT: u64 = 0x5a;

/// Sets the SGL data pointer: `len` bytes, in capsule or by the transport.
pub(crate) fn set_sgl(sqe: &mut SubmissionEntry, len: u32, in_capsule: bool) {
    sqe.set_psdt(Psdt::SglMptrContiguous);
    let ty = if in_capsule {
        SGL_IN_CAPSULE
    } else {
        SGL_TRANSPORT
    };
    sqe.dptr = [0, len as u64 | (ty << 56)];
}

/// Pause between polls of the blocking set-up helpers.
const SETUP_POLL: Duration = Duration::from_micros(100);

/// The socket and its buffers.
#[derive(Debug)]
pub(crate) struct Wire {
    sock: TcpStream,
    /// Digests negotiated; `max_plen` is the receive buffer's size.
    pub codec: CodecParams,
    /// Largest H2CData data the controller accepts.
    pub maxh2cdata: u32,
    pub rx: Vec<u8>,
    pub rx_start: usize,
    pub rx_end: usize,
    pub tx: Vec<u8>,
    tx_off: usize,
    /// Where the connection goes, for error messages.
    pub peer: SocketAddr,
}

/// Resolves `host:port` (IPv4, IPv6 in brackets, or a name).
pub(crate) fn resolve(addr: &str) -> Result<Vec<SocketAddr>, HostError> {
    let v: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| HostError::Invalid(format!("address {addr:?}: {e}")))?
        .collect();
    if v.is_empty() {
        return Err(HostError::Invalid(format!(
            "address {addr:?} resolves to nothing"
        )));
    }
    Ok(v)
}

impl Wire {
    /// Connects to `addr` and runs the ICReq/ICResp exchange, asking for
    /// the digests given. `rx_cap` bounds the largest PDU accepted (the
    /// largest command data plus headers). Bounded by `timeout`.
    pub fn open(
        addr: &str,
        hdgst: bool,
        ddgst: bool,
        rx_cap: usize,
        timeout: Duration,
    ) -> Result<Self, HostError> {
        let mut last = None;
        let mut sock = None;
        for a in resolve(addr)? {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = Some(format!("{a}: {e}")),
            }
        }
        let Some(sock) = sock else {
            return Err(HostError::Io(format!(
                "cannot connect to {addr}: {}",
                last.unwrap_or_default()
            )));
        };
        let io = |e: std::io::Error| HostError::Io(format!("{addr}: {e}"));
        let peer = sock.peer_addr().map_err(io)?;
        sock.set_nodelay(true).map_err(io)?;
        sock.set_nonblocking(true).map_err(io)?;
        let rx_cap = rx_cap.max(pdu::MIN_MAXH2CDATA as usize + 256);
        let mut w = Self {
            sock,
            codec: CodecParams {
                header_digest: false,
                data_digest: false,
                max_plen: rx_cap,
            },
            maxh2cdata: 0,
            rx: vec![0; rx_cap],
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(64 * 1024),
            tx_off: 0,
            peer,
        };
        pdu::encode(
            &Pdu::IcReq(IcReq {
                pfv: 0,
                hpda: 0,
                hdgst,
                ddgst,
                maxr2t: 0,
            }),
            &w.codec,
            &mut w.tx,
        );
        let deadline = Instant::now() + timeout;
        let resp = loop {
            w.flush()?;
            match w.decode_front()? {
                Some((Pdu::IcResp(r), len, _)) => {
                    w.rx_start += len;
                    break r;
                }
                Some((p, _, _)) => {
                    return Err(w.unexpected(&p, "ICResp"));
                }
                None => {}
            }
            if !w.fill()? {
                if Instant::now() > deadline {
                    return Err(HostError::Timeout("ICResp"));
                }
                std::thread::sleep(SETUP_POLL);
            }
        };
        if resp.pfv != 0 {
            return Err(HostError::Protocol(format!(
                "ICResp PFV {} (only 0 is defined)",
                resp.pfv
            )));
        }
        if resp.maxh2cdata < pdu::MIN_MAXH2CDATA {
            return Err(HostError::Protocol(format!(
                "ICResp MAXH2CDATA {} below the minimum {}",
                resp.maxh2cdata,
                pdu::MIN_MAXH2CDATA
            )));
        }
        if (resp.hdgst && !hdgst) || (resp.ddgst && !ddgst) {
            return Err(HostError::Protocol(
                "ICResp enables a digest the host did not ask for".into(),
            ));
        }
        w.codec.header_digest = resp.hdgst;
        w.codec.data_digest = resp.ddgst;
        w.maxh2cdata = resp.maxh2cdata;
        Ok(w)
    }

    fn unexpected(&self, p: &Pdu<'_>, wanted: &str) -> HostError {
        match p {
            Pdu::C2HTermReq(t) => term_error(t),
            p => HostError::Protocol(format!(
                "expected {wanted}, got PDU type {:#04x}",
                p.pdu_type().0
            )),
        }
    }

    /// Decodes the PDU at the front of the receive buffer, if complete.
    /// The PDU borrows the buffer; the caller advances `rx_start` by `len`.
    pub fn decode_front(&self) -> Result<Option<(Pdu<'_>, usize, bool)>, HostError> {
        match pdu::decode(&self.rx[self.rx_start..self.rx_end], &self.codec) {
            Ok(Decoded::Pdu {
                pdu,
                len,
                data_digest_error,
            }) => Ok(Some((pdu, len, data_digest_error))),
            Ok(Decoded::Incomplete { .. }) => Ok(None),
            Err(e) => Err(HostError::Protocol(format!("bad PDU: {e}"))),
        }
    }

    /// Reads what the socket has (one read). `Ok(false)`: nothing now.
    /// End of stream is an error: a target never closes a live queue
    /// quietly.
    pub fn fill(&mut self) -> Result<bool, HostError> {
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        } else if self.rx_end == self.rx.len() {
            if self.rx_start == 0 {
                // A PDU larger than the buffer: decode refuses it by PLEN
                // before this can happen, but never spin on it.
                return Err(HostError::Protocol(
                    "PDU larger than the receive buffer".into(),
                ));
            }
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        match self.sock.read(&mut self.rx[self.rx_end..]) {
            Ok(0) => Err(HostError::Disconnected(format!(
                "the target at {} closed the connection",
                self.peer
            ))),
            Ok(n) => {
                self.rx_end += n;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Ok(false)
            }
            Err(e) => Err(HostError::Disconnected(format!(
                "connection to {}: {e}",
                self.peer
            ))),
        }
    }

    /// Writes what is queued, as far as the socket takes it.
    pub fn flush(&mut self) -> Result<(), HostError> {
        while self.tx_off < self.tx.len() {
            match self.sock.write(&self.tx[self.tx_off..]) {
                Ok(0) => {
                    return Err(HostError::Disconnected(format!(
                        "connection to {} accepts no more data",
                        self.peer
                    )));
                }
                Ok(n) => self.tx_off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(HostError::Disconnected(format!(
                        "connection to {}: {e}",
                        self.peer
                    )));
                }
            }
        }
        if self.tx_off == self.tx.len() {
            self.tx.clear();
            self.tx_off = 0;
        } else if self.tx_off > 256 * 1024 && self.tx_off * 2 > self.tx.len() {
            self.tx.drain(..self.tx_off);
            self.tx_off = 0;
        }
        Ok(())
    }

    /// Best effort: an H2CTermReq, then the connection is closed.
    pub fn terminate(&mut self, fes: Fes, fei: u32) {
        self.tx.clear();
        self.tx_off = 0;
        pdu::encode(
            &Pdu::H2CTermReq(TermReq {
                fes,
                fei,
                data: &[],
            }),
            &self.codec,
            &mut self.tx,
        );
        let _ = self.flush();
        self.close();
    }

    /// Closes both directions; the peer sees end of stream.
    pub fn close(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Runs one command to completion on a connection that has no other
    /// commands outstanding (set-up: Fabrics Connect). `data` goes in
    /// capsule when it fits `in_capsule`, else by R2T/H2CData. Bounded by
    /// `timeout`.
    pub fn exchange(
        &mut self,
        mut sqe: SubmissionEntry,
        data: &[u8],
        in_capsule: usize,
        timeout: Duration,
    ) -> Result<CompletionEntry, HostError> {
        let inline = !data.is_empty() && data.len() <= in_capsule;
        set_sgl(&mut sqe, data.len() as u32, inline);
        let cid = sqe.cid();
        pdu::encode(
            &Pdu::CapsuleCmd(CapsuleCmd {
                sqe,
                data: if inline { data } else { &[] },
            }),
            &self.codec,
            &mut self.tx,
        );
        let deadline = Instant::now() + timeout;
        loop {
            self.flush()?;
            let mut progressed = false;
            while let Some((p, len, _)) = self.decode_front()? {
                progressed = true;
                match p {
                    Pdu::CapsuleResp(cqe) if cqe.cid == cid => {
                        self.rx_start += len;
                        return Ok(cqe);
                    }
                    Pdu::R2t(r)
                        if r.cccid == cid
                            && (r.r2to as u64 + r.r2tl as u64) <= data.len() as u64 =>
                    {
                        self.rx_start += len;
                        let (mut off, end) = (r.r2to as usize, (r.r2to + r.r2tl) as usize);
                        let chunk = self.maxh2cdata as usize;
                        while off < end {
                            let n = (end - off).min(chunk);
                            pdu::encode(
                                &Pdu::H2CData(DataPdu {
                                    cccid: cid,
                                    ttag: r.ttag,
                                    datao: off as u32,
                                    last: off + n == end,
                                    success: false,
                                    data: &data[off..off + n],
                                }),
                                &self.codec,
                                &mut self.tx,
                            );
                            off += n;
                        }
                    }
                    p => return Err(self.unexpected(&p, "the response to a set-up command")),
                }
            }
            self.flush()?;
            if !self.fill()? && !progressed {
                if Instant::now() > deadline {
                    return Err(HostError::Timeout("set-up command response"));
                }
                std::thread::sleep(SETUP_POLL);
            }
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.close();
    }
}

/// The error a C2HTermReq from the target turns into.
pub(crate) fn term_error(t: &TermReq<'_>) -> HostError {
    HostError::Protocol(format!(
        "the target terminated the connection (C2HTermReq FES {:#x}, FEI {:#x})",
        t.fes.0, t.fei
    ))
}
