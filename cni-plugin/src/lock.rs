//! ADD, DEL and CHECK of one pod are serialized by an flock on the pod's network namespace file. The spec
//! forbids runtimes to overlap operations on one attachment, but a retry racing a slow call happens; without the
//! lock one call's rollback could release the address the other just returned. Locking the nsfs inode needs no
//! lock files (nothing to clean up) and holds whichever path names the namespace (/run/netns/X, /proc/PID/ns/net).
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::time::Duration;

use trellis_cni_types::{codes, CniError};
use trellis_ipam::store::flock::lock_exclusive;

const WAIT: Duration = Duration::from_secs(30);

/// Takes an exclusive flock on `fd`, waiting up to 30 s; held until every descriptor of it is closed.
pub fn lock_netns(fd: &OwnedFd, path: &str) -> Result<(), CniError> {
    lock_netns_within(fd, path, WAIT)
}

fn lock_netns_within(fd: &OwnedFd, path: &str, wait: Duration) -> Result<(), CniError> {
    lock_exclusive(fd, wait).map_err(|e| match e.kind() {
        ErrorKind::TimedOut => CniError::new(
            codes::TRY_AGAIN_LATER,
            format!("another CNI operation on {path} has held it for over {wait:?}"),
            "",
        ),
        _ => CniError::io(format!("locking {path}"), e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_netns_lock_is_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        let held: OwnedFd = std::fs::File::create(&path).unwrap().into();
        lock_netns(&held, "ns").unwrap();
        let other: OwnedFd = std::fs::File::open(&path).unwrap().into();
        let e = lock_netns_within(&other, "ns", Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.code, codes::TRY_AGAIN_LATER, "{e}");
        assert!(e.msg.contains("another CNI operation on ns"), "{e}");
        drop(held);
        lock_netns_within(&other, "ns", Duration::from_millis(20)).unwrap();
    }
}
