use super::*;
use proptest::prelude::*;

fn parse(ipam: Value) -> Result<IpamConfig> {
    IpamConfig::from_ipam_value("net1", &ipam)
}

fn err_of(ipam: Value) -> String {
    match parse(ipam) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => {
            assert_eq!(e.cni_code(), 7, "{e}");
            e.to_string()
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn defaults_follow_host_local_v4() {
    let c = parse(json!({"type": "trellis-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]})).unwrap();
    let r = &c.range_sets[0].ranges[0];
    assert_eq!(r.range_start, ip("10.244.1.1"));
    assert_eq!(r.range_end, ip("10.244.1.254"));
    assert_eq!(r.gateway, ip("10.244.1.1"));
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/networks"));
    assert_eq!(c.store_dir(), PathBuf::from("/var/lib/cni/networks/net1"));
    assert!(c.routes.is_empty());
    assert_eq!(c.resolv_conf, None);
}

#[test]
fn defaults_follow_host_local_v6() {
    let c = parse(json!({"ranges": [[{"subnet": "fd00:10:244:1::/64"}]]})).unwrap();
    let r = &c.range_sets[0].ranges[0];
    assert_eq!(r.range_start, ip("fd00:10:244:1::1"));
    // IPv6 has no broadcast: the last address is allocatable.
    assert_eq!(r.range_end, ip("fd00:10:244:1:ffff:ffff:ffff:ffff"));
    assert_eq!(r.gateway, ip("fd00:10:244:1::1"));
}

#[test]
fn contract_example_parses() {
    let c = IpamConfig::from_net_config(
        br#"{"cniVersion":"1.0.0","name":"trellis","type":"trellis","ipam":{ "type": "trellis-ipam",
      "ranges": [ [ {"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.200", "gateway": "10.244.1.1"} ],
                  [ {"subnet": "fd00:10:244:1::/64"} ] ],
      "routes": [ {"dst": "0.0.0.0/0"}, {"dst": "fd00::/8", "gw": "fd00:10:244:1::1"} ],
      "dataDir": "/tmp/x", "resolvConf": "/etc/resolv.conf" }}"#,
    )
    .unwrap();
    assert_eq!(c.network, "trellis");
    assert_eq!(c.range_sets.len(), 2);
    assert_eq!(c.range_sets[0].family(), Family::V4);
    assert_eq!(c.range_sets[1].family(), Family::V6);
    assert_eq!(c.range_sets[0].ranges[0].range_start, ip("10.244.1.10"));
    assert_eq!(c.range_sets[0].ranges[0].range_end, ip("10.244.1.200"));
    assert_eq!(c.routes[0], Route { dst: "0.0.0.0/0".parse().unwrap(), gw: None });
    assert_eq!(c.routes[1].gw, Some(ip("fd00:10:244:1::1")));
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
}

#[test]
fn legacy_flat_form_is_prepended() {
    let c = parse(json!({"subnet": "10.0.0.0/16", "rangeStart": "10.0.5.0", "gateway": "10.0.0.254",
        "ranges": [[{"subnet": "fd00::/64"}]]}))
    .unwrap();
    assert_eq!(c.range_sets.len(), 2);
    let r = &c.range_sets[0].ranges[0];
    assert_eq!(r.subnet, "10.0.0.0/16".parse::<IpNet>().unwrap());
    assert_eq!(r.range_start, ip("10.0.5.0"));
    assert_eq!(r.range_end, ip("10.0.255.254"));
    assert_eq!(r.gateway, ip("10.0.0.254"));
    assert_eq!(c.range_sets[1].family(), Family::V6);
}

#[test]
fn empty_strings_mean_absent_like_host_local() {
    let c = parse(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "", "gateway": " "}]],
        "routes": [{"dst": "0.0.0.0/0", "gw": ""}], "resolvConf": ""}))
    .unwrap();
    assert_eq!(c.range_sets[0].ranges[0].range_start, ip("10.0.0.1"));
    assert_eq!(c.range_sets[0].ranges[0].gateway, ip("10.0.0.1"));
    assert_eq!(c.routes[0].gw, None);
    assert_eq!(c.resolv_conf, None);
}

#[test]
fn legacy_fields_without_subnet_are_rejected() {
    let e = err_of(json!({"rangeStart": "10.0.0.5", "ranges": [[{"subnet": "10.0.0.0/24"}]]}));
    assert!(e.contains("rangeStart") && e.contains("without \"subnet\""), "{e}");
}

#[test]
fn bad_cidr() {
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0/24"}]]}));
    assert!(e.contains("ranges[0][0].subnet") && e.contains("invalid CIDR"), "{e}");
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0"}]]}));
    assert!(e.contains("invalid CIDR"), "{e}");
}

#[test]
fn host_bits_set_names_the_network() {
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.5/24"}]]}));
    assert!(e.contains("host bits") && e.contains("10.0.0.0/24"), "{e}");
}

#[test]
fn too_small_subnets() {
    for s in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"] {
        let e = err_of(json!({"ranges": [[{"subnet": s}]]}));
        assert!(e.contains("too small"), "{s}: {e}");
    }
    // /30 and /126 still have usable addresses.
    let c = parse(json!({"ranges": [[{"subnet": "10.0.0.0/30"}], [{"subnet": "fd00::/126"}]]})).unwrap();
    assert_eq!(c.range_sets[0].ranges[0].range_end, ip("10.0.0.2"));
    assert_eq!(c.range_sets[1].ranges[0].range_end, ip("fd00::3"));
}

#[test]
fn range_bounds_outside_subnet_or_reversed() {
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}));
    assert!(e.contains("rangeStart") && e.contains("outside subnet"), "{e}");
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.255"}]]}));
    assert!(e.contains("rangeEnd") && e.contains("broadcast"), "{e}");
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.0"}]]}));
    assert!(e.contains("network address"), "{e}");
    let e =
        err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.40"}]]}));
    assert!(e.contains("after rangeEnd"), "{e}");
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "fd00::1"}]]}));
    assert!(e.contains("gateway") && e.contains("IPv6"), "{e}");
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "banana"}]]}));
    assert!(e.contains("invalid IP address"), "{e}");
}

#[test]
fn range_of_only_the_gateway_is_rejected() {
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.1", "rangeEnd": "10.0.0.1"}]]}));
    assert!(e.contains("nothing to allocate"), "{e}");
}

#[test]
fn overlaps_within_and_across_sets() {
    let e = err_of(json!({"ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.100"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100", "rangeEnd": "10.0.0.200"}]]}));
    assert!(e.contains("ranges[0][1]") && e.contains("overlaps ranges[0][0]"), "{e}");
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/16"}], [{"subnet": "10.0.3.0/24"}]]}));
    assert!(e.contains("ranges[1][0]") && e.contains("overlaps ranges[0][0]"), "{e}");
    // Disjoint spans of one subnet are fine (host-local allows it).
    parse(json!({"ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.99"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100", "rangeEnd": "10.0.0.200"}]]}))
    .unwrap();
    // Several range sets of one family are allowed too.
    let c = parse(json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]})).unwrap();
    assert_eq!(c.range_sets.len(), 2);
}

#[test]
fn mixed_families_in_one_set() {
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}));
    assert!(e.contains("mixes IPv4 and IPv6"), "{e}");
}

#[test]
fn empty_things_are_rejected() {
    assert!(err_of(json!({})).contains("no IP ranges"));
    assert!(err_of(json!({"ranges": []})).contains("no IP ranges"));
    assert!(err_of(json!({"ranges": [[]]})).contains("ranges[0]: is empty"));
    assert!(err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": ""})).contains("dataDir"));
    assert!(err_of(json!([1, 2])).contains("JSON object"));
    assert!(err_of(json!({"ranges": [[{"subnet": 5}]]})).contains("ipam"));
}

#[test]
fn routes_are_validated() {
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "nope"}]}));
    assert!(e.contains("routes[0].dst"), "{e}");
    let e = err_of(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]}));
    assert!(e.contains("routes[0].gw") && e.contains("different address families"), "{e}");
}

#[test]
fn network_name_must_be_one_path_component() {
    for name in ["", ".", "..", "a/b", "../etc"] {
        let e = IpamConfig::from_ipam_value(name, &json!({"ranges": [[{"subnet": "10.0.0.0/24"}]]})).unwrap_err();
        assert_eq!(e.cni_code(), 7, "{name:?}");
    }
    let e = IpamConfig::from_net_config(br#"{"ipam": {}}"#).unwrap_err();
    assert!(e.to_string().contains("name"), "{e}");
    let e = IpamConfig::from_net_config(br#"{"name": "x"}"#).unwrap_err();
    assert!(e.to_string().contains("\"ipam\""), "{e}");
    let e = IpamConfig::from_net_config(b"{not json").unwrap_err();
    assert_eq!(e.cni_code(), 6);
}

#[test]
fn canonical_form_round_trips() {
    let c = parse(json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
        "ranges": [[{"subnet": "fd00::/64", "rangeStart": "fd00::10"}]], "resolvConf": "/r"}))
    .unwrap();
    let again = parse(c.to_ipam_value()).unwrap();
    assert_eq!(c, again);
}

// ---- property tests -------------------------------------------------------------------------

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9./:-]{0,20}".prop_map(Value::String),
        // Strings that look like addresses, to go deeper into validation.
        prop_oneof![Just("10.0.0.0/24"), Just("10.0.0.5"), Just("fd00::/64"), Just("fd00::1"), Just("0.0.0.0/0")]
            .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        let key = prop_oneof![
            Just("ranges".to_string()),
            Just("subnet".to_string()),
            Just("rangeStart".to_string()),
            Just("rangeEnd".to_string()),
            Just("gateway".to_string()),
            Just("routes".to_string()),
            Just("dst".to_string()),
            Just("gw".to_string()),
            Just("dataDir".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid range set: `n` disjoint ranges carved out of one subnet, or separate subnets.
fn arb_valid_config() -> impl Strategy<Value = IpamConfig> {
    let v4 = (0u8..=200, 8u8..=30).prop_map(|(b, prefix)| {
        let net: IpNet = format!("{b}.0.0.0/{prefix}").parse::<IpNet>().unwrap().trunc();
        net
    });
    let v6 = (1u16..=0xfff0, 16u8..=126)
        .prop_map(|(w, prefix)| format!("fd00:{w:x}::/{prefix}").parse::<IpNet>().unwrap().trunc());
    let subnet = prop_oneof![v4, v6];
    (
        prop::collection::vec((subnet, any::<u64>(), any::<u64>(), any::<u64>()), 1..4),
        prop::option::of("/[a-z]{1,10}"),
        prop::collection::vec((any::<bool>(), 0u8..=32), 0..3),
    )
        .prop_filter_map("overlapping subnets", |(specs, dir, routes)| {
            let mut sets = Vec::new();
            for (subnet, a, b, g) in specs {
                let fam = Family::of_net(&subnet);
                let net = ip::network(&subnet);
                let lo = net + 1;
                let hi = match fam {
                    Family::V4 => ip::last(&subnet) - 1,
                    Family::V6 => ip::last(&subnet),
                };
                let span = hi - lo + 1;
                let (x, y) = (lo + a as u128 % span, lo + b as u128 % span);
                let (s, e) = (x.min(y), x.max(y));
                let gw = lo + g as u128 % span;
                if s == e && e == gw {
                    return None;
                }
                let r = Range {
                    subnet,
                    range_start: ip::from_u128(s, fam),
                    range_end: ip::from_u128(e, fam),
                    gateway: ip::from_u128(gw, fam),
                };
                if sets.iter().any(|s: &RangeSet| s.ranges[0].overlaps(&r)) {
                    return None;
                }
                sets.push(RangeSet { ranges: vec![r] });
            }
            let routes = routes
                .into_iter()
                .map(|(v6, p)| Route {
                    dst: if v6 { format!("fd00::/{}", p.max(8)) } else { format!("10.0.0.0/{p}") }
                        .parse::<IpNet>()
                        .unwrap()
                        .trunc(),
                    gw: None,
                })
                .collect();
            Some(IpamConfig {
                network: "net".into(),
                range_sets: sets,
                routes,
                data_dir: PathBuf::from(dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_string())),
                resolv_conf: None,
            })
        })
}

proptest! {
    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let _ = IpamConfig::from_ipam_value("n", &v);
        let net = json!({"name": "n", "ipam": v});
        let _ = IpamConfig::from_net_config(net.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,200}") {
        let _ = IpamConfig::from_net_config(s.as_bytes());
        let wrapped = format!(r#"{{"name":"n","ipam":{{"ranges":[[{{"subnet":{s:?}}}]],"routes":[{{"dst":{s:?}}}]}}}}"#);
        let _ = IpamConfig::from_net_config(wrapped.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = IpamConfig::from_net_config(&b);
    }

    #[test]
    fn valid_configs_round_trip(c in arb_valid_config()) {
        let v = c.to_ipam_value();
        let parsed = IpamConfig::from_ipam_value(&c.network, &v);
        prop_assert!(parsed.is_ok(), "{:?} rejected: {:?}", v, parsed.err());
        prop_assert_eq!(parsed.unwrap(), c);
    }
}
