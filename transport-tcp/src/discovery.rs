//! The Discovery Log Page (log identifier 70h, NVMe-oF 1.1a §5.3,
//! Figures 37-38) for NVMe/TCP listeners.
//!
//! One entry per (listener, subsystem) pair a host may use: subsystems the
//! listener exposes and that allow the host, plus one entry per listener
//! for the discovery subsystem itself (SUBTYPE 3, "current discovery
//! subsystem"), as `nvme discover` expects. GENCTR is a hash of the
//! entries, so it changes whenever listeners, subsystems or allowed hosts
//! change what the host sees.

use std::net::SocketAddr;

/// One (listener, subsystem) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Where the listener is bound.
    pub addr: SocketAddr,
    /// Port ID (the listener's index).
    pub portid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// SUBTYPE: 2 NVM subsystem, 3 current discovery subsystem.
    pub subtype: u8,
    /// Admin queue size the host may use.
    pub asqsz: u16,
}

const HEADER_LEN: usize = 1024;
const ENTRY_LEN: usize = 1024;
/// TRTYPE: TCP.
const TRTYPE_TCP: u8 = 3;
/// TREQ bit 2: SQ flow control disable supported.
const TREQ_SQFLOW_DISABLE: u8 = 1 << 2;

fn ascii(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn nul(dst: &mut [u8], s: &str) {
    dst.fill(0);
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Builds the page: header, then the entries.
pub fn build(entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + ENTRY_LEN * entries.len()];
    for (i, e) in entries.iter().enumerate() {
        let b = &mut out[HEADER_LEN + i * ENTRY_LEN..HEADER_LEN + (i + 1) * ENTRY_LEN];
        b[0] = TRTYPE_TCP;
        b[1] = if e.addr.is_ipv4() { 1 } else { 2 }; // ADRFAM
        b[2] = e.subtype;
        b[3] = TREQ_SQFLOW_DISABLE;
        b[4..6].copy_from_slice(&e.portid.to_le_bytes());
        b[6..8].copy_from_slice(&0xffffu16.to_le_bytes()); // dynamic controllers
        b[8..10].copy_from_slice(&e.asqsz.to_le_bytes());
        ascii(&mut b[32..64], &e.addr.port().to_string()); // TRSVCID
        nul(&mut b[256..512], &e.subnqn);
        ascii(&mut b[512..768], &e.addr.ip().to_string()); // TRADDR
        // TSAS for TCP: SECTYPE 0 (no security).
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in &out[HEADER_LEN..] {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let genctr = h | 1;
    out[0..8].copy_from_slice(&genctr.to_le_bytes());
    out[8..16].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    // RECFMT 0.
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_generation() {
        let e = DiscoveryEntry {
            addr: "127.0.0.1:4420".parse().unwrap(),
            portid: 1,
            subnqn: "nqn.2026-11.io.x:a".into(),
            subtype: 2,
            asqsz: 32,
        };
        let p = build(std::slice::from_ref(&e));
        assert_eq!(p.len(), 2048);
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 1);
        let b = &p[1024..];
        assert_eq!(&b[0..4], &[3, 1, 2, 4]);
        assert_eq!(&b[4..10], &[1, 0, 0xff, 0xff, 32, 0]);
        assert_eq!(&b[32..36], b"4420");
        assert_eq!(b[36], b' ');
        assert_eq!(&b[256..274], b"nqn.2026-11.io.x:a");
        assert_eq!(b[274], 0);
        assert_eq!(&b[512..521], b"127.0.0.1");
        let g1 = u64::from_le_bytes(p[0..8].try_into().unwrap());
        let mut e2 = e.clone();
        e2.addr = "[::1]:4421".parse().unwrap();
        let p2 = build(&[e, e2]);
        assert_eq!(p2[2048 + 1], 2, "IPv6 ADRFAM");
        assert_ne!(g1, u64::from_le_bytes(p2[0..8].try_into().unwrap()));
    }
}
