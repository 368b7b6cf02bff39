//! Where allocations live. `DiskStore` is the real one (host-local layout). The unit tests add `MemStore`, the
//! fake, and `FaultyStore`, which wraps either and fails on demand; neither is part of the public API.

mod disk;
#[cfg(test)]
mod faulty;
pub mod flock;
#[cfg(test)]
mod mem;

pub use disk::DiskStore;
#[cfg(test)]
pub use faulty::FaultyStore;
#[cfg(test)]
pub use mem::MemStore;

use crate::error::Result;
use std::net::IpAddr;

/// One reserved address and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    /// Container ID; empty when the owner is unknown (a reservation interrupted by a crash).
    pub id: String,
    /// `None` for the old host-local format that stored only the container ID.
    pub ifname: Option<String>,
}

impl Lease {
    /// Host-local matching: exact id + ifname, or an old-format lease of that id.
    pub fn belongs_to(&self, id: &str, ifname: &str) -> bool {
        !self.id.is_empty() && self.id == id.trim() && self.ifname.as_deref().is_none_or(|n| n == ifname)
    }

    /// Nobody can ever release this lease by ID: only GC can.
    pub fn is_orphan(&self) -> bool {
        self.id.is_empty()
    }
}

/// Storage of leases for one network. Every method except `lock` expects the lock to be held;
/// use [`with_lock`] rather than pairing `lock`/`unlock` by hand.
pub trait Store {
    /// Take the store's exclusive lock (blocks up to the store's timeout).
    fn lock(&mut self) -> Result<()>;
    fn unlock(&mut self) -> Result<()>;
    /// Reserve `ip` for `id`/`ifname` and remember it as the last reserved of `rangeset`.
    /// Ok(false) if the address is already taken.
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, rangeset: usize) -> Result<bool>;
    fn last_reserved(&mut self, rangeset: usize) -> Result<Option<IpAddr>>;
    /// Release one address; a missing address is Ok.
    fn release(&mut self, ip: IpAddr) -> Result<()>;
    /// Release everything held by `id`/`ifname` (see [`Lease::belongs_to`]); returns what was released.
    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>>;
    fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>>;
    /// Every lease, in no particular order.
    fn list(&mut self) -> Result<Vec<Lease>>;
    /// Ok if new leases could be written (used by STATUS).
    fn check_writable(&mut self) -> Result<()>;
}

/// Run `f` with the store locked; the lock is released whatever `f` returns.
pub fn with_lock<S: Store + ?Sized, T>(store: &mut S, f: impl FnOnce(&mut S) -> Result<T>) -> Result<T> {
    store.lock()?;
    let out = f(store);
    let unlocked = store.unlock();
    let out = out?;
    unlocked?;
    Ok(out)
}

/// Shared by the stores: host-local's "exact match first, else old format" release rule.
pub fn matching(leases: &[Lease], id: &str, ifname: &str) -> Vec<IpAddr> {
    let exact: Vec<IpAddr> =
        leases.iter().filter(|l| l.belongs_to(id, ifname) && l.ifname.is_some()).map(|l| l.ip).collect();
    if !exact.is_empty() {
        return exact;
    }
    leases.iter().filter(|l| l.belongs_to(id, ifname)).map(|l| l.ip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: &str, id: &str, ifname: Option<&str>) -> Lease {
        Lease { ip: ip.parse().unwrap(), id: id.into(), ifname: ifname.map(Into::into) }
    }

    #[test]
    fn matching_prefers_exact_then_old_format() {
        let leases = vec![
            lease("10.0.0.2", "c1", Some("eth0")),
            lease("10.0.0.3", "c1", None),
            lease("10.0.0.4", "c1", Some("eth1")),
        ];
        assert_eq!(matching(&leases, "c1", "eth0"), vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(matching(&leases, "c1", "net9"), vec!["10.0.0.3".parse::<IpAddr>().unwrap()]);
        assert!(matching(&leases, "c2", "eth0").is_empty());
        // An orphan (empty owner) never matches an empty id.
        assert!(matching(&[lease("10.0.0.5", "", None)], "", "eth0").is_empty());
    }
}
