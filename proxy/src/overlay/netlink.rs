//! The real overlay dataplane over `trellis-netlink`, bound to one network namespace.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use trellis_netlink::{Family, Fdb, Handle, Neigh, Route, VxlanSpec};

use super::dataplane::OverlayDataplane;
use super::{FdbEntry, KernelRoute, NeighEntry, Underlay, VxlanDevice, RTPROT_TRELLIS};
use crate::{Error, Result};

fn nl(op: impl Into<String>) -> impl FnOnce(trellis_netlink::Error) -> Error {
    let op = op.into();
    move |source| Error::Netlink { op, source }
}

pub struct NetlinkDataplane {
    h: Handle,
    /// Set when the handle was opened in another netns than the caller's (tests): sysctls are
    /// then written from a thread inside it.
    netns: Option<PathBuf>,
}

impl NetlinkDataplane {
    /// A dataplane for the calling thread's netns (the agent runs inside its node's netns).
    pub fn new() -> Result<Self> {
        Ok(NetlinkDataplane { h: Handle::new().map_err(nl("open rtnetlink socket"))?, netns: None })
    }

    /// A dataplane for the netns at `path`; the calling thread stays where it is.
    pub fn in_netns(path: &Path) -> Result<Self> {
        let h = Handle::in_netns(path).map_err(nl(format!("open rtnetlink socket in {}", path.display())))?;
        Ok(NetlinkDataplane { h, netns: Some(path.to_path_buf()) })
    }

    fn sysctl(&self, key: &'static str, value: &'static str) -> Result<()> {
        let set = move || trellis_netlink::sysctl_set(key, value);
        match &self.netns {
            None => set(),
            Some(p) => trellis_netlink::netns::run_in(p, set).map_err(nl("enter netns"))?,
        }
        .map_err(nl(format!("sysctl {key}={value}")))
    }
}

fn link_local(n: &IpNet) -> bool {
    match n {
        IpNet::V4(v) => v.addr().is_link_local(),
        IpNet::V6(v) => (v.addr().segments()[0] & 0xffc0) == 0xfe80,
    }
}

impl OverlayDataplane for NetlinkDataplane {
    fn underlay(&mut self, iface: Option<&str>, node_ip: IpAddr) -> Result<Underlay> {
        let addrs = self.h.addrs(None).map_err(nl("dump addresses"))?;
        let link = match iface {
            Some(name) => self
                .h
                .link_by_name(name)
                .map_err(nl(format!("get link {name}")))?
                .ok_or_else(|| Error::Dataplane(format!("underlay interface {name} does not exist")))?,
            None => {
                let idx =
                    addrs.iter().find(|(_, a)| a.addr() == node_ip).map(|(i, _)| *i).ok_or_else(|| {
                        Error::Dataplane(format!("no interface holds the node's InternalIP {node_ip}"))
                    })?;
                self.h
                    .link_by_index(idx)
                    .map_err(nl(format!("get link #{idx}")))?
                    .ok_or_else(|| Error::Dataplane(format!("link #{idx} vanished")))?
            }
        };
        Ok(Underlay {
            ifindex: link.index,
            name: link.name,
            mtu: link.mtu,
            addrs: addrs.into_iter().filter(|(i, _)| *i == link.index).map(|(_, a)| a).collect(),
        })
    }

    fn ensure_forwarding(&mut self, ipv6: bool) -> Result<()> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        if ipv6 {
            self.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        Ok(())
    }

    fn ensure_vxlan(&mut self, dev: &VxlanDevice) -> Result<u32> {
        let spec = VxlanSpec {
            name: dev.name.clone(),
            vni: dev.vni,
            port: dev.port,
            local: IpAddr::V4(dev.local),
            underlay: dev.underlay_ifindex,
            mac: Some(dev.mac),
            mtu: Some(dev.mtu),
            learning: false,
        };
        let link = self.h.ensure_vxlan(&spec).map_err(nl(format!("ensure vxlan {}", dev.name)))?;
        let have = self.h.addrs(Some(link.index)).map_err(nl(format!("addresses of {}", dev.name)))?;
        for a in &dev.addrs {
            if !have.iter().any(|(_, h)| h == a) {
                self.h.ensure_addr(link.index, *a).map_err(nl(format!("add {a} to {}", dev.name)))?;
            }
        }
        // The device is ours: a stale pod CIDR address (podCIDR changed) goes.
        for (_, h) in have.iter().filter(|(_, h)| !dev.addrs.contains(h) && !link_local(h)) {
            self.h.del_addr(link.index, *h).map_err(nl(format!("remove {h} from {}", dev.name)))?;
        }
        Ok(link.index)
    }

    fn remove_link(&mut self, name: &str) -> Result<()> {
        // Only a VXLAN device: a misconfigured name must never take down another interface.
        if let Some(l) = self.h.link_by_name(name).map_err(nl(format!("get link {name}")))? {
            if l.kind.as_deref() == Some("vxlan") {
                self.h.delete_link(l.index).map_err(nl(format!("delete {name}")))?;
            }
        }
        Ok(())
    }

    fn fdbs(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let v = self.h.fdbs(ifindex).map_err(nl(format!("dump fdb of #{ifindex}")))?;
        Ok(v.into_iter().filter(|f| f.mac != [0; 6]).map(|f| FdbEntry { mac: f.mac, dst: f.dst }).collect())
    }

    fn add_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        self.h.ensure_fdb(&Fdb { ifindex, mac: e.mac, dst: e.dst }).map_err(nl("add fdb"))
    }

    fn del_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        self.h.del_fdb(&Fdb { ifindex, mac: e.mac, dst: e.dst }).map_err(nl("delete fdb"))
    }

    fn neighs(&mut self, ifindex: u32) -> Result<Vec<NeighEntry>> {
        let v = self.h.neighs(ifindex).map_err(nl(format!("dump neighbours of #{ifindex}")))?;
        Ok(v.into_iter().map(|n| NeighEntry { ip: n.ip, mac: n.mac }).collect())
    }

    fn add_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()> {
        self.h.ensure_neigh(&Neigh { ifindex, ip: e.ip, mac: e.mac }).map_err(nl("add neighbour"))
    }

    fn del_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()> {
        self.h.del_neigh(&Neigh { ifindex, ip: e.ip, mac: e.mac }).map_err(nl("delete neighbour"))
    }

    fn routes(&mut self) -> Result<Vec<KernelRoute>> {
        let v = self.h.routes(Family::All).map_err(nl("dump routes"))?;
        Ok(v.into_iter()
            .filter(|r| r.protocol == RTPROT_TRELLIS)
            .filter_map(|r| Some(KernelRoute { dst: r.dst, gateway: r.gateway?, oif: r.oif?, onlink: r.onlink }))
            .collect())
    }

    fn replace_route(&mut self, r: &KernelRoute) -> Result<()> {
        self.h.ensure_route(&to_route(r)).map_err(nl("replace route"))
    }

    fn del_route(&mut self, r: &KernelRoute) -> Result<()> {
        self.h.del_route(&to_route(r)).map_err(nl("delete route"))
    }
}

fn to_route(r: &KernelRoute) -> Route {
    let mut route = Route::new(r.dst).via(r.gateway).dev(r.oif).protocol(RTPROT_TRELLIS);
    if r.onlink {
        route = route.onlink();
    }
    route
}
