//! The lab's verbs: up, down, status, exec, apply, probe, check. Side effects live here; the decisions they
//! make come from the pure modules (plan, manifests, cni, check).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cni;
use crate::echo::{self, Proto};
use crate::error::{LabError, Result};
use crate::manifests::{self, EndpointPod, ManifestStore};
use crate::names::{self, LabDirs};
use crate::net::{LabNet, NetlinkNet};
use crate::nsexec;
use crate::plan::{self, PodPlan, POD_IFNAME};
use crate::state::{self, pod_key, LabState};
use crate::topology::{Mode, Topology};
use crate::underlay;

pub const PLUGIN_BIN: &str = "trellis";
pub const IPAM_BIN: &str = "trellis-ipam";
pub const AGENT_BIN: &str = "trellis-agent";
pub const CONFLIST_NAME: &str = "10-trellis.conflist";
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

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

/// The directory holding the binaries: `--bin-dir`, else the one `trellis-lab` runs from.
pub fn default_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| LabError::io("locating trellis-lab", "/proc/self/exe", e))?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")))
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

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Builds the whole lab. On error the partial lab stays for inspection; `down` removes it.
pub fn up(opts: &UpOptions, out: &mut dyn std::io::Write) -> Result<LabState> {
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
    let dirs = LabDirs::new(&lab);
    for d in [dirs.root.clone(), dirs.manifests(), dirs.staging(), dirs.logs(), dirs.pids()] {
        state::ensure_dir(&d)?;
    }
    for n in &plan.nodes {
        state::ensure_dir(&dirs.cni_conf_dir(&n.name))?;
        state::ensure_dir(&dirs.ipam_dir(&n.name))?;
    }
    let mut st = LabState::new(plan.clone(), opts.bin_dir.clone(), opts.repair_interval_secs);
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
        let pid = start_agent(&st, &n.name)?;
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
        store.write(&manifests::pod_object(pod, Some(ip)))?;
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

fn write_pid(dirs: &LabDirs, what: &str, pid: i32) -> Result<()> {
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
        .args(["--metrics-addr", ""]);
    if let Some(s) = st.repair_interval_secs {
        cmd.arg("--repair-interval-secs").arg(s.to_string());
    }
    cmd
}

fn start_agent(st: &LabState, node: &str) -> Result<i32> {
    let dirs = st.dirs();
    let log = log_file(&dirs, &format!("agent-{node}.log"))?;
    let log2 = log.try_clone().map_err(|e| LabError::io("log", dirs.logs(), e))?;
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

fn add_pod(st: &LabState, pod: &PodPlan, conflist: &Value) -> Result<Ipv4Addr> {
    let node = st.plan.node(&pod.node).expect("validated");
    let inv = invocation(st, pod, "ADD");
    let result = cni::add(conflist, &inv, &names::netns_path(&node.netns), &st.plan.name)?;
    cni::result_ipv4(&result).ok_or_else(|| LabError::Cni {
        plugin: "conflist".into(),
        command: "ADD".into(),
        reason: format!("result for {}/{} has no IPv4 address: {result}", pod.namespace, pod.name),
    })
}

fn start_server(st: &LabState, pod: &PodPlan, lab_exe: &Path) -> Result<i32> {
    let dirs = st.dirs();
    let log = log_file(&dirs, &format!("serve-{}_{}.log", pod.namespace, pod.name))?;
    let log2 = log.try_clone().map_err(|e| LabError::io("log", dirs.logs(), e))?;
    let ports: Vec<String> = pod.ports.iter().map(|p| p.port().to_string()).collect();
    let mut cmd = Command::new(lab_exe);
    cmd.args(["serve", "--pod-name", &pod.name, "--ports", &ports.join(",")])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let child = nsexec::spawn_in(&mut cmd, &names::netns_path(&pod.netns), &st.plan.name, true)?;
    Ok(child.id() as i32)
}

fn wait_server(pod: &PodPlan) -> Result<()> {
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

/// Rewrites the EndpointSlices of every Service with a selector; removes the lab's slices of Services gone.
pub fn run_endpoints_controller(st: &LabState) -> Result<Vec<String>> {
    let store = ManifestStore::new(st.dirs());
    let all = store.read_all()?;
    let pods: Vec<EndpointPod> =
        st.plan.pods.iter().filter_map(|p| st.pod_ip(p).map(|ip| EndpointPod { plan: p, ip })).collect();
    let mut written = BTreeSet::new();
    for (_, obj) in all.iter().filter(|(_, o)| o["kind"] == "Service") {
        if let Some(slice) = manifests::endpoint_slice(obj, &pods) {
            written.insert(store.write(&slice)?);
        }
    }
    for (file, obj) in &all {
        let ours = obj["kind"] == "EndpointSlice"
            && obj.pointer("/metadata/labels/endpointslice.kubernetes.io~1managed-by") == Some(&json!("trellis-lab"));
        if ours && !written.contains(file) {
            store.remove(file)?;
        }
    }
    Ok(written.into_iter().collect())
}

/// `apply`: validates every document first, then writes them and re-runs the endpoints controller.
pub fn apply(st: &mut LabState, files: &[PathBuf], out: &mut dyn std::io::Write) -> Result<()> {
    let mut docs = Vec::new();
    for f in files {
        docs.extend(manifests::read_file(f)?);
    }
    let store = ManifestStore::new(st.dirs());
    let existing = store.read_all()?;
    let mut taken: BTreeSet<Ipv4Addr> = existing
        .iter()
        .filter(|(_, o)| o["kind"] == "Service")
        .filter_map(|(_, o)| o.pointer("/spec/clusterIP").and_then(Value::as_str)?.parse().ok())
        .collect();
    // Validate all before writing any.
    for d in &docs {
        let (kind, ns, name) = manifests::object_key(d)?;
        if kind == "Pod" && st.pod(&format!("{}/{name}", ns.clone().unwrap_or_default())).is_none() {
            return Err(LabError::Manifest {
                file: format!("Pod {}/{name}", ns.unwrap_or_default()),
                reason: "the lab creates pods at `up`; apply can only change their labels".into(),
            });
        }
        if kind == "Service" {
            if let Some(ip) = d.pointer("/spec/clusterIP").and_then(Value::as_str) {
                if ip != "None" && !ip.is_empty() {
                    let ip: Ipv4Addr = ip.parse().map_err(|_| LabError::Manifest {
                        file: format!("Service {name}"),
                        reason: format!("clusterIP {ip:?} is not an IPv4 address"),
                    })?;
                    if !st.plan.service_cidr.contains(&ip) {
                        return Err(LabError::Manifest {
                            file: format!("Service {name}"),
                            reason: format!("clusterIP {ip} is outside serviceCIDR {}", st.plan.service_cidr),
                        });
                    }
                }
            }
        }
    }
    for mut d in docs {
        let (kind, ns, name) = manifests::object_key(&d)?;
        if let Some(ns) = &ns {
            d["metadata"]["namespace"] = json!(ns);
        }
        match kind.as_str() {
            "Pod" => {
                let ns = ns.unwrap_or_default();
                let labels: BTreeMap<String, String> = d
                    .pointer("/metadata/labels")
                    .and_then(|l| serde_json::from_value(l.clone()).ok())
                    .unwrap_or_default();
                let pod =
                    st.plan.pods.iter_mut().find(|p| p.namespace == ns && p.name == name).expect("validated above");
                pod.labels = labels;
                let pod = pod.clone();
                let ip = st.pod_ip(&pod);
                store.write(&manifests::pod_object(&pod, ip))?;
                let _ = writeln!(out, "pod/{name} labels updated");
                continue;
            }
            "Service" => {
                let file = names::manifest_file_name(&kind, ns.as_deref(), &name);
                let current = existing
                    .iter()
                    .find(|(f, _)| *f == file)
                    .and_then(|(_, o)| o.pointer("/spec/clusterIP").and_then(Value::as_str))
                    .map(str::to_string);
                let given = d.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
                if given.is_empty() {
                    let ip = match current.and_then(|c| c.parse::<Ipv4Addr>().ok()) {
                        Some(ip) => ip,
                        None => manifests::allocate_cluster_ip(st.plan.service_cidr, &taken).ok_or_else(|| {
                            LabError::Manifest { file: format!("Service {name}"), reason: "serviceCIDR is full".into() }
                        })?,
                    };
                    taken.insert(ip);
                    d["spec"]["clusterIP"] = json!(ip.to_string());
                    d["spec"]["clusterIPs"] = json!([ip.to_string()]);
                }
            }
            "Namespace" => {
                d["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
            _ => {}
        }
        let file = store.write(&d)?;
        let _ = writeln!(out, "{} {file}", kind.to_ascii_lowercase());
    }
    st.save()?;
    for f in run_endpoints_controller(st)? {
        let _ = writeln!(out, "endpointslice {f}");
    }
    Ok(())
}

/// `delete KIND/NAME`: removes an object from the control plane (e.g. `node/node2`: the other agents drop its
/// routes). Pods stay: the lab created them at `up`.
pub fn delete(st: &LabState, what: &str, namespace: &str, out: &mut dyn std::io::Write) -> Result<()> {
    let (kind, name) = what.split_once('/').ok_or_else(|| LabError::Manifest {
        file: what.into(),
        reason: "expected KIND/NAME, e.g. node/node2 or service/web".into(),
    })?;
    let kind = kind.to_ascii_lowercase();
    if kind == "pod" {
        return Err(LabError::Manifest {
            file: what.into(),
            reason: "pods live as long as the lab; change their labels with apply".into(),
        });
    }
    let cluster_scoped = ["node", "namespace", "clusterrole", "clusterrolebinding", "customresourcedefinition"];
    let ns = (!cluster_scoped.contains(&kind.as_str())).then_some(namespace);
    let file = names::manifest_file_name(&kind, ns, name);
    let store = ManifestStore::new(st.dirs());
    if !st.dirs().manifests().join(&file).exists() {
        return Err(LabError::Manifest { file, reason: "no such object in the lab".into() });
    }
    store.remove(&file)?;
    let _ = writeln!(out, "deleted {file}");
    run_endpoints_controller(st)?;
    Ok(())
}

/// A probe source: a pod or a node of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub label: String,
    pub netns: String,
    pub is_node: bool,
}

pub fn endpoint(st: &LabState, name: &str) -> Result<Endpoint> {
    if let Some(p) = st.pod(name) {
        return Ok(Endpoint { label: p.name.clone(), netns: p.netns.clone(), is_node: false });
    }
    let node_name = name.strip_prefix("node/").unwrap_or(name);
    if let Some(n) = st.plan.node(node_name) {
        return Ok(Endpoint { label: format!("node/{}", n.name), netns: n.netns.clone(), is_node: true });
    }
    Err(LabError::Probe(format!("{name:?} is neither a pod nor a node of lab {}", st.plan.name)))
}

/// A probe target: an IPv4 literal, a pod (`name` or `ns/name`), or a Service (`svc/name`, `svc/ns/name`, or a
/// bare name that is no pod) resolved to its clusterIP.
pub fn resolve_target(st: &LabState, target: &str, services: &[Value]) -> Result<Ipv4Addr> {
    if let Ok(ip) = target.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let svc_ref = target.strip_prefix("svc/");
    if svc_ref.is_none() {
        if let Some(p) = st.pod(target) {
            return st
                .pod_ip(p)
                .ok_or_else(|| LabError::Probe(format!("pod {target} has no IP (was `up` interrupted?)")));
        }
    }
    let r = svc_ref.unwrap_or(target);
    let (ns, name) = r.split_once('/').unwrap_or(("default", r));
    services
        .iter()
        .find(|s| {
            s["kind"] == "Service"
                && s.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                && s.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default") == ns
        })
        .and_then(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str))
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| LabError::Probe(format!("{target:?} is no IP, pod or Service with a clusterIP")))
}

pub fn services(st: &LabState) -> Result<Vec<Value>> {
    Ok(ManifestStore::new(st.dirs())
        .read_all()?
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| o["kind"] == "Service")
        .collect())
}

/// Probes from `from`'s netns.
pub fn probe(st: &LabState, from: &str, target: &str, port: u16, proto: Proto, timeout: Duration) -> Result<String> {
    let src = endpoint(st, from)?;
    let ip = resolve_target(st, target, &services(st)?)?;
    nsexec::run_in(&names::netns_path(&src.netns), || echo::probe(ip, port, proto, timeout))?
}

/// Runs a command inside a pod's or node's netns with inherited stdio; returns its exit code.
pub fn exec(st: &LabState, target: &str, argv: &[String]) -> Result<i32> {
    let ep = endpoint(st, target)?;
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| LabError::Process { what: "exec".into(), reason: "no command given".into() })?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let mut child = nsexec::spawn_in(&mut cmd, &names::netns_path(&ep.netns), &st.plan.name, false)?;
    let status = child.wait().map_err(|e| LabError::Process { what: prog.clone(), reason: e.to_string() })?;
    Ok(status.code().unwrap_or(128 + 9))
}

pub fn print_status(st: &LabState, out: &mut dyn std::io::Write) {
    let p = &st.plan;
    let _ = writeln!(
        out,
        "lab {} ({}){}: clusterCIDR {}, serviceCIDR {}, underlay {} in netns {}",
        p.name,
        p.mode.as_str(),
        if st.ready { "" } else { " [incomplete]" },
        p.cluster_cidr,
        p.service_cidr,
        p.underlay_cidr,
        p.underlay_netns
    );
    let _ = writeln!(out, "{:<12} {:<15} {:<16} {:<10} netns", "NODE", "INTERNAL-IP", "POD-CIDR", "AGENT");
    for n in &p.nodes {
        let agent = match st.agents.get(&n.name) {
            Some(&pid) if nsexec::alive(pid) => format!("{pid}"),
            Some(&pid) => format!("{pid} dead"),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<15} {:<16} {:<10} {}",
            n.name,
            n.internal_ip.to_string(),
            n.pod_cidr.to_string(),
            agent,
            n.netns
        );
    }
    let _ = writeln!(out, "{:<24} {:<12} {:<15} {:<10} {:<20} labels", "POD", "NODE", "IP", "SERVER", "PORTS");
    for pod in &p.pods {
        let key = pod_key(&pod.namespace, &pod.name);
        let ip = st.pod_ips.get(&key).map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        let server = match st.servers.get(&key) {
            Some(&pid) if nsexec::alive(pid) => format!("{pid}"),
            Some(&pid) => format!("{pid} dead"),
            None => "-".into(),
        };
        let ports: Vec<String> = pod.ports.iter().map(|p| p.port().to_string()).collect();
        let labels: Vec<String> = pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<15} {:<10} {:<20} {}",
            key,
            pod.node,
            ip,
            server,
            ports.join(","),
            labels.join(",")
        );
    }
    let _ = writeln!(out, "state: {}", st.dirs().root.display());
}

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
    let left_netns: Vec<String> = net.list_netns()?.into_iter().filter(|n| n.starts_with(&prefix)).collect();
    let left_pids: Vec<i32> = nsexec::pids_tagged(lab).into_iter().filter(|&p| nsexec::alive(p)).collect();
    if !left_netns.is_empty() {
        errors.push(format!("netns {}", left_netns.join(", ")));
    }
    if !left_pids.is_empty() {
        errors.push(format!("processes {left_pids:?}"));
    }
    if dirs.root.exists() {
        errors.push(format!("{}", dirs.root.display()));
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(LabError::Leftovers(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    fn state() -> LabState {
        let plan = plan::plan(&Topology::default_topology(), None).unwrap();
        let mut st = LabState::new(plan, "/bin".into(), None);
        st.pod_ips.insert("default/web-1".into(), Ipv4Addr::new(10, 244, 0, 2));
        st
    }

    #[test]
    fn targets_resolve_to_ips_pods_and_services() {
        let st = state();
        let svcs = vec![
            json!({"kind": "Service", "metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.2"}}),
            json!({"kind": "Service", "metadata": {"name": "db", "namespace": "data"}, "spec": {"clusterIP": "10.96.0.3"}}),
            // A Service named like a pod: `svc/` picks the Service, the bare name the pod.
            json!({"kind": "Service", "metadata": {"name": "web-1"}, "spec": {"clusterIP": "10.96.0.4"}}),
        ];
        let r = |t: &str| resolve_target(&st, t, &svcs);
        assert_eq!(r("10.1.2.3").unwrap(), Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(r("web-1").unwrap(), Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(r("default/web-1").unwrap(), Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(r("svc/web-1").unwrap(), Ipv4Addr::new(10, 96, 0, 4));
        assert_eq!(r("web").unwrap(), Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(r("svc/data/db").unwrap(), Ipv4Addr::new(10, 96, 0, 3));
        assert!(r("db").is_err(), "db lives in namespace data");
        assert!(r("web-2").unwrap_err().to_string().contains("no IP"));
        assert!(r("nothing").is_err());
    }

    #[test]
    fn endpoints_are_pods_or_nodes() {
        let st = state();
        let e = endpoint(&st, "web-2").unwrap();
        assert!(!e.is_node);
        assert_eq!(e.netns, "tl-default-pod-default_web-2");
        let n = endpoint(&st, "node/node1").unwrap();
        assert!(n.is_node);
        assert_eq!(n, endpoint(&st, "node1").unwrap());
        assert!(endpoint(&st, "node9").is_err());
    }

    #[test]
    fn agent_command_line_follows_the_contract() {
        let mut st = state();
        st.repair_interval_secs = Some(2);
        let cmd = agent_command(&st, "node2");
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(after("--node-name"), "node2");
        assert_eq!(after("--source"), "files");
        assert_eq!(after("--overlay"), "vxlan");
        assert_eq!(after("--repair-interval-secs"), "2");
        assert_eq!(after("--cni-conf-dir"), "/run/trellis-lab/default/nodes/node2/cni");
        assert_eq!(after("--manifests-dir"), "/run/trellis-lab/default/manifests");
        assert_eq!(after("--metrics-addr"), "");
    }
}
