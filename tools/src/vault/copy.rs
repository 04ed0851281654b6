//! DR copies: a snapshot's packs and manifest copied to a second vault. Snapshot files are
//! immutable, so a copy is a plain file copy plus a hash check at the destination, not a
//! re-encode; packs already present and intact in the destination are skipped.

use super::manifest::Manifest;
use super::verify::{hash_file, Depth, Verifier};
use super::Vault;
use anyhow::{bail, Context, Result};
use std::fs::File;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    pub snapshot_id: String,
    pub vault: String,
    pub packs_copied: u64,
    pub bytes_copied: u64,
}

/// Copy snapshot `m` (already loaded from `src`) into `dst`. The caller holds `dst`'s
/// writer lock and at least a reader lock on `src`.
pub fn copy_locked(src: &Vault, m: &Manifest, dst: &Vault) -> Result<CopyReport> {
    if src.root() == dst.root() {
        bail!(
            "the copy vault {} is the same as the primary vault",
            dst.root().display()
        );
    }
    let mut report = CopyReport {
        snapshot_id: m.id.clone(),
        vault: dst.root().display().to_string(),
        ..Default::default()
    };
    let mut dst_check = Verifier::new(dst, Depth::Quick);
    for p in &m.packs {
        if dst_check.check_pack(p).is_ok() {
            continue;
        }
        let from = src.pack_path(&p.id);
        let to = dst.pack_path(&p.id);
        let tmp = dst.packs_dir().join(format!(
            ".{}.pack.tmp-{}",
            p.id,
            crate::atomic::unique_suffix()
        ));
        let r = (|| -> Result<()> {
            std::fs::copy(&from, &tmp).with_context(|| {
                format!("could not copy {} to {}", from.display(), tmp.display())
            })?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("could not fsync {}", tmp.display()))?;
            let got = hash_file(&tmp)?;
            if got != p.hash {
                bail!(
                    "pack {} does not match its checksum after copying (the source vault may be \
                     damaged: run `localdr verify --vault {}`)",
                    p.id,
                    src.root().display()
                );
            }
            crate::atomic::rename_durable(&tmp, &to)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        dst_check.remember(&p.id, &p.hash);
        report.packs_copied += 1;
        report.bytes_copied += p.size;
    }
    crate::atomic::write_json(&dst.manifest_path(&m.id), m)?;
    Ok(report)
}

/// Copy snapshot `id` from `src` to `dst`, taking both locks.
pub fn copy_snapshot(src: &Vault, id: &str, dst: &Vault) -> Result<CopyReport> {
    let _r = src.lock_for_read()?;
    let m = src.load(id)?;
    let _w = dst.lock_for_write()?;
    copy_locked(src, &m, dst)
}
