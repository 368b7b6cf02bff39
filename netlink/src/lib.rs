//! Typed, synchronous rtnetlink over `netlink-packet-route`.
//!
//! Synchronous on purpose: a CNI ADD is a handful of requests, and a blocking socket costs nothing to set up,
//! where an async runtime would add start-up time to every pod. A [`Handle`] is bound to the network namespace
//! it was opened in ([`Handle::in_netns`]), so callers never need to switch the thread's namespace to talk to it.
//! `ensure_*` verbs are idempotent; `del_*` verbs treat "not found" as success.

mod addr;
mod error;
mod handle;
mod link;
mod neigh;
pub mod netns;
mod route;
mod types;

pub use error::{Error, Result};
pub use handle::Handle;
pub use link::random_local_mac;
pub use types::{
    format_mac, parse_mac, Family, Fdb, Link, Neigh, Route, Scope, VethSpec, VxlanSpec, RTPROT_BOOT, RT_TABLE_MAIN,
};

/// Writes a sysctl (`net.ipv4.ip_forward` style key) for the network namespace of the calling thread.
pub fn sysctl_set(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    if std::fs::read_to_string(&path).map(|v| v.trim() == value).unwrap_or(false) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| Error::Io { what: format!("writing {path}"), source: e })
}

/// Reads a sysctl for the calling thread's network namespace.
pub fn sysctl_get(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::Io { what: format!("reading {path}"), source: e })
}
