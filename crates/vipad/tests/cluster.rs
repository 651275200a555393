//! Dynamic VIPAs across a cluster: three hosts and a client on a LAN bridge, each host
//! with its own vipad (vipa-testbed's `ClusterEnv`).

use std::time::{Duration, Instant};

use vipa_testbed::lab::{owned_by_s1, serve_on, stream, ClusterEnv, Names, DVIPA};
use vipa_testbed::{require_root, wait_for, workspace_bin, Proc};

/// 10 ms heartbeats: a death is noticed about one interval after the last heartbeat, once
/// the probes sent to the late node go unanswered (or after 10 silent intervals at most).
const CLUSTER: &str = "heartbeat_interval = \"10ms\"\n";

fn dvipa(takeback: &str) -> String {
    owned_by_s1(DVIPA, "s2 = 200, s3 = 100", takeback)
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn up(takeback: &str) -> (ClusterEnv, Vec<Proc>) {
    up_with(CLUSTER, takeback)
}

/// Three nodes with `cluster` in `[cluster]`, s1 holding the DVIPA and every node done
/// listening.
fn up_with(cluster: &str, takeback: &str) -> (ClusterEnv, Vec<Proc>) {
    require_root();
    let env = ClusterEnv::build(Names::Unique, 3);
    for k in 1..=3 {
        env.write_config(k, cluster, &dvipa(takeback));
    }
    let procs: Vec<Proc> = (1..=3).map(|k| env.start_vipad(k)).collect();
    let ok = wait_for(Duration::from_secs(5), || (env.holders(DVIPA) == vec![1]).then_some(()));
    assert!(ok.is_some(), "s1 never held it: {:?}\n{}", env.holders(DVIPA), env.log(1));
    // Every node done listening after its start.
    let ok = wait_for(Duration::from_secs(5), || {
        (1..=3).all(|k| out(&env.vipactl(k, &["cluster"])).matches(" alive ").count() == 2).then_some(())
    });
    assert!(ok.is_some(), "{}", out(&env.vipactl(3, &["cluster"])));
    (env, procs)
}

fn holder_is(env: &ClusterEnv, k: usize, within: Duration) -> Option<Duration> {
    holder_among(env, k, &[1, 2, 3], within)
}

/// s1's vipad is killed and its cable cut; s2 takes over.
fn s1_dies(env: &ClusterEnv, procs: &mut [Proc]) {
    procs[0].kill();
    env.cut(1);
    holder_among(env, 2, &[2, 3], Duration::from_secs(3)).expect("s2 took over");
}

/// Waits until `k` is the only holder among the hosts `live` (a killed host's kernel keeps
/// its copy, unreachable behind its cut cable).
fn holder_among(env: &ClusterEnv, k: usize, live: &[usize], within: Duration) -> Option<Duration> {
    let t = Instant::now();
    wait_for(within, || {
        let h: Vec<usize> = env.holders(DVIPA).into_iter().filter(|h| live.contains(h)).collect();
        (h == vec![k]).then(|| t.elapsed())
    })
}

#[test]
fn holder_death_is_taken_over_by_the_highest_backup_and_the_owner_takes_it_back() {
    let (env, mut procs) = up("immediate");
    // Held by a local route, not an address on the NIC.
    assert!(env.host(1).sh(&format!("ip -o addr show to {DVIPA}")).is_empty());
    let route = env.host(1).sh("ip route show table local proto 86");
    assert!(route.contains(&format!("local {DVIPA} dev en1 ")), "{route}");
    let dyn1 = out(&env.vipactl(1, &["dvipa"]));
    assert!(dyn1.contains("ACTIVE") && dyn1.contains("VIPADefine") && dyn1.contains(" s1 "), "{dyn1}");
    let dyn2 = out(&env.vipactl(2, &["dvipa"]));
    assert!(dyn2.contains("BACKUP") && dyn2.contains("VIPABackup") && dyn2.contains("200"), "{dyn2}");
    let status = out(&env.vipactl(1, &["status"]));
    assert!(status.contains("cluster  node s1, quorum yes, 3/3 members alive, 1/1 DVIPAs held here"), "{status}");
    let members = out(&env.vipactl(2, &["cluster"]));
    assert!(members.contains("quorum yes") && members.matches("alive").count() == 2, "{members}");
    // The kernel steers routine heartbeats to a socket read only when the thread wakes.
    assert!(env.log(2).contains("routine heartbeats go to a socket of their own"), "{}", env.log(2));
    // Each peer's round trip was measured when it joined.
    let j = env.cluster_view(2);
    let rtts: Vec<u64> = j["members"].as_array().unwrap().iter().filter_map(|m| m["rtt_us"].as_u64()).collect();
    assert!(rtts.len() == 2 && rtts.iter().all(|r| *r > 0 && *r < 100_000), "{members}");

    let incarnation_of_s1 = || -> u64 { env.member(2, "s1")["incarnation"].as_u64().unwrap_or(0) };
    let first_incarnation = incarnation_of_s1();
    assert!(first_incarnation > 0);
    let (mut srv1, _srv2) = (serve_on(env.host(1), Some(DVIPA)), serve_on(env.host(2), Some(DVIPA)));
    let run = stream(&env.client, DVIPA, 2500);
    std::thread::sleep(Duration::from_millis(700));
    // The host dies: every process killed, its link cut. (A server left running would
    // keep retransmitting to the client over the cut link, and the kernel's next try to
    // resolve the client, up to a second later, would hold its replies after the return.)
    env.cut(1);
    procs[0].kill();
    srv1.kill();
    let took = holder_among(&env, 2, &[2, 3], Duration::from_secs(3)).expect("s2 took over");
    let r = run.report();
    eprintln!("host death: s2 active after {took:?}; client UDP longest gap {:.1} ms", r.udp.max_gap_ms);
    assert!(r.udp.max_gap_ms < 500.0, "client outage {:.0} ms", r.udp.max_gap_ms);
    assert!(r.udp.received > r.udp.sent / 2);
    assert_eq!(env.client_neigh(DVIPA), Some(env.mac(2)), "the client follows the gratuitous ARP");
    let dyn2 = out(&env.vipactl(2, &["dvipa"]));
    assert!(dyn2.contains("ACTIVE"), "{dyn2}");
    assert!(out(&env.vipactl(2, &["cluster"])).contains("dead"));
    // Seen by probing, well before ten silent intervals.
    assert!(env.log(2).contains("node s1 is dead: no heartbeat for"), "{}", env.log(2));
    assert!(env.log(2).contains("none of 20 probes answered"), "{}", env.log(2));

    // The host comes back with another NIC (another link-layer address): the peers'
    // probes, sent to the old one while they miss s1, do not reach it, so only s1 itself
    // can mend what follows.
    env.host(1).sh("ip link set en1 address 02:00:00:00:01:11");
    // What the killed vipad sent last, into the cut link, left the kernel resolving its
    // peers, its next try up to a second away: made certain here (not left to when the
    // kill came), and that try put off past the restart. The vipad that starts must reach
    // its peers at once all the same.
    env.host(1).sh("sysctl -qw net.ipv4.neigh.en1.retrans_time_ms=5000");
    env.host(1).sh("ping -c1 -W0.2 198.18.1.12 ; ping -c1 -W0.2 198.18.1.13 ; true");
    let stale = env.host(1).sh("ip neigh show dev en1");
    assert!(stale.contains("198.18.1.12") && stale.contains("198.18.1.13"), "{stale}");
    // The owner comes back: takeback through a handover, never two holders.
    env.restore(1);
    // s1's kernel still has the address from before it was killed.
    assert_eq!(env.holders(DVIPA), vec![1, 2]);
    let first_run = env.log(1).len();
    let s2_before = env.log(2).len();
    procs[0] = env.start_vipad(1);
    env.host(1).sh("sysctl -qw net.ipv4.neigh.en1.retrans_time_ms=1000");
    // It comes back with its services.
    let _srv1_back = serve_on(env.host(1), Some(DVIPA));
    let run = stream(&env.client, DVIPA, 2500);
    // First s1 gives its stale copy up (s2 alone, while s1 listens), then s2 hands over.
    // (Told by the logs, whose clock is the same: the moment s2 holds it alone may be over
    // before this thread, slowed by a loaded machine, looks.)
    let gave_up_line = format!("applied change=delete route {DVIPA}/32");
    let gave_up = || env.log(1)[first_run..].lines().find(|l| l.contains(&gave_up_line)).map(str::to_string);
    let mut both = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        let released = gave_up().is_some();
        let h = env.holders(DVIPA);
        if h == vec![1] {
            break;
        }
        if released && h.len() > 1 {
            both += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(env.holders(DVIPA), vec![1], "s1 took it back: {}", env.log(1));
    let gave_up = gave_up().unwrap_or_else(|| panic!("s1 never gave its stale copy up: {}", env.log(1)));
    let handed_over = env.log(2)[s2_before..].lines().find(|l| l.contains("DVIPA released")).map(str::to_string);
    let handed_over = handed_over.unwrap_or_else(|| panic!("s2 never handed it over: {}", env.log(2)));
    // RFC 3339 stamps of one format compare as strings.
    assert!(
        gave_up[..27] < handed_over[..27],
        "s1 gave its copy up only after s2 handed over:\n{gave_up}\n{handed_over}"
    );
    assert_eq!(both, 0, "two holders after s1 gave up its stale copy");
    let r = run.report();
    eprintln!(
        "takeback: client UDP longest gap {:.1} ms, {:.0} ms into the stream",
        r.udp.max_gap_ms, r.udp.max_gap_at_ms
    );
    assert!(r.udp.max_gap_ms < 500.0, "takeback outage {:.0} ms\n{}\n{}", r.udp.max_gap_ms, env.log(1), env.log(2));
    assert_eq!(
        env.client_neigh(DVIPA),
        Some(env.mac(1)),
        "client's entry (s1 {}, s2 {}): {}\n{}",
        env.mac(1),
        env.mac(2),
        env.client.sh("ip neigh show dev cl0"),
        env.log(1)
    );
    assert!(
        env.log(1).contains("stale copy from before the restart"),
        "{}\n{}\n{}",
        env.log(1),
        out(&env.vipactl(1, &["cluster"])),
        env.log(2)
    );
    assert!(incarnation_of_s1() > first_incarnation, "a restart is a new incarnation");
    // Its peers answered at once: it never gave its address up for want of a quorum.
    let log1 = env.log(1).split_off(first_run);
    assert!(log1.contains("unresolved neighbour entries towards peers dropped"), "{log1}");
    assert!(!log1.contains("no quorum"), "{log1}");
}

#[test]
fn a_nic_that_ignores_arp_for_other_nics_addresses_gets_the_dvipa_as_an_address() {
    let (env, mut procs) = up("immediate");
    // Under arp_ignore 1 the kernel answers ARP only for addresses on the NIC itself, so
    // s2 must put the DVIPA there when it takes over.
    env.host(2).sh("sysctl -qw net.ipv4.conf.en1.arp_ignore=1");
    s1_dies(&env, &mut procs);
    let addrs = env.host(2).sh(&format!("ip -o addr show dev en1 to {DVIPA}"));
    assert!(addrs.contains(&format!(" {DVIPA}/32 ")), "{addrs}");
    assert!(env.host(2).sh("ip route show table local proto 86").is_empty());
    env.client.sh(&format!("ip neigh flush dev cl0 to {DVIPA}"));
    env.client.try_sh(&format!("ping -c1 -W1 {DVIPA}")).expect("the client resolves and reaches it on s2");
    assert_eq!(env.client_neigh(DVIPA), Some(env.mac(2)));
    // The address is vipa's own: a reload takes the file, and a vipad killed and started
    // again takes up what it kept (neither is refused as someone else's address).
    let o = env.vipactl(2, &["reload"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    procs[1].kill();
    let first_run = env.log(2).len();
    procs[1] = env.start_vipad(2);
    let listened = wait_for(Duration::from_secs(2), || {
        env.log(2)[first_run..].contains("listened for one dead interval").then_some(())
    });
    let log2 = env.log(2).split_off(first_run);
    assert!(listened.is_some() && log2.contains(&format!("kept=[{DVIPA}]")), "{log2}");
    holder_among(&env, 2, &[2, 3], Duration::ZERO).expect("s2 holds it still, having listened");
}

#[test]
fn link_cut_alone_moves_it_and_the_minority_releases() {
    let (env, _procs) = up("immediate");
    env.cut(1);
    holder_is(&env, 2, Duration::from_secs(3)).expect("s2 took over");
    // s1 runs on, alone: no quorum, so it gave the address up too.
    let ok = wait_for(Duration::from_secs(2), || (!env.holders(DVIPA).contains(&1)).then_some(()));
    assert!(ok.is_some(), "{:?}", env.holders(DVIPA));
    assert!(out(&env.vipactl(1, &["cluster"])).contains("quorum NO"));
    // s1 kept sending into the cut link, so its kernel is resolving its peers. (Made
    // certain, not left to the state its entries had at the cut: one still fresh then is
    // not resolved at all; and the next try put 5 s off, past the restore.) With the cable
    // back, its heartbeats reach them at once.
    env.host(1).sh("sysctl -qw net.ipv4.neigh.en1.retrans_time_ms=5000");
    env.host(1).sh("ip neigh flush dev en1; ping -c1 -W0.2 198.18.1.12 ; ping -c1 -W0.2 198.18.1.13 ; true");
    let resolving = env.host(1).sh("ip neigh show dev en1");
    let incomplete =
        |peer: &str| resolving.lines().any(|l| l.starts_with(&format!("{peer} ")) && l.contains("INCOMPLETE"));
    assert!(incomplete("198.18.1.12") && incomplete("198.18.1.13"), "{resolving}");
    env.restore(1);
    let t = Instant::now();
    let back = |m: serde_json::Value| m["state"] == "alive" || m["state"] == "listening";
    let heard = wait_for(Duration::from_secs(3), || back(env.member(2, "s1")).then(|| t.elapsed()));
    eprintln!("s2 heard s1 again {heard:?} after the cable came back");
    // As the carrier came back, not later as s1 took its address back.
    let log1 = env.log(1);
    let mut after_carrier = log1.lines().skip_while(|l| !l.contains("carrier changed interface=en1 carrier=true"));
    let dropped = |l: &str| {
        l.contains("unresolved neighbour entries towards peers dropped, to be resolved afresh interface=en1 ")
    };
    assert!(after_carrier.by_ref().take(4).any(dropped), "{log1}");
    assert!(heard.is_some_and(|d| d < Duration::from_millis(600)), "{heard:?}\n{log1}\n{}", env.log(2));
    env.host(1).sh("sysctl -qw net.ipv4.neigh.en1.retrans_time_ms=1000");
    holder_is(&env, 1, Duration::from_secs(3)).expect("back on s1");
}

#[test]
fn when_idle_waits_for_the_last_connection() {
    let (env, mut procs) = up("when-idle");
    s1_dies(&env, &mut procs);
    let _srv = serve_on(env.host(2), Some(DVIPA));
    // A long TCP stream to the DVIPA, now held by s2.
    let run = stream(&env.client, DVIPA, 2500);
    std::thread::sleep(Duration::from_millis(300));
    env.restore(1);
    env.host(1).drop_local(DVIPA);
    procs[0] = env.start_vipad(1);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(env.holders(DVIPA), vec![2], "busy: stays on s2");
    let dyn2 = out(&env.vipactl(2, &["dvipa"]));
    assert!(dyn2.contains("QUIESCING"), "{dyn2}");
    let r = run.report();
    assert!(r.tcp.error.is_none(), "the connection was not broken: {:?}", r.tcp.error);
    holder_is(&env, 1, Duration::from_secs(3)).expect("idle: back to s1");
}

#[test]
fn partition_minority_releases_and_one_holder_remains_after_healing() {
    let (env, _procs) = up("immediate");
    env.partition(1);
    holder_is(&env, 2, Duration::from_secs(3)).expect("majority side took over");
    env.heal();
    holder_is(&env, 1, Duration::from_secs(3)).expect("one holder after healing: the owner");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.holders(DVIPA), vec![1]);
    env.client.try_sh(&format!("ping -c1 -W1 {DVIPA}")).expect("client reaches the DVIPA");
    assert_eq!(env.client_neigh(DVIPA), Some(env.mac(1)), "the client's ARP entry names the holder");
}

/// A peer dead long enough for the kernel to be resolving its address again (its entry
/// lapsed; here within seconds, by default within about a minute) has what is sent to it
/// held back in that entry, charged to the sending socket. That must not keep the live
/// nodes from hearing each other: before, every three seconds the two live nodes of three
/// each declared the other dead, and the owner gave its address up and took it again.
#[test]
fn a_peer_dead_for_long_does_not_make_the_live_nodes_lose_each_other() {
    require_root();
    let env = ClusterEnv::build(Names::Unique, 3);
    for k in 1..=3 {
        env.write_config(k, CLUSTER, &dvipa("immediate"));
        // Entries lapse fast: reachable for 0.5-1.5 s after the last answer, checked 1 s on.
        env.host(k).sh(
            "sysctl -qw net.ipv4.neigh.en1.base_reachable_time_ms=1000 net.ipv4.neigh.en1.delay_first_probe_time=1",
        );
    }
    let mut procs: Vec<Proc> = (1..=3).map(|k| env.start_vipad(k)).collect();
    holder_is(&env, 1, Duration::from_secs(5)).expect("s1 holds it");
    procs[2].kill();
    env.cut(3);
    let (start, mut resolving) = (Instant::now(), false);
    while start.elapsed() < Duration::from_secs(10) {
        let held: Vec<usize> = env.holders(DVIPA).into_iter().filter(|&h| h != 3).collect();
        assert_eq!(held, vec![1], "{:?} after s3 died\ns1:\n{}", start.elapsed(), env.log(1));
        resolving |= env.host(1).sh("ip neigh show dev en1 198.18.1.13").contains("INCOMPLETE");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(resolving, "s1's entry for s3 never lapsed: {}", env.host(1).sh("ip -s neigh show dev en1"));
    for (k, other) in [(1, "s2"), (2, "s1")] {
        let log = env.log(k);
        assert!(!log.contains(&format!("node {other} is dead")), "s{k} lost {other}:\n{log}");
    }
}

/// After a partition long enough for the kernel to have lost where the peers are (its
/// entries for them unresolved, its next try seconds away: a switch that reboots), the
/// healed link is noticed at once: each vipad probes the link-layer address its peers
/// last had while it does not hear them, and the first probe after healing resolves both
/// ends. Without that, the owner is heard again only at the kernel's next try.
fn after_a_long_partition_the_owner_is_heard_and_takes_back_at_once(ipv6: bool) {
    let (env, _procs) = if ipv6 { up_with_ipv6_peers("") } else { up("immediate") };
    let (family, peer_of_s2) = if ipv6 { ("ipv6", "2001:db8:1::11") } else { ("ipv4", "198.18.1.11") };
    // The kernel tries again 5 s after a failed try (1 s by default: then the wait would be
    // anywhere in that second, and the test could pass by luck).
    for k in 1..=3 {
        env.host(k).sh(&format!("sysctl -qw net.{family}.neigh.en1.retrans_time_ms=5000"));
    }
    // (What each log says from the partition on.)
    let from = [env.log(1).len(), env.log(2).len(), env.log(3).len()];
    let since = |k: usize| env.log(k)[from[k - 1]..].to_string();
    env.partition(1);
    holder_is(&env, 2, Duration::from_secs(3)).expect("the majority side took over");
    let probing = "peer not heard: probing its last known link-layer address until it is";
    let noticed = wait_for(Duration::from_secs(3), || {
        (since(1).matches(probing).count() == 2 && since(2).matches(probing).count() == 1).then_some(())
    });
    assert!(noticed.is_some(), "s1:\n{}\ns2:\n{}", since(1), since(2));
    // Peers not heard yet at start are not missed: nothing was probed then, also by the
    // nodes that started later, whose kernels knew the earlier ones' addresses already.
    for k in 1..=3 {
        assert!(!env.log(k)[..from[k - 1]].contains(probing), "s{k}:\n{}", env.log(k));
    }
    // The entries unresolved on every host: gone, made again by the next heartbeat, whose
    // request the partition drops; the next try is 5 s away.
    for k in 1..=3 {
        env.host(k).sh("ip neigh flush dev en1");
    }
    std::thread::sleep(Duration::from_millis(500));
    let s2_has = env.host(2).sh(&format!("ip neigh show dev en1 {peer_of_s2}"));
    assert!(s2_has.contains("INCOMPLETE") || s2_has.contains("FAILED"), "s2's entry for s1: {s2_has}");
    let t = Instant::now();
    env.heal();
    let back = holder_is(&env, 1, Duration::from_secs(3));
    eprintln!("{family}: s1 holds again {back:?} after the partition healed");
    let back = back.unwrap_or_else(|| {
        panic!(
            "s1 never took back: {:?}\ns1:\n{}\ns2:\n{}\ns3:\n{}\n{}\n{}",
            env.holders(DVIPA),
            env.log(1),
            env.log(2),
            env.log(3),
            env.host(2).sh("ip -s neigh"),
            env.host(3).sh("ip -s neigh")
        )
    });
    assert!(
        back < Duration::from_millis(1500),
        "s1 took back {back:?} after healing (the kernel's next try was {:?} away)",
        Duration::from_secs(5).saturating_sub(t.elapsed() - back)
    );
    assert_eq!(env.holders(DVIPA), vec![1]);
}

#[test]
fn after_a_long_partition_the_owner_is_heard_and_takes_back_at_once_over_ipv4() {
    after_a_long_partition_the_owner_is_heard_and_takes_back_at_once(false);
}

#[test]
fn after_a_long_partition_the_owner_is_heard_and_takes_back_at_once_over_ipv6() {
    after_a_long_partition_the_owner_is_heard_and_takes_back_at_once(true);
}

/// [`up`], the peers given by their IPv6 addresses, `extra` added to `[cluster]`.
fn up_with_ipv6_peers(extra: &str) -> (ClusterEnv, Vec<Proc>) {
    require_root();
    let env = ClusterEnv::build(Names::Unique, 3);
    for k in 1..=3 {
        let peers: Vec<String> = (1..=3).filter(|&j| j != k).map(|j| format!("\"2001:db8:1::{}\"", 10 + j)).collect();
        let text = format!(
            "[node]\nname = \"s{k}\"\n\n[cluster]\npeers = [{}]\nkey_file = \"{}\"\n{CLUSTER}{extra}\n{}",
            peers.join(", "),
            env.key_path().display(),
            dvipa("immediate")
        );
        std::fs::write(env.config_path(k), text).expect("config");
    }
    let procs: Vec<Proc> = (1..=3).map(|k| env.start_vipad(k)).collect();
    let ok = wait_for(Duration::from_secs(5), || {
        (env.holders(DVIPA) == vec![1]
            && (1..=3).all(|k| out(&env.vipactl(k, &["cluster"])).matches(" alive ").count() == 2))
        .then_some(())
    });
    assert!(ok.is_some(), "{:?}\n{}", env.holders(DVIPA), out(&env.vipactl(2, &["cluster"])));
    (env, procs)
}

/// Two nodes with `quorum = "none"`: cut apart, both hold the address (each side's clients
/// keep it); once healed, after a partition long enough for their neighbour entries to
/// lapse, the owner alone keeps it within a moment, and the client's entry names it.
#[test]
fn two_nodes_without_quorum_both_hold_while_apart_and_one_keeps_it_at_once_when_healed() {
    require_root();
    let env = ClusterEnv::build(Names::Unique, 2);
    let d = owned_by_s1(DVIPA, "s2 = 200", "immediate");
    for k in 1..=2 {
        env.write_config(k, &format!("{CLUSTER}quorum = \"none\"\n"), &d);
        // The kernel's next try 5 s after a failed one (see the partition test above).
        env.host(k).sh("sysctl -qw net.ipv4.neigh.en1.retrans_time_ms=5000");
    }
    let _procs: Vec<Proc> = (1..=2).map(|k| env.start_vipad(k)).collect();
    holder_is(&env, 1, Duration::from_secs(5)).expect("s1 holds it");
    env.partition(1);
    let both = wait_for(Duration::from_secs(3), || (env.holders(DVIPA) == vec![1, 2]).then_some(()));
    assert!(both.is_some(), "both sides hold it while apart: {:?}\n{}", env.holders(DVIPA), env.log(2));
    // Each one's entry for the other unresolved, its next try 5 s away.
    std::thread::sleep(Duration::from_millis(200));
    for k in 1..=2 {
        env.host(k).sh("ip neigh flush dev en1");
    }
    std::thread::sleep(Duration::from_millis(500));
    env.heal();
    let one = holder_is(&env, 1, Duration::from_secs(3));
    eprintln!("one holder {one:?} after healing");
    let one = one.unwrap_or_else(|| panic!("still {:?}\ns1:\n{}\ns2:\n{}", env.holders(DVIPA), env.log(1), env.log(2)));
    assert!(one < Duration::from_millis(1500), "two holders for {one:?} after healing");
    env.client.try_sh(&format!("ping -c1 -W1 {DVIPA}")).expect("client reaches the DVIPA");
    assert_eq!(env.client_neigh(DVIPA), Some(env.mac(1)), "the client's entry names the holder");
}

#[test]
fn forged_and_replayed_heartbeats_move_nothing() {
    let (env, _procs) = up("immediate");
    // What the nodes send to the attacker (the client's address) from the cluster's port.
    for k in 1..=3 {
        env.host(k)
            .sh("nft add table inet out && nft add chain inet out o '{ type filter hook output priority 0; }' && \
             nft add rule inet out o ip daddr 198.18.1.50 udp sport 5997 counter");
    }
    // Real heartbeats captured on the LAN, to replay.
    let pcap = env.dir.join("hb.pcap");
    let mut cap = env.lan.command("tcpdump");
    cap.args(["-i", "br0", "-c", "30", "-w"]).arg(&pcap).args(["udp", "port", "5997"]);
    cap.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut cap = env.lan.spawn(cap);
    // And probes (flag 2 in the flags' low byte, the datagram's eighth): a copy of a probe
    // must not be answered, else anyone could make the nodes send where they like.
    let probes = env.dir.join("probes.pcap");
    let mut pcap_probes = env.lan.command("tcpdump");
    pcap_probes.args(["-i", "br0", "-c", "5", "-w"]).arg(&probes).args(["udp port 5997 and udp[15] & 2 != 0"]);
    pcap_probes.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut pcap_probes = env.lan.spawn(pcap_probes);
    assert!(pcap_probes.wait_timeout(Duration::from_secs(5)).is_some(), "probes captured");
    let replay = |to: &str, capture: &std::path::Path| {
        let o = env
            .client
            .command(workspace_bin("vipa-probe"))
            .args(["replay", "--target", to, "--pcap"])
            .arg(capture)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(said.starts_with("replayed ") && !said.starts_with("replayed 0 "), "{said}");
    };
    assert!(cap.wait_timeout(Duration::from_secs(5)).is_some(), "capture finished");
    // Replayed once they are old (more than 64 heartbeats back; a second is over 100 at
    // 10 ms): a recent one again is told from a duplicate by nothing.
    std::thread::sleep(Duration::from_secs(1));
    // An attacker on the LAN (the client's namespace will do) sends to every node: claims
    // in s2's name, and to the backups word that the holder s1 left the cluster, which,
    // believed, would make s2 take the address at once.
    for k in [1, 2, 3] {
        let to = format!("198.18.1.{}:5997", 10 + k);
        let (node, leaving) = if k == 1 { ("s2", None) } else { ("s1", Some("--leaving")) };
        let o = env
            .client
            .command(workspace_bin("vipa-probe"))
            .args(["forge", "--target", &to, "--node", node])
            .args(leaving)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for capture in [&pcap, &probes] {
            replay(&to, capture);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.holders(DVIPA), vec![1], "nothing moved");
    for k in 1..=3 {
        let j = env.cluster_view(k);
        assert!(j["dropped"]["unauthenticated"].as_u64().unwrap() >= 50, "s{k}: {j}");
        assert!(j["dropped"]["replayed"].as_u64().unwrap() > 0, "s{k}: {j}");
        assert!(env.vipactl(k, &["status"]).status.success(), "vipad runs on on s{k}");
        let sent = env.host(k).sh("nft list chain inet out o");
        assert!(sent.contains("counter packets 0 "), "s{k} answered the attacker: {sent}");
    }
}

/// libfaketime for threaded programs (package faketime), for a vipad whose wall clock is
/// behind: `/usr/lib/<arch>/faketime/libfaketimeMT.so.1`.
fn faketime() -> Option<std::path::PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
}

#[test]
fn a_node_started_again_with_its_clock_behind_is_taken_back_by_its_peers() {
    let (env, mut procs) = up("immediate");
    s1_dies(&env, &mut procs);
    // s1 starts again with its wall clock an hour behind (a clock set back, a host without
    // a clock battery): its incarnation, taken from that clock, is below the one its peers
    // know, so its heartbeats look like replays of an earlier run. The peers ask it by a
    // probe; it answers in that incarnation, and it is a member again.
    env.restore(1);
    let lib = faketime().expect("libfaketime is missing: scripts/install-deps installs it");
    // (Its kernel's arrival stamps are not behind: s1 dates what it reads by its own
    // reading, as it does when its clock is set while it runs.)
    let behind = [("LD_PRELOAD", lib.to_str().unwrap()), ("FAKETIME", "-1h"), ("DONT_FAKE_MONOTONIC", "1")];
    procs[0] = env.start_vipad_env(1, &behind);
    let ok = wait_for(Duration::from_secs(5), || (env.holders(DVIPA) == vec![1]).then_some(()));
    assert!(ok.is_some(), "{:?}\n{}\n{}", env.holders(DVIPA), out(&env.vipactl(2, &["cluster"])), env.log(2));
    for k in [2, 3] {
        assert!(env.log(k).contains("node s1 answered in an earlier incarnation"), "s{k}: {}", env.log(k));
        let view = out(&env.vipactl(k, &["cluster"]));
        assert_eq!(view.matches(" alive ").count(), 2, "s{k}: {view}");
    }
}

#[test]
fn planned_move_hands_over() {
    let (env, _procs) = up("immediate");
    let o = env.vipactl(3, &["dvipa", "move", DVIPA, "s3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    holder_is(&env, 3, Duration::from_secs(2)).expect("moved to s3");
    let o = env.vipactl(3, &["dvipa", "move", DVIPA, "s9"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("s9 is neither the owner nor a backup"));
    let o = env.vipactl(3, &["dvipa", "deactivate", DVIPA]);
    assert!(o.status.success());
    holder_is(&env, 1, Duration::from_secs(2)).expect("the owner takes it when s3 deactivates it");
    assert!(out(&env.vipactl(3, &["dvipa"])).contains("DEACTIVATED"));
}

#[test]
fn a_reload_keeps_a_deactivation_and_refuses_what_needs_a_restart() {
    let (env, _procs) = up("immediate");
    let o = env.vipactl(1, &["dvipa", "deactivate", DVIPA]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    holder_is(&env, 2, Duration::from_secs(2)).expect("s2 takes it when the owner deactivates it");
    // A move to the node that deactivated it is refused, saying what to do first.
    let o = env.vipactl(2, &["dvipa", "move", DVIPA, "s1"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("s1 has deactivated") && e.contains("reactivate"), "{e}");
    // A reload with another cluster setting: the owner listens again, and still does not
    // take the address back.
    env.write_config(1, &format!("{CLUSTER}dead_after = 11\n"), &dvipa("immediate"));
    let o = env.vipactl(1, &["reload"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(env.holders(DVIPA), vec![2], "{}", env.log(1));
    assert!(out(&env.vipactl(1, &["dvipa"])).contains("DEACTIVATED"), "{}", out(&env.vipactl(1, &["dvipa"])));
    // A key file whose contents changed, or a new node name, needs a restart: refused,
    // and nothing changes.
    let key = std::fs::read(env.key_path()).unwrap();
    std::fs::write(env.key_path(), "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n").unwrap();
    let o = env.vipactl(1, &["reload"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("a new key needs a restart"), "{e}");
    std::fs::write(env.key_path(), key).unwrap();
    let file = std::fs::read_to_string(env.config_path(1)).unwrap();
    std::fs::write(env.config_path(1), file.replace("name = \"s1\"", "name = \"s9\"")).unwrap();
    let o = env.vipactl(1, &["reload"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("node name needs a restart"), "{e}");
    assert!(out(&env.vipactl(2, &["cluster"])).contains("s1 "), "{}", out(&env.vipactl(2, &["cluster"])));
    assert_eq!(env.holders(DVIPA), vec![2]);
    // A DVIPA that is already an address of this host, not one vipa put there, is refused:
    // the host would answer for it while another node holds it.
    std::fs::write(env.config_path(1), file).unwrap();
    env.host(1).sh(&format!("ip addr add {DVIPA}/24 dev en1"));
    let o = env.vipactl(1, &["reload"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains(&format!("{DVIPA} is already the address of interface en1")), "{e}");
    env.host(1).sh(&format!("ip addr del {DVIPA}/24 dev en1"));
    assert!(env.vipactl(1, &["reload"]).status.success());
    assert_eq!(env.holders(DVIPA), vec![2]);
}

#[test]
fn a_stopping_holder_hands_over_without_waiting_for_a_death() {
    let (env, mut procs) = up("immediate");
    let _srv = [serve_on(env.host(1), Some(DVIPA)), serve_on(env.host(2), Some(DVIPA))];
    let run = stream(&env.client, DVIPA, 1500);
    std::thread::sleep(Duration::from_millis(500));
    procs[0].signal(libc::SIGTERM);
    assert!(procs[0].wait_timeout(Duration::from_secs(5)).is_some(), "vipad stopped");
    // s1's kernel gave the address up before it exited; s2 holds it: one holder.
    assert!(!env.holders(DVIPA).contains(&1), "{}", env.log(1));
    holder_is(&env, 2, Duration::from_secs(1)).expect("s2 took it");
    let r = run.report();
    eprintln!("graceful stop: client UDP longest gap {:.1} ms", r.udp.max_gap_ms);
    assert!(r.udp.max_gap_ms < 250.0, "graceful stop outage {:.0} ms", r.udp.max_gap_ms);
    assert_eq!(env.client_neigh(DVIPA), Some(env.mac(2)));
    assert!(env.log(1).contains("vipad is stopping: handed over"), "{}", env.log(1));
    assert!(env.log(2).contains("node s1 left the cluster"), "{}", env.log(2));
    assert!(!env.log(2).contains("node s1 is dead"), "a stop is not a death: {}", env.log(2));
    // Started again, s1 takes it back (immediate) through a handover.
    procs[0] = env.start_vipad(1);
    holder_is(&env, 1, Duration::from_secs(3)).expect("back on s1");
}

#[test]
fn a_cluster_without_a_usable_key_does_not_start() {
    require_root();
    let env = ClusterEnv::build(Names::Unique, 2);
    env.write_config(1, CLUSTER, &dvipa("immediate"));
    std::fs::set_permissions(env.key_path(), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = env
        .host(1)
        .command(workspace_bin("vipad"))
        .arg("--config")
        .arg(env.config_path(1))
        .arg("--socket")
        .arg(env.socket_path(1))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("readable by others") && e.contains("chmod 600"), "{e}");
    // keygen makes one, mode 600, and never overwrites.
    let k = env.dir.join("new.key");
    let g = std::process::Command::new(workspace_bin("vipactl")).args(["cluster", "keygen"]).arg(&k).output().unwrap();
    assert!(g.status.success());
    let meta = std::fs::metadata(&k).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&k).unwrap().trim().len(), 64);
    let g = std::process::Command::new(workspace_bin("vipactl")).args(["cluster", "keygen"]).arg(&k).output().unwrap();
    assert!(!g.status.success());
}

#[test]
fn ipv6_dvipa_is_taken_over_with_an_unsolicited_na() {
    use vipa_testbed::lab::DVIPA6;
    require_root();
    let env = ClusterEnv::build(Names::Unique, 3);
    let d = owned_by_s1(DVIPA6, "s2 = 200, s3 = 100", "");
    for k in 1..=3 {
        env.write_config(k, CLUSTER, &d);
    }
    let mut procs: Vec<Proc> = (1..=3).map(|k| env.start_vipad(k)).collect();
    wait_for(Duration::from_secs(5), || (env.holders(DVIPA6) == vec![1]).then_some(())).expect("s1 holds it");
    env.client.try_sh(&format!("ping -6 -c1 -W1 {DVIPA6}")).expect("reachable on s1");
    assert_eq!(env.client_neigh(DVIPA6), Some(env.mac(1)));
    // The DVIPA is in the link's prefix, a longer match for the peers than s1's own
    // address: still, s1's own traffic (heartbeats too) leaves from its own address, not
    // from an address that moves.
    let route = env.host(1).sh("ip -6 route get 2001:db8:1::12");
    assert!(route.contains(" src 2001:db8:1::11 "), "{route}");
    let addr = env.host(1).sh(&format!("ip -6 addr show to {DVIPA6}"));
    assert!(addr.contains("deprecated"), "{addr}");
    // Made a source behind vipad's back (or left so by an earlier version): made never a
    // source again.
    env.host(1).sh(&format!("ip -6 addr change {DVIPA6}/128 dev en1 preferred_lft forever nodad noprefixroute"));
    let again = wait_for(Duration::from_secs(2), || {
        env.host(1).sh(&format!("ip -6 addr show to {DVIPA6}")).contains("deprecated").then_some(())
    });
    assert!(again.is_some(), "{}\n{}", env.host(1).sh(&format!("ip -6 addr show to {DVIPA6}")), env.log(1));
    assert!(env.log(1).contains("never a source (deprecated)"), "{}", env.log(1));
    procs[0].kill();
    env.cut(1);
    let ok = wait_for(Duration::from_secs(3), || {
        let h: Vec<usize> = env.holders(DVIPA6).into_iter().filter(|h| *h != 1).collect();
        (h == vec![2]).then_some(())
    });
    assert!(ok.is_some(), "{:?}", env.holders(DVIPA6));
    // One address follows its route at once: vipad does not answer for it meanwhile.
    assert!(!env.log(2).contains("answering neighbour solicitations"), "{}", env.log(2));
    assert!(!out(&env.vipactl(2, &["status"])).contains("answers  "));
    // The client's entry moved without it asking: the unsolicited NA with Override did it.
    let ok = wait_for(Duration::from_secs(1), || (env.client_neigh(DVIPA6) == Some(env.mac(2))).then_some(()));
    assert!(ok.is_some(), "client neighbour entry: {:?}", env.client_neigh(DVIPA6));
    env.client.try_sh(&format!("ping -6 -c1 -W1 {DVIPA6}")).expect("reachable on s2");
}

#[test]
fn the_holder_refreshes_its_announcement_so_a_wrong_neighbour_entry_is_corrected() {
    let (env, _procs) = up("immediate");
    // A neighbour that missed the announcements (it came up later, or lost them) has an
    // entry naming someone else; a quiet client never asks again.
    let wrong = "02:00:00:00:00:99";
    env.client.sh(&format!("ip neigh replace {DVIPA} lladdr {wrong} dev cl0 nud stale"));
    assert_eq!(env.client_neigh(DVIPA).as_deref(), Some(wrong));
    // The refresh comes every 10 s (REFRESH_INTERVAL), with no other change in the cluster.
    let fixed = wait_for(Duration::from_secs(12), || (env.client_neigh(DVIPA) == Some(env.mac(1))).then_some(()));
    assert!(fixed.is_some(), "client's entry is still {:?}\n{}", env.client_neigh(DVIPA), env.log(1));
}

#[test]
fn once_the_holder_is_known_to_be_punctual_its_death_is_confirmed_in_its_learned_window() {
    let (env, mut procs) = up("immediate");
    // Until s1 has been heard for 10 s, s2 gives it the 30 ms start value (marked `*`).
    let s1 = env.member(2, "s1");
    assert_eq!((s1["confirm_us"].as_u64(), s1["confirm_learned"].as_bool()), (Some(30_000), Some(false)), "{s1}");
    let members = out(&env.vipactl(2, &["cluster"]));
    assert!(members.contains("CONFIRM") && members.contains("30.0 ms*"), "{members}");
    let learned = wait_for(Duration::from_secs(15), || {
        let (s1, s3) = (env.member(2, "s1"), env.member(2, "s3"));
        (s1["confirm_learned"] == true && s3["confirm_learned"] == true).then_some(s1)
    })
    .expect("s2 never learned its peers' punctuality");
    let members = out(&env.vipactl(2, &["cluster"]));
    assert!(!members.contains("ms*"), "both peers learned: {members}");
    let (window, held_up) = (learned["confirm_us"].as_u64().unwrap(), learned["held_up_us"].as_u64().unwrap());
    // The host dies: s2 sees it dead an interval, a grace (at most half an interval) and
    // the window after the last heartbeat, plus scheduling slack (10 ms: loaded test hosts
    // are late now and then): no longer the 30 ms floor.
    env.cut(1);
    procs[0].kill();
    holder_among(&env, 2, &[2, 3], Duration::from_secs(3)).expect("s2 took over");
    let log = env.log(2);
    let line = log.lines().find(|l| l.contains("node s1 is dead: no heartbeat for")).expect("s1 seen dead");
    assert!(line.contains("probes answered"), "a death by probing, not by the silence bound: {line}");
    let silent: f64 =
        line.split("no heartbeat for ").nth(1).and_then(|r| r.split(" ms").next()).unwrap().parse().unwrap();
    let window_now = env.member(2, "s1")["confirm_us"].as_u64().unwrap() as f64 / 1e3;
    assert!(
        silent <= 10.0 + 5.0 + window_now + 10.0,
        "dead after {silent} ms of silence, window {window_now} ms: {line}"
    );
    eprintln!("learned window {window} µs (worst delay {held_up} µs); s1 dead after {silent} ms of silence");
}

#[test]
fn a_node_that_cannot_steer_heartbeats_reads_them_as_they_come() {
    require_root();
    let env = ClusterEnv::build(Names::Unique, 3);
    // Without loopback, vipad's check of the steering finds nothing arriving: one socket,
    // as on a kernel that refuses the filter (the same fallback).
    env.host(2).sh("ip link set lo down");
    // IPv4 peers: the steering is checked over IPv4, which a loopback without IPv6 has.
    env.host(3).sh("sysctl -qw net.ipv6.conf.lo.disable_ipv6=1");
    for k in 1..=3 {
        env.write_config(k, CLUSTER, &dvipa("immediate"));
    }
    let mut procs: Vec<Proc> = (1..=3).map(|k| env.start_vipad(k)).collect();
    holder_is(&env, 1, Duration::from_secs(5)).expect("s1 holds it");
    let log = env.log(2);
    assert!(log.contains("routine heartbeats are read as they come"), "{log}");
    assert!(log.contains("checking the steering over IPv4 loopback failed"), "the log says why: {log}");
    for k in [1, 3] {
        assert!(env.log(k).contains("routine heartbeats go to a socket of their own"), "{}", env.log(k));
    }
    // And it does its job: the holder dies, s2 takes over.
    let ok = wait_for(Duration::from_secs(5), || {
        (out(&env.vipactl(2, &["cluster"])).matches(" alive ").count() == 2).then_some(())
    });
    assert!(ok.is_some(), "{}", out(&env.vipactl(2, &["cluster"])));
    env.cut(1);
    procs[0].kill();
    holder_among(&env, 2, &[2, 3], Duration::from_secs(3)).expect("s2 took over");
}

/// UDP datagrams host `k` sent to port 5997 since `count_heartbeats_sent(k, group)` was
/// called: (to the group, to anyone else).
fn heartbeats_sent(env: &ClusterEnv, k: usize) -> (u64, u64) {
    let rules = env.host(k).sh("nft list table inet sent");
    let counts: Vec<u64> =
        rules.lines().filter_map(|l| l.split("packets ").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(counts.len(), 2, "{rules}");
    (counts[0], counts[1])
}

/// Counts, in nftables, the heartbeat datagrams host `k` sends (see `heartbeats_sent`).
fn count_heartbeats_sent(env: &ClusterEnv, k: usize, group: &str) {
    let ip = if group.contains(':') { "ip6" } else { "ip" };
    env.host(k).sh(&format!(
        "nft add table inet sent && nft add chain inet sent out '{{ type filter hook output priority 0; }}' && \
         nft add rule inet sent out udp dport 5997 {ip} daddr {group} counter && \
         nft add rule inet sent out udp dport 5997 {ip} daddr != {group} counter"
    ));
}

#[test]
fn multicast_heartbeats_go_once_an_interval_to_the_group_and_a_death_is_still_taken_over() {
    let multicast = format!("{CLUSTER}multicast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n");
    let (env, mut procs) = up_with(&multicast, "immediate");
    let view = out(&env.vipactl(2, &["cluster"]));
    assert!(view.contains("heartbeats multicast 239.255.86.1 on en1"), "{view}");
    assert_eq!(heard_at(&env, 2), [("s1".to_string(), "198.18.1.11".to_string()), ("s3".into(), "198.18.1.13".into())]);
    for k in 1..=3 {
        let joined = env.host(k).sh("ip maddr show dev en1");
        assert!(joined.contains("239.255.86.1"), "s{k} joined the group on en1: {joined}");
    }
    routine_heartbeats_go_to(&env, "239.255.86.1");
    // s1 dies: s2 takes over, and s2 and s3 still hear each other by the group.
    env.cut(1);
    procs[0].kill();
    holder_among(&env, 2, &[2, 3], Duration::from_secs(3)).expect("s2 took over");
    let ok = wait_for(Duration::from_secs(2), || {
        let v = out(&env.vipactl(3, &["cluster"]));
        (v.contains("quorum yes") && v.matches(" alive ").count() == 1 && v.contains(" dead ")).then_some(())
    });
    assert!(ok.is_some(), "{}", out(&env.vipactl(3, &["cluster"])));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.holders(DVIPA).into_iter().filter(|&h| h != 1).collect::<Vec<_>>(), vec![2], "no flapping");
}

#[test]
fn ipv6_peers_keep_their_membership_by_an_ipv6_group() {
    let (env, _procs) = up_with_ipv6_peers("multicast = \"ff02::86\"\nmulticast_nic = \"en1\"\n");
    let view = out(&env.vipactl(2, &["cluster"]));
    assert!(view.contains("heartbeats multicast ff02::86 on en1"), "{view}");
    assert!(env.log(2).contains("routine heartbeats go to a socket of their own"), "{}", env.log(2));
    // Once their link-local addresses are ready, the nodes send to the link-scope group
    // from those: s2 hears each peer at two addresses, and keeps showing (and probing)
    // the one in its `peers`.
    let ready = wait_for(Duration::from_secs(5), || {
        (1..=3).all(|k| !env.host(k).sh("ip -6 addr show dev en1 scope link").contains("tentative")).then_some(())
    });
    assert!(ready.is_some(), "{}", env.host(1).sh("ip -6 addr show dev en1"));
    let from = wait_for(Duration::from_secs(3), || {
        let seen = env
            .host(2)
            .sh("timeout 2 tcpdump --immediate-mode -c 3 -ni en1 'dst ff02::86 and src 2001:db8:1::11' 2>&1 || true");
        let linklocal = env
            .host(2)
            .sh("timeout 2 tcpdump --immediate-mode -c 3 -ni en1 'dst ff02::86 and src net fe80::/10' 2>&1 || true");
        (!seen.contains(" > ff02::86") && linklocal.contains(" > ff02::86")).then_some(linklocal)
    });
    assert!(from.is_some(), "s1's group heartbeats do not come from its link-local address yet");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        heard_at(&env, 2),
        [("s1".to_string(), "2001:db8:1::11".to_string()), ("s3".into(), "2001:db8:1::13".into())]
    );
    routine_heartbeats_go_to(&env, "ff02::86");
}

/// s1 sends routine heartbeats once to `group`, not to each peer, and no node of three
/// hears its own.
fn routine_heartbeats_go_to(env: &ClusterEnv, group: &str) {
    // Unicast sends two an interval here, 224 a second with the probes, and none to the
    // group. What still goes to a peer: probes measuring round trips and answers to the
    // peers' probes (24-41 a second while the peers are learned).
    count_heartbeats_sent(env, 1, group);
    std::thread::sleep(Duration::from_secs(1));
    let (to_group, unicast) = heartbeats_sent(env, 1);
    eprintln!("s1 sent in 1 s: {to_group} datagrams to {group}, {unicast} to peers");
    assert!(to_group >= 30 && unicast < to_group, "to {group} {to_group}, to peers {unicast}");
    // Loopback is off.
    for k in 1..=3 {
        assert_eq!(env.cluster_view(k)["dropped"]["own_name"], 0, "s{k} heard itself");
    }
}

/// Two nodes with multicast heartbeats, s2's on a NIC it does not have (en9), both started.
fn s2_without_its_multicast_nic() -> (ClusterEnv, Vec<Proc>) {
    require_root();
    let env = ClusterEnv::build(Names::Unique, 2);
    for (k, nic) in [(1, "en1"), (2, "en9")] {
        let multicast = format!("{CLUSTER}multicast = \"239.255.86.1\"\nmulticast_nic = \"{nic}\"\n");
        env.write_config(k, &multicast, &dvipa("immediate"));
    }
    let procs = (1..=2).map(|k| env.start_vipad(k)).collect();
    (env, procs)
}

#[test]
fn a_node_that_cannot_join_the_group_says_why_and_gets_routine_heartbeats_by_unicast() {
    let (env, mut procs) = s2_without_its_multicast_nic();
    let view = out(&env.vipactl(2, &["cluster"]));
    assert!(view.contains("heartbeats to each peer (multicast 239.255.86.1 on en9 failed: no NIC \"en9\")"), "{view}");
    assert!(env.log(2).contains("multicast heartbeats cannot be set up"), "{}", env.log(2));
    // s1 is in the group; s2 says it is not, and s1 sends it routine heartbeats directly.
    let ok = wait_for(Duration::from_secs(5), || {
        out(&env.vipactl(1, &["cluster"])).contains("and by unicast to s2 (not in the group)").then_some(())
    });
    assert!(ok.is_some(), "{}", out(&env.vipactl(1, &["cluster"])));
    // Well beyond the silence bound (10 intervals), each still hears the other.
    std::thread::sleep(Duration::from_millis(1500));
    for k in 1..=2 {
        let v = out(&env.vipactl(k, &["cluster"]));
        assert_eq!(v.matches(" alive ").count(), 1, "s{k}: {v}");
        assert!(!env.log(k).contains(" is dead"), "s{k}: {}", env.log(k));
    }
    // Once s2 is dead, s1 no longer sends to it (nor says so).
    env.cut(2);
    procs[1].kill();
    let ok = wait_for(Duration::from_secs(3), || {
        let v = out(&env.vipactl(1, &["cluster"]));
        (v.contains(" dead ") && v.contains("heartbeats multicast 239.255.86.1 on en1\n")).then_some(())
    });
    assert!(ok.is_some(), "{}", out(&env.vipactl(1, &["cluster"])));
}

#[test]
fn a_node_outside_the_group_joins_it_once_its_nic_is_there() {
    let (env, _procs) = s2_without_its_multicast_nic();
    let ok = wait_for(Duration::from_secs(5), || {
        out(&env.vipactl(1, &["cluster"])).contains("and by unicast to s2 (not in the group)").then_some(())
    });
    assert!(ok.is_some(), "{}", out(&env.vipactl(1, &["cluster"])));
    let view = out(&env.vipactl(2, &["cluster"]));
    assert!(
        view.contains("(multicast 239.255.86.1 on en9 failed: no NIC \"en9\"), trying the group again in "),
        "{view}"
    );
    let events_file = env.dir.join("events.txt");
    let mut cmd = std::process::Command::new(workspace_bin("vipactl"));
    cmd.arg("--socket").arg(env.socket_path(2)).arg("events").stdout(std::fs::File::create(&events_file).unwrap());
    let _events = env.host(2).spawn(cmd);
    std::thread::sleep(Duration::from_millis(200));
    // The NIC appears (here a macvlan on s2's link): s2 joins the group on it at its next
    // try, hears its peer by the group, and both go over to it.
    env.host(2).sh("ip link add en9 link en1 type macvlan mode bridge && ip link set en9 up");
    let ok = wait_for(Duration::from_secs(5), || {
        let (v1, v2) = (out(&env.vipactl(1, &["cluster"])), out(&env.vipactl(2, &["cluster"])));
        (v2.contains("heartbeats multicast 239.255.86.1 on en9\n")
            && v1.contains("heartbeats multicast 239.255.86.1 on en1\n"))
        .then_some(())
    });
    assert!(ok.is_some(), "{}\n{}", out(&env.vipactl(2, &["cluster"])), env.log(2));
    assert!(env.host(2).sh("ip maddr show dev en9").contains("239.255.86.1"));
    let events = std::fs::read_to_string(&events_file).unwrap_or_default();
    assert!(events.contains("heartbeats: multicast 239.255.86.1 on en9 reaches this node"), "{events}");
    for k in 1..=2 {
        count_heartbeats_sent(&env, k, "239.255.86.1");
    }
    std::thread::sleep(Duration::from_secs(1));
    for k in 1..=2 {
        let (to_group, unicast) = heartbeats_sent(&env, k);
        assert!(to_group >= 30 && unicast < to_group, "s{k} sent to the group {to_group}, to its peer {unicast}");
        let v = env.cluster_view(k);
        assert_eq!(v["dropped"]["replayed"], 0, "s{k}: {v}");
        assert_eq!(out(&env.vipactl(k, &["cluster"])).matches(" alive ").count(), 1, "s{k}");
    }
}

/// The peers node `k` has heard, with the address it heard each at (`vipactl cluster`).
fn heard_at(env: &ClusterEnv, k: usize) -> Vec<(String, String)> {
    let view = env.cluster_view(k);
    let members = view["members"].as_array().expect("members");
    members
        .iter()
        .filter(|m| m["state"] != "self" && m["state"] != "unknown")
        .map(|m| (m["node"].as_str().unwrap_or("").to_string(), m["address"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn a_node_the_group_stops_reaching_asks_for_heartbeats_directly_and_goes_back_once_it_arrives() {
    let multicast = format!("{CLUSTER}multicast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n");
    let (env, _procs) = up_with(&multicast, "immediate");
    // The group stops reaching s3 (as when a switch's snooping ages its membership out);
    // everything else still does.
    env.host(3)
        .sh("nft add table inet deaf && nft add chain inet deaf in '{ type filter hook input priority 0; }' && \
         nft add rule inet deaf in ip daddr 239.255.86.1 drop");
    let ok = wait_for(Duration::from_secs(3), || {
        out(&env.vipactl(1, &["cluster"])).contains("and by unicast to s3 (not in the group)").then_some(())
    });
    assert!(ok.is_some(), "{}\n{}", out(&env.vipactl(1, &["cluster"])), env.log(3));
    let view = out(&env.vipactl(3, &["cluster"]));
    assert!(view.contains("heartbeats to each peer (multicast 239.255.86.1 on en1 stopped arriving"), "{view}");
    // Well beyond the silence bound: nobody was declared dead, nothing moved.
    std::thread::sleep(Duration::from_millis(1500));
    for k in 1..=3 {
        assert!(!env.log(k).contains(" is dead"), "s{k}: {}", env.log(k));
        assert_eq!(out(&env.vipactl(k, &["cluster"])).matches(" alive ").count(), 2, "s{k}");
    }
    assert_eq!(env.holders(DVIPA), vec![1]);
    // The group reaches s3 again: s3 sees it by the group's own datagrams and goes back to
    // it, and its peers stop sending it copies. What came both ways meanwhile is dropped
    // as a duplicate, not counted as a replay.
    env.host(3).sh("nft delete table inet deaf");
    let ok = wait_for(Duration::from_secs(3), || {
        out(&env.vipactl(3, &["cluster"])).contains("heartbeats multicast 239.255.86.1 on en1\n").then_some(())
    });
    assert!(ok.is_some(), "{}\n{}", out(&env.vipactl(3, &["cluster"])), env.log(3));
    let ok = wait_for(Duration::from_secs(3), || {
        (1..=2).all(|k| !out(&env.vipactl(k, &["cluster"])).contains("by unicast to s3")).then_some(())
    });
    assert!(ok.is_some(), "{}", out(&env.vipactl(1, &["cluster"])));
    std::thread::sleep(Duration::from_millis(500));
    let view = env.cluster_view(3);
    eprintln!("s3 dropped: {}", view["dropped"]);
    assert_eq!(view["dropped"]["replayed"], 0, "{view}");
    assert!(view["dropped"]["duplicated"].as_u64().unwrap_or(0) <= 8, "{view}");
    count_heartbeats_sent(&env, 1, "239.255.86.1");
    std::thread::sleep(Duration::from_secs(1));
    let (to_group, unicast) = heartbeats_sent(&env, 1);
    assert!(to_group >= 30 && unicast < to_group, "s1 sent to the group {to_group}, to peers {unicast}");
    assert_eq!(env.holders(DVIPA), vec![1]);
}

#[test]
fn a_group_that_comes_and_goes_does_not_take_a_node_in_and_out_at_its_pace() {
    let multicast = format!("{CLUSTER}multicast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n");
    let (env, _procs) = up_with(&multicast, "immediate");
    let drop = "nft add table inet deaf && nft add chain inet deaf in '{ type filter hook input priority 0; }' && \
                nft add rule inet deaf in ip daddr 239.255.86.1 drop";
    // The group reaches s3 for 0.3 s, then not for 0.3 s, over and over for 4 s: each
    // time long enough for s3 to notice it gone (half the silence bound, 50 ms here).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        env.host(3).sh(drop);
        std::thread::sleep(Duration::from_millis(300));
        env.host(3).sh("nft delete table inet deaf");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Out at once each time it goes, but back in only after joining again, which waits a
    // second, then two, then four: back in after the first second and out again at the
    // next gap, three times out at most, not once a cycle (seven).
    let log = env.log(3);
    let outs = log.matches("its heartbeats stopped coming").count();
    assert!((2..=3).contains(&outs), "s3 went out of the group {outs} times: {log}");
    assert!(log.contains("the multicast group reaches this node"), "{log}");
    for k in 1..=3 {
        assert!(!env.log(k).contains(" is dead"), "s{k}: {}", env.log(k));
    }
    assert_eq!(env.holders(DVIPA), vec![1]);
    // The group stays: s3 is back in within its longest wait so far (4 s).
    let ok = wait_for(Duration::from_secs(6), || {
        out(&env.vipactl(3, &["cluster"])).contains("heartbeats multicast 239.255.86.1 on en1\n").then_some(())
    });
    assert!(ok.is_some(), "{}\n{}", out(&env.vipactl(3, &["cluster"])), env.log(3));
}

/// The cluster thread waits for its next deadline, up to an interval away; a reload, done
/// by the main thread, wakes it when the new state has something due sooner.
#[test]
fn a_reload_is_heard_by_the_peers_at_once_even_at_ten_second_heartbeats() {
    require_root();
    let env = ClusterEnv::build(Names::Unique, 2);
    let slow = "heartbeat_interval = \"10s\"\n";
    for k in 1..=2 {
        env.write_config(k, slow, &dvipa("immediate"));
    }
    let _procs: Vec<Proc> = (1..=2).map(|k| env.start_vipad(k)).collect();
    // Past the first 10 s, in which round trips are measured every 156 ms (each of those
    // wakes the thread anyway).
    let learned = wait_for(Duration::from_secs(20), || (env.member(1, "s2")["confirm_learned"] == true).then_some(()));
    assert!(learned.is_some(), "{}", out(&env.vipactl(1, &["cluster"])));
    // Just after a heartbeat of s2 (s1 heard it less long ago than at the last look): its
    // next is 10 s away.
    let age = || env.member(1, "s2")["last_heard_ms"].as_u64();
    let mut last = age();
    let beat = wait_for(Duration::from_secs(12), || {
        let now = age();
        let fresh = now < last;
        last = now;
        fresh.then_some(())
    });
    assert!(beat.is_some(), "{}", out(&env.vipactl(1, &["cluster"])));
    let was = env.member(1, "s2")["incarnation"].clone();
    env.write_config(2, &format!("{slow}dead_after = 11\n"), &dvipa("immediate"));
    let t = Instant::now();
    let o = env.vipactl(2, &["reload"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let heard = wait_for(Duration::from_secs(3), || (env.member(1, "s2")["incarnation"] != was).then(|| t.elapsed()));
    assert!(heard.is_some(), "s1 still sees s2's old incarnation: {}", out(&env.vipactl(1, &["cluster"])));
    eprintln!("s2's reload heard by s1 after {:?}", heard.unwrap());
}

/// A rolling change of the `[[dvipa]]` list, heartbeats by multicast: s2 is reloaded with
/// one more DVIPA (its own) while s1 and s3 keep the old list. s2 brings it up at once, the
/// others still read s2 (it speaks to them in the list they have, by unicast), and when s1
/// dies in the middle of the change, s2 takes its DVIPA over as ever.
#[test]
fn a_rolling_change_of_the_dvipa_list_brings_a_new_dvipa_up_and_takeover_goes_on() {
    let cluster = format!("{CLUSTER}multicast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n");
    let (env, mut procs) = up_with(&cluster, "immediate");
    const NEW: &str = "198.18.1.201";
    let added = format!(
        "{}[[dvipa]]\naddress = \"{NEW}\"\nowner = \"s2\"\nbackups = {{ s3 = 100 }}\nannounce = [\"en1\"]\n",
        dvipa("immediate")
    );
    env.write_config(2, &cluster, &added);
    let o = env.vipactl(2, &["reload"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let up = wait_for(Duration::from_secs(3), || (env.holders(NEW) == vec![2]).then_some(()));
    assert!(up.is_some(), "the new DVIPA is not up on s2: {:?}\n{}", env.holders(NEW), env.log(2));
    // s2 reads s1 and s3 in the list it had; they read s2 as they always did.
    for peer in ["s1", "s3"] {
        let read = wait_for(Duration::from_secs(2), || {
            let m = env.member(2, peer);
            (m["earlier_list"] == true && m["same_config"] == true).then_some(())
        });
        assert!(read.is_some(), "s2's view of {peer}: {}", env.member(2, peer));
    }
    assert!(out(&env.vipactl(2, &["cluster"])).contains(" earlier"), "{}", out(&env.vipactl(2, &["cluster"])));
    for k in [1, 3] {
        // (Shown as on a later list: it speaks theirs for them.)
        let m = env.member(k, "s2");
        assert!(m["same_config"] == true && m["later_list"] == true, "s{k}'s view of s2: {m}");
        assert!(!env.log(k).contains("has a different [[dvipa]] list"), "s{k} could not read s2: {}", env.log(k));
    }
    assert_eq!(env.holders(DVIPA), vec![1]);
    // s1 dies in the middle of the change.
    let t = Instant::now();
    s1_dies(&env, &mut procs);
    eprintln!("rolling change: s2 took over after {:?}", t.elapsed());
    assert!(env.log(2).contains("node s1 is dead"), "{}", env.log(2));
    assert_eq!(env.holders(NEW), vec![2], "the new DVIPA stays on s2");
    // The change ends on s3: nothing moves, and s2 and s3 read each other on the same
    // list (neither speaks the old one to the other).
    env.write_config(3, &cluster, &added);
    assert!(env.vipactl(3, &["reload"]).status.success());
    let plain =
        |m: serde_json::Value| m["same_config"] == true && m["earlier_list"] == false && m["later_list"] == false;
    let same =
        wait_for(Duration::from_secs(3), || (plain(env.member(2, "s3")) && plain(env.member(3, "s2"))).then_some(()));
    assert!(same.is_some(), "{}\n{}", out(&env.vipactl(2, &["cluster"])), out(&env.vipactl(3, &["cluster"])));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((env.holders(DVIPA), env.holders(NEW)), (vec![1, 2], vec![2]), "{}", env.log(3));
}

/// Nothing a healthy cluster sends is dropped: a peer's probe followed by its next routine
/// heartbeat (read from another socket) is taken in the order they came, not as a replay.
#[test]
fn a_healthy_cluster_drops_nothing_it_sends() {
    for cluster in [CLUSTER.to_string(), format!("{CLUSTER}multicast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n")] {
        let (env, _procs) = up_with(&cluster, "immediate");
        // While the peers are learned, each node probes them tens of times a second.
        std::thread::sleep(Duration::from_secs(3));
        for k in 1..=3 {
            let view = env.cluster_view(k);
            let dropped = view["dropped"].as_object().expect("dropped");
            assert!(dropped.values().all(|v| v == 0), "s{k} with {cluster:?}: {}", view["dropped"]);
        }
    }
}
