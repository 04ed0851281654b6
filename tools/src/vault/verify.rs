//! Verification: a snapshot is good when its manifest passes its checksum and every pack it
//! references exists with the recorded size and BLAKE3 hash.
//!
//! Hashing a vault on every `terraform plan` would be slow, so `Quick` trusts a pack whose
//! stat key (size, mtime, ctime, inode) is unchanged since it was last hashed; any write to
//! the file — a flipped byte included — changes its ctime, so damage is still seen. `Full`
//! (the CLI's `verify`) always re-reads every byte.

use super::manifest::{Manifest, PackRef};
use super::Vault;
use crate::sources::walk::StatKey;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Trust packs whose stat key matches the last successful hash.
    Quick,
    /// Re-hash every pack.
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CachedPack {
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
    ino: u64,
    hash: String,
}

impl CachedPack {
    fn new(k: StatKey, hash: &str) -> CachedPack {
        CachedPack {
            size: k.size,
            mtime: k.mtime,
            mtime_nsec: k.mtime_nsec,
            ctime: k.ctime,
            ctime_nsec: k.ctime_nsec,
            ino: k.ino,
            hash: hash.to_string(),
        }
    }
}

type PackCache = BTreeMap<String, CachedPack>;

/// The cache file as last read by this process, per vault, with the file's stat key: a
/// long-lived reader (the provider serving a 200-resource plan) parses it once, not per Read.
static MEMO: std::sync::Mutex<BTreeMap<std::path::PathBuf, (StatKey, std::sync::Arc<PackCache>)>> =
    std::sync::Mutex::new(BTreeMap::new());

fn load_cache(vault: &Vault) -> std::sync::Arc<PackCache> {
    let path = cache_path(vault);
    let Ok(meta) = std::fs::metadata(&path) else {
        return Default::default();
    };
    let key = StatKey::of(&meta);
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((k, c)) = memo.get(&path) {
        if *k == key {
            return c.clone();
        }
    }
    let cache: std::sync::Arc<PackCache> = std::sync::Arc::new(
        std::fs::read(&path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default(),
    );
    memo.insert(path, (key, cache.clone()));
    cache
}

/// Checks packs and manifests of one vault, remembering results for the run.
pub struct Verifier<'a> {
    vault: &'a Vault,
    depth: Depth,
    cache: std::sync::Arc<PackCache>,
    dirty: bool,
    seen: HashMap<String, Result<(), String>>,
    /// Bytes hashed in this run.
    pub bytes_hashed: u64,
}

/// BLAKE3 of a whole file, streamed through a fixed buffer (memory stays flat however big
/// the pack; an mmap would count the whole file as resident) and hashed on every core.
pub fn hash_file(path: &Path) -> Result<String> {
    use std::io::Read;
    const BUF: usize = 4 << 20;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; BUF];
    loop {
        let mut filled = 0;
        while filled < BUF {
            let n = f
                .read(&mut buf[filled..])
                .with_context(|| format!("could not read {}", path.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        h.update_rayon(&buf[..filled]);
        if filled < BUF {
            break;
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

impl<'a> Verifier<'a> {
    pub fn new(vault: &'a Vault, depth: Depth) -> Verifier<'a> {
        Verifier {
            vault,
            depth,
            cache: load_cache(vault),
            dirty: false,
            seen: HashMap::new(),
            bytes_hashed: 0,
        }
    }

    /// Record that `pack` was just written with `hash` (no need to read it back).
    pub fn remember(&mut self, pack_id: &str, hash: &str) {
        if let Ok(meta) = std::fs::metadata(self.vault.pack_path(pack_id)) {
            std::sync::Arc::make_mut(&mut self.cache).insert(
                pack_id.to_string(),
                CachedPack::new(StatKey::of(&meta), hash),
            );
            self.dirty = true;
            self.seen.insert(pack_id.to_string(), Ok(()));
        }
    }

    /// Is this pack present and intact? Err carries a reason for the user.
    pub fn check_pack(&mut self, p: &PackRef) -> Result<(), String> {
        if let Some(r) = self.seen.get(&p.id) {
            return r.clone();
        }
        let r = self.check_pack_uncached(p);
        self.seen.insert(p.id.clone(), r.clone());
        r
    }

    fn check_pack_uncached(&mut self, p: &PackRef) -> Result<(), String> {
        let path = self.vault.pack_path(&p.id);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(_) => return Err(format!("pack {} is missing", p.id)),
        };
        if meta.len() != p.size {
            return Err(format!(
                "pack {} has {} bytes, the manifest says {}",
                p.id,
                meta.len(),
                p.size
            ));
        }
        let key = StatKey::of(&meta);
        if self.depth == Depth::Quick {
            if let Some(c) = self.cache.get(&p.id) {
                if *c == CachedPack::new(key, &p.hash) {
                    return Ok(());
                }
            }
        }
        let got = hash_file(&path).map_err(|e| format!("{e:#}"))?;
        self.bytes_hashed += meta.len();
        if got != p.hash {
            std::sync::Arc::make_mut(&mut self.cache).remove(&p.id);
            self.dirty = true;
            return Err(format!("pack {} fails its checksum (data damaged)", p.id));
        }
        // Only trust the stat key if the file did not change while we hashed it.
        if let Ok(after) = std::fs::metadata(&path) {
            if StatKey::of(&after) == key && after.ino() == meta.ino() {
                std::sync::Arc::make_mut(&mut self.cache)
                    .insert(p.id.clone(), CachedPack::new(key, &p.hash));
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// All problems with a snapshot's data; empty means good.
    pub fn check_snapshot(&mut self, m: &Manifest) -> Vec<String> {
        m.packs
            .iter()
            .filter_map(|p| self.check_pack(p).err())
            .collect()
    }

    /// Load snapshot `id` and check it; Err is the list of problems.
    pub fn check_id(&mut self, id: &str) -> Result<Manifest, Vec<String>> {
        let m = self.vault.load(id).map_err(|e| vec![format!("{e:#}")])?;
        let problems = self.check_snapshot(&m);
        if problems.is_empty() {
            Ok(m)
        } else {
            Err(problems)
        }
    }

    /// Persist what was learnt (best effort: the cache is only a shortcut).
    pub fn save(&mut self) {
        if !self.dirty {
            return;
        }
        let path = cache_path(self.vault);
        if let Some(dir) = path.parent() {
            if std::fs::create_dir_all(dir).is_err() {
                return;
            }
        }
        // Drop entries for packs that are gone.
        let vault = self.vault;
        std::sync::Arc::make_mut(&mut self.cache).retain(|id, _| vault.pack_path(id).exists());
        if let Err(e) = crate::atomic::write_json(&path, &*self.cache) {
            tracing::debug!("could not save verification cache: {e:#}");
        }
        self.dirty = false;
    }
}

impl Drop for Verifier<'_> {
    fn drop(&mut self) {
        self.save();
    }
}

fn cache_path(vault: &Vault) -> std::path::PathBuf {
    vault.root().join("cache").join("verified.json")
}
