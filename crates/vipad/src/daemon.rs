//! The daemon's one owner of state.
//!
//! ```text
//!  netlink events thread ──Input::Kernel / Input::Resync──┐
//!  control socket threads ──Input::Control(req, reply)────┤
//!  signal thread ──────────Input::Signal──────────────────┼──> channel ──> Daemon::run (this thread)
//!  cluster thread ─────────Input::Cluster(news)───────────┘                 │
//!                                                                          plan ─> Kernel::apply
//! ```
//!
//! Every other thread only turns I/O into an [`Input`]; only this thread reads or
//! changes the configuration, the observed kernel state and the ledger. The cluster
//! thread keeps the cluster's state (see `cluster.rs`); this thread reads what it holds
//! when it plans.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
use vipa_api::{ApplyReport, Request, Response, StatusView};
use vipa_core::model::{KernelEvent, Observed, Op};
use vipa_core::plan::{self, wanted_sysctls};
use vipa_core::{Config, DeviceMode, Ledger};
use vipa_kernel::netlink::Unresolved;
use vipa_kernel::{Kernel, Outcome, Update};

use crate::{edit, views};

/// When the refreshes after a carrier change are repeated.
const REFRESH_AGAIN: [Duration; 3] =
    [Duration::from_millis(20), Duration::from_millis(200), Duration::from_millis(1000)];

/// Plans larger than this are logged as one summary line, each change at debug level.
pub const BULK: usize = 32;

/// How long one plan goes on deleting the addresses of released DVIPAs (`Plan::releases`)
/// and adding those of IPv6 DVIPAs their routes already hold (`Plan::trailing`) before
/// the daemon acts on what came meanwhile and plans again: this, or `TRAILING_TO_PLANNING`
/// times what planning took (with thousands held, most of each batch still goes to the
/// kernel's work).
const TRAILING_AT_ONCE: Duration = Duration::from_millis(50);
const TRAILING_TO_PLANNING: u32 = 4;

/// How long a stopping vipad goes on deleting the addresses of the DVIPAs it hands over and
/// adding those of the IPv6 DVIPAs it keeps (`finish`), in all; systemd's default stop
/// timeout is 90 s.
const STOP_FINISHING: Duration = Duration::from_secs(60);

/// Everything the daemon reacts to.
pub enum Input {
    Kernel(Vec<Update>),
    /// The event stream lost messages: dump everything again.
    Resync(String),
    Control(Request, Sender<Response>),
    /// A control connection wants the event stream.
    Subscribe(std::sync::mpsc::SyncSender<vipa_api::Event>),
    /// What the cluster thread decided that concerns the kernel or the event stream.
    Cluster(crate::cluster::News),
    Reload,
    Stop(&'static str),
}

#[derive(Default)]
pub(crate) struct Counters {
    kernel_events: u64,
    resyncs: u64,
    changes_applied: u64,
    changes_failed: u64,
    reloads: u64,
}

pub struct Daemon {
    pub config: Config,
    pub config_path: PathBuf,
    pub socket_path: PathBuf,
    pub state_path: PathBuf,
    pub node: String,
    pub kernel: Kernel,
    pub observed: Observed,
    pub ledger: Ledger,
    pub mode: DeviceMode,
    pub mode_note: String,
    pub warnings: Vec<String>,
    pub started: Instant,
    pub(crate) counters: Counters,
    pub last_reload_error: Option<String>,
    pub ipmp: crate::ipmp::Ipmp,
    /// The ARP filter last given to nftables, and whether nftables works here.
    pub arp_applied: Option<vipa_core::plan::ArpFilter>,
    pub nft: Result<(), String>,
    pub cluster: Option<crate::cluster::ClusterHandle>,
    /// Refreshes to repeat after a carrier change (see [`Refresh`]): a socket that looked
    /// its path up between the first refresh and the kernel marking the route `linkdown`
    /// would otherwise stay on the dead NIC.
    pub refresh_due: Vec<(Instant, Refresh)>,
    /// Probes towards peers not heard (see `reach`).
    pub reach: crate::reach::Reach,
    /// Answers for IPv6 DVIPAs whose address is still to come (see `answer`).
    pub answering: crate::answer::Answering,
    pub announcer: crate::announce::Announcer,
    /// The last plan left addresses of DVIPAs to delete or to add for later: plan again
    /// once the inputs queued meanwhile are handled.
    pub more: bool,
    /// How many IPv6 DVIPA addresses to add the last plan left.
    pub trailing_left: usize,
    /// How many addresses of released DVIPAs to delete the last plan left.
    pub releases_left: usize,
}

/// What is done again shortly after a carrier change.
#[derive(Debug, Clone)]
pub enum Refresh {
    /// An IPv6 route through the NIC is replaced by itself, so that connections look up
    /// their path again.
    Route(Op),
    /// The neighbour entries the NIC (by index), its carrier lost, is still resolving are
    /// dropped: a segment a connection sent on the old path before the refresh waits in
    /// such an entry for about three seconds, and the kernel does not retransmit a segment
    /// that is still queued on the host, so the connection stalled that long.
    Neighbours(u32),
}

/// Drops the neighbour entries towards the cluster's peers, and the gateways of the
/// routes they may lie behind, that the kernel is still resolving or failed to resolve
/// (see `forget_unresolved_neighbours`): all of them at start, before the cluster thread
/// sends anything, and those on NIC `nic` when its carrier comes back. What vipad sent
/// into a cut link, or a vipad killed while its link was down, leaves such entries, and
/// the kernel's next try can be a second away: until then (or until a peer's own request
/// resolves them) nothing this node sends reaches those peers, its challenges go
/// unanswered, and it would give up what it kept for want of a quorum. Without the
/// entries, the first heartbeat resolves at once. (What other programs had queued on such
/// an entry is dropped with it; they were waiting on a dead path.)
pub fn forget_unresolved_peers(
    kernel: &mut Kernel,
    c: &vipa_core::cluster::ClusterConfig,
    observed: &Observed,
    nic: Option<u32>,
) {
    let gateways = observed.routes.values().flat_map(|r| r.gateways.iter().copied());
    let towards: HashSet<std::net::IpAddr> = c.peers.iter().map(|p| p.ip().to_canonical()).chain(gateways).collect();
    let (which, interface) = match nic {
        Some(index) => (Unresolved::OnNicTo(index, &towards), observed.link_name(index)),
        None => (Unresolved::To(&towards), "any".to_string()),
    };
    forget(kernel, which, &interface, "unresolved neighbour entries towards peers dropped, to be resolved afresh");
}

/// Carries out `forget_unresolved_neighbours`, and says `done` if there were any.
fn forget(kernel: &mut Kernel, which: Unresolved<'_>, interface: &str, done: &str) {
    match kernel.forget_unresolved_neighbours(which) {
        Ok(0) => {}
        Ok(n) => info!(interface = %interface, entries = n, "{done}"),
        Err(e) => warn!(interface = %interface, error = %e, "cannot list neighbour entries"),
    }
}

/// Reads and validates a configuration file: syntax and model errors, then what the
/// kernel's view tells. Returns the config and its warnings.
pub fn load_config(
    path: &Path,
    observed: &Observed,
    ledger: &Ledger,
    mode: DeviceMode,
) -> Result<(Config, Vec<String>), String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Err(format!("{}: cannot read the configuration file: {e}", path.display())),
    };
    validate(path, &text, observed, ledger, mode)
}

pub fn validate(
    path: &Path,
    text: &str,
    observed: &Observed,
    ledger: &Ledger,
    mode: DeviceMode,
) -> Result<(Config, Vec<String>), String> {
    let file = path.display().to_string();
    let config = Config::parse(&file, text).map_err(|e| e.to_string())?;
    let findings = plan::check(&file, &config, observed, ledger, mode);
    if !findings.errors.is_empty() {
        return Err(findings.errors.join("\n"));
    }
    Ok((config, findings.warnings))
}

impl Daemon {
    /// Runs until told to stop. Addresses and routes stay in place when it returns: a
    /// restarted vipad adopts them without a flap.
    pub fn run(&mut self, rx: Receiver<Input>) {
        let now = Instant::now();
        self.ipmp.sync_config(&self.config, now);
        self.ipmp.observe(&self.observed, now);
        self.ipmp.drain(&self.observed);
        self.reconcile();
        self.follow_unheard(now);
        loop {
            // Sleep until the next input, the next timer of IPMP groups, a refresh or a
            // round of probes towards missed peers (the cluster has its own thread).
            let deadline = [
                self.ipmp.poll_timeout(),
                self.refresh_due.iter().map(|(t, _)| *t).min(),
                self.reach.due,
                self.more.then(Instant::now),
            ]
            .into_iter()
            .flatten()
            .min();
            let first = match deadline {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(input) => Some(input),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return,
                },
            };
            let mut dirty = false;
            let mut kernel_changed = false;
            let mut announce = false;
            let mut membership = false;
            let mut next = first;
            // Take everything already queued before planning once.
            while let Some(input) = next.take() {
                match input {
                    Input::Kernel(updates) => {
                        self.counters.kernel_events += updates.len() as u64;
                        for u in updates {
                            let event = self.kernel.absorb(u);
                            debug!(?event, "kernel event");
                            let mut refreshes = Vec::new();
                            if let KernelEvent::NewLink(after) = &event {
                                let before = self.observed.links.get(&after.index).cloned();
                                if before.as_ref().is_some_and(|b| b.carrier != after.carrier) {
                                    info!(interface = %after.name, carrier = after.carrier, "carrier changed");
                                    if let (true, Some(c)) = (after.carrier, &self.config.cluster) {
                                        forget_unresolved_peers(&mut self.kernel, c, &self.observed, Some(after.index));
                                    }
                                }
                                let ops = plan::carrier_changed(&self.config, before.as_ref(), after, &self.observed);
                                refreshes.extend(ops.into_iter().map(Refresh::Route));
                                if !refreshes.is_empty() && !after.carrier {
                                    refreshes.push(Refresh::Neighbours(after.index));
                                }
                            }
                            self.observed.apply(&event);
                            // Refreshes change no desired state: done now (with the link as
                            // it is now), and again shortly after.
                            let now = Instant::now();
                            for r in refreshes {
                                self.refresh(&r, false);
                                for later in REFRESH_AGAIN {
                                    self.refresh_due.push((now + later, r.clone()));
                                }
                            }
                        }
                        dirty = true;
                        kernel_changed = true;
                    }
                    Input::Resync(why) => {
                        warn!(cause = %why, "resynchronising with the kernel");
                        self.resync();
                        dirty = true;
                        kernel_changed = true;
                    }
                    Input::Subscribe(tx) => self.ipmp.subscribers.push(tx),
                    Input::Cluster(news) => {
                        // Membership changes come with an event.
                        membership |= !news.events.is_empty();
                        for e in news.events {
                            self.ipmp.publish("cluster", e);
                        }
                        dirty |= news.kernel;
                        announce |= news.announce;
                    }
                    Input::Control(req, reply) => {
                        if kernel_changed {
                            self.ipmp.observe(&self.observed, Instant::now());
                            kernel_changed = false;
                        }
                        if dirty || self.ipmp.drain(&self.observed) {
                            self.reconcile();
                            dirty = false;
                        }
                        let resp = self.control(req);
                        let _ = reply.send(resp);
                    }
                    Input::Reload => {
                        membership = true;
                        let r = self.reload();
                        if let Response::Error { message } = r {
                            error!(%message, "reload refused; the running configuration stays");
                        }
                    }
                    Input::Stop(signal) => {
                        let until = Instant::now() + STOP_FINISHING;
                        let left = self.leave_cluster(until);
                        self.finish_trailing(signal, until);
                        // What is kept here is announced before vipad goes (a second at
                        // most: the next vipad announces it again after its listening).
                        let unsaid = self.announcer.finish(until.min(Instant::now() + Duration::from_secs(1)));
                        if unsaid > 0 {
                            warn!(left = unsaid, "stopping before every announcement went out");
                        }
                        if left {
                            info!(signal, "stopping; DVIPAs a live peer can take were handed over; other addresses and routes stay in place for the next vipad");
                        } else {
                            info!(signal, "stopping; addresses and routes stay in place for the next vipad");
                        }
                        return;
                    }
                }
                next = rx.try_recv().ok();
            }
            let now = Instant::now();
            let due: Vec<Refresh> =
                self.refresh_due.iter().filter(|(t, _)| *t <= now).map(|(_, r)| r.clone()).collect();
            self.refresh_due.retain(|(t, _)| *t > now);
            for r in due {
                self.refresh(&r, true);
            }
            if kernel_changed {
                self.ipmp.observe(&self.observed, now);
            }
            self.ipmp.take_replies(now);
            self.ipmp.handle_timeout(now);
            if self.ipmp.drain(&self.observed) {
                dirty = true;
            }
            if dirty || self.more {
                self.reconcile();
            } else if announce {
                let held = self.observed.local_addresses();
                self.announce_cluster(&held);
            }
            if membership {
                self.follow_unheard(now);
            }
            self.reach.tick(now, &self.observed);
        }
    }

    /// Before stopping: the kernel answers only for addresses, so an IPv6 DVIPA still held
    /// by its route alone would be out of new neighbours' reach once vipad is gone. Adds
    /// what is left while that gets fewer, until `until`.
    fn finish_trailing(&mut self, signal: &str, until: Instant) {
        if self.trailing_left == 0 {
            return;
        }
        info!(
            signal,
            left = self.trailing_left,
            "stopping once the IPv6 DVIPAs still held here are addresses on their NICs"
        );
        let left = self.finish(|d| d.trailing_left, until);
        if left > 0 {
            warn!(left, "stopping with IPv6 DVIPAs held by their route alone: neighbours that ask for them go unanswered until vipad runs again");
        }
    }

    /// Plans and applies again while `left` (work the last plan left for later) gets
    /// fewer, until it is none or `until` passed; returns what is left.
    fn finish(&mut self, left: impl Fn(&Self) -> usize, until: Instant) -> usize {
        loop {
            let before = left(self);
            if before == 0 || Instant::now() >= until {
                return before;
            }
            self.reconcile();
            if left(self) >= before {
                return left(self);
            }
        }
    }

    /// Brings the probes towards peers not heard up to date with the cluster's view.
    fn follow_unheard(&mut self, now: Instant) {
        let Some(c) = &self.cluster else {
            self.reach = Default::default();
            return;
        };
        let (unheard, interval) = {
            let shell = c.lock();
            (shell.unheard(), shell.core.config.interval)
        };
        self.reach.update(unheard, interval, &mut self.kernel, &self.observed, now);
    }

    /// On a stop: hands over the DVIPAs a live peer can take (out of the kernel first, until
    /// `until` at the latest; the reconcile sends the leaving heartbeat once they are), then
    /// repeats it. False without a cluster.
    fn leave_cluster(&mut self, until: Instant) -> bool {
        let released = match &self.cluster {
            Some(c) => {
                let mut shell = c.lock();
                let now = shell.now();
                shell.leave(now)
            }
            None => return false,
        };
        if released {
            self.reconcile();
            let left = self.finish(|d| d.releases_left, until);
            if left > 0 {
                warn!(left, "stopping with addresses of DVIPAs handed over still on this host: once the peers find this node gone, they take them, and both hosts answer for them until the addresses are deleted");
            }
        }
        if let Some(c) = &self.cluster {
            let mut shell = c.lock();
            let now = shell.now();
            shell.say_goodbye(now);
        }
        true
    }

    /// Dumps the kernel again and replaces the observed state.
    pub fn resync(&mut self) {
        self.counters.resyncs += 1;
        match self.kernel.snapshot() {
            Ok(updates) => {
                let mut fresh = Observed::default();
                for u in updates {
                    let event = self.kernel.absorb(u);
                    fresh.apply(&event);
                }
                fresh.sysctls = std::mem::take(&mut self.observed.sysctls);
                self.observed = fresh;
            }
            Err(e) => error!(error = %e, "cannot dump kernel state"),
        }
    }

    fn refresh_sysctls(&mut self) {
        self.observed.sysctls.clear();
        for key in wanted_sysctls(&self.config, &self.observed, &self.ledger) {
            if let Some(v) = vipa_kernel::sysctl::read(&key) {
                self.observed.sysctls.insert(key, v);
            }
        }
    }

    /// Plans and applies until the kernel matches the configuration. Returns the changes
    /// made, in words.
    pub fn reconcile(&mut self) -> Vec<String> {
        let mut changes = Vec::new();
        let mut failed = false;
        let mut arp = None;
        let mut held_version = 0;
        let mut held = Vec::new();
        self.more = false;
        // One round normally suffices; a second covers what the first made possible.
        for _round in 0..3 {
            let round = Instant::now();
            // (What this round leaves for later; none if it has nothing to do.)
            (self.releases_left, self.trailing_left) = (0, 0);
            self.refresh_sysctls();
            let runtime = self.ipmp.runtime();
            (held, held_version) = self.cluster.as_ref().map(|c| c.lock().held()).unwrap_or_default();
            let plan = plan::plan_runtime(&self.config, &self.observed, &self.ledger, self.mode, &runtime, &held);
            let planning = round.elapsed();
            // Before the changes: nothing released is answered for while it goes; with
            // thousands of addresses to come, all of them are answered for from now on
            // (their routes come first, in a fraction of a second). A few addresses follow
            // their routes at once: no answering for them.
            self.answering.follow(&self.observed, &held, plan.trailing > BULK);
            arp = Some(plan.arp.clone());
            // No frame announces an address once it starts to go (nor after).
            self.announcer.withdraw(plan.ops.iter().filter_map(going));
            if plan.ops.is_empty() {
                self.set_ledger(plan.ledger);
                break;
            }
            let mut progress = false;
            let trailing_from = plan.trailing_from();
            let later_from = plan.later_from();
            // (Trailing addresses alone are followed by the log lines of `answer`.)
            let bulk = plan.ops.len() > BULK || trailing_from == 0;
            let mut batch_until = None;
            let mut applied = 0;
            // Thousands of addresses take a while; the cluster thread keeps the heartbeats
            // going meanwhile.
            for (i, op) in plan.ops.iter().enumerate() {
                if i >= later_from {
                    let until = *batch_until
                        .get_or_insert_with(|| Instant::now() + TRAILING_AT_ONCE.max(planning * TRAILING_TO_PLANNING));
                    if Instant::now() >= until {
                        // The rest after whatever came meanwhile (released DVIPAs whose
                        // addresses are gone are free for their next holder already).
                        self.more = true;
                        break;
                    }
                }
                match self.apply_one(op, bulk) {
                    Some(outcome) => {
                        changes.push(op.to_string());
                        if outcome != Outcome::AlreadyGone || matches!(op, Op::DelAddress { .. } | Op::DelRoute { .. })
                        {
                            self.observed.assume(op);
                        }
                        progress = true;
                    }
                    None => failed = true,
                }
                applied += 1;
            }
            if bulk && trailing_from > 0 {
                info!(changes = applied, first = %plan.ops[0], "applied a batch of changes");
            }
            (self.releases_left, self.trailing_left) = plan.left_after(applied);
            self.set_ledger(plan.ledger);
            if failed {
                // Never assume: look at what the kernel really has before planning again.
                self.resync();
                failed = false;
                // No more batches on a timer: what failed is retried by the rounds below
                // and by the next event.
                self.more = false;
            }
            if self.more {
                break;
            }
            if !progress || matches!(plan.ops.first(), Some(Op::AddDummy { .. })) {
                // A new dummy device is known by its event; the next event plans again.
                break;
            }
        }
        self.answering.follow(&self.observed, &held, false);
        // What the host has now, once (thousands of addresses): gathered outside the lock,
        // for the cluster thread waits for it.
        let here = self.observed.local_addresses();
        // Neighbours hear of a move once the kernel holds it; the ARP filter (an nft run,
        // tens of milliseconds) follows, since the announcement already points them right.
        self.ipmp.announce(&self.observed, &here, &self.announcer);
        if let Some(c) = &self.cluster {
            let mut shell = c.lock();
            let now = shell.now();
            shell.applied(now, held_version, &here, self.releases_left == 0);
        }
        self.announce_cluster(&here);
        if let Some(arp) = arp {
            self.apply_arp_filter(&arp);
        }
        changes
    }

    /// Announces the DVIPAs that are due, now that the kernel has them (`held`: what the
    /// host has, `Observed::local_addresses`).
    fn announce_cluster(&mut self, held: &BTreeSet<std::net::IpAddr>) {
        let Some(c) = &self.cluster else { return };
        let (items, taken) = c.lock().announcements();
        if items.is_empty() {
            return;
        }
        // Replies to peers the kernel failed to reach while this node was cut off must not
        // wait for its next try (see `forget_unresolved_neighbours`); only on NICs where an
        // address taken is in the kernel by now.
        let reached = |nic: &String| items.iter().any(|(a, n, _)| n == nic && held.contains(a));
        for nic in taken.iter().filter(|n| reached(n)) {
            if let Some(index) = self.observed.link_by_name(nic).map(|l| l.index) {
                self.forget_unresolved(index);
            }
        }
        self.announcer.send(&self.observed, held, items);
    }

    /// Drops the neighbour entries NIC `index` is still resolving or failed to resolve
    /// (see `forget_unresolved_neighbours`), and says so if there were any.
    fn forget_unresolved(&mut self, index: u32) {
        let nic = self.observed.link_name(index);
        forget(
            &mut self.kernel,
            Unresolved::OnNic(index),
            &nic,
            "unresolved neighbour entries dropped, to be resolved afresh",
        );
    }

    /// Carries out a refresh after a carrier change; a repeat (`again`) logs its route
    /// change at debug level only.
    fn refresh(&mut self, r: &Refresh, again: bool) {
        match r {
            Refresh::Route(op) => {
                self.apply_one(op, again);
            }
            // Not once the carrier is back (as far as the last link event said): the
            // entries resolve now.
            Refresh::Neighbours(index) => {
                if self.observed.links.get(index).is_some_and(|l| !l.carrier) {
                    self.forget_unresolved(*index);
                }
            }
        }
    }

    /// Gives nftables the IPMP ARP filter when it changed.
    fn apply_arp_filter(&mut self, filter: &vipa_core::plan::ArpFilter) {
        if self.arp_applied.as_ref() == Some(filter) || (self.arp_applied.is_none() && filter.is_empty()) {
            return;
        }
        if let Err(why) = &self.nft {
            if !filter.is_empty() {
                warn!(reason = %why, "no per-interface ARP binding for IPMP data addresses");
            }
            self.arp_applied = Some(filter.clone());
            return;
        }
        match vipa_kernel::nft::apply(filter) {
            Ok(()) => {
                info!(filter = ?filter.drop, "IPMP ARP filter applied");
                self.arp_applied = Some(filter.clone());
            }
            Err(e) => {
                self.counters.changes_failed += 1;
                error!(error = %e, "IPMP ARP filter not applied");
            }
        }
    }

    /// Carries out one operation, logging and counting it; `None` when it failed. In
    /// `bulk`, successes are logged at debug level (a summary follows at info).
    fn apply_one(&mut self, op: &Op, bulk: bool) -> Option<Outcome> {
        let observed = &self.observed;
        match self.kernel.apply(op, |name| observed.link_by_name(name).map(|l| l.index)) {
            Ok(outcome) => {
                self.counters.changes_applied += 1;
                if bulk {
                    debug!(change = %op, ?outcome, "applied");
                } else {
                    info!(change = %op, ?outcome, "applied");
                }
                Some(outcome)
            }
            Err(e) => {
                self.counters.changes_failed += 1;
                error!(change = %op, error = %e, "change failed");
                None
            }
        }
    }

    fn set_ledger(&mut self, ledger: Ledger) {
        if ledger == self.ledger {
            return;
        }
        self.ledger = ledger;
        if let Err(e) = save_ledger(&self.state_path, &self.ledger) {
            warn!(path = %self.state_path.display(), error = %e, "cannot save the ledger; originals are kept in memory only");
        }
    }

    /// Re-reads the configuration file and applies the difference.
    pub fn reload(&mut self) -> Response {
        self.counters.reloads += 1;
        match load_config(&self.config_path, &self.observed, &self.ledger, self.mode) {
            Err(message) => {
                self.last_reload_error = Some(message.clone());
                Response::Error { message }
            }
            Ok((config, warnings)) => {
                if let Err(message) = self.cluster_check(&config) {
                    self.last_reload_error = Some(message.clone());
                    return Response::Error { message };
                }
                self.last_reload_error = None;
                for w in &warnings {
                    warn!(warning = %w, "configuration");
                }
                info!(path = %self.config_path.display(), vipas = config.vipas.len(), "configuration loaded");
                self.config = config;
                self.warnings = warnings.clone();
                self.sync_groups();
                let changes = self.reconcile();
                Response::Applied(ApplyReport { changes, warnings, config_written: false })
            }
        }
    }

    /// Whether a new configuration's cluster part can be taken without a restart.
    fn cluster_check(&self, config: &Config) -> Result<(), String> {
        match &self.cluster {
            Some(c) => c.lock().check(config, &self.observed),
            None => crate::cluster::change_allowed(None, config.cluster.as_ref()),
        }
        .map_err(|e| format!("{e}; the running configuration stays"))
    }

    /// Brings the IPMP groups and the cluster in line with the configuration just adopted.
    fn sync_groups(&mut self) {
        let now = Instant::now();
        if let Some(c) = &self.cluster {
            if let Err(e) = c.lock().reconfigure(&self.config, &self.observed, now) {
                warn!(error = %e, "cluster configuration not taken");
            }
        }
        self.ipmp.sync_config(&self.config, now);
        self.ipmp.observe(&self.observed, now);
        self.ipmp.drain(&self.observed);
    }

    /// Edits the configuration file, validates the result whole, writes it, applies it.
    fn edit_config(&mut self, change: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), String>) -> Response {
        let text = match fs::read_to_string(&self.config_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Response::Error { message: format!("{}: cannot read: {e}", self.config_path.display()) },
        };
        let mut doc: toml_edit::DocumentMut = match text.parse() {
            Ok(d) => d,
            Err(e) => {
                return Response::Error {
                    message: format!(
                        "{}: the file does not parse, so it cannot be edited: {e}",
                        self.config_path.display()
                    ),
                }
            }
        };
        if let Err(message) = change(&mut doc) {
            return Response::Error { message };
        }
        let new_text = doc.to_string();
        let (config, warnings) = match validate(&self.config_path, &new_text, &self.observed, &self.ledger, self.mode) {
            Ok(x) => x,
            Err(message) => {
                return Response::Error { message: format!("the change is refused, nothing was changed:\n{message}") }
            }
        };
        // (The file may carry a cluster change made by hand that this one would apply.)
        if let Err(message) = self.cluster_check(&config) {
            return Response::Error { message: format!("the change is refused, nothing was changed: {message}") };
        }
        if let Err(e) = write_atomically(&self.config_path, new_text.as_bytes()) {
            return Response::Error {
                message: format!("{}: cannot write: {e}; nothing was changed", self.config_path.display()),
            };
        }
        info!(path = %self.config_path.display(), "configuration file rewritten");
        self.config = config;
        self.warnings = warnings.clone();
        self.sync_groups();
        let changes = self.reconcile();
        Response::Applied(ApplyReport { changes, warnings, config_written: true })
    }

    fn control(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Vipas => Response::Vipas {
                vipas: self
                    .config
                    .vipas
                    .iter()
                    .map(|v| views::vipa_view(v, &self.config, &self.observed, &self.ledger, self.mode))
                    .collect(),
            },
            Request::Vipa { name } => match self.config.vipa(&name) {
                Some(v) => Response::Vipa(views::vipa_view(v, &self.config, &self.observed, &self.ledger, self.mode)),
                None => Response::Error { message: format!("no VIPA named {name:?}: `vipactl vipa` lists them") },
            },
            Request::Reload => self.reload(),
            Request::AddVipa { name, addresses, interfaces } => {
                if addresses.is_empty() {
                    return Response::Error { message: "a VIPA needs at least one address (--address)".into() };
                }
                self.edit_config(|doc| edit::add_vipa(doc, &name, &addresses, &interfaces))
            }
            Request::DeleteVipa { name } => self.edit_config(|doc| edit::delete_vipa(doc, &name)),
            Request::Ipmp => Response::Ipmp(self.ipmp.view()),
            Request::Cluster => match &self.cluster {
                Some(c) => Response::Cluster(c.lock().view(Instant::now())),
                None => Response::Error { message: "no [cluster] is configured on this node".into() },
            },
            Request::Dvipas => match &self.cluster {
                Some(c) => Response::Dvipas { dvipas: c.lock().dvipas(Instant::now()) },
                None => Response::Dvipas { dvipas: vec![] },
            },
            Request::DvipaMove { address, node } => self.dvipa_admin(&address, |c, now, a| c.move_to(now, a, &node)),
            Request::DvipaDeactivate { address } => self.dvipa_admin(&address, |c, now, a| c.deactivate(now, a)),
            Request::DvipaReactivate { address } => self.dvipa_admin(&address, |c, now, a| c.reactivate(now, a)),
            Request::Offline { interface } => self.admin(&interface, true),
            Request::Online { interface } => self.admin(&interface, false),
            // Answered by the control thread itself.
            Request::Events => Response::Error { message: "events are a stream: use vipa_api::stream_events".into() },
            Request::ChangeInterfaces { vipa, add, remove } => {
                if add.is_empty() && remove.is_empty() {
                    return Response::Error { message: "nothing to change: give --add IF and/or --remove IF".into() };
                }
                self.edit_config(|doc| edit::change_interfaces(doc, &vipa, &add, &remove))
            }
        }
    }

    /// A DVIPA command: the cluster decides, the kernel follows.
    fn dvipa_admin(
        &mut self,
        address: &str,
        f: impl FnOnce(&mut vipa_core::cluster::Cluster, Instant, std::net::IpAddr) -> Result<(), String>,
    ) -> Response {
        let Some(c) = &self.cluster else {
            return Response::Error { message: "no [cluster] is configured on this node".into() };
        };
        let Ok(addr) = vipa_core::config::parse_host_address(address) else {
            return Response::Error {
                message: format!("{address:?} is not a DVIPA address: write it as in [[dvipa]] address, such as 198.18.1.200 or 2001:db8::200"),
            };
        };
        let news = {
            let mut shell = c.lock();
            let now = shell.now();
            if let Err(message) = f(&mut shell.core, now, addr) {
                return Response::Error { message };
            }
            shell.drain()
        };
        for e in news.events {
            self.ipmp.publish("cluster", e);
        }
        self.reconcile();
        Response::Done { message: format!("{addr}: done; `vipactl dvipa` shows the result") }
    }

    /// `if_mpadm -d` / `-r`: the group decides, the kernel follows.
    fn admin(&mut self, interface: &str, offline: bool) -> Response {
        let now = Instant::now();
        let r = if offline { self.ipmp.offline(interface, now) } else { self.ipmp.online(interface, now) };
        match r {
            Ok(message) => {
                info!(interface, offline, "{message}");
                self.ipmp.drain(&self.observed);
                self.reconcile();
                Response::Done { message }
            }
            Err(message) => Response::Error { message },
        }
    }

    fn status(&self) -> StatusView {
        let views: Vec<_> = self
            .config
            .vipas
            .iter()
            .map(|v| views::vipa_view(v, &self.config, &self.observed, &self.ledger, self.mode))
            .collect();
        StatusView {
            version: env!("CARGO_PKG_VERSION").into(),
            node: self.node.clone(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config_path: self.config_path.display().to_string(),
            socket_path: self.socket_path.display().to_string(),
            state_path: self.state_path.display().to_string(),
            device_mode: match self.mode {
                DeviceMode::Dummy => "dummy".into(),
                DeviceMode::Loopback => "lo".into(),
            },
            device_note: self.mode_note.clone(),
            vipas: views.len(),
            addresses_total: views.iter().map(|v| v.addresses.len()).sum(),
            addresses_active: views.iter().map(|v| v.addresses.iter().filter(|a| a.active).count()).sum(),
            routes_sourced: views.iter().map(|v| v.routes.iter().filter(|r| r.prefsrc.is_some()).count()).sum(),
            sysctls_set: self.ledger.sysctls.len(),
            kernel_events: self.counters.kernel_events,
            resyncs: self.counters.resyncs,
            changes_applied: self.counters.changes_applied,
            changes_failed: self.counters.changes_failed,
            reloads: self.counters.reloads,
            last_reload_error: self.last_reload_error.clone(),
            warnings: self.warnings.clone(),
            groups: self
                .ipmp
                .view()
                .groups
                .into_iter()
                .map(|g| vipa_api::GroupSummary { group: g.group, state: g.state, active: g.active })
                .collect(),
            cluster: self.cluster.as_ref().map(|c| c.lock().summary()),
            answering: self.answering.summary(&self.observed),
        }
    }
}

/// The address `op` takes off this host: an address, or the local route a DVIPA is held by
/// (IPv4 on a NIC that answers ARP for every local address, IPv6 until its address comes). Its announcements are withdrawn on every
/// NIC: a DVIPA is announced on all its `announce` NICs, its address is on the first.
fn going(op: &Op) -> Option<std::net::IpAddr> {
    match op {
        Op::DelAddress { addr, .. } => Some(*addr),
        Op::DelRoute { key } if key.table == vipa_core::model::TABLE_LOCAL => Some(key.dst),
        _ => None,
    }
}

/// Applies the events of a snapshot to an empty view.
pub fn observe(kernel: &mut Kernel, updates: Vec<Update>) -> Observed {
    let mut o = Observed::default();
    for u in updates {
        let e: KernelEvent = kernel.absorb(u);
        o.apply(&e);
    }
    o
}

pub fn load_ledger(path: &Path) -> Ledger {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "state file not understood; starting from the kernel alone");
            Ledger::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::default(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the state file; starting from the kernel alone");
            Ledger::default()
        }
    }
}

fn save_ledger(path: &Path, ledger: &Ledger) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(ledger).map_err(std::io::Error::other)?;
    write_atomically(path, &text)
}

/// Writes to a temporary file beside `path` and renames it over, keeping the mode.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir)?;
        }
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    if let Ok(meta) = fs::metadata(path) {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.permissions().mode()))?;
    }
    fs::rename(&tmp, path)
}
