//! Result rendering per requested CNI version, and the VERSION answer of both plugins.
use serde_json::json;
use trellis_e2e::cni::{CniCmd, Invocation};
use trellis_e2e::result::{self, VERSIONS};
use trellis_e2e::{require_root, Fixture, Pod};

#[test]
fn add_result_shape_follows_requested_version() {
    require_root!();
    let fx = Fixture::new().unwrap();
    for v in VERSIONS {
        let c = fx.trellis(v, "10.244.4.0/24");
        let pod = Pod::new("ver").unwrap();
        let r = fx.node.add(&c, &pod).unwrap_or_else(|e| panic!("ADD with cniVersion {v}: {e:#}"));
        result::check_shape(&r, v).unwrap_or_else(|e| panic!("cniVersion {v}: {e:#}\nresult: {r}"));
        let ip = result::ipv4(&r).unwrap();
        assert!(pod.ns.addrs("eth0").unwrap().contains(&format!("{ip}/24")));
        fx.node.del(&c, &pod).unwrap_or_else(|e| panic!("DEL with cniVersion {v}: {e:#}"));
        assert!(!fx.store().has(ip));
    }
}

#[test]
fn version_lists_all_supported_versions() {
    require_root!();
    let fx = Fixture::new().unwrap();
    for plugin in [fx.node.bins.trellis(), fx.node.bins.ipam()] {
        let out = fx.node.invoke(&plugin, &Invocation::new(CniCmd::Version, &json!({"cniVersion": "1.0.0"}))).unwrap();
        let v = out.result().unwrap();
        let supported: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("no supportedVersions: {}", out.describe()))
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        for want in VERSIONS {
            assert!(supported.contains(&want), "{} VERSION lacks {want}: {supported:?}", plugin.display());
        }
        assert!(v["cniVersion"].is_string(), "VERSION answer lacks cniVersion: {v}");
    }
}
