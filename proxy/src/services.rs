//! The service proxy: Services and EndpointSlices in, the node's eBPF datapath programmed to match.
//!
//! The pure half is the `trellis-svc` crate (model, ids, translation); the kernel half is `trellis-ebpf`
//! (maps behind `MapTable`, the `sync` reconciler, attachments). This module holds the state between them: the
//! objects seen so far, the ids, and what is attached where. A restarted agent opens the pinned maps, rebuilds
//! its ids from them, and its first sync finds nothing to change when nothing changed.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;

use trellis_ebpf::common::{fwd_flags, FwdConfig, LbBackend, LbKey, LbService, NodeConfig, Prefix, V4, V6};
use trellis_ebpf::sync::{FamilyChanged, FamilyDesired, FamilySync, Stats};
use trellis_ebpf::tables::{KernelLbTables, LbTables, MapTable};
use trellis_ebpf::{Datapath, MapSizes, PinDir};
use trellis_svc::ids::{Endpoint3, Hasher};
use trellis_svc::{translate, Desired, Endpoint, Ids, NodeContext, ServiceModel, Translator};

use crate::model::{ServiceUpdate, SliceInfo, SvcChange};

pub use trellis_ebpf::Error as DatapathError;
type Result<T> = std::result::Result<T, DatapathError>;

/// Services and slices as last seen, by object key (`namespace/name`), with the slices of each Service indexed.
#[derive(Default)]
pub struct ServiceState {
    /// Hashed: at 100k Services, feeding every one of them looks each up (no order is needed here).
    pub services: HashMap<String, ServiceModel, Hasher>,
    /// slice key -> (owning Service `namespace/name`, its endpoints); changed only through `apply`, which keeps
    /// `by_owner` in step.
    slices: HashMap<String, SliceInfo, Hasher>,
    /// Service `namespace/name` -> keys of its slices.
    by_owner: HashMap<String, BTreeSet<String>, Hasher>,
}

impl ServiceState {
    /// Folds one change in; returns the Services whose translation it may change (a slice moving between
    /// Services touches both).
    pub fn apply(&mut self, change: SvcChange) -> Vec<String> {
        match change {
            SvcChange::Service(key, svc) => {
                match svc {
                    Some(s) => self.services.insert(key.clone(), s),
                    None => self.services.remove(&key),
                };
                vec![key]
            }
            SvcChange::Slice(key, slice) => {
                let mut touched = Vec::new();
                if let Some((owner, _)) = self.slices.remove(&key) {
                    if let Some(set) = self.by_owner.get_mut(&owner) {
                        set.remove(&key);
                        if set.is_empty() {
                            self.by_owner.remove(&owner);
                        }
                    }
                    touched.push(owner);
                }
                if let Some((owner, eps)) = slice {
                    self.by_owner.entry(owner.clone()).or_default().insert(key.clone());
                    if !touched.contains(&owner) {
                        touched.push(owner.clone());
                    }
                    self.slices.insert(key, (owner, eps));
                }
                touched
            }
        }
    }

    /// Every endpoint of Service `id`, all its slices together.
    pub fn endpoints_of(&self, id: &str) -> Vec<Endpoint> {
        let keys = self.by_owner.get(id).into_iter().flatten();
        keys.filter_map(|k| self.slices.get(k)).flat_map(|(_, eps)| eps.iter().cloned()).collect()
    }

    /// Endpoints per Service, every slice of it together.
    pub fn endpoints(&self) -> BTreeMap<String, Vec<Endpoint>> {
        self.by_owner.keys().map(|id| (id.clone(), self.endpoints_of(id))).collect()
    }

    /// What the datapath should hold for `node`, translated from scratch.
    pub fn desired(&self, node: &NodeContext, ids: &mut Ids) -> Desired {
        let services: Vec<ServiceModel> = self.services.values().cloned().collect();
        translate(&services, &self.endpoints(), node, ids)
    }

    /// Feeds Service `id` as it is now into `t`.
    pub fn feed(&self, t: &mut Translator, id: &str) {
        let slices = self.by_owner.get(id).map(|k| k.len()).unwrap_or(0);
        if slices <= 1 {
            // The common case: one slice, no copy of its endpoints.
            let one = self.by_owner.get(id).and_then(|k| k.iter().next()).and_then(|k| self.slices.get(k));
            t.update(id, self.services.get(id), one.map(|(_, eps)| eps.as_slice()).unwrap_or(&[]));
        } else {
            t.update(id, self.services.get(id), &self.endpoints_of(id));
        }
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

/// Keeps a node's Service maps equal to the translation of a [`ServiceState`], a change at a time: the
/// Services fed since the last round are translated again and only the keys that changed are compared and
/// written; a full round (the first, after an error, repair rounds) compares every entry. The agent's path, and
/// what the benchmark times.
pub struct Programmer {
    /// The translation, kept up to date one Service at a time; holds the ids.
    pub translator: Translator,
    sync: (FamilySync<V4>, FamilySync<V6>),
    /// Services changed since they were last fed to the translator.
    pub pending: BTreeSet<String>,
    /// The next round compares every entry, not only the changed ones.
    full: bool,
    /// Started from ids read back from the maps: those no Service claims are freed after the first round.
    restored: bool,
}

impl Programmer {
    /// Starts from the ids the maps' entries carry (see [`restore_ids`]): the first round finds nothing to
    /// change when nothing changed.
    pub fn new(node: NodeContext, ids: Ids) -> Programmer {
        let restored = !ids.backends.is_empty() || !ids.frontends.is_empty();
        Programmer {
            translator: Translator::new(node, ids),
            sync: Default::default(),
            pending: BTreeSet::new(),
            full: true,
            restored,
        }
    }

    /// The node's NodePort addresses (or name) changed: every Service of `state` is translated again.
    /// Returns whether it changed.
    pub fn set_node(&mut self, node: NodeContext, state: &ServiceState) -> bool {
        let t = self.translator.node();
        let changed = t.name != node.name || t.node_port_addresses != node.node_port_addresses;
        if changed {
            self.pending.extend(state.services.keys().cloned());
            self.translator.set_node(node);
        }
        changed
    }

    /// The next round compares every entry with the maps.
    pub fn resync(&mut self) {
        self.full = true;
    }

    /// Translates the pending Services of `state` and writes the difference into `tables` (the kernel's, or the
    /// in-memory and faulty ones of the tests).
    #[allow(clippy::type_complexity)]
    pub fn sync<S4, S6, B4, B6, R4, R6, C4, C6>(
        &mut self,
        state: &ServiceState,
        tables: &mut LbTables<S4, S6, B4, B6, R4, R6, C4, C6>,
    ) -> Result<Stats>
    where
        S4: MapTable<LbKey<V4>, LbService>,
        S6: MapTable<LbKey<V6>, LbService>,
        B4: MapTable<u32, LbBackend<V4>>,
        B6: MapTable<u32, LbBackend<V6>>,
        R4: MapTable<u32, trellis_ebpf::common::RevNat<V4>>,
        R6: MapTable<u32, trellis_ebpf::common::RevNat<V6>>,
        C4: MapTable<trellis_ebpf::common::CtKey<V4>, trellis_ebpf::common::CtEntry<V4>>,
        C6: MapTable<trellis_ebpf::common::CtKey<V6>, trellis_ebpf::common::CtEntry<V6>>,
    {
        let full = std::mem::take(&mut self.full);
        // A full round compares every entry: the changed keys need not be collected.
        self.translator.track(!full);
        let pending = std::mem::take(&mut self.pending);
        self.translator.reserve(pending.len());
        for id in pending {
            state.feed(&mut self.translator, &id);
        }
        if full && std::mem::take(&mut self.restored) {
            // Ids restored from the maps whose entries no Service wants any more.
            self.translator.prune_ids();
        }
        let dirty = self.translator.take_dirty();
        let d = self.translator.desired();
        let v4 = FamilyDesired { services: &d.v4.services, backends: &d.v4.backends, rev_nat: &d.v4.rev_nat };
        let v6 = FamilyDesired { services: &d.v6.services, backends: &d.v6.backends, rev_nat: &d.v6.rev_nat };
        let c4 =
            FamilyChanged { services: &dirty.v4.services, backends: &dirty.v4.backends, rev_nat: &dirty.v4.rev_nat };
        let c6 =
            FamilyChanged { services: &dirty.v6.services, backends: &dirty.v6.backends, rev_nat: &dirty.v6.rev_nat };
        let r = tables.sync(&mut self.sync, &v4, &v6, (!full).then_some((&c4, &c6)));
        if r.is_err() {
            // The changed keys were taken: the next round compares everything.
            self.full = true;
        }
        r
    }

    /// Frontends refused because another Service holds them.
    pub fn conflicts(&self) -> Vec<String> {
        self.translator.conflicts()
    }
}

/// How full each Service map is meant to be: the entries the translation wants over the map's capacity (above 1:
/// the map cannot hold them all). Conntrack, affinity and sockets are LRU: they never fill, so they are not here.
pub fn map_pressure(d: &Desired, sizes: &MapSizes) -> [(&'static str, f64); 6] {
    use trellis_ebpf::common::names::*;
    let p = |len: usize, name: &str| len as f64 / f64::from(sizes.of(name).unwrap_or(1).max(1));
    [
        (LB4_SERVICES, p(d.v4.services.len(), LB4_SERVICES)),
        (LB6_SERVICES, p(d.v6.services.len(), LB6_SERVICES)),
        (LB4_BACKENDS, p(d.v4.backends.len(), LB4_BACKENDS)),
        (LB6_BACKENDS, p(d.v6.backends.len(), LB6_BACKENDS)),
        (LB4_REV_NAT, p(d.v4.rev_nat.len(), LB4_REV_NAT)),
        (LB6_REV_NAT, p(d.v6.rev_nat.len(), LB6_REV_NAT)),
    ]
}

/// The node's service proxy over the real datapath.
pub struct ServiceProxy {
    pub datapath: Datapath,
    pub tables: KernelLbTables,
    pub programmer: Programmer,
    /// Host veths the pod programs are attached to.
    attached: BTreeSet<String>,
    /// The forwarding settings last written (none yet: write them).
    fwd: Option<FwdConfig>,
}

impl ServiceProxy {
    /// Loads the programs with the maps pinned in `pins` (adopting what is there) and restores the ids.
    pub fn open(pins: PinDir, node: NodeContext, sizes: &MapSizes) -> Result<ServiceProxy> {
        let datapath = Datapath::load_sized(pins.clone(), sizes)?;
        let tables = KernelLbTables::open(&pins)?;
        let ids = restore_ids(&tables.be4, &tables.be6, &tables.svc4, &tables.svc6)?;
        Ok(ServiceProxy {
            datapath,
            tables,
            programmer: Programmer::new(node, ids),
            attached: BTreeSet::new(),
            fwd: None,
        })
    }

    /// Translates what changed and writes the difference into the maps.
    pub fn sync(&mut self, state: &ServiceState) -> Result<Stats> {
        self.programmer.sync(state, &mut self.tables)
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

    /// Which pod-to-pod packets the tc programs forward themselves; written only when it changed.
    pub fn ensure_fwd_config(&mut self, cfg: &FwdConfig) -> Result<()> {
        if self.fwd.as_ref() != Some(cfg) {
            self.datapath.set_fwd_config(cfg)?;
            self.fwd = Some(*cfg);
        }
        Ok(())
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
    fn forwarding_is_on_per_family_only_with_both_the_cluster_and_the_node_cidr() {
        let n = |s: &str| -> ipnet::IpNet { s.parse().unwrap() };
        let c = fwd_config(&[n("10.244.0.0/16")], &[n("fd00:10:244:1::/64"), n("10.244.1.0/24")]);
        assert_eq!(c.flags, fwd_flags::V4, "no IPv6 cluster CIDR: IPv6 stays on the stack");
        assert_eq!(c.cluster4, Prefix { net: [10, 244, 0, 0], mask: [255, 255, 0, 0] });
        assert_eq!(c.local4, Prefix { net: [10, 244, 1, 0], mask: [255, 255, 255, 0] });
        assert_eq!(c.cluster6, Prefix::default());
        // A node without its podCIDR would forward its own pods' traffic as another node's: off.
        assert_eq!(fwd_config(&[n("10.244.0.0/16")], &[]), FwdConfig::default());
        assert_eq!(fwd_config(&[], &[n("10.244.1.0/24")]), FwdConfig::default());
        let d =
            fwd_config(&[n("10.244.0.0/16"), n("fd00:10:244::/48")], &[n("10.244.1.0/24"), n("fd00:10:244:1::/64")]);
        assert_eq!(d.flags, fwd_flags::V4 | fwd_flags::V6);
        assert!(d.cluster6.contains(&"fd00:10:244:7::5".parse::<std::net::Ipv6Addr>().unwrap().octets()));
        assert!(d.local6.contains(&"fd00:10:244:1::5".parse::<std::net::Ipv6Addr>().unwrap().octets()));
        assert!(!d.local6.contains(&"fd00:10:244:2::5".parse::<std::net::Ipv6Addr>().unwrap().octets()));
    }

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
        st.apply(SvcChange::Service("default/web".into(), Some(model::service(&svc).unwrap().unwrap())));
        let touched = st.apply(SvcChange::Slice(
            "default/web-1".into(),
            Some(("default/web".into(), model::endpoints(&slice).unwrap())),
        ));
        assert_eq!(touched, vec!["default/web".to_string()]);
        assert_eq!(st.endpoints_of("default/web").len(), 2);
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

/// The forwarding settings for a node whose pods live in `local` (its podCIDRs), in a cluster whose pods live in
/// `cluster`: a family is on only when both are known for it (without its own podCIDR a node would take its
/// own pods for another node's). The first CIDR of each family counts.
pub fn fwd_config(cluster: &[ipnet::IpNet], local: &[ipnet::IpNet]) -> FwdConfig {
    use ipnet::IpNet;
    let mut c = FwdConfig::default();
    let v4 = |nets: &[IpNet]| nets.iter().find_map(|n| if let IpNet::V4(n) = n { Some(*n) } else { None });
    let v6 = |nets: &[IpNet]| nets.iter().find_map(|n| if let IpNet::V6(n) = n { Some(*n) } else { None });
    if let (Some(cl), Some(lo)) = (v4(cluster), v4(local)) {
        c.flags |= fwd_flags::V4;
        c.cluster4 = Prefix::new(cl.addr().octets(), cl.prefix_len());
        c.local4 = Prefix::new(lo.addr().octets(), lo.prefix_len());
    }
    if let (Some(cl), Some(lo)) = (v6(cluster), v6(local)) {
        c.flags |= fwd_flags::V6;
        c.cluster6 = Prefix::new(cl.addr().octets(), cl.prefix_len());
        c.local6 = Prefix::new(lo.addr().octets(), lo.prefix_len());
    }
    c
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
    /// Forward pod-to-pod traffic inside these cluster CIDRs in eBPF (see [`fwd_config`]); empty: off.
    pub forward_cidrs: Vec<ipnet::IpNet>,
    /// The overlay's device (VXLAN), whose decapsulated packets are forwarded to pods too; none in host-gw mode.
    pub overlay_device: Option<String>,
    pub repair_interval: std::time::Duration,
    /// Capacity of the pinned maps (`--bpf-*-map-max`).
    pub map_sizes: MapSizes,
}

/// The service proxy's worker: one round per burst of updates, and a repair round (attachments, every entry
/// compared with the maps) every `repair_interval`. Runs on its own thread, in the node's network namespace.
pub struct ServiceWorker {
    cfg: ServicesConfig,
    proxy: Option<ServiceProxy>,
    /// The Services and slices seen so far (kept apart from the proxy: a reopened proxy is fed them again).
    state: ServiceState,
    cluster: std::sync::Arc<crate::model::Cluster>,
    metrics: crate::metrics::Metrics,
    last_error: Option<String>,
}

impl ServiceWorker {
    pub fn new(cfg: ServicesConfig, metrics: crate::metrics::Metrics) -> Self {
        ServiceWorker {
            cfg,
            proxy: None,
            state: ServiceState::default(),
            cluster: Default::default(),
            metrics,
            last_error: None,
        }
    }

    fn report(&mut self, what: &str, e: &dyn std::fmt::Display) {
        let msg = format!("{what}: {e}");
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::error!("service proxy: {msg}");
            self.last_error = Some(msg);
        }
    }

    /// Folds a burst of updates in; true when it says the interfaces changed.
    pub fn take(&mut self, burst: Vec<ServiceUpdate>) -> bool {
        let mut links = false;
        for u in burst {
            match u {
                ServiceUpdate::Objects { cluster, changes } => {
                    self.cluster = cluster;
                    for c in changes {
                        let touched = self.state.apply(c);
                        if let Some(p) = self.proxy.as_mut() {
                            p.programmer.pending.extend(touched);
                        }
                    }
                }
                ServiceUpdate::Links => links = true,
            }
        }
        links
    }

    /// One round; false when something failed (the caller retries sooner). `repair`: also compare every entry
    /// with the maps; `links`: interfaces changed. Attachments are checked on either, and when the node changed.
    pub fn round(&mut self, repair: bool, links: bool) -> bool {
        use crate::metrics as m;
        let cluster = self.cluster.clone();
        let mut repair = repair;
        if self.proxy.is_none() {
            let node = NodeContext { name: self.cfg.node_name.clone(), node_port_addresses: vec![] };
            match ServiceProxy::open(PinDir::at(&self.cfg.pins), node, &self.cfg.map_sizes) {
                Ok(mut p) => {
                    tracing::info!(pins = %self.cfg.pins.display(), sizes = ?self.cfg.map_sizes, "eBPF datapath loaded");
                    p.programmer.pending.extend(self.state.services.keys().cloned());
                    self.proxy = Some(p);
                    repair = true;
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
        let node_ips: Vec<IpAddr> = me.map(|n| n.internal_ips.clone()).unwrap_or_default();
        let pod_cidrs: Vec<ipnet::IpNet> = me.map(|n| n.pod_cidrs.clone()).unwrap_or_default();
        let addrs: Vec<IpAddr> = node_ips
            .iter()
            .copied()
            .filter(|ip| self.cfg.node_port_cidrs.is_empty() || self.cfg.node_port_cidrs.iter().any(|c| c.contains(ip)))
            .collect();
        let node = NodeContext { name: self.cfg.node_name.clone(), node_port_addresses: addrs };
        let node_changed = self.proxy.as_mut().expect("opened above").programmer.set_node(node, &self.state);
        // Attachments: on repair rounds, when the node changed, and when a new pod may have come (its veth).
        if repair || links || node_changed {
            if let Err(e) = self.attach(&node_ips, &pod_cidrs) {
                self.report("attaching the datapath", &e);
                ok = false;
            }
        }
        let proxy = self.proxy.as_mut().expect("opened above");
        // Before the first complete list, a missing Service only means "not listed yet": write nothing (the
        // pinned maps keep serving what the previous agent wrote).
        if !cluster.synced {
            return ok;
        }
        if repair {
            proxy.programmer.resync();
        }
        match proxy.sync(&self.state) {
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
                let full = e.errno() == Some(libc::E2BIG);
                let mut e = e.to_string();
                if full {
                    // A hash map refuses a new key when full: say which flag makes room.
                    e += " (a map is full: raise --bpf-lb-map-max or --bpf-backend-map-max)";
                }
                self.report("writing the Service maps", &e);
                ok = false;
            }
        }
        let proxy = self.proxy.as_ref().expect("opened above");
        self.metrics.set(m::SERVICES, &[], self.state.services.len() as f64);
        for (map, p) in map_pressure(proxy.programmer.translator.desired(), &self.cfg.map_sizes) {
            self.metrics.set(m::DATAPATH_MAP_PRESSURE, &[("map", map)], p);
        }
        let conflicts = proxy.programmer.conflicts();
        if conflicts.len() as f64 != self.metrics.get(m::SERVICE_FRONTEND_CONFLICTS, &[]) {
            for c in &conflicts {
                tracing::warn!("service frontend conflict: {c}");
            }
        }
        self.metrics.set(m::SERVICE_FRONTEND_CONFLICTS, &[], conflicts.len() as f64);
        if repair {
            if let Ok(c) = trellis_ebpf::tables::read_counters(proxy.datapath.pins()) {
                for (i, name) in trellis_ebpf::common::counter::NAMES.iter().enumerate() {
                    self.metrics.set(m::DATAPATH_PACKETS, &[("name", name)], c[i] as f64);
                }
            }
        }
        if ok {
            self.last_error = None;
        }
        ok
    }

    /// Pod veths on the bridge, the uplink, the cgroup: attached (idempotent).
    fn attach(&mut self, node_ips: &[IpAddr], pod_cidrs: &[ipnet::IpNet]) -> std::result::Result<(), String> {
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
        let live: std::collections::HashSet<u32> = links.iter().map(|l| l.index).collect();
        match trellis_ebpf::tables::forget_gone_pod_macs(proxy.datapath.pins(), &live) {
            Ok(n) if n > 0 => tracing::debug!(n, "forgot the MACs of gone pods"),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
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
        if let Some(dev) = self.cfg.overlay_device.as_ref().filter(|_| !self.cfg.forward_cidrs.is_empty()) {
            // The overlay worker makes the device; until it exists there is nothing to attach to.
            if links.iter().any(|l| &l.name == dev) {
                proxy.datapath.ensure_overlay_attached(dev).map_err(|e| e.to_string())?;
                self.metrics.set(m::DATAPATH_ATTACHED, &[("kind", "overlay")], 1.0);
            }
        }
        let fwd = fwd_config(&self.cfg.forward_cidrs, pod_cidrs);
        proxy.ensure_fwd_config(&fwd).map_err(|e| e.to_string())?;
        for (family, bit) in [("ipv4", fwd_flags::V4), ("ipv6", fwd_flags::V6)] {
            self.metrics.set(m::DATAPATH_FORWARDING, &[("family", family)], f64::from(u8::from(fwd.flags & bit != 0)));
        }
        if let Some(cg) = &self.cfg.cgroup {
            proxy.ensure_cgroup(cg).map_err(|e| e.to_string())?;
            self.metrics.set(m::DATAPATH_ATTACHED, &[("kind", "cgroup")], 1.0);
        }
        Ok(())
    }
}

/// Runs the service worker on the current thread until the sender is dropped (see `agent::update_loop`).
/// A panic inside a round (a bug, or a library's) is caught, logged and counted, and the datapath reopened on the
/// next round: the agent keeps running, and the pinned maps keep serving meanwhile.
pub fn services_loop(mut w: ServiceWorker, rx: std::sync::mpsc::Receiver<ServiceUpdate>) {
    let repair = w.cfg.repair_interval;
    crate::agent::update_loop(repair, rx, |burst| {
        let is_repair = burst.is_empty();
        let links = w.take(burst);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.round(is_repair, links))) {
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

/// Sends [`ServiceUpdate::Links`] whenever a network interface of this netns appears, goes or changes (rtnetlink's
/// link group), so a new pod's veth gets the pod programs at once rather than at the next repair round. Blocks;
/// returns when the receiver is gone or the socket fails.
pub fn watch_links(tx: std::sync::mpsc::Sender<ServiceUpdate>) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket calls on a socket this function owns; `buf` outlives every recv.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = libc::RTMGRP_LINK as u32;
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // Events were lost (a burst): still worth a round.
                Some(libc::ENOBUFS) => {}
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if tx.send(ServiceUpdate::Links).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    fn ep(ip: &str) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            node: None,
            ready: true,
            serving: true,
            terminating: false,
            ports: Default::default(),
        }
    }

    #[test]
    fn a_slice_moving_between_services_touches_both_and_endpoints_follow() {
        let mut st = ServiceState::default();
        assert_eq!(st.apply(SvcChange::Slice("ns/a-1".into(), Some(("ns/a".into(), vec![ep("10.0.0.1")])))), ["ns/a"]);
        st.apply(SvcChange::Slice("ns/a-2".into(), Some(("ns/a".into(), vec![ep("10.0.0.2")]))));
        assert_eq!(st.endpoints_of("ns/a").len(), 2);
        // The slice's owner label changes: both Services are touched.
        let touched = st.apply(SvcChange::Slice("ns/a-2".into(), Some(("ns/b".into(), vec![ep("10.0.0.2")]))));
        assert_eq!(touched, ["ns/a", "ns/b"]);
        assert_eq!(st.endpoints_of("ns/a").len(), 1);
        assert_eq!(st.endpoints_of("ns/b").len(), 1);
        assert_eq!(st.apply(SvcChange::Slice("ns/a-1".into(), None)), ["ns/a"]);
        assert!(st.endpoints_of("ns/a").is_empty());
        assert_eq!(st.endpoints().keys().collect::<Vec<_>>(), ["ns/b"]);
        assert!(st.apply(SvcChange::Slice("ns/gone".into(), None)).is_empty());
    }
}

#[cfg(test)]
mod programmer_tests {
    //! The agent's incremental path against in-memory maps, and against maps that fail: whatever step fails, the
    //! next rounds converge on exactly what a translation from scratch gives.
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use trellis_ebpf::common::{CtEntry, CtKey, RevNat};
    use trellis_ebpf::tables::{FaultyTable, MemTable};
    use trellis_svc::Proto;
    use trellis_test_support::Faults;

    type F<K, V> = FaultyTable<MemTable<K, V>>;
    type Tables = LbTables<
        F<LbKey<V4>, LbService>,
        MemTable<LbKey<V6>, LbService>,
        F<u32, LbBackend<V4>>,
        MemTable<u32, LbBackend<V6>>,
        F<u32, RevNat<V4>>,
        MemTable<u32, RevNat<V6>>,
        MemTable<CtKey<V4>, CtEntry<V4>>,
        MemTable<CtKey<V6>, CtEntry<V6>>,
    >;

    fn tables(faults: &Rc<RefCell<Faults>>) -> Tables {
        let f = |name| FaultyTable::new(MemTable::default(), name, faults.clone());
        LbTables {
            svc4: f("svc4"),
            svc6: MemTable::default(),
            be4: FaultyTable::new(MemTable::default(), "be4", faults.clone()),
            be6: MemTable::default(),
            rnat4: FaultyTable::new(MemTable::default(), "rnat4", faults.clone()),
            rnat6: MemTable::default(),
            ct4: MemTable::default(),
            ct6: MemTable::default(),
        }
    }

    fn node() -> NodeContext {
        NodeContext { name: "n1".into(), node_port_addresses: vec!["192.168.1.1".parse().unwrap()] }
    }

    fn svc(i: u8, node_port: bool) -> SvcChange {
        let mut s = ServiceModel::cluster_ip("ns", &format!("s{i}"), IpAddr::from([10, 96, 0, i % 4]), 80);
        if node_port {
            s.ports[0].node_port = Some(30000 + i as u16);
        }
        SvcChange::Service(s.id(), Some(s))
    }

    fn slice(i: u8, eps: &[(u8, bool)]) -> SvcChange {
        let eps = eps
            .iter()
            .map(|(last, ready)| Endpoint {
                address: IpAddr::from([10, 244, 0, *last]),
                node: Some(if last % 2 == 0 { "n1" } else { "n2" }.into()),
                ready: *ready,
                serving: *ready,
                terminating: false,
                ports: [((String::new(), Proto::Tcp), 8080)].into(),
            })
            .collect();
        SvcChange::Slice(format!("ns/s{i}-1"), Some((format!("ns/s{i}"), eps)))
    }

    /// Rounds of changes (Services contesting a VIP, backends shared, readiness flips, deletions).
    fn rounds() -> Vec<Vec<SvcChange>> {
        vec![
            vec![svc(1, false), slice(1, &[(1, true), (2, true)]), svc(2, true), slice(2, &[(2, true)])],
            vec![slice(1, &[(1, true), (2, false), (3, true)]), svc(5, false), slice(5, &[(3, true)])],
            vec![SvcChange::Service("ns/s1".into(), None), svc(6, true), slice(6, &[(4, true), (1, true)])],
            vec![SvcChange::Slice("ns/s2-1".into(), None), slice(5, &[]), svc(1, false)],
        ]
    }

    #[test]
    fn map_pressure_is_wanted_entries_over_capacity_per_map() {
        let mut st = ServiceState::default();
        for c in [svc(1, false), slice(1, &[(1, true), (2, true)]), svc(2, true), slice(2, &[(2, true)])] {
            st.apply(c);
        }
        let mut p = Programmer::new(node(), Ids::default());
        p.pending.extend(st.services.keys().cloned());
        let faults = Rc::new(RefCell::new(Faults::default()));
        p.sync(&st, &mut tables(&faults)).unwrap();
        let d = p.translator.desired();
        let sizes = MapSizes { services: 4, backends: 4, ..MapSizes::default() };
        let got: BTreeMap<_, _> = map_pressure(d, &sizes).into_iter().collect();
        use trellis_ebpf::common::names::*;
        assert_eq!(got[LB4_SERVICES], d.v4.services.len() as f64 / 4.0);
        // Over 1 when the map cannot hold what is wanted: s1's slot 0 and two backend slots, s2's ClusterIP and
        // NodePort with a slot 0 and one backend slot each.
        assert!(got[LB4_SERVICES] > 1.0, "{got:?}");
        assert_eq!(got[LB4_BACKENDS], 2.0 / 4.0);
        assert_eq!(got[LB4_REV_NAT], d.v4.rev_nat.len() as f64 / 4.0);
        assert!(got[LB4_REV_NAT] > 0.0);
        assert_eq!((got[LB6_SERVICES], got[LB6_BACKENDS], got[LB6_REV_NAT]), (0.0, 0.0, 0.0));
    }

    #[allow(clippy::type_complexity)]
    fn installed(t: &Tables) -> (Vec<(LbKey<V4>, LbService)>, Vec<(u32, LbBackend<V4>)>, Vec<(u32, RevNat<V4>)>) {
        let s = t.svc4.inner.0.iter().map(|(k, v)| (*k, *v)).collect();
        let b = t.be4.inner.0.iter().map(|(k, v)| (*k, *v)).collect();
        let r = t.rnat4.inner.0.iter().map(|(k, v)| (*k, *v)).collect();
        (s, b, r)
    }

    #[test]
    fn every_round_converges_to_the_translation_from_scratch_even_after_a_failed_write() {
        let mut failed_rounds = 0;
        for nth in 0..=24 {
            let faults = Rc::new(RefCell::new(Faults::none()));
            let mut t = tables(&faults);
            let mut state = ServiceState::default();
            let mut p = Programmer::new(node(), Ids::default());
            for (r, changes) in rounds().into_iter().enumerate() {
                for c in changes {
                    p.pending.extend(state.apply(c));
                }
                if r == 2 && nth > 0 {
                    // Fail the nth map call of this round; the round reports it, the next one repairs.
                    *faults.borrow_mut() = Faults::nth(nth);
                    let failed = p.sync(&state, &mut t).is_err();
                    assert_eq!(failed, faults.borrow().failures == 1, "fault {nth}: an injected failure is reported");
                    failed_rounds += failed as usize;
                    *faults.borrow_mut() = Faults::none();
                }
                p.sync(&state, &mut t).unwrap_or_else(|e| panic!("fault {nth}, round {r}: {e}"));
                let mut ids = p.translator.ids.clone();
                let want = state.desired(&node(), &mut ids);
                let have = installed(&t);
                let ctx = format!("fault {nth}, round {r}");
                assert_eq!(
                    have.0,
                    want.v4.services.into_iter().collect::<BTreeMap<_, _>>().into_iter().collect::<Vec<_>>(),
                    "{ctx}"
                );
                assert_eq!(
                    have.1,
                    want.v4.backends.into_iter().collect::<BTreeMap<_, _>>().into_iter().collect::<Vec<_>>(),
                    "{ctx}"
                );
                assert_eq!(
                    have.2,
                    want.v4.rev_nat.into_iter().collect::<BTreeMap<_, _>>().into_iter().collect::<Vec<_>>(),
                    "{ctx}"
                );
            }
        }
        assert!(failed_rounds >= 8, "only {failed_rounds} rounds had a failure injected");
    }

    #[test]
    fn a_change_after_the_first_round_touches_only_its_entries() {
        let faults = Rc::new(RefCell::new(Faults::none()));
        let mut t = tables(&faults);
        let mut state = ServiceState::default();
        let mut p = Programmer::new(node(), Ids::default());
        for c in rounds().remove(0) {
            p.pending.extend(state.apply(c));
        }
        p.sync(&state, &mut t).unwrap();
        // One endpoint of s1 goes unready: slot 0's count, the last slot and the backend it named.
        p.pending.extend(state.apply(slice(1, &[(1, true), (2, false)])));
        let st = p.sync(&state, &mut t).unwrap();
        assert_eq!((st.puts, st.deletes), (1, 1), "{st:?}");
        // Nothing changed: nothing written.
        p.pending.extend(state.apply(slice(1, &[(1, true), (2, false)])));
        assert_eq!(p.sync(&state, &mut t).unwrap(), Stats::default());
    }
}
