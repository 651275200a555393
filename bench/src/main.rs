//! vipa-bench: measures the static VIPA in network namespaces and prints a table.
//!
//! - the longest gap a 1 ms probe stream to the VIPA sees when en1's cable is pulled
//!   (median of N runs, IPv4 and IPv6);
//! - the time from a foreign route change to its preferred source being restored;
//! - cold start with 1,000 VIPAs and 4 NICs: time to converge, peak RSS, idle CPU.
//!
//! Usage: see [`USAGE`] (`vipa-bench --help`); anything else on the command line is refused.
//! Not a test: numbers are reported, never asserted.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vipa_testbed::lab::{
    serve_on, stream, ClusterEnv, LanEnv, Names, SampleEnv, SingleHost, DATA, DVIPA, SEED_CONFIG, VIPA, VIPA6,
};
use vipa_testbed::{require_root, wait_for, workspace_bin, Netns};

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A table cell: the median in ms with `decimals`, and the range of the runs.
fn median_cell(v: &[f64], decimals: usize) -> String {
    format!("{:.*} ms (runs {} ms)", decimals, median(v.to_vec()), range(v))
}

/// The least and the greatest of `v`.
fn span(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

fn range(v: &[f64]) -> String {
    let (lo, hi) = span(v);
    format!("{lo:.1}–{hi:.1}")
}

struct Row {
    what: String,
    result: String,
    target: String,
}

const SECTIONS: &[&str] = &[
    "baseline",
    "failover",
    "repair",
    "scale",
    "ipmp-link",
    "ipmp-silent",
    "ipmp-cpu",
    "dvipa-outage",
    "keepalived",
    "split-heal",
    "dvipa-scale",
    "dvipa-scale-v6",
];

const USAGE: &str = "usage: vipa-bench [--runs N] [--only SECTION,...] [--intervals MS,...] [--dvipas N,...]
  sections: baseline, failover, repair, scale, ipmp-link, ipmp-silent, ipmp-cpu, dvipa-outage, keepalived,
            split-heal, dvipa-scale, dvipa-scale-v6 (the IPv6 rows of dvipa-scale alone)
  --intervals picks among the heartbeat intervals 1000, 100, 10 and 1 ms; --dvipas takes any counts
  (vipa-bench --beat PEER_ADDR:PORT OWN_PORT OFFSET_US is the bare loop the idle rows are measured against)";

struct Opts {
    runs: usize,
    only: Option<Vec<String>>,
    intervals: Option<Vec<u64>>,
    dvipas: Option<Vec<u64>>,
}

/// Reads the command line; `Err("")` asks for the usage alone (`--help`).
fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts { runs: 5, only: None, intervals: None, dvipas: None };
    let numbers = |flag: &str, v: &str| -> Result<Vec<u64>, String> {
        v.split(',')
            .map(|x| {
                x.parse::<u64>().ok().filter(|&n| n > 0).ok_or(format!("{flag}: {x:?} is not a positive whole number"))
            })
            .collect()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        if !matches!(flag.as_str(), "--runs" | "--only" | "--intervals" | "--dvipas") {
            return Err(format!("unknown argument {flag:?}"));
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => {
                o.runs =
                    v.parse().ok().filter(|&n| n > 0).ok_or(format!("--runs: {v:?} is not a positive whole number"))?
            }
            "--only" => {
                let names: Vec<String> = v.split(',').map(str::to_string).collect();
                if let Some(bad) = names.iter().find(|n| !SECTIONS.contains(&n.as_str())) {
                    return Err(format!("--only: no section {bad:?}"));
                }
                o.only = Some(names);
            }
            "--intervals" => {
                let ms = numbers(flag, v)?;
                if let Some(bad) = ms.iter().find(|m| ![1000, 100, 10, 1].contains(*m)) {
                    return Err(format!("--intervals: {bad} ms is not one of 1000, 100, 10, 1"));
                }
                o.intervals = Some(ms);
            }
            _ => o.dvipas = Some(numbers(flag, v)?),
        }
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--beat") {
        let arg = |k: usize| args.get(i + k).map_or("", String::as_str);
        match (arg(1).parse(), arg(2).parse(), arg(3).parse()) {
            (Ok(peer), Ok(port), Ok(offset_us)) => beat(peer, port, offset_us),
            _ => eprintln!("usage: vipa-bench --beat PEER_ADDR:PORT OWN_PORT OFFSET_US"),
        }
        return;
    }
    let Opts { runs, only, intervals, dvipas } = match parse_opts(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("vipa-bench: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    require_root();
    let want = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));
    let pick = |chosen: &Option<Vec<u64>>, all: &[u64]| -> Vec<u64> {
        all.iter().copied().filter(|i| chosen.as_ref().is_none_or(|v| v.contains(i))).collect()
    };
    let at = |all: &[u64]| pick(&intervals, all);
    let mut rows = Vec::new();
    if want("baseline") {
        eprintln!("measuring an undisturbed stream (the floor of every gap below) ...");
        baseline(runs, &mut rows);
    }
    if want("failover") {
        eprintln!("measuring failover gaps ({runs} runs per family) ...");
        failover(runs, &mut rows);
    }
    if want("repair") {
        eprintln!("measuring repair of foreign route changes ...");
        repair(&mut rows);
    }
    if want("scale") {
        eprintln!("measuring cold start with 1,000 VIPAs ...");
        scale(&mut rows);
    }
    if want("ipmp-link") {
        eprintln!("measuring IPMP link-loss outage ({runs} runs) ...");
        ipmp_link(runs, &mut rows);
    }
    if want("ipmp-silent") {
        for fdt in [100u64, 1000, 10_000] {
            eprintln!("measuring IPMP silent-loss detection at FDT {fdt} ms ({runs} runs) ...");
            ipmp_silent(runs, fdt, &mut rows);
        }
    }
    if want("ipmp-cpu") {
        eprintln!("measuring IPMP probing CPU with 8 NICs at FDT 100 ms ...");
        ipmp_cpu(&mut rows);
    }
    // Medians by (system, interval in ms, case), for the side-by-side rows.
    let mut medians: Vec<(&str, u64, &str, f64)> = Vec::new();
    if want("dvipa-outage") {
        for interval in at(&[1000, 100, 10, 1]) {
            eprintln!("measuring DVIPA outages at {interval} ms heartbeats ({runs} runs) ...");
            dvipa_outage(runs, interval, &mut rows, &mut medians);
        }
    }
    if want("keepalived") {
        if std::process::Command::new("keepalived").arg("--version").output().is_ok() {
            for interval in at(&[1000, 100, 10]) {
                eprintln!("measuring keepalived (VRRPv3) outages at {interval} ms adverts ({runs} runs) ...");
                keepalived_outage(runs, interval, &mut rows, &mut medians);
            }
        } else {
            eprintln!("keepalived is not installed: no comparison (scripts/bench installs it)");
        }
    }
    for (sys, interval, case, v) in &medians {
        if *sys != "vipa" {
            continue;
        }
        let Some((_, _, _, k)) = medians.iter().find(|m| m.0 == "keepalived" && m.1 == *interval && m.2 == *case)
        else {
            continue;
        };
        rows.push(Row {
            what: format!("vipa / keepalived at {interval} ms: {case}"),
            result: format!("{:.2} ({v:.1} / {k:.1} ms)", v / k),
            target: "≤ 0.33".into(),
        });
    }
    if want("split-heal") {
        let ka = std::process::Command::new("keepalived").arg("--version").output().is_ok();
        for interval in at(&[1000, 100, 10]) {
            eprintln!("measuring split brains healed at {interval} ms ({runs} runs) ...");
            let v = split_heal(runs, interval, None, &mut rows);
            let k = if ka { split_heal(runs, interval, Some(()), &mut rows) } else { None };
            if let (Some(v), Some(k)) = (v, k) {
                rows.push(Row {
                    what: format!("vipa / keepalived at {interval} ms: two holders after a split brain healed"),
                    result: format!("{:.2} ({v:.1} / {k:.1} ms)", v / k.max(0.1)),
                    target: "-".into(),
                });
            }
        }
    }
    if want("dvipa-scale") || want("dvipa-scale-v6") {
        for &n in dvipas.as_deref().unwrap_or(&[1000, 10_000]) {
            eprintln!("measuring one takeover of {n} IPv6 DVIPAs ...");
            dvipa_scale_v6(n as usize, &mut rows);
        }
    }
    if want("dvipa-scale") {
        // Any count asked for (`--dvipas 1` shows what the addresses themselves cost).
        let counts = dvipas.clone().unwrap_or_else(|| vec![1000, 10_000]);
        for &n in &counts {
            eprintln!("measuring one takeover of {n} DVIPAs ...");
            dvipa_scale(n as usize, &mut rows);
        }
        if dvipas.as_ref().is_none_or(|v| v.contains(&1000)) {
            eprintln!("measuring three idle nodes with majority quorum and 1,000 DVIPAs ...");
            dvipa_idle_three(1000, false, &mut rows);
            eprintln!("measuring the same with multicast heartbeats ...");
            dvipa_idle_three(1000, true, &mut rows);
        }
    }

    let w0 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.result.len()).max().unwrap_or(0);
    println!("\n{:<w0$}  {:<w1$}  target", "benchmark", "result");
    println!("{}  {}  {}", "-".repeat(w0), "-".repeat(w1), "-".repeat(12));
    for r in rows {
        println!("{:<w0$}  {:<w1$}  {}", r.what, r.result, r.target);
    }
}

fn failover(runs: usize, rows: &mut Vec<Row>) {
    let env = SampleEnv::build(Names::Unique);
    env.write_config(SEED_CONFIG);
    let _vipad = env.start_vipad();
    let _srv = env.serve(&env.host);
    std::thread::sleep(Duration::from_millis(300));
    for (family, target) in [("IPv4", VIPA), ("IPv6", VIPA6)] {
        let (mut udp, mut tcp) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let run = env.stream(&env.client, target, 1500);
            std::thread::sleep(Duration::from_millis(500));
            env.cut("en1");
            let r = run.report();
            env.restore("en1");
            udp.push(r.udp.max_gap_ms);
            tcp.push(if r.tcp.error.is_some() { f64::INFINITY } else { r.tcp.max_gap_ms });
            std::thread::sleep(Duration::from_millis(700));
        }
        rows.push(Row {
            what: format!("{family}: 1 ms UDP probes to the VIPA, longest gap on en1 cut (median)"),
            result: median_cell(&udp, 1),
            target: "a few ms".into(),
        });
        rows.push(Row {
            what: format!("{family}: TCP stream to the VIPA, longest gap on en1 cut (median)"),
            result: median_cell(&tcp, 1),
            target: "a few ms".into(),
        });
    }
}

/// `[2026-11-22T22:53:04.476114] ...` → seconds of the day.
fn stamp(line: &str) -> Option<f64> {
    let t = line.strip_prefix('[')?.split(']').next()?.split('T').nth(1)?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn repair(rows: &mut Vec<Row>) {
    let env = SampleEnv::build(Names::Unique);
    env.write_config(SEED_CONFIG);
    let _vipad = env.start_vipad();
    std::thread::sleep(Duration::from_millis(300));
    let file = env.dir.join("monitor.txt");
    let mut cmd = env.host.command("ip");
    cmd.args(["-ts", "-o", "monitor", "route"]).stdout(std::fs::File::create(&file).expect("monitor file"));
    let mon = env.host.spawn(cmd);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..40 {
        if i % 2 == 0 {
            env.host.sh("ip route replace default via 198.18.1.2 dev en1 metric 10");
        } else {
            env.host.sh("ip -6 route replace default via 2001:db8:1::2 dev en1 metric 10");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    drop(mon);
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let mut pending: Option<f64> = None;
    let mut deltas = Vec::new();
    for line in text.lines().filter(|l| l.contains("default via 198.18.1.2") || l.contains("default via 2001:db8:1::2"))
    {
        let Some(t) = stamp(line) else { continue };
        if !line.contains(" src ") {
            pending = Some(t);
        } else if let Some(t0) = pending.take() {
            deltas.push((t - t0) * 1e3);
        }
    }
    rows.push(Row {
        what: format!("foreign `ip route replace` → preferred source restored (median of {})", deltas.len()),
        result: if deltas.is_empty() { "no repairs seen".into() } else { median_cell(&deltas, 2) },
        target: "≤ 10 ms".into(),
    });
}

fn proc_field(pid: i32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// CPU time (ms) and context switches of all a process's threads so far, from the
/// scheduler's own accounting (`/proc/PID/task/TID/sched`). The user and system times of
/// `/proc/PID/stat` are sampled at each timer tick, and a daemon that wakes every 10 ms for
/// a few microseconds is charged whole ticks or nothing: too coarse for "< 1 %".
fn usage(pid: i32) -> Option<(f64, u64)> {
    let (mut cpu_ms, mut switches) = (0.0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let sched = std::fs::read_to_string(task.ok()?.path().join("sched")).ok()?;
        let field = |key: &str| {
            sched
                .lines()
                .find(|l| l.split(':').next().map(str::trim) == Some(key))?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        };
        cpu_ms += field("se.sum_exec_runtime")?;
        switches += field("nr_switches")? as u64;
    }
    Some((cpu_ms, switches))
}

/// A process's share of one core and its wake-ups over `secs` seconds, as a table cell.
fn idle_usage(pid: i32, secs: u64) -> String {
    let [cell] = idle_usage_of([pid], 1, secs);
    cell
}

/// The share of one core and the wake-ups of each of `pids` over `windows` windows of
/// `secs` seconds, all measured over the same windows: the median, and the range if more
/// than one, as table cells.
fn idle_usage_of<const N: usize>(pids: [i32; N], windows: usize, secs: u64) -> [String; N] {
    idle_windows(pids, windows, secs).map(|v| usage_cell(&v))
}

/// Each of `pids`' share of one core (%) and wake-ups a second, window by window: all
/// over the same `windows` windows of `secs` seconds (a window where a process could not
/// be read is left out for it).
fn idle_windows<const N: usize>(pids: [i32; N], windows: usize, secs: u64) -> [Vec<(f64, u64)>; N] {
    let mut seen: [Vec<(f64, u64)>; N] = std::array::from_fn(|_| Vec::new());
    for _ in 0..windows {
        let before = pids.map(usage);
        std::thread::sleep(Duration::from_secs(secs));
        for (k, after) in pids.map(usage).into_iter().enumerate() {
            if let (Some(a), Some(b)) = (before[k], after) {
                seen[k].push(((b.0 - a.0) / (secs as f64 * 1e3) * 100.0, (b.1 - a.1) / secs));
            }
        }
    }
    seen
}

fn usage_cell(v: &[(f64, u64)]) -> String {
    if v.is_empty() {
        return "n/a (no /proc/PID/task/TID/sched here)".into();
    }
    let cpu: Vec<f64> = v.iter().map(|x| x.0).collect();
    let switches = median(v.iter().map(|x| x.1 as f64).collect());
    let (lo, hi) = span(&cpu);
    let spread = if v.len() > 1 { format!(" (windows {lo:.2}–{hi:.2} %)") } else { String::new() };
    format!("{:.2} %{spread} of one core, {switches:.0} switches/s", median(cpu))
}

/// What `a` costs above `b`, window by window over the same windows: the median and the
/// range of the differences, as a table cell.
fn above_cell(a: &[(f64, u64)], b: &[(f64, u64)]) -> String {
    if a.len() != b.len() || a.is_empty() {
        return "n/a (a window could not be read)".into();
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x.0 - y.0).collect();
    let (lo, hi) = span(&d);
    let spread = if d.len() > 1 { format!(" (windows {lo:+.2} to {hi:+.2} %)") } else { String::new() };
    format!("{:+.2} %{spread} of one core", median(d))
}

fn scale(rows: &mut Vec<Row>) {
    const N: usize = 1000;
    let host = Netns::new("scale");
    let peer = Netns::new("scalepeer");
    for i in 1..=4 {
        host.sh(&format!(
            "ip link add n{i} type veth peer name p{i} netns {peer} && ip link set n{i} up && \
             ip addr add 198.19.{i}.1/24 dev n{i} && ip route add 198.19.{}.0/24 via 198.19.{i}.2 dev n{i}",
            200 + i,
            peer = peer.name
        ));
        peer.sh(&format!("ip link set p{i} up && ip addr add 198.19.{i}.2/24 dev p{i}"));
    }
    let dir = std::env::temp_dir().join(format!("{}-vipa", host.name));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut config = String::from("[node]\nname = \"scale\"\n");
    for i in 0..N {
        let addr = format!("198.19.{}.{}", 100 + i / 200, i % 200 + 1);
        let ifs = if i < 4 { format!("\nsource_interfaces = [\"n{}\"]", i + 1) } else { String::new() };
        config.push_str(&format!("\n[[vipa]]\nname = \"v{i}\"\naddresses = [\"{addr}\"]{ifs}\n"));
    }
    std::fs::write(dir.join("vipa.toml"), config).expect("config");
    let socket = dir.join("vipad.sock");
    let mut cmd = host.command(workspace_bin("vipad"));
    cmd.arg("--config").arg(dir.join("vipa.toml")).arg("--socket").arg(&socket);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let vipad = host.spawn(cmd);
    let converged = wait_for(Duration::from_secs(30), || {
        let out = Command::new(workspace_bin("vipactl"))
            .arg("--socket")
            .arg(&socket)
            .args(["status", "--json"])
            .output()
            .ok()?;
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (j["addresses_active"] == N && j["routes_sourced"] == 8).then(|| start.elapsed())
    });
    let pid = vipad.pid();
    let rss = proc_field(pid, "VmHWM:");
    let cpu = idle_usage(pid, 10);
    drop(vipad);
    let _ = std::fs::remove_dir_all(&dir);
    rows.push(Row {
        what: format!("cold start, {N} VIPAs and 4 NICs: start to converged"),
        result: converged.map_or("did not converge in 30 s".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3)),
        target: "≤ 1 s".into(),
    });
    rows.push(Row {
        what: format!("cold start, {N} VIPAs: peak RSS of vipad"),
        result: rss.map_or("n/a".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0)),
        target: "-".into(),
    });
    rows.push(Row { what: format!("{N} VIPAs: vipad CPU over 10 s idle"), result: cpu, target: "< 1 %".into() });
}

fn group_config(nics: usize, fdt_ms: u64, probing: bool) -> String {
    let names: Vec<String> = (1..=nics).map(|i| format!("\"en{i}\"")).collect();
    let tests: Vec<String> = (1..=nics).map(|i| format!("en{i} = \"198.18.1.{}/24\"", 10 + i)).collect();
    let mut c = format!(
        "[[group]]\nname = \"prod\"\ninterfaces = [{}]\ndata_addresses = [\"198.18.1.5/24\"]\nfailure_detection_time = \"{fdt_ms}ms\"\n",
        names.join(", ")
    );
    if probing {
        c.push_str(&format!("test_addresses = {{ {} }}\nprobe_targets = [\"198.18.1.254\"]\n", tests.join(", ")));
    }
    c
}

fn vipactl(env: &LanEnv, args: &[&str]) -> String {
    String::from_utf8_lossy(&env.vipactl(args).stdout).into_owned()
}

fn bound_nic(env: &LanEnv) -> Option<String> {
    vipactl(env, &["ipmp", "-a", "-o", "address,inbound", "-P"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{DATA}:")).map(str::to_string))
        .filter(|n| !n.is_empty())
}

fn group_ok(env: &LanEnv) -> bool {
    vipactl(env, &["ipmp", "-g", "-o", "state", "-P"]).trim() == "ok"
}

/// Waits for an answered probe on every NIC (the end of in.mpathd's quiet period).
fn probes_answered(env: &LanEnv, nics: usize) {
    let mut acked = std::collections::BTreeSet::new();
    let start = Instant::now();
    let _ = vipa_api::stream_events(&env.socket_path(), |e| {
        if e.kind == "probe" && e.probe.as_ref().is_some_and(|p| p.acked) {
            acked.extend(e.interface.clone());
        }
        acked.len() < nics && start.elapsed() < Duration::from_secs(60)
    });
}

fn ipmp_link(runs: usize, rows: &mut Vec<Row>) {
    let env = LanEnv::build(Names::Unique, 2);
    env.write_config(&group_config(2, 10_000, false));
    let _vipad = env.start_vipad();
    let _srv = vipa_testbed::lab::serve(&env.host);
    let mut gaps = Vec::new();
    for _ in 0..runs {
        wait_for(Duration::from_secs(10), || group_ok(&env).then_some(()));
        let Some(nic) = bound_nic(&env) else { continue };
        let run = stream(&env.client, DATA, 1500);
        std::thread::sleep(Duration::from_millis(500));
        env.cut(&nic);
        let r = run.report();
        env.restore(&nic);
        gaps.push(r.udp.max_gap_ms);
        std::thread::sleep(Duration::from_millis(500));
    }
    rows.push(Row {
        what: "IPMP: 1 ms probes to a data address, outage when its NIC loses link (median)".into(),
        result: median_cell(&gaps, 1),
        target: "≤ 5 ms".into(),
    });
}

fn ipmp_silent(runs: usize, fdt_ms: u64, rows: &mut Vec<Row>) {
    let env = LanEnv::build(Names::Unique, 2);
    env.write_config(&group_config(2, fdt_ms, true));
    let _vipad = env.start_vipad();
    probes_answered(&env, 2);
    let mut detect = Vec::new();
    for _ in 0..runs {
        let ok = wait_for(Duration::from_millis(fdt_ms * 3 + 5000), || group_ok(&env).then_some(()));
        if ok.is_none() {
            continue;
        }
        let Some(nic) = bound_nic(&env) else { continue };
        let t0 = Instant::now();
        env.silence(&nic);
        let mut found = None;
        let _ = vipa_api::stream_events(&env.socket_path(), |e| {
            if e.kind == "nic" && e.text.starts_with(&format!("IP interface failure detected on {nic}")) {
                found = Some(t0.elapsed());
            }
            found.is_none() && t0.elapsed() < Duration::from_millis(fdt_ms * 4 + 2000)
        });
        env.unsilence();
        if let Some(d) = found {
            detect.push(d.as_secs_f64() * 1e3);
        }
    }
    rows.push(Row {
        what: format!("IPMP: silent loss detected, FDT {fdt_ms} ms (median of {})", detect.len()),
        result: if detect.is_empty() { "not detected".into() } else { median_cell(&detect, 0) },
        target: format!("≤ {fdt_ms} ms"),
    });
}

fn ipmp_cpu(rows: &mut Vec<Row>) {
    let env = LanEnv::build(Names::Unique, 8);
    env.write_config(&group_config(8, 100, true));
    let vipad = env.start_vipad();
    probes_answered(&env, 8);
    // The simulated LAN's receive work on kernel threads, off vipad's bill (as in
    // `dvipa_scale`).
    env.thread_receive();
    let cpu = idle_usage(vipad.pid(), 20);
    rows.push(Row {
        what: "IPMP: vipad CPU, 8 NICs probing at FDT 100 ms, over 20 s".into(),
        result: cpu,
        target: "< 2 %".into(),
    });
}

fn dvipa_config(takeback: &str) -> String {
    vipa_testbed::lab::owned_by_s1(DVIPA, "s2 = 200, s3 = 100", takeback)
}

/// Waits until s1 alone holds the DVIPA and the client reaches it there: its ARP entry
/// names s1 and a ping is answered. A stream started before the client's view settled
/// can lose its first SYN in the handover and start a second late, after the fault.
fn s1_ready(env: &ClusterEnv, within: Duration) -> bool {
    let mac = env.mac(1);
    wait_for(within, || {
        let alone = env.holders(DVIPA) == vec![1];
        let reached = alone && env.client.try_sh(&format!("ping -c1 -W1 {DVIPA}")).is_ok();
        (reached && env.client_neigh(DVIPA).as_deref() == Some(mac.as_str())).then_some(())
    })
    .is_some()
}

/// Probe period on planned moves and graceful stops, µs: their outages are shorter than
/// the longest gap of an undisturbed 1 ms stream here (first table).
const FINE_PROBE_US: u64 = 200;

/// A pause of 0.5 s plus a random part of one heartbeat interval: faults land at a random
/// moment between two heartbeats (or adverts), so a median reflects the average phase.
fn pause_before_fault(interval_ms: u64) {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let jitter = u64::from(nanos).wrapping_mul(0x9e37_79b9_7f4a_7c15) % (interval_ms * 1000).max(1);
    std::thread::sleep(Duration::from_millis(500) + Duration::from_micros(jitter));
}

/// The client's longest gap while `fault` strikes the cluster at a random moment of the
/// interval (`None`: the stream could not run).
fn gap_during(env: &ClusterEnv, interval_ms: u64, fault: impl FnOnce()) -> Option<f64> {
    let run = stream(&env.client, DVIPA, interval_ms * 6 + 1500);
    pause_before_fault(interval_ms);
    fault();
    run.try_report().ok().map(|r| r.udp.max_gap_ms)
}

/// A stream of probes every [`FINE_PROBE_US`] while `fault` strikes at a random moment of
/// the interval: its longest gap, and how long the probes it lost would have taken (lost ×
/// period), the outage without the stream's own hiccups (a late echo is not lost).
fn fine_during(env: &ClusterEnv, interval_ms: u64, fault: impl FnOnce()) -> Option<(f64, f64)> {
    let run = vipa_testbed::lab::stream_every(&env.client, DVIPA, interval_ms * 6 + 1500, FINE_PROBE_US);
    pause_before_fault(interval_ms);
    fault();
    run.try_report().ok().map(|r| (r.udp.max_gap_ms, unanswered_ms(&r)))
}

/// Probes a stream of [`FINE_PROBE_US`] got no echo for, as time.
fn unanswered_ms(r: &vipa_testbed::probe::StreamReport) -> f64 {
    r.udp.sent.saturating_sub(r.udp.received) as f64 * FINE_PROBE_US as f64 / 1000.0
}

/// One row per case, `system` at `interval_ms` ("DVIPA, 10 ms heartbeats"); the medians of
/// the outage cases go to the side-by-side rows.
fn outage_rows(
    system: &'static str,
    label: String,
    interval_ms: u64,
    cases: Vec<(&'static str, Vec<f64>)>,
    target: impl Fn(&str) -> String,
    rows: &mut Vec<Row>,
    medians: &mut Vec<(&str, u64, &str, f64)>,
) {
    for (what, v) in cases {
        // Compared side by side: the outages, not a fine stream's longest gap.
        if !v.is_empty() && !what.starts_with("planned") && !what.contains("longest gap") {
            medians.push((system, interval_ms, what, median(v.clone())));
        }
        rows.push(Row {
            what: format!("{label}: client outage, {what} (median of {})", v.len()),
            result: if v.is_empty() { "n/a".into() } else { median_cell(&v, 1) },
            target: target(what),
        });
    }
}

/// Waits until s2 and s3 know s1's punctuality: vipad learns a peer's in the first 10 s
/// it hears it (after each start of it), and gives it 30 ms to answer probes until then
/// (docs/cluster.md). Faults strike a cluster that has been running, not one just started;
/// false if they did not learn it within 20 s (the run is then skipped). What they learned
/// of a previous s1 does not count: the member must be the running s1 (its incarnation),
/// alive.
fn s1_learned(env: &ClusterEnv) -> bool {
    wait_for(Duration::from_secs(20), || {
        let s1 = env.cluster_view(1)["incarnation"].as_u64()?;
        let learned = |k: usize| {
            let m = env.member(k, "s1");
            m["incarnation"] == s1 && m["state"] == "alive" && m["confirm_learned"] == true
        };
        (learned(2) && learned(3)).then_some(())
    })
    .is_some()
}

fn dvipa_outage(runs: usize, interval_ms: u64, rows: &mut Vec<Row>, medians: &mut Vec<(&str, u64, &str, f64)>) {
    let env = ClusterEnv::build(Names::Unique, 3);
    let extra = format!("heartbeat_interval = \"{interval_ms}ms\"\n");
    for k in 1..=3 {
        env.write_config(k, &extra, &dvipa_config("immediate"));
    }
    let mut procs: Vec<vipa_testbed::Proc> = (1..=3).map(|k| env.start_vipad(k)).collect();
    let _srv: Vec<_> = (1..=3).map(|k| serve_on(env.host(k), Some(DVIPA))).collect();
    let settle = Duration::from_millis(interval_ms * 40 + 2000);
    let (mut death, mut cut, mut moved, mut unanswered, mut stop, mut stop_lost) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut windows, mut seen) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        if !s1_learned(&env) || !s1_ready(&env, settle) {
            continue;
        }
        let window = s1_window_ms(&env);
        let deaths = s1_deaths(&env).len();
        // Host death: the cable first (the host is gone for everyone at once, as when it
        // dies), then its processes.
        if let Some(gap) = gap_during(&env, interval_ms, || {
            env.cut(1);
            procs[0].kill();
        }) {
            death.push(gap);
            windows.extend(window);
            seen.extend(s1_seen_dead(&env, deaths, "host death", gap, window, interval_ms));
        }
        env.host(1).drop_local(DVIPA);
        env.restore(1);
        procs[0] = env.start_vipad(1);
        if !s1_learned(&env) || !s1_ready(&env, settle) {
            continue;
        }
        // Link cut only.
        let window = s1_window_ms(&env);
        let deaths = s1_deaths(&env).len();
        if let Some(gap) = gap_during(&env, interval_ms, || env.cut(1)) {
            cut.push(gap);
            windows.extend(window);
            seen.extend(s1_seen_dead(&env, deaths, "link cut", gap, window, interval_ms));
        }
        env.restore(1);
        if !s1_ready(&env, settle) {
            continue;
        }
        // Planned move and back, with fast probes to resolve a sub-millisecond gap.
        let run = vipa_testbed::lab::stream_every(&env.client, DVIPA, 1500, FINE_PROBE_US);
        std::thread::sleep(Duration::from_millis(500));
        let _ = env.vipactl(1, &["dvipa", "move", DVIPA, "s2"]);
        if let Ok(r) = run.try_report() {
            moved.push(r.udp.max_gap_ms);
            unanswered.push(unanswered_ms(&r));
        }
        let _ = env.vipactl(1, &["dvipa", "move", DVIPA, "s1"]);
        if !s1_ready(&env, settle) {
            continue;
        }
        // Graceful stop (SIGTERM): the holder hands over and says it is leaving.
        if let Some((gap, lost)) = fine_during(&env, interval_ms, || procs[0].signal(15)) {
            stop.push(gap);
            stop_lost.push(lost);
        }
        procs[0].wait_timeout(Duration::from_secs(5));
        procs[0] = env.start_vipad(1);
    }
    let cases = vec![
        ("holder host dies", death),
        ("holder's link is cut", cut),
        ("graceful stop, 200 µs probes, longest gap", stop),
        ("graceful stop, 200 µs probes, unanswered (lost × 200 µs)", stop_lost),
        ("planned move, 200 µs probes, longest gap", moved),
        ("planned move, 200 µs probes, unanswered (lost × 200 µs)", unanswered),
    ];
    let target = |what: &str| match (what, interval_ms) {
        ("holder host dies", 1) => "≤ 10 ms".into(),
        (w, _) if w.starts_with("planned") => "≤ 2 ms".into(),
        _ => "-".into(),
    };
    let label = format!("DVIPA, {interval_ms} ms heartbeats");
    outage_rows("vipa", label.clone(), interval_ms, cases, target, rows, medians);
    // What the outages above are made of: an interval's phase, the grace, this window, and
    // the move itself.
    rows.push(Row {
        what: format!("{label}: s2's confirmation window for s1 as the fault struck (median of {})", windows.len()),
        result: if windows.is_empty() { "n/a".into() } else { median_cell(&windows, 1) },
        target: "-".into(),
    });
    rows.push(Row {
        what: format!("{label}: s2 declared s1 dead, ms after s1's last heartbeat (median of {})", seen.len()),
        result: if seen.is_empty() { "n/a".into() } else { median_cell(&seen, 1) },
        target: "-".into(),
    });
}

/// The lines of s2's log that declare s1 dead, oldest first.
fn s1_deaths(env: &ClusterEnv) -> Vec<String> {
    env.log(2).lines().filter(|l| l.contains("node s1 is dead")).map(str::to_string).collect()
}

/// How long after s1's last heartbeat s2 declared it dead in the fault that struck after
/// s2 had logged `before` such deaths (its log says: "no heartbeat for 12.1 ms and none of
/// 20 probes answered", or only the silence). An outage far beyond the usual (more than
/// four intervals and 20 ms) is shown with the line and s2's window for s1 before and
/// after, which tell a late detection (and why) from a slow move after it.
fn s1_seen_dead(
    env: &ClusterEnv,
    before: usize,
    fault: &str,
    gap: f64,
    window: Option<f64>,
    interval_ms: u64,
) -> Option<f64> {
    let line = wait_for(Duration::from_secs(2), || s1_deaths(env).into_iter().nth(before))?;
    let ms = line.split("no heartbeat for ").nth(1)?.split(" ms").next()?.parse().ok();
    if gap > (interval_ms * 4 + 20) as f64 {
        // The window again: a hold-up between the reading before and the fault raises it.
        let shown = |w: Option<f64>| w.map_or("unknown".into(), |w| format!("{w:.1} ms"));
        let (was, now) = (shown(window), shown(s1_window_ms(env)));
        eprintln!("  long outage ({fault}): {gap:.1} ms; s2's window for s1 {was} before, {now} after; s2: {line}");
    }
    ms
}

/// The confirmation window s2 gives s1 now (`vipactl cluster`), in ms.
fn s1_window_ms(env: &ClusterEnv) -> Option<f64> {
    Some(env.member(2, "s1")["confirm_us"].as_u64()? as f64 / 1000.0)
}

/// `n` `[[dvipa]]` entries (198.19.0.1 on, or 2001:db8:1::1:0:1 on with `v6`), owned by s1
/// and backed up by `backups`.
fn owned_by_s1(n: usize, backups: &str, v6: bool) -> String {
    (0..n).map(|i| vipa_testbed::lab::owned_by_s1(&dvipa_address(i, v6), backups, "")).collect()
}

/// The address of the `i`th DVIPA of `owned_by_s1`.
fn dvipa_address(i: usize, v6: bool) -> String {
    if v6 {
        format!("2001:db8:1::1:{:x}:{:x}", i / 250, i % 250 + 1)
    } else {
        format!("198.19.{}.{}", i / 250, i % 250 + 1)
    }
}

/// Appended to an idle row measured before the nodes knew each other's punctuality.
const STILL_LEARNING: &str = " (peers still learning: round trips measured every 156 ms)";

/// Brings nodes s1..s`size` to idle as it is measured; false if some node had not learnt
/// another's punctuality within 20 s (while it is learned, round trips are measured every
/// 156 ms). Then the simulated LAN's receive work, billed on plain veths to whichever
/// process sends, goes to kernel threads (see `thread_receive`): each daemon pays for its
/// own work.
fn settle_idle(env: &ClusterEnv, size: usize) -> bool {
    let learned = |k: usize, peer: usize| env.member(k, &format!("s{peer}"))["confirm_learned"] == true;
    let all = || (1..=size).all(|k| (1..=size).filter(|&p| p != k).all(|p| learned(k, p)));
    let steady = wait_for(Duration::from_secs(20), || all().then_some(())).is_some();
    std::thread::sleep(Duration::from_secs(1));
    env.thread_receive();
    steady
}

/// Two nodes at 10 ms heartbeats without quorum: s1 owns `n` DVIPAs (IPv6 ones with
/// `v6`), s2 backs them up; both started.
fn owner_and_backup(n: usize, v6: bool) -> (ClusterEnv, vipa_testbed::Proc, vipa_testbed::Proc) {
    let env = ClusterEnv::build(Names::Unique, 2);
    let d = owned_by_s1(n, "s2 = 100", v6);
    for k in 1..=2 {
        env.write_config(k, "heartbeat_interval = \"10ms\"\nquorum = \"none\"\n", &d);
    }
    let (s1, s2) = (env.start_vipad(1), env.start_vipad(2));
    (env, s1, s2)
}

/// Kills s1 and cuts its cable, then waits up to `limit` until `all_on_s2`: the time
/// that took, as a table cell.
fn takeover_cell(
    env: &ClusterEnv,
    s1: &mut vipa_testbed::Proc,
    limit: Duration,
    all_on_s2: impl Fn() -> bool,
) -> String {
    let start = Instant::now();
    s1.kill();
    env.cut(1);
    let took = wait_for(limit, || all_on_s2().then(|| start.elapsed()));
    took.map_or(format!("not within {} s", limit.as_secs()), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
}

fn dvipa_scale(n: usize, rows: &mut Vec<Row>) {
    let (env, mut s1, s2) = owner_and_backup(n, false);
    // The NIC's own address and every DVIPA, however the kernel holds them.
    let count = |k: usize| env.host(k).local_count("en1");
    let up = wait_for(Duration::from_secs(60), || (count(1) > n).then_some(()));
    if up.is_none() {
        rows.push(Row {
            what: format!("{n} DVIPAs moved in one takeover"),
            result: "s1 never held them all".into(),
            target: "-".into(),
        });
        return;
    }
    let steady = settle_idle(&env, 2);
    let windows = if n == 1000 { 5 } else { 3 };
    let what = |node: &str| format!("{n} DVIPAs at 10 ms heartbeats: {node} vipad CPU idle, {windows} × 10 s");
    let target = if n == 1000 { "< 1 %" } else { "-" };
    // Both daemons over the same three 10 s windows: the same conditions for each; with
    // 1,000, the bare loops of `beat_loops` too, the floor of what they do.
    let beats = (n == 1000).then(beat_loops);
    let seen: Vec<Vec<(f64, u64)>> = match &beats {
        Some((a, b, _)) => idle_windows([s1.pid(), s2.pid(), a.pid(), b.pid()], 5, 10).to_vec(),
        None => idle_windows([s1.pid(), s2.pid()], 3, 10).to_vec(),
    };
    let mut cells: Vec<String> = seen.iter().map(|v| usage_cell(v)).collect();
    if !steady {
        for cell in &mut cells[..2] {
            cell.push_str(STILL_LEARNING);
        }
    }
    let mut cells = cells.into_iter();
    for node in ["holder (s1)", "backup (s2)"] {
        rows.push(Row { what: what(node), result: cells.next().unwrap_or_default(), target: target.into() });
    }
    for who in ["s1, on the tick", "s2, 0.5 ms after"] {
        if let Some(cell) = cells.next() {
            rows.push(Row {
                what: format!(
                    "floor, same windows: a bare loop sending a datagram every 10 ms, reading the peer's: {who}"
                ),
                result: cell,
                target: "-".into(),
            });
        }
    }
    // The machine's load moves every number above together from one window to the next;
    // the difference within each window is what vipad itself adds.
    if seen.len() == 4 {
        for (node, k) in [("holder (s1)", 0), ("backup (s2)", 1)] {
            rows.push(Row {
                what: format!("{n} DVIPAs, 10 ms heartbeats: {node} vipad above its floor, window by window"),
                result: above_cell(&seen[k], &seen[k + 2]),
                target: "-".into(),
            });
        }
    }
    drop(beats);
    if n == 1000 {
        // What one datagram out and one in every 10 ms costs on this machine at the least.
        let mut cmd = env.host(2).command("ping");
        cmd.args(["-q", "-i", "0.01", "-w", "40", "198.18.1.11"]).stdout(std::process::Stdio::null());
        let ping = env.host(2).spawn(cmd);
        std::thread::sleep(Duration::from_secs(1));
        let [floor] = idle_usage_of([ping.pid()], 3, 10);
        rows.push(Row {
            what: "floor on this machine: ping -i 0.01 to s1, same LAN, 3 × 10 s".into(),
            result: floor,
            target: "-".into(),
        });
    }
    rows.push(Row {
        what: format!("{n} DVIPAs moved in one takeover: kill to all on the backup (10 ms heartbeats, dead after 10)"),
        result: takeover_cell(&env, &mut s1, Duration::from_secs(60), || count(2) > n),
        target: if n == 10_000 { "≤ 500 ms".into() } else { "-".into() },
    });
}

/// IPv6 DVIPAs are taken by their local routes at once, and vipad answers neighbour
/// solicitations for them until their addresses follow: each address the kernel adds
/// costs it a walk of the NIC's multicast groups (one solicited-node group per address),
/// so adding them all takes time that grows with the square of `n`. Rows: every route on
/// the backup; the last DVIPA answering a client that never knew it (its solicitation
/// answered by vipad, its ping taken by the route); every address on the NIC.
fn dvipa_scale_v6(n: usize, rows: &mut Vec<Row>) {
    let (env, mut s1, _s2) = owner_and_backup(n, true);
    let routes = |k: usize| env.host(k).vipa_local_routes("en1", true).len();
    // (Every IPv6 address of `dvipa_address` is in this prefix.)
    let addresses = |k: usize| env.host(k).addresses_in("en1", "2001:db8:1::1:0:0/96").len();
    let what = |m: &str| format!("{n} IPv6 DVIPAs moved in one takeover: kill to {m} (10 ms heartbeats)");
    let start = Instant::now();
    if wait_for(Duration::from_secs(600), || (routes(1) >= n && addresses(1) >= n).then_some(())).is_none() {
        rows.push(Row { what: what("all on the backup"), result: "s1 never held them all".into(), target: "-".into() });
        return;
    }
    eprintln!("s1 holds {n} IPv6 DVIPAs as addresses {:.1} s after it started", start.elapsed().as_secs_f64());
    settle_idle(&env, 2);
    let last = dvipa_address(n - 1, true);
    // Frames lost on the way from s2 to the client (a virtual link drops what its peer's
    // receive ring has no room for, counted as the sender's): an answer among them costs
    // the client a retransmission, a second later.
    let dropped_tx = |ns: &vipa_testbed::Netns, dev: &str| {
        ns.ip_json(&format!("-s link show dev {dev}"))[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
    };
    let client_drops = || dropped_tx(env.host(2), "en1") + dropped_tx(&env.lan, "cl-p");
    let drops_before = client_drops();
    let cut = Instant::now();
    let result = takeover_cell(&env, &mut s1, Duration::from_secs(300), || routes(2) >= n);
    let target = if n == 10_000 { "≤ 500 ms" } else { "-" };
    rows.push(Row { what: what("every route on the backup"), result, target: target.into() });
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let reached = wait_for(Duration::from_secs(60), || {
        env.client.try_sh(&format!("ping -6 -c1 -W0.2 {last}")).is_ok().then(|| cut.elapsed())
    });
    let before_address = env.host(2).addresses_in("en1", &format!("{last}/128")).is_empty();
    // How many solicitations vipad had answered by then (a slow row: was the client's
    // first one answered?).
    let status = String::from_utf8_lossy(&env.vipactl(2, &["status"]).stdout).into_owned();
    let answered = status
        .lines()
        .find(|l| l.starts_with("answers  "))
        .and_then(|l| l.split("; ").nth(1))
        .and_then(|l| l.split(" answered").next())
        .unwrap_or("none")
        .to_string();
    // (Counted over the first 2 s: the paced announcements of 10,000 take about 0.6 s.)
    std::thread::sleep((cut + Duration::from_secs(2)).saturating_duration_since(Instant::now()));
    let dropped = client_drops() - drops_before;
    rows.push(Row {
        what: what("the last one answering a client that never knew it"),
        result: reached.map_or("not within 60 s".into(), |d| {
            let when = if before_address { "before its address" } else { "after its address" };
            format!(
                "{} ({when}; {answered} answered; {dropped} frames dropped on the way from s2 to the client in 2 s)",
                ms(d)
            )
        }),
        target: target.into(),
    });
    let all = wait_for(Duration::from_secs(600), || (addresses(2) >= n).then(|| cut.elapsed()));
    rows.push(Row {
        what: what("every address on the NIC (the kernel answers from then on)"),
        result: all.map_or("not within 600 s".into(), ms),
        target: "-".into(),
    });
    // The owner comes back: it gives its stale copies up, s2 hands over (deleting its
    // addresses, which costs the kernel seconds), then s1 takes them.
    env.restore(1);
    // What a client sees of the first and the last DVIPA handed over (the addresses are
    // deleted in order).
    // (Into files: a pipe read only at the end would fill after some 750 replies and
    // stop the ping.)
    let pings: Vec<(vipa_testbed::Proc, std::path::PathBuf)> = [dvipa_address(0, true), last.clone()]
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let path = env.dir.join(format!("ping-{k}.txt"));
            let file = std::fs::File::create(&path).expect("ping output file");
            let mut cmd = env.client.command("ping");
            cmd.args(["-6", "-D", "-n", "-i", "0.01", "-w", "600", a]).stdout(file);
            (env.client.spawn(cmd), path)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let back = Instant::now();
    let _s1 = env.start_vipad(1);
    // Held by s1's decision (its stale routes went before it could claim) and in its kernel.
    let held = |k: usize, m: usize| {
        let status = env.vipactl(k, &["status"]);
        String::from_utf8_lossy(&status.stdout).contains(&format!(" {m}/{n} DVIPAs held here"))
    };
    let taken_back = wait_for(Duration::from_secs(600), || {
        (held(1, n) && held(2, 0) && routes(1) >= n && routes(2) == 0).then(|| back.elapsed())
    });
    // A slow pass is worth reading about: both logs are kept.
    if taken_back.is_none_or(|d| d > Duration::from_secs(3)) {
        for k in 1..=2 {
            let path = std::env::temp_dir().join(format!("vipa-bench-slow-takeback-s{k}.log"));
            if std::fs::write(&path, env.log(k)).is_ok() {
                eprintln!("slow takeback: s{k}'s log is kept in {}", path.display());
            }
        }
    }
    rows.push(Row {
        what: format!(
            "{n} IPv6 DVIPAs taken back (immediate): owner started again to all held by it, each by its route"
        ),
        result: taken_back.map_or("not within 600 s".into(), ms),
        target: "-".into(),
    });
    std::thread::sleep(Duration::from_secs(1));
    for (which, (mut ping, path)) in ["first", "last"].into_iter().zip(pings) {
        let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        ping.signal(libc::SIGINT);
        ping.wait_timeout(Duration::from_secs(5));
        let out = std::fs::read_to_string(&path).unwrap_or_default();
        rows.push(Row {
            what: format!(
                "{n} IPv6 DVIPAs taken back: longest the {which} one handed over went unanswered (ping every 10 ms)"
            ),
            result: longest_silence(&out, end).map_or("no replies".into(), |g| format!("{:.0} ms", g * 1e3)),
            target: "-".into(),
        });
    }
}

/// The longest time between two replies in the output of `ping -D`, or from the last reply
/// to `end` (Unix time, when the ping was stopped), in seconds; `None` without replies.
fn longest_silence(out: &str, end: f64) -> Option<f64> {
    let mut stamps: Vec<f64> = out
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    if stamps.is_empty() {
        return None;
    }
    stamps.push(end);
    stamps.windows(2).map(|w| w[1] - w[0]).reduce(f64::max)
}

/// The least a heartbeat at 10 ms costs: every 10 ms of the wall clock, `offset_us` after
/// the tick, reads what came (non-blocking, as vipad reads routine heartbeats) and sends one
/// datagram of a heartbeat's size to `peer`. Runs until killed.
fn beat(peer: std::net::SocketAddr, port: u16, offset_us: u64) {
    let sock = std::net::UdpSocket::bind(("0.0.0.0", port)).expect("bind");
    sock.set_nonblocking(true).expect("non-blocking");
    let (mut buf, datagram) = ([0u8; 2048], [0u8; 200]);
    let period = Duration::from_millis(10);
    loop {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let phase = Duration::from_nanos((wall.as_nanos() % period.as_nanos()) as u64);
        let offset = Duration::from_micros(offset_us);
        std::thread::sleep(if phase < offset { offset - phase } else { period - phase + offset });
        while sock.recv_from(&mut buf).is_ok() {}
        let _ = sock.send_to(&datagram, peer);
    }
}

/// The floor of the idle rows: two bare loops (`beat`) in s1 and s2 of a LAN of their own,
/// sending to each other, s1's on the 10 ms tick and s2's half a millisecond after (as a
/// backup keeps step with the holder), both at the priority of vipad's cluster thread
/// (nice -20); running (the
/// caller measures them beside the daemons, over the same windows). The first to wake
/// after 10 ms of quiet pays for cold caches; the second runs just after the kernel ran
/// the same path.
fn beat_loops() -> (vipa_testbed::Proc, vipa_testbed::Proc, ClusterEnv) {
    let env = ClusterEnv::build(Names::Unique, 2);
    env.thread_receive();
    let exe = std::env::current_exe().expect("own path");
    let start = |k: usize, peer: &str, offset_us: &str| {
        let mut cmd = env.host(k).command("nice");
        cmd.args(["-n", "-20"]).arg(&exe).args(["--beat", peer, "5998", offset_us]);
        env.host(k).spawn(cmd)
    };
    let (a, b) = (start(1, "198.18.1.12:5998", "0"), start(2, "198.18.1.11:5998", "500"));
    std::thread::sleep(Duration::from_secs(1));
    // (The loops end before their namespaces go.)
    (a, b, env)
}

/// Three nodes with majority quorum (the usual way to have one), s1 owning `n` DVIPAs, s2
/// and s3 backing them up: what each costs idle at 10 ms heartbeats. One death among
/// three leaves a majority, so no node wakes for another's heartbeats unless that one
/// holds something it backs up. With `multicast`, routine heartbeats go to a group (one
/// datagram an interval a node, not two).
fn dvipa_idle_three(n: usize, multicast: bool, rows: &mut Vec<Row>) {
    let env = ClusterEnv::build(Names::Unique, 3);
    let d = owned_by_s1(n, "s2 = 200, s3 = 100", false);
    let group = if multicast { "multicast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n" } else { "" };
    for k in 1..=3 {
        env.write_config(k, &format!("heartbeat_interval = \"10ms\"\nquorum = \"majority\"\n{group}"), &d);
    }
    let nodes: Vec<vipa_testbed::Proc> = (1..=3).map(|k| env.start_vipad(k)).collect();
    let how = if multicast { "majority, multicast" } else { "majority" };
    let what = |node: &str| format!("{n} DVIPAs at 10 ms heartbeats, 3 nodes, {how}: {node} vipad CPU idle, 3 × 10 s");
    let held = wait_for(Duration::from_secs(60), || (env.host(1).local_count("en1") > n).then_some(()));
    if held.is_none() {
        rows.push(Row { what: what("s1"), result: "s1 never held them all".into(), target: "-".into() });
        return;
    }
    let steady = settle_idle(&env, 3);
    let cells = idle_usage_of([nodes[0].pid(), nodes[1].pid(), nodes[2].pid()], 3, 10);
    for (cell, node) in cells.into_iter().zip(["s1 (holder, leader)", "s2 (backup)", "s3 (backup)"]) {
        let learning = if steady { "" } else { STILL_LEARNING };
        rows.push(Row { what: what(node), result: format!("{cell}{learning}"), target: "< 1 %".into() });
    }
}

/// A keepalived we started: the parent and the VRRP child it forks, both killed when this
/// drops (also on a panic), the child only if it is still the parent's.
struct Keepalived {
    parent: vipa_testbed::Proc,
    vrrp_pidfile: std::path::PathBuf,
}

impl Keepalived {
    /// Kills it outright, as a crash would: the VRRP child, then the parent.
    fn kill(&mut self) {
        let child = std::fs::read_to_string(&self.vrrp_pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok());
        // The pid file outlives a killed child: only a process whose parent is ours is it.
        let ppid = |pid: i32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<i32>().ok()
        };
        if let Some(pid) = child.filter(|&pid| ppid(pid) == Some(self.parent.pid())) {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        self.parent.kill();
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill();
    }
}

/// keepalived in host `k`: VRRPv3, the same address, priorities in the DVIPA's order.
fn start_keepalived(env: &ClusterEnv, k: usize, interval_ms: u64) -> Keepalived {
    let dir = env.dir.join(format!("ka{k}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("keepalived.conf");
    let priority = [0, 150, 100, 50][k];
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  router_id s{k}\n{rt}}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface en1\n  virtual_router_id 51\n  version 3\n  priority {priority}\n  advert_int {}\n  virtual_ipaddress {{\n    {DVIPA}/32\n  }}\n}}\n",
            interval_ms as f64 / 1000.0,
            // Real-time scheduling at short intervals, as vipad takes for itself.
            rt = if interval_ms <= 10 { "  vrrp_rt_priority 50\n" } else { "" }
        ),
    )
    .expect("conf");
    // Pid files of their own at each start: a killed keepalived's VRRP child can stay a
    // zombie (here nothing reaps orphans at once), and a new keepalived that finds its pid
    // in the file refuses to start ("daemon is already running"); that was why keepalived
    // often did not settle after a restart in earlier runs.
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (pidfile, vrrp_pidfile) = (dir.join(format!("k{n}.pid")), dir.join(format!("v{n}.pid")));
    let mut cmd = env.host(k).command("keepalived");
    cmd.args(["--dont-fork", "--vrrp", "--log-console", "--use-file"]).arg(&conf);
    cmd.arg(format!("--pid={}", pidfile.display())).arg(format!("--vrrp_pid={}", vrrp_pidfile.display()));
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    Keepalived { parent: env.host(k).spawn(cmd), vrrp_pidfile }
}

fn keepalived_outage(runs: usize, interval_ms: u64, rows: &mut Vec<Row>, medians: &mut Vec<(&str, u64, &str, f64)>) {
    let env = ClusterEnv::build(Names::Unique, 3);
    let mut procs: Vec<Keepalived> = (1..=3).map(|k| start_keepalived(&env, k, interval_ms)).collect();
    let _srv: Vec<_> = (1..=3).map(|k| serve_on(env.host(k), Some(DVIPA))).collect();
    // Generous, so that a slow settle skips no run.
    let settle = Duration::from_millis(interval_ms * 20 + 10_000);
    let (mut death, mut cut, mut stop, mut stop_lost) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        if !s1_ready(&env, settle) {
            continue;
        }
        death.extend(gap_during(&env, interval_ms, || {
            env.cut(1);
            procs[0].kill();
        }));
        env.host(1).drop_local(DVIPA);
        env.restore(1);
        procs[0] = start_keepalived(&env, 1, interval_ms);
        if !s1_ready(&env, settle) {
            continue;
        }
        cut.extend(gap_during(&env, interval_ms, || env.cut(1)));
        env.restore(1);
        if !s1_ready(&env, settle) {
            continue;
        }
        // Graceful stop: keepalived sends priority 0 and the backup takes over.
        if let Some((gap, lost)) = fine_during(&env, interval_ms, || procs[0].parent.signal(15)) {
            stop.push(gap);
            stop_lost.push(lost);
        }
        procs[0].parent.wait_timeout(Duration::from_secs(5));
        procs[0] = start_keepalived(&env, 1, interval_ms);
    }
    let cases = vec![
        ("holder host dies", death),
        ("holder's link is cut", cut),
        ("graceful stop, 200 µs probes, longest gap", stop),
        ("graceful stop, 200 µs probes, unanswered (lost × 200 µs)", stop_lost),
    ];
    let label = format!("keepalived, {interval_ms} ms adverts");
    outage_rows("keepalived", label, interval_ms, cases, |_| "(comparison)".into(), rows, medians);
}

/// A split brain healed: two nodes that both held the address while cut apart (vipa with
/// `quorum = "none"`; with `keepalived`, two VRRP masters) are joined again, after a
/// partition long enough for each one's neighbour entry for the other to lapse, as after
/// a switch reboots (made to lapse within seconds here, on both hosts alike: reachable for
/// 0.5-1.5 s after the last answer, checked 1 s on). How long two hosts still hold it
/// after healing; its median, in ms, is returned.
fn split_heal(runs: usize, interval_ms: u64, keepalived: Option<()>, rows: &mut Vec<Row>) -> Option<f64> {
    let env = ClusterEnv::build(Names::Unique, 2);
    for k in 1..=2 {
        env.host(k).sh(
            "sysctl -qw net.ipv4.neigh.en1.base_reachable_time_ms=1000 net.ipv4.neigh.en1.delay_first_probe_time=1",
        );
    }
    let (_vipads, _keepaliveds) = match keepalived {
        Some(()) => (Vec::new(), (1..=2).map(|k| start_keepalived(&env, k, interval_ms)).collect::<Vec<_>>()),
        None => {
            let dvipa = vipa_testbed::lab::owned_by_s1(DVIPA, "s2 = 200", "immediate");
            let cluster = format!("heartbeat_interval = \"{interval_ms}ms\"\nquorum = \"none\"\n");
            for k in 1..=2 {
                env.write_config(k, &cluster, &dvipa);
            }
            ((1..=2).map(|k| env.start_vipad(k)).collect::<Vec<_>>(), Vec::new())
        }
    };
    let settle = Duration::from_millis(interval_ms * 20 + 10_000);
    let mut took = Vec::new();
    for _ in 0..runs {
        if wait_for(settle, || (env.holders(DVIPA) == vec![1]).then_some(())).is_none() {
            continue;
        }
        env.partition(1);
        let both = wait_for(settle, || (env.holders(DVIPA) == vec![1, 2]).then_some(()));
        if both.is_some() {
            // The entries lapse: a second reachable at most, a second's delay, three
            // probes a second apart.
            std::thread::sleep(Duration::from_secs(6));
            pause_before_fault(interval_ms);
            let t = Instant::now();
            env.heal();
            let one = wait_for(Duration::from_secs(20), || (env.holders(DVIPA).len() == 1).then(|| t.elapsed()));
            took.extend(one.map(|d| d.as_secs_f64() * 1e3));
        } else {
            env.heal();
        }
    }
    let who = match keepalived {
        Some(()) => format!("keepalived, {interval_ms} ms adverts: two masters"),
        None => format!("DVIPA, 2 nodes, quorum none, {interval_ms} ms heartbeats: two holders"),
    };
    rows.push(Row {
        what: format!("{who} after a split brain healed (median of {})", took.len()),
        result: if took.is_empty() { "n/a".into() } else { median_cell(&took, 1) },
        target: "-".into(),
    });
    (!took.is_empty()).then(|| median(took))
}

/// The longest gap of a stream nothing disturbs: the measurement's own floor on this
/// machine (scheduling of the sender, the echo server and the simulated LAN).
fn baseline(runs: usize, rows: &mut Vec<Row>) {
    let env = SampleEnv::build(Names::Unique);
    env.write_config(SEED_CONFIG);
    let _vipad = env.start_vipad();
    let _srv = env.serve(&env.host);
    for every in [1000u64, 200] {
        let gaps: Vec<f64> = (0..runs)
            .filter_map(|_| vipa_testbed::lab::stream_every(&env.client, VIPA, 1500, every).try_report().ok())
            .map(|r| r.udp.max_gap_ms)
            .collect();
        rows.push(Row {
            what: format!("baseline: undisturbed stream, probes every {every} µs, longest gap (median)"),
            result: median_cell(&gaps, 1),
            target: "(floor)".into(),
        });
    }
}
