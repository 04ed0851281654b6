//! One policy run — snapshot, retention, DR copies with their retention — and the health
//! check that drift detection (`terraform plan`, `localdr verify`) is built on.

use super::copy::{copy_locked, CopyReport};
use super::manifest::Manifest;
use super::manifest::PgSnapshot;
use super::policy::Policy;
use super::retention::{self, Retention};
use super::snapshot::{backup_locked, BackupOptions};
use super::verify::{Depth, Verifier};
use super::Vault;
use crate::naming;
use crate::sources::postgres::Pg;
use crate::sources::{Source, SourceKind};
use anyhow::{Context, Result};
use std::path::Path;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub manifest: Manifest,
    pub pruned: Vec<String>,
    pub copies: Vec<CopyReport>,
    /// Snapshots of this name left in the primary vault.
    pub snapshots: usize,
}

/// Apply retention to the snapshots of `name`; the caller holds the writer lock.
pub fn prune_locked(vault: &Vault, name: &str, policy: &Retention) -> Result<Vec<String>> {
    let (good, _damaged) = vault.manifests(Some(name))?;
    let list: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        good.iter().map(|m| (m.id.clone(), m.created_at)).collect();
    let mut removed = Vec::new();
    for d in retention::select(&list, policy)? {
        if !d.keep {
            vault.forget(&d.id)?;
            removed.push(d.id);
        }
    }
    if !removed.is_empty() {
        vault.gc_packs()?;
    }
    Ok(removed)
}

/// Apply retention under a freshly taken writer lock.
pub fn prune(vault: &Vault, name: &str, policy: &Retention) -> Result<Vec<String>> {
    let _lock = vault.lock_for_write()?;
    prune_locked(vault, name, policy)
}

/// Take a snapshot by `policy`, apply its retention, refresh every DR copy.
pub fn run(vault: &Vault, policy: &Policy, save_policy: bool, progress: bool) -> Result<RunReport> {
    run_as(vault, policy, save_policy, progress, "")
}

/// `run`, recording what started it (`schedule` for the agent).
pub fn run_as(
    vault: &Vault,
    policy: &Policy,
    save_policy: bool,
    progress: bool,
    origin: &str,
) -> Result<RunReport> {
    let retention = policy.retention.clone().unwrap_or_default();
    retention.validate()?;
    // A database is dumped to a private temporary file first (outside the lock: a dump
    // can take long and holds no vault state), then stored like any file.
    let mut _staging = None;
    let mut pg_info = None;
    let source = match (policy.source_kind, &policy.postgres) {
        (SourceKind::Postgres, Some(cfg)) => {
            let pg = Pg::new(cfg.clone(), None)?;
            let dir = tempfile::Builder::new()
                .prefix(".localdr-dump-")
                .tempdir()
                .context("could not create a temporary directory for the dump")?;
            let file = dir.path().join(format!(
                "{}.{}",
                cfg.database,
                if cfg.dump_format == "plain" {
                    "sql"
                } else {
                    "dump"
                }
            ));
            // The server check (versions) and the row counts (for drills) run while the dump
            // does, not before and after it. A failed check explains a failed dump best.
            let (checked, dumped, counted) = std::thread::scope(|s| {
                let check = s.spawn(|| pg.check());
                let counts = s.spawn(|| pg.table_counts(&cfg.database));
                let dumped = pg.dump(&file);
                (check.join(), dumped, counts.join())
            });
            let info = checked.map_err(|_| anyhow::anyhow!("server check thread panicked"))??;
            dumped?;
            let row_counts =
                counted.map_err(|_| anyhow::anyhow!("row count thread panicked"))??;
            pg_info = Some(PgSnapshot {
                row_counts,
                host: cfg.host.clone(),
                port: cfg.port,
                database: cfg.database.clone(),
                user: cfg.user.clone(),
                dump_format: cfg.dump_format.clone(),
                server_version: info.server_version,
            });
            let s = Source::new(SourceKind::Path, &file)?;
            _staging = Some(dir);
            s
        }
        (SourceKind::Postgres, None) => {
            anyhow::bail!(
                "backup {} is a postgres source without connection settings",
                policy.name
            )
        }
        (kind, _) => Source::new(kind, &policy.source())?,
    };
    let _lock = vault.lock_for_write()?;
    let mut reserved = Vec::new();
    for c in &policy.copies {
        reserved.extend(Vault::at(&policy.resolve(&c.vault))?.snapshot_ids(Some(&policy.name))?);
    }
    let manifest = backup_locked(
        vault,
        &BackupOptions {
            name: &policy.name,
            source: &source,
            compression_level: policy.compression_level,
            progress,
            reserved: &reserved,
            postgres: pg_info,
            origin,
        },
    )?;
    // Only a backup that worked leaves a policy behind (import and the CLI trust it).
    if save_policy {
        vault.save_policy(policy)?;
    }
    let pruned = prune_locked(vault, &policy.name, &retention)?;
    let copies = refresh_copies(vault, policy, &manifest, &retention)?;
    let snapshots = vault.snapshot_ids(Some(&policy.name))?.len();
    Ok(RunReport {
        manifest,
        pruned,
        copies,
        snapshots,
    })
}

/// What is really in the vaults for one backup name.
#[derive(Debug, Clone)]
pub struct Health {
    /// The newest snapshot, when its manifest could be read.
    pub latest: Option<Manifest>,
    /// Snapshots of this name in the primary vault.
    pub count: usize,
    /// Why the backup is not valid; empty when it is.
    pub problems: Vec<String>,
}

/// Check the newest snapshot of `name` and its copies. `expected` is the snapshot id last
/// recorded (by Terraform): if it vanished and nothing newer replaced it, that is a problem.
pub fn health(
    vault: &Vault,
    name: &str,
    copies: &[&Path],
    expected: Option<&str>,
) -> Result<Health> {
    let _lock = vault.lock_for_read()?;
    let ids = vault.snapshot_ids(Some(name))?;
    let mut problems = Vec::new();
    let mut latest = None;
    let mut verifier = Verifier::new(vault, Depth::Quick);
    match ids.last() {
        None => problems.push(format!(
            "no snapshot of {name} in {}",
            vault.root().display()
        )),
        Some(id) => match verifier.check_id(id) {
            Ok(m) => latest = Some(m),
            Err(p) => {
                problems.extend(p);
                latest = vault.load(id).ok();
            }
        },
    }
    if let Some(exp) = expected {
        let exp_p = naming::parse_for(name, exp);
        let newest_p = ids.last().and_then(|id| naming::parse_for(name, id));
        if !ids.iter().any(|i| i == exp) && (newest_p.is_none() || newest_p < exp_p) {
            problems.push(format!("snapshot {exp} was deleted"));
        }
    }
    drop(verifier);
    if let Some(m) = &latest {
        for c in copies {
            let dst = Vault::at(c)?;
            let mut v = Verifier::new(&dst, Depth::Quick);
            match v.check_id(&m.id) {
                Ok(_) => {}
                Err(p) => problems.push(format!(
                    "DR copy of {} in {}: {}",
                    m.id,
                    c.display(),
                    p.join("; ")
                )),
            }
        }
    }
    Ok(Health {
        latest,
        count: ids.len(),
        problems,
    })
}

/// Copy snapshot `m` into every DR vault of `policy` and apply each copy's retention
/// (the primary's when it has none). The caller holds `vault`'s writer lock.
fn refresh_copies(
    vault: &Vault,
    policy: &Policy,
    m: &Manifest,
    retention: &Retention,
) -> Result<Vec<CopyReport>> {
    let mut reports = Vec::new();
    for c in &policy.copies {
        let dst = Vault::at(&policy.resolve(&c.vault))?;
        let _dst_lock = dst.lock_for_write()?;
        let rep = copy_locked(vault, m, &dst)
            .with_context(|| format!("DR copy to {} failed", c.vault))?;
        prune_locked(
            &dst,
            &policy.name,
            c.retention.as_ref().unwrap_or(retention),
        )?;
        reports.push(rep);
    }
    Ok(reports)
}

/// Bring vaults in line with `policy` without a new snapshot: store the policy, apply
/// retention, make sure every DR vault holds the newest snapshot. Returns the count left.
pub fn maintain(vault: &Vault, policy: &Policy) -> Result<usize> {
    let retention = policy.retention.clone().unwrap_or_default();
    retention.validate()?;
    let _lock = vault.lock_for_write()?;
    vault.save_policy(policy)?;
    prune_locked(vault, &policy.name, &retention)?;
    if let Some(id) = vault.latest_id(&policy.name)? {
        refresh_copies(vault, policy, &vault.load(&id)?, &retention)?;
    }
    Ok(vault.snapshot_ids(Some(&policy.name))?.len())
}

/// Delete every snapshot of `name` in `vault` (for `delete_snapshots_on_destroy`).
pub fn forget_all(vault: &Vault, name: &str) -> Result<usize> {
    if !vault.exists() {
        return Ok(0);
    }
    let _lock = vault.lock_for_write()?;
    let ids = vault.snapshot_ids(Some(name))?;
    for id in &ids {
        vault.forget(id)?;
    }
    vault.gc_packs()?;
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::SourceKind;

    /// A snapshot deleted by hand from the primary must not hand its id to the repair run:
    /// the DR vault still holds a copy of different data under that id.
    #[test]
    fn repair_after_a_deleted_snapshot_never_reuses_a_dr_id() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("state.txt");
        std::fs::write(&src, "one").unwrap();
        let policy = Policy {
            name: "s".into(),
            source_kind: SourceKind::Path,
            source_path: src.to_str().unwrap().into(),
            base_dir: None,
            retention: None,
            copies: vec![super::super::policy::CopyPolicy {
                vault: t.path().join("dr").to_str().unwrap().into(),
                retention: None,
            }],
            compression_level: 3,
            triggers: Default::default(),
            delete_snapshots_on_destroy: false,
            postgres: None,
            schedule: None,
            schedule_timezone: None,
            start_window: None,
            rpo: None,
            rto: None,
        };
        let vault = Vault::at(&t.path().join("v")).unwrap();
        let dr = Vault::at(&t.path().join("dr")).unwrap();
        let first = run(&vault, &policy, true, false).unwrap().manifest;
        std::fs::remove_file(vault.manifest_path(&first.id)).unwrap();
        std::fs::write(&src, "two").unwrap();
        let second = run(&vault, &policy, true, false).unwrap().manifest;
        assert_ne!(first.id, second.id);
        assert_eq!(dr.load(&first.id).unwrap().checksum, first.checksum);
        assert!(Verifier::new(&dr, Depth::Full)
            .check_snapshot(&dr.load(&first.id).unwrap())
            .is_empty());
    }
}
