//! A vault: a directory of snapshots with a lock.
//!
//! ```text
//! <vault>/
//!   .lock                   flock: exclusive for writers, shared for readers
//!   snapshots/<id>.json     manifests; a snapshot exists exactly when this file does
//!   packs/<id>.pack         zstd frames of the data a snapshot added (shared by later ones)
//!   policies/<name>.json    what the provider or CLI declared for a backup name
//!   cache/verified.json     stat keys of packs whose hash was checked, to skip re-hashing
//! ```
//! Temporary files start with `.` and are never listed; the next writer removes them, and
//! packs that no manifest references (a run killed between pack and manifest).

pub mod catalog;
pub mod copy;
pub mod listing;
pub mod lock;
pub mod manifest;
pub mod pgrestore;
pub mod pick;
pub mod policy;
pub mod restore;
pub mod retention;
pub mod run;
pub mod snapshot;
mod unpack;
pub mod verify;

use crate::naming;
use anyhow::{Context, Result};
use manifest::Manifest;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

pub use lock::VaultLock;

/// A snapshot whose manifest could not be read: its id and why.
pub type Damaged = (String, String);

#[derive(Debug, Clone)]
pub struct Vault {
    root: PathBuf,
}

impl Vault {
    /// A handle on the vault at `root` (made absolute). Nothing is created until a write.
    pub fn at(root: &Path) -> Result<Vault> {
        Ok(Vault {
            root: crate::sources::absolute(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }
    pub fn policies_dir(&self) -> PathBuf {
        self.root.join("policies")
    }
    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.snapshots_dir().join(format!("{id}.json"))
    }
    pub fn pack_path(&self, id: &str) -> PathBuf {
        self.packs_dir().join(format!("{id}.pack"))
    }

    pub fn exists(&self) -> bool {
        self.snapshots_dir().is_dir()
    }

    /// Create the layout (idempotent) and take the writer lock.
    pub fn lock_for_write(&self) -> Result<VaultLock> {
        for d in [self.snapshots_dir(), self.packs_dir(), self.policies_dir()] {
            fs::create_dir_all(&d)
                .with_context(|| format!("could not create vault directory {}", d.display()))?;
        }
        let lock = lock::acquire(&self.root, true)?;
        self.clean_leftovers()?;
        Ok(lock)
    }

    /// Take the shared reader lock (writers wait; readers never see a half-pruned vault).
    pub fn lock_for_read(&self) -> Result<Option<VaultLock>> {
        if !self.root.is_dir() {
            return Ok(None);
        }
        Ok(Some(lock::acquire(&self.root, false)?))
    }

    /// Ids of all snapshots (complete manifests), optionally only those of `name`, oldest first.
    pub fn snapshot_ids(&self, name: Option<&str>) -> Result<Vec<String>> {
        let stems = listing::stems(&self.snapshots_dir())?;
        let mut ids: Vec<(Option<naming::SnapshotName>, String)> = Vec::new();
        for id in stems.iter() {
            match name {
                Some(n) => {
                    if let Some(p) = naming::parse_for(n, id) {
                        ids.push((Some(p), id.clone()));
                    }
                }
                None => ids.push((None, id.clone())),
            }
        }
        ids.sort();
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }

    /// Load every readable manifest (of `name`, or all), oldest first; damaged ones are
    /// returned separately so `list` and `verify` can show them.
    pub fn manifests(&self, name: Option<&str>) -> Result<(Vec<Manifest>, Vec<Damaged>)> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for id in self.snapshot_ids(name)? {
            match Manifest::load(&self.manifest_path(&id)) {
                Ok(m) => good.push(m),
                Err(e) => bad.push((id, format!("{e:#}"))),
            }
        }
        good.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok((good, bad))
    }

    /// The newest snapshot id of `name`, by the time in its name.
    pub fn latest_id(&self, name: &str) -> Result<Option<String>> {
        Ok(self.snapshot_ids(Some(name))?.pop())
    }

    pub fn load(&self, id: &str) -> Result<Manifest> {
        let p = self.manifest_path(id);
        if !p.exists() {
            anyhow::bail!("no snapshot {id} in vault {}", self.root.display());
        }
        Manifest::load(&p)
    }

    /// Remove temp files and packs no complete manifest references. Caller holds the writer lock.
    fn clean_leftovers(&self) -> Result<()> {
        for dir in [self.snapshots_dir(), self.packs_dir(), self.policies_dir()] {
            for e in
                fs::read_dir(&dir).with_context(|| format!("could not list {}", dir.display()))?
            {
                let e = e?;
                if e.file_name().to_string_lossy().starts_with('.') {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        self.gc_packs()?;
        Ok(())
    }

    /// Delete packs that no manifest references. Caller holds the writer lock.
    ///
    /// A damaged manifest keeps every pack (we cannot tell what it references).
    pub fn gc_packs(&self) -> Result<u64> {
        let (good, bad) = self.manifests(None)?;
        if !bad.is_empty() {
            return Ok(0);
        }
        let referenced: HashSet<&str> = good
            .iter()
            .flat_map(|m| m.packs.iter().map(|p| p.id.as_str()))
            .collect();
        let mut freed = 0;
        let dir = self.packs_dir();
        for e in fs::read_dir(&dir).with_context(|| format!("could not list {}", dir.display()))? {
            let e = e?;
            let fname = e.file_name();
            let Some(id) = fname.to_str().and_then(|f| f.strip_suffix(".pack")) else {
                continue;
            };
            if !referenced.contains(id) {
                freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path())
                    .with_context(|| format!("could not remove {}", e.path().display()))?;
            }
        }
        crate::atomic::fsync_dir(&dir)?;
        Ok(freed)
    }

    /// Delete one snapshot's manifest (its packs go at the next `gc_packs`). Writer lock held.
    pub fn forget(&self, id: &str) -> Result<()> {
        let p = self.manifest_path(id);
        fs::remove_file(&p).with_context(|| format!("could not remove {}", p.display()))?;
        crate::atomic::fsync_dir(&self.snapshots_dir())
    }
}
