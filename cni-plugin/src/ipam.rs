//! IPAM: in process for `trellis-ipam` (no fork/exec on the ADD path), otherwise the plugin named by
//! `ipam.type` is executed from CNI_PATH exactly as a runtime would.
use std::net::IpAddr;

use ipnet::IpNet;
use trellis_cni_types::{codes, delegate, CniError, CniResult, Command, Dns, Env, IpConfig, NetConf, Route};
use trellis_ipam::{cni as ipam_cni, IpamConfig};

use crate::config::PluginConfig;

/// What IPAM hands the main plugin: addresses (with gateways) and routes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpamOutcome {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

pub enum IpamBackend {
    InProcess(IpamConfig),
    Delegated(String),
}

impl IpamBackend {
    /// Validates the in-process IPAM config up front, so a bad config fails before anything is created.
    pub fn new(cfg: &PluginConfig, conf: &NetConf) -> Result<IpamBackend, CniError> {
        if cfg.in_process_ipam() {
            Ok(IpamBackend::InProcess(ipam_cni::config(conf)?))
        } else {
            Ok(IpamBackend::Delegated(cfg.ipam_type.clone()))
        }
    }

    pub fn add(&self, env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<IpamOutcome, CniError> {
        let r = match self {
            // All or nothing already: a failed in-process ADD holds no address.
            IpamBackend::InProcess(c) => ipam_cni::add(env, conf, c).and_then(usable),
            IpamBackend::Delegated(p) => {
                let r = delegated_add(p, env, stdin);
                if r.is_err() {
                    // SPEC: "If, on ADD, a delegated plugin fails, the upper plugin should execute again with DEL
                    // before returning failure." Best effort: the ADD's error is what the runtime must see.
                    let _ = delegate::exec_plugin(p, Command::Del, env, stdin);
                }
                r
            }
        }?;
        // `ips[].interface` is set where the result is rendered (the pod interface's index).
        Ok(IpamOutcome { ips: r.ips, routes: r.routes, dns: r.dns })
    }

    pub fn del(&self, env: &Env, stdin: &[u8]) -> Result<(), CniError> {
        match self {
            IpamBackend::InProcess(c) => ipam_cni::del(env, c),
            IpamBackend::Delegated(p) => delegate::exec_plugin(p, Command::Del, env, stdin).map(|_| ()),
        }
    }

    pub fn check(&self, env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
        match self {
            IpamBackend::InProcess(c) => ipam_cni::check(env, conf, c),
            IpamBackend::Delegated(p) => delegate::exec_plugin(p, Command::Check, env, stdin).map(|_| ()),
        }
    }

    /// STATUS; delegated only for 1.1.0 configs (older IPAM plugins do not know the verb).
    pub fn status(&self, env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
        match self {
            IpamBackend::InProcess(c) => ipam_cni::status(c),
            IpamBackend::Delegated(p) if conf.cni_version.is_1_1() && speaks_1_1(p, env) => {
                delegate::exec_plugin(p, Command::Status, env, stdin).map(|_| ())
            }
            IpamBackend::Delegated(_) => Ok(()),
        }
    }

    /// GC; delegated only for 1.1.0 configs.
    pub fn gc(&self, env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
        match self {
            IpamBackend::InProcess(c) => ipam_cni::gc(conf, c).map(|_| ()),
            IpamBackend::Delegated(p) if conf.cni_version.is_1_1() && speaks_1_1(p, env) => {
                delegate::exec_plugin(p, Command::Gc, env, stdin).map(|_| ())
            }
            IpamBackend::Delegated(_) => Ok(()),
        }
    }
}

/// A delegated IPAM plugin's ADD, read as a result with at least one address.
fn delegated_add(plugin: &str, env: &Env, stdin: &[u8]) -> Result<CniResult, CniError> {
    let out = delegate::exec_plugin(plugin, Command::Add, env, stdin)?
        .ok_or_else(|| CniError::decode(format!("IPAM plugin {plugin} printed no result"), ""))?;
    usable(CniResult::from_json(&out).map_err(|e| e.context(&format!("result of IPAM plugin {plugin}")))?)
}

fn usable(r: CniResult) -> Result<CniResult, CniError> {
    if r.ips.is_empty() {
        return Err(CniError::new(codes::INTERNAL, "IPAM returned no IP addresses", ""));
    }
    Ok(r)
}

/// Whether a delegated plugin lists 1.1.0 in its VERSION answer: STATUS and GC exist only from 1.1.0, and
/// plugins that predate it (Debian's host-local 1.1.1 tops out at 1.0.0) answer them with an error.
fn speaks_1_1(plugin: &str, env: &Env) -> bool {
    delegate::exec_plugin(plugin, Command::Version, env, br#"{"cniVersion":"1.1.0"}"#)
        .ok()
        .flatten()
        .and_then(|v| v.get("supportedVersions").and_then(|s| s.as_array()).cloned())
        .is_some_and(|vs| vs.iter().any(|v| v.as_str() == Some("1.1.0")))
}

/// The gateway an IPAM outcome names for one family (first address of that family with a gateway).
pub fn gateway_for(ips: &[IpConfig], v4: bool) -> Option<IpAddr> {
    ips.iter().filter(|i| i.address.addr().is_ipv4() == v4).find_map(|i| i.gateway)
}

/// Gateways as bridge addresses: gateway/prefix of the subnet it serves.
pub fn bridge_addrs(ips: &[IpConfig]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> =
        ips.iter().filter_map(|i| i.gateway.and_then(|g| IpNet::new(g, i.address.prefix_len()).ok())).collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A delegated IPAM plugin in a temp CNI_PATH: logs each command, answers VERSION with `versions`, and
    /// fails STATUS and GC with code 50 when `fail` is set.
    struct Script {
        dir: tempfile::TempDir,
    }

    impl Script {
        fn new(versions: &str, fail: bool) -> Script {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("log");
            let fail = if fail { r#"echo '{"cniVersion":"1.1.0","code":50,"msg":"down"}'; exit 1"# } else { "exit 0" };
            let script = format!(
                "#!/bin/sh\ncat >/dev/null\necho \"$CNI_COMMAND\" >> {log}\ncase \"$CNI_COMMAND\" in\n\
                 VERSION) echo '{{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[{versions}]}}' ;;\n\
                 STATUS|GC) {fail} ;;\nesac\n",
                log = log.display()
            );
            let p = dir.path().join("script-ipam");
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            Script { dir }
        }

        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default().lines().map(String::from).collect()
        }

        /// STATUS and GC through a backend for this plugin with a config of `version`.
        fn run(&self, version: &str) -> (Result<(), CniError>, Result<(), CniError>) {
            let v = json!({"cniVersion": version, "name": "n", "type": "trellis", "ipam": {"type": "script-ipam"},
                           "cni.dev/valid-attachments": []});
            let conf = NetConf::from_value(v).unwrap();
            let cfg = PluginConfig::from_conf(&conf).unwrap();
            let backend = IpamBackend::new(&cfg, &conf).unwrap();
            assert!(matches!(backend, IpamBackend::Delegated(_)));
            let env = Env {
                command: Command::Status,
                container_id: None,
                netns: None,
                ifname: None,
                args: vec![],
                path: vec![self.dir.path().to_path_buf()],
            };
            (backend.status(&env, &conf, b"{}"), backend.gc(&env, &conf, b"{}"))
        }
    }

    const UP_TO_1_1: &str = r#""0.4.0","1.0.0","1.1.0""#;
    const UP_TO_1_0: &str = r#""0.4.0","1.0.0""#;

    #[test]
    fn status_and_gc_go_to_a_delegate_that_speaks_1_1_for_a_1_1_config() {
        let s = Script::new(UP_TO_1_1, true);
        let (status, gc) = s.run("1.1.0");
        assert_eq!(status.unwrap_err().code, 50);
        assert_eq!(gc.unwrap_err().code, 50);
        assert_eq!(s.calls(), ["VERSION", "STATUS", "VERSION", "GC"]);
        let ok = Script::new(UP_TO_1_1, false);
        let (status, gc) = ok.run("1.1.0");
        assert!(status.is_ok() && gc.is_ok());
    }

    #[test]
    fn status_and_gc_skip_a_delegate_that_predates_1_1_or_a_config_that_does() {
        // The delegate tops out at 1.0.0: asked for its versions, never sent a verb it does not know.
        let old = Script::new(UP_TO_1_0, true);
        let (status, gc) = old.run("1.1.0");
        assert!(status.is_ok() && gc.is_ok());
        assert_eq!(old.calls(), ["VERSION", "VERSION"]);
        // A 1.0.0 config has no STATUS or GC to pass on: the delegate is not even asked.
        let s = Script::new(UP_TO_1_1, true);
        let (status, gc) = s.run("1.0.0");
        assert!(status.is_ok() && gc.is_ok());
        assert!(s.calls().is_empty(), "{:?}", s.calls());
    }
}
