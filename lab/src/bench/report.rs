//! The report: the markdown section with the table, the goals and the command, spliced into BENCHMARKS.md.

use std::path::Path;

use super::stats::{paired_median, Numbers, Row};
use super::{BenchArgs, HOST_GW, SVC_SOCK, SVC_TC};
use crate::error::Result;

/// The bench's section in BENCHMARKS.md, between `<!-- lab-bench -->` markers.
pub const SECTION: &str = "lab-bench";

pub(super) fn command_line(args: &BenchArgs) -> String {
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
        "### Pod-to-pod and pod-to-Service TCP across nodes (trellis-lab bench)\n\nCommand: `{command}`\n\n\
         - machine: {machine}\n\
         - client and server are threads of trellis-lab inside the pods' netns, one connection each; throughput: \
         128 KiB writes; RR: 1-byte ping-pong; CRR: connect, 1 byte each way, close (server first)\n\
         - cells are median / best over interleaved rounds (all paths are up at once, measured in turn, so round i of \
         every path ran in the same stretch of time); goals are checked on the median of per-round ratios, which \
         cancels the shared machine's drift and drops the odd disturbed round; the ratio of the best rounds follows\n\
         - client and server share one CPU unless `--no-pin`: a cross-CPU wake-up costs ~50 us on this VM, so \
         unpinned RR measures where the scheduler put the threads (~10k/s on every path) rather than the path\n\
         - reference rows: a plain veth pair between two netns (the limit named in the goals) and a path routed by \
         hand over the same hops as host-gw (pod veth, node, underlay bridge, node, pod veth; no pod bridge, no \
         nftables, no agent)\n\
         - Service rows: the same host-gw pods, the client connecting to the ClusterIP of a Service whose only \
         backend is the server pod: on the tc path (DNAT on the client's host veth), and through the socket load \
         balancer (this process in the client node's cgroup: translated once at connect())\n\n\
         | path | TCP throughput (Gbit/s) | TCP RR (trans/s) | TCP CRR (conn/s) |\n| --- | ---: | ---: | ---: |\n"
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} / {:.0} |\n",
            r.path, r.n.throughput, r.best.throughput, r.n.rr, r.best.rr, r.n.crr, r.best.crr
        ));
    }
    let best = |prefix: &str| find(rows, prefix).map(|r| r.best);
    let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    // The median of per-round ratios (see `paired_median`): what the goals are checked on.
    let paired = |a: &str, b: &str, m: fn(&Numbers) -> f64| match (find(rows, a), find(rows, b)) {
        (Some(a), Some(b)) => paired_median(a, b, m),
        _ => None,
    };
    let fmt = |v: Option<f64>| v.map(|g| format!("{g:.2}")).unwrap_or_else(|| "n/a".into());
    let goal = |(a, b): (&str, &str), m: fn(&Numbers) -> f64, want: f64, what: &str| {
        let got = paired(a, b, m);
        let mark = if got.is_some_and(|g| g >= want) { "x" } else { " " };
        let best_ratio = r(best(a).map(|n| m(&n)), best(b).map(|n| m(&n)));
        format!("- [{mark}] {what} >= {want:.2} (got {}; best rounds {})\n", fmt(got), fmt(best_ratio))
    };
    s.push_str("\nGoals (median of per-round ratios; the ratio of the best rounds follows):\n\n");
    s.push_str(&goal((HOST_GW, "routed"), |n| n.rr, 0.95, "host-gw RR / hand-routed RR (same hops)"));
    s.push_str(&goal((HOST_GW, "routed"), |n| n.crr, 0.95, "host-gw CRR / hand-routed CRR (same hops)"));
    s.push_str(&goal((HOST_GW, "veth"), |n| n.rr, 0.9, "host-gw RR / veth RR"));
    s.push_str(&goal(("vxlan", HOST_GW), |n| n.crr, 0.7, "vxlan CRR / host-gw CRR"));
    // The Service paths against the pod path they ride on (same pods, same hops).
    for (label, what) in [(SVC_TC, "tc path"), (SVC_SOCK, "socket LB")] {
        if find(rows, label).is_none() {
            continue;
        }
        let ratio = |m: fn(&Numbers) -> f64| {
            format!(
                "{} (best rounds {})",
                fmt(paired(label, HOST_GW, m)),
                fmt(r(best(label).map(|n| m(&n)), best(HOST_GW).map(|n| m(&n))))
            )
        };
        s.push_str(&format!(
            "\nService ({what}) / pod IP, median of per-round ratios: throughput {}, RR {}, CRR {}\n",
            ratio(|n| n.throughput),
            ratio(|n| n.rr),
            ratio(|n| n.crr),
        ));
    }
    s.push_str(&format!(
        "\nAlso (median of per-round ratios): vxlan throughput / host-gw = {}; vxlan RR / host-gw RR = {}\n",
        fmt(paired("vxlan", HOST_GW, |n| n.throughput)),
        fmt(paired("vxlan", HOST_GW, |n| n.rr)),
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

/// Replaces the bench's section of `path` (creating the file or appending the section when needed).
pub(super) fn write_section(path: &Path, section: &str) -> Result<()> {
    Ok(trellis_benchmarks_md::write_section(path, SECTION, section)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of one round.
    fn row(p: &str, t: f64, rr: f64, crr: f64) -> Row {
        let n = Numbers { throughput: t, rr, crr };
        Row { path: p.into(), n, best: n, rounds: vec![n] }
    }

    fn rows() -> Vec<Row> {
        vec![
            row("veth pair (limit)", 40.0, 50000.0, 10000.0),
            row("host-gw, across nodes", 30.0, 45000.0, 8000.0),
            row("vxlan, across nodes", 10.0, 30000.0, 6000.0),
        ]
    }

    fn full_rows() -> Vec<Row> {
        vec![
            row("veth pair (limit)", 40.0, 50000.0, 10000.0),
            row("routed by hand, same hops as host-gw (reference)", 32.0, 46000.0, 8000.0),
            row(HOST_GW, 30.0, 45000.0, 7800.0),
            row(SVC_TC, 30.0, 40500.0, 3900.0),
            row(SVC_SOCK, 30.0, 45000.0, 7800.0),
            row("vxlan, across nodes", 10.0, 30000.0, 6000.0),
        ]
    }

    #[test]
    fn goals_against_the_hand_routed_path_and_service_ratios() {
        let s = render(&full_rows(), "c", "m");
        assert!(
            s.contains("- [x] host-gw RR / hand-routed RR (same hops) >= 0.95 (got 0.98; best rounds 0.98)"),
            "{s}"
        );
        assert!(
            s.contains("- [x] host-gw CRR / hand-routed CRR (same hops) >= 0.95 (got 0.97; best rounds 0.97)"),
            "{s}"
        );
        assert!(
            s.contains(
                "Service (tc path) / pod IP, median of per-round ratios: throughput 1.00 (best rounds 1.00), \
                 RR 0.90 (best rounds 0.90), CRR 0.50 (best rounds 0.50)"
            ),
            "{s}"
        );
        assert!(s.contains("Service (socket LB) / pod IP, median of per-round ratios: throughput 1.00"), "{s}");
        // The Service rows never stand in for the pod row: goals look rows up by their full label.
        assert!(s.contains("- [x] host-gw RR / veth RR >= 0.90 (got 0.90; best rounds 0.90)"), "{s}");
        // Without the Service rows (e.g. no cgroup v2: no socket LB row), their lines are left out.
        assert!(!render(&rows(), "c", "m").contains("Service ("), "no Service rows, no Service lines");
    }

    #[test]
    fn goals_go_by_the_median_of_per_round_ratios_not_by_one_lucky_round() {
        let mut r = full_rows();
        // Three rounds; the reference path has one lucky round (a best of 11000 conn/s).
        let n = |crr| Numbers { throughput: 30.0, rr: 45000.0, crr };
        r[1].rounds = vec![n(8000.0), n(11000.0), n(8000.0)];
        r[1].best.crr = 11000.0;
        r[2].rounds = vec![n(7800.0), n(7900.0), n(7700.0)];
        let s = render(&r, "c", "m");
        assert!(
            s.contains("- [x] host-gw CRR / hand-routed CRR (same hops) >= 0.95 (got 0.96; best rounds 0.71)"),
            "{s}"
        );
        // Slower in most rounds fails, whatever the best rounds say.
        r[2].rounds = vec![n(7000.0), n(8000.0), n(7000.0)];
        r[2].best.crr = 11000.0;
        let s = render(&r, "c", "m");
        assert!(
            s.contains("- [ ] host-gw CRR / hand-routed CRR (same hops) >= 0.95 (got 0.88; best rounds 1.00)"),
            "{s}"
        );
    }

    #[test]
    fn render_has_ratios_and_command() {
        let s = render(&rows(), "cmd", "2 CPUs");
        assert!(s.contains("- [x] host-gw RR / veth RR >= 0.90 (got 0.90; best rounds 0.90)"), "{s}");
        assert!(s.contains("- [ ] host-gw RR / hand-routed RR (same hops) >= 0.95 (got n/a; best rounds n/a)"), "{s}");
        assert!(s.contains("- [x] vxlan CRR / host-gw CRR >= 0.70 (got 0.75; best rounds 0.75)"), "{s}");
        assert!(s.contains("| vxlan, across nodes | 10.00 / 10.00 | 30000 / 30000 | 6000 / 6000 |"), "{s}");
        assert!(s.contains("`cmd`"));
        assert!(render(&rows()[..1], "c", "m").contains("(got n/a; best rounds n/a)"));
    }
}
