use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a request; `errno` is positive (libc::EEXIST, ...).
    #[error("netlink {op}: {source}")]
    Kernel { op: String, errno: i32, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("cannot decode netlink reply to {op}: {detail}")]
    Decode { op: String, detail: String },
    #[error("{path}: {detail}")]
    Netns { path: String, detail: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
    /// "Nothing to delete" in its various kernel spellings.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL))
    }
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}
