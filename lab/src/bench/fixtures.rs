//! What the bench measures over: two-node bench labs, a bare veth pair (the limit) and a path routed by hand over
//! host-gw's hops (the reference). Each removes itself on drop, pass or fail.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::error::{LabError, Result};
use crate::lab;
use crate::names;
use crate::net::{LabNet, NetlinkNet};
use crate::state::LabState;
use crate::topology::{Mode, Topology};
use crate::underlay;

/// Bench topology: 2 nodes, one pod on each.
pub fn bench_topology(name: &str, mode: Mode) -> Result<Topology> {
    Topology::parse(&format!(
        "name: {name}\nmode: {}\nnodes: [{{name: node1}}, {{name: node2}}]\npods:\n  - {{name: server, node: node1}}\n  - {{name: client, node: node2}}\n",
        mode.as_str()
    ))
}

/// A bare veth pair between two namespaces (named like a lab, so `down` can remove it).
pub struct VethPair {
    lab: String,
    /// Server side, 10.99.0.1.
    pub a: String,
    /// Client side, 10.99.0.2.
    pub b: String,
}

impl VethPair {
    pub fn create(lab: &str) -> Result<VethPair> {
        let p = VethPair {
            lab: lab.into(),
            a: format!("{}v1", names::netns_prefix(lab)),
            b: format!("{}v2", names::netns_prefix(lab)),
        };
        let mut net = NetlinkNet::default();
        net.ensure_netns(&p.a)?;
        net.ensure_netns(&p.b)?;
        net.add_veth(&p.a, "eth0", &p.b, "eth0", 1500)?;
        let a: Ipv4Net = "10.99.0.1/24".parse().expect("literal");
        let b: Ipv4Net = "10.99.0.2/24".parse().expect("literal");
        net.add_addr(&p.a, "eth0", a)?;
        net.add_addr(&p.b, "eth0", b)?;
        net.set_up(&p.a, "eth0")?;
        net.set_up(&p.b, "eth0")?;
        Ok(p)
    }

    /// Client netns, server netns, server address.
    pub fn endpoints(&self) -> (PathBuf, PathBuf, Ipv4Addr) {
        (names::netns_path(&self.b), names::netns_path(&self.a), Ipv4Addr::new(10, 99, 0, 1))
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = underlay::teardown_netns(&mut NetlinkNet::default(), &self.lab);
    }
}

/// Tears a bench lab down even when a measurement fails.
pub(super) struct LabGuard(pub(super) String);
impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.0) {
            eprintln!("bench: cleaning up lab {}: {e}", self.0);
        }
    }
}

pub(super) fn lab_pair(st: &LabState) -> Result<(PathBuf, PathBuf, Ipv4Addr)> {
    let srv = st.pod("server").ok_or_else(|| LabError::State("bench lab has no server pod".into()))?;
    let cli = st.pod("client").ok_or_else(|| LabError::State("bench lab has no client pod".into()))?;
    let ip = st.pod_ip(srv).ok_or_else(|| LabError::State("bench server pod has no IP".into()))?;
    Ok((names::netns_path(&cli.netns), names::netns_path(&srv.netns), ip))
}

/// The same hops as a host-gw lab (pod veth, node, underlay bridge, node, pod veth) routed by hand: no pod
/// bridge, no nftables, no agent. Separates what the lab's topology costs from what Trellis adds.
pub struct RoutedPath {
    lab: String,
    pub client: String,
    pub server: String,
    pub server_ip: Ipv4Addr,
}

impl RoutedPath {
    pub fn create(lab: &str) -> Result<RoutedPath> {
        let plan = crate::plan::plan(&bench_topology(lab, Mode::HostGw)?, None)?;
        let mut net = NetlinkNet::default();
        let r = RoutedPath {
            lab: lab.into(),
            client: plan.pods[1].netns.clone(),
            server: plan.pods[0].netns.clone(),
            server_ip: Ipv4Addr::new(10, 250, 0, 2),
        };
        underlay::setup_skeleton(&mut net, &plan)?;
        // node i: pod subnet 10.250.i.0/24, node side .1, pod .2; each node routes the other's subnet via its
        // underlay address.
        for (i, (node, pod)) in
            [(&plan.nodes[0], &plan.pods[0]), (&plan.nodes[1], &plan.pods[1])].into_iter().enumerate()
        {
            let gw = Ipv4Addr::new(10, 250, i as u8, 1);
            net.add_veth(&node.netns, "p0", &pod.netns, "eth0", plan.underlay_mtu)?;
            net.add_addr(&node.netns, "p0", Ipv4Net::new(gw, 24).expect("literal"))?;
            net.add_addr(&pod.netns, "eth0", Ipv4Net::new(Ipv4Addr::new(10, 250, i as u8, 2), 24).expect("literal"))?;
            net.set_up(&node.netns, "p0")?;
            net.set_up(&pod.netns, "eth0")?;
            net.sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
            add_route(&pod.netns, "0.0.0.0/0", gw)?;
            let peer = &plan.nodes[1 - i];
            add_route(&node.netns, &format!("10.250.{}.0/24", 1 - i), peer.internal_ip)?;
        }
        Ok(r)
    }

    /// Client netns, server netns, server address.
    pub fn endpoints(&self) -> (PathBuf, PathBuf, Ipv4Addr) {
        (names::netns_path(&self.client), names::netns_path(&self.server), self.server_ip)
    }
}

fn add_route(netns: &str, dst: &str, via: Ipv4Addr) -> Result<()> {
    let nl = |source| LabError::Netlink { netns: netns.to_string(), source };
    let mut h = trellis_netlink::Handle::in_netns(&names::netns_path(netns)).map_err(nl)?;
    let dst: ipnet::IpNet = dst.parse().expect("literal");
    h.ensure_route(&trellis_netlink::Route::new(dst).via(via.into())).map_err(nl)
}

impl Drop for RoutedPath {
    fn drop(&mut self) {
        let _ = underlay::teardown_netns(&mut NetlinkNet::default(), &self.lab);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_topology_is_two_nodes_one_pod_each() {
        let t = bench_topology("bx", Mode::HostGw).unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.pods.len(), 2);
        assert_ne!(t.pods[0].node, t.pods[1].node);
    }
}
