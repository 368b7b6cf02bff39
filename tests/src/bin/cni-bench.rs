//! cni-bench: sequential ADD of N pods then DEL of N pods, `trellis` (+ trellis-ipam in-process) against the
//! reference `bridge` + `host-local` from /usr/lib/cni, interleaved pod by pod with alternating order, in one
//! fresh node netns. Prints p50/p99 per op and the ratio; `--write` splices the table into BENCHMARKS.md.
//!
//! cargo build --release -p trellis-cni -p trellis-ipam
//! cargo run --release -p trellis-e2e --bin cni-bench -- [--pods 50] [--write]
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::time::Duration;
use trellis_e2e::bench::{self, Report, Summary};
use trellis_e2e::bins::{workspace_root, Bins};
use trellis_e2e::{conf, CniCmd, Node, Pod, TempDir};

const COMMAND: &str = "cargo build --release -p trellis-cni -p trellis-ipam && \
                       cargo run --release -p trellis-e2e --bin cni-bench -- --write";

struct Args {
    pods: usize,
    write: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { pods: 50, write: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--write" => args.write = true,
            "--pods" => args.pods = it.next().context("--pods needs a number")?.parse().context("--pods")?,
            "-h" | "--help" => {
                println!("usage: cni-bench [--pods N] [--write]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (usage: cni-bench [--pods N] [--write])"),
        }
    }
    if args.pods == 0 || args.pods > 200 {
        bail!("--pods must be 1..=200 (one /24 per plugin)");
    }
    Ok(args)
}

/// One side of the comparison: a config and the pods it attaches.
struct Side {
    conf: Value,
    pods: Vec<Pod>,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

impl Side {
    fn new(conf: Value, role: &str, n: usize) -> Result<Side> {
        let pods = (0..n).map(|i| Pod::new(&format!("{role}{i}"))).collect::<Result<_>>()?;
        Ok(Side { conf, pods, add: Vec::new(), del: Vec::new() })
    }

    fn step(&mut self, node: &Node, cmd: CniCmd, i: usize) -> Result<()> {
        let out = node.pod(cmd, &self.conf, &self.pods[i])?;
        out.ok().with_context(|| format!("{} of pod {i}", cmd.as_str()))?;
        match cmd {
            CniCmd::Add => self.add.push(out.elapsed),
            _ => self.del.push(out.elapsed),
        }
        Ok(())
    }

    /// An untimed ADD+DEL so both sides start with their bridge created and binaries in the page cache.
    fn warm_up(&self, node: &Node) -> Result<()> {
        let pod = Pod::new("warm")?;
        node.pod(CniCmd::Add, &self.conf, &pod)?.ok().context("warm-up ADD")?;
        node.pod(CniCmd::Del, &self.conf, &pod)?.ok().context("warm-up DEL")
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !trellis_e2e::privilege::is_root() {
        bail!("cni-bench needs root (it creates network namespaces)");
    }
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let bins = Bins::locate_profile("release")?;
    let node = Node::with_role(&bins, "bench")?;
    let data = TempDir::new("bench-data")?;
    let trellis_conf = conf::trellis("1.0.0", "bench-trellis", &data.join("trellis"), "10.244.0.0/24");
    let reference_conf =
        conf::reference_bridge("1.0.0", "bench-ref", "refbr0", conf::host_local(&data.join("ref"), "10.245.0.0/24"));
    eprintln!("creating {} pod netns per plugin in node {} ...", args.pods, node.ns.name());
    let mut ours = Side::new(trellis_conf, "bt", args.pods)?;
    let mut reference = Side::new(reference_conf, "br", args.pods)?;
    ours.warm_up(&node)?;
    reference.warm_up(&node)?;

    for cmd in [CniCmd::Add, CniCmd::Del] {
        for i in 0..args.pods {
            // Alternate who goes first so neither side always runs on a warmer (or busier) machine.
            if i % 2 == 0 {
                ours.step(&node, cmd, i)?;
                reference.step(&node, cmd, i)?;
            } else {
                reference.step(&node, cmd, i)?;
                ours.step(&node, cmd, i)?;
            }
        }
    }

    // A benchmark of a leaking plugin is meaningless: the store and the node must be empty again.
    let leftovers: Vec<String> =
        node.ns.link_names()?.into_iter().filter(|n| n != "lo" && n != conf::BRIDGE && n != "refbr0").collect();
    let ips = trellis_e2e::store::Store::new(&data.join("trellis"), "bench-trellis").ips()?;
    if !leftovers.is_empty() || !ips.is_empty() {
        bail!("after {} ADD+DEL: links left {leftovers:?}, trellis IPs left {ips:?}", args.pods);
    }

    let report = Report {
        pods: args.pods,
        command: COMMAND.split_whitespace().collect::<Vec<_>>().join(" "),
        notes: vec![
            format!(
                "machine: {} CPUs, load average at start {} (shared with other builds: expect noise in p99)",
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                load_at_start
            ),
            "each call timed from spawn to exit, plugin run inside the node netns as a runtime would; one untimed \
             warm-up ADD+DEL per plugin"
                .into(),
            "trellis DEL returns once the IP is released and the pair is down, out of the bridge and renamed (about \
             1 ms); the kernel's unregister of the pair, bound by an RCU grace period of about 20 ms on this VM for \
             any plugin, finishes in a detached child. The bench fails if any link or IP is left after the run."
                .into(),
        ],
        trellis_add: Summary::of(&ours.add),
        trellis_del: Summary::of(&ours.del),
        reference_add: Summary::of(&reference.add),
        reference_del: Summary::of(&reference.del),
    };
    let md = report.markdown();
    println!("{md}");
    if args.write {
        let path = workspace_root().join(trellis_benchmarks_md::FILE_NAME);
        trellis_benchmarks_md::write_section(&path, bench::SECTION, &md)?;
        eprintln!("wrote {}", path.display());
    }
    let missed = report.all_goals().iter().filter(|(_, ok)| !ok).count();
    if missed > 0 {
        eprintln!("{missed} goal(s) missed");
    }
    Ok(())
}
