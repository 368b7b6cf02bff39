//! Privileged tests: the real `trellis-agent` binary in two (or three) node network namespaces
//! joined by a veth pair, driven through a manifests directory, checked with ip(8)/bridge(8).
//!
//! Root only (skips loudly otherwise). Every netns is uniquely named (pid + counter) and
//! deleted, every agent killed, by a Drop guard, pass or fail. Nothing touches the root netns.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

use trellis_test_support::require_root;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like `sh` but failure is an empty string (for polling state that may not exist yet).
fn try_sh(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// How long any wait may take. Generous on purpose: a loaded CI machine must not fail a correct agent. The
/// delays are printed (`--nocapture`); the figures belong to `cargo bench --bench files_source`, not to tests.
const DEADLINE: Duration = Duration::from_secs(30);

/// Polls every 20 ms; returns how long it took (printed, so `--nocapture` shows the propagation delays).
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{what}: {:?}", t0.elapsed());
    t0.elapsed()
}

/// Owns everything a test creates; Drop tears it all down.
struct Lab {
    prefix: String,
    netns: Vec<String>,
    agents: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let prefix = format!("trag{}n{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        Lab { prefix, netns: vec![], agents: vec![], dir: tempfile::tempdir().expect("tempdir") }
    }

    fn ns(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    fn add_node_ns(&mut self, node: &str) -> String {
        let ns = self.ns(node);
        sh(&["ip", "netns", "add", &ns]);
        self.netns.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Two node netns joined by a veth pair `eth0` <-> `eth0` (the underlay), addresses a/b.
    fn two_nodes(&mut self, a: (&str, &str), b: (&str, &str)) {
        let na = self.add_node_ns(a.0);
        let nb = self.add_node_ns(b.0);
        sh(&["ip", "link", "add", "eth0", "netns", &na, "type", "veth", "peer", "name", "eth0", "netns", &nb]);
        for (ns, addr) in [(&na, a.1), (&nb, b.1)] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
    }

    fn manifests(&self) -> PathBuf {
        let p = self.dir.path().join("manifests");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn write_node(&self, name: &str, cidr: &str, ip: &str) {
        self.write_node_cidrs(name, &[cidr], ip);
    }

    fn write_node_cidrs(&self, name: &str, cidrs: &[&str], ip: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: {}\n  podCIDRs: [{}]\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {ip}}}\n  - {{type: Hostname, address: {name}}}\n",
            cidrs[0],
            cidrs.join(", ")
        );
        // Atomic, like the lab would do: temp (hidden) + rename.
        let tmp = self.manifests().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests().join(format!("node-{name}.yaml"))).unwrap();
    }

    fn remove_node(&self, name: &str) {
        std::fs::remove_file(self.manifests().join(format!("node-{name}.yaml"))).unwrap();
    }

    fn conf_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("net.d-{node}"))
    }

    fn start_agent(&mut self, node: &str, extra: &[&str]) {
        let ns = self.ns(node);
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{node}.log"))).unwrap();
        let manifests = self.manifests();
        let conf = self.conf_dir(node);
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            ns,
            env!("CARGO_BIN_EXE_trellis-agent").into(),
            "--node-name".into(),
            node.into(),
            "--source".into(),
            "files".into(),
            "--manifests-dir".into(),
            manifests.display().to_string(),
            "--cni-conf-dir".into(),
            conf.display().to_string(),
            "--ipam-data-dir".into(),
            self.dir.path().join("ipam").display().to_string(),
            "--repair-interval-secs".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("ip")
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.agents.push((node.to_string(), child));
    }

    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{node}.log"))).unwrap_or_default()
    }

    fn ip(&self, node: &str, args: &[&str]) -> String {
        let ns = self.ns(node);
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend_from_slice(args);
        try_sh(&v)
    }

    fn bridge(&self, node: &str, args: &[&str]) -> String {
        let ns = self.ns(node);
        let mut v = vec!["bridge", "-n", ns.as_str()];
        v.extend_from_slice(args);
        try_sh(&v)
    }

    fn ping(&self, node: &str, dst: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(node), "ping", "-c1", "-W1", dst])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn ping6(&self, node: &str, dst: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(node), "ping", "-6", "-c1", "-W1", dst])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// GET /metrics from inside a node's netns (the agent binds 127.0.0.1 there).
    fn metrics(&self, node: &str, addr: &str) -> String {
        let path = PathBuf::from(format!("/run/netns/{}", self.ns(node)));
        let addr = addr.to_string();
        trellis_netlink::netns::run_in(&path, move || {
            let mut s = TcpStream::connect(&addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .ok()
        .flatten()
        .unwrap_or_default()
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for (n, _) in &self.agents {
            out += &format!("--- agent {n} log ---\n{}\n", self.log(n));
            out += &format!("--- {n} routes ---\n{}\n", self.ip(n, &["route"]));
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
        for (_, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn has(hay: &str, needle: &str) -> bool {
    hay.contains(needle)
}

#[test]
fn vxlan_overlay_programs_repairs_and_prunes() {
    require_root!();
    let mut lab = Lab::new();
    lab.two_nodes(("a", "192.168.77.1/24"), ("b", "192.168.77.2/24"));
    lab.write_node("a", "10.244.1.0/24", "192.168.77.1");
    lab.write_node("b", "10.244.2.0/24", "192.168.77.2");
    lab.start_agent("a", &["--metrics-addr", "127.0.0.1:9962"]);
    lab.start_agent("b", &["--metrics-addr", ""]);
    let t = DEADLINE;

    // Device: VNI, port, learning off, derived MAC, MTU, address.
    wait_until("vxlan device on a", t, || has(&lab.ip("a", &["-d", "link", "show", "trellis.1"]), "vxlan id 1"));
    let link = lab.ip("a", &["-d", "link", "show", "trellis.1"]);
    for want in
        ["dstport 8472", "nolearning", "link/ether 0e:7e:c0:a8:4d:01", "mtu 1450", "local 192.168.77.1", "dev eth0"]
    {
        assert!(has(&link, want), "missing {want:?} in {link}");
    }
    assert!(has(&lab.ip("a", &["addr", "show", "dev", "trellis.1"]), "inet 10.244.1.0/32"));
    // Per peer: FDB, neighbour, onlink route with our protocol.
    let route_b = || lab.ip("a", &["route", "show", "10.244.2.0/24"]);
    wait_until("route to b's pods on a", t, || has(&route_b(), "via 10.244.2.0 dev trellis.1"));
    let r = route_b();
    assert!(has(&r, "onlink") && has(&r, "proto 126"), "{r}");
    assert!(has(&lab.bridge("a", &["fdb", "show", "dev", "trellis.1"]), "0e:7e:c0:a8:4d:02 dst 192.168.77.2"));
    let neigh = lab.ip("a", &["neigh", "show", "dev", "trellis.1"]);
    assert!(has(&neigh, "10.244.2.0 lladdr 0e:7e:c0:a8:4d:02 PERMANENT"), "{neigh}");
    // The node's own podCIDR is not routed through the overlay.
    assert!(!has(&lab.ip("a", &["route"]), "10.244.1.0/24 via"));
    // Forwarding on, in the node netns.
    assert_eq!(sh(&["ip", "netns", "exec", &lab.ns("a"), "cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "1");
    // Conflist with the pod MTU.
    let conf = lab.conf_dir("a").join("10-trellis.conflist");
    wait_until("conflist on a", t, || conf.exists());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
    assert_eq!(v["plugins"][0]["mtu"], 1450);
    assert_eq!(v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");

    // Packets really cross the overlay: a's VXLAN address to b's.
    wait_until("b programmed", t, || has(&lab.ip("b", &["route", "show", "10.244.1.0/24"]), "trellis.1"));
    wait_until("ping a -> b over VXLAN", t, || lab.ping("a", "10.244.2.0"));

    // Repair: delete things by hand, they come back at a repair round (every 1 s here).
    sh(&["ip", "-n", &lab.ns("a"), "route", "del", "10.244.2.0/24"]);
    wait_until("route restored", DEADLINE, || has(&route_b(), "via 10.244.2.0 dev trellis.1"));
    sh(&["bridge", "-n", &lab.ns("a"), "fdb", "del", "0e:7e:c0:a8:4d:02", "dev", "trellis.1", "dst", "192.168.77.2"]);
    sh(&["ip", "-n", &lab.ns("a"), "neigh", "del", "10.244.2.0", "dev", "trellis.1"]);
    wait_until("fdb restored", DEADLINE, || {
        has(&lab.bridge("a", &["fdb", "show", "dev", "trellis.1"]), "dst 192.168.77.2")
    });
    wait_until("neighbour restored", DEADLINE, || {
        has(&lab.ip("a", &["neigh", "show", "dev", "trellis.1"]), "10.244.2.0 lladdr")
    });
    sh(&["ip", "-n", &lab.ns("a"), "link", "del", "trellis.1"]);
    wait_until("device and route restored", DEADLINE, || has(&route_b(), "via 10.244.2.0 dev trellis.1"));
    wait_until("ping again after repair", t, || lab.ping("a", "10.244.2.0"));
    // A route that is not ours survives.
    sh(&["ip", "-n", &lab.ns("a"), "route", "add", "10.99.0.0/24", "via", "192.168.77.2"]);

    // A new node appears, then b goes away: each reflected (the delay is printed; about a second or less is the
    // figure, kept in the benchmark, not asserted here).
    lab.write_node("c", "10.244.3.0/24", "192.168.77.3");
    wait_until("route to added node c", DEADLINE, || {
        has(&lab.ip("a", &["route", "show", "10.244.3.0/24"]), "trellis.1")
    });
    lab.remove_node("b");
    wait_until("removed node b pruned", DEADLINE, || !has(&lab.ip("a", &["route"]), "10.244.2.0/24"));
    assert!(!has(&lab.bridge("a", &["fdb", "show", "dev", "trellis.1"]), "192.168.77.2"));
    assert!(!has(&lab.ip("a", &["neigh", "show", "dev", "trellis.1"]), "10.244.2.0"));
    assert!(has(&lab.ip("a", &["route"]), "10.99.0.0/24 via 192.168.77.2"), "foreign route pruned");

    let m = lab.metrics("a", "127.0.0.1:9962");
    assert!(has(&m, "trellis_controlplane_synced 1"), "{m}");
    assert!(has(&m, "trellis_overlay_peers 1"), "{m}");
    assert!(has(&m, "trellis_overlay_changes_total{object=\"route\",action=\"del\"}"), "{m}");
}

#[test]
fn host_gw_routes_same_segment_and_refuses_others() {
    require_root!();
    let mut lab = Lab::new();
    lab.two_nodes(("a", "192.168.78.1/24"), ("b", "192.168.78.2/24"));
    lab.write_node("a", "10.244.1.0/24", "192.168.78.1");
    lab.write_node("b", "10.244.2.0/24", "192.168.78.2");
    lab.write_node("far", "10.244.3.0/24", "10.200.0.3");
    // A bad manifest does not stop anything.
    std::fs::write(lab.manifests().join("broken.yaml"), "kind: Node\nmetadata: {name: [\n").unwrap();
    lab.start_agent("a", &["--overlay", "host-gw", "--metrics-addr", "127.0.0.1:9962"]);
    lab.start_agent("b", &["--overlay", "host-gw", "--metrics-addr", "", "--underlay-iface", "eth0"]);
    let t = DEADLINE;

    let route_b = || lab.ip("a", &["route", "show", "10.244.2.0/24"]);
    wait_until("host-gw route to b", t, || has(&route_b(), "via 192.168.78.2 dev eth0"));
    assert!(has(&route_b(), "proto 126"));
    assert!(lab.ip("a", &["route", "show", "10.244.3.0/24"]).trim().is_empty(), "no black hole for far");
    assert!(lab.ip("a", &["link", "show", "trellis.1"]).trim().is_empty(), "no vxlan device in host-gw");
    wait_until("rejection logged", t, || has(&lab.log("a"), "refuses peer"));
    let m = lab.metrics("a", "127.0.0.1:9962");
    assert!(has(&m, "trellis_overlay_peer_rejected_total 1"), "{m}");
    assert!(has(&m, "trellis_controlplane_invalid_objects_total{source=\"files\",reason=\"syntax\"} 1"), "{m}");
    let conf = lab.conf_dir("a").join("10-trellis.conflist");
    wait_until("conflist", t, || conf.exists());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
    assert_eq!(v["plugins"][0]["mtu"], 1500);

    // Traffic to a "pod" address on b follows the route.
    sh(&["ip", "-n", &lab.ns("b"), "addr", "add", "10.244.2.1/32", "dev", "lo"]);
    wait_until("ping a -> b pod address", t, || lab.ping("a", "10.244.2.1"));

    // Repair and prune.
    sh(&["ip", "-n", &lab.ns("a"), "route", "del", "10.244.2.0/24"]);
    wait_until("route restored", DEADLINE, || has(&route_b(), "via 192.168.78.2"));
    lab.remove_node("b");
    wait_until("b pruned", DEADLINE, || route_b().trim().is_empty());
}

#[test]
fn vxlan_carries_ipv6_pod_cidrs_over_an_ipv4_underlay() {
    require_root!();
    let mut lab = Lab::new();
    lab.two_nodes(("a", "192.168.80.1/24"), ("b", "192.168.80.2/24"));
    lab.write_node_cidrs("a", &["10.244.1.0/24", "fd00:10:244:1::/64"], "192.168.80.1");
    lab.write_node_cidrs("b", &["10.244.2.0/24", "fd00:10:244:2::/64"], "192.168.80.2");
    lab.start_agent("a", &["--metrics-addr", ""]);
    lab.start_agent("b", &["--metrics-addr", ""]);
    let t = DEADLINE;
    let r6 = || lab.ip("a", &["-6", "route", "show", "fd00:10:244:2::/64"]);
    wait_until("IPv6 route to b", t, || has(&r6(), "via fd00:10:244:2:: dev trellis.1"));
    assert!(has(&r6(), "proto 126") && has(&r6(), "onlink"), "{}", r6());
    assert!(has(&lab.ip("a", &["-6", "addr", "show", "dev", "trellis.1"]), "fd00:10:244:1::/128"));
    assert!(has(
        &lab.ip("a", &["-6", "neigh", "show", "dev", "trellis.1"]),
        "fd00:10:244:2:: lladdr 0e:7e:c0:a8:50:02 PERMANENT"
    ));
    assert_eq!(sh(&["ip", "netns", "exec", &lab.ns("a"), "cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).trim(), "1");
    let conf = lab.conf_dir("a").join("10-trellis.conflist");
    wait_until("conflist", t, || conf.exists());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
    assert_eq!(v["plugins"][0]["ipam"]["ranges"][1][0]["subnet"], "fd00:10:244:1::/64");
    wait_until("b programmed", t, || has(&lab.ip("b", &["-6", "route", "show", "fd00:10:244:1::/64"]), "trellis.1"));
    wait_until("ping -6 a -> b over VXLAN", t, || lab.ping6("a", "fd00:10:244:2::"));
    wait_until("ping a -> b over VXLAN", t, || lab.ping("a", "10.244.2.0"));
}

#[test]
fn node_changes_follow_podcidr_and_address_changes() {
    require_root!();
    let mut lab = Lab::new();
    lab.two_nodes(("a", "192.168.81.1/24"), ("b", "192.168.81.2/24"));
    // b also owns a second underlay address it can move to.
    sh(&["ip", "-n", &lab.ns("b"), "addr", "add", "192.168.81.22/24", "dev", "eth0"]);
    lab.write_node("a", "10.244.1.0/24", "192.168.81.1");
    lab.write_node("b", "10.244.2.0/24", "192.168.81.2");
    lab.start_agent("a", &["--metrics-addr", ""]);
    lab.start_agent("b", &["--metrics-addr", ""]);
    let t = DEADLINE;
    wait_until("route to b", t, || has(&lab.ip("a", &["route", "show", "10.244.2.0/24"]), "trellis.1"));

    // b's podCIDR changes: a re-routes, b re-addresses its device and rewrites its conflist.
    lab.write_node("b", "10.244.12.0/24", "192.168.81.2");
    wait_until("a routes b's new podCIDR", DEADLINE, || {
        has(&lab.ip("a", &["route", "show", "10.244.12.0/24"]), "via 10.244.12.0 dev trellis.1")
            && lab.ip("a", &["route", "show", "10.244.2.0/24"]).trim().is_empty()
    });
    wait_until("b re-addressed", DEADLINE, || {
        let a = lab.ip("b", &["addr", "show", "dev", "trellis.1"]);
        has(&a, "10.244.12.0/32") && !has(&a, "10.244.2.0/32")
    });
    let conf = lab.conf_dir("b").join("10-trellis.conflist");
    wait_until("b's conflist rewritten", DEADLINE, || {
        std::fs::read_to_string(&conf).map(|c| c.contains("10.244.12.0/24")).unwrap_or(false)
    });
    wait_until("ping over the new CIDR", t, || lab.ping("a", "10.244.12.0"));

    // b's InternalIP changes: a's FDB follows, b recreates its device with the new local
    // address and MAC.
    lab.write_node("b", "10.244.12.0/24", "192.168.81.22");
    wait_until("a's fdb follows", DEADLINE, || {
        let f = lab.bridge("a", &["fdb", "show", "dev", "trellis.1"]);
        has(&f, "0e:7e:c0:a8:51:16 dst 192.168.81.22") && !has(&f, "dst 192.168.81.2 ")
    });
    wait_until("b's device follows", DEADLINE, || {
        let l = lab.ip("b", &["-d", "link", "show", "trellis.1"]);
        has(&l, "local 192.168.81.22") && has(&l, "0e:7e:c0:a8:51:16")
    });
    wait_until("ping after the move", t, || lab.ping("a", "10.244.12.0"));
}

#[test]
fn cleanup_leaves_no_netns_behind() {
    require_root!();
    let prefix;
    {
        let mut lab = Lab::new();
        prefix = lab.prefix.clone();
        lab.two_nodes(("a", "192.168.79.1/24"), ("b", "192.168.79.2/24"));
        assert!(sh(&["ip", "netns", "list"]).contains(&prefix));
    }
    assert!(!sh(&["ip", "netns", "list"]).contains(&prefix));
}
