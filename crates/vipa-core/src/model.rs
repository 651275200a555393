//! The kernel state vipa looks at, in the project's own types, and the operations the
//! planner asks the kernel adapter to carry out.
//!
//! The kernel adapter converts netlink messages into these at its boundary; nothing here
//! knows about netlink.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The address protocol (`IFA_PROTO`) vipa tags its own addresses with.
pub const ADDR_PROTO_VIPA: u8 = 0x56;
/// Routing table numbers the kernel reserves for local and broadcast routes.
pub const TABLE_LOCAL: u32 = 255;
/// The prefix length of a single address: 32 for IPv4, 128 for IPv6.
pub fn host_prefix_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;
/// Route protocol of routes the kernel made itself (connected routes).
pub const PROTO_KERNEL: u8 = 2;
/// Route protocol vipa tags the routes it creates with (IPMP groups, DVIPAs).
pub const PROTO_VIPA: u8 = 0x56;
/// Metric of the local routes that hold IPv4 DVIPAs ("AnyIP"): a metric of their own keeps
/// them apart from the local route the kernel makes for an address, should the same
/// address also be put on a device.
pub const DVIPA_LOCAL_METRIC: u32 = 0x56;

/// A network device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub carrier: bool,
    pub loopback: bool,
    /// The link kind (`dummy`, `veth`, ...), when the kernel says.
    pub kind: Option<String>,
    /// The hardware address, for Ethernet-like links.
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
}

/// An address on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// `IFA_PROTO`, 0 when unset.
    pub proto: u8,
    /// Deprecated (IPv6): never picked by the kernel as a source.
    #[serde(default)]
    pub deprecated: bool,
}

/// What identifies a route in the kernel: `ip route replace` with the same key replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteKey {
    pub table: u32,
    pub dst: IpAddr,
    pub dst_len: u8,
    pub tos: u8,
    pub metric: u32,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dst_len == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}/{}", self.dst, self.dst_len)?;
        }
        if self.table != TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        if self.tos != 0 {
            write!(f, " tos {}", self.tos)?;
        }
        write!(f, " metric {}", self.metric)
    }
}

/// A route, reduced to what the planner needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub key: RouteKey,
    /// `RTN_UNICAST`; other types (local, broadcast, blackhole, ...) are never touched,
    /// except vipa's own local routes.
    pub unicast: bool,
    /// `RTN_LOCAL`: traffic to the destination is delivered to this host.
    #[serde(default)]
    pub local: bool,
    pub protocol: u8,
    /// `RT_SCOPE_LINK` (a connected route) rather than universe.
    pub scope_link: bool,
    /// Gateways of the route, one per next hop that has one.
    pub gateways: Vec<IpAddr>,
    /// Interfaces the route leaves through: one, or one per multipath next hop.
    pub oifs: Vec<u32>,
    pub prefsrc: Option<IpAddr>,
}

/// Routed-mode settings vipa manages per interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SysctlKind {
    /// `net.ipv4.conf.IF.rp_filter`: 2 (loose), so traffic to the VIPA may arrive on any NIC.
    RpFilter,
    /// `net.ipv4.conf.IF.arp_ignore`: 1, so NICs do not answer ARP for the VIPA.
    ArpIgnore,
    /// `net.ipv4.conf.IF.arp_announce`: 2, so ARP requests carry the NIC's own address.
    ArpAnnounce,
    /// `net.ipv4.conf.IF.ignore_routes_with_linkdown`: 1, so routes over a NIC that lost
    /// its carrier are skipped at once and traffic leaves through the other NICs.
    IgnoreLinkdown4,
    /// `net.ipv6.conf.IF.ignore_routes_with_linkdown`: the same for IPv6.
    IgnoreLinkdown6,
}

impl SysctlKind {
    pub const ALL: [SysctlKind; 5] = [
        SysctlKind::RpFilter,
        SysctlKind::ArpIgnore,
        SysctlKind::ArpAnnounce,
        SysctlKind::IgnoreLinkdown4,
        SysctlKind::IgnoreLinkdown6,
    ];

    /// The path below `/proc/sys/net/` for interface `ifname` (or `all`).
    pub fn path(self, ifname: &str) -> String {
        match self {
            SysctlKind::RpFilter => format!("ipv4/conf/{ifname}/rp_filter"),
            SysctlKind::ArpIgnore => format!("ipv4/conf/{ifname}/arp_ignore"),
            SysctlKind::ArpAnnounce => format!("ipv4/conf/{ifname}/arp_announce"),
            SysctlKind::IgnoreLinkdown4 => {
                format!("ipv4/conf/{ifname}/ignore_routes_with_linkdown")
            }
            SysctlKind::IgnoreLinkdown6 => {
                format!("ipv6/conf/{ifname}/ignore_routes_with_linkdown")
            }
        }
    }

    pub fn v6(self) -> bool {
        matches!(self, SysctlKind::IgnoreLinkdown6)
    }
}

/// A sysctl of one interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SysctlKey {
    pub ifname: String,
    pub kind: SysctlKind,
}

impl fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net.{}", self.kind.path(&self.ifname).replace('/', "."))
    }
}

/// The kernel as last observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub links: BTreeMap<u32, Link>,
    /// Keyed by (ifindex, address).
    pub addresses: BTreeMap<(u32, IpAddr), Address>,
    pub routes: BTreeMap<RouteKey, Route>,
    /// Current values of the sysctls the planner asked for ([`crate::plan::wanted_sysctls`]),
    /// plus the `all` values under the interface name `all`.
    pub sysctls: BTreeMap<SysctlKey, i64>,
}

impl Observed {
    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }

    pub fn loopback(&self) -> Option<&Link> {
        self.links.values().find(|l| l.loopback)
    }

    /// The name of link `index`, for messages (`ifindex N` if it is not known).
    pub fn link_name(&self, index: u32) -> String {
        self.links.get(&index).map_or_else(|| format!("ifindex {index}"), |l| l.name.clone())
    }

    /// Applies one kernel event.
    pub fn apply(&mut self, event: &KernelEvent) {
        match event {
            KernelEvent::NewLink(l) => {
                self.links.insert(l.index, l.clone());
            }
            KernelEvent::DelLink(index) => {
                self.links.remove(index);
                self.addresses.retain(|(i, _), _| i != index);
                self.routes.retain(|_, r| !r.oifs.contains(index));
            }
            KernelEvent::NewAddress(a) => {
                self.addresses.insert((a.ifindex, a.addr), a.clone());
            }
            KernelEvent::DelAddress(a) => {
                self.addresses.remove(&(a.ifindex, a.addr));
            }
            KernelEvent::NewRoute(r) => {
                self.routes.insert(r.key, r.clone());
            }
            KernelEvent::DelRoute(k) => {
                self.routes.remove(k);
            }
        }
    }

    /// Updates the view as the kernel will once `op` succeeded, so the next plan does not
    /// ask for it again before the kernel's own event arrives. The event confirms it.
    pub fn assume(&mut self, op: &Op) {
        match op {
            Op::AddAddress { ifindex, addr, prefix_len, source } => {
                let deprecated = !source && addr.is_ipv6();
                let a = Address {
                    ifindex: *ifindex,
                    addr: *addr,
                    prefix_len: *prefix_len,
                    proto: ADDR_PROTO_VIPA,
                    deprecated,
                };
                self.addresses.insert((*ifindex, *addr), a);
            }
            Op::Deprecate { ifindex, addr, prefix_len } => {
                // (The kernel makes it again if it went meanwhile.)
                let a = Address {
                    ifindex: *ifindex,
                    addr: *addr,
                    prefix_len: *prefix_len,
                    proto: ADDR_PROTO_VIPA,
                    deprecated: true,
                };
                self.addresses.insert((*ifindex, *addr), a);
            }
            Op::DelAddress { ifindex, addr, .. } => {
                self.addresses.remove(&(*ifindex, *addr));
                // The kernel deletes the routes that use a deleted address as source.
                self.routes.retain(|_, r| r.prefsrc != Some(*addr));
            }
            Op::SetPrefsrc { key, prefsrc } => {
                if let Some(r) = self.routes.get_mut(key) {
                    r.prefsrc = *prefsrc;
                }
            }
            Op::DelRoute { key } => {
                self.routes.remove(key);
            }
            Op::AddRoute { route } => {
                self.routes.insert(route.key(), route.to_route());
            }
            Op::SetSysctl { key, value } => {
                self.sysctls.insert(key.clone(), *value);
            }
            // The device's index is only known from the kernel's event.
            Op::AddDummy { .. } | Op::RefreshRoute { .. } => {}
            Op::DelDummy { name } => {
                if let Some(index) = self.link_by_name(name).map(|l| l.index) {
                    self.apply(&KernelEvent::DelLink(index));
                }
            }
        }
    }

    /// Every address the host has: configured on a device, or held by one of vipa's local
    /// routes (a DVIPA).
    pub fn local_addresses(&self) -> BTreeSet<IpAddr> {
        let routes = self.routes.values().filter(|r| is_vipa_local(r)).map(|r| r.key.dst);
        self.addresses.values().map(|a| a.addr).chain(routes).collect()
    }

    /// The addresses of interface `ifindex` whose subnet contains `addr`.
    pub fn subnet_address(&self, ifindex: u32, dst: IpAddr, dst_len: u8) -> Option<IpAddr> {
        self.addresses
            .values()
            .find(|a| a.ifindex == ifindex && a.prefix_len == dst_len && same_prefix(a.addr, dst, dst_len))
            .map(|a| a.addr)
    }
}

/// Whether `a` and `b` share their first `len` bits (false across families).
pub fn same_prefix(a: IpAddr, b: IpAddr, len: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// One of vipa's local routes (a DVIPA).
pub fn is_vipa_local(r: &Route) -> bool {
    r.local && r.protocol == PROTO_VIPA && r.key.table == TABLE_LOCAL
}

/// A route vipa makes and owns: on-link (no gateway) over one or more interfaces, or a
/// local route that makes the host accept an address without putting it on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedRoute {
    pub table: u32,
    pub dst: IpAddr,
    pub dst_len: u8,
    pub metric: u32,
    pub src: Option<IpAddr>,
    /// One interface, or the next hops of a multipath route (IPv4 only).
    pub oifs: Vec<u32>,
    /// `local` in the local table rather than an on-link unicast route.
    #[serde(default)]
    pub local: bool,
}

impl OwnedRoute {
    /// The local route that holds the IPv4 DVIPA `addr` on interface `oif`: the host
    /// accepts, answers ARP for (with `arp_ignore` 0) and lets sockets bind the address,
    /// and adding it costs a fraction of adding an address when thousands are held.
    pub fn dvipa(addr: IpAddr, oif: u32) -> OwnedRoute {
        OwnedRoute {
            table: TABLE_LOCAL,
            dst: addr,
            dst_len: host_prefix_len(addr),
            metric: DVIPA_LOCAL_METRIC,
            src: None,
            oifs: vec![oif],
            local: true,
        }
    }

    pub fn key(&self) -> RouteKey {
        RouteKey { table: self.table, dst: self.dst, dst_len: self.dst_len, tos: 0, metric: self.metric }
    }

    /// How the route looks once the kernel has it.
    pub fn to_route(&self) -> Route {
        Route {
            key: self.key(),
            unicast: !self.local,
            local: self.local,
            protocol: PROTO_VIPA,
            scope_link: !self.local,
            gateways: vec![],
            oifs: self.oifs.clone(),
            prefsrc: self.src,
        }
    }
}

/// One change seen in the kernel (from a dump or an event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelEvent {
    NewLink(Link),
    DelLink(u32),
    NewAddress(Address),
    DelAddress(Address),
    NewRoute(Route),
    DelRoute(RouteKey),
}

/// One change the planner asks for. Applying an op twice is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a `dummy` device for a VIPA and bring it up.
    AddDummy {
        name: String,
    },
    /// Add a host address (`/32` or `/128`, no prefix route, no DAD, tagged as vipa's).
    AddAddress {
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
        /// The kernel may pick it as the source of the host's own traffic. An IPv6 one that
        /// may not is added deprecated (preferred lifetime 0): it still takes connections
        /// and answers neighbour solicitations, and a socket bound to it still uses it.
        /// (IPv4 has no such mark: `false` changes nothing there.)
        source: bool,
    },
    /// Make an IPv6 address of vipa's deprecated (preferred lifetime 0, valid for ever):
    /// one added preferred (by an earlier version) that is never to be a source.
    Deprecate {
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
    },
    /// Set a route's preferred source; everything else about the route stays as it is.
    SetPrefsrc {
        key: RouteKey,
        prefsrc: Option<IpAddr>,
    },
    /// Delete a route: one of vipa's own, or a connected route vipa changed whose subnet
    /// has left its interface (the kernel no longer recognises it once its source changed).
    DelRoute {
        key: RouteKey,
    },
    /// Add or replace one of vipa's own routes (tagged [`PROTO_VIPA`]).
    AddRoute {
        route: OwnedRoute,
    },
    SetSysctl {
        key: SysctlKey,
        value: i64,
    },
    /// Replace a route with itself. IPv6 sockets cache their route and look again only
    /// when the routing tree changes, not when a NIC loses carrier; this makes them look.
    RefreshRoute {
        key: RouteKey,
    },
    /// Delete an address; the kernel matches the prefix length it was added with.
    DelAddress {
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
    },
    DelDummy {
        name: String,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddDummy { name } => write!(f, "add dummy device {name}"),
            Op::AddAddress { ifindex, addr, prefix_len, source } => {
                let how = if *source { "" } else { " (never a source)" };
                write!(f, "add address {addr}/{prefix_len} on ifindex {ifindex}{how}")
            }
            Op::Deprecate { ifindex, addr, prefix_len } => {
                write!(f, "address {addr}/{prefix_len} on ifindex {ifindex}: never a source (deprecated)")
            }
            Op::SetPrefsrc { key, prefsrc: Some(src) } => write!(f, "route {key}: preferred source {src}"),
            Op::SetPrefsrc { key, prefsrc: None } => write!(f, "route {key}: no preferred source"),
            Op::DelRoute { key } => write!(f, "delete route {key}"),
            Op::AddRoute { route } if route.local => {
                write!(f, "local route {} on ifindex {:?}", route.key(), route.oifs)
            }
            Op::AddRoute { route } => {
                write!(f, "route {} via ifindex {:?}", route.key(), route.oifs)?;
                match route.src {
                    Some(s) => write!(f, " src {s}"),
                    None => Ok(()),
                }
            }
            Op::SetSysctl { key, value } => write!(f, "{key} = {value}"),
            Op::RefreshRoute { key } => write!(f, "refresh route {key} so connections look up their path again"),
            Op::DelAddress { ifindex, addr, prefix_len } => {
                write!(f, "delete address {addr}/{prefix_len} from ifindex {ifindex}")
            }
            Op::DelDummy { name } => write!(f, "delete dummy device {name}"),
        }
    }
}
