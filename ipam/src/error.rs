//! The one error type of the crate; every variant maps to a CNI error code.

use std::path::PathBuf;
use std::time::Duration;

// The codes are the CNI spec's, written once in cni-types.
use trellis_cni_types::codes;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The net config is not JSON or has the wrong shape.
    #[error("cannot decode network config: {0}")]
    Decode(String),

    /// The config decodes but is semantically wrong; `field` says where.
    #[error("invalid ipam config: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },

    /// A runtime-supplied argument (container ID, ifname, ...) is unusable.
    #[error("invalid argument {name}: {reason}")]
    BadArgs { name: &'static str, reason: String },

    /// Someone else holds the store lock for too long.
    #[error("ipam store {} is busy: lock not acquired within {:?}", dir.display(), waited)]
    StoreBusy { dir: PathBuf, waited: Duration },

    /// Every address of a range set is taken.
    #[error("no IP addresses available in range set {rangeset} ({ranges})")]
    Exhausted { rangeset: usize, ranges: String },

    /// A specifically requested address cannot be given.
    #[error("requested address {ip} is not available: {reason}")]
    Unavailable { ip: std::net::IpAddr, reason: String },

    /// A file operation of the disk store failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// CHECK found the store disagreeing with what the runtime expects.
    #[error("check failed: {0}")]
    CheckFailed(String),

    /// Any other store failure (including injected faults in tests).
    #[error("ipam store failure: {0}")]
    Store(String),
}

impl IpamError {
    /// The CNI error code this error is reported with.
    pub fn cni_code(&self) -> u32 {
        match self {
            IpamError::Decode(_) => codes::DECODE_FAILURE,
            IpamError::InvalidConfig { .. } => codes::INVALID_NETWORK_CONFIG,
            IpamError::BadArgs { .. } => codes::INVALID_ENV,
            IpamError::StoreBusy { .. } => codes::TRY_AGAIN_LATER,
            IpamError::Exhausted { .. } => codes::NO_ADDRESSES,
            IpamError::Io { .. } => codes::IO_FAILURE,
            IpamError::Unavailable { .. } | IpamError::CheckFailed(_) | IpamError::Store(_) => codes::INTERNAL,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        IpamError::InvalidConfig { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IpamError::Io { op, path: path.into(), source }
    }
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_cni_spec() {
        assert_eq!(IpamError::config("ranges", "x").cni_code(), 7);
        assert_eq!(IpamError::Decode("x".into()).cni_code(), 6);
        assert_eq!(IpamError::BadArgs { name: "CNI_IFNAME", reason: "x".into() }.cni_code(), 4);
        let busy = IpamError::StoreBusy { dir: "/x".into(), waited: Duration::from_secs(1) };
        assert_eq!(busy.cni_code(), 11);
        assert_eq!(IpamError::Exhausted { rangeset: 0, ranges: "r".into() }.cni_code(), 110);
        let io = IpamError::io("open", "/x", std::io::Error::other("boom"));
        assert_eq!(io.cni_code(), 5);
        assert_eq!(IpamError::Store("x".into()).cni_code(), 999);
        let taken = IpamError::Unavailable { ip: "10.0.0.1".parse().unwrap(), reason: "taken".into() };
        assert_eq!(taken.cni_code(), 999);
    }

    #[test]
    fn messages_name_the_field() {
        let e = IpamError::config("ranges[0][1].subnet", "bad CIDR");
        assert_eq!(e.to_string(), "invalid ipam config: ranges[0][1].subnet: bad CIDR");
    }
}
