//! Running another plugin (a delegated IPAM plugin) the way a runtime would: found in CNI_PATH, the same
//! environment with CNI_COMMAND overridden, the config on stdin, a result or error JSON on stdout.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};

use serde_json::Value;

use crate::env::{Command, Env};
use crate::error::{codes, CniError};

/// Finds `plugin` in the CNI_PATH directories. A type containing '/' is refused: CNI_PATH is the trust boundary.
pub fn find_plugin(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(CniError::config(format!("plugin type {plugin:?} is not a plain executable name")));
    }
    path.iter().map(|d| d.join(plugin)).find(|p| is_executable(p)).ok_or_else(|| {
        CniError::config(format!(
            "plugin {plugin:?} not found in CNI_PATH ({})",
            path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
        ))
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Executes `plugin` for `cmd` with `stdin_conf`. Returns its stdout JSON (None if it printed nothing).
pub fn exec_plugin(plugin: &str, cmd: Command, env: &Env, stdin_conf: &[u8]) -> Result<Option<Value>, CniError> {
    let bin = find_plugin(plugin, &env.path)?;
    let mut p = Proc::new(&bin);
    p.env("CNI_COMMAND", cmd.as_str())
        .env("CNI_CONTAINERID", env.container_id())
        .env("CNI_IFNAME", env.ifname())
        .env("CNI_ARGS", env.args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";"))
        .env("CNI_PATH", env.path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match &env.netns {
        Some(ns) => p.env("CNI_NETNS", ns),
        None => p.env_remove("CNI_NETNS"),
    };
    let mut child =
        p.spawn().map_err(|e| CniError::io(format!("cannot run plugin {}", bin.display()), e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin may exit without reading stdin; a broken pipe then is not our error.
        let _ = stdin.write_all(stdin_conf);
    }
    let out =
        child.wait_with_output().map_err(|e| CniError::io(format!("plugin {plugin} did not finish"), e.to_string()))?;
    let parsed: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(&out.stdout).map_err(|e| {
            CniError::decode(format!("plugin {plugin} printed something that is not JSON"), e.to_string())
        })?)
    };
    if out.status.success() {
        return Ok(parsed);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(match parsed.as_ref().and_then(CniError::from_json) {
        Some(e) => e.context(&format!("plugin {plugin}")),
        None => CniError::new(codes::INTERNAL, format!("plugin {plugin} failed with {}", out.status), stderr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_and_reports_missing_plugins() {
        assert_eq!(find_plugin("../bin/sh", &[PathBuf::from("/bin")]).unwrap_err().code, 7);
        let e = find_plugin("no-such-plugin-xyz", &[PathBuf::from("/bin")]).unwrap_err();
        assert!(e.msg.contains("not found in CNI_PATH (/bin)"), "{}", e.msg);
    }

    #[test]
    fn runs_a_plugin_and_reads_its_error_json() {
        let dir = std::env::temp_dir().join(format!("cni-types-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("fake-ipam");
        std::fs::write(
            &script,
            "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.1.0.2/24\"}]}'; exit 0; fi\necho '{\"code\":11,\"msg\":\"busy\"}'; exit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = Env {
            command: Command::Add,
            container_id: Some("c".into()),
            netns: None,
            ifname: Some("eth0".into()),
            args: vec![],
            path: vec![dir.clone()],
        };
        let v = exec_plugin("fake-ipam", Command::Add, &env, b"{}").unwrap().unwrap();
        assert_eq!(v["ips"][0]["address"], "10.1.0.2/24");
        let e = exec_plugin("fake-ipam", Command::Del, &env, b"{}").unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("busy"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
