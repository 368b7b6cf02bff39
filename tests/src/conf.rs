//! Config builders (pure) in the shapes of docs/CONTRACTS.md and of the reference plugins.
use serde_json::{json, Value};
use std::path::Path;

pub const BRIDGE: &str = "trellis0";

/// The `trellis-ipam` object with one IPv4 range set.
pub fn trellis_ipam(data_dir: &Path, range: Value) -> Value {
    json!({
        "type": "trellis-ipam",
        "ranges": [[range]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": data_dir.display().to_string(),
    })
}

/// `{"subnet": ...}` plus optional rangeStart/rangeEnd/gateway.
pub fn range(subnet: &str, start: Option<&str>, end: Option<&str>, gateway: Option<&str>) -> Value {
    let mut r = json!({ "subnet": subnet });
    for (k, v) in [("rangeStart", start), ("rangeEnd", end), ("gateway", gateway)] {
        if let Some(v) = v {
            r[k] = json!(v);
        }
    }
    r
}

/// A `trellis` plugin config on bridge `trellis0` with trellis-ipam over `subnet`.
pub fn trellis(version: &str, network: &str, data_dir: &Path, subnet: &str) -> Value {
    trellis_with_ipam(version, network, trellis_ipam(data_dir, range(subnet, None, None, None)))
}

pub fn trellis_with_ipam(version: &str, network: &str, ipam: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": network,
        "type": "trellis",
        "bridge": BRIDGE,
        "ipam": ipam,
    })
}

/// The reference host-local IPAM object.
pub fn host_local(data_dir: &Path, subnet: &str) -> Value {
    json!({
        "type": "host-local",
        "ranges": [[{"subnet": subnet}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": data_dir.display().to_string(),
    })
}

/// The reference `bridge` plugin as the main plugin.
pub fn reference_bridge(version: &str, network: &str, bridge: &str, ipam: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": network,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": ipam,
    })
}

pub fn conflist(version: &str, network: &str, plugins: Vec<Value>) -> Value {
    json!({ "cniVersion": version, "name": network, "plugins": plugins })
}

/// The config of a GC call: the network config plus `cni.dev/valid-attachments`.
pub fn with_valid_attachments(conf: &Value, valid: &[(&str, &str)]) -> Value {
    let mut c = conf.clone();
    c["cni.dev/valid-attachments"] =
        Value::Array(valid.iter().map(|(id, ifname)| json!({"containerID": id, "ifname": ifname})).collect());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trellis_conf_has_contract_fields() {
        let c = trellis("1.0.0", "n1", Path::new("/tmp/d"), "10.244.1.0/24");
        assert_eq!(c["type"], "trellis");
        assert_eq!(c["bridge"], BRIDGE);
        assert_eq!(c["ipam"]["type"], "trellis-ipam");
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(c["ipam"]["dataDir"], "/tmp/d");
    }

    #[test]
    fn range_only_sets_given_bounds() {
        let r = range("10.0.0.0/29", Some("10.0.0.2"), None, Some("10.0.0.1"));
        assert_eq!(r["rangeStart"], "10.0.0.2");
        assert!(r.get("rangeEnd").is_none());
        assert_eq!(r["gateway"], "10.0.0.1");
    }

    #[test]
    fn valid_attachments_are_listed() {
        let c = with_valid_attachments(&json!({"name": "n"}), &[("c1", "eth0")]);
        assert_eq!(c["cni.dev/valid-attachments"][0]["containerID"], "c1");
        assert_eq!(c["cni.dev/valid-attachments"][0]["ifname"], "eth0");
        assert_eq!(c["name"], "n");
    }
}
