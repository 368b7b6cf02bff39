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
        Ok(IpamOutcome {
            ips: r.ips.into_iter().map(|i| IpConfig { interface: None, ..i }).collect(),
            routes: r.routes,
            dns: r.dns,
        })
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
