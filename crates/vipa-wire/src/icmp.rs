//! ICMP and ICMPv6 echo (RFC 792, RFC 4443 §4) as in.mpathd's probes use them.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Type      |     Code      |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Identifier          |        Sequence Number        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Data (vipa: 8-byte send time in ns, 4-byte probe kind) ...
//! ```

use crate::WireError;

pub const ECHO_REQUEST_V4: u8 = 8;
pub const ECHO_REPLY_V4: u8 = 0;
pub const ECHO_REQUEST_V6: u8 = 128;
pub const ECHO_REPLY_V6: u8 = 129;
/// in.mpathd's probe kinds, carried after the timestamp.
pub const PROBE_UNICAST: u32 = 0x1234;
pub const PROBE_MULTICAST: u32 = 0x5678;
/// Header (8) plus vipa's payload (8 + 4).
pub const PROBE_LEN: usize = 20;

/// An echo request or reply with vipa's probe payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    pub reply: bool,
    pub v6: bool,
    pub id: u16,
    pub seq: u16,
    /// Send time in ns on the sender's monotonic clock.
    pub sent_ns: u64,
    pub kind: u32,
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from(chunk[0]) << 8 };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Echo {
    /// The ICMP message. IPv4 carries its checksum; for IPv6 the kernel fills it in.
    pub fn emit(&self) -> [u8; PROBE_LEN] {
        let mut b = [0u8; PROBE_LEN];
        b[0] = match (self.v6, self.reply) {
            (false, false) => ECHO_REQUEST_V4,
            (false, true) => ECHO_REPLY_V4,
            (true, false) => ECHO_REQUEST_V6,
            (true, true) => ECHO_REPLY_V6,
        };
        b[4..6].copy_from_slice(&self.id.to_be_bytes());
        b[6..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
        b[16..20].copy_from_slice(&self.kind.to_be_bytes());
        if !self.v6 {
            let c = checksum(&b);
            b[2..4].copy_from_slice(&c.to_be_bytes());
        }
        b
    }

    /// Parses an ICMP message (no IP header). Echo messages without vipa's payload parse
    /// with zero time and kind.
    pub fn parse(v6: bool, b: &[u8]) -> Result<Echo, WireError> {
        if b.len() < 8 {
            return Err(WireError::Truncated { have: b.len(), need: 8 });
        }
        let reply = match (v6, b[0]) {
            (false, ECHO_REPLY_V4) | (true, ECHO_REPLY_V6) => true,
            (false, ECHO_REQUEST_V4) | (true, ECHO_REQUEST_V6) => false,
            (_, t) => return Err(WireError::NotEcho(t)),
        };
        let (sent_ns, kind) = if b.len() >= PROBE_LEN {
            (
                u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
                u32::from_be_bytes(b[16..20].try_into().expect("4 bytes")),
            )
        } else {
            (0, 0)
        };
        Ok(Echo {
            reply,
            v6,
            id: u16::from_be_bytes([b[4], b[5]]),
            seq: u16::from_be_bytes([b[6], b[7]]),
            sent_ns,
            kind,
        })
    }
}

/// Skips the IPv4 header a raw IPv4 socket delivers; returns (source, ICMP bytes).
pub fn strip_ipv4(b: &[u8]) -> Result<(std::net::Ipv4Addr, &[u8]), WireError> {
    if b.len() < 20 {
        return Err(WireError::Truncated { have: b.len(), need: 20 });
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    if b[0] >> 4 != 4 || ihl < 20 || b.len() < ihl {
        return Err(WireError::Truncated { have: b.len(), need: ihl.max(20) });
    }
    Ok((std::net::Ipv4Addr::new(b[12], b[13], b[14], b[15]), &b[ihl..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_round_trips_with_a_valid_checksum() {
        let e = Echo { reply: false, v6: false, id: 0x1203, seq: 7, sent_ns: 123_456_789, kind: PROBE_UNICAST };
        let b = e.emit();
        assert_eq!(checksum(&b), 0, "a correct checksum sums to zero");
        assert_eq!(Echo::parse(false, &b).unwrap(), e);
    }

    #[test]
    fn checksum_matches_known_answers() {
        // RFC 1071's worked example, and an odd length (the last byte is padded).
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6]), !0xdcfb);
        // An echo request as ping sends it: type 8, id 0x0a2b, seq 1, checksum 0xedd3.
        assert_eq!(checksum(&[8, 0, 0, 0, 0x0a, 0x2b, 0, 1]), 0xedd3);
    }

    #[test]
    fn ping_reply_from_a_capture_parses() {
        // An IPv4 echo reply laid out as a raw socket receives it (IP header included):
        // id 0x0a2b, seq 1, 8 bytes of payload.
        let pkt = [
            0x45, 0, 0, 36, 0x8e, 0x31, 0, 0, 64, 1, 0, 0, 198, 18, 1, 254, 198, 18, 1, 11, // IP
            0, 0, 0, 0, 0x0a, 0x2b, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        let (src, icmp) = strip_ipv4(&pkt).unwrap();
        assert_eq!(src.to_string(), "198.18.1.254");
        let e = Echo::parse(false, icmp).unwrap();
        assert!(e.reply && e.id == 0x0a2b && e.seq == 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Echo::parse(false, &[0; 3]).is_err());
        assert!(Echo::parse(true, &[3, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(strip_ipv4(&[0x4f; 30]).is_err());
        assert!(strip_ipv4(&[]).is_err());
    }
}
