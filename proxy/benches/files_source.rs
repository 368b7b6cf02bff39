//! The files source at scale: the real `trellis-agent` in a throwaway netns, fed 2000 Node manifests.
//!
//! `sudo -E cargo bench -p trellis-agent --bench files_source -- --write` (root: it makes a netns). Measured for
//! each way of watching the directory (inotify with the slow fallback poll, the default; and polling every 250 ms,
//! the agent before inotify):
//! - converge: 2000 Node manifests written into the running agent's directory until 2000 routes are in the kernel;
//! - one change: one Node's podCIDR rewritten until its new route is in and the old one gone;
//! - idle CPU: the agent's user+system time over a quiet window after that, as a share of one core.
//!
//! `--write` puts the table between `<!-- agent-files-bench -->` markers in BENCHMARKS.md. Under `cargo test`
//! (no `--bench` argument) it does nothing: the figures belong here, not in tests.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trellis_netlink::{Family, Handle};

const NODES: usize = 2000;
const PROTO: u8 = 0x7e;
const MARKER: &str = "<!-- agent-files-bench -->";

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed");
}

fn node_yaml(name: &str, cidr: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: {cidr}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
    )
}

/// Peer `i`: podCIDR 10.x.y.0/24 and an underlay address in 172.20.0.0/16 (VXLAN needs no shared segment).
fn peer(i: usize) -> (String, String, Ipv4Addr) {
    let cidr = format!("10.{}.{}.0/24", i / 256, i % 256);
    let ip = Ipv4Addr::new(172, 20, (i / 250) as u8 + 1, (i % 250) as u8 + 2);
    (format!("n{i:04}"), cidr, ip)
}

/// Routes the agent owns, by destination.
fn routes(h: &mut Handle) -> Vec<String> {
    h.routes(Family::V4)
        .map(|v| v.into_iter().filter(|r| r.protocol == PROTO).map(|r| r.dst.to_string()).collect())
        .unwrap_or_default()
}

fn wait(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < deadline, "{what}: not done within {deadline:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent stat");
    let after_comm = stat.rsplit_once(')').expect("stat format").1;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); after the comm field, the state is index 0.
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

struct Figures {
    converge: Duration,
    change: Duration,
    idle_cpu: f64,
}

fn run(label: &str, extra: &[&str], idle: Duration) -> Figures {
    let ns = Netns(format!("trbench{}{label}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]);
    sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
    // The underlay: one end of a veth pair whose other end stays in the same netns (no dummy driver needed).
    sh(&["ip", "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    sh(&["ip", "-n", &ns.0, "addr", "add", "172.20.0.1/16", "dev", "eth0"]);
    sh(&["ip", "-n", &ns.0, "link", "set", "eth0p", "up"]);
    sh(&["ip", "-n", &ns.0, "link", "set", "eth0", "up"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests dir");
    std::fs::write(manifests.join("self.yaml"), node_yaml("self", "10.200.0.0/24", Ipv4Addr::new(172, 20, 0, 1)))
        .expect("own node");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    // `ip netns exec` execs the agent: the child's pid is the agent's.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_trellis-agent"), "--node-name", "self", "--source", "files"])
        .args(["--cluster-cidr", "10.0.0.0/8", "--metrics-addr", "", "--underlay-iface", "eth0"])
        .arg("--manifests-dir")
        .arg(&manifests)
        .arg("--cni-conf-dir")
        .arg(dir.path().join("cni"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let agent = Agent(cmd.spawn().expect("spawn agent"));
    let pid = agent.0.id();
    let mut h = Handle::in_netns(&PathBuf::from(format!("/run/netns/{}", ns.0))).expect("netlink in netns");
    let conf = dir.path().join("cni/10-trellis.conflist");
    wait("agent up (conflist written)", Duration::from_secs(30), || conf.exists());

    // Converge: every manifest written (one file per Node, as a ConfigMap or a sync tool would) until every route.
    let t0 = Instant::now();
    for i in 0..NODES {
        let (name, cidr, ip) = peer(i);
        std::fs::write(manifests.join(format!("{name}.yaml")), node_yaml(&name, &cidr, ip)).expect("write node");
    }
    wait("2000 routes", Duration::from_secs(120), || routes(&mut h).len() == NODES);
    let converge = t0.elapsed();

    // One change: a podCIDR moves.
    let (name, old, ip) = peer(NODES / 2);
    let new = "10.250.0.0/24";
    let t0 = Instant::now();
    std::fs::write(manifests.join(format!("{name}.yaml")), node_yaml(&name, new, ip)).expect("rewrite node");
    wait("podCIDR change", Duration::from_secs(60), || {
        let r = routes(&mut h);
        r.iter().any(|d| d == new) && !r.contains(&old)
    });
    let change = t0.elapsed();

    // Idle: nothing changes; what remains is watching (or polling) and the periodic repair rounds.
    std::thread::sleep(Duration::from_secs(2));
    let c0 = cpu_secs(pid);
    let t0 = Instant::now();
    std::thread::sleep(idle);
    let idle_cpu = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64();
    eprintln!("{label}: converge {converge:?}, change {change:?}, idle CPU {:.2}% of a core", idle_cpu * 100.0);
    Figures { converge, change, idle_cpu }
}

fn splice(doc: &str, section: &str) -> String {
    let block = format!("{MARKER}\n{}\n{MARKER}", section.trim_end());
    match doc.split_once(MARKER).and_then(|(head, rest)| Some((head, rest.split_once(MARKER)?.1))) {
        Some((head, tail)) => format!("{head}{block}{tail}"),
        None => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // `cargo test --all-targets`: nothing to test here
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP files_source bench: needs root (it makes a network namespace)");
        return;
    }
    let write = args.iter().any(|a| a == "--write");
    let idle = Duration::from_secs(30);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let modes: [(&str, &str, &[&str]); 2] = [
        (
            "before",
            "poll every 250 ms (`--manifests-inotify false --manifests-poll-ms 250`)",
            &["--manifests-inotify", "false", "--manifests-poll-ms", "250"],
        ),
        ("after", "inotify, fallback poll every 5 s (the default)", &[]),
    ];
    let mut rows = String::new();
    for (label, how, extra) in modes {
        let f = run(label, extra, idle);
        rows += &format!(
            "| {how} | {:.2} | {:.3} | {:.2} |\n",
            f.converge.as_secs_f64(),
            f.change.as_secs_f64(),
            f.idle_cpu * 100.0
        );
    }
    let section = format!(
        "### Agent files source: {NODES} Node manifests (inotify vs polling)\n\n\
         Command: `sudo -E cargo bench -p trellis-agent --bench files_source -- --write`\n\n\
         - machine: {cpus} CPUs, load average at start {}, trellis-agent release build, VXLAN mode, one netns with a \
         veth underlay; one manifest file per Node\n\
         - converge: all {NODES} files written into the running agent's directory, until {NODES} routes (proto 126) \
         are in the kernel; one change: one Node's podCIDR rewritten, until its new route is in and the old one gone\n\
         - idle CPU: user+system time of the agent over {} s with nothing changing, as a share of one core (this \
         includes the default 10 s repair rounds, each re-reading {NODES} routes, FDB and neighbour entries)\n\
         - the polling row is today's agent told to poll as the files source did before inotify; the machine is \
         shared, so latencies carry scheduling noise (compare rows of one run)\n\n\
         | directory watched by | converge (s) | one podCIDR change (s) | idle CPU (% of a core) |\n\
         | --- | ---: | ---: | ---: |\n{rows}",
        load.join(" "),
        idle.as_secs()
    );
    println!("{section}");
    if write {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, splice(&doc, &section)).expect("write BENCHMARKS.md");
        eprintln!("wrote {}", path.display());
    }
}
