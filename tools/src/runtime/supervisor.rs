//! One worker pool: starts, health-checks, restarts and scales the replicas of a service
//! spec, and publishes what it sees. `tick` is called every 100 ms by the agent and never
//! blocks: exits are polled with `try_wait`, probes run as tasks, stops are deadlines.

use super::autoscale::{Autoscaler, Params};
use super::events::{self, Event};
use super::health::{self, Health, Tracker};
use super::process;
use super::restart::{Decision, Restarts};
use super::schedule;
use crate::spec::{dur, HealthCheck, ReplicaStatus, ServiceSpec, ServiceStatus, API_VERSION};
use crate::statedir::StateDir;
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Alive, not yet healthy since it started.
    Starting,
    /// Alive and healthy at least once since it started.
    Running,
    Backoff(Instant),
    Stopping {
        deadline: Instant,
        killed: bool,
    },
    /// Scaled away, not signalled yet: it already shows as `stopping`, so a balancer that
    /// follows the pool stops sending it requests before it goes (a load balancer's
    /// deregistration delay). Signalled at `signal_at`.
    Retiring {
        signal_at: Instant,
    },
    /// Ended and the policy does not restart it (`never`, `on-failure` after exit 0).
    Exited,
    /// Gave up: more than `max_restarts` restarts within `window`.
    Failed,
}

/// Why a replica is being stopped, which decides what happens when it has exited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    /// Scaled away or the service removed: drop it.
    Retire,
    /// The spec's process settings changed (a rolling replace) or it was scaled away and
    /// wanted again meanwhile: start again at once.
    Replace,
    /// Failed its health check: a restart counted against the start limit.
    Unhealthy,
}

struct Replica {
    index: u32,
    port: u16,
    child: Option<Child>,
    pid_start: u64,
    state: State,
    after: Option<After>,
    tracker: Tracker,
    next_probe: Instant,
    probe: Option<JoinHandle<Result<(), String>>>,
    last_counted_failure: Option<Instant>,
    restarts: Restarts,
    last_exit: Option<String>,
    started: Option<(Instant, DateTime<Utc>)>,
    /// Runs an earlier spec's process settings: to be replaced, one replica at a time.
    outdated: bool,
    /// Replaced by the rolling replace in progress: the next one waits until it is running
    /// and has been for the spec's `min_ready`.
    rolled: bool,
    /// When it last became healthy (state `Running`).
    running_since: Option<Instant>,
}

/// See [`Pool::needs`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Needs {
    /// Processes to start, watch, restart or stop: the agent's 100 ms tick.
    Tick,
    /// Nothing runs and nothing is wanted until this schedule firing (`None`: until the
    /// spec changes).
    WakeAt(Option<DateTime<Utc>>),
}

pub struct Pool {
    sd: StateDir,
    pub spec: ServiceSpec,
    pub hash: String,
    replicas: BTreeMap<u32, Replica>,
    autoscaler: Option<Autoscaler>,
    next_sample: Instant,
    next_schedule_eval: Instant,
    in_flight: u32,
    desired: u32,
    baseline: u32,
    reason: String,
    schedule: Option<String>,
    removing: bool,
    published: Option<ServiceStatus>,
    last_count: Option<(u32, u32)>,
}

/// How long a replica scaled away keeps running after it leaves the running set: longer
/// than a following balancer takes to notice (it reads the status every 250 ms; the status
/// is published every 100 ms).
pub const RETIRE_DELAY: Duration = Duration::from_secs(1);

/// The ports the pool's processes hold (each replica's, while its process lives).
fn held_ports(replicas: &BTreeMap<u32, Replica>) -> HashSet<u16> {
    replicas
        .values()
        .filter(|r| r.child.is_some())
        .map(|r| r.port)
        .collect()
}

/// On its way out: signalled, or about to be.
fn leaving(s: &State) -> bool {
    matches!(s, State::Stopping { .. } | State::Retiring { .. })
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Pool {
    pub fn new(sd: StateDir, spec: ServiceSpec, hash: String) -> Pool {
        let now = Instant::now();
        let autoscaler = spec
            .autoscaling
            .as_ref()
            .map(|a| Autoscaler::new(spec.replicas.clamp(a.min_replicas, a.max_replicas)));
        tracing::info!(service = %spec.name, replicas = spec.replicas, "service added");
        Pool {
            sd,
            spec,
            hash,
            replicas: BTreeMap::new(),
            autoscaler,
            next_sample: now,
            next_schedule_eval: now,
            in_flight: 0,
            desired: 0,
            baseline: 0,
            reason: "spec".into(),
            schedule: None,
            removing: false,
            published: None,
            last_count: None,
        }
    }

    /// Adopt a changed spec without restarting replicas whose process settings are the same
    /// (a replica count change never restarts the others).
    pub fn update(&mut self, spec: ServiceSpec, hash: String) {
        let now = Instant::now();
        let old = std::mem::replace(&mut self.spec, spec);
        self.hash = hash;
        let s = &self.spec;
        let process_changed = old.command != s.command
            || old.env != s.env
            || old.working_dir != s.working_dir
            || old.base_dir != s.base_dir
            || old.port_env_var != s.port_env_var
            || old.base_port != s.base_port;
        tracing::info!(service = %s.name, process_changed, "spec changed");
        let health = s.effective_health();
        let restart = s.effective_restart();
        let health_changed = old.effective_health() != health;
        let restart_changed = old.effective_restart() != restart;
        let new_generation = old.generation != s.generation;
        if old.autoscaling.is_none() != s.autoscaling.is_none() {
            self.autoscaler = s
                .autoscaling
                .as_ref()
                .map(|a| Autoscaler::new(self.desired.clamp(a.min_replicas, a.max_replicas)));
        }
        self.next_schedule_eval = now;
        for r in self.replicas.values_mut() {
            if process_changed {
                r.rolled = false;
            }
            if health_changed {
                r.tracker = Tracker::new(&health);
            }
            if restart_changed || new_generation {
                r.restarts = Restarts::new(&restart);
            }
            if new_generation && matches!(r.state, State::Failed | State::Exited) {
                r.state = State::Backoff(now);
            }
            if process_changed && r.child.is_some() {
                match r.state {
                    // Starts again with the new settings once it has exited.
                    State::Stopping { .. } => {}
                    // Still out of the running set until its signal; then replaced, so
                    // wanted again it runs the new settings.
                    State::Retiring { .. } => r.after = Some(After::Replace),
                    // Ports that move may land on a port an older replica holds: a roll
                    // would wait forever for a replica that cannot bind. All at once, then
                    // (the pool's endpoints change anyway).
                    _ if old.base_port != s.base_port => stop(s, r, After::Replace),
                    // Replaced by `roll`, one at a time.
                    _ => r.outdated = true,
                }
            }
        }
    }

    /// The rolling replace: one outdated replica at a time leaves (first out of the running
    /// set, then signalled, as when scaled away) and starts again with the new settings;
    /// the next goes only once it is running (healthy) and has been for `min_ready`. So a
    /// pool of N serves with at least N - 1 replicas throughout (Kubernetes' maxUnavailable
    /// 1, maxSurge 0: replicas own their ports, so there is no room for an extra one), and a
    /// new command that never becomes healthy, or crashes within `min_ready`, stops the roll
    /// after its first replica, the others still serving.
    ///
    /// A replica that is already down (starting, or waiting to restart, on the new
    /// settings) counts as the one out: no running replica is taken while it is, and an
    /// outdated replica that is not serving is replaced before one that is.
    fn roll(&mut self, now: Instant) {
        if self.removing {
            return;
        }
        let min_ready = dur(&self.spec.min_ready);
        let in_progress = self.replicas.values().any(|r| {
            (r.rolled && !settled(r, now, min_ready))
                || (leaving(&r.state) && r.after == Some(After::Replace))
                || (!r.outdated && matches!(r.state, State::Starting | State::Backoff(_)))
        });
        if in_progress {
            return;
        }
        let next = self
            .replicas
            .values_mut()
            .filter(|r| r.outdated && r.child.is_some() && !leaving(&r.state))
            .min_by_key(|r| (r.state == State::Running, r.index));
        if let Some(r) = next {
            tracing::info!(service = %self.spec.name, replica = r.index, "rolling replace: replacing");
            r.rolled = true;
            retire(r, After::Replace, now);
        }
    }

    /// Stop every replica; the pool is done when `is_empty`.
    pub fn remove(&mut self) {
        self.removing = true;
        super::demand::set_wakeable(&self.spec.name, false);
        for r in self.replicas.values_mut() {
            if r.child.is_some() && !matches!(r.state, State::Stopping { .. }) {
                stop(&self.spec, r, After::Retire);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.values().all(|r| r.child.is_none())
    }

    /// What this pool needs from the agent's loop, as of its last tick. A pool scaled to
    /// zero (the night window of a cost-saving schedule, or `replicas = 0`) has no process
    /// to watch, and with no replica no connection for the autoscaler to count: only a
    /// schedule firing, a new spec (which wakes the agent itself) or a request a balancer
    /// holds for it ([`super::demand`]; the agent ticks anyway while a balancer runs) can
    /// start one. So it asks for no tick, and the agent sleeps until the firing instead of
    /// waking ten times a second all night.
    pub fn needs(&self, now: DateTime<Utc>) -> Needs {
        if self.removing
            || !self.replicas.is_empty()
            || self.desired != 0
            || self.published.is_none()
        {
            return Needs::Tick;
        }
        // A firing since the pool last looked (it looks every 500 ms while ticking): tick
        // until it has taken the new window in.
        let in_force = schedule::active(&self.spec.schedules, now).map(|s| &s.name);
        if in_force != self.schedule.as_ref() {
            return Needs::Tick;
        }
        Needs::WakeAt(
            self.spec
                .schedules
                .iter()
                .filter_map(|s| schedule::next_fire(s, now))
                .min(),
        )
    }

    pub fn tick(&mut self) {
        let now = Instant::now();
        self.evaluate_desired(now);
        self.scale(now);
        self.roll(now);
        let spec = self.spec.clone();
        let health = spec.effective_health();
        let mut gone = Vec::new();
        // After a change of base_port, an older replica may hold the port another is
        // about to start on.
        let held = held_ports(&self.replicas);
        for r in self.replicas.values_mut() {
            if step(&self.sd, &spec, &health, &held, r, now) {
                gone.push(r.index);
            }
        }
        for i in gone {
            self.replicas.remove(&i);
        }
        if self.removing {
            self.replicas.retain(|_, r| r.child.is_some());
        }
        self.record_count();
        self.publish();
    }

    /// Replica count now: the spec, bounded by the schedule in force, or the autoscaler.
    fn evaluate_desired(&mut self, now: Instant) {
        if self.removing {
            self.desired = 0;
            return;
        }
        if now >= self.next_schedule_eval {
            self.next_schedule_eval = now + Duration::from_millis(500);
            self.schedule =
                schedule::active(&self.spec.schedules, Utc::now()).map(|s| s.name.clone());
        }
        let window = self
            .schedule
            .as_ref()
            .and_then(|n| self.spec.schedules.iter().find(|s| &s.name == n));
        let (mut min, mut max) = match &self.spec.autoscaling {
            Some(a) => (a.min_replicas, a.max_replicas),
            None => (self.spec.replicas, self.spec.replicas),
        };
        let unscheduled = (min, max);
        if let Some(w) = window {
            min = w.min_replicas;
            max = w.max_replicas;
        }
        // A balancer holds a request for this pool at zero only if load can bring it back.
        super::demand::set_wakeable(&self.spec.name, self.spec.autoscaling.is_some() && max > 0);
        match (&self.spec.autoscaling, &mut self.autoscaler) {
            (Some(a), Some(scaler)) => {
                if now >= self.next_sample {
                    self.next_sample = now + Duration::from_millis(500);
                    // Connections to the replicas, and requests a balancer holds while
                    // there is none to connect to (scale from zero).
                    self.in_flight = super::load::established(&held_ports(&self.replicas))
                        + super::demand::waiting(&self.spec.name);
                    scaler.step(
                        now,
                        self.in_flight as f64,
                        Params {
                            min,
                            max,
                            target: a.target_utilization,
                            out_cooldown: dur(&a.scale_out_cooldown),
                            in_cooldown: dur(&a.scale_in_cooldown),
                            disable_scale_in: a.disable_scale_in,
                        },
                    );
                }
                self.desired = scaler.current.clamp(min, max);
                self.baseline = scaler.current.clamp(unscheduled.0, unscheduled.1);
                self.reason = match window {
                    Some(w) => format!("autoscaling within schedule {}", w.name),
                    None => "autoscaling".into(),
                };
            }
            _ => {
                self.desired = self.spec.replicas.clamp(min, max);
                self.baseline = self.spec.replicas;
                self.reason = match window {
                    Some(w) => format!("schedule {}", w.name),
                    None => "spec".into(),
                };
            }
        }
    }

    fn scale(&mut self, now: Instant) {
        let health = self.spec.effective_health();
        let restart = self.spec.effective_restart();
        for i in 0..self.desired {
            match self.replicas.get_mut(&i) {
                None => {
                    self.replicas.insert(
                        i,
                        Replica {
                            index: i,
                            port: self.spec.base_port + i as u16,
                            child: None,
                            pid_start: 0,
                            state: State::Backoff(now),
                            after: None,
                            tracker: Tracker::new(&health),
                            next_probe: now,
                            probe: None,
                            last_counted_failure: None,
                            restarts: Restarts::new(&restart),
                            last_exit: None,
                            started: None,
                            outdated: false,
                            rolled: false,
                            running_since: None,
                        },
                    );
                }
                // Wanted again before its signal: it simply stays, as healthy as it was.
                Some(r)
                    if matches!(r.state, State::Retiring { .. })
                        && r.after == Some(After::Retire) =>
                {
                    r.after = None;
                    r.state = if r.tracker.state == Health::Healthy {
                        State::Running
                    } else {
                        State::Starting
                    };
                }
                Some(r) if r.after == Some(After::Retire) => r.after = Some(After::Replace),
                Some(_) => {}
            }
        }
        self.replicas.retain(|&i, r| {
            if i < self.desired {
                return true;
            }
            if r.child.is_none() {
                return false;
            }
            if !leaving(&r.state) {
                retire(r, After::Retire, now);
            }
            true
        });
    }

    fn record_count(&mut self) {
        let running = self
            .replicas
            .values()
            .filter(|r| r.child.is_some() && !leaving(&r.state))
            .count() as u32;
        let key = (running, self.baseline);
        if self.last_count != Some(key) {
            self.last_count = Some(key);
            let _ = events::append(
                &self.sd.events_path(),
                &Event {
                    ts: Utc::now(),
                    service: self.spec.name.clone(),
                    kind: "replicas".into(),
                    running: Some(running),
                    baseline: Some(if self.removing { 0 } else { self.baseline }),
                    price: Some(self.spec.cost_per_replica_hour),
                    detail: self.reason.clone(),
                },
            );
        }
    }

    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            api_version: API_VERSION,
            name: self.spec.name.clone(),
            spec_hash: self.hash.clone(),
            generation: self.spec.generation,
            desired: self.desired,
            reason: self.reason.clone(),
            replicas: {
                let (now, min_ready) = (Instant::now(), dur(&self.spec.min_ready));
                self.replicas
                    .values()
                    .map(|r| replica_status(r, now, min_ready))
                    .collect()
            },
            schedule: self.schedule.clone(),
            in_flight: self.in_flight,
            updated_at: String::new(),
        }
    }

    fn publish(&mut self) {
        let st = self.status();
        if self.published.as_ref() == Some(&st) {
            return;
        }
        let mut out = st.clone();
        out.updated_at = stamp(Utc::now());
        if let Err(e) = crate::atomic::write_json(&self.sd.status_path(&self.spec.name), &out) {
            tracing::warn!(service = %self.spec.name, "could not publish status: {e:#}");
            return;
        }
        self.published = Some(st);
    }
}

/// Running, and healthy for at least `min_ready` since it last became so: a replaced
/// replica that crashes soon after its first good check does not let the roll go on.
fn settled(r: &Replica, now: Instant, min_ready: Duration) -> bool {
    r.state == State::Running
        && r.running_since
            .is_some_and(|t| now.saturating_duration_since(t) >= min_ready)
}

fn replica_status(r: &Replica, now: Instant, min_ready: Duration) -> ReplicaStatus {
    let state = match r.state {
        State::Starting => "starting",
        State::Running => "running",
        State::Backoff(_) => "backoff",
        State::Stopping { .. } | State::Retiring { .. } => "stopping",
        State::Exited => "exited",
        State::Failed => "failed",
    };
    ReplicaStatus {
        index: r.index,
        port: r.port,
        pid: r.child.as_ref().map(|c| c.id()),
        pid_start: r.pid_start,
        state: state.into(),
        health: if r.child.is_some() {
            r.tracker.state.as_str().into()
        } else {
            Health::Unknown.as_str().into()
        },
        restarts: r.restarts.total,
        last_exit: r.last_exit.clone(),
        started_at: r.started.map(|(_, t)| stamp(t)),
        outdated: r.outdated && r.child.is_some(),
        settling: r.rolled && r.state == State::Running && !settled(r, now, min_ready),
    }
}

fn log_event(sd: &StateDir, service: &str, kind: &str, detail: String) {
    let _ = events::append(
        &sd.events_path(),
        &Event {
            ts: Utc::now(),
            service: service.into(),
            kind: kind.into(),
            running: None,
            baseline: None,
            price: None,
            detail,
        },
    );
}

/// Take a replica out of the running set now and signal it [`RETIRE_DELAY`] later, so a
/// balancer following the pool stops sending it requests first.
fn retire(r: &mut Replica, after: After, now: Instant) {
    r.after = Some(after);
    r.state = State::Retiring {
        signal_at: now + RETIRE_DELAY,
    };
    if let Some(p) = r.probe.take() {
        p.abort();
    }
}

/// Send the stop signal to a replica's process group; SIGKILL follows at the deadline.
fn stop(spec: &ServiceSpec, r: &mut Replica, after: After) {
    r.after = Some(after);
    if let Some(c) = &r.child {
        let sig = process::signal_number(&spec.stop_signal).unwrap_or(libc::SIGTERM);
        process::signal_group(c.id(), sig);
        r.state = State::Stopping {
            deadline: Instant::now() + dur(&spec.stop_timeout),
            killed: false,
        };
    }
    if let Some(p) = r.probe.take() {
        p.abort();
    }
}

/// Kill whatever is left of every replica right away (agent shutdown past its deadline).
pub fn kill_all(pool: &mut Pool) {
    for r in pool.replicas.values_mut() {
        if let Some(c) = &r.child {
            process::signal_group(c.id(), libc::SIGKILL);
        }
    }
}

fn working_dir(sd: &StateDir, spec: &ServiceSpec) -> PathBuf {
    let base = spec
        .base_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| sd.root().to_path_buf());
    match &spec.working_dir {
        Some(w) => base.join(w),
        None => base,
    }
}

fn env_of(spec: &ServiceSpec, r: &Replica) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push((spec.port_env_var.clone(), r.port.to_string()));
    env.push(("LOCALDR_SERVICE".into(), spec.name.clone()));
    env.push(("LOCALDR_REPLICA".into(), r.index.to_string()));
    env
}

fn start(sd: &StateDir, spec: &ServiceSpec, health: &HealthCheck, r: &mut Replica, now: Instant) {
    // base_port may have changed since this replica last ran.
    r.port = spec.base_port + r.index as u16;
    let cwd = working_dir(sd, spec);
    let mut argv: Vec<String> = spec
        .command
        .iter()
        .map(|a| a.replace("{port}", &r.port.to_string()))
        .collect();
    // A relative program path means relative to the working directory, on every platform.
    if argv[0].contains('/') && !argv[0].starts_with('/') {
        argv[0] = cwd.join(&argv[0]).display().to_string();
    }
    let log = sd.logs_dir().join(format!("{}-{}.log", spec.name, r.index));
    let _ = std::fs::create_dir_all(sd.logs_dir());
    let env = env_of(spec, r);
    match process::spawn(&process::SpawnOptions {
        argv: &argv,
        env,
        cwd: &cwd,
        log: &log,
    }) {
        Ok(child) => {
            r.pid_start = process::start_time(child.id());
            tracing::info!(service = %spec.name, replica = r.index, port = r.port, pid = child.id(), "replica started");
            r.child = Some(child);
            r.state = State::Starting;
            r.after = None;
            r.outdated = false;
            r.tracker = Tracker::new(health);
            r.next_probe = now + Duration::from_millis(50);
            r.last_counted_failure = None;
            r.started = Some((now, Utc::now()));
        }
        Err(e) => {
            let why = format!("{e:#}");
            tracing::warn!(service = %spec.name, replica = r.index, "could not start: {why}");
            r.last_exit = Some(why.clone());
            decide(sd, spec, r, now, false, why);
        }
    }
}

/// Apply the restart policy to an ended (or unstartable, or unhealthy) replica.
fn decide(
    sd: &StateDir,
    spec: &ServiceSpec,
    r: &mut Replica,
    now: Instant,
    success: bool,
    why: String,
) {
    match r.restarts.on_exit(now, success) {
        Decision::Restart(d) => {
            tracing::info!(service = %spec.name, replica = r.index, delay_ms = d.as_millis() as u64, "restarting after {why}");
            log_event(
                sd,
                &spec.name,
                "restart",
                format!("replica {} ({why}); in {d:?}", r.index),
            );
            r.state = State::Backoff(now + d);
        }
        Decision::Stay => {
            log_event(
                sd,
                &spec.name,
                "exit",
                format!("replica {} ({why}); not restarted by policy", r.index),
            );
            r.state = State::Exited;
        }
        Decision::GiveUp => {
            let rp = spec.effective_restart();
            tracing::error!(service = %spec.name, replica = r.index, "failed: more than {} restarts within {}; last: {why}", rp.max_restarts, rp.window);
            log_event(
                sd,
                &spec.name,
                "failed",
                format!(
                    "replica {}: more than {} restarts within {} (last: {why})",
                    r.index, rp.max_restarts, rp.window
                ),
            );
            r.state = State::Failed;
        }
    }
}

/// Advance one replica; returns true when it is gone for good (retired). `held`: ports
/// other replicas' processes hold.
fn step(
    sd: &StateDir,
    spec: &ServiceSpec,
    health: &HealthCheck,
    held: &HashSet<u16>,
    r: &mut Replica,
    now: Instant,
) -> bool {
    // 1. Has the process ended?
    if let Some(c) = r.child.as_mut() {
        if let Ok(Some(st)) = c.try_wait() {
            // Whatever the leader left behind in its group goes with it.
            process::signal_group(c.id(), libc::SIGKILL);
            let how = process::describe_exit(st);
            r.child = None;
            r.pid_start = 0;
            if let Some(p) = r.probe.take() {
                p.abort();
            }
            match (r.state, r.after.take()) {
                (State::Stopping { .. } | State::Retiring { .. }, Some(After::Retire)) => {
                    tracing::info!(service = %spec.name, replica = r.index, "replica stopped ({how})");
                    return true;
                }
                (State::Stopping { .. } | State::Retiring { .. }, Some(After::Replace)) => {
                    r.state = State::Backoff(now);
                }
                (State::Stopping { .. }, Some(After::Unhealthy)) => {
                    decide(sd, spec, r, now, false, "unhealthy".into());
                }
                _ => {
                    tracing::warn!(service = %spec.name, replica = r.index, "replica exited: {how}");
                    r.last_exit = Some(how.clone());
                    decide(sd, spec, r, now, st.success(), how);
                }
            }
        }
    }
    // 2. A retiring replica's time is up: the stop signal. Stops past their deadline get
    // SIGKILL.
    if let State::Retiring { signal_at } = r.state {
        if now >= signal_at {
            stop(spec, r, r.after.unwrap_or(After::Retire));
        }
    }
    if let (State::Stopping { deadline, killed }, Some(c)) = (r.state, r.child.as_ref()) {
        if !killed && now >= deadline {
            tracing::warn!(service = %spec.name, replica = r.index, "did not stop in time: SIGKILL");
            process::signal_group(c.id(), libc::SIGKILL);
            r.state = State::Stopping {
                deadline,
                killed: true,
            };
        }
    }
    // 3. Backoff over: start, once its port is free (not a restart counted against it).
    if let State::Backoff(at) = r.state {
        if now >= at && !held.contains(&(spec.base_port + r.index as u16)) {
            start(sd, spec, health, r, now);
        }
    }
    // 4. Health.
    if r.child.is_some() && matches!(r.state, State::Starting | State::Running) {
        probe(spec, health, r, now);
    }
    false
}

fn probe(spec: &ServiceSpec, health: &HealthCheck, r: &mut Replica, now: Instant) {
    if let Some(p) = &r.probe {
        if !p.is_finished() {
            return;
        }
        let p = r.probe.take().expect("checked above");
        let result = super::take_finished(p);
        let since_start = r
            .started
            .map(|(t, _)| now.duration_since(t))
            .unwrap_or_default();
        match result {
            Ok(()) => {
                if r.tracker.record(true) == Some(Health::Healthy) {
                    tracing::info!(service = %spec.name, replica = r.index, "healthy");
                    r.state = State::Running;
                    r.running_since = Some(now);
                    r.restarts.on_stable();
                }
            }
            Err(why) => {
                let interval = dur(&health.interval);
                let in_grace = since_start < dur(&health.start_period);
                // Until the first success, quick probes only count a failure per interval,
                // so a slow starter is not killed by its fast start-up probes.
                let counts = !in_grace
                    && (r.state == State::Running
                        || r.last_counted_failure
                            .is_none_or(|t| now.duration_since(t) >= interval));
                if counts {
                    r.last_counted_failure = Some(now);
                    tracing::debug!(service = %spec.name, replica = r.index, "health check failed: {why}");
                    if r.tracker.record(false) == Some(Health::Unhealthy) {
                        tracing::warn!(service = %spec.name, replica = r.index, "unhealthy ({why}): restarting");
                        r.last_exit = Some(format!("unhealthy: {why}"));
                        stop(spec, r, After::Unhealthy);
                        return;
                    }
                }
            }
        }
        r.next_probe = now + health::probe_every(health, r.state == State::Running);
    }
    if r.probe.is_none() && now >= r.next_probe {
        let h = health.clone();
        let port = r.port;
        let env = env_of(spec, r);
        r.probe = Some(tokio::spawn(
            async move { health::check(&h, port, &env).await },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tick `pool` for `d` (probes are tokio tasks, so they run between ticks).
    async fn run_for(pool: &mut Pool, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            pool.tick();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid_of(pool: &Pool, index: u32) -> Option<u32> {
        pool.status()
            .replicas
            .iter()
            .find(|r| r.index == index)
            .and_then(|r| r.pid)
    }

    /// The pids of replicas 1 and 2: the ones a stopped roll must leave alone.
    fn later_pids(pool: &Pool) -> Vec<u32> {
        (1..3).map(|i| pid_of(pool, i).unwrap()).collect()
    }

    fn state_of(pool: &Pool, index: u32) -> Option<String> {
        pool.status()
            .replicas
            .iter()
            .find(|r| r.index == index)
            .map(|r| r.state.clone())
    }

    /// A spec of `replicas` real processes running `command`, healthy once a quick check
    /// (`kind`: exec `true`, or tcp) passes.
    fn real_spec(command: Vec<String>, replicas: u32, kind: &str) -> ServiceSpec {
        let mut spec = crate::spec::tests::spec();
        spec.command = command;
        spec.replicas = replicas;
        spec.stop_timeout = "2s".into();
        spec.health_check = Some(HealthCheck {
            kind: kind.into(),
            command: if kind == "exec" {
                vec!["true".into()]
            } else {
                Vec::new()
            },
            interval: "100ms".into(),
            healthy_threshold: 1,
            ..Default::default()
        });
        spec
    }

    /// A state dir and a runtime for a test on real processes.
    fn fixture() -> (tempfile::TempDir, StateDir, tokio::runtime::Runtime) {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::new(t.path());
        sd.create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (t, sd, rt)
    }

    /// A pool of `spec`, once all its replicas run.
    async fn running_pool(sd: &StateDir, spec: &ServiceSpec) -> Pool {
        let mut pool = Pool::new(sd.clone(), spec.clone(), "1".into());
        let start = Instant::now();
        while pool.status().running() < spec.replicas as usize {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{:?}",
                pool.status()
            );
            run_for(&mut pool, Duration::from_millis(50)).await;
        }
        pool
    }

    /// Removes the pool and waits until every process is gone.
    async fn remove_all(pool: &mut Pool) {
        pool.remove();
        while !pool.is_empty() {
            run_for(pool, Duration::from_millis(20)).await;
        }
    }

    /// Scale-in on real processes: the replica scaled away shows as `stopping` at once but
    /// keeps running for [`RETIRE_DELAY`]; wanted again in that time it stays (same
    /// process, `running` again); scaled away for good, it is stopped after the delay.
    #[test]
    fn a_replica_scaled_away_leaves_the_running_set_before_it_is_stopped() {
        let (_t, sd, rt) = fixture();
        let spec = real_spec(vec!["sleep".into(), "60".into()], 2, "exec");
        rt.block_on(async {
            let mut pool = running_pool(&sd, &spec).await;
            let pid = pid_of(&pool, 1).unwrap();

            // Scaled to 1: out of the running set at once, the process untouched.
            pool.update(
                ServiceSpec {
                    replicas: 1,
                    ..spec.clone()
                },
                "2".into(),
            );
            pool.tick();
            assert_eq!(state_of(&pool, 1).as_deref(), Some("stopping"));
            assert_eq!(pool.status().running(), 1);
            assert!(process::is_same_process(
                pid,
                pool.status().replicas[1].pid_start
            ));

            // Wanted again within the delay: the same process, running again.
            run_for(&mut pool, RETIRE_DELAY / 4).await;
            pool.update(
                ServiceSpec {
                    replicas: 2,
                    ..spec.clone()
                },
                "3".into(),
            );
            run_for(&mut pool, RETIRE_DELAY * 2).await;
            assert_eq!(state_of(&pool, 1).as_deref(), Some("running"));
            assert_eq!(pid_of(&pool, 1), Some(pid), "the replica was restarted");

            // Scaled away, then wanted again with other process settings: replaced, not kept.
            pool.update(
                ServiceSpec {
                    replicas: 1,
                    ..spec.clone()
                },
                "5".into(),
            );
            pool.tick();
            let changed = ServiceSpec {
                replicas: 2,
                command: vec!["sleep".into(), "61".into()],
                ..spec.clone()
            };
            pool.update(changed.clone(), "6".into());
            let since = Instant::now();
            while pid_of(&pool, 1) == Some(pid) || state_of(&pool, 1).as_deref() != Some("running")
            {
                assert!(
                    since.elapsed() < Duration::from_secs(10),
                    "{:?}",
                    pool.status()
                );
                run_for(&mut pool, Duration::from_millis(20)).await;
            }
            let spec = changed;
            let pid = pid_of(&pool, 1).unwrap();
            assert!(std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap()
                .contains("61"));

            // Scaled away for good: stopped once the delay is over.
            pool.update(
                ServiceSpec {
                    replicas: 1,
                    ..spec.clone()
                },
                "4".into(),
            );
            let since = Instant::now();
            while state_of(&pool, 1).is_some() {
                assert!(
                    since.elapsed() < Duration::from_secs(10),
                    "{:?}",
                    pool.status()
                );
                run_for(&mut pool, Duration::from_millis(20)).await;
            }
            assert!(since.elapsed() >= RETIRE_DELAY, "stopped before the delay");
            remove_all(&mut pool).await;
        });
    }

    /// The command of a replica's process, from /proc.
    fn cmdline(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .replace('\0', " ")
    }

    /// A changed command replaces the replicas one at a time on real processes: never more
    /// than one out of the running set, each next one only once the last is running; and
    /// a new command that never becomes healthy stops the roll after its first replica,
    /// the others still running the old one.
    #[test]
    fn a_changed_command_replaces_replicas_one_at_a_time() {
        let (_t, sd, rt) = fixture();
        let spec = real_spec(vec!["sleep".into(), "60".into()], 3, "exec");
        rt.block_on(async {
            let mut pool = running_pool(&sd, &spec).await;

            let new = ServiceSpec {
                command: vec!["sleep".into(), "61".into()],
                ..spec.clone()
            };
            pool.update(new.clone(), "2".into());
            pool.tick();
            let st = pool.status();
            assert_eq!(st.outdated(), 3, "{st:?}");
            assert_eq!(
                st.replicas.iter().filter(|r| r.state == "stopping").count(),
                1,
                "one leaves at once, two wait: {st:?}"
            );
            let since = Instant::now();
            let mut replaced_order = Vec::new();
            loop {
                let st = pool.status();
                assert!(
                    st.running() >= 2,
                    "more than one replica out at once: {st:?}"
                );
                for r in &st.replicas {
                    let new_cmd = r.pid.is_some_and(|p| cmdline(p).contains("61"));
                    if new_cmd && r.state == "running" && !replaced_order.contains(&r.index) {
                        replaced_order.push(r.index);
                    }
                }
                if replaced_order.len() == 3 {
                    break;
                }
                assert!(since.elapsed() < Duration::from_secs(30), "{st:?}");
                run_for(&mut pool, Duration::from_millis(10)).await;
            }
            assert_eq!(replaced_order, vec![0, 1, 2]);
            assert_eq!(pool.status().outdated(), 0);
            assert!(
                since.elapsed() >= RETIRE_DELAY * 3,
                "each replica left the running set before it was signalled"
            );

            // A command that exits at once never becomes healthy: the roll stops there.
            let old_pids = later_pids(&pool);
            pool.update(
                ServiceSpec {
                    command: vec!["false".into()],
                    ..new.clone()
                },
                "3".into(),
            );
            run_for(&mut pool, RETIRE_DELAY * 4).await;
            let st = pool.status();
            assert_ne!(state_of(&pool, 0).as_deref(), Some("running"), "{st:?}");
            assert_eq!(
                later_pids(&pool),
                old_pids,
                "the roll went on past a replica that never became healthy: {st:?}"
            );
            assert_eq!(st.running(), 2);
            assert_eq!(st.outdated(), 2);

            remove_all(&mut pool).await;
        });
    }

    /// `min_ready`: a build that passes its first check and then crashes stops the roll at
    /// its first replica (the others keep their processes); a good build goes through, each
    /// replacement healthy for `min_ready` before the next goes, and apply's view
    /// (`settling`) clears only once the last one has been.
    #[test]
    fn a_replacement_must_stay_healthy_for_min_ready_before_the_roll_goes_on() {
        let (_t, sd, rt) = fixture();
        let min_ready = Duration::from_secs(2);
        let spec = ServiceSpec {
            min_ready: "2s".into(),
            ..real_spec(vec!["sleep".into(), "60".into()], 3, "exec")
        };
        rt.block_on(async {
            let mut pool = running_pool(&sd, &spec).await;
            let old_pids = later_pids(&pool);
            let sh = |script: &str| vec!["sh".into(), "-c".into(), script.into()];
            pool.update(
                ServiceSpec {
                    command: sh("sleep 1; exit 1"),
                    ..spec.clone()
                },
                "2".into(),
            );
            run_for(&mut pool, Duration::from_secs(6)).await;
            let st = pool.status();
            assert_eq!(
                later_pids(&pool),
                old_pids,
                "the roll went past a replica that crashed within min_ready: {st:?}"
            );
            assert_eq!(st.outdated(), 2, "{st:?}");

            pool.update(
                ServiceSpec {
                    command: vec!["sleep".into(), "61".into()],
                    ..spec.clone()
                },
                "3".into(),
            );
            let since = Instant::now();
            loop {
                let st = pool.status();
                let all_new = st
                    .replicas
                    .iter()
                    .all(|r| r.pid.is_some_and(|p| cmdline(p).contains("61")));
                if all_new && st.running() == 3 && st.outdated() == 0 && st.settling() == 0 {
                    break;
                }
                assert!(
                    st.running() >= 2,
                    "more than one replica out at once: {st:?}"
                );
                assert!(since.elapsed() < Duration::from_secs(40), "{st:?}");
                run_for(&mut pool, Duration::from_millis(20)).await;
            }
            assert!(
                since.elapsed() >= min_ready * 3,
                "each replacement must be healthy for min_ready before the next: {:?}",
                since.elapsed()
            );
            remove_all(&mut pool).await;
        });
    }

    /// Scaled to zero by its schedule, a pool asks the agent for no tick until the next
    /// firing of any of its schedules; with processes, or a firing it has not taken in
    /// yet, it asks for the tick.
    #[test]
    fn a_pool_scaled_to_zero_sleeps_until_its_next_firing() {
        let (_t, sd, rt) = fixture();
        let sched = |name: &str, cron: &str, n: u32| crate::spec::Schedule {
            name: name.into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            min_replicas: n,
            max_replicas: n,
        };
        let mut spec = real_spec(vec!["sleep".into(), "60".into()], 2, "exec");
        // "night" fires every minute, so it is the window in force (bar the first minute of
        // a year); "day" would bring 2 replicas on 1 January.
        spec.schedules = vec![sched("night", "* * * * *", 0), sched("day", "0 0 1 1 *", 2)];
        rt.block_on(async {
            let mut pool = Pool::new(sd.clone(), spec.clone(), "1".into());
            assert_eq!(pool.needs(Utc::now()), Needs::Tick, "not looked yet");
            pool.tick();
            let now = Utc::now();
            let Needs::WakeAt(Some(at)) = pool.needs(now) else {
                panic!("{:?}", pool.needs(now))
            };
            assert!(
                at > now && at - now <= chrono::Duration::seconds(60),
                "{at} is not the next minute after {now}"
            );
            assert!(pool.status().replicas.is_empty());

            // A window it has not taken in yet: the tick, until it has.
            pool.schedule = Some("day".into());
            assert_eq!(pool.needs(Utc::now()), Needs::Tick);

            // No schedule, no replica: nothing to wake for but a new spec.
            let mut zero = Pool::new(
                sd.clone(),
                ServiceSpec {
                    replicas: 0,
                    schedules: Vec::new(),
                    ..spec.clone()
                },
                "1".into(),
            );
            zero.tick();
            assert_eq!(zero.needs(Utc::now()), Needs::WakeAt(None));

            // Processes to watch: the tick.
            let mut one = running_pool(
                &sd,
                &ServiceSpec {
                    name: "one".into(),
                    replicas: 1,
                    schedules: Vec::new(),
                    ..spec.clone()
                },
            )
            .await;
            assert_eq!(one.needs(Utc::now()), Needs::Tick);
            remove_all(&mut one).await;
        });
    }

    /// A new `base_port` one up: replica 0's new port is the one replica 1 holds. Replaced
    /// all at once, every replica binds its new port (a roll would wait forever for
    /// replica 0).
    #[test]
    fn a_moved_base_port_replaces_all_replicas_at_once() {
        // Three consecutive free ports, below Linux's default ephemeral range (32768 up):
        // no other test's `bind(0)` takes them while the replicas start, and the tcp checks
        // that find a port not bound yet reach nobody else's listener.
        let base = (20_000..32_000u16)
            .step_by(7)
            .find(|&p| (p..p + 3).all(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()))
            .unwrap();
        let (_t, sd, rt) = fixture();
        let mut spec = real_spec(vec![
            "python3".into(),
            "-c".into(),
            "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',int(sys.argv[1])))\ns.listen()\ntime.sleep(60)".into(),
            "{port}".into(),
        ], 2, "tcp");
        spec.base_port = base;
        // A python that takes more than the three 100 ms probes to bind (a loaded CI
        // machine) is slow, not crashed: only an exit may count as a restart here.
        if let Some(h) = spec.health_check.as_mut() {
            h.start_period = "30s".into();
        }
        rt.block_on(async {
            let mut pool = running_pool(&sd, &spec).await;
            pool.update(
                ServiceSpec {
                    base_port: base + 1,
                    ..spec.clone()
                },
                "2".into(),
            );
            let since = Instant::now();
            loop {
                let st = pool.status();
                let ports: Vec<u16> = st
                    .replicas
                    .iter()
                    .filter(|r| r.state == "running")
                    .map(|r| r.port)
                    .collect();
                if ports == [base + 1, base + 2] {
                    break;
                }
                assert!(since.elapsed() < Duration::from_secs(20), "{st:?}");
                run_for(&mut pool, Duration::from_millis(50)).await;
            }
            // No replica started on a port still held: none crashed on its way.
            let st = pool.status();
            assert!(st.replicas.iter().all(|r| r.restarts == 0), "{st:?}");
            remove_all(&mut pool).await;
        });
    }
}
