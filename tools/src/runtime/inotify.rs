//! Being told when a directory changes (inotify), instead of looking at it on a timer.
//!
//! Two users: the queue dispatcher wakes when a file lands in its incoming directory, so
//! an item starts within milliseconds instead of at the next `poll_interval` scan; the
//! agent reads its spec directories only when something in them changed, instead of
//! listing and reading them ten times a second. Where inotify is not available (another
//! OS, a file system that does not report, the watch limit) both still find every change
//! by scanning, only later.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// A file moved in or closed after writing: what a finished file arriving looks like.
pub const ARRIVALS: u32 = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;

/// Every way a directory's entries or their contents can change: files created, written
/// (also in place, by hand), renamed in or out, deleted, and the directory itself going.
pub const CHANGES: u32 = libc::IN_CREATE
    | libc::IN_CLOSE_WRITE
    | libc::IN_MODIFY
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

pub struct Watch {
    fd: OwnedFd,
}

impl Watch {
    /// Watch `dir` for the events in `mask`; `None` when inotify fails.
    pub fn new(dir: &Path, mask: u32) -> Option<Watch> {
        let w = Watch::empty()?;
        w.add(dir, mask).then_some(w)
    }

    /// An inotify instance that watches nothing yet; `None` when inotify fails.
    pub fn empty() -> Option<Watch> {
        // SAFETY: a plain syscall; the fd is owned right away.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Some(Watch {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watch `dir` too (again is fine: the kernel keeps one watch per inode). False when it
    /// cannot be watched, e.g. because it does not exist.
    pub fn add(&self, dir: &Path, mask: u32) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a valid fd and a NUL-terminated path.
        unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask) >= 0 }
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

    /// Whether anything happened since the last look (events drained); never blocks.
    pub fn take(&self) -> bool {
        self.wait(Duration::ZERO)
    }
}

/// The descriptor, for a caller that waits on it in an event loop (`AsyncFd`).
impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_renamed_in_wakes_the_watch() {
        let d = tempfile::tempdir().unwrap();
        let w = Watch::new(d.path(), ARRIVALS).expect("inotify works on Linux");
        assert!(!w.wait(Duration::from_millis(10)));
        std::fs::write(d.path().join(".a.tmp"), "x").unwrap();
        std::fs::rename(d.path().join(".a.tmp"), d.path().join("a")).unwrap();
        assert!(w.wait(Duration::from_secs(5)));
    }

    #[test]
    fn changes_sees_edits_in_place_and_deletions() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("spec.json");
        std::fs::write(&f, "{}").unwrap();
        let w = Watch::new(d.path(), CHANGES).expect("inotify works on Linux");
        assert!(!w.take(), "nothing happened yet");
        // An edit in place (no rename): what `echo >>` or an editor without backups does.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .unwrap()
            .write_all(b"\n")
            .unwrap();
        assert!(w.take());
        assert!(!w.take(), "events are drained by a look");
        std::fs::remove_file(&f).unwrap();
        assert!(w.take());
        assert!(!w.add(&d.path().join("missing"), CHANGES));
    }
}
