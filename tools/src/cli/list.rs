//! `localdr list`: the snapshots in a vault, numbered oldest first (the numbers `restore
//! --number` and the restore menu use).

use super::{human_bytes, print_json, table, VaultArg};
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Only snapshots of this backup name.
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ListArgs) -> Result<i32> {
    let vault = a.vault.open_existing()?;
    let _lock = vault.lock_for_read()?;
    let (good, bad) = vault.manifests(a.name.as_deref())?;
    if a.json {
        let items: Vec<_> = good
            .iter()
            .enumerate()
            .map(|(i, m)| {
                serde_json::json!({
                    "number": i + 1,
                    "id": m.id,
                    "name": m.name,
                    "created_at": m.created_at,
                    "source_kind": m.source.kind,
                    "source_path": m.source.path,
                    "file_count": m.file_count,
                    "size_bytes": m.size_bytes,
                    "added_bytes": m.added_bytes,
                    "checksum": m.checksum,
                    "tfstate": m.tfstate,
                })
            })
            .collect();
        let damaged: Vec<_> = bad
            .iter()
            .map(|(id, why)| serde_json::json!({"id": id, "error": why}))
            .collect();
        print_json(&serde_json::json!({"snapshots": items, "damaged": damaged}))?;
        return Ok(0);
    }
    if good.is_empty() && bad.is_empty() {
        println!("no snapshots in {}", vault.root().display());
        return Ok(0);
    }
    let mut t = table();
    t.set_header(vec![
        "#",
        "ID",
        "CREATED (UTC)",
        "KIND",
        "TAKEN BY",
        "FILES",
        "SIZE",
        "ADDED",
    ]);
    for (i, m) in good.iter().enumerate() {
        t.add_row(vec![
            (i + 1).to_string(),
            m.id.clone(),
            m.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            m.source.kind.as_str().to_string(),
            if m.origin.is_empty() {
                "manual".to_string()
            } else {
                m.origin.clone()
            },
            m.file_count.to_string(),
            human_bytes(m.size_bytes),
            human_bytes(m.added_bytes),
        ]);
    }
    println!("{t}");
    for (id, why) in &bad {
        println!("DAMAGED {id}: {why}");
    }
    Ok(0)
}
