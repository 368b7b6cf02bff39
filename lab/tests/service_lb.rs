//! Service load balancing end to end (privileged): real labs, the real agents programming the eBPF datapath,
//! the lab's probe as the client. Every semantic kube-proxy users rely on, from pods on both nodes and from the
//! `external` host: spread over backends, session affinity, NodePort with both traffic policies (the backend sees
//! the external client's address under eTP Local), immediate refusal without endpoints, hairpin, readiness and
//! deletion moving traffic (a fixed-port UDP flow included), and an agent SIGKILLed mid-traffic losing nothing.
mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{apply, metric_value, one, probe, serial, spread, text, wait_until, Lab, LAB};

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: tcp, port: 80, targetPort: 8080, protocol: TCP}, {name: udp, port: 80, targetPort: 8080, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 81, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 82, targetPort: 8080, nodePort: 30081}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}
  ports: [{port: 85, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: default}
spec:
  selector: {app: nobody}
  ports: [{name: tcp, port: 83, targetPort: 8080, protocol: TCP}, {name: udp, port: 83, targetPort: 8080, protocol: UDP}]
"#;

/// Waits until the agents serve `svc/web` from both nodes' pods (the first sync after apply).
fn wait_served(lab: &Lab) {
    for from in ["client-1", "client-2"] {
        let ok = wait_until(Duration::from_secs(30), || probe(lab, &[from, "svc/web", "80"]).0 == Some(0));
        assert!(ok, "svc/web never answered from {from}\n{}", lab.logs());
    }
}

fn external_ip(lab: &Lab) -> String {
    let o = Command::new("ip")
        .args(["-n", &format!("tl-{}-ext", lab.name), "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    t.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap().split('/').next().unwrap().to_string()
}

#[test]
fn clusterip_nodeport_affinity_rejects_and_hairpin() {
    trellis_test_support::require_root!();
    let _s = serial();
    let lab = Lab::up("svclb", &[]);
    apply(&lab, SERVICES);
    wait_served(&lab);
    // How full the Service maps are meant to be, for the operator: some of the default 64k frontend entries and
    // backends in use, none in the IPv6 maps of this IPv4 lab.
    let m = lab.metrics("node1").unwrap();
    let pressure = |map: &str| metric_value(&m, &format!("trellis_datapath_map_pressure{{map=\"{map}\"}}"));
    for map in ["LB4_SVC_V1", "LB4_BE_V1", "LB4_RNAT_V1"] {
        assert!(pressure(map).is_some_and(|p| p > 0.0 && p < 0.01), "{map}: {:?}", pressure(map));
    }
    assert_eq!(pressure("LB6_SVC_V1"), Some(0.0));

    // Spread: from pods on both nodes, TCP and UDP, every backend answers and none takes (nearly) everything.
    for from in ["client-1", "client-2"] {
        for proto in ["tcp", "udp"] {
            let by = spread(&lab, &[from, "svc/web", "80", "--proto", proto, "--count", "40"]);
            assert_eq!(by.keys().cloned().collect::<Vec<_>>(), ["web-1", "web-2"], "{from} {proto}: {by:?}");
            assert!(by.values().all(|n| *n >= 8), "{from} {proto}: uneven {by:?}");
        }
    }
    // The backend sees the client pod's own address (no SNAT on the ClusterIP path).
    let a = one(&lab, &["client-2", "svc/web", "80"]);
    let client2 = lab.run("status", &[]);
    let status = String::from_utf8_lossy(&client2.stdout).to_string();
    let ip2 = status.lines().find(|l| l.starts_with("default/client-2")).unwrap().split_whitespace().nth(2).unwrap();
    assert_eq!(a["client"], ip2, "{a}");

    // Session affinity pins a client to one backend.
    let by = spread(&lab, &["client-1", "svc/sticky", "85", "--count", "20"]);
    assert_eq!(by.len(), 1, "affinity: {by:?}");

    // No endpoints: refused at once, TCP (RST) and UDP (ICMP port unreachable).
    for proto in ["tcp", "udp"] {
        let (code, attempts) = probe(&lab, &["client-1", "svc/nobody", "83", "--proto", proto]);
        assert_eq!(code, Some(1));
        assert_eq!(attempts[0]["error"], "refused", "{proto}: {attempts:?}");
        assert!(attempts[0]["ms"].as_f64().unwrap() < 100.0, "{proto}: refused after {}", attempts[0]["ms"]);
    }

    // Hairpin: a backend reaching its own Service gets answers, its own included.
    let by = spread(&lab, &["web-1", "svc/web", "80", "--count", "30"]);
    assert!(by.contains_key("web-1"), "web-1 never answered itself: {by:?}");

    // NodePort from outside, eTP Cluster: both backends; the remote one sees the node (SNAT), the local one the
    // external client.
    let ext = external_ip(&lab);
    let (code, attempts) = probe(&lab, &["external", "node/node1", "30080", "--count", "30"]);
    assert_eq!(code, Some(0), "{attempts:?}");
    let pods: BTreeMap<&str, &str> =
        attempts.iter().map(|a| (a["pod"].as_str().unwrap(), a["client"].as_str().unwrap())).collect();
    assert_eq!(pods.get("web-1"), Some(&ext.as_str()), "{attempts:?}");
    assert!(pods.get("web-2").is_some_and(|c| *c != ext), "web-2 must see the node, not {ext}: {attempts:?}");
    // eTP Local: only node1's backend, and it sees the external client's own address.
    let (code, attempts) = probe(&lab, &["external", "node/node1", "30081", "--count", "10"]);
    assert_eq!(code, Some(0), "{attempts:?}");
    for a in &attempts {
        assert_eq!((a["pod"].as_str(), a["client"].as_str()), (Some("web-1"), Some(ext.as_str())), "{a}");
    }
    // A NodePort from a pod of the other node works too.
    assert_eq!(probe(&lab, &["client-2", "node/node1", "30080", "--count", "5"]).0, Some(0));
}

#[test]
fn unready_and_deleted_backends_stop_at_once_and_a_killed_agent_loses_nothing() {
    trellis_test_support::require_root!();
    let _s = serial();
    let lab = Lab::up("svcmv", &[]);
    apply(&lab, SERVICES);
    wait_served(&lab);

    // One long-lived UDP flow (fixed source port) sticks to its backend...
    let flow = |lab: &Lab| one(lab, &["client-1", "svc/web", "80", "--proto", "udp", "--sport", "40123"]);
    let first = flow(&lab);
    let pod = first["pod"].as_str().unwrap().to_string();
    for _ in 0..5 {
        assert_eq!(flow(&lab)["pod"].as_str(), Some(pod.as_str()), "the flow moved by itself");
    }
    // ...until that backend goes unready: then the same flow moves to a live backend within a second.
    let o = lab.run("ready", &[&pod, "false"]);
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    let moved = wait_until(Duration::from_secs(5), || flow(&lab)["pod"].as_str().is_some_and(|p| p != pod));
    let took = t0.elapsed();
    eprintln!("UDP flow on a fixed port moved off the unready {pod} after {took:?}");
    assert!(moved && took < Duration::from_secs(1), "moved={moved} after {took:?}\n{}", lab.logs());
    let by = spread(&lab, &["client-2", "svc/web", "80", "--count", "20"]);
    assert!(!by.contains_key(&pod), "unready {pod} still answers: {by:?}");
    let o = lab.run("ready", &[&pod, "true"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(wait_until(Duration::from_secs(5), || spread(&lab, &["client-2", "svc/web", "80", "--count", "20"])
        .contains_key(&pod)));

    // A deleted backend stops receiving within a second, while it is terminating (as a pod does for its grace
    // period), and not one request fails, then or after it is gone. (With no grace at all, a pod killed before the
    // agents have seen it leave takes the requests already sent to it along: in Kubernetes as here.)
    let del = Command::new(LAB)
        .args(["delete", "--name", &lab.name, "pod/web-2", "--grace-secs", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let gone = wait_until(Duration::from_secs(5), || {
        !spread(&lab, &["client-1", "svc/web", "80", "--count", "10"]).contains_key("web-2")
    });
    let took = t0.elapsed();
    eprintln!("deleted web-2 stopped receiving after {took:?}");
    assert!(gone && took < Duration::from_secs(1), "after {took:?}");
    let o = del.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let by = spread(&lab, &["client-1", "svc/web", "80", "--count", "10"]);
    assert_eq!(by.keys().collect::<Vec<_>>(), ["web-1"], "{by:?}");

    // The agent SIGKILLed and restarted while a client loops requests: not one fails (the pinned maps and links
    // keep serving; the new agent adopts them).
    let client = Command::new(LAB)
        .args(["probe", "--name", &lab.name, "client-1", "svc/web", "80", "--count", "300", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let o = lab.run("restart-agent", &["node1", "--kill"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = client.wait_with_output().unwrap();
    let failed: Vec<&str> =
        std::str::from_utf8(&out.stdout).unwrap().lines().filter(|l| l.contains("\"ok\": false")).collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "attempts failed across the agent restart: {failed:?}\n{}",
        lab.logs()
    );
    // And the restarted agent keeps programming: a new Service works.
    apply(&lab, "apiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: default}\nspec:\n  selector: {app: web}\n  ports: [{port: 86, targetPort: 8080}]\n");
    assert!(
        wait_until(Duration::from_secs(30), || probe(&lab, &["client-1", "svc/later", "86"]).0 == Some(0)),
        "{}",
        lab.logs()
    );
}
