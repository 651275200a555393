//! `vipactl ipmp`: ipmpstat's modes, columns, widths and parsable format
//! (seed-systems.md §4.5).

use vipa_api::{Event, IpmpView};

/// A column: name, default width, whether it is shown without `-o`.
#[derive(Debug)]
pub struct Field {
    name: &'static str,
    width: usize,
    default: bool,
}

const fn f(name: &'static str, width: usize) -> Field {
    Field { name, width, default: true }
}

pub const ADDRESS: &[Field] = &[f("ADDRESS", 26), f("STATE", 7), f("GROUP", 12), f("INBOUND", 12), f("OUTBOUND", 23)];
pub const GROUP: &[Field] = &[f("GROUP", 12), f("GROUPNAME", 12), f("STATE", 10), f("FDT", 10), f("INTERFACES", 30)];
pub const INTERFACE: &[Field] = &[
    f("INTERFACE", 12),
    f("ACTIVE", 8),
    f("GROUP", 12),
    f("FLAGS", 10),
    f("LINK", 10),
    f("PROBE", 10),
    f("STATE", 10),
];
pub const TARGET: &[Field] = &[f("INTERFACE", 12), f("MODE", 10), f("TESTADDR", 20), f("TARGETS", 38)];
pub const PROBE: &[Field] = &[
    f("TIME", 10),
    f("INTERFACE", 12),
    f("PROBE", 7),
    f("NETRTT", 10),
    f("RTT", 10),
    Field { name: "RTTAVG", width: 10, default: false },
    f("TARGET", 20),
    Field { name: "RTTDEV", width: 10, default: false },
];

/// Which fields to print, from `-o` (case-insensitive, `all` for every field).
pub fn select(fields: &'static [Field], spec: Option<&str>) -> Result<Vec<&'static Field>, String> {
    let Some(spec) = spec else { return Ok(fields.iter().filter(|f| f.default).collect()) };
    if spec.eq_ignore_ascii_case("all") {
        return Ok(fields.iter().collect());
    }
    spec.split(',')
        .map(|name| {
            fields.iter().find(|f| f.name.eq_ignore_ascii_case(name.trim())).ok_or_else(|| {
                let known: Vec<&str> = fields.iter().map(|f| f.name).collect();
                format!("unknown output field \"{}\": this mode has {}", name.trim(), known.join(", "))
            })
        })
        .collect()
}

/// Prints rows: human form with a header, empty fields as `--`; or parsable, `:`
/// separated, with `:` and `\` escaped when several fields are printed.
pub fn table(fields: &[&Field], rows: &[Vec<(&'static str, String)>], parsable: bool) -> String {
    let mut out = String::new();
    if !parsable {
        let header: Vec<String> = fields.iter().map(|f| format!("{:<w$}", f.name, w = f.width)).collect();
        out.push_str(header.join(" ").trim_end());
        out.push('\n');
    }
    for row in rows {
        let value = |name: &str| row.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let cells: Vec<String> = fields
            .iter()
            .map(|f| {
                let v = value(f.name);
                if parsable {
                    if fields.len() > 1 {
                        v.replace('\\', "\\\\").replace(':', "\\:")
                    } else {
                        v
                    }
                } else {
                    format!("{:<w$}", if v.is_empty() { "--".to_string() } else { v }, w = f.width)
                }
            })
            .collect();
        out.push_str(if parsable { cells.join(":") } else { cells.join(" ") }.trim_end());
        out.push('\n');
    }
    out
}

pub fn address_rows(v: &IpmpView) -> Vec<Vec<(&'static str, String)>> {
    v.addresses
        .iter()
        .map(|a| {
            vec![
                ("ADDRESS", a.address.clone()),
                ("STATE", a.state.clone()),
                ("GROUP", a.group.clone()),
                ("INBOUND", a.inbound.clone().unwrap_or_default()),
                ("OUTBOUND", a.outbound.join(" ")),
            ]
        })
        .collect()
}

pub fn group_rows(v: &IpmpView) -> Vec<Vec<(&'static str, String)>> {
    v.groups
        .iter()
        .map(|g| {
            let mut ifs = g.active.join(" ");
            if !g.inactive.is_empty() {
                ifs = format!("{ifs} ({})", g.inactive.join(" "));
            }
            if !g.unusable.is_empty() {
                ifs = format!("{ifs} [{}]", g.unusable.join(" "));
            }
            vec![
                ("GROUP", g.group.clone()),
                ("GROUPNAME", g.group.clone()),
                ("STATE", g.state.clone()),
                ("FDT", g.fdt_ms.map_or(String::new(), |ms| format!("{:.2}s", ms as f64 / 1000.0))),
                ("INTERFACES", ifs.trim().to_string()),
            ]
        })
        .collect()
}

pub fn interface_rows(v: &IpmpView) -> Vec<Vec<(&'static str, String)>> {
    v.interfaces
        .iter()
        .map(|i| {
            vec![
                ("INTERFACE", i.interface.clone()),
                ("ACTIVE", if i.active { "yes" } else { "no" }.into()),
                ("GROUP", i.group.clone()),
                ("FLAGS", i.flags.clone()),
                ("LINK", i.link.clone()),
                ("PROBE", i.probe.clone()),
                ("STATE", i.state.clone()),
            ]
        })
        .collect()
}

pub fn target_rows(v: &IpmpView) -> Vec<Vec<(&'static str, String)>> {
    v.targets
        .iter()
        .map(|t| {
            vec![
                ("INTERFACE", t.interface.clone()),
                ("MODE", t.mode.clone()),
                ("TESTADDR", t.testaddr.clone().unwrap_or_default()),
                ("TARGETS", t.targets.join(" ")),
            ]
        })
        .collect()
}

/// One `-p` row; `base` is vipad's clock (seconds since it started) when vipactl started.
pub fn probe_row(e: &Event, base: f64) -> Option<Vec<(&'static str, String)>> {
    let p = e.probe.as_ref()?;
    let ms = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}ms"));
    Some(vec![
        ("TIME", format!("{:.2}s", p.sent - base)),
        ("INTERFACE", e.interface.clone().unwrap_or_default()),
        ("PROBE", p.id.to_string()),
        ("NETRTT", if p.acked { ms(p.rtt_ms) } else { String::new() }),
        ("RTT", if p.acked { ms(p.rtt_ms) } else { String::new() }),
        ("RTTAVG", ms(p.rtt_avg_ms)),
        ("TARGET", p.target.clone()),
        ("RTTDEV", ms(p.rtt_dev_ms)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use vipa_api::IpmpGroupView;

    fn view() -> IpmpView {
        IpmpView {
            groups: vec![IpmpGroupView {
                group: "field2".into(),
                state: "degraded".into(),
                fdt_ms: Some(20_000),
                active: vec!["fops0".into(), "fops3".into()],
                inactive: vec!["fops2".into()],
                unusable: vec!["fops1".into()],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn group_view_as_ipmpstat_prints_it() {
        let out = table(&select(GROUP, None).unwrap(), &group_rows(&view()), false);
        let mut lines = out.lines();
        assert_eq!(lines.next().unwrap(), "GROUP        GROUPNAME    STATE      FDT        INTERFACES");
        assert_eq!(
            lines.next().unwrap(),
            "field2       field2       degraded   20.00s     fops0 fops3 (fops2) [fops1]"
        );
    }

    #[test]
    fn parsable_output_escapes_and_selects() {
        let fields = select(GROUP, Some("groupname,FDT,interfaces")).unwrap();
        let out = table(&fields, &group_rows(&view()), true);
        assert_eq!(out, "field2:20.00s:fops0 fops3 (fops2) [fops1]\n");
        let mut v = view();
        v.groups[0].fdt_ms = None;
        v.groups[0].group = "a:b".into();
        let out = table(&select(GROUP, Some("group,fdt")).unwrap(), &group_rows(&v), true);
        assert_eq!(out, "a\\:b:\n");
        assert!(select(GROUP, Some("nope")).unwrap_err().contains("unknown output field \"nope\""));
        assert_eq!(select(PROBE, None).unwrap().len(), 6, "RTTAVG and RTTDEV only on request");
    }
}
