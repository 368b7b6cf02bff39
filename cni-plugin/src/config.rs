//! The `trellis` plugin's own fields of the network config, parsed and validated before anything is touched.
use ipnet::IpNet;
use serde_json::Value;
use trellis_cni_types::{codes, CniError, NetConf};

pub const DEFAULT_BRIDGE: &str = "trellis0";
pub const TRELLIS_IPAM: &str = "trellis-ipam";
/// The reference bridge's fields that trellis does not implement (code 2 when set).
pub const UNSUPPORTED: [&str; 3] = ["vlan", "promiscMode", "macspoofchk"];

#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub bridge: String,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub default_gateway: bool,
    pub ip_masq: bool,
    pub cluster_cidrs: Vec<IpNet>,
    /// With `ip_masq`: traffic from clusterCIDR to clusterCIDR skips kernel conntrack (`untrackClusterTraffic`).
    pub untrack_cluster: bool,
    /// The `ipam` object as sent; its `type` picks in-process (`trellis-ipam`) or a delegated plugin.
    pub ipam: Value,
    pub ipam_type: String,
}

fn field<'a>(raw: &'a Value, key: &str) -> Option<&'a Value> {
    raw.get(key).filter(|v| !v.is_null())
}

fn bad(field: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(codes::INVALID_NETWORK_CONFIG, format!("invalid network config: {field}: {why}"), "")
}

fn bool_field(raw: &Value, key: &str, default: bool) -> Result<bool, CniError> {
    match field(raw, key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(key, format!("must be true or false, got {other}"))),
    }
}

impl PluginConfig {
    pub fn from_conf(conf: &NetConf) -> Result<PluginConfig, CniError> {
        let raw = &conf.raw;
        let bridge = match field(raw, "bridge") {
            None => DEFAULT_BRIDGE.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(bad("bridge", format!("must be a string, got {other}"))),
        };
        trellis_cni_types::env::validate_ifname(&bridge).map_err(|_| {
            bad("bridge", format!("{bridge:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)"))
        })?;
        let mtu = match field(raw, "mtu") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(m) if (68..=65535).contains(&m) => Some(m as u32),
                _ => return Err(bad("mtu", format!("must be an integer between 68 and 65535, got {v}"))),
            },
        };
        let cluster_cidrs = match field(raw, "clusterCIDR") {
            None => vec![],
            Some(Value::String(s)) => parse_cidrs(s.split(',').map(str::trim).filter(|x| !x.is_empty()))?,
            Some(Value::Array(a)) => {
                let strs: Option<Vec<&str>> = a.iter().map(|v| v.as_str()).collect();
                parse_cidrs(strs.ok_or_else(|| bad("clusterCIDR", "must hold CIDR strings"))?.into_iter())?
            }
            Some(other) => return Err(bad("clusterCIDR", format!("must be a CIDR string, got {other}"))),
        };
        let ip_masq = bool_field(raw, "ipMasq", false)?;
        if ip_masq && cluster_cidrs.is_empty() {
            return Err(bad("ipMasq", "needs \"clusterCIDR\" so that traffic inside the cluster is not masqueraded"));
        }
        let ipam = field(raw, "ipam").cloned().ok_or_else(|| bad("ipam", "missing: trellis needs an IPAM section"))?;
        let ipam_type = ipam
            .get("type")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("ipam.type", "missing"))?
            .to_string();
        // Fields of the reference bridge that change what the pod gets: refused rather than silently ignored.
        // Any other unknown field is ignored (runtimes and conflists add their own keys).
        for unsupported in UNSUPPORTED {
            if let Some(value) = field(raw, unsupported) {
                // SPEC error code 2: "The error message must contain the key and value of the unsupported field."
                return Err(CniError::new(
                    codes::UNSUPPORTED_FIELD,
                    format!("unsupported field {unsupported:?}: {value}: trellis does not implement it"),
                    "remove it from the network config",
                ));
            }
        }
        Ok(PluginConfig {
            bridge,
            mtu,
            hairpin: bool_field(raw, "hairpinMode", true)?,
            default_gateway: bool_field(raw, "isDefaultGateway", true)?,
            ip_masq,
            cluster_cidrs,
            untrack_cluster: bool_field(raw, "untrackClusterTraffic", true)?,
            ipam,
            ipam_type,
        })
    }

    pub fn in_process_ipam(&self) -> bool {
        self.ipam_type == TRELLIS_IPAM
    }
}

fn parse_cidrs<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<IpNet>, CniError> {
    items
        .map(|s| s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| bad("clusterCIDR", format!("{s:?} is not a CIDR"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(extra: Value) -> Result<PluginConfig, CniError> {
        let mut v = json!({"cniVersion": "1.0.0", "name": "n", "type": "trellis",
                           "ipam": {"type": "trellis-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}]]}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        PluginConfig::from_conf(&NetConf::from_value(v)?)
    }

    #[test]
    fn defaults() {
        let c = conf(json!({})).unwrap();
        assert_eq!(c.bridge, "trellis0");
        assert!(c.hairpin && c.default_gateway && !c.ip_masq);
        assert!(c.untrack_cluster, "intra-cluster traffic is untracked unless told otherwise");
        assert_eq!(c.mtu, None);
        assert!(c.in_process_ipam());
    }

    #[test]
    fn full_config() {
        let c = conf(json!({"bridge": "br-x", "mtu": 1450, "ipMasq": true, "clusterCIDR": "10.244.0.0/16, fd00::/48",
                            "hairpinMode": false}))
        .unwrap();
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(c.cluster_cidrs.len(), 2);
        assert!(!c.hairpin);
    }

    #[test]
    fn rejects_bad_fields_with_codes() {
        for (extra, code) in [
            (json!({"bridge": "a/b"}), 7),
            (json!({"bridge": "waytoolongbridgename"}), 7),
            (json!({"bridge": 3}), 7),
            (json!({"mtu": 10}), 7),
            (json!({"mtu": "1500"}), 7),
            (json!({"ipMasq": true}), 7),
            (json!({"ipMasq": "yes", "clusterCIDR": "10.0.0.0/8"}), 7),
            (json!({"untrackClusterTraffic": "no"}), 7),
            (json!({"clusterCIDR": "10.0.0.0/33"}), 7),
            (json!({"ipam": {}}), 7),
            (json!({"ipam": null}), 7),
            (json!({"vlan": 100}), 2),
        ] {
            let e = conf(extra.clone()).unwrap_err();
            assert_eq!(e.code, code, "{extra}: {e}");
        }
    }

    #[test]
    fn unsupported_fields_name_key_and_value() {
        for (key, value) in [("vlan", json!(100)), ("promiscMode", json!(true)), ("macspoofchk", json!(false))] {
            let e = conf(json!({ key: value.clone() })).unwrap_err();
            assert_eq!(e.code, 2, "{key}");
            assert!(e.msg.contains(&format!("{key:?}")) && e.msg.contains(&value.to_string()), "{key}: {e}");
        }
        // null is "not set", and unknown fields are ignored.
        assert!(conf(json!({"vlan": null, "someRuntimeKey": {"x": 1}})).is_ok());
    }

    #[test]
    fn booleans_and_mtu_bounds_are_exact() {
        let c = conf(json!({"hairpinMode": false, "isDefaultGateway": false, "ipMasq": false})).unwrap();
        assert!(!c.hairpin && !c.default_gateway && !c.ip_masq);
        assert!(!conf(json!({"untrackClusterTraffic": false})).unwrap().untrack_cluster);
        assert!(conf(json!({"untrackClusterTraffic": null})).unwrap().untrack_cluster);
        let c = conf(json!({"hairpinMode": true, "isDefaultGateway": true, "ipMasq": true,
                            "clusterCIDR": ["10.0.0.0/8", "fd00::/8"]}))
        .unwrap();
        assert!(c.hairpin && c.default_gateway && c.ip_masq);
        assert_eq!(c.cluster_cidrs, vec!["10.0.0.0/8".parse::<IpNet>().unwrap(), "fd00::/8".parse().unwrap()]);
        assert_eq!(conf(json!({"mtu": 68})).unwrap().mtu, Some(68));
        assert_eq!(conf(json!({"mtu": 65535})).unwrap().mtu, Some(65535));
        assert_eq!(conf(json!({"mtu": 67})).unwrap_err().code, 7);
        assert_eq!(conf(json!({"mtu": 65536})).unwrap_err().code, 7);
        assert_eq!(
            conf(json!({"clusterCIDR": "10.1.2.3/8"})).unwrap().cluster_cidrs,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(conf(json!({"clusterCIDR": [3]})).unwrap_err().code, 7);
        assert_eq!(conf(json!({"clusterCIDR": 3})).unwrap_err().code, 7);
        assert_eq!(conf(json!({"ipam": {"type": ""}})).unwrap_err().code, 7);
        let delegated = conf(json!({"ipam": {"type": "host-local"}})).unwrap();
        assert!(!delegated.in_process_ipam());
        assert_eq!(delegated.ipam_type, "host-local");
        assert_eq!(delegated.ipam["type"], "host-local");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Arbitrary JSON values, biased toward the shapes the parser looks at.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z0-9./:, -]{0,24}".prop_map(Value::String),
            prop_oneof![Just("10.0.0.0/8"), Just("1.0.0"), Just("trellis-ipam"), Just("fd00::/64"), Just("eth0")]
                .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_string()),
                        Just("subnet".to_string()),
                        Just("ranges".to_string()),
                        "[a-zA-Z]{1,8}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the fields hold, parsing returns a config or a CNI error with a spec code; it never panics.
        #[test]
        fn any_field_values_give_a_config_or_a_coded_error(
            bridge in json_value(), mtu in json_value(), masq in json_value(), cidr in json_value(),
            hairpin in json_value(), ipam in json_value(), version in json_value(),
        ) {
            let v = json!({"cniVersion": version, "name": "n", "type": "trellis", "bridge": bridge, "mtu": mtu,
                           "ipMasq": masq, "clusterCIDR": cidr, "hairpinMode": hairpin, "ipam": ipam});
            let parsed = NetConf::from_value(v).and_then(|c| {
                let cfg = PluginConfig::from_conf(&c)?;
                crate::ipam::IpamBackend::new(&cfg, &c).map(|_| cfg)
            });
            match parsed {
                Ok(cfg) => {
                    prop_assert!(cfg.bridge.len() <= 15 && !cfg.bridge.is_empty());
                    prop_assert!(cfg.mtu.is_none_or(|m| (68..=65535).contains(&m)));
                    prop_assert!(!cfg.ip_masq || !cfg.cluster_cidrs.is_empty());
                }
                Err(e) => prop_assert!([1, 2, 4, 6, 7].contains(&e.code), "unexpected code {}: {}", e.code, e),
            }
        }

        /// Arbitrary bytes on stdin never panic the whole invocation path up to the kernel.
        #[test]
        fn arbitrary_stdin_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(c) = NetConf::parse(&bytes) {
                let _ = PluginConfig::from_conf(&c);
            }
        }
    }
}
