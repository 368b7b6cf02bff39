//! A private podman (CNI backend) that runs inside a node netns, as docs/PODMAN.md describes: its own
//! containers.conf, storage, run root, cgroup parent and conflist dir, all removed on Drop.
use crate::bins::Bins;
use crate::cmd;
use crate::netns::Netns;
use crate::tempdir::TempDir;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 6] = ["sh", "sleep", "ping", "ip", "cat", "ls"];

pub struct Podman {
    node_netns: PathBuf,
    cgroup_parent: String,
    dir: TempDir,
}

/// The containers.conf that keeps podman on CNI, runc, cgroupfs and file locks, with capped rlimits.
pub fn containers_conf(plugin_dirs: &[&str], net_dir: &Path) -> String {
    let dirs: Vec<String> = plugin_dirs.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\n\
         [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{}]\nnetwork_config_dir = \"{}\"\n\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\nlock_type = \"file\"\n",
        dirs.join(", "),
        net_dir.display()
    )
}

impl Podman {
    pub fn new(node: &Netns, bins: &Bins) -> Result<Podman> {
        let dir = TempDir::new("podman")?;
        for d in ["net", "root", "runroot", "tmp", "rootfs/bin"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let bin_dir = bins.dir.display().to_string();
        std::fs::write(
            dir.join("containers.conf"),
            containers_conf(&[&bin_dir, crate::bins::REFERENCE_DIR], &dir.join("net")),
        )?;
        let rootfs_bin = dir.join("rootfs/bin");
        std::fs::copy(BUSYBOX, rootfs_bin.join("busybox")).with_context(|| format!("copy {BUSYBOX}"))?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs_bin.join(applet))?;
        }
        Ok(Podman {
            node_netns: node.path().to_owned(),
            cgroup_parent: format!("/{}", crate::names::unique("podman")),
            dir,
        })
    }

    /// Install a conflist for podman to find under its network name.
    pub fn add_network(&self, conflist: &Value) -> Result<()> {
        let name = conflist["name"].as_str().context("conflist without name")?;
        std::fs::write(self.dir.join("net").join(format!("{name}.conflist")), serde_json::to_vec_pretty(conflist)?)?;
        Ok(())
    }

    /// `podman <global flags> args...` inside the node netns.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node_netns.display()))
            .arg("--")
            .arg("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .arg("--storage-driver")
            .arg("vfs")
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<String> {
        cmd::run_ok(&mut self.command(args))
    }

    /// Start `sleep` in a container on `network`; returns the 64-hex container ID.
    pub fn run_sleeper(&self, network: &str) -> Result<String> {
        let rootfs = self.dir.join("rootfs").display().to_string();
        // `--rootfs` is a flag: the directory is the first positional, so every option goes before it.
        let out = self.run(&[
            "run",
            "-d",
            "--cap-add",
            "NET_RAW",
            "--network",
            network,
            "--cgroup-parent",
            &self.cgroup_parent,
            "--rootfs",
            &rootfs,
            "/bin/sleep",
            "300",
        ])?;
        let id = out.lines().last().unwrap_or_default().trim().to_owned();
        if id.len() != 64 {
            bail!("podman run printed no container ID: {out}");
        }
        Ok(id)
    }

    pub fn inspect(&self, id: &str) -> Result<Value> {
        let v: Value = serde_json::from_str(&self.run(&["inspect", id])?)?;
        Ok(v[0].clone())
    }

    /// The container's IP on `network` as podman recorded it (empty when podman recorded none).
    pub fn ip(&self, id: &str, network: &str) -> Result<String> {
        let v = self.inspect(id)?;
        Ok(v["NetworkSettings"]["Networks"][network]["IPAddress"].as_str().unwrap_or_default().to_owned())
    }

    /// `podman rm -f`, then wait until podman's cleanup has left no conmon/cleanup process for this ID.
    pub fn rm(&self, id: &str) -> Result<()> {
        self.run(&["rm", "-f", "-t", "0", id])?;
        wait_no_process_mentioning(id, Duration::from_secs(30));
        Ok(())
    }
}

/// Podman forks `conmon` and `podman container cleanup` that outlive the CLI call: wait for them to finish.
fn wait_no_process_mentioning(needle: &str, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !process_cmdlines().iter().any(|c| c.contains(needle)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("warning: processes mentioning {needle} still running after {timeout:?}");
}

fn process_cmdlines() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<u32>().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            Some(String::from_utf8_lossy(&raw).replace('\0', " "))
        })
        .collect()
}

impl Drop for Podman {
    fn drop(&mut self) {
        let root = self.dir.join("root").display().to_string();
        if let Err(e) = self.run(&["rm", "-af", "-t", "0"]) {
            eprintln!("warning: podman rm -af: {e:#}");
        }
        wait_no_process_mentioning(&root, Duration::from_secs(30));
        // Unmount anything podman left mounted under our dir before the TempDir removes it.
        let _ = Command::new("umount").arg("-R").arg(self.dir.join("root")).output();
        let _ = Command::new("umount").arg("-R").arg(self.dir.join("runroot")).output();
        remove_cgroup(&self.cgroup_parent);
    }
}

/// rmdir the cgroup parent (and any leftover children) in every hierarchy.
fn remove_cgroup(parent: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let dir = h.path().join(parent.trim_start_matches('/'));
        if dir.exists() {
            rmdir_tree(&dir);
        }
    }
}

fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("warning: rmdir {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_conf_pins_the_cni_backend() {
        let c = containers_conf(&["/a", "/usr/lib/cni"], Path::new("/t/net"));
        assert!(c.contains("network_backend = \"cni\""));
        assert!(c.contains("cni_plugin_dirs = [\"/a\", \"/usr/lib/cni\"]"));
        assert!(c.contains("network_config_dir = \"/t/net\""));
        assert!(c.contains("runtime = \"runc\"") && c.contains("lock_type = \"file\""));
        assert!(c.contains("nproc=4096:4096"));
    }
}
