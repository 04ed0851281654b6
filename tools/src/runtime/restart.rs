//! What to do when a replica exits: restart now, restart after a backoff, or give up.
//!
//! The backoff doubles from `backoff_initial` up to `backoff_max` for a replica that keeps
//! dying, and resets once it has been healthy. Giving up follows systemd's start limit:
//! more than `max_restarts` restarts within `window` marks the replica failed, and only a
//! new spec generation (`terraform apply`) clears that.

use crate::spec::{dur, RestartPolicy};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Restart(Duration),
    /// The policy does not restart this exit (`never`, or `on-failure` after exit 0).
    Stay,
    GiveUp,
}

#[derive(Debug, Clone)]
pub struct Restarts {
    policy: String,
    max_restarts: u32,
    window: Duration,
    initial: Duration,
    max: Duration,
    recent: VecDeque<Instant>,
    consecutive: u32,
    pub total: u32,
}

impl Restarts {
    pub fn new(p: &RestartPolicy) -> Restarts {
        Restarts {
            policy: p.policy.clone(),
            max_restarts: p.max_restarts,
            window: dur(&p.window),
            initial: dur(&p.backoff_initial),
            max: dur(&p.backoff_max),
            recent: VecDeque::new(),
            consecutive: 0,
            total: 0,
        }
    }

    /// A replica ended (`success` = exit code 0) or was found unhealthy.
    pub fn on_exit(&mut self, now: Instant, success: bool) -> Decision {
        match self.policy.as_str() {
            "never" => return Decision::Stay,
            "on-failure" if success => return Decision::Stay,
            _ => {}
        }
        while let Some(t) = self.recent.front() {
            if now.duration_since(*t) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() as u32 >= self.max_restarts {
            return Decision::GiveUp;
        }
        self.recent.push_back(now);
        self.total += 1;
        let factor = 1u32
            .checked_shl(self.consecutive.min(30))
            .unwrap_or(u32::MAX);
        let delay = self.initial.saturating_mul(factor).min(self.max);
        self.consecutive += 1;
        Decision::Restart(delay)
    }

    /// The replica proved itself (healthy): the next failure starts the backoff afresh.
    pub fn on_stable(&mut self) {
        self.consecutive = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(p: &str) -> RestartPolicy {
        RestartPolicy {
            policy: p.into(),
            max_restarts: 3,
            window: "60s".into(),
            backoff_initial: "100ms".into(),
            backoff_max: "300ms".into(),
        }
    }

    #[test]
    fn backoff_doubles_caps_and_gives_up_at_the_start_limit() {
        let mut r = Restarts::new(&policy("always"));
        let t = Instant::now();
        let ms = |d: Decision| match d {
            Decision::Restart(d) => d.as_millis(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ms(r.on_exit(t, false)), 100);
        assert_eq!(ms(r.on_exit(t, false)), 200);
        assert_eq!(ms(r.on_exit(t, false)), 300);
        assert_eq!(r.on_exit(t, false), Decision::GiveUp);
    }

    #[test]
    fn the_window_forgets_old_restarts_and_health_resets_backoff() {
        let mut r = Restarts::new(&policy("always"));
        let t = Instant::now();
        for _ in 0..3 {
            r.on_exit(t, false);
        }
        r.on_stable();
        let later = t + Duration::from_secs(61);
        assert_eq!(
            r.on_exit(later, false),
            Decision::Restart(Duration::from_millis(100))
        );
    }

    #[test]
    fn policies_decide_which_exits_restart() {
        let t = Instant::now();
        assert_eq!(
            Restarts::new(&policy("never")).on_exit(t, false),
            Decision::Stay
        );
        assert_eq!(
            Restarts::new(&policy("on-failure")).on_exit(t, true),
            Decision::Stay
        );
        assert!(matches!(
            Restarts::new(&policy("on-failure")).on_exit(t, false),
            Decision::Restart(_)
        ));
    }
}
