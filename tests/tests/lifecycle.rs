//! CNI 1.1 STATUS and GC.
use serde_json::Value;
use trellis_e2e::{conf, require_root, result, CniCmd, Fixture, Invocation, Pod, TempDir};

/// A range with exactly two assignable addresses: subnet /29, gateway .1, range .2-.3.
fn two_ip_conf(fx: &Fixture, version: &str) -> Value {
    let r = conf::range("10.244.7.0/29", Some("10.244.7.2"), Some("10.244.7.3"), Some("10.244.7.1"));
    conf::trellis_with_ipam(version, &fx.network, conf::trellis_ipam(fx.data.path(), r))
}

#[test]
fn status_succeeds_then_fails_when_range_exhausted() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = two_ip_conf(&fx, "1.1.0");
    fx.node.command(CniCmd::Status, &c).unwrap().ok().unwrap();

    let pods = fx.pods("st", 3).unwrap();
    fx.node.add(&c, &pods[0]).unwrap();
    fx.node.add(&c, &pods[1]).unwrap();
    let add_err = fx.node.pod(CniCmd::Add, &c, &pods[2]).unwrap().error().unwrap();

    assert_eq!(add_err.code, 110);
    let out = fx.node.command(CniCmd::Status, &c).unwrap();
    let err = out.error().unwrap();
    assert_eq!(err.code, 50, "STATUS on an exhausted range (SPEC 50: cannot service ADD):\n{}", out.describe());

    // Freeing one address makes the plugin available again.
    fx.node.del(&c, &pods[0]).unwrap();
    fx.node.command(CniCmd::Status, &c).unwrap().ok().unwrap();
}

#[test]
fn gc_releases_attachments_not_listed() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.1.0", "10.244.8.0/24");
    let pods = fx.pods("gc", 3).unwrap();
    let ips: Vec<_> = pods.iter().map(|p| result::ipv4(&fx.node.add(&c, p).unwrap()).unwrap()).collect();
    assert_eq!(fx.store().ips().unwrap().len(), 3);

    let gc = conf::with_valid_attachments(&c, &[(pods[0].id.as_str(), "eth0")]);
    fx.node.command(CniCmd::Gc, &gc).unwrap().ok().unwrap();

    assert_eq!(fx.store().ips().unwrap(), vec![ips[0]], "only the listed attachment keeps its IP");
    assert!(fx.node.ns.has_link(&pods[0].host_veth()).unwrap());
    for p in &pods[1..] {
        assert!(!fx.node.ns.has_link(&p.host_veth()).unwrap(), "GC left host veth {}", p.host_veth());
    }
    assert!(pods[0].ns.ping("10.244.8.1"), "the listed pod still works");

    // A GC naming everything live is a no-op.
    fx.node.command(CniCmd::Gc, &gc).unwrap().ok().unwrap();
    assert_eq!(fx.store().ips().unwrap(), vec![ips[0]]);
    // And the released addresses are handed out again.
    let again = Pod::new("gc-again").unwrap();
    let ip = result::ipv4(&fx.node.add(&c, &again).unwrap()).unwrap();
    assert_ne!(ip, ips[0]);
}

#[test]
fn gc_of_one_network_leaves_other_networks_alone() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let a = fx.trellis("1.1.0", "10.244.27.0/24");
    // A second trellis network on the same node: its own name, bridge, range and store.
    let b_data = trellis_e2e::TempDir::new("data-b").unwrap();
    let b_name = trellis_e2e::names::unique("netb");
    let mut b = conf::trellis("1.1.0", &b_name, b_data.path(), "10.244.28.0/24");
    b["bridge"] = serde_json::json!("trellisb");
    let b_store = trellis_e2e::store::Store::new(b_data.path(), &b_name);

    let pa = Pod::new("gca").unwrap();
    let pb = Pod::new("gcb").unwrap();
    fx.node.add(&a, &pa).unwrap();
    let ip_b = result::ipv4(&fx.node.add(&b, &pb).unwrap()).unwrap();

    // GC of network A with nothing valid: A's pod goes, B's pod must not be touched.
    fx.node.command(CniCmd::Gc, &conf::with_valid_attachments(&a, &[])).unwrap().ok().unwrap();
    assert!(fx.store().ips().unwrap().is_empty(), "GC of A kept A's allocation");
    assert!(!fx.node.ns.has_link(&pa.host_veth()).unwrap(), "GC of A kept A's veth");
    assert_eq!(b_store.ips().unwrap(), vec![ip_b], "GC of network A released network B's IP");
    assert!(fx.node.ns.has_link(&pb.host_veth()).unwrap(), "GC of network A deleted network B's veth");
    assert!(pb.ns.ping("10.244.28.1"), "network B's pod lost connectivity after GC of A");
}

/// A plugin run inside a private mount namespace in which `dir` is read-only: the IPAM store cannot be written,
/// as on a read-only or broken disk (root ignores file modes, so chmod proves nothing).
fn read_only_wrapper(dir: &std::path::Path, plugin: &std::path::Path) -> (TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bin = TempDir::new("ro-wrapper").unwrap();
    let script = bin.join("trellis-ro");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c \
             'mount --bind \"$0\" \"$0\" && mount -o remount,bind,ro \"$0\" && exec \"$1\"' '{}' '{}'\n",
            dir.display(),
            plugin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin, script)
}

#[test]
fn status_is_code_50_when_the_store_is_not_writable() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.1.0", "10.244.29.0/24");
    fx.node.command(CniCmd::Status, &c).unwrap().ok().unwrap(); // creates the store
    for plugin in [fx.node.bins.trellis(), fx.node.bins.ipam()] {
        let (_dir, ro) = read_only_wrapper(fx.data.path(), &plugin);
        let out = fx.node.invoke(&ro, &Invocation::new(CniCmd::Status, &c)).unwrap();
        let err = out.error().unwrap_or_else(|e| panic!("{}: {e:#}", plugin.display()));
        // README: "STATUS fails with code 50 when the IPAM store is not writable".
        assert_eq!(err.code, 50, "{}", out.describe());
        assert!(err.text().contains("Read-only"), "say why: {}", out.describe());
    }
    // Outside the wrapper's mount namespace nothing changed.
    fx.node.command(CniCmd::Status, &c).unwrap().ok().unwrap();
}
