//! `localdr_balancer_status`: a balancer as the agent runs it — where it listens, each
//! target's health, or a queue's counts — read fresh on every plan.

use super::{check_name, known_name, object_list, v};
use crate::provider::Shared;
use crate::schema::{boolean, number, string};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tf_provider::schema::{
    AttributeConstraint::{Computed, Required},
    AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{map, DataSource, Diagnostics};

type S = Value<String>;
type N = Value<i64>;
type B = Value<bool>;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TargetStatus {
    pub address: S,
    pub weight: N,
    pub backup: B,
    pub healthy: B,
    pub ejected: B,
    pub available: B,
    pub in_flight: N,
    pub ejections: N,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct BalancerStatusState {
    pub id: S,
    pub name: S,
    pub running: B,
    pub error: S,
    pub listening: S,
    pub admin_address: S,
    pub available_targets: N,
    pub targets: Value<Vec<Value<TargetStatus>>>,
    pub queue_pending: N,
    pub queue_in_flight: N,
    pub queue_processed: N,
    pub queue_failed: N,
}

pub struct BalancerStatusSource {
    shared: Arc<Shared>,
}

impl BalancerStatusSource {
    pub fn new(shared: Arc<Shared>) -> Self {
        BalancerStatusSource { shared }
    }
}

#[async_trait]
impl DataSource for BalancerStatusSource {
    type State<'a> = BalancerStatusState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let target = [
            ("address", AttributeType::String),
            ("weight", AttributeType::Number),
            ("backup", AttributeType::Bool),
            ("healthy", AttributeType::Bool),
            ("ejected", AttributeType::Bool),
            ("available", AttributeType::Bool),
            ("in_flight", AttributeType::Number),
            ("ejections", AttributeType::Number),
        ];
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain(
                    "A localdr_balancer as the agent runs it right now.",
                ),
                attributes: map! {
                    "id" => string(Computed, "The name."),
                    "name" => string(Required, "The balancer name."),
                    "running" => boolean(Computed, "Listening (HTTP) or dispatching (queue), with no error."),
                    "error" => string(Computed, "Why it is not running, when it is not."),
                    "listening" => string(Computed, "Where it accepts requests (HTTP mode)."),
                    "admin_address" => string(Computed, "Where its admin API listens (HTTP mode)."),
                    "available_targets" => number(Computed, "Primary targets taking traffic now (healthy, not ejected, not draining)."),
                    "targets" => object_list(&target, "Every target: address, weight, backup, healthy, ejected, available, in_flight, ejections."),
                    "queue_pending" => number(Computed, "Queue mode: items waiting."),
                    "queue_in_flight" => number(Computed, "Queue mode: items being processed."),
                    "queue_processed" => number(Computed, "Queue mode: items processed since the dispatcher started."),
                    "queue_failed" => number(Computed, "Queue mode: items filed as errors since the dispatcher started.")
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        check_name(diags, &config.name);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        let name = known_name(diags, &config.name)?;
        let sd = self.shared.state_dir();
        let st = if sd.agent_running() {
            sd.read_balancer_status(&name).ok().flatten()
        } else {
            None
        };
        let g =
            |x: &serde_json::Value, k: &str| x.get(k).and_then(|n| n.as_u64()).unwrap_or(0) as i64;
        let b =
            |x: &serde_json::Value, k: &str| x.get(k).and_then(|n| n.as_bool()).unwrap_or(false);
        let mut out = BalancerStatusState {
            id: v(name.clone()),
            name: v(name.clone()),
            running: v(false),
            error: v(String::new()),
            listening: v(String::new()),
            admin_address: v(String::new()),
            available_targets: v(0),
            targets: v(vec![]),
            queue_pending: v(0),
            queue_in_flight: v(0),
            queue_processed: v(0),
            queue_failed: v(0),
        };
        let Some(st) = st else {
            out.error = v(format!("no agent runs balancer {name}"));
            return Some(out);
        };
        out.running = v(st.running());
        out.error = v(st.error.clone().unwrap_or_default());
        out.listening = v(st.listening.clone().unwrap_or_default());
        out.admin_address = v(st.admin.clone().unwrap_or_default());
        let targets = st.targets.as_array().cloned().unwrap_or_default();
        out.available_targets = v(targets
            .iter()
            .filter(|t| !b(t, "backup") && b(t, "available"))
            .count() as i64);
        out.targets = v(targets
            .iter()
            .map(|t| {
                v(TargetStatus {
                    address: v(t
                        .get("address")
                        .and_then(|a| a.as_str())
                        .unwrap_or("")
                        .to_string()),
                    weight: v(g(t, "weight")),
                    backup: v(b(t, "backup")),
                    healthy: v(b(t, "healthy")),
                    ejected: v(b(t, "ejected")),
                    available: v(b(t, "available")),
                    in_flight: v(g(t, "in_flight")),
                    ejections: v(g(t, "ejections")),
                })
            })
            .collect());
        if let Some(q) = &st.queue {
            out.queue_pending = v(g(q, "pending"));
            out.queue_in_flight = v(g(q, "in_flight"));
            out.queue_processed = v(g(q, "processed"));
            out.queue_failed = v(g(q, "failed"));
        }
        Some(out)
    }
}
