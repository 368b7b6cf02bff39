//! The host-side veth name contract: `tr` + 12 hex of sha256(containerID + "/" + ifname); DEL renames the host end
//! `tz` + the same hex while the kernel unregisters it.
use sha2::{Digest, Sha256};

pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    format!("tr{}", &crate::names::hex(&digest)[..12])
}

/// The name a host veth has between DEL and the kernel's unregister.
pub fn dying_name(host_veth: &str) -> String {
    format!("tz{}", host_veth.strip_prefix("tr").unwrap_or(host_veth))
}

/// True for a pod's host veth, live (`tr…`) or dying (`tz…`): exactly what a leak check must count. Bridges
/// (`trellis0`) and other links are not pod links.
pub fn is_pod_link(name: &str) -> bool {
    name.len() == 14
        && (name.starts_with("tr") || name.starts_with("tz"))
        && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sha256_of_id_slash_ifname() {
        // echo -n "c1/eth0" | sha256sum = d72e032fedd94c16...
        assert_eq!(host_veth_name("c1", "eth0"), "trd72e032fedd9");
    }

    #[test]
    fn fits_ifnamsiz_and_depends_on_ifname() {
        let a = host_veth_name("c1", "eth0");
        let b = host_veth_name("c1", "eth1");
        assert_eq!(a.len(), 14);
        assert_ne!(a, b);
    }

    #[test]
    fn pod_links_are_live_and_dying_host_veths_only() {
        let live = host_veth_name("c1", "eth0");
        assert!(is_pod_link(&live));
        assert_eq!(dying_name(&live), "tzd72e032fedd9");
        assert!(is_pod_link(&dying_name(&live)));
        for other in ["trellis0", "trellisb", "tr", "lo", "eth0", "trd72e032fedd", "tzd72e032fedd9x", "trd72e032fedzz"]
        {
            assert!(!is_pod_link(other), "{other}");
        }
    }
}
