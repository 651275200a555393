//! Answers Neighbor Solicitations for IPv6 DVIPAs that the kernel holds by a local route
//! but not yet as an address: the kernel answers only for addresses on the NIC, and
//! adding thousands of those takes it tens of seconds (each one makes it walk every
//! multicast group of the NIC), while the routes take a fraction of a second. Until the
//! address follows, this answers for it.
//!
//! One packet socket over every interface, with a classic BPF filter that lets only
//! ICMPv6 Neighbor Solicitations through, read by a thread of its own. Which addresses it
//! answers for, on which NIC, is set from outside (`Responder::set`). While a NIC has some,
//! the socket asks it for every multicast frame (`PACKET_MR_ALLMULTI`): solicitations go
//! to the target's solicited-node group, which the NIC joins only with the address.

use std::collections::{HashMap, HashSet};
use std::io;
use std::mem;
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};
use vipa_wire::ndp::{Solicit, ETHERTYPE_IPV6};

use crate::sock::{attach_cbpf, bpf, packet_addr, setopt, BPF_JMP_JEQ_K, BPF_LD_B_ABS, BPF_LD_H_ABS, BPF_RET_K};

/// What the responder answers for on one NIC.
struct Nic {
    mac: [u8; 6],
    targets: HashSet<Ipv6Addr>,
    /// Whether this socket holds the NIC's `PACKET_MR_ALLMULTI` membership.
    allmulti: bool,
}

/// Counts since it started.
#[derive(Debug, Default)]
pub struct Counts {
    /// Solicitations answered.
    pub answered: AtomicU64,
    /// Frames the filter let through that were not valid solicitations (dropped).
    pub invalid: AtomicU64,
}

pub struct Responder {
    sock: Arc<Socket>,
    nics: Arc<Mutex<HashMap<u32, Nic>>>,
    pub counts: Arc<Counts>,
}

impl Responder {
    /// Opens the socket and starts the thread that answers; nothing is answered until
    /// `set` gives it addresses.
    pub fn start() -> io::Result<Responder> {
        // Protocol 0 receives nothing until bound: the filter is in place before the first
        // frame comes.
        let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))?;
        attach_filter(&sock)?;
        sock.bind(&packet_addr(0, [0; 6], ETHERTYPE_IPV6))?;
        let sock = Arc::new(sock);
        let nics: Arc<Mutex<HashMap<u32, Nic>>> = Arc::default();
        let counts: Arc<Counts> = Arc::default();
        let (s, n, c) = (sock.clone(), nics.clone(), counts.clone());
        std::thread::Builder::new().name("ndp-responder".into()).spawn(move || answer_loop(&s, &n, &c))?;
        Ok(Responder { sock, nics, counts })
    }

    /// From now on, answers for exactly `targets` on NIC `ifindex` at `mac` (none: stops
    /// answering there, and stops asking it for every multicast frame). An error says
    /// that the NIC could not be asked for every multicast frame: it still answers what
    /// reaches it (solicitations sent straight to this host, all of them on a NIC that
    /// does not filter multicast).
    pub fn set(&self, ifindex: u32, mac: [u8; 6], targets: HashSet<Ipv6Addr>) -> io::Result<()> {
        let mut nics = lock(&self.nics);
        let had = nics.remove(&ifindex).map(|n| n.allmulti);
        if targets.is_empty() {
            if had == Some(true) {
                // (A NIC that went away took the membership with it.)
                let _ = self.membership(ifindex, libc::PACKET_DROP_MEMBERSHIP);
            }
            return Ok(());
        }
        let joined = match had {
            Some(true) => Ok(()),
            _ => self.membership(ifindex, libc::PACKET_ADD_MEMBERSHIP),
        };
        nics.insert(ifindex, Nic { mac, targets, allmulti: joined.is_ok() });
        joined
    }

    fn membership(&self, ifindex: u32, op: libc::c_int) -> io::Result<()> {
        // SAFETY: all-zero is a valid packet_mreq; the fields used are set below.
        let mut mreq: libc::packet_mreq = unsafe { mem::zeroed() };
        mreq.mr_ifindex = ifindex as i32;
        mreq.mr_type = libc::PACKET_MR_ALLMULTI as u16;
        setopt(&*self.sock, libc::SOL_PACKET, op, &mreq)
    }
}

fn lock(nics: &Mutex<HashMap<u32, Nic>>) -> MutexGuard<'_, HashMap<u32, Nic>> {
    nics.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lets through Ethernet frames carrying IPv6 whose next header is ICMPv6 and whose first
/// byte after the IPv6 header is 135 (Neighbor Solicitation); `Solicit::parse` checks the
/// rest.
fn attach_filter(sock: &Socket) -> io::Result<()> {
    let program = [
        bpf(BPF_LD_H_ABS, 0, 0, 12),
        bpf(BPF_JMP_JEQ_K, 0, 5, u32::from(ETHERTYPE_IPV6)),
        bpf(BPF_LD_B_ABS, 0, 0, 20),
        bpf(BPF_JMP_JEQ_K, 0, 3, 58),
        bpf(BPF_LD_B_ABS, 0, 0, 54),
        bpf(BPF_JMP_JEQ_K, 0, 1, u32::from(vipa_wire::ndp::NEIGHBOR_SOLICIT)),
        bpf(BPF_RET_K, 0, 0, 2048),
        bpf(BPF_RET_K, 0, 0, 0),
    ];
    attach_cbpf(sock, libc::SO_ATTACH_FILTER, &program)
}

fn answer_loop(sock: &Socket, nics: &Mutex<HashMap<u32, Nic>>, counts: &Counts) {
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and from are live buffers of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                warn!(error = %e, "neighbour solicitations cannot be read; trying again in a second");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            continue;
        }
        // Only frames for this host: not those a bridge floods, or a NIC in promiscuous
        // mode sees, sent to another host (a neighbour checking the old holder, say).
        if !matches!(from.sll_pkttype, libc::PACKET_HOST | libc::PACKET_MULTICAST | libc::PACKET_BROADCAST) {
            continue;
        }
        let ifindex = from.sll_ifindex as u32;
        let solicit = match Solicit::parse(&buf[..n as usize]) {
            Ok(s) => s,
            Err(e) => {
                counts.invalid.fetch_add(1, Ordering::Relaxed);
                debug!(ifindex, error = %e, "frame dropped");
                continue;
            }
        };
        let answer = {
            let nics = lock(nics);
            match nics.get(&ifindex) {
                Some(nic) if nic.targets.contains(&solicit.target) => Some(solicit.answer(nic.mac)),
                _ => None,
            }
        };
        let Some(frame) = answer else { continue };
        let to = packet_addr(ifindex, <[u8; 6]>::try_from(&frame[0..6]).unwrap_or_default(), ETHERTYPE_IPV6);
        match sock.send_to(&frame, &to) {
            Ok(_) => {
                counts.answered.fetch_add(1, Ordering::Relaxed);
                debug!(ifindex, target = %solicit.target, from = %solicit.source, "neighbour solicitation answered");
            }
            Err(e) => warn!(ifindex, target = %solicit.target, error = %e, "neighbour solicitation not answered"),
        }
    }
}
