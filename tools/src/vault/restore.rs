//! Restoring a snapshot: every entry path is checked first (nothing may escape the target),
//! data is decompressed and checked against its hash into a staging directory beside the
//! target, flushed with `syncfs`, and only then moved into place. What was at the target is
//! renamed to a safety copy, never overwritten. Any failure leaves the target untouched.

use super::manifest::{file_digest, Entry, EntryKind, Manifest};
use super::unpack::{ChunkDecoder, UnpackError};
use super::Vault;
use crate::sources::tfstate;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct RestoreOptions<'a> {
    /// Where to restore; the snapshot's source path when `None`.
    pub target: Option<&'a Path>,
    /// Skip the tfstate lineage/serial checks.
    pub force: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub snapshot_id: String,
    pub target: PathBuf,
    pub safety_copy: Option<PathBuf>,
    pub files: u64,
    pub bytes: u64,
}

/// Check that a manifest path is relative, normal, and cannot escape the target.
pub fn safe_rel_path(rel: &str) -> Result<PathBuf> {
    if rel.is_empty() {
        return Ok(PathBuf::new());
    }
    if rel.contains('\0') || rel.contains('\\') {
        bail!("refusing entry {rel:?}: invalid character in path");
    }
    let p = Path::new(rel);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => bail!("refusing entry {rel:?}: it would escape the restore target"),
        }
    }
    if out.as_os_str().len() != rel.len() {
        bail!("refusing entry {rel:?}: path is not in normal form");
    }
    Ok(out)
}

/// Check every entry: safe paths, no duplicates, nothing beneath a symlink (a link to `/`
/// followed by `link/etc/passwd` would write outside the target), a sane root.
pub fn check_entries(entries: &[Entry]) -> Result<()> {
    let mut seen = HashSet::new();
    let links: HashSet<&str> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Symlink)
        .map(|e| e.path.as_str())
        .collect();
    let dirs: HashSet<&str> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .map(|e| e.path.as_str())
        .collect();
    for e in entries {
        safe_rel_path(&e.path)?;
        if !seen.insert(e.path.as_str()) {
            bail!("refusing snapshot: entry {:?} appears twice", e.path);
        }
        let mut parent = e.path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if links.contains(p) {
                bail!(
                    "refusing entry {:?}: it lies beneath the symlink {p:?}",
                    e.path
                );
            }
            if !dirs.contains(p) {
                bail!(
                    "refusing entry {:?}: its directory {p:?} is not in the snapshot",
                    e.path
                );
            }
            parent = p;
        }
        if !e.path.is_empty() && !e.path.contains('/') && !dirs.contains("") {
            bail!(
                "refusing entry {:?}: the snapshot root is not a directory",
                e.path
            );
        }
    }
    Ok(())
}

/// Restore snapshot `m` from `vault` (reader lock taken here).
pub fn restore(vault: &Vault, m: &Manifest, opts: &RestoreOptions) -> Result<RestoreReport> {
    let _lock = vault.lock_for_read()?;
    m.check()?;
    check_entries(&m.entries)?;
    let target = match opts.target {
        Some(t) => crate::sources::absolute(t)?,
        None => PathBuf::from(&m.source.path),
    };
    if let Some(snap) = &m.tfstate {
        if target.exists() {
            match tfstate::inspect(&target) {
                Ok(cur) => tfstate::check_restore(&cur, snap, opts.force)?,
                Err(e) => tracing::warn!("current state at {} is unreadable ({e:#}); restoring over it, a safety copy is kept", target.display()),
            }
        }
    }
    let parent = target.parent().ok_or_else(|| {
        anyhow!(
            "cannot restore to {}: it has no parent directory",
            target.display()
        )
    })?;
    fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
    let base = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("restore");
    let staging = parent.join(format!(
        ".{base}.localdr-restore-{}",
        crate::atomic::unique_suffix()
    ));
    let result = (|| {
        let (files, bytes) = materialize(vault, m, &staging, opts.progress)?;
        let safety = move_into_place(&staging, &target)?;
        Ok(RestoreReport {
            snapshot_id: m.id.clone(),
            target: target.clone(),
            safety_copy: safety,
            files,
            bytes,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging).or_else(|_| fs::remove_file(&staging));
    }
    result
}

/// Write every entry under `staging` and make it durable.
fn materialize(vault: &Vault, m: &Manifest, staging: &Path, progress: bool) -> Result<(u64, u64)> {
    let at = |rel: &str| -> PathBuf {
        if rel.is_empty() {
            staging.to_path_buf()
        } else {
            staging.join(rel)
        }
    };
    // Directories first (entries are sorted, so parents come before children).
    for e in m.entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        let p = at(&e.path);
        fs::create_dir(&p).with_context(|| format!("could not create {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
    }
    let files: Vec<&Entry> = m
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    let total: u64 = files.iter().map(|e| e.size).sum();
    let batches = batches_by_directory(&files);
    let bar = crate::progress::bytes(progress, total, "restore");
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let err: std::sync::Mutex<Option<anyhow::Error>> = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut packs: HashMap<u32, File> = HashMap::new();
                let mut dec = match ChunkDecoder::new() {
                    Ok(d) => d,
                    Err(e) => {
                        *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                };
                let mut cbuf = Vec::new();
                'work: while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(batch) = batches.get(i) else { break };
                    for e in &files[batch.clone()] {
                        let r =
                            write_file(vault, m, e, &at(&e.path), &mut packs, &mut dec, &mut cbuf);
                        match r {
                            Ok(()) => bar.inc(e.size),
                            Err(x) => {
                                stop.store(true, Ordering::Relaxed);
                                let mut g = err.lock().unwrap_or_else(|p| p.into_inner());
                                if g.is_none() {
                                    *g = Some(x);
                                }
                                break 'work;
                            }
                        }
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    for e in m.entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
        let p = at(&e.path);
        let t = e.target.as_deref().unwrap_or("");
        std::os::unix::fs::symlink(t, &p)
            .with_context(|| format!("could not create symlink {}", p.display()))?;
        set_mtime(&p, e, true)?;
    }
    // Directory modes and mtimes last, deepest first, so creating children does not undo them.
    for e in m.entries.iter().rev().filter(|e| e.kind == EntryKind::Dir) {
        let p = at(&e.path);
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
            .with_context(|| format!("could not set mode on {}", p.display()))?;
        set_mtime(&p, e, false)?;
    }
    sync_fs(staging)?;
    Ok((files.len() as u64, total))
}

/// Split the (path-sorted) files into runs that share a directory, capped at 8 MiB, so
/// parallel workers mostly create files in different directories: two threads creating in
/// one directory contend on its lock (a fifth of restore time when measured). Big files
/// form runs of their own and spread across workers.
fn batches_by_directory(files: &[&Entry]) -> Vec<std::ops::Range<usize>> {
    const BUDGET: u64 = 8 << 20;
    let parent = |p: &str| {
        p.rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, e) in files.iter().enumerate() {
        let new_dir = i > start && parent(&files[start].path) != parent(&e.path);
        if i > start && (new_dir || bytes + e.size > BUDGET) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += e.size;
    }
    if start < files.len() {
        out.push(start..files.len());
    }
    out
}

fn write_file(
    vault: &Vault,
    m: &Manifest,
    e: &Entry,
    path: &Path,
    packs: &mut HashMap<u32, File>,
    dec: &mut ChunkDecoder,
    cbuf: &mut Vec<u8>,
) -> Result<()> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    let mut hashes = Vec::with_capacity(e.chunks.len());
    let mut written = 0u64;
    let mut flushed = 0u64;
    // Chunks are stored in file order; their pack offsets are in any order.
    for c in &e.chunks {
        let pack = &m.packs[c.pack as usize];
        let f = match packs.entry(c.pack) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let pp = vault.pack_path(&pack.id);
                v.insert(File::open(&pp).with_context(|| {
                    format!("snapshot {} is damaged: pack {} is missing", m.id, pack.id)
                })?)
            }
        };
        cbuf.resize(c.clen as usize, 0);
        f.read_exact_at(cbuf, c.offset).with_context(|| {
            format!(
                "snapshot {} is damaged: pack {} is truncated",
                m.id, pack.id
            )
        })?;
        // Each piece is written while it is in cache; a chunk that turns out damaged only
        // ever reached the staging directory, which is removed.
        let h = dec
            .decode(cbuf, c.ulen as u64, |piece| {
                out.write_all(piece)
                    .with_context(|| format!("could not write {}", path.display()))?;
                written += piece.len() as u64;
                if written - flushed >= FLUSH_EVERY {
                    start_writeback(&out, flushed, written - flushed);
                    flushed = written;
                }
                Ok(())
            })
            .map_err(|x| match x {
                UnpackError::Other(e) => e,
                UnpackError::Damaged(why) => anyhow!(
                    "snapshot {} is damaged: a chunk of {:?} {why}; nothing was restored",
                    m.id,
                    e.path
                ),
            })?;
        if h.to_hex().as_str() != c.hash {
            bail!(
                "snapshot {} is damaged: {:?} fails its checksum; nothing was restored",
                m.id,
                e.path
            );
        }
        hashes.push(*h.as_bytes());
    }
    if written != e.size || e.hash.as_deref() != Some(file_digest(&hashes, e.size).as_str()) {
        bail!(
            "snapshot {} is damaged: {:?} fails its checksum",
            m.id,
            e.path
        );
    }
    // Mode and mtime through the descriptor: no second path lookup.
    out.set_permissions(fs::Permissions::from_mode(e.mode))
        .with_context(|| format!("could not set mode on {}", path.display()))?;
    let t = filetime::FileTime::from_unix_time(e.mtime, e.mtime_nsec);
    filetime::set_file_handle_times(&out, Some(t), Some(t))
        .with_context(|| format!("could not set mtime on {}", path.display()))
}

/// Big files start writeback every 8 MiB as they are written, so the final `syncfs` (which
/// makes the restore durable before it is moved into place) has little left to wait for;
/// small files are left to that one `syncfs`. Measured on the 1 GiB benchmark: a hint per
/// small file cost more than it saved.
const FLUSH_EVERY: u64 = 8 << 20;

fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a hint on a descriptor `f` keeps open; errors are harmless (syncfs follows).
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

fn set_mtime(p: &Path, e: &Entry, link: bool) -> Result<()> {
    let t = filetime::FileTime::from_unix_time(e.mtime, e.mtime_nsec);
    let r = if link {
        filetime::set_symlink_file_times(p, t, t)
    } else {
        filetime::set_file_times(p, t, t)
    };
    r.with_context(|| format!("could not set mtime on {}", p.display()))
}

fn sync_fs(p: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(p).with_context(|| format!("could not open {}", p.display()))?;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("could not sync the file system of {}", p.display()));
    }
    Ok(())
}

/// Rename `staging` to `target`, first renaming anything at `target` to a safety copy.
fn move_into_place(staging: &Path, target: &Path) -> Result<Option<PathBuf>> {
    let mut safety = None;
    if fs::symlink_metadata(target).is_ok() {
        let stamp = chrono::Utc::now().format("%Y-%m-%d_%H-%M-%S");
        let mut n = 1;
        let mut cand = PathBuf::from(format!("{}.pre-restore-{stamp}", target.display()));
        while fs::symlink_metadata(&cand).is_ok() {
            n += 1;
            cand = PathBuf::from(format!("{}.pre-restore-{stamp}_{n}", target.display()));
        }
        crate::atomic::rename_durable(target, &cand)?;
        safety = Some(cand);
    }
    if let Err(e) = crate::atomic::rename_durable(staging, target) {
        if let Some(s) = &safety {
            let _ = fs::rename(s, target);
        }
        return Err(e);
    }
    Ok(safety)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o755,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            hash: None,
            chunks: vec![],
            target: Some("/".into()).filter(|_| kind == EntryKind::Symlink),
            ctime: 0,
            ctime_nsec: 0,
            ino: 0,
        }
    }

    #[test]
    fn batches_follow_directories_and_split_big_files() {
        let mk = |p: &str, size: u64| Entry {
            size,
            ..entry(p, EntryKind::File)
        };
        let es = [
            mk("a/1", 10),
            mk("a/2", 10),
            mk("b/big", 20 << 20),
            mk("b/big2", 20 << 20),
            mk("b/c/x", 1),
            mk("top", 1),
        ];
        let refs: Vec<&Entry> = es.iter().collect();
        assert_eq!(
            batches_by_directory(&refs),
            vec![0..2, 2..3, 3..4, 4..5, 5..6]
        );
        assert!(batches_by_directory(&[]).is_empty());
    }

    #[test]
    fn escaping_paths_are_refused() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "./a",
            "..",
        ] {
            assert!(safe_rel_path(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(safe_rel_path("a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        assert_eq!(safe_rel_path("").unwrap(), PathBuf::new());
    }

    #[test]
    fn entries_beneath_a_symlink_are_refused() {
        let es = vec![
            entry("", EntryKind::Dir),
            entry("link", EntryKind::Symlink),
            entry("link/etc", EntryKind::File),
        ];
        let err = check_entries(&es).unwrap_err().to_string();
        assert!(err.contains("beneath the symlink"), "{err}");
    }

    #[test]
    fn orphans_and_duplicates_are_refused() {
        let es = vec![entry("", EntryKind::Dir), entry("a/b", EntryKind::File)];
        assert!(check_entries(&es).is_err());
        let es = vec![
            entry("", EntryKind::Dir),
            entry("a", EntryKind::File),
            entry("a", EntryKind::File),
        ];
        assert!(check_entries(&es).is_err());
        let ok = vec![
            entry("", EntryKind::Dir),
            entry("a", EntryKind::Dir),
            entry("a/b", EntryKind::File),
            entry("l", EntryKind::Symlink),
        ];
        check_entries(&ok).unwrap();
    }
}
