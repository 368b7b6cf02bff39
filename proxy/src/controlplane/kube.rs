//! The `kube` source: kube-rs reflectors over the Kubernetes API.
//!
//! Each kind gets a reflector (a watcher: list, then watch, re-list on expiry, with backoff on
//! errors; feeding a kube-rs `Store` other parts of the agent can read). The
//! watcher's Init/InitApply/InitDone bracket becomes one [`Event::Relisted`], so a re-list after
//! a lost watch also removes objects deleted while we were not looking. [`Event::Synced`] is
//! sent once every kind completed its first list.
//!
//! Adding a kind (Services, EndpointSlices, Pods, Namespaces, NetworkPolicies): one more
//! `spawn_watch::<K>(...)` line in `run` with its `Resource` wrapper.
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{ControlPlane, Event, Kind, ObjectKey, Resource};
use crate::metrics::{self, Metrics};
use crate::{Error, Result};

const SOURCE: &str = "kube";

/// Build a client: an explicit kubeconfig, else in-cluster config, else $KUBECONFIG or
/// ~/.kube/config (kube-rs's `Config::infer`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(p) => {
            let bad = |e: kube::config::KubeconfigError| Error::KubeConfig { path: Some(p.into()), source: e.into() };
            let kc = kube::config::Kubeconfig::read_from(p).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.map_err(bad)?
        }
        None => kube::Config::infer().await.map_err(|e| Error::KubeConfig { path: None, source: e.into() })?,
    };
    Ok(Client::try_from(config)?)
}

/// The Kubernetes API source.
pub struct KubeSource {
    client: Client,
    metrics: Metrics,
    nodes: (Store<Node>, Option<reflector::store::Writer<Node>>),
    /// Also watch Services and EndpointSlices (the service proxy is on).
    pub services: bool,
}

impl KubeSource {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        let (reader, writer) = reflector::store();
        KubeSource { client, metrics, nodes: (reader, Some(writer)), services: false }
    }

    /// The reflector's cache of Nodes (ready once the first list completed).
    pub fn nodes(&self) -> Store<Node> {
        self.nodes.0.clone()
    }
}

/// Internal message from a per-kind watcher task.
enum Msg {
    Event(Event),
    ListDone(Kind),
}

fn spawn_watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    kind: Kind,
    wrap: fn(K) -> Resource,
    tx: mpsc::Sender<Msg>,
    metrics: Metrics,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        let mut stream = reflector(writer, watcher(api, watcher::Config::default()).default_backoff()).boxed();
        let mut buffer: Vec<Resource> = Vec::new();
        while let Some(item) = stream.next().await {
            let msgs = match item {
                Ok(watcher::Event::Init) => {
                    buffer.clear();
                    vec![]
                }
                Ok(watcher::Event::InitApply(o)) => {
                    buffer.push(wrap(o));
                    vec![]
                }
                Ok(watcher::Event::InitDone) => {
                    metrics.inc(metrics::CONTROLPLANE_EVENTS, &[("source", SOURCE), ("kind", kind.as_str())]);
                    vec![Msg::Event(Event::Relisted(kind, std::mem::take(&mut buffer))), Msg::ListDone(kind)]
                }
                Ok(watcher::Event::Apply(o)) => {
                    metrics.inc(metrics::CONTROLPLANE_EVENTS, &[("source", SOURCE), ("kind", kind.as_str())]);
                    vec![Msg::Event(Event::Applied(wrap(o)))]
                }
                Ok(watcher::Event::Delete(o)) => {
                    let key = ObjectKey {
                        kind,
                        namespace: o.meta().namespace.clone(),
                        name: o.meta().name.clone().unwrap_or_default(),
                    };
                    vec![Msg::Event(Event::Deleted(key))]
                }
                Err(e) => {
                    // The backoff wrapper retries; an object the API returns that we cannot
                    // decode also lands here.
                    warn!(kind = kind.as_str(), error = %e, "watch error; retrying with backoff");
                    metrics.inc(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", SOURCE), ("reason", "watch")]);
                    vec![]
                }
            };
            for m in msgs {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        }
    })
}

impl ControlPlane for KubeSource {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn run(self: Box<Self>, tx: mpsc::Sender<Event>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let (itx, mut irx) = mpsc::channel::<Msg>(256);
            let mut kinds: BTreeSet<Kind> = [Kind::Node].into();
            let mut this = self;
            let node_writer = this.nodes.1.take().expect("run is called once");
            let mut tasks = vec![spawn_watch::<Node>(
                Api::all(this.client.clone()),
                node_writer,
                Kind::Node,
                |n| Resource::Node(Box::new(n)),
                itx.clone(),
                this.metrics.clone(),
            )];
            if this.services {
                kinds.insert(Kind::Service);
                kinds.insert(Kind::EndpointSlice);
                tasks.push(spawn_watch::<Service>(
                    Api::all(this.client.clone()),
                    reflector::store().1,
                    Kind::Service,
                    |s| Resource::Service(Box::new(s)),
                    itx.clone(),
                    this.metrics.clone(),
                ));
                tasks.push(spawn_watch::<EndpointSlice>(
                    Api::all(this.client.clone()),
                    reflector::store().1,
                    Kind::EndpointSlice,
                    |s| Resource::EndpointSlice(Box::new(s)),
                    itx.clone(),
                    this.metrics.clone(),
                ));
            }
            drop(itx);
            let mut listed = BTreeSet::new();
            let mut synced = false;
            while let Some(m) = irx.recv().await {
                let ev = match m {
                    Msg::Event(ev) => ev,
                    Msg::ListDone(k) => {
                        listed.insert(k);
                        if synced || listed != kinds {
                            continue;
                        }
                        synced = true;
                        info!("initial list from the Kubernetes API complete");
                        Event::Synced
                    }
                };
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
            for t in tasks {
                t.abort();
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use std::time::Duration;

    type ApiServer = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn node_json(name: &str, cidr: &str, ip: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "resourceVersion": "1"},
               "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
               "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
    }

    async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event in time").expect("channel open")
    }

    #[tokio::test]
    async fn lists_then_watches_nodes_through_the_mock_api() {
        let (svc, mut server): (_, ApiServer) = tower_test::mock::pair();
        let client = Client::new(svc, "default");
        let (tx, mut rx) = mpsc::channel(16);
        let source = KubeSource::new(client, Metrics::new());
        let store = source.nodes();
        let task = tokio::spawn(Box::new(source).run(tx));

        // 1. The initial list.
        let (req, send) = server.next_request().await.expect("list request");
        assert_eq!(req.method(), http::Method::GET);
        let uri = req.uri().to_string();
        assert!(uri.starts_with("/api/v1/nodes?"), "{uri}");
        assert!(!uri.contains("watch=true"), "{uri}");
        let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "10"},
                          "items": [node_json("a", "10.244.1.0/24", "192.168.1.1"), node_json("b", "10.244.2.0/24", "192.168.1.2")]});
        send.send_response(Response::new(Body::from(serde_json::to_vec(&list).unwrap())));

        let Event::Relisted(Kind::Node, objs) = next(&mut rx).await else { panic!("expected a relist") };
        let names: Vec<_> = objs.iter().map(|o| o.key().unwrap().name).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(next(&mut rx).await, Event::Synced);
        store.wait_until_ready().await.unwrap();
        assert_eq!(store.state().len(), 2, "the reflector's store holds the listed nodes");

        // 2. The watch: one node added, one deleted.
        let (req, send) = server.next_request().await.expect("watch request");
        let uri = req.uri().to_string();
        assert!(uri.contains("watch=true") && uri.contains("resourceVersion=10"), "{uri}");
        let mut body = Vec::new();
        for (t, o) in [
            ("ADDED", node_json("c", "10.244.3.0/24", "192.168.1.3")),
            ("DELETED", node_json("a", "10.244.1.0/24", "192.168.1.1")),
        ] {
            body.extend(serde_json::to_vec(&json!({"type": t, "object": o})).unwrap());
            body.push(b'\n');
        }
        send.send_response(Response::new(Body::from(body)));

        let Event::Applied(Resource::Node(n)) = next(&mut rx).await else { panic!("expected an apply") };
        assert_eq!(n.metadata.name.as_deref(), Some("c"));
        assert_eq!(
            next(&mut rx).await,
            Event::Deleted(ObjectKey { kind: Kind::Node, namespace: None, name: "a".into() })
        );
        drop(rx);
        task.abort();
    }

    #[tokio::test]
    async fn with_the_service_proxy_services_and_slices_are_watched_and_synced_waits_for_all() {
        let (svc, mut server): (_, ApiServer) = tower_test::mock::pair();
        let client = Client::new(svc, "default");
        let (tx, mut rx) = mpsc::channel(16);
        let mut source = KubeSource::new(client, Metrics::new());
        source.services = true;
        let task = tokio::spawn(Box::new(source).run(tx));
        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3"},
                             "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}});
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                           "metadata": {"name": "web-1", "namespace": "shop", "resourceVersion": "4", "labels": {"kubernetes.io/service-name": "web"}},
                           "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.5"]}], "ports": [{"port": 8080}]});
        // Three initial lists, in whatever order the watchers ask; Synced only after all three.
        let mut relisted = BTreeSet::new();
        for _ in 0..3 {
            let (req, send) = server.next_request().await.expect("list request");
            let uri = req.uri().to_string();
            let (kind, item) = if uri.starts_with("/api/v1/nodes?") {
                ("NodeList", node_json("a", "10.244.1.0/24", "192.168.1.1"))
            } else if uri.starts_with("/api/v1/services?") {
                ("ServiceList", service.clone())
            } else if uri.starts_with("/apis/discovery.k8s.io/v1/endpointslices?") {
                ("EndpointSliceList", slice.clone())
            } else {
                panic!("unexpected request {uri}")
            };
            let list =
                json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "10"}, "items": [item]});
            send.send_response(Response::new(Body::from(serde_json::to_vec(&list).unwrap())));
            match next(&mut rx).await {
                Event::Relisted(k, objs) => {
                    assert_eq!(objs.len(), 1);
                    relisted.insert(k);
                }
                other => panic!("expected a relist, got {other:?}"),
            }
        }
        assert_eq!(relisted, [Kind::Node, Kind::Service, Kind::EndpointSlice].into());
        assert_eq!(next(&mut rx).await, Event::Synced);
        drop(rx);
        task.abort();
    }

    #[tokio::test]
    async fn a_failed_list_is_retried_and_synced_waits_for_it() {
        let (svc, mut server): (_, ApiServer) = tower_test::mock::pair();
        let client = Client::new(svc, "default");
        let metrics = Metrics::new();
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(Box::new(KubeSource::new(client, metrics.clone())).run(tx));

        let (_req, send) = server.next_request().await.expect("first list");
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "boom", "reason": "InternalError", "code": 500});
        let mut resp = Response::new(Body::from(serde_json::to_vec(&status).unwrap()));
        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        send.send_response(resp);
        // Nothing may be reported (above all not Synced) before a list succeeded.
        assert!(tokio::time::timeout(Duration::from_millis(100), rx.recv()).await.is_err());

        let (_req, send) = tokio::time::timeout(Duration::from_secs(10), server.next_request())
            .await
            .expect("retry in time")
            .expect("retried list");
        let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "11"}, "items": [node_json("a", "10.244.1.0/24", "192.168.1.1")]});
        send.send_response(Response::new(Body::from(serde_json::to_vec(&list).unwrap())));
        assert!(matches!(next(&mut rx).await, Event::Relisted(Kind::Node, v) if v.len() == 1));
        assert_eq!(next(&mut rx).await, Event::Synced);
        assert!(metrics.get(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", "kube"), ("reason", "watch")]) >= 1.0);
        task.abort();
    }
}
