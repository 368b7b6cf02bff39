//! Privileged self-test of the harness against Debian's reference plugins (bridge + host-local, portmap): proves
//! the netns guard, the in-node invocation and the conflist runner before they are trusted to judge `trellis`.
use serde_json::json;
use trellis_e2e::bins::{Bins, REFERENCE_DIR};
use trellis_e2e::{conf, require_root, require_tool, result, CniCmd, Fixture, Netns, Pod};

fn reference_bins() -> Bins {
    // Our binaries may not exist yet; the reference plugins are enough here.
    Bins::locate().unwrap_or(Bins { dir: REFERENCE_DIR.into() })
}

#[test]
fn netns_guard_creates_and_deletes() {
    require_root!();
    let path;
    {
        let ns = Netns::new("guard").unwrap();
        path = ns.path().to_owned();
        assert!(path.exists());
        assert!(ns.link("lo").unwrap().unwrap()["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        assert_eq!(ns.link_names().unwrap(), vec!["lo".to_string()]);
    }
    assert!(!path.exists(), "netns {} survived its guard", path.display());
}

#[test]
fn reference_bridge_host_local_through_the_harness() {
    require_root!();
    require_tool!("/usr/lib/cni/bridge");
    require_tool!("/usr/lib/cni/host-local");
    let fx = Fixture::with_bins(&reference_bins()).unwrap();
    let ipam = conf::host_local(fx.data.path(), "10.99.0.0/24");
    let c = conf::reference_bridge("1.0.0", &fx.network, "refbr0", ipam);
    let pods = fx.pods("refpod", 2).unwrap();
    let r0 = fx.node.add(&c, &pods[0]).unwrap();
    let r1 = fx.node.add(&c, &pods[1]).unwrap();
    result::check_shape(&r0, "1.0.0").unwrap();
    let ip1 = result::ipv4(&r1).unwrap();
    assert!(pods[0].ns.ping(&ip1.to_string()), "reference pods cannot ping: harness or machine broken");
    assert_eq!(fx.store().ips().unwrap().len(), 2);
    assert!(fx.node.ns.has_link("refbr0").unwrap(), "bridge must be in the node netns");
    for p in &pods {
        fx.node.del(&c, p).unwrap();
    }
    assert!(fx.store().ips().unwrap().is_empty());
}

#[test]
fn conflist_runner_chains_portmap() {
    require_root!();
    require_tool!("/usr/lib/cni/portmap");
    require_tool!("/usr/lib/cni/bridge");
    require_tool!("/usr/lib/cni/host-local");
    let fx = Fixture::with_bins(&reference_bins()).unwrap();
    let ipam = conf::host_local(fx.data.path(), "10.98.0.0/24");
    let mut bridge = conf::reference_bridge("1.0.0", &fx.network, "refbr1", ipam);
    bridge.as_object_mut().unwrap().remove("cniVersion");
    let list = conf::conflist(
        "1.0.0",
        &fx.network,
        vec![bridge, json!({"type": "portmap", "capabilities": {"portMappings": true}})],
    );
    let rc = json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    let pod = Pod::new("pmpod").unwrap();
    let res = fx.node.run_conflist(CniCmd::Add, &list, &pod, &rc, None).unwrap().unwrap();
    let ip = result::ipv4(&res).unwrap();
    let nat = fx.node.ns.run(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(nat.contains(&format!("{ip}:80")), "no DNAT to {ip}:80 in node netns:\n{nat}");
    fx.node.run_conflist(CniCmd::Del, &list, &pod, &rc, Some(&res)).unwrap();
    let nat = fx.node.ns.run(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(!nat.contains(&format!("{ip}:80")), "DNAT survived DEL:\n{nat}");
}

#[test]
fn private_podman_runs_a_container_on_a_reference_conflist() {
    require_root!();
    require_tool!("podman");
    require_tool!("/usr/lib/cni/bridge");
    let fx = Fixture::with_bins(&reference_bins()).unwrap();
    let ipam = conf::host_local(fx.data.path(), "10.97.0.0/24");
    let mut bridge = conf::reference_bridge("1.0.0", &fx.network, "refbr2", ipam);
    bridge.as_object_mut().unwrap().remove("cniVersion");
    let list = conf::conflist("1.0.0", &fx.network, vec![bridge]);
    let podman = trellis_e2e::podman::Podman::new(&fx.node.ns, &fx.node.bins).unwrap();
    podman.add_network(&list).unwrap();
    let id = podman.run_sleeper(&fx.network).unwrap();
    let ip = podman.ip(&id, &fx.network).unwrap();
    assert!(ip.starts_with("10.97.0."), "podman recorded IP {ip:?}");
    podman.run(&["exec", &id, "/bin/ping", "-c1", "-W1", "10.97.0.1"]).unwrap();
    podman.rm(&id).unwrap();
    assert!(fx.store().ips().unwrap().is_empty(), "podman rm -f did not release the IP");
}
