//! `deploy/` is what users apply to a cluster: its manifests must be valid Kubernetes objects, the DaemonSet
//! must run the agent with flags it has, read its settings from keys the ConfigMap defines, and the RBAC must
//! grant exactly the watches the kube source makes.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

fn deploy(file: &str) -> Vec<serde_yaml::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect()
}

fn typed<T: serde::de::DeserializeOwned>(v: &serde_yaml::Value) -> T {
    serde_yaml::from_value(v.clone()).unwrap_or_else(|e| panic!("not a valid object: {e}\n{v:?}"))
}

#[test]
fn daemonset_runs_the_agent_with_flags_it_has_and_config_it_gets() {
    let docs = deploy("daemonset.yaml");
    let ds: DaemonSet = typed(&docs[0]);
    let spec = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.host_network, Some(true), "the agent programs the node's own netns");
    let agent = spec.containers.iter().find(|c| c.name == "agent").expect("agent container");

    let (_, help) = {
        let out = Command::new(env!("CARGO_BIN_EXE_trellis-agent")).arg("--help").output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    for arg in agent.args.as_ref().unwrap() {
        let flag = arg.split('=').next().unwrap();
        assert!(help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")), "{flag} unknown");
    }

    let cm: ConfigMap = typed(&deploy("configmap.yaml")[0]);
    let keys: BTreeSet<String> = cm.data.unwrap().into_keys().collect();
    let env = agent.env.as_ref().unwrap();
    for e in env {
        if let Some(r) = e.value_from.as_ref().and_then(|v| v.config_map_key_ref.as_ref()) {
            assert_eq!(r.name, "trellis-config");
            assert!(keys.contains(&r.key), "ConfigMap has no key {}", r.key);
        }
    }
    // Every $(VAR) in the args is defined in env.
    let defined: BTreeSet<&str> = env.iter().map(|e| e.name.as_str()).collect();
    for arg in agent.args.as_ref().unwrap() {
        if let Some(var) = arg.split("$(").nth(1).and_then(|r| r.split(')').next()) {
            assert!(defined.contains(var), "{arg} uses undefined $({var})");
        }
    }
    assert!(env.iter().any(|e| e.name == "NODE_NAME"), "the agent needs NODE_NAME");
}

#[test]
fn rbac_grants_read_only_watches() {
    let docs = deploy("rbac.yaml");
    let _: ServiceAccount = typed(&docs[0]);
    let role: ClusterRole = typed(&docs[1]);
    let _: ClusterRoleBinding = typed(&docs[2]);
    let rules = role.rules.unwrap();
    let nodes = rules.iter().find(|r| r.resources.as_ref().is_some_and(|x| x.contains(&"nodes".to_string())));
    let verbs: BTreeSet<&str> = nodes.expect("nodes rule").verbs.iter().map(String::as_str).collect();
    assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]));
    for r in &rules {
        for v in &r.verbs {
            assert!(["get", "list", "watch"].contains(&v.as_str()), "the agent writes nothing, yet RBAC grants {v}");
        }
    }
}
