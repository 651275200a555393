//! Sending the announcements that follow a move (IPMP binding, DVIPA activation), batched
//! per NIC over one socket: gratuitous ARPs for IPv4, unsolicited NAs for IPv6.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tracing::{info, warn};
use vipa_core::model::Observed;

/// Announces each (address, NIC, repeat count) that the kernel holds by now.
pub fn send(observed: &Observed, items: impl IntoIterator<Item = (IpAddr, String, u32)>) {
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        return;
    }
    let held = observed.local_addresses();
    let mut batches: BTreeMap<(String, u32), Vec<IpAddr>> = BTreeMap::new();
    for (addr, nic, count) in items.filter(|(a, _, _)| held.contains(a)) {
        batches.entry((nic, count)).or_default().push(addr);
    }
    for ((nic, count), addrs) in batches {
        let Some(l) = observed.link_by_name(&nic) else { continue };
        let Some(mac) = l.mac else { continue };
        match vipa_kernel::announce::announce_many(l.index, mac, &addrs, count) {
            Ok(()) => info!(interface = %nic, addresses = addrs.len(), first = %addrs[0], count, "announced"),
            Err(e) => warn!(interface = %nic, addresses = addrs.len(), error = %e, "announcement failed"),
        }
    }
}
