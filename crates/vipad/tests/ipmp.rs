//! IPMP groups end to end: the real vipad on a host whose NICs share a LAN bridge with a
//! router and a client, each in its own namespace (vipa-testbed's `LanEnv`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vipa_testbed::lab::{serve_on, stream, whoami, LanEnv, Names, SingleHost, DATA, DATA6};
use vipa_testbed::{require_root, wait_for, Proc};

const GROUP: &str = r#"[[group]]
name = "prod"
interfaces = ["en1", "en2"]
data_addresses = ["198.18.1.5/24", "2001:db8:1::5/64"]
test_addresses = { en1 = "198.18.1.11/24", en2 = "198.18.1.12/24" }
failure_detection_time = "1s"
probe_targets = ["198.18.1.254"]
"#;

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Splits a parsable (`-P`) line on unescaped `:`, unescaping `\:` and `\\`.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut().unwrap().extend(chars.next()),
            ':' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// `vipactl ipmp -i` as interface → (active, flags, link, probe, state), via -P.
fn interfaces(env: &LanEnv) -> BTreeMap<String, (String, String, String, String, String)> {
    let o = env.vipactl(&["ipmp", "-i", "-o", "interface,active,flags,link,probe,state", "-P"]);
    out(&o)
        .lines()
        .map(fields)
        .filter(|f| f.len() == 6)
        .map(|f| (f[0].clone(), (f[1].clone(), f[2].clone(), f[3].clone(), f[4].clone(), f[5].clone())))
        .collect()
}

/// `vipactl ipmp -a` as address → inbound NIC.
fn inbound(env: &LanEnv) -> BTreeMap<String, String> {
    let o = env.vipactl(&["ipmp", "-a", "-o", "address,inbound", "-P"]);
    out(&o).lines().map(fields).filter(|f| f.len() == 2).map(|f| (f[0].clone(), f[1].clone())).collect()
}

fn group_state(env: &LanEnv) -> String {
    out(&env.vipactl(&["ipmp", "-g", "-o", "state", "-P"])).trim().to_string()
}

/// Starts vipad with `config` and waits until the group is ok and probing answers.
fn up(nics: usize, config: &str) -> (LanEnv, Proc) {
    require_root();
    let env = LanEnv::build(Names::Unique, nics);
    env.write_config(config);
    let vipad = env.start_vipad();
    let ok = wait_for(Duration::from_secs(10), || {
        let i = interfaces(&env);
        (group_state(&env) == "ok" && i.values().all(|v| v.3 == "ok" || v.3 == "disabled")).then_some(())
    });
    assert!(ok.is_some(), "group never became ok: {:?}\n{}", interfaces(&env), env.log());
    // in.mpathd's 40 s quiet period ends with a NIC's first answered probe: wait for one
    // on every probing NIC, so silent failures are detected from here on.
    let probing: Vec<String> = interfaces(&env).into_iter().filter(|(_, v)| v.3 == "ok").map(|(k, _)| k).collect();
    let mut acked = std::collections::BTreeSet::new();
    let start = Instant::now();
    let _ = vipa_api::stream_events(&env.socket_path(), |e| {
        if e.kind == "probe" && e.probe.as_ref().is_some_and(|p| p.acked) {
            acked.extend(e.interface.clone());
        }
        probing.iter().any(|n| !acked.contains(n)) && start.elapsed() < Duration::from_secs(10)
    });
    assert!(probing.iter().all(|n| acked.contains(n)), "no answered probe on {probing:?}: {acked:?}");
    (env, vipad)
}

fn wait_state(env: &LanEnv, nic: &str, state: &str, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    wait_for(within, || interfaces(env).get(nic).is_some_and(|v| v.4 == state).then(|| t.elapsed()))
}

#[test]
fn link_cut_moves_the_data_address_and_connections_survive() {
    let (env, _vipad) = up(2, GROUP);
    assert_eq!(inbound(&env).get(DATA).map(String::as_str), Some("en1"), "{:?}", inbound(&env));
    let _srv = serve_on(&env.host, Some(DATA));
    let run = stream(&env.client, DATA, 3000);
    std::thread::sleep(Duration::from_millis(1000));
    env.cut("en1");
    let r = run.report();
    eprintln!(
        "link cut: tcp {} sent {} echoed, longest gap {:.1} ms; udp {} sent {} echoed, longest gap {:.1} ms",
        r.tcp.sent, r.tcp.received, r.tcp.max_gap_ms, r.udp.sent, r.udp.received, r.udp.max_gap_ms
    );
    assert!(r.tcp.error.is_none(), "the TCP connection to the data address broke: {:?}", r.tcp.error);
    assert_eq!(r.tcp.received, r.tcp.sent);
    assert!(r.udp.max_gap_ms < 1000.0, "the probe stream stopped: {:.0} ms", r.udp.max_gap_ms);
    assert_eq!(interfaces(&env)["en1"].4, "failed");
    assert_eq!(inbound(&env).get(DATA).map(String::as_str), Some("en2"));
    // The client learnt the move from the gratuitous ARP.
    assert_eq!(env.client_neigh(DATA), Some(env.mac("en2")));
    // The listening socket on the data address still takes new connections.
    let seen = whoami(&env.client, DATA, None).unwrap();
    assert!(seen.contains(&format!("local={DATA}")), "{seen}");

    // Repair with failback: en1 is used again, addresses spread one each.
    env.restore("en1");
    wait_state(&env, "en1", "ok", Duration::from_secs(5)).expect("en1 repaired");
    let ok = wait_for(Duration::from_secs(3), || {
        let b = inbound(&env);
        (b.values().any(|n| n == "en1") && b.values().any(|n| n == "en2")).then_some(())
    });
    assert!(ok.is_some(), "{:?}", inbound(&env));
}

#[test]
fn silent_failure_is_found_by_probes_and_repaired() {
    let (env, _vipad) = up(2, GROUP);
    let _srv = serve_on(&env.host, Some(DATA));
    let run = stream(&env.client, DATA, 5000);
    std::thread::sleep(Duration::from_millis(500));
    env.silence("en1");
    let detected = wait_state(&env, "en1", "failed", Duration::from_secs(5)).expect("silent failure detected");
    eprintln!("silent failure detected after {detected:?} (FDT 1 s, probe interval 142 ms)");
    // in.mpathd's promise: a failure is found within the failure detection time.
    assert!(detected <= Duration::from_millis(1500), "detected after {detected:?}, FDT 1 s");
    assert_eq!(interfaces(&env)["en1"].2, "up", "the link stayed up: probes found it");
    assert_eq!(interfaces(&env)["en1"].3, "failed");
    assert_eq!(inbound(&env).get(DATA).map(String::as_str), Some("en2"));
    let r = run.report();
    eprintln!("silent failure: tcp longest gap {:.0} ms, udp longest gap {:.0} ms", r.tcp.max_gap_ms, r.udp.max_gap_ms);
    assert!(r.tcp.error.is_none(), "TCP broke: {:?}", r.tcp.error);
    assert_eq!(r.tcp.received, r.tcp.sent, "every byte got through in the end");
    assert_eq!(env.client_neigh(DATA), Some(env.mac("en2")));
    let seen = whoami(&env.client, DATA, None).unwrap();
    assert!(seen.contains(&format!("local={DATA}")), "the listener survived: {seen}");

    env.unsilence();
    // Ten answered probes repair it (about 1.4 s at FDT 1 s).
    let repaired = wait_state(&env, "en1", "ok", Duration::from_secs(6)).expect("repaired");
    eprintln!("repaired after {repaired:?}");
    assert!(repaired <= Duration::from_secs(3), "repaired after {repaired:?}");
    assert_eq!(interfaces(&env)["en1"].0, "yes", "failback: used again");
}

#[test]
fn without_failback_a_repaired_nic_stays_inactive() {
    let (env, _vipad) = up(2, &GROUP.replace("probe_targets", "failback = false\nprobe_targets"));
    env.silence("en1");
    wait_state(&env, "en1", "failed", Duration::from_secs(5)).expect("failed");
    env.unsilence();
    wait_state(&env, "en1", "ok", Duration::from_secs(6)).expect("repaired");
    // Repaired, and it stays out of use: no failback a moment later either.
    let back = wait_for(Duration::from_secs(1), || (interfaces(&env)["en1"].0 == "yes").then_some(()));
    assert!(back.is_none(), "en1 was used again without failback");
    let i = interfaces(&env);
    assert_eq!(i["en1"].0, "no", "{i:?}");
    assert!(i["en1"].1.starts_with('i'), "INACTIVE flag: {i:?}");
    assert!(inbound(&env).values().all(|n| n == "en2"));
}

#[test]
fn standby_is_activated_only_when_needed() {
    let config = GROUP.replace("[\"en1\", \"en2\"]", "[\"en1\", \"en2\", \"en3\"]\nstandby = [\"en3\"]");
    let (env, _vipad) = up(3, &config);
    let i = interfaces(&env);
    assert_eq!(i["en3"].0, "no");
    assert_eq!(&i["en3"].1[..2], "is", "inactive standby: {i:?}");
    env.cut("en1");
    wait_state(&env, "en1", "failed", Duration::from_secs(3)).expect("failed");
    let ok = wait_for(Duration::from_secs(3), || (interfaces(&env)["en3"].0 == "yes").then_some(()));
    assert!(ok.is_some(), "standby activated: {:?}", interfaces(&env));
    env.restore("en1");
    let ok = wait_for(Duration::from_secs(5), || {
        let i = interfaces(&env);
        (i["en1"].0 == "yes" && i["en3"].0 == "no").then_some(())
    });
    assert!(ok.is_some(), "standby back to inactive: {:?}", interfaces(&env));
    let g = out(&env.vipactl(&["ipmp", "-g"]));
    assert!(g.contains("en1 en2 (en3)"), "{g}");
}

#[test]
fn offline_of_the_last_usable_nic_is_refused() {
    let (env, _vipad) = up(2, GROUP);
    let o = env.vipactl(&["offline", "en1"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(interfaces(&env)["en1"].4, "offline");
    assert!(inbound(&env).values().all(|n| n == "en2"));
    let status = out(&env.vipactl(&["status"]));
    assert!(status.contains("IPMP     prod degraded: active en2"), "{status}");
    let o = env.vipactl(&["offline", "en2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("cannot offline en2: no other functioning interfaces are in its IPMP group"),
        "{}",
        err(&o)
    );
    assert_eq!(interfaces(&env)["en2"].0, "yes", "nothing changed");
    let o = env.vipactl(&["offline", "en1"]);
    assert!(err(&o).contains("interface en1 is already offline"), "{}", err(&o));
    let o = env.vipactl(&["online", "en1"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(interfaces(&env)["en1"].4, "ok");
    let o = env.vipactl(&["online", "en1"]);
    assert!(err(&o).contains("interface en1 is not offline"), "{}", err(&o));
    let o = env.vipactl(&["offline", "eth7"]);
    assert!(err(&o).contains("not in an IPMP group"), "{}", err(&o));
}

#[test]
fn all_nics_failed_is_a_group_failure_then_recovery() {
    let (env, _vipad) = up(2, GROUP);
    let events_file = env.dir.join("events.txt");
    let mut cmd = std::process::Command::new(vipa_testbed::workspace_bin("vipactl"));
    cmd.arg("--socket").arg(env.socket_path()).arg("events").stdout(std::fs::File::create(&events_file).unwrap());
    let _events = env.host.spawn(cmd);
    std::thread::sleep(Duration::from_millis(200));
    env.cut("en1");
    env.cut("en2");
    let ok = wait_for(Duration::from_secs(3), || (group_state(&env) == "failed").then_some(()));
    assert!(ok.is_some(), "{}", group_state(&env));
    let a = out(&env.vipactl(&["ipmp", "-a"]));
    assert!(a.lines().any(|l| l.starts_with("198.18.1.5") && l.contains("--")), "unbound: {a}");
    env.restore("en2");
    // Repaired once probes are answered in a row again (about 1.5 s here).
    let t = std::time::Instant::now();
    let ok = wait_for(Duration::from_secs(3), || (group_state(&env) == "degraded").then(|| t.elapsed()));
    eprintln!("en2 repaired {ok:?} after its cable came back");
    assert!(ok.is_some(), "{}", group_state(&env));
    assert_eq!(inbound(&env).get(DATA).map(String::as_str), Some("en2"));
    std::thread::sleep(Duration::from_millis(200));
    let ev = std::fs::read_to_string(&events_file).unwrap();
    assert!(ev.contains("All IP interfaces in group prod are now unusable"), "{ev}");
    assert!(ev.contains("At least 1 IP interface (en2) in group prod is now usable"), "{ev}");
    assert!(ev.contains("IP interface failure detected on en1 of group prod"), "{ev}");
}

#[test]
fn ipv6_data_address_moves_with_an_unsolicited_na() {
    let (env, _vipad) = up(2, GROUP);
    let bound = inbound(&env).get(DATA6).cloned().expect("bound");
    let other = if bound == "en1" { "en2" } else { "en1" };
    let _srv = serve_on(&env.host, Some(DATA6));
    let run = stream(&env.client, DATA6, 3000);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(env.client_neigh(DATA6), Some(env.mac(&bound)));
    env.cut(&bound);
    std::thread::sleep(Duration::from_millis(300));
    // The client's entry changed without it asking: the NA with Override did it.
    assert_eq!(env.client_neigh(DATA6), Some(env.mac(other)), "client still points at the old NIC");
    let r = run.report();
    eprintln!("IPv6 cut: tcp longest gap {:.1} ms, udp longest gap {:.1} ms", r.tcp.max_gap_ms, r.udp.max_gap_ms);
    assert!(r.tcp.error.is_none(), "{:?}", r.tcp.error);
    assert_eq!(r.tcp.received, r.tcp.sent);
    assert!(r.udp.max_gap_ms < 1000.0);
    // The address stayed on the host throughout: now on the other NIC.
    let addrs = env.host.sh(&format!("ip -6 -o addr show to {DATA6}/128"));
    assert!(addrs.contains(&format!(" {other} ")), "{addrs}");
}

#[test]
fn bad_group_config_is_refused_and_changes_nothing() {
    let (env, _vipad) = up(2, GROUP);
    let before = env.host.sh("ip -o addr; ip route; ip -6 route");
    env.write_config(&GROUP.replace("\"1s\"", "\"50ms\""));
    let o = env.vipactl(&["reload"]);
    assert!(!o.status.success());
    assert!(err(&o).contains(":6:26: group[0].failure_detection_time: \"50ms\" is out of range"), "{}", err(&o));
    env.write_config(&GROUP.replace("en2 = \"198.18.1.12/24\"", "en2 = \"198.18.9.12/24\""));
    let o = env.vipactl(&["reload"]);
    assert!(err(&o).contains("test address 198.18.9.12/24 is outside the subnet of en2"), "{}", err(&o));
    assert_eq!(env.host.sh("ip -o addr; ip route; ip -6 route"), before);
    assert_eq!(group_state(&env), "ok");
    // A good reload without the group takes every address of it away, the /24 test
    // addresses and the /64 data address included.
    env.write_config("");
    let o = env.vipactl(&["reload"]);
    assert!(o.status.success(), "{}", err(&o));
    for a in ["198.18.1.5", "198.18.1.11", "198.18.1.12", "2001:db8:1::5"] {
        assert_eq!(env.host.sh(&format!("ip -o addr show to {a}")), "", "{a} is still there\n{}", env.log());
    }
}

#[test]
fn probe_targets_are_found_in_the_routing_table() {
    require_root();
    let env = LanEnv::build(Names::Unique, 2);
    env.write_config(&GROUP.replace("probe_targets = [\"198.18.1.254\"]\n", ""));
    let _vipad = env.start_vipad();
    // No router yet: probing has no targets, which is "unknown", not failed.
    let ok = wait_for(Duration::from_secs(5), || {
        (interfaces(&env).get("en1").is_some_and(|v| v.3 == "unknown")).then_some(())
    });
    assert!(ok.is_some(), "{:?}", interfaces(&env));
    // A route through the LAN's router makes it the target, on every member.
    let gw = wait_for(Duration::from_secs(5), || env.host.try_sh("ip route add 198.18.2.0/24 via 198.18.1.254").ok());
    assert!(gw.is_some(), "route via the router");
    let ok = wait_for(Duration::from_secs(5), || {
        let t = out(&env.vipactl(&["ipmp", "-t", "-o", "interface,mode,targets", "-P"]));
        (t.lines().filter(|l| l.ends_with(":routes:198.18.1.254")).count() == 2).then_some(())
    });
    assert!(ok.is_some(), "{}", out(&env.vipactl(&["ipmp", "-t"])));
    let ok = wait_for(Duration::from_secs(5), || interfaces(&env).values().all(|v| v.3 == "ok").then_some(()));
    assert!(ok.is_some(), "{:?}", interfaces(&env));
}
