//! The service proxy: Services and EndpointSlices in, the node's eBPF datapath programmed to match.
//!
//! The pure half is the `trellis-svc` crate (model, ids, translation); the kernel half is `trellis-ebpf`
//! (maps behind `MapTable`, the `sync` reconciler, attachments). This module holds the state between them: the
//! objects seen so far, the ids, and what is attached where. A restarted agent opens the pinned maps, rebuilds
//! its ids from them, and its first sync finds nothing to change when nothing changed.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use trellis_ebpf::common::{LbBackend, LbKey, LbService, NodeConfig, V4, V6};
use trellis_ebpf::sync::{FamilyDesired, FamilySync, Stats};
use trellis_ebpf::tables::{KernelLbTables, MapTable};
use trellis_ebpf::{Datapath, PinDir};
use trellis_svc::ids::Endpoint3;
use trellis_svc::{translate, Desired, Endpoint, Ids, NodeContext, ServiceModel};

pub use trellis_ebpf::Error as DatapathError;
type Result<T> = std::result::Result<T, DatapathError>;

/// Services and slices as last seen, by object key (`namespace/name`).
#[derive(Default)]
pub struct ServiceState {
    pub services: BTreeMap<String, ServiceModel>,
    /// slice key -> (owning Service `namespace/name`, its endpoints)
    pub slices: BTreeMap<String, (String, Vec<Endpoint>)>,
}

impl ServiceState {
    /// Endpoints per Service, every slice of it together.
    pub fn endpoints(&self) -> BTreeMap<String, Vec<Endpoint>> {
        let mut out: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        for (owner, eps) in self.slices.values() {
            out.entry(owner.clone()).or_default().extend(eps.iter().cloned());
        }
        out
    }

    /// What the datapath should hold for `node`.
    pub fn desired(&self, node: &NodeContext, ids: &mut Ids) -> Desired {
        let services: Vec<ServiceModel> = self.services.values().cloned().collect();
        translate(&services, &self.endpoints(), node, ids)
    }
}

/// Rebuilds the id tables from installed entries: backends by id, frontends from their slot-0 entries.
pub fn restore_ids(
    be4: &impl MapTable<u32, LbBackend<V4>>,
    be6: &impl MapTable<u32, LbBackend<V6>>,
    svc4: &impl MapTable<LbKey<V4>, LbService>,
    svc6: &impl MapTable<LbKey<V6>, LbService>,
) -> Result<Ids> {
    let mut backends: Vec<(Endpoint3, u32)> = Vec::new();
    for (id, b) in be4.entries()? {
        backends.push(((IpAddr::from(b.address), u16::from_be(b.port), b.proto), id));
    }
    for (id, b) in be6.entries()? {
        backends.push(((IpAddr::from(b.address), u16::from_be(b.port), b.proto), id));
    }
    let mut frontends: Vec<(Endpoint3, u32)> = Vec::new();
    for (k, v) in svc4.entries()?.into_iter().filter(|(k, _)| k.backend_slot == 0) {
        frontends.push(((IpAddr::from(k.address), u16::from_be(k.dport), k.proto), v.rev_nat_id));
    }
    for (k, v) in svc6.entries()?.into_iter().filter(|(k, _)| k.backend_slot == 0) {
        frontends.push(((IpAddr::from(k.address), u16::from_be(k.dport), k.proto), v.rev_nat_id));
    }
    Ok(Ids::restore(backends, frontends))
}

/// The node's service proxy over the real datapath.
pub struct ServiceProxy {
    pub datapath: Datapath,
    tables: KernelLbTables,
    sync: (FamilySync<V4>, FamilySync<V6>),
    pub ids: Ids,
    pub node: NodeContext,
    pub state: ServiceState,
    /// Host veths the pod programs are attached to.
    attached: BTreeSet<String>,
    /// Frontends refused because another Service holds them (from the last sync).
    pub conflicts: Vec<String>,
}

impl ServiceProxy {
    /// Loads the programs with the maps pinned in `pins` (adopting what is there) and restores the ids.
    pub fn open(pins: PinDir, node: NodeContext) -> Result<ServiceProxy> {
        let datapath = Datapath::load(pins.clone())?;
        let tables = KernelLbTables::open(&pins)?;
        let ids = restore_ids(&tables.be4, &tables.be6, &tables.svc4, &tables.svc6)?;
        Ok(ServiceProxy {
            datapath,
            tables,
            sync: Default::default(),
            ids,
            node,
            state: ServiceState::default(),
            attached: BTreeSet::new(),
            conflicts: Vec::new(),
        })
    }

    /// A Service changed (`None`: deleted, or not one the proxy serves).
    pub fn set_service(&mut self, key: &str, svc: Option<ServiceModel>) {
        match svc {
            Some(s) => self.state.services.insert(key.to_string(), s),
            None => self.state.services.remove(key),
        };
    }

    /// An EndpointSlice changed (`None`: deleted).
    pub fn set_slice(&mut self, key: &str, slice: Option<(String, Vec<Endpoint>)>) {
        match slice {
            Some(s) => self.state.slices.insert(key.to_string(), s),
            None => self.state.slices.remove(key),
        };
    }

    /// Translates the current state and writes the difference into the maps.
    pub fn sync(&mut self) -> Result<Stats> {
        let d = self.state.desired(&self.node, &mut self.ids);
        self.conflicts = d.conflicts.clone();
        let v4 = FamilyDesired { services: &d.v4.services, backends: &d.v4.backends, rev_nat: &d.v4.rev_nat };
        let v6 = FamilyDesired { services: &d.v6.services, backends: &d.v6.backends, rev_nat: &d.v6.rev_nat };
        self.tables.sync(&mut self.sync, &v4, &v6)
    }

    /// Attaches the pod programs to every host veth in `veths` not attached yet (in the calling thread's network
    /// namespace), and forgets the ones that are gone. Returns how many were attached now.
    pub fn ensure_pods_attached(&mut self, veths: &[String]) -> Result<usize> {
        let now: BTreeSet<String> = veths.iter().cloned().collect();
        let mut n = 0;
        for v in now.difference(&self.attached.clone()) {
            self.datapath.ensure_pod_attached(v)?;
            self.attached.insert(v.clone());
            n += 1;
        }
        // A deleted veth took its TCX links with it; drop their pins too.
        for gone in self.attached.difference(&now).cloned().collect::<Vec<_>>() {
            self.datapath.detach_pod(&gone)?;
            self.attached.remove(&gone);
        }
        Ok(n)
    }

    /// The uplink program and the node's SNAT addresses.
    pub fn ensure_uplink(
        &mut self,
        ifname: &str,
        ifindex: u32,
        ip4: Option<[u8; 4]>,
        ip6: Option<[u8; 16]>,
    ) -> Result<()> {
        self.datapath.ensure_uplink_attached(ifname)?;
        self.datapath.set_node_config(&NodeConfig {
            node_ip4: ip4.unwrap_or_default(),
            node_ip6: ip6.unwrap_or_default(),
            uplink_ifindex: ifindex,
            flags: 0,
        })
    }

    /// Socket-level load balancing for every process in `cgroup` (v2) and below.
    pub fn ensure_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        self.datapath.ensure_cgroup_attached(cgroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_ebpf::tables::MemTable;
    use trellis_svc::model;

    #[test]
    fn ids_restored_from_installed_entries_reproduce_them() {
        // Translate once, "install" into memory tables, restore ids from them, translate again: same entries.
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["10.244.0.5"]}, {"addresses": ["10.244.1.5"]}]
        }))
        .unwrap();
        let mut st = ServiceState::default();
        st.services.insert("default/web".into(), model::service(&svc).unwrap().unwrap());
        st.slices.insert("default/web-1".into(), ("default/web".into(), model::endpoints(&slice).unwrap()));
        let node = NodeContext { name: "n1".into(), node_port_addresses: vec![] };
        // Ids from an earlier life, far from 1, so a fresh allocator could not guess them.
        let mut ids = Ids::restore(
            [(("10.244.1.5".parse().unwrap(), 8080, 6), 900)],
            [(("10.96.0.10".parse().unwrap(), 80, 6), 77)],
        );
        let first = st.desired(&node, &mut ids);
        let mut be4 = MemTable::default();
        let mut svc4 = MemTable::default();
        for (k, v) in &first.v4.backends {
            be4.put(k, v).unwrap();
        }
        for (k, v) in &first.v4.services {
            svc4.put(k, v).unwrap();
        }
        let (be6, svc6) = (MemTable::default(), MemTable::default());
        let mut restored = restore_ids(&be4, &be6, &svc4, &svc6).unwrap();
        assert_eq!(st.desired(&node, &mut restored), first);
        assert_eq!(first.v4.rev_nat.keys().copied().collect::<Vec<_>>(), vec![77]);
    }
}
