//! A node netns routing between a client pod `a` (10.0.1.2) and a server pod `b` (10.0.2.2 and 10.0.2.3), each
//! on a veth whose host end (`ha`, `hb`) sits in the node. One per mode, so the rules of one never tax another's
//! packets. Every name carries the run's pid; everything goes on Drop.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use trellis_netlink::netns;

use crate::gen::{POD_PORT, SERVER_PORTS};

pub struct Fixture {
    pub node: String,
    pub a: String,
    pub b: String,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
}

pub fn sh(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0]).args(&argv[1..]).output().with_context(|| format!("spawning {}", argv[0]))?;
    if !out.status.success() {
        bail!("{}: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Names of a run's netns: one of these, the run's pid, then the fixture's tag (node, client pod, server pod).
const NETNS_PREFIXES: [&str; 3] = ["tsbn", "tsba", "tsbb"];
/// What a run's pinned maps and cgroups are named after: this, `-<pid>-`, then a tag.
const RUN_NAME: &str = "trellis-svc-bench";
const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
const BPF_ROOT: &str = "/sys/fs/bpf";

/// `trellis-svc-bench-<pid>`: the start of every pin directory and cgroup this run makes.
fn run_prefix(pid: u32) -> String {
    format!("{RUN_NAME}-{pid}")
}

/// Where an eBPF node of this run pins its maps and links.
pub fn pin_path(tag: &str) -> PathBuf {
    PathBuf::from(BPF_ROOT).join(format!("{}-{tag}", run_prefix(std::process::id())))
}

impl Fixture {
    /// The topology, with the echo server running in `b`, pinned to `server_cpu`.
    pub fn new(tag: &str, server_cpu: Option<usize>) -> Result<Fixture> {
        let id = format!("{}{tag}", std::process::id());
        let [node, a, b] = NETNS_PREFIXES.map(|p| format!("{p}{id}"));
        let mut f = Fixture { node, a, b, stop: Arc::new(AtomicBool::new(false)), server: None };
        for ns in [&f.node, &f.a, &f.b] {
            netns::create(ns)?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        for (pod, host, n) in [(&f.a, "ha", 1), (&f.b, "hb", 2)] {
            sh(&["ip", "-n", &f.node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod])?;
            sh(&["ip", "-n", &f.node, "addr", "add", &format!("10.0.{n}.1/24"), "dev", host])?;
            sh(&["ip", "-n", &f.node, "link", "set", host, "up"])?;
            sh(&["ip", "-n", pod, "addr", "add", &format!("10.0.{n}.2/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", pod, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", pod, "route", "add", "default", "via", &format!("10.0.{n}.1")])?;
        }
        sh(&["ip", "-n", &f.b, "addr", "add", "10.0.2.3/24", "dev", "eth0"])?;
        // Forwarding inside the node netns only (never the root namespace).
        netns::run_in(&netns::path_of(&f.node), || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))??;
        f.server = Some(serve(&netns::path_of(&f.b), server_cpu, f.stop.clone())?);
        Ok(f)
    }

    pub fn path(ns: &str) -> PathBuf {
        netns::path_of(ns)
    }

    /// Feeds `input` to `argv` run in the node netns; killed past `limit` (Ok(false): did not finish).
    pub fn load(&self, argv: &[&str], input: String, limit: Duration) -> Result<bool> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node]).args(argv);
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                let _ = writer.join();
                if !st.success() {
                    let mut e = String::new();
                    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut e));
                    bail!("{}: {st}: {}", argv.join(" "), e.trim());
                }
                return Ok(true);
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let _ = writer.join();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
        for ns in [&self.a, &self.b, &self.node] {
            let _ = netns::delete(ns);
        }
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: Option<usize>) -> std::io::Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t is valid; the set names only `cpu`.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The server: one thread, one connection at a time (the client is sequential). A connection whose first byte
/// is `c` is one CRR exchange: answer, then close first, so TIME_WAIT stays here and the client's ephemeral ports
/// never run out. Any other byte starts RR: echo until EOF.
fn serve(ns: &std::path::Path, cpu: Option<usize>, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    let fd = netns::open(ns)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let setup = || -> std::io::Result<Vec<TcpListener>> {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            pin(cpu)?;
            let mut v = Vec::new();
            for port in SERVER_PORTS.into_iter().chain([POD_PORT]) {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
                l.set_nonblocking(true)?;
                v.push(l);
            }
            Ok(v)
        };
        let ls = match setup() {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            let Some(l) = readable(&ls, 100) else { continue };
            let Ok((mut s, _)) = l.accept() else { continue };
            let _ = s.set_nonblocking(false);
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut b = [0u8; 1];
            if !matches!(s.read(&mut b), Ok(1)) {
                continue;
            }
            if b[0] == b'c' {
                let _ = s.write_all(&b);
                continue;
            }
            loop {
                if s.write_all(&b).is_err() || !matches!(s.read(&mut b), Ok(1)) {
                    break;
                }
            }
        }
    });
    rx.recv().context("server thread")?.context("server")?;
    Ok(h)
}

/// The first listener with a connection waiting, if one comes within `timeout_ms`.
fn readable(ls: &[TcpListener], timeout_ms: i32) -> Option<&TcpListener> {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> =
        ls.iter().map(|l| libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: valid pollfds for the duration of the call.
    if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) } <= 0 {
        return None;
    }
    fds.iter().position(|f| f.revents & libc::POLLIN != 0).map(|i| &ls[i])
}

/// A cgroup of our own under the unified hierarchy, for the socket-LB client; removed on Drop.
pub struct Cgroup(pub PathBuf);

impl Cgroup {
    pub fn new(tag: &str) -> Result<Cgroup> {
        let p = PathBuf::from(CGROUP_ROOT).join(format!("{}-{tag}", run_prefix(std::process::id())));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Cgroup(p))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove what this run made (its netns, pinned maps and cgroups, all named with
/// its pid), then exit 130. The fixtures clean up on Drop, but a signal ends the process without unwinding. Call
/// first thing in `main`, before any thread exists: the signals are blocked in every thread but the one waiting.
pub fn clean_up_on_signal() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let sig = set.wait().ok();
        eprintln!("trellis-svc-bench: {sig:?}: removing this run's namespaces, pins and cgroups");
        remove_leftovers(std::process::id());
        std::process::exit(130);
    })?;
    Ok(())
}

/// Everything named for run `pid` (see `NETNS_PREFIXES`, `pin_path`, `Cgroup::new`): its netns, pin directories and
/// cgroups (this process moved out of them first).
pub fn remove_leftovers(pid: u32) {
    let ours = |name: &str, prefix: &str| {
        name.strip_prefix(prefix).is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if NETNS_PREFIXES.iter().any(|p| ours(&name, &format!("{p}{pid}"))) {
                let _ = netns::delete(&name);
            }
        }
    }
    let prefix = run_prefix(pid);
    if let Ok(dir) = std::fs::read_dir(BPF_ROOT) {
        for e in dir.flatten() {
            if ours(&e.file_name().to_string_lossy(), &prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let root = PathBuf::from(CGROUP_ROOT);
    let _ = std::fs::write(root.join("cgroup.procs"), pid.to_string());
    if let Ok(dir) = std::fs::read_dir(&root) {
        for e in dir.flatten() {
            if ours(&e.file_name().to_string_lossy(), &prefix) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}
