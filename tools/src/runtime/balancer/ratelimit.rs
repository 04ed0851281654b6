//! Per-client rate limiting, Kong's rate-limiting plugin in shape (`second`, `minute`,
//! `hour`, counted by client IP or by a header) but with token buckets rather than Kong's
//! fixed windows, so a client cannot get twice its limit by straddling a window edge.
//!
//! Each limit is a bucket as deep as the limit (the minute's can be made shallower with
//! `burst`) refilled evenly over its window; a request must find a token in every bucket.
//! A refused request takes no token from any of them, so a client hammering its per-second
//! limit does not also spend its hourly allowance. Over the limit, the answer says how long
//! until the next token of the bucket that refused longest, for `Retry-After`.
//!
//! Every answer carries Kong's quota headers so clients can pace themselves:
//! `X-RateLimit-Limit-<Window>` / `X-RateLimit-Remaining-<Window>` per limit, and
//! `RateLimit-Limit` / `-Remaining` / `-Reset` for the one with the least left (Reset: seconds
//! until that bucket is full again).

use crate::spec::RateLimit;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients remembered before full (idle) buckets are forgotten: memory stays bounded
/// however many addresses or header values turn up.
const MAX_CLIENTS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    limit: u32,
    unit: &'static str,
    per_sec: f64,
    depth: f64,
}

/// Why a request was refused: the limit it ran into and how long until it admits one.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub wait: Duration,
    pub limit: u32,
    /// `second`, `minute` or `hour`.
    pub unit: &'static str,
    /// What is left of each limit (nothing, for the one that refused).
    pub quota: Quota,
}

/// What a client has left after a request, for the quota headers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quota {
    /// (limit, whole requests left, seconds until full, window) per limit.
    left: Vec<(u32, u32, u64, &'static str)>,
}

impl Quota {
    /// The requests left under the tightest limit.
    pub fn remaining(&self) -> Option<u32> {
        self.left.iter().map(|l| l.1).min()
    }

    /// Kong's headers: per window, and `RateLimit-*` for the tightest. They replace every
    /// quota header of the target's answer, not only the same-named ones: a target's
    /// `X-RateLimit-Limit-Day` or `RateLimit-Policy` beside them would describe a quota the
    /// client is not under. (The fast path skips the same ones as it copies the head.)
    pub fn write(&self, h: &mut HeaderMap) {
        let theirs: Vec<HeaderName> = h
            .keys()
            .filter(|n| Self::is_quota_header(n.as_str()))
            .cloned()
            .collect();
        for n in theirs {
            h.remove(n);
        }
        self.each(|name, v| {
            h.insert(name, HeaderValue::from(v));
        });
    }

    /// Each of Kong's headers with its value, for [`Quota::write`] and the fast path (which
    /// writes header lines, not a map).
    pub fn each(&self, mut f: impl FnMut(&'static HeaderName, u64)) {
        for &(limit, left, _, unit) in &self.left {
            let (l, r) = match unit {
                "second" => (&LIMIT_SECOND, &REMAINING_SECOND),
                "minute" => (&LIMIT_MINUTE, &REMAINING_MINUTE),
                _ => (&LIMIT_HOUR, &REMAINING_HOUR),
            };
            f(l, limit.into());
            f(r, left.into());
        }
        if let Some(&(limit, left, reset, _)) = self.left.iter().min_by_key(|l| l.1) {
            f(&RATELIMIT_LIMIT, limit.into());
            f(&RATELIMIT_REMAINING, left.into());
            f(&RATELIMIT_RESET, reset);
        }
    }

    /// Is `name` one of the quota headers (which the balancer's replace the target's)?
    pub fn is_quota_header(name: &str) -> bool {
        let n = name.as_bytes();
        (n.len() > 12 && n[..12].eq_ignore_ascii_case(b"x-ratelimit-"))
            || (n.len() > 10 && n[..10].eq_ignore_ascii_case(b"ratelimit-"))
    }
}

static LIMIT_SECOND: HeaderName = HeaderName::from_static("x-ratelimit-limit-second");
static LIMIT_MINUTE: HeaderName = HeaderName::from_static("x-ratelimit-limit-minute");
static LIMIT_HOUR: HeaderName = HeaderName::from_static("x-ratelimit-limit-hour");
static REMAINING_SECOND: HeaderName = HeaderName::from_static("x-ratelimit-remaining-second");
static REMAINING_MINUTE: HeaderName = HeaderName::from_static("x-ratelimit-remaining-minute");
static REMAINING_HOUR: HeaderName = HeaderName::from_static("x-ratelimit-remaining-hour");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl Refusal {
    /// Whole seconds for `Retry-After`, never 0 (a client told 0 would retry at once).
    pub fn retry_after(&self) -> u64 {
        self.wait.as_secs_f64().ceil().max(1.0) as u64
    }
}

pub struct RateLimiter {
    windows: Vec<Window>,
    /// `None`: by client IP.
    header: Option<HeaderName>,
    /// Tokens left per window (same order as `windows`) and when they were counted.
    buckets: Mutex<HashMap<String, ([f64; 3], Instant)>>,
}

impl RateLimiter {
    /// A limiter for `r`. A header name that cannot be one (a hand-edited spec; the
    /// provider refuses it at plan) counts clients by IP rather than failing requests.
    pub fn new(r: &RateLimit) -> RateLimiter {
        let mut windows = Vec::new();
        let mut add = |limit: Option<u32>, secs: f64, depth: Option<u32>, unit| {
            if let Some(limit) = limit.filter(|n| *n > 0) {
                windows.push(Window {
                    limit,
                    unit,
                    per_sec: limit as f64 / secs,
                    depth: depth.unwrap_or(limit).max(1) as f64,
                });
            }
        };
        add(r.per_second, 1.0, None, "second");
        add(r.requests_per_minute, 60.0, r.burst, "minute");
        add(r.per_hour, 3600.0, None, "hour");
        RateLimiter {
            windows,
            header: r.key_header().ok().flatten(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The header clients are counted by, if not by IP.
    pub fn header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    /// The key a request is counted under: its header's value, or its IP when counting by
    /// IP or when the header is absent (Kong's fallback; otherwise every client without
    /// the header would share, and exhaust, one bucket).
    pub fn key(&self, headers: &HeaderMap, ip: IpAddr) -> String {
        let value = self
            .header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok());
        RateLimiter::key_for(value, ip)
    }

    /// The key for a client with this value of the counted header (`None`: absent, not
    /// plain text, or counting by IP).
    pub fn key_for(value: Option<&str>, ip: IpAddr) -> String {
        match value {
            Some(v) => format!("h:{v}"),
            None => format!("ip:{ip}"),
        }
    }

    /// `Ok` (with what is left) to serve; `Err` when the client must wait.
    pub fn check(&self, key: &str, now: Instant) -> Result<Quota, Refusal> {
        let full = self.full();
        let mut b = self.buckets.lock().expect("rate lock");
        if b.len() > MAX_CLIENTS {
            b.retain(|_, (tokens, at)| !self.refill(tokens, *at, now).eq(&full));
        }
        let (tokens, at) = b.entry(key.to_string()).or_insert((full, now));
        *tokens = self.refill(tokens, *at, now);
        *at = now;
        let mut refusal: Option<Refusal> = None;
        for (w, t) in self.windows.iter().zip(tokens.iter()) {
            if *t < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - t) / w.per_sec);
                if refusal.as_ref().is_none_or(|r| wait > r.wait) {
                    refusal = Some(Refusal {
                        wait,
                        limit: w.limit,
                        unit: w.unit,
                        quota: Quota::default(),
                    });
                }
            }
        }
        if refusal.is_none() {
            for t in tokens.iter_mut().take(self.windows.len()) {
                *t -= 1.0;
            }
        }
        let quota = Quota {
            left: self
                .windows
                .iter()
                .zip(tokens.iter())
                .map(|(w, t)| {
                    let full_in = ((w.depth - t) / w.per_sec).max(0.0).ceil() as u64;
                    (w.limit, t.max(0.0).floor() as u32, full_in, w.unit)
                })
                .collect(),
        };
        match refusal {
            Some(r) => Err(Refusal { quota, ..r }),
            None => Ok(quota),
        }
    }

    fn full(&self) -> [f64; 3] {
        let mut f = [0.0; 3];
        for (slot, w) in f.iter_mut().zip(&self.windows) {
            *slot = w.depth;
        }
        f
    }

    fn refill(&self, tokens: &[f64; 3], at: Instant, now: Instant) -> [f64; 3] {
        let dt = now.saturating_duration_since(at).as_secs_f64();
        let mut out = *tokens;
        for (t, w) in out.iter_mut().zip(&self.windows) {
            *t = (*t + dt * w.per_sec).min(w.depth);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(second: Option<u32>, minute: Option<u32>, hour: Option<u32>) -> RateLimiter {
        RateLimiter::new(&RateLimit {
            per_second: second,
            requests_per_minute: minute,
            per_hour: hour,
            burst: None,
            by: "ip".into(),
        })
    }

    #[test]
    fn the_quota_replaces_every_quota_header_of_the_target() {
        let r = limiter(Some(2), None, None);
        let q = r.check("a", Instant::now()).unwrap();
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x-ratelimit-limit-day", "1000"),
            ("x-ratelimit-remaining-second", "99"),
            ("ratelimit-policy", "10;w=1"),
            ("x-upstream", "18081"),
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        q.write(&mut h);
        assert!(h.get("x-ratelimit-limit-day").is_none());
        assert!(h.get("ratelimit-policy").is_none());
        assert_eq!(h["x-ratelimit-remaining-second"], "1");
        assert_eq!(h["x-ratelimit-limit-second"], "2");
        assert_eq!(h["x-upstream"], "18081");
        assert!(Quota::is_quota_header("X-RateLimit-Limit-Day"));
        assert!(!Quota::is_quota_header("x-ratelimit-"));
    }

    #[test]
    fn burst_then_limit_then_refill() {
        let r = RateLimiter::new(&RateLimit {
            requests_per_minute: Some(60),
            burst: Some(3),
            by: "ip".into(),
            ..Default::default()
        });
        let t = Instant::now();
        for _ in 0..3 {
            assert!(r.check("a", t).is_ok());
        }
        let no = r.check("a", t).unwrap_err();
        assert!(no.wait <= Duration::from_secs(1) && no.wait > Duration::ZERO);
        assert_eq!((no.limit, no.unit, no.retry_after()), (60, "minute", 1));
        assert!(r.check("b", t).is_ok(), "clients are limited separately");
        assert!(r.check("a", t + Duration::from_millis(1001)).is_ok());
    }

    #[test]
    fn every_window_must_admit_and_the_longest_wait_is_reported() {
        let r = limiter(Some(2), None, Some(5));
        let t = Instant::now();
        let mut served = 0;
        let mut per_second_refusals = 0;
        // Ten seconds of a client sending as fast as it can, ten requests a second.
        for i in 0..100 {
            match r.check("a", t + Duration::from_millis(i * 100)) {
                Ok(_) => served += 1,
                Err(no) if no.unit == "second" => {
                    per_second_refusals += 1;
                    assert_eq!(no.retry_after(), 1);
                }
                Err(no) => {
                    assert_eq!((no.unit, no.limit), ("hour", 5));
                    // 1 token at 5 per 3600 s: about 12 minutes.
                    assert!(no.retry_after() > 600, "{no:?}");
                }
            }
        }
        assert_eq!(served, 5, "the hourly limit caps the total");
        assert!(per_second_refusals > 0, "the per-second limit refused too");
    }

    #[test]
    fn a_refused_request_spends_no_token_of_another_window() {
        let r = limiter(Some(1), None, Some(3));
        let t = Instant::now();
        assert!(r.check("a", t).is_ok());
        // Hammering the per-second limit must not drain the hourly bucket.
        for i in 1..=50 {
            let no = r.check("a", t + Duration::from_millis(i * 10)).unwrap_err();
            assert_eq!(no.unit, "second");
        }
        assert!(r.check("a", t + Duration::from_millis(1600)).is_ok());
        assert!(r.check("a", t + Duration::from_millis(2700)).is_ok());
        assert_eq!(
            r.check("a", t + Duration::from_millis(3800))
                .unwrap_err()
                .unit,
            "hour"
        );
    }

    #[test]
    fn a_header_counts_clients_and_its_absence_falls_back_to_the_ip() {
        let r = RateLimiter::new(&RateLimit {
            per_second: Some(1),
            by: "header:X-Api-Key".into(),
            ..Default::default()
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(r.key(&h, ip), "ip:127.0.0.1");
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(r.key(&h, ip), "h:k1");
        // A header value that looks like an address is still a different client.
        h.insert("x-api-key", "ip:127.0.0.1".parse().unwrap());
        assert_ne!(r.key(&h, ip), r.key(&HeaderMap::new(), ip));
    }

    #[test]
    fn answers_carry_what_is_left_of_each_limit() {
        let r = limiter(Some(2), Some(100), None);
        let t = Instant::now();
        let q = r.check("a", t).unwrap();
        let mut h = HeaderMap::new();
        q.write(&mut h);
        let get = |n: &str| h.get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(get("x-ratelimit-limit-second"), "2");
        assert_eq!(get("x-ratelimit-remaining-second"), "1");
        assert_eq!(get("x-ratelimit-limit-minute"), "100");
        assert_eq!(get("x-ratelimit-remaining-minute"), "99");
        // The tightest: the per-second limit, full again in a second.
        assert_eq!(
            (
                get("ratelimit-limit"),
                get("ratelimit-remaining"),
                get("ratelimit-reset")
            ),
            ("2".into(), "1".into(), "1".into())
        );
        assert!(h.get("x-ratelimit-limit-hour").is_none());
        r.check("a", t).unwrap();
        let no = r.check("a", t).unwrap_err();
        assert_eq!(no.quota.remaining(), Some(0));
        let mut h = HeaderMap::new();
        no.quota.write(&mut h);
        assert_eq!(h.get("x-ratelimit-remaining-minute").unwrap(), "98");
    }

    #[test]
    fn no_limit_set_admits_everything() {
        let r = limiter(None, None, None);
        let t = Instant::now();
        assert!((0..1000).all(|_| r.check("a", t).is_ok()));
    }

    #[test]
    fn idle_clients_are_forgotten_when_there_are_too_many() {
        let r = limiter(Some(1), None, None);
        let t = Instant::now();
        for i in 0..=MAX_CLIENTS {
            r.check(&i.to_string(), t).unwrap();
        }
        // Two seconds later every bucket is full again: all of them may go.
        r.check("new", t + Duration::from_secs(2)).unwrap();
        assert_eq!(r.buckets.lock().unwrap().len(), 1);
    }
}
