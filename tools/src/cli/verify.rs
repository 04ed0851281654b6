//! `localdr verify`: re-read every pack a snapshot references and check every checksum.
//! Exit 1 on any damage, or when `--max-age` is given and the newest good snapshot is older
//! (the RPO check a cron job wants).

use super::{print_json, table, VaultArg};
use crate::vault::verify::{Depth, Verifier};
use anyhow::Result;
use chrono::Utc;
use clap::Args;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub vault: VaultArg,
    /// Only snapshots of this backup name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only this snapshot.
    #[arg(long)]
    pub id: Option<String>,
    /// Fail when the newest good snapshot is older than this (e.g. 24h).
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: VerifyArgs) -> Result<i32> {
    let max_age = a
        .max_age
        .as_deref()
        .map(|s| crate::duration::parse(s).map_err(|e| anyhow::anyhow!("--max-age: {e}")))
        .transpose()?;
    let vault = a.vault.open_existing()?;
    let _lock = vault.lock_for_read()?;
    let ids = match &a.id {
        Some(id) => vec![id.clone()],
        None => vault.snapshot_ids(a.name.as_deref())?,
    };
    let mut v = Verifier::new(&vault, Depth::Full);
    let mut rows = Vec::new();
    let mut newest_good: Option<(String, chrono::DateTime<Utc>)> = None;
    for id in &ids {
        match v.check_id(id) {
            Ok(m) => {
                if newest_good.as_ref().is_none_or(|(_, t)| m.created_at > *t) {
                    newest_good = Some((m.id.clone(), m.created_at));
                }
                rows.push((id.clone(), Vec::new()));
            }
            Err(p) => rows.push((id.clone(), p)),
        }
    }
    let damaged = rows.iter().filter(|r| !r.1.is_empty()).count();
    let mut stale = None;
    if let Some(max) = max_age {
        match &newest_good {
            None => stale = Some("no good snapshot at all".to_string()),
            Some((id, t)) => {
                let age = (Utc::now() - *t).to_std().unwrap_or_default();
                if age > max {
                    stale = Some(format!(
                        "newest good snapshot {id} is {}s old, more than --max-age {}",
                        age.as_secs(),
                        a.max_age.as_deref().unwrap_or("")
                    ));
                }
            }
        }
    }
    let ok = damaged == 0 && stale.is_none() && !ids.is_empty();
    if a.json {
        print_json(&serde_json::json!({
            "ok": ok,
            "checked": rows.len(),
            "damaged": damaged,
            "bytes_read": v.bytes_hashed,
            "newest_good": newest_good.as_ref().map(|(id, t)| serde_json::json!({"id": id, "created_at": t})),
            "stale": stale,
            "snapshots": rows.iter().map(|(id, p)| serde_json::json!({"id": id, "ok": p.is_empty(), "problems": p})).collect::<Vec<_>>(),
        }))?;
    } else {
        let mut t = table();
        t.set_header(vec!["ID", "STATUS"]);
        for (id, p) in &rows {
            t.add_row(vec![
                id.clone(),
                if p.is_empty() {
                    "ok".to_string()
                } else {
                    format!("DAMAGED: {}", p.join("; "))
                },
            ]);
        }
        println!("{t}");
        println!(
            "{} checked, {} damaged, {} read",
            rows.len(),
            damaged,
            super::human_bytes(v.bytes_hashed)
        );
        if let Some(s) = &stale {
            println!("STALE: {s}");
        }
        if ids.is_empty() {
            println!("no snapshots to verify");
        }
    }
    Ok(if ok { 0 } else { 1 })
}
