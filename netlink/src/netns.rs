//! Network namespace helpers. `setns` moves only the calling thread, so work inside another namespace runs on a
//! short-lived dedicated thread ([`run_in`]) and never leaks into the caller's thread.
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Error, Result};

pub const NETNS_RUN_DIR: &str = "/run/netns";

fn ns_err(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Netns { path: path.display().to_string(), detail: detail.to_string() }
}

/// Opens a netns file and checks that it really is a network namespace (nsfs, and setns-able as CLONE_NEWNET is
/// checked by the kernel at use; here we check the filesystem magic so a regular file gets a clear error).
pub fn open(path: &Path) -> Result<OwnedFd> {
    let f = File::open(path).map_err(|e| ns_err(path, format!("cannot open network namespace: {e}")))?;
    let st = nix::sys::statfs::fstatfs(&f).map_err(|e| ns_err(path, format!("statfs: {e}")))?;
    // NSFS_MAGIC; older kernels exposed namespaces through procfs.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    let magic = st.filesystem_type().0 as i64;
    if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
        return Err(ns_err(path, "is not a network namespace (not an nsfs file)"));
    }
    Ok(f.into())
}

/// Runs `f` on a new thread that has entered the network namespace at `path`.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let fd = open(path)?;
    run_in_fd(&fd, path, f)
}

/// Like [`run_in`] with an already opened namespace file.
pub fn run_in_fd<T: Send>(fd: &OwnedFd, path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| ns_err(path, format!("setns: {e}")))?;
            Ok(f())
        })
        .join()
        .map_err(|_| ns_err(path, "thread inside the namespace panicked"))?
    })
}

/// Path of a named netns, as `ip netns` names them.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Creates a named network namespace like `ip netns add NAME`: a new netns bind-mounted at /run/netns/NAME, with
/// /run/netns made a shared mount so the binding is visible to other mount namespaces. Fails if it exists.
pub fn create(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Invalid(format!("bad netns name {name:?}")));
    }
    let dir = Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { what: format!("creating {}", dir.display()), source: e })?;
    ensure_shared_mount(dir)?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::Io { what: format!("creating {}", path.display()), source: e })?;
    let res = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ns_err(&path, format!("unshare: {e}")))?;
            let tid = nix::unistd::gettid();
            let src = format!("/proc/self/task/{tid}/ns/net");
            mount(Some(src.as_str()), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| ns_err(&path, format!("bind mount: {e}")))
        })
        .join()
        .unwrap_or_else(|_| Err(ns_err(&path, "thread panicked")))
    });
    if let Err(e) = res {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

fn ensure_shared_mount(dir: &Path) -> Result<()> {
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first, as iproute2 does.
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| ns_err(dir, format!("bind mount: {e}")))?;
            mount(None::<&str>, dir, None::<&str>, flags, None::<&str>)
                .map_err(|e| ns_err(dir, format!("make shared: {e}")))
        }
        Err(e) => Err(ns_err(dir, format!("make shared: {e}"))),
    }
}

/// Deletes a named netns like `ip netns del NAME`; a missing one is success.
pub fn delete(name: &str) -> Result<()> {
    delete_path(&path_of(name))
}

pub fn delete_path(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(ns_err(path, format!("umount: {e}"))),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io { what: format!("removing {}", path.display()), source: e }),
    }
}

/// Named namespaces under /run/netns.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_RUN_DIR)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// True when both files name the same namespace (same nsfs inode).
pub fn same(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let p = std::env::temp_dir().join(format!("not-a-netns-{}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        let e = open(&p).unwrap_err().to_string();
        assert!(e.contains("is not a network namespace"), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = open(Path::new("/nonexistent/netns")).unwrap_err().to_string();
        assert!(e.contains("cannot open"), "{e}");
    }

    #[test]
    fn create_enter_delete() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED create_enter_delete: needs root");
            return;
        }
        let name = format!("trnl-unit-{}", std::process::id());
        let p = create(&name).unwrap();
        assert!(list().contains(&name));
        let here = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let there = run_in(&p, || std::fs::read_link("/proc/thread-self/ns/net").unwrap()).unwrap();
        assert_ne!(here, there);
        // the caller's thread did not move
        assert_eq!(std::fs::read_link("/proc/thread-self/ns/net").unwrap(), here);
        delete(&name).unwrap();
        delete(&name).unwrap();
        assert!(!p.exists());
    }
}
