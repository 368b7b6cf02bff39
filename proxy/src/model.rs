//! The desired-state model: control plane events folded into typed, validated cluster state.
//! Pure: no I/O besides counting rejected objects in the metrics registry.
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use tracing::warn;

use crate::controlplane::{Event, Kind, ObjectKey, Resource};
use crate::metrics::{self, Metrics};

/// What the overlay needs to know about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// InternalIP addresses (at most one per family), in the order the node lists them.
    pub internal_ips: Vec<IpAddr>,
    /// Pod CIDRs (at most one per family), IPv4 first if both.
    pub pod_cidrs: Vec<IpNet>,
    /// metadata.creationTimestamp in nanoseconds since the epoch: the older node keeps a
    /// contested podCIDR. None when the manifest has none (files source).
    pub created: Option<i128>,
}

impl NodeInfo {
    pub fn internal_ip_v4(&self) -> Option<IpAddr> {
        self.internal_ips.iter().copied().find(IpAddr::is_ipv4)
    }
    pub fn internal_ip_v6(&self) -> Option<IpAddr> {
        self.internal_ips.iter().copied().find(IpAddr::is_ipv6)
    }
    /// The InternalIP of the same family as `net`.
    pub fn internal_ip_for(&self, net: &IpNet) -> Option<IpAddr> {
        match net {
            IpNet::V4(_) => self.internal_ip_v4(),
            IpNet::V6(_) => self.internal_ip_v6(),
        }
    }
    pub fn pod_cidr_v4(&self) -> Option<IpNet> {
        self.pod_cidrs.iter().copied().find(|n| matches!(n, IpNet::V4(_)))
    }
    pub fn pod_cidr_v6(&self) -> Option<IpNet> {
        self.pod_cidrs.iter().copied().find(|n| matches!(n, IpNet::V6(_)))
    }
}

/// Validate a Node object into [`NodeInfo`]. A node that simply has no podCIDR or InternalIP yet
/// is valid (the overlay skips it until it has); malformed values are errors.
pub fn node_info(node: &Node) -> Result<NodeInfo, String> {
    let name = node.metadata.name.clone().filter(|n| !n.is_empty()).ok_or("Node without metadata.name")?;
    let spec = node.spec.as_ref();
    let raw: Vec<String> = match spec.and_then(|s| s.pod_cidrs.clone()).filter(|v| !v.is_empty()) {
        Some(v) => v,
        None => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    };
    let mut pod_cidrs: Vec<IpNet> = Vec::new();
    for s in &raw {
        let net: IpNet = s.trim().parse().map_err(|_| format!("podCIDR {s:?} is not a CIDR"))?;
        if net.network() != net.addr() {
            return Err(format!("podCIDR {s:?} has host bits set (network is {})", net.trunc()));
        }
        if pod_cidrs.iter().any(|n| n.addr().is_ipv4() == net.addr().is_ipv4()) {
            return Err(format!("podCIDRs {raw:?} hold more than one CIDR of a family"));
        }
        pod_cidrs.push(net);
    }
    pod_cidrs.sort_by_key(|n| n.addr().is_ipv6());
    let mut internal_ips: Vec<IpAddr> = Vec::new();
    let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in addrs.into_iter().flatten().filter(|a| a.type_ == "InternalIP") {
        let ip: IpAddr =
            a.address.trim().parse().map_err(|_| format!("InternalIP {:?} is not an IP address", a.address))?;
        // Kubernetes lists one per family; later ones of the same family are ignored.
        if !internal_ips.iter().any(|x| x.is_ipv4() == ip.is_ipv4()) {
            internal_ips.push(ip);
        }
    }
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0.as_nanosecond());
    Ok(NodeInfo { name, internal_ips, pod_cidrs, created })
}

/// Cluster state as the workers see it: a snapshot, cloned on every change, so it holds only what is small
/// (nodes). Services and slices, which can be 100k, travel as changes ([`SvcChange`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// The source finished its initial list: absent objects are really absent.
    pub synced: bool,
}

/// An EndpointSlice as the proxy uses it: (owning Service `namespace/name`, endpoints).
pub type SliceInfo = (String, Vec<trellis_svc::Endpoint>);

/// Services the proxy serves and EndpointSlices, by `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceObjects {
    pub services: BTreeMap<String, trellis_svc::ServiceModel>,
    pub slices: BTreeMap<String, SliceInfo>,
}

/// One Service or EndpointSlice as it is now (`None`: gone, or not one the proxy serves).
#[derive(Clone, Debug, PartialEq)]
pub enum SvcChange {
    Service(String, Option<trellis_svc::ServiceModel>),
    Slice(String, Option<SliceInfo>),
}

/// What the service proxy is sent.
#[derive(Clone, Debug)]
pub enum ServiceUpdate {
    /// The snapshot, and the Services and slices that changed since the last update.
    Objects { cluster: std::sync::Arc<Cluster>, changes: Vec<SvcChange> },
    /// A network interface came, went or changed (a pod's veth to attach to).
    Links,
}

/// One object's state in the cluster, for change detection.
#[derive(PartialEq)]
enum Entry {
    Node(Option<NodeInfo>),
    Service(Option<trellis_svc::ServiceModel>),
    Slice(Option<SliceInfo>),
}

/// Folds events into a [`Cluster`] and [`ServiceObjects`], rejecting malformed objects.
pub struct Model {
    pub cluster: Cluster,
    pub objects: ServiceObjects,
    /// Services and slices changed since [`Model::take_changes`].
    changes: Vec<SvcChange>,
    /// The snapshot part changed since [`Model::take_cluster_changed`].
    cluster_changed: bool,
    source: &'static str,
    metrics: Metrics,
}

impl Model {
    pub fn new(source: &'static str, metrics: Metrics) -> Self {
        Model {
            cluster: Cluster::default(),
            objects: ServiceObjects::default(),
            changes: Vec::new(),
            cluster_changed: false,
            source,
            metrics,
        }
    }

    /// The Services and slices that changed since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<SvcChange> {
        std::mem::take(&mut self.changes)
    }

    /// Whether nodes or `synced` changed since the last call.
    pub fn take_cluster_changed(&mut self) -> bool {
        std::mem::take(&mut self.cluster_changed)
    }

    /// Records what changed about `key` (its state now).
    fn note(&mut self, key: &ObjectKey) {
        match key.kind {
            Kind::Node => self.cluster_changed = true,
            Kind::Service => {
                let now = self.objects.services.get(&key.path()).cloned();
                self.changes.push(SvcChange::Service(key.path(), now));
            }
            Kind::EndpointSlice => {
                let now = self.objects.slices.get(&key.path()).cloned();
                self.changes.push(SvcChange::Slice(key.path(), now));
            }
        }
    }

    /// Apply one event; true when the cluster state changed.
    pub fn apply(&mut self, ev: Event) -> bool {
        let changed = match ev {
            // One object: compare what it touched, not the whole cluster (thousands of nodes).
            Event::Applied(r) => match r.key() {
                Some(key) => {
                    let before = self.entry(&key);
                    self.upsert(r);
                    let changed = self.entry(&key) != before;
                    if changed {
                        self.note(&key);
                    }
                    changed
                }
                None => {
                    self.upsert(r);
                    false
                }
            },
            Event::Deleted(key) => {
                let changed = self.remove(&key);
                if changed {
                    self.note(&key);
                }
                changed
            }
            Event::Relisted(kind, objects) => self.relist(kind, objects),
            Event::Synced => {
                let changed = !std::mem::replace(&mut self.cluster.synced, true);
                self.cluster_changed |= changed;
                changed
            }
        };
        self.metrics.set(metrics::CONTROLPLANE_SYNCED, &[], if self.cluster.synced { 1.0 } else { 0.0 });
        changed
    }

    /// A kind listed anew: what is not in the list is gone. Rare (a watch restart), so a whole compare is fine.
    fn relist(&mut self, kind: Kind, objects: Vec<Resource>) -> bool {
        let objects = objects.into_iter().filter(|r| r.kind() == kind);
        match kind {
            Kind::Node => {
                let before = std::mem::take(&mut self.cluster.nodes);
                objects.for_each(|r| self.upsert(r));
                let changed = self.cluster.nodes != before;
                self.cluster_changed |= changed;
                changed
            }
            Kind::Service => {
                let before = std::mem::take(&mut self.objects.services);
                objects.for_each(|r| self.upsert(r));
                let after = &self.objects.services;
                let changes = diff(&before, after).map(|(k, v)| SvcChange::Service(k, v));
                let n = self.changes.len();
                self.changes.extend(changes);
                self.changes.len() > n
            }
            Kind::EndpointSlice => {
                let before = std::mem::take(&mut self.objects.slices);
                objects.for_each(|r| self.upsert(r));
                let after = &self.objects.slices;
                let changes = diff(&before, after).map(|(k, v)| SvcChange::Slice(k, v));
                let n = self.changes.len();
                self.changes.extend(changes);
                self.changes.len() > n
            }
        }
    }

    /// What the cluster holds for one object (to tell whether an event changed anything).
    fn entry(&self, key: &ObjectKey) -> Entry {
        match key.kind {
            Kind::Node => Entry::Node(self.cluster.nodes.get(&key.name).cloned()),
            Kind::Service => Entry::Service(self.objects.services.get(&key.path()).cloned()),
            Kind::EndpointSlice => Entry::Slice(self.objects.slices.get(&key.path()).cloned()),
        }
    }

    /// True when something was removed.
    fn remove(&mut self, key: &ObjectKey) -> bool {
        match key.kind {
            Kind::Node => self.cluster.nodes.remove(&key.name).is_some(),
            Kind::Service => self.objects.services.remove(&key.path()).is_some(),
            Kind::EndpointSlice => self.objects.slices.remove(&key.path()).is_some(),
        }
    }

    /// A bad object: logged, counted, and whatever we knew of it forgotten (no longer trustworthy).
    fn invalid(&mut self, key: &ObjectKey, reason: &'static str, why: &dyn std::fmt::Display) {
        warn!(kind = key.kind.as_str(), object = %key.path(), "skipping invalid object: {why}");
        self.metrics.inc(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", self.source), ("reason", reason)]);
        self.remove(key);
    }

    fn upsert(&mut self, r: Resource) {
        let Some(key) = r.key() else {
            warn!(kind = r.kind().as_str(), "skipping object without a name");
            self.metrics.inc(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", self.source), ("reason", "no name")]);
            return;
        };
        match r {
            Resource::Service(s) => match trellis_svc::model::service(&s) {
                Ok(Some(m)) => {
                    self.objects.services.insert(key.path(), m);
                }
                // Not for us (ExternalName, headless, another proxy's): as if it did not exist.
                Ok(None) => {
                    self.remove(&key);
                }
                Err(e) => self.invalid(&key, "service", &e),
            },
            Resource::EndpointSlice(s) => match trellis_svc::model::slice_owner(&s) {
                None => {
                    self.remove(&key);
                }
                Some((ns, svc)) => match trellis_svc::model::endpoints(&s) {
                    Ok(eps) => {
                        self.objects.slices.insert(key.path(), (format!("{ns}/{svc}"), eps));
                    }
                    Err(e) => self.invalid(&key, "endpointslice", &e),
                },
            },
            Resource::Node(n) => match node_info(&n) {
                Ok(info) => {
                    self.cluster.nodes.insert(info.name.clone(), info);
                }
                Err(why) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    warn!(node = %name, "skipping invalid Node: {why}");
                    self.metrics
                        .inc(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", self.source), ("reason", "node")]);
                    // Whatever we knew of it is no longer trustworthy.
                    self.cluster.nodes.remove(&name);
                }
            },
        }
    }
}

/// Keys whose values differ between `a` and `b`, with their value in `b`.
fn diff<'a, V: PartialEq + Clone>(
    a: &'a BTreeMap<String, V>,
    b: &'a BTreeMap<String, V>,
) -> impl Iterator<Item = (String, Option<V>)> + 'a {
    let gone = a.keys().filter(|k| !b.contains_key(*k)).map(|k| (k.clone(), None));
    let new = b.iter().filter(|(k, v)| a.get(*k) != Some(v)).map(|(k, v)| (k.clone(), Some(v.clone())));
    gone.chain(new)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Node {
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().map(|s| s.to_string()),
                pod_cidrs: Some(cidrs.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    ips.iter()
                        .map(|ip| NodeAddress { type_: "InternalIP".into(), address: ip.to_string() })
                        .chain([NodeAddress { type_: "Hostname".into(), address: name.into() }])
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn node_info_parses_dual_stack() {
        let n = node("a", &["fd00:10:244:1::/64", "10.244.1.0/24"], &["192.168.1.1", "fd00::1"]);
        let i = node_info(&n).unwrap();
        assert_eq!(i.pod_cidr_v4().unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(i.pod_cidr_v6().unwrap().to_string(), "fd00:10:244:1::/64");
        assert_eq!(i.pod_cidrs[0].to_string(), "10.244.1.0/24", "IPv4 first");
        assert_eq!(i.internal_ip_v4().unwrap().to_string(), "192.168.1.1");
        assert_eq!(i.internal_ip_v6().unwrap().to_string(), "fd00::1");
        assert_eq!(i.created, None);
        let mut n = n;
        n.metadata.creation_timestamp = Some(Time("2024-01-02T03:04:05Z".parse().unwrap()));
        assert_eq!(node_info(&n).unwrap().created, Some(1_704_164_645_000_000_000));
    }

    #[test]
    fn node_info_rejects_bad_values() {
        for (cidrs, ips) in [
            (vec!["banana"], vec!["192.168.1.1"]),
            (vec!["10.244.1.0/33"], vec!["192.168.1.1"]),
            (vec!["10.244.1.7/24"], vec!["192.168.1.1"]),
            (vec!["10.244.1.0/24", "10.244.2.0/24"], vec!["192.168.1.1"]),
            (vec!["10.244.1.0/24"], vec!["192.168.1.300"]),
        ] {
            assert!(node_info(&node("a", &cidrs, &ips)).is_err(), "{cidrs:?} {ips:?}");
        }
        // Missing values are not errors: the overlay skips such nodes.
        let i = node_info(&node("a", &[], &[])).unwrap();
        assert!(i.pod_cidrs.is_empty() && i.internal_ips.is_empty());
    }

    #[test]
    fn model_applies_events_and_counts_bad_nodes() {
        let m = Metrics::new();
        let mut model = Model::new("files", m.clone());
        assert!(model.apply(Event::Applied(Resource::Node(Box::new(node("a", &["10.244.1.0/24"], &["192.168.1.1"]))))));
        assert!(!model.apply(Event::Applied(Resource::Node(Box::new(node(
            "a",
            &["10.244.1.0/24"],
            &["192.168.1.1"]
        ))))));
        assert!(model.apply(Event::Applied(Resource::Node(Box::new(node("b", &["10.244.2.0/24"], &["192.168.1.2"]))))));
        // b turns bad: it is dropped and counted; a stays.
        assert!(model.apply(Event::Applied(Resource::Node(Box::new(node("b", &["nope"], &["192.168.1.2"]))))));
        assert_eq!(model.cluster.nodes.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(m.get(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", "files"), ("reason", "node")]), 1.0);
        assert!(!model.cluster.synced);
        assert!(model.apply(Event::Synced));
        assert!(!model.apply(Event::Synced), "synced twice changes nothing");
        assert!(!model.apply(Event::Deleted(ObjectKey { kind: Kind::Node, namespace: None, name: "zz".into() })));
        assert_eq!(m.get(metrics::CONTROLPLANE_SYNCED, &[]), 1.0);
        // A relist replaces the kind wholesale.
        model.apply(Event::Relisted(
            Kind::Node,
            vec![Resource::Node(Box::new(node("c", &["10.244.3.0/24"], &["192.168.1.3"])))],
        ));
        assert_eq!(model.cluster.nodes.keys().collect::<Vec<_>>(), vec!["c"]);
        assert!(model.apply(Event::Deleted(ObjectKey { kind: Kind::Node, namespace: None, name: "c".into() })));
        assert!(model.cluster.nodes.is_empty());
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    fn svc(ip: &str) -> Resource {
        Resource::Service(Box::new(
            serde_json::from_value::<Service>(serde_json::json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
            }))
            .unwrap(),
        ))
    }

    fn slice(addr: &str) -> Resource {
        Resource::EndpointSlice(Box::new(
            serde_json::from_value::<EndpointSlice>(serde_json::json!({
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": [{"addresses": [addr]}]
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn services_and_slices_change_the_cluster_once_and_bad_ones_are_counted_and_dropped() {
        let m = Metrics::new();
        let mut model = Model::new("test", m.clone());
        assert!(model.apply(Event::Applied(svc("10.96.0.10"))), "a new Service changes the cluster");
        assert!(!model.apply(Event::Applied(svc("10.96.0.10"))), "the same Service again does not");
        assert!(model.apply(Event::Applied(slice("10.244.0.5"))));
        assert_eq!(model.objects.slices["shop/web-1"].0, "shop/web");
        assert!(model.apply(Event::Applied(slice("10.244.0.6"))), "a changed slice changes the cluster");
        // A bad Service: logged, counted, and what we knew of it forgotten; the slice stays.
        assert!(model.apply(Event::Applied(svc("not-an-ip"))));
        assert!(model.objects.services.is_empty());
        assert_eq!(m.get(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", "test"), ("reason", "service")]), 1.0);
        assert_eq!(model.objects.slices.len(), 1);
        let key = ObjectKey { kind: Kind::EndpointSlice, namespace: Some("shop".into()), name: "web-1".into() };
        assert!(model.apply(Event::Deleted(key.clone())));
        assert!(!model.apply(Event::Deleted(key)), "deleting what is gone changes nothing");
    }
}
