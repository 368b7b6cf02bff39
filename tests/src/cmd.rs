//! Running helper commands (ip, nft, ping, ...) with errors that carry the command line and its stderr.
use anyhow::{bail, Context, Result};
use std::process::{Command, Output};

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run and capture; a non-zero exit is not an error here (callers that care use `run_ok`).
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| format!("spawn `{}`", describe(cmd)))
}

/// Run, require exit 0, return stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ...` in the current (root) namespace: only used for `ip netns add/del`, which touch no root links.
pub fn ip(args: &[&str]) -> Result<String> {
    run_ok(Command::new("ip").args(args))
}
