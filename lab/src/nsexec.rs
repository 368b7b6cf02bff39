//! Running code and processes inside a network namespace, and finding the lab's processes again.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::names;

/// Runs `f` on a fresh thread that has joined the netns at `path` (setns moves only the calling thread).
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(path).map_err(|e| LabError::io("opening netns", path, e))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            enter(&file, path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| LabError::Netns { name: path.display().to_string(), reason: "worker thread panicked".into() })?
    })
}

/// Moves the calling thread into the netns behind `file`.
pub fn enter(file: &File, path: &Path) -> Result<()> {
    // SAFETY: setns on a valid fd we own; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(LabError::Netns {
            name: path.display().to_string(),
            reason: format!("setns: {}", std::io::Error::last_os_error()),
        });
    }
    Ok(())
}

/// Makes `cmd` start inside the netns at `path` (setns in the child before exec). `detach` also puts it in its
/// own session so it outlives the lab command and ignores its terminal.
pub fn in_netns(cmd: &mut Command, path: &Path, detach: bool) -> Result<File> {
    let file = File::open(path).map_err(|e| LabError::io("opening netns", path, e))?;
    let fd = file.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setns, setsid) between fork and exec; `fd` stays open in the child
    // until exec because the caller keeps `file` alive until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if detach && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(file)
}

/// Makes `cmd` start in the cgroup (v2) directory `dir` (the child writes itself into `cgroup.procs` before exec).
pub fn in_cgroup(cmd: &mut Command, dir: &Path) -> Result<File> {
    let procs = dir.join("cgroup.procs");
    let file = std::fs::OpenOptions::new().write(true).open(&procs).map_err(|e| LabError::io("opening", &procs, e))?;
    let fd = file.as_raw_fd();
    // SAFETY: write(2) is async-signal-safe; `fd` stays open in the child until exec (the caller keeps `file`).
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(file)
}

/// Moves this whole process (every thread) into the cgroup directory `dir`.
pub fn join_cgroup(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(|e| LabError::io("writing", &procs, e))
}

/// Spawns `cmd` inside the netns and, when given, the node's cgroup; tagged with the lab's name in its environment.
pub fn spawn_in_node(cmd: &mut Command, netns: &Path, cgroup: Option<&Path>, lab: &str, detach: bool) -> Result<Child> {
    let _keep = match cgroup.filter(|c| c.exists()) {
        Some(c) => Some(in_cgroup(cmd, c)?),
        None => None,
    };
    spawn_in(cmd, netns, lab, detach)
}

/// Spawns `cmd` inside the netns, tagged with the lab's name in its environment.
pub fn spawn_in(cmd: &mut Command, netns: &Path, lab: &str, detach: bool) -> Result<Child> {
    cmd.env(names::LAB_ENV, lab);
    let _keep = in_netns(cmd, netns, detach)?;
    cmd.spawn().map_err(|e| LabError::Process { what: format!("{:?}", cmd.get_program()), reason: e.to_string() })
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn all_pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())).collect()
}

/// Processes whose network namespace is one of `netns_paths`.
pub fn pids_in_netns(netns_paths: &[PathBuf]) -> Vec<i32> {
    let inodes: Vec<u64> = netns_paths.iter().filter_map(|p| inode(p)).collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|pid| inode(&PathBuf::from(format!("/proc/{pid}/ns/net"))).is_some_and(|i| inodes.contains(&i)))
        .collect()
}

/// Processes started by this lab (they carry `TRELLIS_LAB=<lab>` in their environment).
pub fn pids_tagged(lab: &str) -> Vec<i32> {
    let tag = format!("{}={lab}", names::LAB_ENV);
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == tag.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

pub fn alive(pid: i32) -> bool {
    // Zombies count as gone: they hold nothing but a pid. But a zombie group leader whose other threads are still
    // exiting (a killed multi-threaded agent) still holds its files, its listening socket among them.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let zombie = s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false);
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
            !zombie || threads > 1
        }
        Err(_) => false,
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns the pids that were still alive at the start.
pub fn terminate(pids: &[i32], grace: Duration) -> Vec<i32> {
    let live: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &live {
        // SAFETY: plain kill(2) on a pid we identified as ours.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && live.iter().any(|&p| alive(p)) {
        reap(&live);
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in &live {
        if alive(p) {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && live.iter().any(|&p| alive(p)) {
        reap(&live);
        std::thread::sleep(Duration::from_millis(20));
    }
    reap(&live);
    live
}

/// Collects those of `pids` that are exited children of this process (spawned by an in-process `up`); only
/// these pids, so other threads' `Command`s keep their exit statuses.
fn reap(pids: &[i32]) {
    for &p in pids {
        // SAFETY: non-blocking wait for one pid; ECHILD for non-children is ignored.
        unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) };
    }
}
