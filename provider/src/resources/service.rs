//! `localdr_service`: a pool of local worker processes run by the agent.
//!
//! The provider only writes the spec (`<state_dir>/services/<name>.json`), makes sure an
//! agent runs, and waits for the pool to converge. Read writes every configurable
//! attribute back from the spec on disk (a hand edit shows as a diff; a deleted spec means
//! the resource is gone) and sets `ensure_running = false` when the agent is not running or
//! has given up on a replica, so `plan` shows `false -> true` and `apply` repairs it.

use super::util::{blocking, fill, known, v};
use crate::provider::Shared;
use crate::schema::{attr, boolean, number, string};
use async_trait::async_trait;
use localdr::runtime::control::{self, AgentMode};
use localdr::spec::{self, Autoscaling, HealthCheck, RestartPolicy, Schedule, ServiceSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tf_provider::schema::{
    AttributeConstraint::{Computed, Optional, OptionalComputed, Required},
    AttributeType, Block, Description, NestedBlock, Schema,
};
use tf_provider::value::{self, Value, ValueEmpty};
use tf_provider::{map, AttributePath, Diagnostics, Resource};

type S = Value<String>;
type N = Value<i64>;
type F = Value<Num>;

/// A Terraform number that may be fractional. Terraform sends whole numbers as integers,
/// binary fractions as floats, and the rest (0.05) as decimal strings, so all three parse.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Num(pub f64);

/// Sent back the way Terraform sends it: an integer, or a decimal string (`0.05`) that
/// Terraform parses to exactly the number in the configuration (a float64 would differ in
/// the last bits and fail Terraform's plan consistency check).
impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        if x.fract() == 0.0 && x.abs() < 9.0e15 {
            s.serialize_i64(x as i64)
        } else {
            s.serialize_str(&format!("{x}"))
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E>(self, x: f64) -> Result<Num, E> {
                Ok(Num(x))
            }
            fn visit_i64<E>(self, x: i64) -> Result<Num, E> {
                Ok(Num(x as f64))
            }
            fn visit_u64<E>(self, x: u64) -> Result<Num, E> {
                Ok(Num(x as f64))
            }
            fn visit_str<E: serde::de::Error>(self, x: &str) -> Result<Num, E> {
                x.parse().map(Num).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}
type B = Value<bool>;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct HealthBlock {
    #[serde(rename = "type")]
    pub kind: S,
    pub path: S,
    pub command: Value<Vec<S>>,
    pub interval: S,
    pub timeout: S,
    pub start_period: S,
    pub healthy_threshold: N,
    pub unhealthy_threshold: N,
    pub matcher: S,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct RestartBlock {
    pub policy: S,
    pub max_restarts: N,
    pub window: S,
    pub backoff_initial: S,
    pub backoff_max: S,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct AutoscalingBlock {
    pub min_replicas: N,
    pub max_replicas: N,
    pub target_utilization: F,
    pub scale_out_cooldown: S,
    pub scale_in_cooldown: S,
    pub disable_scale_in: B,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ScheduleBlock {
    pub name: S,
    pub cron: S,
    pub timezone: S,
    pub min_replicas: N,
    pub max_replicas: N,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ServiceState {
    pub id: S,
    pub name: S,
    pub command: Value<Vec<S>>,
    pub env: Value<BTreeMap<String, S>>,
    pub working_dir: S,
    pub replicas: N,
    pub base_port: N,
    pub port_env_var: S,
    #[serde(with = "value::serde_as_vec")]
    pub health_check: Value<HealthBlock>,
    #[serde(with = "value::serde_as_vec")]
    pub restart: Value<RestartBlock>,
    pub stop_signal: S,
    pub stop_timeout: S,
    pub min_ready: S,
    #[serde(with = "value::serde_as_vec")]
    pub autoscaling: Value<AutoscalingBlock>,
    pub schedule: Value<Vec<Value<ScheduleBlock>>>,
    pub cost_per_replica_hour: F,
    pub wait_for_healthy: B,
    pub wait_timeout: S,
    pub ensure_running: B,
    pub endpoints: Value<Vec<S>>,
    pub running: N,
    pub healthy: N,
}

pub struct ServiceResource {
    shared: Arc<Shared>,
}

impl ServiceResource {
    pub fn new(shared: Arc<Shared>) -> Self {
        ServiceResource { shared }
    }
}

// ---- defaults (resources.md) ----

fn apply_defaults(s: &mut ServiceState) {
    fill(&mut s.replicas, 1);
    fill(&mut s.port_env_var, "PORT".into());
    fill(&mut s.stop_signal, "SIGTERM".into());
    fill(&mut s.stop_timeout, "10s".into());
    fill(&mut s.min_ready, "0s".into());
    fill(&mut s.cost_per_replica_hour, Num(0.0));
    fill(&mut s.wait_for_healthy, true);
    fill(&mut s.wait_timeout, "60s".into());
    fill(&mut s.ensure_running, true);
    if let Value::Value(h) = &mut s.health_check {
        let d = HealthCheck::default();
        fill(&mut h.kind, d.kind);
        fill(&mut h.path, d.path);
        fill(&mut h.interval, d.interval);
        fill(&mut h.timeout, d.timeout);
        fill(&mut h.start_period, d.start_period);
        fill(&mut h.healthy_threshold, d.healthy_threshold as i64);
        fill(&mut h.unhealthy_threshold, d.unhealthy_threshold as i64);
        fill(&mut h.matcher, d.matcher);
    }
    if let Value::Value(r) = &mut s.restart {
        let d = RestartPolicy::default();
        fill(&mut r.policy, d.policy);
        fill(&mut r.max_restarts, d.max_restarts as i64);
        fill(&mut r.window, d.window);
        fill(&mut r.backoff_initial, d.backoff_initial);
        fill(&mut r.backoff_max, d.backoff_max);
    }
    if let Value::Value(a) = &mut s.autoscaling {
        fill(&mut a.scale_out_cooldown, "60s".into());
        fill(&mut a.scale_in_cooldown, "300s".into());
        fill(&mut a.disable_scale_in, false);
    }
    if let Value::Value(list) = &mut s.schedule {
        for sc in list.iter_mut() {
            if let Value::Value(sc) = sc {
                fill(&mut sc.timezone, "UTC".into());
            }
        }
    }
}

// ---- HCL values <-> spec ----

/// A spec from a state whose values are all known (after defaults); `Err` names what is not.
fn to_spec(s: &ServiceState) -> Result<ServiceSpec, String> {
    fn k<T: Clone>(v: &Value<T>, what: &str) -> Result<T, String> {
        known(v).ok_or_else(|| format!("{what} is not known yet"))
    }
    fn n32(v: &N, what: &str) -> Result<u32, String> {
        let x = k(v, what)?;
        u32::try_from(x).map_err(|_| format!("{what} must be between 0 and {}; got {x}", u32::MAX))
    }
    let strings = |v: &Value<Vec<S>>, what: &str| -> Result<Vec<String>, String> {
        known(v)
            .unwrap_or_default()
            .iter()
            .map(|x| k(x, what))
            .collect()
    };
    let base_port = k(&s.base_port, "base_port")?;
    let health_check = match &s.health_check {
        Value::Value(h) => Some(HealthCheck {
            kind: k(&h.kind, "health_check.type")?,
            path: k(&h.path, "health_check.path")?,
            command: strings(&h.command, "health_check.command")?,
            interval: k(&h.interval, "health_check.interval")?,
            timeout: k(&h.timeout, "health_check.timeout")?,
            start_period: k(&h.start_period, "health_check.start_period")?,
            healthy_threshold: n32(&h.healthy_threshold, "health_check.healthy_threshold")?,
            unhealthy_threshold: n32(&h.unhealthy_threshold, "health_check.unhealthy_threshold")?,
            matcher: k(&h.matcher, "health_check.matcher")?,
        }),
        _ => None,
    };
    let restart = match &s.restart {
        Value::Value(r) => Some(RestartPolicy {
            policy: k(&r.policy, "restart.policy")?,
            max_restarts: n32(&r.max_restarts, "restart.max_restarts")?,
            window: k(&r.window, "restart.window")?,
            backoff_initial: k(&r.backoff_initial, "restart.backoff_initial")?,
            backoff_max: k(&r.backoff_max, "restart.backoff_max")?,
        }),
        _ => None,
    };
    let autoscaling = match &s.autoscaling {
        Value::Value(a) => Some(Autoscaling {
            min_replicas: n32(&a.min_replicas, "autoscaling.min_replicas")?,
            max_replicas: n32(&a.max_replicas, "autoscaling.max_replicas")?,
            target_utilization: k(&a.target_utilization, "autoscaling.target_utilization")?.0,
            scale_out_cooldown: k(&a.scale_out_cooldown, "autoscaling.scale_out_cooldown")?,
            scale_in_cooldown: k(&a.scale_in_cooldown, "autoscaling.scale_in_cooldown")?,
            disable_scale_in: k(&a.disable_scale_in, "autoscaling.disable_scale_in")?,
        }),
        _ => None,
    };
    let mut schedules = Vec::new();
    for sc in known(&s.schedule).unwrap_or_default() {
        let sc = k(&sc, "schedule")?;
        schedules.push(Schedule {
            name: k(&sc.name, "schedule.name")?,
            cron: k(&sc.cron, "schedule.cron")?,
            timezone: k(&sc.timezone, "schedule.timezone")?,
            min_replicas: n32(&sc.min_replicas, "schedule.min_replicas")?,
            max_replicas: n32(&sc.max_replicas, "schedule.max_replicas")?,
        });
    }
    Ok(ServiceSpec {
        api_version: spec::API_VERSION,
        name: k(&s.name, "name")?,
        command: strings(&s.command, "command")?,
        env: known(&s.env)
            .unwrap_or_default()
            .into_iter()
            .map(|(key, val)| Ok((key.clone(), k(&val, &format!("env.{key}"))?)))
            .collect::<Result<_, String>>()?,
        working_dir: known(&s.working_dir),
        base_dir: std::env::current_dir()
            .ok()
            .map(|d| d.display().to_string()),
        replicas: n32(&s.replicas, "replicas")?,
        base_port: u16::try_from(base_port)
            .map_err(|_| format!("base_port must be between 1 and 65535; got {base_port}"))?,
        port_env_var: k(&s.port_env_var, "port_env_var")?,
        health_check,
        restart,
        stop_signal: k(&s.stop_signal, "stop_signal")?,
        stop_timeout: k(&s.stop_timeout, "stop_timeout")?,
        min_ready: k(&s.min_ready, "min_ready")?,
        autoscaling,
        schedules,
        cost_per_replica_hour: k(&s.cost_per_replica_hour, "cost_per_replica_hour")?.0,
        generation: 0,
    })
}

/// Write every configurable attribute back from the spec, keeping the state's spelling of
/// "nothing" (null or empty) where the spec has nothing.
fn from_spec(state: &mut ServiceState, sp: &ServiceSpec) {
    let vs = |xs: &[String]| Value::Value(xs.iter().cloned().map(Value::Value).collect());
    state.id = v(sp.name.clone());
    state.name = v(sp.name.clone());
    state.command = vs(&sp.command);
    state.env = if sp.env.is_empty() && !matches!(state.env, Value::Value(_)) {
        Value::Null
    } else {
        v(sp.env
            .iter()
            .map(|(k, x)| (k.clone(), v(x.clone())))
            .collect())
    };
    state.working_dir = sp.working_dir.clone().into();
    state.replicas = v(sp.replicas as i64);
    state.base_port = v(sp.base_port as i64);
    state.port_env_var = v(sp.port_env_var.clone());
    state.health_check = match &sp.health_check {
        None => Value::Null,
        Some(h) => v(HealthBlock {
            kind: v(h.kind.clone()),
            path: v(h.path.clone()),
            command: if h.command.is_empty() {
                Value::Null
            } else {
                vs(&h.command)
            },
            interval: v(h.interval.clone()),
            timeout: v(h.timeout.clone()),
            start_period: v(h.start_period.clone()),
            healthy_threshold: v(h.healthy_threshold as i64),
            unhealthy_threshold: v(h.unhealthy_threshold as i64),
            matcher: v(h.matcher.clone()),
        }),
    };
    state.restart = match &sp.restart {
        None => Value::Null,
        Some(r) => v(RestartBlock {
            policy: v(r.policy.clone()),
            max_restarts: v(r.max_restarts as i64),
            window: v(r.window.clone()),
            backoff_initial: v(r.backoff_initial.clone()),
            backoff_max: v(r.backoff_max.clone()),
        }),
    };
    state.stop_signal = v(sp.stop_signal.clone());
    state.stop_timeout = v(sp.stop_timeout.clone());
    state.min_ready = v(sp.min_ready.clone());
    state.autoscaling = match &sp.autoscaling {
        None => Value::Null,
        Some(a) => v(AutoscalingBlock {
            min_replicas: v(a.min_replicas as i64),
            max_replicas: v(a.max_replicas as i64),
            target_utilization: v(Num(a.target_utilization)),
            scale_out_cooldown: v(a.scale_out_cooldown.clone()),
            scale_in_cooldown: v(a.scale_in_cooldown.clone()),
            disable_scale_in: v(a.disable_scale_in),
        }),
    };
    state.schedule = if sp.schedules.is_empty() && !matches!(state.schedule, Value::Value(_)) {
        Value::Null
    } else {
        v(sp.schedules
            .iter()
            .map(|s| {
                v(ScheduleBlock {
                    name: v(s.name.clone()),
                    cron: v(s.cron.clone()),
                    timezone: v(s.timezone.clone()),
                    min_replicas: v(s.min_replicas as i64),
                    max_replicas: v(s.max_replicas as i64),
                })
            })
            .collect())
    };
    state.cost_per_replica_hour = v(Num(sp.cost_per_replica_hour));
    state.endpoints = endpoints(sp);
}

/// One `127.0.0.1:port` per port the service may use (its whole range, so the list does
/// not change as the autoscaler or a schedule moves the count).
fn endpoints(sp: &ServiceSpec) -> Value<Vec<S>> {
    v(sp.port_range()
        .map(|p| v(format!("127.0.0.1:{p}")))
        .collect())
}

/// "schedule.0.cron" → the attribute path Terraform shows.
fn path_of(dotted: &str) -> AttributePath {
    let mut parts = dotted.split('.');
    let mut p = AttributePath::new(parts.next().unwrap_or("").to_string());
    for x in parts {
        p = match x.parse::<i64>() {
            Ok(i) => p.index(i),
            Err(_) => p.attribute(x.to_string()),
        };
    }
    p
}

// ---- validation ----

/// Checks that need only the configuration. Unknown values are skipped (plan checks again).
fn check_config(diags: &mut Diagnostics, c: &ServiceState) {
    let mut reported: Vec<String> = Vec::new();
    // A copy with out-of-range numbers raised to their minimum, so the remaining checks
    // still run and one plan shows every problem.
    let mut filled = c.clone();
    let neg = |diags: &mut Diagnostics, reported: &mut Vec<String>, v: &N, at: &str, min: i64| {
        if let Value::Value(x) = v {
            if *x < min {
                reported.push(at.to_string());
                diags.error(
                    format!("Invalid {}", at.rsplit('.').next().unwrap_or(at)),
                    format!("{at} must be {min} or more; got {x}."),
                    path_of(at),
                );
            }
        }
    };
    neg(diags, &mut reported, &c.replicas, "replicas", 0);
    if matches!(filled.replicas, Value::Value(x) if x < 0) {
        filled.replicas = v(0);
    }
    if let Value::Value(p) = &c.base_port {
        if !(1..=65535).contains(p) {
            reported.push("base_port".into());
            diags.error(
                "Invalid base_port",
                format!("base_port must be between 1 and 65535; got {p}."),
                AttributePath::new("base_port"),
            );
        }
    }
    if let Value::Value(h) = &c.health_check {
        neg(
            diags,
            &mut reported,
            &h.healthy_threshold,
            "health_check.0.healthy_threshold",
            1,
        );
        neg(
            diags,
            &mut reported,
            &h.unhealthy_threshold,
            "health_check.0.unhealthy_threshold",
            1,
        );
    }
    if let Value::Value(r) = &c.restart {
        neg(
            diags,
            &mut reported,
            &r.max_restarts,
            "restart.0.max_restarts",
            0,
        );
    }
    if let Value::Value(a) = &c.autoscaling {
        neg(
            diags,
            &mut reported,
            &a.min_replicas,
            "autoscaling.0.min_replicas",
            0,
        );
        neg(
            diags,
            &mut reported,
            &a.max_replicas,
            "autoscaling.0.max_replicas",
            0,
        );
    }
    if let Value::Value(list) = &c.schedule {
        for (i, sc) in list.iter().enumerate() {
            if let Value::Value(sc) = sc {
                neg(
                    diags,
                    &mut reported,
                    &sc.min_replicas,
                    &format!("schedule.{i}.min_replicas"),
                    0,
                );
                neg(
                    diags,
                    &mut reported,
                    &sc.max_replicas,
                    &format!("schedule.{i}.max_replicas"),
                    0,
                );
            }
        }
    }
    for n in numbers_mut(&mut filled) {
        if matches!(n, Value::Value(x) if *x < 0) {
            *n = v(0);
        }
    }
    apply_defaults(&mut filled);
    if let Ok(sp) = to_spec(&filled) {
        for p in sp.validate() {
            if reported.contains(&p.path)
                || (p.path == "base_port" && reported.iter().any(|r| r == "base_port"))
            {
                continue;
            }
            diags.error(
                format!("Invalid {}", p.path.rsplit('.').next().unwrap_or(&p.path)),
                format!("{}.", p.message),
                path_of(&p.path),
            );
        }
    }
    if let Value::Value(t) = &c.wait_timeout {
        if let Err(e) = localdr::duration::parse(t) {
            diags.error(
                "Invalid wait_timeout",
                format!("{e}."),
                AttributePath::new("wait_timeout"),
            );
        }
    }
}

/// Every count in a configuration, for clamping before the spec checks.
fn numbers_mut(s: &mut ServiceState) -> Vec<&mut N> {
    let mut out: Vec<&mut N> = vec![&mut s.replicas];
    if let Value::Value(h) = &mut s.health_check {
        out.push(&mut h.healthy_threshold);
        out.push(&mut h.unhealthy_threshold);
    }
    if let Value::Value(r) = &mut s.restart {
        out.push(&mut r.max_restarts);
    }
    if let Value::Value(a) = &mut s.autoscaling {
        out.push(&mut a.min_replicas);
        out.push(&mut a.max_replicas);
    }
    if let Value::Value(list) = &mut s.schedule {
        for sc in list.iter_mut() {
            if let Value::Value(sc) = sc {
                out.push(&mut sc.min_replicas);
                out.push(&mut sc.max_replicas);
            }
        }
    }
    out
}

impl ServiceResource {
    /// Ports must not overlap another service's, on disk or planned in this run.
    fn check_ports(
        &self,
        diags: &mut Diagnostics,
        planned: &ServiceState,
        prior_name: Option<&str>,
    ) {
        let Ok(sp) = to_spec(planned) else { return };
        let range = sp.port_range();
        let sd = self.shared.state_dir();
        let mut others: BTreeMap<String, std::ops::Range<u32>> = BTreeMap::new();
        for n in sd.service_names().unwrap_or_default() {
            if n == sp.name || Some(n.as_str()) == prior_name {
                continue;
            }
            if let Ok(Some(l)) = sd.read_service(&n) {
                others.insert(n, l.spec.port_range());
            }
        }
        if let Ok(mut g) = self.shared.planned_ports.lock() {
            for (n, r) in g.iter() {
                if n != &sp.name && Some(n.as_str()) != prior_name {
                    others.insert(n.clone(), r.clone());
                }
            }
            g.insert(sp.name.clone(), range.clone());
        }
        for (n, r) in others {
            if r.start < range.end && range.start < r.end {
                diags.error(
                    "Overlapping ports",
                    format!(
                        "service {:?} would use ports {}-{}, which overlap service {n:?} ({}-{}). \
                         Each replica i takes base_port + i up to the largest replica count \
                         (replicas, autoscaling.max_replicas, schedules): choose a base_port \
                         outside {}-{}.",
                        sp.name,
                        range.start,
                        range.end - 1,
                        r.start,
                        r.end - 1,
                        r.start,
                        r.end - 1
                    ),
                    AttributePath::new("base_port"),
                );
            }
        }
    }

    fn mode(&self) -> Result<(String, Option<std::path::PathBuf>), String> {
        let mode = self.shared.agent_mode();
        if mode == "external" {
            Ok((mode, None))
        } else {
            Ok((mode, Some(self.shared.localdr_exe()?)))
        }
    }

    /// Write the spec, make sure an agent runs it, wait for the pool.
    async fn apply(&self, diags: &mut Diagnostics, planned: ServiceState) -> Option<ServiceState> {
        let mut state = planned;
        let mut sp = match to_spec(&state) {
            Ok(s) => s,
            Err(e) => {
                diags.root_error("Invalid service configuration", e);
                return None;
            }
        };
        sp.generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let (mode, exe) = match self.mode() {
            Ok(m) => m,
            Err(e) => {
                diags.root_error("localdr binary not found", e);
                return None;
            }
        };
        let healthy = known(&state.wait_for_healthy).unwrap_or(true);
        let timeout = known(&state.wait_timeout)
            .and_then(|t| localdr::duration::parse(&t).ok())
            .unwrap_or(Duration::from_secs(60));
        let sd = self.shared.state_dir();
        let name = sp.name.clone();
        let r = blocking(move || {
            let m = match (&mode[..], &exe) {
                ("external", _) | (_, None) => AgentMode::External,
                (_, Some(e)) => AgentMode::Auto { exe: e },
            };
            let hash = sd.write_service(&sp)?;
            control::ensure_agent(&sd, &m)?;
            control::wait_converged(&sd, &sp.name, &hash, healthy, timeout, &m)
        })
        .await;
        state.endpoints = to_spec(&state)
            .map(|s| endpoints(&s))
            .unwrap_or(Value::Value(vec![]));
        match r {
            Ok(st) => {
                tracing::info!(service = %name, desired = st.desired, "service converged");
                state.running = v(st.running() as i64);
                state.healthy = v(st.healthy() as i64);
                state.ensure_running = v(true);
                Some(state)
            }
            Err(e) => {
                diags.root_error(format!("Service {name} is not running as declared"), e);
                // Saved so Terraform tracks what was written; the next plan shows the drift.
                state.running = v(0);
                state.healthy = v(0);
                state.ensure_running = v(false);
                Some(state)
            }
        }
    }
}

fn health_block_schema() -> Block {
    Block {
        version: 1,
        description: Description::plain("How the agent checks a replica (AWS target-group / Docker meaning). Without this block: http GET / every 10s."),
        attributes: map! {
            "type" => string(OptionalComputed, "`http` (default), `tcp` or `exec`."),
            "path" => string(OptionalComputed, "HTTP path. Default `/`."),
            "command" => attr(AttributeType::List(AttributeType::String.into()), Optional, "For `exec`: argv run with the replica's environment; exit 0 is healthy. `{port}` is replaced."),
            "interval" => string(OptionalComputed, "Time between checks. Default `10s` (checks run every 250 ms until a new replica is first healthy)."),
            "timeout" => string(OptionalComputed, "Time a check may take. Default `5s`."),
            "start_period" => string(OptionalComputed, "Failures in this long after start do not count. Default `0s`."),
            "healthy_threshold" => number(OptionalComputed, "Consecutive successes to become healthy (HAProxy rise). Default 2."),
            "unhealthy_threshold" => number(OptionalComputed, "Consecutive failures to become unhealthy (HAProxy fall); an unhealthy replica is restarted. Default 3."),
            "matcher" => string(OptionalComputed, "HTTP statuses that count as healthy, e.g. `200-399` (default) or `200,302`.")
        },
        ..Default::default()
    }
}

fn restart_block_schema() -> Block {
    Block {
        version: 1,
        description: Description::plain(
            "When and how fast to restart a replica that exits (systemd start-limit meaning).",
        ),
        attributes: map! {
            "policy" => string(OptionalComputed, "`always` (default), `on-failure` or `never`."),
            "max_restarts" => number(OptionalComputed, "More restarts than this within `window` marks the replica failed. Default 5."),
            "window" => string(OptionalComputed, "Default `60s`."),
            "backoff_initial" => string(OptionalComputed, "First restart delay; doubles per consecutive failure. Default `100ms`."),
            "backoff_max" => string(OptionalComputed, "Cap on the delay. Default `30s`.")
        },
        ..Default::default()
    }
}

fn autoscaling_block_schema() -> Block {
    Block {
        version: 1,
        description: Description::plain("Target tracking on in-flight requests per replica (established connections to the replicas' ports)."),
        attributes: map! {
            "min_replicas" => number(Required, "Lower bound."),
            "max_replicas" => number(Required, "Upper bound."),
            "target_utilization" => number(Required, "In-flight requests per replica to aim for."),
            "scale_out_cooldown" => string(OptionalComputed, "Time between scale-outs. Default `60s`."),
            "scale_in_cooldown" => string(OptionalComputed, "Time after any scaling before scaling in. Default `300s`."),
            "disable_scale_in" => boolean(OptionalComputed, "Never scale in. Default false.")
        },
        ..Default::default()
    }
}

fn schedule_block_schema() -> Block {
    Block {
        version: 1,
        description: Description::plain("From each firing of `cron` until another schedule fires, the pool runs between min and max replicas (0/0 scales to zero)."),
        attributes: map! {
            "name" => string(Required, "Schedule name, e.g. `night`."),
            "cron" => string(Required, "5 fields (`0 22 * * 1-5`) or 6 with seconds first."),
            "timezone" => string(OptionalComputed, "IANA zone for `cron`. Default `UTC`."),
            "min_replicas" => number(Required, "Lower bound while in force."),
            "max_replicas" => number(Required, "Upper bound while in force.")
        },
        ..Default::default()
    }
}

fn set_runtime_unknown(s: &mut ServiceState) {
    s.running = Value::Unknown;
    s.healthy = Value::Unknown;
}

#[async_trait]
impl Resource for ServiceResource {
    type State<'a> = ServiceState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let list = |t: AttributeType| AttributeType::List(t.into());
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain("A pool of local worker processes kept running by the localdr agent: replicas on consecutive ports, health checks, restart with backoff, autoscaling and schedules (scale to zero at night). A killed agent or a pool the agent gave up on shows in `terraform plan`; `apply` repairs it."),
                attributes: map! {
                    "id" => string(Computed, "The service name."),
                    "name" => string(Required, "Service name (letters, digits, `-`, `_`, `.`). Changing it forces a new resource."),
                    "command" => attr(list(AttributeType::String), Required, "argv of a replica; `{port}` is replaced by its port."),
                    "env" => attr(AttributeType::Map(AttributeType::String.into()), Optional, "Extra environment. The port is also passed as `port_env_var`."),
                    "working_dir" => string(Optional, "Working directory, relative to the root module. Default: the root module."),
                    "replicas" => number(OptionalComputed, "Replica count. Default 1. Bounded by a schedule in force; autoscaling replaces it."),
                    "base_port" => number(Required, "Replica i listens on base_port + i."),
                    "port_env_var" => string(OptionalComputed, "Environment variable that carries the port. Default `PORT`."),
                    "stop_signal" => string(OptionalComputed, "Signal for a graceful stop. Default `SIGTERM`."),
                    "stop_timeout" => string(OptionalComputed, "SIGKILL after this long. Default `10s`."),
                    "min_ready" => string(OptionalComputed, "When a change of command, env or working_dir replaces replicas one at a time, each new replica must stay healthy this long before the next goes (Kubernetes' minReadySeconds), so a build that passes its first check and then crashes stops the roll at one replica. Apply waits for it. Default `0s`."),
                    "cost_per_replica_hour" => number(OptionalComputed, "Price of one replica-hour, for `localdr cost`. Default 0."),
                    "wait_for_healthy" => boolean(OptionalComputed, "Apply waits until every replica is healthy (else: started). Default true."),
                    "wait_timeout" => string(OptionalComputed, "How long apply waits. Default `60s`."),
                    "ensure_running" => boolean(OptionalComputed, "Read sets this to false when no agent runs or it gave up on a replica; apply then repairs. Default true."),
                    "endpoints" => attr(list(AttributeType::String), Computed, "`127.0.0.1:port` for every port the service may use."),
                    "running" => number(Computed, "Replicas running at the last refresh."),
                    "healthy" => number(Computed, "Replicas healthy at the last refresh.")
                },
                blocks: map! {
                    "health_check" => NestedBlock::Optional(health_block_schema()),
                    "restart" => NestedBlock::Optional(restart_block_schema()),
                    "autoscaling" => NestedBlock::Optional(autoscaling_block_schema()),
                    "schedule" => NestedBlock::List(schedule_block_schema())
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        let _t = crate::timing::Timed::start("service.validate");
        check_config(diags, &config);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let _t = crate::timing::Timed::start("service.read");
        let mut state = state;
        let name = known(&state.name).or_else(|| known(&state.id))?;
        let sd = self.shared.state_dir();
        let loaded = match sd.read_service(&name) {
            Ok(Some(l)) => l,
            Ok(None) => {
                tracing::info!(%name, "spec gone: resource removed from state");
                return None;
            }
            Err(e) => {
                diags.root_warning(
                    format!("Service {name}: spec file unreadable"),
                    format!("{e:#}. `terraform apply` will write it again."),
                );
                return None;
            }
        };
        from_spec(&mut state, &loaded.spec);
        fill(&mut state.wait_for_healthy, true);
        fill(&mut state.wait_timeout, "60s".into());
        let status = sd.read_status(&name).ok().flatten();
        state.running = v(status.as_ref().map(|s| s.running()).unwrap_or(0) as i64);
        state.healthy = v(status.as_ref().map(|s| s.healthy()).unwrap_or(0) as i64);
        match control::drift(&sd, &name, &loaded.hash) {
            Ok(None) => state.ensure_running = v(true),
            Ok(Some(why)) => {
                tracing::warn!(%name, %why, "service not running as declared");
                state.ensure_running = v(false);
                diags.warning(
                    "Service not running as declared",
                    format!("{name}: {why}. `terraform apply` will repair it."),
                    AttributePath::new("ensure_running"),
                );
            }
            Err(e) => {
                diags.root_error("Could not read the service status", format!("{e:#}"));
                return None;
            }
        }
        Some((state, private_state))
    }

    async fn plan_create<'a>(
        &self,
        diags: &mut Diagnostics,
        proposed_state: Self::State<'a>,
        config_state: Self::State<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let _t = crate::timing::Timed::start("service.plan_create");
        check_config(diags, &config_state);
        let mut planned = proposed_state;
        apply_defaults(&mut planned);
        self.check_ports(diags, &planned, None);
        planned.id = planned.name.clone();
        planned.endpoints = to_spec(&planned)
            .map(|s| endpoints(&s))
            .unwrap_or(Value::Unknown);
        set_runtime_unknown(&mut planned);
        Some((planned, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        proposed_state: Self::State<'a>,
        config_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>, Vec<AttributePath>)> {
        let _t = crate::timing::Timed::start("service.plan_update");
        check_config(diags, &config_state);
        // From the configuration, not the proposal: an attribute left out means its
        // default (a hand edit of it shows as a diff), and `ensure_running` left out means
        // true (`false -> true` after a refresh found the pool down).
        let _ = proposed_state;
        let mut planned = config_state.clone();
        apply_defaults(&mut planned);
        let prior_name = known(&prior_state.name);
        self.check_ports(diags, &planned, prior_name.as_deref());
        let mut replace = Vec::new();
        if planned.name != prior_state.name {
            replace.push(AttributePath::new("name"));
        }
        planned.id = planned.name.clone();
        planned.endpoints = to_spec(&planned)
            .map(|s| endpoints(&s))
            .unwrap_or(Value::Unknown);
        let mut cmp_planned = planned.clone();
        let mut cmp_prior = prior_state.clone();
        for s in [&mut cmp_planned, &mut cmp_prior] {
            s.running = Value::Null;
            s.healthy = Value::Null;
        }
        if cmp_planned != cmp_prior {
            set_runtime_unknown(&mut planned);
        } else {
            planned.running = prior_state.running;
            planned.healthy = prior_state.healthy;
        }
        Some((planned, prior_private_state, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _diags: &mut Diagnostics,
        _prior_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::PrivateState<'a>> {
        Some(prior_private_state)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let _t = crate::timing::Timed::start("service.create");
        let s = self.apply(diags, planned_state).await?;
        Some((s, planned_private_state))
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        _prior_state: Self::State<'a>,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let _t = crate::timing::Timed::start("service.update");
        let s = self.apply(diags, planned_state).await?;
        Some((s, planned_private_state))
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        _planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let _t = crate::timing::Timed::start("service.destroy");
        let name = known(&state.name)?;
        let stop = known(&state.stop_timeout)
            .and_then(|t| localdr::duration::parse(&t).ok())
            .unwrap_or(Duration::from_secs(10));
        let sd = self.shared.state_dir();
        let r =
            blocking(move || control::remove_service(&sd, &name, stop + Duration::from_secs(10)))
                .await;
        if let Err(e) = r {
            diags.root_error("Could not stop the service", e);
            return None;
        }
        Some(())
    }

    async fn import<'a>(
        &self,
        _diags: &mut Diagnostics,
        id: String,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        Some((
            ServiceState {
                id: v(id.clone()),
                name: v(id),
                ..Default::default()
            },
            ValueEmpty::default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServiceState {
        ServiceState {
            name: v("web".into()),
            command: v(vec![v("worker".into())]),
            base_port: v(8100),
            ..Default::default()
        }
    }

    fn errors(c: &ServiceState) -> String {
        let mut d = Diagnostics::default();
        check_config(&mut d, c);
        format!("{:?}", d.errors)
    }

    #[test]
    fn a_plain_config_is_valid() {
        assert_eq!(errors(&config()), "[]");
    }

    #[test]
    fn negative_replicas_and_empty_command_name_their_attribute() {
        let mut c = config();
        c.replicas = v(-1);
        assert!(errors(&c).contains("replicas must be 0 or more"));
        let mut c = config();
        c.command = v(vec![]);
        let e = errors(&c);
        assert!(e.contains("command must be a non-empty list"), "{e}");
    }

    #[test]
    fn unknown_values_wait_for_plan() {
        let mut c = config();
        c.command = Value::Unknown;
        c.base_port = Value::Unknown;
        assert_eq!(errors(&c), "[]");
    }

    #[test]
    fn spec_round_trips_through_state() {
        let mut c = config();
        c.schedule = v(vec![v(ScheduleBlock {
            name: v("night".into()),
            cron: v("0 22 * * *".into()),
            min_replicas: v(0),
            max_replicas: v(0),
            ..Default::default()
        })]);
        apply_defaults(&mut c);
        let sp = to_spec(&c).unwrap();
        let mut back = ServiceState::default();
        from_spec(&mut back, &sp);
        assert_eq!(to_spec(&back).unwrap(), sp);
    }
}
