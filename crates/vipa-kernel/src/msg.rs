//! `sendmsg`/`recvmsg` with ancillary data (source address, arrival time), which socket2
//! does not cover.

use std::mem::{size_of_val, zeroed};

/// A message header over one buffer (`iov`), an address and a control buffer. It points
/// at all three: they must outlive every use of it.
pub(crate) fn header(
    addr: *mut libc::c_void,
    addr_len: libc::socklen_t,
    iov: &mut libc::iovec,
    control: &mut [u64],
) -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr.
    let mut m: libc::msghdr = unsafe { zeroed() };
    m.msg_name = addr;
    m.msg_namelen = addr_len;
    m.msg_iov = iov;
    m.msg_iovlen = 1;
    m.msg_control = control.as_mut_ptr().cast();
    m.msg_controllen = size_of_val(control) as _;
    m
}
