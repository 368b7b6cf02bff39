//! The load generator. The client is this binary again (`__client`), started inside the client pod's netns and,
//! for the socket path, inside the cgroup the socket LB is attached to: cgroup hooks see processes, not threads.
//! It times every operation and prints one `RESULT` line (rate, p50, p99).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fixture::pin;
use crate::stats::Run;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One connection, 1-byte request and response, back to back.
    Rr,
    /// A new connection per 1-byte exchange.
    Crr,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rr => "rr",
            Kind::Crr => "crr",
        }
    }
}

fn crr_once(to: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut b = [b'c'; 1];
    s.write_all(&b)?;
    s.read_exact(&mut b)?;
    let _ = s.read(&mut b); // the server's close
    Ok(())
}

/// The client's body: runs `kind` against `to` for `secs` on `cpu`, returns the run.
pub fn client(to: SocketAddr, kind: Kind, secs: f64, cpu: Option<usize>) -> Result<Run> {
    pin(cpu)?;
    let limit = Duration::from_secs_f64(secs);
    let mut lat: Vec<u64> = Vec::with_capacity(200_000);
    let start;
    match kind {
        Kind::Rr => {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).context("connect")?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut b = [b'r'; 1];
            // One untimed exchange: the first packet may wait for neighbour resolution on every hop.
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            start = Instant::now();
            while start.elapsed() < limit {
                let t = Instant::now();
                s.write_all(&b)?;
                s.read_exact(&mut b).context("read")?;
                lat.push(t.elapsed().as_nanos() as u64);
            }
        }
        Kind::Crr => {
            crr_once(to).context("first connection")?;
            start = Instant::now();
            while start.elapsed() < limit {
                let t = Instant::now();
                crr_once(to).context("connection")?;
                lat.push(t.elapsed().as_nanos() as u64);
            }
        }
    }
    Ok(Run::from_latencies(lat, start.elapsed().as_secs_f64()))
}

/// Runs the client process in netns `ns` (and `cgroup`, if any) and returns what it measured.
pub fn run(ns: &Path, cgroup: Option<&Path>, to: SocketAddr, kind: Kind, secs: f64, cpu: Option<usize>) -> Result<Run> {
    use std::os::unix::process::CommandExt;
    let netns_fd = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    let procs = cgroup.map(|c| c.join("cgroup.procs"));
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["__client", &to.to_string(), kind.name(), &secs.to_string()]);
    cmd.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0");
    if let Some(c) = cpu {
        cmd.args(["--cpu", &c.to_string()]);
    }
    // SAFETY: only a write to cgroup.procs and setns between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &procs {
                std::fs::write(p, "0")?;
            }
            nix::sched::setns(&netns_fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let out = cmd.output().context("client process")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match Run::parse(&stdout) {
        Some(r) if out.status.success() => Ok(r),
        _ => bail!("client {to} {}: {}", kind.name(), String::from_utf8_lossy(&out.stderr).trim()),
    }
}
