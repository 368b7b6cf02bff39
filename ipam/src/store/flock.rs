//! The one flock wait loop, for the IPAM store's lock file and the plugin's per-pod netns lock. It lives here
//! because both users already depend on this crate, and cni-types stays free of system calls.
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// Takes an exclusive flock on `fd`, retrying with a short backoff (50 us doubling to 5 ms: an ADD holds a
/// lock for about a millisecond) until `timeout` has passed. The lock is held until it is unlocked or every
/// descriptor of the open file is closed. Gives up with [`io::ErrorKind::TimedOut`]; any other error is flock's.
pub fn lock_exclusive(fd: impl AsFd, timeout: Duration) -> io::Result<()> {
    let fd = fd.as_fd();
    let start = Instant::now();
    let mut backoff = Duration::from_micros(50);
    loop {
        // SAFETY: flock on a descriptor that stays open for the duration of the call (borrowed above).
        if unsafe { nix::libc::flock(fd.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(nix::libc::EWOULDBLOCK) {
            return Err(err);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("lock held by another for {waited:?}")));
        }
        std::thread::sleep(backoff.min(timeout - waited));
        backoff = (backoff * 2).min(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn a_held_lock_times_out_and_a_free_one_is_taken() {
        let lock_file = tempfile::NamedTempFile::new().unwrap();
        let holder = lock_file.reopen().unwrap();
        lock_exclusive(&holder, Duration::from_millis(10)).unwrap();
        // flock locks belong to the open file: a second open of the same path contends.
        let other = File::open(lock_file.path()).unwrap();
        let start = Instant::now();
        let e = lock_exclusive(&other, Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(start.elapsed() >= Duration::from_millis(30));
        drop(holder);
        lock_exclusive(&other, Duration::from_millis(10)).unwrap();
    }

    #[test]
    fn the_waiter_gets_the_lock_when_it_is_released() {
        let lock_file = tempfile::NamedTempFile::new().unwrap();
        let holder = lock_file.reopen().unwrap();
        lock_exclusive(&holder, Duration::ZERO).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(holder);
        });
        lock_exclusive(File::open(lock_file.path()).unwrap(), Duration::from_secs(10)).unwrap();
        release.join().unwrap();
    }
}
