//! vipa-lab: the seed's sample VIPA environment in network namespaces, with vipad at
//! work. It builds the namespaces, starts vipad in the host, shows the views and the
//! routing table, streams from the client to the VIPA while en1's cable is pulled, shows
//! the gap, plugs it back and tears everything down. The host's own network is never
//! touched; Ctrl-C at any point still cleans up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vipa_testbed::lab::{routing_table, Names, SampleEnv, SingleHost, SEED_CONFIG, VIPA, VIPA6};
use vipa_testbed::require_root;

fn section(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn show(label: &str, out: std::process::Output) {
    println!("$ {label}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.is_empty() {
        print!("{err}");
    }
}

/// Sleeps in small steps; false when interrupted.
fn pause(stop: &AtomicBool, ms: u64) -> bool {
    for _ in 0..ms / 10 {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !stop.load(Ordering::Relaxed)
}

fn main() {
    require_root();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).expect("signal handler");
    }
    let done = run(&stop);
    if !done {
        println!("\ninterrupted: cleaning up");
    }
    // Everything (vipad, probes, namespaces, files) is dropped by now.
    println!("\nlab torn down: namespaces deleted, processes stopped; the host's network was not touched.");
}

fn run(stop: &AtomicBool) -> bool {
    section("building the seed's sample VIPA environment (namespaces vipalab-*)");
    let env = SampleEnv::build(Names::Fixed("vipalab"));
    println!(
        "host:   en1 198.18.1.1/24 2001:db8:1::1/64, en5 198.18.5.1/24 2001:db8:5::1/64\n\
         router: 198.18.1.2, 198.18.5.2, 198.18.10.1; static routes to the VIPA via en1 (preferred) and en5\n\
         client: 198.18.10.2 2001:db8:10::2, behind the router\n\
         VIPA:   vi0 = {VIPA} and {VIPA6}, source interfaces en1 en5"
    );
    env.write_config(SEED_CONFIG);
    println!("\n{}:\n{SEED_CONFIG}", env.config_path().display());
    let _vipad = env.start_vipad();
    std::thread::sleep(Duration::from_millis(300));
    if !pause(stop, 0) {
        return false;
    }

    section("what vipad made of it");
    show("vipactl vipa            (AIX: ifconfig vi0)", env.vipactl(&["vipa"]));
    show("vipactl vipa -l vi0     (AIX: lsattr -El vi0)", env.vipactl(&["vipa", "-l", "vi0"]));
    show("vipactl status", env.vipactl(&["status"]));
    println!("$ ip route; ip -6 route   (in the host; AIX: netstat -rn)");
    print!("{}", routing_table(&env.host));
    println!("$ ip addr show dev lo     (the VIPA: a host address, no prefix route)");
    print!("{}", env.host.sh("ip -br addr show dev lo"));

    section("the client streams to the VIPA (TCP + 1 ms UDP probes, IPv4 and IPv6)");
    let _srv = env.serve(&env.host);
    let run4 = env.stream(&env.client, VIPA, 4000);
    let run6 = env.stream(&env.client, VIPA6, 4000);
    if !pause(stop, 1500) {
        return false;
    }
    println!("pulling en1's cable (both ends lose carrier) at t=1.5 s ...");
    env.cut("en1");
    if !pause(stop, 300) {
        return false;
    }
    println!("$ ip route get 198.18.10.2   (in the host, while en1 is cut)");
    print!("{}", env.host.sh("ip route get 198.18.10.2"));
    println!("$ vipactl vipa");
    print!("{}", String::from_utf8_lossy(&env.vipactl(&["vipa"]).stdout));
    if !pause(stop, 2400) {
        return false;
    }
    for (name, run) in [("IPv4", run4), ("IPv6", run6)] {
        let r = run.report();
        println!(
            "{name}: {}\n  TCP  {} sent, {} echoed, longest gap {:.1} ms{}\n  UDP  {} sent, {} echoed, longest gap {:.1} ms (at t={:.0} ms)",
            r.hello,
            r.tcp.sent,
            r.tcp.received,
            r.tcp.max_gap_ms,
            r.tcp.error.map_or(String::new(), |e| format!(", error: {e}")),
            r.udp.sent,
            r.udp.received,
            r.udp.max_gap_ms,
            r.udp.max_gap_at_ms,
        );
    }
    println!("the stream went on through en5: the connection to the VIPA never noticed en1 was gone.");

    section("plugging en1 back in");
    env.restore("en1");
    if !pause(stop, 500) {
        return false;
    }
    show("vipactl vipa", env.vipactl(&["vipa"]));
    print!("{}", routing_table(&env.host));
    section("tearing down");
    true
}
