//! ipMasq: pod egress leaving clusterCIDR is masqueraded to the node's address (nftables table `ip trellis`).
use serde_json::json;
use trellis_e2e::{require_root, result, Fixture, Netns, Pod};

const NODE_UPLINK: &str = "192.168.250.1";
const OUTSIDE: &str = "192.168.250.2";

/// Packets counted by the rule of `chain` whose text contains `needle`.
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
    let extra = Pod::new("mq2").unwrap();
    fx.node.add(&c, &extra).unwrap();
    fx.node.del(&c, &extra).unwrap();
    fx.node.add(&c, &extra).unwrap();
    let again = fx.node.ns.nft_ruleset().unwrap();
    assert_eq!(again.matches("masquerade").count(), rules.matches("masquerade").count(), "rules grew:\n{again}");

    // An "outside" host joined to the node by a veth; it has no route back to the pods, so replies only come
    // back if the node rewrote the source to its own address.
    let outside = Netns::new("outside").unwrap();
    fx.node
        .ns
        .run(&["ip", "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", outside.name()])
        .unwrap();
    fx.node.ns.run(&["ip", "addr", "add", &format!("{NODE_UPLINK}/24"), "dev", "up0"]).unwrap();
    fx.node.ns.run(&["ip", "link", "set", "up0", "up"]).unwrap();
    outside.run(&["ip", "addr", "add", &format!("{OUTSIDE}/24"), "dev", "out0"]).unwrap();
    outside.run(&["ip", "link", "set", "out0", "up"]).unwrap();
    outside.run(&["nft", "add", "table", "inet", "probe"]).unwrap();
    outside.run(&["nft", "add", "chain", "inet", "probe", "input", "{ type filter hook input priority 0 ; }"]).unwrap();
    for src in [NODE_UPLINK.to_string(), "10.244.0.0/16".to_string()] {
        outside
            .run(&[
                "nft",
                "add",
                "rule",
                "inet",
                "probe",
                "input",
                "ip",
                "saddr",
                &src,
                "icmp",
                "type",
                "echo-request",
                "counter",
            ])
            .unwrap();
    }

    assert!(pod.ns.ping(OUTSIDE), "pod {pod_ip} -> outside {OUTSIDE} failed: not masqueraded?\nnode rules:\n{rules}");
    assert!(counter(&outside, NODE_UPLINK) >= 1, "no echo request arrived from the node address");
    assert_eq!(counter(&outside, "10.244.0.0/16"), 0, "pod source address leaked past the node");
}
