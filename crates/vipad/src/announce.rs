//! Sending the announcements that follow a move (IPMP binding, DVIPA activation):
//! gratuitous ARPs for IPv4, unsolicited NAs for IPv6, paced: a few hundred frames go at
//! once (from the caller), more at [`RATE`] (from a thread of their own). Thousands of DVIPAs taken
//! over at once would otherwise be tens of thousands of frames in a burst, more than the
//! receive queues of the hosts and switches on the link hold: thousands would be dropped,
//! and with them the answers to the solicitations of neighbours that are asking meanwhile.
//!
//! An address leaves the queue before it leaves the kernel ([`Announcer::withdraw`]), and
//! a new announcement of an address replaces the old one: no neighbour is pointed here by
//! a frame sent after the address went.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vipa_core::model::Observed;
use vipa_kernel::announce::Announcing;

/// Frames sent back to back before pacing sets in: a move of a few dozen addresses goes
/// out at once, with all its repeats.
const BURST: f64 = 256.0;
/// Frames a second after that: 10,000 IPv6 DVIPAs take 0.2 s for their first round.
const RATE: f64 = 50_000.0;
/// Frames sent in one go once paced (the thread sleeps between goes).
const STEP: f64 = 32.0;
/// The least pause between two goes.
const PAUSE: Duration = Duration::from_micros(50);

/// One address to announce on one NIC, `rounds` more times.
struct Item {
    nic: Arc<str>,
    ifindex: u32,
    mac: [u8; 6],
    addr: IpAddr,
    rounds: u32,
}

/// What is left to send: first rounds go before any repeat, so an address taken over
/// late is not announced behind the repeats of thousands taken before it. With the budget
/// of frames (a token bucket) and the socket, for whoever sends: the caller of `send`
/// what the budget allows at once (a move of a few addresses goes out without waiting for
/// another thread to wake), the thread the rest.
struct Queue {
    first: VecDeque<Item>,
    repeats: VecDeque<Item>,
    tokens: f64,
    last: Instant,
    socket: Option<Announcing>,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue { first: VecDeque::new(), repeats: VecDeque::new(), tokens: BURST, last: Instant::now(), socket: None }
    }
}

impl Queue {
    /// Sends what the budget allows now.
    fn go(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * RATE).min(BURST);
        self.last = now;
        if self.tokens < 1.0 || self.is_empty() {
            return;
        }
        let sock = match &mut self.socket {
            Some(sock) => &*sock,
            None => match Announcing::open() {
                Ok(sock) => &*self.socket.insert(sock),
                Err(e) => {
                    warn!(error = %e, left = self.len(), "cannot open a socket to announce moves");
                    (self.first, self.repeats) = Default::default();
                    return;
                }
            },
        };
        let (first, repeats, tokens) = (&mut self.first, &mut self.repeats, &mut self.tokens);
        while *tokens >= 1.0 {
            let Some(mut item) = first.pop_front().or_else(|| repeats.pop_front()) else { break };
            *tokens -= f64::from(Announcing::frames(item.addr));
            if let Err(e) = sock.send(item.ifindex, item.mac, item.addr) {
                // The NIC went (or went down): nothing more goes out of it until asked again.
                let left = first.iter().chain(&*repeats).filter(|i| i.ifindex == item.ifindex).count();
                warn!(interface = %item.nic, address = %item.addr, error = %e, left, "announcement failed");
                first.retain(|i| i.ifindex != item.ifindex);
                repeats.retain(|i| i.ifindex != item.ifindex);
                continue;
            }
            item.rounds = item.rounds.saturating_sub(1);
            if item.rounds > 0 {
                repeats.push_back(item);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_empty() && self.repeats.is_empty()
    }

    fn retain(&mut self, mut keep: impl FnMut(&Item) -> bool) {
        self.first.retain(&mut keep);
        self.repeats.retain(&mut keep);
    }

    fn len(&self) -> usize {
        self.first.len() + self.repeats.len()
    }
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The queue of announcements and the thread that sends them.
pub struct Announcer {
    shared: Arc<Shared>,
}

impl Announcer {
    pub fn start() -> Announcer {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        if let Err(e) = thread::Builder::new().name("announce".into()).spawn(move || run(&theirs)) {
            warn!(error = %e, "cannot start the announcement thread: of a move of hundreds of addresses, only the first are announced");
        }
        Announcer { shared }
    }

    /// Announces each (address, NIC, repeat count) that the kernel holds by now. Every
    /// address queued is announced once before any is repeated.
    /// (`held`: what the host has, `Observed::local_addresses`.)
    pub fn send(
        &self,
        observed: &Observed,
        held: &BTreeSet<IpAddr>,
        items: impl IntoIterator<Item = (IpAddr, String, u32)>,
    ) {
        let mut batches: BTreeMap<(String, u32), Vec<IpAddr>> = BTreeMap::new();
        for (addr, nic, count) in items.into_iter().filter(|(a, _, _)| held.contains(a)) {
            batches.entry((nic, count)).or_default().push(addr);
        }
        let mut new = Vec::new();
        for ((nic, count), addrs) in batches {
            let Some(l) = observed.link_by_name(&nic) else { continue };
            let Some(mac) = l.mac else { continue };
            info!(interface = %nic, addresses = addrs.len(), first = %addrs[0], count, "announcing");
            let nic: Arc<str> = nic.into();
            new.extend(addrs.into_iter().map(|addr| Item {
                nic: nic.clone(),
                ifindex: l.index,
                mac,
                addr,
                rounds: count,
            }));
        }
        if new.is_empty() {
            return;
        }
        // A new announcement of an address replaces those queued: on another NIC, the
        // address moved; on the same one, it keeps the most rounds either had (a refresh
        // does not cut an activation's repeats short).
        let mut renewed: HashMap<IpAddr, Vec<usize>> = HashMap::new();
        for (k, i) in new.iter().enumerate() {
            renewed.entry(i.addr).or_default().push(k);
        }
        let mut queue = self.shared.lock();
        queue.retain(|old| {
            let Some(ks) = renewed.get(&old.addr) else { return true };
            if let Some(&k) = ks.iter().find(|&&k| new[k].ifindex == old.ifindex) {
                new[k].rounds = new[k].rounds.max(old.rounds);
            }
            false
        });
        queue.first.extend(new);
        queue.go();
        if !queue.is_empty() {
            self.shared.wake.notify_one();
        }
    }

    /// Before vipad exits: waits until every announcement queued is sent, or `until`.
    /// Returns how many (address, NIC) were still to be announced then.
    pub fn finish(&self, until: Instant) -> usize {
        loop {
            let left = self.shared.lock().len();
            if left == 0 || Instant::now() >= until {
                return left;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// No frame announces any of `addrs` once this returns (every sender sends with the
    /// queue locked).
    pub fn withdraw(&self, addrs: impl IntoIterator<Item = IpAddr>) {
        // (Only the caller's thread queues: empty now, it stays so until it returns.)
        if self.shared.lock().is_empty() {
            return;
        }
        let gone: HashSet<IpAddr> = addrs.into_iter().collect();
        if !gone.is_empty() {
            self.shared.lock().retain(|i| !gone.contains(&i.addr));
        }
    }
}

fn run(shared: &Shared) {
    loop {
        let mut queue = shared.lock();
        while queue.is_empty() {
            queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        queue.go();
        // The queue unlocked between goes (the main thread may be waiting to withdraw),
        // for as long as the next go earns, and a moment at least.
        let earn = ((STEP - queue.tokens).max(0.0) / RATE).max(PAUSE.as_secs_f64());
        drop(queue);
        thread::sleep(Duration::from_secs_f64(earn));
    }
}
