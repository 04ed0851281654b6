//! `localdr_balancer`: an HTTP load balancer run by the agent, in front of a
//! `localdr_service` pool (followed as it scales) or static targets.
//!
//! Like `localdr_service`: the provider writes the spec, makes sure an agent runs, and
//! waits until the balancer listens (a port in use is an apply error). Read writes the
//! spec back (a hand edit is a diff; a deleted spec recreates the resource) and sets
//! `ensure_running = false` when the balancer is not listening.

use super::balancer_blocks::{
    self as blocks, CircuitBreakerBlock, HealthchecksBlock, QueueBlock, TimeoutsBlock,
};
use super::balancer_rate_limit::{self as rate_limit, RateLimitBlock};
use super::util::{blocking, fill, known, v};
use crate::provider::Shared;
use crate::schema::{boolean, number, string};
use async_trait::async_trait;
use localdr::runtime::control::{self, AgentMode};
use localdr::spec::{self, BalancerSpec, Target};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tf_provider::schema::{
    AttributeConstraint::{Computed, Optional, OptionalComputed, Required},
    Block, Description, NestedBlock, Schema,
};
use tf_provider::value::{self, Value, ValueEmpty};
use tf_provider::{map, AttributePath, Diagnostics, Resource};

type S = Value<String>;
type N = Value<i64>;
type B = Value<bool>;

const ALGORITHMS: [&str; 3] = ["round-robin", "least-connections", "random-two-choices"];
const MODES: [&str; 2] = ["http", "queue"];

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct TargetBlock {
    pub address: S,
    pub weight: N,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct BalancerState {
    pub id: S,
    pub name: S,
    pub listen: S,
    pub admin_listen: S,
    pub service: S,
    pub backup_service: S,
    pub target: Value<Vec<Value<TargetBlock>>>,
    pub backup_target: Value<Vec<Value<TargetBlock>>>,
    pub algorithm: S,
    pub retries: N,
    #[serde(with = "value::serde_as_vec")]
    pub rate_limit: Value<RateLimitBlock>,
    pub mode: S,
    pub slow_start: S,
    pub access_log: B,
    #[serde(with = "value::serde_as_vec")]
    pub healthchecks: Value<HealthchecksBlock>,
    #[serde(with = "value::serde_as_vec")]
    pub circuit_breaker: Value<CircuitBreakerBlock>,
    #[serde(with = "value::serde_as_vec")]
    pub timeouts: Value<TimeoutsBlock>,
    #[serde(with = "value::serde_as_vec")]
    pub queue: Value<QueueBlock>,
    #[serde(with = "value::serde_as_vec")]
    pub correlation_id: Value<blocks::CorrelationBlock>,
    pub ensure_running: B,
    pub admin_address: S,
    pub url: S,
    pub admin_url: S,
    pub drain_timeout: S,
}

/// `admin_address` and the `admin_url` made from it (unknown while it is).
fn set_admin(s: &mut BalancerState, addr: S) {
    s.admin_url = match &addr {
        Value::Value(a) if !a.is_empty() => v(format!("http://{a}")),
        Value::Value(_) => v(String::new()),
        other => other.clone(),
    };
    s.admin_address = addr;
}

/// `http://<listen>` in http mode; a queue has no URL.
fn url_of(s: &BalancerState) -> S {
    match (&s.mode, &s.listen) {
        (Value::Value(m), _) if m == "queue" => Value::Null,
        (Value::Unknown, _) | (_, Value::Unknown) => Value::Unknown,
        (_, Value::Value(l)) => v(format!("http://{l}")),
        _ => Value::Null,
    }
}

pub struct BalancerResource {
    shared: Arc<Shared>,
}

impl BalancerResource {
    pub fn new(shared: Arc<Shared>) -> Self {
        BalancerResource { shared }
    }
}

/// Defaults for what the configuration leaves out; `state_dir` places the queue's logs.
fn apply_defaults(s: &mut BalancerState, state_dir: &std::path::Path) {
    fill(&mut s.mode, "http".into());
    fill(&mut s.slow_start, "0s".into());
    fill(&mut s.access_log, true);
    let log_dir = state_dir
        .join("logs")
        .join(format!("{}-queue", known(&s.name).unwrap_or_default()));
    blocks::defaults(
        &mut s.healthchecks,
        &mut s.circuit_breaker,
        &mut s.timeouts,
        &mut s.queue,
        &log_dir.display().to_string(),
    );
    blocks::correlation_defaults(&mut s.correlation_id);
    fill(&mut s.listen, "127.0.0.1:8080".into());
    fill(&mut s.admin_listen, "127.0.0.1:0".into());
    fill(&mut s.algorithm, "round-robin".into());
    fill(&mut s.retries, 5);
    fill(&mut s.ensure_running, true);
    fill(&mut s.drain_timeout, "30s".into());
    s.url = url_of(s);
    for list in [&mut s.target, &mut s.backup_target] {
        if let Value::Value(l) = list {
            for t in l.iter_mut() {
                if let Value::Value(t) = t {
                    fill(&mut t.weight, 1);
                }
            }
        }
    }
    rate_limit::defaults(&mut s.rate_limit);
}

fn targets(l: &Value<Vec<Value<TargetBlock>>>) -> Result<Vec<Target>, String> {
    known(l)
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let t = known(&t).ok_or("a target is not known yet")?;
            Ok(Target {
                address: known(&t.address).ok_or("target.address is not known yet")?,
                weight: u32::try_from(known(&t.weight).unwrap_or(1))
                    .map_err(|_| "weight must be 0 or more")?,
            })
        })
        .collect()
}

fn to_spec(s: &BalancerState) -> Result<BalancerSpec, String> {
    let k = |x: &S, what: &str| known(x).ok_or_else(|| format!("{what} is not known yet"));
    Ok(BalancerSpec {
        api_version: spec::API_VERSION,
        name: k(&s.name, "name")?,
        listen: k(&s.listen, "listen")?,
        service: known(&s.service),
        backup_service: known(&s.backup_service),
        targets: targets(&s.target)?,
        backup_targets: targets(&s.backup_target)?,
        algorithm: k(&s.algorithm, "algorithm")?,
        healthchecks: blocks::healthchecks(&s.healthchecks, &s.circuit_breaker),
        retries: u32::try_from(known(&s.retries).unwrap_or(5))
            .map_err(|_| "retries must be 0 or more")?,
        timeouts: blocks::timeouts(&s.timeouts),
        correlation_id: blocks::correlation(&s.correlation_id),
        rate_limit: rate_limit::to_spec(&s.rate_limit)?,
        admin_listen: k(&s.admin_listen, "admin_listen")?,
        mode: known(&s.mode).unwrap_or_else(|| "http".into()),
        queue: blocks::queue(&s.queue)?,
        slow_start: known(&s.slow_start).unwrap_or_else(|| "0s".into()),
        access_log: known(&s.access_log).unwrap_or(true),
        drain_timeout: known(&s.drain_timeout).unwrap_or_else(|| "30s".into()),
    })
}

fn from_spec(state: &mut BalancerState, sp: &BalancerSpec) {
    let tl =
        |ts: &[Target], prior: &Value<Vec<Value<TargetBlock>>>| -> Value<Vec<Value<TargetBlock>>> {
            if ts.is_empty() && !matches!(prior, Value::Value(_)) {
                return Value::Null;
            }
            v(ts.iter()
                .map(|t| {
                    v(TargetBlock {
                        address: v(t.address.clone()),
                        weight: v(t.weight as i64),
                    })
                })
                .collect())
        };
    state.id = v(sp.name.clone());
    state.name = v(sp.name.clone());
    state.listen = v(sp.listen.clone());
    state.admin_listen = v(sp.admin_listen.clone());
    state.service = sp.service.clone().into();
    state.backup_service = sp.backup_service.clone().into();
    state.target = tl(&sp.targets, &state.target);
    state.backup_target = tl(&sp.backup_targets, &state.backup_target);
    state.algorithm = v(sp.algorithm.clone());
    state.retries = v(sp.retries as i64);
    state.rate_limit = rate_limit::from_spec(&state.rate_limit, sp.rate_limit.as_ref());
    state.mode = v(sp.mode.clone());
    state.slow_start = v(sp.slow_start.clone());
    state.access_log = v(sp.access_log);
    state.drain_timeout = v(sp.drain_timeout.clone());
    state.url = url_of(state);
    blocks::from_spec(
        &mut state.healthchecks,
        &mut state.circuit_breaker,
        &mut state.timeouts,
        &mut state.queue,
        sp,
    );
    blocks::correlation_from_spec(&mut state.correlation_id, sp);
}

fn check_config(diags: &mut Diagnostics, c: &BalancerState) {
    if let Value::Value(n) = &c.name {
        if let Err(e) = localdr::naming::validate_name(n) {
            diags.error("Invalid name", format!("{e}."), AttributePath::new("name"));
        }
    }
    if let Value::Value(a) = &c.algorithm {
        if !ALGORITHMS.contains(&a.as_str()) {
            diags.error(
                "Invalid algorithm",
                format!(
                    "unknown algorithm {a:?}: use one of {}.",
                    ALGORITHMS.join(", ")
                ),
                AttributePath::new("algorithm"),
            );
        }
    }
    if let Value::Value(m) = &c.mode {
        if !MODES.contains(&m.as_str()) {
            diags.error(
                "Invalid mode",
                format!("unknown mode {m:?}: use \"http\" or \"queue\"."),
                AttributePath::new("mode"),
            );
        }
    }
    let queue_mode = matches!(&c.mode, Value::Value(m) if m == "queue");
    if queue_mode && c.queue.is_null() {
        diags.error(
            "Missing queue block",
            "mode = \"queue\" needs a queue block with incoming_dir, workers_dir and errors_dir.",
            AttributePath::new("queue"),
        );
    }
    if matches!(&c.mode, Value::Value(m) if m == "http") || c.mode.is_null() {
        if let Value::Value(_) = &c.queue {
            diags.error(
                "Queue block without queue mode",
                "The queue block is used only with mode = \"queue\": set mode, or remove the block.",
                AttributePath::new("queue"),
            );
        }
    }
    blocks::check(
        diags,
        &c.healthchecks,
        &c.circuit_breaker,
        &c.timeouts,
        &c.queue,
    );
    blocks::check_correlation(diags, &c.correlation_id);
    for (k, x, like) in [
        ("drain_timeout", &c.drain_timeout, "30s or 2m"),
        ("slow_start", &c.slow_start, "0s or 30s"),
    ] {
        if let Value::Value(d) = x {
            if let Err(e) = localdr::duration::parse(d) {
                diags.error(
                    format!("Invalid {k}"),
                    format!("{e:#}. Use a duration such as {like}."),
                    AttributePath::new(k),
                );
            }
        }
    }
    for (k, l) in [("target", &c.target), ("backup_target", &c.backup_target)] {
        if let Value::Value(l) = l {
            for (i, t) in l.iter().enumerate() {
                let Value::Value(t) = t else { continue };
                let at = AttributePath::new(k).index(i as i64);
                if let Value::Value(w) = &t.weight {
                    if *w < 0 {
                        diags.error(
                            "Invalid weight",
                            format!("weight must be 0 or more; got {w}."),
                            at.clone().attribute("weight"),
                        );
                    }
                }
                if let Value::Value(a) = &t.address {
                    if a.parse::<std::net::SocketAddr>().is_err() {
                        diags.error(
                            "Invalid address",
                            format!(
                                "address {a:?} must be host:port with an IP, e.g. 127.0.0.1:8081."
                            ),
                            at.attribute("address"),
                        );
                    }
                }
            }
        }
    }
    let no_targets =
        matches!(&c.target, Value::Null) || matches!(&c.target, Value::Value(l) if l.is_empty());
    for (k, set) in [
        ("backup_service", !c.backup_service.is_null()),
        (
            "backup_target",
            matches!(&c.backup_target, Value::Value(l) if !l.is_empty()),
        ),
    ] {
        if queue_mode && set {
            diags.error(
                format!("{k} in queue mode"),
                format!("{k} is for mode = \"http\" (a failover pool); a queue hands items only to its own workers. Remove it, or use mode = \"http\"."),
                AttributePath::new(k),
            );
        }
    }
    if let (Value::Value(a), Value::Value(b)) = (&c.service, &c.backup_service) {
        if a == b {
            diags.error(
                "backup_service is the service",
                format!(
                    "backup_service {b:?} is also `service`: a backup pool must be other workers."
                ),
                AttributePath::new("backup_service"),
            );
        }
    }
    if no_targets && c.service.is_null() {
        diags.error(
            "No targets",
            "Set `service` (a localdr_service name to follow) or at least one `target` block.",
            AttributePath::new("target"),
        );
    }
    for (k, x) in [("listen", &c.listen), ("admin_listen", &c.admin_listen)] {
        if let Value::Value(a) = x {
            if a.parse::<std::net::SocketAddr>().is_err() {
                diags.error(
                    format!("Invalid {k}"),
                    format!("{k} {a:?} must be ip:port, e.g. 127.0.0.1:8080."),
                    AttributePath::new(k),
                );
            }
        }
    }
    if let Value::Value(r) = &c.retries {
        if *r < 0 {
            diags.error(
                "Invalid retries",
                format!("retries must be 0 or more; got {r}."),
                AttributePath::new("retries"),
            );
        }
    }
    rate_limit::check(diags, &c.rate_limit);
}

impl BalancerResource {
    /// A listen port held by something other than this balancer is a plan error.
    fn check_port(&self, diags: &mut Diagnostics, s: &BalancerState) {
        let (Some(listen), Some(name)) = (known(&s.listen), known(&s.name)) else {
            return;
        };
        if known(&s.mode).as_deref() == Some("queue") {
            return;
        }
        let sd = self.shared.state_dir();
        let ours = sd
            .read_balancer_status(&name)
            .ok()
            .flatten()
            .and_then(|st| st.listening)
            .is_some_and(|l| l == listen)
            && sd.agent_running();
        if ours {
            return;
        }
        if let Err(e) = std::net::TcpListener::bind(&listen) {
            diags.error(
                "Listen address in use",
                format!("cannot listen on {listen}: {e}. Choose a free port for `listen`."),
                AttributePath::new("listen"),
            );
        }
    }

    async fn apply(
        &self,
        diags: &mut Diagnostics,
        planned: BalancerState,
    ) -> Option<BalancerState> {
        let mut state = planned;
        let sp = match to_spec(&state) {
            Ok(s) => s,
            Err(e) => {
                diags.root_error("Invalid balancer configuration", e);
                return None;
            }
        };
        let mode = self.shared.agent_mode();
        let exe = self.shared.localdr_exe();
        let sd = self.shared.state_dir();
        let name = sp.name.clone();
        let r = blocking(move || {
            let exe = if mode == "external" { None } else { exe.ok() };
            let m = match &exe {
                Some(e) => AgentMode::Auto { exe: e },
                None => AgentMode::External,
            };
            control::apply_balancer(&sd, &sp, Duration::from_secs(30), &m)
        })
        .await;
        match r {
            Ok(st) => {
                set_admin(&mut state, v(st.admin.unwrap_or_default()));
                state.ensure_running = v(true);
                Some(state)
            }
            Err(e) => {
                diags.root_error(format!("Balancer {name} is not running"), e);
                set_admin(&mut state, v(String::new()));
                state.ensure_running = v(false);
                Some(state)
            }
        }
    }
}

/// The resource's own blocks plus the tuning ones (`healthchecks`, `queue`, …).
fn with_tuning_blocks(
    mut m: std::collections::HashMap<String, NestedBlock>,
) -> std::collections::HashMap<String, NestedBlock> {
    m.extend(
        blocks::schemas()
            .into_iter()
            .map(|(k, b)| (k.to_string(), b)),
    );
    m.insert("correlation_id".into(), blocks::correlation_schema());
    m
}

fn target_block(desc: &str) -> Block {
    Block {
        version: 1,
        description: Description::plain(desc),
        attributes: map! {
            "address" => string(Required, "ip:port of the target."),
            "weight" => number(OptionalComputed, "Relative share of requests (round-robin) or of load (least-connections). Default 1; 0 takes no traffic.")
        },
        ..Default::default()
    }
}

#[async_trait]
impl Resource for BalancerResource {
    type State<'a> = BalancerState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain("An HTTP load balancer run by the localdr agent: weighted round-robin, least-connections or two random choices; Kong-style active and passive health checks (the seed's defaults) with Envoy-style ejection; retries; a backup pool; per-client rate limits; request ids; an admin API with Prometheus metrics."),
                attributes: map! {
                    "id" => string(Computed, "The name."),
                    "name" => string(Required, "Balancer name. Changing it forces a new resource."),
                    "listen" => string(OptionalComputed, "ip:port to accept requests on. Default `127.0.0.1:8080`."),
                    "admin_listen" => string(OptionalComputed, "ip:port of the admin API (`/status`, `/targets`, `/health`, `/metrics`). Default `127.0.0.1:0` (any free loopback port; see `admin_address`)."),
                    "service" => string(Optional, "A localdr_service name: its running replicas are targets (weight 1), followed as it scales."),
                    "backup_service" => string(Optional, "A localdr_service name whose running replicas are backup targets (weight 1): used only when no primary is available. HTTP mode."),
                    "algorithm" => string(OptionalComputed, "`round-robin` (weights honoured; default), `least-connections` or `random-two-choices`."),
                    "retries" => number(OptionalComputed, "Attempts on other targets after a failure (idempotent requests, or when nothing was sent). Default 5."),
                    "ensure_running" => boolean(OptionalComputed, "Read sets this to false when the balancer is not listening; apply then repairs. Default true."),
                    "admin_address" => string(Computed, "Where the admin API listens."),
                    "admin_url" => string(Computed, "`http://<admin_address>`: the admin API's base URL."),
                    "url" => string(Computed, "`http://<listen>`: where clients send requests (null in queue mode)."),
                    "drain_timeout" => string(OptionalComputed, "How long a drain (`POST /targets/<addr>/drain`, a target leaving, a stop or a reload that closes the listener) waits for requests in flight to finish. Default 30s."),
                    "mode" => string(OptionalComputed, "`http` (default): a load balancer; `queue`: a file-queue dispatcher (see the queue block). Changing it forces a new resource."),
                    "access_log" => boolean(OptionalComputed, "JSON-lines access log (request id, target, status, latency, retries) in <state_dir>/logs/<name>-access.log. Default true."),
                    "slow_start" => string(OptionalComputed, "A re-admitted target's weight ramps from 10% to full over this long. Default 0s (off).")
                },
                blocks: with_tuning_blocks(map! {
                    "target" => NestedBlock::List(target_block("A target.")),
                    "backup_target" => NestedBlock::List(target_block("Used only when every primary target is down.")),
                    "rate_limit" => rate_limit::schema()
                }),
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
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
        let mut state = state;
        let name = known(&state.name).or_else(|| known(&state.id))?;
        let sd = self.shared.state_dir();
        let (sp, hash) = match sd.read_balancer(&name) {
            Ok(Some(x)) => x,
            Ok(None) => return None,
            Err(e) => {
                diags.root_warning(
                    format!("Balancer {name}: spec file unreadable"),
                    format!("{e:#}. `terraform apply` will write it again."),
                );
                return None;
            }
        };
        from_spec(&mut state, &sp);
        let st = sd.read_balancer_status(&name).ok().flatten();
        let why = if !sd.agent_running() {
            Some(format!(
                "no localdr agent is running on {}",
                sd.root().display()
            ))
        } else {
            match &st {
                None => Some("the agent publishes no status for it".to_string()),
                Some(s) if s.spec_hash != hash => {
                    Some("the agent is not running the spec on disk".into())
                }
                Some(s) if s.error.is_some() => s.error.clone(),
                Some(s) if !s.running() => Some(if sp.mode == "queue" {
                    "its dispatcher is not running".into()
                } else {
                    "it is not listening".into()
                }),
                _ => None,
            }
        };
        set_admin(&mut state, v(st.and_then(|s| s.admin).unwrap_or_default()));
        match why {
            None => state.ensure_running = v(true),
            Some(w) => {
                state.ensure_running = v(false);
                diags.warning(
                    "Balancer not running as declared",
                    format!("{name}: {w}. `terraform apply` will repair it."),
                    AttributePath::new("ensure_running"),
                );
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
        check_config(diags, &config_state);
        let mut planned = proposed_state;
        apply_defaults(&mut planned, self.shared.state_dir().root());
        self.check_port(diags, &planned);
        planned.id = planned.name.clone();
        set_admin(&mut planned, Value::Unknown);
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
        check_config(diags, &config_state);
        // From the configuration, not the proposal: an attribute left out means its
        // default, so a hand edit of it in the spec shows as a diff (the proposal would
        // carry the edited value from state).
        let _ = proposed_state;
        let mut planned = config_state.clone();
        apply_defaults(&mut planned, self.shared.state_dir().root());
        if planned.listen != prior_state.listen {
            self.check_port(diags, &planned);
        }
        let mut replace = Vec::new();
        if planned.name != prior_state.name {
            replace.push(AttributePath::new("name"));
        }
        if planned.mode != prior_state.mode {
            replace.push(AttributePath::new("mode"));
        }
        planned.id = planned.name.clone();
        let mut a = planned.clone();
        set_admin(&mut a, Value::Null);
        let mut b = prior_state.clone();
        set_admin(&mut b, Value::Null);
        let admin = if a != b {
            Value::Unknown
        } else {
            prior_state.admin_address.clone()
        };
        set_admin(&mut planned, admin);
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
        let name = known(&state.name)?;
        let sd = self.shared.state_dir();
        let r =
            blocking(move || control::remove_balancer(&sd, &name, Duration::from_secs(40))).await;
        if let Err(e) = r {
            diags.root_error("Could not stop the balancer", e);
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
            BalancerState {
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

    /// `url` follows `listen` and `mode`, and stays unknown while either is (planning it
    /// known and then answering otherwise would be an inconsistent result in Terraform).
    #[test]
    fn url_follows_listen_and_mode() {
        let mut s = BalancerState {
            listen: v("127.0.0.1:8080".to_string()),
            mode: v("http".to_string()),
            ..Default::default()
        };
        assert_eq!(url_of(&s), v("http://127.0.0.1:8080".to_string()));
        s.mode = v("queue".to_string());
        assert_eq!(url_of(&s), Value::Null);
        s.mode = Value::Unknown;
        assert_eq!(url_of(&s), Value::Unknown);
        s.mode = v("http".to_string());
        s.listen = Value::Unknown;
        assert_eq!(url_of(&s), Value::Unknown);
    }

    #[test]
    fn admin_url_is_made_from_admin_address() {
        let mut s = BalancerState::default();
        set_admin(&mut s, v("127.0.0.1:41000".to_string()));
        assert_eq!(s.admin_url, v("http://127.0.0.1:41000".to_string()));
        set_admin(&mut s, Value::Unknown);
        assert_eq!(s.admin_url, Value::Unknown);
        assert_eq!(s.admin_address, Value::Unknown);
        set_admin(&mut s, v(String::new()));
        assert_eq!(s.admin_url, v(String::new()));
    }
}
