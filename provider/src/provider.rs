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
}

/// What resources need from the provider's configuration.
#[derive(Debug, Default)]
pub struct Shared {
    pub state_dir: RwLock<Option<PathBuf>>,
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
                    "localdr: verified local backups with retention and DR copies, declared in HCL.",
                ),
                attributes: map! {
                    "state_dir" => string(AttributeConstraint::Optional,
                        "Directory for localdr's desired-state and status files. Default: `.localdr` in the root module directory."),
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
        })
    }

    fn get_data_sources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicDataSource>>> {
        Some(map! {})
    }
}
