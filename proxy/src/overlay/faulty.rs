//! Fault injection: wraps a dataplane and fails chosen calls, to prove the reconciler keeps
//! going and retries.
use std::net::IpAddr;

use super::dataplane::OverlayDataplane;
use super::{FdbEntry, KernelRoute, NeighEntry, Underlay, VxlanDevice};
use crate::{Error, Result};

pub struct FaultyDataplane<D> {
    pub inner: D,
    /// Calls made so far (all operations), 1-based numbering for `fail_nth`.
    pub calls: usize,
    /// Fail the call with this number.
    pub fail_nth: Option<usize>,
    /// Fail calls of this operation ("add_fdb", "replace_route", ...) this many more times.
    pub fail_op: Option<(&'static str, usize)>,
    pub failures: usize,
}

impl<D> FaultyDataplane<D> {
    pub fn new(inner: D) -> Self {
        FaultyDataplane { inner, calls: 0, fail_nth: None, fail_op: None, failures: 0 }
    }

    fn check(&mut self, op: &'static str) -> Result<()> {
        self.calls += 1;
        let mut fail = self.fail_nth == Some(self.calls);
        if let Some((o, n)) = &mut self.fail_op {
            if *o == op && *n > 0 {
                *n -= 1;
                fail = true;
            }
        }
        if fail {
            self.failures += 1;
            return Err(Error::Injected(format!("{op} (call {})", self.calls)));
        }
        Ok(())
    }
}

impl<D: OverlayDataplane> OverlayDataplane for FaultyDataplane<D> {
    fn underlay(&mut self, iface: Option<&str>, node_ip: IpAddr) -> Result<Underlay> {
        self.check("underlay")?;
        self.inner.underlay(iface, node_ip)
    }
    fn ensure_forwarding(&mut self, ipv6: bool) -> Result<()> {
        self.check("ensure_forwarding")?;
        self.inner.ensure_forwarding(ipv6)
    }
    fn ensure_vxlan(&mut self, dev: &VxlanDevice) -> Result<u32> {
        self.check("ensure_vxlan")?;
        self.inner.ensure_vxlan(dev)
    }
    fn remove_link(&mut self, name: &str) -> Result<()> {
        self.check("remove_link")?;
        self.inner.remove_link(name)
    }
    fn fdbs(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        self.check("fdbs")?;
        self.inner.fdbs(ifindex)
    }
    fn add_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        self.check("add_fdb")?;
        self.inner.add_fdb(ifindex, e)
    }
    fn del_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        self.check("del_fdb")?;
        self.inner.del_fdb(ifindex, e)
    }
    fn neighs(&mut self, ifindex: u32) -> Result<Vec<NeighEntry>> {
        self.check("neighs")?;
        self.inner.neighs(ifindex)
    }
    fn add_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()> {
        self.check("add_neigh")?;
        self.inner.add_neigh(ifindex, e)
    }
    fn del_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()> {
        self.check("del_neigh")?;
        self.inner.del_neigh(ifindex, e)
    }
    fn routes(&mut self) -> Result<Vec<KernelRoute>> {
        self.check("routes")?;
        self.inner.routes()
    }
    fn replace_route(&mut self, r: &KernelRoute) -> Result<()> {
        self.check("replace_route")?;
        self.inner.replace_route(r)
    }
    fn del_route(&mut self, r: &KernelRoute) -> Result<()> {
        self.check("del_route")?;
        self.inner.del_route(r)
    }
}
