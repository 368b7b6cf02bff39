//! The lab's control plane: Kubernetes objects as files in the manifests dir the agents watch. Pure builders
//! (Node, Pod, Namespace, EndpointSlice), the endpoints controller, and atomic file writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use crate::error::{LabError, Result};
use crate::names::{manifest_file_name, LabDirs};
use crate::plan::{NodePlan, PodPlan};
use crate::topology::PortSpec;

pub fn node_object(node: &NodePlan) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "spec": {"podCIDR": node.pod_cidr.to_string(), "podCIDRs": [node.pod_cidr.to_string()]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": node.internal_ip.to_string()},
            {"type": "Hostname", "address": node.name}
        ]}
    })
}

/// A pod's object as the agents read it; `ready` is its Ready condition once it has an IP.
pub fn pod_object(pod: &PodPlan, ip: Option<Ipv4Addr>, ready: bool) -> Value {
    let ports: Vec<Value> = pod
        .ports
        .iter()
        .flat_map(|p| {
            ["TCP", "UDP"].into_iter().map(move |proto| {
                let mut v = json!({"containerPort": p.port(), "protocol": proto});
                if let Some(n) = p.name() {
                    v["name"] = json!(n);
                }
                v
            })
        })
        .collect();
    let mut status = json!({"phase": if ip.is_some() { "Running" } else { "Pending" }});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
        status["conditions"] = json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
        "spec": {"nodeName": pod.node, "containers": [{"name": "echo", "image": "trellis-lab/echo", "ports": ports}]},
        "status": status
    })
}

pub fn namespace_object(name: &str, labels: &BTreeMap<String, String>) -> Value {
    let mut labels = labels.clone();
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// Kinds that live in a namespace (the rest are cluster-scoped).
pub fn is_namespaced(kind: &str) -> bool {
    !matches!(kind, "Node" | "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition")
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(|l| crate::topology::validate_dns_label("", l).is_ok())
}

/// Identity of an object: (kind, namespace, name).
pub fn object_key(obj: &Value) -> Result<(String, Option<String>, String)> {
    let bad = |reason: &str| LabError::Manifest { file: "<object>".into(), reason: reason.into() };
    let kind = obj.get("kind").and_then(Value::as_str).ok_or_else(|| bad("no kind"))?;
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| bad("no metadata.name"))?;
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad(&format!("kind {kind:?} is not a Kubernetes kind")));
    }
    // Names end up in file names: Kubernetes' DNS subdomain rule also keeps them free of '/' and '_'.
    if !is_dns_subdomain(name) {
        return Err(bad(&format!("metadata.name {name:?} is not a DNS subdomain")));
    }
    let ns = if is_namespaced(kind) {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
        crate::topology::validate_dns_label("metadata.namespace", ns).map_err(|e| bad(&e.to_string()))?;
        Some(ns.to_string())
    } else {
        None
    };
    Ok((kind.to_string(), ns, name.to_string()))
}

/// Splits a (multi-document) YAML or JSON text into objects; `List` kinds are flattened.
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| LabError::Manifest { file: file.into(), reason: e.to_string() })?;
        match v {
            Value::Null => {}
            Value::Object(_) if v.get("kind").and_then(Value::as_str) == Some("List") => {
                if let Some(items) = v.get("items").and_then(Value::as_array) {
                    out.extend(items.iter().cloned());
                }
            }
            Value::Object(_) => out.push(v),
            _ => return Err(LabError::Manifest { file: file.into(), reason: "a document is not an object".into() }),
        }
    }
    for o in &out {
        object_key(o).map_err(|e| LabError::Manifest { file: file.into(), reason: e.to_string() })?;
    }
    Ok(out)
}

fn labels_match(selector: &serde_json::Map<String, Value>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| v.as_str().is_some_and(|v| labels.get(k).map(String::as_str) == Some(v)))
}

/// A pod as the endpoints controller sees it.
#[derive(Debug, Clone)]
pub struct EndpointPod<'a> {
    pub plan: &'a PodPlan,
    pub ip: Ipv4Addr,
    /// Readiness (`trellis-lab ready`).
    pub ready: bool,
    /// Inside its grace period after `delete pod/NAME`.
    pub terminating: bool,
}

impl EndpointPod<'_> {
    /// EndpointSlice conditions as the Kubernetes controller sets them: a terminating pod is not ready but
    /// still serving while its readiness holds.
    pub fn conditions(&self) -> Value {
        json!({"ready": self.ready && !self.terminating, "serving": self.ready, "terminating": self.terminating})
    }
}

/// A `kind: Pod` manifest the lab creates at runtime: where it runs and what its server listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
}

/// Reads `spec.nodeName`, `metadata.labels` and `spec.containers[].ports[]` (`containerPort`, `name`); a pod
/// without ports gets the lab's default port. Ports listed for TCP and UDP are one port (the server answers both).
pub fn parse_pod(obj: &Value) -> Result<NewPod> {
    let (kind, ns, name) = object_key(obj)?;
    let bad = |reason: String| LabError::Manifest { file: format!("Pod {name}"), reason };
    if kind != "Pod" {
        return Err(bad(format!("kind {kind} is not Pod")));
    }
    crate::topology::validate_dns_label("pod name", &name).map_err(|e| bad(e.to_string()))?;
    let node = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("spec.nodeName is required: the lab does not schedule".into()))?
        .to_string();
    let labels: BTreeMap<String, String> = match obj.pointer("/metadata/labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(l) => serde_json::from_value(l.clone()).map_err(|e| bad(format!("metadata.labels: {e}")))?,
    };
    let mut ports: Vec<PortSpec> = Vec::new();
    let containers = obj.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
    for c in &containers {
        for p in c.get("ports").and_then(Value::as_array).cloned().unwrap_or_default() {
            let n = p
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("containerPort of {p} is not a port")))?;
            let pname = p.get("name").and_then(Value::as_str).map(str::to_string);
            if let Some(pn) = &pname {
                crate::topology::validate_dns_label("port name", pn).map_err(|e| bad(e.to_string()))?;
            }
            match ports.iter_mut().find(|q| q.port() == n) {
                Some(q) if q.name().is_none() && pname.is_some() => *q = PortSpec::Named { port: n, name: pname },
                Some(q) if pname.is_some() && q.name() != pname.as_deref() => {
                    return Err(bad(format!("port {n} has two names")))
                }
                Some(_) => {}
                None => ports.push(match pname {
                    Some(pn) => PortSpec::Named { port: n, name: Some(pn) },
                    None => PortSpec::Number(n),
                }),
            }
        }
    }
    if ports.is_empty() {
        ports.push(PortSpec::Number(crate::topology::DEFAULT_POD_PORT));
    }
    Ok(NewPod { namespace: ns.unwrap_or_else(|| "default".into()), name, node, labels, ports })
}

/// A Service port's `targetPort` as one pod resolves it: a number, or the number of the pod's port of that name.
pub fn resolve_target_port(service_port: &Value, pod: &PodPlan) -> Option<u16> {
    let port = service_port.get("port").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok());
    match service_port.get("targetPort") {
        None | Some(Value::Null) => port,
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Some(Value::String(s)) => match s.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => pod.ports.iter().find(|p| p.name() == Some(s.as_str())).map(|p| p.port()),
        },
        Some(_) => None,
    }
}

/// The endpoints controller for one Service with a selector: every pod of the Service's namespace whose labels
/// match, with its conditions (ready, serving, terminating) and `nodeName`. Not-ready pods stay in the slice, so
/// a Service with `publishNotReadyAddresses` is the proxy's to decide. A named `targetPort` is resolved per pod
/// (`containers[].ports[].name`): pods that resolve the ports alike share a slice, as with the Kubernetes
/// controller, and a pod without the name is no endpoint of that port. The first slice is `<service>-lab`, the
/// others `<service>-lab-2`, ... None for a Service without a selector.
pub fn endpoint_slices(service: &Value, pods: &[EndpointPod<'_>]) -> Option<Vec<Value>> {
    let (_, ns, name) = object_key(service).ok()?;
    let ns = ns?;
    let selector = service.pointer("/spec/selector")?.as_object()?;
    if selector.is_empty() {
        return None;
    }
    let svc_ports: Vec<&Value> =
        service.pointer("/spec/ports").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    let members = pods.iter().filter(|p| p.plan.namespace == ns && labels_match(selector, &p.plan.labels));
    // Group members by how they resolve the ports: (service port index, number) for each port they resolve.
    let mut groups: BTreeMap<Vec<(usize, u16)>, Vec<&EndpointPod>> = BTreeMap::new();
    for m in members {
        let key: Vec<(usize, u16)> = svc_ports
            .iter()
            .enumerate()
            .filter_map(|(i, sp)| resolve_target_port(sp, m.plan).map(|n| (i, n)))
            .collect();
        if key.is_empty() && !svc_ports.is_empty() {
            continue;
        }
        groups.entry(key).or_default().push(m);
    }
    let port_json = |i: usize, number: u16| {
        let sp = svc_ports[i];
        let protocol = sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        let pname = sp.get("name").and_then(Value::as_str).unwrap_or("");
        json!({"name": pname, "port": number, "protocol": protocol})
    };
    let slice = |suffix: String, ports: Vec<Value>, endpoints: Vec<Value>| {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-lab{suffix}"),
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "trellis-lab"}
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports
        })
    };
    if groups.is_empty() {
        // No endpoint: one empty slice, its ports as far as they resolve without a pod.
        let ports = svc_ports
            .iter()
            .enumerate()
            .map(|(i, sp)| {
                let n = sp.get("targetPort").and_then(|t| t.as_u64().or_else(|| t.as_str()?.parse().ok()));
                let n = n.or_else(|| sp.get("port").and_then(Value::as_u64)).unwrap_or(0);
                port_json(i, u16::try_from(n).unwrap_or(0))
            })
            .collect();
        return Some(vec![slice(String::new(), ports, Vec::new())]);
    }
    let out = groups
        .into_iter()
        .enumerate()
        .map(|(g, (key, members))| {
            let ports = key.iter().map(|&(i, n)| port_json(i, n)).collect();
            let endpoints = members
                .iter()
                .map(|m| {
                    json!({
                        "addresses": [m.ip.to_string()],
                        "conditions": m.conditions(),
                        "nodeName": m.plan.node,
                        "targetRef": {"kind": "Pod", "name": m.plan.name, "namespace": m.plan.namespace}
                    })
                })
                .collect();
            slice(if g == 0 { String::new() } else { format!("-{}", g + 1) }, ports, endpoints)
        })
        .collect();
    Some(out)
}

/// Picks the lowest free address of the service CIDR (skipping network and .1, like the apiserver's first IP
/// reserved for `kubernetes`).
pub fn allocate_cluster_ip(service_cidr: Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    service_cidr.hosts().skip(1).find(|ip| !taken.contains(ip))
}

/// Atomic file store for manifests.
pub struct ManifestStore {
    dirs: LabDirs,
}

impl ManifestStore {
    pub fn new(dirs: LabDirs) -> ManifestStore {
        ManifestStore { dirs }
    }

    pub fn write(&self, obj: &Value) -> Result<String> {
        let (kind, ns, name) = object_key(obj)?;
        let file = manifest_file_name(&kind, ns.as_deref(), &name);
        let text =
            serde_yaml::to_string(obj).map_err(|e| LabError::Manifest { file: file.clone(), reason: e.to_string() })?;
        let staging = self.dirs.staging();
        crate::state::ensure_dir(&staging)?;
        let tmp = staging.join(&file);
        let dst = self.dirs.manifests().join(&file);
        std::fs::write(&tmp, text).map_err(|e| LabError::io("writing manifest", &tmp, e))?;
        // rename() so the agents never read a half-written file.
        std::fs::rename(&tmp, &dst).map_err(|e| LabError::io("writing manifest", &dst, e))?;
        Ok(file)
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        let p = self.dirs.manifests().join(file);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LabError::io("removing manifest", p, e)),
        }
    }

    /// Every object in the manifests dir, with its file name.
    pub fn read_all(&self) -> Result<Vec<(String, Value)>> {
        let dir = self.dirs.manifests();
        let rd = std::fs::read_dir(&dir).map_err(|e| LabError::io("reading manifests", &dir, e))?;
        let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if !(name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")) {
                continue;
            }
            let text = std::fs::read_to_string(&f).map_err(|e| LabError::io("reading manifest", &f, e))?;
            for o in parse_documents(&text, &name)? {
                out.push((name.clone(), o));
            }
        }
        Ok(out)
    }
}

pub fn read_file(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::io("reading", path, e))?;
    parse_documents(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::topology::Topology;

    #[test]
    fn node_object_carries_cidr_and_internal_ip() {
        let p = plan(&Topology::default_topology(), None).unwrap();
        let n = node_object(&p.nodes[1]);
        assert_eq!(n["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(n["status"]["addresses"][0]["type"], "InternalIP");
        assert_eq!(n["status"]["addresses"][0]["address"], "172.30.0.3");
    }

    #[test]
    fn pod_object_has_ip_node_and_labels() {
        let p = plan(&Topology::default_topology(), None).unwrap();
        let o = pod_object(&p.pods[0], Some(Ipv4Addr::new(10, 244, 0, 5)), true);
        assert_eq!(o["status"]["conditions"][0]["status"], "True");
        let unready = pod_object(&p.pods[0], Some(Ipv4Addr::new(10, 244, 0, 5)), false);
        assert_eq!(unready["status"]["conditions"][0]["status"], "False");
        assert_eq!(o["status"]["podIP"], "10.244.0.5");
        assert_eq!(o["spec"]["nodeName"], "node1");
        assert_eq!(o["metadata"]["labels"]["app"], "web");
        assert_eq!(pod_object(&p.pods[0], None, true)["status"]["phase"], "Pending");
    }

    #[test]
    fn documents_and_keys() {
        let docs = parse_documents(
            "kind: Service\nmetadata: {name: web}\n---\n---\nkind: Namespace\nmetadata: {name: x}\n",
            "f",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(object_key(&docs[0]).unwrap(), ("Service".into(), Some("default".into()), "web".into()));
        assert_eq!(object_key(&docs[1]).unwrap(), ("Namespace".into(), None, "x".into()));
        assert!(parse_documents("kind: Service\n", "f").is_err());
        assert!(parse_documents("- 1\n", "f").is_err());
        assert!(parse_documents("kind: Service\nmetadata: {name: Bad_Name}\n", "f").is_err());
        assert!(parse_documents("kind: Service\nmetadata: {name: a, namespace: ../etc}\n", "f").is_err());
        assert!(parse_documents("kind: ../x\nmetadata: {name: a}\n", "f").is_err());
        assert!(parse_documents("kind: Service\nmetadata: {name: a.b-c}\n", "f").is_ok());
    }

    #[test]
    fn endpoint_slice_selects_and_resolves_named_ports() {
        let p = plan(&Topology::default_topology(), None).unwrap();
        let pods: Vec<EndpointPod> = p
            .pods
            .iter()
            .enumerate()
            .map(|(i, plan)| EndpointPod {
                plan,
                ip: Ipv4Addr::new(10, 244, 0, 10 + i as u8),
                ready: true,
                terminating: false,
            })
            .collect();
        let svc = parse_documents(
            "kind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: h, port: 80, targetPort: http}]\n",
            "f",
        )
        .unwrap()
        .remove(0);
        let s = endpoint_slices(&svc, &pods).unwrap().remove(0);
        let eps = s["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(s["ports"][0]["port"], 8080);
        assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        let names: Vec<&str> = eps.iter().map(|e| e["targetRef"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["web-1", "web-2"]);
        // Another namespace: nothing selected. No selector: no slice.
        let other = json!({"kind": "Service", "metadata": {"name": "web", "namespace": "x"}, "spec": {"selector": {"app": "web"}}});
        assert_eq!(endpoint_slices(&other, &pods).unwrap()[0]["endpoints"].as_array().unwrap().len(), 0);
        let none = json!({"kind": "Service", "metadata": {"name": "ext"}, "spec": {}});
        assert!(endpoint_slices(&none, &pods).is_none());
    }

    #[test]
    fn endpoint_conditions_follow_readiness_and_termination() {
        let p = plan(&Topology::default_topology(), None).unwrap();
        let web: Vec<&PodPlan> =
            p.pods.iter().filter(|x| x.labels.get("app").map(String::as_str) == Some("web")).collect();
        let ep =
            |ready, terminating| EndpointPod { plan: web[0], ip: Ipv4Addr::new(10, 244, 0, 2), ready, terminating };
        let c = |ready, terminating| ep(ready, terminating).conditions();
        assert_eq!(c(true, false), json!({"ready": true, "serving": true, "terminating": false}));
        assert_eq!(c(false, false), json!({"ready": false, "serving": false, "terminating": false}));
        assert_eq!(c(true, true), json!({"ready": false, "serving": true, "terminating": true}));
        // Not-ready and terminating pods stay in the slice with their conditions, and every endpoint has nodeName.
        let pods = [
            ep(false, false),
            EndpointPod { plan: web[1], ip: Ipv4Addr::new(10, 244, 1, 2), ready: true, terminating: true },
        ];
        let svc = json!({"kind": "Service", "metadata": {"name": "web"}, "spec": {
            "selector": {"app": "web"}, "publishNotReadyAddresses": true, "ports": [{"port": 80, "targetPort": 8080}]}});
        let s = endpoint_slices(&svc, &pods).unwrap().remove(0);
        let eps = s["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0]["conditions"]["ready"], false);
        assert_eq!(eps[0]["nodeName"], web[0].node);
        assert_eq!(eps[1]["conditions"]["terminating"], true);
        assert_eq!(eps[1]["nodeName"], web[1].node);
        assert_ne!(web[0].node, web[1].node);
    }

    #[test]
    fn pods_parse_from_manifests() {
        let docs = parse_documents(
            "kind: Pod\nmetadata: {name: web-3, labels: {app: web}}\nspec:\n  nodeName: node2\n  containers:\n  - name: c\n    ports:\n    - {containerPort: 8080, name: http, protocol: TCP}\n    - {containerPort: 8080, name: http, protocol: UDP}\n    - {containerPort: 9090}\n",
            "f",
        )
        .unwrap();
        let p = parse_pod(&docs[0]).unwrap();
        assert_eq!(p.node, "node2");
        assert_eq!(p.namespace, "default");
        assert_eq!(p.labels["app"], "web");
        assert_eq!(p.ports.len(), 2);
        assert_eq!(p.ports[0].name(), Some("http"));
        assert_eq!(p.ports[1].port(), 9090);
        let bare = parse_pod(&json!({"kind": "Pod", "metadata": {"name": "x"}, "spec": {"nodeName": "n"}})).unwrap();
        assert_eq!(bare.ports, vec![PortSpec::Number(crate::topology::DEFAULT_POD_PORT)]);
        let e = |v: Value| parse_pod(&v).unwrap_err().to_string();
        assert!(e(json!({"kind": "Pod", "metadata": {"name": "x"}, "spec": {}})).contains("nodeName"));
        assert!(e(json!({"kind": "Pod", "metadata": {"name": "x"}, "spec": {"nodeName": "n",
            "containers": [{"ports": [{"containerPort": 0}]}]}}))
        .contains("containerPort"));
        assert!(e(json!({"kind": "Pod", "metadata": {"name": "x"}, "spec": {"nodeName": "n",
            "containers": [{"ports": [{"containerPort": 80, "name": "a"}, {"containerPort": 80, "name": "b"}]}]}}))
        .contains("two names"));
    }

    #[test]
    fn named_target_ports_resolve_per_pod_into_one_slice_per_mapping() {
        let p = plan(&Topology::default_topology(), None).unwrap();
        let web = p.pods.iter().find(|x| x.name == "web-1").unwrap();
        assert_eq!(web.ports[0].name(), Some("http"));
        let mut other = web.clone();
        other.name = "web-9".into();
        other.ports = vec![PortSpec::Named { port: 9090, name: Some("http".into()) }];
        let mut plain = web.clone();
        plain.name = "plain".into();
        plain.ports = vec![PortSpec::Number(8080)];
        let ep = |plan, d| EndpointPod { plan, ip: Ipv4Addr::new(10, 244, 0, d), ready: true, terminating: false };
        let pods = [ep(web, 2), ep(&other, 3), ep(&plain, 4)];
        let svc = json!({"kind": "Service", "metadata": {"name": "web"}, "spec": {
            "selector": {"app": "web"}, "ports": [{"name": "h", "port": 80, "targetPort": "http"}]}});
        let slices = endpoint_slices(&svc, &pods).unwrap();
        assert_eq!(slices.len(), 2, "{slices:?}");
        let by_port = |port: u64| {
            let s = slices.iter().find(|s| s["ports"][0]["port"] == port).unwrap();
            assert_eq!(s["ports"][0]["name"], "h");
            s["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["targetRef"]["name"].as_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(by_port(8080), ["web-1"]);
        assert_eq!(by_port(9090), ["web-9"]);
        let names: BTreeSet<&str> = slices.iter().map(|s| s["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["web-lab", "web-lab-2"].into());
        assert_eq!(resolve_target_port(&json!({"port": 80}), &plain), Some(80));
        assert_eq!(resolve_target_port(&json!({"port": 80, "targetPort": "8081"}), &plain), Some(8081));
        assert_eq!(resolve_target_port(&json!({"port": 80, "targetPort": "http"}), &plain), None);
    }

    #[test]
    fn cluster_ip_allocation_skips_taken() {
        let cidr: Ipv4Net = "10.96.0.0/16".parse().unwrap();
        let mut taken = BTreeSet::new();
        let a = allocate_cluster_ip(cidr, &taken).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 96, 0, 2));
        taken.insert(a);
        assert_eq!(allocate_cluster_ip(cidr, &taken).unwrap(), Ipv4Addr::new(10, 96, 0, 3));
        let tiny: Ipv4Net = "10.96.0.0/30".parse().unwrap();
        taken.insert(Ipv4Addr::new(10, 96, 0, 2));
        assert!(allocate_cluster_ip(tiny, &taken).is_none());
    }
}
