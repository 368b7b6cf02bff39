//! Driving CNI plugins the way a container runtime does: each plugin of the conflist in order, `CNI_*` in the
//! environment, the plugin's config on stdin with `name`, `cniVersion` and `prevResult` injected.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{LabError, Result};

/// Longest a single plugin invocation may take.
pub const PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: &'static str,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// K8S_POD_NAMESPACE / K8S_POD_NAME like kubelet passes them.
    pub pod_namespace: String,
    pub pod_name: String,
    /// Searched in order for the plugin binaries.
    pub cni_path: Vec<PathBuf>,
}

impl Invocation {
    pub fn env(&self) -> Vec<(String, String)> {
        let path: Vec<String> = self.cni_path.iter().map(|p| p.display().to_string()).collect();
        vec![
            ("CNI_COMMAND".into(), self.command.into()),
            ("CNI_CONTAINERID".into(), self.container_id.clone()),
            ("CNI_NETNS".into(), self.netns.display().to_string()),
            ("CNI_IFNAME".into(), self.ifname.clone()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    self.pod_namespace, self.pod_name, self.container_id
                ),
            ),
            ("CNI_PATH".into(), path.join(":")),
        ]
    }
}

/// The plugin list of a conflist (or a single plugin config, as a one-element list).
pub fn plugins(conflist: &Value) -> Result<Vec<Value>> {
    let bad = |r: &str| LabError::Cni { plugin: "conflist".into(), command: "parse".into(), reason: r.into() };
    if let Some(list) = conflist.get("plugins") {
        let list = list.as_array().ok_or_else(|| bad("plugins is not a list"))?;
        if list.is_empty() {
            return Err(bad("plugins is empty"));
        }
        for p in list {
            p.get("type").and_then(Value::as_str).ok_or_else(|| bad("a plugin has no type"))?;
        }
        Ok(list.clone())
    } else if conflist.get("type").and_then(Value::as_str).is_some() {
        Ok(vec![conflist.clone()])
    } else {
        Err(bad("neither plugins nor type"))
    }
}

/// stdin for plugin `plugin` of the list: the network's name and version win, prevResult chains.
pub fn plugin_config(conflist: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut c = plugin.clone();
    if let Some(obj) = c.as_object_mut() {
        for key in ["name", "cniVersion"] {
            if let Some(v) = conflist.get(key) {
                obj.insert(key.into(), v.clone());
            }
        }
        match prev {
            Some(p) => {
                obj.insert("prevResult".into(), p.clone());
            }
            None => {
                obj.remove("prevResult");
            }
        }
    }
    c
}

/// The first IPv4 address of a result (`ips` in 0.3.0+, `ip4.ip` in 0.2.0).
pub fn result_ipv4(result: &Value) -> Option<Ipv4Addr> {
    let from_cidr = |s: &str| s.split('/').next().and_then(|a| a.parse::<Ipv4Addr>().ok());
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        return ips.iter().filter_map(|ip| ip.get("address").and_then(Value::as_str)).find_map(from_cidr);
    }
    result.pointer("/ip4/ip").and_then(Value::as_str).and_then(from_cidr)
}

pub fn find_plugin(kind: &str, cni_path: &[PathBuf]) -> Result<PathBuf> {
    if kind.contains('/') || kind.is_empty() {
        return Err(LabError::Cni {
            plugin: kind.into(),
            command: "find".into(),
            reason: "plugin type must be a plain name".into(),
        });
    }
    cni_path.iter().map(|d| d.join(kind)).find(|p| p.is_file()).ok_or_else(|| LabError::Cni {
        plugin: kind.into(),
        command: "find".into(),
        reason: format!("not found in CNI_PATH {cni_path:?}"),
    })
}

/// Runs one plugin inside the netns `run_netns` (the node), returning its stdout JSON (None when empty).
pub fn exec_plugin(inv: &Invocation, kind: &str, stdin: &Value, run_netns: &Path, lab: &str) -> Result<Option<Value>> {
    let bin = find_plugin(kind, &inv.cni_path)?;
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(inv.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let err = |reason: String| LabError::Cni { plugin: kind.into(), command: inv.command.into(), reason };
    let mut child = crate::nsexec::spawn_in(&mut cmd, run_netns, lab, false)?;
    let input = stdin.to_string();
    if let Some(mut si) = child.stdin.take() {
        si.write_all(input.as_bytes()).map_err(|e| err(format!("writing stdin: {e}")))?;
    }
    // A hung plugin must not hang `up` or `down`.
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok(r) => r.map_err(|e| err(e.to_string()))?,
        Err(_) => {
            // SAFETY: kill(2) on the plugin child we spawned and have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            return Err(err(format!("no answer within {PLUGIN_TIMEOUT:?}")));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(err(format!("{}: {} {}", out.status, stdout.trim(), String::from_utf8_lossy(&out.stderr).trim())));
    }
    if stdout.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&stdout).map(Some).map_err(|e| err(format!("result is not JSON ({e}): {stdout}")))
}

/// ADD through every plugin in order; returns the final result.
pub fn add(conflist: &Value, inv: &Invocation, run_netns: &Path, lab: &str) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for p in plugins(conflist)? {
        let kind = p["type"].as_str().unwrap_or_default().to_string();
        let cfg = plugin_config(conflist, &p, prev.as_ref());
        if let Some(r) = exec_plugin(inv, &kind, &cfg, run_netns, lab)? {
            prev = Some(r);
        }
    }
    prev.ok_or_else(|| LabError::Cni {
        plugin: "conflist".into(),
        command: "ADD".into(),
        reason: "no plugin returned a result".into(),
    })
}

/// DEL through the plugins in reverse order; keeps going and returns the first error.
pub fn del(conflist: &Value, inv: &Invocation, run_netns: &Path, lab: &str) -> Result<()> {
    let mut first = None;
    for p in plugins(conflist)?.iter().rev() {
        let kind = p["type"].as_str().unwrap_or_default().to_string();
        let cfg = plugin_config(conflist, p, None);
        if let Err(e) = exec_plugin(inv, &kind, &cfg, run_netns, lab) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// A minimal result with one address, for tests of result parsing.
#[cfg(test)]
fn sample_result(addr: &str) -> Value {
    serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": addr}]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plugin_config_injects_name_version_and_prev() {
        let list = json!({"cniVersion": "1.0.0", "name": "trellis", "plugins": [{"type": "trellis", "bridge": "b"}, {"type": "portmap"}]});
        let ps = plugins(&list).unwrap();
        let c0 = plugin_config(&list, &ps[0], None);
        assert_eq!(c0["name"], "trellis");
        assert_eq!(c0["cniVersion"], "1.0.0");
        assert_eq!(c0["bridge"], "b");
        assert!(c0.get("prevResult").is_none());
        let prev = sample_result("10.244.0.2/24");
        let c1 = plugin_config(&list, &ps[1], Some(&prev));
        assert_eq!(c1["prevResult"], prev);
        assert_eq!(c1["type"], "portmap");
    }

    #[test]
    fn single_conf_and_bad_lists() {
        assert_eq!(plugins(&json!({"type": "x", "name": "n"})).unwrap().len(), 1);
        assert!(plugins(&json!({"plugins": []})).is_err());
        assert!(plugins(&json!({"plugins": [{"name": "no-type"}]})).is_err());
        assert!(plugins(&json!({"name": "n"})).is_err());
    }

    #[test]
    fn result_addresses() {
        assert_eq!(result_ipv4(&sample_result("10.244.0.2/24")), Some(Ipv4Addr::new(10, 244, 0, 2)));
        let v6_first = json!({"ips": [{"address": "fd00::2/64"}, {"address": "10.1.0.3/16"}]});
        assert_eq!(result_ipv4(&v6_first), Some(Ipv4Addr::new(10, 1, 0, 3)));
        assert_eq!(result_ipv4(&json!({"ip4": {"ip": "10.0.0.9/8"}})), Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(result_ipv4(&json!({})), None);
    }

    #[test]
    fn env_is_what_kubelet_passes() {
        let inv = Invocation {
            command: "ADD",
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "p".into(),
            cni_path: vec!["/a".into(), "/usr/lib/cni".into()],
        };
        let env: std::collections::BTreeMap<_, _> = inv.env().into_iter().collect();
        assert_eq!(env["CNI_PATH"], "/a:/usr/lib/cni");
        assert_eq!(env["CNI_COMMAND"], "ADD");
        assert!(env["CNI_ARGS"].contains("K8S_POD_NAME=p"));
        assert!(find_plugin("../x", &inv.cni_path).is_err());
    }
}
