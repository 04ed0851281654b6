//! `localdr forget`: remove snapshots by id (a damaged one after a repair, say). Packs no
//! remaining snapshot references are deleted with them.

use super::{print_json, VaultArg};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Snapshot ids to remove.
    #[arg(long = "id", required = true)]
    pub ids: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ForgetArgs) -> Result<i32> {
    let vault = a.vault.open_existing()?;
    let _lock = vault.lock_for_write()?;
    for id in &a.ids {
        if !vault.manifest_path(id).exists() {
            bail!(
                "no snapshot {id} in {} (see `localdr list`)",
                vault.root().display()
            );
        }
    }
    for id in &a.ids {
        vault.forget(id)?;
    }
    let freed = vault.gc_packs()?;
    if a.json {
        print_json(&serde_json::json!({"removed": a.ids, "freed_bytes": freed}))?;
    } else {
        println!(
            "removed {} ({} freed)",
            a.ids.join(", "),
            super::human_bytes(freed)
        );
    }
    Ok(0)
}
