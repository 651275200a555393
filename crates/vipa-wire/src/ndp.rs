//! The unsolicited Neighbor Advertisement that announces an IPv6 address on a move
//! (RFC 4861 §4.4, §7.2.6), with the Override flag and the target link-layer address.
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

#[cfg(test)]
mod tests {
    use super::*;

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
