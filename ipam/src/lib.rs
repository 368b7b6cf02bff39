//! trellis-ipam: a host-local compatible IPAM library (config, stores, allocator) and the
//! `trellis-ipam` CNI IPAM plugin built on it.
//!
//! Pure parts: [`config`] (parse + validate the `ipam` object), [`alloc`] (candidate order, free
//! count), [`resolv::parse`]. Side effects live behind the [`Store`] trait: [`DiskStore`] (the
//! host-local layout under `<dataDir>/<network>/`); the unit tests add an in-memory fake and a faulty wrapper.
//! [`ops`] runs each CNI verb under the store lock.
//!
//! In-process use (what the `trellis` plugin does instead of exec'ing this binary):
//! ```
//! # fn main() -> trellis_ipam::Result<()> {
//! use trellis_ipam::{ops, DiskStore, IpamConfig};
//! let dir = tempfile::tempdir().unwrap();
//! let ipam = serde_json::json!({"type": "trellis-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]],
//!                               "dataDir": dir.path()});
//! let cfg = IpamConfig::from_ipam_value("trellis", &ipam)?;
//! let mut store = DiskStore::open_config(&cfg)?;
//! let got = ops::allocate(&mut store, &cfg, "0123abcd", "eth0")?;
//! assert_eq!(got[0].address.to_string(), "10.244.1.2/24");
//! ops::release(&mut store, &cfg, "0123abcd", "eth0")?;
//! # Ok(()) }
//! ```
//! Errors carry their CNI code: [`IpamError::cni_code`].

pub mod alloc;
pub mod cni;
pub mod config;
pub mod error;
pub mod ip;
pub mod ops;
pub mod resolv;
pub mod store;

pub use config::{IpamConfig, Range, RangeSet, Route};
pub use error::{IpamError, Result};
pub use ops::{allocate, allocate_requested, check, gc, release, status, Allocation};
pub use store::{matching, with_lock, DiskStore, Lease, Store};
