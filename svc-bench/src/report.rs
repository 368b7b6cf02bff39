//! The BENCHMARKS.md section: the rate table, the programming table and how they were made.
use std::fmt::Write;
use std::time::Duration;

use crate::program::{Step, Times};
use crate::stats::{Run, Summary};

/// Section name in BENCHMARKS.md.
pub const SECTION: &str = "svc-bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Conntrack,
    /// (a+): pod IP through Trellis' tc programs, forwarded by them (no Service): what (b1) and (b2) ride on.
    Fwd,
    Tc,
    Sock,
    IptLegacy,
    IptNft,
    Nft,
}

impl Mode {
    pub const ALL: [Mode; 8] =
        [Mode::Plain, Mode::Conntrack, Mode::Fwd, Mode::Tc, Mode::Sock, Mode::IptLegacy, Mode::IptNft, Mode::Nft];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Plain => "(a) pod IP, no netfilter",
            Mode::Conntrack => "(a') pod IP, conntrack",
            Mode::Fwd => "(a+) pod IP, Trellis forwarding",
            Mode::Tc => "(b1) Trellis tc",
            Mode::Sock => "(b2) Trellis socket LB",
            Mode::IptLegacy => "(c1) iptables-legacy",
            Mode::IptNft => "(c2) iptables-nft",
            Mode::Nft => "(c3) nftables (kube-proxy nft)",
        }
    }
    /// Short netns tag.
    pub fn tag(self) -> &'static str {
        match self {
            Mode::Plain => "p",
            Mode::Conntrack => "ct",
            Mode::Fwd => "fw",
            Mode::Tc => "tc",
            Mode::Sock => "sk",
            Mode::IptLegacy => "il",
            Mode::IptNft => "in",
            Mode::Nft => "nf",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub enum Cell {
    Done(Summary),
    /// Loading the rules took longer than the box.
    Dnf,
    /// Not in this profile (`--full`).
    #[default]
    Skipped,
    Error(String),
}

#[derive(Clone, Debug)]
pub struct Row {
    pub n: usize,
    pub mode: Mode,
    pub probe: String,
    pub rr: Cell,
    pub crr: Cell,
}

/// Programming at one N: the eBPF maps (times, memlock, RSS) and how long each baseline's rules took to load.
#[derive(Clone, Debug, Default)]
pub struct ProgRow {
    pub n: usize,
    pub times: Option<Times>,
    pub memlock: Option<u64>,
    pub rss: Option<u64>,
    /// One run of from_pod / to_pod on a pod-to-pod TCP packet, ns (`BPF_PROG_TEST_RUN`, best of 5).
    pub prog_ns: Option<(u32, u32)>,
    /// (mode, load time; None = did not finish).
    pub loads: Vec<(Mode, Option<Duration>)>,
}

fn prog_row(rows: &mut Vec<ProgRow>, n: usize) -> &mut ProgRow {
    if let Some(i) = rows.iter().position(|r| r.n == n) {
        return &mut rows[i];
    }
    rows.push(ProgRow { n, ..Default::default() });
    rows.last_mut().expect("just pushed")
}

pub fn note_load(rows: &mut Vec<ProgRow>, n: usize, mode: Mode, took: Duration) {
    prog_row(rows, n).loads.push((mode, Some(took)));
}

pub fn note_load_dnf(rows: &mut Vec<ProgRow>, n: usize, mode: Mode) {
    prog_row(rows, n).loads.push((mode, None));
}

pub fn set_ebpf(rows: &mut Vec<ProgRow>, n: usize, times: Option<Times>, memlock: Option<u64>, rss: Option<u64>) {
    let r = prog_row(rows, n);
    (r.times, r.memlock, r.rss) = (times, memlock, rss);
}

pub fn set_prog_ns(rows: &mut Vec<ProgRow>, n: usize, ns: Option<(u32, u32)>) {
    prog_row(rows, n).prog_ns = ns;
}

fn rate(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn cell(c: &Cell) -> [String; 3] {
    match c {
        Cell::Done(s) => {
            [rate(s.run.rate), format!("{:.0} / {:.0}", s.run.p50_us, s.run.p99_us), format!("{:.2}", s.ratio)]
        }
        Cell::Dnf => ["did not finish".into(), "".into(), "".into()],
        Cell::Skipped => ["`--full` only".into(), "".into(), "".into()],
        Cell::Error(e) if e.is_empty() => ["error".into(), "".into(), "".into()],
        Cell::Error(e) => {
            [format!("error: {}", e.replace('|', "/").chars().take(80).collect::<String>()), "".into(), "".into()]
        }
    }
}

/// One line for the progress log.
pub fn brief(cells: &[Cell; 2]) -> String {
    let [a, b] = [cell(&cells[0]), cell(&cells[1])];
    format!("RR {} ({} µs, x{}), CRR {} ({} µs, x{})", a[0], a[1], a[2], b[0], b[1], b[2])
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.0}")
    }
}

fn step(s: &Step) -> String {
    format!("{:.0} µs ({})", s.took.as_secs_f64() * 1e6, s.writes)
}

fn mib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1}", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| "?".into())
}

/// The BENCHMARKS.md section.
pub fn render(rows: &[Row], prog: &[ProgRow], cross: &str, command: &str, how: &str, took: Duration) -> String {
    let mut s = String::new();
    s.push_str("## Services at scale (`trellis-svc-bench`)\n\n");
    let _ = writeln!(s, "Command (root): `{command}` ({how}; the whole run took {:.0} s).\n", took.as_secs_f64());
    s.push_str(
        "Each mode runs in a node netns of its own between a client pod and a server pod; N ClusterIP Services \
         with 2 endpoints each, only the probed one (the last in iptables order, and a random one) served. RR: \
         1-byte request/response on one TCP connection; CRR: a new TCP connection per 1-byte exchange (the server closes \
         first). The two probed Services' endpoints listen on ports of their own, so one client port never maps to \
         the same backend 4-tuple through two Services (the server's TIME_WAIT would turn the SYN away: an artifact \
         of a single client). Client and server are pinned to one and the same CPU (`--split-cpus` puts them on two: \
         then every request pays a cross-CPU wake-up, ~50 µs and erratic on this VM, which buries the path's own \
         cost); the machine is shared, so absolute figures and tails carry noise: the ratios are what compares. \
         Every mode's runs are bracketed by runs of (a) (a, mode, a, mode, ..., a), each compared with the geometric \
         mean of the two (a) runs beside it, and reported as the median of those ratios (x (a)); rates and \
         latencies (p50 / p99 per operation, µs) are medians over the rounds. (a)'s row is the median of all its \
         runs at that N. (b1) and (b2) each have a node with both the tc programs and the socket LB attached, as the \
         agent sets it up; the (b2) client runs in the attached cgroup, the (b1) client outside it.\n\n",
    );
    s.push_str("![RR and CRR against the number of Services](docs/bench-services.svg)\n\n");
    s.push_str(
        "| Services | mode | probe | RR/s | RR p50 / p99 µs | RR x (a) | CRR/s | CRR p50 / p99 µs | CRR x (a) |\n",
    );
    s.push_str("|---:|---|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let (a, b) = (cell(&r.rr), cell(&r.crr));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            r.mode.label(),
            r.probe,
            a[0],
            a[1],
            a[2],
            b[0],
            b[1],
            b[2]
        );
    }
    s.push_str(
        "\nProgramming. eBPF: the agent's own path (`trellis_agent::services::Programmer`): Services and slices \
         in as the control plane sends them, each changed Service translated again (`trellis_svc::Translator`), \
         only the keys that changed compared with the maps, the difference written in batches \
         (`BPF_MAP_UPDATE_BATCH`). Empty to N = translate + write, in ms; resync = a restarted agent: ids read back \
         from the maps, every Service translated, every entry compared, nothing written; add / delete one Service \
         and flip one endpoint = the whole change (translation + compare + writes; entries written); flip p50 / \
         p99: over 200 flips. from_pod / to_pod: one run of each pod program on a pod-to-pod TCP \
         packet (what every packet that is no Service traffic pays, socket-LB traffic included), measured in the \
         kernel with `BPF_PROG_TEST_RUN`, best of 5 x 1M runs. memlock: `bytes_memlock` of the node's pinned maps \
         as bpftool shows it, the maps sized as an operator sizes them for N (the agent's defaults, 64k frontend \
         entries and 64k backends, grown to hold N Services: `--bpf-lb-map-max`, `--bpf-backend-map-max`). RSS: the \
         bench process, which holds what the agent would (objects, ids, translation, desired entries). \
         Baselines: the time to load their rules from empty.\n\n",
    );
    s.push_str(
        "| Services | empty to N (translate + write) ms | entries | resync ms | add one | delete one | flip one | flip p50 / p99 µs | memlock MiB | RSS MiB | from_pod / to_pod ns | iptables-legacy-restore | \
         iptables-nft-restore | nft -f |\n",
    );
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in prog {
        let load = |m: Mode| match p.loads.iter().find(|(x, _)| *x == m) {
            Some((_, Some(d))) => format!("{} ms", ms(*d)),
            Some((_, None)) => "did not finish".into(),
            None => "-".into(),
        };
        let t = match &p.times {
            Some(t) => format!(
                "{} + {} | {} | {} | {} | {} | {} | {:.0} / {:.0}",
                ms(t.fill_translate),
                ms(t.fill_write),
                t.fill_entries,
                ms(t.resync),
                step(&t.add),
                step(&t.delete),
                step(&t.flip),
                t.flip_p50.as_secs_f64() * 1e6,
                t.flip_p99.as_secs_f64() * 1e6,
            ),
            None => "failed | | | | | | ".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {t} | {} | {} | {} | {} | {} | {} |",
            p.n,
            mib(p.memlock),
            mib(p.rss),
            p.prog_ns.map_or("?".to_string(), |(a, b)| format!("{a} / {b}")),
            load(Mode::IptLegacy),
            load(Mode::IptNft),
            load(Mode::Nft)
        );
    }
    let _ = writeln!(s, "\nCross-check of our RR client: {cross}");
    s.push_str(&goals(rows, prog));
    s
}

/// The issue's goals, checked against this run (ratios: the worst probe at each N).
fn goals(rows: &[Row], prog: &[ProgRow]) -> String {
    let ratio = |c: &Cell| match c {
        Cell::Done(x) => Some(x.ratio),
        _ => None,
    };
    let rate_of = |c: &Cell| match c {
        Cell::Done(x) => Some(x.run.rate),
        _ => None,
    };
    let ns: Vec<usize> = {
        let mut v: Vec<usize> = rows.iter().map(|r| r.n).collect();
        v.dedup();
        v
    };
    // The lowest of `get` over `mode`'s probes at `n` (None: no finished run).
    let lowest = |n: usize, mode: Mode, get: &dyn Fn(&Row) -> Option<f64>| {
        rows.iter().filter(|r| r.n == n && r.mode == mode).filter_map(get).reduce(f64::min)
    };
    let metric = |rr: bool| move |r: &Row| ratio(if rr { &r.rr } else { &r.crr });
    // The worst ratio of `mode` over probes, at every N: (min over N, "n: r" list).
    let worst = |mode: Mode, rr: bool| -> (Option<f64>, String) {
        let all: Vec<(usize, f64)> = ns.iter().filter_map(|n| Some((*n, lowest(*n, mode, &metric(rr))?))).collect();
        let min = all.iter().map(|(_, r)| *r).reduce(f64::min);
        (min, all.iter().map(|(n, r)| format!("{n}: {r:.2}")).collect::<Vec<_>>().join(", "))
    };
    let line = |ok: Option<bool>, what: &str, got: String| {
        let mark = match ok {
            Some(true) => "[x]",
            Some(false) => "[ ]",
            None => "[?]",
        };
        format!("- {mark} {what} (got {got})\n")
    };
    let mut out =
        String::from("\nGoals (on this run; ratios are medians over runs bracketed by (a), worst probe per N):\n\n");
    for (mode, rr, min, what) in [
        (Mode::Tc, true, 0.95, "RR through (b1) >= 0.95 x (a) at every N"),
        (Mode::Sock, true, 0.98, "RR through (b2) >= 0.98 x (a) at every N"),
        (Mode::Sock, false, 0.95, "CRR through (b2) >= 0.95 x (a) at every N"),
        (Mode::Tc, false, 0.85, "CRR through (b1) >= 0.85 x (a) at every N"),
    ] {
        let (w, all) = worst(mode, rr);
        out += &line(w.map(|w| w >= min), what, all);
    }
    // (b1) CRR never below (a').
    let below: Vec<String> = ns
        .iter()
        .filter_map(|n| {
            let ct = rows.iter().find(|r| r.n == *n && r.mode == Mode::Conntrack).and_then(|r| ratio(&r.crr))?;
            let tc = lowest(*n, Mode::Tc, &metric(false))?;
            Some(format!("{n}: {tc:.2} vs {ct:.2}{}", if tc < ct { " (below)" } else { "" }))
        })
        .collect();
    let ok = (!below.is_empty()).then(|| !below.iter().any(|b| b.ends_with("(below)")));
    out += &line(ok, "CRR through (b1) never below (a')", below.join(", "));
    // Not a goal: the Service translation's own cost, against pod IP on the same eBPF forwarding.
    let over_fwd = |mode: Mode, rr: bool| -> String {
        let per_n: Vec<String> = ns
            .iter()
            .filter_map(|n| {
                Some(format!("{n}: {:.2}", lowest(*n, mode, &metric(rr))? / lowest(*n, Mode::Fwd, &metric(rr))?))
            })
            .collect();
        if per_n.is_empty() {
            "n/a".into()
        } else {
            per_n.join(", ")
        }
    };
    // At the largest N within 5% of the smallest, in ratio to (a) (absolute rates drift with the machine).
    if let (Some(lo), Some(hi)) = (ns.first(), ns.last()) {
        for (mode, rr) in [(Mode::Tc, true), (Mode::Tc, false), (Mode::Sock, true), (Mode::Sock, false)] {
            let (a, b) = (lowest(*lo, mode, &metric(rr)), lowest(*hi, mode, &metric(rr)));
            let ok = a.zip(b).map(|(a, b)| b >= a * 0.95);
            let what = format!(
                "{} through {} at {hi} within 5% of its value at {lo} (x (a))",
                if rr { "RR" } else { "CRR" },
                mode.label()
            );
            out += &line(ok, &what, format!("{} vs {}", fmt(b), fmt(a)));
        }
        // 10x iptables-legacy's CRR at the largest N.
        let crr = |mode: Mode| lowest(*hi, mode, &|r: &Row| rate_of(&r.crr));
        let legacy_dnf = rows.iter().any(|r| r.n == *hi && r.mode == Mode::IptLegacy && r.crr == Cell::Dnf);
        let ours = crr(Mode::Tc).zip(crr(Mode::Sock)).map(|(a, b)| a.min(b));
        let (ok, got) = match (ours, crr(Mode::IptLegacy)) {
            (Some(o), Some(l)) => (Some(o >= 10.0 * l), format!("{:.1}x", o / l)),
            (Some(_), None) if legacy_dnf => {
                (Some(true), "iptables-legacy did not even load its rules within the box".to_string())
            }
            _ => (None, "n/a".into()),
        };
        out += &line(ok, &format!("CRR at {hi} at least 10x iptables-legacy's"), got);
    }
    if let Some(p) = prog.iter().max_by_key(|p| p.n) {
        if let Some(t) = &p.times {
            let fill = t.fill_translate + t.fill_write;
            out += &line(
                Some(fill.as_secs_f64() <= 1.0),
                &format!("programming {} Services x 2 endpoints from empty in at most 1 s", p.n),
                format!("{:.2} s wall, {:.2} s CPU", fill.as_secs_f64(), t.fill_cpu.as_secs_f64()),
            );
            out += &line(
                Some(t.flip_p99.as_secs_f64() <= 1e-3),
                &format!("one change applied with p99 at most 1 ms at {}", p.n),
                format!("p99 {:.0} µs over {} flips", t.flip_p99.as_secs_f64() * 1e6, crate::program::FLIPS),
            );
        }
    }
    out += &format!(
        "\n(b1) and (b2) ride on Trellis' pod forwarding, which skips the node's IP stack that (a) goes through; \
         over (a+), pod IP on that same forwarding, the Service translation's own cost shows: RR (b1) {}; CRR (b1) \
         {}; RR (b2) {}; CRR (b2) {}.\n",
        over_fwd(Mode::Tc, true),
        over_fwd(Mode::Tc, false),
        over_fwd(Mode::Sock, true),
        over_fwd(Mode::Sock, false)
    );
    out
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |x| format!("{x:.2}"))
}

/// Our RR run against sockperf's ping-pong report (it prints one-way latency, half the round trip).
pub fn cross_check_line(ours: &Run, sockperf: &str) -> String {
    let num = |key: &str| -> Option<f64> {
        let l = sockperf.lines().find(|l| l.contains(key))?;
        let rest = &l[l.find(key)? + key.len()..];
        rest.trim_start_matches([' ', '=', ':']).split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
    };
    let p50 = num("percentile 50.000");
    let p99 = num("percentile 99.000");
    match (p50, p99) {
        (Some(p50), Some(p99)) => format!(
            "sockperf ping-pong (TCP, 14 B, 3 s, same pinning, plain path): round trip p50 {:.1} µs, p99 {:.1} µs \
             (2 x its one-way figures), about {} round trips/s; ours on the same path: p50 {:.1} µs, p99 {:.1} µs, \
             {}/s.",
            2.0 * p50,
            2.0 * p99,
            rate(1e6 / (2.0 * p50)),
            ours.p50_us,
            ours.p99_us,
            rate(ours.rate)
        ),
        _ => format!("sockperf gave no percentiles: {}", sockperf.lines().last().unwrap_or("").trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(rate: f64, ratio: f64) -> Cell {
        Cell::Done(Summary { run: Run { rate, p50_us: 30.0, p99_us: 80.0 }, ratio })
    }

    #[test]
    fn the_table_shows_each_cell_kind() {
        let rows = vec![
            Row { n: 10, mode: Mode::Plain, probe: "-".into(), rr: done(25_000.0, 1.0), crr: done(5000.0, 1.0) },
            Row { n: 100_000, mode: Mode::IptLegacy, probe: "last".into(), rr: Cell::Dnf, crr: Cell::Dnf },
            Row { n: 100_000, mode: Mode::Nft, probe: "last".into(), rr: Cell::Skipped, crr: Cell::Skipped },
        ];
        let mut prog = Vec::new();
        note_load_dnf(&mut prog, 100_000, Mode::IptLegacy);
        note_load(&mut prog, 100_000, Mode::Nft, Duration::from_millis(1500));
        let s = render(&rows, &prog, "x", "cmd", "how", Duration::from_secs(1));
        assert!(
            s.contains("| 10 | (a) pod IP, no netfilter | - | 25.0k | 30 / 80 | 1.00 | 5000 | 30 / 80 | 1.00 |"),
            "{s}"
        );
        assert!(s.contains("| 100000 | (c1) iptables-legacy | last | did not finish |"));
        assert!(s.contains("`--full` only"));
        assert!(s.contains("| did not finish | - | 1500 ms |"), "{s}");
        assert!(s.contains("docs/bench-services.svg"));
    }

    #[test]
    fn sockperf_percentiles_are_doubled_into_round_trips() {
        let out = "sockperf: ---> percentile 99.000 =   40.250\nsockperf: ---> percentile 50.000 =   12.500\n";
        let r = Run { rate: 30_000.0, p50_us: 26.0, p99_us: 70.0 };
        let l = cross_check_line(&r, out);
        assert!(l.contains("p50 25.0 µs, p99 80.5 µs"), "{l}");
        assert!(l.contains("40.0k round trips/s"), "{l}");
        assert!(cross_check_line(&r, "nothing").starts_with("sockperf gave no percentiles"));
    }
}
