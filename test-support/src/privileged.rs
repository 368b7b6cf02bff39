//! The one guard for tests that need root or a system tool.
use std::io::Write;
use std::path::Path;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// CI sets `CI` (to anything but empty or "false"): there nothing may skip.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether a test that needs `why` may run: `ok` says whether the need is met. When it is not: in CI this panics
/// (the suite must fail), elsewhere it prints SKIP and appends a line to `$TRELLIS_SKIP_LOG` if set.
pub fn can_run(ok: bool, test: &str, why: &str) -> bool {
    if ok {
        return true;
    }
    if ci() {
        panic!("{test}: {why}, and CI is set: privileged tests must run in CI, never skip");
    }
    eprintln!("SKIP {test}: {why}");
    if let Some(log) = std::env::var_os("TRELLIS_SKIP_LOG").filter(|l| !l.is_empty()) {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
    false
}

pub fn root_or_skip(test: &str) -> bool {
    can_run(is_root(), test, "needs root")
}

/// `tool` is a path (must exist) or a command name (must be on PATH).
pub fn tool_or_skip(tool: &str, test: &str) -> bool {
    can_run(tool_exists(tool), test, &format!("needs {tool} (scripts/setup.sh installs it)"))
}

pub fn tool_exists(tool: &str) -> bool {
    if tool.contains('/') {
        return Path::new(tool).exists();
    }
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn met_needs_always_run() {
        assert!(can_run(true, "t", "nothing"));
    }

    #[test]
    fn tools_are_found_by_path_and_name() {
        assert!(tool_exists("/bin/sh"));
        assert!(tool_exists("sh"));
        assert!(!tool_exists("/nonexistent/trellis-tool"));
        assert!(!tool_exists("trellis-no-such-tool"));
    }
}
