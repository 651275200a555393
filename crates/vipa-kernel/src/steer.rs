//! One UDP port, two sockets: datagrams whose flag byte marks them routine go to one socket,
//! everything else to the other.
//!
//! The two sockets form the port's `SO_REUSEPORT` group, and a classic BPF program on the
//! group (`SO_ATTACH_REUSEPORT_CBPF`) picks the socket from one byte of the datagram. Both
//! stamp each datagram with its arrival time (`SO_TIMESTAMPNS`): the routine socket is
//! read late without losing when each came, and what it holds is put in order with what
//! the other socket gave. The choice is a hint for reading, not a
//! trust decision: both sockets' datagrams are authenticated alike, and a datagram too
//! short for the byte goes to the prompt socket (the filter's load fails, which selects
//! socket 0). Any process of the same user (vipad runs as root) could join the group; the
//! plain bind at start only keeps a second vipad from doing so by mistake.
//!
//! Where the kernel cannot do this (no `SO_REUSEPORT` filter), or a check at start finds
//! the datagrams not where they should be, there is one socket for everything.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::sock::{attach_cbpf, bpf, setopt, BPF_JMP_JSET_K, BPF_LD_B_ABS, BPF_RET_K};

/// The port's sockets.
pub struct Steered {
    /// Datagrams that are not routine (all of them, when `routine` is `None`); also the
    /// socket to send from.
    pub prompt: UdpSocket,
    /// Routine datagrams, with their arrival times.
    pub routine: Option<UdpSocket>,
    /// Why there is one socket only, when there is.
    pub fallback: Option<String>,
}

/// Binds UDP `port` on every address. Datagrams with a bit of `mask` set in byte `byte`
/// go to `routine` where the kernel can steer them. The steering is checked over the
/// loopback of each family in `peers` (the peers' addresses), as their datagrams will come.
pub fn bind(port: u16, byte: u32, mask: u8, peers: &[IpAddr]) -> io::Result<Steered> {
    // A plain bind first: it fails if anything has the port, even a group of
    // SO_REUSEPORT sockets (another vipad) that ours would otherwise join.
    let plain = bind_plain(port)?;
    drop(plain);
    match steered(port, byte, mask, peers) {
        Ok((routine, prompt)) => Ok(Steered { prompt, routine: Some(routine), fallback: None }),
        Err(e) => Ok(Steered { prompt: bind_plain(port)?, routine: None, fallback: Some(e.to_string()) }),
    }
}

impl Steered {
    /// Routine heartbeats by multicast to `group` on `nic`: see [`Group`]. Nothing is
    /// joined yet.
    pub fn group(&self, group: IpAddr, nic: &str) -> io::Result<Group> {
        let reader = self.routine.as_ref().unwrap_or(&self.prompt);
        Ok(Group {
            reader: reader.try_clone()?,
            sender: self.prompt.try_clone()?,
            steered: self.routine.is_some(),
            group,
            nic: nic.to_string(),
            joined: None,
        })
    }
}

/// The most the kernel holds back for one neighbour it is still resolving, when no NIC
/// says (`unres_qlen_bytes`' default).
const NEIGHBOUR_QUEUE_DEFAULT: usize = 212_992;
/// The most [`reserve_send_buffer`] asks for.
const SEND_BUFFER_MAX: usize = 64 << 20;

/// Makes `sock`'s send buffer big enough that the datagrams the kernel holds back for
/// neighbours it cannot resolve never fill it. Such datagrams stay charged to the socket
/// until the neighbour resolves or fails, up to `unres_qlen_bytes` a neighbour: with the
/// default buffer, the size of that very limit, a peer dead long enough for its neighbour
/// entry to lapse can take the whole buffer for seconds at a time (at heartbeats of about
/// 15 ms or less, which fill that limit within one round of the kernel's tries), and then
/// nothing this socket sends reaches the live peers either. So the buffer is made room for one
/// such queue per peer (`peers`; a gateway's queue is shared, so this is the most) and
/// one more for what goes out, with `SO_SNDBUFFORCE` (root may exceed `wmem_max`), else
/// as far as `SO_SNDBUF` goes. Memory is used only as datagrams wait. Returns the size
/// the socket has and the size wanted.
pub fn reserve_send_buffer(sock: &UdpSocket, peers: usize) -> io::Result<(usize, usize)> {
    let per_neighbour = largest_neighbour_queue().unwrap_or(NEIGHBOUR_QUEUE_DEFAULT);
    let want = per_neighbour.saturating_mul(peers + 1).min(SEND_BUFFER_MAX);
    let s = socket2::SockRef::from(sock);
    let has = s.send_buffer_size()?;
    if has >= want {
        return Ok((has, want));
    }
    // The kernel doubles the value given (for its own bookkeeping).
    let half = libc::c_int::try_from(want.div_ceil(2)).unwrap_or(libc::c_int::MAX);
    if setopt(sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &half).is_err() {
        s.set_send_buffer_size(want.div_ceil(2))?;
    }
    Ok((s.send_buffer_size()?, want))
}

/// The largest `unres_qlen_bytes` of any NIC, or of the defaults for new ones, in either
/// family.
fn largest_neighbour_queue() -> Option<usize> {
    let mut largest = None;
    for family in ["ipv4", "ipv6"] {
        let Ok(dirs) = std::fs::read_dir(format!("/proc/sys/net/{family}/neigh")) else { continue };
        for d in dirs.flatten() {
            let v = std::fs::read_to_string(d.path().join("unres_qlen_bytes")).ok();
            if let Some(v) = v.and_then(|v| v.trim().parse::<usize>().ok()) {
                largest = Some(largest.map_or(v, |l: usize| l.max(v)));
            }
        }
    }
    largest
}

/// A multicast group for routine heartbeats: the socket that reads them joins it (the
/// other no longer gets the group's datagrams, which it would by default), and what the
/// sending socket sends to the group leaves by the NIC, one hop, not looped back to this
/// host. The reading socket tells, for each datagram, whether it came to a multicast
/// address ([`Received::to_multicast`]).
pub struct Group {
    /// The port's sockets (other descriptors of them).
    reader: UdpSocket,
    sender: UdpSocket,
    /// Whether the reader is a socket of its own (else the sender reads everything).
    steered: bool,
    pub group: IpAddr,
    pub nic: String,
    /// The NIC index of the membership, once joined.
    joined: Option<u32>,
}

impl Group {
    /// Joins the group on the NIC as it is now, leaving any membership from before first:
    /// joining again makes the kernel report the membership afresh (a switch that aged it
    /// out learns it again), and a NIC deleted and made again has a new index. The join
    /// comes last: on an error nothing is joined (the options set before it concern only
    /// groups).
    pub fn join(&mut self) -> io::Result<()> {
        if let Some(index) = self.joined.take() {
            // A membership the kernel dropped with its NIC is no error here.
            let _ = self.membership(index, false);
        }
        let name =
            std::ffi::CString::new(self.nic.as_str()).map_err(|_| io::Error::other("a NIC name with a NUL byte"))?;
        // SAFETY: a NUL-terminated name that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::other(format!("no NIC {:?}", self.nic)));
        }
        let (sender, nic) = (&self.sender, &self.nic);
        let (off, on, hops): (libc::c_int, libc::c_int, libc::c_int) = (0, 1, 1);
        // The kernel loops a group's datagrams back by the socket's own family: a
        // dual-stack socket sending to an IPv4 group goes by the IPv6 setting (and an IPv6
        // group's socket is always one).
        let dual_stack =
            sender.local_addr().map_err(|e| io::Error::other(format!("the socket's address: {e}")))?.is_ipv6();
        if dual_stack {
            opt(sender, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, "turning multicast loopback off", &off)?;
            opt(&self.reader, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, "asking for destination addresses", &on)?;
        } else {
            opt(&self.reader, libc::IPPROTO_IP, libc::IP_PKTINFO, "asking for destination addresses", &on)?;
        }
        match self.group {
            IpAddr::V4(_) => {
                let by = libc::ip_mreqn {
                    imr_multiaddr: libc::in_addr { s_addr: 0 },
                    imr_address: libc::in_addr { s_addr: 0 },
                    imr_ifindex: index as libc::c_int,
                };
                opt(sender, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &format!("sending by {nic}"), &by)?;
                opt(sender, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, "turning multicast loopback off", &off)?;
                opt(sender, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, "setting the TTL to 1", &hops)?;
                if self.steered {
                    opt(
                        sender,
                        libc::IPPROTO_IP,
                        libc::IP_MULTICAST_ALL,
                        "keeping the group off the other socket",
                        &off,
                    )?;
                }
            }
            IpAddr::V6(_) => {
                opt(
                    sender,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MULTICAST_IF,
                    &format!("sending by {nic}"),
                    &(index as libc::c_int),
                )?;
                opt(sender, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, "setting the hop limit to 1", &hops)?;
                if self.steered {
                    opt(
                        sender,
                        libc::IPPROTO_IPV6,
                        IPV6_MULTICAST_ALL,
                        "keeping the group off the other socket",
                        &off,
                    )?;
                }
            }
        }
        self.membership(index, true)?;
        self.joined = Some(index);
        Ok(())
    }

    /// Joins (`true`) or leaves the group on NIC `index`.
    fn membership(&self, index: u32, join: bool) -> io::Result<()> {
        let (what, group, nic) = (if join { "joining" } else { "leaving" }, self.group, &self.nic);
        let what = format!("{what} {group} on {nic}");
        match group {
            IpAddr::V4(g) => {
                let mreq = libc::ip_mreqn {
                    imr_multiaddr: libc::in_addr { s_addr: u32::from(g).to_be() },
                    imr_address: libc::in_addr { s_addr: 0 },
                    imr_ifindex: index as libc::c_int,
                };
                let option = if join { libc::IP_ADD_MEMBERSHIP } else { libc::IP_DROP_MEMBERSHIP };
                opt(&self.reader, libc::IPPROTO_IP, option, &what, &mreq)
            }
            IpAddr::V6(g) => {
                let mreq = libc::ipv6_mreq {
                    ipv6mr_multiaddr: libc::in6_addr { s6_addr: g.octets() },
                    ipv6mr_interface: index,
                };
                let option = if join { libc::IPV6_ADD_MEMBERSHIP } else { libc::IPV6_DROP_MEMBERSHIP };
                opt(&self.reader, libc::IPPROTO_IPV6, option, &what, &mreq)
            }
        }
    }
}

/// `IPV6_MULTICAST_ALL` (linux/in6.h; Linux 4.20 on).
const IPV6_MULTICAST_ALL: libc::c_int = 29;

/// `setopt`, with `what` it was for in the error.
fn opt<T>(sock: &UdpSocket, level: libc::c_int, option: libc::c_int, what: &str, value: &T) -> io::Result<()> {
    setopt(sock, level, option, value).map_err(|e| io::Error::other(format!("{what}: {e}")))
}

fn bind_plain(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
        .or_else(|_| UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)))
}

/// One member of the port's group: dual-stack where IPv6 is on, else IPv4.
fn member(port: u16) -> io::Result<Socket> {
    let v6 = (|| {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.set_reuse_port(true)?;
        s.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
        Ok::<_, io::Error>(s)
    })();
    v6.or_else(|_| {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        s.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port).into())?;
        Ok(s)
    })
}

fn steered(port: u16, byte: u32, mask: u8, peers: &[IpAddr]) -> io::Result<(UdpSocket, UdpSocket)> {
    // Socket 0 of the group is the first bound: the rest; socket 1: routine.
    let prompt = member(port)?;
    let routine = member(port)?;
    let program = [
        bpf(BPF_LD_B_ABS, 0, 0, byte),
        bpf(BPF_JMP_JSET_K, 0, 1, u32::from(mask)),
        bpf(BPF_RET_K, 0, 0, 1),
        bpf(BPF_RET_K, 0, 0, 0),
    ];
    attach_cbpf(&routine, libc::SO_ATTACH_REUSEPORT_CBPF, &program)
        .map_err(|e| io::Error::other(format!("the kernel refused a SO_REUSEPORT filter: {e}")))?;
    // Both: what the routine socket holds is put in order with what the other gave.
    for sock in [&routine, &prompt] {
        setopt(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &(1 as libc::c_int))
            .map_err(|e| io::Error::other(format!("no arrival times: {e}")))?;
    }
    let (routine, prompt): (UdpSocket, UdpSocket) = (routine.into(), prompt.into());
    // Over IPv4 where a peer is (or the sockets take nothing else), over IPv6 where one is.
    let v4_only = prompt.local_addr()?.is_ipv4();
    // (A peer written as IPv4-mapped IPv6 sends IPv4.)
    let v4 = v4_only || peers.iter().any(|p| p.to_canonical().is_ipv4());
    let v6 = !v4_only && (peers.iter().any(|p| p.to_canonical().is_ipv6()) || !v4);
    let over = [(v4, IpAddr::V4(Ipv4Addr::LOCALHOST)), (v6, IpAddr::V6(Ipv6Addr::LOCALHOST))];
    for (_, lo) in over.into_iter().filter(|(on, _)| *on) {
        check(SocketAddr::new(lo, port), &routine, &prompt, byte, mask).map_err(|e| {
            let family = if lo.is_ipv4() { "IPv4" } else { "IPv6" };
            io::Error::other(format!("checking the steering over {family} loopback failed: {e}"))
        })?;
    }
    routine.set_nonblocking(true)?;
    Ok((routine, prompt))
}

/// Sends one datagram of each kind to `to` (the port on a loopback address) and sees
/// where each lands.
fn check(to: SocketAddr, routine: &UdpSocket, prompt: &UdpSocket, byte: u32, mask: u8) -> io::Result<()> {
    let probe = UdpSocket::bind(SocketAddr::new(to.ip(), 0))?;
    let me = probe.local_addr()?;
    let mut dgram = vec![0u8; byte as usize + 1];
    dgram[byte as usize] = mask;
    probe.send_to(&dgram, to)?;
    dgram[byte as usize] = 0;
    probe.send_to(&dgram, to)?;
    // Each socket gets its own check datagram; anything else (a peer's heartbeat at a
    // cold start of the whole cluster) is passed over.
    let mut buf = [0u8; 64];
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    for (sock, want) in [(routine, mask), (prompt, 0)] {
        let got = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break None;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv_from(&mut buf) {
                // A dual-stack socket gives an IPv4 sender as IPv4-mapped.
                Ok((n, from))
                    if (from.ip().to_canonical(), from.port()) == (me.ip(), me.port()) && n > byte as usize =>
                {
                    break Some(buf[byte as usize]);
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break None,
                Err(e) => return Err(e),
            }
        };
        sock.set_read_timeout(None)?;
        match got {
            Some(b) if b == want => {}
            Some(_) => return Err(io::Error::other("a check datagram reached the wrong socket")),
            None => return Err(io::Error::other("a check datagram did not arrive")),
        }
    }
    Ok(())
}

/// A datagram read by [`receive`].
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// When it arrived, on a socket that stamps datagrams.
    pub stamp: Option<SystemTime>,
    /// It was sent to a multicast address (known on a socket of a joined [`Group`]).
    pub to_multicast: bool,
}

/// Reads one datagram (non-blocking), with its arrival time and destination where the
/// socket says them.
pub fn receive(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 16];
    // SAFETY: the header points at the address storage socket2 provides, `iov` and
    // `control`, all alive across the call; the CMSG_* walk stays within the control
    // buffer the kernel filled in, and reads each payload as the type its level and type
    // say it is.
    let ((len, stamp, to_multicast), from) = unsafe {
        SockAddr::try_init(|addr, len| {
            let mut m = crate::msg::header(addr.cast(), *len, &mut iov, &mut control);
            let n = libc::recvmsg(sock.as_raw_fd(), &mut m, libc::MSG_DONTWAIT);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            *len = m.msg_namelen;
            let (mut stamp, mut to_multicast) = (None, false);
            let mut c = libc::CMSG_FIRSTHDR(&m);
            // Each payload is read only where the kernel gave all of it. (`cmsg_len` is a
            // `size_t` here, a `socklen_t` in other C libraries.)
            #[allow(clippy::unnecessary_cast)]
            let holds = |c: *const libc::cmsghdr, size: usize| {
                (*c).cmsg_len as usize >= libc::CMSG_LEN(size as u32) as usize && m.msg_flags & libc::MSG_CTRUNC == 0
            };
            while !c.is_null() {
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) if holds(c, size_of::<libc::timespec>()) => {
                        let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        stamp = Some(SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if holds(c, size_of::<libc::in6_pktinfo>()) => {
                        let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        to_multicast = Ipv6Addr::from(info.ipi6_addr.s6_addr).to_canonical().is_multicast();
                    }
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) if holds(c, size_of::<libc::in_pktinfo>()) => {
                        let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        to_multicast = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)).is_multicast();
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&m, c);
            }
            Ok((n as usize, stamp, to_multicast))
        })?
    };
    let from = from.as_socket().ok_or_else(|| io::Error::other("datagram from an unknown address family"))?;
    Ok(Received { len, from, stamp, to_multicast })
}
