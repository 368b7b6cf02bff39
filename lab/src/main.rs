//! `trellis-lab`: command line over the lab library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use trellis_lab::echo::Proto;
use trellis_lab::lab::{self, UpOptions};
use trellis_lab::state::{resolve_lab_name, LabState, StateLock};
use trellis_lab::topology::{Mode, Topology};

#[derive(Parser)]
#[command(name = "trellis-lab", about = "Trellis network lab: nodes and pods as network namespaces")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a lab: netns, underlay, agents, pods (via the real CNI plugin), echo servers.
    Up {
        #[arg(long)]
        topology: Option<PathBuf>,
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Where trellis, trellis-ipam and trellis-agent are (default: next to trellis-lab).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Passed to every agent as --repair-interval-secs.
        #[arg(long)]
        repair_interval_secs: Option<u64>,
        /// Seconds to wait for each agent's conflist and for cross-node routes.
        #[arg(long, default_value_t = 60)]
        agent_timeout_secs: u64,
    },
    /// Remove every netns, link, process and file of a lab.
    Down {
        #[arg(long)]
        name: Option<String>,
    },
    /// Show nodes, pods, IPs and processes.
    Status {
        #[arg(long)]
        name: Option<String>,
    },
    /// Add or change manifests (Services, NetworkPolicies, Namespaces, pod labels) in the lab's control plane;
    /// a `kind: Pod` that does not exist is created on its spec.nodeName.
    Apply {
        #[arg(long)]
        name: Option<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove an object from the control plane: node/NAME, service/NAME, networkpolicy/NAME, ...; pod/NAME
    /// deletes the pod (terminating for --grace-secs, then CNI DEL).
    Delete {
        #[arg(long)]
        name: Option<String>,
        /// KIND/NAME
        object: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// pod/NAME only: seconds the pod stays terminating (still answering) before it goes.
        #[arg(long, default_value_t = 0)]
        grace_secs: u64,
    },
    /// Connect from a pod, node/NAME or `external` to a pod, IP, node/NAME or Service; prints who answered.
    Probe {
        #[arg(long)]
        name: Option<String>,
        from: String,
        target: String,
        port: u16,
        #[arg(long, default_value = "tcp")]
        proto: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Attempts, each a fresh connection (TCP) or a fresh socket's datagram (UDP, unless --sport).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Fixed client source port (UDP: one socket for every attempt, one long-lived flow).
        #[arg(long)]
        sport: Option<u16>,
        /// `json`: one object per attempt per line.
        #[arg(long = "output", short = 'o', default_value = "text")]
        output: String,
    },
    /// Set a pod's readiness: its endpoints' ready and serving conditions follow.
    Ready {
        #[arg(long)]
        name: Option<String>,
        pod: String,
        #[arg(action = clap::ArgAction::Set)]
        ready: bool,
    },
    /// Stop a node's agent (SIGTERM and wait; SIGKILL with --kill) and start it again with the same arguments.
    RestartAgent {
        #[arg(long)]
        name: Option<String>,
        node: String,
        #[arg(long)]
        kill: bool,
    },
    /// Probe every pod pair and node -> pod; exit 0 only if the matrix is as expected.
    Check {
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 1500)]
        timeout_ms: u64,
    },
    /// Run a command in a pod's (or node's) network namespace.
    Exec {
        #[arg(long)]
        name: Option<String>,
        target: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Throughput, request/response and connect rate: vxlan vs host-gw vs a plain veth pair.
    Bench {
        #[command(flatten)]
        opts: trellis_lab::bench::BenchArgs,
    },
    /// (internal) the pods' echo server, run inside the pod netns by `up`.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        pod_name: String,
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trellis-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(name: Option<&str>) -> Result<LabState> {
    let lab = resolve_lab_name(name)?;
    Ok(LabState::load(&lab)?)
}

/// The verbs that make, change or enter namespaces: they say so before touching anything when not run as root.
/// `status` only reads the state.
fn needs_root(cmd: &Cmd) -> Option<&'static str> {
    Some(match cmd {
        Cmd::Up { .. } => "up",
        Cmd::Down { .. } => "down",
        Cmd::Apply { .. } => "apply",
        Cmd::Delete { .. } => "delete",
        Cmd::Probe { .. } => "probe",
        Cmd::Check { .. } => "check",
        Cmd::Exec { .. } => "exec",
        Cmd::Ready { .. } => "ready",
        Cmd::RestartAgent { .. } => "restart-agent",
        Cmd::Bench { .. } => "bench",
        Cmd::Status { .. } | Cmd::Serve { .. } => return None,
    })
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    if let Some(verb) = needs_root(&cli.cmd) {
        lab::ensure_root(verb)?;
    }
    let mut out = std::io::stdout();
    match cli.cmd {
        Cmd::Up { topology, mode, name, bin_dir, repair_interval_secs, agent_timeout_secs } => {
            let topology = match topology {
                Some(p) => {
                    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
                    Topology::parse(&text).with_context(|| p.display().to_string())?
                }
                None => Topology::default_topology(),
            };
            let mode = mode.map(|m| m.parse::<Mode>()).transpose()?;
            let opts = UpOptions {
                topology,
                mode,
                name,
                bin_dir: match bin_dir {
                    Some(d) => d,
                    None => lab::default_bin_dir()?,
                },
                lab_exe: std::env::current_exe().context("locating trellis-lab")?,
                repair_interval_secs,
                agent_timeout: Duration::from_secs(agent_timeout_secs),
            };
            lab::up(&opts, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { name } => {
            let lab = resolve_lab_name(name.as_deref())?;
            let r = lab::down(&lab)?;
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "lab {lab} down: {} pods released (CNI DEL), {} processes stopped, {} netns deleted{}",
                r.cni_deleted.len(),
                r.processes.len(),
                r.netns.len(),
                if r.state_dir { ", state removed" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { name } => {
            let st = load(name.as_deref())?;
            lab::print_status(&st, &mut out);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Apply { name, files } => {
            let _lock = StateLock::acquire(&resolve_lab_name(name.as_deref())?)?;
            let mut st = load(name.as_deref())?;
            lab::apply(&mut st, &files, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Delete { name, object, namespace, grace_secs } => {
            let st = load(name.as_deref())?;
            lab::delete(&st, &object, &namespace, Duration::from_secs(grace_secs), &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { name, from, target, port, proto, timeout_ms, count, sport, output } => {
            let st = load(name.as_deref())?;
            let json = match output.as_str() {
                "json" => true,
                "text" => false,
                o => bail!("-o {o:?}: expected json or text"),
            };
            if count == 0 {
                bail!("--count must be at least 1");
            }
            let opts = lab::ProbeOptions {
                proto: proto.parse::<Proto>()?,
                timeout: Duration::from_millis(timeout_ms),
                count,
                sport,
            };
            // Act from the node's cgroup, as the node's (or pod's) own processes do: its socket load balancer
            // applies to this probe then.
            if let Some(cg) = lab::node_of(&st, &from).and_then(|n| st.dirs().cgroup(&n)).filter(|c| c.exists()) {
                trellis_lab::nsexec::join_cgroup(&cg)?;
            }
            let failed = lab::probe_each(&st, &from, &target, port, opts, |a| {
                if json {
                    println!("{}", a.to_json_line());
                } else if a.result.is_ok() {
                    println!("{}", a.to_text());
                } else {
                    eprintln!("probe: {}", a.to_text());
                }
            })?;
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Ready { name, pod, ready } => {
            let lab = resolve_lab_name(name.as_deref())?;
            lab::set_ready(&lab, &pod, ready, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::RestartAgent { name, node, kill } => {
            let _lock = StateLock::acquire(&resolve_lab_name(name.as_deref())?)?;
            let mut st = load(name.as_deref())?;
            lab::restart_agent(&mut st, &node, kill, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { name, timeout_ms } => {
            let st = load(name.as_deref())?;
            let m = trellis_lab::check::run(&st, Duration::from_millis(timeout_ms))?;
            print!("{}", m.render());
            Ok(if m.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Exec { name, target, cmd } => {
            let st = load(name.as_deref())?;
            let code = lab::exec(&st, &target, &cmd)?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Cmd::Bench { opts } => {
            trellis_lab::bench::run(&opts, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve { pod_name, ports } => {
            if ports.is_empty() {
                bail!("serve needs --ports");
            }
            trellis_lab::echo::serve(&pod_name, &ports)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
