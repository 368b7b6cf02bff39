//! The agent library's error type.
use std::path::PathBuf;

/// Errors of the agent's library code; the binary wraps them in `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request failed; the source keeps the kernel's errno ([`Error::errno`]).
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: trellis_netlink::Error,
    },
    #[error("dataplane: {0}")]
    Dataplane(String),
    /// A fault injected by a test's faulty dataplane.
    #[error("{0}")]
    Injected(String),
    #[error("{what}: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig{}: {source}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    KubeConfig {
        path: Option<PathBuf>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// The errno behind a kernel or file-system failure, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => source.errno(),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_errors_keep_errno_and_source() {
        let nl = trellis_netlink::Error::Kernel {
            op: "RTM_NEWROUTE".into(),
            errno: libc::ENETUNREACH,
            source: std::io::Error::from_raw_os_error(libc::ENETUNREACH),
        };
        let e = Error::Netlink { op: "replace route".into(), source: nl };
        assert_eq!(e.errno(), Some(libc::ENETUNREACH));
        let src = std::error::Error::source(&e).expect("source kept");
        assert!(src.downcast_ref::<trellis_netlink::Error>().is_some(), "{src:?}");
        assert!(e.to_string().starts_with("replace route: "), "{e}");
        assert_eq!(Error::io("/x", std::io::Error::from_raw_os_error(libc::EACCES)).errno(), Some(libc::EACCES));
        assert_eq!(Error::Dataplane("x".into()).errno(), None);
    }
}
