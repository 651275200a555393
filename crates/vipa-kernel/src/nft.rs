//! The nftables `arp` filter that decides which IPMP member answers ARP for each IPv4
//! data address. vipa owns one table, `arp vipa`, and replaces it whole and atomically
//! with `nft -f -` on every change.

use std::io::Write;
use std::process::{Command, Stdio};

use vipa_core::plan::ArpFilter;

use crate::KernelError;

const TABLE: &str = "vipa";

/// Whether nftables can be used here: the `nft` tool runs and the kernel accepts an
/// `arp` table (created and deleted again).
pub fn available() -> Result<(), String> {
    run(&format!("add table arp {TABLE}_probe\ndelete table arp {TABLE}_probe\n"))
        .map_err(|e| format!("nftables is not usable ({e}); IPMP members will all answer ARP for every data address"))
}

fn run(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The nft script that makes the kernel's table equal to `filter` (an empty filter
/// removes the table).
pub fn script(filter: &ArpFilter) -> String {
    // `add` then `delete` removes an existing table without failing on a missing one.
    let mut s = format!("add table arp {TABLE}\ndelete table arp {TABLE}\n");
    if filter.is_empty() {
        return s;
    }
    s.push_str(&format!(
        "table arp {TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n"
    ));
    for (nic, addrs) in &filter.drop {
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        s.push_str(&format!(
            "    iifname \"{nic}\" arp operation request arp daddr ip {{ {} }} drop\n",
            list.join(", ")
        ));
    }
    s.push_str("  }\n}\n");
    s
}

pub fn apply(filter: &ArpFilter) -> Result<(), KernelError> {
    run(&script(filter)).map_err(KernelError::Nft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_drops_what_each_member_must_not_answer() {
        let mut f = ArpFilter::default();
        f.drop.insert("en2".into(), vec!["198.18.1.5".parse().unwrap(), "198.18.1.6".parse().unwrap()]);
        let s = script(&f);
        assert!(s.starts_with("add table arp vipa\ndelete table arp vipa\ntable arp vipa {"));
        assert!(s.contains("iifname \"en2\" arp operation request arp daddr ip { 198.18.1.5, 198.18.1.6 } drop"));
        assert_eq!(script(&ArpFilter::default()), "add table arp vipa\ndelete table arp vipa\n");
    }
}
