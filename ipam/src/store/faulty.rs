//! A store wrapper that fails on demand (the shared [`Faults`] counter: the Nth operation, or the next K of one
//! operation), to test that callers roll back.

use super::{Lease, Store};
use crate::error::{IpamError, Result};
use std::net::IpAddr;
use trellis_test_support::Faults;

pub struct FaultyStore<S> {
    pub inner: S,
    pub faults: Faults,
}

impl<S: Store> FaultyStore<S> {
    /// Fails the `fail_at`-th operation (1-based, lock and unlock included); 0 never fails.
    pub fn new(inner: S, fail_at: usize) -> Self {
        FaultyStore { inner, faults: Faults::nth(fail_at) }
    }

    /// Whether an injected fault has fired.
    pub fn fired(&self) -> bool {
        self.faults.fired()
    }

    fn tick(&mut self, op: &str) -> Result<()> {
        self.faults.hit(op).map_or(Ok(()), |e| Err(IpamError::Store(e)))
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
