//! Services as `apply` takes them: every field the service proxy reads is checked before anything is written,
//! and NodePort / LoadBalancer ports without a `nodePort` get one from 30000-32767, unique within the lab.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::error::{LabError, Result};

/// The apiserver's default `--service-node-port-range`.
pub const NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

fn bad(svc: &Value, reason: String) -> LabError {
    let name = svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
    LabError::Manifest { file: format!("Service {name}"), reason }
}

fn spec_str<'a>(svc: &'a Value, field: &str) -> Option<&'a str> {
    svc.get("spec").and_then(|s| s.get(field)).and_then(Value::as_str)
}

/// `spec.type`, ClusterIP when absent.
pub fn service_type(svc: &Value) -> &str {
    spec_str(svc, "type").unwrap_or("ClusterIP")
}

/// NodePort Services, and LoadBalancers unless `allocateLoadBalancerNodePorts: false`, have node ports.
pub fn needs_node_ports(svc: &Value) -> bool {
    match service_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => svc.pointer("/spec/allocateLoadBalancerNodePorts").and_then(Value::as_bool) != Some(false),
        _ => false,
    }
}

fn ports(svc: &Value) -> Vec<Value> {
    svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The nodePorts a Service holds.
pub fn node_ports(svc: &Value) -> BTreeSet<u16> {
    ports(svc)
        .iter()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()))
        .collect()
}

/// A Service port's number (1-65535) from a JSON value.
fn port_number(v: &Value) -> Option<u16> {
    v.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|&n| n > 0)
}

/// IANA service name, as Kubernetes checks a named `targetPort`: 1-15 of a-z, 0-9, '-', at least one letter,
/// no leading, trailing or double '-'.
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn one_of(svc: &Value, field: &str, allowed: &[&str]) -> Result<()> {
    match svc.get("spec").and_then(|s| s.get(field)) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(v)) if allowed.contains(&v.as_str()) => Ok(()),
        Some(v) => Err(bad(svc, format!("spec.{field} {v} is not one of {}", allowed.join(", ")))),
    }
}

fn ip_list(svc: &Value, pointer: &str) -> Result<Vec<IpAddr>> {
    match svc.pointer(pointer) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .ok_or_else(|| bad(svc, format!("{pointer}: {v} is not an IP address")))
            })
            .collect(),
        Some(v) => Err(bad(svc, format!("{pointer} {v} is not a list"))),
    }
}

fn check_cluster_ips(svc: &Value, service_cidr: Ipv4Net) -> Result<()> {
    let in_cidr = |ip: &str| -> Result<()> {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if service_cidr.contains(&v4) => Ok(()),
            Ok(IpAddr::V4(v4)) => Err(bad(svc, format!("clusterIP {v4} is outside serviceCIDR {service_cidr}"))),
            // The lab's serviceCIDR is IPv4; a second family's address is kept for the proxy as given.
            Ok(IpAddr::V6(_)) => Ok(()),
            Err(_) => Err(bad(svc, format!("clusterIP {ip:?} is not an IP address"))),
        }
    };
    let given = spec_str(svc, "clusterIP").filter(|s| !s.is_empty());
    if let Some(ip) = given.filter(|&s| s != "None") {
        if ip.parse::<Ipv4Addr>().is_err() {
            return Err(bad(svc, format!("clusterIP {ip:?} is not an IPv4 address (the lab's primary family)")));
        }
        in_cidr(ip)?;
    }
    let list: Vec<String> = match svc.pointer("/spec/clusterIPs") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad(svc, format!("clusterIPs: {v} is no string"))))
            .collect::<Result<_>>()?,
        Some(v) => return Err(bad(svc, format!("clusterIPs {v} is not a list"))),
    };
    if list.len() > 2 {
        return Err(bad(svc, "clusterIPs holds at most one address per family".into()));
    }
    if let (Some(first), Some(ip)) = (list.first(), given) {
        if first != ip {
            return Err(bad(svc, format!("clusterIPs[0] {first} differs from clusterIP {ip}")));
        }
    }
    if list.iter().any(|s| s == "None") {
        return if list.len() == 1 { Ok(()) } else { Err(bad(svc, "clusterIPs: None stands alone".into())) };
    }
    for ip in &list {
        in_cidr(ip)?;
    }
    if list.len() == 2 {
        let fam = |s: &str| s.parse::<IpAddr>().map(|a| a.is_ipv4()).ok();
        if fam(&list[0]) == fam(&list[1]) {
            return Err(bad(svc, "clusterIPs: dual-stack takes one address of each family".into()));
        }
        if list[0].parse::<Ipv4Addr>().is_err() {
            return Err(bad(svc, "clusterIPs: the lab's primary family is IPv4; list it first".into()));
        }
    }
    Ok(())
}

fn check_ports(svc: &Value) -> Result<()> {
    let ps = ports(svc);
    let node_ports_ok = matches!(service_type(svc), "NodePort" | "LoadBalancer");
    let mut seen = BTreeSet::new();
    let mut names = BTreeSet::new();
    for p in &ps {
        let port =
            p.get("port").and_then(port_number).ok_or_else(|| bad(svc, format!("port of {p} is not 1-65535")))?;
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            return Err(bad(svc, format!("protocol {proto:?} is not TCP, UDP or SCTP")));
        }
        if !seen.insert((port, proto)) {
            return Err(bad(svc, format!("port {port}/{proto} is listed twice")));
        }
        match p.get("name") {
            None | Some(Value::Null) if ps.len() == 1 => {}
            Some(Value::String(n)) if n.is_empty() && ps.len() == 1 => {}
            Some(Value::String(n)) if crate::topology::validate_dns_label("port name", n).is_ok() => {
                if !names.insert(n.clone()) {
                    return Err(bad(svc, format!("port name {n:?} is used twice")));
                }
            }
            _ => return Err(bad(svc, format!("port {port}/{proto}: a Service with several ports names each one"))),
        }
        match p.get("targetPort") {
            None | Some(Value::Null) => {}
            Some(t @ Value::Number(_)) if port_number(t).is_some() => {}
            Some(Value::String(s)) if s.parse::<u16>().is_ok_and(|n| n > 0) || is_port_name(s) => {}
            Some(t) => return Err(bad(svc, format!("targetPort {t} is neither 1-65535 nor a port name"))),
        }
        match p.get("nodePort") {
            None | Some(Value::Null) => {}
            Some(n) => {
                let n = n.as_u64().and_then(|n| u16::try_from(n).ok());
                match n {
                    Some(n) if !node_ports_ok => {
                        return Err(bad(svc, format!("nodePort {n} needs type NodePort or LoadBalancer")))
                    }
                    Some(n) if NODE_PORT_RANGE.contains(&n) => {}
                    _ => return Err(bad(svc, format!("nodePort of {p} is outside {NODE_PORT_RANGE:?}"))),
                }
            }
        }
    }
    Ok(())
}

/// Checks every Service field the proxy reads; nothing is written when one is wrong.
pub fn validate_service(svc: &Value, service_cidr: Ipv4Net) -> Result<()> {
    one_of(svc, "type", &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"])?;
    if service_type(svc) == "ExternalName" && spec_str(svc, "externalName").is_none_or(str::is_empty) {
        return Err(bad(svc, "type ExternalName needs spec.externalName".into()));
    }
    check_cluster_ips(svc, service_cidr)?;
    check_ports(svc)?;
    ip_list(svc, "/spec/externalIPs")?;
    one_of(svc, "externalTrafficPolicy", &["Cluster", "Local"])?;
    one_of(svc, "internalTrafficPolicy", &["Cluster", "Local"])?;
    one_of(svc, "sessionAffinity", &["None", "ClientIP"])?;
    if let Some(t) = svc.pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds") {
        if !t.as_u64().is_some_and(|t| (1..=86400).contains(&t)) {
            return Err(bad(svc, format!("sessionAffinityConfig.clientIP.timeoutSeconds {t} is not 1-86400")));
        }
    }
    if let Some(v) = svc.pointer("/spec/publishNotReadyAddresses") {
        if !v.is_boolean() {
            return Err(bad(svc, format!("publishNotReadyAddresses {v} is not true or false")));
        }
    }
    if let Some(l) = svc.pointer("/metadata/labels") {
        if !l.is_null() && !l.as_object().is_some_and(|m| m.values().all(Value::is_string)) {
            return Err(bad(svc, "metadata.labels must map strings to strings".into()));
        }
    }
    match svc.pointer("/status/loadBalancer/ingress") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for i in a {
                let ip = i.get("ip").and_then(Value::as_str);
                let host = i.get("hostname").and_then(Value::as_str);
                if ip.is_none() && host.is_none() {
                    return Err(bad(svc, format!("status.loadBalancer.ingress entry {i} has no ip or hostname")));
                }
                if ip.is_some_and(|ip| ip.parse::<IpAddr>().is_err()) {
                    return Err(bad(svc, format!("status.loadBalancer.ingress ip {i} is not an IP address")));
                }
            }
        }
        Some(v) => return Err(bad(svc, format!("status.loadBalancer.ingress {v} is not a list"))),
    }
    Ok(())
}

/// Fills in every missing `nodePort` of a Service that needs them: the one the same port (number and protocol)
/// had in `previous` (the Service as it was), else the lowest free one. `taken` holds the other Services'
/// nodePorts; a given nodePort among them is an error, as at the apiserver. Returns the nodePorts it holds now.
pub fn allocate_node_ports(svc: &mut Value, previous: Option<&Value>, taken: &BTreeSet<u16>) -> Result<BTreeSet<u16>> {
    if !needs_node_ports(svc) {
        return Ok(node_ports(svc));
    }
    let key = |p: &Value| {
        (p.get("port").and_then(Value::as_u64), p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string())
    };
    let before: Vec<Value> = previous.map(ports).unwrap_or_default();
    let mut mine: BTreeSet<u16> = BTreeSet::new();
    let given = node_ports(svc);
    for n in &given {
        if taken.contains(n) {
            return Err(bad(svc, format!("nodePort {n} is already allocated to another Service")));
        }
    }
    mine.extend(&given);
    let Some(list) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else {
        return Ok(mine);
    };
    for p in list.iter_mut() {
        if p.get("nodePort").is_some_and(|n| !n.is_null()) {
            continue;
        }
        let kept = before
            .iter()
            .find(|b| key(b) == key(p))
            .and_then(|b| b.get("nodePort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()))
            .filter(|n| !taken.contains(n) && !mine.contains(n));
        let n = match kept {
            Some(n) => n,
            None => NODE_PORT_RANGE
                .clone()
                .find(|n| !taken.contains(n) && !mine.contains(n))
                .ok_or_else(|| LabError::Manifest { file: "Service".into(), reason: "no nodePort left".into() })?,
        };
        mine.insert(n);
        p["nodePort"] = Value::from(n);
    }
    Ok(mine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cidr() -> Ipv4Net {
        "10.96.0.0/16".parse().unwrap()
    }

    fn svc(spec: Value) -> Value {
        json!({"kind": "Service", "metadata": {"name": "web", "labels": {"app": "web"}}, "spec": spec})
    }

    #[test]
    fn every_field_of_the_issue_is_accepted() {
        let s = svc(json!({
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}
            ],
            "externalIPs": ["172.30.0.100"],
            "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "publishNotReadyAddresses": true,
            "selector": {"app": "web"}
        }));
        let mut s = s;
        s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "172.30.0.200"}]}});
        validate_service(&s, cidr()).unwrap();
    }

    #[test]
    fn wrong_fields_are_refused_with_the_field_named() {
        let cases = [
            (json!({"type": "Bogus"}), "spec.type"),
            (json!({"clusterIP": "10.1.0.1"}), "outside serviceCIDR"),
            (json!({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.6"]}), "differs"),
            (json!({"clusterIPs": ["10.96.0.6", "10.96.0.7"]}), "one address of each family"),
            (json!({"ports": [{"port": 0}]}), "1-65535"),
            (json!({"ports": [{"port": 80, "protocol": "ICMP"}]}), "protocol"),
            (json!({"ports": [{"port": 80}, {"port": 81}]}), "names each one"),
            (json!({"ports": [{"port": 80, "targetPort": "Bad_Name"}]}), "targetPort"),
            (json!({"ports": [{"port": 80, "nodePort": 30001}]}), "needs type NodePort"),
            (json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}), "outside"),
            (json!({"externalIPs": ["not-an-ip"]}), "externalIPs"),
            (json!({"externalTrafficPolicy": "Global"}), "externalTrafficPolicy"),
            (json!({"internalTrafficPolicy": "Nearby"}), "internalTrafficPolicy"),
            (json!({"sessionAffinity": "Cookie"}), "sessionAffinity"),
            (json!({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}), "timeoutSeconds"),
            (json!({"publishNotReadyAddresses": "yes"}), "publishNotReadyAddresses"),
            (json!({"type": "ExternalName"}), "externalName"),
        ];
        for (spec, want) in cases {
            let e = validate_service(&svc(spec.clone()), cidr()).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
        let mut s = svc(json!({}));
        s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "x"}]}});
        assert!(validate_service(&s, cidr()).is_err());
    }

    #[test]
    fn port_names_follow_iana() {
        let names = [("http", true), ("h2c-1", true), ("8080", false), ("a--b", false), ("-a", false)];
        for (name, ok) in names.into_iter().chain([("averyveryverylongname", false)]) {
            assert_eq!(is_port_name(name), ok, "{name}");
        }
    }

    #[test]
    fn node_ports_are_allocated_lowest_free_kept_and_unique() {
        let mut s = svc(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 80},
            {"name": "b", "port": 81, "nodePort": 30000},
            {"name": "c", "port": 53, "protocol": "UDP"}
        ]}));
        let taken: BTreeSet<u16> = [30001].into();
        let got = allocate_node_ports(&mut s, None, &taken).unwrap();
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30002);
        assert_eq!(s["spec"]["ports"][1]["nodePort"], 30000);
        assert_eq!(s["spec"]["ports"][2]["nodePort"], 30003);
        assert_eq!(got, [30000, 30002, 30003].into());
        // Applied again without nodePorts: each port keeps the one it had.
        let previous = s.clone();
        let mut again = svc(json!({"type": "NodePort", "ports": [{"name": "c", "port": 53, "protocol": "UDP"}]}));
        allocate_node_ports(&mut again, Some(&previous), &taken).unwrap();
        assert_eq!(again["spec"]["ports"][0]["nodePort"], 30003);
        // A nodePort another Service holds is refused.
        let mut clash = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}));
        assert!(allocate_node_ports(&mut clash, None, &taken).unwrap_err().to_string().contains("already allocated"));
        // ClusterIP Services and LoadBalancers without node ports get none.
        let mut cip = svc(json!({"ports": [{"port": 80}]}));
        assert!(allocate_node_ports(&mut cip, None, &taken).unwrap().is_empty());
        assert!(cip["spec"]["ports"][0].get("nodePort").is_none());
        let mut lb =
            svc(json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}));
        allocate_node_ports(&mut lb, None, &taken).unwrap();
        assert!(lb["spec"]["ports"][0].get("nodePort").is_none());
        // The range runs out.
        let full: BTreeSet<u16> = NODE_PORT_RANGE.collect();
        let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        assert!(allocate_node_ports(&mut s, None, &full).is_err());
    }
}
