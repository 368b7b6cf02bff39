//! The node's CNI conflist: rendered purely from what the agent knows, written atomically
//! (temp file + rename in the same directory) and only when its content changes, so the
//! runtime never reads a half-written file and its mtime means something.
use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflistParams {
    pub bridge: String,
    pub mtu: u32,
    pub ip_masq: bool,
    /// Leave clusterCIDR-to-clusterCIDR traffic out of kernel conntrack (the plugin's `untrackClusterTraffic`):
    /// only when no netfilter NAT needs to see it, i.e. Services are done by our eBPF datapath, not kube-proxy.
    pub untrack_cluster_traffic: bool,
    pub cluster_cidr: IpNet,
    /// The node's pod CIDRs, IPv4 first; one range set each.
    pub pod_cidrs: Vec<IpNet>,
    pub ipam_data_dir: PathBuf,
}

/// The conflist JSON (docs/CONTRACTS.md).
pub fn render(p: &ConflistParams) -> serde_json::Value {
    let ranges: Vec<_> = p.pod_cidrs.iter().map(|c| json!([{ "subnet": c.to_string() }])).collect();
    json!({
        "cniVersion": "1.0.0",
        "name": "trellis",
        "plugins": [{
            "type": "trellis",
            "bridge": p.bridge,
            "mtu": p.mtu,
            "ipMasq": p.ip_masq,
            "untrackClusterTraffic": p.untrack_cluster_traffic,
            "clusterCIDR": p.cluster_cidr.to_string(),
            "ipam": {
                "type": "trellis-ipam",
                "ranges": ranges,
                "dataDir": p.ipam_data_dir.to_string_lossy(),
            }
        }]
    })
}

/// Write `value` to `dir/name` unless the file already holds exactly that. Returns whether it
/// wrote. Creates `dir` if needed.
pub fn write_if_changed(dir: &Path, name: &str, value: &serde_json::Value) -> Result<bool> {
    let path = dir.join(name);
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    if std::fs::read(&path).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Hidden temp name: the runtime ignores dotfiles and our own files source does too.
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&path, e));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(cidrs: &[&str]) -> ConflistParams {
        ConflistParams {
            bridge: "trellis0".into(),
            mtu: 1450,
            ip_masq: true,
            untrack_cluster_traffic: true,
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            pod_cidrs: cidrs.iter().map(|s| s.parse().unwrap()).collect(),
            ipam_data_dir: "/var/lib/cni/networks".into(),
        }
    }

    #[test]
    fn renders_the_contract_shape() {
        let v = render(&params(&["10.244.1.0/24"]));
        assert_eq!(
            v,
            json!({"cniVersion":"1.0.0","name":"trellis","plugins":[{"type":"trellis","bridge":"trellis0","mtu":1450,
                   "ipMasq":true,"untrackClusterTraffic":true,"clusterCIDR":"10.244.0.0/16","ipam":{"type":"trellis-ipam",
                   "ranges":[[{"subnet":"10.244.1.0/24"}]],"dataDir":"/var/lib/cni/networks"}}]})
        );
        let v = render(&params(&["10.244.1.0/24", "fd00:10:244:1::/64"]));
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"],
            json!([[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]])
        );
    }

    #[test]
    fn untracked_cluster_traffic_follows_the_service_proxy() {
        let mut p = params(&["10.244.1.0/24"]);
        assert_eq!(render(&p)["plugins"][0]["untrackClusterTraffic"], true);
        // kube-proxy does Services (no service proxy of ours): its NAT needs conntrack for pod-to-pod traffic.
        p.untrack_cluster_traffic = false;
        assert_eq!(render(&p)["plugins"][0]["untrackClusterTraffic"], false);
    }

    #[test]
    fn writes_atomically_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("net.d");
        let v = render(&params(&["10.244.1.0/24"]));
        assert!(write_if_changed(&sub, "10-trellis.conflist", &v).unwrap());
        let path = sub.join("10-trellis.conflist");
        let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, v);
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert!(!write_if_changed(&sub, "10-trellis.conflist", &v).unwrap());
        assert_eq!(ino, std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()), "untouched");
        let v2 = render(&params(&["10.244.9.0/24"]));
        assert!(write_if_changed(&sub, "10-trellis.conflist", &v2).unwrap());
        let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, v2);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(&sub).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("10-trellis.conflist")]);
    }

    #[test]
    fn unwritable_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = write_if_changed(&file.join("sub"), "c", &json!({})).unwrap_err();
        assert!(err.to_string().contains("file/sub"), "{err}");
    }
}
