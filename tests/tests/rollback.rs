//! "A failing ADD undoes what it created", on the real kernel: ADD is made to fail at each real step (the IPAM
//! store, the range, a delegated IPAM, an object in the bridge's or the pod interface's place, a route the kernel
//! refuses after the veth exists, a masquerade chain in the way), and neither the node nor the pod may keep
//! anything of it: no `tr*`/`tz*` link, no lease file, nothing but what was there before in the pod.
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use trellis_e2e::{conf, require_root, require_tool, result, CniCmd, Fixture, Pod};

/// ADD that must fail with a well-formed CNI error; returns the error text for messages.
fn add_fails(fx: &Fixture, c: &Value, pod: &Pod) -> String {
    let out = fx.node.pod(CniCmd::Add, c, pod).unwrap();
    let err = out.error().unwrap_or_else(|e| panic!("ADD should fail with a CNI error: {e:#}"));
    eprintln!("ADD failed as it should: code {} {}", err.code, err.text());
    out.describe()
}

/// The node keeps exactly `live` pod links (after any dying `tz*` link is gone) and the store exactly `leases`;
/// the pod netns holds exactly `pod_links`.
fn assert_left(fx: &Fixture, pod: &Pod, live: &[&Pod], leases: &[std::net::IpAddr], pod_links: &[&str], why: &str) {
    let expected: Vec<String> = live.iter().map(|p| p.host_veth()).collect();
    if let Err(e) = fx.node.ns.wait_pod_links(&expected) {
        panic!("{e:#}\nADD was:\n{why}");
    }
    assert_eq!(fx.store().ips().unwrap(), leases, "lease files after the failed ADD:\n{why}");
    let mut names = pod.ns.link_names().unwrap();
    names.sort();
    let mut want: Vec<String> = pod_links.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "links in the pod netns after the failed ADD:\n{why}");
}

/// The failure came after IPAM reserved an address (so the rollback, not luck, released it): trellis-ipam
/// remembers every reservation in `last_reserved_ip.0`, which a release leaves in place.
fn assert_ipam_ran(fx: &Fixture) {
    let marker = fx.store().dir().join("last_reserved_ip.0");
    assert!(marker.exists(), "IPAM never reserved an address: the ADD failed before the step this test means");
}

/// `chattr +i` on a directory: not even root may create files in it. Undone on Drop, pass or fail.
struct Immutable(PathBuf);

impl Immutable {
    fn new(dir: &Path) -> Immutable {
        trellis_e2e::cmd::run_ok(std::process::Command::new("chattr").arg("+i").arg(dir))
            .unwrap_or_else(|e| panic!("chattr +i {} (needs a filesystem with attributes): {e:#}", dir.display()));
        Immutable(dir.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn store_that_cannot_be_created_fails_before_anything_is_made() {
    require_root!();
    require_tool!("chattr");
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.40.0/24");
    let pod = Pod::new("ro").unwrap();
    let _ro = Immutable::new(fx.data.path());
    let why = add_fails(&fx, &c, &pod);
    assert_left(&fx, &pod, &[], &[], &["lo"], &why);
    assert!(!fx.store().dir().exists(), "the network's store directory appeared in a read-only dataDir");
}

#[test]
fn read_only_store_fails_and_keeps_the_live_pods() {
    require_root!();
    require_tool!("chattr");
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.41.0/24");
    let live = Pod::new("live").unwrap();
    let ip = result::ipv4(&fx.node.add(&c, &live).unwrap()).unwrap();
    let pod = Pod::new("ro").unwrap();
    let _ro = Immutable::new(fx.store().dir());
    let why = add_fails(&fx, &c, &pod);
    assert_left(&fx, &pod, &[&live], &[ip], &["lo"], &why);
    assert!(live.ns.ping("10.244.41.1"), "the live pod lost its network when another ADD failed");
}

#[test]
fn exhausted_range_fails_and_keeps_the_live_pod() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let r = conf::range("10.244.42.0/24", Some("10.244.42.10"), Some("10.244.42.10"), None);
    let c = conf::trellis_with_ipam("1.0.0", &fx.network, conf::trellis_ipam(fx.data.path(), r));
    let live = Pod::new("live").unwrap();
    let ip = result::ipv4(&fx.node.add(&c, &live).unwrap()).unwrap();
    let pod = Pod::new("full").unwrap();
    let why = add_fails(&fx, &c, &pod);
    assert_left(&fx, &pod, &[&live], &[ip], &["lo"], &why);
}

#[test]
fn failing_delegated_ipam_leaves_nothing() {
    require_root!();
    require_tool!("/usr/lib/cni/host-local");
    let fx = Fixture::new().unwrap();
    let mut ipam = conf::host_local(fx.data.path(), "10.244.43.0/24");
    ipam["ranges"] = json!([[{"subnet": "10.244.43.0/24", "rangeStart": "10.244.43.10", "rangeEnd": "10.244.43.10"}]]);
    let c = conf::trellis_with_ipam("1.0.0", &fx.network, ipam);
    let live = Pod::new("live").unwrap();
    let ip = result::ipv4(&fx.node.add(&c, &live).unwrap()).unwrap();
    let pod = Pod::new("hlfull").unwrap();
    let why = add_fails(&fx, &c, &pod);
    assert_left(&fx, &pod, &[&live], &[ip], &["lo"], &why);
}

#[test]
fn a_non_bridge_in_the_bridge_s_place_fails_after_ipam_and_releases_the_address() {
    require_root!();
    let fx = Fixture::new().unwrap();
    // A veth named like the bridge: the address is allocated before the bridge step finds it.
    fx.node.ns.run(&["ip", "link", "add", conf::BRIDGE, "type", "veth", "peer", "name", "notabridge"]).unwrap();
    let c = fx.trellis("1.0.0", "10.244.44.0/24");
    let pod = Pod::new("nobr").unwrap();
    let why = add_fails(&fx, &c, &pod);
    assert_ipam_ran(&fx);
    assert_left(&fx, &pod, &[], &[], &["lo"], &why);
    let kind = fx.node.ns.link_details(conf::BRIDGE).unwrap()["linkinfo"]["info_kind"].clone();
    assert_eq!(kind, "veth", "the rollback touched the foreign {} it did not create", conf::BRIDGE);
}

#[test]
fn a_foreign_interface_named_ifname_fails_the_add_and_survives_it() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.45.0/24");
    let pod = Pod::new("taken").unwrap();
    // Something else (another plugin, the runtime) already holds eth0 in the pod.
    pod.ns.run(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "theirs"]).unwrap();
    pod.ns.run(&["ip", "addr", "add", "192.168.99.5/24", "dev", "eth0"]).unwrap();
    let why = add_fails(&fx, &c, &pod);
    // Refused up front (before IPAM): nothing to roll back, and the foreign eth0 untouched.
    assert_left(&fx, &pod, &[], &[], &["lo", "eth0", "theirs"], &why);
    assert_eq!(pod.ns.addrs("eth0").unwrap(), vec!["192.168.99.5/24".to_string()], "the foreign eth0 was changed");
}

#[test]
fn a_route_the_kernel_refuses_after_the_veth_exists_rolls_the_veth_back() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let mut c = fx.trellis("1.0.0", "10.244.46.0/24");
    // A gateway outside every subnet of the pod: the kernel refuses the route (ENETUNREACH) in the pod netns,
    // after the veth pair was made and the address set.
    c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "192.168.77.0/24", "gw": "172.31.255.1"}]);
    let pod = Pod::new("badrt").unwrap();
    let why = add_fails(&fx, &c, &pod);
    assert_ipam_ran(&fx);
    assert!(why.contains("192.168.77.0/24"), "the failure should be the refused route:\n{why}");
    assert_left(&fx, &pod, &[], &[], &["lo"], &why);

    // The same network still works for a pod whose ADD does not hit the bad route.
    let mut good = c.clone();
    good["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let ok = Pod::new("goodrt").unwrap();
    let ip = result::ipv4(&fx.node.add(&good, &ok).unwrap()).unwrap();
    assert_eq!(fx.store().ips().unwrap(), vec![ip]);
}

#[test]
fn a_masquerade_chain_in_the_way_fails_the_last_step_and_leaves_nothing() {
    require_root!();
    require_tool!("nft");
    let fx = Fixture::new().unwrap();
    let mut c = fx.trellis("1.0.0", "10.244.47.0/24");
    c["ipMasq"] = json!(true);
    c["clusterCIDR"] = json!("10.244.0.0/16");
    // The chain trellis would make, already there as a filter chain on another hook: nft refuses to change it.
    let chain = format!("masq_{}", fx.network.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    fx.node.ns.run(&["nft", "add", "table", "ip", "trellis"]).unwrap();
    fx.node
        .ns
        .run(&["nft", "add", "chain", "ip", "trellis", &chain, "{ type filter hook input priority 0 ; }"])
        .unwrap();
    let pod = Pod::new("masq").unwrap();
    let why = add_fails(&fx, &c, &pod);
    assert_ipam_ran(&fx);
    assert_left(&fx, &pod, &[], &[], &["lo"], &why);
}
