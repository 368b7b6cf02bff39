//! The CNI protocol as data: spec versions, the `CNI_*` environment, network config common fields, results
//! rendered in the shape of each spec version, error JSON with the spec's codes, and delegation to other plugins
//! (IPAM) found in `CNI_PATH`. No kernel access here; both `trellis` and `trellis-ipam` build on it.

pub mod about;
pub mod conf;
pub mod delegate;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

pub use conf::{requested_version, Attachment, NetConf};
pub use env::{Command, Env};
pub use error::{codes, CniError};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::Version;

/// Writes a plugin's outcome the way runtimes read it: the result (or VERSION answer) on stdout and exit 0, or
/// error JSON on stdout and a non-zero exit. Returns the process exit code.
pub fn emit(outcome: Result<Option<serde_json::Value>, CniError>, version: &str) -> i32 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(version));
            1
        }
    }
}
