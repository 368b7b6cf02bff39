//! The counter behind every fault-injecting wrapper: fail the Nth call, and/or the next K calls of one operation.

#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Calls seen so far, all operations; the first call is number 1.
    pub calls: usize,
    /// Fail the call with this number.
    pub fail_nth: Option<usize>,
    /// Fail the next `.1` calls of operation `.0`.
    pub fail_op: Option<(&'static str, usize)>,
    /// Faults injected so far.
    pub failures: usize,
}

impl Faults {
    /// Never fails until told to.
    pub fn none() -> Self {
        Faults::default()
    }

    /// Fails the `n`-th call (1-based); 0 never fails.
    pub fn nth(n: usize) -> Self {
        Faults { fail_nth: (n != 0).then_some(n), ..Faults::default() }
    }

    /// Fails the next `times` calls of `op`.
    pub fn op(op: &'static str, times: usize) -> Self {
        Faults { fail_op: Some((op, times)), ..Faults::default() }
    }

    /// Counts a call of `op`; `Some(description)` when this call must fail (the wrapper turns it into its error).
    pub fn hit(&mut self, op: &str) -> Option<String> {
        self.calls += 1;
        let mut fail = self.fail_nth == Some(self.calls);
        if let Some((o, n)) = &mut self.fail_op {
            if *o == op && *n > 0 {
                *n -= 1;
                fail = true;
            }
        }
        if !fail {
            return None;
        }
        self.failures += 1;
        Some(format!("injected fault in {op} (call {})", self.calls))
    }

    /// Whether any fault has fired.
    pub fn fired(&self) -> bool {
        self.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_fails_exactly_once() {
        let mut f = Faults::nth(3);
        let hits: Vec<bool> = (0..5).map(|_| f.hit("x").is_some()).collect();
        assert_eq!(hits, [false, false, true, false, false]);
        assert_eq!(f.failures, 1);
        assert!(f.fired());
    }

    #[test]
    fn zero_never_fails() {
        let mut f = Faults::nth(0);
        assert!((0..10).all(|_| f.hit("x").is_none()));
        assert!(!f.fired());
    }

    #[test]
    fn op_fails_only_that_op_k_times() {
        let mut f = Faults::op("add", 2);
        assert!(f.hit("del").is_none());
        assert!(f.hit("add").unwrap().contains("add (call 2)"));
        assert!(f.hit("add").is_some());
        assert!(f.hit("add").is_none());
        assert_eq!(f.failures, 2);
    }
}
