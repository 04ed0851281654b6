//! What a backup reads: a file or directory tree (`path`), a Terraform state file
//! (`tfstate`), or a PostgreSQL database (`postgres`, through `pg_dump`).

pub mod postgres;
pub mod tfstate;
pub mod walk;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The kind of source a backup reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A regular file or a directory tree.
    Path,
    /// A Terraform state file, validated and with `serial`/`lineage` recorded.
    Tfstate,
    /// A PostgreSQL database, dumped with `pg_dump` (one file in the snapshot).
    Postgres,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Path => "path",
            SourceKind::Tfstate => "tfstate",
            SourceKind::Postgres => "postgres",
        }
    }
}

/// A source with its path made absolute.
#[derive(Debug, Clone)]
pub struct Source {
    pub kind: SourceKind,
    pub path: PathBuf,
}

impl Source {
    pub fn new(kind: SourceKind, path: &Path) -> Result<Source> {
        Ok(Source {
            kind,
            path: absolute(path)?,
        })
    }
}

/// Make `path` absolute against the current directory without resolving symlinks, so the
/// path recorded is the one the user wrote (a symlinked source stays a symlink).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let p = std::path::absolute(path)
        .with_context(|| format!("could not make {} absolute", path.display()))?;
    Ok(normalize(&p))
}

/// Drop `.` and resolve `..` lexically.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Resolve symlinks in the longest existing prefix of `path` (the rest may not exist yet).
pub fn canonical_lenient(path: &Path) -> PathBuf {
    let abs = absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(&existing) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return abs,
        }
    }
}

/// Refuse a vault that lives inside the directory it backs up: every snapshot would
/// contain the previous ones.
pub fn check_vault_outside(source: &Path, vault: &Path) -> Result<()> {
    let s = canonical_lenient(source);
    let v = canonical_lenient(vault);
    if v == s || (s.is_dir() && v.starts_with(&s)) {
        bail!(
            "vault {} is inside the source {}: choose a vault directory outside what is backed up",
            vault.display(),
            source.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_inside_source_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("data");
        std::fs::create_dir(&src).unwrap();
        assert!(check_vault_outside(&src, &src.join("vault")).is_err());
        assert!(check_vault_outside(&src, &src.join("a/../vault")).is_err());
        assert!(check_vault_outside(&src, &d.path().join("vault")).is_ok());
        assert!(check_vault_outside(&src, &d.path().join("data-vault")).is_ok());
    }
}
