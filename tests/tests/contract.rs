//! The rest of docs/CONTRACTS.md for `trellis`: MTU defaults, dual-stack ranges, several interfaces per container.
use serde_json::json;
use trellis_e2e::{require_root, result, CniCmd, Fixture, Pod};

fn mtu(ns: &trellis_e2e::Netns, dev: &str) -> u64 {
    ns.link(dev).unwrap().unwrap_or_else(|| panic!("no {dev}"))["mtu"].as_u64().unwrap()
}

#[test]
fn default_mtu_is_1500_without_bridge_or_uplink() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let pod = Pod::new("mtu").unwrap();
    fx.node.add(&fx.trellis("1.0.0", "10.244.21.0/24"), &pod).unwrap();
    assert_eq!(mtu(&pod.ns, "eth0"), 1500);
    assert_eq!(mtu(&fx.node.ns, &pod.host_veth()), 1500);
}

#[test]
fn default_mtu_follows_the_default_route_uplink() {
    require_root!();
    let fx = Fixture::new().unwrap();
    // A node uplink with a VXLAN-sized MTU holding the default route (a veth: this kernel has no dummy).
    for cmd in [
        &["ip", "link", "add", "up0", "mtu", "1450", "type", "veth", "peer", "name", "up0p", "mtu", "1450"][..],
        &["ip", "link", "set", "up0p", "up"],
        &["ip", "addr", "add", "192.168.251.10/24", "dev", "up0"],
        &["ip", "link", "set", "up0", "up"],
        &["ip", "route", "add", "default", "via", "192.168.251.1", "dev", "up0"],
    ] {
        fx.node.ns.run(cmd).unwrap();
    }
    let pod = Pod::new("mtu").unwrap();
    fx.node.add(&fx.trellis("1.0.0", "10.244.22.0/24"), &pod).unwrap();
    assert_eq!(mtu(&pod.ns, "eth0"), 1450, "pod MTU should follow the default-route uplink");
    assert_eq!(mtu(&fx.node.ns, &pod.host_veth()), 1450);
}

#[test]
fn default_mtu_follows_an_existing_bridge() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let bridge = trellis_e2e::conf::BRIDGE;
    fx.node.ns.run(&["ip", "link", "add", bridge, "mtu", "1300", "type", "bridge"]).unwrap();
    let pod = Pod::new("mtu").unwrap();
    fx.node.add(&fx.trellis("1.0.0", "10.244.29.0/24"), &pod).unwrap();
    assert_eq!(mtu(&pod.ns, "eth0"), 1300, "pod MTU should follow the existing bridge");
    assert_eq!(mtu(&fx.node.ns, &pod.host_veth()), 1300);
    assert_eq!(mtu(&fx.node.ns, bridge), 1300, "the plugin must not change an existing bridge's MTU");
}

#[test]
fn dual_stack_pods_ping_over_v4_and_v6() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let mut c = fx.trellis("1.0.0", "10.244.23.0/24");
    c["ipam"]["ranges"] = json!([[{"subnet": "10.244.23.0/24"}], [{"subnet": "fd00:10:244:23::/64"}]]);
    c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    let pods = fx.pods("ds", 2).unwrap();
    let results: Vec<_> = pods.iter().map(|p| fx.node.add(&c, p).unwrap()).collect();
    let v6: Vec<String> = results
        .iter()
        .map(|r| {
            let ips = result::ips(r).unwrap();
            assert_eq!(ips.len(), 2, "one IPv4 and one IPv6 address: {r}");
            ips.iter().find(|e| e.addr.is_ipv6()).expect("an IPv6 address").addr.to_string()
        })
        .collect();
    for v in &v6 {
        assert!(v.starts_with("fd00:10:244:23:"), "{v} outside the IPv6 range");
    }
    let bridge_addrs = fx.node.ns.addrs(trellis_e2e::conf::BRIDGE).unwrap();
    assert!(bridge_addrs.contains(&"10.244.23.1/24".to_string()), "{bridge_addrs:?}");
    assert!(
        bridge_addrs.contains(&"fd00:10:244:23::1/64".to_string()),
        "bridge lacks the IPv6 gateway: {bridge_addrs:?}"
    );
    assert_eq!(fx.node.ns.sysctl("net.ipv6.conf.all.forwarding").unwrap(), "1");
    assert!(pods[0].ns.ping(&v6[1]), "pod0 -> pod1 over IPv6");
    assert!(pods[1].ns.ping("fd00:10:244:23::1"), "pod1 -> IPv6 gateway");
    assert!(pods[0].ns.ping(&result::ipv4(&results[1]).unwrap().to_string()), "pod0 -> pod1 over IPv4");
    assert!(pods[0].ns.routes6().unwrap().iter().any(|r| r["dst"] == "default"), "no IPv6 default route in the pod");
    for p in &pods {
        fx.node.del(&c, p).unwrap();
    }
    assert!(fx.store().ips().unwrap().is_empty(), "DEL left IPs: {:?}", fx.store().ips().unwrap());
    fx.node.ns.wait_pod_links(&[]).unwrap();
}

#[test]
fn two_interfaces_of_one_container_are_independent() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.24.0/24");
    let eth0 = Pod::new("multi").unwrap();
    let r0 = fx.node.add(&c, &eth0).unwrap();
    // Same container and netns, second interface.
    let r1 = fx.node.cni(CniCmd::Add, &c, &eth0.id, &eth0.netns(), "eth1").unwrap().result().unwrap();
    let (ip0, ip1) = (result::ipv4(&r0).unwrap(), result::ipv4(&r1).unwrap());
    assert_ne!(ip0, ip1);
    let veth1 = trellis_e2e::veth::host_veth_name(&eth0.id, "eth1");
    assert_ne!(veth1, eth0.host_veth());
    assert!(fx.node.ns.has_link(&veth1).unwrap() && fx.node.ns.has_link(&eth0.host_veth()).unwrap());
    assert!(eth0.ns.has_link("eth1").unwrap());

    fx.node.del(&c, &eth0).unwrap();
    assert!(!fx.store().has(ip0) && fx.store().has(ip1), "DEL of eth0 must only release eth0's IP");
    assert!(eth0.ns.has_link("eth1").unwrap() && !eth0.ns.has_link("eth0").unwrap());
    fx.node.ns.wait_pod_links(std::slice::from_ref(&veth1)).unwrap();
}

#[test]
fn hairpin_and_default_gateway_can_be_turned_off() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let mut c = fx.trellis("1.0.0", "10.244.31.0/24");
    c["hairpinMode"] = json!(false);
    c["isDefaultGateway"] = json!(false);
    c["ipam"].as_object_mut().unwrap().remove("routes");
    let pod = Pod::new("opts").unwrap();
    let r = fx.node.add(&c, &pod).unwrap();
    let details = fx.node.ns.link_details(&pod.host_veth()).unwrap();
    assert_eq!(details["linkinfo"]["info_slave_data"]["hairpin"], false, "hairpinMode: false ignored");
    assert!(!result::has_route(&r, "0.0.0.0/0"), "isDefaultGateway: false still reports a default route: {r}");
    assert!(
        !pod.ns.routes4().unwrap().iter().any(|r| r["dst"] == "default"),
        "isDefaultGateway: false still installed a default route"
    );
    // The subnet itself stays reachable.
    assert!(pod.ns.ping("10.244.31.1"));
}

#[test]
fn cni_args_ip_request_is_honoured_through_trellis() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.32.0/24");
    let pod = Pod::new("req").unwrap();
    let mut inv = trellis_e2e::Invocation::attachment(CniCmd::Add, &c, &pod.id, &pod.netns(), &pod.ifname);
    // The CNI_ARGS shape podman and kubelet send, unknown keys included.
    inv.args = Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;IP=10.244.32.50".into());
    let r = fx.node.invoke(&fx.node.bins.trellis(), &inv).unwrap().result().unwrap();
    assert_eq!(result::ipv4(&r).unwrap().to_string(), "10.244.32.50");
    assert!(pod.ns.addrs("eth0").unwrap().contains(&"10.244.32.50/24".to_string()));

    // The same address for another pod is refused with a CNI error, and that pod gets nothing.
    let other = Pod::new("req2").unwrap();
    let mut inv2 = trellis_e2e::Invocation::attachment(CniCmd::Add, &c, &other.id, &other.netns(), &other.ifname);
    inv2.args = inv.args.clone();
    let out = fx.node.invoke(&fx.node.bins.trellis(), &inv2).unwrap();
    let err = out.error().unwrap();
    assert!(err.text().contains("10.244.32.50"), "error should name the address:\n{}", out.describe());
    assert_eq!(other.ns.link_names().unwrap(), vec!["lo"]);
    assert_eq!(fx.store().ips().unwrap().len(), 1);
    fx.node.ns.wait_pod_links(&[pod.host_veth()]).unwrap();
}
