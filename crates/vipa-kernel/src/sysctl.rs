//! Per-interface sysctls under `/proc/sys/net/`, which belong to the network namespace
//! of the process that opens them.

use std::fs;

use vipa_core::model::SysctlKey;

use crate::KernelError;

fn path(key: &SysctlKey) -> String {
    format!("/proc/sys/net/{}", key.kind.path(&key.ifname))
}

/// The current value, or `None` when the file does not exist (no such interface, or
/// IPv6 disabled) or does not hold a number.
pub fn read(key: &SysctlKey) -> Option<i64> {
    fs::read_to_string(path(key)).ok()?.trim().parse().ok()
}

pub fn write(key: &SysctlKey, value: i64) -> Result<(), KernelError> {
    fs::write(path(key), format!("{value}\n")).map_err(|source| KernelError::Sysctl { key: key.to_string(), source })
}
