//! ipMasq: pod egress leaving clusterCIDR is masqueraded to the node's address (nftables tables `ip trellis` and
//! `ip6 trellis`); clusterCIDR may be an array, one entry per family or several per family.
use serde_json::json;
use trellis_e2e::{require_root, result, Fixture, Netns, Pod};

const NODE_UPLINK: &str = "192.168.250.1";
const OUTSIDE: &str = "192.168.250.2";
const NODE_UPLINK6: &str = "fd00:250::1";
const OUTSIDE6: &str = "fd00:250::2";

/// Packets counted by the rule of the outside host's `inet probe input` chain whose text contains `needle`.
fn counter(ns: &Netns, needle: &str) -> u64 {
    let text = ns.run(&["nft", "list", "chain", "inet", "probe", "input"]).unwrap();
    let line = text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no rule with {needle}:\n{text}"));
    let after = line.split("packets ").nth(1).unwrap_or_else(|| panic!("no counter in {line}"));
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn ip_masq_rewrites_egress_to_the_node_address() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let mut c = fx.trellis("1.0.0", "10.244.10.0/24");
    c["ipMasq"] = json!(true);
    c["clusterCIDR"] = json!("10.244.0.0/16");
    let pod = Pod::new("mq").unwrap();
    let r = fx.node.add(&c, &pod).unwrap();
    let pod_ip = result::ipv4(&r).unwrap();

    let rules = fx.node.ns.nft_ruleset().unwrap();
    assert!(rules.contains("table ip trellis"), "no `ip trellis` table in the node netns:\n{rules}");
    assert!(rules.contains("masquerade"), "no masquerade rule:\n{rules}");
    assert!(
        rules.contains("10.244.10.0/24") || rules.contains("10.244.0.0/16"),
        "masquerade rule does not mention the pod subnet or clusterCIDR:\n{rules}"
    );

    // More pods must not stack more rules (the rule set is ensured, not appended).
    let extra: Vec<Pod> = (2..4).map(|i| Pod::new(&format!("mq{i}")).unwrap()).collect();
    for p in &extra {
        fx.node.add(&c, p).unwrap();
    }
    let again = fx.node.ns.nft_ruleset().unwrap();
    assert_eq!(again.matches("masquerade").count(), rules.matches("masquerade").count(), "rules grew:\n{again}");

    // An "outside" host joined to the node by a veth; it has no route back to the pods, so replies only come
    // back if the node rewrote the source to its own address.
    let outside = outside_host(&fx.node.ns, &[("ip", NODE_UPLINK), ("ip", "10.244.0.0/16")]);

    assert!(pod.ns.ping(OUTSIDE), "pod {pod_ip} -> outside {OUTSIDE} failed: not masqueraded?\nnode rules:\n{rules}");
    assert!(counter(&outside, NODE_UPLINK) >= 1, "no echo request arrived from the node address");
    assert_eq!(counter(&outside, "10.244.0.0/16"), 0, "pod source address leaked past the node");
}

/// An "outside" host joined to the node by a veth (`up0` in the node, `out0` outside), both families, with no
/// route back to the pods, and an `inet probe input` chain counting echo requests from each of `sources`.
fn outside_host(node: &Netns, sources: &[(&str, &str)]) -> Netns {
    let outside = Netns::new("outside").unwrap();
    node.run(&["ip", "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", outside.name()]).unwrap();
    node.run(&["ip", "addr", "add", &format!("{NODE_UPLINK}/24"), "dev", "up0"]).unwrap();
    node.run(&["ip", "addr", "add", &format!("{NODE_UPLINK6}/64"), "dev", "up0", "nodad"]).unwrap();
    node.run(&["ip", "link", "set", "up0", "up"]).unwrap();
    outside.run(&["ip", "addr", "add", &format!("{OUTSIDE}/24"), "dev", "out0"]).unwrap();
    outside.run(&["ip", "addr", "add", &format!("{OUTSIDE6}/64"), "dev", "out0", "nodad"]).unwrap();
    outside.run(&["ip", "link", "set", "out0", "up"]).unwrap();
    outside.run(&["nft", "add", "table", "inet", "probe"]).unwrap();
    outside.run(&["nft", "add", "chain", "inet", "probe", "input", "{ type filter hook input priority 0 ; }"]).unwrap();
    for (family, src) in sources {
        let icmp = if *family == "ip6" { "icmpv6" } else { "icmp" };
        outside
            .run(&[
                "nft",
                "add",
                "rule",
                "inet",
                "probe",
                "input",
                family,
                "saddr",
                src,
                icmp,
                "type",
                "echo-request",
                "counter",
            ])
            .unwrap();
    }
    outside
}

#[test]
fn ipv6_egress_is_masqueraded_in_table_ip6_trellis_and_cluster_cidr_takes_an_array() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let mut c = fx.trellis("1.0.0", "10.244.48.0/24");
    c["ipam"]["ranges"] = json!([[{"subnet": "10.244.48.0/24"}], [{"subnet": "fd00:10:244:48::/64"}]]);
    c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    c["ipMasq"] = json!(true);
    // README: "a CIDR, a comma-separated list, or an array"; two IPv4 entries and one IPv6.
    c["clusterCIDR"] = json!(["10.244.0.0/16", "10.96.0.0/12", "fd00:10:244::/48"]);
    let pod = Pod::new("mq6").unwrap();
    let r = fx.node.add(&c, &pod).unwrap();
    let v6 = result::ips(&r).unwrap().into_iter().find(|e| e.addr.is_ipv6()).expect("an IPv6 address").addr;

    let rules = fx.node.ns.nft_ruleset().unwrap();
    let table6 = rules.split("table ").find(|t| t.starts_with("ip6 trellis")).unwrap_or_else(|| {
        panic!("no `ip6 trellis` table in the node netns:\n{rules}");
    });
    assert!(table6.contains("masquerade"), "no masquerade in ip6 trellis:\n{table6}");
    assert!(table6.contains("fd00:10:244:48::/64"), "the IPv6 rule does not match the pod range:\n{table6}");
    assert!(table6.contains("fd00:10:244::/48"), "the IPv6 rule does not exempt the IPv6 clusterCIDR:\n{table6}");
    assert!(!table6.contains("10.96.0.0/12"), "an IPv4 CIDR in the IPv6 table:\n{table6}");
    let table4 = rules.split("table ").find(|t| t.starts_with("ip trellis")).expect("the ip trellis table");
    for cidr in ["10.244.0.0/16", "10.96.0.0/12"] {
        assert!(table4.contains(cidr), "clusterCIDR entry {cidr} missing from ip trellis:\n{table4}");
    }

    let outside = outside_host(&fx.node.ns, &[("ip6", NODE_UPLINK6), ("ip6", "fd00:10:244::/48")]);
    pod.ns.wait_ipv6_ready().unwrap();
    fx.node.ns.wait_ipv6_ready().unwrap();
    assert!(pod.ns.ping(OUTSIDE6), "pod {v6} -> outside {OUTSIDE6} failed: not masqueraded?\nnode rules:\n{rules}");
    assert!(counter(&outside, NODE_UPLINK6) >= 1, "no IPv6 echo request arrived from the node address");
    assert_eq!(counter(&outside, "fd00:10:244::/48"), 0, "the pod's IPv6 source leaked past the node");
}

#[test]
fn cluster_cidr_array_entries_are_all_exempt_from_masquerade() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let mut c = fx.trellis("1.0.0", "10.244.49.0/24");
    c["ipMasq"] = json!(true);
    // The outside host's subnet is listed as part of the cluster: traffic to it must keep the pod's source.
    c["clusterCIDR"] = json!(["10.244.0.0/16", "192.168.250.0/24"]);
    let pod = Pod::new("mqarr").unwrap();
    let pod_ip = result::ipv4(&fx.node.add(&c, &pod).unwrap()).unwrap();
    let outside = outside_host(&fx.node.ns, &[("ip", NODE_UPLINK), ("ip", "10.244.0.0/16")]);
    // With a route back, unmasqueraded requests are answered.
    outside.run(&["ip", "route", "add", "10.244.49.0/24", "via", NODE_UPLINK]).unwrap();
    assert!(pod.ns.ping(OUTSIDE), "pod {pod_ip} -> outside {OUTSIDE}");
    assert!(counter(&outside, "10.244.0.0/16") >= 1, "the second clusterCIDR entry was masqueraded");
    assert_eq!(counter(&outside, NODE_UPLINK), 0, "traffic inside clusterCIDR took the node's address");
}

/// The node netns' conntrack table (`/proc/net/nf_conntrack` is per netns; empty when nothing is tracked).
fn conntrack(node: &Netns) -> String {
    node.run(&["cat", "/proc/net/nf_conntrack"]).unwrap_or_default()
}

#[test]
fn traffic_inside_cluster_cidr_is_untracked_and_egress_still_masqueraded() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let mut c = fx.trellis("1.0.0", "10.244.51.0/24");
    c["ipMasq"] = json!(true);
    c["clusterCIDR"] = json!("10.244.0.0/16");
    let a = Pod::new("ut1").unwrap();
    let b = Pod::new("ut2").unwrap();
    let ip_a = result::ipv4(&fx.node.add(&c, &a).unwrap()).unwrap();
    let ip_b = result::ipv4(&fx.node.add(&c, &b).unwrap()).unwrap();
    let rules = fx.node.ns.nft_ruleset().unwrap();
    for hook in ["prerouting", "output"] {
        assert!(rules.contains(&format!("type filter hook {hook} priority raw")), "no raw {hook} chain:\n{rules}");
    }
    assert_eq!(rules.matches("notrack").count(), 2, "{rules}");

    // Pod to pod (bridged, and through the node's gateway address, which is in clusterCIDR too): no conntrack
    // entry, whether or not br_netfilter hands bridged frames to the IP hooks.
    assert!(a.ns.ping(&ip_b.to_string()), "pod {ip_a} -> pod {ip_b}");
    let gw = "10.244.51.1";
    assert!(a.ns.ping(gw), "pod {ip_a} -> gateway {gw}");
    let ct = conntrack(&fx.node.ns);
    assert!(!ct.contains(&format!("src={ip_a} ")), "intra-cluster flows were tracked:\n{ct}");

    // Pod to outside: tracked, masqueraded, answered.
    let outside = outside_host(&fx.node.ns, &[("ip", NODE_UPLINK), ("ip", "10.244.0.0/16")]);
    assert!(a.ns.ping(OUTSIDE), "pod {ip_a} -> outside {OUTSIDE} failed: not masqueraded?\n{rules}");
    assert!(counter(&outside, NODE_UPLINK) >= 1, "no echo request arrived from the node address");
    assert_eq!(counter(&outside, "10.244.0.0/16"), 0, "pod source address leaked past the node");
    let ct = conntrack(&fx.node.ns);
    assert!(ct.contains(&format!("src={ip_a} dst={OUTSIDE} ")), "the masqueraded flow is not tracked:\n{ct}");

    // untrackClusterTraffic false: the next ADD removes the raw chains (and only them), atomically.
    c["untrackClusterTraffic"] = json!(false);
    let d = Pod::new("ut3").unwrap();
    fx.node.add(&c, &d).unwrap();
    let off = fx.node.ns.nft_ruleset().unwrap();
    assert!(!off.contains("notrack") && !off.contains("priority raw"), "{off}");
    assert_eq!(off.matches("masquerade").count(), 1, "{off}");
}
