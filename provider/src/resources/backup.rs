//! `localdr_backup`: timestamped, checksummed snapshots of a file, directory or Terraform
//! state, with retention and DR copies.
//!
//! Drift, the local_file way: Read looks at what is really in the vaults. When the newest
//! snapshot is gone or fails its checksum, or a DR copy is missing, `ensure_valid` reads
//! `false`, `plan` shows `false -> true`, and `apply` takes a fresh snapshot. When the policy
//! file is gone the resource is gone. Read never repairs anything itself.

use super::util::{blocking, known};
use crate::provider::Shared;
use crate::schema::{attr, boolean, number, string};
use async_trait::async_trait;
use localdr::sources::{self, tfstate, SourceKind};
use localdr::vault::policy::{CopyPolicy, Policy};
use localdr::vault::retention::Retention;
use localdr::vault::{run, Vault};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tf_provider::schema::{
    AttributeConstraint::{Computed, Optional, OptionalComputed, Required},
    AttributeType, Block, Description, NestedBlock, Schema,
};
use tf_provider::value::{self, Value, ValueEmpty};
use tf_provider::{map, AttributePath, Diagnostics, Resource};

type S = Value<String>;
type N = Value<i64>;
type B = Value<bool>;

pub const DEFAULT_COMPRESSION: i64 = 3;
pub const DEFAULT_START_WINDOW: &str = "1h";

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct RetentionBlock {
    pub keep_last: N,
    pub keep_hourly: N,
    pub keep_daily: N,
    pub keep_weekly: N,
    pub keep_monthly: N,
    pub keep_within: S,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct CopyBlock {
    pub vault: S,
    #[serde(with = "value::serde_as_vec")]
    pub retention: Value<RetentionBlock>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct PostgresBlock {
    pub host: S,
    pub port: N,
    pub database: S,
    pub user: S,
    pub password: S,
    pub password_file: S,
    pub dump_format: S,
    pub sslmode: S,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct BackupState {
    pub id: S,
    pub name: S,
    pub path: S,
    pub tfstate: S,
    #[serde(with = "value::serde_as_vec")]
    pub postgres: Value<PostgresBlock>,
    pub rpo: S,
    pub rto: S,
    pub schedule: S,
    pub schedule_timezone: S,
    pub start_window: S,
    pub vault: S,
    #[serde(with = "value::serde_as_vec")]
    pub retention: Value<RetentionBlock>,
    pub copy: Value<Vec<Value<CopyBlock>>>,
    pub compression_level: N,
    pub triggers: Value<BTreeMap<String, S>>,
    pub ensure_valid: B,
    pub delete_snapshots_on_destroy: B,
    pub snapshot_id: S,
    pub created_at: S,
    pub size_bytes: N,
    pub checksum: S,
    pub file_count: N,
    pub snapshots: N,
}

pub struct BackupResource {
    shared: Arc<Shared>,
}

impl BackupResource {
    pub fn new(shared: Arc<Shared>) -> Self {
        BackupResource { shared }
    }
}

fn retention_block_schema(desc: &str) -> Block {
    Block {
        version: 1,
        description: Description::plain(desc),
        attributes: map! {
            "keep_last" => number(Optional, "Keep the N newest snapshots."),
            "keep_hourly" => number(Optional, "Keep the newest snapshot of each of the last N hours that have one."),
            "keep_daily" => number(Optional, "Keep the newest snapshot of each of the last N days that have one."),
            "keep_weekly" => number(Optional, "Keep the newest snapshot of each of the last N ISO weeks that have one."),
            "keep_monthly" => number(Optional, "Keep the newest snapshot of each of the last N months that have one."),
            "keep_within" => string(Optional, "Keep every snapshot within this duration of the newest, e.g. \"7d\".")
        },
        ..Default::default()
    }
}

fn postgres_block_schema() -> Block {
    let mut password = string(Optional, "The password (sensitive). Kept by the provider in `<state_dir>/secrets/<name>.password` (0600) for the CLI and agent; never in the vault, logs or errors.");
    password.sensitive = true;
    Block {
        version: 1,
        description: Description::plain("Back up a PostgreSQL database with pg_dump (seed 002). Checked at plan time: a wrong password, a stopped server or an unknown database fails `plan`."),
        attributes: map! {
            "host" => string(OptionalComputed, "Server host. Default `127.0.0.1`."),
            "port" => number(OptionalComputed, "Server port. Default 5432."),
            "database" => string(Required, "Database to dump."),
            "user" => string(OptionalComputed, "Role to connect as. Default `postgres`."),
            "password" => password,
            "password_file" => string(Optional, "A file whose first line is the password (preferred over `password`)."),
            "dump_format" => string(OptionalComputed, "`custom` (pg_dump -Fc, restored with pg_restore; default) or `plain` (SQL, restored with psql)."),
            "sslmode" => string(OptionalComputed, "libpq's sslmode for every connection (checks, pg_dump, restores): disable, allow, prefer (default; PGSSLMODE in the environment still applies when this is left at prefer), require, verify-ca, verify-full.")
        },
        ..Default::default()
    }
}

// ---- conversions between HCL values and engine types ----

fn to_retention(b: &Value<RetentionBlock>) -> Option<Retention> {
    let b = known(b)?;
    let n = |v: &N| known(v).map(|x| x.clamp(0, u32::MAX as i64) as u32);
    Some(Retention {
        keep_last: n(&b.keep_last),
        keep_hourly: n(&b.keep_hourly),
        keep_daily: n(&b.keep_daily),
        keep_weekly: n(&b.keep_weekly),
        keep_monthly: n(&b.keep_monthly),
        keep_within: known(&b.keep_within),
    })
}

fn from_retention(r: &Option<Retention>) -> Value<RetentionBlock> {
    match r {
        None => Value::Null,
        Some(r) => {
            let n = |v: Option<u32>| v.map(|x| x as i64).into();
            Value::Value(RetentionBlock {
                keep_last: n(r.keep_last),
                keep_hourly: n(r.keep_hourly),
                keep_daily: n(r.keep_daily),
                keep_weekly: n(r.keep_weekly),
                keep_monthly: n(r.keep_monthly),
                keep_within: r.keep_within.clone().into(),
            })
        }
    }
}

fn abs(p: &str) -> PathBuf {
    sources::absolute(Path::new(p)).unwrap_or_else(|_| PathBuf::from(p))
}

/// Keep the user's spelling of a path when it still names the same place; otherwise (an
/// import, a hand-edited policy) report the path as the policy spells it.
fn same_path_or(state: &S, written: &str, resolved: &Path) -> S {
    match state {
        Value::Value(s) if abs(s) == resolved => state.clone(),
        _ => Value::Value(written.to_string()),
    }
}

fn paths_equal(a: &S, b: &S) -> bool {
    match (a, b) {
        (Value::Value(x), Value::Value(y)) => abs(x) == abs(y),
        _ => a == b,
    }
}

fn source_of(s: &BackupState) -> Option<(SourceKind, String)> {
    if let Value::Value(pg) = &s.postgres {
        return pg_config(pg, None).map(|c| (SourceKind::Postgres, c.url()));
    }
    if let Value::Value(p) = &s.tfstate {
        return Some((SourceKind::Tfstate, p.clone()));
    }
    known(&s.path).map(|p| (SourceKind::Path, p))
}

/// Connection settings from a known `postgres` block (defaults filled in). With
/// `secret_file`, an inline password is to be kept in that provider-managed file.
fn pg_config(
    b: &PostgresBlock,
    secret_file: Option<&Path>,
) -> Option<localdr::sources::postgres::PgConfig> {
    let managed = secret_file.filter(|_| b.password.is_value());
    Some(localdr::sources::postgres::PgConfig {
        host: known(&b.host).unwrap_or_else(|| PG_HOST.into()),
        port: u16::try_from(known(&b.port).unwrap_or(PG_PORT)).ok()?,
        database: known(&b.database)?,
        user: known(&b.user).unwrap_or_else(|| PG_USER.into()),
        password_file: match managed {
            Some(f) => Some(f.display().to_string()),
            None => known(&b.password_file).map(|f| abs(&f).display().to_string()),
        },
        password_managed: managed.is_some(),
        dump_format: known(&b.dump_format).unwrap_or_else(|| "custom".into()),
        // libpq's default is not written, so policies without it read the same.
        sslmode: known(&b.sslmode).filter(|m| m != PG_SSLMODE),
    })
}

const PG_HOST: &str = "127.0.0.1";
const PG_PORT: i64 = 5432;
const PG_USER: &str = "postgres";
const PG_SSLMODE: &str = "prefer";

/// The engine policy for a fully known state. An inline database password is written to
/// `<state_dir>/secrets/<name>.password` (0600) so the CLI and the agent can use it too;
/// it is never put in the policy or the vault.
fn policy_of(s: &BackupState, state_dir: &Path) -> Result<Policy, String> {
    let name = known(&s.name).ok_or("name is unknown")?;
    let secret = state_dir.join("secrets").join(format!("{name}.password"));
    let postgres = match &s.postgres {
        Value::Value(b) => {
            if let Value::Value(pw) = &b.password {
                write_secret(&secret, pw).map_err(|e| format!("{e:#}"))?;
            }
            Some(pg_config(b, Some(&secret)).ok_or("postgres.database is unknown")?)
        }
        _ => None,
    };
    let (kind, path) = source_of(s).ok_or("one of path or tfstate is required")?;
    let copies = known(&s.copy)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| known(&c))
        .map(|c| {
            Ok(CopyPolicy {
                vault: known(&c.vault).ok_or("copy.vault is unknown")?,
                retention: to_retention(&c.retention),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Policy {
        name,
        source_kind: kind,
        source_path: path,
        base_dir: std::env::current_dir()
            .ok()
            .map(|d| d.display().to_string()),
        retention: to_retention(&s.retention),
        copies,
        compression_level: known(&s.compression_level).unwrap_or(DEFAULT_COMPRESSION) as i32,
        triggers: known(&s.triggers)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, known(&v).unwrap_or_default()))
            .collect(),
        delete_snapshots_on_destroy: known(&s.delete_snapshots_on_destroy).unwrap_or(false),
        postgres,
        schedule: known(&s.schedule),
        // UTC is the default and is not written, so older vaults read the same.
        schedule_timezone: known(&s.schedule_timezone).filter(|tz| tz != "UTC"),
        start_window: known(&s.start_window),
        rpo: known(&s.rpo),
        rto: known(&s.rto),
    })
}

fn write_secret(path: &Path, password: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().expect("secrets dir");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{password}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

// ---- validation: every message names the attribute and what would be valid ----

fn check_config(diags: &mut Diagnostics, c: &BackupState) {
    if let Value::Value(n) = &c.name {
        if let Err(e) = localdr::naming::validate_name(n) {
            diags.error("Invalid name", format!("{e}."), AttributePath::new("name"));
        }
    }
    let set = [&c.path, &c.tfstate]
        .iter()
        .filter(|v| v.is_value())
        .count()
        + usize::from(c.postgres.is_value());
    let unknown = c.path.is_unknown() || c.tfstate.is_unknown() || c.postgres.is_unknown();
    if set == 0 && !unknown {
        diags.error(
            "Missing source",
            "Exactly one of `path` (a file or directory), `tfstate` (a Terraform state file) or a `postgres` block must be set.",
            AttributePath::new("path"),
        );
    } else if set > 1 {
        // Unknown (a for_each value at validate time) may still turn out null: only
        // known values conflict.
        diags.error(
            "Conflicting sources",
            "Set exactly one source: `path`, `tfstate` or a `postgres` block.",
            AttributePath::new(if c.postgres.is_value() {
                "postgres"
            } else {
                "tfstate"
            }),
        );
    }
    if let Value::Value(pg) = &c.postgres {
        let at = AttributePath::new("postgres").index(0);
        if let Value::Value(p) = &pg.port {
            if !(1..=65535).contains(p) {
                diags.error(
                    "Invalid port",
                    format!("postgres.port must be between 1 and 65535; got {p}."),
                    at.clone().attribute("port"),
                );
            }
        }
        if let Value::Value(f) = &pg.dump_format {
            if f != "custom" && f != "plain" {
                diags.error(
                    "Invalid dump_format",
                    format!("dump_format must be \"custom\" (pg_dump -Fc) or \"plain\" (SQL); got {f:?}."),
                    at.clone().attribute("dump_format"),
                );
            }
        }
        if let Value::Value(m) = &pg.sslmode {
            if !localdr::sources::postgres::SSLMODES.contains(&m.as_str()) {
                diags.error(
                    "Invalid sslmode",
                    format!(
                        "sslmode must be one of {} (libpq's meaning); got {m:?}.",
                        localdr::sources::postgres::SSLMODES.join(", ")
                    ),
                    at.clone().attribute("sslmode"),
                );
            }
        }
        if pg.password.is_value() && pg.password_file.is_value() {
            diags.error(
                "Conflicting password settings",
                "Set postgres.password or postgres.password_file, not both.",
                at.attribute("password_file"),
            );
        }
    }
    if let Value::Value(cron) = &c.schedule {
        if let Err(e) = localdr::runtime::schedule::parse_cron(cron) {
            diags.error(
                "Invalid schedule",
                format!("{e:#}."),
                AttributePath::new("schedule"),
            );
        }
    }
    if let Value::Value(tz) = &c.schedule_timezone {
        if let Err(e) = localdr::runtime::schedule::parse_zone(tz) {
            diags.error(
                "Invalid schedule_timezone",
                format!("{e:#}."),
                AttributePath::new("schedule_timezone"),
            );
        } else if c.schedule.is_null() {
            diags.error(
                "schedule_timezone without a schedule",
                "schedule_timezone is the zone `schedule` is read in: set schedule too.",
                AttributePath::new("schedule_timezone"),
            );
        }
    }
    for (k, v) in [
        ("rpo", &c.rpo),
        ("rto", &c.rto),
        ("start_window", &c.start_window),
    ] {
        if let Value::Value(d) = v {
            if let Err(e) = localdr::duration::parse(d) {
                diags.error(
                    format!("Invalid {k}"),
                    format!("{e}."),
                    AttributePath::new(k),
                );
            }
        }
    }
    for (attr_name, v) in [
        ("path", &c.path),
        ("tfstate", &c.tfstate),
        ("vault", &c.vault),
    ] {
        if let Value::Value(s) = v {
            if s.trim().is_empty() {
                diags.error(
                    format!("Invalid {attr_name}"),
                    format!("`{attr_name}` must be a non-empty path."),
                    AttributePath::new(attr_name),
                );
            }
        }
    }
    check_retention(
        diags,
        &c.retention,
        AttributePath::new("retention").index(0),
    );
    if let Value::Value(l) = &c.compression_level {
        if !(1..=22).contains(l) {
            diags.error(
                "Invalid compression_level",
                format!(
                    "compression_level must be between 1 (fastest) and 22 (smallest); got {l}."
                ),
                AttributePath::new("compression_level"),
            );
        }
    }
    if let Value::Value(copies) = &c.copy {
        for (i, cp) in copies.iter().enumerate() {
            let Value::Value(cp) = cp else { continue };
            let at = AttributePath::new("copy").index(i as i64);
            if let (Value::Value(v), Value::Value(primary)) = (&cp.vault, &c.vault) {
                if abs(v) == abs(primary) {
                    diags.error(
                        "Invalid copy vault",
                        "copy.vault must be a different directory from `vault`: a DR copy in the same place protects nothing.",
                        at.clone().attribute("vault"),
                    );
                }
            }
            check_retention(diags, &cp.retention, at.attribute("retention").index(0));
        }
    }
}

fn check_retention(diags: &mut Diagnostics, r: &Value<RetentionBlock>, at: AttributePath) {
    let Value::Value(r) = r else { return };
    for (k, v) in [
        ("keep_last", &r.keep_last),
        ("keep_hourly", &r.keep_hourly),
        ("keep_daily", &r.keep_daily),
        ("keep_weekly", &r.keep_weekly),
        ("keep_monthly", &r.keep_monthly),
    ] {
        if let Value::Value(n) = v {
            if *n < 0 || *n > u32::MAX as i64 {
                diags.error(
                    format!("Invalid {k}"),
                    format!("{k} must be 0 or a positive count of snapshots to keep; got {n}."),
                    at.clone().attribute(k),
                );
            }
        }
    }
    if let Value::Value(w) = &r.keep_within {
        if let Err(e) = localdr::duration::parse(w) {
            diags.error(
                "Invalid keep_within",
                format!("{e}."),
                at.clone().attribute("keep_within"),
            );
        }
    }
}

/// Checks against the file system, at plan time, for values already known.
fn check_filesystem(diags: &mut Diagnostics, c: &BackupState) {
    if let Value::Value(pg) = &c.postgres {
        check_postgres(diags, pg);
        return;
    }
    let Some((kind, p)) = source_of(c) else {
        return;
    };
    let attr_name = kind.as_str();
    let path = abs(&p);
    match std::fs::symlink_metadata(&path) {
        Err(_) => {
            diags.error(
                "Source not found",
                format!(
                    "{attr_name} {} does not exist: set it to an existing {}.",
                    path.display(),
                    if kind == SourceKind::Tfstate {
                        "Terraform state file"
                    } else {
                        "file or directory"
                    }
                ),
                AttributePath::new(attr_name),
            );
            return;
        }
        Ok(_) if kind == SourceKind::Tfstate => {
            if let Err(e) = tfstate::inspect(&path) {
                diags.error(
                    "Invalid tfstate",
                    format!("{e:#}."),
                    AttributePath::new("tfstate"),
                );
            }
        }
        Ok(_) => {}
    }
    if let Value::Value(v) = &c.vault {
        if let Err(e) = sources::check_vault_outside(&path, &abs(v)) {
            diags.error(
                "Invalid vault",
                format!("{e}."),
                AttributePath::new("vault"),
            );
        }
    }
    if let Value::Value(copies) = &c.copy {
        for (i, cp) in copies.iter().enumerate() {
            if let Value::Value(CopyBlock {
                vault: Value::Value(v),
                ..
            }) = cp
            {
                if let Err(e) = sources::check_vault_outside(&path, &abs(v)) {
                    diags.error(
                        "Invalid copy vault",
                        format!("{e}."),
                        AttributePath::new("copy")
                            .index(i as i64)
                            .attribute("vault"),
                    );
                }
            }
        }
    }
}

/// Connect at plan time (the seed's "is the container available" check), so a wrong
/// password, a stopped server or an unknown database fails `plan` at the attribute that
/// is wrong. Errors never contain the password.
fn check_postgres(diags: &mut Diagnostics, b: &PostgresBlock) {
    let all_known = [&b.host, &b.database, &b.user, &b.password, &b.password_file]
        .iter()
        .all(|v| !v.is_unknown())
        && !b.port.is_unknown();
    let bad_sslmode = known(&b.sslmode)
        .is_some_and(|m| !localdr::sources::postgres::SSLMODES.contains(&m.as_str()));
    if !all_known || bad_sslmode {
        return;
    }
    let Some(cfg) = pg_config(b, None) else {
        return;
    };
    let password = known(&b.password);
    let r = localdr::sources::postgres::Pg::new(cfg, password).and_then(|pg| pg.check());
    if let Err(e) = r {
        let msg = format!("{e:#}");
        let field = if msg.contains("SSL") {
            "sslmode"
        } else if msg.contains("password") {
            if b.password_file.is_value() {
                "password_file"
            } else {
                "password"
            }
        } else if msg.contains("does not exist") {
            "database"
        } else if msg.contains("not accepting connections") {
            if b.port.is_value() {
                "port"
            } else {
                "host"
            }
        } else if msg.contains("pg_dump is version") || msg.contains("was not found in") {
            "host"
        } else {
            "user"
        };
        diags.error(
            "PostgreSQL check failed",
            format!("{msg}."),
            AttributePath::new("postgres").index(0).attribute(field),
        );
    }
}

/// `schedule_timezone` for a zone read back (`None`: UTC, the default, which is not written):
/// null stays null for UTC unless the state spelled it out.
fn timezone_state(tz: Option<&str>, prior: &S) -> S {
    match (tz, prior) {
        (Some(tz), _) => Value::Value(tz.to_string()),
        (None, Value::Value(p)) if p == "UTC" => prior.clone(),
        (None, _) => Value::Null,
    }
}

/// What the agent will run for this backup is its schedule file in the state dir, not the
/// policy in the vault: read it into the state, so a hand edit of it (cron, zone, start
/// window) or a schedule the configuration no longer has shows in `plan` as a diff that
/// `apply` writes back. A file that is missing or unreadable while the policy has a
/// schedule makes the backup invalid instead. The file is this backup's alone: it is keyed
/// by name and vault, so a same-named backup in another vault has its own.
fn read_agent_schedule(
    state: &mut BackupState,
    sd: &localdr::statedir::StateDir,
    name: &str,
    vault: &Path,
    scheduled: bool,
    problems: &mut Vec<String>,
) {
    match sd.read_schedule(name, &vault.display().to_string()) {
        Err(e) if scheduled => problems.push(format!(
            "its schedule in the agent's state dir cannot be read ({e:#})"
        )),
        Err(_) => {}
        Ok(None) if scheduled && sd.agent_running() => {
            problems.push("its schedule is missing from the agent's state dir".into())
        }
        Ok(None) => {}
        Ok(Some(s)) => {
            state.schedule = Value::Value(s.cron);
            state.schedule_timezone = timezone_state(
                Some(s.timezone.as_str()).filter(|tz| *tz != "UTC"),
                &state.schedule_timezone,
            );
            state.start_window = Value::Value(s.start_window);
        }
    }
}

/// Fill O/C defaults where the configuration left them out.
fn apply_defaults(planned: &mut BackupState, config: &BackupState) {
    if config.compression_level.is_null() {
        planned.compression_level = Value::Value(DEFAULT_COMPRESSION);
    }
    if config.start_window.is_null() {
        planned.start_window = Value::Value(DEFAULT_START_WINDOW.into());
    }
    if let (Value::Value(p), Value::Value(c)) = (&mut planned.postgres, &config.postgres) {
        if c.host.is_null() {
            p.host = Value::Value(PG_HOST.into());
        }
        if c.port.is_null() {
            p.port = Value::Value(PG_PORT);
        }
        if c.user.is_null() {
            p.user = Value::Value(PG_USER.into());
        }
        if c.dump_format.is_null() {
            p.dump_format = Value::Value("custom".into());
        }
        if c.sslmode.is_null() {
            p.sslmode = Value::Value(PG_SSLMODE.into());
        }
    }
    if config.ensure_valid.is_null() {
        planned.ensure_valid = Value::Value(true);
    }
    if config.delete_snapshots_on_destroy.is_null() {
        planned.delete_snapshots_on_destroy = Value::Value(false);
    }
    planned.id = match (&planned.vault, &planned.name) {
        (Value::Value(v), Value::Value(n)) => Value::Value(format!("{v}:{n}")),
        _ => Value::Unknown,
    };
}

/// What both plans do. The checks run again here, not only at validate, because values
/// that come from variables or other resources are unknown at validate and known now.
fn plan_common(
    diags: &mut Diagnostics,
    proposed: BackupState,
    config: &BackupState,
) -> BackupState {
    check_config(diags, config);
    check_filesystem(diags, config);
    let mut planned = proposed;
    apply_defaults(&mut planned, config);
    planned
}

fn set_computed_unknown(s: &mut BackupState) {
    s.snapshot_id = Value::Unknown;
    s.created_at = Value::Unknown;
    s.size_bytes = Value::Unknown;
    s.checksum = Value::Unknown;
    s.file_count = Value::Unknown;
    s.snapshots = Value::Unknown;
}

fn fill_from_manifest(s: &mut BackupState, m: &localdr::vault::manifest::Manifest, count: usize) {
    s.snapshot_id = Value::Value(m.id.clone());
    s.created_at = Value::Value(
        m.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    s.size_bytes = Value::Value(m.size_bytes as i64);
    s.checksum = Value::Value(m.checksum.clone());
    s.file_count = Value::Value(m.file_count as i64);
    s.snapshots = Value::Value(count as i64);
}

/// Take a snapshot by `state`'s policy and record the result in it.
async fn snapshot_now(
    diags: &mut Diagnostics,
    mut state: BackupState,
    state_dir: &Path,
) -> Option<BackupState> {
    let policy = match policy_of(&state, state_dir) {
        Ok(p) => p,
        Err(e) => {
            diags.root_error("Invalid backup configuration", e);
            return None;
        }
    };
    let vault_path = abs(&known(&state.vault)?);
    let report = blocking(move || {
        let vault = Vault::at(&vault_path)?;
        run::run(&vault, &policy, true, false)
    })
    .await;
    match report {
        Ok(r) => {
            tracing::info!(snapshot = %r.manifest.id, "snapshot taken");
            fill_from_manifest(&mut state, &r.manifest, r.snapshots);
            state.ensure_valid = Value::Value(true);
            Some(state)
        }
        Err(e) => {
            diags.root_error("Backup failed", e);
            None
        }
    }
}

impl BackupResource {
    /// Hand the schedule to the agent (starting it when the provider may), or take it back.
    async fn sync_schedule(&self, diags: &mut Diagnostics, state: &BackupState) {
        let (Some(name), Some(vault)) = (known(&state.name), known(&state.vault)) else {
            return;
        };
        let sd = self.shared.state_dir();
        let cron = known(&state.schedule);
        let timezone = known(&state.schedule_timezone).unwrap_or_else(|| "UTC".into());
        let start_window =
            known(&state.start_window).unwrap_or_else(|| DEFAULT_START_WINDOW.into());
        let mode = self.shared.agent_mode();
        let exe = self.shared.localdr_exe();
        let vault = abs(&vault).display().to_string();
        let r = blocking(move || {
            let Some(cron) = cron else {
                return sd.remove_schedule(&name, &vault);
            };
            sd.create()?;
            sd.write_schedule(&localdr::spec::BackupSchedule {
                api_version: localdr::spec::API_VERSION,
                name,
                vault,
                cron,
                timezone,
                start_window,
            })?;
            let exe = if mode == "external" { None } else { exe.ok() };
            let m = match &exe {
                Some(e) => localdr::runtime::control::AgentMode::Auto { exe: e },
                None => localdr::runtime::control::AgentMode::External,
            };
            localdr::runtime::control::ensure_agent(&sd, &m)
        })
        .await;
        if let Err(e) = r {
            diags.root_error("Could not hand the schedule to the localdr agent", e);
        }
    }
}

#[async_trait]
impl Resource for BackupResource {
    type State<'a> = BackupState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let copy_block = Block {
            version: 1,
            description: Description::plain("Keep a verified copy of every snapshot in a second (DR) vault, like AWS Backup's copy_action."),
            attributes: map! {
                "vault" => string(Required, "The DR vault directory. Must differ from `vault`.")
            },
            blocks: map! {
                "retention" => NestedBlock::Optional(retention_block_schema("Retention in the DR vault; inherits the primary's when absent."))
            },
            ..Default::default()
        };
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain("Timestamped, checksummed snapshots of a file, a directory or a Terraform state, with retention and an optional DR copy. Drift (a deleted or damaged snapshot, a missing copy) shows in `terraform plan`; `apply` repairs it."),
                attributes: map! {
                    "id" => string(Computed, "`<vault>:<name>`."),
                    "name" => string(Required, "Backup name: snapshots are named `<name>_YYYY-MM-DD_HH-MM-SS`. Letters, digits, `-`, `_`, `.`. Changing it forces a new resource."),
                    "path" => string(Optional, "A file or directory to back up. Exactly one of `path` or `tfstate`."),
                    "tfstate" => string(Optional, "A Terraform state file to back up; it is validated and its `serial` and `lineage` are recorded so a restore cannot roll the state back silently."),
                    "schedule" => string(Optional, "Cron expression (in `schedule_timezone`, default UTC; 5 fields, or 6 with seconds first) on which the localdr agent takes snapshots, e.g. `0 3 * * *` (AWS Backup rule). Each run applies retention and the DR copy. The provider starts the agent when none runs."),
                    "schedule_timezone" => string(Optional, "IANA time zone `schedule` is read in, e.g. `Europe/Madrid` (`0 3 * * *` is then 03:00 there, across daylight-saving changes). Default UTC."),
                    "start_window" => string(OptionalComputed, "A scheduled run that cannot start within this long of its time is skipped. Default `1h`."),
                    "rpo" => string(Optional, "Recovery point objective, e.g. `15m`: `localdr drill` fails when the newest snapshot is older."),
                    "rto" => string(Optional, "Recovery time objective, e.g. `30m`: `localdr drill` fails when a restore takes longer."),
                    "vault" => string(Required, "The vault directory. Must not be inside the source."),
                    "compression_level" => number(OptionalComputed, "zstd level from 1 (fastest) to 22 (smallest). Default 3."),
                    "triggers" => attr(AttributeType::Map(AttributeType::String.into()), Optional, "Arbitrary values; any change takes a new snapshot (like null_resource's triggers, but in place: history is kept)."),
                    "ensure_valid" => boolean(OptionalComputed, "Read sets this to false when the newest snapshot or its DR copy is missing or fails its checksum; apply then takes a fresh snapshot. Default true."),
                    "delete_snapshots_on_destroy" => boolean(OptionalComputed, "Delete this backup's snapshots (and DR copies) on destroy. Default false: destroy only removes the policy."),
                    "snapshot_id" => string(Computed, "Id of the newest snapshot."),
                    "created_at" => string(Computed, "When the newest snapshot was taken (RFC 3339, UTC)."),
                    "size_bytes" => number(Computed, "Logical size of the newest snapshot's files."),
                    "checksum" => string(Computed, "BLAKE3 checksum of the newest snapshot's manifest (which holds a BLAKE3 per file chunk)."),
                    "file_count" => number(Computed, "Regular files in the newest snapshot."),
                    "snapshots" => number(Computed, "Snapshots of this name kept in the vault.")
                },
                blocks: map! {
                    "retention" => NestedBlock::Optional(retention_block_schema("restic-style retention applied after each snapshot. Without it, the newest 7 are kept. The newest snapshot is never removed.")),
                    "copy" => NestedBlock::List(copy_block),
                    "postgres" => NestedBlock::Optional(postgres_block_schema())
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        let _t = crate::timing::Timed::start("validate");
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
        let _t = crate::timing::Timed::start("read");
        let mut state = state;
        if let (Value::Null, Value::Value(id)) = (&state.name, &state.id) {
            // After import only the id is known.
            if let Some((v, n)) = id.rsplit_once(':') {
                state.vault = Value::Value(v.to_string());
                state.name = Value::Value(n.to_string());
            }
        }
        let (Some(vault_s), Some(name)) = (known(&state.vault), known(&state.name)) else {
            diags.root_error_short("localdr_backup state has no vault or name");
            return None;
        };
        let vault_abs = abs(&vault_s);
        let expected = known(&state.snapshot_id);
        let name2 = name.clone();
        let found = (|| -> anyhow::Result<_> {
            let vault = Vault::at(&vault_abs)?;
            let policy = vault.load_policy(&name2)?;
            // The policy names the copies to check; without one, look for snapshots only.
            let copies: Vec<PathBuf> = policy
                .as_ref()
                .map(|p| p.copies.iter().map(|c| p.resolve(&c.vault)).collect())
                .unwrap_or_default();
            let refs: Vec<&Path> = copies.iter().map(|p| p.as_path()).collect();
            let health = run::health(&vault, &name2, &refs, expected.as_deref())?;
            Ok((policy, health))
        })()
        .map_err(|e| format!("{e:#}"));
        let (policy, health) = match found {
            Ok(x) => x,
            Err(e) => {
                diags.root_error("Could not read the vault", e);
                return None;
            }
        };
        let policy = match policy {
            Some(p) => p,
            None => {
                // No policy: the backup is gone, unless this is an import of snapshots
                // taken from the CLI, which we adopt from the newest manifest.
                let Some(m) = health
                    .latest
                    .as_ref()
                    .filter(|_| state.snapshot_id.is_null())
                else {
                    tracing::info!(%name, "policy gone: resource removed from state");
                    return None;
                };
                Policy {
                    compression_level: m.compression_level,
                    ..Policy::new(&name, m.source.kind, m.source.path.clone())
                }
            }
        };
        // Write back every configurable attribute from what is on disk.
        let source = policy.source();
        match policy.source_kind {
            SourceKind::Path => {
                state.path = same_path_or(&state.path, &policy.source_path, &source);
                state.tfstate = Value::Null;
            }
            SourceKind::Tfstate => {
                state.tfstate = same_path_or(&state.tfstate, &policy.source_path, &source);
                state.path = Value::Null;
            }
            SourceKind::Postgres => {
                state.path = Value::Null;
                state.tfstate = Value::Null;
                let prior = known(&state.postgres).unwrap_or_default();
                state.postgres = match &policy.postgres {
                    None => Value::Null,
                    Some(c) => Value::Value(PostgresBlock {
                        host: Value::Value(c.host.clone()),
                        port: Value::Value(c.port as i64),
                        database: Value::Value(c.database.clone()),
                        user: Value::Value(c.user.clone()),
                        // The password itself is not stored anywhere we read back.
                        password: prior.password.clone(),
                        password_file: if c.password_managed {
                            prior.password_file.clone()
                        } else {
                            match &c.password_file {
                                Some(f) => same_path_or(&prior.password_file, f, &abs(f)),
                                None => Value::Null,
                            }
                        },
                        dump_format: Value::Value(c.dump_format.clone()),
                        sslmode: Value::Value(
                            c.sslmode.clone().unwrap_or_else(|| PG_SSLMODE.into()),
                        ),
                    }),
                };
            }
        }
        state.retention = from_retention(&policy.retention);
        let prior_copies = known(&state.copy).unwrap_or_default();
        let copies: Vec<Value<CopyBlock>> = policy
            .copies
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let prior_vault = prior_copies
                    .get(i)
                    .and_then(known)
                    .map(|p| p.vault)
                    .unwrap_or(Value::Null);
                Value::Value(CopyBlock {
                    vault: same_path_or(&prior_vault, &c.vault, &policy.resolve(&c.vault)),
                    retention: from_retention(&c.retention),
                })
            })
            .collect();
        // An empty list or map in the policy keeps the state's spelling of "empty" (null or
        // empty), so a configuration that omits the block or map plans no change.
        state.copy = if copies.is_empty() && !matches!(state.copy, Value::Value(_)) {
            Value::Null
        } else {
            Value::Value(copies)
        };
        state.compression_level = Value::Value(policy.compression_level as i64);
        state.triggers = if policy.triggers.is_empty() && !matches!(state.triggers, Value::Value(_))
        {
            Value::Null
        } else {
            Value::Value(
                policy
                    .triggers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::Value(v.clone())))
                    .collect(),
            )
        };
        state.delete_snapshots_on_destroy = Value::Value(policy.delete_snapshots_on_destroy);
        state.rpo = policy.rpo.clone().into();
        state.schedule = policy.schedule.clone().into();
        state.schedule_timezone = timezone_state(
            policy.schedule_timezone.as_deref(),
            &state.schedule_timezone,
        );
        state.start_window = Value::Value(
            policy
                .start_window
                .clone()
                .unwrap_or_else(|| DEFAULT_START_WINDOW.into()),
        );
        state.rto = policy.rto.clone().into();
        state.id = Value::Value(format!("{vault_s}:{name}"));
        if let Some(m) = &health.latest {
            fill_from_manifest(&mut state, m, health.count);
        } else {
            state.snapshots = Value::Value(0);
        }
        let mut problems = health.problems.clone();
        let sd = self.shared.state_dir();
        if policy.schedule.is_some() && !sd.agent_running() {
            problems.push(format!(
                "no localdr agent is running on {} to take the scheduled snapshots",
                sd.root().display()
            ));
        }
        if let Some(f) = policy
            .postgres
            .as_ref()
            .filter(|p| p.password_managed)
            .and_then(|p| p.password_file.as_ref())
            .filter(|f| !Path::new(f).exists())
        {
            problems.push(format!(
                "its database password file {f} is missing (scheduled runs and the CLI read it)"
            ));
        }
        read_agent_schedule(
            &mut state,
            &sd,
            &name,
            &vault_abs,
            policy.schedule.is_some(),
            &mut problems,
        );
        let health = run::Health { problems, ..health };
        let valid = health.problems.is_empty();
        state.ensure_valid = Value::Value(valid);
        if !valid {
            let why = health.problems.join("; ");
            tracing::warn!(%name, %why, "backup not valid");
            diags.warning(
                "Backup needs repair",
                format!("{name}: {why}. `terraform apply` will take a fresh snapshot."),
                AttributePath::new("ensure_valid"),
            );
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
        let _t = crate::timing::Timed::start("plan_create");
        let mut planned = plan_common(diags, proposed_state, &config_state);
        set_computed_unknown(&mut planned);
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
        let _t = crate::timing::Timed::start("plan_update");
        let mut planned = plan_common(diags, proposed_state, &config_state);
        let mut replace = Vec::new();
        if planned.name != prior_state.name {
            replace.push(AttributePath::new("name"));
        }
        for (k, a, b) in [
            ("vault", &planned.vault, &prior_state.vault),
            ("path", &planned.path, &prior_state.path),
            ("tfstate", &planned.tfstate, &prior_state.tfstate),
        ] {
            if !paths_equal(a, b) {
                replace.push(AttributePath::new(k));
            }
        }
        // A trigger change takes a new snapshot in place. Replacing would run destroy first,
        // and with delete_snapshots_on_destroy that would wipe the history it should extend.
        let no_triggers = |t: &Value<BTreeMap<String, S>>| match t {
            Value::Value(m) => m.is_empty(),
            _ => matches!(t, Value::Null),
        };
        let triggers_changed = planned.triggers != prior_state.triggers
            && !(no_triggers(&planned.triggers) && no_triggers(&prior_state.triggers));
        if prior_state.ensure_valid != Value::Value(true) || triggers_changed {
            set_computed_unknown(&mut planned);
        } else if planned.retention != prior_state.retention || planned.copy != prior_state.copy {
            planned.snapshots = Value::Unknown;
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
        let _t = crate::timing::Timed::start("plan_destroy");
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
        let _t = crate::timing::Timed::start("create");
        let state = snapshot_now(diags, planned_state, self.shared.state_dir().root()).await?;
        self.sync_schedule(diags, &state).await;
        Some((state, planned_private_state))
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
        let _t = crate::timing::Timed::start("update");
        if planned_state.snapshot_id.is_unknown() {
            let state = snapshot_now(diags, planned_state, self.shared.state_dir().root()).await?;
            self.sync_schedule(diags, &state).await;
            return Some((state, planned_private_state));
        }
        let mut state = planned_state;
        let policy = match policy_of(&state, self.shared.state_dir().root()) {
            Ok(p) => p,
            Err(e) => {
                diags.root_error("Invalid backup configuration", e);
                return None;
            }
        };
        let vault_path = abs(&known(&state.vault)?);
        match blocking(move || run::maintain(&Vault::at(&vault_path)?, &policy)).await {
            Ok(count) => {
                state.snapshots = Value::Value(count as i64);
                self.sync_schedule(diags, &state).await;
                Some((state, planned_private_state))
            }
            Err(e) => {
                diags.root_error("Could not apply the backup policy", e);
                None
            }
        }
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        _planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let _t = crate::timing::Timed::start("destroy");
        let (Some(vault_s), Some(name)) = (known(&state.vault), known(&state.name)) else {
            return Some(());
        };
        let delete = known(&state.delete_snapshots_on_destroy).unwrap_or(false);
        let copies: Vec<PathBuf> = known(&state.copy)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| known(&c).and_then(|c| known(&c.vault)))
            .map(|v| abs(&v))
            .collect();
        let vault_abs = abs(&vault_s);
        let sd = self.shared.state_dir();
        let r = blocking(move || {
            let vault = Vault::at(&vault_abs)?;
            if delete {
                let n = run::forget_all(&vault, &name)?;
                for c in &copies {
                    run::forget_all(&Vault::at(c)?, &name)?;
                }
                tracing::info!(%name, snapshots = n, "snapshots deleted on destroy");
            }
            if vault.root().is_dir() {
                let _lock = vault.lock_for_write()?;
                vault.remove_policy(&name)?;
            }
            sd.remove_schedule(&name, &vault_abs.display().to_string())?;
            Ok(())
        })
        .await;
        if let Err(e) = r {
            diags.root_error("Could not remove the backup", e);
            return None;
        }
        Some(())
    }

    async fn import<'a>(
        &self,
        diags: &mut Diagnostics,
        id: String,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let _t = crate::timing::Timed::start("import");
        let Some((vault, name)) = id
            .rsplit_once(':')
            .filter(|(v, n)| !v.is_empty() && !n.is_empty())
        else {
            diags.root_error(
                "Invalid import id",
                format!("expected `<vault>:<name>`, e.g. `./vault:tfstate`; got {id:?}"),
            );
            return None;
        };
        let state = BackupState {
            id: Value::Value(id.clone()),
            vault: Value::Value(vault.to_string()),
            name: Value::Value(name.to_string()),
            ..Default::default()
        };
        Some((state, ValueEmpty::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackupState {
        BackupState {
            name: Value::Value("state".into()),
            tfstate: Value::Value("/nonexistent/terraform.tfstate".into()),
            vault: Value::Value("/tmp/v".into()),
            ..Default::default()
        }
    }

    fn paths(d: &Diagnostics) -> String {
        format!("{:?}", d.errors)
    }

    #[test]
    fn negative_retention_names_the_attribute() {
        let mut c = config();
        c.retention = Value::Value(RetentionBlock {
            keep_daily: Value::Value(-1),
            ..Default::default()
        });
        let mut d = Diagnostics::default();
        check_config(&mut d, &c);
        assert_eq!(d.errors.len(), 1);
        let s = paths(&d);
        assert!(s.contains("keep_daily") && s.contains("retention"), "{s}");
    }

    #[test]
    fn both_or_no_source_is_an_error() {
        let mut c = config();
        c.path = Value::Value("/x".into());
        let mut d = Diagnostics::default();
        check_config(&mut d, &c);
        assert!(paths(&d).contains("tfstate"));
        c.path = Value::Null;
        c.tfstate = Value::Null;
        let mut d = Diagnostics::default();
        check_config(&mut d, &c);
        assert!(paths(&d).contains("Missing source"));
    }

    #[test]
    fn unknown_sources_may_still_be_null() {
        let mut c = config();
        c.tfstate = Value::Unknown;
        c.path = Value::Unknown;
        let mut d = Diagnostics::default();
        check_config(&mut d, &c);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
    }

    #[test]
    fn unknown_values_are_not_errors() {
        let mut c = config();
        c.tfstate = Value::Unknown;
        c.name = Value::Unknown;
        let mut d = Diagnostics::default();
        check_config(&mut d, &c);
        check_filesystem(&mut d, &c);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
    }
}
