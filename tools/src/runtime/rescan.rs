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

use super::inotify::{Watch, CHANGES};
use crate::statedir::StateDir;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The longest a change can go unseen where inotify does not report it.
pub const BACKSTOP: Duration = Duration::from_secs(5);

pub struct Rescan {
    watch: Option<Watch>,
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
            root: sd.root().to_path_buf(),
            dirs: [sd.services_dir(), sd.balancers_dir(), sd.schedules_dir()],
            last: None,
        }
    }

    /// Whether the spec directories should be read now. The watches are (re)placed before
    /// the caller reads, so a change made while it reads is reported on the next tick.
    pub fn due(&mut self, now: Instant) -> bool {
        let Some(w) = &self.watch else {
            return true;
        };
        let due = w.take() || self.last.is_none_or(|t| now.duration_since(t) >= BACKSTOP);
        if due {
            self.last = Some(now);
            // The root reports a spec directory made after the agent started; a directory
            // that does not exist yet simply has no watch until then.
            w.add(&self.root, libc::IN_CREATE | libc::IN_MOVED_TO);
            for d in &self.dirs {
                w.add(d, CHANGES);
            }
        }
        due
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
}
