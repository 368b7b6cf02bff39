//! `trellis-lab bench`: pod-to-pod TCP throughput, request/response rate (1-byte ping-pong on one connection)
//! and connect rate (connect, 1 byte each way, close) across nodes with vxlan, with host-gw, and over a plain
//! veth pair between two namespaces (the limit); and with host-gw, the same pods through a Service's ClusterIP
//! whose only backend is the server pod, once on the tc path and once through the socket load balancer (the
//! client in its node's cgroup). Client and server are threads of this process, each in its netns.
//!
//! - [`load`]: the load generator (server and client threads, pinned, in their netns);
//! - [`fixtures`]: the paths measured (bench labs, a bare veth pair, a hand-routed reference);
//! - [`stats`]: medians and best rounds;
//! - [`report`]: the markdown section for BENCHMARKS.md.

mod fixtures;
mod load;
mod report;
mod stats;

pub use fixtures::{bench_topology, RoutedPath, VethPair};
pub use load::{first_allowed_cpu, measure, measure_on};
pub use report::{machine_line, render, SECTION};
pub use stats::{Numbers, Row};

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::lab::{self, UpOptions};
use crate::names;
use crate::state::LabState;
use crate::topology::Mode;
use fixtures::{bench_service, lab_pair, InCgroup, LabGuard};
use stats::summarize;

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

/// One measured path: where the client and server run and the server's address; `cgroup`: this process joins it
/// while the path is measured (a node's cgroup, for its socket load balancer).
struct PathUnderTest {
    label: &'static str,
    client: PathBuf,
    server: PathBuf,
    ip: Ipv4Addr,
    cgroup: Option<PathBuf>,
    ports: [u16; 3],
}

/// Row labels the report looks rows up by.
pub const HOST_GW: &str = "host-gw, across nodes";
pub const SVC_TC: &str = "host-gw, pod -> ClusterIP, tc path";
pub const SVC_SOCK: &str = "host-gw, pod -> ClusterIP, socket LB (client in its node's cgroup)";
/// The server's ports on the Service paths: one set per path (see [`measure_on`]).
const SVC_TC_PORTS: [u16; 3] = [5211, 5212, 5213];
const SVC_SOCK_PORTS: [u16; 3] = [5221, 5222, 5223];

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
    let (client, server, ip) = pair.endpoints();
    paths.push(PathUnderTest { label: "veth pair (limit)", client, server, ip, cgroup: None, ports: load::PORTS });
    let routed_lab = format!("{base}rt");
    guards.push(LabGuard(routed_lab.clone()));
    let routed = RoutedPath::create(&routed_lab)?;
    let (client, server, ip) = routed.endpoints();
    paths.push(PathUnderTest {
        label: "routed by hand, same hops as host-gw (reference)",
        client,
        server,
        ip,
        cgroup: None,
        ports: load::PORTS,
    });
    for (suffix, mode, label) in [("hg", Mode::HostGw, HOST_GW), ("vx", Mode::Vxlan, "vxlan, across nodes")] {
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
        // The guard removes a partial lab, so its error is reported without the note that it stays.
        let mut st = lab::up(&opts, &mut std::io::sink()).map_err(LabError::into_cause)?;
        let (client, server, ip) = lab_pair(&st)?;
        paths.push(PathUnderTest {
            label,
            client: client.clone(),
            server: server.clone(),
            ip,
            cgroup: None,
            ports: load::PORTS,
        });
        if mode == Mode::HostGw {
            let vip = bench_service(&mut st, &[SVC_TC_PORTS, SVC_SOCK_PORTS].concat())?;
            paths.push(PathUnderTest {
                label: SVC_TC,
                client: client.clone(),
                server: server.clone(),
                ip: vip,
                cgroup: None,
                ports: SVC_TC_PORTS,
            });
            // The client pod's node's cgroup: its agent attached the socket load balancer there.
            let node = st.pod("client").map(|p| p.node.clone()).unwrap_or_default();
            match st.dirs().cgroup(&node).filter(|c| c.exists()) {
                Some(cg) => paths.push(PathUnderTest {
                    label: SVC_SOCK,
                    client,
                    server,
                    ip: vip,
                    cgroup: Some(cg),
                    ports: SVC_SOCK_PORTS,
                }),
                None => {
                    let _ = writeln!(out, "no cgroup v2 for {node}: the socket LB row is left out");
                }
            }
        }
    }
    let _ = writeln!(out, "{} paths up; {} rounds of {}s per measurement", paths.len(), args.rounds, args.secs);

    let mut samples: Vec<Vec<Numbers>> = vec![Vec::new(); paths.len()];
    for round in 0..args.rounds.max(1) {
        for (i, p) in paths.iter().enumerate() {
            let joined = p.cgroup.as_deref().map(InCgroup::join).transpose()?;
            let n = measure_on(&p.client, &p.server, p.ip, p.ports, secs, cpu);
            drop(joined);
            let n = n?;
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
    let table = render(&rows, &report::command_line(args), &machine);
    let _ = writeln!(out, "\n{table}");
    if args.write {
        report::write_section(&args.file, &table)?;
        let _ = writeln!(out, "written to {}", args.file.display());
    }
    Ok(rows)
}
