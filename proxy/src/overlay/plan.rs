//! Pure planning: nodes in, desired VXLAN device / FDB / neighbour / route set out, plus the
//! peers skipped (missing data), rejected (host-gw peer off our L2 segment) or losing a podCIDR
//! conflict.
//!
//! PodCIDR conflicts: the incumbent keeps its CIDR. Peers claim their CIDRs in order of
//! seniority (see [`seniority`]): our own node first, then the older Node (creationTimestamp),
//! then the one this agent programmed first, then the name. A claim overlapping one already
//! taken is refused, so a newcomer claiming a CIDR in use never moves existing traffic.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    vxlan_mac, FdbEntry, Mode, NeighEntry, OverlayConfig, RouteDev, RouteEntry, Underlay, VxlanDevice, VXLAN_OVERHEAD,
};
use crate::model::NodeInfo;

/// Everything the reconciler should make true.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// The VXLAN device (vxlan mode only).
    pub device: Option<VxlanDevice>,
    pub fdb: BTreeSet<FdbEntry>,
    pub neigh: BTreeSet<NeighEntry>,
    pub routes: BTreeSet<RouteEntry>,
    /// IPv6 routes are wanted: IPv6 forwarding must be on.
    pub ipv6: bool,
}

/// A peer (or one of its pod CIDRs) left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Omission {
    pub node: String,
    pub reason: String,
}

/// A pod CIDR left out because `owner` holds an overlapping one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub node: String,
    pub cidr: IpNet,
    pub owner: String,
    pub owner_cidr: IpNet,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "podCIDR {} overlaps {} held by {}, which keeps it", self.cidr, self.owner_cidr, self.owner)
    }
}

/// The order in which peers claim pod CIDRs: older Node first (one without creationTimestamp
/// counts as newest), then the one programmed first (`programmed`: node -> the sequence number
/// this agent programmed it at), then name.
pub fn seniority<'a>(node: &'a NodeInfo, programmed: &BTreeMap<String, u64>) -> (bool, i128, bool, u64, &'a str) {
    let prog = programmed.get(&node.name).copied();
    (node.created.is_none(), node.created.unwrap_or(0), prog.is_none(), prog.unwrap_or(0), node.name.as_str())
}

/// Whether two prefixes share any address (one contains the other's network address).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// CIDRs claimed so far, by whom; keyed by prefix, so a claim looks at its few possible
/// neighbours instead of every claim (thousands of nodes).
struct Claims(BTreeMap<IpNet, String>);

impl Claims {
    /// Take `cidr` for `node`, or name the claim it overlaps.
    fn claim(&mut self, cidr: IpNet, node: &str) -> Result<(), Conflict> {
        let cidr = cidr.trunc();
        // Claims inside `cidr` start within it; claims containing it are its supernets.
        let (first, last) = match cidr {
            IpNet::V4(_) => (IpNet::new(cidr.network(), 0), IpNet::new(cidr.broadcast(), 32)),
            IpNet::V6(_) => (IpNet::new(cidr.network(), 0), IpNet::new(cidr.broadcast(), 128)),
        };
        let inside = match (first, last) {
            (Ok(first), Ok(last)) => self.0.range(first..=last).next(),
            _ => None,
        };
        let around = (0..cidr.prefix_len())
            .filter_map(|len| IpNet::new(cidr.network(), len).ok().map(|n| n.trunc()))
            .find_map(|n| self.0.get_key_value(&n));
        if let Some((held, owner)) = inside.into_iter().chain(around).find(|(t, _)| overlaps(t, &cidr)) {
            return Err(Conflict { node: node.to_string(), cidr, owner: owner.clone(), owner_cidr: *held });
        }
        self.0.insert(cidr, node.to_string());
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub desired: Desired,
    /// Peers lacking a podCIDR or a usable InternalIP (`trellis_overlay_nodes_skipped_total`).
    pub skipped: Vec<Omission>,
    /// host-gw peers not on our L2 segment (`trellis_overlay_peer_rejected_total`).
    pub rejected: Vec<Omission>,
    /// Pod CIDRs refused because a more senior node holds an overlapping one
    /// (`trellis_overlay_podcidr_conflicts_total`).
    pub conflicts: Vec<Conflict>,
    /// Peers with at least one route.
    pub peers: BTreeSet<String>,
    /// MTU for pods (the conflist): underlay MTU minus encapsulation overhead.
    pub pod_mtu: u32,
}

/// Why no plan can be made yet (the agent waits and retries).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("own node {0:?} is not known yet")]
    OwnNodeUnknown(String),
    #[error("own node {0:?} has no InternalIP")]
    NoInternalIp(String),
    #[error("own node {0:?} has no IPv4 InternalIP, which the VXLAN underlay needs")]
    NoIpv4InternalIp(String),
}

/// The IP the underlay is found by: IPv4 InternalIP first (VXLAN needs it), else IPv6.
pub fn own_underlay_ip(cfg: &OverlayConfig, own: &NodeInfo) -> Result<IpAddr, NotReady> {
    match (cfg.mode, own.internal_ip_v4(), own.internal_ip_v6()) {
        (_, Some(v4), _) => Ok(v4),
        (Mode::Vxlan, None, _) => Err(NotReady::NoIpv4InternalIp(own.name.clone())),
        (Mode::HostGw, None, Some(v6)) => Ok(v6),
        (Mode::HostGw, None, None) => Err(NotReady::NoInternalIp(own.name.clone())),
    }
}

fn on_link(underlay: &Underlay, ip: IpAddr) -> bool {
    underlay.addrs.iter().any(|n| n.contains(&ip) && n.addr() != ip)
}

/// Nodes in, desired state out. `own` names this node; `nodes` is every known node;
/// `programmed` the peers this agent has programmed and in which order (see [`seniority`]).
pub fn plan(
    cfg: &OverlayConfig,
    own: &str,
    nodes: &BTreeMap<String, NodeInfo>,
    underlay: &Underlay,
    programmed: &BTreeMap<String, u64>,
) -> Result<Plan, NotReady> {
    let me = nodes.get(own).ok_or_else(|| NotReady::OwnNodeUnknown(own.to_string()))?;
    let my_ip = own_underlay_ip(cfg, me)?;
    let mut desired = Desired::default();
    let mut skipped = Vec::new();
    let mut rejected = Vec::new();
    let mut conflicts = Vec::new();
    let mut peers = BTreeSet::new();
    let pod_mtu = match cfg.mode {
        Mode::Vxlan => underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
        Mode::HostGw => underlay.mtu,
    };

    // Our own IPv6 pods forward too, even before any IPv6 peer shows up.
    desired.ipv6 = me.pod_cidr_v6().is_some();

    if cfg.mode == Mode::Vxlan {
        let IpAddr::V4(local) = my_ip else {
            return Err(NotReady::NoIpv4InternalIp(own.to_string()));
        };
        desired.device = Some(VxlanDevice {
            name: cfg.device.clone(),
            vni: cfg.vni,
            port: cfg.port,
            local,
            underlay_ifindex: underlay.ifindex,
            mac: vxlan_mac(local),
            mtu: pod_mtu,
            addrs: me
                .pod_cidrs
                .iter()
                .map(|n| IpNet::new(n.network(), n.max_prefix_len()).expect("max prefix is valid"))
                .collect(),
        });
    }

    // CIDRs already taken (ours first, then by seniority), so two nodes claiming overlapping
    // ranges cannot make the reconciler flip a route back and forth, and the incumbent keeps it.
    let mut taken = Claims(me.pod_cidrs.iter().map(|n| (n.trunc(), own.to_string())).collect());
    let mut peer_nodes: Vec<&NodeInfo> = nodes.values().filter(|n| n.name != own).collect();
    peer_nodes.sort_by_key(|n| seniority(n, programmed));
    for node in peer_nodes {
        let skip =
            |skipped: &mut Vec<Omission>, reason: String| skipped.push(Omission { node: node.name.clone(), reason });
        if node.pod_cidrs.is_empty() {
            skip(&mut skipped, "no podCIDR".into());
            continue;
        }
        let mut any = false;
        match cfg.mode {
            Mode::Vxlan => {
                let Some(IpAddr::V4(peer_ip)) = node.internal_ip_v4() else {
                    skip(&mut skipped, "no IPv4 InternalIP".into());
                    continue;
                };
                let mac = vxlan_mac(peer_ip);
                for cidr in &node.pod_cidrs {
                    if let Err(c) = taken.claim(*cidr, &node.name) {
                        conflicts.push(c);
                        continue;
                    }
                    let gw = cidr.network();
                    desired.neigh.insert(NeighEntry { ip: gw, mac });
                    desired.routes.insert(RouteEntry { dst: *cidr, gateway: gw, dev: RouteDev::Vxlan, onlink: true });
                    desired.ipv6 |= cidr.addr().is_ipv6();
                    any = true;
                }
                if any {
                    desired.fdb.insert(FdbEntry { mac, dst: IpAddr::V4(peer_ip) });
                }
            }
            Mode::HostGw => {
                for cidr in &node.pod_cidrs {
                    let Some(gw) = node.internal_ip_for(cidr) else {
                        skip(&mut skipped, format!("no InternalIP of {cidr}'s family"));
                        continue;
                    };
                    if !on_link(underlay, gw) {
                        rejected.push(Omission {
                            node: node.name.clone(),
                            reason: format!(
                                "host-gw needs peers on one L2 segment: {gw} is not inside a subnet of {} ({}); no route to {cidr}",
                                underlay.name,
                                underlay.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                            ),
                        });
                        continue;
                    }
                    if let Err(c) = taken.claim(*cidr, &node.name) {
                        conflicts.push(c);
                        continue;
                    }
                    desired.routes.insert(RouteEntry {
                        dst: *cidr,
                        gateway: gw,
                        dev: RouteDev::Underlay,
                        onlink: false,
                    });
                    desired.ipv6 |= cidr.addr().is_ipv6();
                    any = true;
                }
            }
        }
        if any {
            peers.insert(node.name.clone());
        }
    }
    // Reported in name order, whatever order the claims were made in.
    skipped.sort_by(|a, b| a.node.cmp(&b.node));
    rejected.sort_by(|a, b| a.node.cmp(&b.node));
    conflicts.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(Plan { desired, skipped, rejected, conflicts, peers, pod_mtu })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::fmt_mac;

    fn ni(name: &str, cidrs: &[&str], ips: &[&str]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            internal_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            pod_cidrs: cidrs.iter().map(|s| s.parse().unwrap()).collect(),
            created: None,
        }
    }

    fn aged(mut n: NodeInfo, created: i128) -> NodeInfo {
        n.created = Some(created);
        n
    }

    fn none() -> BTreeMap<String, u64> {
        BTreeMap::new()
    }

    fn nodes(v: Vec<NodeInfo>) -> BTreeMap<String, NodeInfo> {
        v.into_iter().map(|n| (n.name.clone(), n)).collect()
    }

    fn underlay(addrs: &[&str]) -> Underlay {
        Underlay {
            ifindex: 7,
            name: "eth0".into(),
            mtu: 1500,
            addrs: addrs.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn vx() -> OverlayConfig {
        OverlayConfig::default()
    }

    fn hg() -> OverlayConfig {
        OverlayConfig { mode: Mode::HostGw, ..Default::default() }
    }

    fn routes(p: &Plan) -> Vec<String> {
        p.desired
            .routes
            .iter()
            .map(|r| format!("{} via {} {:?}{}", r.dst, r.gateway, r.dev, if r.onlink { " onlink" } else { "" }))
            .collect()
    }

    #[test]
    fn vxlan_plans_device_fdb_neigh_and_routes_per_peer() {
        let n = nodes(vec![
            ni("a", &["10.244.1.0/24"], &["192.168.50.1"]),
            ni("b", &["10.244.2.0/24"], &["192.168.50.2"]),
            ni("c", &["10.244.3.0/24"], &["192.168.60.3"]), // another subnet is fine for VXLAN
        ]);
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24"]), &none()).unwrap();
        let dev = p.desired.device.as_ref().unwrap();
        assert_eq!(dev.name, "trellis.1");
        assert_eq!((dev.vni, dev.port, dev.underlay_ifindex, dev.mtu), (1, 8472, 7, 1450));
        assert_eq!(fmt_mac(&dev.mac), "0e:7e:c0:a8:32:01");
        assert_eq!(dev.addrs, vec!["10.244.1.0/32".parse::<IpNet>().unwrap()]);
        assert_eq!(p.pod_mtu, 1450);
        let fdb: Vec<_> = p.desired.fdb.iter().map(|f| format!("{} {}", fmt_mac(&f.mac), f.dst)).collect();
        assert_eq!(fdb, vec!["0e:7e:c0:a8:32:02 192.168.50.2", "0e:7e:c0:a8:3c:03 192.168.60.3"]);
        let neigh: Vec<_> = p.desired.neigh.iter().map(|n| format!("{} {}", n.ip, fmt_mac(&n.mac))).collect();
        assert_eq!(neigh, vec!["10.244.2.0 0e:7e:c0:a8:32:02", "10.244.3.0 0e:7e:c0:a8:3c:03"]);
        assert_eq!(
            routes(&p),
            vec!["10.244.2.0/24 via 10.244.2.0 Vxlan onlink", "10.244.3.0/24 via 10.244.3.0 Vxlan onlink"]
        );
        assert_eq!(p.peers.len(), 2);
        assert!(p.skipped.is_empty() && p.rejected.is_empty());
        assert!(!p.desired.ipv6);
    }

    #[test]
    fn own_node_is_excluded_and_required() {
        let n = nodes(vec![ni("a", &["10.244.1.0/24"], &["192.168.50.1"])]);
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24"]), &none()).unwrap();
        assert!(p.desired.routes.is_empty() && p.desired.fdb.is_empty() && p.desired.neigh.is_empty());
        assert!(p.peers.is_empty());
        assert_eq!(plan(&vx(), "zz", &n, &underlay(&[]), &none()), Err(NotReady::OwnNodeUnknown("zz".into())));
        let v6only = nodes(vec![ni("a", &["10.244.1.0/24"], &["fd00::1"])]);
        assert_eq!(plan(&vx(), "a", &v6only, &underlay(&[]), &none()), Err(NotReady::NoIpv4InternalIp("a".into())));
        // Own node without podCIDR: device without address, peers still programmed.
        let n = nodes(vec![ni("a", &[], &["192.168.50.1"]), ni("b", &["10.244.2.0/24"], &["192.168.50.2"])]);
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24"]), &none()).unwrap();
        assert!(p.desired.device.as_ref().unwrap().addrs.is_empty());
        assert_eq!(p.desired.routes.len(), 1);
    }

    #[test]
    fn peers_without_podcidr_or_internal_ip_are_skipped() {
        let n = nodes(vec![
            ni("a", &["10.244.1.0/24"], &["192.168.50.1"]),
            ni("b", &[], &["192.168.50.2"]),
            ni("c", &["10.244.3.0/24"], &[]),
            ni("d", &["10.244.4.0/24"], &["192.168.50.4"]),
        ]);
        for cfg in [vx(), hg()] {
            let p = plan(&cfg, "a", &n, &underlay(&["192.168.50.1/24"]), &none()).unwrap();
            let sk: Vec<_> = p.skipped.iter().map(|s| s.node.as_str()).collect();
            assert_eq!(sk, vec!["b", "c"], "{:?}", cfg.mode);
            assert_eq!(p.desired.routes.len(), 1);
            assert_eq!(p.desired.routes.iter().next().unwrap().dst.to_string(), "10.244.4.0/24");
            assert_eq!(p.peers.len(), 1);
        }
    }

    #[test]
    fn overlapping_pod_cidrs_are_skipped_not_flapped() {
        let n = nodes(vec![
            ni("a", &["10.244.1.0/24"], &["192.168.50.1"]),
            ni("b", &["10.244.2.0/24"], &["192.168.50.2"]),
            ni("c", &["10.244.2.0/23"], &["192.168.50.3"]),
            ni("d", &["10.244.1.0/24"], &["192.168.50.4"]),
        ]);
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24"]), &none()).unwrap();
        assert_eq!(routes(&p), vec!["10.244.2.0/24 via 10.244.2.0 Vxlan onlink"]);
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
        let cf: Vec<_> = p.conflicts.iter().map(|c| (c.node.as_str(), c.owner.as_str())).collect();
        assert_eq!(cf, vec![("c", "b"), ("d", "a")]);
        assert_eq!(
            p.conflicts[0].to_string(),
            "podCIDR 10.244.2.0/23 overlaps 10.244.2.0/24 held by b, which keeps it"
        );
        assert_eq!(p.desired.fdb.len(), 1, "no FDB entry for a peer without routes");
        assert_eq!(p.peers.iter().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn overlap_is_checked_in_both_directions() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        for (a, b, want) in [
            ("10.244.2.0/23", "10.244.3.0/24", true),
            ("10.244.2.0/24", "10.244.2.0/24", true),
            ("10.244.2.0/24", "10.244.3.0/24", false),
            ("10.0.0.0/8", "10.244.3.128/25", true),
            ("fd00:10:244::/56", "fd00:10:244:1::/64", true),
            ("fd00:10:244:1::/64", "fd00:10:244:2::/64", false),
            ("10.244.0.0/16", "fd00::/8", false),
        ] {
            assert_eq!(overlaps(&n(a), &n(b)), want, "{a} vs {b}");
            assert_eq!(overlaps(&n(b), &n(a)), want, "{b} vs {a}");
        }
        // In the planner too: the bigger CIDR held first, then the smaller one held first.
        for (first, second) in [("10.244.2.0/23", "10.244.3.0/24"), ("10.244.3.0/24", "10.244.2.0/23")] {
            for cfg in [vx(), hg()] {
                let n = nodes(vec![
                    ni("a", &["10.244.1.0/24"], &["192.168.50.1"]),
                    aged(ni("old", &[first], &["192.168.50.2"]), 1),
                    aged(ni("new", &[second], &["192.168.50.3"]), 2),
                ]);
                let p = plan(&cfg, "a", &n, &underlay(&["192.168.50.1/24"]), &none()).unwrap();
                let dsts: Vec<_> = p.desired.routes.iter().map(|r| r.dst.to_string()).collect();
                assert_eq!(dsts, vec![first], "{first} then {second}, {:?}", cfg.mode);
                assert_eq!(p.conflicts.len(), 1, "{first} then {second}, {:?}", cfg.mode);
                assert_eq!((p.conflicts[0].node.as_str(), p.conflicts[0].owner.as_str()), ("new", "old"));
            }
        }
    }

    #[test]
    fn claims_find_every_overlap_a_linear_scan_finds() {
        // Every prefix inside 10.0.0.0/29 (and the /28 around it, and one IPv6 net), claimed in every order of three.
        let mut all: Vec<IpNet> = vec!["10.0.0.0/28".parse().unwrap(), "fd00::/126".parse().unwrap()];
        for len in 29..=32u8 {
            let step = 1u32 << (32 - len);
            for i in 0..(8 / step) {
                all.push(IpNet::new(std::net::Ipv4Addr::from(0x0a00_0000 + i * step).into(), len).unwrap());
            }
        }
        for a in &all {
            for b in &all {
                for c in &all {
                    let mut claims = Claims(BTreeMap::new());
                    let mut held: Vec<IpNet> = Vec::new();
                    for (i, n) in [a, b, c].into_iter().enumerate() {
                        let naive = held.iter().find(|h| overlaps(h, n)).copied();
                        match claims.claim(*n, &format!("n{i}")) {
                            Ok(()) => {
                                assert_eq!(naive, None, "{n} claimed over {naive:?} ({a} {b} {c})");
                                held.push(*n);
                            }
                            Err(conflict) => {
                                assert!(naive.is_some(), "{n} refused without overlap ({a} {b} {c})");
                                assert!(held.contains(&conflict.owner_cidr) && overlaps(&conflict.owner_cidr, n));
                            }
                        }
                    }
                }
            }
        }
    }

    /// node1 holds 10.244.0.0/24; a newcomer `dup` claims it too, with an address where nothing lives.
    fn contested(dup: &str, node1_created: Option<i128>, dup_created: Option<i128>) -> BTreeMap<String, NodeInfo> {
        let mut node1 = ni("node1", &["10.244.0.0/24"], &["192.168.50.11"]);
        node1.created = node1_created;
        let mut d = ni(dup, &["10.244.0.0/24"], &["192.168.50.99"]);
        d.created = dup_created;
        nodes(vec![ni("node2", &["10.244.1.0/24"], &["192.168.50.12"]), node1, d])
    }

    fn winner(p: &Plan) -> String {
        assert_eq!(p.desired.routes.len(), 1, "{p:?}");
        assert_eq!(p.conflicts.len(), 1, "{p:?}");
        let r = p.desired.routes.iter().next().unwrap();
        assert_eq!(r.dst.to_string(), "10.244.0.0/24");
        assert_eq!(p.peers.len(), 1);
        assert!(p.skipped.is_empty());
        p.peers.iter().next().unwrap().clone()
    }

    #[test]
    fn podcidr_conflict_older_node_wins_whatever_the_names() {
        for dup in ["aaa-dup", "zzz-dup"] {
            for cfg in [vx(), hg()] {
                let u = underlay(&["192.168.50.12/24"]);
                let p = plan(&cfg, "node2", &contested(dup, Some(100), Some(200)), &u, &none()).unwrap();
                assert_eq!(winner(&p), "node1", "{dup} {:?}", cfg.mode);
                assert_eq!(p.conflicts[0].node, dup);
                assert_eq!(p.conflicts[0].owner, "node1");
                // The gateway is node1's, never the newcomer's.
                let r = p.desired.routes.iter().next().unwrap();
                if cfg.mode == Mode::HostGw {
                    assert_eq!(r.gateway.to_string(), "192.168.50.11");
                } else {
                    assert_eq!(p.desired.fdb.iter().map(|f| f.dst.to_string()).collect::<Vec<_>>(), ["192.168.50.11"]);
                }
                // The other way round the newcomer is the older one and keeps it.
                let p = plan(&cfg, "node2", &contested(dup, Some(300), Some(200)), &u, &none()).unwrap();
                assert_eq!(winner(&p), dup);
                // A node without creationTimestamp counts as the newest.
                let p = plan(&cfg, "node2", &contested(dup, Some(300), None), &u, &none()).unwrap();
                assert_eq!(winner(&p), "node1");
                let p = plan(&cfg, "node2", &contested(dup, None, Some(300)), &u, &none()).unwrap();
                assert_eq!(winner(&p), dup);
            }
        }
    }

    #[test]
    fn podcidr_conflict_without_timestamps_the_first_programmed_wins_then_the_name() {
        let u = underlay(&["192.168.50.12/24"]);
        for dup in ["aaa-dup", "zzz-dup"] {
            for cfg in [vx(), hg()] {
                // node1 was programmed before dup showed up: it keeps the CIDR in both name orders.
                let programmed: BTreeMap<String, u64> = [("node1".to_string(), 1)].into();
                let p = plan(&cfg, "node2", &contested(dup, None, None), &u, &programmed).unwrap();
                assert_eq!(winner(&p), "node1", "{dup} {:?}", cfg.mode);
                // Both programmed: the earlier one.
                let both: BTreeMap<String, u64> = [(dup.to_string(), 5), ("node1".to_string(), 7)].into();
                let p = plan(&cfg, "node2", &contested(dup, None, None), &u, &both).unwrap();
                assert_eq!(winner(&p), dup);
                // An older timestamp beats having been programmed first.
                let p = plan(&cfg, "node2", &contested(dup, Some(1), Some(2)), &u, &both).unwrap();
                assert_eq!(winner(&p), "node1");
                // Nothing known: the name decides.
                let p = plan(&cfg, "node2", &contested(dup, None, None), &u, &none()).unwrap();
                assert_eq!(winner(&p), if dup < "node1" { dup } else { "node1" });
            }
        }
    }

    #[test]
    fn own_podcidr_is_never_given_up() {
        let n = nodes(vec![
            ni("a", &["10.244.1.0/24"], &["192.168.50.1"]),
            aged(ni("ancient", &["10.244.1.0/24"], &["192.168.50.2"]), 0),
        ]);
        let programmed: BTreeMap<String, u64> = [("ancient".to_string(), 0)].into();
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24"]), &programmed).unwrap();
        assert!(p.desired.routes.is_empty());
        assert_eq!(p.conflicts[0].owner, "a");
    }

    #[test]
    fn host_gw_routes_via_peer_and_rejects_other_segments() {
        let n = nodes(vec![
            ni("a", &["10.244.1.0/24"], &["192.168.50.1"]),
            ni("b", &["10.244.2.0/24"], &["192.168.50.2"]),
            ni("far", &["10.244.3.0/24"], &["192.168.99.3"]),
        ]);
        let p = plan(&hg(), "a", &n, &underlay(&["192.168.50.1/24"]), &none()).unwrap();
        assert!(p.desired.device.is_none());
        assert!(p.desired.fdb.is_empty() && p.desired.neigh.is_empty());
        assert_eq!(routes(&p), vec!["10.244.2.0/24 via 192.168.50.2 Underlay"]);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].node, "far");
        assert!(
            p.rejected[0].reason.contains("192.168.99.3 is not inside a subnet of eth0"),
            "{}",
            p.rejected[0].reason
        );
        assert_eq!(p.pod_mtu, 1500);
        // Our own address is not a gateway to anything.
        let n2 =
            nodes(vec![ni("a", &["10.244.1.0/24"], &["192.168.50.1"]), ni("b", &["10.244.2.0/24"], &["192.168.50.1"])]);
        let p = plan(&hg(), "a", &n2, &underlay(&["192.168.50.1/24"]), &none()).unwrap();
        assert!(p.desired.routes.is_empty());
        assert_eq!(p.rejected.len(), 1);
    }

    #[test]
    fn dual_stack_pod_cidrs() {
        let n = nodes(vec![
            ni("a", &["10.244.1.0/24", "fd00:10:244:1::/64"], &["192.168.50.1", "fd00:50::1"]),
            ni("b", &["10.244.2.0/24", "fd00:10:244:2::/64"], &["192.168.50.2", "fd00:50::2"]),
            ni("c", &["10.244.3.0/24", "fd00:10:244:3::/64"], &["192.168.50.3"]),
        ]);
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24", "fd00:50::1/64"]), &none()).unwrap();
        assert_eq!(
            p.desired.device.as_ref().unwrap().addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            vec!["10.244.1.0/32", "fd00:10:244:1::/128"]
        );
        assert_eq!(
            routes(&p),
            vec![
                "10.244.2.0/24 via 10.244.2.0 Vxlan onlink",
                "10.244.3.0/24 via 10.244.3.0 Vxlan onlink",
                "fd00:10:244:2::/64 via fd00:10:244:2:: Vxlan onlink",
                "fd00:10:244:3::/64 via fd00:10:244:3:: Vxlan onlink",
            ]
        );
        // One FDB entry per peer (the IPv4 underlay), neighbours per pod CIDR.
        assert_eq!(p.desired.fdb.len(), 2);
        assert_eq!(p.desired.neigh.len(), 4);
        assert!(p.desired.ipv6);

        // host-gw: each family via the peer's address of that family; c lacks IPv6 and is skipped for it.
        let p = plan(&hg(), "a", &n, &underlay(&["192.168.50.1/24", "fd00:50::1/64"]), &none()).unwrap();
        assert_eq!(
            routes(&p),
            vec![
                "10.244.2.0/24 via 192.168.50.2 Underlay",
                "10.244.3.0/24 via 192.168.50.3 Underlay",
                "fd00:10:244:2::/64 via fd00:50::2 Underlay",
            ]
        );
        assert_eq!(
            p.skipped,
            vec![Omission { node: "c".into(), reason: "no InternalIP of fd00:10:244:3::/64's family".into() }]
        );
        assert_eq!(p.peers.len(), 2);
    }

    #[test]
    fn ipv6_forwarding_is_wanted_for_an_ipv6_peer_or_own_ipv6_pods_only() {
        let u = underlay(&["192.168.50.1/24", "fd00:50::1/64"]);
        // Own node IPv4 only, one IPv6 peer: forwarding for IPv6 is needed, in both modes.
        let n = nodes(vec![
            ni("a", &["10.244.1.0/24"], &["192.168.50.1", "fd00:50::1"]),
            ni("b", &["10.244.2.0/24"], &["192.168.50.2"]),
            ni("c", &["10.244.3.0/24", "fd00:10:244:3::/64"], &["192.168.50.3", "fd00:50::3"]),
        ]);
        for cfg in [vx(), hg()] {
            assert!(plan(&cfg, "a", &n, &u, &none()).unwrap().desired.ipv6, "{:?}", cfg.mode);
        }
        // Nothing IPv6 anywhere: not needed.
        let v4 =
            nodes(vec![ni("a", &["10.244.1.0/24"], &["192.168.50.1"]), ni("b", &["10.244.2.0/24"], &["192.168.50.2"])]);
        for cfg in [vx(), hg()] {
            assert!(!plan(&cfg, "a", &v4, &u, &none()).unwrap().desired.ipv6, "{:?}", cfg.mode);
        }
        // Own IPv6 pods, IPv4-only peers: still needed.
        let own6 = nodes(vec![
            ni("a", &["10.244.1.0/24", "fd00:10:244:1::/64"], &["192.168.50.1", "fd00:50::1"]),
            ni("b", &["10.244.2.0/24"], &["192.168.50.2"]),
        ]);
        for cfg in [vx(), hg()] {
            assert!(plan(&cfg, "a", &own6, &u, &none()).unwrap().desired.ipv6, "{:?}", cfg.mode);
        }
    }
}
