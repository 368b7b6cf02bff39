//! Reaching into a lab: probe and exec from a pod or node, resolving targets.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::echo::{self, Attempt, Prober, Proto};
use crate::error::{LabError, Result};
use crate::manifests::ManifestStore;
use crate::names;
use crate::nsexec;
use crate::state::LabState;
use crate::topology::EXTERNAL_HOST;

/// A probe source: a pod or a node of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub label: String,
    pub netns: String,
    pub is_node: bool,
}

/// A pod, a node (`node1`, `node/node1`), or `external`, the host on the underlay that is no node.
pub fn endpoint(st: &LabState, name: &str) -> Result<Endpoint> {
    if name == EXTERNAL_HOST {
        return Ok(Endpoint { label: EXTERNAL_HOST.into(), netns: st.plan.external_netns.clone(), is_node: false });
    }
    if let Some(p) = st.pod(name) {
        return Ok(Endpoint { label: p.name.clone(), netns: p.netns.clone(), is_node: false });
    }
    let node_name = name.strip_prefix("node/").unwrap_or(name);
    if let Some(n) = st.plan.node(node_name) {
        return Ok(Endpoint { label: format!("node/{}", n.name), netns: n.netns.clone(), is_node: true });
    }
    Err(LabError::Probe(format!("{name:?} is neither a pod nor a node of lab {}", st.plan.name)))
}

/// The node a pod or node endpoint belongs to (None for `external`).
pub fn node_of(st: &LabState, name: &str) -> Option<String> {
    if name == EXTERNAL_HOST {
        return None;
    }
    if let Some(p) = st.pod(name) {
        return Some(p.node.clone());
    }
    let node = name.strip_prefix("node/").unwrap_or(name);
    st.plan.node(node).map(|n| n.name.clone())
}

/// A probe target: an IPv4 literal, a pod (`name` or `ns/name`), a node (`node/NAME`: its InternalIP), the
/// `external` host, or a Service (`svc/name`, `svc/ns/name`, or a bare name that is no pod) resolved to its
/// clusterIP.
pub fn resolve_target(st: &LabState, target: &str, services: &[Value]) -> Result<Ipv4Addr> {
    if let Ok(ip) = target.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    if target == EXTERNAL_HOST {
        return Ok(st.plan.external_ip);
    }
    if let Some(node) = target.strip_prefix("node/") {
        return st
            .plan
            .node(node)
            .map(|n| n.internal_ip)
            .ok_or_else(|| LabError::Probe(format!("{node:?} is no node of lab {}", st.plan.name)));
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

/// How `probe` tries: `count` attempts, each a fresh connection (TCP) or a fresh socket's datagram (UDP), unless
/// `sport` fixes the source port (UDP: one socket, one long-lived flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOptions {
    pub proto: Proto,
    pub timeout: Duration,
    pub count: u32,
    pub sport: Option<u16>,
}

/// Runs every attempt from `from`'s netns, handing each to `each` as it completes (so a long run streams).
/// Returns how many failed.
pub fn probe_each(
    st: &LabState,
    from: &str,
    target: &str,
    port: u16,
    opts: ProbeOptions,
    mut each: impl FnMut(&Attempt) + Send,
) -> Result<u32> {
    let src = endpoint(st, from)?;
    let ip = resolve_target(st, target, &services(st)?)?;
    nsexec::run_in(&names::netns_path(&src.netns), move || {
        let mut prober = Prober::new(ip, port, opts.proto, opts.timeout, opts.sport);
        let mut failed = 0;
        for _ in 0..opts.count {
            let a = prober.attempt();
            if a.result.is_err() {
                failed += 1;
            }
            each(&a);
        }
        failed
    })
}

/// Runs a command inside a pod's or node's netns with inherited stdio; returns its exit code.
pub fn exec(st: &LabState, target: &str, argv: &[String]) -> Result<i32> {
    let ep = endpoint(st, target)?;
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| LabError::Process { what: "exec".into(), reason: "no command given".into() })?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let cg = node_of(st, target).and_then(|n| st.dirs().cgroup(&n));
    let mut child =
        nsexec::spawn_in_node(&mut cmd, &names::netns_path(&ep.netns), cg.as_deref(), &st.plan.name, false)?;
    let status = child.wait().map_err(|e| LabError::Process { what: prog.clone(), reason: e.to_string() })?;
    Ok(status.code().unwrap_or(128 + 9))
}
