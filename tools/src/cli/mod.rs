//! Command-line wiring. Exit codes: 0 success, 1 error or damage found, 2 drift found.

mod agent;
mod backup;
mod chaos;
mod copy;
mod cost;
mod drift;
mod drill;
mod forget;
mod list;
mod loadgen;
mod prune;
mod restore;
mod status;
mod verify;

use crate::vault::retention::Retention;
use crate::vault::Vault;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "localdr",
    version,
    about = "Local disaster recovery: verified backups with retention, DR copies and restore; supervised worker pools; drift reports",
    long_about = None
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug). LOCALDR_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Take a snapshot of a file, a directory or a Terraform state into a vault.
    Backup(backup::BackupArgs),
    /// List the snapshots in a vault.
    List(list::ListArgs),
    /// Check snapshots against their checksums; exit 1 on any damage.
    Verify(verify::VerifyArgs),
    /// Restore a snapshot: by number, id, latest, or the newest at or before a time.
    Restore(restore::RestoreArgs),
    /// Copy snapshots to a DR vault, checking every hash at the destination.
    Copy(copy::CopyArgs),
    /// Remove snapshots by id (and the data only they used).
    Forget(forget::ForgetArgs),
    /// Apply retention rules and delete what they do not keep.
    Prune(prune::PruneArgs),
    /// Run `terraform plan` (refresh-only and normal) and report drift; exit 2 on drift.
    Drift(drift::DriftArgs),
    /// DR drill: restore the newest snapshot to a scratch target, check it, measure RTO/RPO.
    Drill(drill::DrillArgs),
    /// Synthetic load: HTTP profiles (steady, ramp, spike) with a latency summary, or request files for a queue.
    Loadgen(loadgen::LoadgenArgs),
    /// Run the agent: worker pools, balancers and queues, backup schedules (foreground, --daemon, or `stop`).
    Agent(agent::AgentArgs),
    /// Show the agent, every service's replicas (health, restarts), balancers and queues, backup schedules.
    Status(status::StatusArgs),
    /// Fault injection for drills: kill a replica.
    Chaos(chaos::ChaosArgs),
    /// Replica-hours and cost per service from the agent's event log, with schedule savings.
    Cost(cost::CostArgs),
    /// Internal: run one queue item's command for the agent and record its outcome.
    #[command(hide = true)]
    QueueExec {
        /// The job, as JSON.
        job: String,
    },
}

/// `--state-dir` as the agent-related subcommands take it.
#[derive(Args, Debug, Clone)]
pub struct StateDirArg {
    /// The state directory (the provider's `state_dir`; default `.localdr` here).
    #[arg(
        long,
        value_name = "DIR",
        env = "LOCALDR_STATE_DIR",
        default_value = ".localdr"
    )]
    pub state_dir: PathBuf,
}

/// The restic-style retention flags shared by `backup` and `prune`.
#[derive(Args, Debug, Clone, Default)]
pub struct RetentionArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep every snapshot within this duration of the newest (e.g. 7d).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
}

impl RetentionArgs {
    /// `None` when no flag was given.
    pub fn to_retention(&self) -> Option<Retention> {
        let r = Retention {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_within: self.keep_within.clone(),
        };
        (r != Retention::default()).then_some(r)
    }
}

/// `--vault` as every subcommand takes it.
#[derive(Args, Debug, Clone)]
pub struct VaultArg {
    /// The vault directory.
    #[arg(long, value_name = "DIR")]
    pub vault: PathBuf,
}

impl VaultArg {
    pub fn open(&self) -> Result<Vault> {
        Vault::at(&self.vault)
    }
    pub fn open_existing(&self) -> Result<Vault> {
        let v = Vault::at(&self.vault)?;
        if !v.exists() {
            anyhow::bail!(
                "{} is not a localdr vault (no snapshots/ directory): check --vault",
                self.vault.display()
            );
        }
        Ok(v)
    }
}

pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Backup(a) => backup::run(a),
        Command::List(a) => list::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Restore(a) => restore::run(a),
        Command::Copy(a) => copy::run(a),
        Command::Forget(a) => forget::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Drift(a) => drift::run(a),
        Command::Drill(a) => drill::run(a),
        Command::Loadgen(a) => loadgen::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Status(a) => status::run(a),
        Command::Chaos(a) => chaos::run(a),
        Command::Cost(a) => cost::run(a),
        Command::QueueExec { job } => {
            let job: crate::runtime::queue::exec::Job =
                serde_json::from_str(&job).context("queue-exec: bad job")?;
            crate::runtime::queue::exec::run(&job)?;
            Ok(0)
        }
    }
}

/// Logs go to stderr so stdout stays data (`--json`).
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCALDR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t
}
