//! The lab's verbs: up, down, status, exec, apply, probe, check. Side effects live here; the decisions they
//! make come from the pure modules (plan, manifests, cni, check).

mod access;
mod control;
mod down;
mod pods;
mod status;
mod up;

#[cfg(test)]
mod tests;

pub use access::{endpoint, exec, node_of, probe, probe_each, resolve_target, services, Endpoint, ProbeOptions};
pub use control::{apply, delete, run_endpoints_controller};
pub use down::{down, DownReport};
pub use pods::{create_pod, delete_pod, restart_agent, set_ready};
pub use status::print_status;
pub use up::{agent_command, up, UpOptions};

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::cni;
use crate::error::{LabError, Result};
use crate::names::{self, LabDirs};
use crate::net::{LabNet, NetlinkNet};
use crate::nsexec;
use crate::plan::{PodPlan, POD_IFNAME};
use crate::state::LabState;

pub const PLUGIN_BIN: &str = "trellis";
pub const IPAM_BIN: &str = "trellis-ipam";
pub const AGENT_BIN: &str = "trellis-agent";
pub const CONFLIST_NAME: &str = "10-trellis.conflist";
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";
/// Every agent serves metrics here, on its own node's loopback.
pub const AGENT_METRICS_ADDR: &str = "127.0.0.1:9962";

/// The directory holding the binaries: `--bin-dir`, else the one `trellis-lab` runs from.
pub fn default_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| LabError::io("locating trellis-lab", "/proc/self/exe", e))?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")))
}

/// Refuses `verb` unless root, before anything is touched: a lab is namespaces, links and files in /run.
pub fn ensure_root(verb: &'static str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NeedsRoot { verb })
    }
}

/// Anything of this lab on the machine: its state dir, a netns, a process.
pub fn lab_exists(lab: &str) -> Result<bool> {
    let prefix = names::netns_prefix(lab);
    Ok(LabDirs::new(lab).root.exists()
        || NetlinkNet::default().list_netns()?.iter().any(|n| n.starts_with(&prefix))
        || !nsexec::pids_tagged(lab).is_empty())
}

fn log_file(dirs: &LabDirs, name: &str) -> Result<File> {
    let p = dirs.logs().join(name);
    File::create(&p).map_err(|e| LabError::io("creating log", &p, e))
}

fn log_file_append(dirs: &LabDirs, name: &str) -> Result<File> {
    let p = dirs.logs().join(name);
    std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(|e| LabError::io("opening log", &p, e))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn invocation(st: &LabState, pod: &PodPlan, command: &'static str) -> cni::Invocation {
    cni::Invocation {
        command,
        container_id: pod.container_id.clone(),
        netns: names::netns_path(&pod.netns),
        ifname: POD_IFNAME.into(),
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        cni_path: vec![st.bin_dir.clone(), PathBuf::from(SYSTEM_CNI_DIR)],
    }
}

/// Destinations of the IPv4 routes in a lab netns (main table).
pub fn route_destinations(netns: &str) -> Result<Vec<ipnet::Ipv4Net>> {
    let nl = |source| LabError::Netlink { netns: netns.to_string(), source };
    let mut h = trellis_netlink::Handle::in_netns(&names::netns_path(netns)).map_err(nl)?;
    let routes = h.routes(trellis_netlink::Family::V4).map_err(nl)?;
    Ok(routes
        .into_iter()
        .filter_map(|r| match r.dst {
            ipnet::IpNet::V4(d) => Some(d),
            ipnet::IpNet::V6(_) => None,
        })
        .collect())
}
