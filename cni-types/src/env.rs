//! The `CNI_*` environment a runtime sets for each call.
use std::path::PathBuf;

use crate::error::CniError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::env(format!(
                    "unknown CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, STATUS, GC or VERSION"
                )))
            }
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS` as `K=V` pairs split on `;`.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
}

impl Env {
    pub fn from_process() -> Result<Env, CniError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads and validates the variables the command needs (spec section "Parameters"): ADD and CHECK need all of
    /// CONTAINERID, NETNS, IFNAME; DEL needs CONTAINERID and IFNAME (NETNS may be gone); the rest need none.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command =
            Command::parse(&non_empty("CNI_COMMAND").ok_or_else(|| CniError::env("CNI_COMMAND is not set"))?)?;
        let env = Env {
            command,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS").map(PathBuf::from),
            ifname: non_empty("CNI_IFNAME"),
            args: parse_args(&get("CNI_ARGS").unwrap_or_default())?,
            path: get("CNI_PATH").unwrap_or_default().split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect(),
        };
        let need: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            _ => &[],
        };
        let missing: Vec<&str> = need
            .iter()
            .copied()
            .filter(|k| match *k {
                "CNI_CONTAINERID" => env.container_id.is_none(),
                "CNI_NETNS" => env.netns.is_none(),
                _ => env.ifname.is_none(),
            })
            .collect();
        if !missing.is_empty() {
            return Err(CniError::env(format!("{} requires {} to be set", command.as_str(), missing.join(", "))));
        }
        if let Some(ifname) = &env.ifname {
            validate_ifname(ifname)?;
        }
        if let Some(id) = &env.container_id {
            if id.contains('/') || id.contains('\0') || id.contains('\n') {
                return Err(CniError::env(format!("CNI_CONTAINERID {id:?} contains '/', NUL or newline")));
            }
        }
        Ok(env)
    }

    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or("")
    }
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or("")
    }
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The rule [`is_valid_ifname`] checks, in words for error messages.
pub const IFNAME_RULE: &str = "1-15 bytes, no '/', ':', whitespace or control characters, not \".\" or \"..\"";

/// Whether `name` can be a Linux interface name: the kernel's rule (1-15 bytes, no '/', ':' or whitespace, not
/// "." or "..") and no control characters, because the name is also written into IPAM's lease files. The one
/// copy of this rule: `CNI_IFNAME` here, the IPAM store's arguments, and the plugin's bridge name use it.
pub fn is_valid_ifname(name: &str) -> bool {
    !(name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()))
}

/// [`is_valid_ifname`] as the CNI error for `CNI_IFNAME` (code 4, invalid environment).
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    if !is_valid_ifname(name) {
        return Err(CniError::env(format!("CNI_IFNAME {name:?} is not a valid interface name ({IFNAME_RULE})")));
    }
    Ok(())
}

fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CniError::env(format!("CNI_ARGS item {p:?} is not KEY=VALUE")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_everything() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_IFNAME"), "{}", e.msg);
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])
        .unwrap();
        assert_eq!(ok.arg("K8S_POD_NAME"), Some("p"));
        assert_eq!(ok.path.len(), 2);
    }

    #[test]
    fn del_without_netns_is_fine_and_commands_are_checked() {
        assert!(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]).is_ok());
        assert_eq!(env(&[]).unwrap_err().code, 4);
        assert_eq!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code, 4);
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
    }

    #[test]
    fn interface_name_rule() {
        for good in ["eth0", "net1", "a", "0123456789abcde", "trellis0", "veth-x.y_z", "..."] {
            assert!(is_valid_ifname(good), "{good:?}");
        }
        for bad in ["", ".", "..", "0123456789abcdef", "a/b", "a:b", "a b", "a\tb", "a\nb", "a\0b", "a\u{7f}b"] {
            assert!(!is_valid_ifname(bad), "{bad:?}");
            let e = validate_ifname(bad).unwrap_err();
            assert_eq!(e.code, 4);
            assert!(e.msg.contains(IFNAME_RULE), "{}", e.msg);
        }
        // The limit is in bytes, as the kernel counts: 8 two-byte characters are 16 bytes.
        assert!(!is_valid_ifname("éééééééé"));
        assert!(is_valid_ifname("ééééééé"));
    }

    #[test]
    fn bad_ifname_and_args() {
        let base = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c")];
        for bad in ["a/b", "waytoolonginterfacename", "a b", "..", "a:b", "a\x01b", "a\rb"] {
            let mut v = base.to_vec();
            v.push(("CNI_IFNAME", bad));
            assert_eq!(env(&v).unwrap_err().code, 4, "{bad}");
        }
        let mut v = base.to_vec();
        v.push(("CNI_IFNAME", "eth0"));
        v.push(("CNI_ARGS", "novalue"));
        assert_eq!(env(&v).unwrap_err().code, 4);
    }
}
