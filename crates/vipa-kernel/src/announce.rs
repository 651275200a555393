//! Gratuitous ARP (request and reply forms) and unsolicited Neighbor Advertisements,
//! sent when an address moves so neighbours update their caches at once.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use vipa_wire::arp::{Operation, Packet, Repr};
use vipa_wire::ndp::NeighborAdvert;

const ETH_P_ARP: u16 = 0x0806;

fn packet_addr(ifindex: u32, dst: [u8; 6]) -> SockAddr {
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll fits in the storage; every field used is set below.
    unsafe {
        let ll = storage.view_as::<libc::sockaddr_ll>();
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = ETH_P_ARP.to_be();
        ll.sll_ifindex = ifindex as i32;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&dst);
        SockAddr::new(storage, mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    }
}

/// Sends `count` gratuitous ARPs of each form for each of `ips` from `mac` out of
/// `ifindex`, over one socket: each round announces every address once, so the first
/// round reaches neighbours before any repeat.
pub fn garp_many(ifindex: u32, mac: [u8; 6], ips: &[Ipv4Addr], count: u32) -> io::Result<()> {
    let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))))?;
    let dst = packet_addr(ifindex, [0xff; 6]);
    for _ in 0..count {
        for &ip in ips {
            for op in [Operation::Request, Operation::Reply] {
                let mut frame = [0u8; 14 + vipa_wire::arp::LEN];
                frame[0..6].copy_from_slice(&[0xff; 6]);
                frame[6..12].copy_from_slice(&mac);
                frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
                let repr = Repr::gratuitous(op, mac, ip);
                repr.emit(&mut Packet::new_checked(&mut frame[14..]).map_err(io::Error::other)?);
                match sock.send_to(&frame, &dst) {
                    Ok(_) => {}
                    // A full queue drops this copy; the next round sends it again.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Sends `count` unsolicited Neighbor Advertisements (Override set) for `ip` to ff02::1
/// out of `ifname`, from `ip` itself.
pub fn unsolicited_na(ifname: &str, ifindex: u32, mac: [u8; 6], ip: Ipv6Addr, count: u32) -> io::Result<()> {
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    sock.bind_device(Some(ifname.as_bytes()))?;
    sock.set_multicast_hops_v6(255)?;
    sock.set_unicast_hops_v6(255)?;
    sock.set_multicast_if_v6(ifindex)?;
    sock.bind(&SockAddr::from(SocketAddrV6::new(ip, 0, 0, 0)))?;
    let msg = NeighborAdvert::unsolicited(ip, mac).emit();
    let dst = SockAddr::from(SocketAddrV6::new("ff02::1".parse().expect("literal"), 0, 0, ifindex));
    for _ in 0..count {
        sock.send_to(&msg, &dst)?;
    }
    Ok(())
}
