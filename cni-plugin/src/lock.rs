//! One lock per attachment (container ID + ifname), held for a whole ADD, DEL or CHECK. The spec forbids
//! runtimes from overlapping operations on one attachment, but a retry racing a slow call happens; without the
//! lock one call's rollback could release the address the other just returned.
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use trellis_cni_types::{codes, CniError};

pub const LOCK_DIR: &str = "/run/trellis/attachments";
const WAIT: Duration = Duration::from_secs(30);

pub struct AttachmentLock {
    file: File,
    path: PathBuf,
}

impl AttachmentLock {
    pub fn acquire(key: &str) -> Result<AttachmentLock, CniError> {
        let io = |what: &str, e: std::io::Error| CniError::io(format!("attachment lock: {what}"), e.to_string());
        std::fs::create_dir_all(LOCK_DIR).map_err(|e| io(LOCK_DIR, e))?;
        let path = PathBuf::from(LOCK_DIR).join(key);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path.display().to_string(), e))?;
        let start = Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(AttachmentLock { file, path });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io("flock", err));
            }
            if start.elapsed() > WAIT {
                return Err(CniError::new(
                    codes::TRY_AGAIN_LATER,
                    format!("another operation on this attachment holds {} for over {WAIT:?}", path.display()),
                    "",
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// After DEL: drop the lock file too (released when `self` drops).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}
