//! trellis-agent: the Trellis node agent, one per node. Today it keeps the node-to-node overlay;
//! the service proxy and network policy come next, in this same agent (the folder is `proxy/`).
//!
//! Shape: `controlplane` (sources of Kubernetes objects) -> `model` (pure desired state) ->
//! `overlay::plan` (pure: nodes -> kernel entries, podCIDR conflicts settled) ->
//! `overlay::reconcile` (apply, prune, repair) -> `overlay::dataplane` (kernel access behind a
//! trait: real here, fake and faulty in the tests). `reconcile` holds what every reconciler
//! shares (the keyed desired-vs-installed diff the Service and policy maps will reuse).
//! `cniconf` writes the node's CNI conflist, `metrics` declares every metric and serves them.

pub mod agent;
pub mod cniconf;
pub mod controlplane;
pub mod error;
pub mod metrics;
pub mod model;
pub mod overlay;
pub mod reconcile;
pub mod services;
pub mod sysctl;

pub use error::{Error, Result};
