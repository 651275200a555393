//! The planner against hand-built kernel states: what it changes, in which order, and
//! that applying its plan converges to a state where it asks for nothing.

use std::net::IpAddr;

use vipa_core::model::{Address, Link, Observed, Op, OwnedRoute, Route, RouteKey, SysctlKey, SysctlKind, PROTO_KERNEL};
use vipa_core::{plan, Config, DeviceMode, Ledger};

const BOOT: u8 = 3;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(text: &str) -> Config {
    Config::parse("vipa.toml", text).unwrap()
}

const SEED: &str = r#"
[[vipa]]
name = "vi0"
addresses = ["198.18.6.1", "2001:db8:6::1"]
source_interfaces = ["en1", "en5"]
"#;

fn link(index: u32, name: &str) -> Link {
    Link { index, name: name.into(), up: true, carrier: true, loopback: index == 1, kind: None, mac: None }
}

fn route(dst: &str, len: u8, metric: u32, gw: Option<&str>, oif: u32, src: Option<&str>, proto: u8) -> Route {
    Route {
        key: RouteKey { table: 254, dst: ip(dst), dst_len: len, tos: 0, metric },
        unicast: true,
        local: false,
        protocol: proto,
        scope_link: gw.is_none(),
        gateways: gw.map(ip).into_iter().collect(),
        oifs: vec![oif],
        prefsrc: src.map(ip),
    }
}

/// The seed's host: lo, en1 198.18.1.1/24, en5 198.18.5.1/24, eth9 elsewhere, default via en1.
fn seed_host() -> Observed {
    let mut o = Observed::default();
    for l in [link(1, "lo"), link(2, "en1"), link(3, "en5"), link(4, "eth9")] {
        o.links.insert(l.index, l);
    }
    for (i, a, p) in [(2, "198.18.1.1", 24), (3, "198.18.5.1", 24), (4, "198.19.0.1", 24), (2, "2001:db8:1::1", 64)] {
        o.addresses.insert((i, ip(a)), Address { ifindex: i, addr: ip(a), prefix_len: p, proto: 0, deprecated: false });
    }
    for r in [
        route("0.0.0.0", 0, 0, Some("198.18.1.2"), 2, None, BOOT),
        route("0.0.0.0", 0, 20, Some("198.18.5.2"), 3, None, BOOT),
        route("198.18.1.0", 24, 0, None, 2, Some("198.18.1.1"), PROTO_KERNEL),
        route("198.18.5.0", 24, 0, None, 3, Some("198.18.5.1"), PROTO_KERNEL),
        route("198.19.0.0", 24, 0, None, 4, Some("198.19.0.1"), PROTO_KERNEL),
        route("2001:db8:1::", 64, 256, None, 2, None, PROTO_KERNEL),
        route("::", 0, 1024, Some("2001:db8:1::2"), 2, None, BOOT),
        route("fe80::", 64, 256, None, 2, None, PROTO_KERNEL),
    ] {
        o.routes.insert(r.key, r);
    }
    for ifname in ["all", "en1", "en5", "eth9"] {
        for kind in SysctlKind::ALL {
            let v = if kind == SysctlKind::RpFilter && ifname != "all" { 1 } else { 0 };
            o.sysctls.insert(SysctlKey { ifname: ifname.into(), kind }, v);
        }
    }
    o
}

/// Carries out ops the way the kernel would, for convergence checks.
fn apply(o: &mut Observed, ops: &[Op]) {
    for op in ops {
        match op {
            Op::SetPrefsrc { key, prefsrc } => {
                if let Some(src) = prefsrc {
                    assert!(o.local_addresses().contains(src), "EINVAL: {src} is not local when {op} runs");
                }
                assert!(o.routes.contains_key(key), "route exists");
                o.assume(op);
            }
            Op::AddDummy { name } => {
                let index = o.links.keys().max().unwrap() + 1;
                let mut l = link(index, name);
                l.kind = Some("dummy".into());
                o.links.insert(index, l);
            }
            _ => o.assume(op),
        }
    }
}

/// Plans and applies until the planner asks for nothing (at most 3 rounds).
fn converge(c: &Config, o: &mut Observed, ledger: &mut Ledger, mode: DeviceMode) -> usize {
    let mut total = 0;
    for _ in 0..3 {
        let p = plan(c, o, ledger, mode);
        if p.ops.is_empty() {
            *ledger = p.ledger;
            return total;
        }
        total += p.ops.len();
        apply(o, &p.ops);
        *ledger = p.ledger;
    }
    panic!("no convergence: {:?}", plan(c, o, ledger, mode).ops);
}

fn src(o: &Observed, dst: &str, len: u8, metric: u32) -> Option<IpAddr> {
    o.routes[&RouteKey { table: 254, dst: ip(dst), dst_len: len, tos: 0, metric }].prefsrc
}

#[test]
fn seed_environment_gets_vipa_on_lo_and_as_source() {
    let c = config(SEED);
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    let p = plan(&c, &o, &ledger, DeviceMode::Loopback);
    // Addresses first, then routes, then sysctls.
    assert_eq!(p.ops[0], Op::AddAddress { ifindex: 1, addr: ip("198.18.6.1"), prefix_len: 32, source: true });
    assert_eq!(p.ops[1], Op::AddAddress { ifindex: 1, addr: ip("2001:db8:6::1"), prefix_len: 128, source: true });
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);

    assert_eq!(src(&o, "0.0.0.0", 0, 0), Some(ip("198.18.6.1")));
    assert_eq!(src(&o, "0.0.0.0", 0, 20), Some(ip("198.18.6.1")));
    assert_eq!(src(&o, "198.18.1.0", 24, 0), Some(ip("198.18.6.1")));
    assert_eq!(src(&o, "198.18.5.0", 24, 0), Some(ip("198.18.6.1")));
    assert_eq!(src(&o, "2001:db8:1::", 64, 256), Some(ip("2001:db8:6::1")));
    assert_eq!(src(&o, "::", 0, 1024), Some(ip("2001:db8:6::1")));
    // Not a source interface, and link-local: untouched.
    assert_eq!(src(&o, "198.19.0.0", 24, 0), Some(ip("198.19.0.1")));
    assert_eq!(src(&o, "fe80::", 64, 256), None);
    // Routed-mode sysctls on en1 and en5 only.
    let sys = |i: &str, k| o.sysctls[&SysctlKey { ifname: i.into(), kind: k }];
    assert_eq!(sys("en1", SysctlKind::RpFilter), 2);
    assert_eq!(sys("en5", SysctlKind::ArpIgnore), 1);
    assert_eq!(sys("en5", SysctlKind::ArpAnnounce), 2);
    assert_eq!(sys("en1", SysctlKind::IgnoreLinkdown6), 1);
    assert_eq!(sys("eth9", SysctlKind::RpFilter), 1);
}

#[test]
fn removal_restores_routes_and_sysctls_exactly() {
    let before = seed_host();
    let mut o = before.clone();
    let mut ledger = Ledger::default();
    converge(&config(SEED), &mut o, &mut ledger, DeviceMode::Loopback);
    assert_ne!(o, before);

    let p = plan(&Config::empty(), &o, &ledger, DeviceMode::Loopback);
    // Routes are pointed back before the addresses they use go away.
    let first_del = p.ops.iter().position(|op| matches!(op, Op::DelAddress { .. })).unwrap();
    assert!(p.ops[..first_del].iter().any(|op| matches!(op, Op::SetPrefsrc { .. })));
    assert!(!p.ops[first_del..].iter().any(|op| matches!(op, Op::SetPrefsrc { .. })));
    // Static VIPAs' addresses are no DVIPA releases: nothing of this plan waits for later.
    assert_eq!((p.releases, p.trailing), (0, 0));
    converge(&Config::empty(), &mut o, &mut ledger, DeviceMode::Loopback);
    assert_eq!(o, before);
    assert_eq!(ledger, Ledger::default());
}

#[test]
fn unchanged_config_plans_nothing() {
    let c = config(SEED);
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);
    let p = plan(&c, &o, &ledger, DeviceMode::Loopback);
    assert!(p.ops.is_empty());
    assert_eq!(p.ledger, ledger);
}

#[test]
fn restart_without_ledger_adopts_without_changes() {
    let c = config(SEED);
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);
    // A fresh daemon that lost its ledger sees the same kernel: nothing to do.
    let p = plan(&c, &o, &Ledger::default(), DeviceMode::Loopback);
    assert!(p.ops.is_empty(), "{:?}", p.ops);
    // And it can still restore connected routes to their kernel defaults later.
    let mut ledger = p.ledger;
    converge(&Config::empty(), &mut o, &mut ledger, DeviceMode::Loopback);
    assert_eq!(src(&o, "198.18.1.0", 24, 0), Some(ip("198.18.1.1")));
    assert_eq!(src(&o, "0.0.0.0", 0, 0), None);
    assert!(!o.local_addresses().contains(&ip("198.18.6.1")));
}

#[test]
fn foreign_replace_is_repaired_and_its_source_remembered() {
    let c = config(SEED);
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);
    // `ip route replace default via 198.18.1.2 src 198.18.1.1`
    let k = RouteKey { table: 254, dst: ip("0.0.0.0"), dst_len: 0, tos: 0, metric: 0 };
    o.routes.get_mut(&k).unwrap().prefsrc = Some(ip("198.18.1.1"));
    let p = plan(&c, &o, &ledger, DeviceMode::Loopback);
    assert_eq!(p.ops, vec![Op::SetPrefsrc { key: k, prefsrc: Some(ip("198.18.6.1")) }]);
    assert_eq!(p.ledger.routes[&k].original, Some(ip("198.18.1.1")));
    let mut ledger = p.ledger;
    apply(&mut o, &p.ops);
    converge(&Config::empty(), &mut o, &mut ledger, DeviceMode::Loopback);
    assert_eq!(o.routes[&k].prefsrc, Some(ip("198.18.1.1")));
}

#[test]
fn removing_one_nic_restores_only_its_routes() {
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    converge(&config(SEED), &mut o, &mut ledger, DeviceMode::Loopback);
    let c2 = config(&SEED.replace("[\"en1\", \"en5\"]", "[\"en5\"]"));
    converge(&c2, &mut o, &mut ledger, DeviceMode::Loopback);
    assert_eq!(src(&o, "198.18.1.0", 24, 0), Some(ip("198.18.1.1")));
    assert_eq!(src(&o, "0.0.0.0", 0, 0), None);
    assert_eq!(src(&o, "::", 0, 1024), None);
    assert_eq!(src(&o, "198.18.5.0", 24, 0), Some(ip("198.18.6.1")));
    assert_eq!(src(&o, "0.0.0.0", 0, 20), Some(ip("198.18.6.1")));
    assert_eq!(o.sysctls[&SysctlKey { ifname: "en1".into(), kind: SysctlKind::RpFilter }], 1);
    assert!(o.local_addresses().contains(&ip("198.18.6.1")));
}

#[test]
fn interface_appearing_later_is_applied() {
    let c = config(&SEED.replace("[\"en1\", \"en5\"]", "[\"en1\", \"en7\"]"));
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);
    o.links.insert(7, link(7, "en7"));
    let a = Address { ifindex: 7, addr: ip("198.18.7.1"), prefix_len: 24, proto: 0, deprecated: false };
    o.addresses.insert((7, ip("198.18.7.1")), a);
    let r = route("198.18.7.0", 24, 0, None, 7, Some("198.18.7.1"), PROTO_KERNEL);
    o.routes.insert(r.key, r);
    for kind in SysctlKind::ALL {
        o.sysctls.insert(SysctlKey { ifname: "en7".into(), kind }, 0);
    }
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);
    assert_eq!(src(&o, "198.18.7.0", 24, 0), Some(ip("198.18.6.1")));
}

#[test]
fn connected_route_left_behind_by_a_removed_nic_address_is_deleted() {
    let c = config(SEED);
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);
    o.addresses.remove(&(3, ip("198.18.5.1")));
    let k = RouteKey { table: 254, dst: ip("198.18.5.0"), dst_len: 24, tos: 0, metric: 0 };
    let p = plan(&c, &o, &ledger, DeviceMode::Loopback);
    assert_eq!(p.ops, vec![Op::DelRoute { key: k }]);
}

#[test]
fn ipv4_only_vipa_leaves_ipv6_routes_alone() {
    let c = config("[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.6.1\"]\nsource_interfaces = [\"en1\"]\n");
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);
    assert_eq!(src(&o, "::", 0, 1024), None);
    assert_eq!(o.sysctls[&SysctlKey { ifname: "en1".into(), kind: SysctlKind::IgnoreLinkdown6 }], 0);
}

#[test]
fn empty_interface_list_means_no_rewriting() {
    let c = config("[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.6.1\"]\n");
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    assert_eq!(converge(&c, &mut o, &mut ledger, DeviceMode::Loopback), 1);
    assert!(o.local_addresses().contains(&ip("198.18.6.1")));
    assert_eq!(src(&o, "0.0.0.0", 0, 0), None);
}

#[test]
fn dummy_mode_creates_device_then_addresses_and_removes_both() {
    let c = config(SEED);
    let before = seed_host();
    let mut o = before.clone();
    let mut ledger = Ledger::default();
    let p = plan(&c, &o, &ledger, DeviceMode::Dummy);
    assert_eq!(p.ops[0], Op::AddDummy { name: "vi0".into() });
    assert!(!p.ops.iter().any(|op| matches!(op, Op::AddAddress { .. })), "no device yet: {:?}", p.ops);
    converge(&c, &mut o, &mut ledger, DeviceMode::Dummy);
    let vi0 = o.link_by_name("vi0").unwrap().index;
    assert!(o.addresses.contains_key(&(vi0, ip("198.18.6.1"))));
    assert_eq!(src(&o, "0.0.0.0", 0, 0), Some(ip("198.18.6.1")));
    converge(&Config::empty(), &mut o, &mut ledger, DeviceMode::Dummy);
    assert_eq!(o, before);
}

#[test]
fn foreign_address_identical_to_vipa_is_used_but_not_removed() {
    let c = config(SEED);
    let mut o = seed_host();
    let a = Address { ifindex: 1, addr: ip("198.18.6.1"), prefix_len: 32, proto: 0, deprecated: false };
    o.addresses.insert((1, ip("198.18.6.1")), a);
    let mut ledger = Ledger::default();
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);
    converge(&Config::empty(), &mut o, &mut ledger, DeviceMode::Loopback);
    assert!(o.local_addresses().contains(&ip("198.18.6.1")));
    assert_eq!(src(&o, "0.0.0.0", 0, 0), None);
}

#[test]
fn nic_address_as_vipa_is_an_error_and_missing_nic_a_warning() {
    let c = config("[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.1.1\"]\nsource_interfaces = [\"en9\"]\n");
    let f = vipa_core::check("vipa.toml", &c, &seed_host(), &Ledger::default(), DeviceMode::Loopback);
    assert_eq!(f.errors.len(), 1);
    assert!(
        f.errors[0]
            .starts_with("vipa.toml:3: vipa[0].addresses[0]: 198.18.1.1 is already the address of interface en1"),
        "{}",
        f.errors[0]
    );
    assert_eq!(f.warnings.len(), 1);
    assert!(f.warnings[0].contains("\"en9\" does not exist yet"), "{}", f.warnings[0]);
}

#[test]
fn carrier_change_refreshes_ipv6_routes_of_that_nic_only() {
    let c = config(SEED);
    let mut o = seed_host();
    let mut ledger = Ledger::default();
    converge(&c, &mut o, &mut ledger, DeviceMode::Loopback);
    let before = o.links[&2].clone();
    let mut after = before.clone();
    after.carrier = false;
    let ops = vipa_core::plan::carrier_changed(&c, Some(&before), &after, &o);
    let keys: Vec<_> = ops
        .iter()
        .map(|op| match op {
            Op::RefreshRoute { key } => (key.dst, key.dst_len),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(keys, vec![(ip("::"), 0), (ip("2001:db8:1::"), 64)]);
    // No change of carrier, or a NIC of no VIPA: nothing.
    assert!(vipa_core::plan::carrier_changed(&c, Some(&before), &before, &o).is_empty());
    let eth9 = o.links[&4].clone();
    let mut eth9_down = eth9.clone();
    eth9_down.carrier = false;
    assert!(vipa_core::plan::carrier_changed(&c, Some(&eth9), &eth9_down, &o).is_empty());
}

const DVIPAS: &str = r#"
[node]
name = "s1"

[cluster]
peers = ["198.18.1.12"]
key_file = "/etc/vipa/cluster.key"

[[dvipa]]
address = "198.18.1.200"
owner = "s1"
announce = ["en1"]

[[dvipa]]
address = "2001:db8:1::200"
owner = "s1"
announce = ["en1"]
"#;

fn held(c: &Config) -> Vec<plan::HeldDvipa> {
    c.dvipas.iter().map(|d| plan::HeldDvipa { address: d.address, device: d.announce.first().cloned() }).collect()
}

fn plan_held(c: &Config, o: &Observed, held: &[plan::HeldDvipa]) -> Vec<Op> {
    plan::plan_runtime(c, o, &Ledger::default(), DeviceMode::Loopback, &[], held).ops
}

#[test]
fn ipv4_dvipas_are_local_routes_and_ipv6_ones_a_route_then_an_address() {
    let c = config(DVIPAS);
    let mut o = seed_host();
    let ops = plan_held(&c, &o, &held(&c));
    assert_eq!(
        ops,
        vec![
            Op::AddRoute { route: OwnedRoute::dvipa(ip("198.18.1.200"), 2) },
            Op::AddRoute { route: OwnedRoute::dvipa(ip("2001:db8:1::200"), 2) },
            // After the routes, which hold it already; never the source of the host's own
            // traffic: it moves.
            Op::AddAddress { ifindex: 2, addr: ip("2001:db8:1::200"), prefix_len: 128, source: false },
        ]
    );
    apply(&mut o, &ops);
    assert!(o.local_addresses().contains(&ip("198.18.1.200")), "the route gives the host the address");
    assert!(plan_held(&c, &o, &held(&c)).is_empty(), "converged");
    // Held as a source (an earlier version added it so, or someone changed it): made one
    // that is never a source again, and nothing else.
    o.addresses.get_mut(&(2, ip("2001:db8:1::200"))).unwrap().deprecated = false;
    let ops = plan_held(&c, &o, &held(&c));
    let deprecate = vec![Op::Deprecate { ifindex: 2, addr: ip("2001:db8:1::200"), prefix_len: 128 }];
    assert_eq!(ops, deprecate);
    apply(&mut o, &ops);
    assert!(plan_held(&c, &o, &held(&c)).is_empty(), "converged");
    // Changed by hand (`ip addr change` leaves no protocol tag): still vipa's by its ledger.
    let mut by_hand = o.clone();
    let a = by_hand.addresses.get_mut(&(2, ip("2001:db8:1::200"))).unwrap();
    (a.proto, a.deprecated) = (0, false);
    let mut ledger = Ledger::default();
    ledger.addresses.insert(("en1".into(), ip("2001:db8:1::200")));
    let ops = plan::plan_runtime(&c, &by_hand, &ledger, DeviceMode::Loopback, &[], &held(&c)).ops;
    assert_eq!(ops, deprecate);
    // Someone else's identical address, not in the ledger: used as it is, never changed.
    assert!(plan_held(&c, &by_hand, &held(&c)).is_empty());
    // Released: the routes and the address go.
    let ops = plan_held(&c, &o, &[]);
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(ops.contains(&Op::DelRoute { key: OwnedRoute::dvipa(ip("198.18.1.200"), 2).key() }));
    assert!(ops.contains(&Op::DelRoute { key: OwnedRoute::dvipa(ip("2001:db8:1::200"), 2).key() }));
    assert!(ops.contains(&Op::DelAddress { ifindex: 2, addr: ip("2001:db8:1::200"), prefix_len: 128 }));
    apply(&mut o, &ops);
    assert!(
        !o.local_addresses().contains(&ip("198.18.1.200")) && !o.local_addresses().contains(&ip("2001:db8:1::200"))
    );
    assert!(plan_held(&c, &o, &[]).is_empty());
}

#[test]
fn thousands_of_ipv6_dvipas_take_their_routes_first_and_their_addresses_last() {
    let mut text = String::from("[node]\nname = \"s1\"\n[cluster]\npeers = [\"198.18.1.12\"]\nkey_file = \"/k\"\n");
    for i in 0..100 {
        text.push_str(&format!(
            "[[dvipa]]\naddress = \"2001:db8:19::{:x}\"\nowner = \"s1\"\nannounce = [\"en1\"]\n",
            i + 1
        ));
    }
    let c = config(&text);
    let mut o = seed_host();
    let first = plan::plan_runtime(&c, &o, &Ledger::default(), DeviceMode::Loopback, &[], &held(&c));
    // Before the plan is applied: answered for only once their routes are in, or from now
    // on when the plan is about to add them.
    assert!(plan::dvipas_to_answer_for(&o, &held(&c), false).is_empty());
    assert_eq!(plan::dvipas_to_answer_for(&o, &held(&c), true).get(&2).map(|t| t.len()), Some(100));
    let routes = first.ops.iter().take_while(|op| matches!(op, Op::AddRoute { .. })).count();
    assert_eq!(routes, 100, "every route first: {:?}", first.ops.first());
    assert_eq!(first.ops.len(), 200, "then the addresses");
    assert_eq!(first.trailing, 100, "which the daemon may leave for later plans");
    assert_eq!(first.later_from(), 100);
    for (applied, left) in [(0, (0, 100)), (100, (0, 100)), (130, (0, 70)), (200, (0, 0))] {
        assert_eq!(first.left_after(applied), left, "after {applied}");
    }
    let in_ledger = |l: &Ledger| l.addresses.iter().filter(|(_, a)| a.to_string().starts_with("2001:db8:19::")).count();
    assert_eq!(in_ledger(&first.ledger), 100, "vipa's from the plan that adds them");
    assert!(first.ops[100..].iter().all(|op| matches!(op, Op::AddAddress { ifindex: 2, source: false, .. })));
    // The daemon stops after a few: the routes already hold every address, and the next
    // plan has only the rest of the addresses, still marked as trailing.
    apply(&mut o, &first.ops[..130]);
    for i in 0..100u32 {
        assert!(o.local_addresses().contains(&ip(&format!("2001:db8:19::{:x}", i + 1))), "held by its route at once");
    }
    let held_v6 = held(&c);
    let answer = plan::dvipas_to_answer_for(&o, &held_v6, false);
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[&2].len(), 70, "the daemon answers for those whose address is still to come");
    assert!(
        !answer[&2].contains(&"2001:db8:19::1".parse().unwrap())
            && answer[&2].contains(&"2001:db8:19::64".parse().unwrap())
    );
    // On a kernel without address protocols (or after `ip addr change`), the ones there
    // are vipa's by the ledger alone: still claimed, nothing changed on them.
    for a in o.addresses.values_mut() {
        a.proto = 0;
    }
    let next = plan::plan_runtime(&c, &o, &first.ledger, DeviceMode::Loopback, &[], &held_v6);
    assert_eq!((next.ops.len(), next.trailing), (70, 70), "{:?}", next.ops.first());
    assert_eq!(in_ledger(&next.ledger), 100);
    apply(&mut o, &next.ops);
    let p = plan::plan_runtime(&c, &o, &next.ledger, DeviceMode::Loopback, &[], &held_v6);
    assert!(p.ops.is_empty() && p.trailing == 0, "converged: {:?}", p.ops);
    assert!(plan::dvipas_to_answer_for(&o, &held_v6, false).is_empty(), "the kernel answers for every address now");
    let v6 = |o: &Observed| {
        o.addresses.keys().filter(|(i, a)| *i == 2 && a.to_string().starts_with("2001:db8:19::")).count()
    };
    assert_eq!(v6(&o), 100, "every address is on en1 in the end");
    // Released, all at once: the routes first, then the addresses, which the daemon may
    // leave for later plans too; nothing is answered for.
    assert_eq!(in_ledger(&p.ledger), 100);
    let p = plan::plan_runtime(&c, &o, &p.ledger, DeviceMode::Loopback, &[], &[]);
    assert_eq!((p.ops.len(), p.trailing, p.releases), (200, 0, 100));
    assert_eq!(p.later_from(), 100);
    for (applied, left) in [(0, (100, 0)), (50, (100, 0)), (130, (70, 0)), (200, (0, 0))] {
        assert_eq!(p.left_after(applied), left, "after {applied}");
    }
    assert!(p.ops[..100].iter().all(|op| matches!(op, Op::DelRoute { .. })), "{:?}", p.ops[0]);
    assert!(p.ops[100..].iter().all(|op| matches!(op, Op::DelAddress { ifindex: 2, .. })));
    assert_eq!(in_ledger(&p.ledger), 100, "in the ledger until they are gone (the daemon may stop before)");
    // Stopped after a few: those whose address is gone are off the host (a heartbeat
    // clears their going mark); the next plan has the rest, still marked as releases, and
    // still vipa's by the ledger alone (a kernel without address protocols).
    apply(&mut o, &p.ops[..130]);
    let gone = |o: &Observed, i: u32| !o.local_addresses().contains(&ip(&format!("2001:db8:19::{:x}", i + 1)));
    assert_eq!((0..100).filter(|&i| gone(&o, i)).count(), 30);
    for a in o.addresses.values_mut() {
        a.proto = 0;
    }
    let next = plan::plan_runtime(&c, &o, &p.ledger, DeviceMode::Loopback, &[], &[]);
    assert_eq!((next.ops.len(), next.trailing, next.releases), (70, 0, 70), "{:?}", next.ops.first());
    assert_eq!(in_ledger(&next.ledger), 70, "those still there");
    // Taken again before the rest went: the addresses still there stay (vipa's, by the
    // ledger alone), the others come back behind their routes.
    let again = plan::plan_runtime(&c, &o, &p.ledger, DeviceMode::Loopback, &[], &held_v6);
    assert_eq!((again.ops.len(), again.trailing, again.releases), (130, 30, 0), "{:?}", again.ops.first());
    assert_eq!(in_ledger(&again.ledger), 100, "the 70 still there are vipa's, and the 30 to come");
    apply(&mut o, &next.ops);
    assert_eq!(v6(&o), 0);
    assert!(o.local_addresses().iter().all(|a| !a.to_string().starts_with("2001:db8:19::")));
    let done = plan::plan_runtime(&c, &o, &next.ledger, DeviceMode::Loopback, &[], &[]);
    assert!(done.ops.is_empty() && in_ledger(&done.ledger) == 0, "out of the ledger once gone: {:?}", done.ops);
}

#[test]
fn a_dvipa_that_is_already_a_nics_address_is_refused_unless_vipa_put_it_there() {
    let c = config(DVIPAS);
    let mut o = seed_host();
    let check = |o: &Observed, ledger: &Ledger| vipa_core::check("vipa.toml", &c, o, ledger, DeviceMode::Loopback);
    assert!(check(&o, &Ledger::default()).errors.is_empty());
    // The operator's own address: this host would answer for it while another node holds it.
    let a = Address { ifindex: 2, addr: ip("2001:db8:1::200"), prefix_len: 64, proto: 0, deprecated: false };
    o.addresses.insert((2, a.addr), a);
    let f = check(&o, &Ledger::default());
    assert_eq!(
        f.errors,
        vec!["vipa.toml: dvipa[1].address: 2001:db8:1::200 is already the address of interface en1 (2001:db8:1::200/64), not one vipa put there: this host would answer for it while another node holds it; give the DVIPA an address no interface has, or take it off en1 first"]
    );
    // vipa's own, kept in the kernel by a vipad that was killed: by its tag, or by the
    // ledger where the kernel keeps no tag.
    let mut ledger = Ledger::default();
    ledger.addresses.insert(("en1".into(), ip("2001:db8:1::200")));
    assert!(check(&o, &ledger).errors.is_empty());
    o.addresses.get_mut(&(2, ip("2001:db8:1::200"))).unwrap().proto = vipa_core::model::ADDR_PROTO_VIPA;
    assert!(check(&o, &Ledger::default()).errors.is_empty());
    // Untagged, but where and as vipa puts it (a kernel without address tags, and a vipad
    // killed before it wrote its ledger): taken, with a warning, so a restart still starts.
    let a = o.addresses.get_mut(&(2, ip("2001:db8:1::200"))).unwrap();
    (a.proto, a.prefix_len) = (0, 128);
    let f = check(&o, &Ledger::default());
    assert!(f.errors.is_empty(), "{:?}", f.errors);
    assert_eq!(f.warnings.len(), 1);
    assert!(f.warnings[0].contains("2001:db8:1::200 is on interface en1 as vipa would put it"), "{}", f.warnings[0]);
    // The ledger names it under another device (renamed since): still vipa's.
    let mut renamed = Ledger::default();
    renamed.addresses.insert(("eth1".into(), ip("2001:db8:1::200")));
    assert!(check(&o, &renamed).errors.is_empty() && check(&o, &renamed).warnings.is_empty());
    // Host-length and untagged, on another NIC than vipa would use: someone else's.
    let a = Address { ifindex: 3, addr: ip("198.18.1.200"), prefix_len: 32, proto: 0, deprecated: false };
    o.addresses.insert((3, a.addr), a);
    let f = check(&o, &Ledger::default());
    assert_eq!(f.errors.len(), 1);
    assert!(
        f.errors[0].starts_with("vipa.toml: dvipa[0].address: 198.18.1.200 is already the address of interface en5")
    );
    o.addresses.remove(&(3, ip("198.18.1.200")));
    // Inside a local route that is not vipa's: the host takes every address in it.
    let mut anyip = route("198.18.1.0", 24, 0, None, 1, None, 3);
    (anyip.key.table, anyip.local, anyip.unicast) = (255, true, false);
    o.routes.insert(anyip.key, anyip);
    let f = check(&o, &Ledger::default());
    assert_eq!(
        f.errors,
        vec!["vipa.toml: dvipa[0].address: 198.18.1.200 is inside the local route 198.18.1.0/24 (table 255), which is not vipa's: this host takes and answers for every address in it, also while another node holds the DVIPA; give the DVIPA an address outside it, or delete the route"]
    );
    // vipa's own local route for it, and the kernel's local routes, are not in the way.
    o.routes.clear();
    let mut kernels = route("198.18.1.1", 32, 0, None, 2, None, PROTO_KERNEL);
    (kernels.key.table, kernels.local) = (255, true);
    for r in [OwnedRoute::dvipa(ip("198.18.1.200"), 2).to_route(), kernels] {
        o.routes.insert(r.key, r);
    }
    assert!(check(&o, &Ledger::default()).errors.is_empty());
}

#[test]
fn an_ipv4_dvipa_is_an_address_where_the_kernel_would_not_answer_arp_for_a_route() {
    let c = config(DVIPAS);
    let v4 = [plan::HeldDvipa { address: ip("198.18.1.200"), device: Some("en1".into()) }];
    let as_address = vec![Op::AddAddress { ifindex: 2, addr: ip("198.18.1.200"), prefix_len: 32, source: true }];
    let arp_ignore = |ifname: &str| SysctlKey { ifname: ifname.into(), kind: SysctlKind::ArpIgnore };
    for (ifname, value) in [("en1", 1), ("all", 1), ("en1", 3)] {
        let mut o = seed_host();
        o.sysctls.insert(arp_ignore(ifname), value);
        assert_eq!(plan_held(&c, &o, &v4), as_address, "{ifname} arp_ignore {value}");
    }
    // Not known: the safe choice.
    let mut o = seed_host();
    o.sysctls.remove(&arp_ignore("en1"));
    assert_eq!(plan_held(&c, &o, &v4), as_address);
    // A static VIPA on en1 is about to raise arp_ignore there.
    let with_vipa = config(&format!("{DVIPAS}{SEED}"));
    let ops = plan_held(&with_vipa, &seed_host(), &v4);
    assert!(ops.contains(&as_address[0]), "{ops:?}");
    // The planner reads what it needs to decide.
    let keys = plan::wanted_sysctls(&c, &seed_host(), &Ledger::default());
    assert!(keys.contains(&arp_ignore("en1")));
    // Once arp_ignore is back at 0, the route replaces the address, added before the
    // address goes so the host never stops answering.
    let mut o = seed_host();
    o.sysctls.insert(arp_ignore("en1"), 1);
    let ops = plan_held(&c, &o, &v4);
    apply(&mut o, &ops);
    o.sysctls.insert(arp_ignore("en1"), 0);
    let ops = plan_held(&c, &o, &v4);
    assert_eq!(
        ops,
        vec![
            Op::AddRoute { route: OwnedRoute::dvipa(ip("198.18.1.200"), 2) },
            Op::DelAddress { ifindex: 2, addr: ip("198.18.1.200"), prefix_len: 32 },
        ]
    );
}

#[test]
fn a_group_drops_arp_only_for_ipv4_addresses_bound_elsewhere() {
    let group = |data: &str| {
        config(&format!(
            "[[group]]\nname = \"prod\"\ninterfaces = [\"en1\", \"en5\"]\ndata_addresses = [{data}]\nfailure_detection_time = \"1s\"\n"
        ))
    };
    let rt = |c: &Config| {
        vec![plan::GroupRuntime {
            name: "prod".into(),
            active: vec!["en1".into(), "en5".into()],
            binding: c.groups[0].data_addresses.iter().map(|(a, _)| (*a, Some("en1".to_string()))).collect(),
        }]
    };
    // IPv6 only: nothing for ARP to drop, so no filter at all.
    let c = group("\"2001:db8:1::5/64\"");
    let p = plan::plan_runtime(&c, &seed_host(), &Ledger::default(), DeviceMode::Loopback, &rt(&c), &[]);
    assert!(p.arp.is_empty(), "{:?}", p.arp);
    // IPv4 bound to en1: en5 must not answer for it, en1 has nothing to drop.
    let c = group("\"198.18.1.5/24\"");
    let p = plan::plan_runtime(&c, &seed_host(), &Ledger::default(), DeviceMode::Loopback, &rt(&c), &[]);
    assert_eq!(p.arp.drop.keys().collect::<Vec<_>>(), ["en5"]);
    assert_eq!(p.arp.drop["en5"], vec!["198.18.1.5".parse::<std::net::Ipv4Addr>().unwrap()]);
}
