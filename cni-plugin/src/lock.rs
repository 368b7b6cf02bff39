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
    fn a_netns_held_past_the_wait_is_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        let [first, second]: [OwnedFd; 2] =
            [std::fs::File::create(&path), std::fs::File::open(&path)].map(|f| f.unwrap().into());
        lock_netns(&first, "ns").unwrap();
        let busy = lock_netns_within(&second, "ns", Duration::ZERO).unwrap_err();
        assert_eq!(
            (busy.code, busy.msg.as_str()),
            (codes::TRY_AGAIN_LATER, "another CNI operation on ns has held it for over 0ns")
        );
    }
}
