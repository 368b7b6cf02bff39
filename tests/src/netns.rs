//! A network namespace owned by one test: created with a unique name, `lo` up, deleted on Drop.
//! Commands run inside it through `nsenter --net=/run/netns/NAME` (not `ip netns exec`, which remounts /sys).
use crate::cmd;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// A fresh namespace named `te<pid>-<n>-<role>`.
    pub fn new(role: &str) -> Result<Netns> {
        let name = crate::names::unique(role);
        cmd::ip(&["netns", "add", &name])?;
        // From here on Drop deletes it, even if bringing lo up fails.
        let ns = Netns { path: PathBuf::from("/run/netns").join(&name), name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// A `Command` that runs `argv` inside this namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display())).arg("--").args(argv);
        c
    }

    /// Run `argv` inside; any exit status is returned to the caller.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        cmd::output(&mut self.command(argv))
    }

    /// Run `argv` inside and require success; returns stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        cmd::run_ok(&mut self.command(argv)).with_context(|| format!("in netns {}", self.name))
    }

    /// One ping (`-c1 -W1`), retried a few times so a first ARP round trip cannot make a working path look broken.
    pub fn ping(&self, ip: &str) -> bool {
        (0..3).any(|_| self.exec(&["ping", "-c1", "-W1", "-n", ip]).map(|o| o.status.success()).unwrap_or(false))
    }

    /// `ip -j link show` parsed.
    pub fn links(&self) -> Result<Vec<Value>> {
        json_array(&self.run(&["ip", "-j", "link", "show"])?)
    }

    pub fn link_names(&self) -> Result<Vec<String>> {
        Ok(self.links()?.iter().filter_map(|l| l["ifname"].as_str().map(str::to_owned)).collect())
    }

    /// Pods' host veths in this namespace, live (`tr…`) and dying (`tz…`): what a leak check counts.
    pub fn pod_links(&self) -> Result<Vec<String>> {
        Ok(self.link_names()?.into_iter().filter(|n| crate::veth::is_pod_link(n)).collect())
    }

    /// Waits (up to [`crate::wait::DEADLINE`]) until the pod links here are exactly `expected`: a deleted pod's
    /// `tz…` link lives on until a detached child of DEL has unregistered it.
    pub fn wait_pod_links(&self, expected: &[String]) -> Result<()> {
        let mut want = expected.to_vec();
        want.sort();
        let mut seen = Vec::new();
        crate::wait::until("the node's pod links to settle", crate::wait::DEADLINE, || {
            seen = self.pod_links()?;
            seen.sort();
            Ok(seen == want)
        })
        .with_context(|| format!("pod links in {}: {seen:?}, expected {want:?}", self.name))?;
        Ok(())
    }

    pub fn link(&self, name: &str) -> Result<Option<Value>> {
        Ok(self.links()?.into_iter().find(|l| l["ifname"] == name))
    }

    /// `ip -d -j link show dev NAME`: with linkinfo (kind, bridge port flags such as hairpin).
    pub fn link_details(&self, name: &str) -> Result<Value> {
        json_array(&self.run(&["ip", "-d", "-j", "link", "show", "dev", name])?)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no link {name} in {}", self.name))
    }

    pub fn has_link(&self, name: &str) -> Result<bool> {
        Ok(self.link(name)?.is_some())
    }

    /// Addresses (`addr/prefix`) of one link, both families.
    pub fn addrs(&self, dev: &str) -> Result<Vec<String>> {
        let v = json_array(&self.run(&["ip", "-j", "addr", "show", "dev", dev])?)?;
        Ok(v.iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?)))
            .collect())
    }

    /// IPv6 routes of the main table, parsed.
    pub fn routes6(&self) -> Result<Vec<Value>> {
        json_array(&self.run(&["ip", "-j", "-6", "route", "show"])?)
    }

    /// IPv4 routes of the main table, parsed.
    pub fn routes4(&self) -> Result<Vec<Value>> {
        json_array(&self.run(&["ip", "-j", "-4", "route", "show"])?)
    }

    /// Read a sysctl (`net.ipv4.ip_forward`) as seen inside this namespace: /proc/sys/net follows the reader's netns.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        Ok(self.run(&["cat", &path])?.trim().to_owned())
    }

    /// Runs `f` on a thread that has entered this namespace (setns affects only the calling thread), so sockets
    /// `f` creates live here, whatever thread uses them afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&self.path).with_context(|| format!("open {}", self.path.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a valid namespace fd, for this (short-lived, scoped) thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow::anyhow!("setns into {}: {}", self.name, std::io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
        })
    }

    /// Waits until no IPv6 address here is still tentative (duplicate address detection takes a second or two;
    /// until then the kernel will not send from it).
    pub fn wait_ipv6_ready(&self) -> Result<()> {
        crate::wait::until(&format!("IPv6 DAD in {}", self.name), crate::wait::DEADLINE, || {
            Ok(self.run(&["ip", "-6", "addr", "show", "tentative"])?.trim().is_empty())
        })?;
        Ok(())
    }

    /// `nft list ruleset` inside.
    pub fn nft_ruleset(&self) -> Result<String> {
        self.run(&["nft", "list", "ruleset"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = cmd::ip(&["netns", "del", &self.name]) {
            eprintln!("warning: could not delete netns {}: {e:#}", self.name);
        }
    }
}

fn json_array(s: &str) -> Result<Vec<Value>> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str(trimmed).with_context(|| format!("parse ip -j output: {trimmed}"))? {
        Value::Array(a) => Ok(a),
        other => bail!("expected a JSON array from ip -j, got {other}"),
    }
}
