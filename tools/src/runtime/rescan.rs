//! When the agent reads its spec directories (`services/`, `balancers/`, `schedules/`)
//! again.
//!
//! The agent ticks ten times a second to supervise pools. Listing three directories and
//! reading every spec on each tick cost a busy balancer's core about 1% of its time (and
//! kept an idle agent doing file-system work ten times a second) to find, nearly always,
//! nothing new. With inotify it looks when a directory reports a change: a spec the provider
//! writes (rename), one edited in place by hand, one deleted, a directory created. A full
//! look still happens every [`BACKSTOP`], for file systems that do not report changes
//! and for a watch lost to a directory removed and made again; without inotify at all,
//! every tick looks, as before.
//!
//! An agent with nothing to supervise does not tick at all: it sleeps until
//! [`Rescan::changed`] (or its next scheduled backup, or the backstop) wakes it.

use super::inotify::{Watch, CHANGES};
use crate::statedir::StateDir;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The longest a change can go unseen where inotify does not report it.
pub const BACKSTOP: Duration = Duration::from_secs(5);

pub struct Rescan {
    /// The watch, until the first [`Rescan::changed`] hands it to the runtime (`ready`).
    watch: Option<Watch>,
    ready: Option<tokio::io::unix::AsyncFd<Watch>>,
    root: PathBuf,
    dirs: [PathBuf; 3],
    last: Option<Instant>,
}

impl Rescan {
    pub fn new(sd: &StateDir) -> Rescan {
        let watch = Watch::empty();
        if watch.is_none() {
            tracing::warn!("inotify unavailable: reading the spec directories on every tick");
        }
        Rescan {
            watch,
            ready: None,
            root: sd.root().to_path_buf(),
            dirs: [sd.services_dir(), sd.balancers_dir(), sd.schedules_dir()],
            last: None,
        }
    }

    /// Whether the spec directories should be read now. The watches are (re)placed before
    /// the caller reads, so a change made while it reads is reported on the next tick.
    pub fn due(&mut self, now: Instant) -> bool {
        let Some(w) = self.watch() else {
            return true;
        };
        let due = w.take() || self.last.is_none_or(|t| now.duration_since(t) >= BACKSTOP);
        if due {
            // The root reports a spec directory made after the agent started; a directory
            // that does not exist yet simply has no watch until then.
            w.add(&self.root, libc::IN_CREATE | libc::IN_MOVED_TO);
            for d in &self.dirs {
                w.add(d, CHANGES);
            }
            self.last = Some(now);
        }
        due
    }

    /// Wait until a watched directory reports a change (never, without inotify). The
    /// events are left for [`Rescan::due`], which the caller runs next; readiness is
    /// cleared here first, so a change that arrives while `due` reads is a new edge and
    /// wakes the next wait.
    pub async fn changed(&mut self) {
        if let Some(w) = self.watch.take() {
            // SAFETY: the AsyncFd owns the Watch, so the descriptor stays open (and the
            // same) until the AsyncFd is dropped.
            match unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(w, tokio::io::Interest::READABLE)
            } {
                Ok(r) => self.ready = Some(r),
                Err(e) => self.watch = Some(e.into_parts().0),
            }
        }
        match &self.ready {
            Some(fd) => match fd.readable().await {
                Ok(mut guard) => guard.clear_ready(),
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Whether changes are reported (else every look is a full read).
    pub fn watching(&self) -> bool {
        self.watch().is_some()
    }

    /// The watch, wherever it is now (see `ready`).
    fn watch(&self) -> Option<&Watch> {
        self.watch
            .as_ref()
            .or(self.ready.as_ref().map(|r| r.get_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_first_then_on_changes_and_at_the_backstop() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::new(t.path());
        let mut r = Rescan::new(&sd);
        let t0 = Instant::now();
        assert!(r.due(t0), "the first tick reads everything");
        assert!(!r.due(t0), "nothing changed");
        // A spec directory made after the start, then a spec written into it atomically.
        std::fs::create_dir(sd.balancers_dir()).unwrap();
        assert!(
            r.due(t0),
            "the new directory is seen through the root's watch"
        );
        std::fs::write(sd.balancers_dir().join(".b.tmp"), "{}").unwrap();
        std::fs::rename(
            sd.balancers_dir().join(".b.tmp"),
            sd.balancers_dir().join("b.json"),
        )
        .unwrap();
        assert!(r.due(t0), "a spec renamed into place");
        assert!(!r.due(t0));
        // Edited in place by hand.
        std::fs::write(sd.balancers_dir().join("b.json"), "{ }").unwrap();
        assert!(r.due(t0), "a spec edited in place");
        std::fs::remove_file(sd.balancers_dir().join("b.json")).unwrap();
        assert!(r.due(t0), "a spec deleted");
        assert!(!r.due(t0 + BACKSTOP - Duration::from_millis(1)));
        assert!(r.due(t0 + BACKSTOP), "the backstop look");
    }

    #[tokio::test]
    async fn a_quiet_agent_is_woken_by_a_change_and_only_by_one() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::new(t.path());
        std::fs::create_dir(sd.schedules_dir()).unwrap();
        let mut r = Rescan::new(&sd);
        assert!(r.watching());
        let t0 = Instant::now();
        assert!(r.due(t0));
        let short = Duration::from_millis(300);
        assert!(
            tokio::time::timeout(short, r.changed()).await.is_err(),
            "nothing changed"
        );
        let dir = sd.schedules_dir();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(dir.join("s.json"), "{}").unwrap();
        });
        tokio::time::timeout(Duration::from_secs(10), r.changed())
            .await
            .expect("the write wakes the wait");
        writer.join().unwrap();
        assert!(r.due(t0), "and the look after it reads");
        // The events were taken: the next wait sleeps again (at most once more at once,
        // for events that came in while `due` read).
        let _ = tokio::time::timeout(short, r.changed()).await;
        assert!(tokio::time::timeout(short, r.changed()).await.is_err());
        // A later change wakes it again.
        std::fs::remove_file(sd.schedules_dir().join("s.json")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), r.changed())
            .await
            .expect("the delete wakes the wait");
        assert!(r.due(t0));
    }
}
