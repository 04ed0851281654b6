//! The `localdr` provider block: `state_dir` (default `.localdr` beside the root module),
//! nothing required.

use crate::schema::string;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tf_provider::schema::{AttributeConstraint, Block, Description, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{map, AttributePath, Diagnostics, DynamicDataSource, DynamicResource, Provider};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ProviderConfig {
    pub state_dir: Value<String>,
    pub agent: Value<String>,
    pub localdr_path: Value<String>,
}

/// What resources need from the provider's configuration.
#[derive(Debug, Default)]
pub struct Shared {
    pub state_dir: RwLock<Option<PathBuf>>,
    /// `auto` (start the agent when none runs) or `external`.
    pub agent: RwLock<Option<String>>,
    pub localdr_path: RwLock<Option<String>>,
    /// Port ranges of the services planned by this provider process, so two new services
    /// in one configuration cannot claim the same ports (neither has a spec file yet).
    pub planned_ports: std::sync::Mutex<HashMap<String, std::ops::Range<u32>>>,
}

impl Shared {
    pub fn state_dir(&self) -> localdr::statedir::StateDir {
        let d = self
            .state_dir
            .read()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| PathBuf::from(".localdr"));
        localdr::statedir::StateDir::new(&d)
    }

    pub fn agent_mode(&self) -> String {
        self.agent
            .read()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "auto".into())
    }

    /// The `localdr` binary: `localdr_path`, else `localdr` on PATH, else beside this
    /// provider binary.
    pub fn localdr_exe(&self) -> Result<PathBuf, String> {
        if let Some(p) = self.localdr_path.read().ok().and_then(|g| g.clone()) {
            return Ok(PathBuf::from(p));
        }
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                let c = d.join("localdr");
                if c.is_file() {
                    return Ok(c);
                }
            }
        }
        if let Some(c) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("localdr")))
            .filter(|c| c.is_file())
        {
            return Ok(c);
        }
        Err("the `localdr` binary was not found on PATH nor beside the provider; set `localdr_path` in the provider block".into())
    }
}

#[derive(Debug, Default, Clone)]
pub struct LocaldrProvider {
    shared: Arc<Shared>,
}

#[async_trait]
impl Provider for LocaldrProvider {
    type Config<'a> = ProviderConfig;
    type MetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain(
                    "localdr: verified local backups with retention and DR copies, and supervised worker pools, declared in HCL.",
                ),
                attributes: map! {
                    "state_dir" => string(AttributeConstraint::Optional,
                        "Directory for localdr's desired-state and status files. Default: `.localdr` in the root module directory."),
                    "agent" => string(AttributeConstraint::Optional,
                        "`auto` (default): apply starts `localdr agent --daemon` on the state dir when none runs. `external`: you run the agent; apply fails with instructions when it is not running."),
                    "localdr_path" => string(AttributeConstraint::Optional,
                        "The `localdr` binary the provider starts the agent with. Default: `localdr` on PATH, else beside the provider binary."),
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::Config<'a>) -> Option<()> {
        crate::nodelay::ensure();
        if let Value::Value(s) = &config.state_dir {
            if s.trim().is_empty() {
                diags.error(
                    "Invalid state_dir",
                    "state_dir must be a directory path, not an empty string.",
                    AttributePath::new("state_dir"),
                );
                return None;
            }
        }
        if let Value::Value(a) = &config.agent {
            if a != "auto" && a != "external" {
                diags.error(
                    "Invalid agent",
                    format!("agent must be \"auto\" or \"external\"; got {a:?}."),
                    AttributePath::new("agent"),
                );
                return None;
            }
        }
        Some(())
    }

    async fn configure<'a>(
        &self,
        _diags: &mut Diagnostics,
        terraform_version: String,
        config: Self::Config<'a>,
    ) -> Option<()> {
        crate::nodelay::ensure();
        let dir = match config.state_dir {
            Value::Value(s) => PathBuf::from(s),
            _ => PathBuf::from(".localdr"),
        };
        // Relative to the root module (Terraform's working directory), made absolute so
        // the agent and CLI agree on it from anywhere.
        let dir = localdr::sources::absolute(&dir).unwrap_or(dir);
        if let (Ok(mut g), Value::Value(a)) = (self.shared.agent.write(), config.agent) {
            *g = Some(a);
        }
        if let (Ok(mut g), Value::Value(p)) =
            (self.shared.localdr_path.write(), config.localdr_path)
        {
            *g = Some(p);
        }
        tracing::debug!(%terraform_version, state_dir = %dir.display(), "configured");
        if let Ok(mut g) = self.shared.state_dir.write() {
            *g = Some(dir);
        }
        Some(())
    }

    fn get_resources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        Some(map! {
            "backup" => crate::resources::backup::BackupResource::new(self.shared.clone()),
            "service" => crate::resources::service::ServiceResource::new(self.shared.clone()),
            "balancer" => crate::resources::balancer::BalancerResource::new(self.shared.clone()),
        })
    }

    fn get_data_sources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicDataSource>>> {
        Some(map! {
            "backups" => crate::data_sources::backups::BackupsSource,
            "service_status" => crate::data_sources::service_status::ServiceStatusSource::new(self.shared.clone()),
            "balancer_status" => crate::data_sources::balancer_status::BalancerStatusSource::new(self.shared.clone()),
        })
    }
}
