//! Pure planning: names, podCIDRs and underlay addresses for every node and pod of a topology.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::names;
use crate::topology::{Mode, PortSpec, Topology};

/// Interface names inside the lab: `eth0` in every node and pod netns, `br0` in the underlay netns.
pub const NODE_UPLINK: &str = "eth0";
pub const UNDERLAY_BRIDGE: &str = "br0";
pub const POD_IFNAME: &str = "eth0";
/// The `external` host's port on the underlay bridge (node ports are `n<i>`).
pub const EXTERNAL_PORT: &str = "x0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub name: String,
    pub mode: Mode,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub underlay_cidr: Ipv4Net,
    pub underlay_mtu: u32,
    /// netns holding the underlay bridge.
    pub underlay_netns: String,
    /// The `external` host's netns and its underlay address (the underlay's last host, never a node's).
    pub external_netns: String,
    pub external_ip: Ipv4Addr,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    pub pod_cidr: Ipv4Net,
    /// InternalIP, on `eth0` inside the node netns.
    pub internal_ip: Ipv4Addr,
    /// The veth end in the underlay netns (attached to br0).
    pub bridge_port: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
}

impl LabPlan {
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Plans a lab. `mode` overrides the topology's mode (the `--mode` flag).
pub fn plan(t: &Topology, mode: Option<Mode>) -> Result<LabPlan> {
    t.validate()?;
    let cidrs = allocate_pod_cidrs(t)?;
    let ips = underlay_ips(t.underlay_cidr, t.nodes.len())?;
    let external_ip = external_ip(t.underlay_cidr, &ips)?;
    let nodes = t
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodePlan {
            name: n.name.clone(),
            netns: names::node_netns(&t.name, &n.name),
            pod_cidr: cidrs[i],
            internal_ip: ips[i],
            bridge_port: format!("n{i}"),
        })
        .collect();
    let pods = t
        .pods
        .iter()
        .map(|p| PodPlan {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            node: p.node.clone(),
            netns: names::pod_netns(&t.name, &p.namespace, &p.name),
            container_id: names::container_id(&t.name, &p.namespace, &p.name),
            labels: p.labels.clone(),
            ports: p.ports.clone(),
        })
        .collect();
    Ok(LabPlan {
        name: t.name.clone(),
        mode: mode.unwrap_or(t.mode),
        cluster_cidr: t.cluster_cidr,
        service_cidr: t.service_cidr,
        underlay_cidr: t.underlay_cidr,
        underlay_mtu: t.underlay_mtu,
        underlay_netns: names::underlay_netns(&t.name),
        external_netns: names::external_netns(&t.name),
        external_ip,
        nodes,
        pods,
    })
}

/// podCIDRs like the node IPAM controller: pinned ones first, then the lowest free subnet for the rest.
pub fn allocate_pod_cidrs(t: &Topology) -> Result<Vec<Ipv4Net>> {
    let pinned: Vec<Ipv4Net> = t.nodes.iter().filter_map(|n| n.pod_cidr).collect();
    for (i, a) in pinned.iter().enumerate() {
        for b in &pinned[i + 1..] {
            if a.contains(&b.network()) || b.contains(&a.network()) {
                return Err(LabError::Plan(format!("podCIDRs {a} and {b} overlap")));
            }
        }
    }
    let mut candidates = t
        .cluster_cidr
        .subnets(t.node_cidr_mask_size)
        .map_err(|e| LabError::Plan(e.to_string()))?
        .filter(|c| !pinned.iter().any(|p| p.contains(&c.network()) || c.contains(&p.network())));
    let mut out = Vec::with_capacity(t.nodes.len());
    for n in &t.nodes {
        match n.pod_cidr {
            Some(c) => out.push(c),
            None => out.push(candidates.next().ok_or_else(|| {
                LabError::Plan(format!(
                    "clusterCIDR {} has no free /{} left for node {}",
                    t.cluster_cidr, t.node_cidr_mask_size, n.name
                ))
            })?),
        }
    }
    Ok(out)
}

/// Node InternalIPs: the underlay's hosts from .2 on (.1 stays free for a gateway).
pub fn underlay_ips(underlay: Ipv4Net, count: usize) -> Result<Vec<Ipv4Addr>> {
    let hosts: Vec<Ipv4Addr> = underlay.hosts().skip(1).take(count).collect();
    if hosts.len() < count {
        return Err(LabError::Plan(format!("underlay {underlay} has no room for {count} nodes")));
    }
    Ok(hosts)
}

/// The `external` host's address: the underlay's last host, which must not be a node's.
pub fn external_ip(underlay: Ipv4Net, nodes: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    underlay
        .hosts()
        .last()
        .filter(|ip| !nodes.contains(ip))
        .ok_or_else(|| LabError::Plan(format!("underlay {underlay} has no room for the external host")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(text: &str) -> Topology {
        Topology::parse(text).unwrap()
    }

    #[test]
    fn default_plan_is_sequential_and_named() {
        let p = plan(&Topology::default_topology(), None).unwrap();
        assert_eq!(p.nodes[0].pod_cidr.to_string(), "10.244.0.0/24");
        assert_eq!(p.nodes[1].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(p.nodes[0].internal_ip, Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(p.nodes[1].internal_ip, Ipv4Addr::new(172, 30, 0, 3));
        assert_eq!(p.nodes[0].netns, "tl-default-node-node1");
        assert_eq!(p.underlay_netns, "tl-default-ul");
        assert_eq!(p.external_netns, "tl-default-ext");
        assert_eq!(p.external_ip, Ipv4Addr::new(172, 30, 0, 254));
        assert_eq!(p.pods[0].netns, "tl-default-pod-default_web-1");
        assert_eq!(p.mode, Mode::Vxlan);
    }

    #[test]
    fn mode_flag_overrides_topology() {
        let p = plan(&Topology::default_topology(), Some(Mode::HostGw)).unwrap();
        assert_eq!(p.mode, Mode::HostGw);
    }

    #[test]
    fn pinned_cidrs_are_kept_and_skipped_by_allocation() {
        let t = topo("name: t\nnodes:\n  - {name: a}\n  - {name: b, podCIDR: 10.244.0.0/24}\n  - {name: c}\n");
        let c = allocate_pod_cidrs(&t).unwrap();
        let s: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(s, ["10.244.1.0/24", "10.244.0.0/24", "10.244.2.0/24"]);
    }

    #[test]
    fn pinned_cidr_larger_than_node_size_blocks_all_its_subnets() {
        let t = topo("name: t\nnodes:\n  - {name: a, podCIDR: 10.244.0.0/23}\n  - {name: b}\n");
        let c = allocate_pod_cidrs(&t).unwrap();
        assert_eq!(c[1].to_string(), "10.244.2.0/24");
    }

    #[test]
    fn overlapping_pins_and_exhaustion_are_errors() {
        let t = topo("name: t\nnodes:\n  - {name: a, podCIDR: 10.244.0.0/23}\n  - {name: b, podCIDR: 10.244.1.0/24}\n");
        assert!(allocate_pod_cidrs(&t).unwrap_err().to_string().contains("overlap"));
        let t = topo("name: t\nclusterCIDR: 10.244.0.0/23\nnodes: [{name: a}, {name: b}, {name: c}]\n");
        assert!(allocate_pod_cidrs(&t).unwrap_err().to_string().contains("no free"));
    }

    #[test]
    fn underlay_ips_skip_first_host_and_respect_size() {
        let net: Ipv4Net = "192.168.5.0/29".parse().unwrap();
        let ips = underlay_ips(net, 3).unwrap();
        assert_eq!(ips[0], Ipv4Addr::new(192, 168, 5, 2));
        assert_eq!(ips[2], Ipv4Addr::new(192, 168, 5, 4));
        assert!(underlay_ips(net, 6).is_err());
        assert_eq!(underlay_ips(net, 5).unwrap().len(), 5);
        // The external host takes the last host, unless a node has it.
        assert_eq!(external_ip(net, &underlay_ips(net, 4).unwrap()).unwrap(), Ipv4Addr::new(192, 168, 5, 6));
        assert!(external_ip(net, &underlay_ips(net, 5).unwrap()).is_err());
    }

    #[test]
    fn container_ids_are_unique_and_valid() {
        let p = plan(
            &topo("name: t\nnodes: [{name: a}]\npods: [{name: x, node: a}, {name: y, namespace: ns, node: a}]\n"),
            None,
        )
        .unwrap();
        assert_ne!(p.pods[0].container_id, p.pods[1].container_id);
        for pod in &p.pods {
            assert!(pod.container_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        }
    }
}
