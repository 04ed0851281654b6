//! Desired state for long-running things, as the provider writes it and the agent reads it.
//!
//! The spec mirrors what the user wrote in HCL (with attribute defaults filled in), not what
//! the agent derives from it: that way `terraform plan` can read a spec back and show a hand
//! edit as a diff, and a missing block stays missing instead of turning into a perpetual
//! diff. The agent applies block defaults itself (`effective_*`). Both sides use these
//! types; `api_version` lets an older agent refuse a spec it does not understand.

use crate::duration;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Bumped on incompatible changes of the files below.
pub const API_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub api_version: u32,
    pub name: String,
    /// argv; `{port}` anywhere is replaced by the replica's port.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The directory relative paths were written against (Terraform's working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dir: Option<String>,
    pub replicas: u32,
    pub base_port: u16,
    pub port_env_var: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    pub stop_signal: String,
    pub stop_timeout: String,
    /// A replica replaced by a rolling replace must stay healthy this long before the next
    /// one goes (Kubernetes' `minReadySeconds`); `0s`, the default, is not written.
    #[serde(default = "zero_duration", skip_serializing_if = "is_zero_duration")]
    pub min_ready: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    #[serde(default)]
    pub cost_per_replica_hour: f64,
    /// Changed by every `terraform apply`; a new generation clears replicas the agent gave
    /// up on (`failed`), which is how apply repairs them. Not shown in Terraform state.
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http`, `tcp` or `exec`.
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    pub interval: String,
    pub timeout: String,
    pub start_period: String,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// HTTP statuses that count as healthy: `200-399`, `200,302`.
    pub matcher: String,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: "http".into(),
            path: "/".into(),
            command: Vec::new(),
            interval: "10s".into(),
            timeout: "5s".into(),
            start_period: "0s".into(),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            matcher: "200-399".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// `always`, `on-failure` or `never`.
    pub policy: String,
    pub max_restarts: u32,
    pub window: String,
    pub backoff_initial: String,
    pub backoff_max: String,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            policy: "always".into(),
            max_restarts: 5,
            window: "60s".into(),
            backoff_initial: "100ms".into(),
            backoff_max: "30s".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// In-flight requests per replica the pool aims for.
    pub target_utilization: f64,
    pub scale_out_cooldown: String,
    pub scale_in_cooldown: String,
    #[serde(default)]
    pub disable_scale_in: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub name: String,
    /// 5 fields, or 6 with seconds first.
    pub cron: String,
    pub timezone: String,
    pub min_replicas: u32,
    pub max_replicas: u32,
}

/// One problem in a spec, with the attribute path as Terraform shows it
/// (`schedule.0.cron`) so the provider can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// The highest port offset a service may use: its port range is
/// `base_port .. base_port + max_replicas()`.
impl ServiceSpec {
    pub fn max_replicas(&self) -> u32 {
        let mut m = self.replicas;
        if let Some(a) = &self.autoscaling {
            m = m.max(a.max_replicas);
        }
        for s in &self.schedules {
            m = m.max(s.max_replicas);
        }
        m.max(1)
    }

    pub fn port_range(&self) -> std::ops::Range<u32> {
        let b = self.base_port as u32;
        b..b + self.max_replicas()
    }

    pub fn effective_health(&self) -> HealthCheck {
        self.health_check.clone().unwrap_or_default()
    }

    pub fn effective_restart(&self) -> RestartPolicy {
        self.restart.clone().unwrap_or_default()
    }

    /// Every problem, not only the first: a plan shows them all at once.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |path: &str, message: String| {
            out.push(Problem {
                path: path.to_string(),
                message,
            })
        };
        if let Err(e) = crate::naming::validate_name(&self.name) {
            bad("name", format!("{e}"));
        }
        if self.command.is_empty() || self.command[0].trim().is_empty() {
            bad(
                "command",
                "command must be a non-empty list whose first element is the program, e.g. [\"python3\", \"-m\", \"http.server\", \"{port}\"]".into(),
            );
        }
        if self.base_port == 0 {
            bad("base_port", "base_port must be between 1 and 65535".into());
        } else if self.port_range().end > 65536 {
            bad(
                "base_port",
                format!(
                    "base_port {} + {} replicas runs past port 65535",
                    self.base_port,
                    self.max_replicas()
                ),
            );
        }
        if self.port_env_var.is_empty()
            || !self
                .port_env_var
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bad(
                "port_env_var",
                format!(
                    "port_env_var {:?} must be an environment variable name (letters, digits, _)",
                    self.port_env_var
                ),
            );
        }
        if crate::signal::signal_number(&self.stop_signal).is_none() {
            bad(
                "stop_signal",
                format!(
                    "unknown stop_signal {:?}: use SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2 or SIGKILL",
                    self.stop_signal
                ),
            );
        }
        check_duration(&mut bad, "stop_timeout", &self.stop_timeout);
        check_duration(&mut bad, "min_ready", &self.min_ready);
        if let Some(h) = &self.health_check {
            if !["http", "tcp", "exec"].contains(&h.kind.as_str()) {
                bad(
                    "health_check.0.type",
                    format!(
                        "unknown health check type {:?}: use \"http\", \"tcp\" or \"exec\"",
                        h.kind
                    ),
                );
            }
            if h.kind == "exec" && h.command.is_empty() {
                bad(
                    "health_check.0.command",
                    "an exec health check needs a command".into(),
                );
            }
            if h.kind == "http" && !h.path.starts_with('/') {
                bad(
                    "health_check.0.path",
                    format!("path {:?} must start with '/'", h.path),
                );
            }
            for (k, v) in [
                ("interval", &h.interval),
                ("timeout", &h.timeout),
                ("start_period", &h.start_period),
            ] {
                check_duration(&mut bad, &format!("health_check.0.{k}"), v);
            }
            for (k, v) in [
                ("healthy_threshold", h.healthy_threshold),
                ("unhealthy_threshold", h.unhealthy_threshold),
            ] {
                if v == 0 {
                    bad(
                        &format!("health_check.0.{k}"),
                        format!("{k} must be at least 1"),
                    );
                }
            }
            if let Err(e) = parse_matcher(&h.matcher) {
                bad("health_check.0.matcher", format!("{e}"));
            }
        }
        if let Some(r) = &self.restart {
            if !["always", "on-failure", "never"].contains(&r.policy.as_str()) {
                bad(
                    "restart.0.policy",
                    format!(
                        "unknown restart policy {:?}: use \"always\", \"on-failure\" or \"never\"",
                        r.policy
                    ),
                );
            }
            for (k, v) in [
                ("window", &r.window),
                ("backoff_initial", &r.backoff_initial),
                ("backoff_max", &r.backoff_max),
            ] {
                check_duration(&mut bad, &format!("restart.0.{k}"), v);
            }
            if let (Ok(a), Ok(b)) = (
                duration::parse(&r.backoff_initial),
                duration::parse(&r.backoff_max),
            ) {
                if a > b {
                    bad(
                        "restart.0.backoff_max",
                        format!(
                            "backoff_max ({}) must not be shorter than backoff_initial ({})",
                            r.backoff_max, r.backoff_initial
                        ),
                    );
                }
            }
        }
        if let Some(a) = &self.autoscaling {
            if a.min_replicas > a.max_replicas {
                bad(
                    "autoscaling.0.min_replicas",
                    format!(
                        "min_replicas ({}) must not be greater than max_replicas ({})",
                        a.min_replicas, a.max_replicas
                    ),
                );
            }
            if a.max_replicas == 0 {
                bad(
                    "autoscaling.0.max_replicas",
                    "max_replicas must be at least 1 (scale to zero with a schedule)".into(),
                );
            }
            if !(a.target_utilization > 0.0 && a.target_utilization.is_finite()) {
                bad(
                    "autoscaling.0.target_utilization",
                    format!(
                        "target_utilization must be a positive number of in-flight requests per replica; got {}",
                        a.target_utilization
                    ),
                );
            }
            for (k, v) in [
                ("scale_out_cooldown", &a.scale_out_cooldown),
                ("scale_in_cooldown", &a.scale_in_cooldown),
            ] {
                check_duration(&mut bad, &format!("autoscaling.0.{k}"), v);
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            if !names.insert(&s.name) {
                bad(
                    &format!("schedule.{i}.name"),
                    format!("schedule name {:?} is used twice", s.name),
                );
            }
            if let Err(e) = crate::cron::parse_cron(&s.cron) {
                bad(&format!("schedule.{i}.cron"), format!("{e}"));
            }
            if let Err(e) = crate::cron::parse_zone(&s.timezone) {
                bad(&format!("schedule.{i}.timezone"), format!("{e}"));
            }
            if s.min_replicas > s.max_replicas {
                bad(
                    &format!("schedule.{i}.min_replicas"),
                    format!(
                        "min_replicas ({}) must not be greater than max_replicas ({})",
                        s.min_replicas, s.max_replicas
                    ),
                );
            }
        }
        if !(self.cost_per_replica_hour >= 0.0 && self.cost_per_replica_hour.is_finite()) {
            bad(
                "cost_per_replica_hour",
                "cost_per_replica_hour must be 0 or a positive number".into(),
            );
        }
        out
    }
}

fn check_duration(bad: &mut impl FnMut(&str, String), path: &str, v: &str) {
    if let Err(e) = duration::parse(v) {
        bad(path, format!("{e}"));
    }
}

/// Parse a duration that `validate` already accepted.
pub fn dur(v: &str) -> Duration {
    duration::parse(v).unwrap_or(Duration::from_secs(10))
}

/// `200-399`, `200,302`, `200`: the set of HTTP statuses that count as healthy.
pub fn parse_matcher(m: &str) -> Result<Vec<(u16, u16)>> {
    let mut out = Vec::new();
    for part in m.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let (a, b): (u16, u16) = match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) if (100..=599).contains(&a) && (100..=599).contains(&b) && a <= b => {
                (a, b)
            }
            _ => anyhow::bail!(
                "invalid matcher {m:?}: use HTTP statuses or ranges like \"200-399\" or \"200,302\""
            ),
        };
        out.push((a, b));
    }
    Ok(out)
}

// ---- status, as the agent publishes it ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub api_version: u32,
    pub name: String,
    /// BLAKE3 of the spec file bytes this status was computed for.
    pub spec_hash: String,
    pub generation: u64,
    /// How many replicas should run now (after schedules and autoscaling).
    pub desired: u32,
    /// Why `desired` is what it is: `spec`, `schedule <name>`, `autoscaling`.
    pub reason: String,
    pub replicas: Vec<ReplicaStatus>,
    /// The schedule window in force, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Last measured in-flight requests over the pool (autoscaling input).
    #[serde(default)]
    pub in_flight: u32,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub index: u32,
    pub port: u16,
    pub pid: Option<u32>,
    /// Process start time in clock ticks since boot (from /proc), so a cleanup never kills
    /// a recycled pid.
    #[serde(default)]
    pub pid_start: u64,
    /// `starting`, `running`, `backoff`, `stopping`, `exited`, `failed`.
    pub state: String,
    /// `unknown`, `healthy`, `unhealthy`.
    pub health: String,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Runs an earlier spec's process settings; a rolling replace is under way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outdated: bool,
    /// Replaced by the rolling replace and running, but not yet healthy for `min_ready`:
    /// the roll waits for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub settling: bool,
}

impl ServiceStatus {
    /// Replicas the agent is running or bringing up (not given up on, not stopping).
    pub fn live(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| matches!(r.state.as_str(), "starting" | "running" | "backoff"))
            .count()
    }
    pub fn running(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.state == "running")
            .count()
    }
    /// Replicas still running an earlier spec's process settings (a rolling replace).
    pub fn outdated(&self) -> usize {
        self.replicas.iter().filter(|r| r.outdated).count()
    }
    /// Replaced replicas not yet healthy for `min_ready`.
    pub fn settling(&self) -> usize {
        self.replicas.iter().filter(|r| r.settling).count()
    }
    pub fn healthy(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.state == "running" && r.health == "healthy")
            .count()
    }
    pub fn failed(&self) -> Vec<&ReplicaStatus> {
        self.replicas
            .iter()
            .filter(|r| r.state == "failed")
            .collect()
    }
}

/// An HTTP load balancer the agent runs (`balancers/<name>.json`). The health-check shape
/// is Kong's (`healthchecks.active/passive.healthy/unhealthy`), defaults as in the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerSpec {
    pub api_version: u32,
    pub name: String,
    /// `127.0.0.1:8080` by default: loopback unless told otherwise.
    pub listen: String,
    /// Follow this service's replicas (its status) as targets, weight 1 each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// Used only when every primary target is down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backup_targets: Vec<Target>,
    /// A service whose replicas are backup targets (weight 1 each), followed as it scales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_service: Option<String>,
    /// `round-robin` (weighted), `least-connections`, `random-two-choices`.
    pub algorithm: String,
    pub healthchecks: Healthchecks,
    /// Extra attempts on another target (idempotent requests, or nothing sent upstream).
    pub retries: u32,
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Admin API (`/status`, `/targets`, `/health`, `/metrics`): loopback only.
    pub admin_listen: String,
    /// `http` (a load balancer) or `queue` (a file-queue dispatcher, see [`QueueSpec`]).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Queue mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
    /// A re-admitted target's weight ramps from 10% to full over this long (Envoy's
    /// slow start); `0s` turns it off.
    #[serde(default = "default_slow_start")]
    pub slow_start: String,
    /// JSON-lines access log in `logs/<name>-access.log` (on by default).
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Kong's correlation-id plugin: the request id header and whether answers carry it.
    #[serde(default)]
    pub correlation_id: CorrelationId,
    /// How long draining waits for requests in flight: a target drained through the admin
    /// API, and the balancer's connections when it stops.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: String,
}

fn zero_duration() -> String {
    "0s".into()
}

fn is_zero_duration(d: &str) -> bool {
    d == "0s"
}

fn default_drain_timeout() -> String {
    "30s".into()
}

fn default_true() -> bool {
    true
}

fn default_mode() -> String {
    "http".into()
}

fn default_slow_start() -> String {
    "0s".into()
}

/// Queue mode: files dropped in `incoming_dir` go, one at a time and round-robin over the
/// healthy workers, into `<workers_dir>/<worker>/` (claimed by a rename, so a file is
/// always in exactly one place). With a `command`, the dispatcher runs it on the file and
/// files the outcome: `<worker>/processed/` on exit 0, `errors_dir` with a reason file
/// otherwise. Without one, the worker consumes its directory itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    pub incoming_dir: String,
    pub workers_dir: String,
    pub errors_dir: String,
    /// Per-worker JSON-lines logs (`load_<worker>.jsonl`).
    pub log_dir: String,
    /// A full scan this often; inotify wakes the dispatcher sooner where it works.
    pub poll_interval: String,
    /// argv; `{file}` is replaced by the item's path (appended when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// A command running longer is killed and its item filed as an error.
    pub timeout: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub address: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Healthchecks {
    pub active: ActiveCheck,
    pub passive: PassiveCheck,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveCheck {
    /// `http` or `tcp`.
    #[serde(rename = "type")]
    pub kind: String,
    pub http_path: String,
    pub timeout: String,
    /// Kong's `concurrency`: at most this many probes at once, so a big pool (or many
    /// targets going bad at once, each probed until its timeout) does not turn the checks
    /// into a burst of connections. Specs written before it existed read as the default.
    #[serde(default = "default_check_concurrency")]
    pub concurrency: u32,
    pub healthy: Thresholds,
    pub unhealthy: Thresholds,
}

fn default_check_concurrency() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassiveCheck {
    pub healthy: Thresholds,
    pub unhealthy: Thresholds,
    /// Envoy: an ejected target stays out base × (number of ejections), capped at
    /// `max_ejection_time`.
    pub base_ejection_time: String,
    pub max_ejection_percent: u32,
    /// Envoy's cap on an ejection (default 300s). Specs written before it existed read
    /// as the default.
    #[serde(default = "default_max_ejection_time")]
    pub max_ejection_time: String,
    /// Envoy's `healthy_panic_threshold`: when fewer than this percentage of the primaries
    /// are available and no backup is, balance across every primary. 0 (the default):
    /// only when none is available, so known-bad targets get no traffic while any good
    /// one remains.
    #[serde(default)]
    pub panic_threshold: u32,
}

/// The request id: kept from the client when it sent one, else generated; passed to the
/// target, logged, and (with `echo_downstream`) returned to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationId {
    pub header_name: String,
    pub echo_downstream: bool,
}

impl Default for CorrelationId {
    fn default() -> Self {
        CorrelationId {
            header_name: "X-Request-ID".into(),
            echo_downstream: true,
        }
    }
}

impl CorrelationId {
    /// The header name as HTTP takes it, or why it cannot be one.
    pub fn header(&self) -> Result<hyper::header::HeaderName, String> {
        hyper::header::HeaderName::from_bytes(self.header_name.as_bytes()).map_err(|_| {
            format!(
                "correlation_id.header_name {:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
                self.header_name
            )
        })
    }
}

fn default_max_ejection_time() -> String {
    "300s".into()
}

/// Kong's counters; 0 turns a counter off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    pub interval: String,
    #[serde(default)]
    pub successes: u32,
    #[serde(default)]
    pub http_failures: u32,
    #[serde(default)]
    pub tcp_failures: u32,
    #[serde(default)]
    pub timeouts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_statuses: Vec<u16>,
}

impl Default for ActiveCheck {
    fn default() -> Self {
        ActiveCheck {
            kind: "http".into(),
            http_path: "/".into(),
            timeout: "1s".into(),
            concurrency: default_check_concurrency(),
            healthy: Thresholds {
                interval: "10s".into(),
                successes: 2,
                http_failures: 0,
                tcp_failures: 0,
                timeouts: 0,
                http_statuses: vec![200, 302],
            },
            unhealthy: Thresholds {
                interval: "10s".into(),
                successes: 0,
                http_failures: 3,
                tcp_failures: 3,
                timeouts: 3,
                http_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505],
            },
        }
    }
}

impl Default for PassiveCheck {
    fn default() -> Self {
        PassiveCheck {
            healthy: Thresholds {
                interval: "0s".into(),
                successes: 5,
                http_failures: 0,
                tcp_failures: 0,
                timeouts: 0,
                http_statuses: vec![],
            },
            unhealthy: Thresholds {
                interval: "0s".into(),
                successes: 0,
                http_failures: 5,
                tcp_failures: 2,
                timeouts: 2,
                http_statuses: vec![500, 502, 503, 504],
            },
            base_ejection_time: "30s".into(),
            max_ejection_percent: 50,
            max_ejection_time: default_max_ejection_time(),
            panic_threshold: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub connect: String,
    pub read: String,
    pub write: String,
    /// Client side (nginx's `client_header_timeout`): the longest a client may take to send
    /// a request head, counted from when the connection is ready for one, so it also closes
    /// idle keep-alive connections. Without it a client that connects and says nothing holds
    /// a connection forever.
    #[serde(default = "default_client_timeout")]
    pub client: String,
}

fn default_client_timeout() -> String {
    "60s".into()
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: "60s".into(),
            read: "60s".into(),
            write: "60s".into(),
            client: default_client_timeout(),
        }
    }
}

/// Per-client limits, Kong's rate-limiting shape: any of a per-second, per-minute and
/// per-hour limit, each its own token bucket; a request must fit all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<u32>,
    /// HCL `requests_per_minute` (issue 4's name) or `minute` (Kong's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u32>,
    /// Depth of the per-minute bucket: how many requests a client may make at once
    /// (default: the whole minute's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `ip` or `header:<name>` (a client without that header is counted by its IP).
    pub by: String,
}

impl RateLimit {
    /// The header clients are counted by (`by = "header:<name>"`), or why it cannot be one.
    pub fn key_header(&self) -> Result<Option<hyper::header::HeaderName>, String> {
        match self.by.strip_prefix("header:") {
            None if self.by == "ip" => Ok(None),
            None => Err(format!(
                "rate_limit.by must be \"ip\" or \"header:<name>\"; got {:?}",
                self.by
            )),
            Some(name) => hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map(Some)
                .map_err(|_| {
                    format!(
                        "rate limit header {name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
                    )
                }),
        }
    }
}

/// What the agent publishes for a balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalancerStatus {
    pub name: String,
    pub spec_hash: String,
    /// Where it listens, when it does.
    pub listening: Option<String>,
    pub admin: Option<String>,
    /// Why it is not running (e.g. the port is in use).
    pub error: Option<String>,
    pub targets: serde_json::Value,
    /// Queue mode: what the dispatcher is doing (workers, counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<serde_json::Value>,
}

impl BalancerStatus {
    /// Serving: listening (HTTP mode) or dispatching (queue mode), with no error.
    pub fn running(&self) -> bool {
        self.error.is_none() && (self.listening.is_some() || self.queue.is_some())
    }
}

/// A backup the agent takes on a cron schedule: the policy itself stays in the vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSchedule {
    pub api_version: u32,
    /// The backup name (the policy's name in `vault`).
    pub name: String,
    /// Absolute vault path.
    pub vault: String,
    /// 5 fields, or 6 with seconds first, read in `timezone`.
    pub cron: String,
    /// IANA zone the cron is read in; absent means UTC (and keeps older files as they were).
    #[serde(default = "utc", skip_serializing_if = "is_utc")]
    pub timezone: String,
    /// A run that cannot start within this long of its time is skipped (AWS Backup).
    pub start_window: String,
}

fn utc() -> String {
    "UTC".into()
}

fn is_utc(tz: &str) -> bool {
    tz == "UTC"
}

/// What the agent publishes for a backup schedule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BackupScheduleStatus {
    /// The backup's name (the schedule's file is keyed by it and its vault).
    pub name: String,
    /// Absolute vault path (absent in files of versions before it was part of the key).
    #[serde(default)]
    pub vault: String,
    pub spec_hash: String,
    pub next_run: Option<String>,
    pub last_run: Option<String>,
    /// `ok`, `error: …`, `skipped: …`, or `running`.
    pub last_result: Option<String>,
    pub last_snapshot: Option<String>,
    pub runs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub api_version: u32,
    pub pid: u32,
    pub started_at: String,
    pub version: String,
    pub log_file: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A spec written before the per-second and per-hour limits still reads the same, and
    /// writes back byte for byte (its hash, which drift compares, does not change).
    #[test]
    fn an_older_rate_limit_reads_and_writes_back_unchanged() {
        let old = r#"{"requests_per_minute":100,"burst":5,"by":"ip"}"#;
        let r: RateLimit = serde_json::from_str(old).unwrap();
        assert_eq!(
            (r.per_second, r.requests_per_minute, r.per_hour, r.burst),
            (None, Some(100), None, Some(5))
        );
        assert_eq!(serde_json::to_string(&r).unwrap(), old);
        assert!(r.key_header().unwrap().is_none());
        let by = |s: &str| RateLimit {
            by: s.into(),
            ..Default::default()
        };
        assert_eq!(
            by("header:X-Api-Key").key_header().unwrap().unwrap(),
            "x-api-key"
        );
        assert!(by("header:bad name").key_header().is_err());
        assert!(by("cookie").key_header().is_err());
    }

    /// A valid spec for tests to change.
    pub fn spec() -> ServiceSpec {
        ServiceSpec {
            api_version: API_VERSION,
            name: "web".into(),
            command: vec!["worker".into(), "{port}".into()],
            env: BTreeMap::new(),
            working_dir: None,
            base_dir: None,
            replicas: 3,
            base_port: 8100,
            port_env_var: "PORT".into(),
            health_check: None,
            restart: None,
            stop_signal: "SIGTERM".into(),
            stop_timeout: "10s".into(),
            min_ready: "0s".into(),
            autoscaling: None,
            schedules: vec![],
            cost_per_replica_hour: 0.0,
            generation: 0,
        }
    }

    #[test]
    fn a_good_spec_has_no_problems() {
        assert!(spec().validate().is_empty());
    }

    #[test]
    fn problems_name_their_attribute() {
        let mut s = spec();
        s.command = vec![];
        s.autoscaling = Some(Autoscaling {
            min_replicas: 4,
            max_replicas: 2,
            target_utilization: 1.0,
            scale_out_cooldown: "1s".into(),
            scale_in_cooldown: "1s".into(),
            disable_scale_in: false,
        });
        s.schedules = vec![Schedule {
            name: "night".into(),
            cron: "61 * * * *".into(),
            timezone: "Mars/Olympus".into(),
            min_replicas: 0,
            max_replicas: 0,
        }];
        let paths: Vec<String> = s.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "command",
                "autoscaling.0.min_replicas",
                "schedule.0.cron",
                "schedule.0.timezone"
            ]
        );
    }

    #[test]
    fn port_range_covers_the_largest_pool() {
        let mut s = spec();
        s.schedules = vec![Schedule {
            name: "peak".into(),
            cron: "0 8 * * *".into(),
            timezone: "UTC".into(),
            min_replicas: 5,
            max_replicas: 6,
        }];
        assert_eq!(s.port_range(), 8100..8106);
    }

    #[test]
    fn matcher_accepts_lists_and_ranges() {
        assert_eq!(
            parse_matcher("200-399, 418").unwrap(),
            vec![(200, 399), (418, 418)]
        );
        assert!(parse_matcher("2xx").is_err());
    }
}
