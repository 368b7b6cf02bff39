//! A real runtime: podman 4.3 (libcni 1.1.2) on a conflist using `trellis`, all state private, inside a node netns.
use trellis_e2e::podman::Podman;
use trellis_e2e::{conf, require_root, require_tool, Fixture};

#[test]
fn podman_container_gets_ip_pings_gateway_and_rm_releases_it() {
    require_root!();
    require_tool!("podman");
    let fx = Fixture::new().unwrap();
    let mut plugin = fx.trellis("1.0.0", "10.244.13.0/24");
    plugin.as_object_mut().unwrap().remove("cniVersion"); // libcni writes the list's version into each plugin
    let list = conf::conflist("1.0.0", &fx.network, vec![plugin]);
    let podman = Podman::new(&fx.node.ns, &fx.node.bins).unwrap();
    podman.add_network(&list).unwrap();

    let id = podman.run_sleeper(&fx.network).unwrap();
    let ip = podman.ip(&id, &fx.network).unwrap();
    assert!(
        ip.starts_with("10.244.13."),
        "podman recorded IP {ip:?}: ADD result lacks interfaces[].sandbox / ips[].interface, or VERSION lacks 1.0.0?\n{}",
        podman.inspect(&id).unwrap()["NetworkSettings"]
    );
    let allocs = fx.store().allocations().unwrap();
    assert_eq!(allocs.len(), 1, "{allocs:?}");
    assert_eq!(allocs[0].ip.to_string(), ip);
    assert_eq!(allocs[0].container_id, id, "IP file names podman's container ID");
    let veth = trellis_e2e::veth::host_veth_name(&id, "eth0");
    assert!(fx.node.ns.has_link(&veth).unwrap(), "host veth {veth} for the podman container");

    podman.run(&["exec", &id, "/bin/ping", "-c1", "-W1", "10.244.13.1"]).unwrap();

    // restart = DEL (with prevResult) then ADD for the same container ID: still exactly one allocation.
    podman.run(&["restart", "-t", "0", &id]).unwrap();
    let ip_after = podman.ip(&id, &fx.network).unwrap();
    assert!(ip_after.starts_with("10.244.13."), "no IP after restart: {ip_after:?}");
    let allocs = fx.store().allocations().unwrap();
    assert_eq!(allocs.len(), 1, "allocations after restart: {allocs:?}");
    assert_eq!(allocs[0].ip.to_string(), ip_after);
    podman.run(&["exec", &id, "/bin/ping", "-c1", "-W1", "10.244.13.1"]).unwrap();

    // stop + start, the other restart path: stop tears the network down (DEL), start makes a new netns and ADDs.
    // A second ADD for an existing interface is an error (SPEC), so this only works because DEL comes first.
    podman.run(&["stop", "-t", "0", &id]).unwrap();
    assert!(fx.store().ips().unwrap().is_empty(), "podman stop left the IP allocated");
    podman.run(&["start", &id]).unwrap();
    let ip_started = podman.ip(&id, &fx.network).unwrap();
    assert!(ip_started.starts_with("10.244.13."), "no IP after stop + start: {ip_started:?}");
    let allocs = fx.store().allocations().unwrap();
    assert_eq!(allocs.len(), 1, "allocations after stop + start: {allocs:?}");
    assert_eq!((allocs[0].ip.to_string(), allocs[0].container_id.as_str()), (ip_started, id.as_str()));
    podman.run(&["exec", &id, "/bin/ping", "-c1", "-W1", "10.244.13.1"]).unwrap();

    podman.rm(&id).unwrap();
    assert!(fx.store().ips().unwrap().is_empty(), "podman rm -f leaked the IP (DEL failed? podman only logs it)");
    assert!(!fx.node.ns.has_link(&veth).unwrap(), "host veth {veth} survived podman rm -f");
}
