//! The incremental translator against translation from scratch: after any sequence of Service and endpoint
//! changes (frontends contested by several Services, shared backends, NodePorts, traffic policies, readiness),
//! it holds exactly what `translate` computes with the same ids; ids of what did not change never move; and the
//! keys it reports as changed cover every entry that differs from the previous state (so a reconciler that
//! looks only at those keys converges).
use std::collections::BTreeMap;
use std::net::IpAddr;

use trellis_svc::{translate, Desired, Endpoint, Ids, NodeContext, Proto, ServiceModel, Translator};

/// A small deterministic generator (xorshift), so a failure replays from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

fn node() -> NodeContext {
    NodeContext { name: "n1".into(), node_port_addresses: vec!["192.168.1.1".parse().unwrap()] }
}

fn random_service(r: &mut Rng, name: &str) -> ServiceModel {
    // Few VIPs and ports, so Services often contest a frontend.
    let vip: IpAddr = format!("10.96.0.{}", 1 + r.below(4)).parse().unwrap();
    let mut s = ServiceModel::cluster_ip("ns", name, vip, 80 + r.below(2) as u16);
    if r.chance(30) {
        s.ports[0].node_port = Some(30000 + r.below(3) as u16);
        s.node_port = true;
    }
    if r.chance(20) {
        s.ports.push(trellis_svc::PortMapping { name: "b".into(), proto: Proto::Udp, port: 53, node_port: None });
        s.ports[0].name = "a".into();
    }
    if r.chance(20) {
        s.external_ips.push(format!("192.168.50.{}", 1 + r.below(2)).parse().unwrap());
    }
    s.etp_local = r.chance(30);
    s.itp_local = r.chance(20);
    s.affinity = r.chance(20).then_some(60);
    s.publish_not_ready = r.chance(10);
    s
}

fn random_endpoints(r: &mut Rng, svc: &ServiceModel) -> Vec<Endpoint> {
    (0..r.below(4))
        .map(|_| {
            let ready = r.chance(70);
            let ports = svc.ports.iter().map(|p| ((p.name.clone(), p.proto), 8080 + r.below(2) as u16)).collect();
            Endpoint {
                // A shared pool: backends are shared between Services.
                address: format!("10.244.{}.{}", r.below(2), 1 + r.below(5)).parse().unwrap(),
                node: Some(if r.chance(50) { "n1" } else { "n2" }.into()),
                ready,
                serving: ready || r.chance(50),
                terminating: !ready && r.chance(50),
                ports,
            }
        })
        .collect()
}

fn differing_keys(a: &Desired, b: &Desired) -> (usize, Vec<String>) {
    let mut keys = Vec::new();
    let mut n = 0;
    for (k, v) in a.v4.services.iter() {
        if b.v4.services.get(k) != Some(v) {
            keys.push(format!("svc {k:?}"));
        }
    }
    for k in b.v4.services.keys().filter(|k| !a.v4.services.contains_key(*k)) {
        keys.push(format!("svc {k:?}"));
    }
    n += keys.len();
    (n, keys)
}

#[test]
fn incremental_translation_equals_translation_from_scratch() {
    for seed in 1..=40u64 {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut services: BTreeMap<String, ServiceModel> = BTreeMap::new();
        let mut endpoints: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        let mut t = Translator::new(node(), Ids::default());
        let mut previous = Desired::default();
        for step in 0..60 {
            let name = format!("s{}", r.below(6));
            let id = format!("ns/{name}");
            match r.below(4) {
                0 => {
                    services.remove(&id);
                    endpoints.remove(&id);
                }
                1 => {
                    let s = random_service(&mut r, &name);
                    services.insert(id.clone(), s);
                }
                _ => {
                    if let Some(s) = services.get(&id) {
                        endpoints.insert(id.clone(), random_endpoints(&mut r, s));
                    }
                }
            }
            t.update(&id, services.get(&id), endpoints.get(&id).map(Vec::as_slice).unwrap_or(&[]));
            let ctx = format!("seed {seed} step {step}");

            // Same entries as from scratch with the translator's ids (a restart would compute these).
            let mut ids = t.ids.clone();
            let all: Vec<ServiceModel> = services.values().cloned().collect();
            let scratch = translate(&all, &endpoints, &node(), &mut ids);
            let mut mine = t.desired().clone();
            mine.conflicts = t.conflicts();
            let mut theirs = scratch.clone();
            mine.conflicts.sort();
            theirs.conflicts.sort();
            assert_eq!(mine, theirs, "{ctx}");
            assert_eq!(ids, t.ids, "{ctx}: the translator holds ids nothing uses");

            // Every entry that changed is among the reported keys.
            let dirty = t.take_dirty();
            let (_, changed) = differing_keys(&previous, t.desired());
            for k in changed {
                assert!(dirty.v4.services.iter().any(|d| format!("svc {d:?}") == k), "{ctx}: {k} not reported");
            }
            for (id, be) in t.desired().v4.backends.iter() {
                if previous.v4.backends.get(id) != Some(be) {
                    assert!(dirty.v4.backends.contains(id), "{ctx}: backend {id} not reported");
                }
            }
            for id in previous.v4.backends.keys().filter(|id| !t.desired().v4.backends.contains_key(*id)) {
                assert!(dirty.v4.backends.contains(id), "{ctx}: removed backend {id} not reported");
            }
            for (id, rn) in t.desired().v4.rev_nat.iter() {
                if previous.v4.rev_nat.get(id) != Some(rn) {
                    assert!(dirty.v4.rev_nat.contains(id), "{ctx}: rev nat {id} not reported");
                }
            }
            for id in previous.v4.rev_nat.keys().filter(|id| !t.desired().v4.rev_nat.contains_key(*id)) {
                assert!(dirty.v4.rev_nat.contains(id), "{ctx}: removed rev nat {id} not reported");
            }
            // A frontend that exists before and after keeps its reverse-NAT id (conntrack names it).
            for (k, v) in t.desired().v4.services.iter().filter(|(k, _)| k.backend_slot == 0) {
                if let Some(old) = previous.v4.services.get(k) {
                    assert_eq!(old.rev_nat_id, v.rev_nat_id, "{ctx}: {k:?} changed its id");
                }
            }
            previous = t.desired().clone();
        }
    }
}

#[test]
fn a_change_reports_only_its_own_keys() {
    let mut t = Translator::new(node(), Ids::default());
    for i in 0..100u8 {
        let s = ServiceModel::cluster_ip("ns", &format!("s{i}"), IpAddr::from([10, 96, 1, i]), 80);
        let eps = vec![Endpoint {
            address: IpAddr::from([10, 244, 0, i]),
            node: Some("n2".into()),
            ready: true,
            serving: true,
            terminating: false,
            ports: [((String::new(), Proto::Tcp), 8080)].into(),
        }];
        t.update(&s.id(), Some(&s), &eps);
    }
    assert_eq!(t.take_dirty().len(), 100 * 4, "slot 0, slot 1, reverse NAT and one backend each");
    // One endpoint goes unready: its frontend's slot 0 and slot 1, and the backend: nothing else.
    let s = ServiceModel::cluster_ip("ns", "s7", IpAddr::from([10, 96, 1, 7]), 80);
    t.update(&s.id(), Some(&s), &[]);
    let d = t.take_dirty();
    assert_eq!((d.v4.services.len(), d.v4.backends.len(), d.v4.rev_nat.len()), (2, 1, 1), "{d:?}");
    assert!(!t.desired().v4.backends.values().any(|b| b.address == [10, 244, 0, 7]));
}
