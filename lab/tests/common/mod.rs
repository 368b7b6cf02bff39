//! Helpers for the lab's privileged end-to-end tests: root check, binaries, a lab guard that always runs `down`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

pub const LAB: &str = env!("CARGO_BIN_EXE_trellis-lab");

#[allow(unused_imports)]
pub use trellis_test_support::privileged::is_root;

/// Privileged tests skip loudly when not root (and fail in CI): the workspace's one guard.
#[macro_export]
macro_rules! require_root {
    () => {
        trellis_test_support::require_root!()
    };
}

/// Labs are heavy (agents, servers, netns) and the machine is small: one lab-building test at a time.
static SERIAL: Mutex<()> = Mutex::new(());
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Directory holding trellis, trellis-ipam, trellis-agent: `$TRELLIS_BIN_DIR`, else next to trellis-lab.
/// Builds them once (cargo runs tests after releasing its build lock) so they are never stale.
pub fn bin_dir() -> PathBuf {
    static BUILD: Once = Once::new();
    if let Some(d) = std::env::var_os("TRELLIS_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let dir = Path::new(LAB).parent().expect("target dir").to_path_buf();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "trellis-cni", "-p", "trellis-ipam", "-p", "trellis-agent"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let st = cmd.status();
        assert!(matches!(st, Ok(s) if s.success()), "building trellis, trellis-ipam, trellis-agent failed: {st:?}");
    });
    for b in ["trellis", "trellis-ipam", "trellis-agent"] {
        assert!(dir.join(b).is_file(), "{} missing", dir.join(b).display());
    }
    dir
}

/// A unique lab name per test: pid and a counter (a-z0-9 only, at most 16).
pub fn unique_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() % 100_000;
    format!("{tag}{pid}x{n}")
}

pub fn lab_cmd(args: &[&str]) -> Output {
    Command::new(LAB).args(args).output().expect("run trellis-lab")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A running lab; `down` on drop, pass or fail.
pub struct Lab {
    pub name: String,
}

impl Lab {
    pub fn up(tag: &str, extra: &[&str]) -> Lab {
        let name = unique_name(tag);
        let bins = bin_dir();
        let lab = Lab { name: name.clone() };
        let mut args = vec!["up", "--name", &name, "--bin-dir", bins.to_str().expect("utf8 path")];
        args.extend_from_slice(extra);
        let o = lab_cmd(&args);
        assert!(o.status.success(), "up failed:\n{}\n{}", text(&o), lab.logs());
        lab
    }

    /// Runs a trellis-lab subcommand against this lab.
    pub fn run(&self, sub: &str, args: &[&str]) -> Output {
        let mut v = vec![sub, "--name", &self.name];
        v.extend_from_slice(args);
        lab_cmd(&v)
    }

    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from("/run/trellis-lab").join(&self.name)
    }

    pub fn node_netns(&self, node: &str) -> String {
        format!("tl-{}-node-{node}", self.name)
    }

    /// GET /metrics from inside the node's netns, where the agent listens on 127.0.0.1:9962.
    pub fn metrics(&self, node: &str) -> Result<String, String> {
        use std::io::{Read, Write};
        let ns = Path::new("/run/netns").join(self.node_netns(node));
        trellis_lab::nsexec::run_in(&ns, || -> Result<String, String> {
            let addr = "127.0.0.1:9962".parse().expect("an address");
            let mut s =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            Ok(out)
        })
        .map_err(|e| e.to_string())?
    }

    /// Agent logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.state_dir().join("logs")) {
            for e in rd.flatten() {
                let t = std::fs::read_to_string(e.path()).unwrap_or_default();
                // Backtrace frames are noise here; a panic's message and the last log lines are what tell.
                let lines: Vec<&str> =
                    t.lines().filter(|l| !l.starts_with("  ") && !l.starts_with("stack backtrace")).collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                s.push_str(&format!("--- {}\n{tail}\n", e.path().display()));
            }
        }
        s
    }

    pub fn routes(&self, node: &str) -> Vec<String> {
        let o =
            Command::new("ip").args(["-n", &self.node_netns(node), "-4", "route", "show"]).output().expect("ip route");
        String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
    }

    pub fn has_route(&self, node: &str, prefix: &str) -> bool {
        let want = format!("{prefix} ");
        self.routes(node).iter().any(|r| r.starts_with(&want))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let o = lab_cmd(&["down", "--name", &self.name]);
        if !o.status.success() {
            eprintln!("down {} failed: {}", self.name, text(&o));
        }
    }
}

/// The value of one series (`name` with its labels, as exposed) in a metrics text, None when it is missing.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything a lab could leave behind: netns, tagged processes, the state dir.
pub fn leftovers(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    let prefix = format!("tl-{name}-");
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(&prefix) {
                left.push(format!("netns {n}"));
            }
        }
    }
    let tag = format!("TRELLIS_LAB={name}");
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
                .unwrap_or(true);
            if !zombie && env.split(|b| *b == 0).any(|kv| kv == tag.as_bytes()) {
                left.push(format!("process {pid}"));
            }
        }
    }
    let dir = PathBuf::from("/run/trellis-lab").join(name);
    if dir.exists() {
        left.push(format!("dir {}", dir.display()));
    }
    left
}

/// Writes `yaml` to a temporary file and `apply`s it; panics with the output when it fails.
pub fn apply(lab: &Lab, yaml: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("apply.yaml");
    std::fs::write(&f, yaml).expect("write manifest");
    let o = lab.run("apply", &[f.to_str().expect("utf8 path")]);
    assert!(o.status.success(), "apply:\n{}\n{}", text(&o), lab.logs());
}

/// `probe ... -o json --timeout-ms 1000`: (exit code, one object per attempt).
pub fn probe(lab: &Lab, args: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut v = args.to_vec();
    v.extend_from_slice(&["-o", "json", "--timeout-ms", "1000"]);
    let o = lab.run("probe", &v);
    let lines = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{}", text(&o))))
        .collect();
    (o.status.code(), lines)
}

/// Answers per pod of a successful run; panics (with the attempts and the agents' logs) on any failure.
pub fn spread(lab: &Lab, args: &[&str]) -> std::collections::BTreeMap<String, usize> {
    let (code, attempts) = probe(lab, args);
    assert_eq!(code, Some(0), "probe {args:?} failed: {attempts:?}\n{}", lab.logs());
    let mut by = std::collections::BTreeMap::new();
    for a in &attempts {
        *by.entry(a["pod"].as_str().expect("pod").to_string()).or_default() += 1;
    }
    by
}

/// The first attempt of a probe.
pub fn one(lab: &Lab, args: &[&str]) -> serde_json::Value {
    probe(lab, args).1.into_iter().next().expect("one attempt")
}
