//! Gratuitous ARP (request and reply forms) and unsolicited Neighbor Advertisements,
//! sent when an address moves so neighbours update their caches at once; and the
//! reachability probe (ARP request or Neighbor Solicitation) sent straight to a peer's
//! last known link-layer address.

use std::io;
use std::net::IpAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use vipa_wire::arp::{self, Operation, Repr, ETHERTYPE_ARP};
use vipa_wire::ndp::ETHERTYPE_IPV6;

use crate::sock::packet_addr;

/// A socket that announces addresses: an IPv4 address by gratuitous ARP in both forms
/// (request and reply), an IPv6 one by an unsolicited Neighbor Advertisement with
/// Override to ff02::1, sent as a whole frame (the kernel's IPv6 layer would refuse a
/// source it holds by a local route only).
pub struct Announcing {
    sock: Socket,
}

impl Announcing {
    pub fn open() -> io::Result<Announcing> {
        // Protocol 0: this socket only sends.
        Ok(Announcing { sock: Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))? })
    }

    /// How many frames announcing `ip` takes.
    pub fn frames(ip: IpAddr) -> u32 {
        match ip {
            IpAddr::V4(_) => 2,
            IpAddr::V6(_) => 1,
        }
    }

    /// Announces `ip` at `mac` out of `ifindex`, once. A full queue drops the frame
    /// silently (a repeat sends it again); any other error is returned. It never blocks.
    pub fn send(&self, ifindex: u32, mac: [u8; 6], ip: IpAddr) -> io::Result<()> {
        // Never blocking: a NIC whose queue is stuck must not hold the sender up.
        let send = |frame: &[u8], to: &SockAddr| match self.sock.send_to_with_flags(frame, to, libc::MSG_DONTWAIT) {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) => Err(e),
            _ => Ok(()),
        };
        match ip {
            IpAddr::V4(ip) => {
                let to = packet_addr(ifindex, [0xff; 6], ETHERTYPE_ARP);
                for op in [Operation::Request, Operation::Reply] {
                    send(&arp::frame([0xff; 6], &Repr::gratuitous(op, mac, ip)), &to)?;
                }
                Ok(())
            }
            IpAddr::V6(ip) => {
                let to = packet_addr(ifindex, vipa_wire::ndp::ALL_NODES_MAC, ETHERTYPE_IPV6);
                send(&vipa_wire::ndp::unsolicited_frame(mac, ip), &to)
            }
        }
    }
}

/// Sends one reachability probe out of `ifindex` straight to `peer` at `peer_mac`, from
/// `own` at `own_mac` (both of the same family): an ARP request, or a Neighbor
/// Solicitation. It goes out as a whole frame, past the kernel's neighbour table, which
/// may hold the peer as unresolved and would otherwise queue it. The peer's kernel
/// answers it, and the answer resolves this host's entry for the peer; the request
/// resolves the peer's entry for `own`.
pub fn probe_neighbour(ifindex: u32, own_mac: [u8; 6], own: IpAddr, peer_mac: [u8; 6], peer: IpAddr) -> io::Result<()> {
    let (frame, protocol) = match (own, peer) {
        (IpAddr::V4(own), IpAddr::V4(peer)) => {
            (arp::frame(peer_mac, &Repr::request(own_mac, own, peer)).to_vec(), ETHERTYPE_ARP)
        }
        (IpAddr::V6(own), IpAddr::V6(peer)) => {
            (vipa_wire::ndp::solicit_frame(own_mac, own, peer_mac, peer).to_vec(), ETHERTYPE_IPV6)
        }
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "addresses of different families")),
    };
    // Protocol 0: this socket only sends.
    let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))?;
    sock.send_to(&frame, &packet_addr(ifindex, peer_mac, protocol))?;
    Ok(())
}
