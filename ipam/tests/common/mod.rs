//! Drives the built `trellis-ipam` binary exactly as a runtime does.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis-ipam");

pub fn conf(version: &str, data_dir: &Path, ranges: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": "testnet",
        "type": "bridge",
        "ipam": {"type": "trellis-ipam", "ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data_dir},
    })
}

pub fn spawn_plugin(bin: &str, cmd: &str, conf: &Value, id: &str, ifname: &str) -> Child {
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/var/run/netns/unused")
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    let mut stdin = child.stdin.take().unwrap();
    // A killed child may close its stdin early; that is fine.
    let _ = stdin.write_all(conf.to_string().as_bytes());
    drop(stdin);
    child
}

pub fn spawn(cmd: &str, conf: &Value, id: &str, ifname: &str) -> Child {
    spawn_plugin(BIN, cmd, conf, id, ifname)
}

pub fn run(cmd: &str, conf: &Value, id: &str, ifname: &str) -> Output {
    spawn(cmd, conf, id, ifname).wait_with_output().unwrap()
}

/// stdout as JSON (Null if empty).
pub fn json_out(o: &Output) -> Value {
    if o.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// Runs and asserts success; returns stdout JSON.
pub fn ok(cmd: &str, conf: &Value, id: &str, ifname: &str) -> Value {
    let o = run(cmd, conf, id, ifname);
    assert!(
        o.status.success(),
        "{cmd} {id}/{ifname} failed: {} {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    json_out(&o)
}

/// Runs and asserts failure; returns the CNI error code.
pub fn err_code(cmd: &str, conf: &Value, id: &str, ifname: &str) -> u64 {
    let o = run(cmd, conf, id, ifname);
    assert!(!o.status.success(), "{cmd} unexpectedly succeeded: {}", String::from_utf8_lossy(&o.stdout));
    let v = json_out(&o);
    assert!(v["msg"].is_string(), "error JSON has msg: {v}");
    v["code"].as_u64().unwrap_or_else(|| panic!("error JSON without code: {v}"))
}

pub fn ips_of(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .map(|a| {
            a.iter().map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap()).collect()
        })
        .unwrap_or_default()
}

/// Every file of the network's store: name -> content.
pub fn store_files(data_dir: &Path) -> BTreeMap<String, String> {
    let dir: PathBuf = data_dir.join("testnet");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    rd.map(|e| {
        let e = e.unwrap();
        (e.file_name().into_string().unwrap(), std::fs::read_to_string(e.path()).unwrap())
    })
    .collect()
}

/// The lease files only (named by an IP).
pub fn leases(data_dir: &Path) -> BTreeMap<IpAddr, String> {
    store_files(data_dir).into_iter().filter_map(|(k, v)| k.parse::<IpAddr>().ok().map(|ip| (ip, v))).collect()
}

/// The randomised tests' PRNG: seed printed, `TRELLIS_SEED` replays a run.
#[allow(unused_imports)]
pub use trellis_test_support::chaos::{Ended, Rng, Tally};
