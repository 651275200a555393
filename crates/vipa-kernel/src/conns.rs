//! Established TCP connections per local address, for when-idle takeback. Read from
//! `/proc/net/tcp` and `/proc/net/tcp6` of the daemon's network namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ESTABLISHED: &str = "01";

/// Parses the local address column (`0100007F:1F90`: the address as the kernel's u32
/// words in host order, then the port).
fn local_addr(field: &str) -> Option<IpAddr> {
    let (hex, _) = field.split_once(':')?;
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(hex, 16).ok()?.to_le_bytes()))),
        32 => {
            let mut b = [0u8; 16];
            for w in 0..4 {
                let word = u32::from_str_radix(&hex[w * 8..w * 8 + 8], 16).ok()?;
                b[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)).to_canonical())
        }
        _ => None,
    }
}

/// Counts established connections whose local address is one of `addrs`.
pub fn count(text: &str, addrs: &BTreeSet<IpAddr>, into: &mut BTreeMap<IpAddr, usize>) {
    for line in text.lines().skip(1) {
        // sl, local address, remote address, state.
        let mut f = line.split_whitespace().skip(1);
        let (Some(local), Some(_), Some(state)) = (f.next(), f.next(), f.next()) else { continue };
        if state != ESTABLISHED {
            continue;
        }
        if let Some(a) = local_addr(local) {
            if addrs.contains(&a) {
                *into.entry(a).or_default() += 1;
            }
        }
    }
}

pub fn established(addrs: &BTreeSet<IpAddr>) -> io::Result<BTreeMap<IpAddr, usize>> {
    let mut out = BTreeMap::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(path) {
            Ok(text) => count(&text, addrs, &mut out),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_established_by_local_address() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: C80112C6:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: C80112C6:1B58 320112C6:A0B2 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: 0B0112C6:9C40 320112C6:1B58 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        let mut m = BTreeMap::new();
        let a: IpAddr = "198.18.1.200".parse().unwrap();
        count(tcp, &BTreeSet::from([a]), &mut m);
        assert_eq!(m.get(&a), Some(&1), "the listener (0A) does not count");
        let v6 = "  sl  local_address rem_address st\n   0: B80D0120000000000000000005000000:1B58 B80D0120000000000000000064000000:D431 01 0\n";
        let b: IpAddr = "2001:db8::5".parse().unwrap();
        let mut m = BTreeMap::new();
        count(v6, &BTreeSet::from([b]), &mut m);
        assert_eq!(m.get(&b), Some(&1));
    }
}
