//! Changes made with `vipactl` are written to the configuration file, as AIX `chvi`
//! writes the ODM: a later reload or restart keeps them. The file is edited in place with
//! `toml_edit`, so the operator's comments and layout survive.

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

/// What could not be edited, in words for the operator.
pub type EditError = String;

fn vipas(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, EditError> {
    if !doc.contains_key("vipa") {
        doc.insert("vipa", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    doc["vipa"]
        .as_array_of_tables_mut()
        .ok_or_else(|| "the configuration's `vipa` key is not a list of [[vipa]] tables".to_string())
}

fn find<'a>(list: &'a mut ArrayOfTables, name: &str) -> Option<&'a mut Table> {
    list.iter_mut().find(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
}

fn string_array(items: &[String]) -> Array {
    items.iter().map(|s| Value::from(s.as_str())).collect()
}

pub fn add_vipa(
    doc: &mut DocumentMut,
    name: &str,
    addresses: &[String],
    interfaces: &[String],
) -> Result<(), EditError> {
    let list = vipas(doc)?;
    if find(list, name).is_some() {
        return Err(format!(
            "VIPA {name:?} already exists: change its interfaces with `vipactl vipa change`, or delete it first"
        ));
    }
    let mut t = Table::new();
    t.insert("name", toml_edit::value(name));
    t.insert("addresses", toml_edit::value(string_array(addresses)));
    if !interfaces.is_empty() {
        t.insert("source_interfaces", toml_edit::value(string_array(interfaces)));
    }
    list.push(t);
    Ok(())
}

pub fn delete_vipa(doc: &mut DocumentMut, name: &str) -> Result<(), EditError> {
    let list = vipas(doc)?;
    let index = list
        .iter()
        .position(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
        .ok_or_else(|| format!("no VIPA named {name:?}: `vipactl vipa` lists them"))?;
    list.remove(index);
    Ok(())
}

pub fn change_interfaces(
    doc: &mut DocumentMut,
    name: &str,
    add: &[String],
    remove: &[String],
) -> Result<(), EditError> {
    let list = vipas(doc)?;
    let t = find(list, name).ok_or_else(|| format!("no VIPA named {name:?}: `vipactl vipa` lists them"))?;
    let mut current: Vec<String> = match t.get("source_interfaces") {
        None => Vec::new(),
        Some(item) => item
            .as_array()
            .ok_or_else(|| format!("source_interfaces of VIPA {name:?} is not a list"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("source_interfaces of VIPA {name:?} holds a non-string"))
            })
            .collect::<Result<_, _>>()?,
    };
    for r in remove {
        let before = current.len();
        current.retain(|c| c != r);
        if current.len() == before {
            return Err(format!("interface {r:?} is not a source interface of VIPA {name:?}"));
        }
    }
    for a in add {
        if current.contains(a) {
            return Err(format!("interface {a:?} is already a source interface of VIPA {name:?}"));
        }
        current.push(a.clone());
    }
    t.insert("source_interfaces", toml_edit::value(string_array(&current)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# our host\n[node]\nname = \"s1\"\n\n[[vipa]]\nname = \"vi0\" # the seed's\naddresses = [\"198.18.6.1\"]\nsource_interfaces = [\"en1\", \"en5\"]\n";

    #[test]
    fn change_keeps_comments_and_edits_the_list() {
        let mut doc: DocumentMut = TEXT.parse().unwrap();
        change_interfaces(&mut doc, "vi0", &["en7".into()], &["en1".into()]).unwrap();
        let out = doc.to_string();
        assert!(out.contains("# our host") && out.contains("# the seed's"), "{out}");
        assert!(out.contains("source_interfaces = [\"en5\", \"en7\"]"), "{out}");
    }

    #[test]
    fn add_and_delete() {
        let mut doc: DocumentMut = TEXT.parse().unwrap();
        add_vipa(&mut doc, "vi1", &["198.18.6.2".into()], &[]).unwrap();
        assert!(add_vipa(&mut doc, "vi1", &["198.18.6.3".into()], &[]).unwrap_err().contains("already exists"));
        let c = vipa_core::Config::parse("f", &doc.to_string()).unwrap();
        assert_eq!(c.vipas.len(), 2);
        delete_vipa(&mut doc, "vi0").unwrap();
        let c = vipa_core::Config::parse("f", &doc.to_string()).unwrap();
        assert_eq!(c.vipas.len(), 1);
        assert_eq!(c.vipas[0].name, "vi1");
        assert!(delete_vipa(&mut doc, "vi0").unwrap_err().contains("no VIPA named"));
    }

    #[test]
    fn removing_an_unknown_interface_is_refused() {
        let mut doc: DocumentMut = TEXT.parse().unwrap();
        let e = change_interfaces(&mut doc, "vi0", &[], &["en9".into()]).unwrap_err();
        assert!(e.contains("\"en9\" is not a source interface"), "{e}");
    }
}
