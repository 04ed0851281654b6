//! The nested blocks of `localdr_balancer` that tune its behaviour — `healthchecks`
//! (Kong's shape), `circuit_breaker`, `timeouts` and `queue` — and their translation to and
//! from the engine's [`BalancerSpec`] fields.
//!
//! Three rules keep `plan` honest: an attribute left out plans to its default
//! ([`defaults`]); the spec on disk maps back onto the state ([`from_spec`]) so a hand edit
//! shows as a diff; and a block the configuration leaves out stays out of the state unless
//! the spec on disk differs from its defaults.

use super::util::{fill, known, v};
use localdr::spec::{
    ActiveCheck, BalancerSpec, CorrelationId, Healthchecks, PassiveCheck, QueueSpec, Thresholds,
    Timeouts,
};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    AttributeConstraint::{Optional, OptionalComputed, Required},
    AttributeType, Block, Description, NestedBlock,
};
use tf_provider::value::{self, Value};
use tf_provider::{map, AttributePath, Diagnostics};

use crate::schema::{attr, boolean, number, string};

type S = Value<String>;
type N = Value<i64>;
type Nums = Value<Vec<Value<i64>>>;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct HealthyBlock {
    pub interval: S,
    pub successes: N,
    pub http_statuses: Nums,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct UnhealthyBlock {
    pub interval: S,
    pub http_failures: N,
    pub tcp_failures: N,
    pub timeouts: N,
    pub http_statuses: Nums,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ActiveBlock {
    #[serde(rename = "type")]
    pub kind: S,
    pub http_path: S,
    pub timeout: S,
    pub concurrency: N,
    #[serde(with = "value::serde_as_vec")]
    pub healthy: Value<HealthyBlock>,
    #[serde(with = "value::serde_as_vec")]
    pub unhealthy: Value<UnhealthyBlock>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct PassiveHealthyBlock {
    pub successes: N,
    pub http_statuses: Nums,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct PassiveUnhealthyBlock {
    pub http_failures: N,
    pub tcp_failures: N,
    pub timeouts: N,
    pub http_statuses: Nums,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct PassiveBlock {
    #[serde(with = "value::serde_as_vec")]
    pub healthy: Value<PassiveHealthyBlock>,
    #[serde(with = "value::serde_as_vec")]
    pub unhealthy: Value<PassiveUnhealthyBlock>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct HealthchecksBlock {
    #[serde(with = "value::serde_as_vec")]
    pub active: Value<ActiveBlock>,
    #[serde(with = "value::serde_as_vec")]
    pub passive: Value<PassiveBlock>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct CircuitBreakerBlock {
    pub base_ejection_time: S,
    pub max_ejection_percent: N,
    pub max_ejection_time: S,
    pub panic_threshold: N,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct TimeoutsBlock {
    pub connect: S,
    pub read: S,
    pub write: S,
    pub client: S,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct QueueBlock {
    pub incoming_dir: S,
    pub workers_dir: S,
    pub errors_dir: S,
    pub log_dir: S,
    pub poll_interval: S,
    pub command: Value<Vec<Value<String>>>,
    pub timeout: S,
}

fn nums_raw(x: &[u16]) -> Vec<Value<i64>> {
    x.iter().map(|n| v(*n as i64)).collect()
}

fn nums(x: &[u16]) -> Nums {
    v(nums_raw(x))
}

fn statuses(l: &Nums, d: &[u16]) -> Vec<u16> {
    match l {
        Value::Value(l) => l
            .iter()
            .filter_map(known)
            .map(|n| n.clamp(0, 999) as u16)
            .collect(),
        _ => d.to_vec(),
    }
}

fn count(n: &N, d: u32) -> u32 {
    known(n)
        .map(|n| n.clamp(0, u32::MAX as i64) as u32)
        .unwrap_or(d)
}

fn text(x: &S, d: &str) -> String {
    known(x).unwrap_or_else(|| d.to_string())
}

/// Apply a block's defaults in place, when the block is there.
fn within<T>(b: &mut Value<T>, f: impl FnOnce(&mut T)) {
    if let Value::Value(x) = b {
        f(x)
    }
}

/// Fill every attribute the configuration leaves out with its default (the engine's).
pub fn defaults(
    hc: &mut Value<HealthchecksBlock>,
    cb: &mut Value<CircuitBreakerBlock>,
    to: &mut Value<TimeoutsBlock>,
    queue: &mut Value<QueueBlock>,
    default_log_dir: &str,
) {
    let d = Healthchecks::default();
    within(hc, |h| {
        within(&mut h.active, |a| {
            let da = &d.active;
            fill(&mut a.kind, da.kind.clone());
            fill(&mut a.http_path, da.http_path.clone());
            fill(&mut a.timeout, da.timeout.clone());
            fill(&mut a.concurrency, da.concurrency as i64);
            within(&mut a.healthy, |x| {
                fill(&mut x.interval, da.healthy.interval.clone());
                fill(&mut x.successes, da.healthy.successes as i64);
                fill(&mut x.http_statuses, nums_raw(&da.healthy.http_statuses));
            });
            within(&mut a.unhealthy, |x| {
                let du = &da.unhealthy;
                fill(&mut x.interval, du.interval.clone());
                fill(&mut x.http_failures, du.http_failures as i64);
                fill(&mut x.tcp_failures, du.tcp_failures as i64);
                fill(&mut x.timeouts, du.timeouts as i64);
                fill(&mut x.http_statuses, nums_raw(&du.http_statuses));
            });
        });
        within(&mut h.passive, |p| {
            let dp = &d.passive;
            within(&mut p.healthy, |x| {
                fill(&mut x.successes, dp.healthy.successes as i64);
                fill(&mut x.http_statuses, nums_raw(&dp.healthy.http_statuses));
            });
            within(&mut p.unhealthy, |x| {
                let du = &dp.unhealthy;
                fill(&mut x.http_failures, du.http_failures as i64);
                fill(&mut x.tcp_failures, du.tcp_failures as i64);
                fill(&mut x.timeouts, du.timeouts as i64);
                fill(&mut x.http_statuses, nums_raw(&du.http_statuses));
            });
        });
    });
    within(cb, |c| {
        fill(
            &mut c.base_ejection_time,
            d.passive.base_ejection_time.clone(),
        );
        fill(
            &mut c.max_ejection_percent,
            d.passive.max_ejection_percent as i64,
        );
        fill(
            &mut c.max_ejection_time,
            d.passive.max_ejection_time.clone(),
        );
        fill(&mut c.panic_threshold, d.passive.panic_threshold as i64);
    });
    let dt = Timeouts::default();
    within(to, |t| {
        fill(&mut t.connect, dt.connect.clone());
        fill(&mut t.read, dt.read.clone());
        fill(&mut t.write, dt.write.clone());
        fill(&mut t.client, dt.client.clone());
    });
    within(queue, |q| {
        fill(&mut q.log_dir, default_log_dir.to_string());
        fill(&mut q.poll_interval, "5s".into());
        fill(&mut q.timeout, "60s".into());
    });
}

/// The engine's health checks from the blocks (defaults where left out).
pub fn healthchecks(
    hc: &Value<HealthchecksBlock>,
    cb: &Value<CircuitBreakerBlock>,
) -> Healthchecks {
    let mut out = Healthchecks::default();
    if let Value::Value(h) = hc {
        if let Value::Value(a) = &h.active {
            let o = &mut out.active;
            o.kind = text(&a.kind, &o.kind);
            o.http_path = text(&a.http_path, &o.http_path);
            o.timeout = text(&a.timeout, &o.timeout);
            o.concurrency = count(&a.concurrency, o.concurrency);
            if let Value::Value(x) = &a.healthy {
                let t = &mut o.healthy;
                t.interval = text(&x.interval, &t.interval);
                t.successes = count(&x.successes, t.successes);
                t.http_statuses = statuses(&x.http_statuses, &t.http_statuses);
            }
            if let Value::Value(x) = &a.unhealthy {
                let t = &mut o.unhealthy;
                t.interval = text(&x.interval, &t.interval);
                t.http_failures = count(&x.http_failures, t.http_failures);
                t.tcp_failures = count(&x.tcp_failures, t.tcp_failures);
                t.timeouts = count(&x.timeouts, t.timeouts);
                t.http_statuses = statuses(&x.http_statuses, &t.http_statuses);
            }
        }
        if let Value::Value(p) = &h.passive {
            let o = &mut out.passive;
            if let Value::Value(x) = &p.healthy {
                o.healthy.successes = count(&x.successes, o.healthy.successes);
                o.healthy.http_statuses = statuses(&x.http_statuses, &o.healthy.http_statuses);
            }
            if let Value::Value(x) = &p.unhealthy {
                let t = &mut o.unhealthy;
                t.http_failures = count(&x.http_failures, t.http_failures);
                t.tcp_failures = count(&x.tcp_failures, t.tcp_failures);
                t.timeouts = count(&x.timeouts, t.timeouts);
                t.http_statuses = statuses(&x.http_statuses, &t.http_statuses);
            }
        }
    }
    if let Value::Value(c) = cb {
        let o = &mut out.passive;
        o.base_ejection_time = text(&c.base_ejection_time, &o.base_ejection_time);
        o.max_ejection_percent = count(&c.max_ejection_percent, o.max_ejection_percent);
        o.max_ejection_time = text(&c.max_ejection_time, &o.max_ejection_time);
        o.panic_threshold = count(&c.panic_threshold, o.panic_threshold);
    }
    out
}

pub fn timeouts(to: &Value<TimeoutsBlock>) -> Timeouts {
    let d = Timeouts::default();
    match to {
        Value::Value(t) => Timeouts {
            connect: text(&t.connect, &d.connect),
            read: text(&t.read, &d.read),
            write: text(&t.write, &d.write),
            client: text(&t.client, &d.client),
        },
        _ => d,
    }
}

pub fn queue(q: &Value<QueueBlock>) -> Result<Option<QueueSpec>, String> {
    let Value::Value(q) = q else { return Ok(None) };
    let k = |x: &S, what: &str| known(x).ok_or_else(|| format!("queue.{what} is not known yet"));
    Ok(Some(QueueSpec {
        incoming_dir: k(&q.incoming_dir, "incoming_dir")?,
        workers_dir: k(&q.workers_dir, "workers_dir")?,
        errors_dir: k(&q.errors_dir, "errors_dir")?,
        log_dir: k(&q.log_dir, "log_dir")?,
        poll_interval: text(&q.poll_interval, "5s"),
        command: known(&q.command)
            .unwrap_or_default()
            .iter()
            .filter_map(known)
            .collect(),
        timeout: text(&q.timeout, "60s"),
    }))
}

/// A block goes into the state when it was there before or differs from its default.
fn keep<T>(prior: bool, default: bool, build: impl FnOnce() -> T) -> Value<T> {
    if prior || !default {
        v(build())
    } else {
        Value::Null
    }
}

fn healthy_block(t: &Thresholds) -> HealthyBlock {
    HealthyBlock {
        interval: v(t.interval.clone()),
        successes: v(t.successes as i64),
        http_statuses: nums(&t.http_statuses),
    }
}

fn unhealthy_block(t: &Thresholds) -> UnhealthyBlock {
    UnhealthyBlock {
        interval: v(t.interval.clone()),
        http_failures: v(t.http_failures as i64),
        tcp_failures: v(t.tcp_failures as i64),
        timeouts: v(t.timeouts as i64),
        http_statuses: nums(&t.http_statuses),
    }
}

fn active_from(prior: &Value<ActiveBlock>, a: &ActiveCheck) -> Value<ActiveBlock> {
    let d = ActiveCheck::default();
    let p = known(prior);
    keep(p.is_some(), *a == d, || ActiveBlock {
        kind: v(a.kind.clone()),
        http_path: v(a.http_path.clone()),
        timeout: v(a.timeout.clone()),
        concurrency: v(a.concurrency as i64),
        healthy: keep(
            p.as_ref().is_some_and(|p| !p.healthy.is_null()),
            a.healthy == d.healthy,
            || healthy_block(&a.healthy),
        ),
        unhealthy: keep(
            p.as_ref().is_some_and(|p| !p.unhealthy.is_null()),
            a.unhealthy == d.unhealthy,
            || unhealthy_block(&a.unhealthy),
        ),
    })
}

fn passive_from(prior: &Value<PassiveBlock>, x: &PassiveCheck) -> Value<PassiveBlock> {
    let d = PassiveCheck::default();
    let p = known(prior);
    let same = x.healthy == d.healthy && x.unhealthy == d.unhealthy;
    keep(p.is_some(), same, || PassiveBlock {
        healthy: keep(
            p.as_ref().is_some_and(|p| !p.healthy.is_null()),
            x.healthy == d.healthy,
            || PassiveHealthyBlock {
                successes: v(x.healthy.successes as i64),
                http_statuses: nums(&x.healthy.http_statuses),
            },
        ),
        unhealthy: keep(
            p.as_ref().is_some_and(|p| !p.unhealthy.is_null()),
            x.unhealthy == d.unhealthy,
            || PassiveUnhealthyBlock {
                http_failures: v(x.unhealthy.http_failures as i64),
                tcp_failures: v(x.unhealthy.tcp_failures as i64),
                timeouts: v(x.unhealthy.timeouts as i64),
                http_statuses: nums(&x.unhealthy.http_statuses),
            },
        ),
    })
}

/// Map the spec on disk back onto the blocks (keeping blocks the state had).
pub fn from_spec(
    hc: &mut Value<HealthchecksBlock>,
    cb: &mut Value<CircuitBreakerBlock>,
    to: &mut Value<TimeoutsBlock>,
    queue: &mut Value<QueueBlock>,
    sp: &BalancerSpec,
) {
    let d = Healthchecks::default();
    let h = &sp.healthchecks;
    let ph = known(hc);
    let checks_same = h.active == d.active
        && h.passive.healthy == d.passive.healthy
        && h.passive.unhealthy == d.passive.unhealthy;
    *hc = keep(ph.is_some(), checks_same, || HealthchecksBlock {
        active: active_from(
            &ph.as_ref().map(|p| p.active.clone()).unwrap_or_default(),
            &h.active,
        ),
        passive: passive_from(
            &ph.as_ref().map(|p| p.passive.clone()).unwrap_or_default(),
            &h.passive,
        ),
    });
    let cb_same = h.passive.base_ejection_time == d.passive.base_ejection_time
        && h.passive.max_ejection_percent == d.passive.max_ejection_percent
        && h.passive.max_ejection_time == d.passive.max_ejection_time
        && h.passive.panic_threshold == d.passive.panic_threshold;
    *cb = keep(!cb.is_null(), cb_same, || CircuitBreakerBlock {
        base_ejection_time: v(h.passive.base_ejection_time.clone()),
        max_ejection_percent: v(h.passive.max_ejection_percent as i64),
        max_ejection_time: v(h.passive.max_ejection_time.clone()),
        panic_threshold: v(h.passive.panic_threshold as i64),
    });
    *to = keep(!to.is_null(), sp.timeouts == Timeouts::default(), || {
        TimeoutsBlock {
            connect: v(sp.timeouts.connect.clone()),
            read: v(sp.timeouts.read.clone()),
            write: v(sp.timeouts.write.clone()),
            client: v(sp.timeouts.client.clone()),
        }
    });
    *queue = match &sp.queue {
        None => Value::Null,
        Some(q) => v(QueueBlock {
            incoming_dir: v(q.incoming_dir.clone()),
            workers_dir: v(q.workers_dir.clone()),
            errors_dir: v(q.errors_dir.clone()),
            log_dir: v(q.log_dir.clone()),
            poll_interval: v(q.poll_interval.clone()),
            command: if q.command.is_empty() {
                match known(queue).map(|p| p.command) {
                    Some(Value::Value(_)) => v(vec![]),
                    _ => Value::Null,
                }
            } else {
                v(q.command.iter().map(|c| v(c.clone())).collect())
            },
            timeout: v(q.timeout.clone()),
        }),
    };
}

fn check_duration(diags: &mut Diagnostics, x: &S, at: AttributePath) {
    if let Value::Value(s) = x {
        if let Err(e) = localdr::duration::parse(s) {
            diags.error(
                "Invalid duration",
                format!("{e:#}. Use a duration such as 500ms, 10s or 1m."),
                at,
            );
        }
    }
}

fn check_count(diags: &mut Diagnostics, x: &N, at: AttributePath, max: i64) {
    if let Value::Value(n) = x {
        if *n < 0 || *n > max {
            diags.error(
                "Invalid number",
                format!("must be between 0 and {max}; got {n}."),
                at,
            );
        }
    }
}

fn check_statuses(diags: &mut Diagnostics, l: &Nums, at: AttributePath) {
    if let Value::Value(l) = l {
        for (i, n) in l.iter().enumerate() {
            if let Value::Value(n) = n {
                if !(100..=599).contains(n) {
                    diags.error(
                        "Invalid HTTP status",
                        format!("{n} is not an HTTP status: use 100 to 599."),
                        at.clone().index(i as i64),
                    );
                }
            }
        }
    }
}

/// Plan-time checks of the blocks, each naming its attribute.
pub fn check(
    diags: &mut Diagnostics,
    hc: &Value<HealthchecksBlock>,
    cb: &Value<CircuitBreakerBlock>,
    to: &Value<TimeoutsBlock>,
    queue: &Value<QueueBlock>,
) {
    const BIG: i64 = 1_000_000;
    if let Value::Value(h) = hc {
        let base = AttributePath::new("healthchecks").index(0);
        if let Value::Value(a) = &h.active {
            let at = base.clone().attribute("active").index(0);
            if let Value::Value(k) = &a.kind {
                if k != "http" && k != "tcp" {
                    diags.error(
                        "Invalid health check type",
                        format!("type must be \"http\" or \"tcp\"; got {k:?}."),
                        at.clone().attribute("type"),
                    );
                }
            }
            if let Value::Value(p) = &a.http_path {
                if !p.starts_with('/') {
                    diags.error(
                        "Invalid http_path",
                        format!("http_path must start with /; got {p:?}."),
                        at.clone().attribute("http_path"),
                    );
                }
            }
            check_duration(diags, &a.timeout, at.clone().attribute("timeout"));
            if let Value::Value(n) = &a.concurrency {
                if !(1..=1000).contains(n) {
                    diags.error(
                        "Invalid concurrency",
                        format!(
                            "concurrency is how many targets are probed at once: 1 to 1000 (default 10); got {n}."
                        ),
                        at.clone().attribute("concurrency"),
                    );
                }
            }
            if let Value::Value(x) = &a.healthy {
                let at = at.clone().attribute("healthy").index(0);
                check_duration(diags, &x.interval, at.clone().attribute("interval"));
                check_count(diags, &x.successes, at.clone().attribute("successes"), 255);
                check_statuses(diags, &x.http_statuses, at.attribute("http_statuses"));
            }
            if let Value::Value(x) = &a.unhealthy {
                let at = at.attribute("unhealthy").index(0);
                check_duration(diags, &x.interval, at.clone().attribute("interval"));
                for (k, n) in [
                    ("http_failures", &x.http_failures),
                    ("tcp_failures", &x.tcp_failures),
                    ("timeouts", &x.timeouts),
                ] {
                    check_count(diags, n, at.clone().attribute(k), 255);
                }
                check_statuses(diags, &x.http_statuses, at.attribute("http_statuses"));
            }
        }
        if let Value::Value(p) = &h.passive {
            let at = base.attribute("passive").index(0);
            if let Value::Value(x) = &p.healthy {
                let at = at.clone().attribute("healthy").index(0);
                check_count(diags, &x.successes, at.clone().attribute("successes"), BIG);
                check_statuses(diags, &x.http_statuses, at.attribute("http_statuses"));
            }
            if let Value::Value(x) = &p.unhealthy {
                let at = at.attribute("unhealthy").index(0);
                for (k, n) in [
                    ("http_failures", &x.http_failures),
                    ("tcp_failures", &x.tcp_failures),
                    ("timeouts", &x.timeouts),
                ] {
                    check_count(diags, n, at.clone().attribute(k), 255);
                }
                check_statuses(diags, &x.http_statuses, at.attribute("http_statuses"));
            }
        }
    }
    if let Value::Value(c) = cb {
        let at = AttributePath::new("circuit_breaker").index(0);
        check_duration(
            diags,
            &c.base_ejection_time,
            at.clone().attribute("base_ejection_time"),
        );
        check_count(
            diags,
            &c.max_ejection_percent,
            at.clone().attribute("max_ejection_percent"),
            100,
        );
        check_duration(
            diags,
            &c.max_ejection_time,
            at.clone().attribute("max_ejection_time"),
        );
        check_count(
            diags,
            &c.panic_threshold,
            at.clone().attribute("panic_threshold"),
            100,
        );
        let d = localdr::spec::PassiveCheck::default();
        let parse = |x: &S, d: &str| localdr::duration::parse(&text(x, d)).ok();
        if let (Some(base), Some(max)) = (
            parse(&c.base_ejection_time, &d.base_ejection_time),
            parse(&c.max_ejection_time, &d.max_ejection_time),
        ) {
            if max < base {
                diags.error(
                    "Invalid duration",
                    format!(
                        "max_ejection_time ({max:?}) must be at least base_ejection_time ({base:?})."
                    ),
                    at.attribute("max_ejection_time"),
                );
            }
        }
    }
    if let Value::Value(t) = to {
        let at = AttributePath::new("timeouts").index(0);
        for (k, x) in [
            ("connect", &t.connect),
            ("read", &t.read),
            ("write", &t.write),
            ("client", &t.client),
        ] {
            check_duration(diags, x, at.clone().attribute(k));
        }
        // Zero would close every connection before its first request.
        if let Value::Value(c) = &t.client {
            if localdr::duration::parse(c).is_ok_and(|d| d.is_zero()) {
                diags.error(
                    "Invalid duration",
                    "timeouts.client must be more than 0 (it closes a connection that has not sent a request head in that time). Default 60s.",
                    at.clone().attribute("client"),
                );
            }
        }
    }
    if let Value::Value(q) = queue {
        let at = AttributePath::new("queue").index(0);
        for (k, x) in [
            ("incoming_dir", &q.incoming_dir),
            ("workers_dir", &q.workers_dir),
            ("errors_dir", &q.errors_dir),
            ("log_dir", &q.log_dir),
        ] {
            if let Value::Value(p) = x {
                if !std::path::Path::new(p).is_absolute() {
                    diags.error(
                        format!("Invalid {k}"),
                        format!("{k} must be an absolute path (e.g. \"${{abspath(path.module)}}/incoming\"); got {p:?}."),
                        at.clone().attribute(k),
                    );
                }
            }
        }
        check_duration(
            diags,
            &q.poll_interval,
            at.clone().attribute("poll_interval"),
        );
        check_duration(diags, &q.timeout, at.clone().attribute("timeout"));
        if let Value::Value(c) = &q.command {
            if c.is_empty() {
                diags.error(
                    "Invalid command",
                    "command, when set, needs at least the program to run.",
                    at.attribute("command"),
                );
            }
        }
    }
}

fn thresholds_schema(healthy: bool, interval: bool) -> Block {
    let mut attributes = if healthy {
        map! {
            "successes" => number(OptionalComputed, "Successes in a row that make an unhealthy target healthy (0 = off). Default 2 (active) / 5 (passive)."),
            "http_statuses" => attr(AttributeType::List(AttributeType::Number.into()), OptionalComputed, "Statuses that count as a success. Default [200, 302] (active).")
        }
    } else {
        map! {
            "http_failures" => number(OptionalComputed, "HTTP failures (a status in http_statuses) that make a target unhealthy. Default 3 (active) / 5 (passive); 0 = off."),
            "tcp_failures" => number(OptionalComputed, "Connection failures that make a target unhealthy. Default 3 (active) / 2 (passive)."),
            "timeouts" => number(OptionalComputed, "Timeouts that make a target unhealthy. Default 3 (active) / 2 (passive)."),
            "http_statuses" => attr(AttributeType::List(AttributeType::Number.into()), OptionalComputed, "Statuses that count as failures. Default [429, 404, 500–505] (active), [500, 502, 503, 504] (passive).")
        }
    };
    if interval {
        attributes.insert(
            "interval".into(),
            string(
                OptionalComputed,
                "How often to probe a target in this state. Default 10s; 0s stops probing.",
            ),
        );
    }
    Block {
        version: 1,
        description: Description::plain(if healthy {
            "When a target counts as healthy."
        } else {
            "When a target counts as unhealthy."
        }),
        attributes,
        ..Default::default()
    }
}

/// Schemas of the blocks, by block name.
pub fn schemas() -> Vec<(&'static str, NestedBlock)> {
    let active = Block {
        version: 1,
        description: Description::plain(
            "Probes every target (Kong's active health checks). On by default: GET / every 10 s.",
        ),
        attributes: map! {
            "type" => string(OptionalComputed, "`http` (default) or `tcp` (connect only)."),
            "http_path" => string(OptionalComputed, "Path probed. Default `/`."),
            "timeout" => string(OptionalComputed, "Probe timeout. Default 1s."),
            "concurrency" => number(OptionalComputed, "At most this many probes at once (Kong's `concurrency`), 1 to 1000. Default 10.")
        },
        blocks: map! {
            "healthy" => NestedBlock::Optional(thresholds_schema(true, true)),
            "unhealthy" => NestedBlock::Optional(thresholds_schema(false, true))
        },
        ..Default::default()
    };
    let passive = Block {
        version: 1,
        description: Description::plain("Counts live traffic (Kong's passive checks): a target past a threshold is ejected; active checks re-admit it."),
        blocks: map! {
            "healthy" => NestedBlock::Optional(thresholds_schema(true, false)),
            "unhealthy" => NestedBlock::Optional(thresholds_schema(false, false))
        },
        ..Default::default()
    };
    vec![
        (
            "healthchecks",
            NestedBlock::Optional(Block {
                version: 1,
                description: Description::plain("Kong-shaped health checks; defaults as seed 001's set-up."),
                blocks: map! {
                    "active" => NestedBlock::Optional(active),
                    "passive" => NestedBlock::Optional(passive)
                },
                ..Default::default()
            }),
        ),
        (
            "circuit_breaker",
            NestedBlock::Optional(Block {
                version: 1,
                description: Description::plain("Envoy-style ejection: an ejected target stays out base_ejection_time × (its ejections), at most max_ejection_time; never more than max_ejection_percent of the targets at once; below panic_threshold percent of primaries available (and no backup), traffic spreads over every primary."),
                attributes: map! {
                    "base_ejection_time" => string(OptionalComputed, "Default 30s."),
                    "max_ejection_percent" => number(OptionalComputed, "0–100. Default 50."),
                    "max_ejection_time" => string(OptionalComputed, "The longest one ejection lasts; at least base_ejection_time. Default 300s."),
                    "panic_threshold" => number(OptionalComputed, "0–100 (Envoy's healthy_panic_threshold). Default 0: panic mode only when no target at all is available.")
                },
                ..Default::default()
            }),
        ),
        (
            "timeouts",
            NestedBlock::Optional(Block {
                version: 1,
                description: Description::plain("Upstream timeouts (Kong's connect, read, write) and the client-side header timeout."),
                attributes: map! {
                    "connect" => string(OptionalComputed, "Default 60s."),
                    "read" => string(OptionalComputed, "Time to wait for a target's answer. Default 60s."),
                    "write" => string(OptionalComputed, "Longest pause while a client streams a request body; a stalled upload gets 408. Default 60s."),
                    "client" => string(OptionalComputed, "Longest a client may take to send a request head, counted from when the connection is ready for one; also closes idle keep-alive connections (nginx's client_header_timeout). Default 60s.")
                },
                ..Default::default()
            }),
        ),
        (
            "queue",
            NestedBlock::Optional(Block {
                version: 1,
                description: Description::plain("Queue mode (mode = \"queue\"): files in incoming_dir go round-robin to the healthy workers, into <workers_dir>/<worker>/; with a command, it runs on each file and the outcome is filed (processed/ or errors_dir with a reason)."),
                attributes: map! {
                    "incoming_dir" => string(Required, "Absolute path watched for new files (write them elsewhere or as .tmp, then rename in)."),
                    "workers_dir" => string(Required, "Absolute path; each worker gets <workers_dir>/<worker>/. Same file system as incoming_dir."),
                    "errors_dir" => string(Required, "Absolute path for failed items, each with <item>.reason.json."),
                    "log_dir" => string(OptionalComputed, "Per-worker JSON-lines logs load_<worker>.jsonl. Default <state_dir>/logs/<name>-queue."),
                    "poll_interval" => string(OptionalComputed, "Full scan interval; inotify picks files up sooner. Default 5s."),
                    "command" => attr(AttributeType::List(AttributeType::String.into()), Optional, "argv run on each item (`{file}` is replaced, else the path is appended), with LOCALDR_WORKER, LOCALDR_WORKER_ADDRESS and LOCALDR_WORKER_PORT set; exit 0 = processed. Without it, workers consume their directories."),
                    "timeout" => string(OptionalComputed, "A command running longer is killed and its item filed as an error. Default 60s.")
                },
                ..Default::default()
            }),
        ),
    ]
}

// ---- correlation_id (Kong's correlation-id plugin) ----

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct CorrelationBlock {
    pub header_name: S,
    pub echo_downstream: Value<bool>,
}

/// Plan what the block leaves out to its defaults.
pub fn correlation_defaults(c: &mut Value<CorrelationBlock>) {
    let d = CorrelationId::default();
    within(c, |c| {
        fill(&mut c.header_name, d.header_name.clone());
        fill(&mut c.echo_downstream, d.echo_downstream);
    });
}

pub fn correlation(c: &Value<CorrelationBlock>) -> CorrelationId {
    let d = CorrelationId::default();
    match c {
        Value::Value(c) => CorrelationId {
            header_name: text(&c.header_name, &d.header_name),
            echo_downstream: known(&c.echo_downstream).unwrap_or(d.echo_downstream),
        },
        _ => d,
    }
}

/// The block as the spec on disk has it: absent when the spec holds the defaults and the
/// configuration left the block out, so a hand edit shows as a diff and nothing else does.
pub fn correlation_from_spec(c: &mut Value<CorrelationBlock>, sp: &BalancerSpec) {
    let id = &sp.correlation_id;
    *c = keep(!c.is_null(), *id == CorrelationId::default(), || {
        CorrelationBlock {
            header_name: v(id.header_name.clone()),
            echo_downstream: v(id.echo_downstream),
        }
    });
}

pub fn check_correlation(diags: &mut Diagnostics, c: &Value<CorrelationBlock>) {
    if let Value::Value(b) = c {
        if let Value::Value(name) = &b.header_name {
            let id = CorrelationId {
                header_name: name.clone(),
                echo_downstream: true,
            };
            if let Err(e) = id.header() {
                diags.error(
                    "Invalid header name",
                    format!("{e}."),
                    AttributePath::new("correlation_id")
                        .index(0)
                        .attribute("header_name"),
                );
            }
        }
    }
}

pub fn correlation_schema() -> NestedBlock {
    NestedBlock::Optional(Block {
        version: 1,
        description: Description::plain("The request id (Kong's correlation-id plugin): kept from the client when it sent one, else generated; passed to the target and logged."),
        attributes: map! {
            "header_name" => string(OptionalComputed, "Default X-Request-ID."),
            "echo_downstream" => boolean(OptionalComputed, "Return the id to the client in the answer. Default true.")
        },
        ..Default::default()
    })
}
