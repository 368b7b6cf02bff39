//! Bad input: every case answers with CNI error JSON (non-zero exit) with the spec's code, and creates nothing.
use serde_json::{json, Value};
use trellis_e2e::cni::{CniCmd, CniError, CniOutput, Invocation};
use trellis_e2e::{conf, require_root, Fixture, Pod};

const SUBNET: &str = "10.244.3.0/24";

/// Run `inv` with `trellis` in the node; it must fail with a CNI error (and `code` when given) and leave the node
/// and the pod netns with nothing but `lo`, and the store without IP files.
fn rejected(fx: &Fixture, pod: &Pod, inv: &Invocation, code: Option<u64>) -> CniError {
    let out = fx.node.invoke(&fx.node.bins.trellis(), inv).unwrap();
    check_rejected(fx, pod, &out, code)
}

fn check_rejected(fx: &Fixture, pod: &Pod, out: &CniOutput, code: Option<u64>) -> CniError {
    let err = out.error().unwrap_or_else(|e| panic!("{e:#}"));
    if let Some(code) = code {
        assert_eq!(err.code, code, "wrong error code:\n{}", out.describe());
    }
    assert_eq!(
        fx.node.ns.link_names().unwrap(),
        vec!["lo"],
        "node links created by a rejected call:\n{}",
        out.describe()
    );
    assert_eq!(pod.ns.link_names().unwrap(), vec!["lo"], "pod links created by a rejected call");
    assert!(fx.store().ips().unwrap().is_empty(), "IP files created by a rejected call");
    err
}

fn setup() -> (Fixture, Pod, Value) {
    let fx = Fixture::new().unwrap();
    let pod = Pod::new("bad").unwrap();
    let c = fx.trellis("1.0.0", SUBNET);
    (fx, pod, c)
}

fn add(c: &Value, pod: &Pod) -> Invocation {
    Invocation::attachment(CniCmd::Add, c, &pod.id, &pod.netns(), &pod.ifname)
}

#[test]
fn malformed_json_is_decode_error() {
    require_root!();
    let (fx, pod, c) = setup();
    let mut inv = add(&c, &pod);
    inv.stdin = br#"{"cniVersion": "1.0.0", "name": "x", "type": "trellis", "#.to_vec();
    rejected(&fx, &pod, &inv, Some(6));
}

#[test]
fn unknown_cni_version_is_incompatible() {
    require_root!();
    let (fx, pod, mut c) = setup();
    c["cniVersion"] = json!("9.9.9");
    rejected(&fx, &pod, &add(&c, &pod), Some(1));
}

/// Removes one variable from an invocation.
type Unset = fn(&mut Invocation);

#[test]
fn missing_environment_is_invalid_env() {
    require_root!();
    let (fx, pod, c) = setup();
    let cases: [(&str, Unset); 3] = [
        ("CNI_CONTAINERID", |i| i.container_id = None),
        ("CNI_IFNAME", |i| i.ifname = None),
        ("CNI_NETNS", |i| i.netns = None),
    ];
    for (var, unset) in cases {
        let mut inv = add(&c, &pod);
        unset(&mut inv);
        let err = rejected(&fx, &pod, &inv, Some(4));
        assert!(err.text().contains(var), "error for missing {var} should name it: {err:?}");
    }
}

/// No CNI_COMMAND is a person running the plugin by hand: the reference plugins' skel prints its about text on
/// stderr and exits 0; nothing is created and stdout stays empty (a runtime reads no result from it).
#[test]
fn missing_cni_command_prints_the_about_text_and_touches_nothing() {
    require_root!();
    let (fx, pod, c) = setup();
    let mut inv = add(&c, &pod);
    inv.command = None;
    let out = fx.node.invoke(&fx.node.bins.trellis(), &inv).unwrap();
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert!(out.stdout.is_empty(), "{}", out.describe());
    assert!(out.stderr.starts_with("CNI trellis plugin v"), "{}", out.describe());
    assert_eq!(fx.node.ns.link_names().unwrap(), vec!["lo"]);
    assert_eq!(pod.ns.link_names().unwrap(), vec!["lo"]);
    assert!(fx.store().ips().unwrap().is_empty());
}

#[test]
fn overlapping_ranges_are_invalid_config() {
    require_root!();
    let (fx, pod, mut c) = setup();
    c["ipam"]["ranges"] = json!([[{"subnet": "10.244.0.0/16"}], [{"subnet": "10.244.3.0/24"}]]);
    rejected(&fx, &pod, &add(&c, &pod), Some(7));
}

#[test]
fn netns_that_is_not_a_netns_is_rejected_clearly() {
    require_root!();
    let (fx, pod, c) = setup();
    let file = fx.data.join("not-a-netns");
    std::fs::write(&file, "plain file").unwrap();
    let mut inv = add(&c, &pod);
    inv.netns = Some(file.display().to_string());
    let err = rejected(&fx, &pod, &inv, Some(4));
    let text = err.text().to_lowercase();
    assert!(text.contains("netns") || text.contains("namespace"), "msg should say the netns is bad: {err:?}");
}

/// A netns path that does not exist means the container is gone: code 3, which tells the runtime that no
/// cleanup is needed.
#[test]
fn netns_that_does_not_exist_is_unknown_container() {
    require_root!();
    let (fx, pod, c) = setup();
    let mut inv = add(&c, &pod);
    inv.netns = Some(fx.data.join("no-such-netns").display().to_string());
    let err = rejected(&fx, &pod, &inv, Some(3));
    assert!(err.text().contains("does not exist"), "{err:?}");
}

#[test]
fn exhausted_range_fails_naming_the_range_and_creates_nothing_new() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let r = conf::range("10.244.9.0/29", Some("10.244.9.2"), Some("10.244.9.3"), Some("10.244.9.1"));
    let c = conf::trellis_with_ipam("1.0.0", &fx.network, conf::trellis_ipam(fx.data.path(), r));
    let pods = fx.pods("ex", 3).unwrap();
    fx.node.add(&c, &pods[0]).unwrap();
    fx.node.add(&c, &pods[1]).unwrap();
    let links_before = fx.node.ns.link_names().unwrap();

    let out = fx.node.pod(CniCmd::Add, &c, &pods[2]).unwrap();
    let err = out.error().unwrap();
    assert_eq!(err.code, 110, "README: 110 no addresses left:\n{}", out.describe());
    let text = err.text();
    assert!(
        text.contains("10.244.9.0/29") || text.contains("10.244.9.2") || text.contains("10.244.9.3"),
        "exhaustion error should name the range:\n{}",
        out.describe()
    );
    assert_eq!(fx.node.ns.link_names().unwrap(), links_before, "failed ADD left links behind");
    assert_eq!(pods[2].ns.link_names().unwrap(), vec!["lo"], "failed ADD left a pod interface");
    assert_eq!(fx.store().ips().unwrap().len(), 2);
}

/// Unknown fields are ignored (runtimes and conflists add keys of their own, e.g. `runtimeConfig`, `args`,
/// capabilities); only the reference bridge's fields that would change the pod are refused with code 2.
#[test]
fn unknown_field_is_ignored() {
    require_root!();
    let (fx, pod, mut c) = setup();
    c["vlanTrunk"] = json!([{"id": 42}]);
    c["someRuntimeKey"] = json!({"nested": true});
    let out = fx.node.invoke(&fx.node.bins.trellis(), &add(&c, &pod)).unwrap();
    let r = out.result().unwrap_or_else(|e| panic!("an unknown field must be ignored: {e:#}"));
    trellis_e2e::result::check_shape(&r, "1.0.0").unwrap();
    let ip = trellis_e2e::result::ipv4(&r).unwrap();
    assert_eq!(fx.store().ips().unwrap(), vec![ip]);
    assert!(pod.ns.addrs("eth0").unwrap().contains(&format!("{ip}/24")));
    fx.node.del(&c, &pod).unwrap();
    assert!(fx.store().ips().unwrap().is_empty());
}

#[test]
fn invalid_ifname_is_rejected() {
    require_root!();
    let (fx, pod, c) = setup();
    let mut inv = add(&c, &pod);
    inv.ifname = Some("this-name-is-way-too-long".into());
    let err = rejected(&fx, &pod, &inv, Some(4));
    assert!(
        err.text().to_lowercase().contains("ifname")
            || err.text().contains("CNI_IFNAME")
            || err.text().contains("interface name"),
        "{err:?}"
    );
}

#[test]
fn ip_masq_without_cluster_cidr_is_invalid_config() {
    require_root!();
    let (fx, pod, mut c) = setup();
    c["ipMasq"] = json!(true);
    let err = rejected(&fx, &pod, &add(&c, &pod), Some(7));
    assert!(err.text().contains("clusterCIDR"), "{err:?}");
}
