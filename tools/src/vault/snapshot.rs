//! Taking a snapshot: walk the source, reuse unchanged files from the previous snapshot by
//! stat key (no re-read), and stream the changed ones through hash + zstd workers into one
//! new pack. The pack is fsynced and renamed into place before the manifest that references
//! it, and the manifest is written atomically last.

use super::manifest::{
    file_digest, Chunk, Entry, EntryKind, Manifest, PackRef, SourceInfo, FORMAT,
};
use super::verify::{Depth, Verifier};
use super::Vault;
use crate::naming;
use crate::sources::walk::{self, Kind, StatKey};
use crate::sources::{self, tfstate, Source, SourceKind};
use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;

/// Files are cut into chunks of this size so big files compress on every core and memory
/// stays bounded (workers × 2 chunks in flight).
pub const CHUNK: u64 = 1 << 20;

pub struct BackupOptions<'a> {
    pub name: &'a str,
    pub source: &'a Source,
    pub compression_level: i32,
    pub progress: bool,
    /// Ids the new snapshot must not take although they are not in this vault: those held
    /// by the DR vaults. A snapshot deleted by hand frees its id here but not there, and
    /// reusing it would overwrite the DR copy of different data.
    pub reserved: &'a [String],
    /// Set when `source` is a dump of this database.
    pub postgres: Option<super::manifest::PgSnapshot>,
    /// `schedule` when the agent takes it; empty otherwise.
    pub origin: &'a str,
}

/// Take a snapshot under the vault's writer lock.
pub fn backup(vault: &Vault, opts: &BackupOptions) -> Result<Manifest> {
    let _lock = vault.lock_for_write()?;
    backup_locked(vault, opts)
}

struct Job {
    entry: usize,
    offset: u64,
    len: usize,
}

struct Done {
    job: usize,
    data: Vec<u8>,
    hash: [u8; 32],
}

/// Take a snapshot; the caller holds the writer lock.
pub fn backup_locked(vault: &Vault, opts: &BackupOptions) -> Result<Manifest> {
    naming::validate_name(opts.name).context("invalid backup name")?;
    if !(1..=22).contains(&opts.compression_level) {
        bail!(
            "compression_level must be between 1 and 22 (got {})",
            opts.compression_level
        );
    }
    let src = opts.source;
    sources::check_vault_outside(&src.path, vault.root())?;
    let found = walk::walk(&src.path)?;
    let root_is_dir = found[0].kind == Kind::Dir;
    let tfstate = match src.kind {
        SourceKind::Tfstate => {
            if found[0].kind != Kind::File {
                bail!("tfstate {} is not a regular file", src.path.display());
            }
            Some(tfstate::inspect(&src.path)?)
        }
        SourceKind::Path | SourceKind::Postgres => None,
    };
    let source_path = src
        .path
        .to_str()
        .ok_or_else(|| anyhow!("source path {} is not UTF-8", src.path.display()))?
        .to_string();

    // The previous snapshot of this name, if intact, lends unchanged files.
    let mut verifier = Verifier::new(vault, Depth::Quick);
    let prev = match vault.latest_id(opts.name)? {
        Some(id) => vault
            .load(&id)
            .ok()
            .filter(|m| m.source.path == source_path && verifier.check_snapshot(m).is_empty()),
        None => None,
    };
    let prev_files: HashMap<&str, &Entry> = prev
        .iter()
        .flat_map(|m| m.entries.iter())
        .filter(|e| e.kind == EntryKind::File && e.ino != 0)
        .map(|e| (e.path.as_str(), e))
        .collect();

    let now = Utc::now();
    let mut existing = vault.snapshot_ids(Some(opts.name))?;
    existing.extend(opts.reserved.iter().cloned());
    let id = naming::next_id(opts.name, now, existing.iter().map(String::as_str));

    let mut packs: Vec<PackRef> = Vec::new();
    let mut pack_slot: HashMap<String, u32> = HashMap::new();
    let mut entries: Vec<Entry> = Vec::with_capacity(found.len());
    let mut jobs: Vec<Job> = Vec::new();
    let mut paths: Vec<&std::path::Path> = Vec::with_capacity(found.len());
    let (mut file_count, mut size_bytes) = (0u64, 0u64);

    for f in &found {
        let meta = &f.meta;
        let key = StatKey::of(meta);
        let mut e = Entry {
            path: f.rel.clone(),
            kind: match f.kind {
                Kind::File => EntryKind::File,
                Kind::Dir => EntryKind::Dir,
                Kind::Symlink => EntryKind::Symlink,
            },
            mode: meta.mode() & 0o7777,
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            size: 0,
            hash: None,
            chunks: Vec::new(),
            target: None,
            ctime: 0,
            ctime_nsec: 0,
            ino: 0,
        };
        match f.kind {
            Kind::Symlink => {
                let t = std::fs::read_link(&f.abs)
                    .with_context(|| format!("could not read link {}", f.abs.display()))?;
                e.target = Some(
                    t.to_str()
                        .ok_or_else(|| anyhow!("link target of {} is not UTF-8", f.abs.display()))?
                        .to_string(),
                );
            }
            Kind::Dir => {}
            Kind::File => {
                file_count += 1;
                size_bytes += key.size;
                e.size = key.size;
                e.ctime = key.ctime;
                e.ctime_nsec = key.ctime_nsec;
                e.ino = key.ino;
                let reuse = prev_files.get(f.rel.as_str()).filter(|p| {
                    p.size == key.size
                        && p.mtime == key.mtime
                        && p.mtime_nsec as i64 == key.mtime_nsec
                        && p.ctime == key.ctime
                        && p.ctime_nsec == key.ctime_nsec
                        && p.ino == key.ino
                });
                if let (Some(p), Some(prev)) = (reuse, prev.as_ref()) {
                    e.hash = p.hash.clone();
                    for c in &p.chunks {
                        let pr = &prev.packs[c.pack as usize];
                        let slot = *pack_slot.entry(pr.id.clone()).or_insert_with(|| {
                            packs.push(pr.clone());
                            (packs.len() - 1) as u32
                        });
                        e.chunks.push(Chunk {
                            pack: slot,
                            ..c.clone()
                        });
                    }
                } else {
                    let mut off = 0;
                    while off < key.size {
                        let len = (key.size - off).min(CHUNK) as usize;
                        jobs.push(Job {
                            entry: entries.len(),
                            offset: off,
                            len,
                        });
                        off += len as u64;
                    }
                }
            }
        }
        entries.push(e);
        paths.push(&f.abs);
    }

    // Compress and write what changed.
    let mut chunk_hashes: HashMap<usize, Vec<[u8; 32]>> = HashMap::new();
    let mut added_bytes = 0;
    if !jobs.is_empty() {
        let new_slot = packs.len() as u32;
        let (pack, placed) = write_pack(vault, &id, &jobs, &paths, opts)?;
        added_bytes = pack.size;
        packs.push(pack);
        // Jobs were made in file order, so pushing them in job order keeps each file's
        // chunks in file order whatever order the workers finished in.
        for (j, (offset, clen, hash)) in jobs.iter().zip(placed) {
            entries[j.entry].chunks.push(Chunk {
                pack: new_slot,
                offset,
                clen,
                ulen: j.len as u32,
                hash: hex(&hash),
            });
            chunk_hashes.entry(j.entry).or_default().push(hash);
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if e.kind == EntryKind::File && e.hash.is_none() {
            let hs = chunk_hashes.remove(&i).unwrap_or_default();
            e.hash = Some(file_digest(&hs, e.size));
        }
    }

    let mut m = Manifest {
        format: FORMAT,
        id: id.clone(),
        name: opts.name.to_string(),
        created_at: now,
        source: match &opts.postgres {
            // The dump file was a temporary; the snapshot names the database.
            Some(pg) => SourceInfo {
                kind: SourceKind::Postgres,
                path: format!(
                    "postgres://{}@{}:{}/{}",
                    pg.user, pg.host, pg.port, pg.database
                ),
                is_dir: false,
            },
            None => SourceInfo {
                kind: src.kind,
                path: source_path,
                is_dir: root_is_dir,
            },
        },
        tfstate,
        postgres: opts.postgres.clone(),
        origin: opts.origin.to_string(),
        compression_level: opts.compression_level,
        file_count,
        size_bytes,
        added_bytes,
        packs,
        entries,
        checksum: String::new(),
    };
    m.seal()?;
    if let Some(p) = m.packs.last().filter(|p| p.id == id) {
        verifier.remember(&p.id, &p.hash);
    }
    crate::atomic::write_json(&vault.manifest_path(&id), &m)?;
    tracing::info!(snapshot = %id, files = file_count, bytes = size_bytes, added = added_bytes, "snapshot complete");
    Ok(m)
}

fn hex(h: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*h).to_hex().to_string()
}

/// Where one job's output landed: offset in the pack, compressed length, hash of the plain data.
type Placement = (u64, u32, [u8; 32]);

/// Run the jobs on worker threads and append their output to a new pack in arrival order.
/// Returns the pack and, per job, (offset, compressed length, hash of the plain data).
fn write_pack(
    vault: &Vault,
    id: &str,
    jobs: &[Job],
    paths: &[&std::path::Path],
    opts: &BackupOptions,
) -> Result<(PackRef, Vec<Placement>)> {
    let final_path = vault.pack_path(id);
    let tmp_path = vault
        .packs_dir()
        .join(format!(".{id}.pack.tmp-{}", crate::atomic::unique_suffix()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .with_context(|| format!("could not create {}", tmp_path.display()))?;
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut pack_hash = blake3::Hasher::new();
        let mut placed = vec![(0u64, 0u32, [0u8; 32]); jobs.len()];
        let mut offset = 0u64;
        let total: u64 = jobs.iter().map(|j| j.len as u64).sum();
        let bar = crate::progress::bytes(opts.progress, total, "backup");
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8);
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let level = opts.compression_level;
        let (tx, rx) = sync_channel::<Result<Done>>(workers * 2);
        std::thread::scope(|s| -> Result<()> {
            for _ in 0..workers {
                let tx = tx.clone();
                let (next, stop) = (&next, &stop);
                s.spawn(move || {
                    let mut comp = match zstd::bulk::Compressor::new(level) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(anyhow!("zstd: {e}")));
                            return;
                        }
                    };
                    let mut open: Option<(usize, File)> = None;
                    let mut buf = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let r = run_job(job, paths, &mut open, &mut buf, &mut comp)
                            .map(|(data, hash)| Done { job: i, data, hash });
                        let failed = r.is_err();
                        if tx.send(r).is_err() || failed {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for msg in rx {
                let done = match msg {
                    Ok(d) => d,
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                out.write_all(&done.data)
                    .with_context(|| format!("could not write {}", tmp_path.display()))?;
                pack_hash.update(&done.data);
                placed[done.job] = (offset, done.data.len() as u32, done.hash);
                offset += done.data.len() as u64;
                bar.inc(jobs[done.job].len as u64);
            }
            Ok(())
        })?;
        bar.finish_and_clear();
        let file = out
            .into_inner()
            .map_err(|e| anyhow!("could not write {}: {}", tmp_path.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("could not fsync {}", tmp_path.display()))?;
        crate::atomic::rename_durable(&tmp_path, &final_path)?;
        Ok((
            PackRef {
                id: id.to_string(),
                size: offset,
                hash: pack_hash.finalize().to_hex().to_string(),
            },
            placed,
        ))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    result
}

fn run_job(
    job: &Job,
    paths: &[&std::path::Path],
    open: &mut Option<(usize, File)>,
    buf: &mut Vec<u8>,
    comp: &mut zstd::bulk::Compressor,
) -> Result<(Vec<u8>, [u8; 32])> {
    let path = paths[job.entry];
    if open.as_ref().map(|o| o.0) != Some(job.entry) {
        let f = File::open(path).with_context(|| format!("could not open {}", path.display()))?;
        *open = Some((job.entry, f));
    }
    let Some((_, f)) = open.as_ref() else {
        bail!("internal error: no open file for {}", path.display())
    };
    buf.resize(job.len, 0);
    f.read_exact_at(buf, job.offset).with_context(|| {
        format!(
            "could not read {} at offset {} (did it shrink during the backup?)",
            path.display(),
            job.offset
        )
    })?;
    let hash = *blake3::hash(buf).as_bytes();
    let data = comp
        .compress(buf)
        .with_context(|| format!("could not compress {}", path.display()))?;
    Ok((data, hash))
}
