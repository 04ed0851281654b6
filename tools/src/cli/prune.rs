//! `localdr prune`: apply retention (flags, or the vault's stored policy for `--name`).

use super::{print_json, RetentionArgs, VaultArg};
use crate::vault::retention;
use crate::vault::run;
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Backup name whose snapshots to prune.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PruneArgs) -> Result<i32> {
    let vault = a.vault.open_existing()?;
    let policy = match a.retention.to_retention() {
        Some(r) => r,
        None => vault
            .load_policy(&a.name)?
            .and_then(|p| p.retention)
            .unwrap_or_default(),
    };
    let removed = if a.dry_run {
        let _l = vault.lock_for_read()?;
        let (good, _) = vault.manifests(Some(&a.name))?;
        let list: Vec<_> = good.iter().map(|m| (m.id.clone(), m.created_at)).collect();
        retention::select(&list, &policy)?
            .into_iter()
            .filter(|d| !d.keep)
            .map(|d| d.id)
            .collect()
    } else {
        run::prune(&vault, &a.name, &policy)?
    };
    if a.json {
        print_json(&serde_json::json!({"removed": removed, "dry_run": a.dry_run}))?;
    } else if removed.is_empty() {
        println!("nothing to remove");
    } else {
        let verb = if a.dry_run { "would remove" } else { "removed" };
        for id in &removed {
            println!("{verb} {id}");
        }
    }
    Ok(0)
}
