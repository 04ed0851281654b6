//! Requests a balancer holds for a service that has no replica running: the signal that
//! scales an autoscaled pool up from zero.
//!
//! Why: the autoscaler measures load as the kernel's count of connections to the pool's
//! ports ([`super::load`]). A pool scaled in to zero has no port, so that count stays 0 and
//! the pool would never come back (the trap of AWS target tracking at zero tasks). The
//! balancer, which runs in the same agent, holds such a request instead of answering 503
//! (Knative's activator) and counts it here; the pool adds the count to its load.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

#[derive(Default)]
struct Entry {
    /// Requests held now.
    waiting: u32,
    /// The pool is autoscaled and may run a replica now: worth holding a request for.
    wakeable: bool,
}

static POOLS: LazyLock<Mutex<HashMap<String, Entry>>> = LazyLock::new(Default::default);

/// One held request for `service`, counted while this lives.
pub struct Held(String);

impl Held {
    pub fn new(service: &str) -> Held {
        lock().entry(service.to_string()).or_default().waiting += 1;
        Held(service.to_string())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut pools = lock();
        if let Some(e) = pools.get_mut(&self.0) {
            e.waiting -= 1;
        }
        prune(&mut pools, &self.0);
    }
}

/// Requests held for `service` right now.
pub fn waiting(service: &str) -> u32 {
    lock().get(service).map_or(0, |e| e.waiting)
}

/// Whether a request for `service` is worth holding: its pool scales on load and the
/// schedule in force lets it run a replica. A pool at zero by schedule (or by `replicas =
/// 0`) is not woken by a request, so the balancer answers at once instead.
pub fn wakeable(service: &str) -> bool {
    lock().get(service).is_some_and(|e| e.wakeable)
}

/// Set by the pool on every evaluation, and cleared when it goes.
pub fn set_wakeable(service: &str, yes: bool) {
    let mut pools = lock();
    match pools.get_mut(service) {
        Some(e) => e.wakeable = yes,
        // Not allocated for on every evaluation of a pool that stays unwakeable.
        None if yes => {
            pools.insert(
                service.to_string(),
                Entry {
                    waiting: 0,
                    wakeable: true,
                },
            );
        }
        None => {}
    }
    prune(&mut pools, service);
}

/// Forget `service` once nothing is held for it and it is not wakeable.
fn prune(pools: &mut HashMap<String, Entry>, service: &str) {
    if pools
        .get(service)
        .is_some_and(|e| e.waiting == 0 && !e.wakeable)
    {
        pools.remove(service);
    }
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<String, Entry>> {
    // A panic while counting leaves the map whole: keep using it.
    POOLS.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_while_it_is_held() {
        assert_eq!(waiting("demand-test"), 0);
        let a = Held::new("demand-test");
        let b = Held::new("demand-test");
        assert_eq!(waiting("demand-test"), 2);
        assert_eq!(waiting("demand-test-other"), 0);
        drop(a);
        assert_eq!(waiting("demand-test"), 1);
        drop(b);
        assert_eq!(waiting("demand-test"), 0);
    }

    #[test]
    fn only_an_autoscaled_pool_that_may_run_is_woken() {
        assert!(!wakeable("demand-test-wake"));
        set_wakeable("demand-test-wake", true);
        assert!(wakeable("demand-test-wake"));
        let held = Held::new("demand-test-wake");
        set_wakeable("demand-test-wake", false);
        assert!(!wakeable("demand-test-wake"));
        assert_eq!(waiting("demand-test-wake"), 1);
        drop(held);
        assert_eq!(waiting("demand-test-wake"), 0);
    }
}
