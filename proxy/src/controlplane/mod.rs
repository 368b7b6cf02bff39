//! Control plane sources: where Kubernetes objects come from.
//!
//! A source sends [`Event`]s on a channel: objects applied or deleted, full re-lists of one kind
//! (after a watch restart), and exactly one [`Event::Synced`] once its initial list is complete.
//! Consumers must not prune state they cannot see until `Synced` arrived: before it, a missing
//! object only means "not listed yet".
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use tokio::sync::mpsc;

pub mod files;
pub mod kube;

/// Kinds the agent understands. Services, EndpointSlices, Pods, Namespaces and NetworkPolicies
/// plug in here: a variant, a `Resource` arm, a line in `files::decode` and a `kube` watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "Node",
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
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Node(_) => Kind::Node,
        }
    }

    /// The object's key; None when it has no name (such an object is unusable).
    pub fn key(&self) -> Option<ObjectKey> {
        match self {
            Resource::Node(n) => n.metadata.name.clone().filter(|s| !s.is_empty()).map(|name| ObjectKey {
                kind: Kind::Node,
                namespace: None,
                name,
            }),
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
