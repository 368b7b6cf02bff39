//! Root detection and the loud skip used by every privileged test: the workspace's one guard
//! (`trellis-test-support`), re-exported so e2e tests keep writing `trellis_e2e::require_root!()`.

pub use trellis_test_support::privileged::{can_run, ci, is_root, tool_exists};
