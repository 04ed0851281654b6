//! `localdr_service_status`: a pool's replicas as the agent reports them (pid, port, state,
//! health, restarts), with counts, read fresh on every plan.

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

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Replica {
    pub index: N,
    pub port: N,
    pub pid: N,
    pub state: S,
    pub health: S,
    pub restarts: N,
    pub last_exit: S,
    pub outdated: Value<bool>,
    pub settling: Value<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ServiceStatusState {
    pub id: S,
    pub name: S,
    pub agent_running: Value<bool>,
    pub desired: N,
    pub running: N,
    pub healthy: N,
    pub outdated: N,
    pub settling: N,
    pub reason: S,
    pub replicas: Value<Vec<Value<Replica>>>,
}

pub struct ServiceStatusSource {
    shared: Arc<Shared>,
}

impl ServiceStatusSource {
    pub fn new(shared: Arc<Shared>) -> Self {
        ServiceStatusSource { shared }
    }
}

#[async_trait]
impl DataSource for ServiceStatusSource {
    type State<'a> = ServiceStatusState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let replica = [
            ("index", AttributeType::Number),
            ("port", AttributeType::Number),
            ("pid", AttributeType::Number),
            ("state", AttributeType::String),
            ("health", AttributeType::String),
            ("restarts", AttributeType::Number),
            ("last_exit", AttributeType::String),
            ("outdated", AttributeType::Bool),
            ("settling", AttributeType::Bool),
        ];
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain(
                    "A localdr_service pool as the agent runs it right now.",
                ),
                attributes: map! {
                    "id" => string(Computed, "The name."),
                    "name" => string(Required, "The service name."),
                    "agent_running" => boolean(Computed, "Whether an agent runs on the state dir."),
                    "desired" => number(Computed, "Replicas wanted now (after autoscaling and schedules)."),
                    "running" => number(Computed, "Replicas in state running."),
                    "healthy" => number(Computed, "Replicas running and healthy."),
                    "outdated" => number(Computed, "Replicas still running an earlier spec's command or env: a rolling replace is under way (or stopped at a new replica that never became healthy)."),
                    "settling" => number(Computed, "Replacement replicas that are healthy but not yet for `min_ready`: the rolling replace waits for them before it goes on."),
                    "reason" => string(Computed, "Why the desired count is what it is."),
                    "replicas" => object_list(&replica, "Every replica: index, port, pid (0 when none), state, health, restarts, last_exit, outdated, settling.")
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
        let running = sd.agent_running();
        let st = if running {
            sd.read_status(&name).ok().flatten()
        } else {
            None
        };
        let mut out = ServiceStatusState {
            id: v(name.clone()),
            name: v(name),
            agent_running: v(running),
            desired: v(0),
            running: v(0),
            healthy: v(0),
            outdated: v(0),
            settling: v(0),
            reason: v(String::new()),
            replicas: v(vec![]),
        };
        if let Some(st) = st {
            let reps = &st.replicas;
            out.desired = v(st.desired as i64);
            out.running = v(st.running() as i64);
            out.healthy = v(st.healthy() as i64);
            out.outdated = v(st.outdated() as i64);
            out.settling = v(st.settling() as i64);
            out.reason = v(st.reason.clone());
            out.replicas = v(reps
                .iter()
                .map(|r| {
                    v(Replica {
                        index: v(r.index as i64),
                        port: v(r.port as i64),
                        pid: v(r.pid.unwrap_or(0) as i64),
                        state: v(r.state.clone()),
                        health: v(r.health.clone()),
                        restarts: v(r.restarts as i64),
                        last_exit: v(r.last_exit.clone().unwrap_or_default()),
                        outdated: v(r.outdated),
                        settling: v(r.settling),
                    })
                })
                .collect());
        }
        Some(out)
    }
}
