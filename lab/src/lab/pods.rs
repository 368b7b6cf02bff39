//! Pods and agents at runtime: a pod applied after `up`, a pod deleted with a grace period, readiness flips, and
//! agent restarts. The kubelet's part, done the way `up` does it (netns, CNI ADD/DEL through the real plugin).

use std::time::Duration;

use serde_json::Value;

use super::up::{add_pod, start_agent, start_server, wait_server, write_pid};
use super::*;
use crate::manifests::{self, ManifestStore, NewPod};
use crate::plan::PodPlan;
use crate::state::{pod_key, StateLock};

fn conflist(st: &LabState, node: &str) -> Result<Value> {
    let path = st.dirs().cni_conf_dir(node).join(CONFLIST_NAME);
    let text = std::fs::read_to_string(&path).map_err(|e| LabError::io("reading conflist", &path, e))?;
    serde_json::from_str(&text).map_err(|e| LabError::State(format!("{}: {e}", path.display())))
}

fn write_pod(st: &LabState, pod: &PodPlan) -> Result<()> {
    let obj = manifests::pod_object(pod, st.pod_ip(pod), st.pod_ready(pod));
    ManifestStore::new(st.dirs()).write(&obj).map(|_| ())
}

/// Checks a new pod against the lab before anything is made: its node exists and its name is free.
pub(super) fn check_new_pod(st: &LabState, new: &NewPod) -> Result<()> {
    let bad = |reason: String| LabError::Manifest { file: format!("Pod {}/{}", new.namespace, new.name), reason };
    if st.plan.node(&new.node).is_none() {
        return Err(bad(format!("spec.nodeName {:?} is not a node of the lab", new.node)));
    }
    if st.plan.pods.iter().any(|p| p.name == new.name) {
        return Err(bad("a pod of that name exists in another namespace; the lab addresses pods by name".into()));
    }
    if st.plan.node(&new.name).is_some() || new.name == crate::topology::EXTERNAL_HOST {
        return Err(bad(format!("pod name {:?} is taken by a node or the external host", new.name)));
    }
    Ok(())
}

/// Creates a pod on its node as `up` does: netns, CNI ADD through the node's conflist, the echo server on its
/// ports. A failed CNI ADD takes the netns and the plan entry back out.
pub fn create_pod(st: &mut LabState, new: &NewPod, out: &mut dyn std::io::Write) -> Result<()> {
    check_new_pod(st, new)?;
    let lab = st.plan.name.clone();
    let pod = PodPlan {
        name: new.name.clone(),
        namespace: new.namespace.clone(),
        node: new.node.clone(),
        netns: names::pod_netns(&lab, &new.namespace, &new.name),
        container_id: names::container_id(&lab, &new.namespace, &new.name),
        labels: new.labels.clone(),
        ports: new.ports.clone(),
    };
    let key = pod_key(&pod.namespace, &pod.name);
    let conf = conflist(st, &pod.node)?;
    st.plan.pods.push(pod.clone());
    st.save()?;
    let mut net = NetlinkNet::default();
    let added = net.ensure_netns(&pod.netns).and_then(|()| add_pod(st, &pod, &conf));
    let ip = match added {
        Ok(ip) => ip,
        Err(e) => {
            let _ = net.delete_netns(&pod.netns);
            st.plan.pods.retain(|p| p != &pod);
            st.save()?;
            return Err(e);
        }
    };
    st.pod_ips.insert(key.clone(), ip);
    st.save()?;
    write_pod(st, &pod)?;
    let exe = match &st.lab_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().map_err(|e| LabError::io("locating trellis-lab", "/proc/self/exe", e))?,
    };
    let pid = start_server(st, &pod, &exe)?;
    st.servers.insert(key, pid);
    write_pid(&st.dirs(), &format!("serve-{}_{}", pod.namespace, pod.name), pid)?;
    st.save()?;
    wait_server(&pod)?;
    let _ = writeln!(out, "pod/{} created on {}: {ip}", pod.name, pod.node);
    Ok(())
}

fn find_pod(st: &LabState, namespace: &str, name: &str) -> Result<PodPlan> {
    st.plan.pods.iter().find(|p| p.namespace == namespace && p.name == name).cloned().ok_or_else(|| {
        LabError::Manifest { file: format!("pod/{namespace}/{name}"), reason: "no such pod in the lab".into() }
    })
}

/// `delete pod/NAME --grace-secs N`: the pod is terminating for `grace` (its endpoint not ready, still serving,
/// its server still answering), then its server stops, CNI DEL releases it and its netns goes. Blocks for the
/// grace period, like a kubelet does for the pod.
pub fn delete_pod(lab: &str, namespace: &str, name: &str, grace: Duration, out: &mut dyn std::io::Write) -> Result<()> {
    let lock = StateLock::acquire(lab)?;
    let mut st = LabState::load(lab)?;
    let pod = find_pod(&st, namespace, name)?;
    let key = pod_key(namespace, name);
    st.terminating.insert(key.clone());
    st.save()?;
    write_pod(&st, &pod)?;
    run_endpoints_controller(&st)?;
    let _ = writeln!(out, "pod/{name} terminating for {}s", grace.as_secs());
    let _ = out.flush();
    drop(lock);
    std::thread::sleep(grace);

    // Other commands (ready, apply) may have written the state meanwhile.
    let _lock = StateLock::acquire(lab)?;
    let mut st = LabState::load(lab)?;
    let mut warnings = Vec::new();
    if let Some(&pid) = st.servers.get(&key) {
        nsexec::terminate(&[pid], Duration::from_secs(3));
    }
    let node_ns = st.plan.node(&pod.node).map(|n| names::netns_path(&n.netns));
    match (conflist(&st, &pod.node), node_ns) {
        (Ok(conf), Some(ns)) if st.pod_ips.contains_key(&key) => {
            if let Err(e) = cni::del(&conf, &invocation(&st, &pod, "DEL"), &ns, lab) {
                warnings.push(format!("CNI DEL: {e}"));
            }
        }
        (Err(e), _) => warnings.push(e.to_string()),
        _ => {}
    }
    // Processes left in the pod's netns (none normally) go with it.
    nsexec::terminate(&nsexec::pids_in_netns(&[names::netns_path(&pod.netns)]), Duration::from_secs(2));
    if let Err(e) = NetlinkNet::default().delete_netns(&pod.netns) {
        warnings.push(e.to_string());
    }
    st.plan.pods.retain(|p| p.namespace != namespace || p.name != name);
    st.pod_ips.remove(&key);
    st.servers.remove(&key);
    st.terminating.remove(&key);
    st.not_ready.remove(&key);
    st.save()?;
    let store = ManifestStore::new(st.dirs());
    store.remove(&names::manifest_file_name("Pod", Some(namespace), name))?;
    let _ = std::fs::remove_file(st.dirs().pids().join(format!("serve-{namespace}_{name}.pid")));
    run_endpoints_controller(&st)?;
    let _ = writeln!(out, "pod/{name} deleted");
    if warnings.is_empty() {
        Ok(())
    } else {
        Err(LabError::Process { what: format!("deleting pod {key}"), reason: warnings.join("; ") })
    }
}

/// `ready POD true|false`: the pod's readiness, which its endpoints' ready and serving conditions follow.
pub fn set_ready(lab: &str, pod: &str, ready: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let _lock = StateLock::acquire(lab)?;
    let mut st = LabState::load(lab)?;
    let p = st.pod(pod).cloned().ok_or_else(|| LabError::Probe(format!("{pod:?} is no pod of lab {lab}")))?;
    let key = pod_key(&p.namespace, &p.name);
    if ready {
        st.not_ready.remove(&key);
    } else {
        st.not_ready.insert(key);
    }
    st.save()?;
    write_pod(&st, &p)?;
    run_endpoints_controller(&st)?;
    let _ = writeln!(out, "pod/{} ready={ready}", p.name);
    Ok(())
}

/// Waits until `pid` is gone (exited or a zombie).
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while nsexec::alive(pid) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        // SAFETY: non-blocking reap of our own child, if it is one; ECHILD otherwise.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// `restart-agent NODE [--kill]`: SIGTERM and wait (SIGKILL with `kill`, or when it does not stop within 10 s),
/// then the same agent command again, its log appended. Returns (old pid, new pid).
pub fn restart_agent(st: &mut LabState, node: &str, kill: bool, out: &mut dyn std::io::Write) -> Result<(i32, i32)> {
    if st.plan.node(node).is_none() {
        return Err(LabError::Probe(format!("{node:?} is no node of lab {}", st.plan.name)));
    }
    let old = st.agents.get(node).copied().unwrap_or(-1);
    if old > 0 && nsexec::alive(old) {
        let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
        // SAFETY: kill(2) on the agent pid the lab recorded and found alive.
        unsafe { libc::kill(old, sig) };
        if !wait_gone(old, Duration::from_secs(10)) {
            // SAFETY: as above.
            unsafe { libc::kill(old, libc::SIGKILL) };
            if !wait_gone(old, Duration::from_secs(5)) {
                return Err(LabError::Process {
                    what: format!("agent {old} on {node}"),
                    reason: "does not stop".into(),
                });
            }
        }
    }
    let pid = start_agent(st, node, true)?;
    st.agents.insert(node.to_string(), pid);
    write_pid(&st.dirs(), &format!("agent-{node}"), pid)?;
    st.save()?;
    let _ = writeln!(
        out,
        "agent on {node}: {} {old}, started {pid}",
        if kill { "killed (SIGKILL)" } else { "stopped (SIGTERM)" }
    );
    Ok((old, pid))
}
