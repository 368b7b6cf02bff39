//! What every reconciler of the agent shares: the keyed desired-vs-installed [`diff`]. The overlay uses it for FDB,
//! neighbour and route entries; the Service and NetworkPolicy maps reuse it.
pub mod diff;

pub use diff::{diff, keyed, Diff};
