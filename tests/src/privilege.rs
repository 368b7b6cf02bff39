//! Root detection and the loud skip used by every privileged test.

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Return from the calling test with a loud message when not root. When root, the test must run: never skip.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::privilege::is_root() {
            eprintln!("SKIPPED {}:{}: privileged e2e test needs root", file!(), line!());
            return;
        }
    };
}
