//! What every Trellis test suite shares, so each rule is written once:
//! - [`privileged`]: the guard in front of every test that needs root or a system tool. Where `CI` is set, a test
//!   that cannot run fails; elsewhere it prints `SKIP` and records itself in `$TRELLIS_SKIP_LOG`, which
//!   `scripts/test.sh` counts and reports at the end.
//! - [`chaos`]: the kill -9 tests' replayable random source (`TRELLIS_SEED`) and how a killed child ended.
//! - [`Faults`]: the fail-at-step-N (or fail-this-operation-K-times) counter behind every fault-injecting kernel
//!   wrapper (the plugin's dataplane, the IPAM store, the agent's overlay and maps).

pub mod chaos;
pub mod faults;
pub mod privileged;

pub use faults::Faults;
pub use privileged::{can_run, ci, is_root};

/// Returns from the calling test unless it may run as root: `require_root!()` at the top of a privileged test.
/// In CI a non-root run panics instead (a privileged test must never silently pass there).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::privileged::root_or_skip(concat!(module_path!(), " (", file!(), ":", line!(), ")")) {
            return;
        }
    };
}

/// Returns from the calling test unless `tool` is installed (an absolute path or a name on PATH); fails in CI.
#[macro_export]
macro_rules! require_tool {
    ($tool:expr) => {
        if !$crate::privileged::tool_or_skip($tool, concat!(module_path!(), " (", file!(), ":", line!(), ")")) {
            return;
        }
    };
}
