//! `localdr cost`: replica-hours and cost per service over a period, from the agent's event
//! log, with what the schedules saved against running the unscheduled pool all along.

use crate::runtime::events;
use crate::statedir::StateDir;
use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;

#[derive(Args, Debug)]
pub struct CostArgs {
    #[command(flatten)]
    pub state: super::StateDirArg,
    /// The period: the last DURATION (e.g. 24h, 30d).
    #[arg(long, default_value = "30d", conflicts_with = "from")]
    pub since: String,
    /// Start of the period (RFC 3339) instead of --since.
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// End of the period (RFC 3339); default now.
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CostArgs) -> Result<i32> {
    let sd = StateDir::new(&a.state.state_dir);
    let to = a.to.unwrap_or_else(Utc::now);
    let from = match a.from {
        Some(f) => f,
        None => {
            to - chrono::Duration::from_std(
                crate::duration::parse(&a.since).map_err(|e| anyhow::anyhow!("--since: {e}"))?,
            )?
        }
    };
    let evs = events::read(&sd.events_path())?;
    let mut rows = events::cost(&evs, from, to);
    if let Some(s) = &a.service {
        rows.retain(|r| &r.service == s);
    }
    if a.json {
        super::print_json(&serde_json::json!({
            "from": from, "to": to, "services": rows,
        }))?;
        return Ok(0);
    }
    let mut t = super::table();
    t.set_header([
        "SERVICE",
        "REPLICA-HOURS",
        "COST",
        "WITHOUT SCHEDULES",
        "SAVED",
    ]);
    for r in &rows {
        t.add_row([
            r.service.clone(),
            format!("{:.3}", r.replica_hours),
            format!("{:.4}", r.cost),
            format!("{:.3} h", r.baseline_replica_hours),
            format!("{:.4}", r.saved),
        ]);
    }
    println!(
        "{} to {}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    println!("{t}");
    Ok(0)
}
