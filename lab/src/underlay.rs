//! Builds the lab skeleton: the underlay netns with its bridge, one netns per node with `eth0` on that bridge
//! carrying the node's InternalIP, and one empty netns per pod (the CNI plugin wires those). Rolls back on failure.

use ipnet::Ipv4Net;

use crate::error::Result;
use crate::names;
use crate::net::LabNet;
use crate::plan::{LabPlan, EXTERNAL_PORT, NODE_UPLINK, UNDERLAY_BRIDGE};

pub const UNDERLAY_SYSCTLS: [&str; 3] = [
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
];

pub fn setup_skeleton(net: &mut dyn LabNet, plan: &LabPlan) -> Result<()> {
    let result = try_setup(net, plan);
    if result.is_err() {
        // Leave nothing half-built; the caller reports the original error.
        let _ = teardown_netns(net, &plan.name);
    }
    result
}

fn try_setup(net: &mut dyn LabNet, plan: &LabPlan) -> Result<()> {
    let ul = &plan.underlay_netns;
    net.ensure_netns(ul)?;
    net.ensure_bridge(ul, UNDERLAY_BRIDGE, plan.underlay_mtu)?;
    // The underlay bridge stands for a physical switch: with br_netfilter loaded, the kernel would otherwise run
    // every frame crossing it through netfilter, a cost no real network has.
    for key in UNDERLAY_SYSCTLS {
        net.sysctl(ul, key, "0")?;
    }
    for node in &plan.nodes {
        net.ensure_netns(&node.netns)?;
        net.add_veth(ul, &node.bridge_port, &node.netns, NODE_UPLINK, plan.underlay_mtu)?;
        net.set_master(ul, &node.bridge_port, UNDERLAY_BRIDGE)?;
        net.set_up(ul, &node.bridge_port)?;
        let addr = Ipv4Net::new(node.internal_ip, plan.underlay_cidr.prefix_len()).expect("prefix of a parsed net");
        net.add_addr(&node.netns, NODE_UPLINK, addr)?;
        net.set_up(&node.netns, NODE_UPLINK)?;
    }
    // The external host: one more machine on the switch, with no route into the pod network.
    let ext = &plan.external_netns;
    net.ensure_netns(ext)?;
    net.add_veth(ul, EXTERNAL_PORT, ext, NODE_UPLINK, plan.underlay_mtu)?;
    net.set_master(ul, EXTERNAL_PORT, UNDERLAY_BRIDGE)?;
    net.set_up(ul, EXTERNAL_PORT)?;
    let addr = Ipv4Net::new(plan.external_ip, plan.underlay_cidr.prefix_len()).expect("prefix of a parsed net");
    net.add_addr(ext, NODE_UPLINK, addr)?;
    net.set_up(ext, NODE_UPLINK)?;
    for pod in &plan.pods {
        net.ensure_netns(&pod.netns)?;
    }
    Ok(())
}

/// Deletes every netns of the lab, found by name prefix: pods, then nodes, then the underlay.
/// Keeps going on errors and returns the first.
pub fn teardown_netns(net: &mut dyn LabNet, lab: &str) -> Result<Vec<String>> {
    let prefix = names::netns_prefix(lab);
    let mut ours: Vec<String> = net.list_netns()?.into_iter().filter(|n| n.starts_with(&prefix)).collect();
    let rank = |n: &str| {
        let rest = &n[prefix.len()..];
        if rest.starts_with("pod-") {
            0
        } else if rest.starts_with("node-") || rest == "ext" {
            1
        } else {
            2
        }
    };
    ours.sort_by_key(|n| rank(n));
    let mut first_err = None;
    for n in &ours {
        if let Err(e) = net.delete_netns(n) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(ours),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{FakeNet, FaultyNet};
    use crate::plan::plan;
    use crate::topology::Topology;

    fn lab() -> LabPlan {
        plan(&Topology::default_topology(), None).unwrap()
    }

    #[test]
    fn skeleton_wires_every_node_to_the_bridge() {
        let p = lab();
        let mut net = FakeNet::default();
        setup_skeleton(&mut net, &p).unwrap();
        let ul = &net.netns[&p.underlay_netns];
        assert!(ul["br0"].up);
        for key in UNDERLAY_SYSCTLS {
            assert_eq!(net.sysctls[&(p.underlay_netns.clone(), key.to_string())], "0");
        }
        for n in &p.nodes {
            let port = &ul[&n.bridge_port];
            assert_eq!(port.master.as_deref(), Some("br0"));
            assert!(port.up);
            let eth0 = &net.netns[&n.netns]["eth0"];
            assert_eq!(eth0.addrs, vec![Ipv4Net::new(n.internal_ip, 24).unwrap()]);
            assert_eq!(eth0.peer, Some((p.underlay_netns.clone(), n.bridge_port.clone())));
            assert!(eth0.up);
        }
        for pod in &p.pods {
            assert!(net.netns[&pod.netns].is_empty());
        }
        let ext = &net.netns[&p.external_netns]["eth0"];
        assert_eq!(ext.addrs, vec![Ipv4Net::new(p.external_ip, 24).unwrap()]);
        assert_eq!(ext.peer, Some((p.underlay_netns.clone(), EXTERNAL_PORT.to_string())));
        assert_eq!(ul[EXTERNAL_PORT].master.as_deref(), Some("br0"));
        assert_eq!(net.netns.len(), 2 + p.nodes.len() + p.pods.len());
    }

    #[test]
    fn any_failure_rolls_back_everything() {
        let p = lab();
        let mut counting = FaultyNet::new(FakeNet::default(), usize::MAX);
        setup_skeleton(&mut counting, &p).unwrap();
        assert!(counting.calls > 10);
        for fail_at in 0..counting.calls {
            let mut net = FaultyNet::new(FakeNet::default(), fail_at);
            // A netns of another lab must survive our rollback.
            net.inner.netns.insert("tl-other-ul".into(), Default::default());
            let r = setup_skeleton(&mut net, &p);
            assert!(r.is_err(), "fail_at {fail_at} should fail");
            assert_eq!(net.inner.list_netns().unwrap(), vec!["tl-other-ul".to_string()]);
        }
    }

    #[test]
    fn teardown_only_removes_this_lab() {
        let p = lab();
        let mut net = FakeNet::default();
        setup_skeleton(&mut net, &p).unwrap();
        net.ensure_netns("tl-default1-ul").unwrap();
        net.ensure_netns("unrelated").unwrap();
        let removed = teardown_netns(&mut net, "default").unwrap();
        assert_eq!(removed.len(), 2 + p.nodes.len() + p.pods.len());
        assert!(removed[0].contains("-pod-"));
        assert_eq!(removed.last().unwrap(), &p.underlay_netns);
        assert_eq!(net.list_netns().unwrap(), vec!["tl-default1-ul".to_string(), "unrelated".to_string()]);
    }
}
