//! Kernel access for the overlay, behind a trait: a real implementation over
//! `trellis-netlink` ([`super::netlink`]); tests add an in-memory fake and a
//! fault-injecting wrapper (`fake.rs`, `faulty.rs`, compiled for tests only).
use std::net::IpAddr;

use super::{FdbEntry, KernelRoute, NeighEntry, Underlay, VxlanDevice};
use crate::Result;

pub trait OverlayDataplane {
    /// Find the underlay interface: by name, or the one holding `node_ip`.
    fn underlay(&mut self, iface: Option<&str>, node_ip: IpAddr) -> Result<Underlay>;
    /// Turn on IPv4 forwarding (and IPv6 forwarding when asked) in this netns.
    fn ensure_forwarding(&mut self, ipv6: bool) -> Result<()>;
    /// Create the VXLAN device or fix it up (mac, mtu, up, addresses; recreate when an
    /// immutable attribute like VNI or port differs). Returns its ifindex.
    fn ensure_vxlan(&mut self, dev: &VxlanDevice) -> Result<u32>;
    /// Delete a link by name if it exists.
    fn remove_link(&mut self, name: &str) -> Result<()>;
    /// Permanent FDB entries with a remote on this device.
    fn fdbs(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>>;
    fn add_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()>;
    fn del_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()>;
    /// Permanent neighbour entries on this device.
    fn neighs(&mut self, ifindex: u32) -> Result<Vec<NeighEntry>>;
    fn add_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()>;
    fn del_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()>;
    /// Routes in the main table with protocol [`super::RTPROT_TRELLIS`], both families.
    fn routes(&mut self) -> Result<Vec<KernelRoute>>;
    /// Add or replace the route to `r.dst`, with protocol [`super::RTPROT_TRELLIS`].
    fn replace_route(&mut self, r: &KernelRoute) -> Result<()>;
    fn del_route(&mut self, r: &KernelRoute) -> Result<()>;
}

impl<T: OverlayDataplane + ?Sized> OverlayDataplane for Box<T> {
    fn underlay(&mut self, iface: Option<&str>, node_ip: IpAddr) -> Result<Underlay> {
        (**self).underlay(iface, node_ip)
    }
    fn ensure_forwarding(&mut self, ipv6: bool) -> Result<()> {
        (**self).ensure_forwarding(ipv6)
    }
    fn ensure_vxlan(&mut self, dev: &VxlanDevice) -> Result<u32> {
        (**self).ensure_vxlan(dev)
    }
    fn remove_link(&mut self, name: &str) -> Result<()> {
        (**self).remove_link(name)
    }
    fn fdbs(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        (**self).fdbs(ifindex)
    }
    fn add_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        (**self).add_fdb(ifindex, e)
    }
    fn del_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        (**self).del_fdb(ifindex, e)
    }
    fn neighs(&mut self, ifindex: u32) -> Result<Vec<NeighEntry>> {
        (**self).neighs(ifindex)
    }
    fn add_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()> {
        (**self).add_neigh(ifindex, e)
    }
    fn del_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()> {
        (**self).del_neigh(ifindex, e)
    }
    fn routes(&mut self) -> Result<Vec<KernelRoute>> {
        (**self).routes()
    }
    fn replace_route(&mut self, r: &KernelRoute) -> Result<()> {
        (**self).replace_route(r)
    }
    fn del_route(&mut self, r: &KernelRoute) -> Result<()> {
        (**self).del_route(r)
    }
}
