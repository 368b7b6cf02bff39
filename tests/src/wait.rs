//! Waiting for a condition with a generous deadline instead of sleeping a fixed time: a slow, shared machine makes
//! a test slower, never wrong. Figures (how long something took) belong in the benchmarks, not in assertions.
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// Long enough for any condition these tests wait for on a loaded 2-core machine; short enough to fail a hang.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` (every few ms, backing off to 100 ms) until it returns `Ok(true)`, an error, or `deadline` passes.
pub fn until(what: &str, deadline: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if cond()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut n = 0;
        until("third call", DEADLINE, || {
            n += 1;
            Ok(n == 3)
        })
        .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn fails_at_the_deadline_and_on_error() {
        let e = until("never", Duration::from_millis(20), || Ok(false)).unwrap_err();
        assert!(e.to_string().contains("never"), "{e}");
        assert!(until("broken", DEADLINE, || bail!("boom")).is_err());
    }
}
