//! `[cluster]` and `[[dvipa]]` (z/OS VIPADEFINE / VIPABACKUP).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::group::parse_duration;
use super::{valid_ifname, Ctx, NODE_NAME_RULE};
use crate::cluster::{ClusterConfig, DvipaConfig, Quorum, Takeback};
use vipa_wire::cluster::MAX_DVIPAS;

/// The UDP port heartbeats use unless told otherwise.
pub const DEFAULT_PORT: u16 = 5997;
/// One heartbeat every 100 ms, as DESIGN.md's example.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
/// Heartbeats missed before a node is dead: ten keeps a 20 % loss from ever looking like
/// a death (0.2^10 ≈ 1e-7 per interval), and is 10 ms at 1 ms heartbeats.
pub const DEFAULT_DEAD_AFTER: u32 = 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    peers: Option<Spanned<Vec<Spanned<String>>>>,
    port: Option<Spanned<i64>>,
    key_file: Option<Spanned<String>>,
    heartbeat_interval: Option<Spanned<String>>,
    dead_after: Option<Spanned<i64>>,
    quorum: Option<Spanned<String>>,
    multicast: Option<Spanned<String>>,
    multicast_nic: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDvipa {
    address: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    backups: Option<Spanned<BTreeMap<String, Spanned<i64>>>>,
    takeback: Option<Spanned<String>>,
    announce: Option<Spanned<Vec<Spanned<String>>>>,
}

pub(crate) fn parse_cluster(
    cx: &mut Ctx,
    raw: Option<&Spanned<RawCluster>>,
    dvipas: &[Spanned<RawDvipa>],
    node: Option<&str>,
    addrs: &mut BTreeMap<IpAddr, String>,
) -> (Option<ClusterConfig>, Vec<DvipaConfig>) {
    let Some(raw) = raw else {
        if let Some(d) = dvipas.first() {
            cx.err(
                d.span().start,
                "dvipa[0]",
                "a [[dvipa]] needs a [cluster] table: its nodes decide together who holds it",
            );
        }
        return (None, Vec::new());
    };
    let start = raw.span().start;
    let c = raw.get_ref();
    let me = match node {
        Some(n) => n.to_string(),
        None => {
            cx.err(
                start,
                "cluster",
                "a [cluster] needs this node's name: add [node] name = \"s1\", unique in the cluster",
            );
            String::new()
        }
    };
    let port = match &c.port {
        None => DEFAULT_PORT,
        Some(p) if (1..=65535).contains(p.get_ref()) => *p.get_ref() as u16,
        Some(p) => {
            cx.err(p.span().start, "cluster.port", format!("{} is not a UDP port: use 1 to 65535", p.get_ref()));
            DEFAULT_PORT
        }
    };
    let mut peers = Vec::new();
    let list = c.peers.as_ref().map(|l| l.get_ref().as_slice()).unwrap_or_default();
    if list.is_empty() {
        let at = c.peers.as_ref().map_or(start, |l| l.span().start);
        cx.err(
            at,
            "cluster.peers",
            "the cluster has no peers: list the other nodes' addresses, such as [\"198.18.1.12\", \"198.18.1.13\"]",
        );
    }
    for (j, p) in list.iter().enumerate() {
        let text = p.get_ref();
        // An IPv4-mapped IPv6 address is the IPv4 peer it names (that is how it sends).
        let parsed = text
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(|a| SocketAddr::new(a, port)))
            .map(|a| match a {
                SocketAddr::V6(v6) => {
                    v6.ip().to_ipv4_mapped().map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port()))
                }
                v4 => v4,
            });
        let at = |cx: &mut Ctx, m: String| cx.err(p.span().start, format!("cluster.peers[{j}]"), m);
        match parsed {
            Some(a) if a.port() == 0 => at(cx, format!("{text:?} has port 0: use 1 to 65535, or leave the port out")),
            Some(a) if !another_host(a.ip()) => at(
                cx,
                format!("{text:?} is not another host's address: list each other node by an address of its own on the link (not loopback, multicast, broadcast or unspecified)"),
            ),
            Some(a) if peers.iter().any(|q: &SocketAddr| q.ip() == a.ip()) => at(
                cx,
                format!("{text:?} is listed twice: a peer is another host, each listed once (with the port, if not the cluster's)"),
            ),
            Some(a) if addrs.contains_key(&a.ip()) => at(
                cx,
                format!(
                    "{text:?} is already used by {:?} on this host: a peer is another host; list only the other nodes' addresses",
                    addrs.get(&a.ip()).map_or("", String::as_str)
                ),
            ),
            Some(a) => peers.push(a),
            None => cx.err(
                p.span().start,
                format!("cluster.peers[{j}]"),
                format!("{text:?} is not an address: write \"198.18.1.12\", \"198.18.1.12:5997\" or \"[2001:db8::12]:5997\""),
            ),
        }
    }
    let key_file = match &c.key_file {
        Some(k) if !k.get_ref().is_empty() => k.get_ref().clone(),
        _ => {
            cx.err(start, "cluster.key_file", "the cluster has no key_file: every heartbeat is authenticated with a shared key; make one with `vipactl cluster keygen /etc/vipa/cluster.key`, copy it to every node, and set key_file");
            String::new()
        }
    };
    let interval = match &c.heartbeat_interval {
        None => DEFAULT_INTERVAL,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(10) => d,
            Ok(_) => {
                cx.err(
                    s.span().start,
                    "cluster.heartbeat_interval",
                    format!("{:?} is out of range: use 1ms to 10s", s.get_ref()),
                );
                DEFAULT_INTERVAL
            }
            Err(m) => {
                cx.err(s.span().start, "cluster.heartbeat_interval", m);
                DEFAULT_INTERVAL
            }
        },
    };
    let dead_after = match &c.dead_after {
        None => DEFAULT_DEAD_AFTER,
        Some(n) if (2..=1000).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            cx.err(
                n.span().start,
                "cluster.dead_after",
                format!("{} is out of range: a node is dead after 2 to 1000 missed heartbeats", n.get_ref()),
            );
            DEFAULT_DEAD_AFTER
        }
    };
    let quorum = match c.quorum.as_ref().map(|q| q.get_ref().as_str()) {
        None | Some("majority") => Quorum::Majority,
        Some("none") => Quorum::None,
        Some(other) => {
            let at = c.quorum.as_ref().map_or(start, |q| q.span().start);
            cx.err(
                at,
                "cluster.quorum",
                format!("{other:?} is not a quorum rule: use \"majority\", or \"none\" for a two-node cluster"),
            );
            Quorum::Majority
        }
    };
    let multicast = parse_multicast(cx, c, &peers, port);
    let cluster = ClusterConfig { me, peers, port, key_file, interval, dead_after, quorum, multicast };

    let mut out = Vec::new();
    for (i, block) in dvipas.iter().enumerate() {
        let d = block.get_ref();
        let at = block.span().start;
        let key = |k: &str| format!("dvipa[{i}].{k}");
        let Some(address) = &d.address else {
            cx.err(at, format!("dvipa[{i}]"), "missing key `address`: the DVIPA, such as \"198.18.1.200\"");
            continue;
        };
        let addr = match super::parse_host_address(address.get_ref()) {
            Ok(a) => a,
            Err(m) => {
                cx.err(address.span().start, key("address"), m);
                continue;
            }
        };
        if let Some(other) = addrs.get(&addr) {
            cx.err(
                address.span().start,
                key("address"),
                format!("{addr} is already used by {other:?}: an address belongs to one VIPA, group or DVIPA"),
            );
            continue;
        }
        if cluster.peers.iter().any(|p| p.ip() == addr) {
            cx.err(
                address.span().start,
                key("address"),
                format!("{addr} is a peer's address (cluster.peers): a DVIPA moves between the nodes, a peer's address stays on its host"),
            );
            continue;
        }
        if i == MAX_DVIPAS as usize {
            cx.err(
                at,
                format!("dvipa[{i}]"),
                format!("too many DVIPAs: a cluster has at most {MAX_DVIPAS} (one heartbeat carries them all)"),
            );
            break;
        }
        addrs.insert(addr, format!("dvipa {addr}"));
        let Some(owner) = &d.owner else {
            cx.err(at, key("owner"), "missing key `owner`: the node that holds the DVIPA first (VIPADEFINE)");
            continue;
        };
        if !super::valid_node_name(owner.get_ref()) {
            cx.err(
                owner.span().start,
                key("owner"),
                format!("{:?} is not a node name: {NODE_NAME_RULE}", owner.get_ref()),
            );
        }
        let mut backups = Vec::new();
        let mut seen = BTreeSet::new();
        if let Some(b) = &d.backups {
            for (node, rank) in b.get_ref() {
                let k = format!("dvipa[{i}].backups.{node}");
                if node == owner.get_ref() {
                    cx.err(rank.span().start, k, format!("{node:?} is the owner; a backup is another node"));
                } else if !(1..=254).contains(rank.get_ref()) {
                    cx.err(
                        rank.span().start,
                        k,
                        format!(
                            "rank {} is out of range: VIPABACKUP ranks are 1 to 254, higher takes over first",
                            rank.get_ref()
                        ),
                    );
                } else if !super::valid_node_name(node) {
                    cx.err(rank.span().start, k, format!("{node:?} is not a node name: {NODE_NAME_RULE}"));
                } else if seen.insert(node.clone()) {
                    backups.push((node.clone(), *rank.get_ref() as u8));
                }
            }
        }
        let takeback = match d.takeback.as_ref().map(|t| t.get_ref().as_str()) {
            None | Some("immediate") => Takeback::Immediate,
            Some("when-idle") => Takeback::WhenIdle,
            Some("never") => Takeback::Never,
            Some(other) => {
                let at = d.takeback.as_ref().map_or(at, |t| t.span().start);
                cx.err(
                    at,
                    key("takeback"),
                    format!("{other:?} is not a takeback rule: use \"immediate\", \"when-idle\" or \"never\""),
                );
                Takeback::Immediate
            }
        };
        let mut announce = Vec::new();
        if let Some(list) = &d.announce {
            for (j, n) in list.get_ref().iter().enumerate() {
                if !valid_ifname(n.get_ref()) || n.get_ref() == "lo" {
                    cx.err(
                        n.span().start,
                        format!("dvipa[{i}].announce[{j}]"),
                        format!("{:?} is not a NIC name", n.get_ref()),
                    );
                } else {
                    announce.push(n.get_ref().clone());
                }
            }
        }
        out.push(DvipaConfig { address: addr, owner: owner.get_ref().clone(), backups, takeback, announce });
    }
    (Some(cluster), out)
}

/// Whether `a` can be another host's own address: not loopback, multicast, broadcast or
/// unspecified.
fn another_host(a: IpAddr) -> bool {
    !(a.is_loopback() || a.is_multicast() || a.is_unspecified() || a == IpAddr::from([255, 255, 255, 255]))
}

/// `multicast` and `multicast_nic`: both or neither; a group that leaves the host, of the
/// peers' family, whose peers all listen on the cluster's port.
fn parse_multicast(cx: &mut Ctx, c: &RawCluster, peers: &[SocketAddr], port: u16) -> Option<(IpAddr, String)> {
    let (group, nic) = match (&c.multicast, &c.multicast_nic) {
        (None, None) => return None,
        (Some(g), Some(n)) => (g, n),
        (Some(g), None) => {
            cx.err(
                g.span().start,
                "cluster.multicast_nic",
                "multicast heartbeats need the NIC they are sent and received on: add multicast_nic = \"en1\"",
            );
            return None;
        }
        (None, Some(n)) => {
            cx.err(
                n.span().start,
                "cluster.multicast",
                "multicast_nic without a group: add multicast = \"239.255.86.1\" (or remove multicast_nic)",
            );
            return None;
        }
    };
    let nic_ok = if nic.get_ref() == "lo" {
        cx.err(
            nic.span().start,
            "cluster.multicast_nic",
            "the loopback does not reach other hosts: name the NIC on the peers' link, such as \"en1\"",
        );
        false
    } else if !valid_ifname(nic.get_ref()) {
        cx.err(
            nic.span().start,
            "cluster.multicast_nic",
            format!(
                "{:?} is not a NIC name: use one such as \"en1\" (1 to 15 characters, no spaces, '/' or ':')",
                nic.get_ref()
            ),
        );
        false
    } else {
        true
    };
    // IPv6 groups of node or interface-local scope (ff00::/16, ff01::/16) never leave the
    // host.
    let leaves_host = |a: &IpAddr| match a {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.octets()[1] & 0x0f >= 2,
    };
    // Every host is in these already: a node outside the vipa group would get each
    // heartbeat twice.
    let all_hosts =
        |a: &IpAddr| *a == IpAddr::from([224, 0, 0, 1]) || *a == IpAddr::from([0xff02, 0, 0, 0, 0, 0, 0, 1]);
    let addr = match group.get_ref().parse::<IpAddr>() {
        Ok(a) if all_hosts(&a) => {
            cx.err(
                group.span().start,
                "cluster.multicast",
                format!("{a} is the group every host is in: use one of the cluster's own, such as \"239.255.86.1\" or \"ff02::86\""),
            );
            return None;
        }
        Ok(a) if a.is_multicast() && leaves_host(&a) => a,
        Ok(a) if a.is_multicast() => {
            cx.err(
                group.span().start,
                "cluster.multicast",
                format!("{a} is a group that never leaves this host: use link scope or wider, such as \"ff02::86\""),
            );
            return None;
        }
        _ => {
            cx.err(
                group.span().start,
                "cluster.multicast",
                format!(
                    "{:?} is not a multicast group: use one such as \"239.255.86.1\" (IPv4, 224.0.0.0/4) or \"ff02::86\" (IPv6, ff00::/8)",
                    group.get_ref()
                ),
            );
            return None;
        }
    };
    if let Some(p) = peers.iter().find(|p| p.is_ipv4() != addr.is_ipv4()) {
        cx.err(
            group.span().start,
            "cluster.multicast",
            format!(
                "group {addr} is {} but peer {} is not: peers and the group must be of one family",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" },
                p.ip()
            ),
        );
        return None;
    }
    // One datagram to the group reaches every peer only if all listen on one port.
    if let Some(p) = peers.iter().find(|p| p.port() != port) {
        cx.err(
            group.span().start,
            "cluster.multicast",
            format!(
                "peer {p} listens on port {}, not {port}: with multicast every node uses the cluster's port",
                p.port()
            ),
        );
        return None;
    }
    nic_ok.then(|| (addr, nic.get_ref().clone()))
}

#[cfg(test)]
mod tests {
    use crate::Config;

    const GOOD: &str = r#"
[node]
name = "s1"

[cluster]
peers = ["198.18.1.12", "198.18.1.13:6000"]
key_file = "/etc/vipa/cluster.key"
heartbeat_interval = "10ms"

[[dvipa]]
address = "198.18.1.200"
owner = "s1"
backups = { s2 = 200, s3 = 100 }
takeback = "when-idle"
announce = ["en1"]
"#;

    fn errs(text: &str) -> Vec<String> {
        Config::parse("vipa.toml", text).unwrap_err().0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_cluster_parses() {
        let c = Config::parse("vipa.toml", GOOD).unwrap();
        let k = c.cluster.unwrap();
        assert_eq!(k.me, "s1");
        assert_eq!(k.peers[0].port(), 5997);
        assert_eq!(k.peers[1].port(), 6000);
        // Written as IPv4-mapped IPv6, a peer is the IPv4 peer it names.
        let mapped = GOOD.replace("\"198.18.1.12\"", "\"[::ffff:198.18.1.12]:5997\"");
        let k = Config::parse("vipa.toml", &mapped).unwrap().cluster.unwrap();
        assert_eq!(k.peers[0], "198.18.1.12:5997".parse().unwrap());
        assert_eq!(k.interval.as_millis(), 10);
        assert_eq!(c.dvipas[0].order(), ["s1", "s2", "s3"]);
    }

    #[test]
    fn multicast_needs_a_group_of_the_peers_family_and_a_nic() {
        // GOOD's second peer listens on another port, which multicast does not allow.
        let same_port = GOOD.replace("198.18.1.13:6000", "198.18.1.13");
        let with = |extra: &str| {
            same_port.replace("heartbeat_interval = \"10ms\"\n", &format!("heartbeat_interval = \"10ms\"\n{extra}"))
        };
        let c = Config::parse("vipa.toml", &with("multicast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n")).unwrap();
        assert_eq!(c.cluster.unwrap().multicast, Some(("239.255.86.1".parse().unwrap(), "en1".into())));
        assert_eq!(Config::parse("vipa.toml", GOOD).unwrap().cluster.unwrap().multicast, None);
        let e = errs(&with("multicast = \"239.255.86.1\"\n"));
        assert!(e[0].contains("cluster.multicast_nic") && e[0].contains("multicast_nic = \"en1\""), "{e:?}");
        let e = errs(&with("multicast_nic = \"en1\"\n"));
        assert!(e[0].contains("cluster.multicast:") && e[0].contains("without a group"), "{e:?}");
        let e = errs(&with("multicast = \"198.18.1.255\"\nmulticast_nic = \"en1\"\n"));
        assert!(e[0].contains("is not a multicast group") && e[0].contains("224.0.0.0/4"), "{e:?}");
        let e = errs(&with("multicast = \"ff02::86\"\nmulticast_nic = \"en1\"\n"));
        assert!(e[0].contains("group ff02::86 is IPv6 but peer 198.18.1.12 is not"), "{e:?}");
        let e = errs(&with("multicast = \"239.255.86.1\"\nmulticast_nic = \"lo\"\n"));
        assert!(e[0].contains("the loopback does not reach other hosts"), "{e:?}");
        let e = errs(&with("multicast = \"239.255.86.1\"\nmulticast_nic = \"en 1\"\n"));
        assert!(e[0].contains("\"en 1\" is not a NIC name: use one such as \"en1\""), "{e:?}");
        let six = GOOD.replace("\"198.18.1.12\", \"198.18.1.13:6000\"", "\"2001:db8:1::12\"");
        let six = |extra: &str| {
            six.replace("heartbeat_interval = \"10ms\"\n", &format!("heartbeat_interval = \"10ms\"\n{extra}"))
        };
        assert!(Config::parse("vipa.toml", &six("multicast = \"ff02::86\"\nmulticast_nic = \"en1\"\n")).is_ok());
        let e = Config::parse("vipa.toml", &six("multicast = \"ff01::86\"\nmulticast_nic = \"en1\"\n")).unwrap_err().0
            [0]
        .to_string();
        assert!(e.contains("never leaves this host"), "{e}");
        let e = Config::parse("vipa.toml", &six("multicast = \"ff02::1\"\nmulticast_nic = \"en1\"\n")).unwrap_err().0
            [0]
        .to_string();
        assert!(e.contains("the group every host is in"), "{e}");
        let e = errs(&with("multicast = \"224.0.0.1\"\nmulticast_nic = \"en1\"\n"));
        assert!(e[0].contains("the group every host is in"), "{e:?}");
        let e = errs(&GOOD.replace(
            "heartbeat_interval = \"10ms\"\n",
            "heartbeat_interval = \"10ms\"\nmulticast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n",
        ));
        assert!(e[0].contains("peer 198.18.1.13:6000 listens on port 6000, not 5997"), "{e:?}");
    }

    #[test]
    fn peers_are_other_hosts_each_listed_once() {
        let peer = |p: &str| errs(&GOOD.replace("\"198.18.1.13:6000\"", p));
        for (p, says) in [
            ("\"198.18.1.13:0\"", "has port 0: use 1 to 65535"),
            ("\"127.0.0.1\"", "is not another host's address"),
            ("\"0.0.0.0\"", "is not another host's address"),
            ("\"::\"", "is not another host's address"),
            ("\"224.0.0.5\"", "is not another host's address"),
            ("\"255.255.255.255\"", "is not another host's address"),
            ("\"198.18.1.12:6000\"", "is listed twice"),
            ("\"198.18.1.200\"", "198.18.1.200 is a peer's address"),
        ] {
            let e = peer(p);
            assert!(e.iter().any(|e| e.contains(says)), "{p}: {e:?}");
        }
        // A DVIPA is not a peer's address either.
        let e = errs(&GOOD.replace("address = \"198.18.1.200\"", "address = \"198.18.1.12\""));
        assert!(e[0].contains("198.18.1.12 is a peer's address"), "{e:?}");
        // Nor a static VIPA's.
        let vipa = format!("[[vipa]]\nname = \"web\"\naddresses = [\"198.18.1.13\"]\n{GOOD}");
        let e = errs(&vipa);
        assert!(e[0].contains("already used by \"web\" on this host"), "{e:?}");
    }

    #[test]
    fn a_duration_too_big_for_the_clock_is_refused_not_a_crash() {
        let e = errs(&GOOD.replace("\"10ms\"", "\"99999999999999999999s\""));
        assert!(e[0].contains("cluster.heartbeat_interval") && e[0].contains("far too long"), "{e:?}");
    }

    #[test]
    fn no_key_says_how_to_make_one() {
        let e = errs(&GOOD.replace("key_file = \"/etc/vipa/cluster.key\"\n", ""));
        assert!(e[0].contains("cluster.key_file") && e[0].contains("vipactl cluster keygen"), "{e:?}");
    }

    #[test]
    fn bad_ranks_takeback_and_dvipa_without_cluster() {
        let e = errs(&GOOD.replace("s3 = 100", "s3 = 255").replace("\"when-idle\"", "\"later\""));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("rank 255 is out of range"), "{e:?}");
        assert!(e[1].contains("\"later\" is not a takeback rule"), "{e:?}");
        let e = errs(&GOOD.replace("owner = \"s1\"", "owner = \"s 1\"").replace("s3 = 100", "\"s/3\" = 100"));
        assert!(e.len() == 2 && e.iter().all(|e| e.contains("is not a node name: use 1 to 63 letters")), "{e:?}");
        let e = errs("[[dvipa]]\naddress = \"198.18.1.200\"\nowner = \"s1\"\n");
        assert!(e[0].contains("needs a [cluster] table"), "{e:?}");
        let e = errs(&GOOD.replace("[node]\nname = \"s1\"\n", ""));
        assert!(e[0].contains("needs this node's name"), "{e:?}");
    }
}
