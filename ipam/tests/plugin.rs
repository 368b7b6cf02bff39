//! The `trellis-ipam` binary speaks CNI: results per version, error JSON with the spec's codes,
//! every command, and a store shared with the reference host-local plugin.

mod common;
use common::*;
use serde_json::json;
use std::net::IpAddr;
use std::path::Path;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn add_result_has_the_shape_of_each_version() {
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let tmp = tempfile::tempdir().unwrap();
        let c = conf(
            v,
            tmp.path(),
            json!([[{"subnet": "10.70.0.0/24", "gateway": "10.70.0.254"}], [{"subnet": "fd00:70::/64"}]]),
        );
        let r = ok("ADD", &c, "c1", "eth0");
        assert_eq!(r["cniVersion"], v);
        assert_eq!(r["ips"][0]["address"], "10.70.0.1/24");
        assert_eq!(r["ips"][0]["gateway"], "10.70.0.254");
        assert_eq!(r["ips"][1]["address"], "fd00:70::2/64");
        assert_eq!(r["ips"][1]["gateway"], "fd00:70::1");
        assert_eq!(r["ips"][0].get("version").is_some(), v.starts_with("0."), "{v}: {r}");
        assert!(r["ips"][0].get("interface").is_none(), "IPAM results name no interface");
        assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}]));
        assert!(r["dns"].is_object());
        // Repeated ADD is idempotent.
        assert_eq!(ok("ADD", &c, "c1", "eth0"), r);
        assert_eq!(leases(tmp.path()).len(), 2);
    }
}

#[test]
fn del_check_and_missing_del() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", tmp.path(), json!([[{"subnet": "10.71.0.0/24"}]]));
    let r = ok("ADD", &c, "c1", "eth0");
    let mut check = c.clone();
    check["prevResult"] = r.clone();
    assert_eq!(ok("CHECK", &check, "c1", "eth0"), serde_json::Value::Null);
    // CHECK for an attachment that holds nothing fails.
    assert_eq!(err_code("CHECK", &check, "c2", "eth0"), 999);
    // A prevResult address we did not give is reported.
    let mut wrong = check.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.71.0.77/24");
    assert_eq!(err_code("CHECK", &wrong, "c1", "eth0"), 999);
    ok("DEL", &c, "c1", "eth0");
    assert!(leases(tmp.path()).is_empty());
    assert_eq!(err_code("CHECK", &check, "c1", "eth0"), 999);
    // DEL of something never added is success.
    ok("DEL", &c, "c1", "eth0");
    ok("DEL", &c, "never", "eth0");
    // CHECK did not exist before 0.4.0.
    let old = conf("0.3.1", tmp.path(), json!([[{"subnet": "10.71.0.0/24"}]]));
    assert_eq!(err_code("CHECK", &old, "c1", "eth0"), 1);
}

#[test]
fn status_and_exhaustion() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.1.0", tmp.path(), json!([[{"subnet": "10.72.0.0/30"}]]));
    ok("STATUS", &c, "", "");
    ok("ADD", &c, "c1", "eth0"); // the only address: .2
    assert_eq!(err_code("ADD", &c, "c2", "eth0"), 110);
    assert_eq!(err_code("STATUS", &c, "", ""), 50);
    ok("DEL", &c, "c1", "eth0");
    ok("STATUS", &c, "", "");
}

#[test]
fn gc_releases_all_but_valid_attachments() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.1.0", tmp.path(), json!([[{"subnet": "10.73.0.0/24"}]]));
    for id in ["a", "b", "c"] {
        ok("ADD", &c, id, "eth0");
    }
    // A crash-leaked reservation with no owner.
    std::fs::write(tmp.path().join("testnet/10.73.0.200"), "").unwrap();
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "b", "ifname": "eth0"}]);
    ok("GC", &gc, "", "");
    let left: Vec<IpAddr> = leases(tmp.path()).into_keys().collect();
    assert_eq!(left, vec![ip("10.73.0.3")]);
    // GC without the list is refused rather than wiping the store.
    assert_eq!(err_code("GC", &c, "", ""), 7);
    assert_eq!(leases(tmp.path()).len(), 1);
}

#[test]
fn version_answer() {
    let v = ok("VERSION", &json!({"cniVersion": "1.0.0"}), "", "");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["supportedVersions"].as_array().unwrap().iter().any(|x| x == "0.3.1"));
}

#[test]
fn bad_input_gives_error_json_with_spec_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let good = conf("1.0.0", tmp.path(), json!([[{"subnet": "10.74.0.0/24"}]]));
    // Invalid config: overlapping range sets.
    let bad = conf("1.0.0", tmp.path(), json!([[{"subnet": "10.74.0.0/24"}], [{"subnet": "10.74.0.0/25"}]]));
    assert_eq!(err_code("ADD", &bad, "c1", "eth0"), 7);
    let mut no_ipam = good.clone();
    no_ipam.as_object_mut().unwrap().remove("ipam");
    assert_eq!(err_code("ADD", &no_ipam, "c1", "eth0"), 7);
    // Unsupported version.
    let mut v = good.clone();
    v["cniVersion"] = json!("0.2.0");
    assert_eq!(err_code("ADD", &v, "c1", "eth0"), 1);
    // Missing CNI_CONTAINERID / bad ifname.
    assert_eq!(err_code("ADD", &good, "", "eth0"), 4);
    assert_eq!(err_code("ADD", &good, "c1", "bad/name"), 4);
    // Not JSON.
    let o = {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut ch = Command::new(BIN)
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", "/x")
            .env("CNI_IFNAME", "eth0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        ch.stdin.take().unwrap().write_all(b"{nope").unwrap();
        ch.wait_with_output().unwrap()
    };
    assert!(!o.status.success());
    assert_eq!(json_out(&o)["code"], 6);
    assert!(leases(tmp.path()).is_empty());
}

#[test]
fn dns_from_resolv_conf() {
    let tmp = tempfile::tempdir().unwrap();
    let rc = tmp.path().join("resolv.conf");
    std::fs::write(&rc, "nameserver 10.96.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n").unwrap();
    let mut c = conf("1.0.0", tmp.path(), json!([[{"subnet": "10.75.0.0/24"}]]));
    c["ipam"]["resolvConf"] = json!(rc);
    let r = ok("ADD", &c, "c1", "eth0");
    assert_eq!(
        r["dns"],
        json!({"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"], "options": ["ndots:5"]})
    );
}

// ---- interoperability with the reference host-local plugin ---------------------------------

fn host_local_conf(data_dir: &Path) -> serde_json::Value {
    // host-local in this image speaks up to 1.0.0; the ipam "type" is ignored by both plugins.
    let mut c = conf("1.0.0", data_dir, json!([[{"subnet": "10.76.0.0/24"}], [{"subnet": "fd00:76::/64"}]]));
    c["ipam"]["type"] = json!("host-local");
    c
}

fn host_local(cmd: &str, c: &serde_json::Value, id: &str) -> serde_json::Value {
    let o = spawn_plugin(HOST_LOCAL, cmd, c, id, "eth0").wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "host-local {cmd}: {} {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    json_out(&o)
}

#[test]
fn shares_one_store_with_host_local() {
    trellis_test_support::require_tool!(HOST_LOCAL);
    let tmp = tempfile::tempdir().unwrap();
    let c = host_local_conf(tmp.path());
    // Alternate plugins: round-robin continues across them and nothing is handed out twice.
    let mut got = Vec::new();
    for i in 0..6 {
        let id = format!("c{i}");
        let r = if i % 2 == 0 { host_local("ADD", &c, &id) } else { ok("ADD", &c, &id, "eth0") };
        got.push(ips_of(&r));
    }
    let v4: Vec<IpAddr> = got.iter().map(|v| v[0]).collect();
    assert_eq!(v4, ["10.76.0.2", "10.76.0.3", "10.76.0.4", "10.76.0.5", "10.76.0.6", "10.76.0.7"].map(ip).to_vec());
    let v6: Vec<IpAddr> = got.iter().map(|v| v[1]).collect();
    assert_eq!(
        v6,
        ["fd00:76::2", "fd00:76::3", "fd00:76::4", "fd00:76::5", "fd00:76::6", "fd00:76::7"].map(ip).to_vec()
    );
    // Files are byte-identical whichever plugin wrote them.
    let l = leases(tmp.path());
    for (i, ips) in got.iter().enumerate() {
        for a in ips {
            assert_eq!(l[a], format!("c{i}\r\neth0"));
        }
    }
    // Each plugin releases the other's leases.
    ok("DEL", &c, "c0", "eth0");
    host_local("DEL", &c, "c1");
    let left: Vec<IpAddr> = leases(tmp.path()).into_keys().filter(|a| a.is_ipv4()).collect();
    assert_eq!(left, ["10.76.0.4", "10.76.0.5", "10.76.0.6", "10.76.0.7"].map(ip).to_vec());
    // CHECK by host-local of a trellis-ipam lease.
    let mut check = c.clone();
    check["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.76.0.6/24"}]});
    host_local("CHECK", &check, "c3");
}

#[test]
fn requested_addresses_from_cni_args_args_and_runtime_config() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", tmp.path(), json!([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd00:77::/64"}]]));
    let add_with_args = |id: &str, cni_args: &str, conf: &serde_json::Value| {
        let mut ch = Command::new(BIN)
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/x")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", cni_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        ch.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        ch.wait_with_output().unwrap()
    };
    let o = add_with_args("c1", "IgnoreUnknown=1;IP=10.77.0.50,fd00:77::50", &c);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(ips_of(&json_out(&o)), vec![ip("10.77.0.50"), ip("fd00:77::50")]);
    // The same address for someone else: error JSON, nothing reserved.
    let o = add_with_args("c2", "IP=10.77.0.50", &c);
    assert!(!o.status.success());
    assert_eq!(json_out(&o)["code"], 999);
    let mut rc = c.clone();
    rc["runtimeConfig"] = json!({"ips": ["10.77.0.60/24"]});
    assert_eq!(ips_of(&ok("ADD", &rc, "c3", "eth0"))[0], ip("10.77.0.60"));
    let mut args = c.clone();
    args["args"] = json!({"cni": {"ips": ["fd00:77::70"]}});
    assert_eq!(ips_of(&ok("ADD", &args, "c4", "eth0"))[1], ip("fd00:77::70"));
    // Outside every range: a bad argument.
    let o = add_with_args("c5", "IP=192.168.0.1", &c);
    assert_eq!(json_out(&o)["code"], 4);
    assert_eq!(leases(tmp.path()).len(), 6);
}

#[test]
fn unreadable_resolv_conf_fails_before_reserving() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = conf("1.0.0", tmp.path(), json!([[{"subnet": "10.78.0.0/24"}]]));
    c["ipam"]["resolvConf"] = json!(tmp.path().join("missing.conf"));
    assert_eq!(err_code("ADD", &c, "c1", "eth0"), 5);
    assert!(leases(tmp.path()).is_empty());
}
