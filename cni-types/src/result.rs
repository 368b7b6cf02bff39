//! ADD results, rendered in the shape of the version the runtime asked for and parsed from any supported shape
//! (prevResult, a delegated IPAM plugin's output).
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use crate::error::CniError;
use crate::version::Version;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// 1.1.0 only.
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; `None` for host-side interfaces.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with its subnet's prefix length, e.g. 10.244.1.5/24.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// 1.1.0 only.
    pub mtu: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route { dst, gw, mtu: None, priority: None, table: None, scope: None }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// Renders for `version`, echoing `version_str` as sent. 0.3.x/0.4.0 add `ips[].version`; 1.1.0 adds the
    /// interface `mtu` and the extra route fields, which older readers would reject or ignore.
    pub fn to_json(&self, version: Version, version_str: &str) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), version_str.into());
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut m = Map::new();
                    m.insert("name".into(), i.name.clone().into());
                    if let Some(mac) = &i.mac {
                        m.insert("mac".into(), mac.clone().into());
                    }
                    if let (Some(mtu), true) = (i.mtu, version.is_1_1()) {
                        m.insert("mtu".into(), mtu.into());
                    }
                    if let Some(sb) = &i.sandbox {
                        m.insert("sandbox".into(), sb.clone().into());
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("interfaces".into(), ifs.into());
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut m = Map::new();
                    if version.has_ip_version_field() {
                        m.insert("version".into(), (if ip.address.addr().is_ipv4() { "4" } else { "6" }).into());
                    }
                    m.insert("address".into(), ip.address.to_string().into());
                    if let Some(gw) = ip.gateway {
                        m.insert("gateway".into(), gw.to_string().into());
                    }
                    if let Some(i) = ip.interface {
                        m.insert("interface".into(), i.into());
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("ips".into(), ips.into());
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    m.insert("dst".into(), r.dst.to_string().into());
                    if let Some(gw) = r.gw {
                        m.insert("gw".into(), gw.to_string().into());
                    }
                    if version.is_1_1() {
                        for (k, v) in [("mtu", r.mtu), ("priority", r.priority), ("table", r.table)] {
                            if let Some(v) = v {
                                m.insert(k.into(), v.into());
                            }
                        }
                        if let Some(s) = r.scope {
                            m.insert("scope".into(), s.into());
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("routes".into(), routes.into());
        }
        // Every version's result has a dns object; libcni tolerates it empty.
        let mut dns = Map::new();
        if !self.dns.nameservers.is_empty() {
            dns.insert("nameservers".into(), json!(self.dns.nameservers));
        }
        if let Some(d) = &self.dns.domain {
            dns.insert("domain".into(), d.clone().into());
        }
        if !self.dns.search.is_empty() {
            dns.insert("search".into(), json!(self.dns.search));
        }
        if !self.dns.options.is_empty() {
            dns.insert("options".into(), json!(self.dns.options));
        }
        out.insert("dns".into(), Value::Object(dns));
        Value::Object(out)
    }

    /// This plugin's result chained after `prev` (SPEC, conflist ADD: a plugin given a prevResult "must output it
    /// as their result, with any possible modifications made by that plugin included"): prev's interfaces, IPs,
    /// routes and DNS first, ours appended, our `ips[].interface` shifted past prev's interfaces so every index
    /// still names the interface it named. Routes and DNS entries already in prev are not repeated.
    pub fn chained_after(self, prev: &CniResult) -> CniResult {
        let shift = prev.interfaces.len();
        let mut interfaces = prev.interfaces.clone();
        interfaces.extend(self.interfaces);
        let mut ips = prev.ips.clone();
        ips.extend(self.ips.into_iter().map(|i| IpConfig { interface: i.interface.map(|x| x + shift), ..i }));
        let mut routes = prev.routes.clone();
        union(&mut routes, self.routes);
        let mut dns = prev.dns.clone();
        union(&mut dns.nameservers, self.dns.nameservers);
        union(&mut dns.search, self.dns.search);
        union(&mut dns.options, self.dns.options);
        dns.domain = self.dns.domain.or(dns.domain);
        CniResult { interfaces, ips, routes, dns }
    }

    /// Parses a result of any supported version (the `version` field of 0.3.x ips is accepted and ignored).
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        let bad = |what: String| CniError::decode("cannot parse CNI result", what);
        if !v.is_object() {
            return Err(bad(format!("expected an object, got {v}")));
        }
        let arr = |k: &str| -> Result<Vec<Value>, CniError> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(vec![]),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(other) => Err(bad(format!("{k} must be an array, got {other}"))),
            }
        };
        let s = |o: &Value, k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let u32f = |o: &Value, k: &str| o.get(k).and_then(|x| x.as_u64()).map(|x| x as u32);
        let parse_ip = |o: &Value, k: &str| -> Result<Option<IpAddr>, CniError> {
            match s(o, k) {
                None => Ok(None),
                Some(t) if t.is_empty() => Ok(None),
                Some(t) => t.parse().map(Some).map_err(|_| bad(format!("{k} {t:?} is not an IP address"))),
            }
        };
        let parse_net = |o: &Value, k: &str| -> Result<IpNet, CniError> {
            let t = s(o, k).ok_or_else(|| bad(format!("missing {k} in {o}")))?;
            t.parse().map_err(|_| bad(format!("{k} {t:?} is not an address/prefix")))
        };
        let interfaces = arr("interfaces")?
            .iter()
            .map(|i| {
                Ok(Interface {
                    name: s(i, "name").ok_or_else(|| bad(format!("interface without name: {i}")))?,
                    mac: s(i, "mac"),
                    mtu: u32f(i, "mtu"),
                    sandbox: s(i, "sandbox").filter(|x| !x.is_empty()),
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;
        let ips = arr("ips")?
            .iter()
            .map(|i| {
                let interface = i.get("interface").and_then(|x| x.as_u64()).map(|x| x as usize);
                if let Some(idx) = interface {
                    if idx >= interfaces.len() {
                        return Err(bad(format!("ips[].interface {idx} is out of range")));
                    }
                }
                Ok(IpConfig { address: parse_net(i, "address")?, gateway: parse_ip(i, "gateway")?, interface })
            })
            .collect::<Result<Vec<_>, CniError>>()?;
        let routes = arr("routes")?
            .iter()
            .map(|r| {
                Ok(Route {
                    dst: parse_net(r, "dst")?,
                    gw: parse_ip(r, "gw")?,
                    mtu: u32f(r, "mtu"),
                    priority: u32f(r, "priority"),
                    table: u32f(r, "table"),
                    scope: r.get("scope").and_then(|x| x.as_u64()).map(|x| x as u8),
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;
        // A missing or non-object `dns` reads as empty (`get` on anything but an object finds nothing).
        let d = v.get("dns").unwrap_or(&Value::Null);
        let list = |k: &str| -> Vec<String> {
            d.get(k)
                .and_then(|x| x.as_array())
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let dns = Dns {
            nameservers: list("nameservers"),
            domain: s(d, "domain"),
            search: list("search"),
            options: list("options"),
        };
        Ok(CniResult { interfaces, ips, routes, dns })
    }
}

fn union<T: PartialEq>(into: &mut Vec<T>, more: Vec<T>) {
    for x in more {
        if !into.contains(&x) {
            into.push(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "tr0123".into(),
                    mac: Some("0e:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0e:00:00:00:00:02".into()),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: "10.244.1.1".parse().ok(),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: "fd00::1".parse().ok(),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::new("0.0.0.0/0".parse().unwrap(), "10.244.1.1".parse().ok())
            }],
            dns: Dns { nameservers: vec!["10.96.0.10".into()], ..Default::default() },
        }
    }

    #[test]
    fn renders_each_version_in_its_shape() {
        let r = sample();
        for v in Version::ALL {
            let j = r.to_json(v, v.as_str());
            assert_eq!(j["cniVersion"], v.as_str());
            let ip0 = &j["ips"][0];
            assert_eq!(ip0["address"], "10.244.1.5/24");
            assert_eq!(ip0["interface"], 1);
            assert_eq!(ip0.get("version").is_some(), v < Version::V1_0_0, "{v}");
            if v < Version::V1_0_0 {
                assert_eq!(j["ips"][1]["version"], "6");
            }
            assert_eq!(j["interfaces"][1].get("mtu").is_some(), v == Version::V1_1_0, "{v}");
            assert_eq!(j["routes"][0].get("mtu").is_some(), v == Version::V1_1_0, "{v}");
            assert_eq!(j["interfaces"][1]["sandbox"], "/run/netns/p");
            assert!(j["interfaces"][0].get("sandbox").is_none());
            assert_eq!(j["dns"]["nameservers"][0], "10.96.0.10");
            // Whatever we render, we read back the same (minus fields the version cannot carry).
            let back = CniResult::from_json(&j).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn rejects_malformed_results() {
        for bad in [
            json!([]),
            json!({"ips": "x"}),
            json!({"ips": [{"address": "10.0.0.1"}]}),
            json!({"ips": [{"address": "10.0.0.1/24", "interface": 3}]}),
            json!({"ips": [{"address": "10.0.0.1/24", "gateway": "nope"}]}),
            json!({"routes": [{"gw": "10.0.0.1"}]}),
        ] {
            assert_eq!(CniResult::from_json(&bad).unwrap_err().code, 6, "{bad}");
        }
    }

    #[test]
    fn chaining_keeps_prev_first_and_reindexes_our_ips() {
        let prev = CniResult {
            interfaces: vec![Interface { name: "up0".into(), ..Default::default() }],
            ips: vec![IpConfig { address: "192.168.0.2/24".parse().unwrap(), gateway: None, interface: Some(0) }],
            routes: vec![Route::new("192.168.9.0/24".parse().unwrap(), None)],
            dns: Dns {
                nameservers: vec!["1.1.1.1".into(), "10.96.0.10".into()],
                domain: Some("prev.local".into()),
                search: vec!["a".into()],
                options: vec!["ndots:5".into()],
            },
        };
        let mut ours = sample();
        ours.dns.search = vec!["a".into(), "b".into()];
        let merged = ours.clone().chained_after(&prev);
        let names: Vec<&str> = merged.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["up0", "tr0123", "eth0"]);
        let idx: Vec<Option<usize>> = merged.ips.iter().map(|i| i.interface).collect();
        assert_eq!(idx, [Some(0), Some(2), Some(2)], "our IPs still point at our eth0");
        assert_eq!(merged.ips[0], prev.ips[0]);
        assert_eq!(merged.routes.len(), 2);
        assert_eq!(merged.routes[0], prev.routes[0]);
        assert_eq!(merged.dns.nameservers, ["1.1.1.1", "10.96.0.10"], "no duplicate nameserver");
        assert_eq!(merged.dns.search, ["a", "b"]);
        assert_eq!(merged.dns.options, ["ndots:5"]);
        assert_eq!(merged.dns.domain.as_deref(), Some("prev.local"), "ours has none: prev's stays");
        ours.dns.domain = Some("ours.local".into());
        assert_eq!(ours.chained_after(&prev).dns.domain.as_deref(), Some("ours.local"));
        // An IP without an interface index stays without one; an empty prev changes nothing.
        let bare = CniResult {
            ips: vec![IpConfig { address: "10.0.0.2/24".parse().unwrap(), gateway: None, interface: None }],
            ..Default::default()
        };
        assert_eq!(bare.clone().chained_after(&prev).ips[1].interface, None);
        assert_eq!(sample().chained_after(&CniResult::default()), sample());
    }

    #[test]
    fn dns_fields_render_only_when_set_and_read_back() {
        let mut r = sample();
        assert_eq!(r.to_json(Version::V1_0_0, "1.0.0")["dns"], json!({"nameservers": ["10.96.0.10"]}));
        r.dns = Dns {
            nameservers: vec![],
            domain: Some("cluster.local".into()),
            search: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        let j = r.to_json(Version::V1_0_0, "1.0.0");
        assert_eq!(
            j["dns"],
            json!({"domain": "cluster.local", "search": ["svc.cluster.local"], "options": ["ndots:5"]})
        );
        assert_eq!(CniResult::from_json(&j).unwrap().dns, r.dns);
        r.dns = Dns::default();
        assert_eq!(r.to_json(Version::V1_0_0, "1.0.0")["dns"], json!({}));
        for no_dns in [json!({}), json!({"dns": "x"}), json!({"dns": null})] {
            assert_eq!(CniResult::from_json(&no_dns).unwrap().dns, Dns::default(), "{no_dns}");
        }
    }

    #[test]
    fn empty_strings_read_as_absent() {
        let v = json!({"interfaces": [{"name": "eth0", "sandbox": ""}],
                       "ips": [{"address": "10.0.0.2/24", "gateway": ""}], "routes": [{"dst": "0.0.0.0/0", "gw": ""}]});
        let r = CniResult::from_json(&v).unwrap();
        assert_eq!(r.interfaces[0].sandbox, None);
        assert_eq!(r.ips[0].gateway, None);
        assert_eq!(r.routes[0].gw, None);
        let v = json!({"interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}]});
        assert_eq!(CniResult::from_json(&v).unwrap().interfaces[0].sandbox.as_deref(), Some("/run/netns/p"));
    }
}
