//! `localdr drill`: restore the newest snapshot into a scratch target, check it, remove
//! it, and report the measured RTO (restore time) and RPO (snapshot age) against the
//! objectives; exit 1 when a check or an objective fails.

use super::{print_json, VaultArg};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DrillArgs {
    #[command(flatten)]
    pub vault: VaultArg,
    /// The backup name to drill.
    #[arg(long)]
    pub backup: String,
    /// Recovery point objective (default: the policy's `rpo`), e.g. 15m.
    #[arg(long)]
    pub rpo: Option<String>,
    /// Recovery time objective (default: the policy's `rto`), e.g. 30m.
    #[arg(long)]
    pub rto: Option<String>,
    /// PostgreSQL: a file whose first line is the password.
    #[arg(long, value_name = "FILE")]
    pub pg_password_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DrillArgs) -> Result<i32> {
    let vault = a.vault.open_existing()?;
    let parse = |v: &Option<String>, flag: &str| {
        v.as_deref()
            .map(crate::duration::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
    };
    let d = crate::vault::pgrestore::drill(
        &vault,
        &a.backup,
        parse(&a.rpo, "--rpo")?,
        parse(&a.rto, "--rto")?,
        a.pg_password_file.clone(),
    )?;
    if a.json {
        print_json(&d)?;
    } else {
        let obj = |o: Option<f64>| {
            o.map(|s| format!(" (objective {s:.0} s)"))
                .unwrap_or_default()
        };
        println!("drill of {} using {} ({})", d.backup, d.snapshot_id, d.kind);
        println!(
            "  RTO measured: {:.2} s{}",
            d.rto_seconds,
            obj(d.rto_objective_seconds)
        );
        println!(
            "  RPO measured: {:.0} s{}",
            d.rpo_seconds,
            obj(d.rpo_objective_seconds)
        );
        for c in &d.checks {
            println!("  ok: {c}");
        }
        for p in &d.problems {
            println!("  FAILED: {p}");
        }
        println!("{}", if d.passed { "PASSED" } else { "FAILED" });
    }
    Ok(if d.passed { 0 } else { 1 })
}
