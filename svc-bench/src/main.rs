//! `trellis-svc-bench`: Services at 10 to 100k, side by side, in network namespaces of its own.
//!
//! Modes (each in a fixture of its own, interleaved with (a) in a plain one, reported as the median ratio to it):
//! (a) pod to pod IP, no netfilter; (a') the same with conntrack loaded in the node; (b1) pod to ClusterIP through
//! Trellis' tc programs; (b2) the same through its socket LB (client in the attached cgroup); (a+) pod to pod IP
//! through the (b1) node, forwarded by its tc programs (what (b1) and (b2) ride on); (c1) kube-proxy's
//! iptables rules through iptables-legacy-restore; (c2) the same through iptables-nft-restore; (c3) kube-proxy's
//! nftables layout. Plus programming times of the eBPF maps, their memlock and this process' RSS.
mod chart;
mod fixture;
mod gen;
mod load;
mod program;
mod report;
mod stats;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use trellis_ebpf::common::{fwd_flags, FwdConfig, Prefix};
use trellis_ebpf::tables::KernelLbTables;
use trellis_ebpf::{Datapath, MapSizes, PinDir};

use fixture::{Cgroup, Fixture};
use gen::{Spec, LIVE, SERVICE_PORT, TARGET_PORT};
use load::Kind;
use report::{Cell, Mode, Row};
use stats::Run;

#[derive(Parser, Debug)]
#[command(about = "Services at scale: pod-to-pod vs Trellis eBPF (tc, socket) vs kube-proxy iptables/nftables")]
struct Args {
    /// Numbers of Services.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10usize, 1000, 10_000, 100_000])]
    services: Vec<usize>,
    /// Seconds per timed run.
    #[arg(long, default_value_t = 0.25)]
    secs: f64,
    /// Runs per probed Service and metric, each bracketed by runs of (a). Seven short runs rather than five longer
    /// ones: this VM's noise comes in bursts that a longer run does not average out, while a median over more
    /// runs drops them.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Also 100k Services for iptables-nft (c2) and nftables (c3).
    #[arg(long)]
    full: bool,
    /// Seconds after which loading a baseline's rules counts as "did not finish".
    #[arg(long, default_value_t = 60)]
    box_secs: u64,
    /// Client and server on two CPUs instead of one: each request then pays a cross-CPU wake-up, on this VM
    /// ~50 µs and erratic, which buries the path's own cost in noise.
    #[arg(long)]
    split_cpus: bool,
    /// Only the programming times and memory of the eBPF maps (no rates, no baselines); never written.
    #[arg(long)]
    program_only: bool,
    /// Write the section into BENCHMARKS.md and the chart beside it.
    #[arg(long)]
    write: bool,
    /// The BENCHMARKS.md to write (the workspace's by default).
    #[arg(long)]
    file: Option<PathBuf>,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// CPUs for the client and the server: the first two this process may use.
/// (client CPU, server CPU): both on the first allowed CPU, or the first two with `split`.
fn cpus(split: bool) -> (Option<usize>, Option<usize>) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (None, None);
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    };
    match allowed.as_slice() {
        [a, b, ..] if split => (Some(*a), Some(*b)),
        [a, ..] => (Some(*a), Some(*a)),
        [] => (None, None),
    }
}

/// A small deterministic generator for the "random" probed Service (reproducible runs).
fn pick_random(n: usize, seed: u64) -> usize {
    let mut x = seed ^ 0x9E3779B97F4A7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    if n <= 1 {
        0
    } else {
        (x % (n as u64 - 1)) as usize
    }
}

struct Ctx {
    args: Args,
    client_cpu: Option<usize>,
    server_cpu: Option<usize>,
    plain: Fixture,
}

/// Where one mode's client runs and what it connects to.
struct Target<'a> {
    fixture: &'a Fixture,
    cgroup: Option<&'a std::path::Path>,
}

impl Ctx {
    fn once(&self, t: &Target, to: SocketAddr, kind: Kind) -> Result<Run> {
        load::run(&Fixture::path(&t.fixture.a), t.cgroup, to, kind, self.args.secs, self.client_cpu)
    }

    fn baseline(&self, kind: Kind) -> Result<Run> {
        let to = SocketAddr::V4(SocketAddrV4::new(LIVE[0], TARGET_PORT));
        self.once(&Target { fixture: &self.plain, cgroup: None }, to, kind)
    }

    /// `rounds` runs per metric against `to`, each bracketed by runs of (a) (a r a r ... a): each run compares
    /// with the two (a) runs beside it, so a machine that drifts during the pair cancels out too. The (a) runs
    /// are kept for (a)'s own row.
    fn measure(&self, t: &Target, to: SocketAddr, base: &mut Vec<(Kind, Run)>) -> Result<[Cell; 2]> {
        let mut out = [Cell::default(), Cell::default()];
        for (slot, kind) in [Kind::Rr, Kind::Crr].into_iter().enumerate() {
            let mut pairs = Vec::new();
            let mut before = self.baseline(kind)?;
            base.push((kind, before));
            for _ in 0..self.args.rounds {
                let r = self.once(t, to, kind)?;
                let after = self.baseline(kind)?;
                base.push((kind, after));
                pairs.push((r, Run::between(before, after)));
                before = after;
            }
            out[slot] = Cell::Done(stats::summarize(&pairs).context("no runs")?);
        }
        Ok(out)
    }
}

fn vip(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Spec::vip(i), SERVICE_PORT))
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__client") {
        return client_main(&argv[2..]);
    }
    let args = Args::parse();
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "needs root (network namespaces, bpffs, netfilter)");
    fixture::clean_up_on_signal()?;
    let started = Instant::now();
    let (client_cpu, server_cpu) = cpus(args.split_cpus);
    let plain = Fixture::new("p", server_cpu)?;
    let ctx = Ctx { args, client_cpu, server_cpu, plain };
    let mut rows: Vec<Row> = Vec::new();
    let mut prog_rows = Vec::new();
    let services = ctx.args.services.clone();
    for &n in &services {
        eprintln!("== {n} Services ({:.0?} so far)", started.elapsed());
        let last = n.saturating_sub(1);
        let random = pick_random(n, n as u64);
        let spec = Spec { n, live: vec![last, random] };
        let probes = if random == last { vec![("last", last)] } else { vec![("last", last), ("random", random)] };
        let mut base = Vec::new();
        let add = |rows: &mut Vec<Row>, mode: Mode, probe: &str, cells: Result<[Cell; 2]>| {
            let cells = cells.unwrap_or_else(|e| {
                eprintln!("  {mode:?} {probe}: {e:#}");
                [Cell::Error(format!("{e:#}")), Cell::Error(String::new())]
            });
            eprintln!("  {} {probe}: {}", mode.label(), report::brief(&cells));
            rows.push(Row { n, mode, probe: probe.into(), rr: cells[0].clone(), crr: cells[1].clone() });
        };

        // (a'): conntrack in the node, nothing else.
        if !ctx.args.program_only {
            let r = (|| {
                let f = Fixture::new("ct", ctx.server_cpu)?;
                let rules = "table ip trellis_bench_ct {\n chain pre {\n  type filter hook prerouting priority 0; \
                             policy accept;\n  ct state established,related accept\n }\n}\n";
                f.load(&["nft", "-f", "-"], rules.into(), Duration::from_secs(ctx.args.box_secs))?;
                let to = SocketAddr::V4(SocketAddrV4::new(LIVE[0], TARGET_PORT));
                ctx.measure(&Target { fixture: &f, cgroup: None }, to, &mut base)
            })();
            add(&mut rows, Mode::Conntrack, "-", r);
        }

        // (b1), (b2): an eBPF node each, with the tc programs on both host veths and the socket LB on a cgroup,
        // as the agent sets it up; the (b2) client runs in that cgroup, the (b1) client outside it. Separate
        // nodes, because a conntrack entry left by a tc-path connection would meet a socket-path connection that
        // reuses its 4-tuple (see the findings). Programming is timed on the (b1) node.
        for mode in [Mode::Tc, Mode::Sock] {
            let r = (|| -> Result<()> {
                let f = Fixture::new(mode.tag(), ctx.server_cpu)?;
                let pins = PinDir::at(fixture::pin_path(&format!("{}-{n}", mode.tag())));
                let _pins_gone = Guard(|| {
                    let _ = pins.remove();
                });
                // Maps sized as an operator sizes them for N Services (--bpf-lb-map-max, --bpf-backend-map-max):
                // per Service a slot 0 and two backend slots, and two backends; the defaults below that.
                let sizes = MapSizes::default().fit(3 * n as u64, 2 * n as u64);
                let mut dp = Datapath::load_sized(pins.clone(), &sizes)?;
                trellis_netlink::netns::run_in(&Fixture::path(&f.node), || -> Result<()> {
                    dp.ensure_pod_attached("ha")?;
                    dp.ensure_pod_attached("hb")?;
                    Ok(())
                })??;
                // Pod-to-pod forwarding in the programs, as the agent sets it (`--bpf-forwarding`, default on). This
                // node routes each pod on its own veth (no pod bridge), so no pod is L2-local: all are forwarded.
                dp.set_fwd_config(&FwdConfig {
                    flags: fwd_flags::V4,
                    cluster4: Prefix::new([10, 0, 0, 0], 16),
                    ..Default::default()
                })?;
                let cg = Cgroup::new(mode.tag())?;
                dp.ensure_cgroup_attached(&cg.0)?;
                let mut t = KernelLbTables::open(&pins)?;
                let times = program::program(&mut t, &spec);
                if mode == Mode::Tc {
                    let mem = program::memlock(pins.path());
                    let rss = program::rss();
                    let times = match times {
                        Ok(times) => {
                            eprintln!("  programming: {times:?}, memlock {mem:?}, rss {rss:?}");
                            Some(times)
                        }
                        Err(e) => {
                            eprintln!("  programming failed: {e:#}");
                            None
                        }
                    };
                    report::set_ebpf(&mut prog_rows, n, times, mem, rss);
                    report::set_prog_ns(&mut prog_rows, n, prog_cost(&dp));
                } else {
                    times?;
                }
                let cgroup = (mode == Mode::Sock).then_some(cg.0.as_path());
                if mode == Mode::Tc && !ctx.args.program_only {
                    let pod = SocketAddr::V4(SocketAddrV4::new(LIVE[0], gen::POD_PORT));
                    let cells = ctx.measure(&Target { fixture: &f, cgroup: None }, pod, &mut base);
                    add(&mut rows, Mode::Fwd, "-", cells);
                }
                for (probe, i) in probes.iter().filter(|_| !ctx.args.program_only) {
                    let cells = ctx.measure(&Target { fixture: &f, cgroup }, vip(*i), &mut base);
                    add(&mut rows, mode, probe, cells);
                }
                let _ = dp.detach_cgroup();
                drop(t);
                drop(dp);
                Ok(())
            })();
            if let Err(e) = r {
                eprintln!("  {}: {e:#}", mode.label());
                for probe in &probes {
                    add(&mut rows, mode, probe.0, Err(anyhow::anyhow!("{e:#}")));
                }
            }
        }

        // (c1), (c2), (c3): kube-proxy's rules, each in its own node.
        for mode in [Mode::IptLegacy, Mode::IptNft, Mode::Nft].into_iter().filter(|_| !ctx.args.program_only) {
            if mode != Mode::IptLegacy && n > 10_000 && !ctx.args.full {
                for probe in &probes {
                    rows.push(Row { n, mode, probe: probe.0.into(), rr: Cell::Skipped, crr: Cell::Skipped });
                }
                continue;
            }
            let r = (|| -> Result<Option<(Fixture, Duration)>> {
                let f = Fixture::new(mode.tag(), ctx.server_cpu)?;
                let (argv, text): (&[&str], String) = match mode {
                    Mode::IptLegacy => (&["iptables-legacy-restore", "-w"], gen::iptables_restore(&spec)),
                    Mode::IptNft => (&["iptables-nft-restore", "-w"], gen::iptables_restore(&spec)),
                    _ => (&["nft", "-f", "-"], gen::nft_ruleset(&spec, "kube-proxy")),
                };
                let t0 = Instant::now();
                let done = f.load(argv, text, Duration::from_secs(ctx.args.box_secs))?;
                Ok(done.then(|| (f, t0.elapsed())))
            })();
            match r {
                Ok(Some((f, took))) => {
                    eprintln!("  {} loaded in {took:.1?}", mode.label());
                    report::note_load(&mut prog_rows, n, mode, took);
                    for (probe, i) in &probes {
                        let cells = ctx.measure(&Target { fixture: &f, cgroup: None }, vip(*i), &mut base);
                        add(&mut rows, mode, probe, cells);
                    }
                }
                Ok(None) => {
                    eprintln!("  {}: loading did not finish in {} s", mode.label(), ctx.args.box_secs);
                    report::note_load_dnf(&mut prog_rows, n, mode);
                    for probe in &probes {
                        rows.push(Row { n, mode, probe: probe.0.into(), rr: Cell::Dnf, crr: Cell::Dnf });
                    }
                }
                Err(e) => {
                    for probe in &probes {
                        add(&mut rows, mode, probe.0, Err(anyhow::anyhow!("{e:#}")));
                    }
                }
            }
        }

        // (a)'s own row: every baseline run at this N.
        let own = |kind| {
            let runs: Vec<(Run, Run)> = base.iter().filter(|(k, _)| *k == kind).map(|(_, r)| (*r, *r)).collect();
            stats::summarize(&runs).map(Cell::Done).unwrap_or(Cell::Error("no runs".into()))
        };
        rows.insert(
            rows.iter().position(|r| r.n == n).unwrap_or(rows.len()),
            Row { n, mode: Mode::Plain, probe: "-".into(), rr: own(Kind::Rr), crr: own(Kind::Crr) },
        );
    }

    let cross = if ctx.args.program_only {
        String::new()
    } else {
        cross_check(&ctx).unwrap_or_else(|e| format!("sockperf cross-check failed: {e:#}"))
    };
    eprintln!("{cross}");
    let command = format!(
        "sudo cargo run --release -p trellis-svc-bench -- --write{}",
        if ctx.args.full { " --full" } else { "" }
    );
    let section = report::render(&rows, &prog_rows, &cross, &command, &ctx.args_line(), started.elapsed());
    println!("{section}");
    if ctx.args.write && !ctx.args.program_only {
        let file = ctx.args.file.clone().unwrap_or_else(|| workspace().join(trellis_benchmarks_md::FILE_NAME));
        let svg = file.parent().unwrap_or(std::path::Path::new(".")).join("docs").join("bench-services.svg");
        chart::draw(&rows, &svg)?;
        trellis_benchmarks_md::write_section(&file, report::SECTION, &section)?;
        eprintln!("written to {} and {}", file.display(), svg.display());
    }
    Ok(())
}

impl Ctx {
    fn args_line(&self) -> String {
        format!(
            "{} s per run, {} runs per probe and metric, each bracketed by runs of (a), client on CPU {}, server on CPU {}",
            self.args.secs,
            self.args.rounds,
            cpu_name(self.client_cpu),
            cpu_name(self.server_cpu)
        )
    }
}

fn cpu_name(c: Option<usize>) -> String {
    c.map(|c| c.to_string()).unwrap_or_else(|| "(unpinned)".into())
}

/// One run of each pod program on a pod-to-pod TCP ACK (10.0.1.2:40000 -> 10.0.2.3:8080), best of 5 x 1M.
fn prog_cost(dp: &Datapath) -> Option<(u32, u32)> {
    let p = trellis_ebpf::tcp4_frame([10, 0, 1, 2], 40000, [10, 0, 2, 3], 8080, 0x10);
    let best = |prog| (0..5).filter_map(|_| dp.test_run(prog, &p, 1_000_000).ok()).map(|(_, ns)| ns).min();
    Some((best(trellis_ebpf::programs::FROM_POD)?, best(trellis_ebpf::programs::TO_POD)?))
}

/// Runs `f` on drop.
struct Guard<F: FnMut()>(F);
impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Our RR client against sockperf's TCP ping-pong on the plain path, once.
fn cross_check(ctx: &Ctx) -> Result<String> {
    use std::os::unix::process::CommandExt;
    let ours = ctx.baseline(Kind::Rr)?;
    let ns = |name: &str| std::fs::File::open(Fixture::path(name));
    let cpu = |c: Option<usize>| c.map(|c| c.to_string()).unwrap_or_else(|| "0".into());
    let server_ns = ns(&ctx.plain.b)?;
    let mut server = std::process::Command::new("taskset");
    server.args(["-c", &cpu(ctx.server_cpu), "sockperf", "server", "--tcp", "-i", "10.0.2.3", "-p", "11111"]);
    // SAFETY: only setns between fork and exec.
    unsafe {
        server.pre_exec(move || {
            nix::sched::setns(&server_ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let mut server = server.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let client_ns = ns(&ctx.plain.a)?;
    let mut client = std::process::Command::new("taskset");
    client.args(["-c", &cpu(ctx.client_cpu), "sockperf", "ping-pong", "--tcp", "-i", "10.0.2.3", "-p", "11111"]);
    client.args(["-t", "3", "--msg-size", "14"]);
    // SAFETY: as above.
    unsafe {
        client.pre_exec(move || {
            nix::sched::setns(&client_ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let out = client.output();
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok(report::cross_check_line(&ours, &text))
}

fn client_main(argv: &[String]) -> Result<()> {
    let to: SocketAddr = argv.first().context("target")?.parse()?;
    let kind = match argv.get(1).map(String::as_str) {
        Some("crr") => Kind::Crr,
        _ => Kind::Rr,
    };
    let secs: f64 = argv.get(2).context("secs")?.parse()?;
    let cpu = match (argv.get(3).map(String::as_str), argv.get(4)) {
        (Some("--cpu"), Some(c)) => Some(c.parse()?),
        _ => None,
    };
    let run = load::client(to, kind, secs, cpu)?;
    println!("{}", run.to_line());
    Ok(())
}
