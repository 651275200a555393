//! The IPMP state machine against in.mpathd's numbers, with explicit time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::probe::TargetState;
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const ROUTER: &str = "198.18.1.254";

fn config(nics: &[&str], standby: &[&str], probing: &[&str], fdt_ms: u64, failback: bool) -> GroupConfig {
    let mut test_addresses = BTreeMap::new();
    for (k, n) in probing.iter().enumerate() {
        test_addresses.insert(n.to_string(), vec![(ip(&format!("198.18.1.{}", 11 + k)), 24)]);
    }
    GroupConfig {
        name: "prod".into(),
        interfaces: nics.iter().map(|s| s.to_string()).collect(),
        standby: standby.iter().map(|s| s.to_string()).collect(),
        data_addresses: vec![(ip("198.18.1.5"), 24), (ip("198.18.1.6"), 24)],
        test_addresses,
        failure_detection_time: ms(fdt_ms),
        failback,
        probe_targets: vec![],
        announce_count: 3,
    }
}

/// Drives a group: delivers replies from targets that answer, after `rtt`.
struct Sim {
    g: Group,
    now: Instant,
    t0: Instant,
    /// (nic, target) pairs whose probes are answered; `None` target: all of that NIC.
    silent: Vec<(String, Option<IpAddr>)>,
    rtt: BTreeMap<IpAddr, Duration>,
    pending: Vec<(Instant, String, bool, IpAddr, u16, Duration)>,
    outputs: Vec<(Duration, Output)>,
    sent: usize,
}

impl Sim {
    fn new(cfg: GroupConfig) -> Sim {
        let t0 = Instant::now();
        let mut g = Group::new(cfg, t0, 7);
        let names: Vec<String> = g.nics.iter().map(|n| n.name.clone()).collect();
        for n in &names {
            g.link(t0, n, Some(true));
        }
        g.set_routers(t0, false, &[ip(ROUTER)]);
        let mut s =
            Sim { g, now: t0, t0, silent: vec![], rtt: BTreeMap::new(), pending: vec![], outputs: vec![], sent: 0 };
        s.drain();
        s
    }

    fn at(&self) -> Duration {
        self.now - self.t0
    }

    fn drain(&mut self) {
        while let Some(o) = self.g.poll_output() {
            if let Output::SendProbe { nic, v6, dst, seq, .. } = &o {
                if dst.is_multicast() {
                    continue;
                }
                self.sent += 1;
                let silent = self.silent.iter().any(|(n, t)| n == nic && t.is_none_or(|t| t == *dst));
                if !silent {
                    let rtt = self.rtt.get(dst).copied().unwrap_or(ms(1));
                    self.pending.push((self.now + rtt, nic.clone(), *v6, *dst, *seq, rtt));
                }
            }
            let at = self.at();
            self.outputs.push((at, o));
        }
    }

    /// Runs until `t0 + until`.
    fn run(&mut self, until: Duration) {
        let end = self.t0 + until;
        loop {
            let next_reply = self.pending.iter().map(|p| p.0).min();
            let next = [self.g.poll_timeout(), next_reply].into_iter().flatten().min();
            let Some(next) = next.filter(|&t| t <= end) else { break };
            self.now = next.max(self.now);
            let due: Vec<_> = self.pending.iter().filter(|p| p.0 <= self.now).cloned().collect();
            self.pending.retain(|p| p.0 > self.now);
            for (_, nic, v6, from, seq, rtt) in due {
                self.g.probe_reply(self.now, &nic, v6, from, seq, rtt, false);
            }
            if self.g.poll_timeout().is_some_and(|t| t <= self.now) {
                self.g.handle_timeout(self.now);
            }
            self.drain();
        }
        self.now = end.max(self.now);
    }

    fn nic(&self, name: &str) -> &Nic {
        &self.g.nics[self.g.nic_index(name).unwrap()]
    }

    /// When the first output matching `f` came, after `since`.
    fn when(&self, since: Duration, f: impl Fn(&Output) -> bool) -> Option<Duration> {
        self.outputs.iter().find(|(t, o)| *t >= since && f(o)).map(|(t, _)| *t)
    }

    fn bound(&self) -> Vec<(String, Option<String>)> {
        self.g.binding.iter().map(|(a, j)| (a.to_string(), j.map(|j| self.g.nics[j].name.clone()))).collect()
    }
}

#[test]
fn probe_interval_is_fdt_over_seven_in_whole_ms() {
    assert_eq!(probe_interval(ms(10_000)), ms(1428));
    assert_eq!(probe_interval(ms(100)), ms(14));
}

#[test]
fn link_failure_moves_addresses_and_failback_restores_balance() {
    let mut s = Sim::new(config(&["en1", "en2"], &[], &[], 10_000, true));
    assert_eq!(s.g.state, GroupState::Ok);
    // Two data addresses on two NICs: one each (within one of each other).
    let b = s.bound();
    assert_ne!(b[0].1, b[1].1, "{b:?}");
    assert!(b.iter().all(|(_, n)| n.is_some()));

    let t = s.at();
    s.g.link(s.now, "en1", Some(false));
    s.drain();
    assert!(s.nic("en1").failed);
    assert_eq!(s.g.state, GroupState::Degraded);
    assert!(s.bound().iter().all(|(_, n)| n.as_deref() == Some("en2")));
    assert!(s.when(t, |o| matches!(o, Output::Nic { message, .. } if message == "IP interface failure detected on en1 of group prod")).is_some());

    s.run(ms(5_000));
    s.g.link(s.now, "en1", Some(true));
    s.drain();
    assert!(!s.nic("en1").failed && s.nic("en1").active());
    assert_eq!(s.g.state, GroupState::Ok);
    let b = s.bound();
    assert_ne!(b[0].1, b[1].1, "rebalanced: {b:?}");
}

#[test]
fn all_links_down_is_group_failure_and_first_repair_recovers() {
    let mut s = Sim::new(config(&["en1", "en2"], &[], &[], 10_000, true));
    s.g.link(s.now, "en1", Some(false));
    s.g.link(s.now, "en2", Some(false));
    s.drain();
    assert_eq!(s.g.state, GroupState::Failed);
    assert!(s.bound().iter().all(|(_, n)| n.is_none()), "unbound with no active NIC");
    assert!(s.outputs.iter().any(|(_, o)| matches!(o, Output::Group { message, .. } if message == "All IP interfaces in group prod are now unusable")));
    s.run(ms(1_000));
    s.g.link(s.now, "en2", Some(true));
    s.drain();
    assert_eq!(s.g.state, GroupState::Degraded);
    assert!(s.outputs.iter().any(|(_, o)| matches!(o, Output::Group { message, .. } if message == "At least 1 IP interface (en2) in group prod is now usable")));
    assert!(s.bound().iter().all(|(_, n)| n.as_deref() == Some("en2")));
}

#[test]
fn link_flapping_defers_repair_for_a_minute() {
    let mut s = Sim::new(config(&["en1", "en2"], &[], &[], 10_000, true));
    for k in 0..3 {
        s.run(ms(1_000 + k * 2_000));
        s.g.link(s.now, "en1", Some(false));
        s.run(ms(2_000 + k * 2_000));
        s.g.link(s.now, "en1", Some(true));
        s.drain();
    }
    // Up at 2 s, 4 s, 6 s: the third within 60 s of the first is not repaired...
    assert!(s.nic("en1").failed);
    assert!(s
        .outputs
        .iter()
        .any(|(_, o)| matches!(o, Output::Message(m) if m.contains("more than 2 times in the last minute"))));
    s.run(ms(61_000));
    assert!(s.nic("en1").failed);
    // ...until 60 s after the older of the two before it (2 s + 60 s).
    s.run(ms(62_001));
    assert!(!s.nic("en1").failed);
}

#[test]
fn five_lost_probes_fail_a_nic_within_fdt_and_ten_acks_repair_it() {
    // FDT 700 ms → PI 100 ms.
    let mut s = Sim::new(config(&["en1", "en2"], &[], &["en1", "en2"], 700, true));
    s.run(ms(3_000));
    assert_eq!(s.g.pi, ms(100));
    assert!(!s.nic("en1").failed);
    assert!(s.nic("en1").probes[0].quiet_until.is_none(), "the first ack ends the quiet period");

    let silent_from = s.at();
    s.silent.push(("en1".into(), None));
    s.run(ms(5_000));
    let failed_at = s
        .when(silent_from, |o| matches!(o, Output::Nic { nic, state: NicState::Failed, .. } if nic == "en1"))
        .expect("failed");
    let detection = failed_at - silent_from;
    assert!(detection <= ms(700 + 100), "detected after {detection:?}, FDT 700 ms + one PI");
    assert!(detection >= ms(400), "not before five probes could be lost: {detection:?}");
    assert_eq!(s.g.state, GroupState::Degraded, "en2 answers: an interface failure, not a group one");
    assert!(s.bound().iter().all(|(_, n)| n.as_deref() == Some("en2")));

    let answer_from = s.at();
    s.silent.clear();
    s.run(ms(8_000));
    let repaired_at = s
        .when(answer_from, |o| matches!(o, Output::Nic { nic, state: NicState::Ok, .. } if nic == "en1"))
        .expect("repaired");
    let repair = repaired_at - answer_from;
    // Ten acks ≈ 10 probe intervals (1.43 × FDT).
    assert!(repair >= ms(900) && repair <= ms(1_100 + 100), "repaired after {repair:?}");
}

#[test]
fn silence_on_every_nic_is_a_group_failure() {
    let mut s = Sim::new(config(&["en1", "en2"], &[], &["en1", "en2"], 700, true));
    s.run(ms(2_000));
    s.silent.push(("en1".into(), None));
    s.silent.push(("en2".into(), None));
    s.run(ms(4_000));
    assert_eq!(s.g.state, GroupState::Failed);
    assert!(s.nic("en1").failed && s.nic("en2").failed);
}

#[test]
fn quiet_period_ignores_losses_until_the_first_ack() {
    let mut s = Sim::new(config(&["en1", "en2"], &[], &["en1"], 700, true));
    s.silent.push(("en1".into(), None));
    s.run(ms(30_000));
    assert!(!s.nic("en1").failed, "40 s quiet period after start");
    s.run(ms(41_000));
    assert!(s.nic("en1").failed, "failed once the quiet period is over");
}

#[test]
fn a_dead_target_is_dropped_not_the_nic_and_comes_back_after_two_minutes() {
    let mut s = Sim::new(config(&["en1", "en2"], &[], &["en1", "en2"], 700, true));
    let other = ip("198.18.1.253");
    s.g.set_routers(s.now, false, &[ip(ROUTER), other]);
    s.run(ms(2_000));
    s.silent.push(("en1".into(), Some(ip(ROUTER))));
    s.run(ms(4_000));
    assert!(!s.nic("en1").failed, "the other target answers");
    let t = |s: &Sim| s.nic("en1").probes[0].targets.iter().find(|t| t.addr == ip(ROUTER)).unwrap().state;
    assert_eq!(t(&s), TargetState::Dead);
    s.silent.clear();
    s.run(ms(4_000 + 60_000 + 500));
    assert_eq!(t(&s), TargetState::Slow);
    s.run(ms(4_000 + 120_000 + 500));
    assert_eq!(t(&s), TargetState::Active);
}

#[test]
fn slow_targets_raise_the_fdt_and_fast_ones_lower_it_after_a_minute() {
    let mut s = Sim::new(config(&["en1", "en2"], &[], &["en1"], 700, true));
    s.rtt.insert(ip(ROUTER), ms(150));
    s.run(ms(3_000));
    assert!(s.g.fdt > ms(700), "raised: {:?}", s.g.fdt);
    assert_eq!(s.g.fdt, s.g.pi * 7);
    assert!(s.outputs.iter().any(|(_, o)| matches!(o, Output::Message(m) if m.starts_with("Cannot meet requested failure detection time of 700 ms on (inet 198.18.1.11)"))));
    assert!(!s.nic("en1").failed);
    s.rtt.insert(ip(ROUTER), ms(1));
    s.run(ms(200_000));
    assert_eq!(s.g.fdt, ms(700), "back to the requested FDT");
    assert!(s
        .outputs
        .iter()
        .any(|(_, o)| matches!(o, Output::Message(m) if m.starts_with("Improved failure detection time"))));
}

#[test]
fn standby_is_used_only_while_needed() {
    let mut s = Sim::new(config(&["en1", "en2", "en3"], &["en3"], &[], 10_000, true));
    assert!(s.nic("en3").inactive && !s.nic("en3").active());
    s.g.link(s.now, "en1", Some(false));
    s.drain();
    assert!(s.nic("en3").active(), "standby activated for the failed NIC");
    s.run(ms(1_000));
    s.g.link(s.now, "en1", Some(true));
    s.drain();
    assert!(s.nic("en1").active());
    assert!(s.nic("en3").inactive, "failback: the standby steps back");
    assert!(s.bound().iter().all(|(_, n)| n.as_deref() != Some("en3")));
}

#[test]
fn without_failback_a_repaired_nic_stays_inactive() {
    let mut s = Sim::new(config(&["en1", "en2", "en3"], &["en3"], &[], 10_000, false));
    s.g.link(s.now, "en1", Some(false));
    s.drain();
    s.run(ms(1_000));
    s.g.link(s.now, "en1", Some(true));
    s.drain();
    assert!(!s.nic("en1").failed && s.nic("en1").inactive, "repaired but kept inactive");
    assert!(s.nic("en3").active());
    // It is used again when another member fails.
    s.g.link(s.now, "en2", Some(false));
    s.drain();
    assert!(s.nic("en1").active());
}

#[test]
fn after_a_group_failure_a_repaired_nic_is_active_even_without_failback() {
    let mut s = Sim::new(config(&["en1", "en2"], &[], &[], 10_000, false));
    s.g.link(s.now, "en1", Some(false));
    s.g.link(s.now, "en2", Some(false));
    s.run(ms(1_000));
    s.g.link(s.now, "en1", Some(true));
    s.drain();
    assert!(s.nic("en1").active());
}

#[test]
fn offline_refuses_the_last_usable_nic_and_online_brings_it_back() {
    let mut s = Sim::new(config(&["en1", "en2"], &[], &[], 10_000, true));
    s.g.offline(s.now, "en1").unwrap();
    s.drain();
    assert_eq!(s.nic("en1").state(), NicState::Offline);
    assert!(s.bound().iter().all(|(_, n)| n.as_deref() == Some("en2")));
    assert_eq!(
        s.g.offline(s.now, "en2").unwrap_err().to_string(),
        "cannot offline en2: no other functioning interfaces are in its IPMP group"
    );
    assert_eq!(s.g.offline(s.now, "en1").unwrap_err().to_string(), "interface en1 is already offline");
    assert_eq!(s.g.online(s.now, "en2").unwrap_err().to_string(), "interface en2 is not offline");
    s.g.online(s.now, "en1").unwrap();
    s.drain();
    assert!(s.nic("en1").active());
    assert_eq!(s.g.state, GroupState::Ok);
}
