//! Every name a lab owns is derived from the lab name, so teardown can find things even without state.json.

use std::path::PathBuf;

/// Root of all labs' state.
pub const STATE_ROOT: &str = "/run/trellis-lab";
pub const NETNS_DIR: &str = "/run/netns";
/// Exported to every process the lab starts, so `down` finds them even after a crash.
pub const LAB_ENV: &str = "TRELLIS_LAB";

pub fn netns_prefix(lab: &str) -> String {
    format!("tl-{lab}-")
}
pub fn underlay_netns(lab: &str) -> String {
    format!("tl-{lab}-ul")
}
/// The `external` host: on the underlay, no node, no route into the pod network.
pub fn external_netns(lab: &str) -> String {
    format!("tl-{lab}-ext")
}
pub fn node_netns(lab: &str, node: &str) -> String {
    format!("tl-{lab}-node-{node}")
}
/// `_` is never part of a namespace or pod name, so the pair stays unambiguous.
pub fn pod_netns(lab: &str, namespace: &str, pod: &str) -> String {
    format!("tl-{lab}-pod-{namespace}_{pod}")
}
pub fn container_id(lab: &str, namespace: &str, pod: &str) -> String {
    format!("tl-{lab}-{namespace}_{pod}")
}
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Paths under `/run/trellis-lab/<lab>/`.
#[derive(Debug, Clone)]
pub struct LabDirs {
    pub lab: String,
    pub root: PathBuf,
    /// `BPF_ROOT/<lab>`: the nodes' bpffs directories.
    pub bpf: PathBuf,
}

/// bpffs is global (not per network namespace): every lab node's datapath pins its maps and links in a
/// directory of its own under this one.
pub const BPF_ROOT: &str = "/sys/fs/bpf/trellis-lab";

impl LabDirs {
    pub fn new(lab: &str) -> LabDirs {
        LabDirs {
            lab: lab.to_string(),
            root: PathBuf::from(STATE_ROOT).join(lab),
            bpf: PathBuf::from(BPF_ROOT).join(lab),
        }
    }
    /// The lab's cgroups (v2): `<cgroup2 mount>/trellis-lab/<lab>`, or None on a host without cgroup v2.
    pub fn cgroups(&self) -> Option<PathBuf> {
        cgroup2_root().map(|r| r.join("trellis-lab").join(&self.lab))
    }
    /// A node's cgroup: its pods' servers and the lab's processes acting from the node or its pods live in it,
    /// so the node's socket load balancer (the agent's `--cgroup`) applies to them and to no other node's.
    pub fn cgroup(&self, node: &str) -> Option<PathBuf> {
        self.cgroups().map(|c| c.join(node))
    }
    /// The node's pinned eBPF maps and links (the agent's `--bpf-dir`).
    pub fn bpf_dir(&self, node: &str) -> PathBuf {
        self.bpf.join(node)
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    /// Staging dir for atomic manifest writes (same filesystem, outside the watched dir).
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn pids(&self) -> PathBuf {
        self.root.join("pids")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    pub fn cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni")
    }
    pub fn ipam_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("ipam")
    }
}

/// Manifest file for an object: `<kind>_<namespace>_<name>.yaml`, `<kind>_<name>.yaml` when cluster-scoped.
pub fn manifest_file_name(kind: &str, namespace: Option<&str>, name: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    match namespace {
        Some(ns) => format!("{kind}_{ns}_{name}.yaml"),
        None => format!("{kind}_{name}.yaml"),
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_lab_prefix() {
        let p = netns_prefix("a1");
        for n in [underlay_netns("a1"), node_netns("a1", "x"), pod_netns("a1", "ns", "p")] {
            assert!(n.starts_with(&p), "{n}");
        }
        // Lab names have no '-', so lab "a" never claims lab "a1"'s names.
        assert!(!node_netns("a1", "x").starts_with(&netns_prefix("a")));
    }

    #[test]
    fn manifest_names() {
        assert_eq!(manifest_file_name("Node", None, "n1"), "node_n1.yaml");
        assert_eq!(manifest_file_name("Service", Some("default"), "web"), "service_default_web.yaml");
    }
}
