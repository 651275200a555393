//! The daemon's side of the cluster: the UDP heartbeat transport, the key, the clock and
//! the kernel facts (connections on a DVIPA) the pure [`vipa_core::cluster::Cluster`]
//! needs; carrying out its outputs; and the views.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};
use vipa_api::{ClusterView, DvipaView, MemberView};
use vipa_core::cluster::{Cluster, ClusterConfig, Output, Quorum};
use vipa_core::model::Observed;
use vipa_core::plan::HeldDvipa;
use vipa_core::Config;
use vipa_wire::cluster::{Heartbeat, HeartbeatError, FLAG_PROBE};

use crate::daemon::Input;

/// Shortest key accepted, in bytes.
pub const MIN_KEY: usize = 32;
/// Gratuitous ARPs / NAs of each form per DVIPA activation or refresh.
const ANNOUNCE_COUNT: u32 = 3;
/// How often connections on held when-idle DVIPAs are counted.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Reads and checks the cluster key: at least 32 bytes, not readable by others.
pub fn load_key(path: &str) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| {
        format!("cluster key {path}: {e}; make one with `vipactl cluster keygen {path}` and copy it to every node")
    })?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "cluster key {path} is readable by others (mode {:o}): chmod 600 {path}",
            meta.permissions().mode() & 0o777
        ));
    }
    let key = fs::read(path).map_err(|e| format!("cluster key {path}: {e}"))?;
    if key.len() < MIN_KEY {
        return Err(format!(
            "cluster key {path} has {} bytes; at least {MIN_KEY} are needed: `vipactl cluster keygen {path}` makes one",
            key.len()
        ));
    }
    Ok(key)
}

pub struct ClusterShell {
    pub core: Cluster,
    key: Vec<u8>,
    sock: UdpSocket,
    announce: Vec<(IpAddr, Vec<String>)>,
    next_idle_check: Instant,
    addresses: BTreeMap<String, SocketAddr>,
    logged_drop: Option<Instant>,
    /// Whether some held DVIPA needs its connections counted (recomputed on moves).
    watching: bool,
    /// DVIPAs released whose addresses the kernel may still have: until the kernel work is
    /// done, heartbeats still claim them (a peer activating one now would make two holders).
    releasing: Vec<usize>,
    /// A heartbeat to every peer is held back until then.
    pending_all: bool,
    /// This node's name and incarnation, for the receiving thread's answers.
    identity: Arc<Mutex<(String, u64)>>,
}

/// Whether a running cluster (`None`: none) can take the configuration's `[cluster]`
/// without a restart of vipad.
pub fn change_allowed(running: Option<&ClusterConfig>, new: Option<&ClusterConfig>) -> Result<(), String> {
    match (running, new) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err("adding [cluster] needs a restart of vipad".into()),
        (Some(_), None) => Err("removing [cluster] needs a restart of vipad".into()),
        (Some(c), Some(n)) if n.port != c.port || n.key_file != c.key_file => {
            Err("a new cluster port or key file needs a restart of vipad".into())
        }
        (Some(_), Some(_)) => Ok(()),
    }
}

/// A new incarnation: the wall clock in microseconds, so that a restart's is higher.
fn new_incarnation() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

/// The DVIPAs the kernel still has from before (a vipad that was killed, or a changed
/// configuration).
fn kept(config: &Config, observed: &Observed) -> Vec<IpAddr> {
    let held = observed.local_addresses();
    config.dvipas.iter().map(|d| d.address).filter(|a| held.contains(a)).collect()
}

/// The receiving thread: authenticates and parses every datagram, answers probes at once
/// (so a daemon held up in kernel work is not taken for dead), and hands the rest on.
fn receive_loop(sock: UdpSocket, key: Vec<u8>, identity: Arc<Mutex<(String, u64)>>, tx: Sender<Input>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let parsed = Heartbeat::parse(&buf[..n], &key);
        if let Ok(h) = &parsed {
            let (me, incarnation) = identity.lock().map(|i| i.clone()).unwrap_or_default();
            if h.flags & FLAG_PROBE != 0 && h.node != me {
                if let Err(e) = sock.send_to(&Heartbeat::answer(&me, incarnation, h).emit(&key), from) {
                    debug!(peer = %from, error = %e, "probe not answered");
                }
            }
        }
        if tx.send(Input::Cluster(parsed, from)).is_err() {
            return;
        }
    }
}

impl ClusterShell {
    /// Binds the heartbeat socket and starts its receiver. `observed` tells which DVIPAs
    /// the kernel still has from before this start.
    pub fn start(
        config: &Config,
        observed: &Observed,
        tx: Sender<Input>,
        now: Instant,
    ) -> Result<Option<ClusterShell>, String> {
        let Some(c) = config.cluster.clone() else { return Ok(None) };
        let key = load_key(&c.key_file)?;
        let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), c.port))
            .or_else(|_| UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], c.port))))
            .map_err(|e| format!("cannot listen for heartbeats on UDP port {}: {e}", c.port))?;
        let present = kept(config, observed);
        let incarnation = new_incarnation();
        let identity = Arc::new(Mutex::new((c.me.clone(), incarnation)));
        let (rx, rx_key, rx_identity) = (sock.try_clone().map_err(|e| e.to_string())?, key.clone(), identity.clone());
        thread::Builder::new()
            .name("cluster".into())
            .spawn(move || receive_loop(rx, rx_key, rx_identity, tx))
            .map_err(|e| e.to_string())?;
        info!(node = %c.me, peers = ?c.peers, interval_ms = c.interval.as_secs_f64() * 1e3, dead_after = c.dead_after, kept = ?present, "cluster starting; listening before claiming");
        let core = Cluster::new(c, config.dvipas.clone(), now, incarnation, &present);
        Ok(Some(ClusterShell {
            core,
            key,
            sock,
            announce: Vec::new(),
            next_idle_check: now,
            addresses: BTreeMap::new(),
            logged_drop: None,
            watching: false,
            releasing: Vec::new(),
            pending_all: false,
            identity,
        }))
    }

    /// Takes a changed `[cluster]` or `[[dvipa]]` list: the node starts listening again
    /// (keeping what it holds) under a new incarnation. A different port or key file
    /// needs a restart.
    pub fn reconfigure(&mut self, config: &Config, observed: &Observed, now: Instant) -> Result<bool, String> {
        change_allowed(Some(&self.core.config), config.cluster.as_ref())?;
        let Some(c) = config.cluster.clone() else { return Ok(false) };
        if c == self.core.config && config.dvipas == self.core.dvipas {
            return Ok(false);
        }
        let present = kept(config, observed);
        let incarnation = new_incarnation();
        if let Ok(mut id) = self.identity.lock() {
            *id = (c.me.clone(), incarnation);
        }
        self.core = Cluster::new(c, config.dvipas.clone(), now, incarnation, &present);
        info!("cluster configuration changed; listening before claiming");
        Ok(true)
    }

    /// A datagram arrived, authenticated and parsed by the receiving thread.
    pub fn datagram(&mut self, now: Instant, parsed: Result<Heartbeat, HeartbeatError>, from: SocketAddr) {
        match parsed {
            Ok(h) => {
                self.addresses.insert(h.node.clone(), from);
                self.core.receive(now, h);
            }
            Err(e) => {
                let d = &mut self.core.drops;
                match e {
                    HeartbeatError::Unauthenticated => d.unauthenticated += 1,
                    HeartbeatError::Version(_) => d.wrong_version += 1,
                    HeartbeatError::Malformed(_) => d.malformed += 1,
                }
                // One line a second at most: a flood must not flood the log.
                if self.logged_drop.is_none_or(|t| now >= t + Duration::from_secs(1)) {
                    self.logged_drop = Some(now);
                    warn!(%from, error = %e, "cluster datagram dropped");
                }
            }
        }
    }

    /// DVIPAs whose connections matter: held here as a backup with `when-idle` takeback
    /// (the owner gets them back once they are idle). Counting walks the kernel's whole TCP
    /// table, so nothing else is counted.
    fn watched(&self) -> impl Iterator<Item = (usize, IpAddr)> + '_ {
        let me = &self.core.config.me;
        self.core
            .dvipas
            .iter()
            .enumerate()
            .filter(|(i, d)| {
                self.core.held[*i] && d.takeback == vipa_core::cluster::Takeback::WhenIdle && d.owner != *me
            })
            .map(|(i, d)| (i, d.address))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.core.poll_timeout();
        if !self.watching {
            t
        } else {
            [t, Some(self.next_idle_check)].into_iter().flatten().min()
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.watching && now >= self.next_idle_check {
            let watched: Vec<(usize, IpAddr)> = self.watched().collect();
            self.next_idle_check = now + IDLE_CHECK;
            let addrs = watched.iter().map(|&(_, a)| a).collect();
            if let Ok(counts) = vipa_kernel::conns::established(&addrs) {
                let busy = watched.into_iter().map(|(i, a)| (i, counts.get(&a).is_some_and(|&n| n > 0)));
                self.core.set_busy(now, busy);
            }
        }
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
    }

    /// Carries out the core's outputs; returns events for the stream and whether the
    /// kernel's desired state changed.
    pub fn drain(&mut self) -> (bool, Vec<String>) {
        let mut dirty = false;
        let mut events = Vec::new();
        let outputs: Vec<Output> = std::iter::from_fn(|| self.core.poll_output()).collect();
        // A heartbeat without a released address's claim goes out only once the kernel no
        // longer has the address (see `flush`).
        for o in &outputs {
            if let Output::Release { index, .. } = o {
                self.releasing.push(*index);
            }
        }
        let hold = !self.releasing.is_empty();
        for o in outputs {
            match o {
                Output::Heartbeat(_) if hold => self.pending_all = true,
                Output::Heartbeat(h) => self.send_all(&h),
                Output::HeartbeatTo { node, mut heartbeat } => {
                    self.still_claim(&mut heartbeat);
                    self.send_to(&node, &heartbeat)
                }
                Output::Activate { index, cause } => {
                    let d = &self.core.dvipas[index];
                    info!(dvipa = %d.address, %cause, "DVIPA activated");
                    events.push(format!("DVIPA {} activated: {cause}", d.address));
                    self.announce.push((d.address, d.announce.clone()));
                    dirty = true;
                }
                Output::Release { index, cause } => {
                    let d = &self.core.dvipas[index];
                    info!(dvipa = %d.address, %cause, "DVIPA released");
                    events.push(format!("DVIPA {} released: {cause}", d.address));
                    dirty = true;
                }
                Output::Announce { index } => {
                    let d = &self.core.dvipas[index];
                    self.announce.push((d.address, d.announce.clone()));
                }
                Output::Event(text) => {
                    info!("{text}");
                    events.push(text);
                }
            }
        }
        if dirty {
            let watching = self.watched().next().is_some();
            self.watching = watching;
        }
        (dirty, events)
    }

    fn send_all(&self, h: &Heartbeat) {
        let bytes = h.emit(&self.key);
        for p in &self.core.config.peers {
            if let Err(e) = self.sock.send_to(&bytes, p) {
                debug!(peer = %p, error = %e, "heartbeat not sent");
            }
        }
    }

    /// Only nodes already heard from are probed or answered.
    fn send_to(&self, node: &str, h: &Heartbeat) {
        if let Some(to) = self.addresses.get(node) {
            if let Err(e) = self.sock.send_to(&h.emit(&self.key), to) {
                debug!(peer = %to, error = %e, "probe not sent");
            }
        }
    }

    /// The kernel work is done: released addresses are gone, so the heartbeat held back
    /// goes out now, fresh.
    pub fn flush(&mut self, now: Instant) {
        self.releasing.clear();
        if std::mem::take(&mut self.pending_all) {
            let h = self.core.heartbeat_now(now);
            self.send_all(&h);
        }
    }

    /// vipad is stopping: DVIPAs another node can take are released; returns whether the
    /// kernel must change before the leaving heartbeat goes out (through `flush`).
    pub fn leave(&mut self, now: Instant) -> bool {
        self.core.leave(now);
        let (dirty, _) = self.drain();
        dirty
    }

    /// After `leave` and the kernel work (which sent the leaving heartbeat once): twice more,
    /// since a lost one costs the peers a probe round.
    pub fn say_goodbye(&mut self, now: Instant) {
        for _ in 0..2 {
            let h = self.core.heartbeat_now(now);
            self.send_all(&h);
        }
    }

    /// The DVIPAs this node holds, for the planner.
    pub fn held(&self) -> Vec<HeldDvipa> {
        self.core
            .dvipas
            .iter()
            .enumerate()
            .filter(|(i, _)| self.core.held[*i])
            .map(|(_, d)| HeldDvipa { address: d.address, device: d.announce.first().cloned() })
            .collect()
    }

    /// Announcements due after activations, now that the kernel has the addresses.
    pub fn announce(&mut self, observed: &Observed) {
        let items = std::mem::take(&mut self.announce)
            .into_iter()
            .flat_map(|(addr, nics)| nics.into_iter().map(move |nic| (addr, nic, ANNOUNCE_COUNT)));
        crate::announce::send(observed, items);
    }

    /// Sends our heartbeat if one is due: called during long kernel work (thousands of
    /// addresses) so peers do not take a busy node for a dead one.
    pub fn keepalive(&mut self, now: Instant) {
        if let Some(mut h) = self.core.heartbeat_if_due(now) {
            if !self.releasing.is_empty() {
                self.pending_all = true;
            }
            self.still_claim(&mut h);
            self.send_all(&h);
        }
    }

    /// Addresses being released are still in the kernel until the kernel work is done: a
    /// heartbeat sent meanwhile still claims them.
    fn still_claim(&self, h: &mut Heartbeat) {
        for i in &self.releasing {
            vipa_wire::cluster::set_bit(&mut h.held, *i, true);
        }
    }

    /// The cluster in brief, for the status page.
    pub fn summary(&self) -> vipa_api::ClusterSummary {
        let c = &self.core;
        vipa_api::ClusterSummary {
            node: c.config.me.clone(),
            has_quorum: c.has_quorum(),
            alive: 1 + c.peers.values().filter(|p| p.alive).count(),
            members: c.config.size(),
            held: c.held.iter().filter(|h| **h).count(),
            dvipas: c.dvipas.len(),
            listening: c.syncing(),
        }
    }

    pub fn view(&self, now: Instant) -> ClusterView {
        let c = &self.core;
        let mut members = vec![MemberView {
            node: c.config.me.clone(),
            state: "self".into(),
            address: None,
            last_heard_ms: None,
            incarnation: None,
            same_config: true,
            rtt_us: None,
        }];
        for (name, p) in &c.peers {
            members.push(MemberView {
                node: name.clone(),
                state: if !p.alive {
                    "dead"
                } else if p.suspect.is_some() {
                    "suspect"
                } else if p.syncing {
                    "listening"
                } else {
                    "alive"
                }
                .into(),
                address: self.addresses.get(name).map(|a| a.ip().to_canonical().to_string()),
                last_heard_ms: c.peer_age(now, name).map(|d| d.as_millis() as u64),
                incarnation: Some(p.incarnation),
                same_config: p.same_config,
                rtt_us: p.rtt.map(|(srtt, _)| srtt.as_micros() as u64),
            });
        }
        let heard: Vec<IpAddr> = self.addresses.values().map(|a| a.ip().to_canonical()).collect();
        for p in &c.config.peers {
            if !heard.contains(&p.ip()) {
                members.push(MemberView {
                    node: "?".into(),
                    state: "unknown".into(),
                    address: Some(p.ip().to_string()),
                    last_heard_ms: None,
                    incarnation: None,
                    same_config: false,
                    rtt_us: None,
                });
            }
        }
        let d = &c.drops;
        ClusterView {
            node: c.config.me.clone(),
            incarnation: c.incarnation(),
            quorum_rule: match c.config.quorum {
                Quorum::Majority => "majority",
                Quorum::None => "none",
            }
            .into(),
            has_quorum: c.has_quorum(),
            listening: c.syncing(),
            heartbeat_interval_ms: c.config.interval.as_secs_f64() * 1e3,
            dead_after: c.config.dead_after,
            members,
            dropped: [
                ("unauthenticated", d.unauthenticated),
                ("replayed", d.replayed),
                ("malformed", d.malformed),
                ("wrong_version", d.wrong_version),
                ("own_name", d.foreign),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }

    pub fn dvipas(&self, now: Instant) -> Vec<DvipaView> {
        let c = &self.core;
        c.dvipas
            .iter()
            .enumerate()
            .map(|(i, d)| DvipaView {
                address: d.address.to_string(),
                status: format!("{:?}", c.status(i)).to_uppercase(),
                origin: if d.owner == c.config.me { "VIPADefine" } else { "VIPABackup" }.into(),
                rank: d.rank(&c.config.me).filter(|r| *r != 255),
                holder: c.holder(i),
                since_secs: now.saturating_duration_since(c.since[i]).as_secs(),
                takeback: match d.takeback {
                    vipa_core::cluster::Takeback::Immediate => "immediate",
                    vipa_core::cluster::Takeback::WhenIdle => "when-idle",
                    vipa_core::cluster::Takeback::Never => "never",
                }
                .into(),
            })
            .collect()
    }
}
