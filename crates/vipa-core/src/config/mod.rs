//! The configuration file: TOML text → raw, spanned structs → a validated [`Config`].
//!
//! Parse, don't validate: everything after [`Config::parse`] works with checked types.
//! Every error names the file, line, column and key, says what is wrong and what is
//! allowed. Checks that need the kernel's view (an address that is already a NIC's own,
//! an interface that does not exist yet) live in [`crate::check`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use toml::Spanned;

pub use crate::ipmp::GroupConfig;

mod cluster;
mod group;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[node] name`; `None` when the file has no `[node]` table (the daemon then uses
    /// the host name).
    pub node_name: Option<String>,
    pub vipas: Vec<VipaConfig>,
    /// `[[group]]` blocks: IPMP groups.
    pub groups: Vec<GroupConfig>,
    /// `[cluster]`: membership between vipad instances.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// `[[dvipa]]` blocks, sorted by address.
    pub dvipas: Vec<crate::cluster::DvipaConfig>,
}

/// One `[[vipa]]` block: AIX `vi0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipaConfig {
    pub name: String,
    /// Host addresses, IPv4 and/or IPv6, in the order written. The first of each family
    /// is the preferred source of routes out of `source_interfaces`.
    pub addresses: Vec<IpAddr>,
    /// AIX `interface_names` / `iflist`. Empty means: no source rewriting.
    pub source_interfaces: Vec<String>,
    /// Line of the block in the file, for messages about it later.
    pub line: usize,
    /// Line of each address, in the order of `addresses`.
    pub address_lines: Vec<usize>,
    /// Line of each interface, in the order of `source_interfaces`.
    pub interface_lines: Vec<usize>,
}

impl VipaConfig {
    /// The preferred source for routes of this family: the first address of it.
    pub fn source_for(&self, v6: bool) -> Option<IpAddr> {
        self.addresses.iter().copied().find(|a| a.is_ipv6() == v6)
    }
}

/// Where in which file something is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The key path, such as `vipa[1].addresses[0]`; empty for a syntax error.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// All errors found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: Option<Spanned<RawNode>>,
    #[serde(default)]
    vipa: Vec<Spanned<RawVipa>>,
    #[serde(default)]
    group: Vec<Spanned<group::RawGroup>>,
    cluster: Option<Spanned<cluster::RawCluster>>,
    #[serde(default)]
    dvipa: Vec<Spanned<cluster::RawDvipa>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVipa {
    name: Option<Spanned<String>>,
    addresses: Option<Spanned<Vec<Spanned<String>>>>,
    source_interfaces: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Whether `name` is usable as a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

pub(crate) struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    pub(crate) fn err(&mut self, offset: usize, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.line_col(offset);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }
}

impl Config {
    /// An empty configuration: no VIPAs. What the daemon runs with before a file exists.
    pub fn empty() -> Config {
        Config { node_name: None, vipas: Vec::new(), groups: Vec::new(), cluster: None, dvipas: Vec::new() }
    }

    /// Parses and validates `text`, read from `file` (used in messages only).
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
        let mut cx = Ctx { file, text, errors: Vec::new() };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let message = e.message().trim().to_string();
                let message = explain_serde(&message);
                cx.err(offset, "", message);
                return Err(ConfigErrors(cx.errors));
            }
        };

        let node_name = raw.node.as_ref().and_then(|node| {
            let node = node.get_ref();
            let name = node.name.as_ref()?;
            if !valid_node_name(name.get_ref()) {
                cx.err(
                    name.span().start,
                    "node.name",
                    format!(
                        "{:?} is not a valid node name: use 1 to 63 letters, digits, '-', '_' or '.'",
                        name.get_ref()
                    ),
                );
            }
            Some(name.get_ref().clone())
        });

        let mut vipas = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut addrs: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut nics: BTreeMap<String, String> = BTreeMap::new();
        for (i, block) in raw.vipa.iter().enumerate() {
            let start = block.span().start;
            let line = cx.line_col(start).0;
            let v = block.get_ref();
            let key = |k: &str| format!("vipa[{i}].{k}");

            let name = match &v.name {
                None => {
                    cx.err(
                        start,
                        format!("vipa[{i}]"),
                        "missing key `name`: every [[vipa]] needs a name, such as \"vi0\"",
                    );
                    continue;
                }
                Some(n) => n,
            };
            if !valid_ifname(name.get_ref()) {
                cx.err(
                    name.span().start,
                    key("name"),
                    format!(
                        "{:?} is not a valid VIPA name: it names a network device, so use 1 to {MAX_IFNAME} printable characters without '/', ':' or spaces",
                        name.get_ref()
                    ),
                );
            } else if let Some(first) = names.get(name.get_ref()) {
                cx.err(
                    name.span().start,
                    key("name"),
                    format!("VIPA {:?} is already defined at line {first}: VIPA names must be unique", name.get_ref()),
                );
            } else {
                names.insert(name.get_ref().clone(), line);
            }
            let vname = name.get_ref().clone();

            let mut addresses = Vec::new();
            let mut address_lines = Vec::new();
            match &v.addresses {
                None => cx.err(
                    start,
                    format!("vipa[{i}]"),
                    format!("VIPA {vname:?} has no `addresses`: give at least one IPv4 or IPv6 address, such as [\"198.18.6.1\", \"2001:db8:6::1\"]"),
                ),
                Some(list) if list.get_ref().is_empty() => cx.err(
                    list.span().start,
                    key("addresses"),
                    "the list is empty: give at least one IPv4 or IPv6 address",
                ),
                Some(list) => {
                    for (j, a) in list.get_ref().iter().enumerate() {
                        let k = format!("vipa[{i}].addresses[{j}]");
                        match parse_host_address(a.get_ref()) {
                            Err(msg) => cx.err(a.span().start, k, msg),
                            Ok(addr) => {
                                if let Some(other) = addrs.get(&addr) {
                                    cx.err(
                                        a.span().start,
                                        k,
                                        format!("{addr} is already an address of VIPA {other:?}: an address belongs to one VIPA"),
                                    );
                                } else {
                                    addrs.insert(addr, vname.clone());
                                    addresses.push(addr);
                                    address_lines.push(cx.line_col(a.span().start).0);
                                }
                            }
                        }
                    }
                }
            }

            let mut source_interfaces = Vec::new();
            let mut interface_lines = Vec::new();
            if let Some(list) = &v.source_interfaces {
                for (j, n) in list.get_ref().iter().enumerate() {
                    let k = format!("vipa[{i}].source_interfaces[{j}]");
                    let nic = n.get_ref();
                    if !valid_ifname(nic) {
                        cx.err(
                            n.span().start,
                            k,
                            format!("{nic:?} is not a valid interface name: use 1 to {MAX_IFNAME} printable characters without '/', ':' or spaces"),
                        );
                    } else if nic == "lo" {
                        cx.err(n.span().start, k, "\"lo\" cannot be a source interface: list the NICs that traffic leaves through, such as \"en1\"");
                    } else if source_interfaces.contains(nic) {
                        cx.err(n.span().start, k, format!("{nic:?} is listed twice in this VIPA"));
                    } else if let Some(other) = nics.get(nic) {
                        cx.err(
                            n.span().start,
                            k,
                            format!("interface {nic:?} is already a source interface of VIPA {other:?}: a NIC gives its routes one preferred source, so it can belong to one VIPA only"),
                        );
                    } else {
                        nics.insert(nic.clone(), vname.clone());
                        source_interfaces.push(nic.clone());
                        interface_lines.push(cx.line_col(n.span().start).0);
                    }
                }
            }
            vipas.push(VipaConfig { name: vname, addresses, source_interfaces, line, address_lines, interface_lines });
        }

        let groups = group::parse_groups(&mut cx, &raw.group, &mut addrs, &nics);
        let (cluster, mut dvipas) =
            cluster::parse_cluster(&mut cx, raw.cluster.as_ref(), &raw.dvipa, node_name.as_deref(), &mut addrs);
        dvipas.sort_by_key(|d| d.address);

        if cx.errors.is_empty() {
            Ok(Config { node_name, vipas, groups, cluster, dvipas })
        } else {
            cx.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(cx.errors))
        }
    }

    pub fn vipa(&self, name: &str) -> Option<&VipaConfig> {
        self.vipas.iter().find(|v| v.name == name)
    }
}

/// What a node name may be, for error messages.
pub(crate) const NODE_NAME_RULE: &str =
    "use 1 to 63 letters, digits, '-', '_' or '.' (the [node] name of one of the cluster's nodes)";

pub(crate) fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Parses a VIPA address: a bare address, or one written as `/32` or `/128`.
pub fn parse_host_address(text: &str) -> Result<IpAddr, String> {
    let (addr_text, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text.trim().parse().map_err(|_| {
        format!("{text:?} is not an IP address: write an IPv4 address such as \"198.18.6.1\" or an IPv6 address such as \"2001:db8:6::1\"")
    })?;
    if let Some(p) = prefix {
        let full = if addr.is_ipv4() { "32" } else { "128" };
        if p != full {
            return Err(format!(
                "{text:?} has prefix /{p}: a VIPA is a host address with no subnet, so write it bare or as /{full}"
            ));
        }
    }
    let bad = match addr {
        IpAddr::V4(a) => {
            if a.is_unspecified() || a.is_broadcast() {
                Some("the unspecified or broadcast address")
            } else if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if a.is_link_local() {
                Some("a link-local address")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if a.is_unspecified() {
                Some("the unspecified address")
            } else if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if a.is_unicast_link_local() {
                Some("a link-local address")
            } else if a.to_ipv4_mapped().is_some() {
                Some("an IPv4-mapped address")
            } else {
                None
            }
        }
    };
    match bad {
        Some(what) => Err(format!("{addr} is {what}: a VIPA must be a unicast address that other hosts can route to")),
        None => Ok(addr),
    }
}

/// Rewords serde's messages where they can say more about what is allowed.
fn explain_serde(message: &str) -> String {
    if message.starts_with("unknown field") {
        format!("{message}; remove or rename the key")
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        Config::parse("vipa.toml", text).unwrap_err().0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn seed_sample_parses() {
        let c = Config::parse(
            "vipa.toml",
            r#"
[node]
name = "s1"

[[vipa]]
name = "vi0"
addresses = ["198.18.6.1", "2001:db8:6::1/128"]
source_interfaces = ["en1", "en5"]
"#,
        )
        .unwrap();
        assert_eq!(c.node_name.as_deref(), Some("s1"));
        assert_eq!(c.vipas.len(), 1);
        let v = &c.vipas[0];
        assert_eq!(v.name, "vi0");
        assert_eq!(v.line, 5);
        assert_eq!(v.source_for(false), Some("198.18.6.1".parse().unwrap()));
        assert_eq!(v.source_for(true), Some("2001:db8:6::1".parse().unwrap()));
        assert_eq!(v.source_interfaces, ["en1", "en5"]);
    }

    #[test]
    fn empty_file_is_no_vipas() {
        assert_eq!(Config::parse("f", "").unwrap(), Config::empty());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = errs("[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.6.1\"]\ninterfaces = [\"en1\"]\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("vipa.toml:4:1: unknown field `interfaces`"), "{}", e[0]);
        assert!(e[0].contains("source_interfaces"), "says what is allowed: {}", e[0]);
    }

    #[test]
    fn bad_address_names_the_element() {
        let e = errs("[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.6.1\", \"198.18.6.300\"]\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("vipa.toml:3:28: vipa[0].addresses[1]: \"198.18.6.300\" is not an IP address"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn prefix_other_than_host_is_refused() {
        let e = errs("[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.6.1/24\"]\n");
        assert!(e[0].contains("has prefix /24") && e[0].contains("/32"), "{}", e[0]);
    }

    #[test]
    fn special_addresses_are_refused() {
        for a in ["127.0.0.1", "0.0.0.0", "224.0.0.1", "169.254.1.1", "::1", "fe80::1", "ff02::1", "::"] {
            let e = errs(&format!("[[vipa]]\nname = \"vi0\"\naddresses = [\"{a}\"]\n"));
            assert_eq!(e.len(), 1, "{a}");
            assert!(e[0].contains("must be a unicast address"), "{a}: {}", e[0]);
        }
    }

    #[test]
    fn nic_in_two_vipas_is_refused() {
        let e = errs(
            "[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.6.1\"]\nsource_interfaces = [\"en1\"]\n\
             [[vipa]]\nname = \"vi1\"\naddresses = [\"198.18.6.2\"]\nsource_interfaces = [\"en5\", \"en1\"]\n",
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("vipa.toml:8:29: vipa[1].source_interfaces[1]: interface \"en1\" is already a source interface of VIPA \"vi0\""), "{}", e[0]);
    }

    #[test]
    fn duplicate_names_and_addresses_are_refused() {
        let e = errs(
            "[[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.6.1\"]\n\
             [[vipa]]\nname = \"vi0\"\naddresses = [\"198.18.6.1\"]\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("vipa[1].name") && e[0].contains("already defined at line 1"), "{}", e[0]);
        assert!(e[1].contains("already an address of VIPA \"vi0\""), "{}", e[1]);
    }

    #[test]
    fn missing_addresses_and_name() {
        let e = errs("[[vipa]]\nname = \"vi0\"\n[[vipa]]\naddresses = [\"198.18.6.2\"]\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("has no `addresses`"), "{}", e[0]);
        assert!(e[1].contains("missing key `name`"), "{}", e[1]);
    }

    #[test]
    fn bad_names() {
        let e = errs(
            "[[vipa]]\nname = \"a/very/long/name\"\naddresses = [\"198.18.6.1\"]\nsource_interfaces = [\"lo\", \"en 1\"]\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("not a valid VIPA name"));
        assert!(e[1].contains("\"lo\" cannot be a source interface"));
        assert!(e[2].contains("not a valid interface name"));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = errs("[[vipa]\nname = 1\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("vipa.toml:1:"), "{}", e[0]);
    }

    #[test]
    fn wrong_type_has_position() {
        let e = errs("[[vipa]]\nname = \"vi0\"\naddresses = \"198.18.6.1\"\n");
        assert!(e[0].starts_with("vipa.toml:3:13:"), "{}", e[0]);
    }
}
