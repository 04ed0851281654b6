//! `localdr status`: the agent, every service's replicas, every balancer (targets and
//! their health, or a queue's counts) and every scheduled backup, as tables or `--json`.

use crate::spec::{AgentInfo, BackupScheduleStatus, BalancerStatus, ServiceStatus};
use crate::statedir::StateDir;
use anyhow::Result;
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state: super::StateDirArg,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    state_dir: String,
    agent_running: bool,
    agent: Option<AgentInfo>,
    services: Vec<ServiceReport>,
    balancers: Vec<BalancerReport>,
    backups: Vec<ScheduleReport>,
}

/// A backup the agent runs on a schedule.
#[derive(Serialize)]
struct ScheduleReport {
    name: String,
    vault: String,
    cron: String,
    timezone: String,
    /// What the agent last published about it (`None` while no agent runs).
    status: Option<BackupScheduleStatus>,
}

#[derive(Serialize)]
struct BalancerReport {
    name: String,
    mode: String,
    status: Option<BalancerStatus>,
}

#[derive(Serialize)]
struct ServiceReport {
    name: String,
    declared: bool,
    status: Option<ServiceStatus>,
    next_schedule: Option<String>,
}

pub fn run(a: StatusArgs) -> Result<i32> {
    let sd = StateDir::new(&a.state.state_dir);
    let running = sd.agent_running();
    let mut names = sd.service_names()?;
    for n in sd.status_names()? {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.sort();
    let declared = sd.service_names()?;
    let mut services = Vec::new();
    for n in names {
        let next = sd.read_service(&n).ok().flatten().and_then(|l| {
            l.spec
                .schedules
                .iter()
                .filter_map(|s| {
                    crate::runtime::schedule::next_fire(s, chrono::Utc::now())
                        .map(|t| (t, s.name.clone()))
                })
                .min()
                .map(|(t, s)| {
                    format!(
                        "{s} at {}",
                        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                })
        });
        services.push(ServiceReport {
            declared: declared.contains(&n),
            status: if running { sd.read_status(&n)? } else { None },
            name: n,
            next_schedule: next,
        });
    }
    let mut balancers = Vec::new();
    for n in sd.balancer_names()? {
        let mode = sd
            .read_balancer(&n)
            .ok()
            .flatten()
            .map(|(b, _)| b.mode)
            .unwrap_or_else(|| "?".into());
        let mut status = if running {
            sd.read_balancer_status(&n)?
        } else {
            None
        };
        if let Some(st) = status.as_mut().filter(|st| st.queue.is_none()) {
            if let Some(live) = st.admin.as_deref().and_then(live_targets) {
                st.targets = live;
            }
        }
        balancers.push(BalancerReport {
            status,
            name: n,
            mode,
        });
    }
    let mut backups = Vec::new();
    for key in sd.schedule_keys()? {
        // A damaged schedule file is named, not allowed to take the whole report down:
        // this is the command people reach for in an incident.
        let spec = match sd.read_schedule_file(&key) {
            Ok(Some(spec)) => spec,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("warning: backup schedule {key}: {e:#}");
                continue;
            }
        };
        backups.push(ScheduleReport {
            status: if running {
                sd.read_schedule_status(&key).ok().flatten()
            } else {
                None
            },
            name: spec.name,
            vault: spec.vault,
            cron: spec.cron,
            timezone: spec.timezone,
        });
    }
    let r = Report {
        state_dir: sd.root().display().to_string(),
        agent_running: running,
        agent: if running { sd.agent_info()? } else { None },
        services,
        balancers,
        backups,
    };
    if a.json {
        super::print_json(&r)?;
        return Ok(0);
    }
    match (&r.agent, running) {
        (Some(i), true) => println!("agent: running (pid {}, since {})", i.pid, i.started_at),
        _ => println!(
            "agent: NOT running on {} (start it: localdr agent --state-dir {} --daemon)",
            r.state_dir, r.state_dir
        ),
    }
    let mut t = super::table();
    t.set_header([
        "SERVICE",
        "REPLICA",
        "PORT",
        "PID",
        "STATE",
        "HEALTH",
        "RESTARTS",
        "LAST EXIT",
    ]);
    for s in &r.services {
        match &s.status {
            None => {
                t.add_row([
                    s.name.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    if s.declared {
                        "not running".into()
                    } else {
                        "removed".into()
                    },
                    "-".into(),
                    "-".into(),
                    String::new(),
                ]);
            }
            Some(st) => {
                for rep in &st.replicas {
                    t.add_row([
                        st.name.clone(),
                        rep.index.to_string(),
                        rep.port.to_string(),
                        rep.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        if rep.outdated {
                            format!("{} (outdated)", rep.state)
                        } else if rep.settling {
                            format!("{} (settling)", rep.state)
                        } else {
                            rep.state.clone()
                        },
                        rep.health.clone(),
                        rep.restarts.to_string(),
                        rep.last_exit.clone().unwrap_or_default(),
                    ]);
                }
                if st.replicas.is_empty() {
                    t.add_row([
                        st.name.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "scaled to 0".into(),
                        "-".into(),
                        "-".into(),
                        String::new(),
                    ]);
                }
            }
        }
    }
    println!("{t}");
    for b in &r.backups {
        let n = &b.name;
        match &b.status {
            Some(s) => println!(
                "backup {n} ({}): next run {}, last run {} ({}), {} runs",
                b.vault,
                s.next_run.as_deref().unwrap_or("-"),
                s.last_run.as_deref().unwrap_or("never"),
                s.last_result.as_deref().unwrap_or("-"),
                s.runs
            ),
            None => println!("backup {n} ({}): scheduled, but no agent runs it", b.vault),
        }
    }
    for s in &r.services {
        if let Some(st) = &s.status {
            let next = s
                .next_schedule
                .as_deref()
                .map(|n| format!(", next: {n}"))
                .unwrap_or_default();
            println!(
                "{}: desired {} ({}), in-flight {}{next}",
                st.name, st.desired, st.reason, st.in_flight
            );
        }
    }
    for b in &r.balancers {
        print_balancer(b);
    }
    Ok(0)
}

/// The targets as the balancer counts them this moment, from its admin API: the status
/// file the agent writes holds request counts up to 5 s old. `None` (the file's figures are
/// shown) when the API does not answer within a second.
fn live_targets(admin: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = admin.parse().ok()?;
    let limit = std::time::Duration::from_secs(1);
    let mut s = std::net::TcpStream::connect_timeout(&addr, limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.set_write_timeout(Some(limit)).ok()?;
    s.write_all(b"GET /targets HTTP/1.1\r\nHost: localdr\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    s.take(4 << 20).read_to_end(&mut answer).ok()?;
    if !answer.starts_with(b"HTTP/1.1 200 ") {
        return None;
    }
    let body = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let v: serde_json::Value = serde_json::from_slice(&answer[body..]).ok()?;
    v.is_array().then_some(v)
}

fn print_balancer(b: &BalancerReport) {
    let Some(st) = &b.status else {
        println!("balancer {} ({}): not running", b.name, b.mode);
        return;
    };
    if let Some(e) = &st.error {
        println!("balancer {} ({}): ERROR {e}", b.name, b.mode);
        return;
    }
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    if let Some(q) = &st.queue {
        println!(
            "balancer {} (queue): pending {}, in flight {}, processed {}, failed {}, delivered {}",
            b.name,
            n(q, "pending"),
            n(q, "in_flight"),
            n(q, "processed"),
            n(q, "failed"),
            n(q, "delivered")
        );
        let mut t = super::table();
        t.set_header([
            "WORKER",
            "ADDRESS",
            "HEALTHY",
            "BUSY WITH",
            "PROCESSED",
            "FAILED",
        ]);
        for w in q
            .get("workers")
            .and_then(|w| w.as_array())
            .into_iter()
            .flatten()
        {
            let s = |k: &str| w.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
            t.add_row([
                s("name"),
                s("address"),
                w.get("healthy").map(|h| h.to_string()).unwrap_or_default(),
                s("busy"),
                n(w, "processed").to_string(),
                n(w, "failed").to_string(),
            ]);
        }
        println!("{t}");
        return;
    }
    println!(
        "balancer {} (http): listening on {}, admin {}",
        b.name,
        st.listening.as_deref().unwrap_or("-"),
        st.admin.as_deref().unwrap_or("-")
    );
    let mut t = super::table();
    t.set_header([
        "TARGET",
        "WEIGHT",
        "HEALTHY",
        "IN FLIGHT",
        "REQUESTS",
        "EJECTIONS",
    ]);
    for x in st.targets.as_array().into_iter().flatten() {
        t.add_row([
            x.get("address")
                .and_then(|a| a.as_str())
                .unwrap_or("-")
                .to_string()
                + if x.get("backup").and_then(|b| b.as_bool()) == Some(true) {
                    " (backup)"
                } else {
                    ""
                },
            n(x, "weight").to_string(),
            x.get("healthy").map(|h| h.to_string()).unwrap_or_default(),
            n(x, "in_flight").to_string(),
            n(x, "requests").to_string(),
            n(x, "ejections").to_string(),
        ]);
    }
    println!("{t}");
}
