//! `trellis-lab bench`: pod-to-pod TCP throughput, request/response rate (1-byte ping-pong on one connection)
//! and connect rate (connect, 1 byte each way, close) across nodes with vxlan, with host-gw, and over a plain
//! veth pair between two namespaces (the limit). Client and server are threads of this process, each in its
//! netns.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::error::{LabError, Result};
use crate::lab::{self, UpOptions};
use crate::names;
use crate::net::{LabNet, NetlinkNet};
use crate::nsexec;
use crate::state::LabState;
use crate::topology::{Mode, Topology};
use crate::underlay;

pub const MARKER: &str = "<!-- lab-bench -->";

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    pub secs: u64,
    /// Rounds over all paths (interleaved); the table shows medians and best rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Measure only from pod FROM to pod TO of the lab that is up (`--lab`), e.g. after changing something in it.
    #[arg(long, num_args = 2, value_names = ["FROM", "TO"])]
    pub pair: Option<Vec<String>>,
    /// The lab for `--pair` (default: the one lab that is up).
    #[arg(long)]
    pub lab: Option<String>,
    /// Let the scheduler place client and server (default: both pinned to one CPU, see `measure`).
    #[arg(long)]
    pub no_pin: bool,
    /// Replace the section between `<!-- lab-bench -->` markers in this file (created/appended if needed).
    #[arg(long)]
    pub write: bool,
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub file: PathBuf,
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Name prefix of the labs the bench builds (default: b + pid).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Numbers {
    /// Gbit/s
    pub throughput: f64,
    /// round trips per second
    pub rr: f64,
    /// connections per second
    pub crr: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub path: String,
    /// Median over the rounds.
    pub n: Numbers,
    /// Best round per metric: on a shared machine, the least disturbed measurement of what the path can do.
    pub best: Numbers,
}

const PORT_STREAM: u16 = 5201;
const PORT_RR: u16 = 5202;
const PORT_CRR: u16 = 5203;

/// Runs the three measurements from the netns `client` to `server_ip` served from the netns `server`.
/// `cpu`: pin client and server threads to that CPU. On this kind of VM a cross-CPU wake-up costs ~50 µs, so
/// unpinned RR swings 10x with where the scheduler happens to put the two threads; pinned, every path pays the
/// same for the endpoints and the numbers compare the paths.
pub fn measure(
    client: &Path,
    server: &Path,
    server_ip: Ipv4Addr,
    secs: Duration,
    cpu: Option<usize>,
) -> Result<Numbers> {
    Ok(Numbers {
        throughput: run_pair(client, server, server_ip, PORT_STREAM, secs, Kind::Stream, cpu)?,
        rr: run_pair(client, server, server_ip, PORT_RR, secs, Kind::Rr, cpu)?,
        crr: run_pair(client, server, server_ip, PORT_CRR, secs, Kind::Crr, cpu)?,
    })
}

/// The first CPU this process may run on.
pub fn first_allowed_cpu() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set))
    }
}

/// Pins the calling thread to `cpu` (thread-level: sched_setaffinity on tid 0).
fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: as above; the set only names `cpu`.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(LabError::Probe(format!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Stream,
    Rr,
    Crr,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> LabError + '_ {
    move |e| LabError::Probe(format!("bench {what}: {e}"))
}

/// Server thread in `server` netns, client thread in `client` netns. Returns Gbit/s (stream) or ops/s.
fn run_pair(
    client: &Path,
    server: &Path,
    ip: Ipv4Addr,
    port: u16,
    secs: Duration,
    kind: Kind,
    cpu: Option<usize>,
) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let server_path = server.to_path_buf();
    let stop_srv = stop.clone();
    let srv = std::thread::spawn(move || -> Result<u64> {
        let f = std::fs::File::open(&server_path).map_err(|e| LabError::io("netns", &server_path, e))?;
        nsexec::enter(&f, &server_path)?;
        pin(cpu)?;
        let l = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready_tx.send(Err(LabError::Probe(format!("bench bind {port}: {e}"))));
                return Ok(0);
            }
        };
        l.set_nonblocking(true).map_err(io_err("listener"))?;
        let _ = ready_tx.send(Ok(()));
        serve_kind(&l, kind, &stop_srv)
    });
    ready_rx.recv().map_err(|_| LabError::Probe("bench server thread died".into()))??;
    let target = SocketAddrV4::new(ip, port);
    let client_path = client.to_path_buf();
    let cli = nsexec::run_in(&client_path, move || {
        pin(cpu)?;
        client_kind(target, kind, secs)
    })?;
    stop.store(true, Ordering::SeqCst);
    let server_bytes = srv.join().map_err(|_| LabError::Probe("bench server panicked".into()))??;
    let (ops, elapsed) = cli?;
    Ok(match kind {
        Kind::Stream => server_bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9,
        _ => ops as f64 / elapsed.as_secs_f64(),
    })
}

/// Accepts until `stop`; returns bytes received (stream) or 0.
fn serve_kind(l: &TcpListener, kind: Kind, stop: &AtomicBool) -> Result<u64> {
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::SeqCst) {
        // poll() instead of sleeping between non-blocking accepts: a sleep would cap the connect rate.
        if !readable(l, 100) {
            continue;
        }
        let (mut s, _) = match l.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_err("accept")(e)),
        };
        s.set_nonblocking(false).map_err(io_err("socket"))?;
        s.set_nodelay(true).map_err(io_err("socket"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(io_err("socket"))?;
        match kind {
            Kind::Stream => loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            },
            Kind::Rr => {
                let mut b = [0u8; 1];
                while let Ok(1) = s.read(&mut b) {
                    if s.write_all(&b).is_err() {
                        break;
                    }
                }
            }
            Kind::Crr => {
                // One exchange per connection; the server closes first so TIME_WAIT stays on this side and
                // the client's ephemeral ports do not run out.
                let mut b = [0u8; 1];
                if let Ok(1) = s.read(&mut b) {
                    let _ = s.write_all(&b);
                }
            }
        }
    }
    Ok(total)
}

fn readable(l: &TcpListener, timeout_ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut fds = libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fds, 1, timeout_ms) > 0 }
}

/// connect, 1 byte each way, wait for the server's close.
fn crr_once(target: SocketAddrV4) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)).map_err(io_err("connect"))?;
    s.set_nodelay(true).map_err(io_err("socket"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(io_err("socket"))?;
    let mut b = [1u8; 1];
    s.write_all(&b).map_err(io_err("write"))?;
    s.read_exact(&mut b).map_err(io_err("read"))?;
    let _ = s.read(&mut b); // EOF from the server's close
    Ok(())
}

fn client_kind(target: SocketAddrV4, kind: Kind, secs: Duration) -> Result<(u64, Duration)> {
    let start: Instant;
    let mut ops = 0u64;
    match kind {
        Kind::Stream => {
            let mut s =
                TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)).map_err(io_err("connect"))?;
            // Time the transfer, not the handshake: the first SYN may wait for neighbour resolution on every hop,
            // or be retransmitted after a second.
            start = Instant::now();
            let buf = vec![0x5au8; 128 * 1024];
            while start.elapsed() < secs {
                s.write_all(&buf).map_err(io_err("write"))?;
                ops += 1;
            }
            s.shutdown(std::net::Shutdown::Write).map_err(io_err("shutdown"))?;
            // Wait for the server to drain so its byte count covers what was sent.
            let mut b = [0u8; 16];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut b);
        }
        Kind::Rr => {
            let mut s =
                TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)).map_err(io_err("connect"))?;
            s.set_nodelay(true).map_err(io_err("socket"))?;
            s.set_read_timeout(Some(Duration::from_secs(3))).map_err(io_err("socket"))?;
            start = Instant::now();
            let mut b = [1u8; 1];
            while start.elapsed() < secs {
                for _ in 0..64 {
                    s.write_all(&b).map_err(io_err("write"))?;
                    s.read_exact(&mut b).map_err(io_err("read"))?;
                    ops += 1;
                }
            }
        }
        Kind::Crr => {
            // One untimed exchange first, for the same reason as above.
            crr_once(target)?;
            start = Instant::now();
            while start.elapsed() < secs {
                crr_once(target)?;
                ops += 1;
            }
        }
    }
    Ok((ops, start.elapsed()))
}

/// Bench topology: 2 nodes, one pod on each.
pub fn bench_topology(name: &str, mode: Mode) -> Result<Topology> {
    Topology::parse(&format!(
        "name: {name}\nmode: {}\nnodes: [{{name: node1}}, {{name: node2}}]\npods:\n  - {{name: server, node: node1}}\n  - {{name: client, node: node2}}\n",
        mode.as_str()
    ))
}

/// A bare veth pair between two namespaces (named like a lab, so `down` can remove it).
pub struct VethPair {
    lab: String,
    /// Server side, 10.99.0.1.
    pub a: String,
    /// Client side, 10.99.0.2.
    pub b: String,
}

impl VethPair {
    pub fn create(lab: &str) -> Result<VethPair> {
        let p = VethPair {
            lab: lab.into(),
            a: format!("{}v1", names::netns_prefix(lab)),
            b: format!("{}v2", names::netns_prefix(lab)),
        };
        let mut net = NetlinkNet::default();
        net.ensure_netns(&p.a)?;
        net.ensure_netns(&p.b)?;
        net.add_veth(&p.a, "eth0", &p.b, "eth0", 1500)?;
        let a: Ipv4Net = "10.99.0.1/24".parse().expect("literal");
        let b: Ipv4Net = "10.99.0.2/24".parse().expect("literal");
        net.add_addr(&p.a, "eth0", a)?;
        net.add_addr(&p.b, "eth0", b)?;
        net.set_up(&p.a, "eth0")?;
        net.set_up(&p.b, "eth0")?;
        Ok(p)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = underlay::teardown_netns(&mut NetlinkNet::default(), &self.lab);
    }
}

/// Tears a bench lab down even when a measurement fails.
struct LabGuard(String);
impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.0) {
            eprintln!("bench: cleaning up lab {}: {e}", self.0);
        }
    }
}

fn lab_pair(st: &LabState) -> Result<(PathBuf, PathBuf, Ipv4Addr)> {
    let srv = st.pod("server").ok_or_else(|| LabError::State("bench lab has no server pod".into()))?;
    let cli = st.pod("client").ok_or_else(|| LabError::State("bench lab has no client pod".into()))?;
    let ip = st.pod_ip(srv).ok_or_else(|| LabError::State("bench server pod has no IP".into()))?;
    Ok((names::netns_path(&cli.netns), names::netns_path(&srv.netns), ip))
}

/// The same hops as a host-gw lab (pod veth, node, underlay bridge, node, pod veth) routed by hand: no pod
/// bridge, no nftables, no agent. Separates what the lab's topology costs from what Trellis adds.
pub struct RoutedPath {
    lab: String,
    pub client: String,
    pub server: String,
    pub server_ip: Ipv4Addr,
}

impl RoutedPath {
    pub fn create(lab: &str) -> Result<RoutedPath> {
        let plan = crate::plan::plan(&bench_topology(lab, Mode::HostGw)?, None)?;
        let mut net = NetlinkNet::default();
        let r = RoutedPath {
            lab: lab.into(),
            client: plan.pods[1].netns.clone(),
            server: plan.pods[0].netns.clone(),
            server_ip: Ipv4Addr::new(10, 250, 0, 2),
        };
        underlay::setup_skeleton(&mut net, &plan)?;
        // node i: pod subnet 10.250.i.0/24, node side .1, pod .2; each node routes the other's subnet via its
        // underlay address.
        for (i, (node, pod)) in
            [(&plan.nodes[0], &plan.pods[0]), (&plan.nodes[1], &plan.pods[1])].into_iter().enumerate()
        {
            let gw = Ipv4Addr::new(10, 250, i as u8, 1);
            net.add_veth(&node.netns, "p0", &pod.netns, "eth0", plan.underlay_mtu)?;
            net.add_addr(&node.netns, "p0", Ipv4Net::new(gw, 24).expect("literal"))?;
            net.add_addr(&pod.netns, "eth0", Ipv4Net::new(Ipv4Addr::new(10, 250, i as u8, 2), 24).expect("literal"))?;
            net.set_up(&node.netns, "p0")?;
            net.set_up(&pod.netns, "eth0")?;
            net.sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
            add_route(&pod.netns, "0.0.0.0/0", gw)?;
            let peer = &plan.nodes[1 - i];
            add_route(&node.netns, &format!("10.250.{}.0/24", 1 - i), peer.internal_ip)?;
        }
        Ok(r)
    }
}

fn add_route(netns: &str, dst: &str, via: Ipv4Addr) -> Result<()> {
    let nl = |source| LabError::Netlink { netns: netns.to_string(), source };
    let mut h = trellis_netlink::Handle::in_netns(&names::netns_path(netns)).map_err(nl)?;
    let dst: ipnet::IpNet = dst.parse().expect("literal");
    h.ensure_route(&trellis_netlink::Route::new(dst).via(via.into())).map_err(nl)
}

impl Drop for RoutedPath {
    fn drop(&mut self) {
        let _ = underlay::teardown_netns(&mut NetlinkNet::default(), &self.lab);
    }
}

/// One measured path: where the client and server run and the server's address.
struct PathUnderTest {
    label: &'static str,
    client: PathBuf,
    server: PathBuf,
    ip: Ipv4Addr,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `--pair FROM TO`: the three measurements between two pods of an existing lab.
fn run_pair_of_lab(args: &BenchArgs, pair: &[String], out: &mut dyn std::io::Write) -> Result<Vec<Row>> {
    let st = LabState::load(&crate::state::resolve_lab_name(args.lab.as_deref())?)?;
    let (from, to) = match pair {
        [f, t] => (f, t),
        _ => return Err(LabError::Probe("--pair takes FROM and TO".into())),
    };
    let src = crate::lab::endpoint(&st, from)?;
    let dst = st.pod(to).ok_or_else(|| LabError::Probe(format!("{to:?} is no pod of lab {}", st.plan.name)))?;
    let ip = st.pod_ip(dst).ok_or_else(|| LabError::Probe(format!("pod {to} has no IP")))?;
    let cpu = if args.no_pin { None } else { first_allowed_cpu() };
    let secs = Duration::from_secs(args.secs.max(1));
    let mut samples = Vec::new();
    for round in 0..args.rounds.max(1) {
        let n = measure(&names::netns_path(&src.netns), &names::netns_path(&dst.netns), ip, secs, cpu)?;
        let _ = writeln!(out, "round {}: {:.2} Gbit/s {:.0} RR/s {:.0} CRR/s", round + 1, n.throughput, n.rr, n.crr);
        samples.push(n);
    }
    let row = summarize(format!("{} {from} -> {to}", st.plan.name), &samples);
    let _ = writeln!(out, "median: {:?}\nbest:   {:?}", row.n, row.best);
    Ok(vec![row])
}

fn summarize(path: String, s: &[Numbers]) -> Row {
    Row {
        path,
        n: Numbers {
            throughput: median(s.iter().map(|n| n.throughput).collect()),
            rr: median(s.iter().map(|n| n.rr).collect()),
            crr: median(s.iter().map(|n| n.crr).collect()),
        },
        best: Numbers {
            throughput: s.iter().map(|n| n.throughput).fold(0.0, f64::max),
            rr: s.iter().map(|n| n.rr).fold(0.0, f64::max),
            crr: s.iter().map(|n| n.crr).fold(0.0, f64::max),
        },
    }
}

pub fn run(args: &BenchArgs, out: &mut dyn std::io::Write) -> Result<Vec<Row>> {
    if let Some(pair) = &args.pair {
        return run_pair_of_lab(args, pair, out);
    }
    let base = args.name.clone().unwrap_or_else(|| format!("b{}", std::process::id()));
    crate::topology::validate_lab_name(&format!("{base}vx"))?;
    let secs = Duration::from_secs(args.secs.max(1));
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => lab::default_bin_dir()?,
    };
    let lab_exe = std::env::current_exe().map_err(|e| LabError::io("locating trellis-lab", "/proc/self/exe", e))?;
    let cpu = if args.no_pin { None } else { first_allowed_cpu() };
    let machine = format!(
        "{}, client and server {}",
        machine_line(),
        cpu.map(|c| format!("pinned to CPU {c}")).unwrap_or_else(|| "not pinned".into())
    );

    // Everything is built first and measured interleaved, so load from elsewhere on the machine spreads over
    // all paths instead of skewing one.
    let mut guards = Vec::new();
    let mut paths = Vec::new();
    let veth_lab = format!("{base}ve");
    guards.push(LabGuard(veth_lab.clone()));
    let pair = VethPair::create(&veth_lab)?;
    paths.push(PathUnderTest {
        label: "veth pair (limit)",
        client: names::netns_path(&pair.b),
        server: names::netns_path(&pair.a),
        ip: Ipv4Addr::new(10, 99, 0, 1),
    });
    let routed_lab = format!("{base}rt");
    guards.push(LabGuard(routed_lab.clone()));
    let routed = RoutedPath::create(&routed_lab)?;
    paths.push(PathUnderTest {
        label: "routed by hand, same hops as host-gw (reference)",
        client: names::netns_path(&routed.client),
        server: names::netns_path(&routed.server),
        ip: routed.server_ip,
    });
    for (suffix, mode, label) in
        [("hg", Mode::HostGw, "host-gw, across nodes"), ("vx", Mode::Vxlan, "vxlan, across nodes")]
    {
        let name = format!("{base}{suffix}");
        guards.push(LabGuard(name.clone()));
        let opts = UpOptions {
            topology: bench_topology(&name, mode)?,
            mode: None,
            name: None,
            bin_dir: bin_dir.clone(),
            lab_exe: lab_exe.clone(),
            repair_interval_secs: None,
            agent_timeout: Duration::from_secs(60),
        };
        let st = lab::up(&opts, &mut std::io::sink())?;
        let (client, server, ip) = lab_pair(&st)?;
        paths.push(PathUnderTest { label, client, server, ip });
    }
    let _ = writeln!(out, "{} paths up; {} rounds of {}s per measurement", paths.len(), args.rounds, args.secs);

    let mut samples: Vec<Vec<Numbers>> = vec![Vec::new(); paths.len()];
    for round in 0..args.rounds.max(1) {
        for (i, p) in paths.iter().enumerate() {
            let n = measure(&p.client, &p.server, p.ip, secs, cpu)?;
            let _ = writeln!(
                out,
                "round {}: {:<50} {:>7.2} Gbit/s {:>8.0} RR/s {:>7.0} CRR/s",
                round + 1,
                p.label,
                n.throughput,
                n.rr,
                n.crr
            );
            samples[i].push(n);
        }
    }
    let rows: Vec<Row> = paths.iter().zip(samples).map(|(p, s)| summarize(p.label.into(), &s)).collect();
    drop(routed);
    drop(pair);
    drop(guards);
    let table = render(&rows, &command_line(args), &machine);
    let _ = writeln!(out, "\n{table}");
    if args.write {
        write_section(&args.file, &table)?;
        let _ = writeln!(out, "written to {}", args.file.display());
    }
    Ok(rows)
}

fn command_line(args: &BenchArgs) -> String {
    let profile = if cfg!(debug_assertions) { "" } else { " --release" };
    format!(
        "cargo run -p trellis-lab{profile} -- bench --secs {} --rounds {}{}{}",
        args.secs,
        args.rounds,
        if args.no_pin { " --no-pin" } else { "" },
        if args.write { " --write" } else { "" }
    )
}

fn find<'a>(rows: &'a [Row], prefix: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.path.starts_with(prefix))
}

/// The markdown section: table, ratios against the goals, and the command.
pub fn render(rows: &[Row], command: &str, machine: &str) -> String {
    let mut s = format!(
        "### Pod-to-pod TCP across nodes (trellis-lab bench)\n\nCommand: `{command}`\n\n- machine: {machine}\n\
         - client and server are threads of trellis-lab inside the pods' netns, one connection each; throughput: \
         128 KiB writes; RR: 1-byte ping-pong; CRR: connect, 1 byte each way, close (server first)\n\
         - cells are median / best over interleaved rounds (all paths are up at once, measured in turn); goals are \
         checked on the best round, the median ratio follows in brackets\n\
         - client and server share one CPU unless `--no-pin`: a cross-CPU wake-up costs ~50 us on this VM, so \
         unpinned RR measures where the scheduler put the threads (~10k/s on every path) rather than the path\n\
         - reference rows: a plain veth pair between two netns (the limit named in the goals) and a path routed by \
         hand over the same hops as host-gw (pod veth, node, underlay bridge, node, pod veth; no pod bridge, no \
         nftables, no agent)\n\n\
         | path | TCP throughput (Gbit/s) | TCP RR (trans/s) | TCP CRR (conn/s) |\n| --- | ---: | ---: | ---: |\n"
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} / {:.0} |\n",
            r.path, r.n.throughput, r.best.throughput, r.n.rr, r.best.rr, r.n.crr, r.best.crr
        ));
    }
    let med = |prefix: &str| find(rows, prefix).map(|r| r.n);
    let best = |prefix: &str| find(rows, prefix).map(|r| r.best);
    let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let fmt = |v: Option<f64>| v.map(|g| format!("{g:.2}")).unwrap_or_else(|| "n/a".into());
    let goal = |best: Option<f64>, median: Option<f64>, want: f64, what: &str| {
        let mark = if best.is_some_and(|g| g >= want) { "x" } else { " " };
        format!("- [{mark}] {what} >= {want:.2} (got {}; median {})\n", fmt(best), fmt(median))
    };
    s.push_str("\nGoals:\n\n");
    s.push_str(&goal(
        r(best("host-gw").map(|n| n.rr), best("veth").map(|n| n.rr)),
        r(med("host-gw").map(|n| n.rr), med("veth").map(|n| n.rr)),
        0.9,
        "host-gw RR / veth RR",
    ));
    s.push_str(&goal(
        r(best("vxlan").map(|n| n.crr), best("host-gw").map(|n| n.crr)),
        r(med("vxlan").map(|n| n.crr), med("host-gw").map(|n| n.crr)),
        0.7,
        "vxlan CRR / host-gw CRR",
    ));
    s.push_str(&format!(
        "\nAlso (best rounds): host-gw RR / hand-routed RR on the same hops = {}; vxlan throughput / host-gw = {}; \
         vxlan RR / host-gw RR = {}\n",
        fmt(r(best("host-gw").map(|n| n.rr), best("routed").map(|n| n.rr))),
        fmt(r(best("vxlan").map(|n| n.throughput), best("host-gw").map(|n| n.throughput))),
        fmt(r(best("vxlan").map(|n| n.rr), best("host-gw").map(|n| n.rr))),
    ));
    s
}

/// CPU count and load average, for the report (the machine is shared; numbers are noisy under load).
pub fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    format!("{cpus} CPUs, load average at start {load}, trellis-lab {profile} build")
}

/// Replaces the text between the first two markers, or appends a marked section.
pub fn splice(doc: &str, section: &str) -> String {
    let block = format!("{MARKER}\n{section}{MARKER}");
    let mut parts = doc.splitn(3, MARKER);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(before), Some(_), Some(after)) => format!("{before}{block}{after}"),
        _ => {
            let sep = if doc.is_empty() || doc.ends_with("\n\n") {
                ""
            } else if doc.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            let head = if doc.is_empty() { "# Benchmarks\n\n" } else { "" };
            format!("{head}{doc}{sep}{block}\n")
        }
    }
}

fn write_section(path: &Path, section: &str) -> Result<()> {
    let doc = match std::fs::read_to_string(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(LabError::io("reading", path, e)),
    };
    std::fs::write(path, splice(&doc, section)).map_err(|e| LabError::io("writing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        let r = |p: &str, t, rr, crr| Row {
            path: p.into(),
            n: Numbers { throughput: t, rr, crr },
            best: Numbers { throughput: t, rr, crr },
        };
        vec![
            r("veth pair (limit)", 40.0, 50000.0, 10000.0),
            r("host-gw, across nodes", 30.0, 45000.0, 8000.0),
            r("vxlan, across nodes", 10.0, 30000.0, 6000.0),
        ]
    }

    #[test]
    fn render_has_ratios_and_command() {
        let s = render(&rows(), "cmd", "2 CPUs");
        assert!(s.contains("- [x] host-gw RR / veth RR >= 0.90 (got 0.90; median 0.90)"), "{s}");
        assert!(s.contains("hand-routed RR on the same hops = n/a"), "{s}");
        assert!(s.contains("- [x] vxlan CRR / host-gw CRR >= 0.70 (got 0.75; median 0.75)"), "{s}");
        // Goals go by the best round; a slow median shows but does not fail them.
        let mut slow = rows();
        slow[1].n.rr = 10000.0;
        let t = render(&slow, "c", "m");
        assert!(t.contains("- [x] host-gw RR / veth RR >= 0.90 (got 0.90; median 0.20)"), "{t}");
        slow[1].best.rr = 20000.0;
        let t = render(&slow, "c", "m");
        assert!(t.contains("- [ ] host-gw RR / veth RR >= 0.90 (got 0.40; median 0.20)"), "{t}");
        assert!(s.contains("| vxlan, across nodes | 10.00 / 10.00 | 30000 / 30000 | 6000 / 6000 |"), "{s}");
        assert!(s.contains("`cmd`"));
        assert!(render(&rows()[..1], "c", "m").contains("(got n/a; median n/a)"));
    }

    #[test]
    fn splice_replaces_or_appends() {
        let first = splice("", "T1\n");
        assert!(first.starts_with("# Benchmarks"));
        assert_eq!(first.matches(MARKER).count(), 2);
        let second = splice(&format!("intro\n{first}outro\n"), "T2\n");
        assert!(second.contains("T2") && !second.contains("T1"));
        assert!(second.starts_with("intro\n") && second.ends_with("outro\n"));
        let appended = splice("# B\n\nother table\n", "T3\n");
        assert!(appended.starts_with(&format!("# B\n\nother table\n\n{MARKER}")));
        assert!(appended.contains(&format!("{MARKER}\nT3\n{MARKER}")));
    }

    #[test]
    fn bench_topology_is_two_nodes_one_pod_each() {
        let t = bench_topology("bx", Mode::HostGw).unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.pods.len(), 2);
        assert_ne!(t.pods[0].node, t.pods[1].node);
    }
}
