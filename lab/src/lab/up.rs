//! `up`: builds a lab step by step, saving state after each.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::cni;
use crate::echo::{self, Proto};
use crate::error::{LabError, Result};
use crate::manifests::{self, ManifestStore};
use crate::names::{self, LabDirs};
use crate::net::NetlinkNet;
use crate::nsexec;
use crate::plan::{self, PodPlan};
use crate::state::{self, pod_key, LabState};
use crate::topology::{Mode, Topology};
use crate::underlay;

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub topology: Topology,
    pub mode: Option<Mode>,
    /// Overrides the topology's name.
    pub name: Option<String>,
    pub bin_dir: PathBuf,
    /// The `trellis-lab` executable, re-run as `serve` inside every pod.
    pub lab_exe: PathBuf,
    pub repair_interval_secs: Option<u64>,
    /// How long to wait for each agent's conflist and for cross-node routes.
    pub agent_timeout: Duration,
}

fn check_binaries(bin_dir: &Path) -> Result<()> {
    let missing: Vec<&str> =
        [PLUGIN_BIN, IPAM_BIN, AGENT_BIN].into_iter().filter(|b| !bin_dir.join(b).is_file()).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::State(format!(
            "missing {} in {} (build them: cargo build -p trellis-cni -p trellis-ipam -p trellis-agent, or pass --bin-dir)",
            missing.join(", "),
            bin_dir.display()
        )))
    }
}

/// Builds the whole lab. Checks everything it can first (root, topology, name free, binaries) and touches nothing
/// when one fails. A later error is [`LabError::Partial`] when something was made: it stays for inspection, and
/// `down` removes it.
pub fn up(opts: &UpOptions, out: &mut dyn std::io::Write) -> Result<LabState> {
    ensure_root("up")?;
    let mut topo = opts.topology.clone();
    if let Some(n) = &opts.name {
        topo.name = n.clone();
    }
    let plan = plan::plan(&topo, opts.mode)?;
    let lab = plan.name.clone();
    if lab_exists(&lab)? {
        return Err(LabError::State(format!(
            "lab {lab} already exists (state dir, netns or processes); run `trellis-lab down --name {lab}` first"
        )));
    }
    check_binaries(&opts.bin_dir)?;
    build(opts, plan, out).map_err(|error| match lab_exists(&lab) {
        Ok(false) => error,
        _ => LabError::Partial { lab, error: Box::new(error) },
    })
}

fn build(opts: &UpOptions, plan: plan::LabPlan, out: &mut dyn std::io::Write) -> Result<LabState> {
    let lab = plan.name.clone();
    let dirs = LabDirs::new(&lab);
    for d in [dirs.root.clone(), dirs.manifests(), dirs.staging(), dirs.logs(), dirs.pids()] {
        state::ensure_dir(&d)?;
    }
    for n in &plan.nodes {
        state::ensure_dir(&dirs.cni_conf_dir(&n.name))?;
        state::ensure_dir(&dirs.ipam_dir(&n.name))?;
    }
    let mut st = LabState::new(plan.clone(), opts.bin_dir.clone(), opts.repair_interval_secs);
    st.lab_exe = Some(opts.lab_exe.clone());
    st.save()?;

    underlay::setup_skeleton(&mut NetlinkNet::default(), &plan)?;
    let _ = writeln!(out, "lab {lab}: {} nodes on {} ({})", plan.nodes.len(), plan.underlay_cidr, plan.mode.as_str());

    let store = ManifestStore::new(dirs.clone());
    let namespaces: BTreeSet<&str> =
        std::iter::once("default").chain(plan.pods.iter().map(|p| p.namespace.as_str())).collect();
    for ns in namespaces {
        store.write(&manifests::namespace_object(ns, &BTreeMap::new()))?;
    }
    for n in &plan.nodes {
        store.write(&manifests::node_object(n))?;
    }

    for n in &plan.nodes {
        let pid = start_agent(&st, &n.name, false)?;
        st.agents.insert(n.name.clone(), pid);
        write_pid(&dirs, &format!("agent-{}", n.name), pid)?;
        st.save()?;
    }
    let mut conflists = BTreeMap::new();
    for n in &plan.nodes {
        conflists.insert(n.name.clone(), wait_conflist(&st, &n.name, opts.agent_timeout)?);
    }
    let _ = writeln!(out, "agents up, conflists written");

    for pod in &plan.pods {
        let ip = add_pod(&st, pod, &conflists[&pod.node])?;
        st.pod_ips.insert(pod_key(&pod.namespace, &pod.name), ip);
        st.save()?;
        store.write(&manifests::pod_object(pod, Some(ip), true))?;
        let pid = start_server(&st, pod, &opts.lab_exe)?;
        st.servers.insert(pod_key(&pod.namespace, &pod.name), pid);
        write_pid(&dirs, &format!("serve-{}_{}", pod.namespace, pod.name), pid)?;
        st.save()?;
    }
    for pod in &plan.pods {
        wait_server(pod)?;
    }
    run_endpoints_controller(&st)?;
    if let Err(e) = wait_peer_routes(&st, opts.agent_timeout) {
        let _ = writeln!(out, "warning: {e}");
    }
    st.ready = true;
    st.save()?;
    print_status(&st, out);
    Ok(st)
}

pub(super) fn write_pid(dirs: &LabDirs, what: &str, pid: i32) -> Result<()> {
    let p = dirs.pids().join(format!("{what}.pid"));
    std::fs::write(&p, format!("{pid}\n")).map_err(|e| LabError::io("writing pid", &p, e))
}

pub fn agent_command(st: &LabState, node: &str) -> Command {
    let dirs = st.dirs();
    let mut cmd = Command::new(st.bin_dir.join(AGENT_BIN));
    cmd.arg("--node-name")
        .arg(node)
        .args(["--source", "files", "--manifests-dir"])
        .arg(dirs.manifests())
        .args(["--overlay", st.plan.mode.as_str()])
        .args(["--underlay-iface", plan::NODE_UPLINK])
        .arg("--cluster-cidr")
        .arg(st.plan.cluster_cidr.to_string())
        .arg("--cni-conf-dir")
        .arg(dirs.cni_conf_dir(node))
        .args(["--cni-conf-name", CONFLIST_NAME])
        .arg("--ipam-data-dir")
        .arg(dirs.ipam_dir(node))
        .args(["--metrics-addr", AGENT_METRICS_ADDR])
        .arg("--bpf-dir")
        .arg(dirs.bpf_dir(node));
    // Socket-level load balancing for the node's own cgroup (its pods' servers and the lab's clients acting
    // from the node or its pods); each agent attaches to its own node's only.
    if let Some(cg) = dirs.cgroup(node) {
        cmd.arg("--cgroup").arg(cg);
    }
    if let Some(s) = st.repair_interval_secs {
        cmd.arg("--repair-interval-secs").arg(s.to_string());
    }
    cmd
}

/// Starts the node's agent; `append` keeps the log of an agent before it (restart-agent).
pub(super) fn start_agent(st: &LabState, node: &str, append: bool) -> Result<i32> {
    let dirs = st.dirs();
    let name = format!("agent-{node}.log");
    let log = if append { log_file_append(&dirs, &name)? } else { log_file(&dirs, &name)? };
    let log2 = log.try_clone().map_err(|e| LabError::io("log", dirs.logs(), e))?;
    if let Some(cg) = dirs.cgroup(node) {
        std::fs::create_dir_all(&cg).map_err(|e| LabError::io("creating cgroup", &cg, e))?;
    }
    let mut cmd = agent_command(st, node);
    cmd.env("NODE_NAME", node)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let netns = names::netns_path(&st.plan.node(node).expect("planned node").netns);
    let child = nsexec::spawn_in(&mut cmd, &netns, &st.plan.name, true)?;
    Ok(child.id() as i32)
}

fn wait_conflist(st: &LabState, node: &str, timeout: Duration) -> Result<Value> {
    let dirs = st.dirs();
    let path = dirs.cni_conf_dir(node).join(CONFLIST_NAME);
    let pid = st.agents.get(node).copied().unwrap_or(-1);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                return Ok(v);
            }
        }
        let log = dirs.logs().join(format!("agent-{node}.log"));
        if !nsexec::alive(pid) {
            return Err(LabError::Process {
                what: format!("trellis-agent on {node}"),
                reason: format!("exited before writing {}; log:\n{}", path.display(), tail(&log, 20)),
            });
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout(format!(
                "agent on {node} wrote no conflist at {} within {timeout:?}; log:\n{}",
                path.display(),
                tail(&log, 20)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn add_pod(st: &LabState, pod: &PodPlan, conflist: &Value) -> Result<Ipv4Addr> {
    let node = st.plan.node(&pod.node).expect("validated");
    let inv = invocation(st, pod, "ADD");
    let result = cni::add(conflist, &inv, &names::netns_path(&node.netns), &st.plan.name)?;
    cni::result_ipv4(&result).ok_or_else(|| LabError::Cni {
        plugin: "conflist".into(),
        command: "ADD".into(),
        reason: format!("result for {}/{} has no IPv4 address: {result}", pod.namespace, pod.name),
    })
}

pub(super) fn start_server(st: &LabState, pod: &PodPlan, lab_exe: &Path) -> Result<i32> {
    let dirs = st.dirs();
    let log = log_file(&dirs, &format!("serve-{}_{}.log", pod.namespace, pod.name))?;
    let log2 = log.try_clone().map_err(|e| LabError::io("log", dirs.logs(), e))?;
    let ports: Vec<String> = pod.ports.iter().map(|p| p.port().to_string()).collect();
    let mut cmd = Command::new(lab_exe);
    cmd.args(["serve", "--pod-name", &pod.name, "--ports", &ports.join(",")])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let cg = dirs.cgroup(&pod.node);
    let child = nsexec::spawn_in_node(&mut cmd, &names::netns_path(&pod.netns), cg.as_deref(), &st.plan.name, true)?;
    Ok(child.id() as i32)
}

pub(super) fn wait_server(pod: &PodPlan) -> Result<()> {
    let port = pod.ports[0].port();
    let deadline = Instant::now() + Duration::from_secs(10);
    let path = names::netns_path(&pod.netns);
    loop {
        let r =
            nsexec::run_in(&path, || echo::probe(Ipv4Addr::LOCALHOST, port, Proto::Tcp, Duration::from_millis(300)))?;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(LabError::Timeout(format!("server in pod {}: {e}", pod.name)))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Waits until every node has a route to every other node's podCIDR (the agents' work).
fn wait_peer_routes(st: &LabState, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut missing = Vec::new();
        for n in &st.plan.nodes {
            let rs = route_destinations(&n.netns)?;
            for peer in st.plan.nodes.iter().filter(|p| p.name != n.name) {
                if !rs.contains(&peer.pod_cidr) {
                    missing.push(format!("{} -> {}", n.name, peer.pod_cidr));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout(format!("agents installed no route for: {}", missing.join(", "))));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
