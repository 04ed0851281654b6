//! The names in a vault's `snapshots/` directory, listed once while it does not change.
//!
//! Every `localdr_backup` a plan refreshes asks its vault for the snapshots of its name.
//! Backups that share a vault (the usual set-up) each listed the whole directory, so a
//! plan read O(backups × snapshots in the vault) directory entries: 200 backups keeping 30
//! snapshots each is 1.2 million entries per plan. A listing is kept per directory with
//! the directory's identity, mtime and ctime, and reused while a `stat` finds them
//! unchanged: adding, removing or renaming a manifest changes both times, and setting the
//! mtime back by hand changes the ctime.
//!
//! Those times come from the kernel's coarse clock, so two changes within one tick of it
//! can leave the same times (git's "racy clean" problem). A listing is therefore only kept
//! when the directory was last changed [`SETTLED`] or more before it was read; a fresher
//! one is read again on every call. Even so, a listing only names ids: what a caller does
//! with one (load its manifest, check its pack) reads the files themselves.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

/// How long a directory must have been unchanged for its listing to be kept.
pub const SETTLED: Duration = Duration::from_secs(1);

/// What identifies a directory's contents without reading them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Key {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Listings kept, by directory.
type Kept = HashMap<PathBuf, (Key, Arc<Vec<String>>)>;

static KEPT: LazyLock<Mutex<Kept>> = LazyLock::new(Default::default);

/// The `.json` stems in `dir` (unsorted, without temporary `.` files); empty when `dir`
/// does not exist.
pub fn stems(dir: &Path) -> Result<Arc<Vec<String>>> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
        Err(e) => return Err(e).with_context(|| format!("could not stat {}", dir.display())),
    };
    let key = Key {
        dev: meta.dev(),
        ino: meta.ino(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    };
    if let Some((k, v)) = KEPT.lock().expect("listing cache").get(dir) {
        if *k == key {
            return Ok(v.clone());
        }
    }
    let listed = Arc::new(crate::atomic::json_stems(dir)?);
    let changed = key.mtime.max(key.ctime);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let settled = Duration::new(
        changed.0.max(0) as u64,
        changed.1.clamp(0, 999_999_999) as u32,
    )
    .checked_add(SETTLED)
    .is_some_and(|t| t <= now);
    let mut kept = KEPT.lock().expect("listing cache");
    if settled {
        kept.insert(dir.to_path_buf(), (key, listed.clone()));
    } else {
        kept.remove(dir);
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(dir: &Path) -> Vec<String> {
        let mut v = stems(dir).unwrap().to_vec();
        v.sort();
        v
    }

    #[test]
    fn a_settled_listing_is_kept_until_the_directory_changes() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("a.json"), "{}").unwrap();
        std::fs::write(d.join(".b.json.tmp"), "{}").unwrap();
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        let first = stems(d).unwrap();
        assert_eq!(*first, vec!["a".to_string()]);
        assert!(Arc::ptr_eq(&first, &stems(d).unwrap()), "kept");
        // A manifest renamed into place (what a snapshot does) changes the directory.
        std::fs::rename(d.join(".b.json.tmp"), d.join("b.json")).unwrap();
        assert_eq!(sorted(d), ["a", "b"]);
        std::fs::remove_file(d.join("a.json")).unwrap();
        assert_eq!(sorted(d), ["b"]);
    }

    #[test]
    fn a_directory_changed_just_now_is_read_every_time() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("a.json"), "{}").unwrap();
        let first = stems(d).unwrap();
        assert!(!Arc::ptr_eq(&first, &stems(d).unwrap()), "not kept");
        // A change within the same tick of the coarse clock (mtime put back as it was) is
        // still seen.
        let before = std::fs::metadata(d).unwrap().modified().unwrap();
        std::fs::write(d.join("b.json"), "{}").unwrap();
        std::fs::File::open(d)
            .unwrap()
            .set_modified(before)
            .unwrap();
        assert_eq!(sorted(d), ["a", "b"]);
        assert!(stems(&d.join("missing")).unwrap().is_empty());
    }
}
