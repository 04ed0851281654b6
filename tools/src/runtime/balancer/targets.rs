//! Per-target state: health from active probes and from live traffic (Kong's counters),
//! Envoy-style ejection with a growing ejection time, in-flight count and slow start.

use crate::spec::{dur, Healthchecks};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
        }
    }

    /// This target's identity within a request (its address in memory): cheaper than
    /// comparing addresses, and a target replaced by a reload is a new one.
    pub fn id(&self) -> usize {
        self as *const TargetState as usize
    }

    /// Can take new requests now: healthy, not ejected, not draining.
    pub fn available(&self, now: Instant) -> bool {
        self.weight_now(now, Duration::ZERO).0
    }

    pub fn is_healthy(&self) -> bool {
        self.health.lock().expect("health lock").healthy
    }

    pub fn ejections(&self) -> u32 {
        self.health.lock().expect("health lock").ejections
    }

    /// [`TargetState::available`] and the weight after slow start (ramping linearly from 10%
    /// over `slow_start` after readmission), under one lock: both are asked of every target
    /// on every pick.
    pub fn weight_now(&self, now: Instant, slow_start: Duration) -> (bool, u32) {
        let h = self.health.lock().expect("health lock");
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
        let after = h.healthy && h.ejected_until.is_none();
        (after != before).then_some(after)
    }

    /// A live request's success (passive health).
    pub fn record_success(&self) {
        bump(
            &mut self.health.lock().expect("health lock").passive,
            Outcome::Success,
        );
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
}
