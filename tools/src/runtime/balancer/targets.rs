//! Per-target state: health from active probes and from live traffic (Kong's counters),
//! Envoy-style ejection with a growing ejection time, in-flight count and slow start.

use crate::spec::{dur, Healthchecks};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one attempt (a probe or a proxied request) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// An HTTP status counted as a failure.
    HttpFailure,
    /// Could not connect, or the connection broke.
    TcpFailure,
    Timeout,
}

#[derive(Debug, Default)]
struct Counters {
    successes: u32,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
}

#[derive(Debug)]
struct Health {
    healthy: bool,
    active: Counters,
    passive: Counters,
    ejected_until: Option<Instant>,
    ejections: u32,
    /// When the target last came back (slow start ramps its weight from here).
    readmitted_at: Option<Instant>,
}

#[derive(Debug)]
pub struct TargetState {
    pub address: String,
    pub weight: u32,
    pub backup: bool,
    pub in_flight: AtomicU32,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    health: Mutex<Health>,
    /// Draining: no new requests.
    pub draining: std::sync::atomic::AtomicBool,
    /// `address` as a URI authority, parsed once (every proxied request needs it).
    pub authority: hyper::http::uri::Authority,
    /// Smooth weighted round-robin's running weight (see `pick`).
    pub wrr_current: std::sync::atomic::AtomicI64,
    /// Idle keep-alive connections to this target.
    pub idle: super::upstream::Idle,
    /// Healthy, not ejected, no slow start under way: a pick then needs no lock to know
    /// the target's availability and weight. Written under the health lock (see
    /// [`TargetState::publish`]); read without it on every pick.
    steady: AtomicBool,
    /// The passive counters hold a failure: only then does a success have a count to reset.
    passive_failed: AtomicBool,
}

impl TargetState {
    pub fn new(address: &str, weight: u32, backup: bool) -> TargetState {
        TargetState {
            address: address.to_string(),
            weight,
            backup,
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            health: Mutex::new(Health {
                healthy: true,
                active: Counters::default(),
                passive: Counters::default(),
                ejected_until: None,
                ejections: 0,
                readmitted_at: None,
            }),
            draining: std::sync::atomic::AtomicBool::new(false),
            authority: address
                .parse()
                .unwrap_or_else(|_| hyper::http::uri::Authority::from_static("invalid.invalid:1")),
            wrr_current: std::sync::atomic::AtomicI64::new(0),
            idle: Default::default(),
            steady: AtomicBool::new(true),
            passive_failed: AtomicBool::new(false),
        }
    }

    /// This target's identity within a request (its address in memory): cheaper than
    /// comparing addresses, and a target replaced by a reload is a new one.
    pub fn id(&self) -> usize {
        self as *const TargetState as usize
    }

    /// Can take new requests now: healthy, not ejected, not draining.
    pub fn available(&self, now: Instant) -> bool {
        self.weight_at(now, None).0
    }

    /// Publish what a pick and a success read without the lock; called under it after
    /// every change to `h`.
    fn publish(&self, h: &Health) {
        let steady = h.healthy && h.ejected_until.is_none() && h.readmitted_at.is_none();
        self.steady.store(steady, Ordering::Release);
        let c = &h.passive;
        let failed = c.http_failures > 0 || c.tcp_failures > 0 || c.timeouts > 0;
        self.passive_failed.store(failed, Ordering::Release);
    }

    pub fn is_healthy(&self) -> bool {
        self.health.lock().expect("health lock").healthy
    }

    pub fn ejections(&self) -> u32 {
        self.health.lock().expect("health lock").ejections
    }

    /// [`TargetState::available`] and the weight after slow start (ramping linearly from 10%
    /// over `slow_start` after readmission), both asked of every target on every pick: read
    /// from the `steady` flag without a lock when nothing is under way, else under the
    /// health lock. `slow_start`: the balancer's.
    pub fn weight_now(&self, now: Instant, slow_start: Duration) -> (bool, u32) {
        self.weight_at(now, Some(slow_start))
    }

    /// [`TargetState::weight_now`]; `None` when the caller asks only for availability (and
    /// the weight it gives is then not the one after slow start).
    fn weight_at(&self, now: Instant, slow_start: Option<Duration>) -> (bool, u32) {
        if self.steady.load(Ordering::Acquire) {
            let available = !self.draining.load(Ordering::Relaxed) && self.weight != 0;
            return (available, self.weight);
        }
        let mut h = self.health.lock().expect("health lock");
        // A slow start that is over is forgotten, so that the target is steady again.
        if let (Some(t), Some(slow)) = (h.readmitted_at, slow_start) {
            if now.saturating_duration_since(t) >= slow {
                h.readmitted_at = None;
                self.publish(&h);
            }
        }
        let slow_start = slow_start.unwrap_or(Duration::ZERO);
        let available = !self.draining.load(Ordering::Relaxed)
            && self.weight != 0
            && h.healthy
            && h.ejected_until.is_none_or(|t| now >= t);
        let w = match h.readmitted_at {
            Some(t) if !slow_start.is_zero() && now.duration_since(t) < slow_start => {
                let f = now.duration_since(t).as_secs_f64() / slow_start.as_secs_f64();
                ((self.weight as f64) * (0.1 + 0.9 * f)).ceil().max(1.0) as u32
            }
            _ => self.weight,
        };
        (available, w)
    }

    /// An active probe's result. Active checks re-admit (also targets ejected by passive
    /// checks: Kong and HAProxy cannot do that) and mark down.
    pub fn record_active(&self, o: Outcome, hc: &Healthchecks, now: Instant) -> Option<bool> {
        let mut h = self.health.lock().expect("health lock");
        let t = &hc.active;
        let before = h.healthy && h.ejected_until.is_none();
        bump(&mut h.active, o);
        if o == Outcome::Success {
            if t.healthy.successes > 0 && h.active.successes >= t.healthy.successes && !before {
                h.healthy = true;
                h.ejected_until = None;
                h.readmitted_at = Some(now);
                h.passive = Counters::default();
            }
        } else if tripped(&h.active, &t.unhealthy) {
            h.healthy = false;
        }
        self.publish(&h);
        let after = h.healthy && h.ejected_until.is_none();
        (after != before).then_some(after)
    }

    /// A live request's success (passive health).
    pub fn record_success(&self) {
        // Nothing to reset (passive successes count for nothing on their own): no lock.
        if !self.passive_failed.load(Ordering::Acquire) {
            return;
        }
        let mut h = self.health.lock().expect("health lock");
        bump(&mut h.passive, Outcome::Success);
        self.publish(&h);
    }

    /// A live request's result. Enough failures eject the target for
    /// `base_ejection_time × ejections`, at most `max_ejection_time`; `allowed` says
    /// whether ejecting would stay within `max_ejection_percent`.
    pub fn record_passive(
        &self,
        o: Outcome,
        hc: &Healthchecks,
        now: Instant,
        allowed: bool,
    ) -> bool {
        let mut h = self.health.lock().expect("health lock");
        let ejected = Self::count_passive(&mut h, o, hc, now, allowed);
        self.publish(&h);
        ejected
    }

    /// [`TargetState::record_passive`] under the lock.
    fn count_passive(
        h: &mut Health,
        o: Outcome,
        hc: &Healthchecks,
        now: Instant,
        allowed: bool,
    ) -> bool {
        bump(&mut h.passive, o);
        if o == Outcome::Success {
            return false;
        }
        if tripped(&h.passive, &hc.passive.unhealthy) && h.ejected_until.is_none_or(|t| now >= t) {
            h.passive = Counters::default();
            if !allowed {
                return false;
            }
            h.ejections += 1;
            let base = dur(&hc.passive.base_ejection_time);
            let cap = dur(&hc.passive.max_ejection_time).max(base);
            h.ejected_until = Some(now + (base * h.ejections.min(1 << 16)).min(cap));
            return true;
        }
        false
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.health
            .lock()
            .expect("health lock")
            .ejected_until
            .is_some_and(|t| now < t)
    }
}

fn bump(c: &mut Counters, o: Outcome) {
    match o {
        Outcome::Success => {
            *c = Counters {
                successes: c.successes + 1,
                ..Counters::default()
            }
        }
        Outcome::HttpFailure => {
            c.successes = 0;
            c.http_failures += 1
        }
        Outcome::TcpFailure => {
            c.successes = 0;
            c.tcp_failures += 1
        }
        Outcome::Timeout => {
            c.successes = 0;
            c.timeouts += 1
        }
    }
}

fn tripped(c: &Counters, t: &crate::spec::Thresholds) -> bool {
    (t.http_failures > 0 && c.http_failures >= t.http_failures)
        || (t.tcp_failures > 0 && c.tcp_failures >= t.tcp_failures)
        || (t.timeouts > 0 && c.timeouts >= t.timeouts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_ejects_with_growing_time_and_active_readmits() {
        let hc = Healthchecks::default();
        let t = TargetState::new("127.0.0.1:1", 1, false);
        let now = Instant::now();
        // Seed default: passive unhealthy after 2 TCP failures.
        assert!(!t.record_passive(Outcome::TcpFailure, &hc, now, true));
        assert!(t.record_passive(Outcome::TcpFailure, &hc, now, true));
        assert!(!t.available(now));
        assert!(
            t.available(now + Duration::from_secs(31)),
            "base ejection time is 30 s"
        );
        // Second ejection lasts twice as long.
        let later = now + Duration::from_secs(40);
        t.record_passive(Outcome::TcpFailure, &hc, later, true);
        t.record_passive(Outcome::TcpFailure, &hc, later, true);
        assert!(!t.available(later + Duration::from_secs(59)));
        // Two active successes re-admit at once.
        t.record_active(Outcome::Success, &hc, later);
        assert_eq!(t.record_active(Outcome::Success, &hc, later), Some(true));
        assert!(t.available(later));
    }

    #[test]
    fn ejections_grow_up_to_max_ejection_time() {
        let mut hc = Healthchecks::default();
        hc.passive.base_ejection_time = "10s".into();
        hc.passive.max_ejection_time = "25s".into();
        let t = TargetState::new("127.0.0.1:1", 1, false);
        let mut now = Instant::now();
        let mut lasted = Vec::new();
        for _ in 0..4 {
            t.record_passive(Outcome::TcpFailure, &hc, now, true);
            assert!(t.record_passive(Outcome::TcpFailure, &hc, now, true));
            let secs = (1..100)
                .find(|s| t.available(now + Duration::from_secs(*s)))
                .unwrap();
            lasted.push(secs);
            now += Duration::from_secs(secs);
        }
        // 10 s × 1, × 2, then capped at 25 s (Envoy's max_ejection_time).
        assert_eq!(lasted, vec![10, 20, 25, 25]);
    }

    #[test]
    fn max_ejection_percent_is_respected() {
        let hc = Healthchecks::default();
        let t = TargetState::new("127.0.0.1:1", 1, false);
        let now = Instant::now();
        t.record_passive(Outcome::TcpFailure, &hc, now, false);
        assert!(!t.record_passive(Outcome::TcpFailure, &hc, now, false));
        assert!(t.available(now));
    }

    #[test]
    fn active_failures_mark_down() {
        let hc = Healthchecks::default();
        let t = TargetState::new("127.0.0.1:1", 1, false);
        let now = Instant::now();
        t.record_active(Outcome::HttpFailure, &hc, now);
        t.record_active(Outcome::HttpFailure, &hc, now);
        assert_eq!(t.record_active(Outcome::HttpFailure, &hc, now), Some(false));
        assert!(!t.available(now));
    }

    /// The lock-free answers (a steady target's weight, a success with nothing to reset)
    /// must agree with the locked ones through a whole ejection and slow start.
    #[test]
    fn steady_reads_follow_ejection_readmission_and_slow_start() {
        let hc = Healthchecks::default();
        let slow = Duration::from_secs(10);
        let t = TargetState::new("127.0.0.1:1", 10, false);
        let now = Instant::now();
        assert_eq!(t.weight_now(now, slow), (true, 10));
        // One failure, then a success: the count starts again, so two more failures are
        // needed to eject (consecutive failures, as Kong counts them).
        t.record_passive(Outcome::TcpFailure, &hc, now, true);
        t.record_success();
        assert!(!t.record_passive(Outcome::TcpFailure, &hc, now, true));
        assert!(t.record_passive(Outcome::TcpFailure, &hc, now, true));
        assert!(!t.weight_now(now, slow).0);
        // Re-admitted by active checks: the weight ramps from 10%, not from the steady path.
        let back = now + Duration::from_secs(5);
        t.record_active(Outcome::Success, &hc, back);
        t.record_active(Outcome::Success, &hc, back);
        assert_eq!(t.weight_now(back, slow), (true, 1));
        assert_eq!(t.weight_now(back + Duration::from_secs(5), slow), (true, 6));
        // Availability alone does not end a slow start.
        assert!(t.available(back + Duration::from_secs(20)));
        assert_eq!(t.weight_now(back + Duration::from_secs(5), slow), (true, 6));
        // Once it is over the full weight holds, also when asked with an earlier clock.
        assert_eq!(t.weight_now(back + slow, slow), (true, 10));
        assert_eq!(t.weight_now(back, slow), (true, 10));
        // A draining or zero-weight target is never available, steady or not.
        t.draining.store(true, Ordering::Relaxed);
        assert!(!t.weight_now(back + slow, slow).0);
        let z = TargetState::new("127.0.0.1:2", 0, false);
        assert!(!z.weight_now(now, slow).0);
    }
}
