//! Fault injection (tests only): wraps a dataplane and fails chosen calls, counted by the
//! workspace's one fail-at-step-N counter, to prove the reconciler keeps going and retries.
use std::net::IpAddr;

use trellis_test_support::Faults;

use super::dataplane::OverlayDataplane;
use super::{FdbEntry, KernelRoute, NeighEntry, Underlay, VxlanDevice};
use crate::{Error, Result};

pub struct FaultyDataplane<D> {
    pub inner: D,
    pub faults: Faults,
}

impl<D> FaultyDataplane<D> {
    pub fn new(inner: D, faults: Faults) -> Self {
        FaultyDataplane { inner, faults }
    }

    fn check(&mut self, op: &'static str) -> Result<()> {
        match self.faults.hit(op) {
            Some(what) => Err(Error::Injected(what)),
            None => Ok(()),
        }
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
