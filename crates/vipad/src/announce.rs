//! Sending the announcements that follow a move (IPMP binding, DVIPA activation): IPv4
//! ones batched per NIC over one socket, IPv6 ones one by one.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use tracing::{info, warn};
use vipa_core::model::Observed;

/// Announces each (address, NIC, repeat count) that the kernel holds by now.
pub fn send(observed: &Observed, items: impl IntoIterator<Item = (IpAddr, String, u32)>) {
    let mut v4: BTreeMap<(String, u32), Vec<Ipv4Addr>> = BTreeMap::new();
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
            IpAddr::V6(a) => {
                let Some(l) = observed.link_by_name(&nic) else { continue };
                let Some(mac) = l.mac else { continue };
                match vipa_kernel::announce::unsolicited_na(&nic, l.index, mac, a, count) {
                    Ok(()) => info!(address = %addr, interface = %nic, count, "announced"),
                    Err(e) => warn!(address = %addr, interface = %nic, error = %e, "announcement failed"),
                }
            }
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
