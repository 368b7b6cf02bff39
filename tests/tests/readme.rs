//! README promises about one attachment's life that no other test holds: DEL then ADD then DEL back to back (DEL
//! renames the host veth `tz…` at once, so the name is free for the next ADD while the kernel still unregisters the
//! old pair), and GC deleting a `tz…` link left over.
use trellis_e2e::require_root;
use trellis_e2e::{result, veth, CniCmd, Fixture, Pod};

const GATEWAY: &str = "10.244.50.1";

#[test]
fn del_add_del_of_one_attachment_back_to_back_leaves_nothing() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.50.0/24");
    let pod = Pod::new("dad").unwrap();
    let first = result::ipv4(&fx.node.add(&c, &pod).unwrap()).unwrap();
    assert!(pod.ns.ping(GATEWAY));

    // No pause between the calls: the second ADD runs while the first pair may still be unregistering.
    for round in 0..3 {
        fx.node.del(&c, &pod).unwrap_or_else(|e| panic!("round {round}: DEL: {e:#}"));
        assert!(!fx.node.ns.has_link(&pod.host_veth()).unwrap(), "round {round}: DEL left the tr… name taken");
        let r = fx.node.add(&c, &pod).unwrap_or_else(|e| panic!("round {round}: ADD right after DEL: {e:#}"));
        let ip = result::ipv4(&r).unwrap();
        assert_eq!(fx.store().ips().unwrap(), vec![ip], "round {round}: one lease for one attachment");
        let owners = fx.store().allocations().unwrap();
        assert_eq!(owners[0].container_id, pod.id);
        assert!(pod.ns.addrs("eth0").unwrap().contains(&format!("{ip}/24")), "round {round}: {ip} not on eth0");
        assert!(pod.ns.ping(GATEWAY), "round {round}: the re-added pod cannot reach its gateway");
        let host = fx.node.ns.link(&pod.host_veth()).unwrap().expect("the new host veth");
        assert_eq!(host["master"], trellis_e2e::conf::BRIDGE, "round {round}: the new host veth is not a bridge port");
        if round == 0 {
            // Round-robin: a re-ADD does not get the address just released.
            assert_ne!(ip, first, "round-robin handed the released address straight back");
        }
    }
    fx.node.del(&c, &pod).unwrap();
    assert!(fx.store().ips().unwrap().is_empty(), "the last DEL left a lease");
    assert_eq!(pod.ns.link_names().unwrap(), vec!["lo"], "the last DEL left the pod's interface");
    // Every dying tz… link goes too (the detached children finish), and nothing else of the pod stays.
    fx.node.ns.wait_pod_links(&[]).unwrap();
}

#[test]
fn gc_deletes_a_tz_link_left_over() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.1.0", "10.244.51.0/24");
    let live = Pod::new("gclive").unwrap();
    fx.node.add(&c, &live).unwrap();
    // What a DEL whose detached child died before the kernel's unregister leaves: a detached `tz…` pair.
    let gone = Pod::new("gcgone").unwrap();
    let dying = veth::dying_name(&gone.host_veth());
    fx.node.ns.run(&["ip", "link", "add", &dying, "type", "veth", "peer", "name", "tzpeer"]).unwrap();
    assert!(fx.node.ns.has_link(&dying).unwrap());

    let gc = trellis_e2e::conf::with_valid_attachments(&c, &[(live.id.as_str(), "eth0")]);
    fx.node.command(CniCmd::Gc, &gc).unwrap().ok().unwrap();
    fx.node.ns.wait_pod_links(&[live.host_veth()]).unwrap();
    assert!(!fx.node.ns.has_link("tzpeer").unwrap(), "the leftover pair's other end stayed");
    assert!(live.ns.ping("10.244.51.1"), "GC broke the live pod");
}
