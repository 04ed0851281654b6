//! A backup policy: what the provider (or `localdr backup --save-policy`) declared for a
//! name, kept in the vault so the CLI, the agent and `terraform import` all see one truth.
//! `terraform destroy` removes the policy; snapshots stay unless asked otherwise.

use super::retention::Retention;
use super::Vault;
use crate::sources::SourceKind;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyPolicy {
    /// The DR vault as the user wrote it (relative paths resolve against `Policy::base_dir`).
    pub vault: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub source_kind: SourceKind,
    /// The source path as the user wrote it.
    pub source_path: String,
    /// The directory relative paths were written against (Terraform's working directory,
    /// or the CLI's), so the CLI and agent resolve them the same way from anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyPolicy>,
    pub compression_level: i32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub triggers: BTreeMap<String, String>,
    #[serde(default)]
    pub delete_snapshots_on_destroy: bool,
    /// For `source_kind = postgres`: how to reach the database (never the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<crate::sources::postgres::PgConfig>,
    /// Cron expression the agent takes snapshots on (AWS Backup rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA zone `schedule` is read in (UTC when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_timezone: Option<String>,
    /// A scheduled run that cannot start within this long of its time is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_window: Option<String>,
    /// Recovery point objective: the newest good snapshot must be younger (`localdr drill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<String>,
    /// Recovery time objective: a drill's restore must finish within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<String>,
}

impl Policy {
    /// A policy with a name and a source, everything else at its default (no retention
    /// rules of its own, no copies, zstd level 3, no schedule).
    pub fn new(name: &str, source_kind: SourceKind, source_path: String) -> Policy {
        Policy {
            name: name.to_string(),
            source_kind,
            source_path,
            base_dir: None,
            retention: None,
            copies: Vec::new(),
            compression_level: 3,
            triggers: BTreeMap::new(),
            delete_snapshots_on_destroy: false,
            postgres: None,
            schedule: None,
            schedule_timezone: None,
            start_window: None,
            rpo: None,
            rto: None,
        }
    }

    /// Resolve a path from this policy against its `base_dir`.
    pub fn resolve(&self, p: &str) -> std::path::PathBuf {
        let path = std::path::Path::new(p);
        let joined = match &self.base_dir {
            Some(b) if path.is_relative() => std::path::Path::new(b).join(path),
            _ => path.to_path_buf(),
        };
        crate::sources::absolute(&joined).unwrap_or(joined)
    }

    pub fn source(&self) -> std::path::PathBuf {
        self.resolve(&self.source_path)
    }
}

impl Vault {
    fn policy_path(&self, name: &str) -> std::path::PathBuf {
        self.policies_dir().join(format!("{name}.json"))
    }

    pub fn load_policy(&self, name: &str) -> Result<Option<Policy>> {
        let p = self.policy_path(name);
        match std::fs::read(&p) {
            Ok(data) => Ok(Some(serde_json::from_slice(&data).with_context(|| {
                format!("policy {} is not valid (edited by hand?)", p.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("could not read {}", p.display())),
        }
    }

    /// Write the policy atomically. The caller holds the writer lock.
    pub fn save_policy(&self, policy: &Policy) -> Result<()> {
        crate::atomic::write_json(&self.policy_path(&policy.name), policy)
    }

    pub fn remove_policy(&self, name: &str) -> Result<()> {
        let p = self.policy_path(name);
        match std::fs::remove_file(&p) {
            Ok(()) => crate::atomic::fsync_dir(&self.policies_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("could not remove {}", p.display())),
        }
    }
}
