//! `trellis-ipam`: a host-local compatible CNI IPAM plugin. Any main plugin (e.g. the reference
//! `bridge`) can delegate to it; the `trellis` plugin links the library instead.
//!
//! Protocol: net config on stdin, `CNI_*` in the environment; a result (ADD, VERSION) or CNI
//! error JSON on stdout.

use std::io::Read;
use std::net::IpAddr;

use serde_json::Value;
use trellis_cni_types::{codes, CniError, CniResult, Command, Dns, Env, IpConfig, NetConf, Route};
use trellis_ipam::{ops, resolv, DiskStore, IpamConfig, IpamError};

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    // Errors are reported in the version the runtime spoke, when we can tell.
    let version = version_of(&stdin);
    let outcome = match read {
        Err(e) => Err(CniError::io("cannot read the network config from stdin", e.to_string())),
        Ok(_) => Env::from_process().and_then(|env| run(&env, &stdin, &version)),
    };
    std::process::exit(trellis_cni_types::emit(outcome, &version));
}

fn run(env: &Env, stdin: &[u8], version: &str) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(trellis_cni_types::Version::version_answer(version)));
    }
    let conf = NetConf::parse(stdin)?;
    let name = conf.require_name()?;
    let ipam = conf.raw.get("ipam").ok_or_else(|| CniError::config("network config has no \"ipam\" object"))?;
    let cfg = IpamConfig::from_ipam_value(name, ipam).map_err(cni_error)?;
    let mut store = DiskStore::open_config(&cfg).map_err(cni_error)?;
    match env.command {
        Command::Add => {
            // Everything that can fail on input is read before an address is reserved.
            let requested = requested_ips(env, &conf)?;
            let dns = dns(&cfg)?;
            let allocs = ops::allocate_requested(&mut store, &cfg, env.container_id(), env.ifname(), &requested)
                .map_err(cni_error)?;
            let result = CniResult {
                interfaces: vec![],
                ips: allocs
                    .iter()
                    .map(|a| IpConfig { address: a.address, gateway: a.gateway, interface: None })
                    .collect(),
                routes: cfg.routes.iter().map(|r| Route::new(r.dst, r.gw)).collect(),
                dns,
            };
            Ok(Some(result.to_json(conf.cni_version, &conf.cni_version_str)))
        }
        Command::Del => {
            ops::release(&mut store, &cfg, env.container_id(), env.ifname()).map_err(cni_error)?;
            Ok(None)
        }
        Command::Check => {
            if !conf.cni_version.supports_check() {
                return Err(CniError::new(
                    codes::INCOMPATIBLE_VERSION,
                    format!("CHECK is not defined for cniVersion {}", conf.cni_version_str),
                    "CHECK needs cniVersion 0.4.0 or later",
                ));
            }
            // Only the prevResult addresses that belong to our ranges are ours to vouch for.
            let expected: Vec<IpAddr> = conf
                .prev_result
                .iter()
                .flat_map(|r| r.ips.iter().map(|ip| ip.address.addr()))
                .filter(|ip| cfg.range_sets.iter().any(|s| s.contains(*ip)))
                .collect();
            ops::check(&mut store, env.container_id(), env.ifname(), &expected).map_err(cni_error)?;
            Ok(None)
        }
        Command::Status => {
            ops::status(&mut store, &cfg).map_err(|e| match e {
                IpamError::InvalidConfig { .. } => cni_error(e),
                // The spec's STATUS code: cannot service ADD now.
                e => CniError::new(codes::NOT_AVAILABLE, e.to_string(), ""),
            })?;
            Ok(None)
        }
        Command::Gc => {
            let valid: Vec<(String, String)> = conf
                .valid_attachments
                .ok_or_else(|| CniError::config("GC needs \"cni.dev/valid-attachments\" in the config"))?
                .into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect();
            ops::gc(&mut store, &cfg, &valid).map_err(cni_error)?;
            Ok(None)
        }
        Command::Version => Ok(Some(trellis_cni_types::Version::version_answer(version))),
    }
}

/// Addresses asked for, as host-local reads them: `CNI_ARGS` `IP=a,b`, `args.cni.ips` and
/// `runtimeConfig.ips` (each "addr" or "addr/prefix"). Duplicates collapse.
fn requested_ips(env: &Env, conf: &NetConf) -> Result<Vec<IpAddr>, CniError> {
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

/// The `cniVersion` on stdin ("" if absent or unreadable).
fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

fn dns(cfg: &IpamConfig) -> Result<Dns, CniError> {
    Ok(resolv::load(cfg)
        .map_err(cni_error)?
        .map(|rc| Dns { nameservers: rc.nameservers, domain: rc.domain, search: rc.search, options: rc.options })
        .unwrap_or_default())
}

fn cni_error(e: IpamError) -> CniError {
    CniError::new(e.cni_code(), e.to_string(), "")
}
