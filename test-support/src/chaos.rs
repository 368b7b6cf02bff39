//! What the kill -9 tests share: a replayable random source and the honest reading of how a killed child ended.
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// A small xorshift PRNG. Seeded from `TRELLIS_SEED` when set (to replay a failure), else from the clock and pid;
/// the seed is printed either way, so every failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_clock() -> Rng {
        let seed = match std::env::var("TRELLIS_SEED") {
            Ok(s) if !s.trim().is_empty() => {
                s.trim().parse().unwrap_or_else(|_| panic!("TRELLIS_SEED={s:?} is not an unsigned integer"))
            }
            _ => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                nanos ^ ((std::process::id() as u64) << 32)
            }
        };
        eprintln!("random seed: TRELLIS_SEED={seed} (set it to replay this run)");
        Rng::from_seed(seed)
    }

    pub fn from_seed(seed: u64) -> Rng {
        // splitmix64 spreads neighbouring seeds apart; xorshift must not start at 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform-ish in `lo..hi` (hi exclusive; `lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }
}

/// How a child we may have sent SIGKILL ended. A kill test counts these separately: only `Killed` proves a kill
/// landed mid-operation, and `Failed` (a plugin that exited non-zero on its own) is a finding, not a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Exit 0: the operation finished before the kill arrived.
    Finished,
    /// A non-zero exit code.
    Failed(i32),
    /// Ended by SIGKILL: the kill landed while it ran.
    Killed,
    /// Ended by another signal.
    Signalled(i32),
}

impl Ended {
    pub fn of(status: ExitStatus) -> Ended {
        match (status.code(), status.signal()) {
            (Some(0), _) => Ended::Finished,
            (Some(c), _) => Ended::Failed(c),
            (None, Some(libc::SIGKILL)) => Ended::Killed,
            (None, Some(s)) => Ended::Signalled(s),
            (None, None) => Ended::Signalled(0),
        }
    }
}

/// Tally of [`Ended`]s.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub finished: usize,
    pub failed: usize,
    pub killed: usize,
    pub signalled: usize,
}

impl Tally {
    pub fn add(&mut self, e: Ended) {
        match e {
            Ended::Finished => self.finished += 1,
            Ended::Failed(_) => self.failed += 1,
            Ended::Killed => self.killed += 1,
            Ended::Signalled(_) => self.signalled += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::from_seed(42);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::from_seed(42);
        assert_eq!(a, (0..5).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert_ne!(Rng::from_seed(43).next_u64(), a[0]);
    }

    #[test]
    fn ranges_stay_in_bounds() {
        let mut r = Rng::from_seed(7);
        for _ in 0..1000 {
            assert!((5..9).contains(&r.range(5, 9)));
            assert!(r.below(3) < 3);
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range(4, 4), 4);
    }

    #[test]
    fn exits_and_kills_are_told_apart() {
        let ok = Command::new("sh").args(["-c", "exit 0"]).status().unwrap();
        let bad = Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(Ended::of(ok), Ended::Finished);
        assert_eq!(Ended::of(bad), Ended::Failed(3));
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        child.kill().unwrap();
        assert_eq!(Ended::of(child.wait().unwrap()), Ended::Killed);
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(Ended::of(child.wait().unwrap()), Ended::Signalled(libc::SIGTERM));
        let mut t = Tally::default();
        for e in [Ended::Finished, Ended::Killed, Ended::Killed, Ended::Failed(1)] {
            t.add(e);
        }
        assert_eq!(t, Tally { finished: 1, failed: 1, killed: 2, signalled: 0 });
    }
}
