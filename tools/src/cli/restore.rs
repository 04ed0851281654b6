//! `localdr restore`: pick a snapshot (menu, number, id, latest, or point in time), check it,
//! and put it back — beside or over the original, keeping a safety copy of what was there.

use super::{human_bytes, print_json, VaultArg};
use crate::vault::manifest::Manifest;
use crate::vault::restore::{restore, RestoreOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Only consider snapshots of this backup name.
    #[arg(long)]
    pub name: Option<String>,
    /// Restore this snapshot id.
    #[arg(long, conflicts_with_all = ["latest", "at", "number"])]
    pub id: Option<String>,
    /// Restore snapshot number N as shown by `localdr list`.
    #[arg(long, conflicts_with_all = ["latest", "at"])]
    pub number: Option<usize>,
    /// Restore the newest snapshot.
    #[arg(long, conflicts_with = "at")]
    pub latest: bool,
    /// Restore the newest snapshot taken at or before this RFC 3339 time.
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Restore here instead of the original path.
    #[arg(long, value_name = "PATH")]
    pub to: Option<PathBuf>,
    /// Restore a Terraform state even if its lineage differs or its serial is lower.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (menu mode).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// PostgreSQL: restore into this new database instead of over the original (which is
    /// first dumped as a safety snapshot `<name>.pre-restore`).
    #[arg(long, value_name = "NAME")]
    pub to_database: Option<String>,
    /// PostgreSQL: a file whose first line is the password (else the stored policy's,
    /// PGPASSWORD or ~/.pgpass).
    #[arg(long, value_name = "FILE")]
    pub pg_password_file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RestoreArgs) -> Result<i32> {
    let vault = a.vault.open_existing()?;
    let (good, _) = {
        let _l = vault.lock_for_read()?;
        vault.manifests(a.name.as_deref())?
    };
    if good.is_empty() {
        bail!("no snapshots to restore in {}", vault.root().display());
    }
    let chosen: Manifest = if let Some(id) = &a.id {
        vault.load(id)?
    } else if let Some(n) = a.number {
        match good.get(n.wrapping_sub(1)) {
            Some(m) => m.clone(),
            None => bail!(
                "--number {n} is out of range: there are {} snapshots (see `localdr list`)",
                good.len()
            ),
        }
    } else if a.latest {
        one_name(&good, &a.name)?;
        good.last().cloned().expect("non-empty checked above")
    } else if let Some(at) = &a.at {
        let t = chrono::DateTime::parse_from_rfc3339(at)
            .with_context(|| {
                format!("--at {at:?} is not an RFC 3339 time (e.g. 2025-06-19T08:00:00Z)")
            })?
            .with_timezone(&chrono::Utc);
        one_name(&good, &a.name)?;
        match crate::vault::pick::at_or_before(&good, t) {
            Some(m) => m.clone(),
            None => bail!(
                "no snapshot was taken at or before {at}; the oldest is {}",
                good[0].created_at.to_rfc3339()
            ),
        }
    } else {
        match menu(&good, &a)? {
            Some(m) => m,
            None => {
                eprintln!("restore cancelled; nothing was changed");
                return Ok(1);
            }
        }
    };
    if chosen.postgres.is_some() {
        return restore_pg(&vault, &chosen, &a);
    }
    let report = restore(
        &vault,
        &chosen,
        &RestoreOptions {
            target: a.to.as_deref(),
            force: a.force,
            progress: !a.json,
        },
    )?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "restored {} to {} ({} files, {})",
            report.snapshot_id,
            report.target.display(),
            report.files,
            human_bytes(report.bytes)
        );
        if let Some(s) = &report.safety_copy {
            println!("what was there before is kept at {}", s.display());
        }
    }
    Ok(0)
}

/// The seed's safety rules: say what goes where, ask, then restore in one transaction.
fn restore_pg(vault: &crate::vault::Vault, m: &Manifest, a: &RestoreArgs) -> Result<i32> {
    let cfg = crate::vault::pgrestore::config_for(vault, m, a.pg_password_file.clone())?;
    let target = a
        .to_database
        .clone()
        .unwrap_or_else(|| cfg.database.clone());
    let how = if a.to_database.is_some() {
        "a NEW database".to_string()
    } else {
        format!(
            "the ORIGINAL database (dumped first as {}.pre-restore)",
            m.name
        )
    };
    let mut err = std::io::stderr();
    writeln!(
        err,
        "Snapshot {} ({}, taken {}) of database {}\n  -> into {how} \"{target}\" on {}:{}",
        m.id,
        human_bytes(m.size_bytes),
        m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        m.postgres
            .as_ref()
            .map(|p| p.database.as_str())
            .unwrap_or("?"),
        cfg.host,
        cfg.port
    )?;
    if !a.yes {
        write!(err, "Type 'yes' to continue: ")?;
        err.flush()?;
        let mut ans = String::new();
        std::io::stdin().lock().read_line(&mut ans)?;
        if ans.trim() != "yes" {
            eprintln!("restore cancelled; nothing was changed");
            return Ok(1);
        }
    }
    let r = crate::vault::pgrestore::restore_database(vault, m, cfg, a.to_database.as_deref())?;
    if a.json {
        print_json(&r)?;
    } else {
        println!(
            "restored {} into database \"{}\" on {} in {:.1} s",
            r.snapshot_id, r.database, r.server, r.seconds
        );
        if let Some(s) = &r.safety_snapshot {
            println!("the database as it was is kept as snapshot {s}");
        }
    }
    Ok(0)
}

/// `--latest` and `--at` only make sense within one backup name.
fn one_name(good: &[Manifest], name: &Option<String>) -> Result<()> {
    if name.is_none() {
        let first = &good[0].name;
        if let Some(other) = good.iter().find(|m| &m.name != first) {
            bail!(
                "the vault holds several backup names ({first}, {}, …): give --name",
                other.name
            );
        }
    }
    Ok(())
}

/// The numbered menu of the original restore script, then an explicit confirmation.
fn menu(good: &[Manifest], a: &RestoreArgs) -> Result<Option<Manifest>> {
    let stdin = std::io::stdin();
    let mut err = std::io::stderr();
    if !stdin.is_terminal() {
        tracing::info!("stdin is not a terminal; reading the menu answer from it");
    }
    writeln!(err, "Snapshots in this vault:")?;
    for (i, m) in good.iter().enumerate() {
        writeln!(
            err,
            "  {:>3}) {}  {}  {} files, {}",
            i + 1,
            m.id,
            m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            m.file_count,
            human_bytes(m.size_bytes)
        )?;
    }
    write!(err, "Snapshot number to restore (1-{}): ", good.len())?;
    err.flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let n: usize = match line.trim().parse() {
        Ok(n) if (1..=good.len()).contains(&n) => n,
        _ => bail!(
            "{:?} is not a number between 1 and {}",
            line.trim(),
            good.len()
        ),
    };
    let m = good[n - 1].clone();
    if !a.yes {
        let target =
            a.to.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| m.source.path.clone());
        write!(
            err,
            "Restore {} to {}? What is there now is kept as a safety copy. Type 'yes' to continue: ",
            m.id, target
        )?;
        err.flush()?;
        let mut ans = String::new();
        stdin.lock().read_line(&mut ans)?;
        if ans.trim() != "yes" {
            return Ok(None);
        }
    }
    Ok(Some(m))
}
