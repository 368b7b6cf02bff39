//! Control plane sources: where Kubernetes objects come from.
//!
//! A source sends [`Event`]s on a channel: objects applied or deleted, full re-lists of one kind
//! (after a watch restart), and exactly one [`Event::Synced`] once its initial list is complete.
//! Consumers must not prune state they cannot see until `Synced` arrived: before it, a missing
//! object only means "not listed yet".
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::mpsc;

pub mod files;
pub mod kube;

/// Kinds the agent understands. Pods, Namespaces and NetworkPolicies plug in here: a variant, a
/// `Resource` arm, a line in `files::decode` and a `kube` watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Service,
    EndpointSlice,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }
}

/// Identity of an object: kind, namespace (None for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

/// A typed Kubernetes object.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Node(Box<Node>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Node(_) => Kind::Node,
            Resource::Service(_) => Kind::Service,
            Resource::EndpointSlice(_) => Kind::EndpointSlice,
        }
    }

    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Resource::Node(n) => &n.metadata,
            Resource::Service(s) => &s.metadata,
            Resource::EndpointSlice(s) => &s.metadata,
        }
    }

    /// The object's key; None when it has no name (such an object is unusable). Namespaced kinds
    /// without a namespace are in `default`, as the API server would put them.
    pub fn key(&self) -> Option<ObjectKey> {
        let kind = self.kind();
        let meta = self.meta();
        let name = meta.name.clone().filter(|s| !s.is_empty())?;
        let namespace = match kind {
            Kind::Node => None,
            Kind::Service | Kind::EndpointSlice => {
                Some(meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into()))
            }
        };
        Some(ObjectKey { kind, namespace, name })
    }
}

impl ObjectKey {
    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn path(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// What a source reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An object was created or changed.
    Applied(Resource),
    /// An object is gone.
    Deleted(ObjectKey),
    /// The complete current set of one kind (a watch re-list): anything of that kind not in it
    /// is gone.
    Relisted(Kind, Vec<Resource>),
    /// The initial list of every kind this source watches is complete.
    Synced,
}

/// A source of control plane objects. `run` keeps going until the receiver is dropped or an
/// unrecoverable error happens; recoverable errors (a bad file, a broken watch) are logged,
/// counted and retried inside.
pub trait ControlPlane: Send {
    fn name(&self) -> &'static str;
    fn run(self: Box<Self>, tx: mpsc::Sender<Event>) -> BoxFuture<'static, crate::Result<()>>;
}
