//! trellis-lab: a standalone network lab. Nodes and pods are network namespaces, joined by an underlay bridge in
//! the lab's own netns; the real `trellis` CNI plugin and `trellis-agent`s wire them; the lab plays the control
//! plane (manifests dir) and probes the result.

pub mod bench;
pub mod check;
pub mod cni;
pub mod echo;
pub mod error;
pub mod lab;
pub mod manifests;
pub mod names;
pub mod net;
pub mod nsexec;
pub mod plan;
pub mod services;
pub mod state;
pub mod topology;
pub mod underlay;

pub use error::{LabError, Result};
