//! Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.
//!
//! `rename` alone is atomic only against other processes; without the two fsyncs a power
//! loss can leave an empty file under the new name. Every write that matters goes through here.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name for a temporary file that no other process or thread will pick.
pub fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{}-{}", std::process::id(), nanos, n)
}

/// Flush a directory's entries (new names, renames, unlinks) to disk.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let d =
        File::open(dir).with_context(|| format!("could not open directory {}", dir.display()))?;
    d.sync_all()
        .with_context(|| format!("could not fsync directory {}", dir.display()))
}

/// The `name` of each `<name>.json` in `dir`, unsorted; the temporary files of the writes
/// below (their names start with `.`) are never listed. Empty when `dir` does not exist.
pub fn json_stems(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("could not list {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("could not list {}", dir.display()))?;
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if n.starts_with('.') {
            continue;
        }
        if let Some(stem) = n.strip_suffix(".json") {
            out.push(stem.to_string());
        }
    }
    Ok(out)
}

/// Write `data` to `path` atomically and durably.
pub fn write(path: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        unique_suffix()
    ));
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("could not create {}", tmp.display()))?;
        f.write_all(data)
            .with_context(|| format!("could not write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("could not fsync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("could not rename into {}", path.display()))?;
        fsync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Serialize `value` as pretty JSON and write it atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut data = serde_json::to_vec_pretty(value).context("could not serialize JSON")?;
    data.push(b'\n');
    write(path, &data)
}

/// Rename `from` to `to` and make the rename durable in both directories.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to)
        .with_context(|| format!("could not rename {} to {}", from.display(), to.display()))?;
    let to_dir = parent_dir(to);
    fsync_dir(&to_dir)?;
    let from_dir = parent_dir(from);
    if from_dir != to_dir {
        fsync_dir(&from_dir)?;
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write(&p, b"first version, long").unwrap();
        write(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temp file was left behind");
    }
}
