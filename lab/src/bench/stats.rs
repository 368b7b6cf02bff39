//! Statistics over the rounds: the median (what a path typically does) and the best round (what it can do when
//! the shared machine leaves it alone).

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
    /// Every round, in order: round i of every path ran in the same stretch of time (paths are measured in turn).
    pub rounds: Vec<Numbers>,
}

/// The median over rounds of `a`'s figure over `b`'s in the same round: the paths of one round ran back to back,
/// so a round's ratio cancels what the shared machine did meanwhile, and the median drops the odd disturbed
/// round. `None` without a round where both ran.
pub fn paired_median(a: &Row, b: &Row, m: fn(&Numbers) -> f64) -> Option<f64> {
    let ratios: Vec<f64> = a.rounds.iter().zip(&b.rounds).map(|(x, y)| m(x) / m(y)).filter(|r| r.is_finite()).collect();
    (!ratios.is_empty()).then(|| median(ratios))
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(super) fn summarize(path: String, s: &[Numbers]) -> Row {
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
        rounds: s.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn paired_ratios_cancel_a_drifting_machine() {
        let row = |v: &[f64]| {
            summarize("p".into(), &v.iter().map(|&rr| Numbers { rr, ..Default::default() }).collect::<Vec<_>>())
        };
        // The machine halves its speed in round 2 and doubles it in round 3; b is always 0.9 of a.
        let a = row(&[100.0, 50.0, 200.0]);
        let b = row(&[90.0, 45.0, 180.0]);
        assert!((paired_median(&b, &a, |n| n.rr).unwrap() - 0.9).abs() < 1e-12);
        // One lucky round of `a` (400): its best round would make b look half as fast; the paired median stays.
        let lucky = row(&[100.0, 50.0, 400.0]);
        assert!((paired_median(&b, &lucky, |n| n.rr).unwrap() - 0.9).abs() < 1e-12);
        // Rounds where a path did nothing are left out; none in common: no figure.
        let dead = row(&[0.0, 50.0, 0.0]);
        assert_eq!(paired_median(&b, &dead, |n| n.rr), Some(0.9));
        assert_eq!(paired_median(&b, &row(&[]), |n| n.rr), None);
    }

    #[test]
    fn summary_takes_median_and_best_per_metric() {
        let n = |throughput, rr, crr| Numbers { throughput, rr, crr };
        let row = summarize("p".into(), &[n(1.0, 30.0, 5.0), n(3.0, 10.0, 6.0), n(2.0, 20.0, 4.0)]);
        assert_eq!(row.path, "p");
        assert_eq!(row.n, n(2.0, 20.0, 5.0));
        assert_eq!(row.best, n(3.0, 30.0, 6.0));
    }
}
