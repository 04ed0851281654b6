//! Per-client rate limiting: a token bucket per key (client IP or a header), refilled at
//! `requests_per_minute / 60` per second up to `burst`. Over the limit: how long until the
//! next token, for `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(requests_per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_sec: requests_per_minute as f64 / 60.0,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` to serve; `Err(wait)` when the client must wait.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.lock().expect("rate lock");
        if b.len() > 100_000 {
            // Forget idle clients (full buckets) so memory stays bounded.
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = b.entry(key.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - *tokens) / self.per_sec.max(1e-9),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limit_then_refill() {
        let r = RateLimiter::new(60, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(r.check("a", t).is_ok());
        }
        let wait = r.check("a", t).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert!(r.check("b", t).is_ok(), "clients are limited separately");
        assert!(r.check("a", t + Duration::from_millis(1001)).is_ok());
    }
}
