//! trellis-ipam: a host-local compatible IPAM library (config, stores, allocator) and the
//! `trellis-ipam` CNI IPAM plugin built on it.

pub mod alloc;
pub mod config;
pub mod error;
pub mod ip;
pub mod ops;
pub mod resolv;
pub mod store;

pub use config::{IpamConfig, Range, RangeSet, Route};
pub use error::{IpamError, Result};
pub use ops::{allocate, allocate_requested, check, gc, release, status, Allocation};
pub use store::{matching, with_lock, DiskStore, FaultyStore, Lease, MemStore, Store};
