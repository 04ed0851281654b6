//! Moving queue items between directories. Every move is one `rename` that never replaces
//! a file, so an item is always in exactly one place whatever crashes when, and two items
//! with the same name never overwrite each other.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Is a directory entry a queue item? Hidden names and temporary names (`*.tmp`,
/// `*.part`, `*~`) are files still being written: a producer writes them first and
/// renames them into place, the way `localdr loadgen --queue-dir` does.
pub fn is_item(name: &str) -> bool {
    !(name.starts_with('.')
        || name.ends_with(".tmp")
        || name.ends_with(".part")
        || name.ends_with('~'))
}

/// The items in `dir`, oldest first (then by name), regular files only.
pub fn items(dir: &Path) -> Result<Vec<String>> {
    let mut out: Vec<(SystemTime, String)> = Vec::new();
    let rd = std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?;
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_item(&name) {
            continue;
        }
        let Ok(md) = e.metadata() else { continue };
        if !md.is_file() {
            continue;
        }
        out.push((md.modified().unwrap_or(SystemTime::UNIX_EPOCH), name));
    }
    out.sort();
    Ok(out.into_iter().map(|(_, n)| n).collect())
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("bad path {}", p.display()))
}

/// Rename `from` to `to`, failing with `AlreadyExists` rather than replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let (Ok(f), Ok(t)) = (cpath(from), cpath(to)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: two NUL-terminated paths; plain syscall.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // A file system without RENAME_NOREPLACE: check, then rename. Only a producer
        // writing the very same name in between could be replaced.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if to.exists() {
                return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(from, to)
        }
        _ => Err(e),
    }
}

/// Where a move ended.
#[derive(Debug)]
pub enum Moved {
    To(PathBuf),
    /// `from` was not there (another dispatcher or a person took it).
    Gone,
}

/// Move `from` into `dir` under `name`, or `name.<tag>` when `name` is taken there.
/// Both directories are fsynced, so the move survives a power loss.
pub fn move_into(from: &Path, dir: &Path, name: &str, tag: &str) -> Result<Moved> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    for candidate in [name.to_string(), format!("{name}.{tag}")] {
        let to = dir.join(&candidate);
        match rename_noreplace(from, &to) {
            Ok(()) => {
                crate::atomic::fsync_dir(dir)?;
                if let Some(p) = from.parent() {
                    if p != dir {
                        crate::atomic::fsync_dir(p)?;
                    }
                }
                return Ok(Moved::To(to));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Moved::Gone),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => bail!(
                "cannot move {} to {}: they are on different file systems, and a queue \
                 item must move by one atomic rename",
                from.display(),
                dir.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("could not move {} to {}", from.display(), to.display())
                })
            }
        }
    }
    bail!(
        "could not move {} into {}: both {name} and {name}.{tag} exist",
        from.display(),
        dir.display()
    )
}

/// The device a path lives on (for the one-file-system check).
pub fn device(p: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(p)
        .with_context(|| format!("could not stat {}", p.display()))?
        .dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_temporary_names_are_not_items() {
        assert!(is_item("req_1.json"));
        for n in [".req_1.json.tmp", "a.tmp", "a.part", "a~", ".hidden"] {
            assert!(!is_item(n), "{n}");
        }
    }

    #[test]
    fn a_move_never_replaces_a_file() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("x"), "first").unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("x"), "already there").unwrap();
        let Moved::To(p) = move_into(&a.join("x"), &b, "x", "r1").unwrap() else {
            panic!("moved nothing")
        };
        assert_eq!(p, b.join("x.r1"));
        assert_eq!(
            std::fs::read_to_string(b.join("x")).unwrap(),
            "already there"
        );
        assert_eq!(std::fs::read_to_string(p).unwrap(), "first");
        assert!(matches!(
            move_into(&a.join("x"), &b, "x", "r2").unwrap(),
            Moved::Gone
        ));
    }

    #[test]
    fn items_skip_directories_and_files_being_written() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join(".x.tmp"), "").unwrap();
        std::fs::write(d.path().join("b"), "").unwrap();
        assert_eq!(items(d.path()).unwrap(), ["b"]);
    }
}
