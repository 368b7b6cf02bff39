//! IPAM: in process for `trellis-ipam` (no fork/exec on the ADD path), otherwise the plugin named by
//! `ipam.type` is executed from CNI_PATH exactly as a runtime would.
use std::net::IpAddr;

use ipnet::IpNet;
use trellis_cni_types::{codes, delegate, Attachment, CniError, CniResult, Command, Dns, Env, IpConfig, Route};
use trellis_ipam::{ops, DiskStore, IpamConfig, IpamError};

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

pub fn ipam_err(e: IpamError) -> CniError {
    CniError::new(e.cni_code(), e.to_string(), "")
}

impl IpamBackend {
    /// Validates the in-process IPAM config up front, so a bad config fails before anything is created.
    pub fn new(cfg: &PluginConfig, network: &str) -> Result<IpamBackend, CniError> {
        if cfg.in_process_ipam() {
            Ok(IpamBackend::InProcess(IpamConfig::from_ipam_value(network, &cfg.ipam).map_err(ipam_err)?))
        } else {
            Ok(IpamBackend::Delegated(cfg.ipam_type.clone()))
        }
    }

    fn store(c: &IpamConfig) -> Result<DiskStore, CniError> {
        DiskStore::open_config(c).map_err(ipam_err)
    }

    pub fn add(&self, env: &Env, stdin: &[u8]) -> Result<IpamOutcome, CniError> {
        match self {
            IpamBackend::InProcess(c) => {
                let allocs =
                    ops::allocate(&mut Self::store(c)?, c, env.container_id(), env.ifname()).map_err(ipam_err)?;
                Ok(IpamOutcome {
                    ips: allocs
                        .iter()
                        .map(|a| IpConfig { address: a.address, gateway: a.gateway, interface: None })
                        .collect(),
                    routes: c.routes.iter().map(|r| Route::new(r.dst, r.gw)).collect(),
                    dns: Dns::default(),
                })
            }
            IpamBackend::Delegated(p) => {
                let out = delegate::exec_plugin(p, Command::Add, env, stdin)?
                    .ok_or_else(|| CniError::decode(format!("IPAM plugin {p} printed no result"), ""))?;
                let r = CniResult::from_json(&out).map_err(|e| e.context(&format!("result of IPAM plugin {p}")))?;
                if r.ips.is_empty() {
                    return Err(CniError::new(
                        codes::INTERNAL,
                        format!("IPAM plugin {p} returned no IP addresses"),
                        "",
                    ));
                }
                Ok(IpamOutcome {
                    ips: r.ips.into_iter().map(|i| IpConfig { interface: None, ..i }).collect(),
                    routes: r.routes,
                    dns: r.dns,
                })
            }
        }
    }

    pub fn del(&self, env: &Env, stdin: &[u8]) -> Result<(), CniError> {
        match self {
            IpamBackend::InProcess(c) => {
                ops::release(&mut Self::store(c)?, c, env.container_id(), env.ifname()).map_err(ipam_err)?;
                Ok(())
            }
            IpamBackend::Delegated(p) => delegate::exec_plugin(p, Command::Del, env, stdin).map(|_| ()),
        }
    }

    pub fn check(&self, env: &Env, stdin: &[u8], expected: &[IpAddr]) -> Result<(), CniError> {
        match self {
            IpamBackend::InProcess(c) => {
                ops::check(&mut Self::store(c)?, env.container_id(), env.ifname(), expected).map_err(ipam_err)
            }
            IpamBackend::Delegated(p) => delegate::exec_plugin(p, Command::Check, env, stdin).map(|_| ()),
        }
    }

    /// STATUS; delegated only for 1.1.0 configs (older IPAM plugins do not know the verb).
    pub fn status(&self, env: &Env, stdin: &[u8], is_1_1: bool) -> Result<(), CniError> {
        match self {
            IpamBackend::InProcess(c) => ops::status(&mut Self::store(c)?, c).map_err(|e| {
                let code = match e {
                    IpamError::InvalidConfig { .. } | IpamError::Decode(_) => e.cni_code(),
                    _ => codes::NOT_AVAILABLE,
                };
                CniError::new(code, e.to_string(), "")
            }),
            IpamBackend::Delegated(p) if is_1_1 => delegate::exec_plugin(p, Command::Status, env, stdin).map(|_| ()),
            IpamBackend::Delegated(_) => Ok(()),
        }
    }

    /// GC: returns what the in-process store released (delegated plugins do their own).
    pub fn gc(&self, env: &Env, stdin: &[u8], valid: &[Attachment], is_1_1: bool) -> Result<Vec<IpAddr>, CniError> {
        match self {
            IpamBackend::InProcess(c) => {
                let valid: Vec<(String, String)> =
                    valid.iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
                ops::gc(&mut Self::store(c)?, c, &valid).map_err(ipam_err)
            }
            IpamBackend::Delegated(p) if is_1_1 => delegate::exec_plugin(p, Command::Gc, env, stdin).map(|_| vec![]),
            IpamBackend::Delegated(_) => Ok(vec![]),
        }
    }
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
