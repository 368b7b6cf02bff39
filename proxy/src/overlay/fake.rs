//! In-memory overlay dataplane: behaves like the kernel for what the reconciler does, and lets
//! tests play "someone deleted it by hand".
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::dataplane::OverlayDataplane;
use super::{FdbEntry, KernelRoute, NeighEntry, Underlay, VxlanDevice};
use crate::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct FakeDataplane {
    pub underlay: Option<Underlay>,
    /// name -> (ifindex, device)
    pub vxlans: BTreeMap<String, (u32, VxlanDevice)>,
    pub fdb: BTreeMap<u32, BTreeSet<FdbEntry>>,
    pub neigh: BTreeMap<u32, BTreeSet<NeighEntry>>,
    /// Our routes, keyed by destination like the kernel's main table.
    pub routes: BTreeMap<ipnet::IpNet, KernelRoute>,
    pub ip_forward: bool,
    pub ipv6_forward: bool,
    pub next_ifindex: u32,
    /// Every mutating call, in order ("add_route 10.244.2.0/24 ..."), for assertions.
    pub log: Vec<String>,
}

impl FakeDataplane {
    pub fn new(underlay: Underlay) -> Self {
        FakeDataplane { next_ifindex: underlay.ifindex + 100, underlay: Some(underlay), ..Default::default() }
    }

    pub fn ifindex_of(&self, name: &str) -> Option<u32> {
        self.vxlans.get(name).map(|(i, _)| *i)
    }

    /// Simulate `ip link del`: the device and everything on it vanish, routes through it too.
    pub fn delete_device_by_hand(&mut self, name: &str) {
        if let Some((idx, _)) = self.vxlans.remove(name) {
            self.fdb.remove(&idx);
            self.neigh.remove(&idx);
            self.routes.retain(|_, r| r.oif != idx);
        }
    }
}

impl OverlayDataplane for FakeDataplane {
    fn underlay(&mut self, iface: Option<&str>, node_ip: IpAddr) -> Result<Underlay> {
        let u = self.underlay.clone().ok_or_else(|| Error::Dataplane("no underlay".into()))?;
        let matches = match iface {
            Some(n) => n == u.name,
            None => u.addrs.iter().any(|a| a.addr() == node_ip),
        };
        if matches {
            Ok(u)
        } else {
            Err(Error::Dataplane(format!("no interface {iface:?} holding {node_ip}")))
        }
    }

    fn ensure_forwarding(&mut self, ipv6: bool) -> Result<()> {
        self.ip_forward = true;
        self.ipv6_forward |= ipv6;
        Ok(())
    }

    fn ensure_vxlan(&mut self, dev: &VxlanDevice) -> Result<u32> {
        if let Some((idx, cur)) = self.vxlans.get_mut(&dev.name) {
            if cur != dev {
                self.log.push(format!("fix_vxlan {}", dev.name));
                *cur = dev.clone();
            }
            return Ok(*idx);
        }
        self.next_ifindex += 1;
        let idx = self.next_ifindex;
        self.vxlans.insert(dev.name.clone(), (idx, dev.clone()));
        self.log.push(format!("create_vxlan {} {idx}", dev.name));
        Ok(idx)
    }

    fn remove_link(&mut self, name: &str) -> Result<()> {
        if self.vxlans.contains_key(name) {
            self.log.push(format!("remove_link {name}"));
        }
        self.delete_device_by_hand(name);
        Ok(())
    }

    fn fdbs(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        Ok(self.fdb.get(&ifindex).map(|s| s.iter().copied().collect()).unwrap_or_default())
    }

    fn add_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        self.log.push(format!("add_fdb {ifindex} {}", e.dst));
        self.fdb.entry(ifindex).or_default().insert(*e);
        Ok(())
    }

    fn del_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        self.log.push(format!("del_fdb {ifindex} {}", e.dst));
        self.fdb.entry(ifindex).or_default().remove(e);
        Ok(())
    }

    fn neighs(&mut self, ifindex: u32) -> Result<Vec<NeighEntry>> {
        Ok(self.neigh.get(&ifindex).map(|s| s.iter().copied().collect()).unwrap_or_default())
    }

    fn add_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()> {
        self.log.push(format!("add_neigh {ifindex} {}", e.ip));
        let set = self.neigh.entry(ifindex).or_default();
        set.retain(|n| n.ip != e.ip); // like NLM_F_REPLACE
        set.insert(*e);
        Ok(())
    }

    fn del_neigh(&mut self, ifindex: u32, e: &NeighEntry) -> Result<()> {
        self.log.push(format!("del_neigh {ifindex} {}", e.ip));
        self.neigh.entry(ifindex).or_default().remove(e);
        Ok(())
    }

    fn routes(&mut self) -> Result<Vec<KernelRoute>> {
        Ok(self.routes.values().copied().collect())
    }

    fn replace_route(&mut self, r: &KernelRoute) -> Result<()> {
        if !r.onlink {
            let u = self.underlay.as_ref().ok_or_else(|| Error::Dataplane("no underlay".into()))?;
            // Like the kernel: a gateway must be reachable on the link unless onlink.
            if r.oif != u.ifindex || !u.addrs.iter().any(|a| a.contains(&r.gateway)) {
                return Err(Error::Dataplane(format!("Nexthop has invalid gateway: {r}")));
            }
        } else if !self.vxlans.values().any(|(i, _)| *i == r.oif) {
            return Err(Error::Dataplane(format!("no device {}", r.oif)));
        }
        self.log.push(format!("replace_route {r}"));
        self.routes.insert(r.dst, *r);
        Ok(())
    }

    fn del_route(&mut self, r: &KernelRoute) -> Result<()> {
        self.log.push(format!("del_route {r}"));
        self.routes.remove(&r.dst);
        Ok(())
    }
}
