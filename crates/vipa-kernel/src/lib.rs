//! vipa-kernel: the only part of vipa that talks to Linux.
//!
//! Layer: under the daemon, beside the core. It turns rtnetlink messages into
//! `vipa_core::model` types at its boundary (netlink crate types never leave this
//! crate), carries out the planner's operations, and maps errno to outcomes so that
//! applying a plan twice is harmless (`EEXIST` → already there, `ESRCH`/`ENOENT`/
//! `EADDRNOTAVAIL` → already gone).
//!
//! It does not decide anything: what to change comes from the planner, and whether a
//! change stuck is learnt from the next observation, never assumed.

pub mod announce;
pub mod conns;
mod msg;
pub mod netlink;
pub mod nft;
pub mod probe;
pub mod responder;
mod sock;
pub mod steer;
pub mod sysctl;

pub use netlink::{EventError, Events, Kernel, Outcome, Update};

/// The kernel refused, or could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink dump failed: {0}")]
    Dump(#[source] std::io::Error),
    #[error("kernel refused to {op}: {source}")]
    Refused {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables refused the ARP filter: {0}")]
    Nft(String),
    #[error("cannot write {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
}
