//! The lab as control plane: `apply`, `delete`, and the endpoints controller.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::error::{LabError, Result};
use crate::manifests::{self, EndpointPod, ManifestStore};
use crate::names;
use crate::services;
use crate::state::LabState;

/// Rewrites the EndpointSlices of every Service with a selector; removes the lab's slices of Services gone.
pub fn run_endpoints_controller(st: &LabState) -> Result<Vec<String>> {
    let store = ManifestStore::new(st.dirs());
    let all = store.read_all()?;
    let pods: Vec<EndpointPod> = st
        .plan
        .pods
        .iter()
        .filter_map(|p| {
            st.pod_ip(p).map(|ip| EndpointPod {
                plan: p,
                ip,
                ready: st.pod_ready(p),
                terminating: st.pod_terminating(p),
            })
        })
        .collect();
    let mut written = BTreeSet::new();
    for (_, obj) in all.iter().filter(|(_, o)| o["kind"] == "Service") {
        for slice in manifests::endpoint_slices(obj, &pods).unwrap_or_default() {
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
    let mut node_ports: BTreeMap<String, BTreeSet<u16>> = existing
        .iter()
        .filter(|(_, o)| o["kind"] == "Service")
        .map(|(f, o)| (f.clone(), services::node_ports(o)))
        .collect();
    // Validate all before writing any.
    let mut new_pods = BTreeSet::new();
    for d in &docs {
        let (kind, ns, name) = manifests::object_key(d)?;
        if kind == "Pod" && st.pod(&format!("{}/{name}", ns.clone().unwrap_or_default())).is_none() {
            let new = manifests::parse_pod(d)?;
            super::pods::check_new_pod(st, &new)?;
            if !new_pods.insert(new.name.clone()) {
                return Err(LabError::Manifest { file: format!("Pod {name}"), reason: "given twice".into() });
            }
        }
        if kind == "Service" {
            services::validate_service(d, st.plan.service_cidr)?;
        }
    }
    for mut d in docs {
        let (kind, ns, name) = manifests::object_key(&d)?;
        if let Some(ns) = &ns {
            d["metadata"]["namespace"] = json!(ns);
        }
        match kind.as_str() {
            "Pod" if st.pod(&format!("{}/{name}", ns.clone().unwrap_or_default())).is_none() => {
                super::pods::create_pod(st, &manifests::parse_pod(&d)?, out)?;
                continue;
            }
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
                store.write(&manifests::pod_object(&pod, ip, st.pod_ready(&pod)))?;
                let _ = writeln!(out, "pod/{name} labels updated");
                continue;
            }
            "Service" => {
                let file = names::manifest_file_name(&kind, ns.as_deref(), &name);
                let previous = existing.iter().find(|(f, _)| *f == file).map(|(_, o)| o);
                let current =
                    previous.and_then(|o| o.pointer("/spec/clusterIP").and_then(Value::as_str)).map(str::to_string);
                let mut given = d.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
                let listed: Vec<Value> =
                    d.pointer("/spec/clusterIPs").and_then(Value::as_array).cloned().unwrap_or_default();
                if given.is_empty() {
                    if let Some(first) = listed.first().and_then(Value::as_str) {
                        given = first.to_string();
                        d["spec"]["clusterIP"] = json!(first);
                    }
                }
                if let Ok(ip) = given.parse::<Ipv4Addr>() {
                    taken.insert(ip);
                    if listed.is_empty() {
                        d["spec"]["clusterIPs"] = json!([given]);
                    }
                }
                let taken_ports: BTreeSet<u16> =
                    node_ports.iter().filter(|(f, _)| **f != file).flat_map(|(_, p)| p.iter().copied()).collect();
                let mine = services::allocate_node_ports(&mut d, previous, &taken_ports)?;
                node_ports.insert(file.clone(), mine);
                if given.is_empty() && services::service_type(&d) != "ExternalName" {
                    let ip = match current.and_then(|c| c.parse::<Ipv4Addr>().ok()) {
                        Some(ip) => ip,
                        None => manifests::allocate_cluster_ip(st.plan.service_cidr, &taken).ok_or_else(|| {
                            LabError::Manifest { file: format!("Service {name}"), reason: "serviceCIDR is full".into() }
                        })?,
                    };
                    taken.insert(ip);
                    d["spec"]["clusterIP"] = json!(ip.to_string());
                    // A second family's address given in clusterIPs stays behind the allocated one.
                    let mut ips = vec![json!(ip.to_string())];
                    ips.extend(listed.iter().skip(1).cloned());
                    d["spec"]["clusterIPs"] = json!(ips);
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
/// routes). `pod/NAME` deletes the pod itself after `grace` (see [`super::delete_pod`]).
pub fn delete(
    st: &LabState,
    what: &str,
    namespace: &str,
    grace: std::time::Duration,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let (kind, name) = what.split_once('/').ok_or_else(|| LabError::Manifest {
        file: what.into(),
        reason: "expected KIND/NAME, e.g. node/node2 or service/web".into(),
    })?;
    // Validate like apply does: these strings become a file name.
    let probe = json!({"kind": kind, "metadata": {"name": name, "namespace": namespace}});
    manifests::object_key(&probe)?;
    let kind = kind.to_ascii_lowercase();
    if kind == "pod" {
        return super::pods::delete_pod(&st.plan.name, namespace, name, grace, out);
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
