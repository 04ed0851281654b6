//! `localdr copy`: copy snapshots to a DR vault (plain file copy + hash check at the
//! destination; packs already there are skipped).

use super::{human_bytes, print_json, VaultArg};
use crate::vault::copy::copy_snapshot;
use crate::vault::Vault;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CopyArgs {
    #[command(flatten)]
    pub vault: VaultArg,
    /// The destination (DR) vault.
    #[arg(long = "to-vault", value_name = "DIR")]
    pub to_vault: PathBuf,
    /// Copy only this snapshot (default: every snapshot, or every one of --name).
    #[arg(long)]
    pub id: Option<String>,
    /// Copy only snapshots of this backup name.
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CopyArgs) -> Result<i32> {
    let src = a.vault.open_existing()?;
    let dst = Vault::at(&a.to_vault)?;
    let ids = match &a.id {
        Some(id) => vec![id.clone()],
        None => src.snapshot_ids(a.name.as_deref())?,
    };
    let mut reports = Vec::new();
    for id in &ids {
        reports.push(copy_snapshot(&src, id, &dst)?);
    }
    if a.json {
        print_json(&reports)?;
    } else {
        let bytes: u64 = reports.iter().map(|r| r.bytes_copied).sum();
        let packs: u64 = reports.iter().map(|r| r.packs_copied).sum();
        println!(
            "copied {} snapshots to {} ({} packs, {})",
            reports.len(),
            dst.root().display(),
            packs,
            human_bytes(bytes)
        );
    }
    Ok(0)
}
