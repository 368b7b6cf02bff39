//! The lab as control plane: `apply`, `delete`, and the endpoints controller.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::error::{LabError, Result};
use crate::manifests::{self, EndpointPod, ManifestStore};
use crate::names;
use crate::state::LabState;

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
    // Validate like apply does: these strings become a file name.
    let probe = json!({"kind": kind, "metadata": {"name": name, "namespace": namespace}});
    manifests::object_key(&probe)?;
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
