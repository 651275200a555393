//! ARP for Ethernet and IPv4 (RFC 826), including the gratuitous forms (RFC 5227 §3).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Hardware type (1)      |     Protocol type (0x0800)    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  HLEN (6)     |  PLEN (4)     |          Operation            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Sender hardware address (6)                   |
//! |                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                               | Sender protocol address (4)   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//! |                               |                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ Target hardware address (6)   |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Target protocol address (4)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::fmt;
use std::net::Ipv4Addr;

use crate::WireError;

mod field {
    use std::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = 28;
const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;

/// A MAC address.
pub type Mac = [u8; 6];

/// The ARP operation; other codes are kept as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(v: u16) -> Self {
        match v {
            1 => Operation::Request,
            2 => Operation::Reply,
            n => Operation::Unknown(n),
        }
    }
}

impl From<Operation> for u16 {
    fn from(o: Operation) -> u16 {
        match o {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(n) => n,
        }
    }
}

/// A view over the bytes of an ARP packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps bytes from the network, checking that the fields are there.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let have = buffer.as_ref().len();
        if have < LEN {
            return Err(WireError::Truncated { have, need: LEN });
        }
        Ok(Packet { buffer })
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn hardware_type(&self) -> u16 {
        self.u16_at(field::HTYPE)
    }
    pub fn protocol_type(&self) -> u16 {
        self.u16_at(field::PTYPE)
    }
    pub fn operation(&self) -> Operation {
        self.u16_at(field::OPER).into()
    }
    fn mac(&self, r: std::ops::Range<usize>) -> Mac {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[r]);
        m
    }
    fn ip(&self, r: std::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[r];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put(&mut self, r: std::ops::Range<usize>, bytes: &[u8]) {
        self.buffer.as_mut()[r].copy_from_slice(bytes);
    }
}

/// A validated Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub operation: Operation,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, WireError> {
        let b = p.buffer.as_ref();
        let (hardware, protocol, hlen, plen) = (p.hardware_type(), p.protocol_type(), b[field::HLEN], b[field::PLEN]);
        if hardware != HTYPE_ETHERNET || protocol != PTYPE_IPV4 || hlen != 6 || plen != 4 {
            return Err(WireError::Unsupported { hardware, protocol, hlen, plen });
        }
        Ok(Repr {
            operation: p.operation(),
            sender_mac: p.mac(field::SHA),
            sender_ip: p.ip(field::SPA),
            target_mac: p.mac(field::THA),
            target_ip: p.ip(field::TPA),
        })
    }

    pub fn buffer_len(&self) -> usize {
        LEN
    }

    /// Writes the packet into the first [`LEN`] bytes of `p`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.put(field::HTYPE, &HTYPE_ETHERNET.to_be_bytes());
        p.put(field::PTYPE, &PTYPE_IPV4.to_be_bytes());
        p.buffer.as_mut()[field::HLEN] = 6;
        p.buffer.as_mut()[field::PLEN] = 4;
        p.put(field::OPER, &u16::from(self.operation).to_be_bytes());
        p.put(field::SHA, &self.sender_mac);
        p.put(field::SPA, &self.sender_ip.octets());
        p.put(field::THA, &self.target_mac);
        p.put(field::TPA, &self.target_ip.octets());
    }

    /// Gratuitous ARP announcing that `ip` is at `mac`, in request form (RFC 5227 §3)
    /// or reply form; vipa sends both, as keepalived does, because hosts differ in which
    /// they act on.
    pub fn gratuitous(operation: Operation, mac: Mac, ip: Ipv4Addr) -> Repr {
        Repr { operation, sender_mac: mac, sender_ip: ip, target_mac: [0xff; 6], target_ip: ip }
    }

    /// A request asking who has `target_ip`, as a node's reachability probe sends it
    /// straight to the address it knows (RFC 1122 §2.3.2.1); its receiver also learns
    /// where the sender is.
    pub fn request(sender_mac: Mac, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Repr {
        Repr { operation: Operation::Request, sender_mac, sender_ip, target_mac: [0; 6], target_ip }
    }

    /// Whether this packet announces its sender's own address.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }
}

fn fmt_mac(m: &Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// As tcpdump prints it.
impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operation {
            Operation::Request => {
                write!(f, "ARP, Request who-has {} tell {}, length 28", self.target_ip, self.sender_ip)
            }
            Operation::Reply => {
                write!(f, "ARP, Reply {} is-at {}, length 28", self.sender_ip, fmt_mac(&self.sender_mac))
            }
            Operation::Unknown(n) => write!(f, "ARP, Unknown operation {n}, length 28"),
        }
    }
}

/// Ethernet (14) and ARP.
pub const FRAME_LEN: usize = 14 + LEN;
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// `repr` in its Ethernet frame, from its sender's link-layer address to `dst`.
pub fn frame(dst: Mac, repr: &Repr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&repr.sender_mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let mut p = Packet { buffer: &mut f[14..] };
    repr.emit(&mut p);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unicast_request_goes_in_a_frame_to_the_station_asked() {
        let r = Repr::request([2, 0, 0, 0, 0, 0x11], Ipv4Addr::new(198, 18, 1, 11), Ipv4Addr::new(198, 18, 1, 12));
        let f = frame([2, 0, 0, 0, 0, 0x12], &r);
        assert_eq!(&f[..14], &[2, 0, 0, 0, 0, 0x12, 2, 0, 0, 0, 0, 0x11, 0x08, 0x06]);
        let back = Repr::parse(&Packet::new_checked(&f[14..]).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.operation, Operation::Request);
        assert_eq!(back.target_mac, [0; 6], "the target's address is what is asked");
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // Captured with tcpdump from `arping -U` (request form) and `arping -P -U` (reply
    // form) announcing 198.18.1.1 at 02:00:00:00:00:01; the 14-byte Ethernet header and
    // the padding are cut off.
    const GARP_REQUEST: &str = "0001080006040001020000000001c6120101ffffffffffffc6120101";
    const GARP_REPLY: &str = "0001080006040002020000000001c6120101ffffffffffffc6120101";

    #[test]
    fn captured_gratuitous_arp_round_trips() {
        for (bytes, op) in [(GARP_REQUEST, Operation::Request), (GARP_REPLY, Operation::Reply)] {
            let bytes = hex(bytes);
            let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
            let expect = Repr::gratuitous(op, [2, 0, 0, 0, 0, 1], Ipv4Addr::new(198, 18, 1, 1));
            assert_eq!(repr, expect);
            assert!(repr.is_gratuitous());
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_checked(&mut out[..]).unwrap());
            assert_eq!(out, bytes);
        }
    }

    #[test]
    fn display_like_tcpdump() {
        let r = Repr::gratuitous(Operation::Reply, [2, 0, 0, 0, 0, 1], Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(r.to_string(), "ARP, Reply 198.18.1.1 is-at 02:00:00:00:00:01, length 28");
    }

    #[test]
    fn short_and_foreign_packets_are_errors() {
        assert_eq!(Packet::new_checked(&[0u8; 27][..]).unwrap_err(), WireError::Truncated { have: 27, need: 28 });
        let mut b = hex(GARP_REQUEST);
        b[3] = 0xdd; // protocol 0x86dd
        assert!(matches!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()), Err(WireError::Unsupported { .. })));
        let mut b = hex(GARP_REQUEST);
        b[7] = 9;
        assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap().operation, Operation::Unknown(9));
    }

    #[test]
    fn parser_is_total_over_arbitrary_bytes() {
        // A cheap deterministic stand-in for the fuzzer: every prefix of many patterns.
        let mut state: u32 = 0x1234_5678;
        for len in 0..64 {
            for _ in 0..200 {
                let bytes = crate::noise(&mut state, len);
                if let Ok(p) = Packet::new_checked(&bytes[..]) {
                    let _ = Repr::parse(&p);
                }
            }
        }
    }
}
