//! The retry budget: retries stay under ~20% of the requests of the last ten seconds, plus
//! a small reserve so a quiet balancer can still retry.
//!
//! Counted over a sliding window, like Finagle's `RetryBudget` and Envoy's retry budgets,
//! rather than over the balancer's lifetime: a lifetime count lets hours of healthy traffic
//! pay for a storm of retries the moment every target starts failing, which is when retries
//! hurt most (each one is more load on targets already in trouble).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One-second slots; the window is their number.
const SLOTS: usize = 10;
/// Retries allowed per window whatever the traffic (one a second).
const RESERVE: u64 = 10;
/// At most one retry for this many requests.
const RATIO: u64 = 5;

/// Requests and retries per second over the last [`SLOTS`] seconds. Each slot packs the
/// second it counts (high 32 bits) with its count (low 32 bits) in one atomic, so a slot
/// from an older second is reset by the first writer that needs it, without a lock.
pub struct RetryBudget {
    epoch: Instant,
    requests: [AtomicU64; SLOTS],
    retries: [AtomicU64; SLOTS],
}

impl RetryBudget {
    pub fn new(epoch: Instant) -> RetryBudget {
        RetryBudget {
            epoch,
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// A request finished (whatever its outcome).
    pub fn record_request(&self, now: Instant) {
        add(&self.requests, self.second(now));
    }

    /// A retry was made.
    pub fn record_retry(&self, now: Instant) {
        add(&self.retries, self.second(now));
    }

    /// May one more retry be made now?
    pub fn allows_retry(&self, now: Instant) -> bool {
        let sec = self.second(now);
        sum(&self.retries, sec) < sum(&self.requests, sec) / RATIO + RESERVE
    }

    /// Seconds since the epoch, from 1 (0 marks a slot never written).
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() + 1
    }
}

fn add(slots: &[AtomicU64; SLOTS], sec: u64) {
    let slot = &slots[sec as usize % SLOTS];
    let mut cur = slot.load(Ordering::Relaxed);
    loop {
        // A slot already moved on by a writer that read the clock later counts this too.
        let next = if cur >> 32 >= sec {
            cur + 1
        } else {
            sec << 32 | 1
        };
        match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

/// Total of the slots whose second is within the window ending at `sec`.
fn sum(slots: &[AtomicU64; SLOTS], sec: u64) -> u64 {
    slots
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .filter(|v| {
            let at = v >> 32;
            at != 0 && at <= sec && sec - at < SLOTS as u64
        })
        .map(|v| v & 0xffff_ffff)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How many retries in a row the budget allows at `now`.
    fn retries_allowed(b: &RetryBudget, now: Instant) -> u64 {
        let mut n = 0;
        while b.allows_retry(now) {
            b.record_retry(now);
            n += 1;
            assert!(n < 1_000_000, "unbounded");
        }
        n
    }

    #[test]
    fn a_fifth_of_recent_requests_plus_a_reserve() {
        let t0 = Instant::now();
        let b = RetryBudget::new(t0);
        assert_eq!(
            retries_allowed(&b, t0),
            RESERVE,
            "a quiet balancer still retries"
        );

        let b = RetryBudget::new(t0);
        for _ in 0..100 {
            b.record_request(t0);
        }
        assert_eq!(retries_allowed(&b, t0), 100 / RATIO + RESERVE);
    }

    #[test]
    fn old_traffic_does_not_pay_for_todays_retries() {
        let t0 = Instant::now();
        let b = RetryBudget::new(t0);
        // An hour of healthy traffic, 100 requests a second...
        for s in 0..3600 {
            for _ in 0..100 {
                b.record_request(t0 + Duration::from_secs(s));
            }
        }
        // ...then every request fails and nothing else arrives: only what the last ten
        // seconds earned may be retried (a lifetime count would allow 72,000).
        let late = t0 + Duration::from_secs(3600);
        assert_eq!(retries_allowed(&b, late), 9 * 100 / RATIO + RESERVE);
        // Ten seconds on, the window holds no request: the reserve only, again.
        let later = late + Duration::from_secs(10);
        assert_eq!(retries_allowed(&b, later), RESERVE);
    }

    #[test]
    fn retries_age_out_of_the_window_too() {
        let t0 = Instant::now();
        let b = RetryBudget::new(t0);
        assert_eq!(retries_allowed(&b, t0), RESERVE);
        assert!(!b.allows_retry(t0 + Duration::from_secs(9)));
        assert!(b.allows_retry(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn counts_from_threads_at_once_are_not_lost() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(RetryBudget::new(t0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        b.record_request(t0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(sum(&b.requests, 1), 40_000);
    }
}
