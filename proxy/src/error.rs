//! The agent library's error type.
use std::path::PathBuf;

/// Errors of the agent's library code; the binary wraps them in `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink {op}: {message}")]
    Netlink { op: String, message: String },
    #[error("dataplane: {0}")]
    Dataplane(String),
    #[error("injected fault in {0}")]
    Injected(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    KubeConfig(String),
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
}
