//! What the lab grows for Services, on a real lab (privileged): `probe -o json` and its flags, the `external`
//! host, pods applied and deleted at runtime with their endpoint conditions, readiness flips, nodePort
//! allocation, and agent restarts. Service load balancing itself is the agent's and is tested elsewhere.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{metric_value, serial, text, wait_until, Lab, LAB};
use serde_json::Value;
use trellis_lab::state::LabState;

/// Every JSON line of a probe's stdout.
fn json_lines(o: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{}", text(o))))
        .collect()
}

/// The keys of an object, for shape checks.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
    k.sort();
    k
}

fn yaml(path: &Path) -> Value {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&t).unwrap()
}

/// The endpoints of every EndpointSlice of Service `svc`, by pod name.
fn endpoints(lab: &Lab, svc: &str) -> Vec<(String, Value)> {
    let dir = lab.state_dir().join("manifests");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("endpointslice_default_{svc}-lab")) {
            continue;
        }
        let s = yaml(&e.path());
        for ep in s["endpoints"].as_array().cloned().unwrap_or_default() {
            let pod = ep["targetRef"]["name"].as_str().unwrap().to_string();
            out.push((pod, ep));
        }
    }
    out
}

fn conditions(lab: &Lab, svc: &str, pod: &str) -> Option<Value> {
    endpoints(lab, svc).into_iter().find(|(p, _)| p == pod).map(|(_, e)| e["conditions"].clone())
}

fn cond(ready: bool, serving: bool, terminating: bool) -> Value {
    serde_json::json!({"ready": ready, "serving": serving, "terminating": terminating})
}

fn probe_json(lab: &Lab, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let mut v = args.to_vec();
    v.extend_from_slice(&["-o", "json"]);
    let o = lab.run("probe", &v);
    (o.status.code(), json_lines(&o), text(&o))
}

fn agent_pid(lab: &Lab, node: &str) -> i32 {
    LabState::load(&lab.name).unwrap().agents[node]
}

fn alive(pid: i32) -> bool {
    trellis_lab::nsexec::alive(pid)
}

#[test]
fn probe_json_the_external_host_and_agent_restarts() {
    trellis_test_support::require_root!();
    let _s = serial();
    let lab = Lab::up("svcprobe", &["--mode", "host-gw"]);
    let st = LabState::load(&lab.name).unwrap();
    let client1 = st.pod_ips["default/client-1"].to_string();

    // Three fresh connections to a pod: one object per attempt, the pod's name and the client it saw.
    let (code, lines, out) = probe_json(&lab, &["client-1", "web-2", "8080", "--count", "3"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines {
        assert_eq!(keys(l), ["client", "ms", "ok", "pod"], "{out}");
        assert_eq!(l["ok"], true);
        assert_eq!(l["pod"], "web-2");
        assert_eq!(l["client"], client1.as_str(), "{out}");
        assert!(l["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{out}");
    }
    // The documented key order: ok first.
    assert!(out.contains("{\"ok\": true, \"pod\": \"web-2\""), "{out}");
    // UDP, one long-lived flow from a fixed source port.
    let (code, lines, out) =
        probe_json(&lab, &["client-1", "web-1", "8080", "--proto", "udp", "--sport", "40123", "--count", "2"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(lines.iter().all(|l| l["pod"] == "web-1" && l["client"] == client1.as_str()), "{out}");
    // Text output stays the pod's name alone.
    let o = lab.run("probe", &["client-1", "web-2", "8080"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "web-2", "{}", text(&o));

    // node/NAME is the node's InternalIP: nothing listens on port 9 there, so the node answers with a reset.
    let (code, lines, out) = probe_json(&lab, &["web-1", "node/node2", "9", "--timeout-ms", "1000"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(keys(&lines[0]), ["error", "ms", "ok"], "{out}");
    assert_eq!(lines[0]["ok"], false);
    assert_eq!(lines[0]["error"], "refused", "{out}");

    // The external host: on the underlay (its reset comes back from the node), no route into the pod network.
    let (code, lines, out) = probe_json(&lab, &["external", "node/node1", "9", "--timeout-ms", "1000"]);
    assert_eq!((code, lines[0]["error"].as_str()), (Some(1), Some("refused")), "{out}");
    let (code, lines, out) = probe_json(&lab, &["external", "web-1", "8080", "--timeout-ms", "500"]);
    assert_eq!((code, lines[0]["error"].as_str()), (Some(1), Some("unreachable")), "{out}");
    let o = lab.run("exec", &["external", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    let addr = String::from_utf8_lossy(&o.stdout).to_string();
    let ext_ip = st.plan.external_ip;
    assert!(addr.contains(&format!("{ext_ip}/24")), "{}", text(&o));
    assert!(st.plan.underlay_cidr.contains(&ext_ip));
    assert!(st.plan.nodes.iter().all(|n| n.internal_ip != ext_ip));
    let o = lab.run("exec", &["external", "--", "ip", "-4", "route", "show"]);
    let routes = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success() && !routes.contains("10.244.") && !routes.contains("default"), "{routes}");

    // restart-agent --kill: a new agent process, serving metrics inside the node again; the old one is gone.
    let old = agent_pid(&lab, "node1");
    assert!(wait_until(Duration::from_secs(10), || lab.metrics("node1").is_ok_and(|m| m.contains("200"))));
    let o = lab.run("restart-agent", &["node1", "--kill"]);
    assert!(o.status.success(), "{}", text(&o));
    let new = agent_pid(&lab, "node1");
    assert_ne!(old, new);
    assert!(!alive(old), "old agent {old} still alive");
    assert!(alive(new), "{}", lab.logs());
    let got = wait_until(Duration::from_secs(10), || lab.metrics("node1").is_ok_and(|m| m.contains("200 OK")));
    assert!(got, "no metrics from the restarted agent: {:?}\n{}", lab.metrics("node1"), lab.logs());
    // SIGTERM restart of the other node; its log keeps the first agent's lines.
    let old2 = agent_pid(&lab, "node2");
    let o = lab.run("restart-agent", &["node2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(agent_pid(&lab, "node2"), old2);
    assert!(!alive(old2));
    let log = || std::fs::read_to_string(lab.state_dir().join("logs/agent-node2.log")).unwrap_or_default();
    let both = wait_until(Duration::from_secs(10), || log().matches("trellis-agent starting").count() >= 2);
    assert!(both && log().contains("terminated"), "{}", log());
    // Pods still reach each other across nodes after both restarts.
    let (code, _, out) = probe_json(&lab, &["client-1", "web-2", "8080"]);
    assert_eq!(code, Some(0), "{out}");
}

const POD_AND_SERVICE: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web-3, labels: {app: web}}
spec:
  nodeName: node2
  containers:
  - name: echo
    ports: [{containerPort: 9090, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: 8080, nodePort: 31053}
";

const LONER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: loner, namespace: default, labels: {app: nothing-selects-me}}
spec:
  nodeName: node1
  containers: [{name: c, ports: [{containerPort: 7070}]}]
"#;

#[test]
fn pods_come_and_go_at_runtime_with_their_endpoint_conditions() {
    trellis_test_support::require_root!();
    let _s = serial();
    let lab = Lab::up("svcpods", &[]);
    let dir = tempfile::tempdir().unwrap();

    // A pod no Service selects changes no Service, yet its host veth gets the pod programs at once (the agent
    // watches links), not at the next repair round (10 s here).
    let attached = |node: &str| -> Option<u64> {
        metric_value(&lab.metrics(node).ok()?, "trellis_datapath_attached{kind=\"pod\"}").map(|v| v as u64)
    };
    assert!(wait_until(Duration::from_secs(15), || attached("node1").is_some()), "{}", lab.logs());
    let before = attached("node1").unwrap();
    let loner = dir.path().join("loner.yaml");
    std::fs::write(&loner, LONER).unwrap();
    let o = lab.run("apply", &[loner.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", text(&o), lab.logs());
    let t0 = Instant::now();
    let ok = wait_until(Duration::from_secs(3), || attached("node1") == Some(before + 1));
    assert!(
        ok,
        "the new pod's veth was not attached within 3 s: {:?} (was {before})\n{}",
        attached("node1"),
        lab.logs()
    );
    eprintln!("new pod's veth attached {:?} after apply returned", t0.elapsed());

    let file = dir.path().join("web3.yaml");
    std::fs::write(&file, POD_AND_SERVICE).unwrap();
    let o = lab.run("apply", &[file.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", text(&o), lab.logs());

    // The pod exists: netns, an IP from node2's podCIDR through the plugin, its server on its own port.
    let st = LabState::load(&lab.name).unwrap();
    let ip = st.pod_ips["default/web-3"];
    assert!(st.plan.node("node2").unwrap().pod_cidr.contains(&ip));
    assert!(Path::new("/run/netns").join(format!("tl-{}-pod-default_web-3", lab.name)).exists());
    let (code, lines, out) = probe_json(&lab, &["client-1", "web-3", "9090"]);
    assert_eq!((code, lines[0]["pod"].as_str()), (Some(0), Some("web-3")), "{out}");
    let (code, _, out) = probe_json(&lab, &["client-1", &ip.to_string(), "9090", "--proto", "udp"]);
    assert_eq!(code, Some(0), "{out}");

    // The Service: a nodePort allocated where missing, the given one kept.
    let svc = yaml(&lab.state_dir().join("manifests/service_default_web.yaml"));
    let http = svc["spec"]["ports"][0]["nodePort"].as_u64().expect("allocated nodePort");
    assert!((30000..=32767).contains(&http), "{svc}");
    assert_eq!(svc["spec"]["ports"][1]["nodePort"], 31053);
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    // The named targetPort resolves per pod: web-3's "http" is 9090, the topology's web pods' is 8080.
    let eps = endpoints(&lab, "web");
    let names: Vec<&str> = eps.iter().map(|(p, _)| p.as_str()).collect();
    assert!(names.contains(&"web-1") && names.contains(&"web-2") && names.contains(&"web-3"), "{names:?}");
    let (_, web3) = eps.iter().find(|(p, _)| p == "web-3").unwrap();
    assert_eq!(web3["nodeName"], "node2");
    let slices: Vec<Value> = std::fs::read_dir(lab.state_dir().join("manifests"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("endpointslice_default_web-lab"))
        .map(|e| yaml(&e.path()))
        .collect();
    let web3_slice = slices
        .iter()
        .find(|s| s["endpoints"].as_array().unwrap().iter().any(|e| e["targetRef"]["name"] == "web-3"))
        .unwrap();
    let http_port = web3_slice["ports"].as_array().unwrap().iter().find(|p| p["name"] == "http").unwrap();
    assert_eq!(http_port["port"], 9090, "{web3_slice}");
    assert_eq!(conditions(&lab, "web", "web-3"), Some(cond(true, true, false)));

    // Readiness: ready and serving follow, the pod stays in the slice.
    let o = lab.run("ready", &["web-3", "false"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(conditions(&lab, "web", "web-3"), Some(cond(false, false, false)));
    let o = lab.run("ready", &["web-3", "true"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(conditions(&lab, "web", "web-3"), Some(cond(true, true, false)));

    // Delete with a grace period: terminating (not ready, serving) and still answering, then gone.
    let started = Instant::now();
    let mut child = Command::new(LAB)
        .args(["delete", "--name", &lab.name, "pod/web-3", "--grace-secs", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let terminating =
        wait_until(Duration::from_secs(3), || conditions(&lab, "web", "web-3") == Some(cond(false, true, true)));
    assert!(terminating, "{:?}", conditions(&lab, "web", "web-3"));
    let (code, lines, out) = probe_json(&lab, &["client-2", "web-3", "9090"]);
    assert_eq!((code, lines[0]["pod"].as_str()), (Some(0), Some("web-3")), "still answering while terminating: {out}");
    let st = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(st.success(), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(4), "returned before the grace period ended");
    assert_eq!(conditions(&lab, "web", "web-3"), None, "web-3 still in the slice");
    let st = LabState::load(&lab.name).unwrap();
    assert!(st.pod("web-3").is_none() && !st.pod_ips.contains_key("default/web-3"));
    assert!(!Path::new("/run/netns").join(format!("tl-{}-pod-default_web-3", lab.name)).exists());
    assert!(!lab.state_dir().join("manifests/pod_default_web-3.yaml").exists());
    let (code, lines, out) = probe_json(&lab, &["client-1", &ip.to_string(), "9090", "--timeout-ms", "500"]);
    assert_eq!((code, lines[0]["ok"].as_bool()), (Some(1), Some(false)), "{out}");
    // The IP went back to node2's IPAM: the next pod there may get it again, and `down` releases the rest.
    let r = trellis_lab::lab::down(&lab.name).unwrap();
    assert_eq!(r.cni_deleted.len(), 5, "the topology's four pods and loner: {r:?}");
}
