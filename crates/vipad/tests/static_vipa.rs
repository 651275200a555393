//! The static VIPA end to end: the real vipad in the seed's sample environment, built in
//! network namespaces of its own (see vipa-testbed's `lab`), asserting what a user sees.

use std::time::{Duration, Instant};

use serde_json::Value;
use vipa_testbed::lab::{
    Names, SampleEnv, SingleHost, CLIENT, CLIENT6, HOST_EN1, HOST_EN1_6, HOST_EN5, HOST_EN5_6, SEED_CONFIG, VIPA, VIPA6,
};
use vipa_testbed::{require_root, wait_for, Netns, Proc};

fn env_with_vipad() -> (SampleEnv, Proc) {
    require_root();
    let env = SampleEnv::build(Names::Unique);
    env.write_config(SEED_CONFIG);
    let vipad = env.start_vipad();
    // Converged when every route out of en1/en5 has its source.
    let ok = wait_for(Duration::from_secs(5), || (sources(&env.host) == expected_sources()).then_some(()));
    assert!(ok.is_some(), "routes never got the VIPA source: {:?}\n{}", sources(&env.host), env.log());
    (env, vipad)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// (destination, metric, dev, prefsrc) of every main-table route, both families.
fn sources(ns: &Netns) -> Vec<(String, u64, String, String)> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        for r in ns.ip_json(&format!("{fam} route show table main")).as_array().cloned().unwrap_or_default() {
            let dst = r["dst"].as_str().unwrap_or("").to_string();
            if dst.starts_with("fe80") {
                continue;
            }
            out.push((
                dst,
                r["metric"].as_u64().unwrap_or(0),
                r["dev"].as_str().unwrap_or("").to_string(),
                r["prefsrc"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out.sort();
    out
}

fn expected_sources() -> Vec<(String, u64, String, String)> {
    let mut v: Vec<_> = [
        ("198.18.1.0/24", 0, "en1", VIPA),
        ("198.18.5.0/24", 0, "en5", VIPA),
        ("default", 10, "en1", VIPA),
        ("default", 20, "en5", VIPA),
        ("2001:db8:1::/64", 256, "en1", VIPA6),
        ("2001:db8:5::/64", 256, "en5", VIPA6),
        ("default", 10, "en1", VIPA6),
        ("default", 20, "en5", VIPA6),
    ]
    .iter()
    .map(|(d, m, dev, s)| (d.to_string(), *m, dev.to_string(), s.to_string()))
    .collect();
    v.sort();
    v
}

/// Everything about addresses, routes (all tables) and the managed sysctls, for
/// "nothing changed" and "restored exactly" assertions.
fn kernel_state(ns: &Netns) -> String {
    ns.sh("ip -o addr show | sed 's/valid_lft.*//'; ip -4 route show table all; ip -6 route show table all; \
         for i in en1 en5; do for k in rp_filter arp_ignore arp_announce ignore_routes_with_linkdown; do \
         echo $i $k $(cat /proc/sys/net/ipv4/conf/$i/$k); done; \
         echo $i v6 $(cat /proc/sys/net/ipv6/conf/$i/ignore_routes_with_linkdown); done")
}

#[test]
fn seed_sample_environment() {
    let (env, _vipad) = env_with_vipad();
    // The VIPA is on lo as a host address with no prefix route.
    let lo = env.host.ip_json("addr show dev lo");
    let addrs: Vec<(String, u64, bool)> = lo[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["local"].as_str().unwrap().to_string(),
                a["prefixlen"].as_u64().unwrap(),
                a["noprefixroute"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert!(addrs.contains(&(VIPA.into(), 32, true)), "{addrs:?}");
    assert!(addrs.contains(&(VIPA6.into(), 128, true)), "{addrs:?}");
    let main = env.host.sh("ip -4 route show table main; ip -6 route show table main");
    assert!(!main.lines().any(|l| l.starts_with("198.18.6.")), "no VIPA route: {main}");
    assert!(!main.lines().any(|l| l.starts_with("2001:db8:6:")), "no VIPA route: {main}");

    // Routed-mode sysctls on the source interfaces.
    for nic in ["en1", "en5"] {
        let get = |k: &str| env.host.sh(&format!("cat /proc/sys/net/{k}")).trim().to_string();
        assert_eq!(get(&format!("ipv4/conf/{nic}/arp_ignore")), "1");
        assert_eq!(get(&format!("ipv4/conf/{nic}/arp_announce")), "2");
        assert_eq!(get(&format!("ipv4/conf/{nic}/ignore_routes_with_linkdown")), "1");
        assert_eq!(get(&format!("ipv6/conf/{nic}/ignore_routes_with_linkdown")), "1");
    }

    // `ifconfig vi0` and `lsattr -El vi0`.
    let o = env.vipactl(&["vipa"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("vi0: flags=84000041<UP,RUNNING,64BIT>\n"), "{text}");
    assert!(text.contains("        inet 198.18.6.1 netmask 0xffffffff\n"), "{text}");
    assert!(text.contains("        inet6 2001:db8:6::1/128\n"), "{text}");
    assert!(text.contains("        iflist : en1 en5\n"), "{text}");
    let o = env.vipactl(&["vipa", "-l", "vi0"]);
    let text = stdout(&o);
    assert!(text.lines().any(|l| l.starts_with("netaddr ") && l.contains(VIPA) && l.ends_with("True")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("state ") && l.contains(" up ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("interface_names ") && l.contains("en1,en5")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("netaddr6 ") && l.contains(VIPA6)), "{text}");

    // JSON views.
    let j: Value = serde_json::from_slice(&env.vipactl(&["--json", "vipa"]).stdout).unwrap();
    assert_eq!(j["vipas"][0]["name"], "vi0");
    assert_eq!(j["vipas"][0]["device"], "lo");
    assert_eq!(j["vipas"][0]["up"], true);
    let j: Value = serde_json::from_slice(&env.vipactl(&["status", "--json"]).stdout).unwrap();
    assert_eq!(j["vipas"], 1);
    assert_eq!(j["addresses_active"], 2);
    assert_eq!(j["routes_sourced"], 8);
    assert_eq!(j["device_mode"], "lo");
    let text = stdout(&env.vipactl(&["status"]));
    assert!(text.contains("2/2 addresses active, 8 routes carry a VIPA source"), "{text}");

    // A cut NIC shows in the view.
    env.cut("en1");
    let ok = wait_for(Duration::from_secs(3), || {
        stdout(&env.vipactl(&["vipa"])).contains("iflist : en1(no-carrier) en5").then_some(())
    });
    assert!(ok.is_some(), "{}", stdout(&env.vipactl(&["vipa"])));
}

#[test]
fn source_address_rules() {
    let (env, _vipad) = env_with_vipad();
    let _client_srv = env.serve(&env.client);
    let _host_srv = env.serve(&env.host);
    // Connections the host opens without binding carry the VIPA.
    let seen = env.whoami(&env.host, CLIENT, None).unwrap();
    assert!(seen.starts_with(&format!("peer={VIPA} ")), "{seen}");
    let seen = env.whoami(&env.host, CLIENT6, None).unwrap();
    assert!(seen.starts_with(&format!("peer={VIPA6} ")), "{seen}");
    // A connection the client opens to en1's real address is answered from it.
    let seen = env.whoami(&env.client, HOST_EN1, None).unwrap();
    assert!(seen.starts_with(&format!("peer={CLIENT} local={HOST_EN1}")), "{seen}");
    let seen = env.whoami(&env.client, HOST_EN1_6, None).unwrap();
    assert!(seen.starts_with(&format!("peer={CLIENT6} local={HOST_EN1_6}")), "{seen}");
    // An application that binds en5's address keeps it.
    let seen = env.whoami(&env.host, CLIENT, Some(HOST_EN5)).unwrap();
    assert!(seen.starts_with(&format!("peer={HOST_EN5} ")), "{seen}");
    let seen = env.whoami(&env.host, CLIENT6, Some(HOST_EN5_6)).unwrap();
    assert!(seen.starts_with(&format!("peer={HOST_EN5_6} ")), "{seen}");
    // And the client reaches the VIPA itself.
    let seen = env.whoami(&env.client, VIPA, None).unwrap();
    assert!(seen.starts_with(&format!("peer={CLIENT} local={VIPA}")), "{seen}");
}

fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    ns.ip_json(&format!("-s link show dev {dev}"))[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

fn stream_survives_cut(target: &str) {
    let (env, _vipad) = env_with_vipad();
    let _srv = env.serve(&env.host);
    // Long enough that the stream still runs a second after the cut even when this
    // thread is held up for seconds on a loaded machine (it ended before the cut once).
    let begun = Instant::now();
    let run = env.stream(&env.client, target, 6000);
    std::thread::sleep(Duration::from_millis(1000));
    let en5_before = rx_packets(&env.host, "en5");
    env.cut("en1");
    let cut_at = begun.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    let en5_after = rx_packets(&env.host, "en5");
    let counted_to = begun.elapsed();
    let r = run.report();
    eprintln!(
        "{target}: tcp sent {} echoed {} longest gap {:.1} ms; udp sent {} echoed {} longest gap {:.1} ms",
        r.tcp.sent, r.tcp.received, r.tcp.max_gap_ms, r.udp.sent, r.udp.received, r.udp.max_gap_ms
    );
    assert!(r.hello.contains(&format!("local={target}")), "{}", r.hello);
    assert!(r.tcp.error.is_none(), "TCP connection broke: {:?}", r.tcp.error);
    // The stream kept flowing through en5 while en1 stayed cut until the end: had it
    // stopped, the longest gap would run from the cut (at about 1 s) to the end (6 s).
    assert_eq!(r.tcp.received, r.tcp.sent, "every TCP write was echoed");
    let log = env.log();
    let (tcp, udp) = (&r.tcp, &r.udp);
    assert!(tcp.max_gap_ms < 1000.0, "TCP stalled {:.0} ms, {:.0} ms in\n{log}", tcp.max_gap_ms, tcp.max_gap_at_ms);
    assert!(udp.max_gap_ms < 1000.0, "UDP stalled {:.0} ms, {:.0} ms in\n{log}", udp.max_gap_ms, udp.max_gap_at_ms);
    assert!(
        en5_after - en5_before > 500,
        "traffic arrived through en5 after the cut ({} packets; cut {cut_at:?} and counted {counted_to:?} after the stream began, which ran {:.0} ms)",
        en5_after - en5_before,
        r.duration_ms
    );
}

#[test]
fn stream_to_vipa_survives_en1_cut_v4() {
    stream_survives_cut(VIPA);
}

#[test]
fn stream_to_vipa_survives_en1_cut_v6() {
    stream_survives_cut(VIPA6);
}

/// A segment a connection sent on its old path in the moment between the kernel marking
/// en1's routes `linkdown` and vipad's route refresh waits in a neighbour entry en1 is
/// still resolving, for about three seconds; the kernel does not retransmit it meanwhile,
/// so the connection stalled (1 run in 6 under load). vipad drops such entries with its
/// refreshes. Here the entry is made by hand in that moment.
#[test]
fn after_a_cut_a_neighbour_entry_still_resolving_on_the_dead_nic_is_dropped() {
    let (env, _vipad) = env_with_vipad();
    let router_en1 = "2001:db8:1::2";
    env.cut("en1");
    let seen = wait_for(Duration::from_secs(5), || {
        env.log().contains("carrier changed interface=en1 carrier=false").then_some(())
    });
    assert!(seen.is_some(), "{}", env.log());
    env.host.sh(&format!("ip -6 neigh replace {router_en1} dev en1 nud incomplete"));
    let gone = wait_for(Duration::from_secs(3), || {
        (!env.host.sh(&format!("ip -6 neigh show {router_en1} dev en1")).contains("INCOMPLETE")).then_some(())
    });
    // (The entry is made within milliseconds of the event; vipad's last repeat is 1 s after.)
    assert!(gone.is_some(), "still resolving: {}\n{}", env.host.sh("ip -6 neigh show dev en1"), env.log());
    assert!(
        env.log().contains("unresolved neighbour entries dropped, to be resolved afresh interface=en1"),
        "{}",
        env.log()
    );
}

#[test]
fn foreign_route_replace_is_repaired() {
    let (env, _vipad) = env_with_vipad();
    env.host.sh("ip route replace default via 198.18.1.2 dev en1 metric 10");
    env.host.sh("ip -6 route replace default via 2001:db8:1::2 dev en1 metric 10");
    let ok = wait_for(Duration::from_secs(3), || (sources(&env.host) == expected_sources()).then_some(()));
    assert!(ok.is_some(), "not repaired: {:?}", sources(&env.host));
    // A NIC that loses its address and gets it back: the new connected route is repaired.
    env.host.sh("ip addr del 198.18.5.1/24 dev en5 && ip addr add 198.18.5.1/24 dev en5");
    env.host.sh("ip route replace default via 198.18.5.2 dev en5 metric 20");
    let ok = wait_for(Duration::from_secs(3), || (sources(&env.host) == expected_sources()).then_some(()));
    assert!(ok.is_some(), "not repaired: {:?}", sources(&env.host));
}

#[test]
fn reload_and_restart_change_nothing_in_the_kernel() {
    let (env, mut vipad) = env_with_vipad();
    let before = kernel_state(&env.host);
    let mut mon_cmd = env.host.command("ip");
    let mon_file = env.dir.join("monitor.txt");
    mon_cmd.args(["-o", "monitor", "address", "route"]).stdout(std::fs::File::create(&mon_file).unwrap());
    let _mon = env.host.spawn(mon_cmd);
    std::thread::sleep(Duration::from_millis(300));

    let o = env.vipactl(&["reload"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("no kernel changes needed"), "{}", stdout(&o));
    vipad.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    // Graceful stop and start.
    vipad.signal(libc::SIGTERM);
    assert!(vipad.wait_timeout(Duration::from_secs(5)).is_some(), "vipad did not stop on SIGTERM");
    let mut vipad = env.start_vipad();
    std::thread::sleep(Duration::from_millis(300));
    // Crash and start.
    vipad.kill();
    let _vipad = env.start_vipad();
    std::thread::sleep(Duration::from_millis(500));

    let events = std::fs::read_to_string(&mon_file).unwrap();
    assert_eq!(events, "", "reload and restarts changed addresses or routes");
    assert_eq!(kernel_state(&env.host), before);
    assert!(env.log().matches("vipad started").count() >= 3);
}

#[test]
fn removal_restores_routes_exactly() {
    require_root();
    let env = SampleEnv::build(Names::Unique);
    env.write_config(SEED_CONFIG);
    // Something else's source on the en5 default route, to be restored as it was.
    env.host.sh("ip route replace default via 198.18.5.2 dev en5 metric 20 src 198.18.5.1");
    let pristine = kernel_state(&env.host);
    let _vipad = env.start_vipad();
    wait_for(Duration::from_secs(5), || (sources(&env.host) == expected_sources()).then_some(())).expect("converged");

    // chvi: remove en1, en1's routes get their own sources back; en5 keeps the VIPA.
    let o = env.vipactl(&["vipa", "change", "vi0", "--remove", "en1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(env.config_path()).unwrap().contains("source_interfaces = [\"en5\"]"));
    let s = sources(&env.host);
    assert!(s.contains(&("198.18.1.0/24".into(), 0, "en1".into(), HOST_EN1.into())), "{s:?}");
    assert!(s.contains(&("default".into(), 10, "en1".into(), String::new())), "{s:?}");
    assert!(s.contains(&("default".into(), 20, "en5".into(), VIPA.into())), "{s:?}");
    let text = stdout(&env.vipactl(&["vipa"]));
    assert!(text.contains("iflist : en5\n"), "{text}");
    // And back.
    let o = env.vipactl(&["vipa", "change", "vi0", "--add", "en1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(Duration::from_secs(3), || (sources(&env.host) == expected_sources()).then_some(())).expect("en1 back");
    let lsattr = stdout(&env.vipactl(&["vipa", "-l", "vi0"]));
    assert!(
        lsattr.contains(&format!("default metric 20 via 198.18.5.2 dev en5 src {VIPA} (was {HOST_EN5})")),
        "{lsattr}"
    );

    // Remove the whole VIPA: everything as it was before vipad started.
    let o = env.vipactl(&["vipa", "delete", "vi0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(kernel_state(&env.host), pristine);

    // Add it again by command (mkinetvi).
    let o = env.vipactl(&["vipa", "add", "vi0", "-a", VIPA, "-a", VIPA6, "-i", "en1", "-i", "en5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(Duration::from_secs(3), || (sources(&env.host) == expected_sources()).then_some(())).expect("added back");
    // And remove it by editing the file and reloading.
    env.write_config("[node]\nname = \"host\"\n");
    let o = env.vipactl(&["reload"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(kernel_state(&env.host), pristine);
}

/// A bad reload is refused with file, line and key, and changes nothing.
fn refused_reload(env: &SampleEnv, config: &str, expect: &[&str]) {
    let before = kernel_state(&env.host);
    env.write_config(config);
    let o = env.vipactl(&["reload"]);
    assert!(!o.status.success(), "reload of a bad config succeeded");
    let msg = stderr(&o);
    for e in expect {
        assert!(msg.contains(e), "message lacks {e:?}: {msg}");
    }
    let path = env.config_path().display().to_string();
    assert!(msg.contains(&path), "message names the file: {msg}");
    // vipad --check says the same and exits 1.
    let chk =
        env.host.command(vipa_testbed::workspace_bin("vipad")).arg("--check").arg(env.config_path()).output().unwrap();
    assert_eq!(chk.status.code(), Some(1));
    for e in expect {
        assert!(stderr(&chk).contains(e), "--check lacks {e:?}: {}", stderr(&chk));
    }
    assert_eq!(kernel_state(&env.host), before, "a refused config changed the kernel");
    assert!(env.vipactl(&["status"]).status.success(), "vipad keeps running");
}

#[test]
fn bad_config_changes_nothing() {
    let (env, _vipad) = env_with_vipad();
    let path = env.config_path().display().to_string();
    refused_reload(
        &env,
        &SEED_CONFIG.replace("source_interfaces", "interfaces"),
        &[":8:1: unknown field `interfaces`", "source_interfaces"],
    );
    refused_reload(
        &env,
        &SEED_CONFIG.replace("\"198.18.6.1\"", "\"198.18.6.256\""),
        &[":7:14: vipa[0].addresses[0]: \"198.18.6.256\" is not an IP address"],
    );
    refused_reload(
        &env,
        &format!(
            "{SEED_CONFIG}\n[[vipa]]\nname = \"vi1\"\naddresses = [\"198.18.7.1\"]\nsource_interfaces = [\"en5\"]\n"
        ),
        &[":13:22: vipa[1].source_interfaces[0]: interface \"en5\" is already a source interface of VIPA \"vi0\""],
    );
    refused_reload(
        &env,
        &format!("{SEED_CONFIG}\n[[vipa]]\nname = \"vi1\"\naddresses = [\"{HOST_EN1}\"]\n"),
        &[":12: vipa[1].addresses[0]: 198.18.1.1 is already the address of interface en1"],
    );
    let status = stdout(&env.vipactl(&["status"]));
    assert!(status.contains("last one refused"), "{status}");

    // A NIC that does not exist yet: a warning, and applied when it appears.
    let with_en7 = SEED_CONFIG.replace("[\"en1\", \"en5\"]", "[\"en1\", \"en5\", \"en7\"]");
    env.write_config(&with_en7);
    let o = env.vipactl(&["reload"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "warning: {path}:8: vipa[0].source_interfaces[2]: interface \"en7\" does not exist yet"
        )),
        "{}",
        stdout(&o)
    );
    env.host.sh("ip link add en7 type veth peer name en7p && ip link set en7p up && ip link set en7 up && ip addr add 198.18.7.1/24 dev en7");
    let ok = wait_for(Duration::from_secs(3), || {
        sources(&env.host).contains(&("198.18.7.0/24".into(), 0, "en7".into(), VIPA.into())).then_some(())
    });
    assert!(ok.is_some(), "{:?}", sources(&env.host));

    // vipactl changes that would make the config invalid are refused; the file stays.
    let file_before = std::fs::read_to_string(env.config_path()).unwrap();
    let o = env.vipactl(&["vipa", "add", "vi1", "-a", HOST_EN1]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already the address of interface en1"), "{}", stderr(&o));
    let o = env.vipactl(&["vipa", "change", "vi0", "--add", "en1"]);
    assert!(stderr(&o).contains("already a source interface"), "{}", stderr(&o));
    let o = env.vipactl(&["vipa", "add", "vi1", "-a", "198.18.7.9/24"]);
    assert!(stderr(&o).contains("has prefix /24"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(env.config_path()).unwrap(), file_before);
}

#[test]
fn bad_config_at_start_touches_nothing() {
    require_root();
    let env = SampleEnv::build(Names::Unique);
    let before = kernel_state(&env.host);
    env.write_config(&SEED_CONFIG.replace("\"en5\"]", "\"en5\"]\nbogus = 1"));
    let out = env
        .host
        .command(vipa_testbed::workspace_bin("vipad"))
        .arg("--config")
        .arg(env.config_path())
        .arg("--socket")
        .arg(env.socket_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(":9:1: unknown field `bogus`"), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing was changed"), "{}", stderr(&out));
    assert_eq!(kernel_state(&env.host), before);
    // --check of the good file says OK.
    env.write_config(SEED_CONFIG);
    let chk =
        env.host.command(vipa_testbed::workspace_bin("vipad")).arg("--check").arg(env.config_path()).output().unwrap();
    assert!(chk.status.success(), "{}", stderr(&chk));
    assert!(stdout(&chk).ends_with("OK (1 VIPA)\n"), "{}", stdout(&chk));
    assert_eq!(kernel_state(&env.host), before);
}

#[test]
fn changes_need_root_or_cap_net_admin() {
    let (env, _vipad) = env_with_vipad();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=0", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
            .arg(vipa_testbed::workspace_bin("vipactl"))
            .arg("--socket")
            .arg(env.socket_path())
            .args(args)
            .output()
            .unwrap()
    };
    // The socket's group (root here) may read.
    let o = as_nobody(&["vipa"]);
    assert!(o.status.success(), "read refused: {}", stderr(&o));
    assert!(stdout(&o).contains("vi0: flags="));
    let o = as_nobody(&["vipa", "delete", "vi0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("permission denied: changing vipa needs root or CAP_NET_ADMIN"), "{}", stderr(&o));
    assert_eq!(sources(&env.host), expected_sources());
    // Garbage on the socket gets a clear error and changes nothing.
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(env.socket_path()).unwrap();
    s.write_all(b"{\"request\":\"format-disk\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.contains("request not understood"), "{line}");
    assert!(env.vipactl(&["status"]).status.success(), "vipad keeps running");
    let mode = std::fs::metadata(env.socket_path())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o660);
}
