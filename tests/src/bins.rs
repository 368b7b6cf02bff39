//! Where the plugin binaries under test live: `$TRELLIS_BIN_DIR`, else `<target>/<profile>` of this workspace.
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub const TRELLIS: &str = "trellis";
pub const TRELLIS_IPAM: &str = "trellis-ipam";
/// Debian's containernetworking-plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

#[derive(Clone, Debug)]
pub struct Bins {
    pub dir: PathBuf,
}

impl Bins {
    /// `$TRELLIS_BIN_DIR`, else the debug binaries of this workspace. Under `cargo test` (CARGO set) they are
    /// built first, once per test process: `cargo test --workspace` does not build another package's binaries
    /// unless that package has integration tests, and a stale binary would test old code.
    pub fn locate() -> Result<Bins> {
        if std::env::var_os("TRELLIS_BIN_DIR").is_none() {
            if let Some(cargo) = std::env::var_os("CARGO") {
                build_once(&cargo)?;
            }
        }
        Self::locate_profile("debug")
    }

    pub fn locate_profile(profile: &str) -> Result<Bins> {
        let dir = match std::env::var_os("TRELLIS_BIN_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => target_dir().join(profile),
        };
        let bins = Bins { dir };
        for name in [TRELLIS, TRELLIS_IPAM] {
            let p = bins.dir.join(name);
            if !is_executable(&p) {
                bail!(
                    "plugin binary {} is missing: build it with `cargo build -p trellis-cni -p trellis-ipam{}` \
                     (or `cargo test --workspace`), or point TRELLIS_BIN_DIR at a directory holding `trellis` and \
                     `trellis-ipam`",
                    p.display(),
                    if profile == "release" { " --release" } else { "" }
                );
            }
        }
        Ok(bins)
    }

    pub fn trellis(&self) -> PathBuf {
        self.dir.join(TRELLIS)
    }
    pub fn ipam(&self) -> PathBuf {
        self.dir.join(TRELLIS_IPAM)
    }
    /// CNI_PATH: our binaries first, then the reference plugins (host-local, portmap, bridge, ...).
    pub fn cni_path(&self) -> String {
        format!("{}:{}", self.dir.display(), REFERENCE_DIR)
    }
}

/// `cargo build -p trellis-cni -p trellis-ipam` once per process; the outcome is shared by every test.
fn build_once(cargo: &std::ffi::OsStr) -> Result<()> {
    static BUILT: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    let outcome = BUILT.get_or_init(|| {
        let out = std::process::Command::new(cargo)
            .args(["build", "-p", "trellis-cni", "-p", "trellis-ipam"])
            .current_dir(workspace_root())
            .output()
            .map_err(|e| format!("run cargo build: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("cargo build -p trellis-cni -p trellis-ipam failed:\n{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    outcome.clone().map_err(|e| anyhow::anyhow!(e))
}

/// `$CARGO_TARGET_DIR` or `<workspace>/target`; the workspace root is this crate's parent directory.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("target"),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Find plugin `name` in a CNI_PATH string, like libcni's FindInPath.
pub fn find_in_path(cni_path: &str, name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    cni_path.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(name)).find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_this_crate() {
        assert!(workspace_root().join("tests").join("Cargo.toml").exists());
    }

    #[test]
    fn find_in_path_rejects_paths_and_finds_executables() {
        assert_eq!(find_in_path("/bin:/usr/bin", "../sh"), None);
        assert_eq!(find_in_path("/nonexistent", "sh"), None);
        let sh = find_in_path("/nonexistent:/bin:/usr/bin", "sh").expect("sh on this machine");
        assert!(sh.ends_with("sh"));
    }

    #[test]
    fn missing_binaries_give_a_clear_message() {
        let err = Bins::locate_profile("no-such-profile").map(|_| ());
        if std::env::var_os("TRELLIS_BIN_DIR").is_none() {
            let msg = format!("{:#}", err.unwrap_err());
            assert!(msg.contains("trellis") && msg.contains("TRELLIS_BIN_DIR"), "{msg}");
        }
    }
}
