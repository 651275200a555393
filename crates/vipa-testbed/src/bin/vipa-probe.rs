//! vipa-probe: traffic for the testbed.
//!
//! ```text
//! vipa-probe serve --port P [--listen ADDR]
//! vipa-probe whoami --target ADDR:P [--bind ADDR]
//! vipa-probe stream --target ADDR:P --duration-ms N [--interval-ms N | --interval-us N]   (JSON report)
//! vipa-probe forge --target ADDR:P [--node NAME] [--count N] [--leaving]   (heartbeats with a wrong key)
//! vipa-probe replay --target ADDR:P --pcap FILE                (UDP payloads of a capture, again)
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use vipa_testbed::probe;

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = || -> SocketAddr {
        flag(&args, "--target").and_then(|t| t.parse().ok()).expect("--target ADDR:PORT ([v6]:port for IPv6)")
    };
    let result = match args.first().map(String::as_str) {
        Some("serve") => {
            let port = flag(&args, "--port").and_then(|p| p.parse().ok()).expect("--port P");
            let listen = flag(&args, "--listen").map(|a| a.parse().expect("--listen ADDR"));
            probe::serve(port, listen).map(|_| String::new())
        }
        Some("whoami") => {
            let bind = flag(&args, "--bind").map(|b| b.parse().expect("--bind ADDR"));
            probe::whoami(target(), bind)
        }
        Some("stream") => {
            let ms = flag(&args, "--duration-ms").and_then(|p| p.parse().ok()).unwrap_or(1000);
            let every_us: u64 = flag(&args, "--interval-us")
                .and_then(|p| p.parse().ok())
                .or_else(|| flag(&args, "--interval-ms").and_then(|p| p.parse::<u64>().ok()).map(|m| m * 1000))
                .unwrap_or(1000);
            probe::stream(target(), Duration::from_millis(ms), Duration::from_micros(every_us))
                .map(|r| serde_json::to_string(&r).expect("report"))
        }
        Some("forge") => {
            // Heartbeats in the name of a node, claiming every DVIPA (or saying it leaves the
            // cluster), signed with a wrong key.
            let node = flag(&args, "--node").unwrap_or("s1");
            let count: u32 = flag(&args, "--count").and_then(|c| c.parse().ok()).unwrap_or(50);
            forge(target(), node, count, args.iter().any(|a| a == "--leaving"))
        }
        Some("replay") => {
            let pcap = flag(&args, "--pcap").expect("--pcap FILE");
            replay(target(), pcap)
        }
        _ => {
            eprintln!("usage: vipa-probe serve|whoami|stream|forge|replay (see the source's header)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vipa-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn forge(to: SocketAddr, node: &str, count: u32, leaving: bool) -> std::io::Result<String> {
    use vipa_wire::cluster::{set_bit, Heartbeat, FLAG_LEAVING};
    let sock = std::net::UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    let mut h = Heartbeat {
        incarnation: u64::MAX / 2,
        node: node.to_string(),
        count: 64,
        interval_us: 10_000,
        flags: if leaving { FLAG_LEAVING } else { 0 },
        ..Default::default()
    };
    for i in 0..64 {
        set_bit(&mut h.held, i, true);
    }
    for seq in 0..count {
        h.seq = u64::from(seq) + 1_000_000;
        sock.send_to(&h.emit(&vipa_wire::cluster::Key::new(b"not the cluster key, but 32 bytes!")), to)?;
        // Garbage too, of every length below `count`.
        let junk: Vec<u8> =
            (0..(seq % 200) as usize).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seq as u8)).collect();
        sock.send_to(&junk, to)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(format!("sent {count} forged heartbeats and {count} junk datagrams"))
}

/// Sends again the UDP payloads of an Ethernet/IPv4 pcap file.
fn replay(to: SocketAddr, path: &str) -> std::io::Result<String> {
    let data = std::fs::read(path)?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut at = 24;
    let mut sent = 0;
    while at + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let frame = &data[at + 16..(at + 16 + caplen).min(data.len())];
        at += 16 + caplen;
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        if frame[14 + 9] != 17 || frame.len() < 14 + ihl + 8 {
            continue;
        }
        let payload = &frame[14 + ihl + 8..];
        sock.send_to(payload, to)?;
        sent += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(format!("replayed {sent} datagrams"))
}
