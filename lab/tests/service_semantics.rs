//! Service semantics end to end (privileged), beyond what `service_lb.rs` covers: real labs, the real agents
//! programming the eBPF datapath, the lab's probe as the client, from pods on both nodes, from the nodes
//! themselves (socket LB in the node's cgroup) and from the `external` host.
//!
//! - `internalTrafficPolicy: Local`, `publishNotReadyAddresses`, the serving+terminating fallback, and node
//!   processes reaching ClusterIPs;
//! - several ports with named `targetPort`s, `externalIPs` and load-balancer IPs from outside, NodePorts on both
//!   nodes, the Services the proxy must leave alone, and a Service whose port changes.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{apply, metric_value, probe, spread, text, wait_until, Lab, LAB};
use trellis_lab::state::LabState;

/// The pods that answered, as a set.
fn pods(by: &BTreeMap<String, usize>) -> BTreeSet<&str> {
    by.keys().map(String::as_str).collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// Asserts every one of `count` attempts from `from` fails with one of `errors`.
fn fails(lab: &Lab, from: &str, target: &str, port: &str, count: &str, errors: &[&str]) {
    let (code, attempts) = probe(lab, &[from, target, port, "--count", count]);
    assert_eq!(code, Some(1), "{from} -> {target}:{port} must fail: {attempts:?}");
    for a in &attempts {
        let e = a["error"].as_str().unwrap_or("answered");
        assert!(errors.contains(&e), "{from} -> {target}:{port}: want {errors:?}, got {a}\n{}", lab.logs());
    }
}

/// Runs `trellis-lab delete pod/NAME --grace-secs N` in the background (it blocks for the grace period).
fn delete_later(lab: &Lab, pod: &str, grace: u32) -> Child {
    Command::new(LAB)
        .args(["delete", "--name", &lab.name, &format!("pod/{pod}"), "--grace-secs", &grace.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn delete")
}

fn finish(child: Child) {
    let o = child.wait_with_output().expect("wait delete");
    assert!(o.status.success(), "delete: {}", text(&o));
}

fn terminating(lab: &Lab, pod: &str) -> bool {
    LabState::load(&lab.name).is_ok_and(|s| s.terminating.contains(&format!("default/{pod}")))
}

/// The agent's `trellis_services` gauge.
fn services_gauge(lab: &Lab, node: &str) -> Option<f64> {
    metric_value(&lab.metrics(node).ok()?, "trellis_services")
}

const POLICIES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: lone, namespace: default, labels: {app: lone}}
spec:
  nodeName: node1
  containers: [{name: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: term-1, namespace: default, labels: {app: term}}
spec:
  nodeName: node1
  containers: [{name: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: term-2, namespace: default, labels: {app: term}}
spec:
  nodeName: node2
  containers: [{name: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: tcp, port: 80, targetPort: 8080, protocol: TCP}, {name: udp, port: 80, targetPort: 8080, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: itp, namespace: default}
spec:
  selector: {app: web}
  internalTrafficPolicy: Local
  ports: [{port: 90, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: itp-lone, namespace: default}
spec:
  selector: {app: lone}
  internalTrafficPolicy: Local
  ports: [{port: 91, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: pna, namespace: default}
spec:
  selector: {app: web}
  publishNotReadyAddresses: true
  ports: [{port: 92, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: term, namespace: default}
spec:
  selector: {app: term}
  ports: [{port: 93, targetPort: 8080}]
"#;

#[test]
fn traffic_policy_not_ready_terminating_and_node_clients() {
    trellis_test_support::require_root!();
    let _s = common::serial();
    let lab = Lab::up("svcsem", &[]);
    apply(&lab, POLICIES);
    for (from, svc, port) in [("client-1", "svc/web", "80"), ("client-2", "svc/term", "93"), ("node1", "svc/pna", "92")]
    {
        let ok = wait_until(Duration::from_secs(30), || probe(&lab, &[from, svc, port]).0 == Some(0));
        assert!(ok, "{svc} never answered {from}\n{}", lab.logs());
    }

    // 4. Node processes reach a ClusterIP through their node's socket LB, TCP and UDP, spread over both backends.
    for from in ["node1", "node2"] {
        for proto in ["tcp", "udp"] {
            let by = spread(&lab, &[from, "svc/web", "80", "--proto", proto, "--count", "30"]);
            assert_eq!(pods(&by), set(&["web-1", "web-2"]), "{from} {proto}: {by:?}");
            assert!(by.values().all(|n| *n >= 5), "{from} {proto}: uneven {by:?}");
        }
    }

    // 1. internalTrafficPolicy: Local. With a backend on each node, every client (pod or node) reaches only its
    //    own node's...
    for (from, local) in [("client-1", "web-1"), ("node1", "web-1"), ("client-2", "web-2"), ("node2", "web-2")] {
        let by = spread(&lab, &[from, "svc/itp", "90", "--count", "20"]);
        assert_eq!(pods(&by), set(&[local]), "iTP Local from {from}: {by:?}");
    }
    //    ...and with the only backend on node1, node2's clients are refused at once while node1's are served.
    for from in ["client-1", "node1"] {
        assert_eq!(pods(&spread(&lab, &[from, "svc/itp-lone", "91", "--count", "5"])), set(&["lone"]), "{from}");
    }
    for from in ["client-2", "node2"] {
        fails(&lab, from, "svc/itp-lone", "91", "3", &["refused"]);
    }
    //    (the pod itself is reachable from node2: the refusal is the policy's, not the network's)
    assert_eq!(probe(&lab, &["client-2", "lone", "8080"]).0, Some(0));

    // 2. publishNotReadyAddresses: web-1 unready leaves the plain Service (proving the agent saw it) but still
    //    receives through `pna`.
    let o = lab.run("ready", &["web-1", "false"]);
    assert!(o.status.success(), "{}", text(&o));
    let left = wait_until(Duration::from_secs(10), || {
        !spread(&lab, &["client-1", "svc/web", "80", "--count", "10"]).contains_key("web-1")
    });
    assert!(left, "unready web-1 still answers svc/web\n{}", lab.logs());
    for from in ["client-1", "client-2", "node1", "node2"] {
        let by = spread(&lab, &[from, "svc/pna", "92", "--count", "20"]);
        assert_eq!(pods(&by), set(&["web-1", "web-2"]), "publishNotReadyAddresses from {from}: {by:?}");
    }
    let o = lab.run("ready", &["web-1", "true"]);
    assert!(o.status.success(), "{}", text(&o));

    // 3. Terminating endpoints. While a ready one exists, a terminating one (still answering) receives nothing.
    let del1 = delete_later(&lab, "term-1", 16);
    assert!(wait_until(Duration::from_secs(5), || terminating(&lab, "term-1")), "term-1 never terminating");
    let moved = wait_until(Duration::from_secs(5), || {
        !spread(&lab, &["client-1", "svc/term", "93", "--count", "10"]).contains_key("term-1")
    });
    assert!(moved, "terminating term-1 keeps receiving while term-2 is ready\n{}", lab.logs());
    for from in ["client-1", "client-2", "node1", "node2"] {
        let by = spread(&lab, &[from, "svc/term", "93", "--count", "20"]);
        assert_eq!(pods(&by), set(&["term-2"]), "from {from} while term-2 is ready: {by:?}");
    }
    assert_eq!(probe(&lab, &["client-2", "term-1", "8080"]).0, Some(0), "terminating term-1 stopped answering");
    //    With no ready endpoint left, the serving+terminating ones are used, from both nodes...
    let del2 = delete_later(&lab, "term-2", 8);
    assert!(wait_until(Duration::from_secs(5), || terminating(&lab, "term-2")), "term-2 never terminating");
    let back = wait_until(Duration::from_secs(3), || {
        spread(&lab, &["client-2", "svc/term", "93", "--count", "10"]).contains_key("term-1")
    });
    assert!(back, "no fallback to the terminating term-1\n{}", lab.logs());
    for from in ["client-1", "client-2", "node1", "node2"] {
        let by = spread(&lab, &[from, "svc/term", "93", "--count", "16"]);
        assert_eq!(pods(&by), set(&["term-1", "term-2"]), "fallback from {from}: {by:?}");
    }
    //    ...and once both grace periods are over, the Service refuses.
    finish(del2);
    finish(del1);
    let refused = wait_until(Duration::from_secs(5), || {
        probe(&lab, &["client-1", "svc/term", "93"]).1.first().is_some_and(|a| a["error"] == "refused")
    });
    assert!(refused, "svc/term after its endpoints went: {:?}", probe(&lab, &["client-1", "svc/term", "93"]));
    for from in ["client-2", "node1", "node2"] {
        fails(&lab, from, "svc/term", "93", "2", &["refused"]);
    }
}

const FRONTENDS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: multi-1, namespace: default, labels: {app: multi}}
spec:
  nodeName: node1
  containers: [{name: echo, ports: [{containerPort: 9090, name: http}, {containerPort: 9091, name: admin}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: multi-2, namespace: default, labels: {app: multi}}
spec:
  nodeName: node2
  containers: [{name: echo, ports: [{containerPort: 9190, name: admin}, {containerPort: 9191, name: http}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: multi-3, namespace: default, labels: {app: multi}}
spec:
  nodeName: node2
  containers: [{name: echo, ports: [{containerPort: 9290, name: http}]}]
---
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: default}
spec:
  selector: {app: multi}
  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: admin}]
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 82, targetPort: 8080, nodePort: 30082}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  selector: {app: web}
  externalIPs: [192.0.2.10, 192.0.2.11]
  ports: [{port: 83, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 84, targetPort: 8080}]
status:
  loadBalancer: {ingress: [{ip: 192.0.2.20}, {ip: 192.0.2.21}]}
---
apiVersion: v1
kind: Service
metadata: {name: chg, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 88, targetPort: 8080}]
"#;

const LEFT_ALONE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 85, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: extname, namespace: default}
spec:
  type: ExternalName
  externalName: web.example.com
  ports: [{port: 85}]
---
apiVersion: v1
kind: Service
metadata:
  name: other
  namespace: default
  labels: {service.kubernetes.io/service-proxy-name: other}
spec:
  selector: {app: web}
  ports: [{port: 86, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 87, targetPort: 8080}]
"#;

const CHANGED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: chg, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 89, targetPort: 8080}]
"#;

#[test]
fn named_ports_external_addresses_left_alone_and_port_changes() {
    trellis_test_support::require_root!();
    let _s = common::serial();
    let lab = Lab::up("svcfe", &[]);
    apply(&lab, FRONTENDS);
    let ok = wait_until(Duration::from_secs(30), || {
        probe(&lab, &["client-1", "svc/chg", "88"]).0 == Some(0)
            && probe(&lab, &["client-2", "svc/multi", "81"]).0 == Some(0)
    });
    assert!(ok, "services never answered\n{}", lab.logs());

    // 5. Two ports, each a named targetPort resolved per pod through its slice: multi-2 lists the names in the
    //    other order on other numbers; multi-3 has only `http`, so it is an endpoint of port 80 alone.
    for from in ["client-1", "client-2", "node1", "node2"] {
        let by = spread(&lab, &[from, "svc/multi", "80", "--count", "30"]);
        assert_eq!(pods(&by), set(&["multi-1", "multi-2", "multi-3"]), "port 80 (http) from {from}: {by:?}");
        let by = spread(&lab, &[from, "svc/multi", "81", "--count", "20"]);
        assert_eq!(pods(&by), set(&["multi-1", "multi-2"]), "port 81 (admin) from {from}: {by:?}");
    }

    // 6. From outside: the NodePort on both nodes' addresses, spread over both backends.
    for node in ["node/node1", "node/node2"] {
        let by = spread(&lab, &["external", node, "30082", "--count", "20"]);
        assert_eq!(pods(&by), set(&["web-1", "web-2"]), "NodePort on {node}: {by:?}");
    }
    //    externalIPs and load-balancer IPs, which the external host routes to a node (as the router or the load
    //    balancer in front of a cluster would): one of each through node1, one through node2.
    let st = LabState::load(&lab.name).unwrap();
    let node_ip = |n: &str| st.plan.node(n).unwrap().internal_ip.to_string();
    for (addr, port, via) in [
        ("192.0.2.10", "83", "node1"),
        ("192.0.2.11", "83", "node2"),
        ("192.0.2.20", "84", "node1"),
        ("192.0.2.21", "84", "node2"),
    ] {
        // Not routed yet: the external host has no way there.
        fails(&lab, "external", addr, port, "1", &["unreachable", "timeout"]);
        let o = lab.run("exec", &["external", "--", "ip", "route", "add", &format!("{addr}/32"), "via", &node_ip(via)]);
        assert!(o.status.success(), "{}", text(&o));
        let by = spread(&lab, &["external", addr, port, "--count", "20"]);
        assert_eq!(pods(&by), set(&["web-1", "web-2"]), "{addr}:{port} via {via}: {by:?}");
        // Only the Service's port is served on that address.
        fails(&lab, "external", addr, "8080", "1", &["refused", "timeout", "unreachable"]);
    }

    // 7. Left alone: headless, ExternalName and another proxy's Service, applied with a normal one.
    let before: Vec<Option<f64>> = ["node1", "node2"].iter().map(|n| services_gauge(&lab, n)).collect();
    assert_eq!(before, [Some(5.0), Some(5.0)], "trellis_services before\n{}", lab.logs());
    apply(&lab, LEFT_ALONE);
    let ok = wait_until(Duration::from_secs(30), || {
        probe(&lab, &["client-1", "svc/plain", "87"]).0 == Some(0)
            && probe(&lab, &["node2", "svc/plain", "87"]).0 == Some(0)
    });
    assert!(ok, "svc/plain never answered\n{}", lab.logs());
    //    `other` selects the web pods and has a clusterIP, but no proxy of ours answers it.
    for from in ["client-1", "client-2", "node1", "node2"] {
        fails(&lab, from, "svc/other", "86", "1", &["timeout", "unreachable"]);
    }

    // 8. A Service's port changes: the new one is served, the old one no longer.
    apply(&lab, CHANGED);
    for from in ["client-1", "client-2", "node1", "node2"] {
        let ok = wait_until(Duration::from_secs(15), || probe(&lab, &[from, "svc/chg", "89"]).0 == Some(0));
        assert!(ok, "svc/chg:89 never answered {from}\n{}", lab.logs());
        let ok = wait_until(Duration::from_secs(5), || probe(&lab, &[from, "svc/chg", "88"]).0 == Some(1));
        assert!(ok, "svc/chg:88 still answers {from}: {:?}", probe(&lab, &[from, "svc/chg", "88"]));
        let by = spread(&lab, &[from, "svc/chg", "89", "--count", "20"]);
        assert_eq!(pods(&by), set(&["web-1", "web-2"]), "svc/chg:89 from {from}: {by:?}");
        fails(&lab, from, "svc/chg", "88", "2", &["refused", "timeout", "unreachable"]);
    }
    //    By now every file above was read (the later apply is served): the agents serve six Services, the plain
    //    one added and none of the three left alone.
    let after: Vec<Option<f64>> = ["node1", "node2"].iter().map(|n| services_gauge(&lab, n)).collect();
    assert_eq!(after, [Some(6.0), Some(6.0)], "trellis_services after\n{}", lab.logs());
}
