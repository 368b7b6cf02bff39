//! A store wrapper that fails its Nth operation, to test that callers roll back.

use super::{Lease, Store};
use crate::error::{IpamError, Result};
use std::net::IpAddr;

pub struct FaultyStore<S> {
    pub inner: S,
    /// 1-based index of the operation that fails; 0 = never.
    fail_at: usize,
    ops: usize,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S, fail_at: usize) -> Self {
        FaultyStore { inner, fail_at, ops: 0 }
    }

    /// Operations seen so far (lock and unlock included).
    pub fn ops(&self) -> usize {
        self.ops
    }

    /// Whether the injected fault has fired.
    pub fn fired(&self) -> bool {
        self.fail_at != 0 && self.ops >= self.fail_at
    }

    fn tick(&mut self, op: &str) -> Result<()> {
        self.ops += 1;
        if self.ops == self.fail_at {
            return Err(IpamError::Store(format!("injected fault in {op} (operation {})", self.ops)));
        }
        Ok(())
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn lock(&mut self) -> Result<()> {
        self.tick("lock")?;
        self.inner.lock()
    }
    fn unlock(&mut self) -> Result<()> {
        // Always release the real lock, even when the fault fires here.
        let r = self.tick("unlock");
        self.inner.unlock()?;
        r
    }
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, rangeset: usize) -> Result<bool> {
        self.tick("reserve")?;
        self.inner.reserve(id, ifname, ip, rangeset)
    }
    fn last_reserved(&mut self, rangeset: usize) -> Result<Option<IpAddr>> {
        self.tick("last_reserved")?;
        self.inner.last_reserved(rangeset)
    }
    fn release(&mut self, ip: IpAddr) -> Result<()> {
        self.tick("release")?;
        self.inner.release(ip)
    }
    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        self.tick("release_by_id")?;
        self.inner.release_by_id(id, ifname)
    }
    fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        self.tick("get_by_id")?;
        self.inner.get_by_id(id, ifname)
    }
    fn list(&mut self) -> Result<Vec<Lease>> {
        self.tick("list")?;
        self.inner.list()
    }
    fn check_writable(&mut self) -> Result<()> {
        self.tick("check_writable")?;
        self.inner.check_writable()
    }
}
