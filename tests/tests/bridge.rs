//! `trellis` on its bridge: connectivity, the result it reports, DEL, idempotent ADD, CHECK.
use serde_json::{json, Value};
use std::net::IpAddr;
use trellis_e2e::{conf, require_root, result, CniCmd, Fixture, Pod};

const SUBNET: &str = "10.244.1.0/24";
const GATEWAY: &str = "10.244.1.1";

fn link_mtu(ns: &trellis_e2e::Netns, name: &str) -> u64 {
    ns.link(name).unwrap().unwrap_or_else(|| panic!("no link {name} in {}", ns.name()))["mtu"].as_u64().unwrap()
}

#[test]
fn two_pods_ping_each_other_and_the_gateway() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let mut c = fx.trellis("1.0.0", SUBNET);
    c["mtu"] = json!(1400);
    let pods = fx.pods("pod", 2).unwrap();
    let results: Vec<Value> = pods.iter().map(|p| fx.node.add(&c, p).unwrap()).collect();

    let gateway: IpAddr = GATEWAY.parse().unwrap();
    for (pod, r) in pods.iter().zip(&results) {
        result::check_shape(r, "1.0.0").unwrap();
        let ifaces = result::interfaces(r);
        // Host veth: reported by its contract name, without sandbox, with the MAC the kernel has.
        let host = ifaces
            .iter()
            .find(|i| i.name == pod.host_veth())
            .unwrap_or_else(|| panic!("host veth {} missing from interfaces: {r}", pod.host_veth()));
        assert_eq!(host.sandbox, None, "host veth must not carry sandbox: {r}");
        let host_link = fx.node.ns.link(&pod.host_veth()).unwrap().expect("host veth exists in node netns");
        assert_eq!(host.mac.as_deref(), host_link["address"].as_str(), "host veth MAC in result vs kernel");
        assert_eq!(host_link["master"], conf::BRIDGE, "host veth is a port of the bridge");
        let details = fx.node.ns.link_details(&pod.host_veth()).unwrap();
        assert_eq!(details["linkinfo"]["info_slave_data"]["hairpin"], true, "hairpinMode defaults to true");
        // Pod interface: sandbox = netns path, the IP points at it.
        let entries = result::ips(r).unwrap();
        let v4 = entries.iter().find(|e| e.addr.is_ipv4()).expect("an IPv4 entry");
        let pod_if = result::pod_iface(&ifaces, v4).unwrap();
        assert_eq!(pod_if.name, "eth0");
        assert_eq!(pod_if.sandbox.as_deref(), Some(pod.netns().as_str()));
        assert_eq!(v4.gateway, Some(gateway), "ips[].gateway: {r}");
        assert_eq!(v4.prefix, 24);
        assert!(result::has_route(r, "0.0.0.0/0"), "no default route in result: {r}");
        // The kernel agrees with the result.
        let pod_link = pod.ns.link("eth0").unwrap().expect("eth0 in pod netns");
        assert_eq!(pod_if.mac.as_deref(), pod_link["address"].as_str(), "pod MAC in result vs kernel");
        assert!(pod.ns.addrs("eth0").unwrap().contains(&format!("{}/24", v4.addr)));
        let default = pod.ns.routes4().unwrap().into_iter().find(|r| r["dst"] == "default");
        assert_eq!(default.expect("default route in pod")["gateway"], GATEWAY);
        // MTU applied on both ends.
        assert_eq!(link_mtu(&pod.ns, "eth0"), 1400);
        assert_eq!(link_mtu(&fx.node.ns, &pod.host_veth()), 1400);
    }
    assert!(fx.node.ns.addrs(conf::BRIDGE).unwrap().contains(&format!("{GATEWAY}/24")), "bridge holds the gateway");
    assert_eq!(fx.node.ns.sysctl("net.ipv4.ip_forward").unwrap(), "1", "plugin enables forwarding in the node");

    let ip0 = result::ipv4(&results[0]).unwrap();
    let ip1 = result::ipv4(&results[1]).unwrap();
    assert_ne!(ip0, ip1);
    assert!(pods[0].ns.ping(&ip1.to_string()), "pod0 -> pod1 {ip1}");
    assert!(pods[1].ns.ping(&ip0.to_string()), "pod1 -> pod0 {ip0}");
    for p in &pods {
        assert!(p.ns.ping(GATEWAY), "{} -> gateway", p.ns.name());
    }
    assert!(fx.node.ns.ping(&ip0.to_string()), "node -> pod0");
}

#[test]
fn del_removes_veth_frees_ip_and_repeats() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", SUBNET);
    let pod = Pod::new("pod").unwrap();
    let r = fx.node.add(&c, &pod).unwrap();
    let ip = result::ipv4(&r).unwrap();
    assert!(fx.store().has(ip), "IP file for {ip} after ADD in {}", fx.store().dir().display());
    assert!(fx.node.ns.has_link(&pod.host_veth()).unwrap());

    // Runtimes since 1.0 send the ADD result as prevResult on DEL.
    let mut del_conf = c.clone();
    del_conf["prevResult"] = r.clone();
    fx.node.del(&del_conf, &pod).unwrap();
    assert!(!fx.node.ns.has_link(&pod.host_veth()).unwrap(), "host veth survived DEL");
    assert!(!pod.ns.has_link("eth0").unwrap(), "pod eth0 survived DEL");
    assert!(!fx.store().has(ip), "IP {ip} still allocated after DEL");

    // Second DEL: nothing left to do, still success (with and without prevResult).
    fx.node.del(&del_conf, &pod).unwrap();
    fx.node.del(&c, &pod).unwrap();
    assert!(fx.store().ips().unwrap().is_empty());
    // The renamed (`tz…`) host end goes too, once the kernel has unregistered it.
    fx.node.ns.wait_pod_links(&[]).unwrap();
}

#[test]
fn del_after_netns_is_gone_succeeds_and_frees_ip() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", SUBNET);
    let Pod { ns, id, ifname } = Pod::new("pod").unwrap();
    let netns_path = ns.path_str();
    let r = fx.node.cni(CniCmd::Add, &c, &id, &netns_path, &ifname).unwrap().result().unwrap();
    let ip = result::ipv4(&r).unwrap();
    drop(ns); // the runtime already destroyed the sandbox
    assert!(!std::path::Path::new(&netns_path).exists());
    fx.node.cni(CniCmd::Del, &c, &id, &netns_path, &ifname).unwrap().ok().unwrap();
    assert!(!fx.store().has(ip), "IP {ip} leaked when the netns was gone");
    let veth = trellis_e2e::veth::host_veth_name(&id, &ifname);
    assert!(!fx.node.ns.has_link(&veth).unwrap());
    fx.node.ns.wait_pod_links(&[]).unwrap();
}

#[test]
fn check_passes_after_add_and_fails_after_address_removed() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", SUBNET);
    let pod = Pod::new("pod").unwrap();
    let r = fx.node.add(&c, &pod).unwrap();
    let mut check_conf = c.clone();
    check_conf["prevResult"] = r.clone();
    fx.node.pod(CniCmd::Check, &check_conf, &pod).unwrap().ok().unwrap();

    let ip = result::ipv4(&r).unwrap();
    pod.ns.run(&["ip", "addr", "del", &format!("{ip}/24"), "dev", "eth0"]).unwrap();
    let out = fx.node.pod(CniCmd::Check, &check_conf, &pod).unwrap();
    let err = out.error().unwrap();
    assert_ne!(err.code, 0);
    assert!(
        err.text().contains(&ip.to_string()) || err.text().to_lowercase().contains("addr"),
        "CHECK error should say what drifted: {}",
        out.describe()
    );
}

#[test]
fn check_fails_when_the_host_veth_is_gone() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("0.4.0", SUBNET);
    let pod = Pod::new("pod").unwrap();
    let r = fx.node.add(&c, &pod).unwrap();
    let mut check_conf = c.clone();
    check_conf["prevResult"] = r;
    fx.node.pod(CniCmd::Check, &check_conf, &pod).unwrap().ok().unwrap();
    fx.node.ns.run(&["ip", "link", "del", &pod.host_veth()]).unwrap();
    let out = fx.node.pod(CniCmd::Check, &check_conf, &pod).unwrap();
    let err = out.error().unwrap();
    assert_eq!(err.cni_version, "0.4.0", "error echoes the config's version:\n{}", out.describe());
}

#[test]
fn del_without_cni_netns_frees_everything() {
    require_root!();
    // CNI_NETNS is optional for DEL (the runtime may have lost the sandbox path).
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", SUBNET);
    let pod = Pod::new("pod").unwrap();
    let ip = result::ipv4(&fx.node.add(&c, &pod).unwrap()).unwrap();
    let mut inv = trellis_e2e::Invocation::attachment(CniCmd::Del, &c, &pod.id, &pod.netns(), &pod.ifname);
    inv.netns = None;
    fx.node.invoke(&fx.node.bins.trellis(), &inv).unwrap().ok().unwrap();
    assert!(!fx.store().has(ip), "DEL without CNI_NETNS leaked {ip}");
    assert!(!fx.node.ns.has_link(&pod.host_veth()).unwrap(), "DEL without CNI_NETNS left the host veth");
    fx.node.ns.wait_pod_links(&[]).unwrap();
}
