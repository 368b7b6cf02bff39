//! The host-side veth name contract: `tr` + 12 hex of sha256(containerID + "/" + ifname).
use sha2::{Digest, Sha256};

pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    format!("tr{}", &crate::names::hex(&digest)[..12])
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
}
