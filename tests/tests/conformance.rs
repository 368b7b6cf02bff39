//! CNI spec conformance of `trellis` (and `trellis-ipam` where it applies), driven through the real binaries as a
//! runtime drives them. Each check sits next to the sentence of SPEC.md (containernetworking/cni, 1.0.0/1.1.0) it
//! checks; "(convention)" marks what the reference plugins do where the spec says nothing.
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use trellis_e2e::cni::{CniCmd, CniOutput, Invocation};
use trellis_e2e::result::{self, VERSIONS};
use trellis_e2e::{conf, Bins, Fixture, Pod, TempDir};
use trellis_test_support::require_root;

const SUBNET: &str = "10.244.40.0/24";
const GATEWAY: &str = "10.244.40.1";

fn add_inv(c: &Value, pod: &Pod) -> Invocation {
    Invocation::attachment(CniCmd::Add, c, &pod.id, &pod.netns(), &pod.ifname)
}

/// A node and a trellis config for `version` on this file's subnet.
fn fixture(version: &str) -> (Fixture, Value) {
    let fx = Fixture::new().unwrap();
    let c = fx.trellis(version, SUBNET);
    (fx, c)
}

/// DEL of every pod; then the store must be empty.
fn del_to_empty(fx: &Fixture, c: &Value, pods: &[Pod]) {
    for p in pods {
        fx.node.del(c, p).unwrap_or_else(|e| panic!("DEL {}: {e:#}", p.id));
    }
    let left = fx.store().ips().unwrap();
    assert!(left.is_empty(), "DEL left allocations: {left:?}");
}

/// Global (non link-local) addresses of the pod's eth0.
fn pod_addrs(pod: &Pod) -> Vec<String> {
    pod.ns.addrs("eth0").unwrap().into_iter().filter(|a| !a.starts_with("fe80:")).collect()
}

#[test]
fn repeated_add_is_an_error_that_keeps_the_live_attachment() {
    require_root!();
    let (fx, c) = fixture("1.0.0");
    let pod = Pod::new("rep").unwrap();
    let ip = result::ipv4(&fx.node.add(&c, &pod).unwrap()).unwrap();

    // SPEC, ADD: "If an interface of the requested name already exists in the container, the CNI plugin MUST
    // return with an error."
    let out = fx.node.pod(CniCmd::Add, &c, &pod).unwrap();
    let err = out.error().unwrap_or_else(|e| panic!("second ADD: {e:#}"));
    assert!(err.msg.contains("eth0 already exists"), "{}", out.describe());
    // The failed ADD undid nothing of the first one: same address, still allocated, still reachable.
    assert_eq!(fx.store().ips().unwrap(), vec![ip], "the repeated ADD changed the store");
    assert_eq!(pod_addrs(&pod), vec![format!("{ip}/24")]);
    assert!(fx.node.ns.has_link(&pod.host_veth()).unwrap());
    assert!(pod.ns.ping(GATEWAY), "the live attachment broke");

    // SPEC: "A runtime should not call ADD twice (without an intervening DEL) for the same (CNI_CONTAINERID,
    // CNI_IFNAME) tuple." With the DEL in between, ADD works again, back to back in the same netns.
    fx.node.del(&c, &pod).unwrap();
    let again = fx.node.add(&c, &pod).unwrap_or_else(|e| panic!("ADD right after DEL: {e:#}"));
    let ip2 = result::ipv4(&again).unwrap();
    assert_eq!(fx.store().ips().unwrap(), vec![ip2]);
    assert!(pod.ns.ping(GATEWAY));
    del_to_empty(&fx, &c, &[pod]);
}

#[test]
fn a_foreign_interface_holding_the_name_is_refused_and_never_deleted() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", SUBNET);
    // A veth is the dangerous case: DEL removes a peerless pod-side veth, so a careless rollback would too.
    for kind in [&["type", "bridge"][..], &["type", "veth", "peer", "name", "foreign-peer"][..]] {
        let pod = Pod::new("foreign").unwrap();
        let mut argv = vec!["ip", "link", "add", "eth0"];
        argv.extend_from_slice(kind);
        pod.ns.run(&argv).unwrap();
        let before = pod.ns.link_details("eth0").unwrap();

        // SPEC, ADD: "If an interface of the requested name already exists in the container, the CNI plugin MUST
        // return with an error."
        let out = fx.node.pod(CniCmd::Add, &c, &pod).unwrap();
        out.error().unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
        // A failing ADD undoes only what it created: here nothing, and the foreign interface survives as it was.
        let after = pod.ns.link_details("eth0").unwrap_or_else(|e| panic!("{kind:?}: eth0 was deleted: {e:#}"));
        assert_eq!(after["ifindex"], before["ifindex"], "{kind:?}: eth0 was replaced");
        assert_eq!(after["linkinfo"]["info_kind"], before["linkinfo"]["info_kind"]);
        assert_eq!(fx.node.ns.link_names().unwrap(), vec!["lo"], "{kind:?}: the refused ADD created node links");
        assert!(fx.store().ips().unwrap().is_empty(), "{kind:?}: the refused ADD kept an address");
    }
}

/// The pair DEL leaves to its background child: host end renamed `tz` + the attachment's hash, pod end still eth0.
fn dying_pair(fx: &Fixture, pod: &Pod, owner_host_veth: &str) -> String {
    let dying = format!("tz{}", &owner_host_veth[2..]);
    fx.node
        .ns
        .run(&["ip", "link", "add", &dying, "type", "veth", "peer", "name", "eth0", "netns", pod.ns.name()])
        .unwrap();
    dying
}

#[test]
fn add_right_after_del_finishes_its_own_pair_and_no_one_elses() {
    require_root!();
    let (fx, c) = fixture("1.0.0");
    // This attachment's own pair, still being deleted: not "an interface that already exists"; ADD proceeds.
    let pod = Pod::new("dying").unwrap();
    let dying = dying_pair(&fx, &pod, &pod.host_veth());
    let r = fx.node.add(&c, &pod).unwrap_or_else(|e| panic!("ADD over our own dying pair: {e:#}"));
    assert!(!fx.node.ns.has_link(&dying).unwrap(), "the dying pair was not finished");
    assert!(pod.ns.addrs("eth0").unwrap().contains(&format!("{}/24", result::ipv4(&r).unwrap())));
    assert!(pod.ns.ping(GATEWAY));
    // Another attachment's dying pair holding our name: an existing interface, left alone.
    let other = Pod::new("other").unwrap();
    let theirs = dying_pair(&fx, &other, &trellis_e2e::veth::host_veth_name("some-other-container", "eth0"));
    let out = fx.node.pod(CniCmd::Add, &c, &other).unwrap();
    assert!(out.error().unwrap().msg.contains("already exists"), "{}", out.describe());
    assert!(fx.node.ns.has_link(&theirs).unwrap() && other.ns.has_link("eth0").unwrap(), "someone else's pair went");
    del_to_empty(&fx, &c, &[pod]);
}

/// A result of a plugin earlier in the chain, in the shape of `version`: one interface in the pod (index 0),
/// an address on it, a route and DNS.
fn upstream_result(version: &str, netns: &str) -> Value {
    let mut ip = json!({"address": "192.168.77.2/24", "gateway": "192.168.77.1", "interface": 0});
    if version.starts_with("0.") {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [{"name": "up0", "mac": "0e:00:00:00:77:02", "sandbox": netns}],
        "ips": [ip],
        "routes": [{"dst": "192.168.0.0/16", "gw": "192.168.77.1"}],
        "dns": {"nameservers": ["192.168.77.53"], "search": ["upstream.local"]}
    })
}

#[test]
fn add_with_prev_result_outputs_it_with_its_own_result_merged_for_every_version() {
    require_root!();
    let fx = Fixture::new().unwrap();
    // prevResult on ADD exists from 0.3.0 (conflists) on: every version trellis speaks.
    for v in VERSIONS {
        let pod = Pod::new("chain").unwrap();
        let mut c = fx.trellis(v, SUBNET);
        let prev = upstream_result(v, &pod.netns());
        c["prevResult"] = prev.clone();
        let r = fx.node.add(&c, &pod).unwrap_or_else(|e| panic!("{v}: {e:#}"));
        result::check_shape(&r, v).unwrap_or_else(|e| panic!("{v}: {e:#}\n{r}"));

        // SPEC, Success: "Plugins provided a prevResult key as part of their request configuration must output it
        // as their result, with any possible modifications made by that plugin included."
        assert_eq!(r["interfaces"][0], prev["interfaces"][0], "{v}: prevResult's interface is not first: {r}");
        assert_eq!(r["ips"][0], prev["ips"][0], "{v}: prevResult's address is not kept as it was: {r}");
        assert!(r["routes"].as_array().unwrap().contains(&prev["routes"][0]), "{v}: prevResult's route lost: {r}");
        assert!(result::has_route(&r, "0.0.0.0/0"), "{v}: our default route lost: {r}");
        let dns = &r["dns"];
        assert_eq!(dns["nameservers"], json!(["192.168.77.53"]), "{v}: prevResult's DNS lost: {r}");
        assert_eq!(dns["search"], json!(["upstream.local"]), "{v}");
        // Our address names our interface, whose index moved past prevResult's interfaces.
        let ifaces = result::interfaces(&r);
        assert_eq!(ifaces.len(), 4, "{v}: up0 + bridge + host veth + eth0: {r}");
        let ours = result::ips(&r).unwrap().into_iter().find(|e| e.addr.to_string().starts_with("10.244.40.")).unwrap();
        let iface = result::pod_iface(&ifaces, &ours).unwrap();
        assert_eq!(iface.name, "eth0", "{v}: our address points at {iface:?}");
        assert_eq!(iface.sandbox.as_deref(), Some(pod.netns().as_str()));

        // CHECK with the chain's result (what a runtime stores) passes; it leaves prevResult's up0 alone.
        if v != "0.3.0" && v != "0.3.1" {
            let mut check = fx.trellis(v, SUBNET);
            check["prevResult"] = r.clone();
            fx.node.pod(CniCmd::Check, &check, &pod).unwrap().ok().unwrap_or_else(|e| panic!("{v}: {e:#}"));
        }
        del_to_empty(&fx, &c, &[pod]);
    }
}

#[test]
fn unsupported_field_error_names_key_and_value() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let pod = Pod::new("unsup").unwrap();
    for (key, value) in [("vlan", json!(4042)), ("promiscMode", json!(true)), ("macspoofchk", json!(true))] {
        let mut c = fx.trellis("1.0.0", SUBNET);
        c[key] = value.clone();
        let out = fx.node.invoke(&fx.node.bins.trellis(), &add_inv(&c, &pod)).unwrap();
        let err = out.error().unwrap();
        // SPEC, error code 2: "Unsupported field in network configuration. The error message must contain the key
        // and value of the unsupported field."
        assert_eq!(err.code, 2, "{}", out.describe());
        assert!(err.msg.contains(key) && err.msg.contains(&value.to_string()), "{key}: {}", out.describe());
        assert_eq!(pod.ns.link_names().unwrap(), vec!["lo"]);
    }
    assert!(fx.store().ips().unwrap().is_empty());
}

/// A delegated IPAM plugin that logs each command it gets and answers ADD with `answer` and exit `exit`.
struct ScriptIpam {
    dir: TempDir,
}

impl ScriptIpam {
    const NAME: &'static str = "logging-ipam";

    fn new(answer: &str, exit: i32) -> ScriptIpam {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("ipam-bin").unwrap();
        let log = dir.join("calls.log");
        let script = format!(
            "#!/bin/sh\ncat >/dev/null\necho \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME\" >> '{}'\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then echo '{answer}'; exit {exit}; fi\nexit 0\n",
            log.display()
        );
        let bin = dir.join(Self::NAME);
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        ScriptIpam { dir }
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// An ADD of `c` with CNI_PATH = this plugin's dir, then the trellis binaries.
    fn add(&self, fx: &Fixture, c: &Value, pod: &Pod) -> CniOutput {
        let mut inv = add_inv(c, pod);
        inv.path = Some(format!("{}:{}", self.dir.path().display(), fx.node.cni_path()));
        fx.node.invoke(&fx.node.bins.trellis(), &inv).unwrap()
    }
}

#[test]
fn a_failed_delegated_add_is_followed_by_del_of_the_delegate() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = conf::trellis_with_ipam("1.0.0", &fx.network, json!({"type": ScriptIpam::NAME}));
    let pod = Pod::new("deleg").unwrap();

    let ipam = ScriptIpam::new(r#"{"cniVersion":"1.0.0","code":11,"msg":"store busy"}"#, 1);
    let out = ipam.add(&fx, &c, &pod);
    let err = out.error().unwrap();
    assert_eq!(err.code, 11, "the delegate's error is what the runtime sees:\n{}", out.describe());
    // SPEC, Section 4: "If, on ADD, a delegated plugin fails, the "upper" plugin should execute again with DEL
    // before returning failure."
    let want = [format!("ADD {} eth0", pod.id), format!("DEL {} eth0", pod.id)];
    assert_eq!(ipam.calls(), want, "{}", out.describe());

    // And when ADD fails after the delegate succeeded (here: a non-bridge device holds the bridge's name), the
    // address goes back through the delegate's DEL as well.
    let veth_peer = format!("{}p", conf::BRIDGE);
    let ipam =
        ScriptIpam::new(r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.41.5/24","gateway":"10.244.41.1"}]}"#, 0);
    fx.node.ns.run(&["ip", "link", "add", conf::BRIDGE, "type", "veth", "peer", "name", &veth_peer]).unwrap();
    let out = ipam.add(&fx, &c, &pod);
    let err = out.error().unwrap();
    assert!(err.text().contains("not a bridge"), "{}", out.describe());
    assert_eq!(ipam.calls(), want, "{}", out.describe());
    assert_eq!(pod.ns.link_names().unwrap(), vec!["lo"]);
}

#[test]
fn gc_accepts_the_list_as_cni_dev_attachments() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.1.0", SUBNET);
    let pods = fx.pods("gck", 2).unwrap();
    let ips: Vec<_> = pods.iter().map(|p| result::ipv4(&fx.node.add(&c, p).unwrap()).unwrap()).collect();
    // The spec-v1.1.0 text names GC's list of still valid attachments `cni.dev/attachments`; later text renamed
    // it `cni.dev/valid-attachments`, and libcni sends both (containernetworking/cni#1101). A runtime that sends
    // only the first must not be refused (nor have every attachment released).
    let mut gc = c.clone();
    gc["cni.dev/attachments"] = json!([{"containerID": pods[0].id, "ifname": "eth0"}]);
    fx.node.command(CniCmd::Gc, &gc).unwrap().ok().unwrap();
    assert_eq!(fx.store().ips().unwrap(), vec![ips[0]], "GC did not release the unlisted attachment");
    assert!(fx.node.ns.has_link(&pods[0].host_veth()).unwrap());
    assert!(!fx.node.ns.has_link(&pods[1].host_veth()).unwrap());
    // The IPAM plugin reads the same keys.
    let mut empty = c.clone();
    empty["cni.dev/attachments"] = json!([]);
    fx.node.invoke(&fx.node.bins.ipam(), &Invocation::new(CniCmd::Gc, &gc)).unwrap().ok().unwrap();
    assert_eq!(fx.store().ips().unwrap(), vec![ips[0]], "trellis-ipam's GC released a listed attachment");
    fx.node.invoke(&fx.node.bins.ipam(), &Invocation::new(CniCmd::Gc, &empty)).unwrap().ok().unwrap();
    assert!(fx.store().ips().unwrap().is_empty(), "trellis-ipam's GC ignored an empty cni.dev/attachments");
}

#[test]
fn dot_and_dot_dot_are_not_allowed_as_network_names() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let pod = Pod::new("dots").unwrap();
    for name in [".", ".."] {
        for plugin in [fx.node.bins.trellis(), fx.node.bins.ipam()] {
            let mut c = fx.trellis("1.0.0", SUBNET);
            c["name"] = json!(name);
            let out = fx.node.invoke(&plugin, &add_inv(&c, &pod)).unwrap();
            let err = out.error().unwrap();
            // SPEC, network configuration: the name "must be unique across all network configurations on a host"
            // and becomes a directory of the IPAM store, so "." and ".." cannot be names (code 7, invalid config).
            assert_eq!(err.code, 7, "{}", out.describe());
            assert!(err.msg.contains("is not allowed"), "{name}: say the name is not allowed:\n{}", out.describe());
            assert!(!err.msg.contains("letters"), "{name}: not a character problem:\n{}", out.describe());
        }
    }
    assert_eq!(pod.ns.link_names().unwrap(), vec!["lo"]);
}

fn check_drift(fx: &Fixture, c: &Value, prev: &Value, pod: &Pod, what: &str) {
    let mut check = c.clone();
    check["prevResult"] = prev.clone();
    let out = fx.node.pod(CniCmd::Check, &check, pod).unwrap();
    let err = out.error().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    // SPEC, CHECK: "The plugin should return an error if a resource included in the CNI Result type (interface,
    // address or route) was created by the plugin, and is listed in prevResult, but is missing or in an invalid
    // state." README: drift is code 120 with what differs.
    assert_eq!(err.code, 120, "{what}:\n{}", out.describe());
    assert!(err.msg.contains(what), "{what}:\n{}", out.describe());
}

#[test]
fn check_reports_address_route_and_mtu_drift_as_code_120() {
    require_root!();
    let fx = Fixture::new().unwrap();
    // No "mtu" in the config: the MTU is still compared, against the default ADD used.
    let c = fx.trellis("1.0.0", SUBNET);
    assert!(c.get("mtu").is_none());
    let pods = fx.pods("drift", 3).unwrap();
    let results: Vec<Value> = pods.iter().map(|p| fx.node.add(&c, p).unwrap()).collect();
    for (p, r) in pods.iter().zip(&results) {
        let mut check = c.clone();
        check["prevResult"] = r.clone();
        fx.node.pod(CniCmd::Check, &check, p).unwrap().ok().unwrap();
    }
    let ip = result::ipv4(&results[0]).unwrap();
    pods[0].ns.run(&["ip", "addr", "del", &format!("{ip}/24"), "dev", "eth0"]).unwrap();
    check_drift(&fx, &c, &results[0], &pods[0], &format!("address {ip}/24 is missing"));
    pods[1].ns.run(&["ip", "route", "del", "default"]).unwrap();
    check_drift(&fx, &c, &results[1], &pods[1], "route 0.0.0.0/0");
    pods[2].ns.run(&["ip", "link", "set", "eth0", "mtu", "1400"]).unwrap();
    check_drift(&fx, &c, &results[2], &pods[2], "MTU 1400");
}

/// `trellis` / `trellis-ipam` run by hand, outside any netns: no root needed.
fn by_hand(bin: &std::path::Path, args: &[&str], cni_command: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_clear().stdin(Stdio::null());
    if let Some(c) = cni_command {
        cmd.env("CNI_COMMAND", c);
    }
    cmd.output().unwrap()
}

#[test]
fn run_by_hand_both_plugins_print_the_about_line_and_exit_0() {
    let bins = Bins::locate().unwrap();
    for (bin, name) in [(bins.trellis(), "trellis"), (bins.ipam(), "trellis-ipam")] {
        let about = format!(
            "CNI {name} plugin v{}\nCNI protocol versions supported: {}\n",
            env!("CARGO_PKG_VERSION"),
            VERSIONS.join(", ")
        );
        // (convention) The reference plugins' skel: with CNI_COMMAND unset it prints the about text on stderr and
        // exits 0 rather than answering with an error.
        for cni_command in [None, Some("")] {
            let out = by_hand(&bin, &[], cni_command);
            assert_eq!(out.status.code(), Some(0), "{name} {cni_command:?}: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stderr), about, "{name}");
            assert!(out.stdout.is_empty(), "{name}: a runtime reading stdout must not see a result: {out:?}");
        }
        // Asked for with a flag, it is the output.
        for flag in ["--version", "--help"] {
            let out = by_hand(&bin, &[flag], Some("ADD"));
            assert_eq!(out.status.code(), Some(0), "{name} {flag}: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), about, "{name} {flag}");
        }
        // A real command is still a command: ADD with nothing else set is a code-4 error JSON.
        let out = by_hand(&bin, &[], Some("ADD"));
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        let err = trellis_e2e::CniError::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(err.code, 4, "{name}");
    }
}
