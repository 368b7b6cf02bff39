//! The IPAM verbs at the CNI level (CNI errors, CNI results), shared by the `trellis-ipam` binary and the
//! `trellis` plugin's in-process fast path, so both behave identically.
use std::net::IpAddr;

use serde_json::Value;
use trellis_cni_types::{codes, CniError, CniResult, Dns, Env, IpConfig, NetConf, Route};

use crate::{ops, resolv, DiskStore, IpamConfig, IpamError};

pub fn cni_error(e: IpamError) -> CniError {
    CniError::new(e.cni_code(), e.to_string(), "")
}

fn store(cfg: &IpamConfig) -> Result<DiskStore, CniError> {
    DiskStore::open_config(cfg).map_err(cni_error)
}

/// The IPAM config of a network config: its `name` and `ipam` object.
pub fn config(conf: &NetConf) -> Result<IpamConfig, CniError> {
    let name = conf.require_name()?;
    let ipam = conf.raw.get("ipam").ok_or_else(|| CniError::config("network config has no \"ipam\" object"))?;
    IpamConfig::from_ipam_value(name, ipam).map_err(cni_error)
}

/// ADD: one address per range set (or the requested ones), the configured routes, DNS from `resolvConf`.
pub fn add(env: &Env, conf: &NetConf, cfg: &IpamConfig) -> Result<CniResult, CniError> {
    // Everything that can fail on input is read before an address is reserved.
    let requested = requested_ips(env, conf)?;
    let dns = dns(cfg)?;
    let allocs = ops::allocate_requested(&mut store(cfg)?, cfg, env.container_id(), env.ifname(), &requested)
        .map_err(cni_error)?;
    Ok(CniResult {
        interfaces: vec![],
        ips: allocs.iter().map(|a| IpConfig { address: a.address, gateway: a.gateway, interface: None }).collect(),
        routes: cfg.routes.iter().map(|r| Route::new(r.dst, r.gw)).collect(),
        dns,
    })
}

pub fn del(env: &Env, cfg: &IpamConfig) -> Result<(), CniError> {
    ops::release(&mut store(cfg)?, cfg, env.container_id(), env.ifname()).map(|_| ()).map_err(cni_error)
}

/// CHECK: the prevResult addresses that belong to our ranges are held by this attachment.
pub fn check(env: &Env, conf: &NetConf, cfg: &IpamConfig) -> Result<(), CniError> {
    if !conf.cni_version.supports_check() {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for cniVersion {}", conf.cni_version_str),
            "CHECK needs cniVersion 0.4.0 or later",
        ));
    }
    let expected: Vec<IpAddr> = conf
        .prev_result
        .iter()
        .flat_map(|r| r.ips.iter().map(|ip| ip.address.addr()))
        .filter(|ip| cfg.range_sets.iter().any(|s| s.contains(*ip)))
        .collect();
    ops::check(&mut store(cfg)?, env.container_id(), env.ifname(), &expected).map_err(cni_error)
}

/// STATUS: code 50 ("cannot service ADD now") unless the config itself is wrong.
pub fn status(cfg: &IpamConfig) -> Result<(), CniError> {
    let st = store(cfg).and_then(|mut s| ops::status(&mut s, cfg).map_err(cni_error));
    st.map_err(|e| match e.code {
        codes::INVALID_NETWORK_CONFIG | codes::DECODE_FAILURE => e,
        _ => CniError::new(codes::NOT_AVAILABLE, e.msg, e.details),
    })
}

/// GC: releases every lease not named in `cni.dev/valid-attachments` (refused without the list, rather than
/// wiping the store). Returns what was released.
pub fn gc(conf: &NetConf, cfg: &IpamConfig) -> Result<Vec<IpAddr>, CniError> {
    let valid: Vec<(String, String)> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::config("GC needs \"cni.dev/valid-attachments\" in the config"))?
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    ops::gc(&mut store(cfg)?, cfg, &valid).map_err(cni_error)
}

/// Addresses asked for, as host-local reads them: `CNI_ARGS` `IP=a,b`, `args.cni.ips` and
/// `runtimeConfig.ips` (each "addr" or "addr/prefix"). Duplicates collapse.
pub fn requested_ips(env: &Env, conf: &NetConf) -> Result<Vec<IpAddr>, CniError> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |s: &str, bad: &dyn Fn(String) -> CniError| -> Result<(), CniError> {
        let s = s.trim();
        let addr = s.split_once('/').map_or(s, |(a, _)| a);
        let ip: IpAddr = addr.parse().map_err(|_| bad(format!("requested IP {s:?} is not an address")))?;
        if !out.contains(&ip) {
            out.push(ip);
        }
        Ok(())
    };
    if let Some(list) = env.arg("IP") {
        for s in list.split(',').filter(|s| !s.trim().is_empty()) {
            push(s, &|m| CniError::env(format!("CNI_ARGS: {m}")))?;
        }
    }
    for (field, v) in
        [("args.cni.ips", conf.raw.pointer("/args/cni/ips")), ("runtimeConfig.ips", conf.runtime_config.get("ips"))]
    {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let s =
                        item.as_str().ok_or_else(|| CniError::config(format!("{field}: {item} is not a string")))?;
                    push(s, &|m| CniError::config(format!("{field}: {m}")))?;
                }
            }
            Some(other) => return Err(CniError::config(format!("{field} must be an array of strings, got {other}"))),
        }
    }
    Ok(out)
}

fn dns(cfg: &IpamConfig) -> Result<Dns, CniError> {
    Ok(resolv::load(cfg)
        .map_err(cni_error)?
        .map(|rc| Dns { nameservers: rc.nameservers, domain: rc.domain, search: rc.search, options: rc.options })
        .unwrap_or_default())
}
