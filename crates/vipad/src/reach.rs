//! Reaching peers that are not heard, so that a healed link is noticed at once.
//!
//! While a peer is cut off, the kernel's entry for it runs out (probed, failed, resolved
//! again by broadcast), and after a partition of some seconds it is unresolved on one
//! side or both. Heartbeats then wait in it for the kernel's next try, up to a second
//! (`retrans_time`) after the link is back, and a node heard by its peer does not hear
//! it: an owner cannot take its address back, a handover waits. So while a peer is
//! missed, vipad sends a reachability probe (a unicast ARP request, or a Neighbor
//! Solicitation) straight to the link-layer address its entry last had, every
//! `heartbeat_interval`, at least 10 ms and at most 100 ms apart (1 s once the peer has
//! been missed for a minute). The first one after the link is back is answered: the
//! request resolves the peer's entry for this host's address, and the answer this host's
//! entry for the peer (which its heartbeats keep being resolved; the kernel ignores a
//! Neighbor Advertisement for an entry that has just failed, until the next heartbeat
//! starts it again). The kernel's own resolution goes on as before, so a peer that came
//! back with another link-layer address is still found by broadcast. A probe is one small
//! frame to one station; nothing is sent for a peer whose link-layer address was never
//! seen here (it is left to the kernel).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use vipa_core::model::{Observed, ADDR_PROTO_VIPA};
use vipa_kernel::netlink::Neighbour;
use vipa_kernel::Kernel;

/// As often as heartbeats go to the peer, up to 100 a second: a healed link is noticed
/// within about one heartbeat interval.
const EVERY_MIN: Duration = Duration::from_millis(10);
/// At most this long apart even at long heartbeat intervals: the heartbeats held back
/// while the peer was unresolved go out the moment a probe is answered, so the sooner
/// the probe, the sooner the peer hears this node.
const EVERY_MAX: Duration = Duration::from_millis(100);
/// Once a peer has been missed for `SLOWER_AFTER`.
const EVERY_LATER: Duration = Duration::from_secs(1);
/// A peer missed this long is probed once a second only: a link that heals is still
/// noticed within that second, and a peer that stays dead costs less.
const SLOWER_AFTER: Duration = Duration::from_secs(60);

/// Where and how a peer is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Via {
    ifindex: u32,
    peer_mac: [u8; 6],
    own_mac: [u8; 6],
    /// This host's address on that NIC in the peer's subnet (the one the peer reaches).
    own: IpAddr,
}

/// A peer being missed.
#[derive(Debug, Clone)]
struct Target {
    since: Instant,
    /// When it is probed next.
    next: Instant,
}

#[derive(Debug, Default)]
pub struct Reach {
    /// Peer addresses missed now.
    targets: BTreeMap<IpAddr, Target>,
    /// The last entry with a link-layer address seen for each peer (kept after the peer
    /// is heard again: its entry may have lapsed by the time it is missed next).
    known: BTreeMap<IpAddr, Neighbour>,
    every: Duration,
    /// When the next round of probes is due; none while there is nothing to probe.
    pub due: Option<Instant>,
}

impl Reach {
    /// Takes the peers missed now (`unheard`). Whenever that changes, the neighbour table
    /// is read for the peers newly missed and those heard again: the former's entries
    /// still have their link-layer address at that moment (a peer is declared dead within
    /// a few heartbeats; the kernel keeps an entry for seconds after the last answer),
    /// and the latter's have it afresh, for the next time.
    pub fn update(
        &mut self,
        unheard: BTreeSet<IpAddr>,
        interval: Duration,
        kernel: &mut Kernel,
        observed: &Observed,
        now: Instant,
    ) {
        self.every = interval.clamp(EVERY_MIN, EVERY_MAX);
        let back: Vec<IpAddr> = self.targets.keys().filter(|a| !unheard.contains(a)).copied().collect();
        let new: Vec<IpAddr> = unheard.iter().filter(|a| !self.targets.contains_key(a)).copied().collect();
        if !back.is_empty() || !new.is_empty() {
            let towards: HashSet<IpAddr> = back.iter().chain(&new).copied().collect();
            match kernel.known_neighbours(&towards) {
                Ok(found) => self.known.extend(found.into_iter().map(|n| (n.address, n))),
                Err(e) => {
                    warn!(error = %e, "cannot list neighbour entries; peers not heard may be left to the kernel to find")
                }
            }
        }
        self.targets.retain(|a, _| unheard.contains(a));
        for peer in new {
            match self.known.get(&peer).and_then(|n| via(observed, n)) {
                Some(v) => info!(
                    peer = %peer,
                    interface = %observed.link_name(v.ifindex),
                    mac = %mac_text(&v.peer_mac),
                    every_ms = self.every.as_millis() as u64,
                    "peer not heard: probing its last known link-layer address until it is"
                ),
                None => debug!(peer = %peer, "peer not heard, its link-layer address not known: left to the kernel"),
            }
            self.targets.insert(peer, Target { since: now, next: now + self.every });
        }
        self.schedule();
    }

    /// The next round: the soonest probe of a peer whose link-layer address is known.
    fn schedule(&mut self) {
        self.due = self.targets.iter().filter(|(a, _)| self.known.contains_key(a)).map(|(_, t)| t.next).min();
    }

    /// Sends a round of probes if one is due: from where `observed` says now (an address
    /// may have gone since the peer was missed).
    pub fn tick(&mut self, now: Instant, observed: &Observed) {
        if self.due.is_none_or(|d| d > now) {
            return;
        }
        for (peer, t) in self.targets.iter_mut().filter(|(_, t)| t.next <= now) {
            let slower = now.saturating_duration_since(t.since) >= SLOWER_AFTER;
            t.next = now + if slower { EVERY_LATER } else { self.every };
            let Some(v) = self.known.get(peer).and_then(|n| via(observed, n)) else { continue };
            if let Err(e) = vipa_kernel::announce::probe_neighbour(v.ifindex, v.own_mac, v.own, v.peer_mac, *peer) {
                debug!(peer = %peer, error = %e, "cannot send a reachability probe");
            }
        }
        self.schedule();
    }
}

/// How to probe the peer of entry `n`: from this host's address in the peer's subnet on
/// the entry's NIC (not a DVIPA, not deprecated), and that NIC's link-layer address.
fn via(observed: &Observed, n: &Neighbour) -> Option<Via> {
    let own_mac = observed.links.get(&n.ifindex)?.mac?;
    let own = observed
        .addresses
        .values()
        .filter(|a| a.ifindex == n.ifindex && a.proto != ADDR_PROTO_VIPA && !a.deprecated)
        .find(|a| same_subnet(a.addr, a.prefix_len, n.address))?
        .addr;
    Some(Via { ifindex: n.ifindex, peer_mac: n.mac, own_mac, own })
}

fn same_subnet(a: IpAddr, prefix_len: u8, b: IpAddr) -> bool {
    let (a, b, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32),
        _ => return false,
    };
    let len = u32::from(prefix_len).min(bits);
    // A host-length address has no subnet of others.
    if len == bits || a == b {
        return false;
    }
    let host_bits = bits - len;
    (a >> host_bits) == (b >> host_bits)
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vipa_core::model::{Address, Link};

    fn observed() -> Observed {
        let mut o = Observed::default();
        let link = Link {
            index: 2,
            name: "en1".into(),
            up: true,
            carrier: true,
            loopback: false,
            kind: None,
            mac: Some([2, 0, 0, 0, 0, 0x11]),
        };
        o.links.insert(2, link);
        let mut add = |addr: &str, prefix_len: u8, proto: u8, deprecated: bool| {
            let addr: IpAddr = addr.parse().unwrap();
            o.addresses.insert((2, addr), Address { ifindex: 2, addr, prefix_len, proto, deprecated });
        };
        add("198.18.1.200", 32, ADDR_PROTO_VIPA, false);
        add("198.18.1.11", 24, 0, false);
        add("2001:db8:1::99", 64, 0, true);
        add("2001:db8:1::11", 64, 0, false);
        o
    }

    fn entry(address: &str, ifindex: u32) -> Neighbour {
        Neighbour { address: address.parse().unwrap(), ifindex, mac: [2, 0, 0, 0, 0, 0x12] }
    }

    #[test]
    fn a_peer_is_probed_from_this_hosts_address_in_its_subnet_on_the_nic_of_its_entry() {
        let o = observed();
        let v = via(&o, &entry("198.18.1.12", 2)).expect("on-link peer");
        assert_eq!(v.own, "198.18.1.11".parse::<IpAddr>().unwrap(), "not the DVIPA, though it is on the NIC too");
        assert_eq!((v.ifindex, v.own_mac, v.peer_mac), (2, [2, 0, 0, 0, 0, 0x11], [2, 0, 0, 0, 0, 0x12]));
        let v6 = via(&o, &entry("2001:db8:1::12", 2)).expect("on-link IPv6 peer");
        assert_eq!(v6.own, "2001:db8:1::11".parse::<IpAddr>().unwrap(), "not the deprecated address");
    }

    #[test]
    fn a_peer_outside_the_nics_subnets_or_on_an_unknown_nic_is_left_to_the_kernel() {
        let o = observed();
        assert_eq!(via(&o, &entry("198.18.2.12", 2)), None, "another subnet: behind a router");
        assert_eq!(via(&o, &entry("198.18.1.12", 7)), None, "a NIC not seen");
    }

    #[test]
    fn a_missed_peer_is_probed_every_interval_for_a_minute_then_once_a_second() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let peer: IpAddr = "198.18.1.12".parse().unwrap();
        let unknown: IpAddr = "198.18.1.13".parse().unwrap();
        let mut r = Reach { every: ms(10), ..Reach::default() };
        r.known.insert(peer, entry("198.18.1.12", 2));
        for a in [peer, unknown] {
            r.targets.insert(a, Target { since: t0, next: t0 + ms(10) });
        }
        r.schedule();
        assert_eq!(r.due, Some(t0 + ms(10)));
        // (No NIC in `observed`: nothing goes out, the schedule moves on all the same.)
        let observed = Observed::default();
        r.tick(t0 + ms(5), &observed);
        assert_eq!(r.due, Some(t0 + ms(10)), "not due yet");
        r.tick(t0 + ms(10), &observed);
        assert_eq!(r.due, Some(t0 + ms(20)));
        let later = t0 + Duration::from_secs(61);
        r.tick(later, &observed);
        assert_eq!(r.due, Some(later + Duration::from_secs(1)), "a minute on, once a second: no waking every 10 ms");
        r.known.clear();
        r.schedule();
        assert_eq!(r.due, None, "nothing to probe without a link-layer address");
    }

    #[test]
    fn subnets_are_compared_on_the_prefix_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_subnet(ip("198.18.1.11"), 24, ip("198.18.1.250")));
        assert!(!same_subnet(ip("198.18.1.11"), 24, ip("198.18.0.250")));
        assert!(same_subnet(ip("198.18.1.11"), 0, ip("198.19.0.1")));
        assert!(!same_subnet(ip("198.18.1.11"), 32, ip("198.18.1.12")));
        assert!(!same_subnet(ip("198.18.1.11"), 24, ip("2001:db8::1")));
        assert!(same_subnet(ip("2001:db8:1::11"), 64, ip("2001:db8:1::ffff")));
        assert!(!same_subnet(ip("2001:db8:1::11"), 64, ip("2001:db8:2::11")));
    }
}
