//! The on-disk store, byte-compatible with host-local:
//! `<dataDir>/<network>/<ip>` holding `<containerID>\r\n<ifname>`, `last_reserved_ip.<rangeset>`,
//! and `lock` (flock LOCK_EX) serialising every plugin process of the network.

use super::{matching, Lease, Store};
use crate::config::IpamConfig;
use crate::error::{IpamError, Result};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LOCK_FILE: &str = "lock";
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
pub const LINE_BREAK: &str = "\r\n";
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DiskStore {
    dir: PathBuf,
    lock_file: File,
    locked: bool,
    lock_timeout: Duration,
}

impl DiskStore {
    /// Open (creating if needed) the store of `network` under `data_dir`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = data_dir.join(network);
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| IpamError::io("create store directory", &dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .open(&lock_path)
            .or_else(|e| match e.kind() {
                // O_CREAT needs write access in std's API; host-local creates it empty, 0644 here.
                ErrorKind::NotFound => {
                    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o644).open(&lock_path)
                }
                _ => Err(e),
            })
            .map_err(|e| IpamError::io("open lock file", &lock_path, e))?;
        Ok(DiskStore { dir, lock_file, locked: false, lock_timeout: DEFAULT_LOCK_TIMEOUT })
    }

    pub fn open_config(cfg: &IpamConfig) -> Result<Self> {
        Self::open(&cfg.data_dir, &cfg.network)
    }

    /// How long `lock` waits before giving up with `StoreBusy` (CNI "try again later").
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn last_path(&self, rangeset: usize) -> PathBuf {
        self.dir.join(format!("{LAST_RESERVED_PREFIX}{rangeset}"))
    }

    fn create_lease_file(&self, path: &Path, content: &str) -> std::io::Result<()> {
        // O_CREAT|O_EXCL: the address can never be handed out twice, even if the lock were broken.
        // No fsync (host-local does none either): it cost ~7 ms per ADD here, and it only matters on power loss,
        // after which every pod is recreated anyway; a lease left empty by a crash is an orphan that GC frees.
        let mut f = OpenOptions::new().read(true).write(true).create_new(true).mode(0o644).open(path)?;
        let written = f.write_all(content.as_bytes());
        if written.is_err() {
            let _ = fs::remove_file(path);
        }
        written
    }

    fn write_last_reserved(&self, rangeset: usize, ip: IpAddr) -> Result<()> {
        let path = self.last_path(rangeset);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&path)
            .and_then(|mut f| f.write_all(ip.to_string().as_bytes()))
            .map_err(|e| IpamError::io("write", &path, e))
    }
}

/// Parse a lease file's content: `id\r\nifname`, the old `id` only, or empty (owner unknown).
pub(crate) fn parse_lease(ip: IpAddr, content: &str) -> Lease {
    let t = content.trim();
    match t.split_once(LINE_BREAK) {
        Some((id, ifname)) => Lease { ip, id: id.trim().to_string(), ifname: Some(ifname.trim().to_string()) },
        None => Lease { ip, id: t.to_string(), ifname: None },
    }
}

impl Store for DiskStore {
    fn lock(&mut self) -> Result<()> {
        if self.locked {
            return Err(IpamError::Store("lock taken twice".into()));
        }
        let start = Instant::now();
        match super::flock::lock_exclusive(&self.lock_file, self.lock_timeout) {
            Ok(()) => {
                self.locked = true;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                Err(IpamError::StoreBusy { dir: self.dir.clone(), waited: start.elapsed() })
            }
            Err(e) => Err(IpamError::io("flock", self.dir.join(LOCK_FILE), e)),
        }
    }

    fn unlock(&mut self) -> Result<()> {
        if !self.locked {
            return Ok(());
        }
        self.locked = false;
        self.lock_file.unlock().map_err(|e| IpamError::io("unlock", self.dir.join(LOCK_FILE), e))
    }

    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, rangeset: usize) -> Result<bool> {
        let path = self.ip_path(ip);
        match self.create_lease_file(&path, &format!("{}{LINE_BREAK}{ifname}", id.trim())) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(IpamError::io("reserve", &path, e)),
        }
        if let Err(e) = self.write_last_reserved(rangeset, ip) {
            // Keep reserve all-or-nothing.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(true)
    }

    fn last_reserved(&mut self, rangeset: usize) -> Result<Option<IpAddr>> {
        let path = self.last_path(rangeset);
        match fs::read_to_string(&path) {
            // A garbled file (e.g. cut short by a crash) only costs round-robin once.
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::io("read", &path, e)),
        }
    }

    fn release(&mut self, ip: IpAddr) -> Result<()> {
        let path = self.ip_path(ip);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IpamError::io("release", &path, e)),
        }
    }

    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let ips = self.get_by_id(id, ifname)?;
        // Keep going on errors so one bad file does not pin the others.
        let mut first_err = None;
        let mut released = Vec::new();
        for ip in ips {
            match self.release(ip) {
                Ok(()) => released.push(ip),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(matching(&self.list()?, id, ifname))
    }

    fn list(&mut self) -> Result<Vec<Lease>> {
        // One readdir; only files named by an address are read.
        let entries = fs::read_dir(&self.dir).map_err(|e| IpamError::io("read directory", &self.dir, e))?;
        let mut leases = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| IpamError::io("read directory", &self.dir, e))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match fs::read(&path) {
                Ok(bytes) => leases.push(parse_lease(ip, &String::from_utf8_lossy(&bytes))),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(IpamError::io("read", &path, e)),
            }
        }
        Ok(leases)
    }

    fn check_writable(&mut self) -> Result<()> {
        // A real create+remove: catches read-only mounts and a full disk, which access(2) misses for root.
        let probe = self.dir.join(format!(".status-probe.{}", std::process::id()));
        let r = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&probe)
            .and_then(|mut f| f.write_all(b"probe"));
        let _ = fs::remove_file(&probe);
        r.map_err(|e| IpamError::io("write to store", &probe, e))
    }
}

#[cfg(test)]
mod tests;
