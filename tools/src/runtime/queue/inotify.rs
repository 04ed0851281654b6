//! Waking the dispatcher when a file lands in the incoming directory (inotify), so an item
//! starts within milliseconds instead of at the next `poll_interval` scan. Where inotify is
//! not available (another OS, a file system that does not report, the watch limit) the
//! dispatcher still finds every file by scanning.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

pub struct Watch {
    fd: OwnedFd,
}

impl Watch {
    /// Watch `dir` for files moved in or closed after writing; `None` when inotify fails.
    pub fn new(dir: &Path) -> Option<Watch> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain syscalls; the fd is owned right away.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mask = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
            if libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) < 0 {
                return None;
            }
            Some(Watch { fd })
        }
    }

    /// Wait up to `timeout` for an event; true when something arrived (events drained).
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n <= 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer from our non-blocking fd.
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_renamed_in_wakes_the_watch() {
        let d = tempfile::tempdir().unwrap();
        let w = Watch::new(d.path()).expect("inotify works on Linux");
        assert!(!w.wait(Duration::from_millis(10)));
        std::fs::write(d.path().join(".a.tmp"), "x").unwrap();
        std::fs::rename(d.path().join(".a.tmp"), d.path().join("a")).unwrap();
        assert!(w.wait(Duration::from_secs(5)));
    }
}
