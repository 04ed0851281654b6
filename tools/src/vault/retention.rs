//! Retention by restic's rules (`restic forget --keep-*`), in UTC.
//!
//! Walking snapshots newest first, each rule keeps a snapshot when it falls in a bucket
//! (hour, day, ISO week, month) not seen yet and the rule still has count left; `keep_last`
//! keeps the n newest; `keep_within` keeps all within the duration of the newest snapshot.
//! A snapshot is kept if any rule keeps it. Two localdr choices on top: with no rule set,
//! `keep_last = 7` applies; and the newest snapshot is always kept, so a policy can never
//! leave a backup with nothing.

use anyhow::Result;
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

pub const DEFAULT_KEEP_LAST: u32 = 7;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// A duration such as `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
}

impl Retention {
    fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_hourly.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_within.is_none()
    }

    /// The rules in force: `keep_last = 7` when none is set.
    pub fn effective(&self) -> Retention {
        if self.is_empty() {
            Retention {
                keep_last: Some(DEFAULT_KEEP_LAST),
                ..Default::default()
            }
        } else {
            self.clone()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(w) = &self.keep_within {
            crate::duration::parse(w).map_err(|e| anyhow::anyhow!("keep_within: {e}"))?;
        }
        Ok(())
    }
}

/// What retention decided for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// Which rules kept it (`last`, `hourly`, …); empty when removed.
    pub reasons: Vec<&'static str>,
}

/// Decide keep/remove for `snapshots` (any order) under `policy`. Returns newest first.
pub fn select(snapshots: &[(String, DateTime<Utc>)], policy: &Retention) -> Result<Vec<Decision>> {
    let p = policy.effective();
    p.validate()?;
    let mut list: Vec<&(String, DateTime<Utc>)> = snapshots.iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let Some(newest) = list.first().map(|s| s.1) else {
        return Ok(Vec::new());
    };
    let within = match &p.keep_within {
        Some(w) => Some(
            chrono::Duration::from_std(crate::duration::parse(w)?)
                .map_err(|_| anyhow::anyhow!("keep_within {w:?} is too large"))?,
        ),
        None => None,
    };
    type BucketFn = fn(&DateTime<Utc>) -> i64;
    let bucket_rules: [(&'static str, Option<u32>, BucketFn); 4] = [
        ("hourly", p.keep_hourly, |t| {
            (t.year() as i64 * 10_000 + t.ordinal() as i64) * 100 + t.hour() as i64
        }),
        ("daily", p.keep_daily, |t| {
            t.year() as i64 * 10_000 + t.ordinal() as i64
        }),
        ("weekly", p.keep_weekly, |t| {
            let w = t.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }),
        ("monthly", p.keep_monthly, |t| {
            t.year() as i64 * 100 + t.month() as i64
        }),
    ];
    let mut left: Vec<u32> = bucket_rules.iter().map(|r| r.1.unwrap_or(0)).collect();
    let mut last_bucket: Vec<Option<i64>> = vec![None; bucket_rules.len()];
    let mut last_left = p.keep_last.unwrap_or(0);
    let mut out = Vec::with_capacity(list.len());
    for (i, (id, t)) in list.iter().enumerate() {
        let mut reasons = Vec::new();
        if last_left > 0 {
            last_left -= 1;
            reasons.push("last");
        }
        for (k, (label, _, f)) in bucket_rules.iter().enumerate() {
            if left[k] == 0 {
                continue;
            }
            let b = f(t);
            if last_bucket[k] != Some(b) {
                last_bucket[k] = Some(b);
                left[k] -= 1;
                reasons.push(*label);
            }
        }
        if let Some(w) = within {
            if newest - *t <= w {
                reasons.push("within");
            }
        }
        if i == 0 && reasons.is_empty() {
            reasons.push("newest");
        }
        out.push(Decision {
            id: id.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        format!("{s}Z").parse().unwrap()
    }

    /// Snapshots at the given times, named by their time.
    fn snaps(times: &[&str]) -> Vec<(String, DateTime<Utc>)> {
        times.iter().map(|s| (s.to_string(), t(s))).collect()
    }

    fn kept(times: &[&str], p: Retention) -> Vec<String> {
        let mut k: Vec<String> = select(&snaps(times), &p)
            .unwrap()
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        k.sort();
        k
    }

    const TIMES: &[&str] = &[
        "2025-01-01T10:00:00",
        "2025-01-01T10:30:00",
        "2025-01-01T11:15:00",
        "2025-01-02T09:00:00",
        "2025-01-02T23:59:59",
        "2025-01-09T12:00:00",
        "2025-02-03T08:00:00",
        "2025-02-03T08:45:00",
    ];

    #[test]
    fn table_of_restic_rules() {
        let r = |f: fn(&mut Retention)| {
            let mut p = Retention::default();
            f(&mut p);
            p
        };
        let cases: Vec<(&str, Retention, Vec<&str>)> = vec![
            (
                "keep_last 3 keeps the three newest",
                r(|p| p.keep_last = Some(3)),
                vec![
                    "2025-01-09T12:00:00",
                    "2025-02-03T08:00:00",
                    "2025-02-03T08:45:00",
                ],
            ),
            (
                "keep_hourly 3: newest per hour, last three hours that have one",
                r(|p| p.keep_hourly = Some(3)),
                vec![
                    "2025-01-02T23:59:59",
                    "2025-01-09T12:00:00",
                    "2025-02-03T08:45:00",
                ],
            ),
            (
                "keep_daily 4: newest per day",
                r(|p| p.keep_daily = Some(4)),
                vec![
                    "2025-01-01T11:15:00",
                    "2025-01-02T23:59:59",
                    "2025-01-09T12:00:00",
                    "2025-02-03T08:45:00",
                ],
            ),
            (
                "keep_weekly 2: ISO weeks 2025-W06 and W02",
                r(|p| p.keep_weekly = Some(2)),
                vec!["2025-01-09T12:00:00", "2025-02-03T08:45:00"],
            ),
            (
                "keep_monthly 5 with only two months keeps one per month",
                r(|p| p.keep_monthly = Some(5)),
                vec!["2025-01-09T12:00:00", "2025-02-03T08:45:00"],
            ),
            (
                "keep_within 1h of the newest",
                r(|p| p.keep_within = Some("1h".into())),
                vec!["2025-02-03T08:00:00", "2025-02-03T08:45:00"],
            ),
            (
                "rules combine by union",
                r(|p| {
                    p.keep_last = Some(1);
                    p.keep_monthly = Some(2)
                }),
                vec!["2025-01-09T12:00:00", "2025-02-03T08:45:00"],
            ),
            (
                "all counts 0 still keeps the newest",
                r(|p| p.keep_last = Some(0)),
                vec!["2025-02-03T08:45:00"],
            ),
        ];
        for (what, policy, want) in cases {
            assert_eq!(kept(TIMES, policy), want, "{what}");
        }
    }

    #[test]
    fn no_rule_means_keep_last_seven() {
        let times: Vec<String> = (0..10)
            .map(|i| format!("2025-03-01T00:{i:02}:00"))
            .collect();
        let refs: Vec<&str> = times.iter().map(|s| s.as_str()).collect();
        let k = kept(&refs, Retention::default());
        assert_eq!(k.len(), 7);
        assert_eq!(k[0], "2025-03-01T00:03:00");
    }

    #[test]
    fn iso_week_spans_the_new_year() {
        // 2024-12-30 and 2025-01-05 are the same ISO week (2025-W01): one is kept.
        let k = kept(
            &[
                "2024-12-30T10:00:00",
                "2025-01-05T10:00:00",
                "2024-12-29T10:00:00",
            ],
            Retention {
                keep_weekly: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(k, vec!["2024-12-29T10:00:00", "2025-01-05T10:00:00"]);
    }

    #[test]
    fn bad_keep_within_is_an_error() {
        let p = Retention {
            keep_within: Some("forever".into()),
            ..Default::default()
        };
        assert!(select(&snaps(TIMES), &p).is_err());
    }
}
