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

/// How the service proxy runs on this node.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    pub node_name: String,
    /// Where the maps and links are pinned (`/sys/fs/bpf/trellis/<node>`).
    pub pins: std::path::PathBuf,
    /// The pods' bridge: its `tr…` ports are pod host veths.
    pub bridge: String,
    /// The uplink (default: the interface holding the node's InternalIP).
    pub uplink: Option<String>,
    /// Socket-level load balancing for this cgroup (v2) and below; none: the tc path only.
    pub cgroup: Option<std::path::PathBuf>,
    /// NodePorts are served on the node's InternalIPs inside these CIDRs (empty: on all of them).
    pub node_port_cidrs: Vec<ipnet::IpNet>,
    pub repair_interval: std::time::Duration,
}

/// The service proxy's worker: one round per cluster snapshot, and a repair round (attachments) every
/// `repair_interval`. Runs on its own thread, in the node's network namespace.
pub struct ServiceWorker {
    cfg: ServicesConfig,
    proxy: Option<ServiceProxy>,
    metrics: crate::metrics::Metrics,
    last_error: Option<String>,
}

impl ServiceWorker {
    pub fn new(cfg: ServicesConfig, metrics: crate::metrics::Metrics) -> Self {
        ServiceWorker { cfg, proxy: None, metrics, last_error: None }
    }

    fn report(&mut self, what: &str, e: &dyn std::fmt::Display) {
        let msg = format!("{what}: {e}");
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::error!("service proxy: {msg}");
            self.last_error = Some(msg);
        }
    }

    /// One round; false when something failed (the caller retries sooner).
    pub fn round(&mut self, cluster: &crate::model::Cluster) -> bool {
        use crate::metrics as m;
        if self.proxy.is_none() {
            let node = NodeContext { name: self.cfg.node_name.clone(), node_port_addresses: vec![] };
            match ServiceProxy::open(PinDir::at(&self.cfg.pins), node) {
                Ok(p) => {
                    tracing::info!(pins = %self.cfg.pins.display(), "eBPF datapath loaded");
                    self.proxy = Some(p);
                }
                Err(e) => {
                    self.metrics.set(m::DATAPATH_UP, &[], 0.0);
                    self.report("loading the eBPF datapath", &e);
                    return false;
                }
            }
        }
        self.metrics.set(m::DATAPATH_UP, &[], 1.0);
        let mut ok = true;
        let me = cluster.nodes.get(&self.cfg.node_name);
        let addrs: Vec<IpAddr> = me
            .map(|n| n.internal_ips.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| self.cfg.node_port_cidrs.is_empty() || self.cfg.node_port_cidrs.iter().any(|c| c.contains(ip)))
            .collect();
        if let Err(e) = self.attach(me.map(|n| n.internal_ips.as_slice()).unwrap_or(&[])) {
            self.report("attaching the datapath", &e);
            ok = false;
        }
        let proxy = self.proxy.as_mut().expect("opened above");
        proxy.node.node_port_addresses = addrs;
        proxy.state.services = cluster.services.clone();
        proxy.state.slices = cluster.slices.clone();
        // Before the first complete list, a missing Service only means "not listed yet": write nothing (the
        // pinned maps keep serving what the previous agent wrote).
        if !cluster.synced {
            return ok;
        }
        match proxy.sync() {
            Ok(st) => {
                self.metrics.inc(m::SERVICE_SYNCS, &[]);
                for (action, n) in [("put", st.puts), ("delete", st.deletes), ("ct_purge", st.ct_purged)] {
                    if n > 0 {
                        self.metrics.add(m::SERVICE_MAP_CHANGES, &[("action", action)], n as f64);
                    }
                }
                if st.puts + st.deletes > 0 {
                    tracing::info!(
                        puts = st.puts,
                        deletes = st.deletes,
                        ct_purged = st.ct_purged,
                        "service maps synced"
                    );
                }
            }
            Err(e) => {
                self.metrics.inc(m::SERVICE_SYNC_ERRORS, &[]);
                let e = e.to_string();
                self.report("writing the Service maps", &e);
                ok = false;
            }
        }
        let proxy = self.proxy.as_ref().expect("opened above");
        self.metrics.set(m::SERVICES, &[], proxy.state.services.len() as f64);
        if proxy.conflicts.len() as f64 != self.metrics.get(m::SERVICE_FRONTEND_CONFLICTS, &[]) {
            for c in &proxy.conflicts {
                tracing::warn!("service frontend conflict: {c}");
            }
        }
        self.metrics.set(m::SERVICE_FRONTEND_CONFLICTS, &[], proxy.conflicts.len() as f64);
        if let Ok(c) = trellis_ebpf::tables::read_counters(proxy.datapath.pins()) {
            for (i, name) in trellis_ebpf::common::counter::NAMES.iter().enumerate() {
                self.metrics.set(m::DATAPATH_PACKETS, &[("name", name)], c[i] as f64);
            }
        }
        if ok {
            self.last_error = None;
        }
        ok
    }

    /// Pod veths on the bridge, the uplink, the cgroup: attached (idempotent).
    fn attach(&mut self, node_ips: &[IpAddr]) -> std::result::Result<(), String> {
        use crate::metrics as m;
        let proxy = self.proxy.as_mut().expect("opened");
        let mut h = trellis_netlink::Handle::new().map_err(|e| e.to_string())?;
        let links = h.links().map_err(|e| e.to_string())?;
        let bridge = links.iter().find(|l| l.name == self.cfg.bridge).map(|l| l.index);
        let veths: Vec<String> = links
            .iter()
            .filter(|l| bridge.is_some() && l.master == bridge && l.name.starts_with("tr"))
            .map(|l| l.name.clone())
            .collect();
        proxy.ensure_pods_attached(&veths).map_err(|e| e.to_string())?;
        self.metrics.set(m::DATAPATH_ATTACHED, &[("kind", "pod")], veths.len() as f64);
        let uplink = match &self.cfg.uplink {
            Some(name) => links.iter().find(|l| &l.name == name),
            None => {
                let addrs = h.addrs(None).map_err(|e| e.to_string())?;
                addrs
                    .iter()
                    .find(|(_, net)| node_ips.contains(&net.addr()))
                    .and_then(|(idx, _)| links.iter().find(|l| l.index == *idx))
            }
        };
        if let Some(up) = uplink {
            let ip4 = node_ips.iter().find_map(|ip| match ip {
                IpAddr::V4(a) => Some(a.octets()),
                _ => None,
            });
            let ip6 = node_ips.iter().find_map(|ip| match ip {
                IpAddr::V6(a) => Some(a.octets()),
                _ => None,
            });
            proxy.ensure_uplink(&up.name, up.index, ip4, ip6).map_err(|e| e.to_string())?;
            self.metrics.set(m::DATAPATH_ATTACHED, &[("kind", "uplink")], 1.0);
        }
        if let Some(cg) = &self.cfg.cgroup {
            proxy.ensure_cgroup(cg).map_err(|e| e.to_string())?;
            self.metrics.set(m::DATAPATH_ATTACHED, &[("kind", "cgroup")], 1.0);
        }
        Ok(())
    }
}

/// Runs the service worker on the current thread until the sender is dropped (see `agent::snapshot_loop`).
/// A panic inside a round (a bug, or a library's) is caught, logged and counted, and the datapath reopened on the
/// next round: the agent keeps running, and the pinned maps keep serving meanwhile.
pub fn services_loop(mut w: ServiceWorker, rx: std::sync::mpsc::Receiver<std::sync::Arc<crate::model::Cluster>>) {
    let repair = w.cfg.repair_interval;
    crate::agent::snapshot_loop(repair, rx, |c| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.round(c))) {
            Ok(ok) => ok,
            Err(p) => {
                let what =
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                tracing::error!("service proxy round panicked ({}); reopening the datapath", what.unwrap_or_default());
                w.metrics.inc(crate::metrics::SERVICE_SYNC_ERRORS, &[]);
                w.proxy = None;
                false
            }
        }
    });
}
