//! vipa-wire: byte formats only.
//!
//! Layer: the bottom; depends on nothing of vipa. Zero-copy views over buffers and
//! validated representations with `parse`/`emit`, after smoltcp's `wire` module. Every
//! parser is total over arbitrary bytes: it returns an error, never panics. Unknown
//! codepoints decode as data.
//!
//! What it does not do: open sockets or decide when to send (the kernel adapter and the
//! core do). It holds ARP (gratuitous announcements), ICMP echo (probes) and Neighbor
//! Discovery (announcements, answers, probes).

pub mod arp;
pub mod cluster;
pub mod icmp;
pub mod ndp;

/// Why bytes could not be read as a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet too short: {have} bytes, need {need}")]
    Truncated { have: usize, need: usize },
    #[error("not the expected ICMP message (type {0})")]
    NotEcho(u8),
    #[error("not a valid Neighbor Solicitation: {0}")]
    NotSolicit(&'static str),
    #[error("not an Ethernet/IPv4 ARP packet (hardware {hardware}, protocol {protocol:#06x}, lengths {hlen}/{plen})")]
    Unsupported { hardware: u16, protocol: u16, hlen: u8, plen: u8 },
}

/// Deterministic noise for parser tests: the same bytes for the same seed, no RNG.
#[cfg(test)]
pub(crate) fn noise(state: &mut u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 17;
            *state ^= *state << 5;
            *state as u8
        })
        .collect()
}
