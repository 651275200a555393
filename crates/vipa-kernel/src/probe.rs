//! ICMP probe sockets for IPMP failure detection, as in.mpathd opens them: raw ICMP or
//! ICMPv6, bound to the test address and to the NIC, hop limit 1, multicast loop off
//! (seed-systems.md §4.3 rule 4). Needs CAP_NET_RAW.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use vipa_wire::icmp::{strip_ipv4, Echo};

const ICMP6_FILTER: libc::c_int = 1;

/// One NIC's probe socket for one family.
pub struct ProbeSocket {
    sock: Socket,
    pub v6: bool,
    /// in.mpathd's echo id: `((pid & 0xff) << 8) | (ifindex & 0xff)`.
    pub id: u16,
    ifindex: u32,
}

impl ProbeSocket {
    pub fn open(ifname: &str, ifindex: u32, src: IpAddr) -> io::Result<ProbeSocket> {
        let v6 = src.is_ipv6();
        let sock = if v6 {
            Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?
        } else {
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?
        };
        sock.bind_device(Some(ifname.as_bytes()))?;
        let scope = if matches!(src, IpAddr::V6(a) if a.is_unicast_link_local()) { ifindex } else { 0 };
        match src {
            IpAddr::V4(a) => {
                sock.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(a), 0)))?;
                sock.set_ttl_v4(1)?;
                sock.set_multicast_ttl_v4(1)?;
                sock.set_multicast_loop_v4(false)?;
                sock.set_multicast_if_v4(&a)?;
            }
            IpAddr::V6(a) => {
                sock.bind(&SockAddr::from(SocketAddrV6::new(a, 0, 0, scope)))?;
                sock.set_unicast_hops_v6(1)?;
                sock.set_multicast_hops_v6(1)?;
                sock.set_multicast_loop_v6(false)?;
                sock.set_multicast_if_v6(ifindex)?;
                // Only echo replies reach this socket.
                let mut filter = [u32::MAX; 8];
                let t = usize::from(vipa_wire::icmp::ECHO_REPLY_V6);
                filter[t >> 5] &= !(1 << (t & 31));
                // (The 32-byte icmp6_filter bitmap.)
                crate::sock::setopt(&sock, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)?;
            }
        }
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let id = (((std::process::id() & 0xff) << 8) | (ifindex & 0xff)) as u16;
        Ok(ProbeSocket { sock, v6, id, ifindex })
    }

    pub fn try_clone(&self) -> io::Result<ProbeSocket> {
        Ok(ProbeSocket { sock: self.sock.try_clone()?, v6: self.v6, id: self.id, ifindex: self.ifindex })
    }

    /// Sends an echo request. A full send buffer counts as sent (in.mpathd: a hung lower
    /// layer must lead to failure, not to silence).
    pub fn send(&self, dst: IpAddr, seq: u16, sent_ns: u64, kind: u32) -> io::Result<()> {
        let msg = Echo { reply: false, v6: self.v6, id: self.id, seq, sent_ns, kind }.emit();
        let to = match dst {
            IpAddr::V4(a) => SockAddr::from(SocketAddr::new(IpAddr::V4(a), 0)),
            IpAddr::V6(a) => {
                let link_local = a.is_unicast_link_local() || a.is_multicast();
                SockAddr::from(SocketAddrV6::new(a, 0, 0, if link_local { self.ifindex } else { 0 }))
            }
        };
        match self.sock.send_to(&msg, &to) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits (up to the read timeout) for one of our echo replies: (source, reply).
    pub fn recv(&self) -> io::Result<Option<(IpAddr, Echo)>> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        let (n, from) = match self.sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => return Ok(None),
            Err(e) => return Err(e),
        };
        // SAFETY: recv_from initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        let (src, icmp) = if self.v6 {
            let Some(a) = from.as_socket_ipv6() else { return Ok(None) };
            (IpAddr::V6(*a.ip()), &bytes[..])
        } else {
            match strip_ipv4(&bytes) {
                Ok((s, rest)) => (IpAddr::V4(s), rest),
                Err(_) => return Ok(None),
            }
        };
        match Echo::parse(self.v6, icmp) {
            Ok(e) if e.reply && e.id == self.id => Ok(Some((src, e))),
            _ => Ok(None),
        }
    }
}
