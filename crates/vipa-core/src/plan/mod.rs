//! The planner: from the configuration and the observed kernel, the ordered list of
//! operations that makes the kernel match, and the ledger of what vipa changed.
//!
//! `plan` is pure and deterministic. It touches only what vipa owns: addresses it added
//! (tagged with [`ADDR_PROTO_VIPA`] and kept in the ledger), the preferred source of
//! routes out of a VIPA's source interfaces, and the routed-mode sysctls of those
//! interfaces. The ledger remembers what each route and sysctl was before vipa changed it,
//! so removing a VIPA or an interface restores it exactly.
//!
//! Order matters to the kernel: a route's preferred source must be a local address
//! (EINVAL otherwise), and deleting an address deletes the routes that use it as their
//! source. So addresses are added before routes point at them, and routes are pointed
//! elsewhere before their source address is deleted.

use std::collections::{BTreeMap, BTreeSet};

pub mod group;

pub use group::{ArpFilter, GroupRuntime};
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::config::{Config, VipaConfig};
use crate::model::{
    host_prefix_len, is_vipa_local, same_prefix, Link, Observed, Op, OwnedRoute, Route, RouteKey, SysctlKey,
    SysctlKind, ADDR_PROTO_VIPA, PROTO_KERNEL, PROTO_VIPA, TABLE_LOCAL, TABLE_MAIN,
};

/// Where VIPA addresses live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceMode {
    /// One `dummy` device per VIPA, named after it.
    Dummy,
    /// On `lo`, where the kernel has no `dummy` driver.
    Loopback,
}

/// What vipa changed, and what was there before. Persisted by the daemon so that a
/// restarted vipad restores the same originals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Addresses vipa added: (device name, address).
    #[serde(default)]
    pub addresses: BTreeSet<(String, IpAddr)>,
    /// Routes whose preferred source vipa set, with the source they had before.
    #[serde(default, with = "pairs")]
    pub routes: BTreeMap<RouteKey, RouteRecord>,
    /// Sysctls vipa set, with the value they had before.
    #[serde(default, with = "pairs")]
    pub sysctls: BTreeMap<SysctlKey, i64>,
    /// Dummy devices vipa created.
    #[serde(default)]
    pub dummies: BTreeSet<String>,
}

/// The route as it was before vipa set its preferred source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub original: Option<IpAddr>,
    pub vipa: String,
}

/// Serialises a map with structured keys as a list of pairs (JSON keys must be strings).
mod pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(m: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// The planner's answer: operations in the order to apply them, and the ledger as it is
/// once they have been applied (but for the addresses they delete, which stay in it until
/// a plan finds them gone: the daemon may stop before their deletions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub ledger: Ledger,
    /// The nftables ARP filter the IPMP groups need (empty without groups).
    pub arp: ArpFilter,
    /// How many of the last `ops` add the addresses of IPv6 DVIPAs that their local
    /// routes, earlier in `ops`, already hold. Each costs the kernel a walk of every
    /// multicast group of the NIC (one per address), so thousands take it tens of
    /// seconds, while the routes take a fraction of one and make the host take the
    /// addresses' traffic at once; the daemon answers neighbour solicitations for them
    /// until the addresses follow (`dvipas_to_answer_for`). It may stop anywhere among
    /// these, act on whatever came meanwhile, and plan again.
    pub trailing: usize,
    /// How many ops just before the trailing ones delete the addresses of released
    /// DVIPAs. Deleting one costs the kernel a walk of the routing table and of the NIC's
    /// multicast groups, so thousands take it seconds. The daemon may stop anywhere among
    /// these too: the daemon's heartbeats mark a released DVIPA going for as long as the
    /// host has its address, so each is free for its next holder once its own address is
    /// gone, not once the last one is.
    pub releases: usize,
}

impl Plan {
    /// Where the work the daemon may leave for a later plan begins: the releases, then
    /// the trailing additions.
    pub fn later_from(&self) -> usize {
        self.trailing_from() - self.releases
    }

    /// Where the trailing additions begin.
    pub fn trailing_from(&self) -> usize {
        self.ops.len() - self.trailing
    }

    /// What is left for a later plan once the first `applied` ops are done: (releases,
    /// trailing additions).
    pub fn left_after(&self, applied: usize) -> (usize, usize) {
        let releases = self.trailing_from().saturating_sub(applied).min(self.releases);
        (releases, self.ops.len().saturating_sub(applied).min(self.trailing))
    }
}

/// The device a VIPA's addresses go on, if it exists.
pub fn vipa_device<'a>(v: &VipaConfig, observed: &'a Observed, mode: DeviceMode) -> Option<&'a crate::model::Link> {
    match mode {
        DeviceMode::Loopback => observed.loopback(),
        DeviceMode::Dummy => observed.link_by_name(&v.name),
    }
}

/// Whether vipa should consider this route at all: unicast, not in the local table, with
/// a device, and not to a link-local, loopback or multicast destination.
pub fn eligible(r: &Route) -> bool {
    if !r.unicast || r.key.table == TABLE_LOCAL || r.oifs.is_empty() {
        return false;
    }
    match r.key.dst {
        IpAddr::V4(d) => !(r.key.dst_len >= 4 && (d.is_multicast() || d.is_loopback() || d.is_link_local())),
        IpAddr::V6(d) => {
            let s0 = d.segments()[0];
            !(r.key.dst_len >= 10 && s0 & 0xffc0 == 0xfe80 || r.key.dst_len >= 8 && d.is_multicast())
        }
    }
}

/// A connected route the kernel made for an interface address (and would remove with it).
fn connected(r: &Route) -> bool {
    r.protocol == PROTO_KERNEL && r.scope_link && r.gateways.is_empty() && r.oifs.len() == 1
}

/// The preferred source a route has when the kernel makes it: the interface's own
/// address for an IPv4 connected route, none otherwise (IPv6 prefix routes have none).
fn kernel_default_source(r: &Route, observed: &Observed) -> Option<IpAddr> {
    if connected(r) && r.key.dst.is_ipv4() {
        observed.subnet_address(r.oifs[0], r.key.dst, r.key.dst_len)
    } else {
        None
    }
}

/// The VIPA whose source interfaces carry this route, if every next hop leaves through
/// one VIPA's interfaces.
pub fn route_vipa<'a>(r: &Route, config: &'a Config, observed: &Observed) -> Option<&'a VipaConfig> {
    let mut found: Option<&VipaConfig> = None;
    for oif in &r.oifs {
        let name = &observed.links.get(oif)?.name;
        let v = config.vipas.iter().find(|v| v.source_interfaces.iter().any(|n| n == name))?;
        match found {
            Some(f) if f.name != v.name => return None,
            _ => found = Some(v),
        }
    }
    found
}

/// The sysctls the planner needs to see: every managed kind on every present source
/// interface, the `all` values, whatever the ledger holds, and `arp_ignore` of the NICs
/// IPv4 DVIPAs go on.
pub fn wanted_sysctls(config: &Config, observed: &Observed, ledger: &Ledger) -> Vec<SysctlKey> {
    let mut keys: BTreeSet<SysctlKey> = ledger.sysctls.keys().cloned().collect();
    for kind in SysctlKind::ALL {
        keys.insert(SysctlKey { ifname: "all".into(), kind });
    }
    // Read only: whether an IPv4 DVIPA can be a local route on its NIC.
    for d in config.dvipas.iter().filter(|d| d.address.is_ipv4()) {
        if let Some(nic) = d.announce.first().filter(|n| observed.link_by_name(n).is_some()) {
            keys.insert(SysctlKey { ifname: nic.clone(), kind: SysctlKind::ArpIgnore });
        }
    }
    for (nic, kinds) in managed_sysctls(config) {
        if observed.link_by_name(&nic).is_some() {
            for kind in kinds {
                keys.insert(SysctlKey { ifname: nic.clone(), kind });
            }
        }
    }
    keys.into_iter().collect()
}

/// The sysctls vipa manages on each interface it uses. A VIPA's source interfaces get
/// all of them for the families it has; an IPMP member gets loose `rp_filter`,
/// `arp_announce=2` (ARP requests carry its test address) and ignores routes over a link
/// that lost carrier, but keeps `arp_ignore` as it is, since the member bound to a data
/// address on `lo` must answer ARP for it.
fn managed_sysctls(config: &Config) -> Vec<(String, Vec<SysctlKind>)> {
    let mut out = Vec::new();
    for v in &config.vipas {
        let (has4, has6) = (v.source_for(false).is_some(), v.source_for(true).is_some());
        let kinds: Vec<SysctlKind> = SysctlKind::ALL.into_iter().filter(|k| if k.v6() { has6 } else { has4 }).collect();
        for nic in &v.source_interfaces {
            out.push((nic.clone(), kinds.clone()));
        }
    }
    for g in &config.groups {
        let has4 = g.data_addresses.iter().any(|(a, _)| a.is_ipv4());
        let has6 = g.data_addresses.iter().any(|(a, _)| a.is_ipv6());
        let mut kinds = Vec::new();
        if has4 {
            kinds.extend([SysctlKind::RpFilter, SysctlKind::ArpAnnounce, SysctlKind::IgnoreLinkdown4]);
        }
        if has6 {
            kinds.push(SysctlKind::IgnoreLinkdown6);
        }
        for nic in &g.interfaces {
            out.push((nic.clone(), kinds.clone()));
        }
    }
    out
}

/// The value vipa wants for a managed sysctl, given the interface's and `all`'s current
/// values; `None` when the effective value is already right.
fn sysctl_target(kind: SysctlKind, current: i64, all: i64) -> Option<i64> {
    // The kernel combines the interface value with `all`: max() for rp_filter,
    // arp_ignore and arp_announce, OR for ignore_routes_with_linkdown.
    let effective = current.max(all);
    match kind {
        SysctlKind::RpFilter => (effective == 1).then_some(2),
        SysctlKind::ArpIgnore => (effective < 1).then_some(1),
        SysctlKind::ArpAnnounce => (effective < 2).then_some(2),
        SysctlKind::IgnoreLinkdown4 | SysctlKind::IgnoreLinkdown6 => (effective == 0).then_some(1),
    }
}

/// Computes the operations that bring the kernel to the configuration, with no runtime
/// state: IPMP groups as if none of their NICs were active yet, no DVIPA held.
pub fn plan(config: &Config, observed: &Observed, ledger: &Ledger, mode: DeviceMode) -> Plan {
    plan_runtime(config, observed, ledger, mode, &[], &[])
}

/// Whether IPv4 DVIPAs on `dev` are held by local routes ("AnyIP") rather than addresses
/// on the device. Adding an address walks the device's address list, so
/// thousands of them take seconds; a local route takes microseconds. The kernel answers
/// ARP for a local route only while the receiving NIC's effective `arp_ignore` is 0 (for
/// an address on that NIC also under 1 and 3), so anything else, or a value vipa is about
/// to raise for a static VIPA or does not know, keeps the address. (IPv6 DVIPAs on a NIC
/// take both, the route first: see `Plan::trailing`.)
fn dvipas_as_routes(dev: &Link, observed: &Observed, managed: &[(String, Vec<SysctlKind>)]) -> bool {
    if dev.loopback {
        return false;
    }
    let value = |ifname: &str| {
        observed.sysctls.get(&SysctlKey { ifname: ifname.to_string(), kind: SysctlKind::ArpIgnore }).copied()
    };
    let raised = managed.iter().any(|(nic, kinds)| *nic == dev.name && kinds.contains(&SysctlKind::ArpIgnore));
    matches!((value(&dev.name), value("all")), (Some(0), Some(0))) && !raised
}

/// The IPv6 DVIPAs the kernel takes traffic for by their local route but would not answer
/// neighbour solicitations for, since their address is not on the NIC yet (see
/// `Plan::trailing`): the daemon answers for them meanwhile. By NIC index. With
/// `routes_coming`, also those whose route is still to come (the plan about to be applied
/// adds it): a neighbour that asked between a route going in and the daemon taking it on
/// would otherwise wait for its own retry, a second later, and one that asks a moment
/// before the route loses one packet at most.
pub fn dvipas_to_answer_for(
    observed: &Observed,
    held: &[HeldDvipa],
    routes_coming: bool,
) -> BTreeMap<u32, BTreeSet<Ipv6Addr>> {
    let mut answer: BTreeMap<u32, BTreeSet<Ipv6Addr>> = BTreeMap::new();
    for d in held {
        let (IpAddr::V6(addr), Some(nic)) = (d.address, &d.device) else { continue };
        let Some(l) = observed.link_by_name(nic) else { continue };
        let routed = routes_coming
            || observed.routes.get(&OwnedRoute::dvipa(d.address, l.index).key()).is_some_and(is_vipa_local);
        if routed && !observed.addresses.contains_key(&(l.index, d.address)) {
            answer.entry(l.index).or_default().insert(addr);
        }
    }
    answer
}

/// A DVIPA this node holds, and the device it goes on (`None`: `lo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDvipa {
    pub address: IpAddr,
    pub device: Option<String>,
}

/// Computes the operations with everything the daemon's state machines decided: IPMP
/// groups' bindings and the DVIPAs this node holds.
pub fn plan_runtime(
    config: &Config,
    observed: &Observed,
    ledger: &Ledger,
    mode: DeviceMode,
    groups: &[GroupRuntime],
    dvipas: &[HeldDvipa],
) -> Plan {
    let mut want = group::desired(config, observed, groups);
    let managed_nics = managed_sysctls(config);
    // By device: thousands of DVIPAs share a few NICs.
    let mut as_routes: BTreeMap<u32, bool> = BTreeMap::new();
    // An IPv6 DVIPA is never the source of the host's own traffic: it moves, and what the
    // host started from it would break. (As an address in the link's prefix, the kernel
    // would otherwise prefer it to the NIC's own address, its longest match. IPv4 picks
    // the route's preferred source, the NIC's address.)
    let mut not_sources: BTreeSet<(u32, IpAddr)> = BTreeSet::new();
    // IPv6 DVIPAs held by their route: their address, if still to come, comes last.
    let mut trailing: BTreeSet<(u32, IpAddr)> = BTreeSet::new();
    for d in dvipas {
        let dev = match &d.device {
            Some(n) => observed.link_by_name(n),
            None => observed.loopback(),
        };
        if let Some(l) = dev {
            let routes = *as_routes.entry(l.index).or_insert_with(|| dvipas_as_routes(l, observed, &managed_nics));
            // IPv4: a route where the kernel answers ARP for one, else the address. IPv6 on
            // a NIC: both, the address after (`Plan::trailing`); on `lo`: the address.
            let (route, address) = match (d.address.is_ipv6(), l.loopback) {
                (false, _) => (routes, !routes),
                (true, false) => (true, true),
                (true, true) => (false, true),
            };
            if route {
                let r = OwnedRoute::dvipa(d.address, l.index);
                want.routes.insert(r.key(), r);
            }
            if address {
                want.addresses.insert((l.index, d.address), host_prefix_len(d.address));
            }
            if d.address.is_ipv6() {
                if route {
                    trailing.insert((l.index, d.address));
                }
                not_sources.insert((l.index, d.address));
            }
        }
    }
    let mut next = ledger.clone();
    let mut add_links = Vec::new();
    let mut trailing_addrs = Vec::new();
    let mut add_addrs = Vec::new();
    let mut routes = Vec::new();
    let mut sysctls = Vec::new();
    let mut del_addrs = Vec::new();
    let mut release_addrs = Vec::new();
    let mut del_links = Vec::new();

    // Devices (dummy mode only).
    if mode == DeviceMode::Dummy {
        for v in &config.vipas {
            if observed.link_by_name(&v.name).is_none() {
                add_links.push(Op::AddDummy { name: v.name.clone() });
            }
            next.dummies.insert(v.name.clone());
        }
        for name in &ledger.dummies {
            if config.vipa(name).is_none() {
                if observed.link_by_name(name).is_some() {
                    del_links.push(Op::DelDummy { name: name.clone() });
                }
                next.dummies.remove(name);
            }
        }
    }

    // Addresses.
    let ifname = |index: u32| observed.links.get(&index).map(|l| l.name.clone()).unwrap_or_default();
    let mut wanted: BTreeMap<(u32, IpAddr), u8> = std::mem::take(&mut want.addresses);
    for v in &config.vipas {
        let Some(dev) = vipa_device(v, observed, mode) else {
            continue;
        };
        for &addr in &v.addresses {
            wanted.insert((dev.index, addr), host_prefix_len(addr));
        }
    }
    // Every address wanted, whichever device: what a deletion elsewhere keeps on the host.
    let kept: BTreeSet<IpAddr> = wanted.keys().map(|&(_, a)| a).collect();
    for (&(ifindex, addr), &prefix_len) in &wanted {
        let name = ifname(ifindex);
        match observed.addresses.get(&(ifindex, addr)) {
            None => {
                let source = !not_sources.contains(&(ifindex, addr));
                let op = Op::AddAddress { ifindex, addr, prefix_len, source };
                // (In the ledger from now on, as every address vipa adds: one that loses its
                // protocol tag, or a kernel without tags, still shows it is vipa's.)
                match trailing.contains(&(ifindex, addr)) {
                    true => trailing_addrs.push(op),
                    false => add_addrs.push(op),
                }
            }
            // Someone else's identical address is used as it is, and not claimed.
            Some(a) if a.proto != ADDR_PROTO_VIPA && !ledger.addresses.contains(&(name.clone(), addr)) => continue,
            // Ours, but a source (an earlier version added it so, or someone changed it).
            Some(a) if addr.is_ipv6() && !a.deprecated && not_sources.contains(&(ifindex, addr)) => {
                add_addrs.push(Op::Deprecate { ifindex, addr, prefix_len });
            }
            Some(_) => {}
        }
        next.addresses.insert((name, addr));
    }
    let mut leaving: BTreeSet<IpAddr> = BTreeSet::new();
    let dvipa_addrs: BTreeSet<IpAddr> = config.dvipas.iter().map(|d| d.address).collect();
    for (&(ifindex, addr), a) in &observed.addresses {
        let ours = a.proto == ADDR_PROTO_VIPA || ledger.addresses.contains(&(ifname(ifindex), addr));
        if ours && !wanted.contains_key(&(ifindex, addr)) {
            let op = Op::DelAddress { ifindex, addr, prefix_len: a.prefix_len };
            match dvipa_addrs.contains(&addr) {
                true => release_addrs.push(op),
                false => del_addrs.push(op),
            }
            // An address that moves (IPv6 data addresses) is not leaving the host.
            if !kept.contains(&addr) {
                leaving.insert(addr);
            }
        }
    }
    // An address leaves the ledger once it is gone, not when its deletion is planned: the
    // daemon may stop before a release, and one known as vipa's by the ledger alone would
    // otherwise be left behind.
    next.addresses.retain(|(dev, addr)| {
        observed.link_by_name(dev).is_some_and(|l| {
            let key = (l.index, *addr);
            wanted.contains_key(&key) || observed.addresses.contains_key(&key)
        })
    });
    let held = observed.local_addresses();
    let present = |addr: IpAddr| !leaving.contains(&addr) && (held.contains(&addr) || kept.contains(&addr));
    let vipa_addr = |addr: IpAddr| config.vipas.iter().any(|v| v.addresses.contains(&addr)) || leaving.contains(&addr);

    // vipa's own routes (IPMP groups, DVIPAs).
    for (key, w) in &want.routes {
        let same = observed.routes.get(key).is_some_and(|r| {
            // Next hops in any order (each interface once).
            let hops = r.oifs.len() == w.oifs.len() && w.oifs.iter().all(|o| r.oifs.contains(o));
            r.protocol == PROTO_VIPA && r.local == w.local && hops && r.prefsrc == w.src && r.gateways.is_empty()
        });
        if !same {
            routes.push(Op::AddRoute { route: w.clone() });
        }
    }
    for r in observed.routes.values() {
        let ours = r.protocol == PROTO_VIPA && r.key.table == TABLE_MAIN || is_vipa_local(r);
        if ours && !want.routes.contains_key(&r.key) {
            routes.push(Op::DelRoute { key: r.key });
        }
    }

    // Routes.
    for r in observed.routes.values() {
        if !eligible(r) || r.protocol == PROTO_VIPA {
            continue;
        }
        let record = ledger.routes.get(&r.key);
        let touched = record.is_some() || r.prefsrc.is_some_and(vipa_addr);
        if touched && connected(r) && observed.subnet_address(r.oifs[0], r.key.dst, r.key.dst_len).is_none() {
            // The interface's address is gone; the kernel would have removed this route
            // with it, had vipa not changed its source.
            routes.push(Op::DelRoute { key: r.key });
            next.routes.remove(&r.key);
            continue;
        }
        let want = route_vipa(r, config, observed)
            .and_then(|v| v.source_for(r.key.dst.is_ipv6()).map(|s| (v, s)))
            .filter(|&(_, s)| present(s));
        match want {
            Some((v, src)) => {
                let original = match record {
                    // A foreign change (a DHCP client, `ip route replace`) wrote a source
                    // of its own, or none: that is what to restore later.
                    Some(_) if !r.prefsrc.is_some_and(vipa_addr) => r.prefsrc,
                    Some(rec) => rec.original,
                    None if r.prefsrc.is_some_and(vipa_addr) => kernel_default_source(r, observed),
                    None => r.prefsrc,
                };
                next.routes.insert(r.key, RouteRecord { original, vipa: v.name.clone() });
                if r.prefsrc != Some(src) {
                    routes.push(Op::SetPrefsrc { key: r.key, prefsrc: Some(src) });
                }
            }
            None if touched => {
                let restore = match record {
                    Some(RouteRecord { original: None, .. }) => None,
                    Some(rec) => rec.original.filter(|&a| present(a)).or_else(|| kernel_default_source(r, observed)),
                    None => kernel_default_source(r, observed),
                };
                if (record.is_some() || r.prefsrc.is_some_and(|p| leaving.contains(&p) || !present(p)))
                    && r.prefsrc != restore
                {
                    routes.push(Op::SetPrefsrc { key: r.key, prefsrc: restore });
                }
                next.routes.remove(&r.key);
            }
            None => {}
        }
    }
    next.routes.retain(|k, _| observed.routes.contains_key(k));

    // Sysctls of the source interfaces.
    let value =
        |ifname: &str, kind: SysctlKind| observed.sysctls.get(&SysctlKey { ifname: ifname.to_string(), kind }).copied();
    let mut managed: BTreeSet<SysctlKey> = BTreeSet::new();
    for (nic, kinds) in &managed_nics {
        if observed.link_by_name(nic).is_none() {
            continue;
        }
        for &kind in kinds {
            let key = SysctlKey { ifname: nic.clone(), kind };
            managed.insert(key.clone());
            let Some(current) = value(nic, kind) else {
                continue;
            };
            let all = if kind.v6() { 0 } else { value("all", kind).unwrap_or(0) };
            if let Some(target) = sysctl_target(kind, current, all) {
                if target != current {
                    next.sysctls.entry(key.clone()).or_insert(current);
                    sysctls.push(Op::SetSysctl { key, value: target });
                }
            }
        }
    }
    for (key, &original) in &ledger.sysctls {
        if managed.contains(key) {
            continue;
        }
        next.sysctls.remove(key);
        if observed.link_by_name(&key.ifname).is_none() {
            continue;
        }
        if let Some(current) = value(&key.ifname, key.kind) {
            if current != original {
                sysctls.push(Op::SetSysctl { key: key.clone(), value: original });
            }
        }
    }

    let mut ops = add_links;
    ops.extend(add_addrs);
    ops.extend(routes);
    ops.extend(sysctls);
    ops.extend(del_addrs);
    ops.extend(del_links);
    let (releases, trailing) = (release_addrs.len(), trailing_addrs.len());
    ops.extend(release_addrs);
    ops.extend(trailing_addrs);
    Plan { ops, ledger: next, arp: want.arp, trailing, releases }
}

/// What to do when a link's carrier changes. IPv4 drops cached routes on its own; IPv6
/// sockets keep using a cached route through a NIC that lost its carrier until TCP's
/// retransmission backoff gives up on it (seconds). Refreshing the IPv6 routes out of
/// that NIC makes every socket look its path up again at once, so established connections
/// to the VIPA move to another NIC (and back when the carrier returns).
pub fn carrier_changed(
    config: &Config,
    before: Option<&crate::model::Link>,
    after: &crate::model::Link,
    observed: &Observed,
) -> Vec<Op> {
    let changed = before.is_some_and(|b| b.carrier != after.carrier);
    let ours = config.vipas.iter().any(|v| v.source_for(true).is_some() && v.source_interfaces.contains(&after.name));
    if !changed || !ours {
        return Vec::new();
    }
    observed
        .routes
        .values()
        .filter(|r| r.key.dst.is_ipv6() && eligible(r) && r.oifs.contains(&after.index))
        .map(|r| Op::RefreshRoute { key: r.key })
        .collect()
}

/// Findings about a configuration against the kernel as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// The configuration cannot be applied.
    pub errors: Vec<String>,
    /// It can, but something will only take effect later.
    pub warnings: Vec<String>,
}

/// Refuses a DVIPA this host would answer for while another node holds it: an address an
/// interface already has that vipa did not put there (not tagged as vipa's, not in the
/// ledger), or one inside a local route that is not vipa's. An untagged one where and as
/// vipa puts it (host-length, on the DVIPA's first `announce` NIC or `lo`) is taken as a
/// vipad's that was killed before it wrote its ledger, on a kernel without address tags,
/// and only warned about.
fn check_dvipas(file: &str, config: &Config, observed: &Observed, ledger: &Ledger, f: &mut Findings) {
    if config.dvipas.is_empty() {
        return;
    }
    // By address, once: thousands of DVIPAs, and as many addresses.
    let mut by_addr: BTreeMap<IpAddr, Vec<&crate::model::Address>> = BTreeMap::new();
    for a in observed.addresses.values() {
        by_addr.entry(a.addr).or_default().push(a);
    }
    let recorded: BTreeSet<IpAddr> = ledger.addresses.iter().map(|(_, a)| *a).collect();
    let foreign_locals: Vec<&Route> =
        observed.routes.values().filter(|r| r.local && r.protocol != PROTO_KERNEL && !is_vipa_local(r)).collect();
    let lo = observed.loopback().map(|l| l.name.clone());
    for (i, d) in config.dvipas.iter().enumerate() {
        let home = d.announce.first().or(lo.as_ref());
        for a in by_addr.get(&d.address).into_iter().flatten() {
            if a.proto == ADDR_PROTO_VIPA || recorded.contains(&a.addr) {
                continue;
            }
            let owner = observed.link_name(a.ifindex);
            if a.proto == 0 && a.prefix_len == host_prefix_len(a.addr) && home == Some(&owner) {
                f.warnings.push(format!(
                    "{file}: dvipa[{i}].address: {} is on interface {owner} as vipa would put it, but not marked as vipa's; taken as left there by a vipad that was stopped before it wrote down what it added (if it is someone else's, take it off {owner}: this host would answer for it while another node holds it)",
                    d.address
                ));
                continue;
            }
            f.errors.push(format!(
                "{file}: dvipa[{i}].address: {} is already the address of interface {owner} ({}/{}), not one vipa put there: this host would answer for it while another node holds it; give the DVIPA an address no interface has, or take it off {owner} first",
                d.address, a.addr, a.prefix_len
            ));
        }
        for r in foreign_locals.iter().filter(|r| same_prefix(r.key.dst, d.address, r.key.dst_len)) {
            f.errors.push(format!(
                "{file}: dvipa[{i}].address: {} is inside the local route {}/{} (table {}), which is not vipa's: this host takes and answers for every address in it, also while another node holds the DVIPA; give the DVIPA an address outside it, or delete the route",
                d.address, r.key.dst, r.key.dst_len, r.key.table
            ));
        }
    }
}

/// Checks what only the kernel's view can tell: an address that already belongs to a NIC
/// (error; for a DVIPA, unless vipa put it there, as `ledger` or its tag tells), a source
/// interface that does not exist yet (warning: applied when it appears), a device name
/// taken by something that is not a dummy (error).
pub fn check(file: &str, config: &Config, observed: &Observed, ledger: &Ledger, mode: DeviceMode) -> Findings {
    let mut f = Findings::default();
    check_dvipas(file, config, observed, ledger, &mut f);
    for (i, v) in config.vipas.iter().enumerate() {
        let dev = vipa_device(v, observed, mode);
        if mode == DeviceMode::Dummy {
            if let Some(l) = dev {
                if l.kind.as_deref() != Some("dummy") {
                    f.errors.push(format!(
                        "{file}:{}: vipa[{i}].name: a device named {:?} already exists and is not a dummy device made for a VIPA: choose another VIPA name",
                        v.line, v.name
                    ));
                }
            }
        }
        for (j, &addr) in v.addresses.iter().enumerate() {
            let line = v.address_lines.get(j).copied().unwrap_or(v.line);
            for a in observed.addresses.values().filter(|a| a.addr == addr) {
                if Some(a.ifindex) == dev.map(|d| d.index) {
                    continue;
                }
                let owner = observed.link_name(a.ifindex);
                f.errors.push(format!(
                    "{file}:{line}: vipa[{i}].addresses[{j}]: {addr} is already the address of interface {owner} ({addr}/{}): a VIPA address must not be a NIC's own address; pick an address no interface has",
                    a.prefix_len
                ));
            }
        }
        for (j, nic) in v.source_interfaces.iter().enumerate() {
            let line = v.interface_lines.get(j).copied().unwrap_or(v.line);
            if observed.link_by_name(nic).is_none() {
                f.warnings.push(format!(
                    "{file}:{line}: vipa[{i}].source_interfaces[{j}]: interface {nic:?} does not exist yet; VIPA {:?} is applied to it when it appears",
                    v.name
                ));
            }
        }
    }
    f
}
