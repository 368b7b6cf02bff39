//! Privileged end-to-end tests of the lab with the real trellis, trellis-ipam and trellis-agent binaries.
//! Each test uses its own lab name; the Lab guard runs `down` pass or fail.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{leftovers, metric_value, serial, wait_until, Lab};
use trellis_lab::state::LabState;

fn probe(lab: &Lab, from: &str, target: &str, port: &str, proto: &str) -> Result<String, String> {
    let o = lab.run("probe", &[from, target, port, "--proto", proto, "--timeout-ms", "3000"]);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(common::text(&o))
    }
}

fn assert_check_passes(lab: &Lab) {
    let o = lab.run("check", &[]);
    let out = common::text(&o);
    assert!(o.status.success(), "check failed:\n{out}\n{}", lab.logs());
    assert!(out.contains("matrix matches expectations"), "{out}");
    // 4 pods + 2 nodes as sources.
    for src in ["web-1", "client-2", "node/node1", "node/node2"] {
        assert!(out.contains(src), "{src} missing from matrix:\n{out}");
    }
}

fn default_lab_connectivity(mode: &str) {
    let _s = serial();
    let lab = Lab::up(if mode == "vxlan" { "vx" } else { "hg" }, &["--mode", mode]);
    let st = LabState::load(&lab.name).expect("state");
    assert_eq!(st.plan.mode.as_str(), mode);
    assert!(st.ready);
    assert_eq!(st.pod_ips.len(), 4);
    assert_check_passes(&lab);

    // Same node, across nodes, node -> pod; the answer names the pod that was reached.
    assert_eq!(probe(&lab, "web-1", "client-1", "8080", "tcp").unwrap(), "client-1");
    assert_eq!(probe(&lab, "web-1", "web-2", "8080", "tcp").unwrap(), "web-2");
    assert_eq!(probe(&lab, "client-2", "web-1", "8080", "udp").unwrap(), "web-1");
    assert_eq!(probe(&lab, "node1", "web-2", "8080", "tcp").unwrap(), "web-2");
    let web2_ip = st.pod_ips["default/web-2"].to_string();
    assert_eq!(probe(&lab, "client-1", &web2_ip, "8080", "tcp").unwrap(), "web-2");
    // Nothing listens on 9; the probe must fail with exit 1.
    let o = lab.run("probe", &["web-1", "web-2", "9", "--timeout-ms", "500"]);
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));

    // Pod IPs come from the node's podCIDR; exec runs in the pod's netns.
    for (key, ip) in &st.pod_ips {
        let pod = st.pod(key).unwrap();
        let node = st.plan.node(&pod.node).unwrap();
        assert!(node.pod_cidr.contains(ip), "{key} {ip} not in {}", node.pod_cidr);
    }
    let o = lab.run("exec", &["web-2", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{web2_ip}/")), "{}", common::text(&o));
    let o = lab.run("exec", &["web-2", "--", "false"]);
    assert_eq!(o.status.code(), Some(1));

    let o = lab.run("status", &[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(&web2_ip));

    // down releases every pod through the plugin (CNI DEL) before removing the namespaces.
    let r = trellis_lab::lab::down(&lab.name).unwrap();
    assert_eq!(r.cni_deleted.len(), 4, "{r:?}");
    assert!(r.warnings.is_empty(), "{r:?}");
    assert_eq!(leftovers(&lab.name), Vec::<String>::new());
}

#[test]
fn vxlan_default_lab_is_fully_connected() {
    require_root!();
    default_lab_connectivity("vxlan");
}

#[test]
fn host_gw_default_lab_is_fully_connected() {
    require_root!();
    default_lab_connectivity("host-gw");
}

#[test]
fn node_removed_from_control_plane_loses_its_routes() {
    require_root!();
    let _s = serial();
    let lab = Lab::up("rm", &["--mode", "vxlan"]);
    let st = LabState::load(&lab.name).unwrap();
    let cidr2 = st.plan.node("node2").unwrap().pod_cidr.to_string();
    assert!(lab.has_route("node1", &cidr2), "node1 has no route to {cidr2}: {:?}", lab.routes("node1"));
    let o = lab.run("delete", &["node/node2"]);
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(!lab.state_dir().join("manifests/node_node2.yaml").exists());
    assert!(
        wait_until(Duration::from_secs(15), || !lab.has_route("node1", &cidr2)),
        "route to removed node2's {cidr2} still on node1: {:?}\n{}",
        lab.routes("node1"),
        lab.logs()
    );
    // check notices: node1's pods no longer reach node2's, while pods on one node still reach each other.
    let o = lab.run("check", &["--timeout-ms", "500"]);
    let out = common::text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("web-1 -> web-2 tcp: expected reachable, got blocked"), "{out}");
    assert!(!out.contains("web-1 -> client-1 "), "{out}");
}

#[test]
fn route_deleted_by_hand_is_repaired() {
    require_root!();
    let _s = serial();
    let lab = Lab::up("rp", &["--mode", "host-gw", "--repair-interval-secs", "2"]);
    let st = LabState::load(&lab.name).unwrap();
    let cidr2 = st.plan.node("node2").unwrap().pod_cidr.to_string();
    assert!(lab.has_route("node1", &cidr2));
    let o = Command::new("ip").args(["-n", &lab.node_netns("node1"), "route", "del", &cidr2]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(!lab.has_route("node1", &cidr2));
    assert!(
        wait_until(Duration::from_secs(2 * 2 + 3), || lab.has_route("node1", &cidr2)),
        "route {cidr2} not repaired on node1 within the repair interval: {:?}\n{}",
        lab.routes("node1"),
        lab.logs()
    );
    assert_check_passes(&lab);
}

fn root_links() -> Vec<String> {
    let o = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn down_leaves_nothing_even_without_state_json() {
    require_root!();
    let _s = serial();
    let before = root_links();
    let lab = Lab::up("dn", &[]);
    // Simulate a crashed `up`: no state.json to go by.
    std::fs::remove_file(lab.state_dir().join("state.json")).unwrap();
    assert!(!leftovers(&lab.name).is_empty());
    let o = lab.run("down", &[]);
    assert!(o.status.success(), "{}", common::text(&o));
    assert_eq!(leftovers(&lab.name), Vec::<String>::new());
    // No lab link ever appears in the root namespace.
    let ours = |n: &str| {
        n == "br0" || n == "eth0" || n.starts_with("trellis") || (n.starts_with('n') && n[1..].parse::<u32>().is_ok())
    };
    let new: Vec<String> = root_links().into_iter().filter(|l| !before.contains(l) && ours(l)).collect();
    assert!(new.is_empty(), "links in the root netns: {new:?}");
    // A second down is a no-op success.
    let o = lab.run("down", &[]);
    assert!(o.status.success(), "{}", common::text(&o));
}

#[test]
fn two_labs_side_by_side() {
    require_root!();
    let _s = serial();
    // Same topology (same CIDRs and underlay addresses): the labs are isolated by their namespaces.
    let a = Lab::up("sa", &["--mode", "vxlan"]);
    let b = Lab::up("sb", &["--mode", "host-gw"]);
    assert_check_passes(&a);
    assert_check_passes(&b);
    let a_name = a.name.clone();
    drop(a);
    assert_eq!(leftovers(&a_name), Vec::<String>::new());
    assert_check_passes(&b);
    // Without --name and with several labs up, commands refuse to guess (only when b is the only lab we know
    // of is the default meaningful, and other tests may run labs concurrently).
}

#[test]
fn apply_service_writes_endpoint_slice_and_relabels_pods() {
    require_root!();
    let _s = serial();
    let lab = Lab::up("ap", &[]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("svc.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: client-1, namespace: default, labels: {app: web, role: extra}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\nspec: {podSelector: {}}\n",
    )
    .unwrap();
    let o = lab.run("apply", &[f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::text(&o));
    let m = lab.state_dir().join("manifests");
    let svc: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(m.join("service_default_web.yaml")).unwrap()).unwrap();
    let vip: std::net::Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!("10.96.0.0/16".parse::<ipnet::Ipv4Net>().unwrap().contains(&vip));
    let slice: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(m.join("endpointslice_default_web-lab.yaml")).unwrap()).unwrap();
    let st = LabState::load(&lab.name).unwrap();
    let mut ips: Vec<String> = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addresses"][0].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    let mut want: Vec<String> =
        ["default/web-1", "default/web-2", "default/client-1"].iter().map(|k| st.pod_ips[*k].to_string()).collect();
    want.sort();
    assert_eq!(ips, want);
    assert_eq!(slice["ports"][0]["port"], 8080);
    assert!(m.join("networkpolicy_default_deny.yaml").exists());
    let pod: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(m.join("pod_default_client-1.yaml")).unwrap()).unwrap();
    assert_eq!(pod["metadata"]["labels"]["role"], "extra");
    assert_eq!(pod["status"]["podIP"], st.pod_ips["default/client-1"].to_string());
    // The VIP resolves for probes by service name (reachability depends on the agent's service support).
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: Pod\nmetadata: {name: nosuchpod}\n").unwrap();
    let o = lab.run("apply", &[bad.to_str().unwrap()]);
    assert!(!o.status.success());
    // A new pod needs a node: the lab does not schedule (pods created at runtime: services.rs).
    assert!(String::from_utf8_lossy(&o.stderr).contains("spec.nodeName is required"), "{}", common::text(&o));
    assert!(!m.join("pod_default_nosuchpod.yaml").exists());
}

#[test]
fn skeleton_and_down_without_agents() {
    require_root!();
    use trellis_lab::net::NetlinkNet;
    use trellis_lab::{echo, lab, names, nsexec, plan, topology::Topology, underlay};
    let name = common::unique_name("sk");
    let mut t = Topology::default_topology();
    t.name = name.clone();
    let p = plan::plan(&t, None).unwrap();
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = lab::down(&self.0);
        }
    }
    let _guard = Down(name.clone());
    underlay::setup_skeleton(&mut NetlinkNet::default(), &p).unwrap();
    // node2 serves on its InternalIP; node1 reaches it over the underlay bridge.
    let n2 = names::netns_path(&p.nodes[1].netns);
    let mut child = nsexec::spawn_in(
        Command::new(common::LAB).args(["serve", "--pod-name", "node2", "--ports", "7000"]),
        &n2,
        &name,
        true,
    )
    .unwrap();
    let n1 = names::netns_path(&p.nodes[0].netns);
    let ip = p.nodes[1].internal_ip;
    let ok = wait_until(Duration::from_secs(5), || {
        nsexec::run_in(&n1, || echo::probe(ip, 7000, echo::Proto::Tcp, Duration::from_millis(300)))
            .unwrap()
            .is_ok_and(|n| n == "node2")
    });
    assert!(ok, "node1 cannot reach node2 over the underlay");
    let r = lab::down(&name).unwrap();
    assert!(r.processes.contains(&(child.id() as i32)));
    let _ = child.wait();
    // The underlay, the external host, the nodes and the pods.
    assert_eq!(r.netns.len(), 2 + p.nodes.len() + p.pods.len());
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn bench_measures_a_veth_pair() {
    require_root!();
    let name = common::unique_name("bv");
    let pair = trellis_lab::bench::VethPair::create(&name).unwrap();
    let n = trellis_lab::bench::measure(
        &trellis_lab::names::netns_path(&pair.b),
        &trellis_lab::names::netns_path(&pair.a),
        std::net::Ipv4Addr::new(10, 99, 0, 1),
        Duration::from_millis(500),
        trellis_lab::bench::first_allowed_cpu(),
    )
    .unwrap();
    assert!(n.throughput > 0.0 && n.rr > 0.0 && n.crr > 0.0, "{n:?}");
    drop(pair);
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn down_cleans_up_after_up_was_killed() {
    require_root!();
    let _s = serial();
    let name = common::unique_name("kl");
    let bins = common::bin_dir();
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = common::lab_cmd(&["down", "--name", &self.0]);
        }
    }
    let _guard = Down(name.clone());
    let mut up = Command::new(common::LAB)
        .args(["up", "--name", &name, "--bin-dir", bins.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = std::path::PathBuf::from("/run/trellis-lab").join(&name).join("state.json");
    // Kill `up` as soon as it has started agents: netns, processes and files exist, the lab is incomplete.
    let started = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["agents"].as_object().is_some_and(|a| !a.is_empty()))
    });
    up.kill().unwrap();
    let _ = up.wait();
    assert!(started, "up never started an agent");
    let st: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(st["ready"], false, "up finished before it was killed; the test proves nothing");
    assert!(leftovers(&name).iter().any(|l| l.starts_with("process")));
    let o = common::lab_cmd(&["down", "--name", &name]);
    assert!(o.status.success(), "{}", common::text(&o));
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn bench_routed_reference_path_carries_traffic() {
    require_root!();
    let name = common::unique_name("br");
    let r = trellis_lab::bench::RoutedPath::create(&name).unwrap();
    let n = trellis_lab::bench::measure(
        &trellis_lab::names::netns_path(&r.client),
        &trellis_lab::names::netns_path(&r.server),
        r.server_ip,
        Duration::from_millis(300),
        None,
    )
    .unwrap();
    assert!(n.throughput > 0.0 && n.rr > 0.0 && n.crr > 0.0, "{n:?}");
    drop(r);
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

/// A process of this test, killed (by its own pid) and reaped on drop, pass or fail.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `probe -o json` attempts from `from` to `target`:`port` (one line each).
fn probe_json(lab: &Lab, from: &str, target: &str, port: &str) -> Vec<serde_json::Value> {
    let o = lab.run("probe", &[from, target, port, "-o", "json", "--timeout-ms", "2000"]);
    String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A node netns' kernel conntrack table (per netns; empty when nothing is tracked there).
fn conntrack(netns: &str) -> String {
    let o = Command::new("ip").args(["netns", "exec", netns, "cat", "/proc/net/nf_conntrack"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn egress_is_masqueraded_while_traffic_inside_the_cluster_is_untracked_and_unbridged_by_netfilter() {
    require_root!();
    let _s = serial();
    let lab = Lab::up("eg", &["--mode", "host-gw"]);
    let st = LabState::load(&lab.name).unwrap();
    let client1 = st.pod_ips["default/client-1"].to_string();
    let web2 = st.pod_ips["default/web-2"].to_string();
    let node_of_client1 = st.plan.node(&st.pod("client-1").unwrap().node).unwrap().clone();

    // The agents (service proxy on) turned bridge netfilter off in their node netns, where br_netfilter is there.
    if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        for n in &st.plan.nodes {
            let ok = wait_until(Duration::from_secs(10), || {
                let o = Command::new("ip")
                    .args(["netns", "exec", &n.netns, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).trim() == "0"
            });
            assert!(ok, "bridge-nf-call-iptables still on in {}\n{}", n.name, lab.logs());
        }
    }

    // A server on the external host, which has no route into the pod network: a pod's connection is answered
    // only if the node rewrote its source, and the server sees the node's address.
    let ext_ns = trellis_lab::names::external_netns(&lab.name);
    let server = Command::new("ip")
        .args(["netns", "exec", &ext_ns, common::LAB, "serve", "--pod-name", "external", "--ports", "9099"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = Killed(server);
    let ext_ip = st.plan.external_ip.to_string();
    assert!(
        wait_until(Duration::from_secs(10), || probe_json(&lab, "external", &ext_ip, "9099").len() == 1
            && probe_json(&lab, "external", &ext_ip, "9099")[0]["ok"] == true),
        "the external server never came up"
    );
    let a = probe_json(&lab, "client-1", "external", "9099");
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["ok"], true, "pod -> external failed: {a:?}\n{}", lab.logs());
    assert_eq!(a[0]["client"], node_of_client1.internal_ip.to_string(), "not masqueraded to the node: {a:?}");
    // Tracked (that is what masquerade needs) in the client's node...
    let ct = conntrack(&node_of_client1.netns);
    assert!(ct.contains(&format!("src={client1} dst={ext_ip} ")), "egress flow not tracked:\n{ct}");

    // ...while pod to pod across nodes keeps the client's address and leaves no conntrack entry on either node.
    // (Once both agents forward in eBPF, which they say within a second or two of `up`.)
    for n in &st.plan.nodes {
        let on = r#"trellis_datapath_forwarding{family="ipv4"}"#;
        let ok = wait_until(Duration::from_secs(15), || {
            lab.metrics(&n.name).ok().and_then(|m| metric_value(&m, on)) == Some(1.0)
        });
        assert!(ok, "{} never turned eBPF forwarding on\n{}", n.name, lab.logs());
    }
    let a = probe_json(&lab, "client-1", "web-2", "8080");
    assert_eq!((a[0]["pod"].as_str(), a[0]["client"].as_str()), (Some("web-2"), Some(client1.as_str())), "{a:?}");
    for n in &st.plan.nodes {
        let ct = conntrack(&n.netns);
        assert!(!ct.contains(&format!("src={client1} dst={web2} ")), "pod-to-pod tracked on {}:\n{ct}", n.name);
    }
    // Both nodes forwarded it in eBPF, bypassing their IP stacks (sending node: pod veth to uplink), and put the
    // packets from the uplink straight into the pod once it had been seen sending ("delivered": no bridge); the
    // counters are exported at the agents' repair rounds.
    for n in &st.plan.nodes {
        for name in ["forwarded", "delivered"] {
            let series = format!(r#"trellis_datapath_counter{{name="{name}"}}"#);
            let mut last = None;
            let ok = wait_until(Duration::from_secs(30), || {
                last = lab.metrics(&n.name).ok().and_then(|m| metric_value(&m, &series));
                last.is_some_and(|v| v > 0.0)
            });
            assert!(ok, "{}: no pod-to-pod packet {name} in eBPF ({series} = {last:?})\n{}", n.name, lab.logs());
        }
    }
}
