//! The topology file: what nodes and pods a lab has. Parsing and validation only (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// Used when `up` gets no `--topology`: 2 nodes, 2 pods each.
pub const DEFAULT_TOPOLOGY: &str = include_str!("default-topology.yaml");

/// Port every pod serves when its topology entry lists none.
pub const DEFAULT_POD_PORT: u16 = 8080;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    #[serde(rename = "vxlan")]
    Vxlan,
    #[serde(rename = "host-gw")]
    HostGw,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Vxlan => "vxlan",
            Mode::HostGw => "host-gw",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "vxlan" => Ok(Mode::Vxlan),
            "host-gw" | "hostgw" => Ok(Mode::HostGw),
            other => Err(LabError::Topology(format!("mode {other:?}: expected vxlan or host-gw"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Topology {
    pub name: String,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(rename = "clusterCIDR", default = "default_cluster_cidr")]
    pub cluster_cidr: Ipv4Net,
    #[serde(rename = "serviceCIDR", default = "default_service_cidr")]
    pub service_cidr: Ipv4Net,
    /// Size of the podCIDR handed to each node (like kube-controller-manager's --node-cidr-mask-size).
    #[serde(default = "default_node_mask")]
    pub node_cidr_mask_size: u8,
    /// The L2 segment joining the nodes (lives only inside the lab's netns).
    #[serde(rename = "underlayCIDR", default = "default_underlay")]
    pub underlay_cidr: Ipv4Net,
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u32,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// A pod port: `8080` or `{port: 8080, name: http}`. The lab's server answers on TCP and UDP alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u16),
    Named {
        port: u16,
        #[serde(default)]
        name: Option<String>,
    },
}

impl PortSpec {
    pub fn port(&self) -> u16 {
        match self {
            PortSpec::Number(p) => *p,
            PortSpec::Named { port, .. } => *port,
        }
    }
    pub fn name(&self) -> Option<&str> {
        match self {
            PortSpec::Number(_) => None,
            PortSpec::Named { name, .. } => name.as_deref(),
        }
    }
}

fn default_mode() -> Mode {
    Mode::Vxlan
}
fn default_cluster_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("valid literal")
}
fn default_service_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 16).expect("valid literal")
}
fn default_underlay() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(172, 30, 0, 0), 24).expect("valid literal")
}
fn default_node_mask() -> u8 {
    24
}
fn default_underlay_mtu() -> u32 {
    1500
}
fn default_namespace() -> String {
    "default".to_string()
}

impl Topology {
    /// Parses and validates a topology document.
    pub fn parse(text: &str) -> Result<Topology> {
        let mut t: Topology = serde_yaml::from_str(text).map_err(|e| LabError::Topology(e.to_string()))?;
        t.cluster_cidr = t.cluster_cidr.trunc();
        t.service_cidr = t.service_cidr.trunc();
        t.underlay_cidr = t.underlay_cidr.trunc();
        for n in &mut t.nodes {
            n.pod_cidr = n.pod_cidr.map(|c| c.trunc());
        }
        for p in &mut t.pods {
            if p.ports.is_empty() {
                p.ports.push(PortSpec::Number(DEFAULT_POD_PORT));
            }
        }
        t.validate()?;
        Ok(t)
    }

    pub fn default_topology() -> Topology {
        Topology::parse(DEFAULT_TOPOLOGY).expect("embedded default topology is valid")
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LabError::Topology(m));
        validate_lab_name(&self.name)?;
        if self.nodes.is_empty() {
            return bad("at least one node is required".into());
        }
        if self.node_cidr_mask_size < self.cluster_cidr.prefix_len() || self.node_cidr_mask_size > 30 {
            return bad(format!(
                "nodeCidrMaskSize {} must be between clusterCIDR's prefix {} and 30",
                self.node_cidr_mask_size,
                self.cluster_cidr.prefix_len()
            ));
        }
        let nets = [
            ("clusterCIDR", self.cluster_cidr),
            ("serviceCIDR", self.service_cidr),
            ("underlayCIDR", self.underlay_cidr),
        ];
        for (i, (an, a)) in nets.iter().enumerate() {
            for (bn, b) in &nets[i + 1..] {
                if overlaps(*a, *b) {
                    return bad(format!("{an} {a} overlaps {bn} {b}"));
                }
            }
        }
        // Underlay hosts start at .2 (.1 is left for a gateway), the last address is broadcast.
        let underlay_hosts = self.underlay_cidr.hosts().count().saturating_sub(1);
        if self.nodes.len() > underlay_hosts {
            return bad(format!(
                "underlayCIDR {} has room for {underlay_hosts} nodes, topology has {}",
                self.underlay_cidr,
                self.nodes.len()
            ));
        }
        if !(576..=9000).contains(&self.underlay_mtu) {
            return bad(format!("underlayMtu {} must be within 576..=9000", self.underlay_mtu));
        }
        let mut node_names = BTreeSet::new();
        for n in &self.nodes {
            validate_dns_label("node name", &n.name)?;
            if !node_names.insert(n.name.as_str()) {
                return bad(format!("node {:?} is listed twice", n.name));
            }
            if let Some(c) = n.pod_cidr {
                if !self.cluster_cidr.contains(&c) {
                    return bad(format!(
                        "node {}: podCIDR {c} is not inside clusterCIDR {}",
                        n.name, self.cluster_cidr
                    ));
                }
                if c.prefix_len() > 30 {
                    return bad(format!("node {}: podCIDR {c} is too small for pods", n.name));
                }
            }
        }
        let mut pod_keys = BTreeSet::new();
        for p in &self.pods {
            validate_dns_label("namespace", &p.namespace)?;
            validate_dns_label("pod name", &p.name)?;
            if !pod_keys.insert((p.namespace.as_str(), p.name.as_str())) {
                return bad(format!("pod {}/{} is listed twice", p.namespace, p.name));
            }
            if !node_names.contains(p.node.as_str()) {
                return bad(format!("pod {}/{}: node {:?} is not in nodes", p.namespace, p.name, p.node));
            }
            let mut ports = BTreeSet::new();
            for port in &p.ports {
                if port.port() == 0 {
                    return bad(format!("pod {}/{}: port 0 is not a port", p.namespace, p.name));
                }
                if !ports.insert(port.port()) {
                    return bad(format!("pod {}/{}: port {} is listed twice", p.namespace, p.name, port.port()));
                }
                if let Some(n) = port.name() {
                    validate_dns_label("port name", n)?;
                }
            }
            for (k, v) in &p.labels {
                if k.is_empty() || k.len() > 253 || v.len() > 63 {
                    return bad(format!("pod {}/{}: bad label {k:?}={v:?}", p.namespace, p.name));
                }
            }
        }
        // A pod name alone must find one pod (probe/exec accept bare names).
        let mut bare = BTreeSet::new();
        for p in &self.pods {
            if !bare.insert(p.name.as_str()) {
                return bad(format!("pod name {:?} is used in two namespaces; the lab addresses pods by name", p.name));
            }
            if node_names.contains(p.name.as_str()) {
                return bad(format!("pod name {:?} is also a node name", p.name));
            }
            if p.name == EXTERNAL_HOST {
                return bad(format!("pod name {EXTERNAL_HOST:?} is the lab's external host"));
            }
        }
        Ok(())
    }
}

/// The name `probe` and `exec` give the external host; no pod may take it.
pub const EXTERNAL_HOST: &str = "external";

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Lab names end up in netns names (`tl-<name>-...`) and paths; no dashes so that a prefix never matches
/// another lab (`tl-a-` would otherwise cover lab `a-b`).
pub fn validate_lab_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 16 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(LabError::Topology(format!("lab name {name:?} must be 1-16 characters of a-z and 0-9")));
    }
    Ok(())
}

/// RFC 1123 label, like Kubernetes names of namespaces and (in this lab) pods and nodes.
pub fn validate_dns_label(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Topology(format!("{what} {name:?} must be a DNS label (a-z, 0-9, '-', at most 63)")))
    }
}

/// Either address family, for callers that only hold an IpNet.
pub fn to_v4(net: IpNet) -> Option<Ipv4Net> {
    match net {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = "name: t1\nnodes:\n  - name: a\n";

    #[test]
    fn default_topology_has_two_nodes_two_pods_each() {
        let t = Topology::default_topology();
        assert_eq!(t.nodes.len(), 2);
        for n in &t.nodes {
            assert_eq!(t.pods.iter().filter(|p| p.node == n.name).count(), 2);
        }
        assert_eq!(t.mode, Mode::Vxlan);
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../examples/lab-topology.yaml");
        let t = Topology::parse(text).unwrap();
        assert!(!t.pods.is_empty());
    }

    #[test]
    fn defaults_fill_in() {
        let t = Topology::parse(MINI).unwrap();
        assert_eq!(t.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(t.service_cidr.to_string(), "10.96.0.0/16");
        assert_eq!(t.node_cidr_mask_size, 24);
        assert_eq!(t.mode, Mode::Vxlan);
        assert!(t.pods.is_empty());
    }

    #[test]
    fn pod_without_ports_gets_default_port_and_named_ports_parse() {
        let t = Topology::parse(
            "name: t1\nmode: host-gw\nnodes: [{name: a}]\npods:\n  - {name: p, node: a}\n  - {name: q, node: a, ports: [80, {port: 81, name: http}]}\n",
        )
        .unwrap();
        assert_eq!(t.mode, Mode::HostGw);
        assert_eq!(t.pods[0].ports, vec![PortSpec::Number(DEFAULT_POD_PORT)]);
        assert_eq!(t.pods[0].namespace, "default");
        assert_eq!(t.pods[1].ports[1].name(), Some("http"));
        assert_eq!(t.pods[1].ports[1].port(), 81);
    }

    fn err(text: &str) -> String {
        Topology::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_input_with_clear_errors() {
        assert!(err("name: t1\nnodes: []\n").contains("at least one node"));
        assert!(err("name: T-1\nnodes: [{name: a}]\n").contains("lab name"));
        assert!(err("name: t1\nnodes: [{name: a}, {name: a}]\n").contains("twice"));
        assert!(err("name: t1\nnodes: [{name: a, podCIDR: 10.1.0.0/24}]\n").contains("not inside"));
        assert!(err("name: t1\nnodes: [{name: a}]\npods: [{name: p, node: b}]\n").contains("not in nodes"));
        assert!(err("name: t1\nserviceCIDR: 10.244.0.0/20\nnodes: [{name: a}]\n").contains("overlaps"));
        assert!(err("name: t1\nnodes: [{name: A_b}]\n").contains("DNS label"));
        assert!(err("name: t1\nnodes: [{name: a}]\npods: [{name: p, node: a, ports: [0]}]\n").contains("port 0"));
        assert!(err("name: t1\nnodes: [{name: a}]\npods: [{name: p, node: a, ports: [80, 80]}]\n").contains("twice"));
        assert!(err("name: t1\nnodes: [{name: a}]\nbogus: 1\n").contains("bogus"));
        assert!(err("name: t1\nnodeCidrMaskSize: 8\nnodes: [{name: a}]\n").contains("nodeCidrMaskSize"));
        assert!(err("name: t1\nnodes: [{name: a}]\npods: [{name: p, node: a}, {name: p, namespace: x, node: a}]\n")
            .contains("two namespaces"));
        assert!(err(": : :").contains("invalid topology"));
        assert!(err("name: t1\nunderlayCIDR: 10.0.0.0/30\nnodes: [{name: a}, {name: b}]\n").contains("room"));
    }

    #[test]
    fn unknown_mode_is_an_error() {
        let e = err("name: t1\nmode: ipip\nnodes: [{name: a}]\n");
        assert!(e.contains("ipip") || e.contains("variant"), "{e}");
    }

    #[test]
    fn mode_from_str() {
        assert_eq!("host-gw".parse::<Mode>().unwrap(), Mode::HostGw);
        assert_eq!("vxlan".parse::<Mode>().unwrap(), Mode::Vxlan);
        assert!("x".parse::<Mode>().is_err());
    }
}
