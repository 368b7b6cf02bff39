//! The lab library's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "trellis-lab {verb} needs root: the lab makes network namespaces, links and processes and keeps its state \
         in /run/trellis-lab. Nothing was changed; run it as root, e.g. `sudo trellis-lab {verb}`"
    )]
    NeedsRoot { verb: &'static str },
    #[error(
        "no lab is up (nothing in /run/trellis-lab); start one with `sudo trellis-lab up` (the default two-node lab) \
         or `sudo trellis-lab up --topology FILE`"
    )]
    NoLabUp,
    #[error("several labs are up ({}); pass --name to say which", .0.join(", "))]
    SeveralLabsUp(Vec<String>),
    /// `up` failed after it had made something: what it made stays for inspection.
    #[error("{error}\n(the partial lab is left for inspection; remove it with `trellis-lab down --name {lab}`)")]
    Partial { lab: String, error: Box<LabError> },
    #[error("invalid topology: {0}")]
    Topology(String),
    #[error("planning failed: {0}")]
    Plan(String),
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command { cmd: String, status: String, stderr: String },
    #[error("network namespace {name}: {reason}")]
    Netns { name: String, reason: String },
    #[error("netlink in {netns}: {source}")]
    Netlink {
        netns: String,
        #[source]
        source: trellis_netlink::Error,
    },
    #[error("lab state: {0}")]
    State(String),
    #[error("manifest {file}: {reason}")]
    Manifest { file: String, reason: String },
    #[error("CNI plugin {plugin} {command} failed: {reason}")]
    Cni { plugin: String, command: String, reason: String },
    #[error("process {what}: {reason}")]
    Process { what: String, reason: String },
    #[error("probe: {0}")]
    Probe(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("teardown left things behind: {0}")]
    Leftovers(String),
    #[error("benchmark report: {0}")]
    Report(#[from] trellis_benchmarks_md::Error),
    #[error("injected fault: {0}")]
    Injected(String),
}

pub type Result<T> = std::result::Result<T, LabError>;

impl LabError {
    /// The error behind a [`LabError::Partial`], for callers that remove the partial lab themselves.
    pub fn into_cause(self) -> LabError {
        match self {
            LabError::Partial { error, .. } => *error,
            e => e,
        }
    }

    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io { context, path: path.into(), source }
    }
}
