//! Pure inspection of CNI results: typed views and the per-version shape rules the tests assert.
use anyhow::{anyhow, bail, ensure, Result};
use serde_json::Value;
use std::net::IpAddr;

/// Every version the plugins must speak, oldest first.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[derive(Clone, Debug, PartialEq)]
pub struct IpEntry {
    pub addr: IpAddr,
    pub prefix: u8,
    pub interface: Option<usize>,
    pub gateway: Option<IpAddr>,
    pub version: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Iface {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
    pub mtu: Option<u64>,
}

pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (a, p) = s.split_once('/').ok_or_else(|| anyhow!("not CIDR: {s}"))?;
    Ok((
        a.parse().map_err(|e| anyhow!("bad address in {s}: {e}"))?,
        p.parse().map_err(|e| anyhow!("bad prefix in {s}: {e}"))?,
    ))
}

pub fn ips(result: &Value) -> Result<Vec<IpEntry>> {
    let Some(arr) = result["ips"].as_array() else {
        return Ok(Vec::new());
    };
    arr.iter()
        .map(|ip| {
            let (addr, prefix) =
                parse_cidr(ip["address"].as_str().ok_or_else(|| anyhow!("ips[] without address: {ip}"))?)?;
            let gateway = match ip["gateway"].as_str() {
                Some(g) => Some(g.parse().map_err(|e| anyhow!("bad gateway {g}: {e}"))?),
                None => None,
            };
            Ok(IpEntry {
                addr,
                prefix,
                interface: ip["interface"].as_u64().map(|i| i as usize),
                gateway,
                version: ip["version"].as_str().map(str::to_owned),
            })
        })
        .collect()
}

pub fn interfaces(result: &Value) -> Vec<Iface> {
    result["interfaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| Iface {
                    name: i["name"].as_str().unwrap_or_default().to_owned(),
                    mac: i["mac"].as_str().map(str::to_owned),
                    sandbox: i["sandbox"].as_str().map(str::to_owned),
                    mtu: i["mtu"].as_u64(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first IPv4 address of the result (what pings target).
pub fn ipv4(result: &Value) -> Result<IpAddr> {
    ips(result)?
        .into_iter()
        .map(|e| e.addr)
        .find(IpAddr::is_ipv4)
        .ok_or_else(|| anyhow!("result has no IPv4 address: {result}"))
}

/// Does the result carry a route to `dst` (e.g. "0.0.0.0/0")?
pub fn has_route(result: &Value, dst: &str) -> bool {
    result["routes"].as_array().is_some_and(|r| r.iter().any(|r| r["dst"] == dst))
}

/// The spec's shape for `version`: `cniVersion` echoed; 0.3.x/0.4.0 carry ips[].version matching the family;
/// 1.x drop it; every ips[].interface indexes `interfaces`.
pub fn check_shape(result: &Value, version: &str) -> Result<()> {
    ensure!(result["cniVersion"] == version, "cniVersion {} does not echo the request {version}", result["cniVersion"]);
    let legacy = version.starts_with("0.");
    let ifaces = interfaces(result);
    let entries = ips(result)?;
    ensure!(!entries.is_empty(), "result has no ips: {result}");
    for e in &entries {
        match (legacy, &e.version) {
            (true, Some(v)) => {
                let want = if e.addr.is_ipv4() { "4" } else { "6" };
                ensure!(v == want, "ips[].version {v} does not match {}", e.addr);
            }
            (true, None) => bail!("{version} result lacks ips[].version for {}", e.addr),
            (false, Some(v)) => {
                bail!("{version} result still carries ips[].version {v} (removed in 1.0.0)")
            }
            (false, None) => {}
        }
        if let Some(i) = e.interface {
            ensure!(i < ifaces.len(), "ips[].interface {i} is out of range ({} interfaces)", ifaces.len());
        }
    }
    Ok(())
}

/// The pod-side interface an IP entry points at (must have `sandbox`).
pub fn pod_iface<'a>(ifaces: &'a [Iface], entry: &IpEntry) -> Result<&'a Iface> {
    let i = entry.interface.ok_or_else(|| anyhow!("ips[] entry for {} lacks `interface`", entry.addr))?;
    let iface = ifaces.get(i).ok_or_else(|| anyhow!("ips[].interface {i} out of range"))?;
    ensure!(iface.sandbox.is_some(), "interface {} that holds {} has no sandbox", iface.name, entry.addr);
    Ok(iface)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(version: &str, with_version: bool) -> Value {
        let mut ip = json!({"address": "10.244.1.10/24", "gateway": "10.244.1.1", "interface": 1});
        if with_version {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [{"name": "trabc", "mac": "aa:bb:cc:dd:ee:ff"},
                           {"name": "eth0", "mac": "aa:bb:cc:dd:ee:00", "sandbox": "/run/netns/p"}],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
        })
    }

    #[test]
    fn parses_ips_and_interfaces() {
        let r = sample("1.0.0", false);
        let e = &ips(&r).unwrap()[0];
        assert_eq!(e.addr, "10.244.1.10".parse::<IpAddr>().unwrap());
        assert_eq!(e.prefix, 24);
        assert_eq!(e.interface, Some(1));
        assert_eq!(pod_iface(&interfaces(&r), e).unwrap().name, "eth0");
        assert_eq!(ipv4(&r).unwrap().to_string(), "10.244.1.10");
        assert!(has_route(&r, "0.0.0.0/0"));
        assert!(!has_route(&r, "10.0.0.0/8"));
    }

    #[test]
    fn shape_rules_per_version() {
        assert!(check_shape(&sample("1.0.0", false), "1.0.0").is_ok());
        assert!(check_shape(&sample("1.1.0", true), "1.1.0").is_err());
        assert!(check_shape(&sample("0.4.0", true), "0.4.0").is_ok());
        assert!(check_shape(&sample("0.3.1", false), "0.3.1").is_err());
        assert!(check_shape(&sample("1.0.0", false), "0.4.0").is_err(), "cniVersion must echo the request");
    }

    #[test]
    fn version_must_match_family_and_index_must_exist() {
        let mut r = sample("0.3.0", true);
        r["ips"][0]["version"] = json!("6");
        assert!(check_shape(&r, "0.3.0").is_err());
        let mut r = sample("1.0.0", false);
        r["ips"][0]["interface"] = json!(5);
        assert!(check_shape(&r, "1.0.0").is_err());
    }

    #[test]
    fn pod_iface_requires_sandbox() {
        let mut r = sample("1.0.0", false);
        r["ips"][0]["interface"] = json!(0);
        let e = &ips(&r).unwrap()[0];
        assert!(pod_iface(&interfaces(&r), e).is_err());
    }
}
