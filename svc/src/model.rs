//! Services and endpoints as the datapath needs them, validated from the Kubernetes objects.
use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::Error;

/// Label by which a Service asks for another proxy: not ours to serve.
pub const LABEL_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label on a headless Service (and its slices): nothing to load-balance.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label tying an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        use trellis_ebpf_common::proto;
        match self {
            Proto::Tcp => proto::TCP,
            Proto::Udp => proto::UDP,
            Proto::Sctp => proto::SCTP,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// The port's name ("" when the Service has a single unnamed port); matches the EndpointSlice port's name.
    pub name: String,
    pub proto: Proto,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// A Service the proxy serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub namespace: String,
    pub name: String,
    /// ClusterIPs (one per family); empty for a headless Service.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortMapping>,
    /// `externalIPs` and `status.loadBalancer.ingress[].ip`: served like a NodePort, on the Service port.
    pub external_ips: Vec<IpAddr>,
    pub lb_ips: Vec<IpAddr>,
    pub node_port: bool,
    pub etp_local: bool,
    pub itp_local: bool,
    /// `sessionAffinity: ClientIP`: the timeout in seconds.
    pub affinity: Option<u32>,
    pub publish_not_ready: bool,
}

impl ServiceModel {
    /// A plain ClusterIP Service: one unnamed TCP port, every policy at its default.
    pub fn cluster_ip(namespace: &str, name: &str, vip: IpAddr, port: u16) -> ServiceModel {
        ServiceModel {
            namespace: namespace.into(),
            name: name.into(),
            cluster_ips: vec![vip],
            ports: vec![PortMapping { name: String::new(), proto: Proto::Tcp, port, node_port: None }],
            external_ips: vec![],
            lb_ips: vec![],
            node_port: false,
            etp_local: false,
            itp_local: false,
            affinity: None,
            publish_not_ready: false,
        }
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One endpoint address of a Service, with its port numbers by port name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: IpAddr,
    pub node: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// (port name, protocol) -> target port.
    pub ports: BTreeMap<(String, Proto), u16>,
}

fn invalid(object: &str, what: impl Into<String>) -> Error {
    Error::Invalid { object: object.into(), what: what.into() }
}

/// `Ok(None)`: a Service the proxy leaves alone (ExternalName, another proxy's, no ports).
pub fn service(svc: &Service) -> Result<Option<ServiceModel>, Error> {
    let meta = &svc.metadata;
    let name = meta.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| invalid("Service", "no metadata.name"))?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let object = format!("Service {namespace}/{name}");
    let labels = meta.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_PROXY_NAME)) {
        return Ok(None);
    }
    let Some(spec) = svc.spec.as_ref() else { return Ok(None) };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Ok(None);
    }
    if !matches!(kind, "ClusterIP" | "NodePort" | "LoadBalancer") {
        return Err(invalid(&object, format!("unknown spec.type {kind:?}")));
    }
    let raw_ips: Vec<String> = match spec.cluster_ips.clone().filter(|v| !v.is_empty()) {
        Some(v) => v,
        None => spec.cluster_ip.clone().into_iter().collect(),
    };
    let mut cluster_ips = Vec::new();
    for ip in &raw_ips {
        if ip == "None" || ip.is_empty() {
            continue;
        }
        cluster_ips.push(ip.parse().map_err(|_| invalid(&object, format!("clusterIP {ip:?} is not an address")))?);
    }
    let headless = raw_ips.iter().any(|i| i == "None") || labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS));
    if headless {
        return Ok(None);
    }
    let node_port = matches!(kind, "NodePort" | "LoadBalancer");
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let proto = Proto::parse(p.protocol.as_deref())
            .ok_or_else(|| invalid(&object, format!("port protocol {:?} is not TCP, UDP or SCTP", p.protocol)))?;
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(&object, format!("port {} is out of range", p.port)))?;
        let np = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(u16::try_from(n).map_err(|_| invalid(&object, format!("nodePort {n} is out of range")))?),
        };
        if node_port && np.is_none() {
            return Err(invalid(&object, format!("{kind} port {port} has no nodePort")));
        }
        ports.push(PortMapping {
            name: p.name.clone().unwrap_or_default(),
            proto,
            port,
            node_port: np.filter(|_| node_port),
        });
    }
    if ports.is_empty() {
        return Ok(None);
    }
    let parse_ips = |what: &str, v: Vec<String>| -> Result<Vec<IpAddr>, Error> {
        v.iter().map(|s| s.parse().map_err(|_| invalid(&object, format!("{what} {s:?} is not an address")))).collect()
    };
    let external_ips = parse_ips("externalIP", spec.external_ips.clone().unwrap_or_default())?;
    let lb_ips = parse_ips(
        "loadBalancer ingress IP",
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default(),
    )?;
    let affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map(|t| u32::try_from(t).ok().filter(|t| (1..=86400).contains(t)))
                .unwrap_or(Some(DEFAULT_AFFINITY_TIMEOUT))
                .ok_or_else(|| invalid(&object, "sessionAffinityConfig.clientIP.timeoutSeconds must be 1..=86400"))?,
        ),
        None | Some("None") => None,
        Some(other) => return Err(invalid(&object, format!("unknown sessionAffinity {other:?}"))),
    };
    Ok(Some(ServiceModel {
        namespace,
        name,
        cluster_ips,
        ports,
        external_ips,
        lb_ips,
        node_port,
        etp_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        itp_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        affinity,
        publish_not_ready: spec.publish_not_ready_addresses == Some(true),
    }))
}

/// The Service a slice belongs to, `(namespace, name)`, or `None` when the slice is not for the proxy.
pub fn slice_owner(slice: &EndpointSlice) -> Option<(String, String)> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.contains_key(LABEL_HEADLESS) || labels.contains_key(LABEL_PROXY_NAME) {
        return None;
    }
    let svc = labels.get(LABEL_SERVICE_NAME)?.clone();
    Some((slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()), svc))
}

/// The endpoints of a slice. Addresses that do not parse make the whole slice invalid (the agent skips it).
pub fn endpoints(slice: &EndpointSlice) -> Result<Vec<Endpoint>, Error> {
    let object = format!(
        "EndpointSlice {}/{}",
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        slice.metadata.name.as_deref().unwrap_or("?")
    );
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        // FQDN slices are for other consumers.
        return Ok(Vec::new());
    }
    let mut ports = BTreeMap::new();
    for p in slice.ports.iter().flatten() {
        let proto = Proto::parse(p.protocol.as_deref())
            .ok_or_else(|| invalid(&object, format!("port protocol {:?} is not TCP, UDP or SCTP", p.protocol)))?;
        let Some(port) = p.port else { continue };
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(&object, format!("port {port} is out of range")))?;
        ports.insert((p.name.clone().unwrap_or_default(), proto), port);
    }
    let mut out = Vec::new();
    for ep in &slice.endpoints {
        let c = ep.conditions.as_ref();
        // Unset conditions mean "ready" (the API's contract); serving defaults to ready.
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        for a in &ep.addresses {
            let address: IpAddr = a.parse().map_err(|_| invalid(&object, format!("address {a:?} is not an IP")))?;
            if address.is_ipv4() != (slice.address_type == "IPv4") {
                return Err(invalid(&object, format!("address {a} is not of addressType {}", slice.address_type)));
            }
            out.push(Endpoint {
                address,
                node: ep.node_name.clone(),
                ready,
                serving,
                terminating,
                ports: ports.clone(),
            });
        }
    }
    Ok(out)
}
