//! `down`: removes everything of a lab, from names alone.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::cni;
use crate::error::{LabError, Result};
use crate::names::{self, LabDirs};
use crate::net::{LabNet, NetlinkNet};
use crate::nsexec;
use crate::state::{pod_key, LabState};
use crate::underlay;

/// What `down` removed.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Pods released with CNI DEL (when state.json and the conflist were there).
    pub cni_deleted: Vec<String>,
    /// CNI DEL failures: reported, never blocking the teardown.
    pub warnings: Vec<String>,
    pub processes: Vec<i32>,
    pub netns: Vec<String>,
    pub state_dir: bool,
}

/// CNI DEL for every pod that got an IP, as a runtime does when it removes a pod sandbox. Best effort.
fn release_pods(st: &LabState, report: &mut DownReport) {
    let dirs = st.dirs();
    for pod in &st.plan.pods {
        let key = pod_key(&pod.namespace, &pod.name);
        if !st.pod_ips.contains_key(&key) {
            continue;
        }
        let Some(node) = st.plan.node(&pod.node) else { continue };
        let node_ns = names::netns_path(&node.netns);
        let conf = dirs.cni_conf_dir(&node.name).join(CONFLIST_NAME);
        let Some(conflist) = std::fs::read_to_string(&conf).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok())
        else {
            continue;
        };
        if !node_ns.exists() {
            continue;
        }
        match cni::del(&conflist, &invocation(st, pod, "DEL"), &node_ns, &st.plan.name) {
            Ok(()) => report.cni_deleted.push(key),
            Err(e) => report.warnings.push(format!("CNI DEL {key}: {e}")),
        }
    }
}

/// Removes every process, netns (and with them every link) and file of the lab. Works from names alone, so a
/// crashed `up` is cleaned up too. Errors if anything is left afterwards.
pub fn down(lab: &str) -> Result<DownReport> {
    crate::topology::validate_lab_name(lab)?;
    let prefix = names::netns_prefix(lab);
    let mut net = NetlinkNet::default();
    let ours: Vec<PathBuf> =
        net.list_netns()?.into_iter().filter(|n| n.starts_with(&prefix)).map(|n| names::netns_path(&n)).collect();
    let mut report = DownReport::default();
    if let Ok(st) = LabState::load(lab) {
        release_pods(&st, &mut report);
    }
    let mut pids: BTreeSet<i32> = nsexec::pids_in_netns(&ours).into_iter().collect();
    pids.extend(nsexec::pids_tagged(lab));
    let pids: Vec<i32> = pids.into_iter().collect();
    report.processes = nsexec::terminate(&pids, Duration::from_secs(3));
    let mut errors = Vec::new();
    match underlay::teardown_netns(&mut net, lab) {
        Ok(v) => report.netns = v,
        Err(e) => errors.push(e.to_string()),
    }
    let dirs = LabDirs::new(lab);
    if dirs.root.exists() {
        match std::fs::remove_dir_all(&dirs.root) {
            Ok(()) => report.state_dir = true,
            Err(e) => errors.push(format!("{}: {e}", dirs.root.display())),
        }
    }
    // The nodes' pinned maps and links (the links went with their interfaces; the pins hold the maps).
    if dirs.bpf.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dirs.bpf) {
            errors.push(format!("{}: {e}", dirs.bpf.display()));
        }
        // The shared parent goes with the last lab (fails harmlessly while another lab is up).
        let _ = std::fs::remove_dir(crate::names::BPF_ROOT);
    }
    // The nodes' cgroups (empty now that every process is gone), then the lab's and the shared parent.
    if let Some(cgs) = dirs.cgroups() {
        if let Ok(rd) = std::fs::read_dir(&cgs) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                if let Err(err) = std::fs::remove_dir(e.path()) {
                    errors.push(format!("cgroup {}: {err}", e.path().display()));
                }
            }
        }
        let _ = std::fs::remove_dir(&cgs);
        if let Some(parent) = cgs.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    let left_netns: Vec<String> = net.list_netns()?.into_iter().filter(|n| n.starts_with(&prefix)).collect();
    let left_pids: Vec<i32> = nsexec::pids_tagged(lab).into_iter().filter(|&p| nsexec::alive(p)).collect();
    if !left_netns.is_empty() {
        errors.push(format!("netns {}", left_netns.join(", ")));
    }
    if !left_pids.is_empty() {
        errors.push(format!("processes {left_pids:?}"));
    }
    for d in [&dirs.root, &dirs.bpf] {
        if d.exists() {
            errors.push(format!("{}", d.display()));
        }
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(LabError::Leftovers(errors.join("; ")))
    }
}
