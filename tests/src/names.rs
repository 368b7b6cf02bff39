//! Unique names for everything a test creates, so parallel tests and parallel runs never collide.
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `te<pid>-<counter>-<role>`: pid separates concurrent test binaries, the counter separates tests in one binary.
pub fn unique(role: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("te{}-{}-{}", std::process::id(), n, role)
}

/// A 64-hex container ID like the ones podman and containerd send, unique per call.
pub fn container_id(role: &str) -> String {
    use sha2::{Digest, Sha256};
    let seed = format!("{}:{}", unique(role), nanos());
    hex(&Sha256::digest(seed.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// The kill tests' replayable random source (`TRELLIS_SEED`), shared with every suite.
pub use trellis_test_support::chaos::Rng;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_carry_pid_and_role() {
        let a = unique("node");
        let b = unique("node");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("te{}-", std::process::id())));
        assert!(a.ends_with("-node"));
    }

    #[test]
    fn container_ids_are_64_hex_and_distinct() {
        let a = container_id("p");
        let b = container_id("p");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
