//! rtnetlink: dumps, event subscription and the operations of a plan.
//!
//! Two sockets, as holo and BIRD do: [`Kernel`] sends requests and reads their acks;
//! [`Events`] is subscribed to link, address and route groups. Subscribe first, then
//! dump, so nothing falls between the two; on `ENOBUFS` the event stream lost messages
//! and the caller must dump again.
//!
//! Netlink types stay in this module: callers see `vipa_core::model` types and the
//! opaque [`Update`].

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol, AddressScope, CacheInfo,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHop, RouteNextHopFlags, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tracing::debug;
use vipa_core::model::{Address, KernelEvent, Link, Op, OwnedRoute, Route, RouteKey, ADDR_PROTO_VIPA, PROTO_VIPA};

use crate::KernelError;

// rtnetlink multicast groups (linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// One kernel change, with what the adapter needs to act on it later (the full route
/// message, so a route can be replaced with only its source changed).
#[derive(Debug, Clone)]
pub struct Update {
    event: KernelEvent,
    raw_route: Option<RouteMessage>,
}

impl Update {
    pub fn event(&self) -> &KernelEvent {
        &self.event
    }
}

/// What an operation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// It was already so (`EEXIST`).
    AlreadyThere,
    /// What it was to change is gone (`ESRCH`, `ENOENT`, `EADDRNOTAVAIL`, `ENODEV`).
    AlreadyGone,
}

/// Which unresolved neighbour entries to forget (see `forget_unresolved_neighbours`).
#[derive(Debug, Clone, Copy)]
pub enum Unresolved<'a> {
    /// Every one on the NIC with this index.
    OnNic(u32),
    /// Those towards these addresses, on any NIC.
    To(&'a HashSet<IpAddr>),
    /// Those on the NIC with this index towards these addresses.
    OnNicTo(u32, &'a HashSet<IpAddr>),
}

/// A neighbour entry with a link-layer address (see `known_neighbours`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub address: IpAddr,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The request socket, and the last full message of every route seen.
pub struct Kernel {
    socket: Socket,
    seq: u32,
    routes: HashMap<RouteKey, RouteMessage>,
    buf: Vec<u8>,
}

fn nl_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

impl Kernel {
    pub fn open() -> Result<Kernel, KernelError> {
        let socket = nl_socket().map_err(KernelError::Socket)?;
        // Extended acks give the kernel's own words for a refusal.
        let _ = socket.set_ext_ack(true);
        Ok(Kernel { socket, seq: 1, routes: HashMap::new(), buf: vec![0; 1 << 16] })
    }

    fn send(&mut self, flags: u16, msg: RouteNetlinkMessage) -> Result<u32, KernelError> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0).map_err(KernelError::Socket)?;
        Ok(self.seq)
    }

    /// Receives the answers to request `seq`, calling `each` for every inner message,
    /// until the dump ends or the ack arrives.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(RouteNetlinkMessage)) -> Result<(), io::Error> {
        loop {
            self.buf.clear();
            self.buf.reserve(1 << 16);
            self.socket.recv(&mut self.buf, 0)?;
            let mut offset = 0;
            while offset + 16 <= self.buf.len() {
                let bytes = &self.buf[offset..];
                let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                if len < 16 || offset + len > self.buf.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]);
                offset += (len + 3) & !3;
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        debug!(error = %e, "netlink message not understood; skipped");
                        continue;
                    }
                };
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(()),
                        Some(_) => return Err(e.to_io()),
                    },
                    NetlinkPayload::InnerMessage(inner) => each(inner),
                    _ => {}
                }
            }
        }
    }

    fn request(&mut self, flags: u16, msg: RouteNetlinkMessage) -> Result<(), io::Error> {
        let seq = self.send(NLM_F_REQUEST | NLM_F_ACK | flags, msg).map_err(|e| match e {
            KernelError::Socket(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        self.receive(seq, |_| {})
    }

    fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, KernelError> {
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, msg)?;
        let mut out = Vec::new();
        self.receive(seq, |m| out.push(m)).map_err(KernelError::Dump)?;
        Ok(out)
    }

    /// Deletes the neighbour entries the kernel is still resolving or failed to resolve,
    /// of those `which` picks: on one NIC, towards some addresses, or both. A host
    /// that lost its link kept trying to reach the peers it talked to; once it can reach
    /// them again, a datagram to such a peer would wait for the kernel's next try, up to a
    /// second away. Without the entry, the first datagram resolves at once. Returns how
    /// many went.
    pub fn forget_unresolved_neighbours(&mut self, which: Unresolved<'_>) -> Result<usize, KernelError> {
        let mut gone = 0;
        let mut ask = NeighbourMessage::default();
        // The kernel lists only that NIC's entries then.
        if let Unresolved::OnNic(index) | Unresolved::OnNicTo(index, _) = which {
            ask.attributes.push(NeighbourAttribute::IfIndex(index));
        }
        for m in self.dump(RouteNetlinkMessage::GetNeighbour(ask))? {
            let RouteNetlinkMessage::NewNeighbour(n) = m else { continue };
            // An entry the operator set up to be kept resolved (`managed`) is theirs.
            let managed = n
                .attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::ExtFlags(f) if f.contains(NeighbourExtFlags::Managed)));
            if managed || !matches!(n.header.state, NeighbourState::Incomplete | NeighbourState::Failed) {
                continue;
            }
            let destination = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            });
            let towards = |addrs: &HashSet<IpAddr>| destination.is_some_and(|d| addrs.contains(&d));
            let picked = match which {
                Unresolved::OnNic(index) => n.header.ifindex == index,
                Unresolved::To(addrs) => towards(addrs),
                Unresolved::OnNicTo(index, addrs) => n.header.ifindex == index && towards(addrs),
            };
            if !picked {
                continue;
            }
            let mut del = NeighbourMessage::default();
            del.header = n.header.clone();
            del.attributes =
                n.attributes.into_iter().filter(|a| matches!(a, NeighbourAttribute::Destination(_))).collect();
            // Gone meanwhile (resolved or expired) is as good.
            if self.request(0, RouteNetlinkMessage::DelNeighbour(del)).is_ok() {
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// The link-layer addresses the kernel knows for `towards`: entries that have one
    /// (reachable, stale, being checked, or set by hand), with their NIC.
    pub fn known_neighbours(&mut self, towards: &HashSet<IpAddr>) -> Result<Vec<Neighbour>, KernelError> {
        let mut found = Vec::new();
        for m in self.dump(RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()))? {
            let RouteNetlinkMessage::NewNeighbour(n) = m else { continue };
            if matches!(n.header.state, NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None) {
                continue;
            }
            let mut address = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => address = Some(IpAddr::V4(*a)),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => address = Some(IpAddr::V6(*a)),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
                    _ => {}
                }
            }
            if let (Some(address), Some(mac)) = (address, mac) {
                if towards.contains(&address) {
                    found.push(Neighbour { address, ifindex: n.header.ifindex, mac });
                }
            }
        }
        Ok(found)
    }

    /// Everything vipa looks at, as a list of updates (links, then addresses, then routes).
    /// Forgets the routes it knew: the dump is the truth.
    pub fn snapshot(&mut self) -> Result<Vec<Update>, KernelError> {
        let mut out = Vec::new();
        for m in self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
            out.extend(convert(m));
        }
        for m in self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
            out.extend(convert(m));
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut rm = RouteMessage::default();
            rm.header.address_family = family;
            for m in self.dump(RouteNetlinkMessage::GetRoute(rm))? {
                out.extend(convert(m));
            }
        }
        self.routes.clear();
        Ok(out)
    }

    /// Takes note of an update (from a snapshot or an event) and returns its event.
    pub fn absorb(&mut self, update: Update) -> KernelEvent {
        match (&update.event, update.raw_route) {
            (KernelEvent::NewRoute(r), Some(raw)) => {
                self.routes.insert(r.key, raw);
            }
            (KernelEvent::DelRoute(k), _) => {
                self.routes.remove(k);
            }
            _ => {}
        }
        update.event
    }

    /// Carries out one operation of a plan. `ifname` resolves an interface index for
    /// messages about dummy devices.
    pub fn apply(&mut self, op: &Op, link_index: impl Fn(&str) -> Option<u32>) -> Result<Outcome, KernelError> {
        let result = match op {
            Op::AddAddress { ifindex, addr, prefix_len, source } => {
                let mut m = address_message(*ifindex, *addr, *prefix_len, true);
                if !source && addr.is_ipv6() {
                    // Deprecated from the start.
                    m.attributes.push(never_a_source());
                }
                self.request(NLM_F_CREATE | NLM_F_EXCL, RouteNetlinkMessage::NewAddress(m))
            }
            Op::Deprecate { ifindex, addr, prefix_len } => {
                // The same address, its lifetimes replaced.
                let mut m = address_message(*ifindex, *addr, *prefix_len, true);
                m.attributes.push(never_a_source());
                self.request(NLM_F_REPLACE, RouteNetlinkMessage::NewAddress(m))
            }
            Op::DelAddress { ifindex, addr, prefix_len } => {
                self.request(0, RouteNetlinkMessage::DelAddress(address_message(*ifindex, *addr, *prefix_len, false)))
            }
            Op::SetPrefsrc { key, prefsrc } => {
                let Some(raw) = self.routes.get(key) else {
                    return Ok(Outcome::AlreadyGone);
                };
                let msg = with_prefsrc(raw, *prefsrc);
                let r = self.request(NLM_F_REPLACE, RouteNetlinkMessage::NewRoute(msg.clone()));
                if r.is_ok() {
                    self.routes.insert(*key, msg);
                }
                r
            }
            Op::RefreshRoute { key } => {
                let Some(raw) = self.routes.get(key) else {
                    return Ok(Outcome::AlreadyGone);
                };
                let msg = with_prefsrc(raw, raw_prefsrc(raw));
                self.request(NLM_F_REPLACE, RouteNetlinkMessage::NewRoute(msg))
            }
            Op::AddRoute { route } => {
                let msg = owned_route_message(route);
                let r = self.request(NLM_F_CREATE | NLM_F_REPLACE, RouteNetlinkMessage::NewRoute(msg.clone()));
                if r.is_ok() {
                    self.routes.insert(route.key(), msg);
                }
                r
            }
            Op::DelRoute { key } => {
                let Some(raw) = self.routes.get(key) else {
                    return Ok(Outcome::AlreadyGone);
                };
                let msg = with_prefsrc(raw, raw_prefsrc(raw));
                self.request(0, RouteNetlinkMessage::DelRoute(msg))
            }
            Op::AddDummy { name } => {
                let mut m = LinkMessage::default();
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
                m.attributes.push(LinkAttribute::IfName(name.clone()));
                m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]));
                self.request(NLM_F_CREATE | NLM_F_EXCL, RouteNetlinkMessage::NewLink(m))
            }
            Op::DelDummy { name } => {
                let Some(index) = link_index(name) else {
                    return Ok(Outcome::AlreadyGone);
                };
                let mut m = LinkMessage::default();
                m.header.index = index;
                self.request(0, RouteNetlinkMessage::DelLink(m))
            }
            Op::SetSysctl { key, value } => {
                return crate::sysctl::write(key, *value).map(|_| Outcome::Done);
            }
        };
        match result {
            Ok(()) => Ok(Outcome::Done),
            Err(e) => match e.raw_os_error() {
                Some(libc::EEXIST) => Ok(Outcome::AlreadyThere),
                Some(libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL | libc::ENODEV) => Ok(Outcome::AlreadyGone),
                _ => Err(KernelError::Refused { op: op.to_string(), source: e }),
            },
        }
    }

    /// Whether the kernel can make `dummy` devices: creates and deletes a probe device.
    pub fn dummy_supported(&mut self) -> bool {
        let name = format!("vipaprobe{}", std::process::id() % 100_000);
        let created = self.apply(&Op::AddDummy { name: name.clone() }, |_| None);
        match created {
            Ok(Outcome::Done | Outcome::AlreadyThere) => {
                let index = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default())).ok().and_then(|links| {
                    links.into_iter().find_map(|m| match convert(m) {
                        Some(Update { event: KernelEvent::NewLink(l), .. }) if l.name == name => Some(l.index),
                        _ => None,
                    })
                });
                let _ = self.apply(&Op::DelDummy { name }, |_| index);
                true
            }
            _ => false,
        }
    }
}

fn raw_prefsrc(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::PrefSource(a) => route_ip(a),
        _ => None,
    })
}

/// The route message to send to replace `raw` with only its preferred source changed:
/// read-only attributes and state flags the kernel refuses in requests are dropped.
fn with_prefsrc(raw: &RouteMessage, prefsrc: Option<IpAddr>) -> RouteMessage {
    let mut m = raw.clone();
    m.header.flags = raw.header.flags & RouteFlags::Onlink;
    m.attributes.retain(|a| {
        !matches!(
            a,
            RouteAttribute::PrefSource(_)
                | RouteAttribute::CacheInfo(_)
                | RouteAttribute::Expires(_)
                | RouteAttribute::MulticastExpires(_)
        )
    });
    for a in &mut m.attributes {
        if let RouteAttribute::MultiPath(hops) = a {
            for h in hops.iter_mut() {
                h.flags &= RouteNextHopFlags::Onlink;
            }
        }
    }
    if let Some(src) = prefsrc {
        m.attributes.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    m
}

/// Lifetimes that make an IPv6 address deprecated (never a source) and keep it for ever.
fn never_a_source() -> AddressAttribute {
    let mut lifetimes = CacheInfo::default();
    (lifetimes.ifa_preferred, lifetimes.ifa_valid) = (0, u32::MAX);
    AddressAttribute::CacheInfo(lifetimes)
}

fn address_message(ifindex: u32, addr: IpAddr, prefix_len: u8, create: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.prefix_len = prefix_len;
    m.header.index = ifindex;
    m.header.scope = AddressScope::Universe;
    m.attributes.push(AddressAttribute::Local(addr));
    m.attributes.push(AddressAttribute::Address(addr));
    if create {
        m.attributes.push(AddressAttribute::Flags(AddressFlags::Noprefixroute | AddressFlags::Nodad));
        m.attributes.push(AddressAttribute::Protocol(AddressProtocol::Other(ADDR_PROTO_VIPA)));
    }
    m
}

/// The message for one of vipa's own routes: on-link, tagged with vipa's protocol.
fn owned_route_message(r: &OwnedRoute) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = if r.dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.destination_prefix_length = r.dst_len;
    m.header.table = if r.table < 256 { r.table as u8 } else { 252 };
    m.header.protocol = RouteProtocol::from(PROTO_VIPA);
    (m.header.scope, m.header.kind) =
        if r.local { (RouteScope::Host, RouteType::Local) } else { (RouteScope::Link, RouteType::Unicast) };
    m.attributes.push(RouteAttribute::Table(r.table));
    m.attributes.push(RouteAttribute::Destination(RouteAddress::from(r.dst)));
    m.attributes.push(RouteAttribute::Priority(r.metric));
    if let Some(src) = r.src {
        m.attributes.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    if r.oifs.len() == 1 {
        m.attributes.push(RouteAttribute::Oif(r.oifs[0]));
    } else {
        let hops = r
            .oifs
            .iter()
            .map(|&i| {
                let mut h = RouteNextHop::default();
                h.interface_index = i;
                h
            })
            .collect();
        m.attributes.push(RouteAttribute::MultiPath(hops));
    }
    m
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn convert_link(m: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut kind = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Link {
        index: m.header.index,
        name,
        up: m.header.flags.contains(LinkFlags::Up),
        carrier: m.header.flags.contains(LinkFlags::LowerUp),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        kind,
        mac,
    }
}

fn convert_address(m: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut proto = 0;
    let mut deprecated = m.header.flags.contains(AddressHeaderFlags::Deprecated);
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Protocol(p) => proto = u8::from(*p),
            AddressAttribute::Flags(f) => deprecated |= f.contains(AddressFlags::Deprecated),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    Some(Address { ifindex: m.header.index, addr, prefix_len: m.header.prefix_len, proto, deprecated })
}

fn convert_route(m: &RouteMessage) -> Option<Route> {
    let v6 = match m.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    if m.header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut dst: Option<IpAddr> = None;
    let mut table = u32::from(m.header.table);
    let mut metric = 0;
    let mut gateways = Vec::new();
    let mut oifs = Vec::new();
    let mut prefsrc = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Gateway(g) => gateways.extend(route_ip(g)),
            RouteAttribute::Oif(i) => oifs.push(*i),
            RouteAttribute::PrefSource(s) => prefsrc = route_ip(s),
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    oifs.push(h.interface_index);
                    for ha in &h.attributes {
                        if let RouteAttribute::Gateway(g) = ha {
                            gateways.extend(route_ip(g));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v6 { IpAddr::V6(0.into()) } else { IpAddr::V4(0.into()) });
    Some(Route {
        key: RouteKey { table, dst, dst_len: m.header.destination_prefix_length, tos: m.header.tos, metric },
        unicast: m.header.kind == RouteType::Unicast,
        local: m.header.kind == RouteType::Local,
        protocol: u8::from(m.header.protocol),
        scope_link: m.header.scope == RouteScope::Link,
        gateways,
        oifs,
        prefsrc,
    })
}

fn convert(m: RouteNetlinkMessage) -> Option<Update> {
    let plain = |event| Some(Update { event, raw_route: None });
    match m {
        RouteNetlinkMessage::NewLink(l) => plain(KernelEvent::NewLink(convert_link(&l))),
        RouteNetlinkMessage::DelLink(l) => plain(KernelEvent::DelLink(l.header.index)),
        RouteNetlinkMessage::NewAddress(a) => plain(KernelEvent::NewAddress(convert_address(&a)?)),
        RouteNetlinkMessage::DelAddress(a) => plain(KernelEvent::DelAddress(convert_address(&a)?)),
        RouteNetlinkMessage::NewRoute(r) => {
            let route = convert_route(&r)?;
            Some(Update { event: KernelEvent::NewRoute(route), raw_route: Some(r) })
        }
        RouteNetlinkMessage::DelRoute(r) => plain(KernelEvent::DelRoute(convert_route(&r)?.key)),
        _ => None,
    }
}

/// Why the event stream needs attention.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The socket overflowed (`ENOBUFS`): events were lost; dump again.
    #[error("netlink event socket overflowed; a full resync is needed")]
    Overflow,
    #[error("netlink event socket: {0}")]
    Io(#[from] io::Error),
}

/// The subscribed socket.
pub struct Events {
    socket: Socket,
    buf: Vec<u8>,
    /// Messages that could not be decoded; each one also forces a resync.
    pub undecodable: u64,
}

impl Events {
    /// Subscribes to link, address and route changes (IPv4 and IPv6).
    pub fn subscribe() -> Result<Events, KernelError> {
        let socket = nl_socket().map_err(KernelError::Socket)?;
        for g in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE] {
            socket.add_membership(g).map_err(KernelError::Socket)?;
        }
        // A large buffer makes overflow rare; overflow is still handled by a resync.
        let _ = socket.set_rx_buf_sz(8 << 20);
        Ok(Events { socket, buf: Vec::with_capacity(1 << 16), undecodable: 0 })
    }

    /// Blocks until at least one event arrives and returns what one read brought.
    pub fn recv(&mut self) -> Result<Vec<Update>, EventError> {
        self.buf.clear();
        self.buf.reserve(1 << 16);
        if let Err(e) = self.socket.recv(&mut self.buf, 0) {
            return Err(if e.raw_os_error() == Some(libc::ENOBUFS) { EventError::Overflow } else { EventError::Io(e) });
        }
        let mut out = Vec::new();
        let mut offset = 0;
        while offset + 16 <= self.buf.len() {
            let bytes = &self.buf[offset..];
            let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            if len < 16 || offset + len > self.buf.len() {
                self.undecodable += 1;
                return Err(EventError::Overflow);
            }
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
                Ok(NetlinkMessage { payload: NetlinkPayload::InnerMessage(m), .. }) => out.extend(convert(m)),
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "netlink event not understood");
                    self.undecodable += 1;
                    return Err(EventError::Overflow);
                }
            }
            offset += (len + 3) & !3;
        }
        Ok(out)
    }
}
