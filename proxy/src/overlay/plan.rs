//! Pure planning: nodes in, desired VXLAN device / FDB / neighbour / route set out, plus the
//! peers skipped (missing data) or rejected (host-gw peer off our L2 segment).
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub desired: Desired,
    /// Peers lacking a podCIDR or a usable InternalIP (`trellis_overlay_nodes_skipped_total`).
    pub skipped: Vec<Omission>,
    /// host-gw peers not on our L2 segment (`trellis_overlay_peer_rejected_total`).
    pub rejected: Vec<Omission>,
    /// Peers with at least one route.
    pub peers: usize,
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

/// Nodes in, desired state out. `own` names this node; `nodes` is every known node.
pub fn plan(
    cfg: &OverlayConfig,
    own: &str,
    nodes: &BTreeMap<String, NodeInfo>,
    underlay: &Underlay,
) -> Result<Plan, NotReady> {
    let me = nodes.get(own).ok_or_else(|| NotReady::OwnNodeUnknown(own.to_string()))?;
    let my_ip = own_underlay_ip(cfg, me)?;
    let mut desired = Desired::default();
    let mut skipped = Vec::new();
    let mut rejected = Vec::new();
    let mut peers = 0;
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

    // CIDRs already taken (ours first), so two nodes claiming overlapping ranges cannot make
    // the reconciler flip a route back and forth.
    let mut taken: Vec<(IpNet, String)> = me.pod_cidrs.iter().map(|n| (*n, own.to_string())).collect();
    for node in nodes.values().filter(|n| n.name != own) {
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
                    if let Some((_, owner)) =
                        taken.iter().find(|(t, _)| t.contains(&cidr.network()) || cidr.contains(&t.network()))
                    {
                        skip(&mut skipped, format!("podCIDR {cidr} overlaps {owner}'s"));
                        continue;
                    }
                    taken.push((*cidr, node.name.clone()));
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
                    if let Some((_, owner)) =
                        taken.iter().find(|(t, _)| t.contains(&cidr.network()) || cidr.contains(&t.network()))
                    {
                        skip(&mut skipped, format!("podCIDR {cidr} overlaps {owner}'s"));
                        continue;
                    }
                    taken.push((*cidr, node.name.clone()));
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
            peers += 1;
        }
    }
    Ok(Plan { desired, skipped, rejected, peers, pod_mtu })
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
        }
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
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24"])).unwrap();
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
        assert_eq!(p.peers, 2);
        assert!(p.skipped.is_empty() && p.rejected.is_empty());
        assert!(!p.desired.ipv6);
    }

    #[test]
    fn own_node_is_excluded_and_required() {
        let n = nodes(vec![ni("a", &["10.244.1.0/24"], &["192.168.50.1"])]);
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24"])).unwrap();
        assert!(p.desired.routes.is_empty() && p.desired.fdb.is_empty() && p.desired.neigh.is_empty());
        assert_eq!(p.peers, 0);
        assert_eq!(plan(&vx(), "zz", &n, &underlay(&[])), Err(NotReady::OwnNodeUnknown("zz".into())));
        let v6only = nodes(vec![ni("a", &["10.244.1.0/24"], &["fd00::1"])]);
        assert_eq!(plan(&vx(), "a", &v6only, &underlay(&[])), Err(NotReady::NoIpv4InternalIp("a".into())));
        // Own node without podCIDR: device without address, peers still programmed.
        let n = nodes(vec![ni("a", &[], &["192.168.50.1"]), ni("b", &["10.244.2.0/24"], &["192.168.50.2"])]);
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24"])).unwrap();
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
            let p = plan(&cfg, "a", &n, &underlay(&["192.168.50.1/24"])).unwrap();
            let sk: Vec<_> = p.skipped.iter().map(|s| s.node.as_str()).collect();
            assert_eq!(sk, vec!["b", "c"], "{:?}", cfg.mode);
            assert_eq!(p.desired.routes.len(), 1);
            assert_eq!(p.desired.routes.iter().next().unwrap().dst.to_string(), "10.244.4.0/24");
            assert_eq!(p.peers, 1);
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
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24"])).unwrap();
        assert_eq!(routes(&p), vec!["10.244.2.0/24 via 10.244.2.0 Vxlan onlink"]);
        let sk: Vec<_> = p.skipped.iter().map(|s| (s.node.as_str(), s.reason.contains("overlaps"))).collect();
        assert_eq!(sk, vec![("c", true), ("d", true)]);
        assert_eq!(p.desired.fdb.len(), 1, "no FDB entry for a peer without routes");
    }

    #[test]
    fn host_gw_routes_via_peer_and_rejects_other_segments() {
        let n = nodes(vec![
            ni("a", &["10.244.1.0/24"], &["192.168.50.1"]),
            ni("b", &["10.244.2.0/24"], &["192.168.50.2"]),
            ni("far", &["10.244.3.0/24"], &["192.168.99.3"]),
        ]);
        let p = plan(&hg(), "a", &n, &underlay(&["192.168.50.1/24"])).unwrap();
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
        let p = plan(&hg(), "a", &n2, &underlay(&["192.168.50.1/24"])).unwrap();
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
        let p = plan(&vx(), "a", &n, &underlay(&["192.168.50.1/24", "fd00:50::1/64"])).unwrap();
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
        let p = plan(&hg(), "a", &n, &underlay(&["192.168.50.1/24", "fd00:50::1/64"])).unwrap();
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
        assert_eq!(p.peers, 2);
    }
}
