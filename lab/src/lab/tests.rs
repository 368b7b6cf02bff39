//! Unit tests of the lab verbs' pure parts.

use std::net::Ipv4Addr;

use serde_json::json;

use super::*;
use crate::plan;
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
    let x = endpoint(&st, "external").unwrap();
    assert_eq!(x.netns, "tl-default-ext");
    assert!(!x.is_node);
}

#[test]
fn targets_resolve_nodes_and_the_external_host() {
    let st = state();
    assert_eq!(resolve_target(&st, "node/node2", &[]).unwrap(), std::net::Ipv4Addr::new(172, 30, 0, 3));
    assert_eq!(resolve_target(&st, "external", &[]).unwrap(), std::net::Ipv4Addr::new(172, 30, 0, 254));
    assert!(resolve_target(&st, "node/node9", &[]).is_err());
    let svc = serde_json::json!({"kind": "Service", "metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.7"}});
    assert_eq!(resolve_target(&st, "svc/web", &[svc]).unwrap(), std::net::Ipv4Addr::new(10, 96, 0, 7));
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
    // Each node netns has its own loopback, so every agent serves metrics on the same address.
    assert_eq!(after("--metrics-addr"), "127.0.0.1:9962");
}

#[test]
fn status_shows_readiness_and_termination() {
    let mut st = state();
    st.pod_ips.insert("default/web-2".into(), Ipv4Addr::new(10, 244, 1, 2));
    st.not_ready.insert("default/web-1".into());
    st.terminating.insert("default/web-2".into());
    let mut out = Vec::new();
    print_status(&st, &mut out);
    let text = String::from_utf8(out).unwrap();
    let row = |pod: &str| text.lines().find(|l| l.starts_with(pod)).unwrap().split_whitespace().nth(4).unwrap();
    assert_eq!(row("default/web-1"), "false", "{text}");
    assert_eq!(row("default/web-2"), "terminating", "{text}");
    assert_eq!(row("default/client-1"), "true", "{text}");
}
