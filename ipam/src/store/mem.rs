//! In-memory store for unit tests.

use super::{matching, Lease, Store};
use crate::error::{IpamError, Result};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

#[derive(Debug, Default)]
pub struct MemStore {
    leases: BTreeMap<IpAddr, (String, Option<String>)>,
    last: HashMap<usize, IpAddr>,
    locked: bool,
    /// When set, `check_writable` fails (to test STATUS).
    pub read_only: bool,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert a lease directly (e.g. an orphan with an empty id, or an old-format lease).
    pub fn insert_raw(&mut self, lease: Lease) {
        self.leases.insert(lease.ip, (lease.id, lease.ifname));
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    fn require_lock(&self, op: &str) -> Result<()> {
        if self.locked {
            Ok(())
        } else {
            Err(IpamError::Store(format!("{op} called without holding the lock")))
        }
    }
}

impl Store for MemStore {
    fn lock(&mut self) -> Result<()> {
        if self.locked {
            return Err(IpamError::Store("lock taken twice".into()));
        }
        self.locked = true;
        Ok(())
    }

    fn unlock(&mut self) -> Result<()> {
        self.locked = false;
        Ok(())
    }

    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, rangeset: usize) -> Result<bool> {
        self.require_lock("reserve")?;
        if self.leases.contains_key(&ip) {
            return Ok(false);
        }
        self.leases.insert(ip, (id.trim().to_string(), Some(ifname.to_string())));
        self.last.insert(rangeset, ip);
        Ok(true)
    }

    fn last_reserved(&mut self, rangeset: usize) -> Result<Option<IpAddr>> {
        self.require_lock("last_reserved")?;
        Ok(self.last.get(&rangeset).copied())
    }

    fn release(&mut self, ip: IpAddr) -> Result<()> {
        self.require_lock("release")?;
        self.leases.remove(&ip);
        Ok(())
    }

    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let ips = self.get_by_id(id, ifname)?;
        for ip in &ips {
            self.leases.remove(ip);
        }
        Ok(ips)
    }

    fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(matching(&self.list()?, id, ifname))
    }

    fn list(&mut self) -> Result<Vec<Lease>> {
        self.require_lock("list")?;
        Ok(self
            .leases
            .iter()
            .map(|(ip, (id, ifname))| Lease { ip: *ip, id: id.clone(), ifname: ifname.clone() })
            .collect())
    }

    fn check_writable(&mut self) -> Result<()> {
        if self.read_only {
            return Err(IpamError::Store("store is read-only".into()));
        }
        Ok(())
    }
}
