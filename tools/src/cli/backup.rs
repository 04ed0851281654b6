//! `localdr backup`: a snapshot by flags, or by the policy stored in the vault for `--name`.

use super::{print_json, RetentionArgs, VaultArg};
use crate::sources::{self, SourceKind};
use crate::vault::policy::{CopyPolicy, Policy};
use crate::vault::run;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Backup name: the snapshot name prefix (`<name>_YYYY-MM-DD_HH-MM-SS`).
    #[arg(long)]
    pub name: String,
    /// A file or directory to back up.
    #[arg(long, conflicts_with = "tfstate")]
    pub path: Option<PathBuf>,
    /// A Terraform state file to back up (validated; serial and lineage recorded).
    #[arg(long, conflicts_with = "postgres")]
    pub tfstate: Option<PathBuf>,
    /// A PostgreSQL database to back up with pg_dump (the password comes from
    /// --pg-password-file, PGPASSWORD or ~/.pgpass; never from an argument).
    #[arg(long, value_name = "DATABASE", conflicts_with = "path")]
    pub postgres: Option<String>,
    #[command(flatten)]
    pub pg: PgArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Keep a verified copy in this DR vault (repeatable).
    #[arg(long = "copy-to", value_name = "DIR")]
    pub copy_to: Vec<PathBuf>,
    /// zstd level, 1 (fast) to 22 (small).
    #[arg(long, default_value_t = 3)]
    pub compression_level: i32,
    /// Store these settings as the vault's policy for NAME (what the agent and a later
    /// `localdr backup --name NAME` with no source will use).
    #[arg(long)]
    pub save_policy: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where a PostgreSQL database is (shared by `backup`, `restore` and `drill`).
#[derive(Args, Debug, Clone)]
pub struct PgArgs {
    /// PostgreSQL host.
    #[arg(long, default_value = "127.0.0.1")]
    pub pg_host: String,
    /// PostgreSQL port.
    #[arg(long, default_value_t = 5432)]
    pub pg_port: u16,
    /// PostgreSQL user.
    #[arg(long, default_value = "postgres")]
    pub pg_user: String,
    /// A file whose first line is the password.
    #[arg(long, value_name = "FILE")]
    pub pg_password_file: Option<PathBuf>,
    /// `custom` (pg_dump -Fc) or `plain` (SQL).
    #[arg(long, default_value = "custom", value_parser = ["custom", "plain"])]
    pub dump_format: String,
    /// libpq's sslmode (default: libpq's, `prefer`, or PGSSLMODE).
    #[arg(long, value_parser = crate::sources::postgres::SSLMODES)]
    pub pg_sslmode: Option<String>,
}

impl PgArgs {
    pub fn config(&self, database: &str) -> Result<crate::sources::postgres::PgConfig> {
        Ok(crate::sources::postgres::PgConfig {
            host: self.pg_host.clone(),
            port: self.pg_port,
            database: database.to_string(),
            user: self.pg_user.clone(),
            password_file: self
                .pg_password_file
                .as_ref()
                .map(|p| sources::absolute(p).map(|p| p.display().to_string()))
                .transpose()?,
            password_managed: false,
            dump_format: self.dump_format.clone(),
            sslmode: self.pg_sslmode.clone(),
        })
    }
}

pub fn run(a: BackupArgs) -> Result<i32> {
    let vault = a.vault.open()?;
    if let Some(db) = &a.postgres {
        let cfg = a.pg.config(db)?;
        let policy = Policy {
            retention: a.retention.to_retention(),
            copies: copies(&a)?,
            compression_level: a.compression_level,
            postgres: Some(cfg.clone()),
            ..Policy::new(&a.name, SourceKind::Postgres, cfg.url())
        };
        return report(&a, run::run(&vault, &policy, a.save_policy, !a.json)?);
    }
    let (policy, save) = match (&a.path, &a.tfstate) {
        (None, None) => match vault.load_policy(&a.name)? {
            Some(p) => (p, false),
            None => bail!(
                "no --path or --tfstate given and vault {} has no policy named {:?}",
                vault.root().display(),
                a.name
            ),
        },
        (path, tfstate) => {
            let (kind, p) = match (path, tfstate) {
                (Some(p), _) => (SourceKind::Path, p),
                (_, Some(p)) => (SourceKind::Tfstate, p),
                _ => unreachable!("matched above"),
            };
            let abs = sources::absolute(p)?;
            let copies = copies(&a)?;
            (
                Policy {
                    retention: a.retention.to_retention(),
                    copies,
                    compression_level: a.compression_level,
                    ..Policy::new(&a.name, kind, abs.display().to_string())
                },
                a.save_policy,
            )
        }
    };
    report(&a, run::run(&vault, &policy, save, !a.json)?)
}

fn copies(a: &BackupArgs) -> Result<Vec<CopyPolicy>> {
    a.copy_to
        .iter()
        .map(|c| {
            Ok(CopyPolicy {
                vault: sources::absolute(c)?.display().to_string(),
                retention: None,
            })
        })
        .collect()
}

fn report(a: &BackupArgs, report: run::RunReport) -> Result<i32> {
    if a.json {
        print_json(&serde_json::json!({
            "snapshot_id": report.manifest.id,
            "created_at": report.manifest.created_at,
            "file_count": report.manifest.file_count,
            "size_bytes": report.manifest.size_bytes,
            "added_bytes": report.manifest.added_bytes,
            "checksum": report.manifest.checksum,
            "tfstate": report.manifest.tfstate,
            "postgres": report.manifest.postgres,
            "pruned": report.pruned,
            "copies": report.copies,
            "snapshots": report.snapshots,
        }))?;
    } else {
        let m = &report.manifest;
        println!(
            "snapshot {} — {} files, {} ({} new in vault)",
            m.id,
            m.file_count,
            super::human_bytes(m.size_bytes),
            super::human_bytes(m.added_bytes)
        );
        if let Some(t) = &m.tfstate {
            println!("tfstate serial {} lineage {}", t.serial, t.lineage);
        }
        if let Some(p) = &m.postgres {
            println!(
                "database {} on {}:{} (PostgreSQL {}), {} dump",
                p.database, p.host, p.port, p.server_version, p.dump_format
            );
        }
        for c in &report.copies {
            println!(
                "copied to {} ({} packs, {})",
                c.vault,
                c.packs_copied,
                super::human_bytes(c.bytes_copied)
            );
        }
        if !report.pruned.is_empty() {
            println!("retention removed: {}", report.pruned.join(", "));
        }
    }
    Ok(0)
}
