//! Many plugin processes against one store at once: every address distinct, DEL leaves it clean.

mod common;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::net::IpAddr;

const N: usize = 80;

#[test]
fn concurrent_adds_get_distinct_addresses_and_dels_leave_the_store_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", tmp.path(), json!([[{"subnet": "10.50.0.0/24"}], [{"subnet": "fd00:50::/120"}]]));
    let children: Vec<_> = (0..N).map(|i| spawn("ADD", &c, &format!("ctr{i:03}"), "eth0")).collect();
    let mut seen: HashSet<IpAddr> = HashSet::new();
    for (i, child) in children.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "ADD {i}: {} {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let ips = ips_of(&json_out(&o));
        assert_eq!(ips.len(), 2, "one address per range set");
        for ip in ips {
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
    }
    assert_eq!(seen.len(), 2 * N);
    let on_disk = leases(tmp.path());
    assert_eq!(on_disk.keys().copied().collect::<HashSet<_>>(), seen, "store holds exactly what was handed out");
    assert!(on_disk.values().all(|v| v.starts_with("ctr") && v.ends_with("\r\neth0")));

    let children: Vec<_> = (0..N).map(|i| spawn("DEL", &c, &format!("ctr{i:03}"), "eth0")).collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "DEL: {}", String::from_utf8_lossy(&o.stdout));
    }
    let names: Vec<String> = store_files(tmp.path()).into_keys().collect();
    assert_eq!(names, vec!["last_reserved_ip.0", "last_reserved_ip.1", "lock"]);
}

/// host-local and trellis-ipam take the same flock, so they can run side by side on one store.
#[test]
fn concurrent_adds_mixed_with_host_local_never_collide() {
    const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
    trellis_test_support::require_tool!(HOST_LOCAL);
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", tmp.path(), json!([[{"subnet": "10.51.0.0/24"}]]));
    let children: Vec<_> = (0..60)
        .map(|i| {
            let bin = if i % 2 == 0 { HOST_LOCAL } else { BIN };
            (bin, spawn_plugin(bin, "ADD", &c, &format!("m{i:02}"), "eth0"))
        })
        .collect();
    let mut seen: HashSet<IpAddr> = HashSet::new();
    for (bin, child) in children {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{bin}: {} {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        for ip in ips_of(&json_out(&o)) {
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
    }
    assert_eq!(seen.len(), 60);
    assert_eq!(leases(tmp.path()).keys().copied().collect::<HashSet<_>>(), seen);
}
