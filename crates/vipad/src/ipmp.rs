//! The daemon's side of IPMP groups: feeds the pure [`vipa_core::ipmp::Group`] state
//! machines with link states, router targets, probe replies and time; carries out their
//! outputs (probes, announcements after a move, events); and builds `ipmpstat`'s views.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vipa_api::{Event, IpmpAddressView, IpmpGroupView, IpmpInterfaceView, IpmpTargetView, IpmpView, ProbeEventView};
use vipa_core::ipmp::probe::TargetKind;
use vipa_core::ipmp::{Group, GroupState, NicState, Output};
use vipa_core::model::{Observed, PROTO_VIPA, TABLE_MAIN};
use vipa_core::plan::GroupRuntime;
use vipa_core::Config;
use vipa_kernel::probe::ProbeSocket;
use vipa_wire::icmp::{PROBE_MULTICAST, PROBE_UNICAST};

/// An echo reply for one of our probes.
#[derive(Debug, Clone)]
pub struct ProbeReply {
    pub nic: String,
    pub v6: bool,
    pub from: IpAddr,
    pub seq: u16,
    pub kind: u32,
    pub rtt: Duration,
}

struct Socket {
    sock: ProbeSocket,
    stop: Arc<AtomicBool>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Events waiting for one `vipactl events` client at most; one that falls further behind
/// is dropped (its stream ends).
pub const EVENT_BACKLOG: usize = 1024;

pub struct Ipmp {
    pub groups: BTreeMap<String, Group>,
    sockets: BTreeMap<(String, bool), Socket>,
    routers: [Vec<IpAddr>; 2],
    /// (address, NIC) announcements due once the kernel holds the new binding.
    announce: Vec<(IpAddr, String, u32)>,
    epoch: Instant,
    /// Replies wait here for the next tick instead of waking the daemon one by one: a
    /// probe's fate is settled at ticks anyway, and its RTT was measured on arrival.
    replies: Arc<Mutex<Vec<ProbeReply>>>,
    pub subscribers: Vec<SyncSender<Event>>,
    seed: u64,
}

fn group_of<'a>(groups: &'a mut BTreeMap<String, Group>, nic: &str) -> Option<&'a mut Group> {
    groups.values_mut().find(|g| g.nic_index(nic).is_some())
}

impl Ipmp {
    pub fn new(epoch: Instant) -> Ipmp {
        let seed = u64::from(std::process::id()) ^ (epoch.elapsed().as_nanos() as u64) ^ 0x9e37_79b9_7f4a_7c15;
        Ipmp {
            groups: BTreeMap::new(),
            sockets: BTreeMap::new(),
            routers: [Vec::new(), Vec::new()],
            announce: Vec::new(),
            epoch,
            replies: Arc::default(),
            subscribers: Vec::new(),
            seed,
        }
    }

    /// Creates, keeps or replaces groups to match the configuration. A group whose
    /// configuration is unchanged keeps its state.
    pub fn sync_config(&mut self, config: &Config, now: Instant) {
        self.groups.retain(|name, g| config.groups.iter().any(|c| c.name == *name && *c == g.config));
        for c in &config.groups {
            if !self.groups.contains_key(&c.name) {
                self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                info!(group = %c.name, interfaces = ?c.interfaces, "IPMP group configured");
                self.groups.insert(c.name.clone(), Group::new(c.clone(), now, self.seed));
                self.routers = [Vec::new(), Vec::new()];
            }
        }
        let keep: Vec<String> = self.groups.values().flat_map(|g| g.config.interfaces.clone()).collect();
        self.sockets.retain(|(nic, _), _| keep.contains(nic));
    }

    /// Feeds link states and router targets from the observed kernel.
    pub fn observe(&mut self, observed: &Observed, now: Instant) {
        // Without groups nothing here is needed, and a host holding thousands of DVIPA
        // routes would walk them all on every kernel event.
        if self.groups.is_empty() {
            return;
        }
        for g in self.groups.values_mut() {
            for nic in g.config.interfaces.clone() {
                let link = observed.link_by_name(&nic).map(|l| l.up && l.carrier);
                g.link(now, &nic, link);
            }
        }
        for (k, v6) in [(0, false), (1, true)] {
            let mut routers: Vec<IpAddr> = observed
                .routes
                .values()
                .filter(|r| {
                    r.key.table == TABLE_MAIN && r.unicast && r.protocol != PROTO_VIPA && r.key.dst.is_ipv6() == v6
                })
                .flat_map(|r| r.gateways.clone())
                .collect();
            routers.sort();
            routers.dedup();
            if routers != self.routers[k] {
                for g in self.groups.values_mut() {
                    g.set_routers(now, v6, &routers);
                }
                self.routers[k] = routers;
            }
        }
    }

    pub fn runtime(&self) -> Vec<GroupRuntime> {
        self.groups
            .values()
            .map(|g| GroupRuntime {
                name: g.config.name.clone(),
                active: g.outbound(),
                binding: g.binding.iter().map(|(a, j)| (*a, j.map(|j| g.nics[j].name.clone()))).collect(),
            })
            .collect()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.groups.values().filter_map(|g| g.poll_timeout()).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for g in self.groups.values_mut() {
            if g.poll_timeout().is_some_and(|t| t <= now) {
                g.handle_timeout(now);
            }
        }
    }

    /// Takes the probe replies that arrived since the last call.
    pub fn take_replies(&mut self, now: Instant) {
        let replies = std::mem::take(&mut *self.replies.lock().expect("replies lock"));
        for r in replies {
            if let Some(g) = group_of(&mut self.groups, &r.nic) {
                g.probe_reply(now, &r.nic, r.v6, r.from, r.seq, r.rtt, r.kind == PROBE_MULTICAST);
            }
        }
    }

    pub fn offline(&mut self, nic: &str, now: Instant) -> Result<String, String> {
        let g = group_of(&mut self.groups, nic)
            .ok_or_else(|| format!("{nic}: not a physical interface or not in an IPMP group"))?;
        g.offline(now, nic).map_err(|e| e.to_string())?;
        Ok(format!("{nic} is offline"))
    }

    pub fn online(&mut self, nic: &str, now: Instant) -> Result<String, String> {
        let g = group_of(&mut self.groups, nic)
            .ok_or_else(|| format!("{nic}: not a physical interface or not in an IPMP group"))?;
        g.online(now, nic).map_err(|e| e.to_string())?;
        Ok(format!("{nic} is online"))
    }

    /// Sends an event of another subsystem (the cluster) to the subscribers.
    pub fn publish(&mut self, kind: &str, text: String) {
        self.event(kind, None, None, text, None);
    }

    fn event(
        &mut self,
        kind: &str,
        group: Option<&str>,
        interface: Option<&str>,
        text: String,
        probe: Option<ProbeEventView>,
    ) {
        let e = Event {
            time: self.epoch.elapsed().as_secs_f64(),
            kind: kind.into(),
            group: group.map(str::to_string),
            interface: interface.map(str::to_string),
            text,
            probe,
        };
        self.subscribers.retain(|s| match s.try_send(e.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                warn!(backlog = EVENT_BACKLOG, "an events client fell too far behind and was dropped");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// Carries out the groups' outputs. Returns whether the kernel's desired state changed
    /// (a NIC's activity or an address's binding).
    pub fn drain(&mut self, observed: &Observed) -> bool {
        let mut dirty = false;
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            while let Some(out) = self.groups.get_mut(&name).and_then(|g| g.poll_output()) {
                match out {
                    Output::SendProbe { nic, v6, src, dst, seq } => self.send_probe(observed, &nic, v6, src, dst, seq),
                    Output::Nic { nic, state, active, message } => {
                        info!(group = %name, interface = %nic, ?state, active, "{message}");
                        self.event("nic", Some(&name), Some(&nic), message, None);
                        dirty = true;
                    }
                    Output::Group { state, message } => {
                        if state == GroupState::Failed {
                            warn!(group = %name, "{message}");
                        } else {
                            info!(group = %name, ?state, "{message}");
                        }
                        self.event("group", Some(&name), None, message, None);
                        dirty = true;
                    }
                    Output::Bound { addr, nic } => {
                        let text = match &nic {
                            Some(n) => format!("data address {addr} is now answered by {n}"),
                            None => format!("data address {addr} has no active interface"),
                        };
                        info!(group = %name, address = %addr, interface = ?nic, "data address moved");
                        self.event("bound", Some(&name), nic.as_deref(), text, None);
                        if let Some(n) = nic {
                            let count = self.groups[&name].config.announce_count;
                            self.announce.push((addr, n, count));
                        }
                        dirty = true;
                    }
                    Output::Message(m) => {
                        info!(group = %name, "{m}");
                        self.event("message", Some(&name), None, m, None);
                    }
                    Output::Probe { .. } if self.subscribers.is_empty() => {}
                    Output::Probe { nic, v6, event, acked } => {
                        let g = &self.groups[&name];
                        let t = g
                            .nic_index(&nic)
                            .and_then(|i| g.nics[i].probes.iter().find(|p| p.v6 == v6))
                            .and_then(|p| p.targets.iter().find(|t| t.addr == event.target));
                        let ms = |d: Duration| d.as_secs_f64() * 1e3;
                        let view = ProbeEventView {
                            id: event.seq,
                            target: event.target.to_string(),
                            acked,
                            sent: event.sent.saturating_duration_since(self.epoch).as_secs_f64(),
                            rtt_ms: event.rtt.map(ms),
                            rtt_avg_ms: t.and_then(|t| t.rtt_avg()).map(ms),
                            rtt_dev_ms: t.and_then(|t| t.rtt_dev()).map(ms),
                        };
                        let text =
                            format!("probe {} to {} {}", event.seq, event.target, if acked { "acked" } else { "lost" });
                        self.event("probe", Some(&name), Some(&nic), text, Some(view));
                    }
                }
            }
        }
        dirty
    }

    fn send_probe(&mut self, observed: &Observed, nic: &str, v6: bool, src: IpAddr, dst: IpAddr, seq: u16) {
        let Some(link) = observed.link_by_name(nic) else { return };
        // The socket can bind only once the test address is on the NIC.
        if !observed.addresses.contains_key(&(link.index, src)) {
            return;
        }
        let key = (nic.to_string(), v6);
        if !self.sockets.contains_key(&key) {
            match ProbeSocket::open(nic, link.index, src) {
                Ok(sock) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    self.spawn_receiver(nic, &sock, Arc::clone(&stop));
                    self.sockets.insert(key.clone(), Socket { sock, stop });
                }
                Err(e) => {
                    warn!(interface = %nic, error = %e, "cannot open a probe socket; probes count as lost");
                    return;
                }
            }
        }
        let kind = if dst.is_multicast() { PROBE_MULTICAST } else { PROBE_UNICAST };
        let sent_ns = self.epoch.elapsed().as_nanos() as u64;
        if let Err(e) = self.sockets[&key].sock.send(dst, seq, sent_ns, kind) {
            tracing::debug!(interface = %nic, %dst, error = %e, "probe not sent; it will count as lost");
        }
    }

    /// Reads replies on a clone of `sock` until `stop` is set (the socket was dropped).
    fn spawn_receiver(&self, nic: &str, sock: &ProbeSocket, stop: Arc<AtomicBool>) {
        let Ok(rx) = sock.try_clone() else { return };
        let (queue, epoch, nic) = (Arc::clone(&self.replies), self.epoch, nic.to_string());
        let spawned = thread::Builder::new().name(format!("probe-{nic}")).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match rx.recv() {
                    Ok(Some((from, echo))) => {
                        let now_ns = epoch.elapsed().as_nanos() as u64;
                        let rtt = Duration::from_nanos(now_ns.saturating_sub(echo.sent_ns));
                        let r = ProbeReply { nic: nic.clone(), v6: rx.v6, from, seq: echo.seq, kind: echo.kind, rtt };
                        match queue.lock() {
                            Ok(mut q) => q.push(r),
                            Err(_) => return,
                        }
                    }
                    Ok(None) => {}
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a probe receiver");
        }
    }

    /// Sends the announcements due after a move, now that the kernel has the binding.
    pub fn announce(
        &mut self,
        observed: &Observed,
        held: &std::collections::BTreeSet<std::net::IpAddr>,
        announcer: &crate::announce::Announcer,
    ) {
        announcer.send(observed, held, std::mem::take(&mut self.announce));
    }

    pub fn view(&self) -> IpmpView {
        let mut v = IpmpView::default();
        for g in self.groups.values() {
            let probing = g.nics.iter().any(|n| n.probing());
            v.groups.push(IpmpGroupView {
                group: g.config.name.clone(),
                state: match g.state {
                    GroupState::Ok => "ok",
                    GroupState::Degraded => "degraded",
                    GroupState::Failed => "failed",
                }
                .into(),
                fdt_ms: probing.then_some(g.fdt.as_millis() as u64),
                active: g.nics.iter().filter(|n| n.active()).map(|n| n.name.clone()).collect(),
                inactive: g.nics.iter().filter(|n| n.functioning() && n.inactive).map(|n| n.name.clone()).collect(),
                unusable: g.nics.iter().filter(|n| !n.functioning()).map(|n| n.name.clone()).collect(),
            });
            let nominee = g.nics.iter().position(|n| n.active());
            for (j, n) in g.nics.iter().enumerate() {
                let has4 = g.config.data_addresses.iter().any(|(a, _)| a.is_ipv4());
                let has6 = g.config.data_addresses.iter().any(|(a, _)| a.is_ipv6());
                let nom = nominee == Some(j);
                let flag = |on: bool, c: char| if on { c } else { '-' };
                let flags: String = [
                    flag(n.inactive && n.functioning(), 'i'),
                    flag(n.standby, 's'),
                    flag(nom && has4, 'm'),
                    flag(nom && has4, 'b'),
                    flag(nom && has6, 'M'),
                    flag(n.offline, 'd'),
                    '-',
                ]
                .iter()
                .collect();
                v.interfaces.push(IpmpInterfaceView {
                    interface: n.name.clone(),
                    active: n.active(),
                    group: g.config.name.clone(),
                    flags,
                    link: match n.link {
                        Some(true) => "up",
                        Some(false) => "down",
                        None => "unknown",
                    }
                    .into(),
                    probe: n.probe_state().into(),
                    state: match n.state() {
                        NicState::Ok => "ok",
                        NicState::Failed => "failed",
                        NicState::Offline => "offline",
                        NicState::Unknown => "unknown",
                    }
                    .into(),
                });
                if n.probes.is_empty() {
                    v.targets.push(IpmpTargetView {
                        interface: n.name.clone(),
                        mode: "disabled".into(),
                        testaddr: None,
                        targets: vec![],
                    });
                }
                for p in &n.probes {
                    let routes = p.targets.iter().any(|t| t.kind == TargetKind::Router);
                    v.targets.push(IpmpTargetView {
                        interface: n.name.clone(),
                        mode: if routes { "routes" } else { "multicast" }.into(),
                        testaddr: Some(p.test_addr.to_string()),
                        targets: p.firing_order().iter().map(ToString::to_string).collect(),
                    });
                }
            }
            let outbound = g.outbound();
            for &(addr, _) in &g.config.data_addresses {
                let inbound = g.binding.get(&addr).copied().flatten().map(|j| g.nics[j].name.clone());
                v.addresses.push(IpmpAddressView {
                    address: addr.to_string(),
                    state: "up".into(),
                    group: g.config.name.clone(),
                    outbound: if inbound.is_some() { outbound.clone() } else { vec![] },
                    inbound,
                });
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_client_that_stops_reading_is_dropped_not_kept_in_memory() {
        let mut ipmp = Ipmp::new(Instant::now());
        let (slow, slow_rx) = std::sync::mpsc::sync_channel(EVENT_BACKLOG);
        let (keen, keen_rx) = std::sync::mpsc::sync_channel(EVENT_BACKLOG);
        ipmp.subscribers.extend([slow, keen]);
        for i in 0..EVENT_BACKLOG {
            ipmp.publish("cluster", format!("event {i}"));
            // One client keeps up.
            assert!(keen_rx.try_recv().is_ok());
        }
        assert_eq!(ipmp.subscribers.len(), 2);
        ipmp.publish("cluster", "one too many for the slow one".into());
        assert_eq!(ipmp.subscribers.len(), 1, "the client that stopped reading is still kept");
        assert_eq!(keen_rx.try_recv().unwrap().text, "one too many for the slow one");
        // The slow one gets what was queued, then its stream ends.
        assert_eq!(slow_rx.iter().count(), EVENT_BACKLOG);
    }
}
