//! The binary's command line: the contract flags exist and bad input gives a clear error.
use std::process::Command;

fn agent(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis-agent")).args(args).env_remove("NODE_NAME").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_contract_flag() {
    let (ok, out, _) = agent(&["--help"]);
    assert!(ok);
    for flag in [
        "--node-name",
        "--source",
        "--manifests-dir",
        "--kubeconfig",
        "--overlay",
        "--vxlan-vni",
        "--vxlan-port",
        "--vxlan-device",
        "--underlay-iface",
        "--cluster-cidr",
        "--cni-conf-dir",
        "--cni-conf-name",
        "--ipam-data-dir",
        "--bridge",
        "--ip-masq",
        "--repair-interval-secs",
        "--bridge-netfilter-off",
        "--metrics-addr",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
    for default in
        ["8472", "trellis.1", "10.244.0.0/16", "/etc/cni/net.d", "10-trellis.conflist", "127.0.0.1:9962", "host-gw"]
    {
        assert!(out.contains(default), "--help lacks {default}");
    }
}

#[test]
fn bad_flags_are_clear_errors() {
    let (ok, _, err) = agent(&["--node-name", "a", "--source", "files"]);
    assert!(!ok);
    assert!(err.contains("--manifests-dir"), "{err}");
    let (ok, _, err) = agent(&["--node-name", "a", "--overlay", "ipip"]);
    assert!(!ok);
    assert!(err.contains("ipip") && err.contains("host-gw"), "{err}");
    let (ok, _, err) =
        agent(&["--node-name", "a", "--source", "files", "--manifests-dir", "/nonexistent", "--vxlan-vni", "0"]);
    assert!(!ok);
    assert!(err.contains("--vxlan-vni"), "{err}");
    let (ok, _, err) = agent(&["--node-name", "a", "--cluster-cidr", "10.244.0.0/99"]);
    assert!(!ok);
    assert!(err.contains("--cluster-cidr"), "{err}");
    let (ok, _, err) = agent(&[]);
    assert!(!ok);
    assert!(err.contains("--node-name"), "{err}");
}
