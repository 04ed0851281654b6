//! Walking a source tree: every file, directory and symlink with the metadata a restore
//! needs (mode, mtime) and the stat key a no-change run compares to skip re-reading.

use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One object found under the source root.
#[derive(Debug, Clone)]
pub struct Found {
    /// Path relative to the root, `/`-separated; `""` is the root itself.
    pub rel: String,
    pub abs: PathBuf,
    pub kind: Kind,
    pub meta: fs::Metadata,
}

/// Walk `root` (a file or a directory; symlinks are recorded, never followed), sorted by path.
pub fn walk(root: &Path) -> Result<Vec<Found>> {
    let meta = fs::symlink_metadata(root)
        .with_context(|| format!("source {} does not exist or cannot be read", root.display()))?;
    let mut out = Vec::new();
    let kind = kind_of(&meta, root)?;
    out.push(Found {
        rel: String::new(),
        abs: root.to_path_buf(),
        kind,
        meta,
    });
    if kind == Kind::Dir {
        walk_dir(root, "", &mut out)?;
    }
    Ok(out)
}

fn walk_dir(dir: &Path, rel: &str, out: &mut Vec<Found>) -> Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("could not list {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("could not list {}", dir.display()))?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let name = child.file_name();
        let Some(name) = name.to_str() else {
            bail!(
                "file name {:?} in {} is not UTF-8; localdr records names as UTF-8",
                name,
                dir.display()
            );
        };
        let abs = child.path();
        let meta = fs::symlink_metadata(&abs)
            .with_context(|| format!("could not stat {}", abs.display()))?;
        let kind = match kind_of(&meta, &abs) {
            Ok(k) => k,
            Err(_) => continue, // sockets, fifos, devices: not data we can restore
        };
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        out.push(Found {
            rel: child_rel.clone(),
            abs: abs.clone(),
            kind,
            meta,
        });
        if kind == Kind::Dir {
            walk_dir(&abs, &child_rel, out)?;
        }
    }
    Ok(())
}

fn kind_of(meta: &fs::Metadata, path: &Path) -> Result<Kind> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        Ok(Kind::Symlink)
    } else if ft.is_dir() {
        Ok(Kind::Dir)
    } else if ft.is_file() {
        Ok(Kind::File)
    } else {
        bail!(
            "{} is not a regular file, directory or symlink",
            path.display()
        )
    }
}

/// The stat fields that change whenever a file's content may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatKey {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ctime: i64,
    pub ctime_nsec: i64,
    pub ino: u64,
}

impl StatKey {
    pub fn of(meta: &fs::Metadata) -> StatKey {
        StatKey {
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
            ino: meta.ino(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_sorted_with_symlinks_unfollowed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("b/empty")).unwrap();
        fs::write(r.join("a.txt"), "a").unwrap();
        fs::write(r.join("b/c.txt"), "c").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("link")).unwrap();
        let found = walk(r).unwrap();
        let rels: Vec<_> = found.iter().map(|f| (f.rel.as_str(), f.kind)).collect();
        assert_eq!(
            rels,
            vec![
                ("", Kind::Dir),
                ("a.txt", Kind::File),
                ("b", Kind::Dir),
                ("b/c.txt", Kind::File),
                ("b/empty", Kind::Dir),
                ("link", Kind::Symlink),
            ]
        );
    }
}
