//! Sending the announcements that follow a move (IPMP binding, DVIPA activation), batched
//! per NIC over one socket: gratuitous ARPs for IPv4, unsolicited NAs for IPv6.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracing::{info, warn};
use vipa_core::model::Observed;

/// Announces each (address, NIC, repeat count) that the kernel holds by now.
pub fn send(observed: &Observed, items: impl IntoIterator<Item = (IpAddr, String, u32)>) {
    let mut v4: BTreeMap<(String, u32), Vec<Ipv4Addr>> = BTreeMap::new();
    let mut v6: BTreeMap<(String, u32), Vec<Ipv6Addr>> = BTreeMap::new();
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        return;
    }
    let held = observed.local_addresses();
    for (addr, nic, count) in items {
        if !held.contains(&addr) {
            continue;
        }
        match addr {
            IpAddr::V4(a) => v4.entry((nic, count)).or_default().push(a),
            IpAddr::V6(a) => v6.entry((nic, count)).or_default().push(a),
        }
    }
    for ((nic, count), addrs) in v6 {
        let Some(l) = observed.link_by_name(&nic) else { continue };
        let Some(mac) = l.mac else { continue };
        match vipa_kernel::announce::unsolicited_na_many(l.index, mac, &addrs, count) {
            Ok(()) => info!(interface = %nic, addresses = addrs.len(), first = %addrs[0], count, "announced"),
            Err(e) => warn!(interface = %nic, addresses = addrs.len(), error = %e, "announcement failed"),
        }
    }
    for ((nic, count), addrs) in v4 {
        let Some(l) = observed.link_by_name(&nic) else { continue };
        let Some(mac) = l.mac else { continue };
        match vipa_kernel::announce::garp_many(l.index, mac, &addrs, count) {
            Ok(()) => info!(interface = %nic, addresses = addrs.len(), first = %addrs[0], count, "announced"),
            Err(e) => warn!(interface = %nic, addresses = addrs.len(), error = %e, "announcement failed"),
        }
    }
}
