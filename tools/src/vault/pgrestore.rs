//! Restoring a PostgreSQL snapshot: unpack the dump (hash-checked like any file) into a
//! private temporary directory, then load it with `pg_restore` / `psql` in one transaction,
//! into a new database or over the original after a safety snapshot of it.

use super::manifest::Manifest;
use super::policy::Policy;
use super::restore::{restore, RestoreOptions};
use super::Vault;
use crate::sources::postgres::{Pg, PgConfig};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PgRestoreReport {
    pub snapshot_id: String,
    pub database: String,
    pub server: String,
    /// The snapshot of the database taken before it was overwritten.
    pub safety_snapshot: Option<String>,
    pub seconds: f64,
}

/// The connection a snapshot was taken from, with the password from `password_file` (or
/// the stored policy's, or the environment).
pub fn config_for(vault: &Vault, m: &Manifest, password_file: Option<PathBuf>) -> Result<PgConfig> {
    let Some(p) = &m.postgres else {
        bail!("snapshot {} is not a PostgreSQL snapshot", m.id);
    };
    let stored = vault.load_policy(&m.name)?.and_then(|pol| pol.postgres);
    let sslmode = stored.as_ref().and_then(|s| s.sslmode.clone());
    Ok(PgConfig {
        host: p.host.clone(),
        port: p.port,
        database: p.database.clone(),
        user: p.user.clone(),
        password_file: password_file
            .map(|f| f.display().to_string())
            .or_else(|| stored.and_then(|s| s.password_file)),
        password_managed: false,
        dump_format: p.dump_format.clone(),
        sslmode,
    })
}

/// Unpack the snapshot's dump into a temporary directory; returns (dir guard, dump path).
fn unpack(vault: &Vault, m: &Manifest) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix(".localdr-pgrestore-")
        .tempdir()
        .context("could not create a temporary directory")?;
    let file = dir.path().join("dump");
    restore(
        vault,
        m,
        &RestoreOptions {
            target: Some(&file),
            force: true,
            progress: false,
        },
    )?;
    Ok((dir, file))
}

/// Restore into `to_database` (which must not exist) or, when `None`, over the original
/// after a safety snapshot named `<name>.pre-restore`.
pub fn restore_database(
    vault: &Vault,
    m: &Manifest,
    cfg: PgConfig,
    to_database: Option<&str>,
) -> Result<PgRestoreReport> {
    let start = Instant::now();
    let format = cfg.dump_format.clone();
    let pg = Pg::new(cfg.clone(), None)?;
    pg.check()?;
    let (_dir, dump) = unpack(vault, m)?;
    let server = format!("{}:{}", cfg.host, cfg.port);
    match to_database {
        Some(db) => {
            if pg.database_exists(db)? {
                bail!(
                    "database \"{db}\" already exists on {server}: choose a new name for --to-database (or drop it first)"
                );
            }
            pg.create_database(db)?;
            if let Err(e) = pg.restore(&dump, &format, db, false) {
                let _ = pg.drop_database(db);
                return Err(e).context(format!(
                    "restore into the new database \"{db}\" failed; it was removed"
                ));
            }
            Ok(PgRestoreReport {
                snapshot_id: m.id.clone(),
                database: db.to_string(),
                server,
                safety_snapshot: None,
                seconds: start.elapsed().as_secs_f64(),
            })
        }
        None => {
            // Never overwrite without a way back: dump what is there now first.
            let safety = Policy {
                retention: Some(super::retention::Retention {
                    keep_last: Some(3),
                    ..Default::default()
                }),
                postgres: Some(cfg.clone()),
                ..Policy::new(
                    &format!("{}.pre-restore", m.name),
                    crate::sources::SourceKind::Postgres,
                    cfg.url(),
                )
            };
            let safety_report = super::run::run_as(vault, &safety, false, false, "pre-restore")
                .context(
                    "could not take the safety snapshot of the database; nothing was changed",
                )?;
            pg.restore(&dump, &format, &cfg.database, true).with_context(|| {
                format!(
                    "restore over \"{}\" failed (it ran in one transaction, so the database is as it was); the safety snapshot is {}",
                    cfg.database, safety_report.manifest.id
                )
            })?;
            Ok(PgRestoreReport {
                snapshot_id: m.id.clone(),
                database: cfg.database.clone(),
                server,
                safety_snapshot: Some(safety_report.manifest.id),
                seconds: start.elapsed().as_secs_f64(),
            })
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Drill {
    pub backup: String,
    pub snapshot_id: String,
    pub kind: String,
    /// Age of the snapshot: the data a disaster now would lose.
    pub rpo_seconds: f64,
    /// Time the restore took.
    pub rto_seconds: f64,
    pub rpo_objective_seconds: Option<f64>,
    pub rto_objective_seconds: Option<f64>,
    pub checks: Vec<String>,
    pub problems: Vec<String>,
    pub passed: bool,
}

/// Restore the newest snapshot of `name` into a scratch target, check it, remove it, and
/// measure RTO and RPO against the objectives (`rpo`/`rto` from the policy unless given).
pub fn drill(
    vault: &Vault,
    name: &str,
    rpo: Option<Duration>,
    rto: Option<Duration>,
    password_file: Option<PathBuf>,
) -> Result<Drill> {
    let (good, _) = {
        let _l = vault.lock_for_read()?;
        vault.manifests(Some(name))?
    };
    let Some(m) = good.last() else {
        bail!("no good snapshot of {name} in {}", vault.root().display());
    };
    let policy = vault.load_policy(name)?;
    let obj = |flag: Option<Duration>, stored: Option<String>| -> Option<Duration> {
        flag.or_else(|| stored.and_then(|s| crate::duration::parse(&s).ok()))
    };
    let rpo = obj(rpo, policy.as_ref().and_then(|p| p.rpo.clone()));
    let rto = obj(rto, policy.as_ref().and_then(|p| p.rto.clone()));
    let age = (chrono::Utc::now() - m.created_at)
        .to_std()
        .unwrap_or_default();
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    let start = Instant::now();
    if let Some(snap) = &m.postgres {
        let cfg = config_for(vault, m, password_file)?;
        let pg = Pg::new(cfg.clone(), None)?;
        pg.check()?;
        let scratch = format!("localdr_drill_{}", std::process::id());
        let (_dir, dump) = unpack(vault, m)?;
        pg.drop_database(&scratch)?;
        pg.create_database(&scratch)?;
        let r = pg.restore(&dump, &cfg.dump_format, &scratch, false);
        let elapsed = start.elapsed();
        let counts = r.and_then(|_| pg.table_counts(&scratch));
        let _ = pg.drop_database(&scratch);
        let counts = counts?;
        let expected = &snap.row_counts;
        for (t, n) in expected {
            match counts.get(t) {
                Some(got) if got == n => checks.push(format!("{t}: {n} rows")),
                Some(got) => problems.push(format!("{t}: {got} rows restored, {n} at backup")),
                None => problems.push(format!("{t}: missing after restore")),
            }
        }
        checks.push(format!(
            "restored into scratch database {scratch} and dropped it"
        ));
        return Ok(finish(
            name, m, "postgres", age, elapsed, rpo, rto, checks, problems,
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix(".localdr-drill-")
        .tempdir()
        .context("could not create a scratch directory")?;
    let target = dir.path().join("restored");
    let rep = restore(
        vault,
        m,
        &RestoreOptions {
            target: Some(&target),
            force: true,
            progress: false,
        },
    )?;
    let elapsed = start.elapsed();
    checks.push(format!(
        "{} files, {} bytes restored and matched the manifest's hashes",
        rep.files, rep.bytes
    ));
    Ok(finish(
        name,
        m,
        m.source.kind.as_str(),
        age,
        elapsed,
        rpo,
        rto,
        checks,
        problems,
    ))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    name: &str,
    m: &Manifest,
    kind: &str,
    age: Duration,
    elapsed: Duration,
    rpo: Option<Duration>,
    rto: Option<Duration>,
    checks: Vec<String>,
    mut problems: Vec<String>,
) -> Drill {
    if let Some(o) = rpo {
        if age > o {
            problems.push(format!(
                "RPO missed: the newest snapshot is {age:.0?} old, objective {o:?}"
            ));
        }
    }
    if let Some(o) = rto {
        if elapsed > o {
            problems.push(format!(
                "RTO missed: the restore took {elapsed:.1?}, objective {o:?}"
            ));
        }
    }
    Drill {
        backup: name.to_string(),
        snapshot_id: m.id.clone(),
        kind: kind.to_string(),
        rpo_seconds: age.as_secs_f64(),
        rto_seconds: elapsed.as_secs_f64(),
        rpo_objective_seconds: rpo.map(|d| d.as_secs_f64()),
        rto_objective_seconds: rto.map(|d| d.as_secs_f64()),
        checks,
        passed: problems.is_empty(),
        problems,
    }
}
