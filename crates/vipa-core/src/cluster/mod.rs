//! Cluster membership and DVIPA ownership (z/OS VIPADEFINE / VIPABACKUP on Linux).
//!
//! Every node sends one authenticated heartbeat per interval to every peer, carrying its
//! claims on all DVIPAs. From the heartbeats it hears, each node computes, for every
//! DVIPA, who should hold it, and acts only for itself:
//!
//! - it **releases** an address it holds when it has no quorum, when it was deactivated,
//!   when someone else should hold it (takeback, planned move), or when another holder
//!   comes first in the DVIPA's order (a healed partition);
//! - it **activates** an address only when it should hold it, has quorum, and hears no
//!   other live node claiming it. A handover therefore never has two holders: the new
//!   holder waits for the old one's heartbeat without the claim.
//!
//! The order of a DVIPA: a pinned node (planned move), then the owner, then the backups by
//! rank (higher first, then name). Takeback decides whether a returning owner gets the
//! address back at once (`immediate`), once the holder has no connections on it
//! (`when-idle`), or not at all (`never`).
//!
//! After a start, a node listens for one dead interval before claiming anything (it keeps
//! addresses its kernel still has, and gives one up as soon as another node claims it).
//!
//! A peer is declared dead in one of two ways. When its heartbeat is late (one interval
//! plus a grace from the arrival jitter seen), it becomes a *suspect*: it is sent
//! [`PROBES`] probes (heartbeats asking for an immediate answer), spread over the first
//! half of a confirmation window that covers several round trips, and it is dead when
//! none is answered in that window. Answers come from the peer's receiving thread, not
//! from the work that sends its heartbeats: a peer whose daemon is held up (by the
//! kernel's routing lock, say) still answers, and its addresses, still in its kernel,
//! are not taken over under it. An answer ends a suspicion but is not a heartbeat: a
//! peer that answers and sends nothing else is dead after the silence bound. Ordinary loss costs a few probes (at 20 % loss, a probe
//! and its answer both get through 64 % of the time: all 20 fail about once in 10⁹
//! suspicions), while a dead peer is seen an interval and a window after its last
//! heartbeat, not `dead_after` intervals. The window covers the longest a live peer may be
//! held up: [`MIN_CONFIRM`] until the peer has been heard for [`LEARN`], then twice the
//! worst delay seen from it (see [`confirm_window`]). A peer silent for `dead_after`
//! intervals is dead in any case.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

mod lists;

use serde::{Deserialize, Serialize};
use vipa_wire::cluster::{
    bit, Heartbeat, FLAG_ANSWER, FLAG_EARLIER_LIST, FLAG_LEAVING, FLAG_PROBE, FLAG_ROUTINE, FLAG_SYNCING,
};

/// How often a held address is announced again (gratuitous ARP / NA).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Probes sent to a suspect before it is declared dead.
pub const PROBES: u32 = 20;

/// DVIPAs a peer marks going from which it is taken to be busy deleting their addresses,
/// and dies only at the silence bound (see `Peer::dies_by_probes`). A handful does not
/// hold a host up (nor does one whose deletion failed and stays marked); thousands do.
pub const BUSY_GOING: u32 = 32;

/// Heartbeat intervals between two round-trip measurements of a healthy peer.
const RTT_EVERY: u32 = 256;

/// Round trips measured at least while a peer's punctuality is learnt (over [`LEARN`]):
/// the first, taken as the peer comes, may be slow (a host that just started is busy), and
/// enough later ones wear it off before the window is learned.
const RTT_WHILE_LEARNING: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quorum {
    Majority,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Takeback {
    Immediate,
    WhenIdle,
    Never,
}

/// `[cluster]` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub me: String,
    /// Peers' addresses (heartbeats go there).
    pub peers: Vec<std::net::SocketAddr>,
    pub port: u16,
    pub key_file: String,
    pub interval: Duration,
    /// Heartbeats missed before a node is dead.
    pub dead_after: u32,
    pub quorum: Quorum,
    /// Routine heartbeats go to this group, sent and joined on this NIC: one datagram an
    /// interval, whatever the number of peers (`None`: one to each peer).
    pub multicast: Option<(IpAddr, String)>,
}

impl ClusterConfig {
    /// Nodes in the cluster: the peers and this one.
    pub fn size(&self) -> usize {
        self.peers.len() + 1
    }

    pub fn dead_time(&self) -> Duration {
        self.interval * self.dead_after
    }
}

/// One `[[dvipa]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DvipaConfig {
    pub address: IpAddr,
    pub owner: String,
    /// (node, rank 1..254).
    pub backups: Vec<(String, u8)>,
    pub takeback: Takeback,
    /// NICs the address is put on and announced from; empty: `lo`, no announcements.
    pub announce: Vec<String>,
}

impl DvipaConfig {
    /// Rank of `node`: 255 for the owner, the backup rank, or `None`.
    pub fn rank(&self, node: &str) -> Option<u8> {
        if node == self.owner {
            Some(255)
        } else {
            self.backups.iter().find(|(n, _)| n == node).map(|(_, r)| *r)
        }
    }

    /// Owner first, then backups by rank (higher first), then name.
    pub fn order(&self) -> Vec<&str> {
        let mut b: Vec<&(String, u8)> = self.backups.iter().collect();
        b.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
        std::iter::once(self.owner.as_str()).chain(b.into_iter().map(|(n, _)| n.as_str())).collect()
    }
}

/// `vipactl dvipa` Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DvipaStatus {
    Active,
    Backup,
    Moving,
    Quiescing,
    Deactivated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this heartbeat to every peer but those in `except`, which get theirs by itself
    /// (laid out in the DVIPA list they are on: see `lists`).
    Heartbeat { heartbeat: Heartbeat, except: Vec<String> },
    /// Send this heartbeat to one peer only (a probe, or one in the list the peer is on),
    /// at the address its last heartbeat came from.
    HeartbeatTo { node: String, heartbeat: Heartbeat },
    /// Put the address in the kernel and announce it.
    Activate { index: usize, cause: String },
    /// Take the address out of the kernel.
    Release { index: usize, cause: String },
    /// Announce a held address again: after a conflict or a healed partition (in full),
    /// or as the periodic refresh (`refresh`: once is enough).
    Announce { index: usize, refresh: bool },
    /// A membership change, for the log and the event stream.
    Event(String),
}

/// How many sequence numbers below a peer's last are told apart: one of them not seen yet
/// was overtaken on the way; older ones, or seen ones, are replays or duplicates.
const SEEN: u64 = 64;

#[derive(Debug, Clone)]
pub struct Peer {
    pub last_heard: Instant,
    pub incarnation: u64,
    pub seq: u64,
    /// Bit i: sequence number `seq - 1 - i` was received (see `SEEN`).
    seen: u64,
    pub syncing: bool,
    /// Its claims can be read here: its DVIPA list is ours, or one this node had before a
    /// reload (see `list`). Else they are ignored.
    pub same_config: bool,
    /// Its heartbeats are laid out in an earlier list of this node's (an index in
    /// `Cluster::known`): read over ours; it is spoken to in that list, unless
    /// `translating`.
    list: Option<usize>,
    /// It lays its heartbeats out in an earlier list of its own for this node, believing
    /// it still on that list ([`FLAG_EARLIER_LIST`]): it is on another, later list (this
    /// node's own, or one this node has not had yet), and hears this node's own.
    translating: bool,
    held: Vec<u8>,
    busy: Vec<u8>,
    declined: Vec<u8>,
    /// Given up, the address still in its kernel (see [`Heartbeat::going`]).
    going: Vec<u8>,
    pins: Vec<(u32, String, u64)>,
    pub alive: bool,
    /// How late its heartbeats usually arrive (smoothed lateness beyond the interval; an
    /// early one, sent at once on a change, counts as on time).
    pub jitter: Duration,
    /// Smoothed round trip and its mean deviation, from answered probes.
    pub rtt: Option<(Duration, Duration)>,
    /// Probes in flight: (our sequence number, when sent).
    probes: VecDeque<(u64, Instant)>,
    /// Its heartbeat is late and it is being probed.
    pub suspect: Option<Suspicion>,
    /// When it last answered a probe (or was last heard): the next suspicion starts an
    /// interval after the later of the two, not at once again.
    answered: Instant,
    /// When its last heartbeat that was not a probe arrived: its punctuality is measured
    /// from there. Measured from a probe or an answer, which come off its schedule (every
    /// 156 ms while it is learned), a late heartbeat would look on time.
    last_beat: Instant,
    /// When its round trip is measured next.
    next_rtt: Instant,
    /// When it was first heard (its punctuality is known [`LEARN`] later).
    known_since: Instant,
    /// The highest incarnation it ever ran in here: one that is not above it and not the
    /// current one is an earlier run's (replayed), even after an earlier one was taken up.
    highest: u64,
    /// Probes sent to ask whether it runs in an earlier incarnation than the current one
    /// (its clock was set back before it started again, or its heartbeats are replayed):
    /// (sequence number, when sent), those of the last dead time (see [`remember_for`]).
    challenges: VecDeque<(u64, Instant)>,
    /// The latest earlier incarnation heard, and the highest sequence number heard in it.
    earlier: Option<(u64, u64)>,
    /// It holds a DVIPA this node is in the order of: its death would change something
    /// here (see `Cluster::watched`, which also counts quorum).
    pub holds_mine: bool,
    pub punctuality_known: bool,
    pub held_up: HeldUp,
}

impl Peer {
    /// Whether its death may be confirmed by unanswered probes, sooner than the silence
    /// bound: not while it is giving up DVIPAs by the dozen ([`BUSY_GOING`] marked going
    /// at least). Deleting thousands of addresses holds a host up for tens of milliseconds
    /// at times, and a peer declared dead meanwhile would have its going marks ignored:
    /// the next holders would activate beside copies still in its kernel. Its death waits
    /// for the silence bound instead (and it counts for quorum until then).
    pub fn dies_by_probes(&self) -> bool {
        self.going.iter().map(|b| b.count_ones()).sum::<u32>() < BUSY_GOING
    }

    /// Whether it is on a DVIPA list this node had before a reload (see `lists`).
    pub fn on_earlier_list(&self) -> bool {
        self.earlier_list().is_some()
    }

    /// The earlier list of this node's it is on (an index in `Cluster::known`).
    fn earlier_list(&self) -> Option<usize> {
        self.list.filter(|_| !self.translating)
    }

    /// Whether it speaks to this node in a list it had before (believing this node still on
    /// it): its own list is a later one, this node's by now or one still to come here.
    pub fn on_later_list(&self) -> bool {
        self.translating
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Suspicion {
    pub since: Instant,
    pub sent: u32,
    next: Instant,
}

/// What [`Cluster::receive`] made of a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A peer's heartbeat, new: taken into account.
    Taken,
    /// An answer to a probe (it counts only if it matches one outstanding).
    Answer,
    /// One this node already received (counted as `duplicated`).
    Duplicated,
    /// Overtaken on the way by a later one of the same peer (counted as `reordered`).
    Reordered,
    /// From an earlier run, or too old (counted as `replayed`).
    Replayed,
    /// In this node's own name (counted as `own_name`).
    OwnName,
    /// From a node not heard since this node started: kept aside until the node answers
    /// a challenge of this run (a recorded heartbeat of an earlier run cannot), then taken.
    Unconfirmed,
}

/// A node heard from, not a peer yet: it has not answered a challenge of this run.
#[derive(Debug, Clone)]
struct Stranger {
    /// The incarnation it answered in, and the sequence number its answer gave: its
    /// heartbeats of that incarnation numbered from there on count (one numbered below
    /// was sent before the answer, and may be a recording).
    confirmed: Option<(u64, u64)>,
    /// The highest incarnation heard in its name: a recording of a run whose clock was
    /// ahead stays a replay once the node is a peer.
    highest: u64,
    /// Challenges asked for it so far, and when the next may be: one an interval for a dead
    /// time, then the wait doubles (up to [`STRANGER_BACKOFF`] intervals), so a name that
    /// never answers (a node not listed in this one's peers, or an old datagram replayed)
    /// costs little.
    tries: u32,
    next: Instant,
    /// When a heartbeat of its was last heard.
    heard: Instant,
}

/// Longest wait between challenges for one stranger, in intervals: a node whose answers
/// could not reach this one for a while is asked again soon after they can.
const STRANGER_BACKOFF: u32 = 64;

/// Largest heartbeat, in bytes: a UDP datagram holds 65,507; the rest leaves room for moves
/// made on other nodes at the same moment.
pub const MAX_HEARTBEAT: usize = 60_000;

/// Most strangers kept at once: names come only from authenticated heartbeats, so only a
/// cluster bigger than this (or its replayed past) could fill it.
const MAX_STRANGERS: usize = 256;

/// Adds a probe sent (sequence number, when) to `list`, which keeps the last `keep`.
fn remember(list: &mut VecDeque<(u64, Instant)>, probe: (u64, Instant), keep: usize) {
    if list.len() >= keep {
        list.pop_front();
    }
    list.push_back(probe);
}

/// Adds a challenge sent (sequence number, when) to `list`, which keeps those sent within
/// `dead` (an answer later than that is too late to count; one a few intervals late, on a
/// long path, still counts), 1,024 at most.
fn remember_for(list: &mut VecDeque<(u64, Instant)>, challenge: (u64, Instant), dead: Duration) {
    while list.front().is_some_and(|(_, t)| *t + dead < challenge.1) || list.len() >= 1024 {
        list.pop_front();
    }
    list.push_back(challenge);
}

/// When `p`'s next heartbeat is due: an interval after its last sign of life (heard from,
/// or answered).
fn due(p: &Peer, interval: Duration) -> Instant {
    p.last_heard.max(p.answered) + interval
}

/// When `p` becomes a suspect: a grace after its next heartbeat is due.
fn suspect_at(p: &Peer, interval: Duration) -> Instant {
    due(p, interval) + grace(p, interval)
}

/// How late `p`'s heartbeat may be before it is a suspect: a tenth of an interval, or four
/// times its usual lateness, at most half an interval.
fn grace(p: &Peer, interval: Duration) -> Duration {
    (interval / 10).max(p.jitter * 4).min(interval / 2)
}

/// The shortest time a suspect has to answer while its punctuality is not known yet: a
/// whole host held up this long (its packets not delivered, its threads not run) is not
/// dead. Test hosts under load were seen held up for 20-30 ms.
pub const MIN_CONFIRM: Duration = Duration::from_millis(30);

/// How long a peer is heard before its punctuality is known: from then on its
/// confirmation window is learned (see [`confirm_window`]).
pub const LEARN: Duration = Duration::from_secs(10);

/// The shortest learned confirmation window.
pub const LEARNED_MIN_CONFIRM: Duration = Duration::from_millis(1);

/// How long a delay is remembered: the worst of this period and of the one before counts.
const HELD_UP_MEMORY: Duration = Duration::from_secs(300);

/// The worst delay seen from a peer: how late a heartbeat arrived, or how long a
/// suspicion of it took to clear.
#[derive(Debug, Clone, Copy)]
pub struct HeldUp {
    worst: Duration,
    before: Duration,
    period: Instant,
}

impl HeldUp {
    fn new(now: Instant) -> HeldUp {
        HeldUp { worst: Duration::ZERO, before: Duration::ZERO, period: now }
    }

    fn note(&mut self, now: Instant, delay: Duration) {
        if now >= self.period + HELD_UP_MEMORY {
            self.before = if now < self.period + HELD_UP_MEMORY * 2 { self.worst } else { Duration::ZERO };
            self.worst = Duration::ZERO;
            self.period = now;
        }
        self.worst = self.worst.max(delay);
    }

    /// The worst delay of the last five to ten minutes.
    pub fn worst(&self) -> Duration {
        self.worst.max(self.before)
    }
}

/// How long a suspect has to answer one of its probes: a tenth of an interval, several
/// round trips (at least half an interval until a round trip was measured), or the hold-up
/// the peer may be in without being dead, whichever is longest. That hold-up is
/// [`MIN_CONFIRM`] until the peer has been heard for [`LEARN`]; then twice the worst
/// lateness seen from it in the last five to ten minutes, at least [`LEARNED_MIN_CONFIRM`]:
/// a peer whose heartbeats come on time is confirmed dead within a few milliseconds, and a
/// hold-up of up to twice the worst lateness (plus the grace) is never taken for a death,
/// wherever it falls in the interval.
pub fn confirm_window(p: &Peer, interval: Duration) -> Duration {
    let rtt = match p.rtt {
        None => interval / 2,
        Some((srtt, var)) => srtt * 2 + var * 4,
    };
    let held_up = if p.punctuality_known { (p.held_up.worst() * 2).max(LEARNED_MIN_CONFIRM) } else { MIN_CONFIRM };
    (interval / 10).max(rtt).max(held_up)
}

/// How long after one round-trip measurement of `p` the next is taken.
fn rtt_every(p: &Peer, interval: Duration) -> Duration {
    let every = interval * RTT_EVERY;
    if p.punctuality_known {
        every
    } else {
        every.min(LEARN / RTT_WHILE_LEARNING)
    }
}

/// `a + (b - a) / 8` on durations.
fn smooth(a: Duration, b: Duration) -> Duration {
    if b >= a {
        a + (b - a) / 8
    } else {
        a - (a - b) / 8
    }
}

/// Counters of dropped heartbeats, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    pub unauthenticated: u64,
    pub replayed: u64,
    /// The last heartbeat again: a node outside a multicast group that the group reaches
    /// again gets its peers' routine heartbeats both ways until they hear it is back.
    #[serde(default)]
    pub duplicated: u64,
    /// Overtaken on the way by a later one of the same peer, and passed over: what it
    /// says is superseded. A network that reorders, or a datagram never received before
    /// replayed; a healthy cluster on one link has none.
    #[serde(default)]
    pub reordered: u64,
    pub malformed: u64,
    pub wrong_version: u64,
    pub foreign: u64,
}

/// The cause of a release to a peer on an earlier list that holds the DVIPA too (see
/// `Cluster::across_lists`).
fn gives_way(peer: &str) -> String {
    format!("{peer} also holds it, with other settings for it on its DVIPA list: this side gives way")
}

/// What a core replaced on a reload hands the new one of the DVIPA lists (see `lists`).
#[derive(Debug, Clone, Default)]
pub struct Lists {
    /// The lists it carried, its own first.
    pub carried: Vec<Vec<DvipaConfig>>,
    /// Each peer whose list it could read, and that list's digest.
    pub peers: Vec<(String, u64)>,
}

pub struct Cluster {
    pub config: ClusterConfig,
    pub dvipas: Vec<DvipaConfig>,
    /// Each DVIPA's configured order (owner, then backups by rank), computed once.
    orders: Vec<Vec<String>>,
    pub digest: u64,
    incarnation: u64,
    seq: u64,
    pub peers: BTreeMap<String, Peer>,
    pub held: Vec<bool>,
    busy: Vec<bool>,
    pub declined: Vec<bool>,
    /// Planned moves: DVIPA index → (Lamport stamp, node). The highest stamp wins; an
    /// empty node is a move that ended (deactivated there, or the node died), so that the
    /// end reaches every node as the move did.
    pub pins: BTreeMap<usize, (u64, String)>,
    /// The highest pin stamp seen.
    clock: u64,
    /// Released for a handover, and no new holder heard yet.
    moving: Vec<bool>,
    /// Another node was heard claiming an address this node keeps (a healed partition):
    /// re-announced once, so neighbours point here again.
    conflict: Vec<bool>,
    /// Another node still has an address this node keeps, and is deleting it (a stale
    /// copy from before its restart, say; see `going_elsewhere`): re-announced when that
    /// starts and once it is gone, since its kernel may have answered for the address.
    going_seen: Vec<bool>,
    /// Given up by this node, and its address may still be in this host's kernel: its
    /// heartbeats mark it going (see [`Heartbeat::going`]) until the shell says the
    /// address is gone ([`Cluster::addresses_gone`]), so that no node activates it meanwhile.
    going: Vec<bool>,
    pub since: Vec<Instant>,
    syncing_until: Option<Instant>,
    had_quorum: bool,
    next_heartbeat: Instant,
    next_refresh: Instant,
    out: VecDeque<Output>,
    pub drops: Drops,
    /// The last heartbeat's bitmaps (held, busy, declined, going), reused while nothing
    /// they show changed.
    maps: Option<[Vec<u8>; 4]>,
    /// vipad is stopping: heartbeats say so, and nothing is claimed any more.
    leaving: bool,
    /// The DVIPAs this node is in the order of (owner or backup), as a bitmap.
    mine: Vec<u8>,
    /// What the last heartbeat sent said (flags, held, busy, declined, going, pins), and
    /// how many heartbeats before it said the same.
    last_said: Option<Said>,
    repeats: u32,
    /// Heartbeats still to go out prompt whatever they say (after a peer came or went).
    prompt_sends: u32,
    /// Every DVIPA this node is in the order of has one live holder, and nothing is being
    /// moved or pinned: only then may peers that hold none of them be left unwatched.
    calm: bool,
    /// A routine heartbeat of the peer this node keeps step with was heard since the last
    /// wake: when it arrived, and the grace its next one has (see `handle_timeout`).
    leader_heard: Option<(Instant, Duration)>,
    /// Nodes heard from since the start that have not answered a challenge yet.
    strangers: BTreeMap<String, Stranger>,
    /// The challenges sent to them (sequence number, when): one to every peer serves all
    /// strangers, at most one an interval; see [`remember_for`].
    stranger_challenges: VecDeque<(u64, Instant)>,
    /// Dead times the current listening was extended by, for strangers not confirmed yet.
    extended: u32,
    /// The DVIPA lists this node had before its reloads, newest first (see `lists`).
    known: Vec<lists::Known>,
    /// Peers on one of them before the reload, not heard since: spoken to in it meanwhile
    /// (else they would read this node's first heartbeats as a list they cannot read),
    /// until this node has listened.
    presumed: BTreeMap<String, usize>,
    /// Addresses this host still has that its list no longer names (a reload dropped them
    /// while held or going): going for peers on an earlier list that names them, until
    /// the shell says they are gone ([`Cluster::addresses_gone`]).
    unlisted: std::collections::BTreeSet<IpAddr>,
    /// The last heartbeat's bitmaps laid out in each earlier list a peer is on (by index
    /// in `known`), reused as `maps` is.
    spoken: BTreeMap<usize, [Vec<u8>; 4]>,
}

type Said = (u16, [Vec<u8>; 4], Vec<(u32, String, u64)>);

/// FNV-1a over everything that must be identical on every node.
pub fn digest(dvipas: &[DvipaConfig]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for d in dvipas {
        eat(d.address.to_string().as_bytes());
        eat(d.owner.as_bytes());
        for (n, r) in &d.backups {
            eat(n.as_bytes());
            eat(&[*r]);
        }
        eat(&[d.takeback as u8, 0xff]);
    }
    h
}

impl Cluster {
    /// A node starting at `now`. `incarnation` must grow across restarts (the shell uses
    /// the wall clock); `present` are the DVIPAs the kernel still has from before.
    pub fn new(
        config: ClusterConfig,
        mut dvipas: Vec<DvipaConfig>,
        now: Instant,
        incarnation: u64,
        present: &[IpAddr],
    ) -> Cluster {
        dvipas.sort_by_key(|d| d.address);
        let n = dvipas.len();
        let held = dvipas.iter().map(|d| present.contains(&d.address)).collect();
        let sync = config.dead_time() + config.interval;
        Cluster {
            orders: dvipas.iter().map(|d| d.order().into_iter().map(str::to_string).collect()).collect(),
            digest: digest(&dvipas),
            incarnation,
            seq: 0,
            peers: BTreeMap::new(),
            held,
            busy: vec![false; n],
            declined: vec![false; n],
            pins: BTreeMap::new(),
            clock: 0,
            moving: vec![false; n],
            conflict: vec![false; n],
            going_seen: vec![false; n],
            going: vec![false; n],
            since: vec![now; n],
            syncing_until: Some(now + sync),
            // (Listening now: its end must not look like a quorum regained.)
            had_quorum: true,
            next_heartbeat: now,
            next_refresh: now + REFRESH_INTERVAL,
            out: VecDeque::new(),
            drops: Drops::default(),
            maps: None,
            leaving: false,
            mine: {
                let mut m = vec![0u8; n.div_ceil(8)];
                for (i, d) in dvipas.iter().enumerate() {
                    if d.rank(&config.me).is_some() {
                        vipa_wire::cluster::set_bit(&mut m, i, true);
                    }
                }
                m
            },
            last_said: None,
            repeats: 0,
            prompt_sends: 0,
            calm: false,
            leader_heard: None,
            strangers: BTreeMap::new(),
            stranger_challenges: VecDeque::new(),
            extended: 0,
            known: Vec::new(),
            presumed: BTreeMap::new(),
            unlisted: Default::default(),
            spoken: BTreeMap::new(),
            config,
            dvipas,
        }
    }

    /// What the core this one replaces on a reload gave ([`Cluster::lists`]): the DVIPA
    /// lists it carried, and the list each peer was on. Peers still on one of those are
    /// read and spoken to in it (see `lists`), so that a rolling change of the list does
    /// not stop takeovers.
    pub fn knows(&mut self, lists: Lists) {
        // (Peers hold indexes into `known`: only a core that heard none yet.)
        debug_assert!(self.peers.is_empty(), "knows() after peers were heard");
        self.known.clear();
        self.spoken.clear();
        for list in lists.carried {
            let k = lists::Known::new(list, &self.dvipas);
            if k.digest != self.digest
                && self.known.len() < lists::KEPT
                && !self.known.iter().any(|o| o.digest == k.digest)
            {
                self.known.push(k);
            }
        }
        self.presumed = lists
            .peers
            .into_iter()
            .filter_map(|(node, digest)| Some((node, self.known.iter().position(|k| k.digest == digest)?)))
            .collect();
    }

    /// For the core that replaces this one on a reload ([`Cluster::knows`]).
    pub fn lists(&self) -> Lists {
        let carried = std::iter::once(self.dvipas.clone()).chain(self.known.iter().map(|k| k.list.clone())).collect();
        // (One that speaks an earlier list for this node has moved on, most likely to this
        // node's list; one presumed is not heard yet.)
        let heard = self
            .peers
            .iter()
            .filter(|(_, p)| p.alive && p.same_config)
            .map(|(n, p)| (n.clone(), p.earlier_list().map_or(self.digest, |k| self.known[k].digest)));
        let presumed = self.presumed.iter().map(|(n, k)| (n.clone(), self.known[*k].digest));
        Lists { carried, peers: heard.chain(presumed).collect() }
    }

    /// The live peers on an earlier list of this node's (see `lists`), with the list.
    fn earlier_peers(&self) -> Vec<(String, usize)> {
        let alive = self.peers.iter().filter(|(_, p)| p.alive);
        let heard = alive.filter_map(|(n, p)| Some((n.clone(), p.earlier_list()?)));
        heard.chain(self.presumed.iter().map(|(n, k)| (n.clone(), *k))).collect()
    }

    /// The peers on an earlier list of this node's: a heartbeat for every peer reaches them
    /// as an output of its own, in their list (see `emit_all`), not with the others.
    #[cfg(test)]
    pub fn on_earlier_lists(&self) -> Vec<String> {
        self.earlier_peers().into_iter().map(|(n, _)| n).collect()
    }

    /// Sends `h` to every peer: as it is, but to each peer on an earlier list, which gets
    /// it in that list, to itself only. (Then it is not routine: a routine one goes to the
    /// multicast group, where every peer would read it.)
    fn emit_all(&mut self, mut h: Heartbeat) {
        let earlier = self.earlier_peers();
        if !earlier.is_empty() {
            h.flags &= !FLAG_ROUTINE;
        }
        // Theirs first: should the other reach one of them too (its address not known for
        // sure), it is the one dropped as a duplicate.
        for (node, k) in &earlier {
            let heartbeat = self.spoken_in(*k, &h);
            self.out.push_back(Output::HeartbeatTo { node: node.clone(), heartbeat });
        }
        let except = earlier.into_iter().map(|(n, _)| n).collect();
        self.out.push_back(Output::Heartbeat { heartbeat: h, except });
    }

    /// `h` laid out in earlier list `k` (see `spoken`).
    fn spoken_in(&mut self, k: usize, h: &Heartbeat) -> Heartbeat {
        let (known, unlisted) = (&self.known[k], &self.unlisted);
        let maps = self.spoken.entry(k).or_insert_with(|| known.layout(h, unlisted));
        known.speak(h, maps.clone())
    }

    /// The earlier list peer `node` is on (heard so, or presumed since the reload).
    fn list_of(&self, node: &str) -> Option<usize> {
        match self.peers.get(node) {
            Some(p) => p.earlier_list(),
            None => self.presumed.get(node).copied(),
        }
    }

    /// Sends `h` to peer `node` only, in its list.
    fn emit_to(&mut self, node: &str, h: Heartbeat) {
        let heartbeat = match self.list_of(node) {
            Some(k) => self.spoken_in(k, &h),
            None => h,
        };
        self.out.push_back(Output::HeartbeatTo { node: node.to_string(), heartbeat });
    }

    /// DVIPA `addr`'s index (the list is sorted by address).
    pub fn index(&self, addr: IpAddr) -> Option<usize> {
        self.dvipas.binary_search_by_key(&addr, |d| d.address).ok()
    }

    /// This node's incarnation (grows with every start).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The sequence number of the last heartbeat sent (an answer to a probe carries it).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn syncing(&self) -> bool {
        self.syncing_until.is_some()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next moment something is due: a heartbeat, the end of the start-up listening,
    /// a peer's death, a refresh.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (dead, interval) = (self.config.dead_time(), self.config.interval);
        let at_stake = self.quorum_at_stake();
        let deaths = self.peers.values().filter(|p| p.alive).map(|p| {
            // The round trip is measured only while the peer is not a suspect (`detect`).
            // A peer whose death would change nothing here is checked when this node wakes
            // anyway (its own heartbeats, at least once an interval), not on time.
            let next = match p.suspect {
                None if !(p.holds_mine || at_stake) && self.calm => p.next_rtt,
                None => suspect_at(p, interval).min(p.next_rtt),
                Some(s) if s.sent < PROBES => s.next,
                Some(s) if p.dies_by_probes() => s.since + confirm_window(p, interval),
                // (Dead at the silence bound only.)
                Some(_) => p.last_heard + dead,
            };
            next.min(p.last_heard + dead)
        });
        [Some(self.next_heartbeat), self.syncing_until, Some(self.next_refresh)]
            .into_iter()
            .flatten()
            .chain(deaths)
            .min()
    }

    fn heartbeat(&mut self) -> Heartbeat {
        self.seq += 1;
        let n = self.dvipas.len();
        // "Leaving" tells peers to take everything at once: not while an address given up
        // is still here. Until then the node is an ordinary live holder (silence would get
        // it declared dead).
        let mut h = Heartbeat {
            flags: if self.leaving && !self.going.contains(&true) && self.unlisted.is_empty() {
                FLAG_LEAVING
            } else if self.syncing() {
                FLAG_SYNCING
            } else {
                0
            },
            incarnation: self.incarnation,
            seq: self.seq,
            digest: self.digest,
            interval_us: self.config.interval.as_micros().min(u128::from(u32::MAX)) as u32,
            node: self.config.me.clone(),
            count: n as u32,
            pins: self.pins.iter().map(|(i, (stamp, node))| (*i as u32, node.clone(), *stamp)).collect(),
            ..Default::default()
        };
        // While listening, the held bits are what the kernel still has from before (a
        // restart, a reload): not claims (the flag says so), but a copy that peers do not
        // activate beside.
        if self.maps.is_none() {
            self.spoken.clear();
        }
        let maps = self.maps.get_or_insert_with(|| {
            [&self.held, &self.busy, &self.declined, &self.going].map(|bits| {
                let mut map = vec![0u8; n.div_ceil(8)];
                for i in (0..n).filter(|&i| bits[i]) {
                    map[i / 8] |= 1u8 << (i % 8);
                }
                map
            })
        });
        [h.held, h.busy, h.declined, h.going] = maps.clone();
        h
    }

    /// A heartbeat to send at once (after kernel work that had to come first); the next
    /// regular one follows an interval later. It is never routine, nor is the next one.
    fn heartbeat_now(&mut self, now: Instant) -> Heartbeat {
        self.next_heartbeat = now + self.config.interval;
        (self.last_said, self.repeats) = (None, 0);
        self.heartbeat()
    }

    /// [`Cluster::heartbeat_now`], sent to every peer (an output to take).
    pub fn send_now(&mut self, now: Instant) {
        let h = self.heartbeat_now(now);
        self.emit_all(h);
    }

    /// vipad is stopping: every DVIPA another live node can take is released (the
    /// heartbeats that follow say this node is leaving, so that node activates at once);
    /// one no other node can take stays in the kernel, as after a kill, for the next start.
    pub fn leave(&mut self, now: Instant) {
        let me = self.config.me.clone();
        for i in 0..self.dvipas.len() {
            if self.held[i] && self.order(i).iter().any(|n| *n != me) {
                self.give_up(now, i, "vipad is stopping: handed over".to_string());
            }
        }
        self.leaving = true;
        self.maps = None;
        self.send_heartbeat(now);
    }

    fn send_heartbeat(&mut self, now: Instant) {
        let mut h = self.heartbeat();
        // Routine once the two before said the same: a change goes out prompt two times,
        // so one lost copy does not leave it to be read late. (Compared before copied: this
        // runs every interval.)
        let same = self.last_said.as_ref().is_some_and(|(flags, [held, busy, declined, going], pins)| {
            (*flags, held, busy, declined, going, pins) == (h.flags, &h.held, &h.busy, &h.declined, &h.going, &h.pins)
        });
        if same {
            self.repeats += 1;
        } else {
            let maps = [h.held.clone(), h.busy.clone(), h.declined.clone(), h.going.clone()];
            self.last_said = Some((h.flags, maps, h.pins.clone()));
            self.repeats = 0;
        }
        if h.flags == 0 && self.repeats >= 2 && self.prompt_sends == 0 {
            h.flags |= FLAG_ROUTINE;
        }
        self.prompt_sends = self.prompt_sends.saturating_sub(1);
        self.emit_all(h);
        self.next_heartbeat = now + self.config.interval;
    }

    /// A heartbeat that passed authentication. Replays (an older incarnation, or a
    /// sequence number more than `SEEN` below the last), duplicates (one already received)
    /// and one overtaken by a later one are dropped and counted, each as what it is.
    pub fn receive(&mut self, now: Instant, h: Heartbeat) -> Verdict {
        if h.node == self.config.me {
            self.drops.foreign += 1;
            return Verdict::OwnName;
        }
        if h.flags & FLAG_ANSWER != 0 {
            self.answered(now, &h);
            return Verdict::Answer;
        }
        // The highest incarnation heard in a stranger's name, once it becomes a peer.
        let mut known_higher = 0;
        if !self.peers.contains_key(&h.node) && h.flags & FLAG_LEAVING == 0 {
            // Not heard since this node started: the heartbeat may be a recording of an
            // earlier run, whatever its numbers say. It counts once the node has answered
            // a challenge of this run, in its incarnation and no older than the answer.
            match self.strangers.get(&h.node).and_then(|s| s.confirmed) {
                Some((inc, seq)) if inc == h.incarnation && h.seq >= seq => {
                    known_higher = self.strangers.remove(&h.node).map_or(0, |s| s.highest);
                }
                Some((inc, _)) if inc == h.incarnation => {
                    self.drops.replayed += 1;
                    return Verdict::Replayed;
                }
                _ => return self.challenge_stranger(now, h),
            }
        }
        if let Some(p) = self.peers.get_mut(&h.node) {
            if h.incarnation < p.incarnation || (h.incarnation > p.incarnation && h.incarnation <= p.highest) {
                self.drops.replayed += 1;
                // A peer heard in an earlier incarnation is asked which one it runs in: only
                // the node itself can answer (authenticated, echoing a sequence number and
                // the incarnation of this run). At most once an interval.
                p.earlier = match p.earlier {
                    Some((i, seq)) if i == h.incarnation => Some((i, seq.max(h.seq))),
                    _ => Some((h.incarnation, h.seq)),
                };
                if p.challenges.back().is_none_or(|(_, sent)| now >= *sent + self.config.interval) {
                    let node = h.node.clone();
                    self.challenge(now, &node);
                }
                return Verdict::Replayed;
            }
            if h.incarnation == p.incarnation {
                // The sender numbers each heartbeat afresh and signs the number with it.
                let back = p.seq.saturating_sub(h.seq);
                let seen = |back: u64| back == 0 || (back <= SEEN && p.seen & (1 << (back - 1)) != 0);
                if h.seq <= p.seq && seen(back) {
                    self.drops.duplicated += 1;
                    return Verdict::Duplicated;
                }
                if h.seq < p.seq && back <= SEEN {
                    // Overtaken on the way by a later one (a probe, then a routine heartbeat
                    // by another path): what it says is already superseded.
                    p.seen |= 1 << (back - 1);
                    self.drops.reordered += 1;
                    return Verdict::Reordered;
                }
                if h.seq < p.seq {
                    self.drops.replayed += 1;
                    return Verdict::Replayed;
                }
                let ahead = u32::try_from(h.seq - p.seq).unwrap_or(u32::MAX);
                p.seen = p.seen.checked_shl(ahead).unwrap_or(0) | 1u64.checked_shl(ahead - 1).unwrap_or(0);
            }
        }
        let n = self.dvipas.len();
        let ours = h.digest == self.digest && h.count as usize == n;
        let list = match ours {
            true => None,
            false => self.known.iter().position(|k| k.digest == h.digest && k.len() == h.count as usize),
        };
        let same_config = ours || list.is_some();
        let translating = same_config && h.flags & FLAG_EARLIER_LIST != 0;
        // On an earlier list of ours: read over ours from here on.
        let h = match list {
            Some(k) => self.known[k].read(h, n, self.digest),
            None => h,
        };
        if h.flags & FLAG_LEAVING != 0 {
            // Its addresses are out of its kernel: the next in line takes them now. (From a
            // node not heard since this start, it says nothing that can be checked.)
            if !self.peers.contains_key(&h.node) {
                return Verdict::Unconfirmed;
            }
            if let Some(p) = self.peers.get_mut(&h.node) {
                if p.incarnation != h.incarnation {
                    p.seen = 0;
                }
                (p.incarnation, p.seq) = (h.incarnation, h.seq);
                if p.alive {
                    self.gone(&h.node, "left the cluster (vipad stopped)".into());
                    self.evaluate(now);
                }
            }
            return Verdict::Taken;
        }
        let (interval, dead) = (self.config.interval, self.config.dead_time());
        let from_leader = self.leader() == Some(h.node.as_str());
        if let Some(p) = self.peers.get_mut(&h.node) {
            let gap = now.saturating_duration_since(p.last_heard);
            // How late this comes after its last sign of life (heard from, or answered),
            // for a suspicion it ends or a return from the dead; punctuality is measured
            // from its last heartbeat (`last_beat`).
            let late = now.saturating_duration_since(due(p, interval));
            if p.suspect.take().is_some() {
                // A suspicion this ends: the peer was held up (a lost heartbeat is answered
                // by the first probes, a moment after the grace).
                p.held_up.note(now, late);
            }
            let beat_gap = now.saturating_duration_since(p.last_beat);
            if p.alive && h.flags & FLAG_PROBE == 0 && beat_gap <= interval * 3 / 2 {
                // Lateness only: a heartbeat sent early on a change is on time.
                let beat_late = beat_gap.saturating_sub(interval);
                p.jitter = smooth(p.jitter, beat_late);
                p.held_up.note(now, beat_late);
            } else if !p.alive && p.incarnation == h.incarnation && gap < dead {
                // Declared dead, back within the silence bound: held up, or cut off for a
                // moment (the two look alike). It gets the start value again, at least.
                p.held_up.note(now, late.max(MIN_CONFIRM / 2));
            }
            p.punctuality_known = now >= p.known_since + LEARN;
            // Steady state: the same claims from a live peer change nothing; just note it.
            let syncing = h.flags & FLAG_SYNCING != 0;
            if p.alive
                && p.incarnation == h.incarnation
                && p.syncing == syncing
                && p.same_config == same_config
                && p.list == list
                && p.translating == translating
                && p.held == h.held
                && p.busy == h.busy
                && p.declined == h.declined
                && p.going == h.going
                && p.pins == h.pins
            {
                p.last_heard = now;
                if h.flags & FLAG_PROBE == 0 {
                    p.last_beat = now;
                }
                p.seq = h.seq;
                if h.flags & FLAG_ROUTINE != 0 && from_leader {
                    self.leader_heard = Some((now, grace(p, interval)));
                }
                // Our own heartbeat, when due within half an interval less the round trip,
                // goes out with this one's arrival: nodes fall into step, and one wake-up
                // per interval both hears and sends (an early heartbeat is on time for its
                // receivers). Less the round trip, so that our heartbeat cannot in turn pull
                // the peer's next one forward (it would, over and over, were the round trip
                // half an interval). A probe comes off schedule, so it is not followed; nor
                // is a peer whose round trip is not known yet.
                let window = p.rtt.map(|(srtt, _)| (interval / 2).saturating_sub(srtt));
                if h.flags & FLAG_PROBE == 0 && window.is_some_and(|w| self.next_heartbeat <= now + w) {
                    self.next_heartbeat = self.next_heartbeat.min(now);
                }
                return Verdict::Taken;
            }
        }
        let was = self.peers.get(&h.node).map(|p| (p.alive, p.incarnation, p.same_config));
        match was {
            None => self.out.push_back(Output::Event(format!("node {} joined", h.node))),
            Some((false, _, _)) => {
                self.out.push_back(Output::Event(format!("node {} is alive again", h.node)));
                // After a partition the other side may have announced our addresses:
                // announce what this node holds again.
                if !self.syncing() {
                    for i in (0..self.dvipas.len()).filter(|&i| self.held[i]) {
                        self.out.push_back(Output::Announce { index: i, refresh: false });
                    }
                }
            }
            Some((true, inc, _)) if inc != h.incarnation => {
                self.out.push_back(Output::Event(format!("node {} restarted", h.node)))
            }
            _ => {}
        }
        if !same_config && was.is_none_or(|w| w.2) {
            self.out.push_back(Output::Event(format!(
                "node {} has a different [[dvipa]] list: its claims cannot be read, and no node takes an address it does not hold until the lists match",
                h.node
            )));
        }
        let fresh = was.is_none_or(|w| !w.0 || w.1 != h.incarnation);
        if fresh {
            // A peer that came (back): what this node says reaches it prompt for a while.
            self.prompt_sends = 2;
        }
        let old = self.peers.remove(&h.node);
        // A new or returning peer has its round trip measured at once; a known one keeps
        // its schedule, however often its claims change.
        let next_rtt = match &old {
            Some(p) if !fresh => p.next_rtt,
            _ => now,
        };
        // (One whose address it still has counts too: its death frees it.)
        let of_mine = |map: &[u8]| map.iter().zip(&self.mine).any(|(theirs, mine)| theirs & mine != 0);
        let holds_mine = of_mine(&h.held) || of_mine(&h.going);
        // A restarted peer (a new incarnation: a rebooted host may be busy) is learnt anew,
        // its round trip too.
        let (known_since, held_up, punctuality_known, rtt) = match &old {
            Some(p) if p.incarnation == h.incarnation => (p.known_since, p.held_up, p.punctuality_known, p.rtt),
            _ => (now, HeldUp::new(now), false, None),
        };
        let seen = old.as_ref().filter(|p| p.incarnation == h.incarnation).map_or(0, |p| p.seen);
        let highest = old.as_ref().map_or(h.incarnation, |p| p.highest.max(h.incarnation)).max(known_higher);
        let (jitter, probes) = old.map(|p| (p.jitter, p.probes)).unwrap_or_default();
        self.presumed.remove(&h.node);
        self.peers.insert(
            h.node.clone(),
            Peer {
                last_heard: now,
                incarnation: h.incarnation,
                seq: h.seq,
                seen,
                syncing: h.flags & FLAG_SYNCING != 0,
                same_config,
                list,
                translating,
                held: h.held,
                busy: h.busy,
                declined: h.declined,
                going: h.going,
                pins: h.pins,
                alive: true,
                jitter,
                rtt,
                probes,
                suspect: None,
                answered: now,
                last_beat: now,
                next_rtt,
                known_since,
                highest,
                challenges: VecDeque::new(),
                earlier: None,
                punctuality_known,
                held_up,
                holds_mine,
            },
        );
        self.adopt_pins();
        self.evaluate(now);
        Verdict::Taken
    }

    /// Pins announced by peers become ours too (the operator's move reaches every node);
    /// the newest (highest stamp, then node name) wins everywhere.
    fn adopt_pins(&mut self) {
        let mut seen: Vec<(usize, u64, String)> = Vec::new();
        for p in self.peers.values().filter(|p| p.alive && p.same_config) {
            for (i, node, stamp) in &p.pins {
                seen.push((*i as usize, *stamp, node.clone()));
            }
        }
        for (i, stamp, node) in seen {
            self.clock = self.clock.max(stamp);
            if i < self.dvipas.len() && (node.is_empty() || self.dvipas[i].rank(&node).is_some()) {
                let newer = self.pins.get(&i).is_none_or(|(s, n)| (stamp, &node) > (*s, n));
                if newer {
                    self.pins.insert(i, (stamp, node));
                }
            }
        }
    }

    /// Whether the shell sees TCP connections on DVIPA `i` here (for when-idle), for any
    /// number of DVIPAs at once: one evaluation and one heartbeat for all that changed.
    pub fn set_busy(&mut self, now: Instant, busy: impl IntoIterator<Item = (usize, bool)>) {
        let mut changed = false;
        for (i, b) in busy {
            if i < self.busy.len() && self.busy[i] != b {
                self.busy[i] = b;
                changed = true;
            }
        }
        if changed {
            self.maps = None;
            self.evaluate(now);
            self.send_heartbeat(now);
        }
    }

    /// An answer to one of our probes: the peer lives (a suspicion ends) and the round trip
    /// is measured. The first answer clears the outstanding probes, so the other answers of
    /// the same round, and any replayed answer, match nothing and prove nothing.
    fn answered(&mut self, now: Instant, h: &Heartbeat) {
        let me = self.incarnation;
        // Every answer that counts echoes this run's incarnation: one given to an earlier
        // run (whose sequence numbers this one uses again) proves nothing.
        if h.digest != me {
            return;
        }
        if !self.peers.contains_key(&h.node) {
            // A stranger's answer to a challenge of this run (also one that came before
            // any heartbeat of its: the challenge another stranger prompted reached it
            // too): its heartbeats from this one on count.
            let ours =
                self.stranger_challenges.iter().any(|(seq, t)| *seq == h.echo && now < *t + self.config.dead_time());
            if let Some(st) = self.stranger(&h.node, now).filter(|_| ours) {
                st.confirmed = Some((h.incarnation, h.seq));
                st.highest = st.highest.max(h.incarnation);
            }
            return;
        }
        let Some(p) = self.peers.get_mut(&h.node) else { return };
        if p.challenges.iter().any(|(seq, _)| *seq == h.echo) {
            // An answer to a probe of this run (the echoed incarnation says so), given now:
            // the incarnation the node runs in. An earlier one than its last is taken up,
            // its heartbeats count from here on, learnt anew like those of any restarted
            // node: those numbered from the answer's on (one numbered below was sent
            // before the answer, and may be a recording), and above any heard meanwhile.
            if h.incarnation != p.incarnation {
                let heard = p.earlier.filter(|(i, _)| *i == h.incarnation).map_or(0, |(_, seq)| seq);
                let seq = heard.max(h.seq.saturating_sub(1));
                (p.incarnation, p.seq, p.seen, p.earlier) = (h.incarnation, seq, 0, None);
                p.highest = p.highest.max(h.incarnation);
                p.challenges.clear();
                (p.known_since, p.held_up, p.punctuality_known, p.rtt) = (now, HeldUp::new(now), false, None);
                self.out.push_back(Output::Event(format!(
                    "node {} answered in an earlier incarnation than its last (its clock was set back before it started again): its heartbeats count again",
                    h.node
                )));
            }
            return;
        }
        let Some(k) = p.probes.iter().position(|(seq, _)| *seq == h.echo) else { return };
        let sample = now.saturating_duration_since(p.probes[k].1);
        p.rtt = Some(match p.rtt {
            None => (sample, sample / 2),
            Some((srtt, var)) => (smooth(srtt, sample), var * 3 / 4 + srtt.abs_diff(sample) / 4),
        });
        p.probes.clear();
        if p.suspect.take().is_some() {
            p.held_up.note(now, now.saturating_duration_since(due(p, self.config.interval)));
        }
        p.answered = now;
    }

    /// Sends `node` a probe: a heartbeat asking for one back at once.
    fn probe(&mut self, now: Instant, node: &str) {
        let seq = self.send_probe(node);
        if let Some(p) = self.peers.get_mut(node) {
            remember(&mut p.probes, (seq, now), 2 * PROBES as usize);
        }
    }

    /// Sends `node` a probe whose answer tells the incarnation it runs in (see `answered`);
    /// it is not one of the probes that check on a late peer.
    fn challenge(&mut self, now: Instant, node: &str) {
        let seq = self.send_probe(node);
        let dead = self.config.dead_time();
        if let Some(p) = self.peers.get_mut(node) {
            remember_for(&mut p.challenges, (seq, now), dead);
        }
    }

    /// Challenges `h`'s sender, a node not heard since this start: a probe to every peer
    /// (the node's address is not known yet; only the node named can answer it in a way
    /// that counts), which is also a heartbeat of this node's. One probe an interval at
    /// most serves all strangers; each stranger is asked again after a wait that doubles.
    fn challenge_stranger(&mut self, now: Instant, h: Heartbeat) -> Verdict {
        let (interval, dead_after) = (self.config.interval, self.config.dead_after);
        let Some(st) = self.stranger(&h.node, now) else { return Verdict::Unconfirmed };
        st.highest = st.highest.max(h.incarnation);
        st.heard = now;
        if now < st.next {
            return Verdict::Unconfirmed;
        }
        // Every interval while a start's listening lasts (a lost challenge or answer must
        // not leave a live node unheard when it ends), then less and less often.
        let doubling = st.tries.saturating_sub(dead_after);
        st.next = now + interval * (1u32 << doubling.min(6)).min(STRANGER_BACKOFF);
        st.tries += 1;
        if self.stranger_challenges.back().is_none_or(|(_, sent)| now >= *sent + interval) {
            let probe = self.probe_heartbeat();
            let seq = probe.seq;
            self.emit_all(probe);
            self.next_heartbeat = now + interval;
            remember_for(&mut self.stranger_challenges, (seq, now), self.config.dead_time());
        }
        Verdict::Unconfirmed
    }

    /// A heartbeat that asks its receivers for an answer at once.
    fn probe_heartbeat(&mut self) -> Heartbeat {
        let mut h = self.heartbeat();
        h.flags |= FLAG_PROBE;
        h
    }

    /// The record of stranger `node`, made if new; `None` when [`MAX_STRANGERS`] are kept.
    fn stranger(&mut self, node: &str, now: Instant) -> Option<&mut Stranger> {
        if !self.strangers.contains_key(node) && self.strangers.len() >= MAX_STRANGERS {
            return None;
        }
        let fresh = Stranger { confirmed: None, highest: 0, tries: 0, next: now, heard: now };
        Some(self.strangers.entry(node.to_string()).or_insert(fresh))
    }

    /// A probe to `node`; returns its sequence number, which the answer echoes.
    fn send_probe(&mut self, node: &str) -> u64 {
        let h = self.probe_heartbeat();
        let seq = h.seq;
        self.emit_to(node, h);
        seq
    }

    /// Suspects late peers, probes suspects, and declares dead those that did not answer
    /// (or were silent for the whole dead time). Returns the dead with the reason.
    fn detect(&mut self, now: Instant) -> Vec<(String, String)> {
        let (dead, interval) = (self.config.dead_time(), self.config.interval);
        let mut died = Vec::new();
        let mut probes = Vec::new();
        for (name, p) in self.peers.iter_mut().filter(|(_, p)| p.alive) {
            let silent = now.saturating_duration_since(p.last_heard);
            if now >= p.last_heard + dead {
                died.push((name.clone(), format!("no heartbeat for {} ms", silent.as_millis())));
                continue;
            }
            if p.suspect.is_none() && now >= suspect_at(p, interval) {
                p.suspect = Some(Suspicion { since: now, sent: 0, next: now });
            }
            let window = confirm_window(p, interval);
            let by_probes = p.suspect.is_some_and(|s| s.sent >= PROBES) && p.dies_by_probes();
            if let Some(s) = &mut p.suspect {
                if s.sent >= PROBES && now >= s.since + window && by_probes {
                    died.push((
                        name.clone(),
                        format!(
                            "no heartbeat for {:.1} ms and none of {PROBES} probes answered",
                            silent.as_secs_f64() * 1e3
                        ),
                    ));
                    continue;
                }
                // The probes go out over the first half of the window.
                let spacing = window / (2 * PROBES);
                while s.sent < PROBES && now >= s.next {
                    s.sent += 1;
                    s.next += spacing;
                    probes.push(name.clone());
                }
            } else if now >= p.next_rtt {
                p.next_rtt = now + rtt_every(p, interval);
                probes.push(name.clone());
            }
        }
        for name in probes {
            self.probe(now, &name);
        }
        died
    }

    /// Peer `name` is out of the cluster (dead or left): its claims no longer count (see
    /// `claims`), nor does a pin to it.
    fn gone(&mut self, name: &str, why: String) {
        if let Some(p) = self.peers.get_mut(name) {
            p.alive = false;
            p.suspect = None;
        }
        self.prompt_sends = 2;
        let ended: Vec<usize> = self.pins.iter().filter(|(_, (_, n))| n == name).map(|(i, _)| *i).collect();
        for i in ended {
            self.unpin(i);
        }
        self.out.push_back(Output::Event(format!("node {name} {why}")));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut changed = false;
        for (name, why) in self.detect(now) {
            self.gone(&name, format!("is dead: {why}"));
            changed = true;
        }
        let mut kept = Vec::new();
        // Nodes heard but not confirmed yet (their answers are on the way, or this node's
        // first datagrams waited for the link's neighbour resolution): listening goes on
        // for them, up to three dead times more, so that a restart does not take a
        // majority it cannot see yet for a lost one (and drop what the kernel kept).
        let listened = self.syncing_until.is_some_and(|t| now >= t);
        let dead = self.config.dead_time();
        // (Counted only when listening ends: this runs every interval.)
        let unconfirmed = if listened && self.extended < 3 {
            self.strangers.values().filter(|s| s.confirmed.is_none() && now < s.heard + dead).count()
        } else {
            0
        };
        if unconfirmed > 0 {
            self.extended += 1;
            self.syncing_until = Some(now + dead);
            self.out.push_back(Output::Event(format!(
                "{unconfirmed} node(s) heard but not confirmed yet: listening for another dead interval"
            )));
        }
        if self.syncing_until.is_some_and(|t| now >= t) {
            self.syncing_until = None;
            // A peer not heard while listening is not presumed on its list any more (it may
            // be gone for good, or on another list by now).
            self.presumed.clear();
            self.extended = 0;
            self.out.push_back(Output::Event("listened for one dead interval; claiming from now on".into()));
            changed = true;
            kept = (0..self.dvipas.len()).filter(|&i| self.held[i]).collect();
        }
        // Ownership changes only with what is heard, deaths and the end of listening; a
        // plain heartbeat tick decides nothing (and costs nothing with 10,000 DVIPAs).
        if changed {
            self.evaluate(now);
        }
        // What it kept through the listening (from before a restart, a reload or a lost
        // majority) and still holds, it announces again: the neighbours may have been told
        // of another holder meanwhile.
        for i in kept.into_iter().filter(|&i| self.held[i]) {
            self.out.push_back(Output::Announce { index: i, refresh: false });
        }
        if now >= self.next_refresh {
            self.next_refresh = now + REFRESH_INTERVAL;
            for i in 0..self.dvipas.len() {
                if self.held[i] && !self.syncing() {
                    self.out.push_back(Output::Announce { index: i, refresh: true });
                }
            }
        }
        // Keeping step with the leader: when its heartbeat was read in this wake, ours goes
        // out in it too (unless it went out less than a tenth of an interval ago), and the
        // next one is timed for half a grace after the leader's next one is due to arrive:
        // earlier at once, later by a twentieth of an interval at most (that late, well
        // within a receiver's grace). A node that reads routine heartbeats only when it
        // wakes (vipad, when its kernel steers them to a socket of their own) then wakes
        // once an interval, to check on the leader and send its own; one that reads them as
        // they come wakes for the leader's and sends in that wake. Only the leader's, so two
        // nodes never pull each other.
        let interval = self.config.interval;
        let leader = self.leader_heard.take();
        if leader.is_some() && self.next_heartbeat <= now + interval - interval / 10 {
            self.next_heartbeat = now;
        }
        if now >= self.next_heartbeat {
            self.send_heartbeat(now);
        }
        if let Some((arrived, grace)) = leader {
            let target = arrived + interval + grace / 2;
            self.next_heartbeat = if target < self.next_heartbeat {
                target.max(now + interval / 10)
            } else {
                target.min(self.next_heartbeat + interval / 20)
            };
        }
    }

    /// Whether the death of peer `p` would change something here: it holds a DVIPA this
    /// node is in the order of, or one more death would cost this node its quorum. Only
    /// then, or while this node is not calm, is a late heartbeat of `p` noticed on time.
    fn watched(&self, p: &Peer) -> bool {
        p.holds_mine || self.quorum_at_stake()
    }

    /// With `majority`, whether one more death would leave this node with no more than half
    /// the cluster (or it has no majority already).
    fn quorum_at_stake(&self) -> bool {
        let alive = 1 + self.peers.values().filter(|p| p.alive).count();
        self.config.quorum == Quorum::Majority && (alive - 1) * 2 <= self.config.size()
    }

    /// The peer whose heartbeats this node sends its own with: the live, watched peer with
    /// the lowest name, if that is lower than this node's.
    fn leader(&self) -> Option<&str> {
        self.peers
            .iter()
            .find(|(_, p)| p.alive && (self.watched(p) || !self.calm))
            .map(|(n, _)| n.as_str())
            .filter(|n| *n < self.config.me.as_str())
    }

    fn alive_nodes(&self) -> Vec<&str> {
        std::iter::once(self.config.me.as_str())
            .chain(self.peers.iter().filter(|(_, p)| p.alive).map(|(n, _)| n.as_str()))
            .collect()
    }

    pub fn has_quorum(&self) -> bool {
        match self.config.quorum {
            Quorum::None => true,
            Quorum::Majority => self.alive_nodes().len() * 2 > self.config.size(),
        }
    }

    fn claims(&self, node: &str, i: usize) -> bool {
        if node == self.config.me {
            return self.held[i] && !self.syncing();
        }
        self.peers.get(node).is_some_and(|p| p.alive && p.same_config && !p.syncing && bit(&p.held, i))
    }

    /// DVIPA `i` stops being held here: its address is to leave the kernel, and it is
    /// marked going until it has ([`Cluster::addresses_gone`]).
    fn give_up(&mut self, now: Instant, i: usize, cause: String) {
        self.held[i] = false;
        self.going[i] = true;
        self.since[i] = now;
        self.conflict[i] = false;
        self.out.push_back(Output::Release { index: i, cause });
    }

    /// Whether DVIPA `i` was given up here and its address may still be in the kernel.
    pub fn is_going(&self, i: usize) -> bool {
        self.going[i]
    }

    /// The shell found the addresses of these DVIPAs gone from the kernel (after their
    /// release), and these addresses the list no longer names (`unlisted`, see
    /// `still_going`): they are no longer marked going, and one heartbeat says so at once,
    /// so that their next holders take them now, not after the last one is deleted.
    /// Heartbeats are the only outputs (once nothing is going, a leaving node's say it is
    /// leaving).
    pub fn addresses_gone(&mut self, now: Instant, indices: impl IntoIterator<Item = usize>, unlisted: &[IpAddr]) {
        let mut changed = false;
        for i in indices {
            if i < self.going.len() && std::mem::replace(&mut self.going[i], false) {
                self.maps = None;
                changed = true;
            }
        }
        for a in unlisted {
            if self.unlisted.remove(a) {
                self.spoken.clear();
                changed = true;
            }
        }
        if changed {
            self.send_heartbeat(now);
        }
    }

    /// The addresses the list no longer names that this host still has (see `still_going`).
    pub fn unlisted(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.unlisted.iter().copied()
    }

    /// After a reload (`Cluster::new`): the addresses of DVIPAs given up before it that may
    /// still be here are going again; so are those the new list no longer names that were
    /// held or going, towards peers on an earlier list that names them (until
    /// [`Cluster::addresses_gone`]).
    pub fn still_going(&mut self, addrs: &[IpAddr]) {
        for a in addrs {
            match self.index(*a) {
                Some(i) => {
                    self.held[i] = false;
                    self.going[i] = true;
                }
                None => {
                    self.unlisted.insert(*a);
                }
            }
        }
        self.maps = None;
    }

    /// Whether a live peer still listening after its start (or reload) has DVIPA `i` in its
    /// kernel from before: it keeps it until it has listened, and nobody activates it
    /// meanwhile (it then claims it, or gives it up to a holder it heard).
    fn kept_by_listening(&self, i: usize) -> bool {
        self.peers.values().any(|p| p.alive && p.syncing && p.same_config && bit(&p.held, i))
    }

    /// Whether a live peer has another DVIPA list (its configuration was changed and
    /// reloaded, and this one's not yet, or the other way round): its claims cannot be
    /// read here, so it may hold any address, and nothing is taken until the lists match.
    fn lists_differ(&self) -> bool {
        self.peers.values().any(|p| p.alive && !p.same_config)
    }

    fn declines(&self, node: &str, i: usize) -> bool {
        if node == self.config.me {
            return self.declined[i];
        }
        self.peers.get(node).is_some_and(|p| p.same_config && bit(&p.declined, i))
    }

    fn is_busy(&self, node: &str, i: usize) -> bool {
        if node == self.config.me {
            return self.busy[i];
        }
        self.peers.get(node).is_some_and(|p| p.same_config && bit(&p.busy, i))
    }

    /// Live candidates of DVIPA `i` in order: a pinned node first, then owner and backups.
    fn order(&self, i: usize) -> Vec<String> {
        let alive = self.alive_nodes();
        let mut order: Vec<String> = Vec::new();
        if let Some(p) = self.pinned(i) {
            order.push(p.to_string());
        }
        for n in &self.orders[i] {
            if !order.iter().any(|o| o == n) {
                order.push(n.clone());
            }
        }
        // A node still listening after its start is not a candidate yet: the holder keeps
        // the address until it can take it.
        let listening = |n: &str| self.peers.get(n).is_some_and(|p| p.syncing);
        order.retain(|n| alive.contains(&n.as_str()) && !self.declines(n, i) && !listening(n));
        order
    }

    /// Whether a node before this one in DVIPA `i`'s configured order is alive but still
    /// listening after its start. Nobody holding the address, that node gets it once it has
    /// listened (at most a dead interval): at a cold start of the whole cluster, the node
    /// that happens to finish listening first must not take every address.
    ///
    /// A node whose DVIPA list differs (its configuration was changed and reloaded before
    /// this one's) counts too: its claims cannot be read here, and it may still have the
    /// address from before its reload.
    fn first_listening(&self, i: usize) -> bool {
        let me = self.config.me.as_str();
        self.orders[i].iter().take_while(|n| n.as_str() != me).any(|n| {
            self.peers.get(n).is_some_and(|p| p.alive && p.syncing && (!p.same_config || !bit(&p.declined, i)))
        })
    }

    /// Who should hold DVIPA `i`, from this node's view.
    pub fn desired(&self, i: usize) -> Option<String> {
        self.desired_in(i, &self.order(i))
    }

    /// [`Cluster::desired`] with DVIPA `i`'s candidate order already at hand.
    fn desired_in(&self, i: usize, order: &[String]) -> Option<String> {
        let holder = order.iter().find(|n| self.claims(n, i)).cloned();
        if self.pinned(i).is_some_and(|p| order.first().is_some_and(|o| o == p)) {
            return order.first().cloned();
        }
        let d = &self.dvipas[i];
        match (d.takeback, holder) {
            (Takeback::Never, Some(h)) => Some(h),
            (Takeback::WhenIdle, Some(h)) if h != d.owner && self.is_busy(&h, i) => Some(h),
            _ => order.first().cloned(),
        }
    }

    /// The node holding DVIPA `i`, as far as this node knows.
    pub fn holder(&self, i: usize) -> Option<String> {
        self.order(i)
            .into_iter()
            .find(|n| self.claims(n, i))
            .or_else(|| self.peers.iter().find(|(n, _)| self.claims(n, i)).map(|(n, _)| n.clone()))
    }

    /// The peer on an earlier list (of `earlier`, see `on_earlier`) for which nobody here
    /// may take DVIPA `i` and a holder here keeps it, if any.
    fn held_still_by<'a>(&self, i: usize, earlier: &'a [(String, usize, bool)]) -> Option<&'a str> {
        let by = earlier.iter().find(|(n, k, translating)| {
            let k = &self.known[*k];
            if *translating {
                // On another list, speaking an earlier one for this node: what it says of a
                // DVIPA not the same there is not what it does.
                return !k.same(i);
            }
            // Settings changed: the nodes on the earlier list decide it, if one of them may
            // take it there (is its owner or a backup there, and has not deactivated it:
            // read so, see `Known::read`) or holds it.
            k.changed(i) && self.peers.get(n).is_some_and(|p| !bit(&p.declined, i) || bit(&p.held, i))
        });
        by.map(|(n, _, _)| n.as_str())
    }

    /// Of `others` (the peers that hold DVIPA `i`, which this node holds too), one on an
    /// earlier list where its settings differ and that this node does not come before
    /// there: the two sides cannot agree who comes first, so this side gives way (the
    /// other gives way itself when this node comes first).
    fn gives_way_to<'a>(
        &self,
        i: usize,
        others: &'a [String],
        earlier: &[(String, usize, bool)],
    ) -> Option<&'a String> {
        let me = self.config.me.as_str();
        others.iter().find(|o| {
            earlier.iter().any(|(e, k, translating)| {
                let k = &self.known[*k];
                e == *o && !translating && k.changed(i) && !k.comes_before(i, me, o)
            })
        })
    }

    /// The live peers on an earlier list: (name, list, translating).
    fn on_earlier(&self) -> Vec<(String, usize, bool)> {
        let alive = self.peers.iter().filter(|(_, p)| p.alive);
        alive.filter_map(|(n, p)| Some((n.clone(), p.list?, p.translating))).collect()
    }

    /// What live peers whose claims can be read mark going (see [`Heartbeat::going`]), as
    /// one bitmap; `None` when nothing (as almost always: no lookup per DVIPA then). Nobody
    /// activates a DVIPA marked so.
    fn going_elsewhere(&self) -> Option<Vec<u8>> {
        let mut any: Option<Vec<u8>> = None;
        for p in self.peers.values().filter(|p| p.alive && p.same_config && p.going.iter().any(|b| *b != 0)) {
            let map = any.get_or_insert_with(|| vec![0; p.going.len()]);
            map.resize(map.len().max(p.going.len()), 0);
            map.iter_mut().zip(&p.going).for_each(|(m, g)| *m |= g);
        }
        any
    }

    fn evaluate(&mut self, now: Instant) {
        self.maps = None;
        let quorum = self.has_quorum();
        if quorum && !self.had_quorum && !self.syncing() {
            // Back in the majority after a partition: what this side missed is learnt
            // from the others' heartbeats before anything is claimed, as after a start.
            self.syncing_until = Some(now + self.config.dead_time() + self.config.interval);
            self.out.push_back(Output::Event("quorum regained; listening before claiming".into()));
        }
        self.had_quorum = quorum;
        let mut changed = false;
        let me = self.config.me.clone();
        // A live node's DVIPA list differs: nothing is taken, and holders keep what they
        // hold (see `lists_differ`); so for a DVIPA whose settings differ on a live node's
        // earlier list (see `lists`).
        let unreadable = self.lists_differ();
        // (Nobody on an earlier list, as almost always: nothing to look at per DVIPA.)
        let earlier = self.on_earlier();
        let going_elsewhere = self.going_elsewhere();
        for i in 0..self.dvipas.len() {
            let differ = unreadable || (!earlier.is_empty() && self.held_still_by(i, &earlier).is_some());
            let others: Vec<String> = self.peers.keys().filter(|n| self.claims(n, i)).cloned().collect();
            let yields = match self.held[i] && !earlier.is_empty() {
                true => self.gives_way_to(i, &others, &earlier).cloned(),
                false => None,
            };
            let going_elsewhere = going_elsewhere.as_ref().is_some_and(|m| bit(m, i));
            if !others.is_empty() {
                self.moving[i] = false;
            }
            if self.syncing() {
                // A copy left from before the start goes as soon as another node claims it.
                if self.held[i] && !others.is_empty() {
                    let cause = format!("stale copy from before the restart: {} holds it", others[0]);
                    self.give_up(now, i, cause);
                }
                continue;
            }
            if self.dvipas[i].rank(&me).is_none() {
                // Kept from before a change that took this node off its list: given up
                // once no live node on an earlier list may take it there (see
                // `held_still_by`) and a node on the new one can take it (alive, done
                // listening), or to a holder on an earlier list this node does not come
                // before; until then it is better here than nowhere.
                if self.held[i] && !differ && !self.order(i).is_empty() {
                    self.give_up(now, i, "this node is no longer its owner or a backup".to_string());
                    changed = true;
                } else if let Some(o) = yields {
                    self.give_up(now, i, gives_way(&o));
                    changed = true;
                }
                continue;
            }
            let order = self.order(i);
            let desired = self.desired_in(i, &order);
            let pos = |n: &str| order.iter().position(|o| o == n).unwrap_or(usize::MAX);
            if self.held[i] {
                // Why to release, and whether it is a handover (the address is moving).
                let release = if !quorum {
                    Some(("no quorum: this node sees no majority of the cluster".to_string(), false))
                } else if self.declined[i] {
                    Some(("deactivated by the operator".to_string(), false))
                } else if let Some(o) = others.iter().find(|o| pos(o) < pos(&me)) {
                    Some((format!("{o} also holds it and comes first"), false))
                } else if let Some(o) = &yields {
                    Some((gives_way(o), false))
                } else if desired.as_deref() != Some(me.as_str()) && !differ {
                    // (While a live node's list differs, nobody may take it: it stays.)
                    desired.as_ref().map(|d| (format!("handing over to {d}"), true))
                } else {
                    None
                };
                if let Some((cause, handover)) = release {
                    self.give_up(now, i, cause);
                    self.moving[i] = handover;
                    changed = true;
                } else if !others.is_empty() && !self.conflict[i] {
                    // Kept against another claimant: tell the neighbours again.
                    self.conflict[i] = true;
                    self.out.push_back(Output::Event(format!(
                        "{} also claims {}; this node keeps it and announces it again",
                        others[0], self.dvipas[i].address
                    )));
                    self.out.push_back(Output::Announce { index: i, refresh: false });
                } else if others.is_empty() {
                    self.conflict[i] = false;
                }
                let going = self.held[i] && going_elsewhere;
                if going != self.going_seen[i] {
                    self.going_seen[i] = going;
                    if self.held[i] {
                        self.out.push_back(Output::Announce { index: i, refresh: false });
                    }
                }
            } else if quorum
                && !self.declined[i]
                && desired.as_deref() == Some(me.as_str())
                && others.is_empty()
                && !self.first_listening(i)
                && !self.kept_by_listening(i)
                && !going_elsewhere
                && !differ
                && !self.leaving
            {
                self.held[i] = true;
                // (Still here if it was going: claimed again.)
                self.going[i] = false;
                self.since[i] = now;
                let cause = match self.dvipas[i].owner == me {
                    true => "owner, and no other node holds it".to_string(),
                    false => format!("rank {} is the highest live backup", self.dvipas[i].rank(&me).unwrap_or(0)),
                };
                self.out.push_back(Output::Activate { index: i, cause });
                changed = true;
            }
        }
        self.calm = !self.syncing()
            && self.pins.is_empty()
            && (0..self.dvipas.len()).filter(|&i| bit(&self.mine, i)).all(|i| {
                let holders = usize::from(self.held[i]) + self.peers.keys().filter(|n| self.claims(n, i)).count();
                holders == 1 && !self.moving[i]
            });
        if changed {
            self.send_heartbeat(now);
        }
    }

    /// `vipactl dvipa move ADDR NODE`: every node prefers NODE for ADDR from now on (the
    /// holder hands over; NODE activates once the holder released).
    pub fn move_to(&mut self, now: Instant, addr: IpAddr, node: &str) -> Result<(), String> {
        let i = self
            .index(addr)
            .ok_or_else(|| format!("{addr} is not a DVIPA of this cluster: `vipactl dvipa` lists them"))?;
        if self.dvipas[i].rank(node).is_none() {
            return Err(format!("{node} is neither the owner nor a backup of {addr}"));
        }
        if !self.alive_nodes().contains(&node) {
            return Err(format!("{node} is not alive in this node's view of the cluster"));
        }
        // A rolling change under way: a move must mean the same on every node it reaches.
        if let Some((peer, _)) = self.peers.iter().find(|(_, p)| p.alive && p.translating && p.list.is_none()) {
            return Err(format!(
                "{peer} is on a later [[dvipa]] list than this node (a rolling change is under way): reload this node first, or move {addr} from a node with the new list"
            ));
        }
        if let Some(peer) = self.held_still_by(i, &self.on_earlier()) {
            return Err(format!(
                "{peer} is still on an earlier [[dvipa]] list, where {addr} has other settings: nobody moves it until {peer} is reloaded"
            ));
        }
        if self.list_of(node).is_some_and(|k| !self.known[k].same(i)) {
            return Err(format!(
                "{node} is still on an earlier [[dvipa]] list, where {addr} has other settings or is not listed: reload {node} first"
            ));
        }
        if self.declines(node, i) {
            return Err(format!(
                "{node} has deactivated {addr}: run `vipactl dvipa reactivate {addr}` on {node} first"
            ));
        }
        // Every node's heartbeat carries every move in force (one per DVIPA at most, ended
        // ones too): it must stay one datagram.
        let mut would = Heartbeat {
            node: self.config.me.clone(),
            count: self.dvipas.len() as u32,
            pins: self.pins.iter().filter(|(k, _)| **k != i).map(|(k, (s, n))| (*k as u32, n.clone(), *s)).collect(),
            ..Default::default()
        };
        would.pins.push((i as u32, node.to_string(), 0));
        if would.emitted_len() > MAX_HEARTBEAT {
            return Err(format!(
                "the planned moves in force ({}: one for each DVIPA ever moved, ended ones too) fill the heartbeat ({} bytes with this one, at most {MAX_HEARTBEAT}): moving a DVIPA moved before takes no more room; a restart of every node forgets them all",
                self.pins.len(),
                would.emitted_len()
            ));
        }
        self.pin(i, node);
        self.evaluate(now);
        self.send_heartbeat(now);
        Ok(())
    }

    /// `vipactl dvipa deactivate ADDR`: this node gives the address up and will not take
    /// it until reactivated; a backup takes over.
    pub fn deactivate(&mut self, now: Instant, addr: IpAddr) -> Result<(), String> {
        let i = self.member_of(addr)?;
        self.declined[i] = true;
        if self.pinned(i) == Some(self.config.me.as_str()) {
            self.unpin(i);
        }
        self.evaluate(now);
        self.send_heartbeat(now);
        Ok(())
    }

    pub fn reactivate(&mut self, now: Instant, addr: IpAddr) -> Result<(), String> {
        let i = self.member_of(addr)?;
        self.declined[i] = false;
        self.evaluate(now);
        self.send_heartbeat(now);
        Ok(())
    }

    /// DVIPA `addr`'s index, if this node is its owner or one of its backups (the nodes
    /// that can deactivate and reactivate it here).
    fn member_of(&self, addr: IpAddr) -> Result<usize, String> {
        let i = self
            .index(addr)
            .ok_or_else(|| format!("{addr} is not a DVIPA of this cluster: `vipactl dvipa` lists them"))?;
        if self.dvipas[i].rank(&self.config.me).is_none() {
            return Err(format!(
                "this node ({}) is neither the owner nor a backup of {addr}: run it on {}",
                self.config.me,
                self.dvipas[i].order().join(", ")
            ));
        }
        Ok(i)
    }

    /// The DVIPAs deactivated on this node (kept across a reload by [`Cluster::decline`]).
    pub fn declined_addresses(&self) -> Vec<IpAddr> {
        (0..self.dvipas.len()).filter(|&i| self.declined[i]).map(|i| self.dvipas[i].address).collect()
    }

    /// Deactivates `addrs` (those of them this node backs) before anything is claimed: what
    /// an operator deactivated stays so across a reload.
    pub fn decline(&mut self, addrs: &[IpAddr]) {
        for &a in addrs {
            if let Ok(i) = self.member_of(a) {
                self.declined[i] = true;
            }
        }
        self.maps = None;
    }

    /// A planned move of DVIPA `i` to `node`, newer than any seen; `""` ends the move.
    fn pin(&mut self, i: usize, node: &str) {
        self.clock += 1;
        self.pins.insert(i, (self.clock, node.to_string()));
    }

    fn unpin(&mut self, i: usize) {
        self.pin(i, "");
    }

    /// The node a planned move of DVIPA `i` points at, if any.
    pub fn pinned(&self, i: usize) -> Option<&str> {
        self.pins.get(&i).map(|(_, n)| n.as_str()).filter(|n| !n.is_empty())
    }

    /// VIPADYN status of DVIPA `i` on this node.
    pub fn status(&self, i: usize) -> DvipaStatus {
        if self.declined[i] {
            DvipaStatus::Deactivated
        } else if self.held[i] {
            let d = &self.dvipas[i];
            let owner_back = d.owner != self.config.me && self.order(i).first() == Some(&d.owner);
            if d.takeback == Takeback::WhenIdle && owner_back && self.busy[i] {
                DvipaStatus::Quiescing
            } else {
                DvipaStatus::Active
            }
        } else if self.moving[i] {
            DvipaStatus::Moving
        } else {
            DvipaStatus::Backup
        }
    }

    /// How long ago a peer's last heartbeat arrived (for views).
    pub fn peer_age(&self, now: Instant, name: &str) -> Option<Duration> {
        self.peers.get(name).map(|p| now.saturating_duration_since(p.last_heard))
    }

    /// A live peer whose heartbeats have not come for half the dead time (two intervals at
    /// least) though it answered a probe since the last: it lives, and what it sends
    /// without being asked does not arrive (a multicast group that stopped reaching this
    /// node, say). The silence bound would soon declare it dead.
    pub fn heard_only_by_answers(&self, now: Instant) -> Option<&str> {
        let half = (self.config.interval * self.config.dead_after / 2).max(self.config.interval * 2);
        self.peers
            .iter()
            .find(|(_, p)| p.alive && p.answered > p.last_heard && now >= p.last_heard + half)
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests;
