//! Bridge netfilter off for this node's netns. With br_netfilter loaded, every frame the pod bridge forwards
//! (same-node pod to pod, and pod to the node's gateway) is also run through the IP netfilter hooks: that is
//! what kube-proxy needed to un-NAT a Service reply from a backend on the same bridge. The service proxy
//! translates Services in eBPF on the pods' host veths, so with it on these hooks only cost time (they were a
//! measured part of the host-gw request/response gap, BENCHMARKS.md). The agent sets
//! `net.bridge.bridge-nf-call-{iptables,ip6tables}` to 0 in its own netns (they are per netns since Linux 5.3)
//! and puts them back to 0 at every repair round if something (a container runtime, a leftover kube-proxy)
//! turns them on again. Without br_netfilter there is nothing to do: the files do not exist.
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

/// Where the bridge sysctls live (for the netns of the process that opens them).
pub const BRIDGE_DIR: &str = "/proc/sys/net/bridge";
/// The switches turned off: IPv4 and IPv6 (ARP is left alone: nothing of ours depends on it either way).
pub const BRIDGE_NF: [&str; 2] = ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"];

/// One switch turned off: its name and the value it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub name: String,
    pub was: String,
}

/// Sets every [`BRIDGE_NF`] file under `dir` that is not 0 to 0. `Ok(None)`: br_netfilter is not loaded (no
/// `dir`); `Ok(Some(changed))`: what was changed (empty when all were 0 already).
pub fn bridge_nf_off(dir: &Path) -> std::io::Result<Option<Vec<Changed>>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut changed = Vec::new();
    for name in BRIDGE_NF {
        let path = dir.join(name);
        let was = match std::fs::read_to_string(&path) {
            Ok(v) => v.trim().to_string(),
            // A kernel without IPv6 has no ip6tables switch.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        if was != "0" {
            std::fs::write(&path, "0")
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            changed.push(Changed { name: name.to_string(), was });
        }
    }
    Ok(Some(changed))
}

/// One round with its log line; returns whether br_netfilter was there.
fn round(dir: &Path, first: bool) -> bool {
    match bridge_nf_off(dir) {
        Ok(None) => {
            if first {
                info!(dir = %dir.display(), "br_netfilter not loaded: bridged pod frames skip netfilter already");
            }
            false
        }
        Ok(Some(changed)) if changed.is_empty() => {
            if first {
                info!("bridge netfilter already off in this netns");
            }
            true
        }
        Ok(Some(changed)) => {
            let what: Vec<String> = changed.iter().map(|c| format!("net.bridge.{} {} -> 0", c.name, c.was)).collect();
            if first {
                info!(changed = %what.join(", "), "bridge netfilter off: bridged pod frames skip iptables/nftables");
            } else {
                warn!(changed = %what.join(", "), "bridge netfilter was turned back on; off again");
            }
            true
        }
        Err(e) => {
            warn!("cannot turn bridge netfilter off (is /proc/sys writable?): {e}");
            true
        }
    }
}

/// Turns bridge netfilter off in `dir` now and again every `interval`, on a thread of its own (named
/// `bridge-nf`) of this process, so in this process's netns. br_netfilter loaded later is caught too.
pub fn keep_bridge_nf_off(dir: PathBuf, interval: Duration) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("bridge-nf".into()).spawn(move || {
        let mut first = true;
        loop {
            // Until the module shows up, every round is a "first" one: its first change is logged as such.
            if round(&dir, first) {
                first = false;
            }
            std::thread::sleep(interval);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn dir_with(values: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, v) in values {
            std::fs::write(d.path().join(name), format!("{v}\n")).unwrap();
        }
        d
    }

    fn read(d: &Path, name: &str) -> String {
        std::fs::read_to_string(d.join(name)).unwrap().trim().to_string()
    }

    #[test]
    fn turns_both_families_off_and_leaves_arp_alone() {
        let d = dir_with(&[
            ("bridge-nf-call-iptables", "1"),
            ("bridge-nf-call-ip6tables", "1"),
            ("bridge-nf-call-arptables", "1"),
        ]);
        let changed = bridge_nf_off(d.path()).unwrap().unwrap();
        assert_eq!(
            changed,
            vec![
                Changed { name: "bridge-nf-call-iptables".into(), was: "1".into() },
                Changed { name: "bridge-nf-call-ip6tables".into(), was: "1".into() },
            ]
        );
        assert_eq!(read(d.path(), "bridge-nf-call-iptables"), "0");
        assert_eq!(read(d.path(), "bridge-nf-call-ip6tables"), "0");
        assert_eq!(read(d.path(), "bridge-nf-call-arptables"), "1");
        // Idempotent: nothing left to change.
        assert_eq!(bridge_nf_off(d.path()).unwrap(), Some(vec![]));
    }

    #[test]
    fn no_br_netfilter_is_nothing_to_do_and_a_missing_family_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(bridge_nf_off(&d.path().join("bridge")).unwrap(), None);
        let d = dir_with(&[("bridge-nf-call-iptables", "1")]);
        let changed = bridge_nf_off(d.path()).unwrap().unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(read(d.path(), "bridge-nf-call-iptables"), "0");
    }

    #[test]
    fn an_unreadable_switch_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading it fails with something other than NotFound.
        std::fs::create_dir(d.path().join("bridge-nf-call-iptables")).unwrap();
        let e = bridge_nf_off(d.path()).unwrap_err();
        assert!(e.to_string().contains("bridge-nf-call-iptables"), "{e}");
    }

    #[test]
    fn the_keeper_turns_it_off_again_and_catches_a_late_module() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("bridge");
        let _keeper = keep_bridge_nf_off(dir.clone(), Duration::from_millis(20)).unwrap();
        let wait_zero = |what: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while read(&dir, "bridge-nf-call-iptables") != "0" {
                assert!(Instant::now() < deadline, "{what}: still {}", read(&dir, "bridge-nf-call-iptables"));
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // br_netfilter "loaded" after the agent started.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("bridge-nf-call-iptables"), "1").unwrap();
        wait_zero("late module");
        // Something turns it back on.
        std::fs::write(dir.join("bridge-nf-call-iptables"), "1").unwrap();
        wait_zero("turned back on");
    }
}
