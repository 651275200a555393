//! vipa-core: the pure core of vipa.
//!
//! Layer: below the daemon, above nothing but `serde` and `toml`. It holds the validated
//! configuration model, the project's view of kernel state, and the planner that turns
//! "what the configuration wants" and "what the kernel has" into an ordered list of
//! idempotent operations.
//!
//! Invariants: no I/O, no clock, no randomness. Every function here is deterministic in
//! its arguments, so the daemon's behaviour can be tested without a kernel.
//!
//! What it does not do: talk to Linux (that is `vipa-kernel`), or decide when to run
//! (that is `vipad`).

pub mod cluster;
pub mod config;
pub mod ipmp;
pub mod model;
pub mod plan;

pub use config::{Config, ConfigError, ConfigErrors, VipaConfig};
pub use model::{Address, KernelEvent, Link, Observed, Op, Route, RouteKey, SysctlKey, SysctlKind};
pub use plan::{check, plan, DeviceMode, Findings, Ledger, Plan, RouteRecord};
