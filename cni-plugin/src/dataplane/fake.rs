//! In-memory dataplane for unit tests, and a wrapper that fails on demand. Test-only: not part of the API.
use std::collections::BTreeMap;

use ipnet::IpNet;
use trellis_cni_types::{codes, CniError};
use trellis_test_support::Faults;

use super::{Dataplane, Observed};
use crate::naming::is_host_veth_name;
use crate::plan::{LinkInfo, PodPlan};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeLink {
    pub index: u32,
    pub mtu: u32,
    pub master: Option<String>,
    pub hairpin: bool,
    pub addrs: Vec<IpNet>,
    pub routes: Vec<(IpNet, Option<std::net::IpAddr>)>,
    pub up: bool,
}

/// One node netns and one pod netns, in memory.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub node_links: BTreeMap<String, FakeLink>,
    pub pod_links: BTreeMap<String, FakeLink>,
    pub forwarding: (bool, bool),
    /// network -> (sources, cluster, untrack)
    pub masq: BTreeMap<String, (Vec<IpNet>, Vec<IpNet>, bool)>,
    pub uplink_mtu: u32,
    next_index: u32,
}

impl FakeDataplane {
    pub fn new() -> Self {
        FakeDataplane { uplink_mtu: 1500, next_index: 10, ..Default::default() }
    }
    fn index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }
    fn info(name: &str, l: &FakeLink) -> LinkInfo {
        LinkInfo {
            name: name.to_string(),
            index: l.index,
            mac: Some(trellis_netlink::format_mac(&[0x0e, 0, 0, 0, 0, l.index as u8])),
            mtu: l.mtu,
        }
    }
}

impl Dataplane for FakeDataplane {
    fn default_mtu(&mut self, bridge: &str) -> Result<u32, CniError> {
        Ok(self.node_links.get(bridge).map(|b| b.mtu).unwrap_or(self.uplink_mtu))
    }

    fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>, addrs: &[IpNet]) -> Result<LinkInfo, CniError> {
        if !self.node_links.contains_key(name) {
            let index = self.index();
            self.node_links
                .insert(name.into(), FakeLink { index, mtu: mtu.unwrap_or(1500), up: true, ..Default::default() });
        }
        let b = self.node_links.get_mut(name).expect("just ensured");
        for a in addrs {
            if !b.addrs.contains(a) {
                b.addrs.push(*a);
            }
        }
        Ok(Self::info(name, b))
    }

    fn ensure_forwarding(&mut self, v4: bool, v6: bool) -> Result<(), CniError> {
        self.forwarding.0 |= v4;
        self.forwarding.1 |= v6;
        Ok(())
    }

    fn host_veth(&mut self, name: &str) -> Result<Option<LinkInfo>, CniError> {
        Ok(self.node_links.get(name).map(|l| Self::info(name, l)))
    }

    fn pod_has_interface(&mut self, ifname: &str, _host_veth: &str) -> Result<bool, CniError> {
        Ok(self.pod_links.contains_key(ifname))
    }

    fn ensure_pod_link(&mut self, plan: &PodPlan, bridge: &LinkInfo) -> Result<LinkInfo, CniError> {
        if self.pod_links.contains_key(&plan.ifname) && !self.node_links.contains_key(&plan.host_veth) {
            return Err(CniError::new(codes::INTERNAL, format!("interface {} already exists", plan.ifname), ""));
        }
        if !self.pod_links.contains_key(&plan.ifname) {
            let (hi, pi) = (self.index(), self.index());
            self.node_links.insert(
                plan.host_veth.clone(),
                FakeLink {
                    index: hi,
                    mtu: plan.mtu,
                    master: Some(bridge.name.clone()),
                    hairpin: plan.hairpin,
                    up: true,
                    ..Default::default()
                },
            );
            self.pod_links.insert(plan.ifname.clone(), FakeLink { index: pi, mtu: plan.mtu, ..Default::default() });
        }
        let h = &self.node_links[&plan.host_veth];
        Ok(Self::info(&plan.host_veth, h))
    }

    fn configure_pod(&mut self, plan: &PodPlan) -> Result<LinkInfo, CniError> {
        let l = self
            .pod_links
            .get_mut(&plan.ifname)
            .ok_or_else(|| CniError::new(codes::INTERNAL, "no pod interface", ""))?;
        for a in &plan.addresses {
            if !l.addrs.contains(a) {
                l.addrs.push(*a);
            }
        }
        l.up = true;
        for r in &plan.routes {
            if !l.routes.contains(r) {
                l.routes.push(*r);
            }
        }
        Ok(Self::info(&plan.ifname, l))
    }

    fn delete_pod_link(&mut self, host_veth: &str, ifname: &str) -> Result<(), CniError> {
        self.node_links.remove(host_veth);
        self.pod_links.remove(ifname);
        Ok(())
    }

    fn observe_pod(&mut self, ifname: &str) -> Result<Option<Observed>, CniError> {
        Ok(self.pod_links.get(ifname).map(|l| Observed {
            addresses: l.addrs.clone(),
            routes: l.routes.clone(),
            mtu: l.mtu,
            up: l.up,
        }))
    }

    fn host_veths_on(&mut self, bridge: &str) -> Result<Vec<String>, CniError> {
        Ok(self
            .node_links
            .iter()
            .filter(|(n, l)| l.master.as_deref() == Some(bridge) && is_host_veth_name(n))
            .map(|(n, _)| n.clone())
            .collect())
    }

    fn ensure_masquerade(
        &mut self,
        network: &str,
        sources: &[IpNet],
        cluster: &[IpNet],
        untrack: bool,
    ) -> Result<(), CniError> {
        self.masq.insert(network.into(), (sources.to_vec(), cluster.to_vec(), untrack));
        Ok(())
    }
}

/// Fails on demand (the shared [`Faults`] counter: the Nth call, or the next K calls of one method) with a
/// kernel-like error; every other call goes to `inner`. Reads of the counter (`calls`, `failures`) go through.
pub struct FaultyDataplane<D> {
    pub inner: D,
    pub faults: Faults,
}

impl<D: Dataplane> FaultyDataplane<D> {
    /// Fails the `fail_at`-th call (1-based); 0 never fails.
    pub fn new(inner: D, fail_at: usize) -> Self {
        FaultyDataplane { inner, faults: Faults::nth(fail_at) }
    }
    fn tick(&mut self, what: &str) -> Result<(), CniError> {
        self.faults.hit(what).map_or(Ok(()), |e| Err(CniError::new(codes::INTERNAL, e, "")))
    }
}

impl<D> std::ops::Deref for FaultyDataplane<D> {
    type Target = Faults;
    fn deref(&self) -> &Faults {
        &self.faults
    }
}

impl<D: Dataplane> Dataplane for FaultyDataplane<D> {
    fn default_mtu(&mut self, bridge: &str) -> Result<u32, CniError> {
        self.tick("default_mtu")?;
        self.inner.default_mtu(bridge)
    }
    fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>, addrs: &[IpNet]) -> Result<LinkInfo, CniError> {
        self.tick("ensure_bridge")?;
        self.inner.ensure_bridge(name, mtu, addrs)
    }
    fn ensure_forwarding(&mut self, v4: bool, v6: bool) -> Result<(), CniError> {
        self.tick("ensure_forwarding")?;
        self.inner.ensure_forwarding(v4, v6)
    }
    fn host_veth(&mut self, name: &str) -> Result<Option<LinkInfo>, CniError> {
        self.tick("host_veth")?;
        self.inner.host_veth(name)
    }
    fn pod_has_interface(&mut self, ifname: &str, host_veth: &str) -> Result<bool, CniError> {
        self.tick("pod_has_interface")?;
        self.inner.pod_has_interface(ifname, host_veth)
    }
    fn ensure_pod_link(&mut self, plan: &PodPlan, bridge: &LinkInfo) -> Result<LinkInfo, CniError> {
        self.tick("ensure_pod_link")?;
        self.inner.ensure_pod_link(plan, bridge)
    }
    fn configure_pod(&mut self, plan: &PodPlan) -> Result<LinkInfo, CniError> {
        self.tick("configure_pod")?;
        self.inner.configure_pod(plan)
    }
    fn delete_pod_link(&mut self, host_veth: &str, ifname: &str) -> Result<(), CniError> {
        self.tick("delete_pod_link")?;
        self.inner.delete_pod_link(host_veth, ifname)
    }
    fn observe_pod(&mut self, ifname: &str) -> Result<Option<Observed>, CniError> {
        self.tick("observe_pod")?;
        self.inner.observe_pod(ifname)
    }
    fn host_veths_on(&mut self, bridge: &str) -> Result<Vec<String>, CniError> {
        self.tick("host_veths_on")?;
        self.inner.host_veths_on(bridge)
    }
    fn ensure_masquerade(
        &mut self,
        network: &str,
        sources: &[IpNet],
        cluster: &[IpNet],
        untrack: bool,
    ) -> Result<(), CniError> {
        self.tick("ensure_masquerade")?;
        self.inner.ensure_masquerade(network, sources, cluster, untrack)
    }
}
