//! The service proxy's pure half: Kubernetes Services and EndpointSlices are validated into a [`model`], then
//! [`translate`]d, with [`ids`] that stay stable across changes and restarts, into the entries of the datapath's
//! maps (layouts in `trellis-ebpf-common`). No I/O: the agent's reconciler diffs the result against the
//! installed maps. [`dump`] renders entries as text, one line each, for golden tests and `trellisctl`.

pub mod dump;
pub mod ids;
pub mod model;
pub mod translate;

pub use ids::Ids;
pub use model::{Endpoint, PortMapping, Proto, ServiceModel};
pub use translate::{translate, Desired, Dirty, DirtyKeys, FamilyMaps, NodeContext, Translator};

/// Why an object from the control plane was refused. The agent logs it, counts it and skips the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{object}: {what}")]
    Invalid { object: String, what: String },
}
