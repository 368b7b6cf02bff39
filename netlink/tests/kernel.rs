//! Privileged: every verb against the real kernel, inside namespaces this test creates.
use std::net::IpAddr;
use std::os::fd::AsFd;

use trellis_netlink::{netns, Family, Fdb, Handle, Neigh, Route, Scope, VethSpec, VxlanSpec};

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn root() -> bool {
    trellis_test_support::privileged::root_or_skip(concat!(module_path!(), " (", file!(), ")"))
}

#[test]
fn bridge_veth_in_place_addrs_routes_neigh_fdb_vxlan() {
    if !root() {
        return;
    }
    let node = Ns(format!("trnl-node-{}", std::process::id()));
    let pod = Ns(format!("trnl-pod-{}", std::process::id()));
    let node_path = netns::create(&node.0).unwrap();
    let pod_path = netns::create(&pod.0).unwrap();
    let mut h = Handle::in_netns(&node_path).unwrap();

    let br = h.ensure_bridge("trbr0", Some(1400)).unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, 1400);
    assert!(br.up);
    // idempotent
    assert_eq!(h.ensure_bridge("trbr0", Some(1400)).unwrap().index, br.index);
    h.ensure_addr(br.index, "10.99.0.1/24".parse().unwrap()).unwrap();
    h.ensure_addr(br.index, "10.99.0.1/24".parse().unwrap()).unwrap();
    assert!(h.addrs(Some(br.index)).unwrap().iter().any(|(_, a)| a.to_string() == "10.99.0.1/24"));

    let pod_fd = netns::open(&pod_path).unwrap();
    h.create_veth(&VethSpec {
        name: "trv0",
        peer: "eth0",
        peer_netns: Some(pod_fd.as_fd()),
        mtu: Some(1400),
        master: Some(br.index),
        up: true,
        ..Default::default()
    })
    .unwrap();
    let v = h.link_by_name("trv0").unwrap().unwrap();
    assert_eq!(v.master, Some(br.index));
    assert_eq!(v.mtu, 1400);
    h.set_hairpin(v.index, true).unwrap();
    assert!(h.hairpin(v.index).unwrap());
    assert!(h.link_by_name("eth0").unwrap().is_none(), "peer must be created in the pod netns");

    let mut p = Handle::in_netns(&pod_path).unwrap();
    let eth0 = p.link_by_name("eth0").unwrap().unwrap();
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    p.ensure_addr(eth0.index, "10.99.0.2/24".parse().unwrap()).unwrap();
    p.set_up(eth0.index).unwrap();
    let gw: IpAddr = "10.99.0.1".parse().unwrap();
    p.ensure_route(&Route::new("0.0.0.0/0".parse().unwrap()).via(gw).dev(eth0.index)).unwrap();
    let routes = p.routes(Family::V4).unwrap();
    assert!(routes.iter().any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gw)), "{routes:?}");
    p.del_route(&Route::new("0.0.0.0/0".parse().unwrap())).unwrap();
    p.del_route(&Route::new("0.0.0.0/0".parse().unwrap())).unwrap();
    assert!(!p.routes(Family::V4).unwrap().iter().any(|r| r.dst.prefix_len() == 0));
    p.del_addr(eth0.index, "10.99.0.2/24".parse().unwrap()).unwrap();
    p.del_addr(eth0.index, "10.99.0.2/24".parse().unwrap()).unwrap();

    // underlay + vxlan + fdb + neighbour + onlink route
    let dummy_peer = "trul1";
    h.create_veth(&VethSpec { name: "trul0", peer: dummy_peer, up: true, ..Default::default() }).unwrap();
    let ul = h.link_by_name("trul0").unwrap().unwrap();
    let ul1 = h.link_by_name(dummy_peer).unwrap().unwrap();
    h.set_up(ul1.index).unwrap();
    h.ensure_addr(ul.index, "192.168.77.1/24".parse().unwrap()).unwrap();
    let spec = VxlanSpec {
        name: "trvx".into(),
        vni: 7,
        port: 8472,
        local: "192.168.77.1".parse().unwrap(),
        underlay: ul.index,
        mac: Some([0x0e, 0x7e, 192, 168, 77, 1]),
        mtu: Some(1450),
        learning: false,
    };
    let vx = h.ensure_vxlan(&spec).unwrap();
    assert_eq!(h.ensure_vxlan(&spec).unwrap().index, vx.index, "unchanged spec keeps the device");
    assert_eq!(vx.mac, Some([0x0e, 0x7e, 192, 168, 77, 1]));
    let fdb = Fdb { ifindex: vx.index, mac: [0x0e, 0x7e, 192, 168, 77, 2], dst: "192.168.77.2".parse().unwrap() };
    h.ensure_fdb(&fdb).unwrap();
    h.ensure_fdb(&fdb).unwrap();
    assert!(h.fdbs(vx.index).unwrap().contains(&fdb));
    let n = Neigh { ifindex: vx.index, ip: "10.98.2.0".parse().unwrap(), mac: fdb.mac };
    h.ensure_neigh(&n).unwrap();
    let ns = h.neighs(vx.index).unwrap();
    assert!(
        ns.contains(&n),
        "{ns:?} {:?}",
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", node_path.display()))
            .args(["ip", "neigh"])
            .output()
            .unwrap()
    );
    let r = Route::new("10.98.2.0/24".parse().unwrap()).via(n.ip).dev(vx.index).onlink().protocol(0x7e);
    h.ensure_route(&r).unwrap();
    let got = h.routes(Family::V4).unwrap();
    let found = got.iter().find(|x| x.dst == r.dst).expect("onlink route");
    assert!(found.onlink && found.protocol == 0x7e && found.oif == Some(vx.index));
    assert_eq!(found.scope, Scope::Universe);
    h.del_route(&r).unwrap();
    h.del_neigh(&n).unwrap();
    h.del_fdb(&fdb).unwrap();
    assert!(h.fdbs(vx.index).unwrap().is_empty());
    // a changed VNI recreates the device
    let vx2 = h.ensure_vxlan(&VxlanSpec { vni: 8, ..spec.clone() }).unwrap();
    assert_ne!(vx2.index, vx.index);

    h.delete_link(v.index).unwrap();
    h.delete_link(v.index).unwrap();
    assert!(p.link_by_name("eth0").unwrap().is_none(), "deleting one veth end removes the peer");
    let e = h.ensure_bridge("trul0", None).unwrap_err().to_string();
    assert!(e.contains("not a bridge"), "{e}");
}
