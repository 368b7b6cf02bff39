//! Kernel access of the plugin, behind one trait: the real one (netlink + nftables), and for the unit tests an
//! in-memory fake and a faulty wrapper that fails the Nth call, so the ADD/DEL logic and its rollback are tested
//! without privileges. The fake and the wrapper are compiled for tests only: they are not the crate's API.
use std::net::IpAddr;

use ipnet::IpNet;
use trellis_cni_types::CniError;

use crate::plan::{LinkInfo, PodPlan};

#[cfg(test)]
mod fake;
mod real;

#[cfg(test)]
pub use fake::{FakeDataplane, FaultyDataplane};
pub use real::RealDataplane;

/// What CHECK reads back from the pod's netns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub addresses: Vec<IpNet>,
    /// (destination, gateway) of the pod's routes through this interface.
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
    pub mtu: u32,
    pub up: bool,
}

pub trait Dataplane {
    /// MTU for pods when the config sets none: the bridge's if it exists, else the default route's device's.
    fn default_mtu(&mut self, bridge: &str) -> Result<u32, CniError>;
    /// The bridge exists, is up, and holds `addrs` (the range gateways).
    fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>, addrs: &[IpNet]) -> Result<LinkInfo, CniError>;
    /// IP forwarding in the node's netns for the families pods use.
    fn ensure_forwarding(&mut self, v4: bool, v6: bool) -> Result<(), CniError>;
    /// The host veth of an attachment, if present.
    fn host_veth(&mut self, name: &str) -> Result<Option<LinkInfo>, CniError>;
    /// Whether the pod already has an interface named `ifname`. A pair this attachment's DEL left to a background
    /// child (host end renamed `tz…`) does not count: its delete is finished here, so DEL then ADD works.
    fn pod_has_interface(&mut self, ifname: &str, host_veth: &str) -> Result<bool, CniError>;
    /// Creates the veth pair (pod end directly in the pod netns), attached to the bridge, hairpin as planned.
    /// Fails, creating nothing, if the pod already has an interface of that name.
    fn ensure_pod_link(&mut self, plan: &PodPlan, bridge: &LinkInfo) -> Result<LinkInfo, CniError>;
    /// Addresses, up, routes inside the pod netns; returns the pod interface.
    fn configure_pod(&mut self, plan: &PodPlan) -> Result<LinkInfo, CniError>;
    /// Removes the pair (by its host end, or the pod end if only that is left). Missing is success.
    fn delete_pod_link(&mut self, host_veth: &str, ifname: &str) -> Result<(), CniError>;
    /// Reads the pod interface back; None if it does not exist.
    fn observe_pod(&mut self, ifname: &str) -> Result<Option<Observed>, CniError>;
    /// The bridge ports that look like our host veths.
    fn host_veths_on(&mut self, bridge: &str) -> Result<Vec<String>, CniError>;
    /// nftables masquerade for `sources` leaving `cluster`, keyed by network name; `untrack`: traffic from
    /// `cluster` to `cluster` skips conntrack (false removes that). Idempotent.
    fn ensure_masquerade(
        &mut self,
        network: &str,
        sources: &[IpNet],
        cluster: &[IpNet],
        untrack: bool,
    ) -> Result<(), CniError>;
}
