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
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use trellis_ebpf_common::{backend_flags, scope, svc_flags, LbBackend, LbKey, LbService, RevNat, V4, V6};

use crate::ids::{Endpoint3, Ids};
use crate::model::{Endpoint, PortMapping, ServiceModel};

/// What the translation needs to know about the node it runs for.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    pub name: String,
    /// Addresses NodePorts are served on (the node's addresses, filtered by `nodePortAddresses`).
    pub node_port_addresses: Vec<IpAddr>,
}

/// The entries of one family's maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyMaps<A> {
    pub services: BTreeMap<LbKey<A>, LbService>,
    pub backends: BTreeMap<u32, LbBackend<A>>,
    pub rev_nat: BTreeMap<u32, RevNat<A>>,
}

impl<A> Default for FamilyMaps<A> {
    fn default() -> Self {
        FamilyMaps { services: BTreeMap::new(), backends: BTreeMap::new(), rev_nat: BTreeMap::new() }
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

/// The usable backends of one Service port: (all, this node's).
fn usable(svc: &ServiceModel, port: &PortMapping, eps: &[Endpoint], node: &str) -> (Vec<Be>, Vec<Be>) {
    let with_port: Vec<(&Endpoint, u16)> =
        eps.iter().filter_map(|e| e.ports.get(&(port.name.clone(), port.proto)).map(|p| (e, *p))).collect();
    let chosen: Vec<(&Endpoint, u16, bool)> = if svc.publish_not_ready {
        with_port.iter().map(|(e, p)| (*e, *p, false)).collect()
    } else {
        let ready: Vec<_> = with_port.iter().filter(|(e, _)| e.ready).map(|(e, p)| (*e, *p, false)).collect();
        if !ready.is_empty() {
            ready
        } else {
            with_port.iter().filter(|(e, _)| e.serving && e.terminating).map(|(e, p)| (*e, *p, true)).collect()
        }
    };
    let mut all = BTreeSet::new();
    let mut local = BTreeSet::new();
    for (e, p, term) in chosen {
        let is_local = e.node.as_deref() == Some(node);
        let flags = if is_local { backend_flags::LOCAL } else { 0 } | if term { backend_flags::TERMINATING } else { 0 };
        let be = Be { addr: e.address, port: p, flags };
        all.insert(be);
        if is_local {
            local.insert(be);
        }
    }
    (all.into_iter().collect(), local.into_iter().collect())
}

/// Translates every Service. `endpoints` holds each Service's endpoints by `namespace/name`.
pub fn translate(
    services: &[ServiceModel],
    endpoints: &BTreeMap<String, Vec<Endpoint>>,
    node: &NodeContext,
    ids: &mut Ids,
) -> Desired {
    let mut out = Desired::default();
    let mut sorted: Vec<&ServiceModel> = services.iter().collect();
    sorted.sort_by_key(|s| s.id());
    let mut owners: BTreeMap<Endpoint3, String> = BTreeMap::new();
    let mut live_be = BTreeSet::new();
    let mut live_fe = BTreeSet::new();
    let none = Vec::new();
    for svc in sorted {
        let eps = endpoints.get(&svc.id()).unwrap_or(&none);
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
                let fe: Endpoint3 = (addr, fport, proto);
                if let Some(owner) = owners.get(&fe) {
                    if *owner != svc.id() {
                        out.conflicts.push(format!(
                            "{addr}:{fport}/{}: kept by {owner}, refused for {}",
                            port.proto.name(),
                            svc.id()
                        ));
                    }
                    continue;
                }
                owners.insert(fe, svc.id());
                let fam = |v: &[Be]| -> Vec<Be> {
                    v.iter().filter(|b| b.addr.is_ipv4() == addr.is_ipv4()).copied().collect()
                };
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
                let rev = ids.frontends.get_or_alloc(fe);
                live_fe.insert(fe);
                for (sc, bes) in scopes {
                    let mut slot0 = LbService { rev_nat_id: rev, count: bes.len() as u16, flags, ..Default::default() };
                    slot0.affinity_timeout = svc.affinity.unwrap_or(0);
                    let mut slots = Vec::with_capacity(bes.len());
                    for be in &bes {
                        let key: Endpoint3 = (be.addr, be.port, proto);
                        let id = ids.backends.get_or_alloc(key);
                        live_be.insert(key);
                        slots.push(id);
                        put_backend(&mut out, id, be, proto);
                    }
                    put_frontend(&mut out, addr, fport, proto, sc, slot0, &slots);
                }
                put_rev_nat(&mut out, rev, addr, fport);
            }
        }
    }
    ids.backends.retain(&live_be);
    ids.frontends.retain(&live_fe);
    out
}

fn lb_key<A>(address: A, port: u16, proto: u8, scope: u8, slot: u16) -> LbKey<A> {
    LbKey { address, dport: port.to_be(), backend_slot: slot, proto, scope, _pad: [0; 2] }
}

fn put_frontend(out: &mut Desired, addr: IpAddr, port: u16, proto: u8, sc: u8, slot0: LbService, slots: &[u32]) {
    let entries = std::iter::once((0u16, slot0)).chain(slots.iter().enumerate().map(|(i, id)| {
        (i as u16 + 1, LbService { backend_id: *id, rev_nat_id: slot0.rev_nat_id, ..Default::default() })
    }));
    match addr {
        IpAddr::V4(a) => out.v4.services.extend(entries.map(|(s, v)| (lb_key(a.octets(), port, proto, sc, s), v))),
        IpAddr::V6(a) => out.v6.services.extend(entries.map(|(s, v)| (lb_key(a.octets(), port, proto, sc, s), v))),
    }
}

fn put_backend(out: &mut Desired, id: u32, be: &Be, proto: u8) {
    match be.addr {
        IpAddr::V4(a) => {
            out.v4
                .backends
                .insert(id, LbBackend { address: a.octets(), port: be.port.to_be(), proto, flags: be.flags });
        }
        IpAddr::V6(a) => {
            out.v6
                .backends
                .insert(id, LbBackend { address: a.octets(), port: be.port.to_be(), proto, flags: be.flags });
        }
    }
}

fn put_rev_nat(out: &mut Desired, id: u32, addr: IpAddr, port: u16) {
    match addr {
        IpAddr::V4(a) => {
            out.v4.rev_nat.insert(id, RevNat { address: a.octets(), port: port.to_be(), _pad: 0 });
        }
        IpAddr::V6(a) => {
            out.v6.rev_nat.insert(id, RevNat { address: a.octets(), port: port.to_be(), _pad: 0 });
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
        d.v4.backends.iter().map(|(id, b)| (*id, b.address)).collect()
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
        assert_eq!(d.v4.backends.keys().copied().collect::<Vec<_>>(), vec![41, 42]);
        assert_eq!(d.v4.rev_nat.keys().copied().collect::<Vec<_>>(), vec![17]);
    }
}
