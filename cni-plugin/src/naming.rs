//! Deterministic host-side names, so DEL and GC find a pod's veth from (container ID, ifname) alone.
use sha2::{Digest, Sha256};

/// Host veth prefix; GC only ever deletes bridge ports with this prefix.
pub const HOST_VETH_PREFIX: &str = "tr";

/// `tr` + 12 hex digits of sha256(containerID "/" ifname): 14 bytes, under the 15-byte limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{HOST_VETH_PREFIX}{hex}")
}

/// A deleted attachment's host veth while the kernel unregisters it (see `RealDataplane::delete_pod_link`).
pub const DYING_VETH_PREFIX: &str = "tz";

/// The name a host veth takes when DEL detaches it: frees the `tr` name for an immediate re-ADD.
pub fn dying_name(host_veth: &str) -> String {
    format!("{DYING_VETH_PREFIX}{}", &host_veth[HOST_VETH_PREFIX.len()..])
}

pub fn is_dying_veth_name(name: &str) -> bool {
    name.len() == 14 && name.starts_with(DYING_VETH_PREFIX) && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// True for names [`host_veth_name`] can produce.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == 14 && name.starts_with(HOST_VETH_PREFIX) && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(is_host_veth_name(&a));
        assert!(!is_host_veth_name("trellis0"));
        assert!(!is_host_veth_name("eth0"));
        let d = dying_name(&a);
        assert!(is_dying_veth_name(&d) && !is_host_veth_name(&d));
        assert_eq!(&d[2..], &a[2..]);
    }
}
