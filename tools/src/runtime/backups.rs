//! Scheduled backups run by the agent: each `schedules/<name>@<vault hash>.json` names a
//! vault and a backup policy stored in it; when the cron fires the agent runs that policy (snapshot,
//! retention, DR copies) on a blocking thread, so pools keep being supervised meanwhile.
//! A run that cannot start within `start_window` of its time (agent down, previous run
//! still going) is skipped and logged, as AWS Backup does.

use super::events::{self, Event};
use super::schedule::{parse_cron, parse_zone};
use crate::spec::{dur, BackupSchedule, BackupScheduleStatus};
use crate::statedir::{self, StateDir};
use crate::vault::{run, Vault};
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::BTreeMap;
use tokio::task::JoinHandle;

struct Job {
    spec: BackupSchedule,
    hash: String,
    next: Option<DateTime<Utc>>,
    running: Option<JoinHandle<Result<String, String>>>,
    status: BackupScheduleStatus,
    published: Option<BackupScheduleStatus>,
}

#[derive(Default)]
pub struct Backups {
    jobs: BTreeMap<String, Job>,
    rejected: BTreeMap<String, String>,
    /// The schedule files found at the last look, by key (see `StateDir::schedule_key`).
    keys: Vec<String>,
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The schedule's next firing after `t`, its cron read in its time zone (so `0 3 * * *`
/// in Europe/Madrid is 03:00 there, summer and winter).
fn next_after(s: &BackupSchedule, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let tz = parse_zone(&s.timezone).ok()?;
    parse_cron(&s.cron)
        .ok()?
        .find_next_occurrence(&t.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Backups {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// When the next scheduled run is due (the agent sleeps until then when idle).
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.jobs.values().filter_map(|j| j.next).min()
    }

    pub fn busy(&self) -> bool {
        self.jobs.values().any(|j| j.running.is_some())
    }

    /// Take in new and changed schedule files; a bad one is logged once per content.
    fn load(&mut self, sd: &StateDir, now: DateTime<Utc>) {
        for key in &self.keys {
            let path = sd.schedule_path(key);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let hash = statedir::hash(&bytes);
            if self.jobs.get(key).is_some_and(|j| j.hash == hash)
                || self.rejected.get(key) == Some(&hash)
            {
                continue;
            }
            let parsed: Result<BackupSchedule, String> =
                serde_json::from_slice::<BackupSchedule>(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|s| {
                        parse_cron(&s.cron).map_err(|e| format!("{}: {e:#}", path.display()))?;
                        parse_zone(&s.timezone)
                            .map_err(|e| format!("{}: {e:#}", path.display()))?;
                        Ok(s)
                    });
            match parsed {
                Ok(spec) => {
                    self.rejected.remove(key);
                    let next = next_after(&spec, now);
                    tracing::info!(backup = %spec.name, vault = %spec.vault, cron = %spec.cron, timezone = %spec.timezone, "backup schedule loaded");
                    let prev = self.jobs.remove(key);
                    let status = BackupScheduleStatus {
                        name: spec.name.clone(),
                        vault: spec.vault.clone(),
                        spec_hash: hash.clone(),
                        next_run: next.map(stamp),
                        ..prev.as_ref().map(|p| p.status.clone()).unwrap_or_default()
                    };
                    self.jobs.insert(
                        key.clone(),
                        Job {
                            spec,
                            hash,
                            next,
                            running: prev.and_then(|p| p.running),
                            status,
                            published: None,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!("ignoring backup schedule: {e}");
                    self.rejected.insert(key.clone(), hash);
                }
            }
        }
    }

    /// `start`: whether due runs may start (false while the agent drains); `read_specs`:
    /// whether to read the schedule files again (the agent asks when `schedules/` changed).
    pub fn tick(&mut self, sd: &StateDir, start: bool, read_specs: bool) {
        let now = Utc::now();
        if read_specs {
            self.keys = sd.schedule_keys().unwrap_or_default();
            self.load(sd, now);
        }
        let keys = &self.keys;
        self.jobs.retain(|n, j| {
            let keep = keys.contains(n) || j.running.is_some();
            if !keep {
                let _ = std::fs::remove_file(sd.schedule_status_path(n));
            }
            keep
        });
        for (key, j) in self.jobs.iter_mut() {
            let name = &j.spec.name;
            if let Some(h) = &j.running {
                if h.is_finished() {
                    let h = j.running.take().expect("checked");
                    let r = super::take_finished(h);
                    j.status.runs += 1;
                    match &r {
                        Ok(id) => {
                            tracing::info!(backup = %name, snapshot = %id, "scheduled backup done");
                            j.status.last_result = Some("ok".into());
                            j.status.last_snapshot = Some(id.clone());
                        }
                        Err(e) => {
                            tracing::error!(backup = %name, "scheduled backup failed: {e}");
                            j.status.last_result = Some(format!("error: {e}"));
                        }
                    }
                    log(
                        sd,
                        name,
                        "backup",
                        match &r {
                            Ok(id) => format!("scheduled snapshot {id}"),
                            Err(e) => format!("scheduled backup failed: {e}"),
                        },
                    );
                }
            }
            if let Some(at) = j.next {
                if now >= at {
                    let late = (now - at).to_std().unwrap_or_default();
                    if !start {
                        // Draining: the run is not taken; the next agent takes the next one.
                    } else if j.running.is_some() || late > dur(&j.spec.start_window) {
                        let why = if j.running.is_some() {
                            "the previous run is still going"
                        } else {
                            "could not start within start_window"
                        };
                        tracing::warn!(backup = %name, "skipped the run due at {}: {why}", stamp(at));
                        j.status.last_result = Some(format!("skipped: {why}"));
                        log(
                            sd,
                            name,
                            "backup",
                            format!("skipped the run due at {}: {why}", stamp(at)),
                        );
                    } else {
                        let vault = j.spec.vault.clone();
                        let bname = j.spec.name.clone();
                        j.status.last_run = Some(stamp(now));
                        j.running = Some(tokio::task::spawn_blocking(move || {
                            run_one(&vault, &bname).map_err(|e| format!("{e:#}"))
                        }));
                    }
                    j.next = next_after(&j.spec, now);
                    j.status.next_run = j.next.map(stamp);
                }
            }
            if j.published.as_ref() != Some(&j.status) {
                let _ =
                    std::fs::create_dir_all(sd.schedule_status_path(key).parent().expect("dir"));
                if crate::atomic::write_json(&sd.schedule_status_path(key), &j.status).is_ok() {
                    j.published = Some(j.status.clone());
                }
            }
        }
    }
}

fn run_one(vault: &str, name: &str) -> anyhow::Result<String> {
    let v = Vault::at(std::path::Path::new(vault))?;
    let Some(policy) = v.load_policy(name)? else {
        anyhow::bail!("vault {vault} has no policy named {name}");
    };
    Ok(run::run_as(&v, &policy, false, false, "schedule")?
        .manifest
        .id)
}

fn log(sd: &StateDir, name: &str, kind: &str, detail: String) {
    let _ = events::append(
        &sd.events_path(),
        &Event {
            ts: Utc::now(),
            service: name.to_string(),
            kind: kind.into(),
            running: None,
            baseline: None,
            price: None,
            detail,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_cron_is_read_in_the_schedules_time_zone() {
        let mut s = BackupSchedule {
            api_version: crate::spec::API_VERSION,
            name: "db".into(),
            vault: "/v".into(),
            cron: "0 3 * * *".into(),
            timezone: "UTC".into(),
            start_window: "1h".into(),
        };
        assert_eq!(
            next_after(&s, at("2026-01-15T12:00:00Z")),
            Some(at("2026-01-16T03:00:00Z"))
        );
        // 03:00 in Madrid: 02:00 UTC in winter (CET), 01:00 UTC in summer (CEST).
        s.timezone = "Europe/Madrid".into();
        assert_eq!(
            next_after(&s, at("2026-01-15T12:00:00Z")),
            Some(at("2026-01-16T02:00:00Z"))
        );
        assert_eq!(
            next_after(&s, at("2026-07-15T12:00:00Z")),
            Some(at("2026-07-16T01:00:00Z"))
        );
        s.timezone = "Mars/Olympus".into();
        assert_eq!(next_after(&s, at("2026-01-15T12:00:00Z")), None);
    }

    #[test]
    fn a_utc_schedule_file_is_written_as_before() {
        let s: BackupSchedule = serde_json::from_str(
            r#"{"api_version":1,"name":"db","vault":"/v","cron":"0 3 * * *","start_window":"1h"}"#,
        )
        .unwrap();
        assert_eq!(s.timezone, "UTC");
        assert!(!serde_json::to_string(&s).unwrap().contains("timezone"));
    }
}
