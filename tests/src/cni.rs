//! One CNI plugin execution, exactly as a runtime performs it: CNI_* variables, config on stdin, exit code,
//! result or error JSON on stdout, logs on stderr.
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trellis_test_support::chaos::Ended;

/// Longest a single plugin call may take before the harness kills it and fails the test.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCmd {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl CniCmd {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCmd::Add => "ADD",
            CniCmd::Del => "DEL",
            CniCmd::Check => "CHECK",
            CniCmd::Status => "STATUS",
            CniCmd::Gc => "GC",
            CniCmd::Version => "VERSION",
        }
    }
}

/// Everything a runtime hands a plugin. `None` leaves the variable unset (to test missing-variable errors).
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
    pub stdin: Vec<u8>,
}

impl Invocation {
    pub fn new(cmd: CniCmd, conf: &Value) -> Invocation {
        Invocation { command: Some(cmd.as_str().into()), stdin: conf.to_string().into_bytes(), ..Default::default() }
    }
    /// ADD/DEL/CHECK of one attachment.
    pub fn attachment(cmd: CniCmd, conf: &Value, container_id: &str, netns: &str, ifname: &str) -> Invocation {
        Invocation {
            container_id: Some(container_id.into()),
            netns: Some(netns.into()),
            ifname: Some(ifname.into()),
            ..Invocation::new(cmd, conf)
        }
    }

    /// The environment for the plugin: PATH kept (plugins shell out to iptables), everything else from `self`.
    pub fn env(&self, default_cni_path: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()))];
        let vars = [
            ("CNI_COMMAND", &self.command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
        ];
        env.extend(vars.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k, v))));
        env.push(("CNI_PATH", self.path.clone().unwrap_or_else(|| default_cni_path.to_owned())));
        env
    }
}

/// What came back from a plugin.
#[derive(Clone, Debug)]
pub struct CniOutput {
    pub plugin: PathBuf,
    pub command: String,
    /// None when killed by a signal.
    pub status: Option<i32>,
    /// How the process ended: finished, failed (its own non-zero exit), or killed by SIGKILL.
    pub ended: Ended,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub stdin: String,
}

impl CniOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// A report of the whole exchange, for assertion messages and bug reports.
    pub fn describe(&self) -> String {
        format!(
            "{} CNI_COMMAND={} exit={:?} ({:?})\n  stdin:  {}\n  stdout: {}\n  stderr: {}",
            self.plugin.display(),
            self.command,
            self.status,
            self.elapsed,
            self.stdin,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }

    /// Exit 0 and stdout parsed as JSON (the result, or the VERSION answer).
    pub fn result(&self) -> Result<Value> {
        if !self.success() {
            bail!("plugin call failed:\n{}", self.describe());
        }
        serde_json::from_str(self.stdout.trim()).with_context(|| format!("stdout is not JSON:\n{}", self.describe()))
    }

    /// Exit 0 with nothing required on stdout (DEL, CHECK, STATUS, GC).
    pub fn ok(&self) -> Result<()> {
        if !self.success() {
            bail!("plugin call failed:\n{}", self.describe());
        }
        Ok(())
    }

    /// Non-zero exit with a well-formed CNI error on stdout.
    pub fn error(&self) -> Result<CniError> {
        if self.success() {
            bail!("expected a CNI error, plugin succeeded:\n{}", self.describe());
        }
        if self.status.is_none() {
            bail!("plugin was killed by a signal:\n{}", self.describe());
        }
        CniError::parse(&self.stdout).with_context(|| format!("bad error JSON:\n{}", self.describe()))
    }
}

/// The spec's error object: `{"cniVersion","code","msg","details"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct CniError {
    pub cni_version: String,
    pub code: u64,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn parse(stdout: &str) -> Result<CniError> {
        let v: Value = serde_json::from_str(stdout.trim()).context("error output is not JSON")?;
        let cni_version = v["cniVersion"].as_str().ok_or_else(|| anyhow!("error JSON lacks cniVersion: {v}"))?;
        let code = v["code"].as_u64().ok_or_else(|| anyhow!("error JSON lacks a numeric code: {v}"))?;
        let msg = v["msg"].as_str().ok_or_else(|| anyhow!("error JSON lacks msg: {v}"))?;
        if msg.trim().is_empty() {
            bail!("error JSON has an empty msg: {v}");
        }
        let details = match &v["details"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => bail!("error JSON details must be a string: {other}"),
        };
        Ok(CniError { cni_version: cni_version.into(), code, msg: msg.into(), details })
    }

    /// msg and details together, for "mentions X" assertions.
    pub fn text(&self) -> String {
        format!("{} {}", self.msg, self.details.as_deref().unwrap_or(""))
    }
}

/// Start `plugin` with `inv`, inside the network namespace `netns` when given (setns in the child before exec, so
/// the child pid is the plugin itself: a SIGKILL hits the plugin, not a wrapper).
pub fn spawn(plugin: &Path, inv: &Invocation, netns: Option<&File>, default_cni_path: &str) -> Result<Child> {
    let mut cmd = Command::new(plugin);
    cmd.env_clear().envs(inv.env(default_cni_path)).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(f) = netns {
        let fd = f.as_raw_fd();
        use std::os::unix::process::CommandExt;
        // SAFETY: only setns (async-signal-safe) runs between fork and exec; fd stays open in the parent meanwhile.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().with_context(|| format!("spawn {}", plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits early closes its stdin: EPIPE is its answer, not ours to fail on.
        let _ = stdin.write_all(&inv.stdin);
    }
    Ok(child)
}

/// Wait for a spawned plugin with the harness timeout; kills it (by its own pid) on timeout.
pub fn finish(plugin: &Path, inv: &Invocation, child: Child, started: Instant) -> Result<CniOutput> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(CALL_TIMEOUT) {
        Ok(r) => r.with_context(|| format!("wait for {}", plugin.display()))?,
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            bail!("{} {:?} did not finish within {:?}", plugin.display(), inv.command, CALL_TIMEOUT);
        }
    };
    Ok(CniOutput {
        plugin: plugin.to_owned(),
        command: inv.command.clone().unwrap_or_else(|| "<unset>".into()),
        status: out.status.code(),
        ended: Ended::of(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
        stdin: String::from_utf8_lossy(&inv.stdin).into_owned(),
    })
}

/// Spawn and wait.
pub fn call(plugin: &Path, inv: &Invocation, netns: Option<&File>, default_cni_path: &str) -> Result<CniOutput> {
    let started = Instant::now();
    let child = spawn(plugin, inv, netns, default_cni_path)?;
    finish(plugin, inv, child, started)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_sets_only_given_variables_and_defaults_cni_path() {
        let mut inv = Invocation::attachment(CniCmd::Add, &json!({}), "c1", "/run/netns/x", "eth0");
        inv.container_id = None;
        let env = inv.env("/a:/b");
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("CNI_COMMAND").as_deref(), Some("ADD"));
        assert_eq!(get("CNI_CONTAINERID"), None);
        assert_eq!(get("CNI_NETNS").as_deref(), Some("/run/netns/x"));
        assert_eq!(get("CNI_PATH").as_deref(), Some("/a:/b"));
        assert!(get("PATH").is_some());
    }

    #[test]
    fn parses_a_spec_error() {
        let e = CniError::parse(r#"{"cniVersion":"1.0.0","code":7,"msg":"bad range","details":"overlap"}"#).unwrap();
        assert_eq!(e.code, 7);
        assert_eq!(e.msg, "bad range");
        assert_eq!(e.details.as_deref(), Some("overlap"));
        assert!(e.text().contains("overlap"));
    }

    #[test]
    fn rejects_errors_missing_fields() {
        assert!(CniError::parse(r#"{"code":7,"msg":"x"}"#).is_err());
        assert!(CniError::parse(r#"{"cniVersion":"1.0.0","msg":"x"}"#).is_err());
        assert!(CniError::parse(r#"{"cniVersion":"1.0.0","code":7,"msg":""}"#).is_err());
        assert!(CniError::parse("not json").is_err());
    }

    #[test]
    fn runs_a_fake_plugin_and_reports_its_exchange() {
        // /bin/sh as a "plugin" that echoes its environment and stdin, to test the plumbing without privileges.
        let dir = crate::TempDir::new("fakeplugin").unwrap();
        let plugin = dir.join("fake");
        std::fs::write(&plugin, "#!/bin/sh\nread line\necho \"{\\\"cmd\\\":\\\"$CNI_COMMAND\\\",\\\"in\\\":$line}\"\n")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let inv = Invocation::new(CniCmd::Status, &json!({"a": 1}));
        let out = call(&plugin, &inv, None, "/x").unwrap();
        let v = out.result().unwrap();
        assert_eq!(v["cmd"], "STATUS");
        assert_eq!(v["in"]["a"], 1);
        assert!(out.error().is_err());
    }

    #[test]
    fn failing_plugin_yields_its_error() {
        let dir = crate::TempDir::new("fakeplugin").unwrap();
        let plugin = dir.join("fail");
        std::fs::write(
            &plugin,
            "#!/bin/sh\necho '{\"cniVersion\":\"1.0.0\",\"code\":4,\"msg\":\"no CNI_COMMAND\"}'\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = call(&plugin, &Invocation::default(), None, "/x").unwrap();
        assert_eq!(out.error().unwrap().code, 4);
        assert!(out.result().is_err());
    }
}
