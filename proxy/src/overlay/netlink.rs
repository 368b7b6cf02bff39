//! The real overlay dataplane over `trellis-netlink` (placeholder until that crate lands).
use std::net::IpAddr;

use super::dataplane::OverlayDataplane;
use super::{FdbEntry, KernelRoute, NeighEntry, Underlay, VxlanDevice};
use crate::{Error, Result};

pub struct NetlinkDataplane;

impl NetlinkDataplane {
    pub fn new() -> Result<Self> {
        Err(Error::Dataplane(
            "netlink dataplane not available yet".into(),
        ))
    }
}

impl OverlayDataplane for NetlinkDataplane {
    fn underlay(&mut self, _: Option<&str>, _: IpAddr) -> Result<Underlay> {
        unreachable!()
    }
    fn ensure_forwarding(&mut self, _: bool) -> Result<()> {
        unreachable!()
    }
    fn ensure_vxlan(&mut self, _: &VxlanDevice) -> Result<u32> {
        unreachable!()
    }
    fn remove_link(&mut self, _: &str) -> Result<()> {
        unreachable!()
    }
    fn fdbs(&mut self, _: u32) -> Result<Vec<FdbEntry>> {
        unreachable!()
    }
    fn add_fdb(&mut self, _: u32, _: &FdbEntry) -> Result<()> {
        unreachable!()
    }
    fn del_fdb(&mut self, _: u32, _: &FdbEntry) -> Result<()> {
        unreachable!()
    }
    fn neighs(&mut self, _: u32) -> Result<Vec<NeighEntry>> {
        unreachable!()
    }
    fn add_neigh(&mut self, _: u32, _: &NeighEntry) -> Result<()> {
        unreachable!()
    }
    fn del_neigh(&mut self, _: u32, _: &NeighEntry) -> Result<()> {
        unreachable!()
    }
    fn routes(&mut self) -> Result<Vec<KernelRoute>> {
        unreachable!()
    }
    fn replace_route(&mut self, _: &KernelRoute) -> Result<()> {
        unreachable!()
    }
    fn del_route(&mut self, _: &KernelRoute) -> Result<()> {
        unreachable!()
    }
}
