//! Percentiles and medians.

/// Nearest-rank percentile `p` (0..=100) of `sorted` (ascending); 0 for none.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `v` (mean of the middle two for an even count); `None` for none.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One timed run of the client: operations, seconds, per-operation latency percentiles.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Run {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Run {
    /// From per-operation latencies in nanoseconds over `secs`.
    pub fn from_latencies(mut ns: Vec<u64>, secs: f64) -> Run {
        ns.sort_unstable();
        Run {
            rate: if secs > 0.0 { ns.len() as f64 / secs } else { 0.0 },
            p50_us: percentile(&ns, 50.0) as f64 / 1e3,
            p99_us: percentile(&ns, 99.0) as f64 / 1e3,
        }
    }

    /// The baseline a run between `a` and `b` compares with: the geometric mean of their rates (a ratio to it is
    /// the mean of the log-ratios to each, so neither side weighs more), the mean of their latencies.
    pub fn between(a: Run, b: Run) -> Run {
        Run { rate: (a.rate * b.rate).sqrt(), p50_us: (a.p50_us + b.p50_us) / 2.0, p99_us: (a.p99_us + b.p99_us) / 2.0 }
    }

    /// The line the client prints and the parent parses.
    pub fn to_line(self) -> String {
        format!("RESULT {} {} {}", self.rate, self.p50_us, self.p99_us)
    }

    pub fn parse(out: &str) -> Option<Run> {
        let l = out.lines().find_map(|l| l.strip_prefix("RESULT "))?;
        let mut it = l.split(' ').map(|x| x.parse::<f64>().ok());
        Some(Run { rate: it.next()??, p50_us: it.next()??, p99_us: it.next()?? })
    }
}

/// Interleaved pairs (mode, the baseline around it: [`Run::between`]): the mode's median figures and the median of the
/// per-pair ratios, so drift of the shared machine between pairs cancels out.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub run: Run,
    pub ratio: f64,
}

pub fn summarize(pairs: &[(Run, Run)]) -> Option<Summary> {
    let m = |f: fn(&Run) -> f64| median(pairs.iter().map(|(r, _)| f(r)).collect());
    Some(Summary {
        run: Run { rate: m(|r| r.rate)?, p50_us: m(|r| r.p50_us)?, p99_us: m(|r| r.p99_us)? },
        // A baseline that did nothing (rate 0) gives an infinite or NaN ratio, which `median` leaves out.
        ratio: median(pairs.iter().map(|(r, b)| r.rate / b.rate).collect())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7u64], 99.0), 7);
        assert_eq!(percentile::<u64>(&[], 50.0), 0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 1.0]), Some(1.0));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn a_run_from_latencies_and_back_through_its_line() {
        let r = Run::from_latencies(vec![3000, 1000, 2000, 100_000], 0.5);
        assert_eq!(r.rate, 8.0);
        assert_eq!(r.p50_us, 2.0);
        assert_eq!(r.p99_us, 100.0);
        assert_eq!(Run::parse(&format!("noise\n{}\n", r.to_line())), Some(r));
        assert_eq!(Run::parse("RESULT 1 x 2"), None);
        // No time: no rate (rather than an infinite one).
        assert_eq!(Run::from_latencies(vec![1000], 0.0).rate, 0.0);
    }

    #[test]
    fn the_baseline_between_two_runs_is_their_geometric_mean() {
        let b = Run::between(
            Run { rate: 100.0, p50_us: 10.0, p99_us: 20.0 },
            Run { rate: 400.0, p50_us: 30.0, p99_us: 40.0 },
        );
        assert_eq!(b, Run { rate: 200.0, p50_us: 20.0, p99_us: 30.0 });
        // A steady machine: the baseline is the run itself.
        let r = Run { rate: 50.0, p50_us: 1.0, p99_us: 2.0 };
        assert_eq!(Run::between(r, r), r);
    }

    #[test]
    fn summary_is_the_median_of_per_pair_ratios() {
        let r = |rate| Run { rate, p50_us: rate / 10.0, p99_us: rate };
        // Baseline drifts (100, 50, 200); the mode is always half of it.
        let s = summarize(&[(r(50.0), r(100.0)), (r(25.0), r(50.0)), (r(100.0), r(200.0))]).unwrap();
        assert_eq!(s.ratio, 0.5);
        assert_eq!(s.run.rate, 50.0);
        assert_eq!(s.run.p50_us, 5.0);
        assert!(summarize(&[]).is_none());
        // A baseline run that did nothing is left out of the ratio, not counted as infinitely slow.
        let s = summarize(&[(r(50.0), r(0.0)), (r(0.0), r(0.0)), (r(25.0), r(50.0))]).unwrap();
        assert_eq!(s.ratio, 0.5);
    }
}
