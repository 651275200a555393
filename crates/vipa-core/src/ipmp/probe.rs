//! One probe instance: the ICMP probing of one NIC for one address family, with
//! in.mpathd's numbers (seed-systems.md §4.3, rules 1–10, 13–16).
//!
//! It keeps the 52-slot probe history, the targets with their RTT estimates (CRTT), and
//! decides when the next probe goes out. It never reads a clock or an RNG: `now` comes in,
//! and the random offsets come from the group's seeded generator.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// in.mpathd: consecutive lost probes that fail a NIC.
pub const NUM_PROBE_FAILS: usize = 5;
/// in.mpathd: consecutive acknowledged probes that repair a NIC.
pub const NUM_PROBE_REPAIRS: usize = 10;
/// in.mpathd: probe history kept per instance (10·5 + 2).
pub const PROBE_STATS_COUNT: usize = NUM_PROBE_REPAIRS * NUM_PROBE_FAILS + 2;
/// in.mpathd: most targets probed at once.
pub const MAX_PROBE_TARGETS: usize = 5;
/// in.mpathd: targets activated when the last active router target goes.
pub const MIN_PROBE_TARGETS: usize = 3;
/// in.mpathd: quiet period after an instance is created (spanning-tree learning).
pub const FAILURE_DETECTION_QP: Duration = Duration::from_secs(40);
/// in.mpathd: time before a dead target is tried again, and a slow one after it.
pub const MIN_RECOVERY_TIME: Duration = Duration::from_secs(60);
/// in.mpathd: suspect RTT samples deferred before they count (MAXDEFERREDRTT + 1).
pub const MAX_DEFERRED_RTT: u8 = 1;

/// Where a target came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A next hop from the routing table, or one given in the configuration.
    Router,
    /// A host that answered a multicast echo.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    Active,
    Unused,
    /// Too slow compared with the others (adaptive FDT exception).
    Slow,
    /// Lost 5 probes in a row while the NIC's other targets answered.
    Dead,
}

/// A probe target and its RTT estimate (Jacobson/Karels, in.mpathd's integer form, µs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: IpAddr,
    pub kind: TargetKind,
    pub state: TargetState,
    /// 8 × the smoothed RTT, µs.
    sa: i64,
    /// 4 × the mean deviation, µs.
    sv: i64,
    pub crtt: Option<Duration>,
    deferred: u8,
    /// When it last changed to Dead or Slow.
    pub since: Option<Instant>,
}

impl Target {
    pub fn new(addr: IpAddr, kind: TargetKind) -> Target {
        Target { addr, kind, state: TargetState::Active, sa: 0, sv: 0, crtt: None, deferred: 0, since: None }
    }

    /// RTT average (sa/8) for views.
    pub fn rtt_avg(&self) -> Option<Duration> {
        self.crtt.map(|_| Duration::from_micros((self.sa / 8).max(0) as u64))
    }

    /// RTT deviation (sv/4) for views.
    pub fn rtt_dev(&self) -> Option<Duration> {
        self.crtt.map(|_| Duration::from_micros((self.sv / 4).max(0) as u64))
    }

    /// Folds one RTT sample in (in.mpathd `pi_set_crtt`): CRTT = sa/8 + sv.
    pub fn sample(&mut self, m: Duration) {
        let m = m.as_micros() as i64;
        if self.crtt.is_none() {
            // First sample: sa = 8m, sv = 2m, so CRTT = 3m.
            self.sa = m * 8;
            self.sv = m * 2;
        } else {
            let err = m - self.sa / 8;
            self.sa = (self.sa + err).max(0);
            self.sv += err.abs() - self.sv / 4;
        }
        self.crtt = Some(Duration::from_micros((self.sa / 8 + self.sv).max(0) as u64));
    }

    /// What CRTT would be with this sample, without taking it.
    fn crtt_with(&self, m: Duration) -> Duration {
        let mut t = self.clone();
        t.sample(m);
        t.crtt.unwrap_or(m)
    }

    /// Forgets the estimate (on NIC failure, rule 12).
    pub fn reset_rtt(&mut self) {
        self.sa = 0;
        self.sv = 0;
        self.crtt = None;
        self.deferred = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStatus {
    Unacked,
    Acked,
    Lost,
}

/// One sent failure-detection probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    pub seq: u16,
    pub target: IpAddr,
    pub sent: Instant,
    pub status: ProbeStatus,
    /// When it was acked or declared lost.
    pub settled: Option<Instant>,
    pub rtt: Option<Duration>,
}

/// What became of one probe, for `vipactl ipmp -p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEvent {
    pub seq: u16,
    pub target: IpAddr,
    pub sent: Instant,
    pub rtt: Option<Duration>,
}

/// Probing of one NIC for one address family.
#[derive(Debug, Clone)]
pub struct ProbeInstance {
    pub v6: bool,
    pub test_addr: IpAddr,
    pub targets: Vec<Target>,
    pub history: VecDeque<ProbeRecord>,
    /// Next sequence number (in.mpathd `pi_snxt`).
    pub snxt: u16,
    base: Option<Instant>,
    pub next_send: Option<Instant>,
    /// Round-robin position among active targets.
    cursor: usize,
    /// End of the quiet period; `None` once a probe was acked.
    pub quiet_until: Option<Instant>,
    pub last_ack: Option<Instant>,
    /// Probes that became acked or lost since last drained (for the probe stream).
    pub settled: Vec<(ProbeEvent, bool)>,
    /// Whether the targets came from the configuration (never replaced by discovery).
    pub static_targets: bool,
    pub missed: u64,
}

impl ProbeInstance {
    pub fn new(v6: bool, test_addr: IpAddr, now: Instant) -> ProbeInstance {
        ProbeInstance {
            v6,
            test_addr,
            targets: Vec::new(),
            history: VecDeque::with_capacity(PROBE_STATS_COUNT),
            snxt: 1,
            base: None,
            next_send: None,
            cursor: 0,
            quiet_until: Some(now + FAILURE_DETECTION_QP),
            last_ack: None,
            settled: Vec::new(),
            static_targets: false,
            missed: 0,
        }
    }

    pub fn active_targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(|t| t.state == TargetState::Active)
    }

    pub fn has_targets(&self) -> bool {
        self.active_targets().next().is_some()
    }

    /// Active targets in firing order, starting with the next one.
    pub fn firing_order(&self) -> Vec<IpAddr> {
        let active: Vec<IpAddr> = self.active_targets().map(|t| t.addr).collect();
        if active.is_empty() {
            return active;
        }
        let start = self.cursor % active.len();
        active[start..].iter().chain(&active[..start]).copied().collect()
    }

    /// Schedules probing: the first base time is `now + rand[0, PI]` (rule 2).
    pub fn start(&mut self, now: Instant, pi: Duration, rand01: f64) {
        let base = now + pi.mul_f64(rand01);
        self.base = Some(base);
        self.next_send = Some(base + pi.mul_f64(0.5 + 0.5 * rand01));
    }

    /// Clears the probe history (on link down, rule 13), keeping targets.
    pub fn clear_stats(&mut self) {
        self.history.clear();
    }

    /// Takes the next target in firing order and advances the cursor.
    pub fn next_target(&mut self) -> Option<IpAddr> {
        let order = self.firing_order();
        let t = *order.first()?;
        self.cursor = (self.cursor % order.len()) + 1;
        Some(t)
    }

    /// Records a sent probe and schedules the next: send at `base + rand[0.5, 1.0]·PI`,
    /// base advancing by PI; skipped periods are counted as missed (rule 2).
    pub fn record_sent(&mut self, now: Instant, target: IpAddr, pi: Duration, rand01: f64) -> u16 {
        let seq = self.snxt;
        self.snxt = self.snxt.wrapping_add(1);
        if self.history.len() == PROBE_STATS_COUNT {
            self.history.pop_front();
        }
        self.history.push_back(ProbeRecord {
            seq,
            target,
            sent: now,
            status: ProbeStatus::Unacked,
            settled: None,
            rtt: None,
        });
        self.schedule_next(now, pi, rand01);
        seq
    }

    /// Advances the schedule by one period without sending (no targets).
    pub fn schedule_next(&mut self, now: Instant, pi: Duration, rand01: f64) {
        let mut base = self.base.unwrap_or(now) + pi;
        let mut next = base + pi.mul_f64(0.5 + 0.5 * rand01);
        while next < now {
            base += pi;
            next = base + pi.mul_f64(0.5 + 0.5 * rand01);
            self.missed += 1;
        }
        self.base = Some(base);
        self.next_send = Some(next);
    }

    /// Marks probes lost (rule 7): an unacked probe is lost once `now` passes its send
    /// time plus its target's CRTT (or the probe interval without one); of the probes
    /// still unacked, all but the most recent are forced lost.
    pub fn settle_losses(&mut self, now: Instant, pi: Duration) {
        let crtt =
            |targets: &[Target], a: IpAddr| targets.iter().find(|t| t.addr == a).and_then(|t| t.crtt).unwrap_or(pi);
        let newest_unacked = self.history.iter().rposition(|p| p.status == ProbeStatus::Unacked);
        for (i, p) in self.history.iter_mut().enumerate() {
            if p.status != ProbeStatus::Unacked {
                continue;
            }
            let timed_out = now > p.sent + crtt(&self.targets, p.target);
            let forced = Some(i) != newest_unacked;
            if timed_out || forced {
                p.status = ProbeStatus::Lost;
                p.settled = Some(now);
                self.settled.push((ProbeEvent { seq: p.seq, target: p.target, sent: p.sent, rtt: None }, false));
            }
        }
    }

    /// Takes a reply (rule 6): accepted when its sequence is within the last 52 sent and
    /// it came from the target that probe went to. Returns whether it was accepted.
    pub fn ack(&mut self, now: Instant, from: IpAddr, seq: u16, rtt: Duration, pi: Duration) -> bool {
        let Some(p) = self.history.iter_mut().find(|p| p.seq == seq) else { return false };
        if p.target != from || p.status == ProbeStatus::Acked {
            return false;
        }
        // A late reply to a probe already declared lost still proves the path works.
        p.status = ProbeStatus::Acked;
        p.settled = Some(now);
        p.rtt = Some(rtt);
        let event = ProbeEvent { seq: p.seq, target: p.target, sent: p.sent, rtt: Some(rtt) };
        self.settled.push((event, true));
        self.last_ack = Some(now);
        self.quiet_until = None;
        let newest_for_target =
            self.history.iter().rev().find(|q| q.target == from && q.status == ProbeStatus::Acked).map(|q| q.seq);
        // RTT samples come only from the highest-sequence ack of a target, and a sample
        // longer than 52 probe intervals is a scheduling hiccup (rule 8).
        if newest_for_target == Some(seq) && rtt <= pi * PROBE_STATS_COUNT as u32 {
            if let Some(t) = self.targets.iter_mut().find(|t| t.addr == from) {
                let suspect = t.crtt.is_some() && t.crtt_with(rtt) > pi;
                if suspect && t.deferred < MAX_DEFERRED_RTT {
                    t.deferred += 1;
                } else {
                    t.deferred = 0;
                    t.sample(rtt);
                }
            }
        }
        true
    }

    /// Settled probes, most recent first (unacked ones skipped).
    fn settled_back(&self) -> impl Iterator<Item = &ProbeRecord> {
        self.history.iter().rev().filter(|p| p.status != ProbeStatus::Unacked)
    }

    /// (consecutive losses over all targets, when the first of them was lost,
    /// consecutive losses to the most recent probe's target) — rule 10.
    pub fn losses(&self) -> (usize, Option<Instant>, usize) {
        let mut nfail = 0;
        let mut tff = None;
        for p in self.settled_back() {
            if p.status != ProbeStatus::Lost {
                break;
            }
            nfail += 1;
            tff = p.settled;
        }
        let current = self.settled_back().next().map(|p| p.target);
        let nfail_tg = match current {
            None => 0,
            Some(t) => {
                self.settled_back().filter(|p| p.target == t).take_while(|p| p.status == ProbeStatus::Lost).count()
            }
        };
        (nfail, tff, nfail_tg)
    }

    /// Whether the last 10 settled probes (all targets), or the last 10 to the current
    /// target, were acked (rule 13).
    pub fn repaired(&self) -> bool {
        let all = self.settled_back().take(NUM_PROBE_REPAIRS).filter(|p| p.status == ProbeStatus::Acked).count();
        if all == NUM_PROBE_REPAIRS {
            return true;
        }
        let Some(current) = self.settled_back().next().map(|p| p.target) else { return false };
        self.settled_back()
            .filter(|p| p.target == current)
            .take(NUM_PROBE_REPAIRS)
            .filter(|p| p.status == ProbeStatus::Acked)
            .count()
            == NUM_PROBE_REPAIRS
    }

    /// The most recent settled probe was acked.
    pub fn latest_acked(&self) -> bool {
        self.settled_back().next().is_some_and(|p| p.status == ProbeStatus::Acked)
    }

    /// A target failed while others answer (rule 10.1): a router target goes Dead and is
    /// kept; a host target is removed.
    pub fn fail_target(&mut self, now: Instant, addr: IpAddr) {
        if let Some(i) = self.targets.iter().position(|t| t.addr == addr) {
            if self.targets[i].kind == TargetKind::Host {
                self.targets.remove(i);
            } else {
                self.targets[i].state = TargetState::Dead;
                self.targets[i].since = Some(now);
            }
        }
        self.refill(now);
    }

    /// Recovery (rule 16): Dead → Slow after 60 s, Slow → Unused after another 60 s, and
    /// Unused → Active while fewer than 5 are active.
    pub fn recover_targets(&mut self, now: Instant) {
        for t in &mut self.targets {
            match (t.state, t.since) {
                (TargetState::Dead, Some(s)) if now >= s + MIN_RECOVERY_TIME => {
                    t.state = TargetState::Slow;
                    t.since = Some(now);
                }
                (TargetState::Slow, Some(s)) if now >= s + MIN_RECOVERY_TIME => {
                    t.state = TargetState::Unused;
                    t.since = None;
                    t.reset_rtt();
                }
                _ => {}
            }
        }
        self.refill(now);
    }

    /// Activates unused targets up to the cap; when none is active, activates up to 3 of
    /// the best remaining (slow before dead).
    fn refill(&mut self, _now: Instant) {
        let mut active = self.active_targets().count();
        for t in self.targets.iter_mut().filter(|t| t.state == TargetState::Unused) {
            if active >= MAX_PROBE_TARGETS {
                break;
            }
            t.state = TargetState::Active;
            active += 1;
        }
        if active == 0 {
            let mut order: Vec<usize> = (0..self.targets.len()).collect();
            order.sort_by_key(|&i| match self.targets[i].state {
                TargetState::Slow => 0,
                TargetState::Dead => 1,
                _ => 2,
            });
            for i in order.into_iter().take(MIN_PROBE_TARGETS) {
                self.targets[i].state = TargetState::Active;
                self.targets[i].since = None;
            }
        }
    }

    /// Replaces router targets with `routers` (rule 15): known ones keep their state,
    /// gone ones are dropped unless `keep` (the group has failed), new ones start Unused and
    /// are activated up to the cap. Any router target replaces all host targets.
    pub fn set_routers(&mut self, now: Instant, routers: &[IpAddr], keep: bool) {
        if !routers.is_empty() {
            self.targets.retain(|t| t.kind == TargetKind::Router);
        }
        self.targets.retain(|t| t.kind == TargetKind::Host || keep || routers.contains(&t.addr));
        for &r in routers {
            if !self.targets.iter().any(|t| t.addr == r) {
                let mut t = Target::new(r, TargetKind::Router);
                t.state = TargetState::Unused;
                self.targets.push(t);
            }
        }
        self.refill(now);
    }

    /// A host answered a multicast probe (rule 16): added while there are no router
    /// targets and fewer than 5 hosts.
    pub fn add_host(&mut self, addr: IpAddr) -> bool {
        if self.targets.iter().any(|t| t.kind == TargetKind::Router || t.addr == addr) {
            return false;
        }
        if self.targets.len() >= MAX_PROBE_TARGETS {
            return false;
        }
        self.targets.push(Target::new(addr, TargetKind::Host));
        true
    }

    /// Whether a multicast discovery probe should go out at this tick: no targets, or a
    /// single host target (rule 16). Never with static targets.
    pub fn wants_discovery(&self) -> bool {
        !self.static_targets
            && !self.targets.iter().any(|t| t.kind == TargetKind::Router)
            && self.targets.iter().filter(|t| t.kind == TargetKind::Host).count() <= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn crtt_first_sample_is_three_times_it_and_follows_jacobson() {
        let mut t = Target::new("198.18.1.254".parse().unwrap(), TargetKind::Router);
        t.sample(ms(10));
        assert_eq!(t.crtt, Some(ms(30)));
        // err = 10 - 10 = 0: sa stays 80, sv = 20 - 5 = 15 → CRTT = 10 + 15 = 25 ms.
        t.sample(ms(10));
        assert_eq!(t.crtt, Some(ms(25)));
        assert_eq!(t.rtt_avg(), Some(ms(10)));
    }

    #[test]
    fn at_most_one_probe_stays_unacked() {
        let now = Instant::now();
        let mut p = ProbeInstance::new(false, "198.18.1.6".parse().unwrap(), now);
        let tg: IpAddr = "198.18.1.254".parse().unwrap();
        p.set_routers(now, &[tg], false);
        p.record_sent(now, tg, ms(100), 0.5);
        p.record_sent(now + ms(10), tg, ms(100), 0.5);
        p.settle_losses(now + ms(11), ms(100));
        let st: Vec<_> = p.history.iter().map(|r| r.status).collect();
        assert_eq!(st, vec![ProbeStatus::Lost, ProbeStatus::Unacked]);
    }
}
