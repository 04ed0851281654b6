//! Scaling schedules: each `schedule` block sets the pool's min and max from the moment its
//! cron fires until another schedule of the same service fires (AWS scheduled actions).
//!
//! Unlike AWS, the window in force is computed from the schedules themselves (the newest
//! past firing wins), not remembered from the moment of firing: an agent that starts at noon
//! applies the 07:00 "day" window at once instead of waiting for the next firing.

use crate::spec::Schedule;
use chrono::{DateTime, Utc};

pub use crate::cron::{parse_cron, parse_zone};

/// The most recent firing of `s` at or before `now`.
pub fn last_fire(s: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = parse_cron(&s.cron).ok()?;
    let tz = parse_zone(&s.timezone).ok()?;
    cron.find_previous_occurrence(&now.with_timezone(&tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The next firing of `s` after `now`.
pub fn next_fire(s: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = parse_cron(&s.cron).ok()?;
    let tz = parse_zone(&s.timezone).ok()?;
    cron.find_next_occurrence(&now.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The schedule in force at `now`: the one that fired most recently.
pub fn active(schedules: &[Schedule], now: DateTime<Utc>) -> Option<&Schedule> {
    schedules
        .iter()
        .filter_map(|s| last_fire(s, now).map(|t| (t, s)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sched(name: &str, cron: &str, tz: &str, n: u32) -> Schedule {
        Schedule {
            name: name.into(),
            cron: cron.into(),
            timezone: tz.into(),
            min_replicas: n,
            max_replicas: n,
        }
    }

    #[test]
    fn the_newest_firing_wins() {
        let s = [
            sched("night", "0 22 * * *", "UTC", 0),
            sched("day", "0 7 * * *", "UTC", 3),
        ];
        let at = |h, m| Utc.with_ymd_and_hms(2026, 3, 10, h, m, 0).unwrap();
        assert_eq!(active(&s, at(12, 0)).unwrap().name, "day");
        assert_eq!(active(&s, at(23, 0)).unwrap().name, "night");
        assert_eq!(active(&s, at(3, 0)).unwrap().name, "night");
        assert_eq!(active(&s, at(7, 0)).unwrap().name, "day");
    }

    #[test]
    fn zones_shift_the_window() {
        // 22:00 in Madrid is 21:00 UTC in winter.
        let s = [
            sched("night", "0 22 * * *", "Europe/Madrid", 0),
            sched("day", "0 7 * * *", "Europe/Madrid", 2),
        ];
        let t = Utc.with_ymd_and_hms(2026, 1, 15, 21, 30, 0).unwrap();
        assert_eq!(active(&s, t).unwrap().name, "night");
    }

    #[test]
    fn seconds_level_cron_for_drills() {
        let s = [sched("a", "*/10 * * * * *", "UTC", 1)];
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 15).unwrap();
        assert_eq!(
            last_fire(&s[0], t).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap()
        );
        assert_eq!(
            next_fire(&s[0], t).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 20).unwrap()
        );
    }

    #[test]
    fn bad_cron_and_zone_say_what_is_valid() {
        assert!(parse_cron("0 25 * * *").is_err());
        assert!(parse_cron("* *")
            .unwrap_err()
            .to_string()
            .contains("5 fields"));
        assert!(parse_zone("Europe/Nowhere").is_err());
        assert!(parse_zone("UTC").is_ok());
    }
}
