//! What the kernel must hold for IPMP groups, given each group's runtime state (which
//! NICs are active, which NIC answers for each data address).
//!
//! Realisation (seed-systems.md §5 rows 30–32):
//! - IPv4 data addresses live on `lo` and never move; which NIC answers ARP for each is
//!   decided by an nftables `arp` filter (the [`ArpFilter`]), so sockets bound to them
//!   survive every failure.
//! - IPv6 data addresses live on the NIC that answers for them (the kernel answers
//!   neighbour solicitations only for addresses of the receiving interface); a move adds
//!   the address on the new NIC before deleting it from the old one.
//! - Test addresses sit on their NIC with no prefix route, so they never carry data.
//! - vipa's own routes (protocol [`PROTO_VIPA`]): the group's subnet over every active NIC
//!   with a data address as source (IPv4 multipath; IPv6 takes one NIC, the kernel has no
//!   device-only IPv6 multipath), and a per-NIC route at a higher metric so probes bound
//!   to a failed or inactive NIC still leave through it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::config::Config;
use crate::model::{Observed, OwnedRoute, RouteKey, TABLE_MAIN};

/// Metric of a group's data route.
pub const DATA_METRIC: u32 = 100;
/// Metric of the first per-NIC probe route; the n-th member gets this plus n.
pub const PROBE_METRIC: u32 = 1000;

/// A group's state as far as the kernel is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupRuntime {
    pub name: String,
    /// Active NICs, in group order.
    pub active: Vec<String>,
    /// Data address → NIC answering for it (`None`: no active NIC).
    pub binding: BTreeMap<IpAddr, Option<String>>,
}

/// Which IPv4 data addresses each member NIC must not answer ARP for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArpFilter {
    pub drop: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl ArpFilter {
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty()
    }
}

/// Everything the groups want in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupDesired {
    /// (ifindex, address) → prefix length.
    pub addresses: BTreeMap<(u32, IpAddr), u8>,
    pub routes: BTreeMap<RouteKey, OwnedRoute>,
    pub arp: ArpFilter,
}

fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

pub fn desired(config: &Config, observed: &Observed, runtime: &[GroupRuntime]) -> GroupDesired {
    let mut d = GroupDesired::default();
    let Some(lo) = observed.loopback().map(|l| l.index) else { return d };
    for g in &config.groups {
        let rt = runtime.iter().find(|r| r.name == g.name);
        let index = |name: &str| observed.link_by_name(name).map(|l| l.index);
        let members: Vec<(usize, String, u32)> =
            g.interfaces.iter().enumerate().filter_map(|(k, n)| index(n).map(|i| (k, n.clone(), i))).collect();
        let active: Vec<u32> = rt.map(|r| r.active.iter().filter_map(|n| index(n)).collect()).unwrap_or_default();

        for &(addr, _) in &g.data_addresses {
            match addr {
                IpAddr::V4(_) => {
                    d.addresses.insert((lo, addr), 32);
                }
                IpAddr::V6(_) => {
                    let bound = rt.and_then(|r| r.binding.get(&addr).cloned().flatten()).and_then(|n| index(&n));
                    // Unbound: stay where it is, so sockets keep it; else the first member.
                    let here = members.iter().map(|m| m.2).find(|&i| observed.addresses.contains_key(&(i, addr)));
                    if let Some(i) = bound.or(here).or(members.first().map(|m| m.2)) {
                        d.addresses.insert((i, addr), 128);
                    }
                }
            }
        }
        for (nic, tests) in &g.test_addresses {
            if let Some(i) = index(nic) {
                for &(a, len) in tests {
                    d.addresses.insert((i, a), len);
                }
            }
        }

        // One route per subnet, sourced from its first data address.
        let mut subnets: Vec<(IpAddr, u8, IpAddr)> = Vec::new();
        for &(a, len) in &g.data_addresses {
            let net = network(a, len);
            if !subnets.iter().any(|s| s.0 == net && s.1 == len) {
                subnets.push((net, len, a));
            }
        }
        for (net, len, src) in subnets {
            let oifs: Vec<u32> = if net.is_ipv4() { active.clone() } else { active.iter().take(1).copied().collect() };
            if !oifs.is_empty() {
                let r = OwnedRoute {
                    table: TABLE_MAIN,
                    dst: net,
                    dst_len: len,
                    metric: DATA_METRIC,
                    src: Some(src),
                    oifs,
                    local: false,
                };
                d.routes.insert(r.key(), r);
            }
            for (k, _, i) in &members {
                let r = OwnedRoute {
                    table: TABLE_MAIN,
                    dst: net,
                    dst_len: len,
                    metric: PROBE_METRIC + *k as u32,
                    src: Some(src),
                    oifs: vec![*i],
                    local: false,
                };
                d.routes.insert(r.key(), r);
            }
        }

        // ARP: each member answers only for the IPv4 data addresses bound to it.
        for (_, nic, _) in &members {
            let drop: Vec<Ipv4Addr> = g
                .data_addresses
                .iter()
                .filter_map(|&(a, _)| match a {
                    IpAddr::V4(v4) => {
                        let bound = rt.and_then(|r| r.binding.get(&a).cloned().flatten());
                        (bound.as_deref() != Some(nic.as_str())).then_some(v4)
                    }
                    IpAddr::V6(_) => None,
                })
                .collect();
            if !drop.is_empty() {
                d.arp.drop.insert(nic.clone(), drop);
            }
        }
    }
    d
}
