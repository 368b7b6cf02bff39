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

/// The running test's name (libtest names each test's thread after it) with `location`, or `location` alone.
pub fn test_name(location: &str) -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => format!("{n} ({location})"),
        _ => location.to_owned(),
    }
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
        // One short O_APPEND write per line: lines from parallel test processes do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(format!("{test}: {why}\n").as_bytes());
        }
    }
    false
}

/// `location` is where the guard stands (the macros pass `module (file:line)`); the test's name is added.
pub fn root_or_skip(location: &str) -> bool {
    can_run(is_root(), &test_name(location), "needs root")
}

/// `tool` is a path (must exist) or a command name (must be on PATH).
pub fn tool_or_skip(tool: &str, location: &str) -> bool {
    can_run(tool_exists(tool), &test_name(location), &format!("needs {tool} (scripts/setup.sh installs it)"))
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

    #[test]
    fn the_test_name_comes_from_libtest_s_thread() {
        let name = test_name("here.rs:1");
        assert!(name.contains("the_test_name_comes_from_libtest_s_thread"), "{name}");
        assert!(name.ends_with("(here.rs:1)"), "{name}");
    }

    /// An unmet need outside CI skips and is logged; in CI it panics. Run in a child process with a controlled
    /// environment, so this test's own CI setting does not matter.
    #[test]
    fn unmet_needs_skip_and_log_outside_ci_and_fail_in_ci() {
        if std::env::var_os("TRELLIS_GUARD_CHILD").is_some() {
            let ok = can_run(false, "child", "needs a unicorn");
            // Reached only outside CI.
            assert!(!ok);
            return;
        }
        let dir = std::env::temp_dir().join(format!("trellis-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        let me = std::env::current_exe().unwrap();
        let run = |ci: &str| {
            std::process::Command::new(&me)
                .args(["--exact", "privileged::tests::unmet_needs_skip_and_log_outside_ci_and_fail_in_ci"])
                .env("TRELLIS_GUARD_CHILD", "1")
                .env("TRELLIS_SKIP_LOG", &log)
                .env("CI", ci)
                .output()
                .unwrap()
        };
        let outside = run("");
        assert!(outside.status.success(), "{}", String::from_utf8_lossy(&outside.stdout));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "child: needs a unicorn\n");
        let inside = run("true");
        assert!(!inside.status.success(), "an unmet need must fail in CI");
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1, "CI failures are not skips");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
