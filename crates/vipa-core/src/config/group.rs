//! `[[group]]` blocks: IPMP groups (seed-systems.md §4.2).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{valid_ifname, Ctx, MAX_IFNAME};
use crate::ipmp::GroupConfig;
use crate::model::same_prefix;

/// in.mpathd's FAILURE_DETECTION_TIME default.
pub const DEFAULT_FDT: Duration = Duration::from_secs(10);
/// in.mpathd's minimum failure detection time.
pub const MIN_FDT: Duration = Duration::from_millis(100);
/// Longest failure detection time accepted (one hour), against typos.
pub const MAX_FDT: Duration = Duration::from_secs(3600);
/// Gratuitous ARPs / unsolicited NAs per move, each form; keepalived sends 5.
pub const DEFAULT_ANNOUNCE_COUNT: u32 = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    name: Option<Spanned<String>>,
    interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    standby: Option<Spanned<Vec<Spanned<String>>>>,
    data_addresses: Option<Spanned<Vec<Spanned<String>>>>,
    test_addresses: Option<Spanned<BTreeMap<String, Spanned<OneOrMany>>>>,
    failure_detection_time: Option<Spanned<String>>,
    failback: Option<Spanned<bool>>,
    probe_targets: Option<Spanned<Vec<Spanned<String>>>>,
    announce_count: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Parses `"10s"`, `"100ms"`, `"1.5s"`, `"2m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write a number and a unit, such as \"10s\" or \"500ms\""))?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        _ => return Err(format!("{text:?} has no known unit: use ms, s or m, such as \"10s\" or \"500ms\"")),
    };
    // (A number too big for a duration is refused here; each caller says what range it
    // allows.)
    Duration::try_from_secs_f64(n * scale).map_err(|_| format!("{text:?} is far too long"))
}

/// Parses `addr/len`.
fn parse_prefixed(text: &str) -> Result<(IpAddr, u8), String> {
    let Some((a, l)) = text.split_once('/') else {
        return Err(format!(
            "{text:?} has no prefix length: write the address with its subnet, such as \"198.18.1.5/24\""
        ));
    };
    let addr: IpAddr = a.parse().map_err(|_| {
        format!("{text:?} is not an address with a prefix, such as \"198.18.1.5/24\" or \"2001:db8:1::5/64\"")
    })?;
    let max = crate::model::host_prefix_len(addr);
    let len: u8 = l
        .parse()
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?;
    Ok((addr, len))
}

fn strings(list: &Option<Spanned<Vec<Spanned<String>>>>) -> Vec<(String, usize)> {
    list.as_ref()
        .map(|l| l.get_ref().iter().map(|s| (s.get_ref().clone(), s.span().start)).collect())
        .unwrap_or_default()
}

pub(crate) fn parse_groups(
    cx: &mut Ctx,
    raw: &[Spanned<RawGroup>],
    addrs: &mut BTreeMap<IpAddr, String>,
    vipa_nics: &BTreeMap<String, String>,
) -> Vec<GroupConfig> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    let mut members: BTreeMap<String, String> = BTreeMap::new();
    let mut tests_seen: BTreeSet<IpAddr> = BTreeSet::new();
    for (i, block) in raw.iter().enumerate() {
        let start = block.span().start;
        let g = block.get_ref();
        let key = |k: &str| format!("group[{i}].{k}");
        let Some(name) = &g.name else {
            cx.err(start, format!("group[{i}]"), "missing key `name`: every [[group]] needs a name, such as \"prod\"");
            continue;
        };
        let gname = name.get_ref().clone();
        let name_ok = !gname.is_empty()
            && gname.len() <= MAX_IFNAME
            && gname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            cx.err(
                name.span().start,
                key("name"),
                format!("{gname:?} is not a valid group name: use 1 to {MAX_IFNAME} letters, digits, '-' or '_'"),
            );
        } else if !names.insert(gname.clone()) {
            cx.err(
                name.span().start,
                key("name"),
                format!("group {gname:?} is defined twice: group names must be unique"),
            );
        }

        let mut interfaces = Vec::new();
        let list = strings(&g.interfaces);
        if list.is_empty() {
            let at = g.interfaces.as_ref().map_or(start, |l| l.span().start);
            cx.err(
                at,
                key("interfaces"),
                format!("group {gname:?} has no interfaces: list the NICs on its link, such as [\"en1\", \"en2\"]"),
            );
        }
        for (j, (nic, at)) in list.into_iter().enumerate() {
            let k = format!("group[{i}].interfaces[{j}]");
            if !valid_ifname(&nic) || nic == "lo" {
                cx.err(
                    at,
                    k,
                    format!(
                        "{nic:?} is not a usable interface name: use the name of a NIC, 1 to {MAX_IFNAME} characters"
                    ),
                );
            } else if interfaces.contains(&nic) {
                cx.err(at, k, format!("{nic:?} is listed twice in this group"));
            } else if let Some(other) = members.get(&nic) {
                cx.err(
                    at,
                    k,
                    format!("interface {nic:?} is already in group {other:?}: a NIC belongs to one group only"),
                );
            } else if let Some(v) = vipa_nics.get(&nic) {
                cx.err(at, k, format!("interface {nic:?} is a source interface of VIPA {v:?}: a NIC in a group carries the group's data addresses, so it cannot also be a VIPA's source interface"));
            } else {
                members.insert(nic.clone(), gname.clone());
                interfaces.push(nic);
            }
        }

        let mut standby = Vec::new();
        for (j, (nic, at)) in strings(&g.standby).into_iter().enumerate() {
            let k = format!("group[{i}].standby[{j}]");
            if !interfaces.contains(&nic) {
                cx.err(at, k, format!("{nic:?} is not one of this group's interfaces: a standby NIC must be listed in `interfaces` too"));
            } else if interfaces.len() == 1 {
                cx.err(at, k, format!("{nic:?} is the group's only interface and cannot be standby: a standby NIC is used only when another fails"));
            } else {
                standby.push(nic);
            }
        }

        let mut data_addresses = Vec::new();
        let list = strings(&g.data_addresses);
        if list.is_empty() {
            let at = g.data_addresses.as_ref().map_or(start, |l| l.span().start);
            cx.err(
                at,
                key("data_addresses"),
                format!("group {gname:?} has no data_addresses: give at least one, such as [\"198.18.1.5/24\"]"),
            );
        }
        for (j, (text, at)) in list.into_iter().enumerate() {
            let k = format!("group[{i}].data_addresses[{j}]");
            match parse_prefixed(&text).and_then(|(a, l)| super::parse_host_address(&a.to_string()).map(|_| (a, l))) {
                Err(m) => cx.err(at, k, m),
                Ok((a, l)) => {
                    if let Some(other) = addrs.get(&a) {
                        cx.err(
                            at,
                            k,
                            format!("{a} is already used by {other:?}: an address belongs to one VIPA or group"),
                        );
                    } else {
                        addrs.insert(a, format!("group {gname}"));
                        data_addresses.push((a, l));
                    }
                }
            }
        }

        let mut test_addresses: BTreeMap<String, Vec<(IpAddr, u8)>> = BTreeMap::new();
        if let Some(t) = &g.test_addresses {
            for (nic, v) in t.get_ref() {
                let at = v.span().start;
                let k = format!("group[{i}].test_addresses.{nic}");
                if !interfaces.contains(nic) {
                    cx.err(
                        at,
                        k,
                        format!("{nic:?} is not one of this group's interfaces: test addresses belong to member NICs"),
                    );
                    continue;
                }
                let texts = match v.get_ref() {
                    OneOrMany::One(s) => vec![s.clone()],
                    OneOrMany::Many(l) => l.clone(),
                };
                for text in texts {
                    match parse_prefixed(&text) {
                        Err(m) => cx.err(at, k.clone(), m),
                        Ok((a, l)) => {
                            let link_local = matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local());
                            let in_subnet = data_addresses
                                .iter()
                                .any(|&(d, dl)| d.is_ipv4() == a.is_ipv4() && dl == l && same_prefix(d, a, l));
                            if !in_subnet && !link_local {
                                cx.err(at, k.clone(), format!("test address {text} is outside the subnet of {nic}: it must be in the same subnet (and prefix length) as one of the group's data addresses, where the probe targets are"));
                            } else if test_addresses
                                .get(nic)
                                .is_some_and(|l| l.iter().any(|(x, _)| x.is_ipv4() == a.is_ipv4()))
                            {
                                cx.err(at, k.clone(), format!("{nic} has two test addresses of one family: give at most one IPv4 and one IPv6"));
                            } else if !tests_seen.insert(a) || addrs.contains_key(&a) {
                                cx.err(at, k.clone(), format!("test address {a} is not unique: each NIC needs its own, distinct from every data address"));
                            } else {
                                test_addresses.entry(nic.clone()).or_default().push((a, l));
                            }
                        }
                    }
                }
            }
        }

        let failure_detection_time = match &g.failure_detection_time {
            None => DEFAULT_FDT,
            Some(s) => match parse_duration(s.get_ref()) {
                Err(m) => {
                    cx.err(s.span().start, key("failure_detection_time"), m);
                    DEFAULT_FDT
                }
                Ok(d) if d < MIN_FDT || d > MAX_FDT => {
                    cx.err(s.span().start, key("failure_detection_time"), format!("{:?} is out of range: the failure detection time is at least 100ms (in.mpathd's minimum) and at most 1h", s.get_ref()));
                    DEFAULT_FDT
                }
                Ok(d) => d,
            },
        };

        let mut probe_targets = Vec::new();
        for (j, (text, at)) in strings(&g.probe_targets).into_iter().enumerate() {
            let k = format!("group[{i}].probe_targets[{j}]");
            match text.parse::<IpAddr>() {
                Err(_) => cx.err(at, k, format!("{text:?} is not an IP address")),
                Ok(a) if !data_addresses.iter().any(|&(d, l)| same_prefix(d, a, l)) && !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()) => {
                    cx.err(at, k, format!("probe target {a} is not on the group's link: it must be inside the subnet of a data address"))
                }
                Ok(a) => probe_targets.push(a),
            }
        }

        let announce_count = match &g.announce_count {
            None => DEFAULT_ANNOUNCE_COUNT,
            Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                cx.err(
                    n.span().start,
                    key("announce_count"),
                    format!("{} is out of range: send each announcement 1 to 100 times", n.get_ref()),
                );
                DEFAULT_ANNOUNCE_COUNT
            }
        };

        out.push(GroupConfig {
            name: gname,
            interfaces,
            standby,
            data_addresses,
            test_addresses,
            failure_detection_time,
            failback: g.failback.as_ref().is_none_or(|b| *b.get_ref()),
            probe_targets,
            announce_count,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn errs(text: &str) -> Vec<String> {
        Config::parse("vipa.toml", text).unwrap_err().0.iter().map(|e| e.to_string()).collect()
    }

    const GOOD: &str = r#"
[[group]]
name = "prod"
interfaces = ["en1", "en2", "en3"]
standby = ["en3"]
data_addresses = ["198.18.1.5/24", "2001:db8:1::5/64"]
test_addresses = { en1 = "198.18.1.6/24", en2 = ["198.18.1.7/24", "fe80::7/64"] }
failure_detection_time = "1.5s"
failback = false
"#;

    #[test]
    fn a_full_group_parses() {
        let c = Config::parse("vipa.toml", GOOD).unwrap();
        let g = &c.groups[0];
        assert_eq!(g.interfaces, ["en1", "en2", "en3"]);
        assert_eq!(g.standby, ["en3"]);
        assert_eq!(g.failure_detection_time.as_millis(), 1500);
        assert!(!g.failback);
        assert_eq!(g.test_addresses["en2"].len(), 2);
        assert_eq!(g.announce_count, super::DEFAULT_ANNOUNCE_COUNT);
    }

    #[test]
    fn nic_in_two_groups() {
        let e = errs(&format!(
            "{GOOD}\n[[group]]\nname = \"b\"\ninterfaces = [\"en9\", \"en2\"]\ndata_addresses = [\"198.18.2.5/24\"]\n"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("group[1].interfaces[1]: interface \"en2\" is already in group \"prod\""), "{}", e[0]);
    }

    #[test]
    fn test_address_outside_the_subnet() {
        let e = errs(&GOOD.replace("en1 = \"198.18.1.6/24\"", "en1 = \"198.18.9.6/24\""));
        assert!(
            e[0].contains("group[0].test_addresses.en1: test address 198.18.9.6/24 is outside the subnet of en1"),
            "{e:?}"
        );
    }

    #[test]
    fn fdt_below_minimum() {
        let e = errs(&GOOD.replace("\"1.5s\"", "\"50ms\""));
        assert!(
            e[0].contains(
                "failure_detection_time: \"50ms\" is out of range: the failure detection time is at least 100ms"
            ),
            "{e:?}"
        );
        let e = errs(&GOOD.replace("\"1.5s\"", "\"soon\""));
        assert!(e[0].contains("is not a duration"), "{e:?}");
    }

    #[test]
    fn single_nic_standby() {
        let e = errs("[[group]]\nname = \"g\"\ninterfaces = [\"en1\"]\nstandby = [\"en1\"]\ndata_addresses = [\"198.18.1.5/24\"]\n");
        assert!(
            e[0].contains("group[0].standby[0]: \"en1\" is the group's only interface and cannot be standby"),
            "{e:?}"
        );
    }

    #[test]
    fn nic_of_a_vipa_and_a_group() {
        let e = errs(&format!(
            "[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.6.1\"]\nsource_interfaces = [\"en1\"]\n{GOOD}"
        ));
        assert!(e[0].contains("is a source interface of VIPA \"vi0\""), "{e:?}");
    }

    #[test]
    fn data_address_needs_a_prefix_and_is_unique() {
        let e = errs(&GOOD.replace("\"198.18.1.5/24\", ", "\"198.18.1.5\", "));
        assert!(e.iter().any(|e| e.contains("has no prefix length")), "{e:?}");
        let e = errs(&format!("[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.1.5\"]\n{GOOD}"));
        assert!(e[0].contains("198.18.1.5 is already used by \"vi0\""), "{e:?}");
    }
}
