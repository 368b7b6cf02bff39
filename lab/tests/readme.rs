//! README lines of the lab that no other test held to: `up --topology FILE` builds what the file describes,
//! `delete service/web` takes the Service's EndpointSlice with it, and commands refuse to guess when several labs
//! are up. Privileged; every lab is small (2 nodes or fewer, one pod per node) and goes `down` in a guard.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{lab_cmd, serial, text, Lab};
use trellis_lab::state::LabState;

/// Two nodes, one pinned, one pod on each, in two namespaces, on ports other than the default.
const TWO_NODES: &str = "\
name: fromfile
mode: host-gw
nodes:
  - name: alpha
    podCIDR: 10.244.9.0/24
  - name: beta
pods:
  - {name: front, namespace: default, node: alpha, labels: {app: front}, ports: [9090]}
  - {name: back, namespace: shop, node: beta, labels: {app: back, tier: data}, ports: [{port: 7070, name: grpc}]}
";

/// The smallest lab: one node, one pod.
const ONE_NODE: &str = "name: tiny\nmode: host-gw\nnodes: [{name: solo}]\npods: [{name: p1, node: solo}]\n";

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

fn yaml(path: &Path) -> serde_json::Value {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&t).unwrap()
}

fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// `up --topology FILE` of a file with `text` in a fresh temp dir (kept for more files), as lab `tag`.
fn up_from_file(tag: &str, text: &str) -> (tempfile::TempDir, Lab) {
    let dir = tempfile::tempdir().unwrap();
    let topo = write(dir.path(), "topo.yaml", text);
    let lab = Lab::up(tag, &["--topology", topo.to_str().unwrap()]);
    (dir, lab)
}

#[test]
fn up_with_a_topology_file_builds_what_it_describes() {
    trellis_test_support::require_root!();
    let _s = serial();
    let (_dir, lab) = up_from_file("tf", TWO_NODES);
    let st = LabState::load(&lab.name).unwrap();
    assert!(st.ready);
    assert_eq!(st.plan.mode.as_str(), "host-gw");
    let nodes: Vec<&str> = st.plan.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nodes, ["alpha", "beta"]);
    let pods: Vec<(&str, &str, &str)> =
        st.plan.pods.iter().map(|p| (p.namespace.as_str(), p.name.as_str(), p.node.as_str())).collect();
    assert_eq!(pods, [("default", "front", "alpha"), ("shop", "back", "beta")]);
    let alpha = st.plan.node("alpha").unwrap();
    let beta = st.plan.node("beta").unwrap();
    assert_eq!(alpha.pod_cidr.to_string(), "10.244.9.0/24", "the pin holds");
    assert_ne!(beta.pod_cidr, alpha.pod_cidr);

    // Every node and pod is a netns of this lab, and each pod's eth0 holds an IP of its node's podCIDR.
    let netns = netns_list();
    for n in ["node-alpha", "node-beta", "pod-default_front", "pod-shop_back"] {
        let want = format!("tl-{}-{n}", lab.name);
        assert!(netns.contains(&want), "{want} missing: {netns:?}");
    }
    for (key, node) in [("default/front", alpha), ("shop/back", beta)] {
        let ip = st.pod_ips[key];
        assert!(node.pod_cidr.contains(&ip), "{key} {ip} not in {}", node.pod_cidr);
        let pod = st.pod(key).unwrap();
        let o =
            Command::new("ip").args(["-n", &pod.netns, "-4", "-o", "addr", "show", "dev", "eth0"]).output().unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!(" {ip}/")), "{key}: {o:?}");
    }

    // The control plane holds the file's objects: nodes with their podCIDRs, both namespaces, pods with labels.
    let m = lab.state_dir().join("manifests");
    assert_eq!(yaml(&m.join("node_alpha.yaml"))["spec"]["podCIDR"], "10.244.9.0/24");
    assert_eq!(yaml(&m.join("node_beta.yaml"))["spec"]["podCIDR"], beta.pod_cidr.to_string());
    assert!(m.join("namespace_shop.yaml").exists());
    let back = yaml(&m.join("pod_shop_back.yaml"));
    assert_eq!(back["metadata"]["labels"]["tier"], "data");
    assert_eq!(back["spec"]["nodeName"], "beta");
    assert_eq!(back["status"]["podIP"], st.pod_ips["shop/back"].to_string());

    // The pods serve the file's ports, across nodes.
    let o = lab.run("probe", &["front", "back", "7070", "--timeout-ms", "3000"]);
    assert!(o.status.success(), "{}\n{}", text(&o), lab.logs());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "back");
    let o = lab.run("probe", &["back", "front", "9090", "--proto", "udp", "--timeout-ms", "3000"]);
    assert!(o.status.success(), "{}\n{}", text(&o), lab.logs());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "front");
    let o = lab.run("status", &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("alpha") && out.contains("shop/back") && out.contains("10.244.9.0/24"), "{out}");
    // `status` only reads: it runs without root too.
    let o = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", common::LAB, "status", "--name", &lab.name])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), out, "status as nobody differs from status as root");
}

#[test]
fn delete_service_removes_the_service_and_its_endpoint_slice() {
    trellis_test_support::require_root!();
    let _s = serial();
    let (dir, lab) = up_from_file("ds", TWO_NODES);
    let svcs = write(
        dir.path(),
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: front}\n  ports: [{port: 80, targetPort: 9090}]\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec:\n  selector: {app: front}\n  ports: [{port: 81, targetPort: 9090}]\n",
    );
    let o = lab.run("apply", &[svcs.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let m = lab.state_dir().join("manifests");
    let files = ["service_default_web.yaml", "endpointslice_default_web-lab.yaml"];
    let others = ["service_default_other.yaml", "endpointslice_default_other-lab.yaml"];
    for f in files.iter().chain(&others) {
        assert!(m.join(f).exists(), "{f} missing after apply");
    }

    let o = lab.run("delete", &["service/web"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("deleted service_default_web.yaml"), "{}", text(&o));
    for f in files {
        assert!(!m.join(f).exists(), "{f} still there after delete service/web");
    }
    for f in others {
        assert!(m.join(f).exists(), "{f} of another Service went too");
    }
    let slice = yaml(&m.join(others[1]));
    let st = LabState::load(&lab.name).unwrap();
    assert_eq!(slice["endpoints"][0]["addresses"][0], st.pod_ips["default/front"].to_string());

    // Gone is gone: a second delete says so and fails.
    let o = lab.run("delete", &["service/web"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such object in the lab"), "{}", text(&o));
}

#[test]
fn commands_refuse_to_guess_when_several_labs_are_up() {
    trellis_test_support::require_root!();
    let _s = serial();
    let (_da, a) = up_from_file("ga", ONE_NODE);
    let (_db, b) = up_from_file("gb", ONE_NODE);
    for args in [vec!["status"], vec!["check"], vec!["exec", "p1", "--", "true"], vec!["down"]] {
        let o = lab_cmd(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(err.contains("several labs are up (") && err.contains("pass --name"), "{args:?}: {}", text(&o));
        assert!(err.contains(&a.name) && err.contains(&b.name), "{args:?} must name both labs: {}", text(&o));
    }
    // Nothing was guessed: both labs are whole, and --name picks one.
    for lab in [&a, &b] {
        let st = LabState::load(&lab.name).unwrap();
        assert!(st.ready && st.pod_ips.contains_key("default/p1"), "{}: {st:?}", lab.name);
        let o = lab.run("status", &[]);
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("lab {} ", lab.name)), "{}", text(&o));
    }
}
