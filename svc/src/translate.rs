//! The model in, the maps' entries out. Pure and deterministic: the same model and ids give the same entries.
//!
//! What kube-proxy users rely on, as this module implements it:
//! - Endpoints: ready ones; when none is ready, the serving-and-terminating ones; with `publishNotReadyAddresses`
//!   every endpoint. Ports by (name, protocol) from the EndpointSlice, so named `targetPort`s resolve there.
//! - ClusterIP: all usable endpoints, or with `internalTrafficPolicy: Local` the node's own (none = reject).
//! - NodePort (on every `NodeContext::node_port_addresses` of the Service's families), `externalIPs`, load-balancer IPs: all usable
//!   endpoints; with `externalTrafficPolicy: Local` the node's own for clients from outside (none left = drop,
//!   marked `ETP_LOCAL` with count 0) and all of them for clients inside the node (a second, INTERNAL scope).
//! - A frontend with no usable endpoint at all has count 0 and no `ETP_LOCAL`: the datapath rejects at once.
//! - `sessionAffinity: ClientIP`: the AFFINITY flag and the timeout on the frontend.
//! - Two Services claiming one frontend: the first by namespace/name keeps it, the other's is reported.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use trellis_ebpf_common::{backend_flags, scope, svc_flags, LbBackend, LbKey, LbService, RevNat, V4, V6};

use crate::ids::{Endpoint3, Hasher, Ids};
use crate::model::{Endpoint, PortMapping, ServiceModel};

/// What the translation needs to know about the node it runs for.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    pub name: String,
    /// Addresses NodePorts are served on (the node's addresses, filtered by `nodePortAddresses`).
    pub node_port_addresses: Vec<IpAddr>,
}

/// The entries of one family's maps.
#[derive(Clone, Debug)]
pub struct FamilyMaps<A> {
    // Hashed: 100k Services are 600k entries, and ordered maps' key comparisons were a third of translating them.
    pub services: HashMap<LbKey<A>, LbService, Hasher>,
    pub backends: HashMap<u32, LbBackend<A>, Hasher>,
    pub rev_nat: HashMap<u32, RevNat<A>, Hasher>,
}

impl<A: Eq + std::hash::Hash> PartialEq for FamilyMaps<A> {
    fn eq(&self, o: &Self) -> bool {
        self.services == o.services && self.backends == o.backends && self.rev_nat == o.rev_nat
    }
}
impl<A: Eq + std::hash::Hash> Eq for FamilyMaps<A> {}

impl<A> Default for FamilyMaps<A> {
    fn default() -> Self {
        FamilyMaps { services: HashMap::default(), backends: HashMap::default(), rev_nat: HashMap::default() }
    }
}

/// Every entry the node's datapath should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub v4: FamilyMaps<V4>,
    pub v6: FamilyMaps<V6>,
    /// Frontends claimed by more than one Service: "frontend: kept by A, refused for B".
    pub conflicts: Vec<String>,
}

/// One backend as a frontend uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Be {
    addr: IpAddr,
    port: u16,
    flags: u8,
}

/// The usable backends of one Service port: (all, this node's), each sorted and without duplicates.
fn usable(svc: &ServiceModel, port: &PortMapping, eps: &[Endpoint], node: &str) -> (Vec<Be>, Vec<Be>) {
    // An endpoint's ports are a handful: a scan, with no key to build (and allocate) per endpoint.
    let port_of = |e: &Endpoint| -> Option<u16> {
        e.ports.iter().find(|((name, proto), _)| *proto == port.proto && *name == port.name).map(|(_, p)| *p)
    };
    let any_ready = !svc.publish_not_ready && eps.iter().any(|e| e.ready && port_of(e).is_some());
    let mut all = Vec::with_capacity(eps.len());
    for e in eps {
        let Some(p) = port_of(e) else { continue };
        // Ready ones; when none is, the serving-and-terminating ones; with publishNotReadyAddresses, all.
        let term = if svc.publish_not_ready {
            false
        } else if any_ready {
            if !e.ready {
                continue;
            }
            false
        } else {
            if !(e.serving && e.terminating) {
                continue;
            }
            true
        };
        let is_local = e.node.as_deref() == Some(node);
        let flags = if is_local { backend_flags::LOCAL } else { 0 } | if term { backend_flags::TERMINATING } else { 0 };
        all.push(Be { addr: e.address, port: p, flags });
    }
    all.sort_unstable();
    all.dedup();
    let local = all.iter().filter(|b| b.flags & backend_flags::LOCAL != 0).copied().collect();
    (all, local)
}

/// One frontend as a Service plans it, before ids: what it serves and to whom.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FrontendPlan {
    flags: u16,
    affinity_timeout: u32,
    /// (scope, backends in slot order)
    scopes: Vec<(u8, Vec<Be>)>,
    proto_name: &'static str,
}

type Plan = Vec<(Endpoint3, Arc<FrontendPlan>)>;

fn find<'a>(plan: &'a Plan, fe: &Endpoint3) -> Option<&'a Arc<FrontendPlan>> {
    plan.iter().find(|(k, _)| k == fe).map(|(_, p)| p)
}

/// Every frontend one Service claims, in the order ports and addresses come (ids are allocated in that order).
fn plan_service(svc: &ServiceModel, eps: &[Endpoint], node: &NodeContext) -> Plan {
    let mut out: Plan = Vec::new();
    for port in &svc.ports {
        let (all, local) = usable(svc, port, eps, &node.name);
        let proto = port.proto.number();
        let mut frontends: Vec<(IpAddr, u16, u16, bool)> = Vec::new(); // addr, port, kind flag, external
        for ip in &svc.cluster_ips {
            frontends.push((*ip, port.port, svc_flags::CLUSTER_IP, false));
        }
        if let Some(np) = port.node_port {
            // A NodePort is served in the Service's own families (those of its ClusterIPs).
            let families: Vec<bool> = svc.cluster_ips.iter().map(IpAddr::is_ipv4).collect();
            let in_family = |ip: &&IpAddr| families.is_empty() || families.contains(&ip.is_ipv4());
            for ip in node.node_port_addresses.iter().filter(in_family) {
                frontends.push((*ip, np, svc_flags::NODE_PORT, true));
            }
        }
        for ip in &svc.external_ips {
            frontends.push((*ip, port.port, svc_flags::EXTERNAL_IP, true));
        }
        for ip in &svc.lb_ips {
            frontends.push((*ip, port.port, svc_flags::LOAD_BALANCER, true));
        }
        for (addr, fport, kind, external) in frontends {
            let fam =
                |v: &[Be]| -> Vec<Be> { v.iter().filter(|b| b.addr.is_ipv4() == addr.is_ipv4()).copied().collect() };
            let (all, local) = (fam(&all), fam(&local));
            let mut flags = kind;
            let mut scopes: Vec<(u8, Vec<Be>)> = Vec::new();
            if !external {
                if svc.itp_local {
                    flags |= svc_flags::ITP_LOCAL;
                    scopes.push((scope::EXTERNAL, local));
                } else {
                    scopes.push((scope::EXTERNAL, all));
                }
            } else if svc.etp_local && !all.is_empty() {
                flags |= svc_flags::ETP_LOCAL | svc_flags::TWO_SCOPES;
                scopes.push((scope::EXTERNAL, local));
                scopes.push((scope::INTERNAL, all));
            } else {
                scopes.push((scope::EXTERNAL, all));
            }
            if svc.affinity.is_some() {
                flags |= svc_flags::AFFINITY;
            }
            let plan = FrontendPlan {
                flags,
                affinity_timeout: svc.affinity.unwrap_or(0),
                scopes,
                proto_name: port.proto.name(),
            };
            // The same frontend twice in one Service (two ports alike): the first wins.
            if find(&out, &(addr, fport, proto)).is_none() {
                out.push(((addr, fport, proto), Arc::new(plan)));
            }
        }
    }
    out
}

/// The flags a backend's entry carries: those of every frontend slot that uses it (`refs` counts them by flags).
fn union(refs: &[u32; 4]) -> u8 {
    (0..4u8).filter(|f| refs[*f as usize] > 0).fold(0, |a, f| a | f)
}

/// Map keys touched since the last [`Translator::take_dirty`]: the only ones a reconciler needs to look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyKeys<A> {
    pub services: BTreeSet<LbKey<A>>,
    pub backends: BTreeSet<u32>,
    pub rev_nat: BTreeSet<u32>,
}

impl<A> Default for DirtyKeys<A> {
    fn default() -> Self {
        DirtyKeys { services: BTreeSet::new(), backends: BTreeSet::new(), rev_nat: BTreeSet::new() }
    }
}

impl<A> DirtyKeys<A> {
    pub fn len(&self) -> usize {
        self.services.len() + self.backends.len() + self.rev_nat.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    pub v4: DirtyKeys<V4>,
    pub v6: DirtyKeys<V6>,
    /// Not recording (see [`Translator::track`]).
    off: bool,
}

impl Dirty {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The translation kept up to date one Service at a time: a change costs that Service's entries, not the whole
/// cluster's. It holds every Service's plan, who claims each frontend (the first by `namespace/name` owns it), the
/// entries the owners' plans give, how many frontends use each backend (its id lives while one does), and which
/// keys changed since the reconciler last looked.
#[derive(Clone, Debug, Default)]
pub struct Translator {
    node: NodeContext,
    pub ids: Ids,
    plans: HashMap<Arc<str>, Plan, Hasher>,
    /// Frontend -> the Services claiming it, sorted (the first owns it).
    claims: HashMap<Endpoint3, Vec<Arc<str>>, Hasher>,
    /// Frontends materialized in `desired`: (owner, the plan its entries came from).
    installed: HashMap<Endpoint3, (Arc<str>, Arc<FrontendPlan>), Hasher>,
    /// Backend -> how many frontend slots use it, by the flags each gives it (indexed by the flags, which are
    /// two bits); its entry carries their union, so it does not depend on the order Services come in.
    backend_refs: HashMap<Endpoint3, [u32; 4], Hasher>,
    desired: Desired,
    dirty: Dirty,
}

impl Translator {
    /// Starts from `ids` (restored from the pinned maps, or empty), so the entries come out with the ids the
    /// datapath already uses.
    pub fn new(node: NodeContext, ids: Ids) -> Translator {
        Translator { node, ids, ..Default::default() }
    }

    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// The node's name or NodePort addresses changed. Plans made for the old node stay until each Service is
    /// [`update`](Translator::update)d again: the caller feeds them all.
    pub fn set_node(&mut self, node: NodeContext) {
        self.node = node;
    }

    /// Room for `services` more Services (of a frontend and two backends or so each) without rehashing: feeding
    /// 100k Services into an empty translator otherwise grows every table a dozen times.
    pub fn reserve(&mut self, services: usize) {
        self.plans.reserve(services);
        self.claims.reserve(services);
        self.installed.reserve(services);
        self.backend_refs.reserve(2 * services);
        self.ids.frontends.reserve(services);
        self.ids.backends.reserve(2 * services);
    }

    /// Frees the ids (restored from the maps, or of a Service never fed again) that no installed frontend uses.
    pub fn prune_ids(&mut self) {
        let mut live_be: std::collections::HashSet<Endpoint3, Hasher> = Default::default();
        let mut live_fe: std::collections::HashSet<Endpoint3, Hasher> = Default::default();
        for ((addr, port, proto), (_, plan)) in &self.installed {
            live_fe.insert((*addr, *port, *proto));
            for (_, bes) in &plan.scopes {
                live_be.extend(bes.iter().map(|b| (b.addr, b.port, *proto)));
            }
        }
        self.ids.backends.retain(&live_be);
        self.ids.frontends.retain(&live_fe);
    }

    /// Service `id` (`namespace/name`) is now `svc` with `endpoints` (`None`: gone, or not one we serve).
    pub fn update(&mut self, id: &str, svc: Option<&ServiceModel>, endpoints: &[Endpoint]) {
        let new = svc.map(|s| plan_service(s, endpoints, &self.node)).unwrap_or_default();
        let (key, old) = match self.plans.remove_entry(id) {
            Some((k, p)) => (k, p),
            None => (Arc::from(id), Vec::new()),
        };
        let new_keys: Vec<Endpoint3> = new.iter().map(|(k, _)| *k).collect();
        if !new.is_empty() {
            self.plans.insert(key.clone(), new);
        }
        let gone: Vec<Endpoint3> = old.iter().map(|(k, _)| *k).filter(|fe| !new_keys.contains(fe)).collect();
        for fe in &gone {
            if let Some(c) = self.claims.get_mut(fe) {
                c.retain(|x| **x != *id);
                if c.is_empty() {
                    self.claims.remove(fe);
                }
            }
        }
        for fe in &new_keys {
            let c = self.claims.entry(*fe).or_default();
            if let Err(at) = c.binary_search(&key) {
                c.insert(at, key.clone());
            }
        }
        // In plan order, so a Service planned from scratch gets its ids in the order of its ports and addresses.
        for fe in new_keys.into_iter().chain(gone) {
            self.settle(fe);
        }
    }

    /// Makes frontend `fe`'s entries those of its owner's plan (or none).
    fn settle(&mut self, fe: Endpoint3) {
        let want = self
            .claims
            .get(&fe)
            .and_then(|c| c.first())
            .and_then(|owner| self.plans.get(owner).and_then(|p| find(p, &fe)).map(|p| (owner.clone(), p.clone())));
        let have = self.installed.get(&fe);
        if have == want.as_ref() {
            return;
        }
        let old = self.installed.remove(&fe);
        // New entries first (ids of backends that stay are kept by their references), then the old ones' rest.
        let new = want.as_ref().map(|(_, plan)| plan.clone());
        if let Some((owner, plan)) = want {
            self.materialize(fe, &plan);
            self.installed.insert(fe, (owner, plan));
        }
        if let Some((_, plan)) = old {
            self.unmaterialize(fe, &plan, new.as_deref());
        }
    }

    fn materialize(&mut self, fe: Endpoint3, plan: &FrontendPlan) {
        let (addr, fport, proto) = fe;
        let rev = self.ids.frontends.get_or_alloc(fe);
        for (sc, bes) in &plan.scopes {
            let mut slot0 =
                LbService { rev_nat_id: rev, count: bes.len() as u16, flags: plan.flags, ..Default::default() };
            slot0.affinity_timeout = plan.affinity_timeout;
            let mut slots = Vec::with_capacity(bes.len());
            for be in bes {
                let key: Endpoint3 = (be.addr, be.port, proto);
                let id = self.ids.backends.get_or_alloc(key);
                let refs = self.backend_refs.entry(key).or_default();
                refs[be.flags as usize & 3] += 1;
                let flags = union(refs);
                slots.push(id);
                put_backend(&mut self.desired, &mut self.dirty, id, &Be { flags, ..*be }, proto);
            }
            put_frontend(&mut self.desired, &mut self.dirty, addr, fport, proto, *sc, slot0, &slots);
        }
        put_rev_nat(&mut self.desired, &mut self.dirty, rev, addr, fport);
    }

    /// Drops what `plan` put for `fe` except the slots `new` (the plan replacing it) puts too, releasing backends no
    /// frontend uses any more; the frontend's own id only when nothing replaced it.
    fn unmaterialize(&mut self, fe: Endpoint3, plan: &FrontendPlan, new: Option<&FrontendPlan>) {
        // The new plan's slots: 0..=count in each of its scopes.
        let kept =
            |sc: u8, s: u16| new.is_some_and(|n| n.scopes.iter().any(|(x, b)| *x == sc && s as usize <= b.len()));
        let (addr, fport, proto) = fe;
        for (sc, bes) in &plan.scopes {
            for s in 0..=bes.len() as u16 {
                if !kept(*sc, s) {
                    remove_frontend_slot(&mut self.desired, &mut self.dirty, addr, fport, proto, *sc, s);
                }
            }
            for be in bes {
                let key: Endpoint3 = (be.addr, be.port, proto);
                let Some(refs) = self.backend_refs.get_mut(&key) else { continue };
                let n = &mut refs[be.flags as usize & 3];
                *n = n.saturating_sub(1);
                let Some(id) = self.ids.backends.get(&key) else { continue };
                if refs.iter().all(|n| *n == 0) {
                    self.backend_refs.remove(&key);
                    remove_backend(&mut self.desired, &mut self.dirty, id, addr.is_ipv4());
                    self.ids.backends.release(&key);
                } else {
                    let flags = union(refs);
                    put_backend(&mut self.desired, &mut self.dirty, id, &Be { flags, ..*be }, proto);
                }
            }
        }
        if new.is_none() {
            if let Some(rev) = self.ids.frontends.get(&fe) {
                remove_rev_nat(&mut self.desired, &mut self.dirty, rev, addr.is_ipv4());
            }
            self.ids.frontends.release(&fe);
        }
    }

    /// Every entry the datapath should hold now.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The keys changed since the last call (all of them after [`Translator::new`]).
    pub fn take_dirty(&mut self) -> Dirty {
        let off = self.dirty.off;
        let mut d = std::mem::take(&mut self.dirty);
        self.dirty.off = off;
        d.off = false;
        d
    }

    /// Whether changed keys are recorded (on by default). A caller about to compare every entry anyway (a
    /// first or full round) turns it off: at 100k Services that is 600k keys not collected for nothing.
    pub fn track(&mut self, on: bool) {
        self.dirty.off = !on;
    }

    /// Frontends claimed by more than one Service: "frontend: kept by A, refused for B".
    pub fn conflicts(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut contested: Vec<_> = self.claims.iter().filter(|(_, c)| c.len() > 1).collect();
        contested.sort();
        for (fe, claimants) in contested {
            let (addr, port, _) = fe;
            let mut it = claimants.iter();
            let owner = it.next().expect("more than one");
            for loser in it {
                let proto = self.plans.get(loser).and_then(|p| find(p, fe)).map_or("?", |p| p.proto_name);
                out.push(format!("{addr}:{port}/{proto}: kept by {owner}, refused for {loser}"));
            }
        }
        out
    }
}

/// Translates every Service from scratch (what [`Translator`] keeps up to date one change at a time).
/// `endpoints` holds each Service's endpoints by `namespace/name`; ids of entries that are gone are freed.
pub fn translate(
    services: &[ServiceModel],
    endpoints: &BTreeMap<String, Vec<Endpoint>>,
    node: &NodeContext,
    ids: &mut Ids,
) -> Desired {
    let mut t = Translator::new(node.clone(), std::mem::take(ids));
    let mut sorted: Vec<&ServiceModel> = services.iter().collect();
    sorted.sort_by_key(|s| s.id());
    let none = Vec::new();
    for svc in sorted {
        let id = svc.id();
        t.update(&id, Some(svc), endpoints.get(&id).unwrap_or(&none));
    }
    t.prune_ids();
    let mut out = std::mem::take(&mut t.desired);
    out.conflicts = t.conflicts();
    *ids = t.ids;
    out
}

fn lb_key<A>(address: A, port: u16, proto: u8, scope: u8, slot: u16) -> LbKey<A> {
    LbKey { address, dport: port.to_be(), backend_slot: slot, proto, scope, _pad: [0; 2] }
}

#[allow(clippy::too_many_arguments)]
fn put_frontend(
    out: &mut Desired,
    dirty: &mut Dirty,
    addr: IpAddr,
    port: u16,
    proto: u8,
    sc: u8,
    slot0: LbService,
    slots: &[u32],
) {
    let entries = std::iter::once((0u16, slot0)).chain(slots.iter().enumerate().map(|(i, id)| {
        (i as u16 + 1, LbService { backend_id: *id, rev_nat_id: slot0.rev_nat_id, ..Default::default() })
    }));
    for (s, v) in entries {
        match addr {
            IpAddr::V4(a) => {
                let k = lb_key(a.octets(), port, proto, sc, s);
                out.v4.services.insert(k, v);
                if !dirty.off {
                    dirty.v4.services.insert(k);
                }
            }
            IpAddr::V6(a) => {
                let k = lb_key(a.octets(), port, proto, sc, s);
                out.v6.services.insert(k, v);
                if !dirty.off {
                    dirty.v6.services.insert(k);
                }
            }
        }
    }
}

fn remove_frontend_slot(out: &mut Desired, dirty: &mut Dirty, addr: IpAddr, port: u16, proto: u8, sc: u8, s: u16) {
    match addr {
        IpAddr::V4(a) => {
            let k = lb_key(a.octets(), port, proto, sc, s);
            out.v4.services.remove(&k);
            if !dirty.off {
                dirty.v4.services.insert(k);
            }
        }
        IpAddr::V6(a) => {
            let k = lb_key(a.octets(), port, proto, sc, s);
            out.v6.services.remove(&k);
            if !dirty.off {
                dirty.v6.services.insert(k);
            }
        }
    }
}

fn put_backend(out: &mut Desired, dirty: &mut Dirty, id: u32, be: &Be, proto: u8) {
    match be.addr {
        IpAddr::V4(a) => {
            out.v4
                .backends
                .insert(id, LbBackend { address: a.octets(), port: be.port.to_be(), proto, flags: be.flags });
            if !dirty.off {
                dirty.v4.backends.insert(id);
            }
        }
        IpAddr::V6(a) => {
            out.v6
                .backends
                .insert(id, LbBackend { address: a.octets(), port: be.port.to_be(), proto, flags: be.flags });
            if !dirty.off {
                dirty.v6.backends.insert(id);
            }
        }
    }
}

fn remove_backend(out: &mut Desired, dirty: &mut Dirty, id: u32, v4: bool) {
    if v4 {
        out.v4.backends.remove(&id);
        if !dirty.off {
            dirty.v4.backends.insert(id);
        }
    } else {
        out.v6.backends.remove(&id);
        if !dirty.off {
            dirty.v6.backends.insert(id);
        }
    }
}

fn put_rev_nat(out: &mut Desired, dirty: &mut Dirty, id: u32, addr: IpAddr, port: u16) {
    match addr {
        IpAddr::V4(a) => {
            out.v4.rev_nat.insert(id, RevNat { address: a.octets(), port: port.to_be(), _pad: 0 });
            if !dirty.off {
                dirty.v4.rev_nat.insert(id);
            }
        }
        IpAddr::V6(a) => {
            out.v6.rev_nat.insert(id, RevNat { address: a.octets(), port: port.to_be(), _pad: 0 });
            if !dirty.off {
                dirty.v6.rev_nat.insert(id);
            }
        }
    }
}

fn remove_rev_nat(out: &mut Desired, dirty: &mut Dirty, id: u32, v4: bool) {
    if v4 {
        out.v4.rev_nat.remove(&id);
        if !dirty.off {
            dirty.v4.rev_nat.insert(id);
        }
    } else {
        out.v6.rev_nat.remove(&id);
        if !dirty.off {
            dirty.v6.rev_nat.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Proto, ServiceModel};

    fn svc(name: &str, vip: &str) -> ServiceModel {
        ServiceModel::cluster_ip("default", name, vip.parse().unwrap(), 80)
    }

    fn ep(ip: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            node: Some("node2".into()),
            ready,
            serving: ready,
            terminating: false,
            ports: [((String::new(), Proto::Tcp), 8080)].into(),
        }
    }

    fn backend_ids(d: &Desired) -> Vec<(u32, [u8; 4])> {
        let mut v: Vec<_> = d.v4.backends.iter().map(|(id, b)| (*id, b.address)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_change_keeps_every_other_id() {
        let node = NodeContext { name: "node1".into(), node_port_addresses: vec![] };
        let mut ids = Ids::default();
        let services = vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")];
        let mut eps: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        eps.insert("default/a".into(), vec![ep("10.0.0.1", true), ep("10.0.0.2", true)]);
        eps.insert("default/b".into(), vec![ep("10.0.0.3", true)]);
        let first = translate(&services, &eps, &node, &mut ids);
        // One endpoint of `a` goes unready, one is added to `b`.
        eps.insert("default/a".into(), vec![ep("10.0.0.1", true), ep("10.0.0.2", false)]);
        eps.insert("default/b".into(), vec![ep("10.0.0.3", true), ep("10.0.0.4", true)]);
        let second = translate(&services, &eps, &node, &mut ids);
        let (a1, a2) = (backend_ids(&first), backend_ids(&second));
        assert_eq!(a1, vec![(1, [10, 0, 0, 1]), (2, [10, 0, 0, 2]), (3, [10, 0, 0, 3])]);
        assert_eq!(a2, vec![(1, [10, 0, 0, 1]), (3, [10, 0, 0, 3]), (4, [10, 0, 0, 4])]);
        assert_eq!(first.v4.rev_nat, second.v4.rev_nat, "frontend ids unchanged");
        // The same input again changes nothing at all.
        assert_eq!(translate(&services, &eps, &node, &mut ids), second);
    }

    #[test]
    fn restored_ids_reproduce_the_installed_entries() {
        let node = NodeContext { name: "node1".into(), node_port_addresses: vec![] };
        let services = vec![svc("a", "10.96.0.1")];
        let eps: BTreeMap<String, Vec<Endpoint>> =
            [("default/a".to_string(), vec![ep("10.0.0.1", true), ep("10.0.0.2", true)])].into();
        let mut ids = Ids::default();
        // Ids from an earlier life, as the pinned maps hold them.
        ids.backends.insert(("10.0.0.2".parse().unwrap(), 8080, 6), 41);
        ids.frontends.insert(("10.96.0.1".parse().unwrap(), 80, 6), 17);
        let d = translate(&services, &eps, &node, &mut ids);
        let mut ids: Vec<u32> = d.v4.backends.keys().copied().collect();
        ids.sort();
        assert_eq!(ids, vec![41, 42]);
        assert_eq!(d.v4.rev_nat.keys().copied().collect::<Vec<_>>(), vec![17]);
    }
}
