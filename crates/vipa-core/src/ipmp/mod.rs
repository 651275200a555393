//! IPMP groups (Solaris in.mpathd on Linux): failure and repair detection, the
//! active/standby policy, offline/online, and the binding of data addresses to NICs.
//!
//! A [`Group`] is a pure state machine in the shape of quinn-proto: feed it inputs with
//! `now` (`link`, `probe_reply`, `set_routers`, `offline`, `online`), call
//! [`Group::handle_timeout`] when [`Group::poll_timeout`] says, and carry out what
//! [`Group::poll_output`] hands back. Randomness (the probe send jitter) comes from a
//! generator seeded by the caller. Rules cite seed-systems.md §4.3 and §4.4.

pub mod probe;

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::same_prefix;
use probe::{ProbeInstance, ProbeStatus, TargetKind, TargetState, NUM_PROBE_FAILS};

/// in.mpathd: a link that came up this many times within [`LINK_FLAP_WINDOW`] is not
/// repaired until it settles.
pub const LINK_UP_PERMIN: usize = 2;
pub const LINK_FLAP_WINDOW: Duration = Duration::from_secs(60);
/// in.mpathd: no lowering of the FDT within this time after a raise.
pub const MIN_SETTLING_TIME: Duration = Duration::from_secs(60);
/// in.mpathd: probe interval = FDT / (NUM_PROBE_FAILS + 2).
pub const PROBE_DIVISOR: u32 = NUM_PROBE_FAILS as u32 + 2;

/// A group as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    pub interfaces: Vec<String>,
    pub standby: Vec<String>,
    /// Data addresses with their prefix length.
    pub data_addresses: Vec<(IpAddr, u8)>,
    /// Test addresses per interface, with their prefix length.
    pub test_addresses: BTreeMap<String, Vec<(IpAddr, u8)>>,
    pub failure_detection_time: Duration,
    pub failback: bool,
    pub probe_targets: Vec<IpAddr>,
    /// How many times each gratuitous ARP / unsolicited NA is sent on a move.
    pub announce_count: u32,
}

/// `ipmpstat -g` STATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupState {
    Ok,
    Degraded,
    Failed,
}

/// `ipmpstat -i` STATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicState {
    Ok,
    Failed,
    Offline,
    Unknown,
}

/// What the shell is to do or know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send an ICMP echo from `src` on `nic` to `dst` (a multicast address for discovery).
    SendProbe { nic: String, v6: bool, src: IpAddr, dst: IpAddr, seq: u16 },
    /// A NIC changed state; `message` is in.mpathd's log text.
    Nic { nic: String, state: NicState, active: bool, message: String },
    /// The group changed state.
    Group { state: GroupState, message: String },
    /// Data address `addr` is now answered by `nic` (`None`: no active NIC).
    Bound { addr: IpAddr, nic: Option<String> },
    /// Something worth a log line and an event.
    Message(String),
    /// A probe became acked or lost (for the live probe view).
    Probe { nic: String, v6: bool, event: probe::ProbeEvent, acked: bool },
}

/// Why `offline`/`online` was refused, with if_mpadm's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("interface {0} is already offline")]
    AlreadyOffline(String),
    #[error("interface {0} is not offline")]
    NotOffline(String),
    #[error("cannot offline {0}: no other functioning interfaces are in its IPMP group")]
    MinRedundancy(String),
    #[error("{0}: not a physical interface or not in an IPMP group")]
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct Nic {
    pub name: String,
    pub standby: bool,
    pub inactive: bool,
    pub failed: bool,
    pub offline: bool,
    /// Carrier: `None` while the device is absent or not yet seen.
    pub link: Option<bool>,
    /// The last link-up times (flap damping, rule 13).
    link_ups: VecDeque<Instant>,
    /// Repair deferred until then because the link flapped.
    pub repair_at: Option<Instant>,
    pub probes: Vec<ProbeInstance>,
    started: bool,
}

impl Nic {
    pub fn probing(&self) -> bool {
        !self.probes.is_empty()
    }

    /// RUNNING, or NOTARGETS without FAILED (rule 18).
    pub fn functioning(&self) -> bool {
        self.link == Some(true) && !self.failed && !self.offline
    }

    pub fn active(&self) -> bool {
        self.functioning() && !self.inactive
    }

    pub fn state(&self) -> NicState {
        if self.offline {
            NicState::Offline
        } else if self.failed {
            NicState::Failed
        } else if self.link.is_none() || (self.probing() && self.probes.iter().all(|p| !p.has_targets())) {
            NicState::Unknown
        } else {
            NicState::Ok
        }
    }

    /// `ipmpstat -i` PROBE.
    pub fn probe_state(&self) -> &'static str {
        if !self.probing() {
            "disabled"
        } else if self.failed {
            "failed"
        } else if self.probes.iter().all(|p| !p.has_targets()) {
            "unknown"
        } else {
            "ok"
        }
    }

    fn last_ack(&self) -> Option<Instant> {
        self.probes.iter().filter_map(|p| p.last_ack).max()
    }
}

/// Why a NIC became RUNNING (rule 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Running {
    Initial,
    Repair { group_was_failed: bool },
    Online,
}

/// One IPMP group.
#[derive(Debug)]
pub struct Group {
    pub config: GroupConfig,
    pub nics: Vec<Nic>,
    pub state: GroupState,
    /// Current failure detection time and probe interval (adaptive, rule 14).
    pub fdt: Duration,
    pub pi: Duration,
    last_raise: Option<Instant>,
    /// Data address → index of the NIC that answers for it.
    pub binding: BTreeMap<IpAddr, Option<usize>>,
    out: VecDeque<Output>,
    rng: u64,
}

fn probe_interval(fdt: Duration) -> Duration {
    // Integer milliseconds, as in.mpathd computes it (10 s → 1428 ms).
    Duration::from_millis((fdt.as_millis() / u128::from(PROBE_DIVISOR)) as u64)
}

impl Group {
    /// A new group; `seed` drives the probe jitter.
    pub fn new(config: GroupConfig, now: Instant, seed: u64) -> Group {
        let fdt = config.failure_detection_time;
        let nics = config
            .interfaces
            .iter()
            .map(|n| {
                let probes = config
                    .test_addresses
                    .get(n)
                    .map(|list| list.iter().map(|&(a, _)| ProbeInstance::new(a.is_ipv6(), a, now)).collect())
                    .unwrap_or_default();
                Nic {
                    name: n.clone(),
                    standby: config.standby.contains(n),
                    inactive: false,
                    failed: true,
                    offline: false,
                    link: None,
                    link_ups: VecDeque::new(),
                    repair_at: None,
                    probes,
                    started: false,
                }
            })
            .collect();
        let binding = config.data_addresses.iter().map(|&(a, _)| (a, None)).collect();
        let mut g = Group {
            config,
            nics,
            state: GroupState::Failed,
            fdt,
            pi: probe_interval(fdt),
            last_raise: None,
            binding,
            out: VecDeque::new(),
            rng: seed | 1,
        };
        if !g.config.probe_targets.is_empty() {
            let targets = g.config.probe_targets.clone();
            for v6 in [false, true] {
                let list: Vec<IpAddr> = targets.iter().copied().filter(|t| t.is_ipv6() == v6).collect();
                g.set_targets(now, v6, &list);
                for nic in &mut g.nics {
                    for p in nic.probes.iter_mut().filter(|p| p.v6 == v6) {
                        p.static_targets = true;
                    }
                }
            }
        }
        g
    }

    fn rand01(&mut self) -> f64 {
        // xorshift64*: deterministic from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn nic_index(&self, name: &str) -> Option<usize> {
        self.nics.iter().position(|n| n.name == name)
    }

    /// The next output to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Group::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Instant| t.min(x)));
            }
        };
        for n in &self.nics {
            take(n.repair_at);
            if n.link == Some(true) && !n.offline {
                for p in &n.probes {
                    take(p.next_send);
                }
            }
        }
        t
    }

    fn nic_output(&mut self, i: usize, message: String) {
        let n = &self.nics[i];
        self.out.push_back(Output::Nic { nic: n.name.clone(), state: n.state(), active: n.active(), message });
    }

    /// Carrier of `nic` changed, or the device appeared (`Some`) or went (`None`).
    pub fn link(&mut self, now: Instant, nic: &str, up: Option<bool>) {
        let Some(i) = self.nic_index(nic) else { return };
        let before = self.nics[i].link;
        if before == up && self.nics[i].started {
            return;
        }
        self.nics[i].link = up;
        let first = !self.nics[i].started;
        self.nics[i].started = true;
        if up == Some(true) {
            if before != Some(true) && !first {
                // Flap damping (rule 13): the last two link-ups within 60 s defer repair.
                let ups = &mut self.nics[i].link_ups;
                if ups.len() >= LINK_UP_PERMIN && now < ups[0] + LINK_FLAP_WINDOW {
                    let at = ups[0] + LINK_FLAP_WINDOW;
                    self.nics[i].repair_at = Some(at);
                    let name = self.nics[i].name.clone();
                    self.out.push_back(Output::Message(format!(
                        "The link has come up on {name} more than {LINK_UP_PERMIN} times in the last minute; disabling repair until it stabilizes"
                    )));
                }
                let ups = &mut self.nics[i].link_ups;
                ups.push_back(now);
                while ups.len() > LINK_UP_PERMIN {
                    ups.pop_front();
                }
            }
            for k in 0..self.nics[i].probes.len() {
                let (pi, r) = (self.pi, self.rand01());
                self.nics[i].probes[k].start(now, pi, r);
            }
            if first {
                self.nics[i].failed = false;
                self.become_running(now, i, Running::Initial);
            } else {
                self.check_repair(now, i);
            }
        } else {
            // Link down: failure regardless of probes; statistics cleared (rule 10.3, 13).
            for p in &mut self.nics[i].probes {
                p.clear_stats();
                p.next_send = None;
            }
            if first || self.nics[i].failed || self.nics[i].offline {
                self.nics[i].failed = true;
                self.update_group(now);
                return;
            }
            let other_up = (0..self.nics.len()).any(|j| j != i && self.nics[j].functioning());
            self.fail(now, i, other_up);
        }
    }

    /// Sets router targets of family `v6` on every member whose test address subnet holds
    /// them (rule 15). Static targets from the configuration are never replaced.
    pub fn set_routers(&mut self, now: Instant, v6: bool, routers: &[IpAddr]) {
        if self.config.probe_targets.iter().any(|t| t.is_ipv6() == v6) {
            return;
        }
        self.set_targets(now, v6, routers);
    }

    fn set_targets(&mut self, now: Instant, v6: bool, routers: &[IpAddr]) {
        let keep = self.state == GroupState::Failed;
        let own: Vec<IpAddr> = self.config.test_addresses.values().flatten().map(|&(a, _)| a).collect();
        for nic in &mut self.nics {
            let tests = self.config.test_addresses.get(&nic.name).cloned().unwrap_or_default();
            for p in nic.probes.iter_mut().filter(|p| p.v6 == v6) {
                let prefix = tests.iter().find(|(a, _)| *a == p.test_addr).map_or(0, |&(_, l)| l);
                let mine: Vec<IpAddr> = routers
                    .iter()
                    .copied()
                    .filter(|r| same_prefix(*r, p.test_addr, prefix) && !own.contains(r))
                    .collect();
                p.set_routers(now, &mine, keep);
            }
        }
    }

    /// An echo reply arrived on `nic` from `from` with sequence `seq`, `rtt` after its
    /// probe was sent. `to_multicast`: a reply to a discovery probe.
    #[allow(clippy::too_many_arguments, reason = "one reply's fields, as the probe socket gives them")]
    pub fn probe_reply(
        &mut self,
        now: Instant,
        nic: &str,
        v6: bool,
        from: IpAddr,
        seq: u16,
        rtt: Duration,
        to_multicast: bool,
    ) {
        let Some(i) = self.nic_index(nic) else { return };
        // Replies are ignored while the link is down (rule 6).
        if self.nics[i].link != Some(true) || self.nics[i].offline {
            return;
        }
        let pi = self.pi;
        let Some(k) = self.nics[i].probes.iter().position(|p| p.v6 == v6) else { return };
        if to_multicast {
            let own = self.config.test_addresses.values().flatten().any(|&(a, _)| a == from)
                || self.binding.contains_key(&from);
            if !own && self.nics[i].probes[k].add_host(from) {
                let name = self.nics[i].name.clone();
                self.out.push_back(Output::Message(format!("probe target {from} found by multicast on {name}")));
            }
            return;
        }
        if !self.nics[i].probes[k].ack(now, from, seq, rtt, pi) {
            return;
        }
        self.drain_probe_events(i);
        self.adapt_fdt(now, i, k, from);
        if self.nics[i].failed {
            self.check_repair(now, i);
        }
    }

    fn drain_probe_events(&mut self, i: usize) {
        let name = self.nics[i].name.clone();
        for p in &mut self.nics[i].probes {
            for (event, acked) in p.settled.drain(..) {
                self.out.push_back(Output::Probe { nic: name.clone(), v6: p.v6, event, acked });
            }
        }
    }

    /// Adaptive FDT (rule 14).
    fn adapt_fdt(&mut self, now: Instant, i: usize, k: usize, target: IpAddr) {
        let pi = self.pi;
        let inst = &self.nics[i].probes[k];
        let Some(crtt) = inst.targets.iter().find(|t| t.addr == target).and_then(|t| t.crtt) else { return };
        let fam = if inst.v6 { "inet6" } else { "inet" };
        let test = inst.test_addr;
        if crtt > pi {
            let active: Vec<_> = inst.active_targets().collect();
            let exception = active.len() > probe::MIN_PROBE_TARGETS
                && active.iter().filter(|t| t.addr != target).all(|t| t.crtt.is_some_and(|c| c <= pi / 2));
            if exception {
                let p = &mut self.nics[i].probes[k];
                if let Some(t) = p.targets.iter_mut().find(|t| t.addr == target) {
                    if t.kind == TargetKind::Host {
                        p.targets.retain(|t| t.addr != target);
                    } else {
                        t.state = TargetState::Slow;
                        t.since = Some(now);
                    }
                }
                return;
            }
            self.pi = crtt * 2;
            self.fdt = self.pi * PROBE_DIVISOR;
            self.last_raise = Some(now);
            let user = self.config.failure_detection_time.as_millis();
            let (fdt, name) = (self.fdt.as_millis(), self.config.name.clone());
            self.out.push_back(Output::Message(format!(
                "Cannot meet requested failure detection time of {user} ms on ({fam} {test}) new failure detection time for group \"{name}\" is {fdt} ms"
            )));
            return;
        }
        let user = self.config.failure_detection_time;
        let settled = self.last_raise.is_none_or(|t| now >= t + MIN_SETTLING_TIME);
        let all_fast = self
            .nics
            .iter()
            .flat_map(|n| &n.probes)
            .flat_map(|p| p.active_targets())
            .all(|t| t.crtt.is_none_or(|c| c <= pi / 4));
        if crtt < pi / 4 && user < self.fdt && settled && all_fast {
            self.fdt = (self.fdt / 2).max(user);
            self.pi = probe_interval(self.fdt);
            if self.fdt == user {
                self.pi = probe_interval(user);
            }
            let (fdt, name) = (self.fdt.as_millis(), self.config.name.clone());
            self.out.push_back(Output::Message(format!(
                "Improved failure detection time {fdt} ms on ({fam} {test}) for group \"{name}\""
            )));
        }
    }

    /// Runs the timers due at `now`: probes, loss and failure detection, deferred repairs
    /// and target recovery.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.nics.len() {
            if self.nics[i].repair_at.is_some_and(|t| now >= t) {
                self.nics[i].repair_at = None;
                self.check_repair(now, i);
            }
            if self.nics[i].link != Some(true) || self.nics[i].offline {
                continue;
            }
            let mut ticked = false;
            for k in 0..self.nics[i].probes.len() {
                if self.nics[i].probes[k].next_send.is_none_or(|t| now < t) {
                    continue;
                }
                ticked = true;
                let pi = self.pi;
                let r = self.rand01();
                let name = self.nics[i].name.clone();
                let p = &mut self.nics[i].probes[k];
                p.settle_losses(now, pi);
                p.recover_targets(now);
                if p.wants_discovery() {
                    let dst: IpAddr =
                        if p.v6 { "ff02::1".parse().expect("literal") } else { "224.0.0.1".parse().expect("literal") };
                    self.out.push_back(Output::SendProbe {
                        nic: name.clone(),
                        v6: p.v6,
                        src: p.test_addr,
                        dst,
                        seq: 0,
                    });
                }
                let missed_before = p.missed;
                match p.next_target() {
                    Some(dst) => {
                        let seq = p.record_sent(now, dst, pi, r);
                        self.out.push_back(Output::SendProbe {
                            nic: name.clone(),
                            v6: p.v6,
                            src: p.test_addr,
                            dst,
                            seq,
                        });
                    }
                    None => p.schedule_next(now, pi, r),
                }
                if p.missed > missed_before {
                    // in.mpathd: the daemon fell behind; skipped probes are reported.
                    let n = p.missed - missed_before;
                    self.out.push_back(Output::Message(format!("missed sending {n} probes on {name}")));
                }
            }
            if ticked {
                self.drain_probe_events(i);
                if self.nics[i].failed {
                    self.check_repair(now, i);
                } else {
                    self.check_failure(now, i);
                }
            }
        }
    }

    /// Probe-based failure detection at a tick (rules 9–11).
    fn check_failure(&mut self, now: Instant, i: usize) {
        let mut all_fail = true;
        let mut tff: Option<Instant> = None;
        let mut capable = false;
        for k in 0..self.nics[i].probes.len() {
            let p = &self.nics[i].probes[k];
            if !p.has_targets() && p.history.is_empty() {
                continue;
            }
            capable = true;
            if p.quiet_until.is_some_and(|q| now < q) {
                return;
            }
            let (nfail, first, nfail_tg) = p.losses();
            if nfail < NUM_PROBE_FAILS && nfail_tg >= NUM_PROBE_FAILS {
                // A target died while others answer: not this NIC's fault.
                let dead = p.history.iter().rev().find(|r| r.status != ProbeStatus::Unacked).map(|r| r.target);
                if let Some(dead) = dead {
                    let name = self.nics[i].name.clone();
                    self.nics[i].probes[k].fail_target(now, dead);
                    self.out.push_back(Output::Message(format!(
                        "probe target {dead} on {name} is not answering; no longer probed"
                    )));
                }
            }
            if nfail < NUM_PROBE_FAILS {
                all_fail = false;
            } else if let Some(f) = first {
                tff = Some(tff.map_or(f, |t: Instant| t.min(f)));
            }
        }
        if !capable || !all_fail {
            return;
        }
        // Interface or group failure (rule 11): another member shows the link works.
        let group_failed = self.state == GroupState::Failed;
        let other_ok = (0..self.nics.len()).any(|j| {
            let n = &self.nics[j];
            j != i
                && n.functioning()
                && !group_failed
                && (!n.probing() || n.last_ack().is_some_and(|a| tff.is_none_or(|f| a > f)))
        });
        self.fail(now, i, other_ok);
    }

    fn fail(&mut self, now: Instant, i: usize, interface_only: bool) {
        let name = self.config.name.clone();
        if interface_only {
            // Judged without the link: on a link-down failure the carrier is already gone.
            let was_active = !self.nics[i].inactive && !self.nics[i].failed && !self.nics[i].offline;
            let n = &mut self.nics[i];
            n.failed = true;
            n.inactive = false;
            for p in &mut n.probes {
                for t in &mut p.targets {
                    t.reset_rtt();
                }
            }
            let msg = format!("IP interface failure detected on {} of group {name}", n.name);
            if was_active {
                self.activate_another(i);
            }
            self.nic_output(i, msg);
        } else {
            for j in 0..self.nics.len() {
                if !self.nics[j].failed {
                    self.nics[j].failed = true;
                    self.nics[j].inactive = false;
                    let msg = format!("IP interface failure detected on {} of group {name}", self.nics[j].name);
                    self.nic_output(j, msg);
                }
                // Host targets are flushed on group failure; router targets kept.
                for p in &mut self.nics[j].probes {
                    p.targets.retain(|t| t.kind == TargetKind::Router);
                }
            }
        }
        self.update_group(now);
    }

    /// Repair (rule 13): link up and, with probing, 10 acks in a row on either family.
    fn check_repair(&mut self, now: Instant, i: usize) {
        let n = &self.nics[i];
        if !n.failed || n.offline || n.link != Some(true) || n.repair_at.is_some() {
            return;
        }
        if n.probing() && !n.probes.iter().any(|p| p.repaired()) {
            return;
        }
        let group_was_failed = self.state == GroupState::Failed;
        self.nics[i].failed = false;
        self.become_running(now, i, Running::Repair { group_was_failed });
    }

    /// The active/inactive policy when a NIC becomes usable (rule 17).
    fn become_running(&mut self, now: Instant, i: usize, why: Running) {
        let nnonstandby = self.nics.iter().filter(|n| !n.standby).count();
        let nactive = (0..self.nics.len()).filter(|&j| j != i && self.nics[j].active()).count();
        let n = &self.nics[i];
        let inactive = if n.standby {
            nactive >= nnonstandby
        } else {
            match why {
                Running::Initial | Running::Online => false,
                Running::Repair { group_was_failed } => !(self.config.failback || group_was_failed),
            }
        };
        self.nics[i].inactive = inactive;
        if !self.nics[i].standby && !inactive {
            // Failback to the normal interface: a standby in use steps back.
            while self.nics.iter().filter(|n| n.active()).count() > nnonstandby {
                let Some(s) = (0..self.nics.len()).find(|&j| j != i && self.nics[j].standby && self.nics[j].active())
                else {
                    break;
                };
                self.nics[s].inactive = true;
                let msg = format!(
                    "standby interface {} of group {} is no longer needed",
                    self.nics[s].name, self.config.name
                );
                self.nic_output(s, msg);
            }
        }
        let msg = match why {
            Running::Initial => format!("IP interface {} of group {} is running", self.nics[i].name, self.config.name),
            Running::Repair { .. } => {
                format!("IP interface repair detected on {} of group {}", self.nics[i].name, self.config.name)
            }
            Running::Online => format!("IP interface {} of group {} is online", self.nics[i].name, self.config.name),
        };
        self.nic_output(i, msg);
        self.update_group(now);
    }

    /// Activates an inactive functioning member, standby first (rule 12).
    fn activate_another(&mut self, except: usize) {
        let pick = (0..self.nics.len())
            .filter(|&j| j != except && self.nics[j].functioning() && self.nics[j].inactive)
            .min_by_key(|&j| (!self.nics[j].standby, j));
        if let Some(j) = pick {
            self.nics[j].inactive = false;
            let msg = format!(
                "IP interface {} of group {} activated in place of {}",
                self.nics[j].name, self.config.name, self.nics[except].name
            );
            self.nic_output(j, msg);
        }
    }

    /// `if_mpadm -d` (rule 19).
    pub fn offline(&mut self, now: Instant, nic: &str) -> Result<(), AdminError> {
        let i = self.nic_index(nic).ok_or_else(|| AdminError::Unknown(nic.to_string()))?;
        if self.nics[i].offline {
            return Err(AdminError::AlreadyOffline(nic.to_string()));
        }
        let group_failed = self.state == GroupState::Failed;
        let other = (0..self.nics.len())
            .any(|j| j != i && if group_failed { !self.nics[j].offline } else { self.nics[j].functioning() });
        if !other {
            return Err(AdminError::MinRedundancy(nic.to_string()));
        }
        let was_active = self.nics[i].active();
        self.nics[i].offline = true;
        self.nics[i].inactive = false;
        for p in &mut self.nics[i].probes {
            p.clear_stats();
            p.next_send = None;
        }
        if was_active {
            self.activate_another(i);
        }
        self.nic_output(i, format!("IP interface {nic} of group {} is offline", self.config.name));
        self.update_group(now);
        Ok(())
    }

    /// `if_mpadm -r` (rule 20).
    pub fn online(&mut self, now: Instant, nic: &str) -> Result<(), AdminError> {
        let i = self.nic_index(nic).ok_or_else(|| AdminError::Unknown(nic.to_string()))?;
        if !self.nics[i].offline {
            return Err(AdminError::NotOffline(nic.to_string()));
        }
        self.nics[i].offline = false;
        for k in 0..self.nics[i].probes.len() {
            let (pi, r) = (self.pi, self.rand01());
            self.nics[i].probes[k].start(now, pi, r);
        }
        if self.nics[i].failed || self.nics[i].link != Some(true) {
            self.nics[i].failed = true;
            self.nic_output(i, format!("IP interface {nic} of group {} is online but failed", self.config.name));
            self.update_group(now);
        } else {
            self.become_running(now, i, Running::Online);
        }
        Ok(())
    }

    /// Recomputes the group state and the data-address binding.
    fn update_group(&mut self, _now: Instant) {
        let usable = self.nics.iter().filter(|n| n.functioning()).count();
        let state = if usable == 0 {
            GroupState::Failed
        } else if usable == self.nics.len() {
            GroupState::Ok
        } else {
            GroupState::Degraded
        };
        if state != self.state {
            let name = self.config.name.clone();
            let message = match state {
                GroupState::Failed => format!("All IP interfaces in group {name} are now unusable"),
                _ if self.state == GroupState::Failed => {
                    let first = self.nics.iter().find(|n| n.functioning()).map(|n| n.name.clone()).unwrap_or_default();
                    format!("At least 1 IP interface ({first}) in group {name} is now usable")
                }
                _ => format!("group {name} is now {}", if state == GroupState::Ok { "ok" } else { "degraded" }),
            };
            self.state = state;
            self.out.push_back(Output::Group { state, message });
        }
        self.rebalance();
    }

    /// Inbound binding (§4.4 rules 2–3): every data address on the active NIC with the
    /// fewest, moved only as much as needed to keep counts within one of each other.
    fn rebalance(&mut self) {
        let active: Vec<usize> = (0..self.nics.len()).filter(|&j| self.nics[j].active()).collect();
        let before = self.binding.clone();
        let load = |b: &BTreeMap<IpAddr, Option<usize>>, j: usize| b.values().filter(|v| **v == Some(j)).count();
        let addrs: Vec<IpAddr> = self.binding.keys().copied().collect();
        for a in &addrs {
            let ok = self.binding[a].is_some_and(|j| active.contains(&j));
            if !ok {
                let least = active.iter().copied().min_by_key(|&j| (load(&self.binding, j), j));
                self.binding.insert(*a, least);
            }
        }
        while let Some(&most) = active.iter().max_by_key(|&&j| (load(&self.binding, j), std::cmp::Reverse(j))) {
            let Some(&least) = active.iter().min_by_key(|&&j| (load(&self.binding, j), j)) else { break };
            if load(&self.binding, most) <= load(&self.binding, least) + 1 {
                break;
            }
            let Some(a) = addrs.iter().rev().find(|a| self.binding[*a] == Some(most)) else { break };
            self.binding.insert(*a, Some(least));
        }
        for a in addrs {
            if before.get(&a) != self.binding.get(&a) {
                let nic = self.binding[&a].map(|j| self.nics[j].name.clone());
                self.out.push_back(Output::Bound { addr: a, nic });
            }
        }
    }

    /// The NICs traffic may leave through (all active ones).
    pub fn outbound(&self) -> Vec<String> {
        self.nics.iter().filter(|n| n.active()).map(|n| n.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests;
