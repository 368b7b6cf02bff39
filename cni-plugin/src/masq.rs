//! Masquerade of pod egress that leaves the cluster: one nftables base chain per network in table
//! `ip trellis` / `ip6 trellis`, rewritten atomically (`nft -f` applies a script as one transaction), so the
//! rules are idempotent per network and never duplicate however many pods are added.
//!
//! A NAT table makes the kernel track every flow through the node. Traffic that stays inside clusterCIDR needs
//! no NAT (Services are translated in eBPF before netfilter sees them), so with `untrack` two more base chains
//! at raw priority (prerouting, and output for the node's own packets) mark it `notrack`: conntrack and the nat
//! table never see it, while pod -> outside is still tracked and masqueraded. Without `untrack` those chains are
//! removed in the same transaction, so turning it off on a running node takes effect at the next ADD.
use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use trellis_cni_types::{codes, CniError};

pub const TABLE: &str = "trellis";

/// nft identifiers: keep letters, digits and '_'.
pub fn chain_name(network: &str) -> String {
    format!("masq_{}", clean(network))
}

fn clean(network: &str) -> String {
    network.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The raw-priority chains that untrack intra-cluster traffic: (name, hook).
pub fn untrack_chains(network: &str) -> [(String, &'static str); 2] {
    let c = clean(network);
    [(format!("untrack_{c}"), "prerouting"), (format!("untrack_out_{c}"), "output")]
}

/// The nft script for one network. Sources and cluster CIDRs are grouped by family; a family with sources but
/// no cluster CIDR of its own gets no rule (masquerading everything would break pod-to-pod traffic).
/// `untrack`: packets from clusterCIDR to clusterCIDR skip conntrack (see the module doc); false removes those
/// chains if an earlier ADD made them.
pub fn script(network: &str, sources: &[IpNet], cluster: &[IpNet], untrack: bool) -> String {
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
        for (name, hook) in untrack_chains(network) {
            s += &format!(
                "add chain {family} {TABLE} {name} {{ type filter hook {hook} priority raw; policy accept; }}\n"
            );
            s += &format!("flush chain {family} {TABLE} {name}\n");
            if untrack {
                let all = dsts.join(", ");
                s += &format!(
                    "add rule {family} {TABLE} {name} {family} saddr {{ {all} }} {family} daddr {{ {all} }} notrack comment \"trellis {network}\"\n"
                );
            } else {
                s += &format!("delete chain {family} {TABLE} {name}\n");
            }
        }
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
            true,
        );
        assert!(s.contains("add chain ip trellis masq_k8s_pod_net { type nat hook postrouting priority srcnat;"));
        assert!(s.contains("ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16 } masquerade"), "{s}");
        assert!(!s.contains("ip6"), "no v6 cluster CIDR, so no v6 rule: {s}");
        assert_eq!(s.matches("masquerade").count(), 1);
        assert_eq!(script("n", &[], &["10.0.0.0/8".parse().unwrap()], true), "");
    }

    #[test]
    fn intra_cluster_traffic_is_untracked_per_family_before_conntrack() {
        let s = script(
            "k8s-pod.net",
            &["10.244.1.7/24".parse().unwrap(), "fd00:10:244:1::7/64".parse().unwrap()],
            &["10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap(), "fd00:10:244::/48".parse().unwrap()],
            true,
        );
        for (family, cidrs) in [("ip", "10.244.0.0/16, 10.96.0.0/12"), ("ip6", "fd00:10:244::/48")] {
            for (chain, hook) in [("untrack_k8s_pod_net", "prerouting"), ("untrack_out_k8s_pod_net", "output")] {
                // Priority raw (-300) runs before conntrack (-200): a notrack packet is never tracked, so the nat
                // table never sees it.
                assert!(
                    s.contains(&format!(
                        "add chain {family} trellis {chain} {{ type filter hook {hook} priority raw; policy accept; }}\n\
                         flush chain {family} trellis {chain}\n\
                         add rule {family} trellis {chain} {family} saddr {{ {cidrs} }} {family} daddr {{ {cidrs} }} notrack"
                    )),
                    "{family} {chain}: {s}"
                );
            }
        }
        // Every chain is flushed before its rule is added: applying the script twice leaves one rule each.
        assert_eq!(s.matches("flush chain").count(), 6, "{s}");
        assert_eq!(s.matches("add rule").count(), 6, "{s}");
        assert!(!s.contains("delete"), "{s}");
        // Outside traffic is still masqueraded.
        assert!(s.contains("ip6 saddr { fd00:10:244:1::/64 } ip6 daddr != { fd00:10:244::/48 } masquerade"), "{s}");
    }

    #[test]
    fn untrack_off_removes_the_raw_chains_and_keeps_masquerade() {
        let s = script("n", &["10.244.1.7/24".parse().unwrap()], &["10.244.0.0/16".parse().unwrap()], false);
        assert!(!s.contains("notrack"), "{s}");
        for chain in ["untrack_n", "untrack_out_n"] {
            // add (so the delete never fails on a node that never had it), flush, delete: one transaction.
            let add = s.find(&format!("add chain ip trellis {chain} ")).expect(chain);
            let del = s.find(&format!("delete chain ip trellis {chain}\n")).expect(chain);
            assert!(add < del, "{s}");
        }
        assert!(s.contains("ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16 } masquerade"), "{s}");
    }
}
