//! `localdr chaos kill`: SIGKILL one replica, for drills (does the pool heal, does the
//! balancer route around it).

use crate::runtime::process;
use crate::statedir::StateDir;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub action: ChaosAction,
}

#[derive(Subcommand, Debug)]
pub enum ChaosAction {
    /// Kill -9 a replica of a service (the lowest-numbered running one unless --replica).
    Kill {
        #[command(flatten)]
        state: super::StateDirArg,
        /// The service.
        #[arg(long)]
        service: String,
        /// Which replica (index from `localdr status`).
        #[arg(long)]
        replica: Option<u32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Killed {
    service: String,
    replica: u32,
    pid: u32,
    port: u16,
}

pub fn run(a: ChaosArgs) -> Result<i32> {
    let ChaosAction::Kill {
        state,
        service,
        replica,
        json,
    } = a.action;
    let sd = StateDir::new(&state.state_dir);
    if !sd.agent_running() {
        bail!(
            "no agent is running on {}: nothing would restart the replica",
            sd.root().display()
        );
    }
    let Some(st) = sd.read_status(&service)? else {
        bail!(
            "no service {service:?} in {} (known: {})",
            sd.root().display(),
            sd.status_names()?.join(", ")
        );
    };
    let target = st
        .replicas
        .iter()
        .filter(|r| r.pid.is_some() && matches!(r.state.as_str(), "running" | "starting"))
        .find(|r| replica.is_none_or(|n| r.index == n));
    let Some(r) = target else {
        bail!(
            "service {service:?} has no running replica{}",
            replica.map(|n| format!(" {n}")).unwrap_or_default()
        );
    };
    let pid = r.pid.expect("filtered");
    if !process::is_same_process(pid, r.pid_start) {
        bail!(
            "replica {} (pid {pid}) is no longer that process; try again",
            r.index
        );
    }
    process::signal_pid(pid, libc::SIGKILL)?;
    let k = Killed {
        service,
        replica: r.index,
        pid,
        port: r.port,
    };
    if json {
        super::print_json(&k)?;
    } else {
        println!(
            "killed {} replica {} (pid {}, port {})",
            k.service, k.replica, k.pid, k.port
        );
    }
    Ok(0)
}
