//! Choosing a snapshot by time: the newest good one taken at or before a moment (what
//! `restore --at` and point-in-time recovery mean). The RPO this gives is the interval
//! between snapshots: with a daily schedule, up to a day of changes is lost.

use super::manifest::Manifest;
use chrono::{DateTime, Utc};

/// The newest of `good` (sorted oldest first) created at or before `t`.
pub fn at_or_before(good: &[Manifest], t: DateTime<Utc>) -> Option<&Manifest> {
    good.iter().rev().find(|m| m.created_at <= t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::SourceKind;
    use crate::vault::manifest::{SourceInfo, FORMAT};

    fn snap(at: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            id: format!("x_{at}"),
            name: "x".into(),
            created_at: at.parse().unwrap(),
            source: SourceInfo {
                kind: SourceKind::Path,
                path: "/d".into(),
                is_dir: false,
            },
            tfstate: None,
            postgres: None,
            origin: String::new(),
            compression_level: 3,
            file_count: 0,
            size_bytes: 0,
            added_bytes: 0,
            packs: vec![],
            entries: vec![],
            checksum: String::new(),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn boundaries() {
        let good = [
            snap("2026-01-01T00:00:00Z"),
            snap("2026-01-01T06:00:00.500Z"),
            snap("2026-01-02T00:00:00Z"),
        ];
        let id = |x: Option<&Manifest>| x.map(|m| m.id.clone());
        // Before the first snapshot: nothing.
        assert_eq!(id(at_or_before(&good, t("2025-12-31T23:59:59Z"))), None);
        // Exactly at a snapshot: that one.
        assert_eq!(
            id(at_or_before(&good, t("2026-01-01T00:00:00Z"))),
            Some(good[0].id.clone())
        );
        // Sub-second: 06:00:00 is before the 06:00:00.5 snapshot.
        assert_eq!(
            id(at_or_before(&good, t("2026-01-01T06:00:00Z"))),
            Some(good[0].id.clone())
        );
        assert_eq!(
            id(at_or_before(&good, t("2026-01-01T06:00:00.500Z"))),
            Some(good[1].id.clone())
        );
        // Between: the older one.
        assert_eq!(
            id(at_or_before(&good, t("2026-01-01T23:59:59Z"))),
            Some(good[1].id.clone())
        );
        // After the last: the last.
        assert_eq!(
            id(at_or_before(&good, t("2030-01-01T00:00:00Z"))),
            Some(good[2].id.clone())
        );
        // Time zones are honoured: 07:00 in Madrid is 06:00 UTC, just before the second
        // snapshot; a minute later it is included.
        let madrid = |s: &str| -> DateTime<Utc> {
            s.parse::<DateTime<chrono::FixedOffset>>().unwrap().into()
        };
        assert_eq!(
            id(at_or_before(&good, madrid("2026-01-01T07:00:00+01:00"))),
            Some(good[0].id.clone())
        );
        let madrid: DateTime<Utc> = "2026-01-01T07:01:00+01:00"
            .parse::<DateTime<chrono::FixedOffset>>()
            .unwrap()
            .into();
        assert_eq!(id(at_or_before(&good, madrid)), Some(good[1].id.clone()));
    }
}
