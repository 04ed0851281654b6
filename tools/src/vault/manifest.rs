//! A snapshot's manifest: every entry with its metadata, every chunk with its BLAKE3 hash,
//! every pack with its size and hash, and one checksum over the whole manifest.
//!
//! The manifest is written last, atomically, after the pack it references is durable: a
//! snapshot exists exactly when its manifest does (restic's "data before index" rule).

use crate::sources::tfstate::TfstateInfo;
use crate::sources::SourceKind;
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// Where a chunk of a file lives: pack index into `Manifest::packs`, offset and compressed
/// length in that pack, uncompressed length and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub pack: u32,
    pub offset: u64,
    pub clen: u32,
    pub ulen: u32,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the source root, `/`-separated; `""` is the root itself.
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// File digest: BLAKE3 over the chunk hashes and the size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Chunk>,
    /// Symlink target, as stored in the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Stat key (ctime, inode) so the next run can skip an unchanged file without reading it.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ctime: i64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ctime_nsec: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ino: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    pub id: String,
    pub size: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub kind: SourceKind,
    /// Absolute path of the source when the snapshot was taken; the default restore target.
    pub path: String,
    pub is_dir: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgSnapshot {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    /// `custom` or `plain`.
    pub dump_format: String,
    pub server_version: String,
    /// Rows per table right after the dump, for drills to compare against.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub row_counts: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub source: SourceInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tfstate: Option<TfstateInfo>,
    /// For a PostgreSQL source: where the dump came from and how to load it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgSnapshot>,
    /// What took the snapshot: `schedule` for the agent; empty for a manual or Terraform run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
    pub compression_level: i32,
    /// Number of regular files.
    pub file_count: u64,
    /// Logical bytes of all regular files.
    pub size_bytes: u64,
    /// Bytes this snapshot added to the vault (its own pack).
    pub added_bytes: u64,
    pub packs: Vec<PackRef>,
    pub entries: Vec<Entry>,
    /// BLAKE3 of this manifest serialized with `checksum` empty.
    #[serde(default)]
    pub checksum: String,
}

impl Manifest {
    pub fn compute_checksum(&self) -> Result<String> {
        let mut copy = self.clone();
        copy.checksum.clear();
        let bytes = serde_json::to_vec(&copy).context("could not serialize manifest")?;
        Ok(blake3::hash(&bytes).to_hex().to_string())
    }

    pub fn seal(&mut self) -> Result<()> {
        self.checksum = self.compute_checksum()?;
        Ok(())
    }

    /// Check the whole-manifest checksum and the internal references.
    pub fn check(&self) -> Result<()> {
        if self.format != FORMAT {
            bail!(
                "manifest {} has format {}, this localdr reads {}",
                self.id,
                self.format,
                FORMAT
            );
        }
        let want = self.compute_checksum()?;
        if want != self.checksum {
            bail!(
                "manifest {} fails its checksum (it was modified or damaged)",
                self.id
            );
        }
        for e in &self.entries {
            for c in &e.chunks {
                if c.pack as usize >= self.packs.len() {
                    bail!(
                        "manifest {} references a pack index that does not exist",
                        self.id
                    );
                }
            }
        }
        Ok(())
    }

    /// Load and check a manifest file.
    pub fn load(path: &Path) -> Result<Manifest> {
        let data =
            std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
        let m: Manifest = serde_json::from_slice(&data)
            .with_context(|| format!("manifest {} is damaged (not valid JSON)", path.display()))?;
        m.check()?;
        Ok(m)
    }
}

/// The digest of a whole file from its chunk hashes.
pub fn file_digest(chunk_hashes: &[[u8; 32]], size: u64) -> String {
    let mut h = blake3::Hasher::new();
    for c in chunk_hashes {
        h.update(c);
    }
    h.update(&size.to_le_bytes());
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            id: "x_2025-01-01_00-00-00".into(),
            name: "x".into(),
            created_at: "2025-01-01T00:00:00.123456789Z".parse().unwrap(),
            source: SourceInfo {
                kind: SourceKind::Path,
                path: "/data".into(),
                is_dir: true,
            },
            tfstate: None,
            postgres: None,
            origin: String::new(),
            compression_level: 3,
            file_count: 1,
            size_bytes: 5,
            added_bytes: 20,
            packs: vec![PackRef {
                id: "x_2025-01-01_00-00-00".into(),
                size: 20,
                hash: "00".into(),
            }],
            entries: vec![Entry {
                path: "a".into(),
                kind: EntryKind::File,
                mode: 0o644,
                mtime: 1,
                mtime_nsec: 2,
                size: 5,
                hash: Some("h".into()),
                chunks: vec![Chunk {
                    pack: 0,
                    offset: 0,
                    clen: 20,
                    ulen: 5,
                    hash: "c".into(),
                }],
                target: None,
                ctime: 0,
                ctime_nsec: 0,
                ino: 0,
            }],
            checksum: String::new(),
        }
    }

    #[test]
    fn sealed_manifest_round_trips_and_checks() {
        let mut m = sample();
        m.seal().unwrap();
        let text = serde_json::to_string_pretty(&m).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        back.check().unwrap();
    }

    #[test]
    fn any_change_breaks_the_checksum() {
        let mut m = sample();
        m.seal().unwrap();
        let mut t = m.clone();
        t.entries[0].chunks[0].hash = "d".into();
        assert!(t.check().unwrap_err().to_string().contains("checksum"));
        let mut t = m.clone();
        t.size_bytes += 1;
        assert!(t.check().is_err());
        let mut t = m.clone();
        t.entries[0].chunks[0].pack = 3;
        t.seal().unwrap();
        assert!(t.check().unwrap_err().to_string().contains("pack index"));
    }

    #[test]
    fn file_digest_depends_on_every_chunk_and_size() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert_ne!(file_digest(&[a, b], 10), file_digest(&[b, a], 10));
        assert_ne!(file_digest(&[a], 10), file_digest(&[a], 11));
    }
}
