//! Neighbor Discovery (RFC 4861) in whole Ethernet frames, sent past the kernel's IPv6
//! layer: the Neighbor Advertisement (§4.4) that announces an IPv6 address on a move
//! (unsolicited, §7.2.6) or answers a solicitation for a DVIPA the kernel does not hold as
//! an address (§7.2.4); the Neighbor Solicitation (§4.3) read to answer it, validated as
//! §7.1.1 requires; and the unicast solicitation that asks a peer known by its link-layer
//! address whether it is there again (§7.2.2).
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Type (135/6) |     Code (0)  |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|S|O|                     Reserved                            |  (NS: all reserved)
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       Target Address (16)                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Type (1/2)   |  Length (1)   |   Link-Layer Address (6) ...
//! ```

use std::net::Ipv6Addr;

use crate::WireError;

pub const NEIGHBOR_SOLICIT: u8 = 135;
pub const NEIGHBOR_ADVERT: u8 = 136;
pub const FLAG_SOLICITED: u8 = 0x40;
pub const FLAG_OVERRIDE: u8 = 0x20;
/// Ethernet (14), IPv6 (40) and a solicitation or advertisement with one link-layer
/// address option (32).
pub const FRAME_LEN: usize = 86;
/// ff02::1, where unsolicited advertisements go, and its Ethernet group.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const NEXT_HEADER_ICMPV6: u8 = 58;
const OPTION_SOURCE_LL: u8 = 1;
const OPTION_TARGET_LL: u8 = 2;
/// ff02::1:ff00:0/104, the solicited-node groups.
const SOLICITED_NODE_PREFIX: [u8; 13] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff];

/// A Neighbor Advertisement for `target` at `own_mac`, from `target` itself to
/// `destination` at `destination_mac`, with `flags` (`FLAG_*`) and the target link-layer
/// address option.
pub fn advert_frame(
    own_mac: [u8; 6],
    target: Ipv6Addr,
    destination_mac: [u8; 6],
    destination: Ipv6Addr,
    flags: u8,
) -> [u8; FRAME_LEN] {
    let to = (destination_mac, destination);
    frame((own_mac, target), to, [NEIGHBOR_ADVERT, flags], target, OPTION_TARGET_LL)
}

/// The unsolicited form sent on a move: to all nodes, Override set, Solicited clear.
pub fn unsolicited_frame(own_mac: [u8; 6], target: Ipv6Addr) -> [u8; FRAME_LEN] {
    advert_frame(own_mac, target, ALL_NODES_MAC, ALL_NODES, FLAG_OVERRIDE)
}

/// A Neighbor Solicitation for `target` sent straight to it (the form a node's reachability
/// probe takes, §7.3.3), from `source` at `source_mac` to `target_mac`, with the source's
/// link-layer address, so that the receiver also learns where `source` is.
pub fn solicit_frame(source_mac: [u8; 6], source: Ipv6Addr, target_mac: [u8; 6], target: Ipv6Addr) -> [u8; FRAME_LEN] {
    frame((source_mac, source), (target_mac, target), [NEIGHBOR_SOLICIT, 0], target, OPTION_SOURCE_LL)
}

/// One NDP message in its whole frame, from `from` to `to` (link-layer and IPv6 address
/// each), with the hop limit of 255 that receivers require: `kind` is its type and flags
/// byte, then the target and one link-layer address option (of type `option`) carrying
/// the sender's. The checksum is computed here: the frame goes out as it is, past the
/// kernel's IPv6 layer.
fn frame(
    from: ([u8; 6], Ipv6Addr),
    to: ([u8; 6], Ipv6Addr),
    kind: [u8; 2],
    target: Ipv6Addr,
    option: u8,
) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&to.0);
    f[6..12].copy_from_slice(&from.0);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let (ip, icmp) = f[14..].split_at_mut(40);
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip[6] = NEXT_HEADER_ICMPV6;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&from.1.octets());
    ip[24..40].copy_from_slice(&to.1.octets());
    icmp[0] = kind[0];
    icmp[4] = kind[1];
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24..26].copy_from_slice(&[option, 1]);
    icmp[26..32].copy_from_slice(&from.0);
    let sum = crate::icmp::checksum(&pseudo_header_and(from.1, to.1, icmp));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// A Neighbor Solicitation as read off the link, valid by §7.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicit {
    /// Unspecified when the sender checks the target for duplicates.
    pub source: Ipv6Addr,
    pub target: Ipv6Addr,
    /// Where the sender is: its source link-layer address option, else the frame's source.
    pub source_mac: [u8; 6],
}

impl Solicit {
    /// Reads a whole Ethernet frame: IPv6 with no extension header, hop limit 255, a
    /// correct checksum, code 0, a unicast target, options of non-zero length; from the
    /// unspecified address only to a solicited-node group and without a source
    /// link-layer address option.
    pub fn parse(frame: &[u8]) -> Result<Solicit, WireError> {
        let bad = WireError::NotSolicit;
        if frame.len() < 14 + 40 + 24 {
            return Err(WireError::Truncated { have: frame.len(), need: 14 + 40 + 24 });
        }
        if frame[12..14] != ETHERTYPE_IPV6.to_be_bytes() || frame[14] >> 4 != 6 {
            return Err(bad("not IPv6"));
        }
        let ip = &frame[14..54];
        if ip[6] != NEXT_HEADER_ICMPV6 {
            return Err(bad("not ICMPv6 right after the IPv6 header"));
        }
        if ip[7] != 255 {
            return Err(bad("hop limit not 255 (sent from off the link)"));
        }
        let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        if len < 24 || 54 + len > frame.len() {
            return Err(bad("payload length out of bounds"));
        }
        let icmp = &frame[54..54 + len];
        if icmp[0] != NEIGHBOR_SOLICIT || icmp[1] != 0 {
            return Err(bad("not a solicitation, or code not 0"));
        }
        let octets =
            |b: &[u8]| -> Ipv6Addr { <[u8; 16]>::try_from(b).map(Ipv6Addr::from).unwrap_or(Ipv6Addr::UNSPECIFIED) };
        let (source, destination, target) = (octets(&ip[8..24]), octets(&ip[24..40]), octets(&icmp[8..24]));
        if crate::icmp::checksum(&pseudo_header_and(source, destination, icmp)) != 0 {
            return Err(bad("wrong checksum"));
        }
        if target.is_multicast() {
            return Err(bad("multicast target"));
        }
        let mut source_mac = None;
        let mut options = &icmp[24..];
        while !options.is_empty() {
            let size = options.get(1).map_or(0, |&l| usize::from(l) * 8);
            if size == 0 || size > options.len() {
                return Err(bad("option of zero length or past the end"));
            }
            if options[0] == OPTION_SOURCE_LL && size == 8 {
                source_mac = <[u8; 6]>::try_from(&options[2..8]).ok();
            }
            options = &options[size..];
        }
        if source.is_unspecified() {
            let group = destination.octets();
            if group[..13] != SOLICITED_NODE_PREFIX || source_mac.is_some() {
                return Err(bad("from the unspecified address, but not to a solicited-node group or with a source link-layer address"));
            }
        }
        let frame_source = <[u8; 6]>::try_from(&frame[6..12]).unwrap_or_default();
        Ok(Solicit { source, target, source_mac: source_mac.unwrap_or(frame_source) })
    }

    /// The advertisement that answers it for a target this host holds at `own_mac`
    /// (§7.2.4): to the sender, Solicited and Override set; to all nodes, Solicited clear,
    /// when the sender checks for duplicates (it learns that the address is taken).
    pub fn answer(&self, own_mac: [u8; 6]) -> [u8; FRAME_LEN] {
        if self.source.is_unspecified() {
            unsolicited_frame(own_mac, self.target)
        } else {
            advert_frame(own_mac, self.target, self.source_mac, self.source, FLAG_SOLICITED | FLAG_OVERRIDE)
        }
    }
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
    fn solicited_advert_is_laid_out_as_rfc_4861_says_with_a_valid_checksum() {
        let (me, client): (Ipv6Addr, Ipv6Addr) = ("2001:db8:1::5".parse().unwrap(), "2001:db8:1::9".parse().unwrap());
        let f = advert_frame([2, 0, 0, 0, 0, 5], me, [2, 0, 0, 0, 0, 9], client, FLAG_SOLICITED | FLAG_OVERRIDE);
        assert_eq!(&f[0..14], &[2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 5, 0x86, 0xdd], "Ethernet: to the client");
        assert_eq!(&f[14..22], &[0x60, 0, 0, 0, 0, 32, 58, 255], "IPv6: 32 bytes of ICMPv6, hop limit 255");
        assert_eq!(&f[22..38], &me.octets(), "from the target itself");
        assert_eq!(&f[38..54], &client.octets());
        let icmp = &f[54..];
        assert_eq!(&icmp[0..2], &[136, 0]);
        assert_eq!(&icmp[4..8], &[0x60, 0, 0, 0], "Solicited and Override, not Router");
        assert_eq!(&icmp[8..24], &me.octets(), "target");
        assert_eq!(&icmp[24..32], &[2, 1, 2, 0, 0, 0, 0, 5], "target link-layer address option");
        // Known answer, summed apart from this code (Python, RFC 1071 over the same bytes).
        assert_eq!(u16::from_be_bytes([icmp[2], icmp[3]]), 0x8a5d);
    }

    #[test]
    fn unsolicited_advert_goes_to_all_nodes_with_override_only() {
        let f = unsolicited_frame([2, 0, 0, 0, 0, 5], "2001:db8:1::5".parse().unwrap());
        assert_eq!(&f[0..6], &ALL_NODES_MAC);
        // What neighbours update their entries from: the sender, the target and its
        // link-layer address option.
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 5]);
        let dvipa: Ipv6Addr = "2001:db8:1::5".parse().unwrap();
        assert_eq!(&f[22..38], &dvipa.octets(), "from the DVIPA itself");
        assert_eq!(&f[38..54], &ALL_NODES.octets());
        assert_eq!(f[54 + 4], FLAG_OVERRIDE);
        assert_eq!(&f[54 + 8..54 + 24], &dvipa.octets());
        assert_eq!(&f[54 + 24..54 + 32], &[2, 1, 2, 0, 0, 0, 0, 5], "target link-layer address option");
        assert_eq!(crate::icmp::checksum(&pseudo_header_and("2001:db8:1::5".parse().unwrap(), ALL_NODES, &f[54..])), 0);
    }

    /// Makes the checksum right again after a change to the frame.
    fn resum(f: &mut [u8]) {
        f[54 + 2..54 + 4].copy_from_slice(&[0, 0]);
        let (s, d) = (<[u8; 16]>::try_from(&f[22..38]).unwrap(), <[u8; 16]>::try_from(&f[38..54]).unwrap());
        let sum = crate::icmp::checksum(&pseudo_header_and(s.into(), d.into(), &f[54..]));
        f[54 + 2..54 + 4].copy_from_slice(&sum.to_be_bytes());
    }

    /// A solicitation as a client sends it: to the target's solicited-node group, with its
    /// own link-layer address.
    fn client_solicit(target: Ipv6Addr) -> Vec<u8> {
        let client: Ipv6Addr = "2001:db8:1::9".parse().unwrap();
        let t = target.octets();
        let group = Ipv6Addr::from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15]]);
        let mut f = solicit_frame([2, 0, 0, 0, 0, 9], client, [0x33, 0x33, 0xff, t[13], t[14], t[15]], target).to_vec();
        f[38..54].copy_from_slice(&group.octets());
        resum(&mut f);
        f
    }

    /// Made a duplicate check: from ::, without the source link-layer option (the frame
    /// ends at the target); the checksum is left to the caller.
    fn from_unspecified(f: &mut Vec<u8>) {
        f.truncate(54 + 24);
        f[18..20].copy_from_slice(&24u16.to_be_bytes());
        f[22..38].copy_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
    }

    #[test]
    fn a_clients_solicitation_is_read_and_answered_to_the_client() {
        let target: Ipv6Addr = "2001:db8:19::7".parse().unwrap();
        let s = Solicit::parse(&client_solicit(target)).unwrap();
        assert_eq!(s, Solicit { source: "2001:db8:1::9".parse().unwrap(), target, source_mac: [2, 0, 0, 0, 0, 9] });
        let a = s.answer([2, 0, 0, 0, 0, 5]);
        assert_eq!(
            a,
            advert_frame([2, 0, 0, 0, 0, 5], target, [2, 0, 0, 0, 0, 9], s.source, FLAG_SOLICITED | FLAG_OVERRIDE)
        );
    }

    #[test]
    fn a_duplicate_check_is_answered_to_all_nodes_without_solicited() {
        let target: Ipv6Addr = "2001:db8:19::7".parse().unwrap();
        let mut f = client_solicit(target);
        from_unspecified(&mut f);
        resum(&mut f);
        let s = Solicit::parse(&f).unwrap();
        assert_eq!(s.source_mac, [2, 0, 0, 0, 0, 9], "the frame's source stands in for the option");
        assert_eq!(s.answer([2, 0, 0, 0, 0, 5]), unsolicited_frame([2, 0, 0, 0, 0, 5], target));
    }

    #[test]
    fn invalid_solicitations_are_refused_with_the_reason() {
        let good = client_solicit("2001:db8:19::7".parse().unwrap());
        let refused = |change: &dyn Fn(&mut Vec<u8>), why: &str| {
            let mut f = good.clone();
            change(&mut f);
            match Solicit::parse(&f) {
                Err(e) => assert!(e.to_string().contains(why), "{e} does not say {why}"),
                Ok(s) => panic!("accepted {s:?}; wanted: {why}"),
            }
        };
        refused(&|f| f[21] = 64, "hop limit");
        refused(&|f| f[54 + 3] ^= 1, "checksum");
        refused(&|f| f[54 + 1] = 1, "code");
        refused(&|f| f[20] = 0, "not ICMPv6");
        refused(&|f| f[12] = 8, "not IPv6");
        refused(&|f| f[18..20].copy_from_slice(&200u16.to_be_bytes()), "payload length");
        refused(&|f| f.truncate(40), "too short");
        // A checksum that is right for the bad field: the field itself is what is refused.
        refused(
            &|f| {
                f[54 + 8] = 0xff;
                resum(f)
            },
            "multicast target",
        );
        refused(
            &|f| {
                f[54 + 25] = 0;
                resum(f)
            },
            "zero length",
        );
        refused(
            &|f| {
                f[22..38].copy_from_slice(&[0; 16]);
                resum(f)
            },
            "unspecified",
        );
        // From ::, without the option, but to a group other than a solicited-node one.
        refused(
            &|f| {
                from_unspecified(f);
                f[38..54].copy_from_slice(&ALL_NODES.octets());
                resum(f)
            },
            "not to a solicited-node group",
        );
    }

    #[test]
    fn solicitation_parsing_never_panics_on_noise() {
        let mut state = 0x2545_f491;
        let good = client_solicit("2001:db8:19::7".parse().unwrap());
        for len in 0..120 {
            let _ = Solicit::parse(&crate::noise(&mut state, len));
            let mut f = good.clone();
            let noise = crate::noise(&mut state, f.len());
            let at = len % f.len();
            f[at] = noise[at];
            f.truncate(len.max(1));
            let _ = Solicit::parse(&f);
        }
    }
}
