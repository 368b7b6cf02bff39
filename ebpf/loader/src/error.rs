use std::path::PathBuf;

/// What can go wrong between the agent and the kernel's BPF side. Keeps aya's errors (which name the syscall and
/// keep the errno) as sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the datapath object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("program {0} is missing from the datapath object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the datapath object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}{}", os_error(source))]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("link pin {path}: {source}")]
    LinkPin { path: PathBuf, source: aya::pin::PinError },
    #[error("link {path}: {source}")]
    Link { path: PathBuf, source: aya::programs::links::LinkError },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("map sizes: {0}")]
    Config(String),
    #[error("bpffs is not mounted at {0}")]
    NoBpffs(PathBuf),
    /// Only the fault-injecting tables return this.
    #[error("{0}")]
    Injected(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// aya's syscall errors print only the call's name: the kernel's reason (`: Argument list too long (os error 7)`)
/// is what an operator needs.
fn os_error(e: &aya::maps::MapError) -> String {
    match e {
        aya::maps::MapError::SyscallError(s) => format!(": {}", s.io_error),
        _ => String::new(),
    }
}

impl Error {
    /// The errno behind the error, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        use aya::maps::MapError;
        match self {
            Error::Map { source: MapError::SyscallError(s), .. } => s.io_error.raw_os_error(),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
