//! Privileged: routes outside the main table are listed with their table, and a VXLAN device replaced because
//! its attributes differ says which attribute, in namespaces this test creates.
use std::io::Write;
use std::sync::{Arc, Mutex};

use trellis_netlink::{netns, Family, Handle, Link, Route, VethSpec, VxlanSpec, RT_TABLE_MAIN};
use trellis_test_support::require_root;

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

/// A fresh netns with a veth pair up in it, `addr` on its first end: the link routes and VXLAN devices use.
fn netns_with_link(what: &str, addr: &str) -> (Ns, Handle, Link) {
    let ns = Ns(format!("trnl-{what}-{}", std::process::id()));
    let mut h = Handle::in_netns(&netns::create(&ns.0).unwrap()).unwrap();
    let (name, peer) = (format!("tr{what}0"), format!("tr{what}1"));
    h.create_veth(&VethSpec { name: &name, peer: &peer, up: true, ..Default::default() }).unwrap();
    let link = h.require_link(&name).unwrap();
    h.ensure_addr(link.index, addr.parse().unwrap()).unwrap();
    (ns, h, link)
}

#[test]
fn routes_of_other_tables_are_listed_with_their_table() {
    require_root!();
    let (_ns, mut h, dev) = netns_with_link("tab", "10.97.0.1/24");
    let gw = "10.97.0.2".parse().unwrap();
    let main = Route::new("10.96.0.0/16".parse().unwrap()).via(gw).dev(dev.index).onlink();
    let small = main.clone().table(100);
    let large = Route::new("10.95.0.0/16".parse().unwrap()).via(gw).dev(dev.index).onlink().table(1000);
    for r in [&main, &small, &large] {
        h.ensure_route(r).unwrap();
    }

    let main_only = h.routes(Family::V4).unwrap();
    assert!(main_only.iter().all(|r| r.in_main_table()), "{main_only:?}");
    assert!(main_only.iter().any(|r| r.dst == main.dst));
    assert!(!main_only.iter().any(|r| r.dst == large.dst), "{main_only:?}");

    let every = h.routes_in(Family::V4, None).unwrap();
    let tables_of = |dst| every.iter().filter(|r| r.dst == dst).map(|r| r.table).collect::<Vec<_>>();
    let mut t = tables_of(main.dst);
    t.sort();
    assert_eq!(t, vec![100, RT_TABLE_MAIN], "{every:?}");
    assert_eq!(tables_of(large.dst), vec![1000], "{every:?}");
    assert_eq!(h.routes_in(Family::V4, Some(1000)).unwrap().len(), 1);
    assert!(h.routes_in(Family::V6, Some(100)).unwrap().is_empty());

    // A delete names its table: the main table's route stays when table 100's goes.
    h.del_route(&small).unwrap();
    h.del_route(&small).unwrap();
    assert!(h.routes_in(Family::V4, Some(100)).unwrap().is_empty());
    assert!(h.routes(Family::V4).unwrap().iter().any(|r| r.dst == main.dst));
    h.del_route(&large).unwrap();
    assert!(h.routes_in(Family::V4, Some(1000)).unwrap().is_empty());
}

/// Collects what tracing writes, to read the replacement warning back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);
impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_replaced_vxlan_device_logs_what_differed() {
    require_root!();
    let (_ns, mut h, ul) = netns_with_link("vxr", "192.168.78.1/24");
    let spec = VxlanSpec::new("trvxr", 7, 8472, "192.168.78.1".parse().unwrap(), ul.index);
    let log = Captured::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || sink.clone()).finish();
    tracing::subscriber::with_default(subscriber, || {
        let first = h.ensure_vxlan(&spec).unwrap();
        assert_eq!(h.ensure_vxlan(&spec).unwrap().index, first.index, "an unchanged spec keeps the device");
        let second = h.ensure_vxlan(&VxlanSpec { vni: 9, port: 4789, ..spec.clone() }).unwrap();
        assert_ne!(second.index, first.index, "a changed VNI recreates the device");
        h.delete_link(second.index).unwrap();
        h.ensure_bridge("trvxr", None).unwrap();
        h.ensure_vxlan(&spec).unwrap();
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("replacing vxlan device")).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains("attribute=\"vni\"") && lines[0].contains("old=7") && lines[0].contains("new=9"),
        "{text}"
    );
    assert!(lines[1].contains("attribute=\"port\"") && lines[1].contains("old=8472"), "{text}");
    assert!(lines[2].contains("attribute=\"kind\"") && lines[2].contains("old=bridge"), "{text}");
    assert!(lines.iter().all(|l| l.contains("device=trvxr")), "{text}");
}
