//! Interplay with Debian's reference plugins in /usr/lib/cni: portmap after trellis, the reference bridge over
//! trellis-ipam, and trellis delegating to host-local.
use serde_json::json;
use trellis_e2e::{conf, require_root, result, CniCmd, Fixture, Pod};

/// Port mapping rules as the node netns has them, in both views (portmap 1.1 writes iptables(-nft) rules).
fn nat_rules(fx: &Fixture) -> String {
    let ipt = fx.node.ns.run(&["iptables-save", "-t", "nat"]).unwrap_or_default();
    let nft = fx.node.ns.nft_ruleset().unwrap_or_default();
    format!("{ipt}\n{nft}")
}

#[test]
fn portmap_chained_after_trellis_adds_and_removes_dnat() {
    require_root!();
    let fx = Fixture::new().unwrap();
    // libcni 1.1 (podman) speaks at most 1.0.0, and so does Debian's portmap.
    let list = conf::conflist(
        "1.0.0",
        &fx.network,
        vec![fx.trellis("1.0.0", "10.244.5.0/24"), json!({"type": "portmap", "capabilities": {"portMappings": true}})],
    );
    let rc = json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    let pod = Pod::new("pm").unwrap();
    let res = fx.node.run_conflist(CniCmd::Add, &list, &pod, &rc, None).unwrap().unwrap();
    // portmap passes trellis's result through: still the shape podman needs.
    result::check_shape(&res, "1.0.0").unwrap();
    let ip = result::ipv4(&res).unwrap();
    let target = format!("{ip}:80");
    assert!(nat_rules(&fx).contains(&target), "no DNAT to {target} in the node netns:\n{}", nat_rules(&fx));

    // No conflist CHECK here: Debian's portmap 1.1.1 CHECK fails on a missing ipv6 DNAT chain even for an
    // IPv4-only result (seen with the reference bridge too), which says nothing about trellis.
    fx.node.run_conflist(CniCmd::Del, &list, &pod, &rc, Some(&res)).unwrap();
    assert!(!nat_rules(&fx).contains(&target), "DNAT to {target} survived DEL:\n{}", nat_rules(&fx));
    assert!(!fx.store().has(ip));
    assert!(!fx.node.ns.has_link(&pod.host_veth()).unwrap());
}

#[test]
fn reference_bridge_over_trellis_ipam_pods_ping() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let ipam = conf::trellis_ipam(fx.data.path(), conf::range("10.244.11.0/24", None, None, None));
    let c = conf::reference_bridge("1.0.0", &fx.network, "refbr0", ipam);
    let pods = fx.pods("rb", 2).unwrap();
    let ips: Vec<_> = pods.iter().map(|p| result::ipv4(&fx.node.add(&c, p).unwrap()).unwrap()).collect();
    assert_ne!(ips[0], ips[1]);
    for ip in &ips {
        assert!(ip.to_string().starts_with("10.244.11."), "{ip} outside the trellis-ipam range");
        assert!(fx.store().has(*ip), "trellis-ipam did not record {ip}");
    }
    assert!(pods[0].ns.ping(&ips[1].to_string()), "pod0 -> pod1 over the reference bridge");
    assert!(pods[1].ns.ping(&ips[0].to_string()), "pod1 -> pod0 over the reference bridge");
    for p in &pods {
        fx.node.del(&c, p).unwrap();
    }
    assert!(fx.store().ips().unwrap().is_empty(), "trellis-ipam DEL (called by bridge) did not free the IPs");
}

#[test]
fn trellis_delegates_to_host_local() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = conf::trellis_with_ipam("1.0.0", &fx.network, conf::host_local(fx.data.path(), "10.244.12.0/24"));
    let pod = Pod::new("hl").unwrap();
    let r = fx.node.add(&c, &pod).unwrap();
    result::check_shape(&r, "1.0.0").unwrap();
    let ip = result::ipv4(&r).unwrap();
    assert!(ip.to_string().starts_with("10.244.12."), "{ip} not from host-local's subnet");
    assert!(fx.store().has(ip), "host-local's IP file for {ip} missing");
    assert!(pod.ns.addrs("eth0").unwrap().contains(&format!("{ip}/24")));
    assert!(pod.ns.ping("10.244.12.1"), "pod -> gateway with host-local addresses");
    fx.node.del(&c, &pod).unwrap();
    assert!(!fx.store().has(ip), "DEL did not call host-local DEL");
    assert!(!fx.node.ns.has_link(&pod.host_veth()).unwrap());
}
