//! trellis-e2e: a harness that drives the `trellis` CNI plugin and the `trellis-ipam` IPAM plugin exactly as a
//! container runtime does (CNI_* variables, config on stdin, result or error JSON on stdout, exit code), inside
//! network namespaces the tests create and delete themselves.
//!
//! Pure helpers (config builders, result inspection, conflist injection, veth naming, benchmark statistics) are
//! unit-tested without privileges; everything that touches the kernel lives in `netns`, `node` and `cmd`.

pub mod bench;
pub mod bins;
pub mod cmd;
pub mod cni;
pub mod conf;
pub mod conflist;
pub mod fixture;
pub mod names;
pub mod netns;
pub mod node;
pub mod podman;
pub mod privilege;
pub mod result;
pub mod store;
pub mod tempdir;
pub mod veth;
pub mod wait;

pub use bins::Bins;
pub use cni::{CniCmd, CniError, CniOutput, Invocation};
pub use fixture::Fixture;
pub use netns::Netns;
pub use node::Node;
pub use node::Pod;
pub use tempdir::TempDir;
pub use trellis_test_support::{require_root, require_tool};
