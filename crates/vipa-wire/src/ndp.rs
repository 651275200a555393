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

use crate::WireError;

pub const NEIGHBOR_ADVERT: u8 = 136;
pub const FLAG_ROUTER: u8 = 0x80;
pub const FLAG_SOLICITED: u8 = 0x40;
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

    pub fn parse(b: &[u8]) -> Result<NeighborAdvert, WireError> {
        if b.len() < 24 {
            return Err(WireError::Truncated { have: b.len(), need: 24 });
        }
        if b[0] != NEIGHBOR_ADVERT {
            return Err(WireError::NotEcho(b[0]));
        }
        let target = Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).expect("16 bytes"));
        let mut mac = [0u8; 6];
        let mut opts = &b[24..];
        while opts.len() >= 8 {
            let len = usize::from(opts[1]) * 8;
            if len == 0 || len > opts.len() {
                break;
            }
            if opts[0] == 2 {
                mac.copy_from_slice(&opts[2..8]);
            }
            opts = &opts[len..];
        }
        Ok(NeighborAdvert { flags: b[4], target, mac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsolicited_na_has_override_and_round_trips() {
        let na = NeighborAdvert::unsolicited("2001:db8:1::5".parse().unwrap(), [2, 0, 0, 0, 0, 1]);
        let b = na.emit();
        assert_eq!(b[4] & FLAG_OVERRIDE, FLAG_OVERRIDE);
        assert_eq!(b[4] & FLAG_SOLICITED, 0);
        assert_eq!(NeighborAdvert::parse(&b).unwrap(), na);
        assert!(NeighborAdvert::parse(&b[..10]).is_err());
    }
}
