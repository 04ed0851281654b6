//! `localdr_backups`: the snapshots in a vault (of one backup name, or all), each checked
//! quickly (manifest checksum, packs present and unchanged since their last full hash)
//! and with the DR vaults that hold a copy, read fresh on every plan. With it a `check`
//! block can hold a recovery point objective in HCL: "the newest good snapshot is under
//! 15 minutes old and is in the DR vault".

use super::{check_name, object_list, v};
use crate::resources::util::blocking;
use crate::schema::{number, string};
use async_trait::async_trait;
use localdr::vault::{catalog, Vault};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    AttributeConstraint::{Computed, Optional, Required},
    AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{map, AttributePath, DataSource, Diagnostics};

type S = Value<String>;
type N = Value<i64>;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Snapshot {
    pub number: N,
    pub id: S,
    pub name: S,
    pub created_at: S,
    pub kind: S,
    pub file_count: N,
    pub size_bytes: N,
    pub checksum: S,
    pub verified: Value<bool>,
    pub problems: Value<Vec<S>>,
    pub copies: Value<Vec<S>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Damaged {
    pub id: S,
    pub error: S,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct BackupsState {
    pub id: S,
    pub vault: S,
    pub name: S,
    pub snapshot_count: N,
    pub latest_id: S,
    pub latest_created_at: S,
    pub latest_age_seconds: N,
    pub latest_copies: N,
    pub snapshots: Value<Vec<Value<Snapshot>>>,
    pub damaged: Value<Vec<Value<Damaged>>>,
}

#[derive(Default)]
pub struct BackupsSource;

#[async_trait]
impl DataSource for BackupsSource {
    type State<'a> = BackupsState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let strings = AttributeType::List(Box::new(AttributeType::String));
        let snapshot = [
            ("number", AttributeType::Number),
            ("id", AttributeType::String),
            ("name", AttributeType::String),
            ("created_at", AttributeType::String),
            ("kind", AttributeType::String),
            ("file_count", AttributeType::Number),
            ("size_bytes", AttributeType::Number),
            ("checksum", AttributeType::String),
            ("verified", AttributeType::Bool),
            ("problems", strings.clone()),
            ("copies", strings),
        ];
        let damaged = [
            ("id", AttributeType::String),
            ("error", AttributeType::String),
        ];
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain(
                    "The snapshots in a localdr vault, checked, with their DR copies.",
                ),
                attributes: map! {
                    "id" => string(Computed, "`<vault>` or `<vault>:<name>`."),
                    "vault" => string(Required, "The vault directory (must exist)."),
                    "name" => string(Optional, "Only snapshots of this backup name."),
                    "snapshot_count" => number(Computed, "Snapshots whose manifest could be read (`count` is a Terraform meta-argument)."),
                    "latest_id" => string(Computed, "The newest snapshot that passed the check; null when none did."),
                    "latest_created_at" => string(Computed, "When it was taken (RFC 3339, UTC); null when none."),
                    "latest_age_seconds" => number(Computed, "Its age in whole seconds when the plan read it (the recovery point, for RPO checks); null when none."),
                    "latest_copies" => number(Computed, "DR vaults holding a good copy of it; 0 when none."),
                    "snapshots" => object_list(&snapshot, "Every snapshot, oldest first: number (as `localdr list` and `restore --number` count), id, name, created_at, kind (path, tfstate, postgres), file_count, size_bytes, checksum, verified, problems, copies (the DR vaults from its policy that hold a good copy)."),
                    "damaged" => object_list(&damaged, "Manifests that could not be read or failed their checksum: id, error.")
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        check_name(diags, &config.name);
        if matches!(&config.vault, Value::Value(p) if p.trim().is_empty()) {
            diags.error(
                "Invalid vault",
                "vault must be a directory path, not empty.",
                AttributePath::new("vault"),
            );
        }
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        let _t = crate::timing::Timed::start("read backups");
        let Value::Value(vault_s) = config.vault.clone() else {
            diags.root_error_short("vault is not known");
            return None;
        };
        let name = match &config.name {
            Value::Value(n) => Some(n.clone()),
            _ => None,
        };
        let (path, filter) = (vault_s.clone(), name.clone());
        let found = blocking(move || {
            let vault = Vault::at(std::path::Path::new(&path))?;
            catalog::catalog(&vault, filter.as_deref())
        })
        .await;
        let cat = match found {
            Ok(c) => c,
            Err(e) => {
                diags.error("Could not read the vault", e, AttributePath::new("vault"));
                return None;
            }
        };
        let text = |p: &std::path::Path| v(p.display().to_string());
        let latest = cat.latest_good();
        let now = chrono::Utc::now();
        Some(BackupsState {
            id: v(match &name {
                Some(n) => format!("{vault_s}:{n}"),
                None => vault_s.clone(),
            }),
            vault: config.vault,
            name: config.name,
            snapshot_count: v(cat.items.len() as i64),
            latest_id: latest.map(|i| i.id.clone()).into(),
            latest_created_at: latest.map(|i| i.created_at.to_rfc3339()).into(),
            latest_age_seconds: latest
                .map(|i| (now - i.created_at).num_seconds().max(0))
                .into(),
            latest_copies: v(latest.map_or(0, |i| i.copies.len() as i64)),
            snapshots: v(cat
                .items
                .iter()
                .map(|i| {
                    v(Snapshot {
                        number: v(i.number as i64),
                        id: v(i.id.clone()),
                        name: v(i.name.clone()),
                        created_at: v(i.created_at.to_rfc3339()),
                        kind: v(i.kind.clone()),
                        file_count: v(i.file_count as i64),
                        size_bytes: v(i.size_bytes as i64),
                        checksum: v(i.checksum.clone()),
                        verified: v(i.problems.is_empty()),
                        problems: v(i.problems.iter().map(|p| v(p.clone())).collect()),
                        copies: v(i.copies.iter().map(|p| text(p)).collect()),
                    })
                })
                .collect()),
            damaged: v(cat
                .damaged
                .iter()
                .map(|(id, e)| {
                    v(Damaged {
                        id: v(id.clone()),
                        error: v(e.clone()),
                    })
                })
                .collect()),
        })
    }
}
