//! A uniquely named directory under /tmp, removed on Drop (pass or fail).
use std::path::{Path, PathBuf};

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(role: &str) -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(crate::names::unique(role));
        std::fs::create_dir_all(&path).map_err(|e| anyhow::anyhow!("create {}: {e}", path.display()))?;
        Ok(TempDir { path })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: could not remove {}: {e}", self.path.display());
            }
        }
    }
}
