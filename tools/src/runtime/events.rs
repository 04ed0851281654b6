//! The agent's event log (`events.jsonl`): one JSON object per line, appended with a single
//! `write` so concurrent readers never see half a line. `localdr cost` integrates the
//! `replicas` events over time; people read the rest during an incident.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts: DateTime<Utc>,
    pub service: String,
    /// `replicas` (running count changed), `exit`, `restart`, `failed`, `scale`, `agent`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u32>,
    /// What would run without schedules (for the savings figure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

pub fn append(path: &Path, e: &Event) -> Result<()> {
    let mut line = serde_json::to_vec(e)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))?;
    f.write_all(&line)
        .with_context(|| format!("could not append to {}", path.display()))
}

pub fn read(path: &Path) -> Result<Vec<Event>> {
    let s = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
    };
    // A torn last line (power cut mid-append) is skipped, not fatal.
    Ok(s.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cost {
    pub service: String,
    pub replica_hours: f64,
    pub cost: f64,
    /// Replica-hours had no schedule scaled the pool down.
    pub baseline_replica_hours: f64,
    pub saved: f64,
}

/// Replica-hours and cost per service between `from` and `to`, integrating the step
/// function the `replicas` events describe.
pub fn cost(events: &[Event], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Cost> {
    #[derive(Default)]
    struct Acc {
        last: Option<(DateTime<Utc>, u32, u32, f64)>,
        run_h: f64,
        base_h: f64,
        cost: f64,
        base_cost: f64,
    }
    let mut acc: BTreeMap<&str, Acc> = BTreeMap::new();
    let add = |a: &mut Acc, until: DateTime<Utc>| {
        if let Some((t, r, b, p)) = a.last {
            let start = t.max(from);
            let end = until.min(to);
            if end > start {
                let h = (end - start).num_milliseconds() as f64 / 3_600_000.0;
                a.run_h += r as f64 * h;
                a.base_h += b as f64 * h;
                a.cost += r as f64 * h * p;
                a.base_cost += b as f64 * h * p;
            }
        }
    };
    for e in events.iter().filter(|e| e.kind == "replicas") {
        let a = acc.entry(&e.service).or_default();
        add(a, e.ts);
        let r = e.running.unwrap_or(0);
        a.last = Some((e.ts, r, e.baseline.unwrap_or(r), e.price.unwrap_or(0.0)));
    }
    acc.into_iter()
        .map(|(s, mut a)| {
            add(&mut a, to);
            Cost {
                service: s.to_string(),
                replica_hours: a.run_h,
                cost: a.cost,
                baseline_replica_hours: a.base_h,
                saved: a.base_cost - a.cost,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ev(h: u32, running: u32, baseline: u32) -> Event {
        Event {
            ts: Utc.with_ymd_and_hms(2026, 1, 1, h, 0, 0).unwrap(),
            service: "web".into(),
            kind: "replicas".into(),
            running: Some(running),
            baseline: Some(baseline),
            price: Some(0.5),
            detail: String::new(),
        }
    }

    #[test]
    fn integrates_replica_hours_and_savings() {
        // 3 replicas 00:00-08:00 would have been the baseline all day; a night schedule
        // ran 0 from 08:00 to 10:00.
        let evs = [ev(0, 3, 3), ev(8, 0, 3), ev(10, 3, 3)];
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        let c = &cost(&evs, from, to)[0];
        assert_eq!(c.replica_hours, 30.0);
        assert_eq!(c.baseline_replica_hours, 36.0);
        assert_eq!(c.cost, 15.0);
        assert_eq!(c.saved, 3.0);
    }

    #[test]
    fn the_period_clips_the_integral() {
        let evs = [ev(0, 2, 2)];
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap();
        assert_eq!(cost(&evs, from, to)[0].replica_hours, 2.0);
    }
}
