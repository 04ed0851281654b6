//! The client side of the agent, used by the provider (and usable by any tool): make sure
//! an agent runs on a state dir, wait until a service has converged to the spec just
//! written, and take a service down.

use super::agent;
use super::process;
use crate::spec::ServiceStatus;
use crate::statedir::StateDir;
use anyhow::{bail, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// How an agent gets started when none runs.
#[derive(Debug, Clone)]
pub enum AgentMode<'a> {
    /// Start `<exe> agent --daemon` (exiting when idle, so destroy leaves nothing behind).
    Auto { exe: &'a Path },
    /// The user runs the agent.
    External,
}

/// Make sure an agent holds `sd`.
pub fn ensure_agent(sd: &StateDir, mode: &AgentMode) -> Result<()> {
    if sd.agent_running() {
        return Ok(());
    }
    match mode {
        AgentMode::External => bail!(
            "no localdr agent is running on state dir {dir} (provider agent = \"external\"). \
             Start it with `localdr agent --state-dir {dir} --daemon` (or run it under systemd), \
             or set agent = \"auto\" in the provider block",
            dir = sd.root().display()
        ),
        AgentMode::Auto { exe } => {
            let extra = ["--exit-when-idle".to_string(), "5s".to_string()];
            match agent::spawn_daemon(exe, sd.root(), &extra, Duration::from_secs(10)) {
                Ok(pid) => {
                    tracing::info!(pid, state_dir = %sd.root().display(), "started the agent");
                    Ok(())
                }
                // Lost a race with another starter: fine if one runs now.
                Err(_) if sd.agent_running() => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Wait until the agent runs the spec with hash `hash` as declared: every replica live (and
/// healthy when `healthy`), none given up on. Fails at once when a replica has failed.
pub fn wait_converged(
    sd: &StateDir,
    name: &str,
    hash: &str,
    healthy: bool,
    timeout: Duration,
    mode: &AgentMode,
) -> Result<ServiceStatus> {
    let start = Instant::now();
    let mut last: Option<ServiceStatus> = None;
    loop {
        ensure_agent(sd, mode)?;
        if let Some(st) = sd.read_status(name)? {
            if st.spec_hash == hash {
                if let Some(msg) = failure(sd, &st) {
                    bail!("{msg}");
                }
                let ready = if healthy { st.healthy() } else { st.live() };
                if ready == st.desired as usize
                    && st.live() == st.desired as usize
                    && st.outdated() == 0
                    && st.settling() == 0
                {
                    return Ok(st);
                }
            }
            last = Some(st);
        }
        if start.elapsed() > timeout {
            let what = match &last {
                Some(st) if st.spec_hash == hash => format!(
                    "{} of {} replicas {}{}",
                    if healthy { st.healthy() } else { st.live() },
                    st.desired,
                    if healthy { "healthy" } else { "running" },
                    match (st.outdated(), st.settling()) {
                        (0, 0) => String::new(),
                        (0, n) => format!(
                            "; {n} replaced but not yet healthy for min_ready"
                        ),
                        (n, _) => format!(
                            "; {n} still run the previous command (the rolling replace waits for each new replica to be healthy{})",
                            if st.settling() > 0 { " for min_ready" } else { "" }
                        ),
                    }
                ),
                _ => "the agent has not picked up the new spec".into(),
            };
            bail!(
                "service {name} did not converge within {timeout:?}: {what}. See `localdr status --state-dir {}` and the logs in {}",
                sd.root().display(),
                sd.logs_dir().display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Why a service is not running as declared, if it is not: the text `plan` shows.
pub fn drift(sd: &StateDir, name: &str, hash: &str) -> Result<Option<String>> {
    if !sd.agent_running() {
        return Ok(Some(format!(
            "no localdr agent is running on {}",
            sd.root().display()
        )));
    }
    let Some(st) = sd.read_status(name)? else {
        return Ok(Some("the agent publishes no status for it".into()));
    };
    if st.spec_hash != hash {
        return Ok(Some(
            "the agent is not running the spec on disk (it may have rejected it: see its log)"
                .into(),
        ));
    }
    if let Some(msg) = failure(sd, &st) {
        return Ok(Some(msg));
    }
    if st.live() != st.desired as usize {
        return Ok(Some(format!(
            "{} of {} replicas running",
            st.live(),
            st.desired
        )));
    }
    Ok(None)
}

fn failure(sd: &StateDir, st: &ServiceStatus) -> Option<String> {
    let failed = st.failed();
    if failed.is_empty() {
        return None;
    }
    let parts: Vec<String> = failed
        .iter()
        .map(|r| {
            let log = sd.logs_dir().join(format!("{}-{}.log", st.name, r.index));
            let tail = std::fs::read_to_string(&log)
                .ok()
                .and_then(|s| s.lines().last().map(|l| format!(": \"{l}\"")))
                .unwrap_or_default();
            format!(
                "replica {} (port {}) failed after {} restarts, last {} (log {}{tail})",
                r.index,
                r.port,
                r.restarts,
                r.last_exit.as_deref().unwrap_or("exit unknown"),
                log.display()
            )
        })
        .collect();
    Some(parts.join("; "))
}

/// Remove a service's spec and wait until its replicas are gone. Without a running agent,
/// kill what its last status recorded (checking start times, so no recycled pid is hit).
pub fn remove_service(sd: &StateDir, name: &str, timeout: Duration) -> Result<()> {
    sd.remove_service(name)?;
    let start = Instant::now();
    while sd.agent_running() && sd.status_path(name).exists() {
        if start.elapsed() > timeout {
            bail!(
                "the agent did not stop service {name} within {timeout:?}; see {}",
                sd.logs_dir().join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !sd.agent_running() {
        if let Some(st) = sd.read_status(name)? {
            for r in &st.replicas {
                if let Some(pid) = r.pid {
                    if process::is_same_process(pid, r.pid_start) {
                        process::signal_group(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = std::fs::remove_file(sd.status_path(name));
    }
    Ok(())
}

/// Write a balancer spec and wait until the agent runs it — listening, or dispatching in
/// queue mode — or says why not.
pub fn apply_balancer(
    sd: &StateDir,
    spec: &crate::spec::BalancerSpec,
    timeout: Duration,
    mode: &AgentMode,
) -> Result<crate::spec::BalancerStatus> {
    let hash = sd.write_balancer(spec)?;
    let start = Instant::now();
    loop {
        ensure_agent(sd, mode)?;
        if let Some(st) = sd.read_balancer_status(&spec.name)? {
            if st.spec_hash == hash {
                if let Some(e) = st.error {
                    bail!("{e}");
                }
                if st.running() {
                    return Ok(st);
                }
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "the agent did not start balancer {} within {timeout:?}; see {}",
                spec.name,
                sd.logs_dir().join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Remove a balancer's spec and wait until the agent has stopped it.
pub fn remove_balancer(sd: &StateDir, name: &str, timeout: Duration) -> Result<()> {
    sd.remove_balancer(name)?;
    let start = Instant::now();
    while sd.agent_running() && sd.balancer_status_path(name).exists() {
        if start.elapsed() > timeout {
            bail!("the agent did not stop balancer {name} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
