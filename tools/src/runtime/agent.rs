//! The agent: the one long-running process per state dir. It holds the state dir's lock,
//! converges worker pools to the spec files the provider writes, publishes their status,
//! and on SIGTERM drains (stop signal to every worker, SIGKILL after `stop_timeout`).

use super::events;
use super::process;
use super::supervisor::{self, Needs, Pool};
use crate::spec::{AgentInfo, API_VERSION};
use crate::statedir::{self, StateDir};
use anyhow::{bail, Context, Result};
use chrono::Utc;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Options {
    pub state_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    /// Exit after this long with nothing to run (the provider starts agents this way, so a
    /// `terraform destroy` leaves no process behind).
    pub exit_when_idle: Option<Duration>,
}

/// Run in the foreground until SIGTERM or SIGINT.
pub fn run(opts: Options) -> Result<()> {
    let sd = StateDir::new(&opts.state_dir);
    let _lock = sd.lock_agent()?;
    let info = AgentInfo {
        api_version: API_VERSION,
        pid: std::process::id(),
        started_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        version: env!("CARGO_PKG_VERSION").into(),
        log_file: opts.log_file.as_ref().map(|p| p.display().to_string()),
    };
    crate::atomic::write_json(&sd.agent_info_path(), &info)?;
    reap_leftovers(&sd);
    tracing::info!(state_dir = %sd.root().display(), pid = info.pid, "agent started");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let r = rt.block_on(main_loop(&sd, opts.exit_when_idle));
    let _ = std::fs::remove_file(sd.agent_info_path());
    tracing::info!("agent stopped");
    r
}

/// Workers recorded by a previous agent that died without draining (kill -9): their direct
/// children died with it (parent-death signal), but anything they forked may live on.
fn reap_leftovers(sd: &StateDir) {
    for name in sd.status_names().unwrap_or_default() {
        if let Ok(Some(st)) = sd.read_status(&name) {
            for r in &st.replicas {
                if let Some(pid) = r.pid {
                    if process::is_same_process(pid, r.pid_start) {
                        tracing::warn!(service = %name, pid, "killing a worker left by a previous agent");
                        process::signal_group(pid, libc::SIGKILL);
                    } else {
                        // The leader is gone; its group may not be.
                        process::signal_group(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = std::fs::remove_file(sd.status_path(&name));
    }
    // A previous agent killed outright never logged its pools going to zero; say so now so
    // `localdr cost` does not bill the time after it died.
    let mut last: BTreeMap<String, u32> = BTreeMap::new();
    for e in events::read(&sd.events_path()).unwrap_or_default() {
        if e.kind == "replicas" {
            last.insert(e.service, e.running.unwrap_or(0));
        }
    }
    for (service, running) in last {
        if running > 0 {
            let _ = events::append(
                &sd.events_path(),
                &events::Event {
                    ts: Utc::now(),
                    service,
                    kind: "replicas".into(),
                    running: Some(0),
                    baseline: Some(0),
                    price: None,
                    detail: "agent restarted after an unclean stop".into(),
                },
            );
        }
    }
}

async fn main_loop(sd: &StateDir, exit_when_idle: Option<Duration>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
    // Spec files we could not use, by content hash, so each problem is logged once.
    let mut rejected: HashMap<String, String> = HashMap::new();
    let mut idle_since = Instant::now();
    let mut backups = super::backups::Backups::default();
    let mut balancers = super::balancers::Balancers::default();
    let mut rescan = super::rescan::Rescan::new(sd);
    let mut names: Vec<String> = Vec::new();
    // How long to sleep when there is nothing to supervise (`None`: tick).
    let mut quiet: Option<Duration> = None;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
            _ = tick.tick(), if quiet.is_none() => {}
            _ = tokio::time::sleep(quiet.unwrap_or_default()), if quiet.is_some() => {}
            _ = rescan.changed(), if quiet.is_some() => {}
        }
        // Specs are read when their directories changed (see `rescan`); pools, schedules
        // and balancer status move on every tick.
        let read_specs = rescan.due(Instant::now());
        if read_specs {
            names = sd.service_names().unwrap_or_default();
            load_services(sd, &names, &mut pools, &mut rejected);
        }
        for (name, p) in pools.iter_mut() {
            if !names.contains(name) {
                p.remove();
            }
        }
        for p in pools.values_mut() {
            p.tick();
        }
        backups.tick(sd, true, read_specs);
        balancers.tick(sd, read_specs);
        pools.retain(|name, p| {
            let done = !names.contains(name) && p.is_empty();
            if done {
                tracing::info!(service = %name, "service removed");
                let _ = std::fs::remove_file(sd.status_path(name));
            }
            !done
        });
        if !pools.is_empty() || !names.is_empty() || !backups.is_empty() || !balancers.is_empty() {
            idle_since = Instant::now();
        } else if exit_when_idle.is_some_and(|d| idle_since.elapsed() >= d) {
            tracing::info!("nothing to run: exiting");
            return Ok(());
        }
        quiet = None;
        // Pools are asked only when nothing else needs the tick: a sleeping pool's answer
        // reads its schedules' crons, not worth doing ten times a second for nothing.
        if balancers.is_empty() && !backups.busy() {
            // `None` when a pool wants the tick; else the earliest moment a backup falls
            // due or a sleeping pool's schedule fires (if any).
            let now = Utc::now();
            let wake = pools
                .values()
                .try_fold(backups.next_due(), |wake, p| match p.needs(now) {
                    Needs::Tick => None,
                    Needs::WakeAt(at) => Some(wake.into_iter().chain(at).min()),
                });
            quiet = wake
                .map(|w| quiet_wait(w, exit_when_idle.map(|d| idle_since + d), rescan.watching()));
        }
    }
    // Balancers first: they finish their requests while the workers still run.
    balancers.stop_all(sd);
    drain(sd, &mut pools).await;
    // A scheduled backup in progress is left to finish: the vault is crash-safe, but a
    // finished snapshot is worth the wait.
    let start = Instant::now();
    while backups.busy() && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        backups.tick(sd, false, false);
    }
    Ok(())
}

/// The longest an agent with nothing to supervise sleeps: the rescan backstop where
/// inotify reports changes, else this (the look that finds a new spec).
const QUIET_POLL: Duration = Duration::from_secs(1);

/// How long an agent with no process to watch (no pool, or every pool scaled to zero), no
/// balancer and no backup running sleeps (ten ticks a second kept an idle laptop's agent
/// waking for nothing): until its next scheduled backup or scaling schedule is due
/// (`next_due`), its idle exit, or the longest sleep, whichever comes first. A change to a
/// spec wakes it sooner (see `Rescan::changed`).
fn quiet_wait(
    next_due: Option<chrono::DateTime<Utc>>,
    exit_at: Option<Instant>,
    watching: bool,
) -> Duration {
    let mut wait = if watching {
        super::rescan::BACKSTOP
    } else {
        QUIET_POLL
    };
    if let Some(at) = next_due {
        // A millisecond past: waking a hair early would only loop once more.
        let until = (at - Utc::now()).to_std().unwrap_or_default();
        wait = wait.min(until + Duration::from_millis(1));
    }
    if let Some(at) = exit_at {
        wait = wait.min(at.saturating_duration_since(Instant::now()));
    }
    wait
}

/// Start a pool for each new service spec and hand a changed one to its pool. A spec that
/// does not parse or validate is logged once per content and otherwise ignored.
fn load_services(
    sd: &StateDir,
    names: &[String],
    pools: &mut BTreeMap<String, Pool>,
    rejected: &mut HashMap<String, String>,
) {
    for name in names {
        let path = sd.service_path(name);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let hash = statedir::hash(&bytes);
        if pools.get(name).is_some_and(|p| p.hash == hash) || rejected.get(name) == Some(&hash) {
            continue;
        }
        let loaded = statedir::parse_service(&path, &bytes).and_then(|l| {
            let problems = l.spec.validate();
            if let Some(p) = problems.first() {
                bail!("{}: {}: {}", path.display(), p.path, p.message);
            }
            Ok(l)
        });
        match loaded {
            Ok(l) => {
                rejected.remove(name);
                match pools.get_mut(name) {
                    Some(p) => p.update(l.spec, l.hash),
                    None => {
                        pools.insert(name.clone(), Pool::new(sd.clone(), l.spec, l.hash));
                    }
                }
            }
            Err(e) => {
                tracing::error!("ignoring spec: {e:#}");
                rejected.insert(name.clone(), hash);
            }
        }
    }
}

/// Stop every pool gracefully, then SIGKILL what outlives its `stop_timeout` (+1 s).
async fn drain(sd: &StateDir, pools: &mut BTreeMap<String, Pool>) {
    let limit = pools
        .values()
        .map(|p| crate::spec::dur(&p.spec.stop_timeout))
        .max()
        .unwrap_or_default()
        + Duration::from_secs(2);
    for p in pools.values_mut() {
        p.remove();
    }
    let start = Instant::now();
    while !pools.values().all(|p| p.is_empty()) {
        if start.elapsed() > limit {
            for p in pools.values_mut() {
                supervisor::kill_all(p);
            }
        }
        if start.elapsed() > limit + Duration::from_secs(5) {
            tracing::error!("some workers did not exit even after SIGKILL");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for p in pools.values_mut() {
            p.tick();
        }
    }
    for name in pools.keys() {
        let _ = std::fs::remove_file(sd.status_path(name));
    }
}

/// Start an agent in the background (new session, output to `<state_dir>/logs/agent.log`)
/// and wait until it holds the lock. Returns its pid.
pub fn spawn_daemon(exe: &Path, state_dir: &Path, extra: &[String], wait: Duration) -> Result<u32> {
    let sd = StateDir::new(state_dir);
    sd.create()?;
    if sd.agent_running() {
        let pid = sd.agent_info().ok().flatten().map(|i| i.pid).unwrap_or(0);
        bail!(
            "another localdr agent (pid {pid}) is already running on state dir {}",
            sd.root().display()
        );
    }
    let log = sd.logs_dir().join("agent.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("could not open {}", log.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("agent")
        .arg("--state-dir")
        .arg(sd.root())
        .arg("--log-file")
        .arg(&log)
        .args(extra)
        .current_dir(sd.root())
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            process::cloexec_inherited();
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", exe.display()))?;
    let pid = child.id();
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "the agent exited at once ({}); its log {} ends with:\n{tail}",
                process::describe_exit(st),
                log.display()
            );
        }
        if sd.agent_running() && sd.agent_info().ok().flatten().is_some_and(|i| i.pid == pid) {
            // Not waited for from here on: the agent outlives us, and init reaps it.
            std::mem::forget(child);
            return Ok(pid);
        }
        if start.elapsed() > wait {
            let _ = child.kill();
            bail!(
                "the agent did not take the state dir lock within {wait:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM the running agent and wait until it has drained and released the lock.
pub fn stop(state_dir: &Path, wait: Duration) -> Result<Option<u32>> {
    let sd = StateDir::new(state_dir);
    if !sd.agent_running() {
        return Ok(None);
    }
    let Some(info) = sd.agent_info()? else {
        bail!(
            "an agent holds {} but left no agent.json to say which pid it is",
            sd.root().display()
        );
    };
    process::signal_pid(info.pid, libc::SIGTERM)
        .with_context(|| format!("could not signal agent pid {}", info.pid))?;
    let start = Instant::now();
    while sd.agent_running() {
        if start.elapsed() > wait {
            bail!("agent pid {} did not stop within {wait:?}", info.pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(info.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_agent_sleeps_until_its_next_backup_its_exit_or_the_backstop() {
        let backstop = super::super::rescan::BACKSTOP;
        assert_eq!(quiet_wait(None, None, true), backstop);
        assert_eq!(quiet_wait(None, None, false), QUIET_POLL);
        let asked = Instant::now();
        let soon = Utc::now() + chrono::Duration::milliseconds(1500);
        let w = quiet_wait(Some(soon), None, true);
        // Bounded by how long this thread took, not by a guess: a loaded CI machine may
        // stall it between the two clock reads.
        assert!(
            w + asked.elapsed() >= Duration::from_millis(1500) && w <= Duration::from_millis(1501),
            "{w:?}"
        );
        // Overdue: at once (plus the millisecond).
        let past = Utc::now() - chrono::Duration::seconds(3);
        assert!(quiet_wait(Some(past), None, true) <= Duration::from_millis(1));
        let exit = Instant::now() + Duration::from_millis(700);
        let w = quiet_wait(Some(soon), Some(exit), true);
        assert!(w <= Duration::from_millis(700), "{w:?}");
        let far = Utc::now() + chrono::Duration::hours(5);
        assert_eq!(quiet_wait(Some(far), None, true), backstop);
    }
}
