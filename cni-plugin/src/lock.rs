//! ADD, DEL and CHECK of one pod are serialized by an flock on the pod's network namespace file. The spec
//! forbids runtimes to overlap operations on one attachment, but a retry racing a slow call happens; without the
//! lock one call's rollback could release the address the other just returned. Locking the nsfs inode needs no
//! lock files (nothing to clean up) and holds whichever path names the namespace (/run/netns/X, /proc/PID/ns/net).
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use trellis_cni_types::{codes, CniError};

const WAIT: Duration = Duration::from_secs(30);

/// Takes an exclusive flock on `fd`, waiting up to 30 s; held until every descriptor of it is closed.
pub fn lock_netns(fd: &OwnedFd, path: &str) -> Result<(), CniError> {
    let start = Instant::now();
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(CniError::io(format!("locking {path}"), err.to_string()));
        }
        if start.elapsed() > WAIT {
            return Err(CniError::new(
                codes::TRY_AGAIN_LATER,
                format!("another CNI operation on {path} has held it for over {WAIT:?}"),
                "",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
