//! Node-to-node pod connectivity: VXLAN or host-gw, driven by Node objects.
//!
//! `plan` (pure) turns nodes into desired kernel entries, `reconcile` diffs them against what
//! the [`dataplane::OverlayDataplane`] reports and applies the difference.
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

pub mod dataplane;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
pub(crate) mod faulty;
pub mod netlink;
pub mod plan;
pub mod reconcile;

/// Routes the agent installs carry this protocol number, so it prunes only its own.
pub const RTPROT_TRELLIS: u8 = 0x7e;

/// VXLAN header overhead on an IPv4 underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
/// Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One VXLAN device; peers reached through FDB/neighbour/onlink routes.
    Vxlan,
    /// Plain routes via peer node addresses; peers must share the underlay's L2 segment.
    #[value(name = "host-gw")]
    HostGw,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    pub mode: Mode,
    pub vni: u32,
    pub port: u16,
    pub device: String,
    /// The underlay interface; None: the one holding the node's InternalIP.
    pub underlay_iface: Option<String>,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig { mode: Mode::Vxlan, vni: 1, port: 8472, device: "trellis.1".into(), underlay_iface: None }
    }
}

/// The node's underlay interface as found in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub ifindex: u32,
    pub name: String,
    pub mtu: u32,
    /// Addresses with their prefix: each is a connected subnet.
    pub addrs: Vec<IpNet>,
}

/// VXLAN MAC derived from the node's underlay IPv4 (docs/CONTRACTS.md): `0e:7e:a:b:c:d`.
/// Locally administered, unicast, and computable by every peer without an annotation.
pub fn vxlan_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0e, 0x7e, o[0], o[1], o[2], o[3]]
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The VXLAN device we want.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay_ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// `<own podCIDR network>/32` (and `/128` for an IPv6 podCIDR).
    pub addrs: Vec<IpNet>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighEntry {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// Which device a desired route leaves through; resolved to an ifindex when applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteDev {
    Vxlan,
    Underlay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gateway: IpAddr,
    pub dev: RouteDev,
    pub onlink: bool,
}

/// A route as the kernel holds it (main table, protocol [`RTPROT_TRELLIS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRoute {
    pub dst: IpNet,
    pub gateway: IpAddr,
    pub oif: u32,
    pub onlink: bool,
}

impl std::fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {} oif {}{}", self.dst, self.gateway, self.oif, if self.onlink { " onlink" } else { "" })
    }
}
