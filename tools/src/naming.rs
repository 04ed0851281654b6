//! Snapshot names: `<name>_YYYY-MM-DD_HH-MM-SS`, the stamp the seeds' scripts used, with a
//! `_N` suffix (N ≥ 2) when two snapshots of one name land in the same second.
//!
//! Names are parsed strictly so that the snapshots of `web` are never confused with those
//! of `web_db` in a shared vault.

use anyhow::{bail, Result};
use chrono::{DateTime, NaiveDateTime, Utc};

const STAMP: &str = "%Y-%m-%d_%H-%M-%S";
const STAMP_LEN: usize = 19;

/// A parsed snapshot id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotName {
    /// Second-resolution time from the name (UTC).
    pub stamp: NaiveDateTime,
    /// 1 for the first snapshot in a second, 2, 3, … after.
    pub seq: u32,
    pub name: String,
}

/// Check a user-given backup name: it becomes a file-name prefix.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 100 {
        bail!("name must be 1 to 100 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        bail!("name {name:?} may contain only letters, digits, '-', '_' and '.'");
    }
    if name.starts_with('.') {
        bail!("name {name:?} must not start with '.'");
    }
    Ok(())
}

pub fn format_id(name: &str, stamp: NaiveDateTime, seq: u32) -> String {
    let base = format!("{name}_{}", stamp.format(STAMP));
    if seq <= 1 {
        base
    } else {
        format!("{base}_{seq}")
    }
}

/// Parse `id` as a snapshot of `name`; `None` if it belongs to another name or is malformed.
pub fn parse_for(name: &str, id: &str) -> Option<SnapshotName> {
    let rest = id.strip_prefix(name)?.strip_prefix('_')?;
    parse_rest(name, rest)
}

fn parse_rest(name: &str, rest: &str) -> Option<SnapshotName> {
    if rest.len() < STAMP_LEN || !rest.is_char_boundary(STAMP_LEN) {
        return None;
    }
    let (stamp, tail) = rest.split_at(STAMP_LEN);
    let stamp = NaiveDateTime::parse_from_str(stamp, STAMP).ok()?;
    let seq = if tail.is_empty() {
        1
    } else {
        let n: u32 = tail.strip_prefix('_')?.parse().ok()?;
        if n < 2 || tail[1..].starts_with('0') {
            return None;
        }
        n
    };
    Some(SnapshotName {
        stamp,
        seq,
        name: name.to_string(),
    })
}

/// The id for a new snapshot of `name` at `now`, unique among `existing` ids.
pub fn next_id<'a>(
    name: &str,
    now: DateTime<Utc>,
    existing: impl IntoIterator<Item = &'a str>,
) -> String {
    let stamp = now.naive_utc().with_nanosecond_zeroed();
    let mut max_seq = 0;
    for id in existing {
        if let Some(p) = parse_for(name, id) {
            if p.stamp == stamp {
                max_seq = max_seq.max(p.seq);
            }
        }
    }
    format_id(name, stamp, max_seq + 1)
}

trait ZeroNanos {
    fn with_nanosecond_zeroed(self) -> Self;
}
impl ZeroNanos for NaiveDateTime {
    fn with_nanosecond_zeroed(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap_or(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        Utc.from_utc_datetime(&NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap())
    }

    #[test]
    fn format_matches_the_seed_stamp() {
        let id = next_id("tfstate", at("2025-06-19 08:05:09.7"), []);
        assert_eq!(id, "tfstate_2025-06-19_08-05-09");
    }

    #[test]
    fn same_second_gets_a_suffix() {
        let t = at("2025-06-19 08:05:09.1");
        let a = next_id("db", t, []);
        let b = next_id("db", t, [a.as_str()]);
        let c = next_id("db", t, [a.as_str(), b.as_str()]);
        assert_eq!(b, "db_2025-06-19_08-05-09_2");
        assert_eq!(c, "db_2025-06-19_08-05-09_3");
        let pa = parse_for("db", &a).unwrap();
        let pc = parse_for("db", &c).unwrap();
        assert!(pa < pc, "suffix must sort after the plain name");
    }

    #[test]
    fn names_sharing_a_prefix_are_not_confused() {
        let id = "web_db_2025-06-19_08-05-09";
        assert!(parse_for("web", id).is_none());
        assert_eq!(parse_for("web_db", id).unwrap().name, "web_db");
        assert_eq!(
            parse_for("web_db", "web_db_2025-06-19_08-05-09_12")
                .unwrap()
                .seq,
            12
        );
        assert!(parse_for("web", "web_2025-13-19_08-05-09").is_none());
        assert!(parse_for("web", "web_2025-06-19_08-05-09_1").is_none());
        assert!(parse_for("web", "web_2025-06-19_08-05-09.tmp").is_none());
    }

    #[test]
    fn validates_user_names() {
        assert!(validate_name("state-prod_1").is_ok());
        for bad in ["", "a/b", "..", ".hidden", "sp ace"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
