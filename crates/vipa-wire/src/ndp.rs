//! The unsolicited Neighbor Advertisement that announces an IPv6 address on a move
//! (RFC 4861 §4.4, §7.2.6), with the Override flag and the target link-layer address;
//! and the unicast Neighbor Solicitation (§4.3, §7.2.2) that asks a peer known by its
//! link-layer address whether it is there again, in its whole Ethernet frame.
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Type (136)|     Code (0)  |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|S|O|                     Reserved                            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       Target Address (16)                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Type (2)     |  Length (1)   |   Link-Layer Address (6) ...
//! ```

use std::net::Ipv6Addr;

pub const NEIGHBOR_ADVERT: u8 = 136;
pub const FLAG_OVERRIDE: u8 = 0x20;
pub const LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborAdvert {
    pub flags: u8,
    pub target: Ipv6Addr,
    pub mac: [u8; 6],
}

impl NeighborAdvert {
    /// The unsolicited form vipa sends: Override set, Solicited clear.
    pub fn unsolicited(target: Ipv6Addr, mac: [u8; 6]) -> NeighborAdvert {
        NeighborAdvert { flags: FLAG_OVERRIDE, target, mac }
    }

    /// The ICMPv6 message; the kernel fills in the checksum on a raw ICMPv6 socket.
    pub fn emit(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = NEIGHBOR_ADVERT;
        b[4] = self.flags;
        b[8..24].copy_from_slice(&self.target.octets());
        b[24] = 2;
        b[25] = 1;
        b[26..32].copy_from_slice(&self.mac);
        b
    }
}

pub const NEIGHBOR_SOLICIT: u8 = 135;
/// Ethernet (14), IPv6 (40) and a Neighbor Solicitation with the source link-layer
/// address option (32).
pub const SOLICIT_FRAME_LEN: usize = 86;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const NEXT_HEADER_ICMPV6: u8 = 58;

/// A Neighbor Solicitation for `target` sent straight to it (the form a node's reachability
/// probe takes, §7.3.3), from `source` at `source_mac` to `target_mac`, with the hop limit
/// of 255 that receivers require and the source's link-layer address, so that the
/// receiver also learns where `source` is. The checksum is computed here: the frame goes
/// out as it is, past the kernel's IPv6 layer.
pub fn solicit_frame(
    source_mac: [u8; 6],
    source: Ipv6Addr,
    target_mac: [u8; 6],
    target: Ipv6Addr,
) -> [u8; SOLICIT_FRAME_LEN] {
    let mut f = [0u8; SOLICIT_FRAME_LEN];
    f[0..6].copy_from_slice(&target_mac);
    f[6..12].copy_from_slice(&source_mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let (ip, icmp) = f[14..].split_at_mut(40);
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip[6] = NEXT_HEADER_ICMPV6;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&source.octets());
    ip[24..40].copy_from_slice(&target.octets());
    icmp[0] = NEIGHBOR_SOLICIT;
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = 1;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&source_mac);
    let sum = crate::icmp::checksum(&pseudo_header_and(source, target, icmp));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The IPv6 pseudo-header (RFC 8200 §8.1) for an ICMPv6 message, followed by the message.
fn pseudo_header_and(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(40 + message.len());
    b.extend_from_slice(&source.octets());
    b.extend_from_slice(&destination.octets());
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    b.extend_from_slice(message);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_solicitation_is_laid_out_as_rfc_4861_says_with_a_valid_checksum() {
        let (me, peer): (Ipv6Addr, Ipv6Addr) = ("2001:db8:1::11".parse().unwrap(), "2001:db8:1::12".parse().unwrap());
        let f = solicit_frame([2, 0, 0, 0, 0, 0x11], me, [2, 0, 0, 0, 0, 0x12], peer);
        assert_eq!(&f[0..14], &[2, 0, 0, 0, 0, 0x12, 2, 0, 0, 0, 0, 0x11, 0x86, 0xdd], "Ethernet: to the peer");
        assert_eq!(&f[14..22], &[0x60, 0, 0, 0, 0, 32, 58, 255], "IPv6: 32 bytes of ICMPv6, hop limit 255");
        assert_eq!(&f[22..38], &me.octets());
        assert_eq!(&f[38..54], &peer.octets(), "sent to the peer itself, not its solicited-node group");
        let icmp = &f[54..];
        assert_eq!(&icmp[0..2], &[135, 0]);
        assert_eq!(&icmp[4..8], &[0; 4]);
        assert_eq!(&icmp[8..24], &peer.octets(), "target");
        assert_eq!(&icmp[24..32], &[1, 1, 2, 0, 0, 0, 0, 0x11], "source link-layer address option");
        assert_eq!(crate::icmp::checksum(&pseudo_header_and(me, peer, icmp)), 0, "a correct checksum sums to zero");
        // Known answer, summed apart from this code (Python, RFC 1071 over the same bytes).
        assert_eq!(u16::from_be_bytes([icmp[2], icmp[3]]), 0xec2f);
    }

    #[test]
    fn unsolicited_na_is_laid_out_as_rfc_4861_says() {
        let na = NeighborAdvert::unsolicited("2001:db8:1::5".parse().unwrap(), [2, 0, 0, 0, 0, 1]);
        #[rustfmt::skip]
        let want: [u8; LEN] = [
            136, 0, 0, 0, // type, code, checksum (the kernel's)
            0x20, 0, 0, 0, // Override, not Router, not Solicited
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, // target
            2, 1, 2, 0, 0, 0, 0, 1, // option: target link-layer address, 8 bytes
        ];
        assert_eq!(na.emit(), want);
    }
}
