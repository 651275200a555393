//! Socket plumbing the kernel adapter's sockets share: raw options, classic BPF programs,
//! link-layer addresses of packet sockets.

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;

use socket2::SockAddr;

/// Sets option `option` of `level` to `value` (a plain struct or int the kernel reads).
pub(crate) fn setopt<T>(sock: &impl AsRawFd, level: libc::c_int, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` of the size given; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(sock.as_raw_fd(), level, option, (value as *const T).cast(), size_of::<T>() as libc::socklen_t)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// Classic BPF opcodes (linux/filter.h): BPF_LD (0) | BPF_H (0x08) or BPF_B (0x10) |
// BPF_ABS (0x20); BPF_JMP (0x05) | BPF_JEQ (0x10) or BPF_JSET (0x40) | BPF_K (0);
// BPF_RET (0x06) | BPF_K.
pub(crate) const BPF_LD_H_ABS: u16 = 0x08 | 0x20;
pub(crate) const BPF_LD_B_ABS: u16 = 0x10 | 0x20;
pub(crate) const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
pub(crate) const BPF_JMP_JSET_K: u16 = 0x05 | 0x40;
pub(crate) const BPF_RET_K: u16 = 0x06;

/// One classic BPF instruction.
pub(crate) fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Attaches `program` with SOL_SOCKET option `option` (`SO_ATTACH_FILTER`,
/// `SO_ATTACH_REUSEPORT_CBPF`); the kernel copies it.
pub(crate) fn attach_cbpf(sock: &impl AsRawFd, option: libc::c_int, program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    setopt(sock, libc::SOL_SOCKET, option, &prog)
}

/// The link-layer address a packet socket sends to (or binds on, with `ifindex` 0: every
/// interface): `dst` out of `ifindex`, for EtherType `protocol`.
pub(crate) fn packet_addr(ifindex: u32, dst: [u8; 6], protocol: u16) -> SockAddr {
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll fits in the storage; every field used is set below.
    unsafe {
        let ll = storage.view_as::<libc::sockaddr_ll>();
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = protocol.to_be();
        ll.sll_ifindex = ifindex as i32;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&dst);
        SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    }
}
