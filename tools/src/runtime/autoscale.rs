//! Target tracking: keep in-flight requests per replica near `target_utilization`, within
//! `[min, max]`. Scale out at once (after `scale_out_cooldown` since the last scale out);
//! scale in only when `scale_in_cooldown` has passed since the last scaling of either kind,
//! so a pool does not flap on a burst.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Autoscaler {
    pub current: u32,
    samples: VecDeque<f64>,
    last_out: Option<Instant>,
    last_change: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub min: u32,
    pub max: u32,
    pub target: f64,
    pub out_cooldown: Duration,
    pub in_cooldown: Duration,
    pub disable_scale_in: bool,
}

/// Samples averaged per decision (one per 500 ms: a 3 s window).
const WINDOW: usize = 6;

impl Autoscaler {
    pub fn new(start: u32) -> Autoscaler {
        Autoscaler {
            current: start,
            samples: VecDeque::new(),
            last_out: None,
            last_change: None,
        }
    }

    /// Feed one in-flight sample; returns the replica count to run.
    pub fn step(&mut self, now: Instant, in_flight: f64, p: Params) -> u32 {
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(in_flight);
        let avg = self.samples.iter().sum::<f64>() / self.samples.len() as f64;
        let wanted = ((avg / p.target).ceil() as u32).clamp(p.min, p.max);
        // Bounds changed (a schedule fired): follow them at once.
        if self.current < p.min || self.current > p.max {
            self.current = self.current.clamp(p.min, p.max);
            self.last_change = Some(now);
            return self.current;
        }
        let since = |t: Option<Instant>, d: Duration| t.is_none_or(|t| now.duration_since(t) >= d);
        if wanted > self.current && since(self.last_out, p.out_cooldown) {
            self.current = wanted;
            self.last_out = Some(now);
            self.last_change = Some(now);
        } else if wanted < self.current
            && !p.disable_scale_in
            && since(self.last_change, p.in_cooldown)
        {
            self.current = wanted;
            self.last_change = Some(now);
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Params {
        Params {
            min: 1,
            max: 4,
            target: 2.0,
            out_cooldown: Duration::from_secs(1),
            in_cooldown: Duration::from_secs(10),
            disable_scale_in: false,
        }
    }

    #[test]
    fn scales_out_under_load_and_in_after_the_cooldown() {
        let mut a = Autoscaler::new(1);
        let t = Instant::now();
        for i in 0..6 {
            a.step(t + Duration::from_millis(500 * i), 20.0, p());
        }
        assert_eq!(a.current, 4, "capped at max");
        let calm = t + Duration::from_secs(5);
        for i in 0..6 {
            a.step(calm + Duration::from_millis(500 * i), 0.0, p());
        }
        assert_eq!(a.current, 4, "scale-in waits for its cooldown");
        assert_eq!(a.step(t + Duration::from_secs(20), 0.0, p()), 1);
    }

    #[test]
    fn bounds_from_a_schedule_apply_at_once() {
        let mut a = Autoscaler::new(3);
        let t = Instant::now();
        let zero = Params {
            min: 0,
            max: 0,
            ..p()
        };
        assert_eq!(a.step(t, 10.0, zero), 0);
        assert_eq!(a.step(t, 10.0, Params { min: 2, ..p() }), 2);
    }

    #[test]
    fn disable_scale_in_keeps_capacity() {
        let mut a = Autoscaler::new(3);
        let t = Instant::now() + Duration::from_secs(100);
        let pp = Params {
            disable_scale_in: true,
            ..p()
        };
        assert_eq!(a.step(t, 0.0, pp), 3);
    }
}
