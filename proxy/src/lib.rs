//! trellis-agent: the Trellis node agent.
//!
//! Shape: `controlplane` (sources of Kubernetes objects) -> `model` (pure desired state) ->
//! `overlay::plan` (pure: nodes -> kernel entries) -> `overlay::reconcile` (diff, apply, prune,
//! repair) -> `overlay::dataplane` (kernel access behind a trait: real, fake, faulty).
//! `cniconf` writes the node's CNI conflist, `metrics` serves Prometheus text.

pub mod agent;
pub mod cniconf;
pub mod controlplane;
pub mod error;
pub mod metrics;
pub mod model;
pub mod overlay;
pub mod reconcile;

pub use error::{Error, Result};
