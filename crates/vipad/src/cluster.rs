//! The daemon's side of the cluster: the UDP heartbeat transport, the key, the clock and
//! the kernel facts (connections on a DVIPA) the pure [`vipa_core::cluster::Cluster`]
//! needs; carrying out its outputs; and the views.
//!
//! The cluster runs on its own thread, which waits for a datagram or the core's next
//! timer, feeds the core and sends what it says to send. It tells the main thread only
//! what concerns the kernel, the announcements or the event stream, so an idle cluster
//! never wakes the main thread, and heartbeats and probe answers go on while the main
//! thread is busy with kernel work. Both threads reach the state through one mutex, held
//! for moments only: never across kernel work.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};
use vipa_api::{ClusterView, DvipaView, MemberView};
use vipa_core::cluster::{confirm_window, Cluster, ClusterConfig, Output, Quorum, Verdict};
use vipa_core::model::Observed;
use vipa_core::plan::HeldDvipa;
use vipa_core::Config;
use vipa_wire::cluster::{Heartbeat, HeartbeatError, Key, FLAGS_LOW_BYTE, FLAG_PROBE, FLAG_ROUTINE, FLAG_UNICAST};

use crate::daemon::Input;

/// Shortest key accepted, in bytes.
pub const MIN_KEY: usize = 32;
/// Gratuitous ARPs of each form / NAs per DVIPA activation or re-announcement.
const ANNOUNCE_COUNT: u32 = 3;
/// The same for the periodic refresh: neighbours that have it right need no more, and with
/// thousands of DVIPAs the refresh is most of an idle holder's work.
const REFRESH_COUNT: u32 = 1;
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

/// Answers given at every peer address, by node name: the incarnation and sequence number
/// of the last probe so answered, and when.
type Answered = BTreeMap<String, (u64, u64, Instant)>;

/// Whether a probe of `node` (its `incarnation` and sequence number `seq`), whose address
/// is not known yet, may be answered at every peer address now: once an interval for each
/// node, and only a probe newer than the last so answered (of a later run, or later in the
/// same run), so a replayed probe can neither make this node send more nor take the turn
/// of the node's real probes; 256 names at most.
fn answer_due(
    answered: &mut Answered,
    now: Instant,
    interval: Duration,
    node: &str,
    incarnation: u64,
    seq: u64,
) -> bool {
    if let Some(&(inc, last, t)) = answered.get(node) {
        let newer = (incarnation, seq) > (inc, last);
        if !newer || (incarnation == inc && now < t + interval) {
            return false;
        }
    } else if answered.len() >= 256 {
        answered.retain(|_, (_, _, t)| now < *t + interval);
        if answered.len() >= 256 {
            return false;
        }
    }
    answered.insert(node.to_string(), (incarnation, seq, now));
    true
}

/// Whether `a` is one of the configured peer addresses.
fn is_peer(peers: &[SocketAddr], a: &SocketAddr) -> bool {
    peers.iter().any(|p| p.ip() == a.ip().to_canonical())
}

/// Where a probe is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerAt {
    To(SocketAddr),
    /// At every peer address: the prober's address is not known yet (see [`answer_due`]).
    EveryPeer,
}

/// Where a probe that came from `from` (a configured peer address or not), whose sender's
/// heartbeats come from `learnt`, is answered, if at all: where it came from if that is a
/// peer's address (the configured one, or the learnt one), else at the learnt address (a
/// node may send from another of its addresses, such as an IPv6 DVIPA in the peers'
/// prefix), else at every peer address (a node not heard since this one started, sending
/// from an address not listed: it is at one of them). A replay or a copy of one already
/// answered is not answered, wherever it came from: a copy of a probe cannot make this
/// node send anything. One overtaken on the way still asks for an answer.
fn answer_to(verdict: Verdict, from: SocketAddr, configured: bool, learnt: Option<SocketAddr>) -> Option<AnswerAt> {
    if matches!(verdict, Verdict::Replayed | Verdict::Duplicated) {
        return None;
    }
    let known = configured || learnt.is_some_and(|a| a.ip().to_canonical() == from.ip().to_canonical());
    Some(match (known, learnt) {
        (true, _) => AnswerAt::To(from),
        (false, Some(a)) => AnswerAt::To(a),
        (false, None) => AnswerAt::EveryPeer,
    })
}

pub struct ClusterShell {
    pub core: Cluster,
    key: Key,
    /// The key file's contents at start (a reload with other contents is refused).
    secret: Vec<u8>,
    /// Probes of nodes whose address is not known, answered at every peer address.
    stranger_answers: Answered,
    sock: UdpSocket,
    /// Announcements (with their repeat count) due once the kernel has applied the state
    /// of the version given.
    announce: Vec<(u64, IpAddr, Vec<String>, u32)>,
    addresses: BTreeMap<String, SocketAddr>,
    logged_drop: Option<Instant>,
    /// Whether some held DVIPA needs its connections counted (recomputed on moves).
    watching: bool,
    /// Wakes the thread that counts them (see `count_connections`).
    count_wake: Sender<()>,
    /// Wakes the cluster thread (a pipe it also waits on): its next deadline may have
    /// changed under another thread.
    nudge: OwnedFd,
    /// Counts the changes of what this node holds; the main thread plans from one version
    /// and says which it has applied.
    version: u64,
    /// DVIPAs released whose addresses the kernel may still have: the core marks each
    /// going until told that the kernel work of its version is done and the host no longer
    /// has its address (a peer activating one before would make two holders).
    releasing: BTreeMap<usize, Releasing>,
    /// The version the kernel has (see `applied`).
    kernel_has: u64,
    /// The latest time the core was given: time never goes back for it (see `clock`).
    last_now: Instant,
    /// The multicast group for routine heartbeats, when one is configured.
    multicast: Option<Multicast>,
    /// Peers not in the multicast group (their heartbeats say so): while alive, they get
    /// routine heartbeats by unicast too.
    unicast_to: BTreeSet<String>,
    /// Lines for the event stream that are not the core's.
    events: Vec<String>,
    /// News of a drain outside the cluster thread's turn (see `send_queued`) for the next
    /// one: whether the kernel must follow, and announcements are due.
    held_over: (bool, bool),
    /// An address the list no longer names stayed on the host, and a warning said so.
    unlisted_warned: bool,
    /// Which node each configured peer address was last heard from.
    heard_at: BTreeMap<IpAddr, String>,
}

/// A DVIPA released whose address the kernel may still have.
struct Releasing {
    /// The version that released it (a later release of the same DVIPA replaces it).
    version: u64,
    /// Still on the host after the kernel work was done, and said so.
    overdue: bool,
}

/// A configured multicast group for routine heartbeats, and the way back into it for a
/// node outside it.
struct Multicast {
    group: vipa_kernel::steer::Group,
    to: SocketAddr,
    /// In the group: routine heartbeats go to it, and come from it.
    member: bool,
    /// Why not, while not (for the view).
    outside: String,
    /// While outside: when the group is joined again, and how often.
    rejoin_at: Instant,
    rejoin_every: Duration,
    /// When the node last came back into the group: lost again soon after, it waits
    /// twice as long before the next try.
    back_since: Option<Instant>,
    /// After a join again, the next routine heartbeat also goes to the group: a peer that
    /// is outside too hears by it that the group reaches it.
    try_group: bool,
    /// While outside: the group was joined again since the node went outside. Only then
    /// does what comes by the group count: a group that comes and goes does not bring the
    /// node in and out at its pace, but at most once a wait (`rejoin_every`).
    joined_again: bool,
    /// Peers heard by the group, with a heartbeat new to this node, since it last joined
    /// the group again.
    heard: BTreeSet<String>,
}

/// Whether a node outside the group is back in: every live peer that says it is in the
/// group has been heard by the group (with a heartbeat new to this node, which no replay
/// is) since this node last joined it again; where no peer is in it, one heard that way is enough
/// (its try after a join again). One peer's group alone is not: the group may reach this
/// node from it and not from another, and in and out again each time would be the result.
fn back_in<'a>(heard: &BTreeSet<String>, members: impl Iterator<Item = &'a String>) -> bool {
    let mut any = false;
    for m in members {
        if !heard.contains(m) {
            return false;
        }
        any = true;
    }
    any || !heard.is_empty()
}

/// The first wait before a node outside its multicast group joins it again: ten silence
/// bounds, a second at least; it doubles each time the group is lost again soon after
/// coming back, up to `REJOIN_MAX`.
fn rejoin_first(interval: Duration, dead_after: u32) -> Duration {
    (interval * dead_after * 10).max(Duration::from_secs(1)).min(REJOIN_MAX)
}

const REJOIN_MAX: Duration = Duration::from_secs(600);

/// What the cluster thread tells the main thread.
#[derive(Debug, Default)]
pub struct News {
    /// What this node holds changed: the kernel must follow.
    pub kernel: bool,
    /// Lines for the event stream.
    pub events: Vec<String>,
    /// Announcements are due.
    pub announce: bool,
}

impl News {
    fn any(&self) -> bool {
        self.kernel || self.announce || !self.events.is_empty()
    }
}

/// The main thread's hold on the cluster.
pub struct ClusterHandle(Arc<Mutex<ClusterShell>>);

impl ClusterHandle {
    pub fn lock(&self) -> ShellGuard<'_> {
        ShellGuard { guard: lock(&self.0), before: None }
    }
}

/// The main thread's hold on the state. When what it changed brings the core's next
/// deadline closer (a move can), the cluster thread is woken to take it.
pub struct ShellGuard<'a> {
    guard: MutexGuard<'a, ClusterShell>,
    /// The next deadline before the first change (`Some` once something may have changed).
    before: Option<Option<Instant>>,
}

impl std::ops::Deref for ShellGuard<'_> {
    type Target = ClusterShell;
    fn deref(&self) -> &ClusterShell {
        &self.guard
    }
}

impl std::ops::DerefMut for ShellGuard<'_> {
    fn deref_mut(&mut self) -> &mut ClusterShell {
        if self.before.is_none() {
            self.before = Some(self.guard.core.poll_timeout());
        }
        &mut self.guard
    }
}

impl Drop for ShellGuard<'_> {
    fn drop(&mut self) {
        if let Some(before) = self.before {
            self.guard.nudge_if_sooner(before);
        }
    }
}

fn lock(m: &Mutex<ClusterShell>) -> MutexGuard<'_, ClusterShell> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        (Some(c), Some(n)) if n.me != c.me => {
            Err("a new node name needs a restart of vipad (its peers know it by its name)".into())
        }
        (Some(c), Some(n)) if n.multicast != c.multicast => {
            Err("a new multicast group or NIC for heartbeats needs a restart of vipad".into())
        }
        (Some(_), Some(_)) => Ok(()),
    }
}

/// Refuses peers that are this host's own addresses (a configuration copied to every node
/// unchanged, say): this node's heartbeats would come back to it, and the cluster would
/// look one node bigger than it is, which moves the majority.
fn peers_are_others(c: &ClusterConfig, observed: &Observed) -> Result<(), String> {
    let own = observed.local_addresses();
    match c.peers.iter().find(|p| own.contains(&p.ip())) {
        Some(p) => Err(format!(
            "cluster peer {} is an address of this host: list only the other nodes' addresses in cluster.peers",
            p.ip()
        )),
        None => Ok(()),
    }
}

/// What this node knows of a peer, for `missed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Alive,
    Dead,
    /// Not heard by this configuration of the cluster (after a start or a reload).
    Unknown,
}

/// The configured `peers` missed (see `ClusterShell::unheard`): those at which a node was
/// heard that is now dead; and, unless `others_accounted` (every peer alive, or this node
/// listening), those no node now known alive was heard at.
fn missed(
    peers: &[SocketAddr],
    heard_at: &BTreeMap<IpAddr, String>,
    known: impl Fn(&str) -> Known,
    others_accounted: bool,
) -> BTreeSet<IpAddr> {
    (peers.iter())
        .map(|p| p.ip().to_canonical())
        .filter(|ip| match heard_at.get(ip).map(|n| known(n)) {
            Some(Known::Alive) => false,
            Some(Known::Dead) => true,
            Some(Known::Unknown) | None => !others_accounted,
        })
        .collect()
}

/// See `vipa_kernel::steer::reserve_send_buffer`: a dead peer's queued heartbeats must not
/// keep the others from being sent.
fn reserve_send_buffer(sock: &UdpSocket, peers: usize) {
    match vipa_kernel::steer::reserve_send_buffer(sock, peers) {
        Ok((has, want)) if has >= want => {
            debug!(bytes = has, "heartbeat send buffer holds a resolving neighbour's queue for every peer")
        }
        Ok((has, want)) => warn!(
            bytes = has,
            wanted = want,
            "the heartbeat socket's send buffer is smaller than the kernel's queues for unresolved peers can grow: a peer dead for long may keep heartbeats from the others"
        ),
        Err(e) => warn!(error = %e, "cannot size the heartbeat socket's send buffer"),
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

/// The cluster thread: waits for a datagram (authenticated and parsed before the state is
/// touched) or the core's next timer, hands either to the core, carries out its outputs,
/// and sends the main thread the news.
fn cluster_loop(
    shared: Arc<Mutex<ClusterShell>>,
    sock: UdpSocket,
    routine: Option<UdpSocket>,
    nudged: OwnedFd,
    key: Key,
    tx: Sender<Input>,
) {
    prompt();
    let mut buf = vec![0u8; 65536];
    // Waiting is done by `ppoll` (a high-resolution timer); a receive timeout on the socket
    // would be rounded to the kernel's tick (4 ms here), too coarse for 1 ms heartbeats.
    if let Err(e) = sock.set_nonblocking(true) {
        warn!(error = %e, "cluster socket stays blocking");
    }
    let mut deadline = lock(&shared).core.poll_timeout();
    let mut got: Vec<Got> = Vec::new();
    // Whether the last turn left datagrams for this one: this one then leaves none, so
    // that no datagram waits more than one turn (a wall clock set back would otherwise
    // make a stamp look later than every reading for as long as the step).
    let mut deferred = false;
    loop {
        let wait = deadline.map(|t| t.saturating_duration_since(Instant::now()));
        if !wait.is_some_and(|w| w.is_zero()) {
            wait_for_input(&sock, &nudged, wait);
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        // Routine heartbeats wait in their socket until this thread wakes anyway. Each turn
        // reads both sockets: a peer's probe and the routine heartbeat it sends next come
        // to different sockets, and are taken in the order they came (by the kernel's
        // arrival stamps), else the probe would look like a replay. A flood that fills a
        // turn's share makes the next turn come at once.
        let mut more = false;
        // How far the prompt socket was read: a routine datagram that came after that waits
        // for the next turn, as a prompt one that came before it may still be on its way
        // to its socket (the kernel stamps a datagram a moment before it gets there).
        let mut prompt_read_to = None;
        for (s, prompt) in [(Some(&sock), true), (routine.as_ref(), false)] {
            let Some(s) = s else { continue };
            for n in 0.. {
                if n == PER_TURN {
                    more = true;
                    if prompt {
                        // Read up to the last one taken, and no further.
                        prompt_read_to = got.last().and_then(|g| g.stamp);
                    }
                    break;
                }
                match vipa_kernel::steer::receive(s, &mut buf) {
                    Ok(r) => got.push(Got {
                        stamp: r.stamp,
                        prompt,
                        parsed: Heartbeat::parse(&buf[..r.len], &key),
                        from: r.from,
                        to_group: r.to_multicast,
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if e.kind() != std::io::ErrorKind::WouldBlock {
                            debug!(error = %e, prompt, "cluster socket");
                            if prompt {
                                // The socket stays readable: do not spin on it.
                                thread::sleep(Duration::from_millis(10));
                            }
                        }
                        if prompt {
                            prompt_read_to = SystemTime::now().checked_sub(ON_THE_WAY);
                        }
                        break;
                    }
                }
            }
        }
        // In arrival order; without stamps (one socket), in the order read.
        got.sort_by_key(|g| g.stamp.map_or((1, SystemTime::UNIX_EPOCH), |t| (0, t)));
        // (Sorted, so all that follows the first such one came later still.)
        let next_turn = prompt_read_to
            .filter(|_| !deferred)
            .and_then(|to| got.iter().position(|g| !g.prompt && g.stamp.is_some_and(|t| t > to)));
        let later: Vec<Got> = next_turn.map(|i| got.drain(i..).collect()).unwrap_or_default();
        deferred = !later.is_empty();
        more |= deferred;
        let news = {
            let mut shell = lock(&shared);
            // Dated by arrival (a thread held up does not make what it reads late), in
            // order, never before the time the core was last brought to (it came after
            // that turn read the sockets), nor after now.
            let floor = shell.last_now;
            let read_at = now;
            let now = shell.clock(now);
            let mut at_least = floor;
            for g in got.drain(..) {
                // Unstamped (the socket of a kernel that cannot steer): a prompt one is read
                // as it comes.
                let at = arrived(read_at, wall, g.stamp).unwrap_or(if g.prompt { now } else { floor });
                let at = at.clamp(at_least, now);
                at_least = at;
                shell.datagram(at, g.parsed, g.from, g.to_group);
            }
            got.extend(later);
            if shell.core.poll_timeout().is_some_and(|t| t <= now) {
                shell.core.handle_timeout(now);
                shell.check_group(now);
                shell.rejoin(now);
            }
            let news = shell.drain();
            deadline = if more { Some(now) } else { shell.core.poll_timeout() };
            news
        };
        if news.any() && tx.send(Input::Cluster(news)).is_err() {
            return;
        }
    }
}

/// Counts the connections on held when-idle DVIPAs every `IDLE_CHECK` while there are any,
/// and sleeps otherwise. Reading the kernel's TCP table takes as long as the table is
/// big, so it is done here, without the lock: heartbeats and probe answers never wait
/// for it.
fn count_connections(shared: ClusterHandle, woken: std::sync::mpsc::Receiver<()>, tx: Sender<Input>) {
    while woken.recv().is_ok() {
        loop {
            let watched: Vec<(usize, IpAddr)> = {
                let shell = shared.lock();
                if !shell.watching {
                    break;
                }
                shell.watched().collect()
            };
            let addrs = watched.iter().map(|&(_, a)| a).collect();
            let counts = vipa_kernel::conns::established(&addrs);
            let news = {
                // The guard wakes the cluster thread should this bring its deadline closer.
                let mut shell = shared.lock();
                let now = shell.now();
                if let Ok(counts) = counts {
                    // Only what is still watched: a move may have come meanwhile.
                    let still: BTreeSet<usize> = shell.watched().map(|(i, _)| i).collect();
                    let busy = watched
                        .into_iter()
                        .filter(|(i, _)| still.contains(i))
                        .map(|(i, a)| (i, counts.get(&a).is_some_and(|&n| n > 0)));
                    shell.core.set_busy(now, busy);
                }
                shell.drain()
            };
            if news.any() && tx.send(Input::Cluster(news)).is_err() {
                return;
            }
            thread::sleep(IDLE_CHECK);
        }
    }
}

/// When a datagram stamped `stamp` by the kernel (wall clock) arrived, on the monotonic
/// clock: `now` (taken with `wall`) less its age. A routine one can wait a whole interval
/// in its socket (up to 10 s). One stamped after `wall` came after it was taken (or the
/// wall clock was set back): now. The caller keeps the result between the last time the
/// core was given and now, which also bounds what a wall clock set forward does.
fn arrived(now: Instant, wall: SystemTime, stamp: Option<SystemTime>) -> Option<Instant> {
    let age = wall.duration_since(stamp?).unwrap_or(Duration::ZERO);
    now.checked_sub(age)
}

/// How long before the kernel's stamp a datagram may still be on its way to its socket.
const ON_THE_WAY: Duration = Duration::from_micros(200);

/// Datagrams read from each socket in one turn at most.
const PER_TURN: usize = 1024;

/// A datagram read in a turn of the cluster thread.
struct Got {
    stamp: Option<SystemTime>,
    /// From the socket for everything not routine, read as it comes.
    prompt: bool,
    parsed: Result<Heartbeat, HeartbeatError>,
    from: SocketAddr,
    to_group: bool,
}

/// Waits until `sock` has a datagram (or an error to report), another thread nudges, or
/// `wait` is over (`None`: no limit).
fn wait_for_input(sock: &UdpSocket, nudged: &OwnedFd, wait: Option<Duration>) {
    let mut fds = [
        libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: nudged.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    let ts = wait.map(|w| libc::timespec { tv_sec: w.as_secs() as libc::time_t, tv_nsec: w.subsec_nanos() as _ });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: two valid pollfds, a timespec that outlives the call (or null), no signal mask.
    let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, ts_ptr, std::ptr::null()) };
    if rc > 0 && fds[1].revents != 0 {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a live buffer of its length from a non-blocking pipe.
        while unsafe { libc::read(nudged.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills in two descriptors, which are then owned here.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors no one else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The cluster thread takes the fair scheduler's highest weight (nice -20): it wakes ahead
/// of the main thread's kernel work and of the host's other processes, and runs first on
/// a busy CPU, so that a busy host does not delay a heartbeat or a probe's answer long
/// enough to look dead (it blocks on I/O, and costs little). Whatever the interval, so
/// that a reload to faster heartbeats needs no change. Not a real-time class: since Linux
/// 6.12 the fair scheduler's deadline server runs starved fair tasks above real-time ones
/// for 50 ms of every second, so a real-time thread on a host whose CPUs are all busy
/// stalls that long once a second, which peers take for a death (docs/decisions.md).
fn prompt() {
    // SAFETY: gettid takes nothing; setpriority sets the nice value of this thread only.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20) };
    if rc == 0 {
        info!("the cluster thread runs at the highest fair-scheduling priority (nice -20)");
    } else {
        warn!(error = %std::io::Error::last_os_error(), "cannot raise the cluster thread's priority; fast heartbeats may be delayed under load");
    }
}

impl ClusterShell {
    /// Binds the heartbeat socket and starts the cluster thread. `observed` tells which
    /// DVIPAs the kernel still has from before this start.
    pub fn start(
        config: &Config,
        observed: &Observed,
        tx: Sender<Input>,
        now: Instant,
    ) -> Result<Option<ClusterHandle>, String> {
        let Some(c) = config.cluster.clone() else { return Ok(None) };
        peers_are_others(&c, observed)?;
        let secret = load_key(&c.key_file)?;
        let key = Key::new(&secret);
        let peers: Vec<IpAddr> = c.peers.iter().map(SocketAddr::ip).collect();
        let steered = vipa_kernel::steer::bind(c.port, FLAGS_LOW_BYTE, FLAG_ROUTINE as u8, &peers)
            .map_err(|e| format!("cannot listen for heartbeats on UDP port {}: {e}", c.port))?;
        match &steered.fallback {
            None => info!("routine heartbeats go to a socket of their own, read when the cluster thread wakes anyway"),
            Some(why) => {
                info!(%why, "routine heartbeats are read as they come, which wakes the cluster thread for each")
            }
        }
        let multicast = match &c.multicast {
            None => None,
            Some((group, nic)) => {
                let mut g = steered
                    .group(*group, nic)
                    .map_err(|e| format!("cannot set up multicast heartbeats ({group} on {nic}): {e}"))?;
                let every = rejoin_first(c.interval, c.dead_after);
                let joined = g.join();
                let outside = match &joined {
                    Ok(()) => {
                        info!(%group, %nic, "routine heartbeats go to a multicast group: one datagram an interval");
                        String::new()
                    }
                    Err(e) => {
                        warn!(%group, %nic, error = %e, every_s = every.as_secs_f64(), "multicast heartbeats cannot be set up; sending one to each peer instead, and trying the group again");
                        format!("failed: {e}")
                    }
                };
                Some(Multicast {
                    group: g,
                    to: SocketAddr::new(*group, c.port),
                    member: joined.is_ok(),
                    outside,
                    rejoin_at: now + every,
                    rejoin_every: every,
                    back_since: None,
                    try_group: false,
                    joined_again: false,
                    heard: BTreeSet::new(),
                })
            }
        };
        let (sock, routine) = (steered.prompt, steered.routine);
        reserve_send_buffer(&sock, c.peers.len());
        let present = kept(config, observed);
        info!(node = %c.me, peers = ?c.peers, interval_ms = c.interval.as_secs_f64() * 1e3, dead_after = c.dead_after, kept = ?present, "cluster starting; listening before claiming");
        let core = Cluster::new(c, config.dvipas.clone(), now, new_incarnation(), &present);
        let rx = sock.try_clone().map_err(|e| e.to_string())?;
        let (count_wake, count_woken) = std::sync::mpsc::channel();
        let (nudged, nudge) = pipe().map_err(|e| format!("cannot make the cluster thread's wake-up pipe: {e}"))?;
        let shared = Arc::new(Mutex::new(ClusterShell {
            core,
            key: key.clone(),
            secret,
            stranger_answers: BTreeMap::new(),
            sock,
            announce: Vec::new(),
            addresses: BTreeMap::new(),
            logged_drop: None,
            watching: false,
            count_wake,
            nudge,
            version: 0,
            releasing: BTreeMap::new(),
            kernel_has: 0,
            last_now: now,
            multicast,
            unicast_to: BTreeSet::new(),
            events: Vec::new(),
            held_over: (false, false),
            unlisted_warned: false,
            heard_at: BTreeMap::new(),
        }));
        let (thread_shared, counting_shared, counting_tx) = (shared.clone(), shared.clone(), tx.clone());
        thread::Builder::new()
            .name("cluster".into())
            .spawn(move || cluster_loop(thread_shared, rx, routine, nudged, key, tx))
            .map_err(|e| e.to_string())?;
        thread::Builder::new()
            .name("connections".into())
            .spawn(move || count_connections(ClusterHandle(counting_shared), count_woken, counting_tx))
            .map_err(|e| e.to_string())?;
        Ok(Some(ClusterHandle(shared)))
    }

    /// Takes a changed `[cluster]` or `[[dvipa]]` list: the node starts listening again
    /// (keeping what it holds) under a new incarnation. A different port or key file
    /// needs a restart.
    /// Whether this running cluster can take `config` by a reload: checked before anything
    /// of the new configuration is applied.
    pub fn check(&self, config: &Config, observed: &Observed) -> Result<(), String> {
        change_allowed(Some(&self.core.config), config.cluster.as_ref())?;
        let Some(c) = &config.cluster else { return Ok(()) };
        // The key is read once, at start; a file changed since would leave this node
        // speaking with the old one while the operator believes the new one is in use.
        if load_key(&c.key_file)? != self.secret {
            return Err(format!(
                "the contents of {} changed: a new key needs a restart of vipad (with the same key on every node)",
                c.key_file
            ));
        }
        peers_are_others(c, observed)
    }

    pub fn reconfigure(&mut self, config: &Config, observed: &Observed, now: Instant) -> Result<bool, String> {
        // (`check` passed before the configuration was adopted.)
        let now = self.clock(now);
        let Some(c) = config.cluster.clone() else { return Ok(false) };
        if c == self.core.config && config.dvipas == self.core.dvipas {
            return Ok(false);
        }
        // An address being released is on its way out, not a copy to keep (unless taken
        // back since).
        let leaving: BTreeMap<IpAddr, Releasing> = std::mem::take(&mut self.releasing)
            .into_iter()
            .filter(|(i, _)| self.core.is_going(*i))
            .map(|(i, r)| (self.core.dvipas[i].address, r))
            .collect();
        let present: Vec<IpAddr> = kept(config, observed).into_iter().filter(|a| !leaving.contains_key(a)).collect();
        // What the operator deactivated here stays so.
        let declined = self.core.declined_addresses();
        if c.peers.len() > self.core.config.peers.len() {
            reserve_send_buffer(&self.sock, c.peers.len());
        }
        let lists = self.core.lists();
        let old_held: Vec<IpAddr> =
            self.core.dvipas.iter().zip(&self.core.held).filter(|(_, h)| **h).map(|(d, _)| d.address).collect();
        let old_unlisted: Vec<IpAddr> = self.core.unlisted().collect();
        self.core = Cluster::new(c, config.dvipas.clone(), now, new_incarnation(), &present);
        self.core.decline(&declined);
        // Peers still on the list this node had (or one before) are read in it.
        self.core.knows(lists);
        // Still marked going while they go, at their place in the new list; so are those the
        // new list no longer names that this host held, or still has from an earlier
        // reload, towards peers on an earlier list (the deletion of one no longer listed
        // is not left for later: see `Plan::releases`).
        // (Looked up by binary search: thousands of them, under the lock.)
        let dropped: Vec<IpAddr> =
            old_held.into_iter().chain(old_unlisted).filter(|a| self.core.index(*a).is_none()).collect();
        self.core.still_going(&leaving.keys().copied().chain(dropped).collect::<Vec<_>>());
        self.unlisted_warned = false;
        self.releasing = leaving.into_iter().filter_map(|(a, r)| Some((self.core.index(a)?, r))).collect();
        info!(still_deactivated = ?declined, "cluster configuration changed; listening before claiming");
        Ok(true)
    }

    /// Wakes the cluster thread if the next deadline is now sooner than `before`, the one
    /// it may be waiting for.
    fn nudge_if_sooner(&self, before: Option<Instant>) {
        let after = self.core.poll_timeout();
        if after.is_some_and(|a| before.is_none_or(|b| a < b)) {
            // SAFETY: writes one byte from a live buffer; a full pipe already wakes it.
            let _ = unsafe { libc::write(self.nudge.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }

    /// With multicast: a peer that answers probes but whose heartbeats stopped coming means
    /// the group no longer reaches this node (a switch's snooping aged the membership out,
    /// say). From then on this node sends to each peer and says it is outside the group,
    /// so the peers send it theirs directly, before the silence bound declares them dead;
    /// it joins the group again from time to time (`rejoin`).
    fn check_group(&mut self, now: Instant) {
        let Some(m) = self.multicast.as_mut().filter(|m| m.member) else { return };
        let Some(peer) = self.core.heard_only_by_answers(now).map(str::to_string) else { return };
        let (group, first) = (m.to.ip(), rejoin_first(self.core.config.interval, self.core.config.dead_after));
        // Lost again soon after coming back: the tries slow down.
        m.rejoin_every = match m.back_since {
            Some(t) if now < t + m.rejoin_every * 2 => (m.rejoin_every * 2).min(REJOIN_MAX),
            _ => first,
        };
        m.rejoin_at = now + m.rejoin_every;
        (m.member, m.joined_again) = (false, false);
        m.heard.clear();
        m.outside = format!("stopped arriving: {peer} answered probes but its heartbeats did not come");
        warn!(%group, %peer, again_in_s = m.rejoin_every.as_secs_f64(), "a peer answers probes but its heartbeats stopped coming: taking it that the multicast group no longer reaches this node (a held-up peer looks the same); heartbeats go to each peer, and the peers are asked to send theirs directly, until the group reaches this node again");
        self.events.push(format!(
            "heartbeats: multicast {group} stopped arriving ({peer} answered probes but its heartbeats did not come); sending to each peer"
        ));
        // Say it at once: the peers unicast theirs from their next heartbeat on.
        self.core.send_now(now);
    }

    /// Outside the multicast group: joins it again when it is time (the kernel reports the
    /// membership afresh, and a NIC made again is found by its name). The node is back in
    /// once the group's datagrams arrive (`datagram`).
    fn rejoin(&mut self, now: Instant) {
        let Some(m) = self.multicast.as_mut().filter(|m| !m.member && now >= m.rejoin_at) else { return };
        m.rejoin_at = now + m.rejoin_every;
        let (group, nic) = (m.to.ip(), m.group.nic.clone());
        match m.group.join() {
            Ok(()) => {
                debug!(%group, %nic, "joined the multicast group again; back in once its datagrams arrive");
                (m.try_group, m.joined_again) = (true, true);
                m.heard.clear();
                m.outside = "joined again, waiting for the peers' heartbeats by it".into();
            }
            Err(e) => {
                debug!(%group, %nic, error = %e, "multicast group not joined again");
                m.joined_again = false;
                m.outside = format!("failed: {e}");
            }
        }
    }

    /// A peer's heartbeat, new to this node, came by the group to it while it is outside:
    /// once that is so for every peer in the group (`back_in`), the group reaches this node
    /// (again, or for the first time after a failed start). It says so at once, and the
    /// peers stop sending it copies.
    fn heard_by_group(&mut self, now: Instant, from_peer: &str) {
        let Some(m) = self.multicast.as_mut().filter(|m| !m.member && m.joined_again) else { return };
        m.heard.insert(from_peer.to_string());
        let members = self.core.peers.iter().filter(|(n, p)| p.alive && !self.unicast_to.contains(*n)).map(|(n, _)| n);
        if !back_in(&m.heard, members) {
            return;
        }
        (m.member, m.outside, m.back_since, m.try_group) = (true, String::new(), Some(now), false);
        m.heard.clear();
        let (group, nic) = (m.to.ip(), m.group.nic.clone());
        info!(%group, %nic, peer = %from_peer, "the multicast group reaches this node: routine heartbeats go to it");
        self.events.push(format!("heartbeats: multicast {group} on {nic} reaches this node; sending to it"));
        self.core.send_now(now);
    }

    /// The time to give the core now (see `clock`).
    pub fn now(&mut self) -> Instant {
        self.clock(Instant::now())
    }

    /// `now`, or the latest time the core was given if that is later: both threads bring
    /// the core to their own `Instant::now()`, taken before the lock.
    fn clock(&mut self, now: Instant) -> Instant {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    /// A datagram arrived, authenticated and parsed; `to_group` if it was sent to a
    /// multicast group. A probe is answered at once.
    fn datagram(&mut self, now: Instant, parsed: Result<Heartbeat, HeartbeatError>, from: SocketAddr, to_group: bool) {
        match parsed {
            Ok(h) => {
                let probe = (h.flags & FLAG_PROBE != 0 && h.node != self.core.config.me)
                    .then(|| Heartbeat::answer(&self.core.config.me, self.core.incarnation(), self.core.seq(), &h));
                let (node, flags) = (h.node.clone(), h.flags);
                let (incarnation, seq) = (h.incarnation, h.seq);
                let verdict = self.core.receive(now, h);
                // A peer's heartbeat the core took (an answer is taken only by the probe it
                // matches, which the core knows and this does not).
                let taken = verdict == Verdict::Taken;
                let learnt = self.addresses.get(&node).copied();
                let from_peer = is_peer(&self.core.config.peers, &from);
                if let Some(answer) = probe {
                    let at = answer_to(verdict, from, from_peer, learnt);
                    self.send_answer(now, &answer, at, (&node, incarnation, seq));
                }
                // Where to probe it: where it was last heard from (by a heartbeat the core
                // took: a replay or an answer can come from anywhere), but a configured
                // peer address, once heard, is not given up for another (a group's
                // datagrams come from the source its kernel picked, link-local for ff02::).
                let had = self.addresses.get(&node);
                let peers = &self.core.config.peers;
                if taken && had != Some(&from) && !had.is_some_and(|a| is_peer(peers, a) && !from_peer) {
                    self.addresses.insert(node.clone(), from);
                }
                if taken && from_peer {
                    self.heard_at.insert(from.ip().to_canonical(), node.clone());
                }
                // Whether it is in the group, from its heartbeats the core took (not from a
                // replayed, repeated or overtaken one, nor from an answer, which says
                // nothing of it).
                if taken {
                    if flags & FLAG_UNICAST != 0 {
                        self.unicast_to.insert(node.clone());
                    } else {
                        self.unicast_to.remove(&node);
                    }
                }
                // Only a heartbeat new to this node tells that the group reaches it: anyone
                // can send an old one to the group.
                if to_group && taken {
                    self.heard_by_group(now, &node);
                }
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

    /// Sends `answer` to a probe of `prober` (name, incarnation, sequence number) where
    /// [`answer_to`] said.
    fn send_answer(&mut self, now: Instant, answer: &Heartbeat, at: Option<AnswerAt>, prober: (&str, u64, u64)) {
        let (node, incarnation, seq) = prober;
        let interval = self.core.config.interval;
        let to: Vec<SocketAddr> = match at {
            Some(AnswerAt::To(to)) => vec![to],
            Some(AnswerAt::EveryPeer)
                if answer_due(&mut self.stranger_answers, now, interval, node, incarnation, seq) =>
            {
                self.core.config.peers.clone()
            }
            _ => return,
        };
        let datagram = answer.emit(&self.key);
        for to in to {
            if let Err(e) = self.sock.send_to(&datagram, to) {
                debug!(peer = %to, error = %e, "probe not answered");
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

    /// Carries out the core's outputs: heartbeats go out, moves become news for the main
    /// thread.
    pub fn drain(&mut self) -> News {
        let mut news = News { events: std::mem::take(&mut self.events), ..News::default() };
        (news.kernel, news.announce) = std::mem::take(&mut self.held_over);
        let outputs: Vec<Output> = std::iter::from_fn(|| self.core.poll_output()).collect();
        let moves = outputs.iter().filter(|o| matches!(o, Output::Activate { .. } | Output::Release { .. })).count();
        if moves > 0 {
            self.version += 1;
            news.kernel = true;
        }
        let version = self.version;
        for o in &outputs {
            if let Output::Release { index, .. } = o {
                self.releasing.insert(*index, Releasing { version, overdue: false });
            }
        }
        // Thousands moving at once are logged as one line by kind and cause (each at debug
        // level): a line each would hold this thread, and so the heartbeats, up for tens
        // of milliseconds.
        let bulk = moves > crate::daemon::BULK;
        let mut summary: BTreeMap<(&str, String), (usize, IpAddr)> = BTreeMap::new();
        let mut moved = |kind: &'static str, address: IpAddr, cause: &str| {
            if bulk {
                debug!(dvipa = %address, %cause, "DVIPA {kind}");
                summary.entry((kind, cause.to_string())).or_insert((0, address)).0 += 1;
            } else {
                info!(dvipa = %address, %cause, "DVIPA {kind}");
            }
        };
        for o in outputs {
            match o {
                Output::Heartbeat { heartbeat: h, except } => {
                    let h = self.unicast_if_outside(h);
                    // A routine heartbeat, the same for every peer: once, to the group. Just
                    // joined again from outside, this node sends one to the group as well.
                    let routine = h.flags & FLAG_ROUTINE != 0;
                    let (to_group, also) = match self.multicast.as_mut() {
                        Some(m) if routine && m.member => (Some(m.to), false),
                        Some(m) if routine && m.try_group => {
                            m.try_group = false;
                            (Some(m.to), true)
                        }
                        _ => (None, false),
                    };
                    // Signed once, whoever it goes to.
                    let datagram = h.emit(&self.key);
                    if let Some(group) = to_group {
                        self.datagram_to(&datagram, &group);
                    }
                    if to_group.is_none() || also {
                        self.send_signed(&h, &datagram, false, &except);
                    } else {
                        for node in self.outside_the_group() {
                            self.send_to(node, &datagram);
                        }
                        // A missed peer reads the group's copy only at its next turn; the
                        // prompt one, by unicast, at once.
                        self.send_signed(&h, &datagram, true, &except);
                    }
                }
                Output::HeartbeatTo { node, heartbeat } => {
                    let h = self.unicast_if_outside(heartbeat);
                    self.send_to(&node, &h.emit(&self.key));
                }
                Output::Activate { index, cause } => {
                    let d = &self.core.dvipas[index];
                    moved("activated", d.address, &cause);
                    news.events.push(format!("DVIPA {} activated: {cause}", d.address));
                    self.announce.push((version, d.address, d.announce.clone(), ANNOUNCE_COUNT));
                }
                Output::Release { index, cause } => {
                    let d = &self.core.dvipas[index];
                    moved("released", d.address, &cause);
                    news.events.push(format!("DVIPA {} released: {cause}", d.address));
                }
                Output::Announce { index, refresh } => {
                    let d = &self.core.dvipas[index];
                    let count = if refresh { REFRESH_COUNT } else { ANNOUNCE_COUNT };
                    self.announce.push((version, d.address, d.announce.clone(), count));
                    news.announce = true;
                }
                Output::Event(text) => {
                    info!("{text}");
                    news.events.push(text);
                }
            }
        }
        for ((kind, cause), (count, first)) in summary {
            info!(dvipas = count, %first, %cause, "DVIPAs {kind}");
        }
        if news.kernel {
            let watching = self.watched().next().is_some();
            if watching && !self.watching {
                let _ = self.count_wake.send(());
            }
            self.watching = watching;
        }
        news
    }

    /// A heartbeat as it leaves: marked for unicast when this node is not in a multicast
    /// group.
    fn unicast_if_outside(&self, mut h: Heartbeat) -> Heartbeat {
        if !self.multicast.as_ref().is_some_and(|m| m.member) {
            h.flags |= FLAG_UNICAST;
        }
        h
    }

    /// The live peers outside the multicast group: they get routine heartbeats by unicast.
    fn outside_the_group(&self) -> impl Iterator<Item = &String> + '_ {
        self.unicast_to.iter().filter(|n| self.core.peers.get(*n).is_some_and(|p| p.alive))
    }

    /// Sends `h`, signed as `datagram`, to every peer but the nodes `except`; with
    /// `missed_only`, to the missed peers only (the others have it by the group). A routine heartbeat goes to a missed
    /// peer (see `unheard`) as a prompt one: after a partition, the first to reach the peer
    /// is read there at once (not at its next turn, up to an interval later), and the split
    /// ends as soon as the link lets it through.
    fn send_signed(&self, h: &Heartbeat, datagram: &[u8], missed_only: bool, except: &[String]) {
        let prompt = self.prompt_for_unheard(h);
        // Peers on an earlier DVIPA list get theirs, laid out in it, by itself: known by the
        // configured address they were heard at, or the one they were last heard from.
        let elsewhere = |p: &SocketAddr| {
            let ip = p.ip().to_canonical();
            !except.is_empty()
                && (self.heard_at.get(&ip).is_some_and(|n| except.contains(n))
                    || except.iter().any(|n| self.addresses.get(n).is_some_and(|a| a.ip().to_canonical() == ip)))
        };
        for p in self.core.config.peers.iter().filter(|p| !elsewhere(p)) {
            match &prompt {
                Some((d, missed)) if missed.contains(&p.ip().to_canonical()) => self.datagram_to(d, p),
                _ if !missed_only => self.datagram_to(datagram, p),
                _ => {}
            }
        }
    }

    fn datagram_to(&self, datagram: &[u8], to: &SocketAddr) {
        if let Err(e) = self.sock.send_to(datagram, to) {
            debug!(peer = %to, error = %e, "heartbeat not sent");
        }
    }

    /// For a routine `h` while peers are missed (see `unheard`): `h` signed as a prompt
    /// heartbeat, and the missed peer addresses it goes to instead. (Only then is it signed
    /// twice.)
    fn prompt_for_unheard(&self, h: &Heartbeat) -> Option<(Vec<u8>, BTreeSet<IpAddr>)> {
        if h.flags & FLAG_ROUTINE == 0 || !self.any_unheard() {
            return None;
        }
        let missed = self.unheard();
        if missed.is_empty() {
            return None;
        }
        let mut prompt = h.clone();
        prompt.flags &= !FLAG_ROUTINE;
        Some((prompt.emit(&self.key), missed))
    }

    /// Only nodes already heard from are probed or answered.
    fn send_to(&self, node: &str, datagram: &[u8]) {
        if let Some(to) = self.addresses.get(node) {
            self.datagram_to(datagram, to);
        }
    }

    /// The kernel has what this node held at `version`, but for addresses of released
    /// DVIPAs the main thread may leave for later plans (`Plan::releases`): `here` is what
    /// the host has now (`Observed::local_addresses`). Those released until then that are
    /// gone are no longer going for the core, which says so at once (its heartbeat goes
    /// out here). `finished`: the main thread left no deletion for later, so one still
    /// there will not go by itself.
    pub fn applied(&mut self, now: Instant, version: u64, here: &BTreeSet<IpAddr>, finished: bool) {
        self.kernel_has = version;
        let mut gone: Vec<usize> = Vec::new();
        let mut overdue: Vec<IpAddr> = Vec::new();
        let core = &self.core;
        self.releasing.retain(|&i, r| {
            if !core.is_going(i) {
                // Taken again meanwhile (its new holder died, say): claimed as held.
                return false;
            }
            if r.version > version {
                // Released after the main thread planned: not its work yet.
                return true;
            }
            let address = core.dvipas[i].address;
            if !here.contains(&address) {
                gone.push(i);
                return false;
            }
            if finished && !std::mem::replace(&mut r.overdue, true) {
                overdue.push(address);
            }
            true
        });
        if let Some(first) = overdue.first() {
            warn!(dvipas = overdue.len(), %first, "released, but the address is still on this host (not added by vipa, or its deletion failed): still marked going, so that no other node takes it too");
        }
        // (An address the list no longer names is never added again: gone is gone.)
        let (stay, unlisted_gone): (Vec<IpAddr>, Vec<IpAddr>) = self.core.unlisted().partition(|a| here.contains(a));
        let stays = stay.first();
        if let Some(first) = stays.filter(|_| finished && !std::mem::replace(&mut self.unlisted_warned, true)) {
            warn!(%first, "a DVIPA the reload took off the list is still on this host (not added by vipa, or its deletion failed): still marked going towards nodes on the earlier list, and a stop will not say it is leaving");
        }
        if !gone.is_empty() || !unlisted_gone.is_empty() {
            self.core.addresses_gone(now, gone, &unlisted_gone);
            self.send_queued();
        }
    }

    /// The announcements due: of addresses the kernel has (activated at a version it has);
    /// and the NICs where this node has just taken an address (not merely refreshed it).
    pub fn announcements(&mut self) -> (Vec<(IpAddr, String, u32)>, BTreeSet<String>) {
        let kernel_has = self.kernel_has;
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.announce).into_iter().partition(|a| a.0 <= kernel_has);
        self.announce = later;
        // Not one given up since (its address may still be here, going).
        let held = |a: &IpAddr| self.core.index(*a).is_some_and(|i| self.core.held[i]);
        let due: Vec<_> = due.into_iter().filter(|a| held(&a.1)).collect();
        let taken = due.iter().filter(|a| a.3 != REFRESH_COUNT).flat_map(|a| a.2.iter().cloned()).collect();
        let items = due
            .into_iter()
            .flat_map(|(_, addr, nics, count)| nics.into_iter().map(move |nic| (addr, nic, count)))
            .collect();
        (items, taken)
    }

    /// vipad is stopping: DVIPAs another node can take are released; returns whether the
    /// kernel must change before the leaving heartbeat goes out (through `applied`).
    pub fn leave(&mut self, now: Instant) -> bool {
        self.core.leave(now);
        // Also a release the main thread has not carried out yet (its news still queued).
        self.drain().kernel || !self.releasing.is_empty() || self.version > self.kernel_has
    }

    /// After `leave` and the kernel work (which sent the leaving heartbeat once): twice more,
    /// since a lost one costs the peers a probe round.
    pub fn say_goodbye(&mut self, now: Instant) {
        for _ in 0..2 {
            self.core.send_now(now);
            self.send_queued();
        }
    }

    /// Sends the heartbeats the core has queued outside the cluster thread's turn (after
    /// kernel work). Nothing else comes of what called for them; should anything, the
    /// cluster thread's next drain passes it on.
    fn send_queued(&mut self) {
        let news = self.drain();
        self.events.extend(news.events);
        self.held_over = (news.kernel, news.announce);
    }

    /// The DVIPAs this node holds, for the planner, and the version they are.
    pub fn held(&self) -> (Vec<HeldDvipa>, u64) {
        let held = self
            .core
            .dvipas
            .iter()
            .enumerate()
            .filter(|(i, _)| self.core.held[*i])
            .map(|(_, d)| HeldDvipa { address: d.address, device: d.announce.first().cloned() })
            .collect();
        (held, self.version)
    }

    /// The configured peer addresses that are missed: those of nodes now dead, and, while
    /// not every peer is alive, those no live node was heard from (a node may send from
    /// another address of its host, a VIPA's, or a link-local one to a group: such a
    /// peer is missed only while some peer really is). While this node listens, only the
    /// former: after a start or a reload peers are not heard yet, not missed; after a
    /// majority regained, the dead ones still are.
    pub fn unheard(&self) -> BTreeSet<IpAddr> {
        let known = |node: &str| match self.core.peers.get(node) {
            Some(p) if p.alive => Known::Alive,
            Some(_) => Known::Dead,
            None => Known::Unknown,
        };
        let accounted = self.core.syncing() || self.all_alive();
        missed(&self.core.config.peers, &self.heard_at, known, accounted)
    }

    /// As many live peers as configured ones (a cheap test before `unheard`).
    fn all_alive(&self) -> bool {
        self.core.peers.values().filter(|p| p.alive).count() >= self.core.config.peers.len()
    }

    /// Whether `unheard` may find any (without building the set): a node known dead, or
    /// fewer live peers than configured ones.
    fn any_unheard(&self) -> bool {
        self.core.peers.values().any(|p| !p.alive) || (!self.core.syncing() && !self.all_alive())
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
            earlier_list: false,
            later_list: false,
            rtt_us: None,
            confirm_us: None,
            confirm_learned: false,
            held_up_us: None,
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
                earlier_list: p.on_earlier_list(),
                later_list: p.on_later_list(),
                rtt_us: p.rtt.map(|(srtt, _)| srtt.as_micros() as u64),
                confirm_us: Some(confirm_window(p, c.config.interval).as_micros() as u64),
                confirm_learned: p.punctuality_known,
                held_up_us: Some(p.held_up.worst().as_micros() as u64),
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
                    earlier_list: false,
                    later_list: false,
                    rtt_us: None,
                    confirm_us: None,
                    confirm_learned: false,
                    held_up_us: None,
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
            heartbeats: match &self.multicast {
                None => "to each peer".into(),
                Some(m) if m.member => {
                    let to: Vec<&str> = self.outside_the_group().map(String::as_str).collect();
                    let by = format!("multicast {} on {}", m.to.ip(), m.group.nic);
                    if to.is_empty() {
                        by
                    } else {
                        format!("{by}, and by unicast to {} (not in the group)", to.join(", "))
                    }
                }
                Some(m) => format!(
                    "to each peer (multicast {} on {} {}), trying the group again in {:.1} s",
                    m.to.ip(),
                    m.group.nic,
                    m.outside,
                    m.rejoin_at.saturating_duration_since(now).as_secs_f64()
                ),
            },
            members,
            dropped: [
                ("unauthenticated", d.unauthenticated),
                ("replayed", d.replayed),
                ("duplicated", d.duplicated),
                ("reordered", d.reordered),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(extra: &str) -> ClusterConfig {
        let text = format!(
            "[node]\nname = \"s1\"\n[cluster]\npeers = [\"198.18.1.12\"]\nkey_file = \"/k\"\nquorum = \"none\"\n{extra}"
        );
        Config::parse("vipa.toml", &text).expect("config").cluster.expect("[cluster]")
    }

    #[test]
    fn a_probe_is_answered_at_a_peer_address_and_never_when_it_is_a_copy() {
        let peer: SocketAddr = "198.18.1.12:5999".parse().unwrap();
        let other: SocketAddr = "[2001:db8:1::12]:5999".parse().unwrap();
        let stranger: SocketAddr = "198.18.1.66:5999".parse().unwrap();
        // New or overtaken, from the configured address or the learnt one: answered there.
        for verdict in [Verdict::Taken, Verdict::Reordered] {
            assert_eq!(answer_to(verdict, peer, true, None), Some(AnswerAt::To(peer)));
            assert_eq!(answer_to(verdict, peer, true, Some(other)), Some(AnswerAt::To(peer)));
            assert_eq!(answer_to(verdict, other, false, Some(other)), Some(AnswerAt::To(other)));
            // From anywhere else: at the address its heartbeats come from, or, not known
            // yet, at every peer address.
            assert_eq!(answer_to(verdict, stranger, false, Some(peer)), Some(AnswerAt::To(peer)));
            assert_eq!(answer_to(verdict, stranger, false, None), Some(AnswerAt::EveryPeer));
        }
        // A replay or a repeat is not answered, even from the peer's own address.
        for verdict in [Verdict::Replayed, Verdict::Duplicated] {
            assert_eq!(answer_to(verdict, peer, true, Some(peer)), None);
            assert_eq!(answer_to(verdict, stranger, false, Some(peer)), None);
        }
        // A node not confirmed yet, from a peer address: answered there; from elsewhere, at
        // every peer address, once an interval for each of its runs (`answer_due`).
        assert_eq!(answer_to(Verdict::Unconfirmed, peer, true, None), Some(AnswerAt::To(peer)));
        assert_eq!(answer_to(Verdict::Unconfirmed, stranger, false, None), Some(AnswerAt::EveryPeer));
        assert_eq!(answer_to(Verdict::Replayed, stranger, false, None), None);
        let (mut answered, t0, tick) = (Answered::new(), Instant::now(), Duration::from_millis(10));
        assert!(answer_due(&mut answered, t0, tick, "s2", 5, 10));
        assert!(!answer_due(&mut answered, t0 + tick / 2, tick, "s2", 5, 11), "twice within an interval");
        assert!(answer_due(&mut answered, t0 + tick / 2, tick, "s3", 5, 3));
        assert!(answer_due(&mut answered, t0 + tick, tick, "s2", 5, 11));
        // A replayed probe (older than the last answered) is not answered, and does not
        // take the turn of the node's next real one.
        assert!(!answer_due(&mut answered, t0 + tick * 3, tick, "s2", 5, 4));
        assert!(!answer_due(&mut answered, t0 + tick * 3, tick, "s2", 4, 99));
        assert!(answer_due(&mut answered, t0 + tick * 3, tick, "s2", 5, 12));
        // A new run of the node is answered at once.
        assert!(answer_due(&mut answered, t0 + tick * 3, tick, "s2", 6, 1));
        // An IPv4 peer heard through an IPv6 socket is the same peer.
        let mapped: SocketAddr = "[::ffff:198.18.1.12]:5999".parse().unwrap();
        assert_eq!(answer_to(Verdict::Taken, mapped, false, Some(peer)), Some(AnswerAt::To(mapped)));
    }

    #[test]
    fn a_datagram_is_dated_by_its_arrival_however_long_it_waited() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let ago = |d: Duration| Some(wall - d);
        // A routine heartbeat read late, even an interval of 10 s late.
        assert_eq!(arrived(now, wall, ago(Duration::from_millis(3))), Some(now - Duration::from_millis(3)));
        assert_eq!(arrived(now, wall, ago(Duration::from_secs(7))), Some(now - Duration::from_secs(7)));
        // Stamped after the wall clock was read (it came meanwhile, or the clock was set
        // back): now.
        assert_eq!(arrived(now, wall, Some(wall + Duration::from_secs(30))), Some(now));
        // No stamp: the caller decides.
        assert_eq!(arrived(now, wall, None), None);
    }

    #[test]
    fn a_node_is_back_in_the_group_once_every_peer_in_it_was_heard_by_it() {
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<String>>();
        let members = set(&["s1", "s2"]);
        assert!(!back_in(&set(&[]), members.iter()));
        assert!(!back_in(&set(&["s2"]), members.iter()), "the group reaches it from s2, maybe not from s1");
        assert!(back_in(&set(&["s1", "s2"]), members.iter()));
        // No peer in the group (all outside): one heard by it, trying it, is enough.
        assert!(!back_in(&set(&[]), set(&[]).iter()));
        assert!(back_in(&set(&["s1"]), set(&[]).iter()));
    }

    #[test]
    fn a_reload_cannot_change_the_port_key_or_multicast_but_can_the_rest() {
        let running = cluster("multicast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n");
        let same = cluster("multicast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\nheartbeat_interval = \"10ms\"\n");
        assert_eq!(change_allowed(Some(&running), Some(&same)), Ok(()));
        for other in [cluster(""), cluster("multicast = \"239.255.86.2\"\nmulticast_nic = \"en1\"\n")] {
            let e = change_allowed(Some(&running), Some(&other)).unwrap_err();
            assert!(e.contains("multicast") && e.contains("restart"), "{e}");
        }
        let e = change_allowed(
            Some(&running),
            Some(&cluster("port = 6000\nmulticast = \"239.255.86.1\"\nmulticast_nic = \"en1\"\n")),
        );
        assert!(e.unwrap_err().contains("port or key file"));
        let mut renamed = same.clone();
        renamed.me = "s9".into();
        assert!(change_allowed(Some(&running), Some(&renamed)).unwrap_err().contains("node name needs a restart"));
    }

    #[test]
    fn a_peer_is_missed_when_its_node_is_dead_or_never_heard_while_another_is_missing() {
        let peers: Vec<SocketAddr> =
            ["198.18.1.12:5997", "[::ffff:198.18.1.13]:5997", "198.18.1.14:5997"].map(|p| p.parse().unwrap()).to_vec();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // s2 was heard at its address; s3 (IPv4-mapped in the file) too; s4 only from a
        // VIPA of its host.
        let heard_at: BTreeMap<IpAddr, String> =
            [(ip("198.18.1.12"), "s2".to_string()), (ip("198.18.1.13"), "s3".to_string())].into();
        let all = missed(&peers, &heard_at, |_| Known::Alive, true);
        assert!(all.is_empty(), "all alive, wherever they send from: {all:?}");
        let s3 = |n: &str| if n == "s3" { Known::Dead } else { Known::Alive };
        assert_eq!(
            missed(&peers, &heard_at, s3, false),
            [ip("198.18.1.13"), ip("198.18.1.14")].into(),
            "s3's address, and s4's, not known to be a live node's while one is missing"
        );
        assert_eq!(
            missed(&peers, &heard_at, s3, true),
            [ip("198.18.1.13")].into(),
            "listening after a majority regained: the dead one only"
        );
        let reloaded = missed(&peers, &heard_at, |_| Known::Unknown, true);
        assert!(reloaded.is_empty(), "listening after a reload: nobody heard yet is missed: {reloaded:?}");
    }

    #[test]
    fn a_peer_that_is_this_hosts_own_address_is_refused() {
        let c = cluster("");
        let mut observed = Observed::default();
        let mine = |addr: &str| vipa_core::model::Address {
            ifindex: 2,
            addr: addr.parse().unwrap(),
            prefix_len: 24,
            proto: 0,
            deprecated: false,
        };
        observed.addresses.insert((2, "198.18.1.11".parse().unwrap()), mine("198.18.1.11"));
        assert_eq!(peers_are_others(&c, &observed), Ok(()));
        observed.addresses.insert((2, "198.18.1.12".parse().unwrap()), mine("198.18.1.12"));
        let e = peers_are_others(&c, &observed).unwrap_err();
        assert!(e.contains("198.18.1.12 is an address of this host") && e.contains("other nodes"), "{e}");
    }
}
