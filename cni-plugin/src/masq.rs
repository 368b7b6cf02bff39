//! Masquerade of pod egress that leaves the cluster: one nftables base chain per network in table
//! `ip trellis` / `ip6 trellis`, rewritten atomically (`nft -f` applies a script as one transaction), so the
//! rules are idempotent per network and never duplicate however many pods are added.
use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use trellis_cni_types::{codes, CniError};

pub const TABLE: &str = "trellis";

/// nft identifiers: keep letters, digits and '_'.
pub fn chain_name(network: &str) -> String {
    let clean: String = network.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("masq_{clean}")
}

/// The nft script for one network. Sources and cluster CIDRs are grouped by family; a family with sources but
/// no cluster CIDR of its own gets no rule (masquerading everything would break pod-to-pod traffic).
pub fn script(network: &str, sources: &[IpNet], cluster: &[IpNet]) -> String {
    let chain = chain_name(network);
    let mut s = String::new();
    for (family, v4) in [("ip", true), ("ip6", false)] {
        let srcs: Vec<String> =
            sources.iter().filter(|n| n.addr().is_ipv4() == v4).map(|n| n.trunc().to_string()).collect();
        let dsts: Vec<String> =
            cluster.iter().filter(|n| n.addr().is_ipv4() == v4).map(|n| n.trunc().to_string()).collect();
        if srcs.is_empty() || dsts.is_empty() {
            continue;
        }
        s += &format!("add table {family} {TABLE}\n");
        s += &format!(
            "add chain {family} {TABLE} {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
        );
        s += &format!("flush chain {family} {TABLE} {chain}\n");
        s += &format!(
            "add rule {family} {TABLE} {chain} {family} saddr {{ {} }} {family} daddr != {{ {} }} masquerade comment \"trellis {network}\"\n",
            srcs.join(", "),
            dsts.join(", ")
        );
    }
    s
}

fn nft_binary() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft")
}

pub fn apply(script: &str) -> Result<(), CniError> {
    if script.is_empty() {
        return Ok(());
    }
    let fail = |m: String, d: String| CniError::new(codes::INTERNAL, m, d);
    let mut child = Command::new(nft_binary())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("ipMasq needs nft(8): {e}"), "install nftables".into()))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(|e| fail(e.to_string(), String::new()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string(), String::new()))?;
    if !out.status.success() {
        return Err(fail(
            "nft refused the masquerade rules".into(),
            format!("{}\nscript:\n{script}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_family_with_its_own_cluster_cidrs() {
        let s = script(
            "k8s-pod.net",
            &["10.244.1.7/24".parse().unwrap(), "fd00:1::7/64".parse().unwrap()],
            &["10.244.0.0/16".parse().unwrap()],
        );
        assert!(s.contains("add chain ip trellis masq_k8s_pod_net { type nat hook postrouting priority srcnat;"));
        assert!(s.contains("ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16 } masquerade"), "{s}");
        assert!(!s.contains("ip6"), "no v6 cluster CIDR, so no v6 rule: {s}");
        assert_eq!(s.matches("flush chain").count(), 1);
        assert_eq!(script("n", &[], &["10.0.0.0/8".parse().unwrap()]), "");
    }
}
