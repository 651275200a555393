//! The views vipactl renders, computed from the configuration, the observed kernel and
//! the ledger.

use vipa_api::{AddressView, InterfaceView, RouteView, VipaView};
use vipa_core::model::Observed;
use vipa_core::plan::{eligible, route_vipa, vipa_device};
use vipa_core::{Config, DeviceMode, Ledger, VipaConfig};

pub fn vipa_view(v: &VipaConfig, config: &Config, observed: &Observed, ledger: &Ledger, mode: DeviceMode) -> VipaView {
    let dev = vipa_device(v, observed, mode);
    let addresses: Vec<AddressView> = v
        .addresses
        .iter()
        .map(|a| AddressView {
            address: a.to_string(),
            prefix_len: vipa_core::model::host_prefix_len(*a),
            active: dev.is_some_and(|d| observed.addresses.contains_key(&(d.index, *a))),
        })
        .collect();
    let interfaces: Vec<InterfaceView> = v
        .source_interfaces
        .iter()
        .map(|n| {
            let l = observed.link_by_name(n);
            InterfaceView {
                name: n.clone(),
                present: l.is_some(),
                up: l.is_some_and(|l| l.up),
                carrier: l.is_some_and(|l| l.carrier),
            }
        })
        .collect();
    let name_of = |i: &u32| observed.links.get(i).map_or_else(|| format!("if{i}"), |l| l.name.clone());
    let routes = observed
        .routes
        .values()
        .filter(|r| eligible(r) && route_vipa(r, config, observed).is_some_and(|rv| rv.name == v.name))
        .map(|r| RouteView {
            route: r.key.to_string(),
            via: r.gateways.iter().map(ToString::to_string).collect(),
            dev: r.oifs.iter().map(name_of).collect(),
            prefsrc: r.prefsrc.map(|p| p.to_string()),
            original: ledger.routes.get(&r.key).and_then(|rec| rec.original.map(|o| o.to_string())),
        })
        .collect();
    VipaView {
        name: v.name.clone(),
        device: dev.map_or_else(|| v.name.clone(), |d| d.name.clone()),
        up: addresses.iter().all(|a| a.active),
        running: interfaces.is_empty() || interfaces.iter().any(|i| i.up && i.carrier),
        addresses,
        interfaces,
        routes,
    }
}
