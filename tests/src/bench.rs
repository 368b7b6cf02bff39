//! Pure parts of the CNI benchmark: percentiles, the markdown report and the goals. The report goes into
//! BENCHMARKS.md through `trellis_benchmarks_md`, as section [`SECTION`].
use std::fmt::Write;
use std::time::Duration;

/// The benchmark's section in BENCHMARKS.md, between `<!-- cni-bench -->` markers.
pub const SECTION: &str = "cni-bench";

/// Nearest-rank percentile (p in 0..=100) in milliseconds; NaN for no samples.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        Summary { p50: percentile_ms(samples, 50.0), p99: percentile_ms(samples, 99.0) }
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub pods: usize,
    pub command: String,
    /// Context lines (machine, load) printed under the command.
    pub notes: Vec<String>,
    pub trellis_add: Summary,
    pub trellis_del: Summary,
    pub reference_add: Summary,
    pub reference_del: Summary,
}

/// The goals: p50 <= 10 ms, p99 <= 25 ms, p50 <= half the reference's p50. Returns (description, met).
pub fn goals(op: &str, ours: Summary, reference: Summary) -> Vec<(String, bool)> {
    vec![
        (format!("trellis {op} p50 <= 10 ms (got {:.2})", ours.p50), ours.p50 <= 10.0),
        (format!("trellis {op} p99 <= 25 ms (got {:.2})", ours.p99), ours.p99 <= 25.0),
        (
            format!("trellis {op} p50 <= 0.5 x reference p50 (got {:.2}x)", ours.p50 / reference.p50),
            ours.p50 <= 0.5 * reference.p50,
        ),
    ]
}

impl Report {
    pub fn all_goals(&self) -> Vec<(String, bool)> {
        let mut g = goals("ADD", self.trellis_add, self.reference_add);
        g.extend(goals("DEL", self.trellis_del, self.reference_del));
        g
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ =
            writeln!(s, "### CNI plugin latency ({} pods, sequential ADD then DEL, one fresh node netns)\n", self.pods);
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }
        let _ = writeln!(s, "| op | trellis p50 ms | trellis p99 ms | bridge+host-local p50 ms | bridge+host-local p99 ms | ratio p50 | ratio p99 |");
        let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (op, ours, reference) in
            [("ADD", self.trellis_add, self.reference_add), ("DEL", self.trellis_del, self.reference_del)]
        {
            let _ = writeln!(
                s,
                "| {op} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                ours.p50,
                ours.p99,
                reference.p50,
                reference.p99,
                ours.p50 / reference.p50,
                ours.p99 / reference.p99
            );
        }
        let _ = writeln!(s, "\nGoals:\n");
        for (desc, met) in self.all_goals() {
            let _ = writeln!(s, "- [{}] {desc}", if met { "x" } else { " " });
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile_ms(&s, 50.0), 50.0);
        assert_eq!(percentile_ms(&s, 99.0), 99.0);
        assert_eq!(percentile_ms(&ms(&[7]), 99.0), 7.0);
        assert_eq!(percentile_ms(&ms(&[3, 1, 2]), 50.0), 2.0);
        assert!(percentile_ms(&[], 50.0).is_nan());
    }

    #[test]
    fn goals_follow_thresholds() {
        let ours = Summary { p50: 4.0, p99: 20.0 };
        let slow_ref = Summary { p50: 10.0, p99: 30.0 };
        assert!(goals("ADD", ours, slow_ref).iter().all(|(_, ok)| *ok));
        let fast_ref = Summary { p50: 6.0, p99: 30.0 };
        let g = goals("ADD", ours, fast_ref);
        assert!(!g[2].1, "4 ms is not half of 6 ms");
        assert!(!goals("DEL", Summary { p50: 11.0, p99: 26.0 }, slow_ref)[0].1);
    }

    #[test]
    fn markdown_has_both_ops_and_goal_checkboxes() {
        let s = Summary { p50: 2.0, p99: 5.0 };
        let r = Report {
            pods: 50,
            command: "cargo run".into(),
            notes: vec!["load 0.1".into()],
            trellis_add: s,
            trellis_del: s,
            reference_add: s,
            reference_del: s,
        };
        let md = r.markdown();
        assert!(md.contains("| ADD | 2.00 |") && md.contains("| DEL |"));
        assert!(md.contains("Command: `cargo run`"));
        assert!(md.contains("- load 0.1\n"));
        assert_eq!(md.matches("- [").count(), 6);
    }
}
