//! Text views, modelled on the seeds' own commands.

use std::fmt::Write;
use std::net::IpAddr;

use vipa_api::{ApplyReport, ClusterView, DvipaView, StatusView, VipaView};

/// AIX interface flags shown by `ifconfig vi0`.
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
const IFF_64BIT: u32 = 0x0400_0000;
const IFF_VIPA: u32 = 0x8000_0000;

/// `ifconfig vi0`:
/// ```text
/// vi0: flags=84000041<UP,RUNNING,64BIT>
///         inet 198.18.6.1 netmask 0xffffffff
///         iflist : en1 en5
/// ```
pub fn ifconfig(v: &VipaView) -> String {
    let mut flags = IFF_VIPA | IFF_64BIT;
    let mut names = Vec::new();
    if v.up {
        flags |= IFF_UP;
        names.push("UP");
    }
    if v.running {
        flags |= IFF_RUNNING;
        names.push("RUNNING");
    }
    names.push("64BIT");
    let mut out = format!("{}: flags={flags:x}<{}>\n", v.name, names.join(","));
    for a in &v.addresses {
        let inactive = if a.active { "" } else { " (not configured)" };
        match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => {
                let mask = if a.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(a.prefix_len)) };
                let _ = writeln!(out, "        inet {} netmask 0x{mask:08x}{inactive}", a.address);
            }
            _ => {
                let _ = writeln!(out, "        inet6 {}/{}{inactive}", a.address, a.prefix_len);
            }
        }
    }
    let iflist: Vec<String> = v
        .interfaces
        .iter()
        .map(|i| match (i.present, i.up, i.carrier) {
            (false, _, _) => format!("{}(absent)", i.name),
            (true, false, _) => format!("{}(down)", i.name),
            (true, true, false) => format!("{}(no-carrier)", i.name),
            _ => i.name.clone(),
        })
        .collect();
    let _ = writeln!(out, "        iflist : {}", iflist.join(" "));
    out
}

/// `lsattr -El vi0`: attribute, value, description, user-settable.
pub fn lsattr(v: &VipaView) -> String {
    let v4: Vec<&str> = v.addresses.iter().filter(|a| !a.address.contains(':')).map(|a| a.address.as_str()).collect();
    let v6: Vec<&str> = v.addresses.iter().filter(|a| a.address.contains(':')).map(|a| a.address.as_str()).collect();
    let ifnames: Vec<&str> = v.interfaces.iter().map(|i| i.name.as_str()).collect();
    let rows: [(&str, String, &str); 8] = [
        ("netaddr", v4.first().map_or(String::new(), |s| s.to_string()), "Internet Address"),
        ("state", if v.up { "up" } else { "down" }.to_string(), "Current Interface Status"),
        ("netmask", if v4.is_empty() { String::new() } else { "255.255.255.255".into() }, "Subnet Mask"),
        ("netaddr6", v6.first().map_or(String::new(), |s| s.to_string()), "IPv6 Internet Address"),
        (
            "alias4",
            v4.iter().skip(1).map(|a| format!("{a},255.255.255.255")).collect::<Vec<_>>().join(" "),
            "IPv4 Alias including Subnet Mask",
        ),
        (
            "alias6",
            v6.iter().skip(1).map(|a| format!("{a}/128")).collect::<Vec<_>>().join(" "),
            "IPv6 Alias including Prefix Length",
        ),
        (
            "prefixlen",
            if v6.is_empty() { String::new() } else { "128".into() },
            "Prefix Length for IPv6 Internet Address",
        ),
        ("interface_names", ifnames.join(","), "Interfaces using the Virtual Address"),
    ];
    let width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(14);
    let mut out = String::new();
    for (attr, value, desc) in rows {
        let _ = writeln!(out, "{attr:<16} {value:<width$} {desc:<43} True");
    }
    if !v.routes.is_empty() {
        let _ = writeln!(out, "\nRoutes carrying the VIPA as preferred source (restored to \"was\" when it leaves):");
        for r in &v.routes {
            let via = if r.via.is_empty() { String::new() } else { format!(" via {}", r.via.join(",")) };
            let src = r.prefsrc.as_deref().unwrap_or("-");
            let was = r.original.as_deref().unwrap_or("none");
            let _ = writeln!(out, "  {}{via} dev {} src {src} (was {was})", r.route, r.dev.join(","));
        }
    }
    out
}

pub fn status(s: &StatusView) -> String {
    let mut out = String::new();
    let up = s.uptime_secs;
    let _ = writeln!(
        out,
        "vipad {}  node {}  pid {}  up {}h{:02}m{:02}s",
        s.version,
        s.node,
        s.pid,
        up / 3600,
        up / 60 % 60,
        up % 60
    );
    let _ = writeln!(out, "config   {}", s.config_path);
    let _ = writeln!(out, "socket   {}", s.socket_path);
    let _ = writeln!(out, "state    {}", s.state_path);
    let _ = writeln!(out, "device   {} ({})", s.device_mode, s.device_note);
    let _ = writeln!(
        out,
        "VIPAs    {}: {}/{} addresses active, {} routes carry a VIPA source, {} sysctls set",
        s.vipas, s.addresses_active, s.addresses_total, s.routes_sourced, s.sysctls_set
    );
    let _ = writeln!(
        out,
        "kernel   {} events seen, {} resyncs, {} changes applied, {} failed",
        s.kernel_events, s.resyncs, s.changes_applied, s.changes_failed
    );
    let _ = writeln!(
        out,
        "reloads  {}{}",
        s.reloads,
        s.last_reload_error.as_ref().map_or(String::new(), |e| format!(", last one refused:\n{e}"))
    );
    for g in &s.groups {
        let active = if g.active.is_empty() { "-".to_string() } else { g.active.join(" ") };
        let _ = writeln!(out, "IPMP     {} {}: active {active}", g.group, g.state);
    }
    if let Some(c) = &s.cluster {
        let _ = writeln!(
            out,
            "cluster  node {}, quorum {}, {}/{} members alive, {}/{} DVIPAs held here{}",
            c.node,
            if c.has_quorum { "yes" } else { "NO" },
            c.alive,
            c.members,
            c.held,
            c.dvipas,
            if c.listening { ", listening" } else { "" }
        );
    }
    if let Some(a) = &s.answering {
        let now = if a.nics.is_empty() {
            "none now".to_string()
        } else {
            a.nics.iter().map(|(nic, n)| format!("{n} on {nic}")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            out,
            "answers  neighbour solicitations for IPv6 DVIPAs whose address is still to come: {now}; {} answered, {} invalid dropped",
            a.answered, a.invalid
        );
    }
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

pub fn applied(r: &ApplyReport) -> String {
    let mut out = String::new();
    if r.config_written {
        out.push_str("configuration file updated\n");
    }
    if r.changes.is_empty() {
        out.push_str("no kernel changes needed\n");
    }
    for c in &r.changes {
        let _ = writeln!(out, "changed: {c}");
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// `vipactl cluster`: the membership as this node sees it.
pub fn cluster(c: &ClusterView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} (incarnation {})  quorum {} ({}){}  heartbeat {} ms, dead when probes go unanswered or after {} missed",
        c.node,
        c.incarnation,
        if c.has_quorum { "yes" } else { "NO" },
        c.quorum_rule,
        if c.listening { "  listening before claiming" } else { "" },
        c.heartbeat_interval_ms,
        c.dead_after
    );
    if !c.heartbeats.is_empty() {
        let _ = writeln!(out, "heartbeats {}", c.heartbeats);
    }
    let _ = writeln!(
        out,
        "{:<16} {:<10} {:<40} {:>12} {:>9} {:>10} CONFIG",
        "NODE", "STATE", "ADDRESS", "LAST HEARD", "RTT", "CONFIRM"
    );
    for m in &c.members {
        let heard = m.last_heard_ms.map_or("-".to_string(), |ms| format!("{ms} ms ago"));
        let rtt = m.rtt_us.map_or("-".to_string(), |us| format!("{:.2} ms", us as f64 / 1e3));
        // An asterisk: the start value, until the peer's punctuality is known.
        let confirm = m.confirm_us.map_or("-".to_string(), |us| {
            format!("{:.1} ms{}", us as f64 / 1e3, if m.confirm_learned { "" } else { "*" })
        });
        let cfg = if m.state == "self" {
            ""
        } else if m.earlier_list {
            // (Read DVIPA by DVIPA in a list this node had before its reload.)
            "earlier"
        } else if m.later_list {
            "later"
        } else if m.same_config {
            "same"
        } else {
            "DIFFERS"
        };
        let _ = writeln!(
            out,
            "{:<16} {:<10} {:<40} {:>12} {:>9} {:>10} {}",
            m.node,
            m.state,
            m.address.as_deref().unwrap_or("-"),
            heard,
            rtt,
            confirm,
            cfg
        );
    }
    let dropped: Vec<String> = c.dropped.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect();
    if !dropped.is_empty() {
        let _ = writeln!(out, "dropped heartbeats: {}", dropped.join(", "));
    }
    out
}

/// `vipactl dvipa`: netstat VIPADYN.
pub fn vipadyn(d: &[DvipaView]) -> String {
    let mut out = String::from("Dynamic VIPA:\n");
    let _ = writeln!(
        out,
        "  {:<40} {:<12} {:<11} {:<6} {:<16} {:>8} Takeback",
        "IP Address", "Status", "Origin", "Rank", "Holder", "Since"
    );
    for v in d {
        let _ = writeln!(
            out,
            "  {:<40} {:<12} {:<11} {:<6} {:<16} {:>7}s {}",
            v.address,
            v.status,
            v.origin,
            v.rank.map_or("-".to_string(), |r| format!("{r:03}")),
            v.holder.as_deref().unwrap_or("-"),
            v.since_secs,
            v.takeback
        );
    }
    out
}
