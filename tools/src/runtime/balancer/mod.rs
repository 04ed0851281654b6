//! The HTTP load balancer the agent runs for each `balancers/<name>.json`.
//!
//! One thread and one single-threaded runtime per balancer, so the supervisor's work never
//! delays a request. The configuration sits behind an `ArcSwap`: a reload swaps it, and
//! requests in flight finish with the configuration they started with (the fast path's
//! connections hold a [`View`] of it, taken again after any swap). Targets keep their
//! health state across reloads (matched by address).

mod accept;
pub mod admin;
mod chunked;
mod fast;
pub mod pick;
pub mod proxy;
pub mod ratelimit;
mod retry_budget;
pub mod targets;
mod tunnel;
pub mod upstream;

use crate::spec::{dur, BalancerSpec};
use crate::statedir::StateDir;
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use pick::Picker;
use ratelimit::RateLimiter;
use retry_budget::RetryBudget;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use targets::{Outcome, TargetState};

thread_local! {
    /// Candidates of a pick: indexes into the target list and effective weights. Indexes
    /// rather than `Arc`s: a clone and a drop per candidate are two atomic operations.
    static CANDIDATES: std::cell::RefCell<Vec<(usize, u32)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Our pid, read once (`getpid` is a system call, and request ids use it).
/// The high half of every request id: the agent's start time (ns) mixed with its pid.
static ID_PREFIX: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64) << 32) & ((1 << 48) - 1)
});

/// Latency histogram bucket bounds in seconds (Prometheus `le`).
pub const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Default)]
pub struct Metrics {
    pub by_class: [AtomicU64; 6],
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub requests: AtomicU64,
    pub latency: [AtomicU64; 11],
    pub latency_sum_us: AtomicU64,
}

pub struct Balancer {
    pub name: String,
    cfg: ArcSwap<BalancerSpec>,
    targets: ArcSwap<Vec<Arc<TargetState>>>,
    picker: ArcSwap<Picker>,
    limiter: ArcSwap<Option<RateLimiter>>,
    pub metrics: Metrics,
    /// Keeps retries under ~20% of recent traffic.
    retry_budget: RetryBudget,
    counter: AtomicU64,
    /// `slow_start`, parsed once per reload (read on every pick).
    slow_start_ms: AtomicU64,
    /// `circuit_breaker.panic_threshold`, percent (0: panic only when nothing is available).
    panic_threshold: AtomicU32,
    /// `timeouts.connect`, `.read` and `.client`, parsed once per reload rather than on
    /// every request or connection.
    connect_ms: AtomicU64,
    read_ms: AtomicU64,
    client_ms: AtomicU64,
    /// `drain_timeout`.
    drain_ms: AtomicU64,
    access: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
    /// Whether there is an access log: asked on every request, so without taking the lock.
    access_on: bool,
    /// `correlation_id`, parsed once per reload.
    correlation: ArcSwap<Correlation>,
    /// Woken when the target list changes: requests held for a pool at zero wait on it.
    targets_changed: tokio::sync::Notify,
    /// Bumped after every swap of the configuration, the targets, the picker, the rate
    /// limiter or the request id header: a [`View`] is current while this is unchanged.
    generation: AtomicU64,
}

/// What a request reads of the balancer's swappable state, held by a connection across
/// its requests and refreshed only when a reload or a change of the followed pool swapped
/// something in. Each `ArcSwap` load costs a few atomic read-modify-writes (its debt slot,
/// the `Arc` count); a connection's request costs one plain load of [`Balancer::generation`]
/// instead of five such loads. A request still starts with the state of the moment: a
/// swap is seen by the next request on every connection.
pub struct View {
    generation: u64,
    pub cfg: Arc<BalancerSpec>,
    pub targets: Arc<Vec<Arc<TargetState>>>,
    pub picker: Arc<Picker>,
    pub limiter: Arc<Option<RateLimiter>>,
    pub corr: Arc<Correlation>,
}

/// The request id header as the proxy uses it.
#[derive(Debug)]
pub struct Correlation {
    pub name: hyper::header::HeaderName,
    /// Return the id to the client.
    pub echo: bool,
}

impl Correlation {
    /// From the spec; a name that is not a header name (only a hand-edited spec can hold
    /// one: plan refuses it) falls back to the default, with a warning.
    fn of(spec: &BalancerSpec) -> Correlation {
        let c = &spec.correlation_id;
        let name = c.header().unwrap_or_else(|e| {
            tracing::warn!(balancer = %spec.name, "{e}; using X-Request-ID");
            hyper::header::HeaderName::from_static("x-request-id")
        });
        Correlation {
            name,
            echo: c.echo_downstream,
        }
    }
}

impl Balancer {
    fn new(spec: BalancerSpec, access_log: Option<std::fs::File>) -> Arc<Balancer> {
        let lb = Arc::new(Balancer {
            name: spec.name.clone(),
            picker: ArcSwap::from_pointee(Picker::new(&spec.algorithm)),
            limiter: ArcSwap::from_pointee(spec.rate_limit.as_ref().map(RateLimiter::new)),
            targets: ArcSwap::from_pointee(Vec::new()),
            cfg: ArcSwap::from_pointee(spec.clone()),
            metrics: Metrics::default(),
            retry_budget: RetryBudget::new(Instant::now()),
            counter: AtomicU64::new(0),
            slow_start_ms: AtomicU64::new(slow_ms(&spec)),
            panic_threshold: AtomicU32::new(spec.healthchecks.passive.panic_threshold),
            connect_ms: AtomicU64::new(dur(&spec.timeouts.connect).as_millis() as u64),
            read_ms: AtomicU64::new(dur(&spec.timeouts.read).as_millis() as u64),
            client_ms: AtomicU64::new(client_ms(&spec)),
            drain_ms: AtomicU64::new(drain_ms(&spec)),
            access_on: access_log.is_some(),
            access: Mutex::new(access_log.map(std::io::BufWriter::new)),
            correlation: ArcSwap::from_pointee(Correlation::of(&spec)),
            targets_changed: tokio::sync::Notify::new(),
            generation: AtomicU64::new(0),
        });
        lb.set_targets(&spec, Followed::default());
        lb
    }

    pub fn config(&self) -> Arc<BalancerSpec> {
        self.cfg.load_full()
    }

    pub fn limiter(&self) -> Option<arc_swap::Guard<Arc<Option<RateLimiter>>>> {
        let g = self.limiter.load();
        g.is_some().then_some(g)
    }

    pub fn targets(&self) -> Arc<Vec<Arc<TargetState>>> {
        self.targets.load_full()
    }

    /// The swappable state as it is now.
    pub fn view(&self) -> View {
        // Read before the loads: a swap that lands between them leaves this view one
        // generation behind, so the next refresh loads again.
        let generation = self.generation.load(Ordering::Acquire);
        View {
            generation,
            cfg: self.cfg.load_full(),
            targets: self.targets.load_full(),
            picker: self.picker.load_full(),
            limiter: self.limiter.load_full(),
            corr: self.correlation.load_full(),
        }
    }

    /// Bring `v` up to date if anything was swapped since it was taken.
    pub fn refresh(&self, v: &mut View) {
        if self.generation.load(Ordering::Acquire) != v.generation {
            *v = self.view();
        }
    }

    /// After a swap: views taken before it are stale.
    fn swapped(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Swap in a new configuration; targets keep their state when their address stays.
    /// `followed`: the followed services' running replicas, read by the caller (the agent
    /// reads them afresh on every reload; see [`followed`]).
    pub fn reload(&self, spec: BalancerSpec, followed: Followed) {
        let old = self.config();
        if old.algorithm != spec.algorithm {
            self.picker.store(Arc::new(Picker::new(&spec.algorithm)));
        }
        if old.rate_limit != spec.rate_limit {
            self.limiter
                .store(Arc::new(spec.rate_limit.as_ref().map(RateLimiter::new)));
        }
        self.set_targets(&spec, followed);
        if old.correlation_id != spec.correlation_id {
            self.correlation.store(Arc::new(Correlation::of(&spec)));
        }
        self.slow_start_ms.store(slow_ms(&spec), Ordering::Relaxed);
        self.panic_threshold
            .store(spec.healthchecks.passive.panic_threshold, Ordering::Relaxed);
        self.connect_ms.store(
            dur(&spec.timeouts.connect).as_millis() as u64,
            Ordering::Relaxed,
        );
        self.read_ms.store(
            dur(&spec.timeouts.read).as_millis() as u64,
            Ordering::Relaxed,
        );
        self.client_ms.store(client_ms(&spec), Ordering::Relaxed);
        self.drain_ms.store(drain_ms(&spec), Ordering::Relaxed);
        self.cfg.store(Arc::new(spec));
        self.swapped();
    }

    /// Rebuild the target list from the spec (and the followed services' replicas).
    pub fn set_targets(&self, spec: &BalancerSpec, followed: Followed) {
        let old = self.targets();
        let find = |addr: &str, w: u32, backup: bool| -> Arc<TargetState> {
            match old
                .iter()
                .find(|t| t.address == addr && t.weight == w && t.backup == backup)
            {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(TargetState::new(addr, w, backup));
                    // A target that was already known keeps its health, not its weight.
                    if let Some(prev) = old.iter().find(|t| t.address == addr) {
                        if !prev.is_healthy() {
                            t.record_active(
                                Outcome::TcpFailure,
                                &spec.healthchecks,
                                Instant::now(),
                            );
                        }
                    }
                    t
                }
            }
        };
        let mut list: Vec<Arc<TargetState>> = Vec::new();
        for t in &spec.targets {
            list.push(find(&t.address, t.weight, false));
        }
        for a in followed.primary {
            if !list.iter().any(|t| t.address == a) {
                list.push(find(&a, 1, false));
            }
        }
        for t in &spec.backup_targets {
            list.push(find(&t.address, t.weight, true));
        }
        // A replica that is a primary too (both services the same) stays a primary.
        for a in followed.backup {
            if !list.iter().any(|t| t.address == a) {
                list.push(find(&a, 1, true));
            }
        }
        if list
            .iter()
            .map(|t| (&t.address, t.weight, t.backup))
            .ne(old.iter().map(|t| (&t.address, t.weight, t.backup)))
        {
            // Idle connections to targets that left the list are closed now: a connection's
            // stale view (see [`View`]) may keep such a target alive until its next request.
            for t in old
                .iter()
                .filter(|t| !list.iter().any(|n| Arc::ptr_eq(n, t)))
            {
                t.idle.sweep(Duration::ZERO);
            }
            self.targets.store(Arc::new(list));
            self.swapped();
            self.targets_changed.notify_waiters();
        }
    }

    /// Hold a request that found no target because the followed pool has no replica, until
    /// one runs (the target list that has it) or `timeouts.connect` from `since` passes
    /// (`None`). Only for a pool
    /// that load can bring back (autoscaled, its schedule allowing a replica); while held,
    /// the request counts as the pool's load, so the autoscaler starts a replica: scale
    /// from zero, as Knative's activator does it.
    pub async fn await_pool(&self, since: Instant) -> Option<Arc<Vec<Arc<TargetState>>>> {
        let cfg = self.config();
        let service = cfg.service.as_deref()?;
        let with_primary = || Some(self.targets()).filter(|l| l.iter().any(|t| !t.backup));
        if with_primary().is_some() || !super::demand::wakeable(service) {
            return None;
        }
        let _held = super::demand::Held::new(service);
        let until = tokio::time::Instant::from_std(since + self.connect_timeout());
        tracing::debug!(balancer = %self.name, %service, "holding a request until the pool starts a replica");
        loop {
            let changed = self.targets_changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change between the two is not missed.
            changed.as_mut().enable();
            if let Some(list) = with_primary() {
                return Some(list);
            }
            tokio::time::timeout_at(until, changed).await.ok()?;
        }
    }

    /// Next target: available primaries; else available backups; else every primary
    /// (panic mode: fail open rather than answer 503). With a `panic_threshold`, panic
    /// mode starts as soon as fewer than that percentage of the primaries are available
    /// and no backup is (Envoy: spreading over a few survivors would overload them).
    /// Within a request, targets already
    /// `tried` come last: a retry goes to an untried primary, then an untried backup,
    /// before any target is tried twice.
    /// `tried` holds target identities ([`TargetState::id`]).
    pub fn choose(&self, tried: &[usize]) -> Option<Arc<TargetState>> {
        self.choose_at(tried, Instant::now())
    }

    /// [`Balancer::choose`] with the clock already read (a request's first attempt has just
    /// read it).
    pub fn choose_at(&self, tried: &[usize], now: Instant) -> Option<Arc<TargetState>> {
        self.choose_in(&self.targets(), &self.picker.load(), tried, now)
    }

    /// [`Balancer::choose_at`] over a target list and a picker already loaded (a [`View`]'s).
    pub fn choose_in(
        &self,
        targets: &[Arc<TargetState>],
        picker: &Picker,
        tried: &[usize],
        now: Instant,
    ) -> Option<Arc<TargetState>> {
        let slow = Duration::from_millis(self.slow_start_ms.load(Ordering::Relaxed));
        let pick_from = |backup: bool, only_available: bool, fresh: bool| {
            // One candidate list per thread, reused: no allocation per request.
            CANDIDATES.with(|c| {
                let mut c = c.borrow_mut();
                c.clear();
                // One look at each target's health: availability and weight together.
                c.extend(
                    targets
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| t.backup == backup && !t.draining.load(Ordering::Relaxed))
                        .filter(|(_, t)| !fresh || !tried.contains(&t.id()))
                        .filter_map(|(i, t)| {
                            let (available, w) = t.weight_now(now, slow);
                            (available || !only_available).then_some((i, w))
                        }),
                );
                let r = picker.pick(targets, &c);
                c.clear();
                r.map(|i| targets[i].clone())
            })
        };
        let threshold = self.panic_threshold.load(Ordering::Relaxed) as usize;
        if threshold > 0 {
            let (mut primaries, mut up, mut backup_up) = (0usize, 0usize, false);
            for t in targets.iter() {
                if t.draining.load(Ordering::Relaxed) {
                    continue;
                }
                let ok = proxy::usable(t, now);
                if t.backup {
                    backup_up |= ok;
                } else {
                    primaries += 1;
                    up += ok as usize;
                }
            }
            if up * 100 < threshold * primaries && !backup_up {
                return pick_from(false, false, true).or_else(|| pick_from(false, false, false));
            }
        }
        pick_from(false, true, true)
            .or_else(|| pick_from(true, true, true))
            .or_else(|| pick_from(false, false, true))
            .or_else(|| pick_from(false, true, false))
            .or_else(|| pick_from(true, true, false))
            .or_else(|| pick_from(false, false, false))
    }

    /// Count a live request's outcome (passive health).
    pub fn observe(&self, t: &TargetState, o: Outcome, cfg: &BalancerSpec) {
        if o == Outcome::Success {
            // A success ejects nothing: no clock needed.
            t.record_success();
            return;
        }
        let now = Instant::now();
        let targets = self.targets();
        let primaries = targets.iter().filter(|x| !x.backup).count().max(1);
        let ejected = targets
            .iter()
            .filter(|x| !x.backup && x.is_ejected(now))
            .count();
        let allowed = (ejected + 1) * 100
            <= primaries * cfg.healthchecks.passive.max_ejection_percent as usize;
        if t.record_passive(o, &cfg.healthchecks, now, allowed) {
            tracing::warn!(balancer = %self.name, target = %t.address, "ejected by passive health checks");
        }
    }

    /// May a failed attempt be retried now? See [`RetryBudget`].
    pub fn retry_allowed(&self, now: Instant) -> bool {
        self.retry_budget.allows_retry(now)
    }

    /// A retry is being made: the metric and the budget.
    pub fn count_retry(&self, now: Instant) {
        self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        self.retry_budget.record_retry(now);
    }

    /// The request id header and whether answers carry it.
    pub fn correlation(&self) -> Arc<Correlation> {
        self.correlation.load_full()
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_ms.load(Ordering::Relaxed))
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_ms.load(Ordering::Relaxed))
    }

    /// `drain_timeout`: how long a drain waits for requests in flight.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_ms.load(Ordering::Relaxed))
    }

    /// `timeouts.client`.
    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_ms.load(Ordering::Relaxed))
    }

    /// A new request id: 24 hex digits, as a header value made in one allocation. The
    /// first 12 come from the agent's start time and pid (so ids differ across restarts),
    /// the last 12 count requests (2^48 of them before one repeats): no clock read per
    /// request.
    pub fn next_request_id(&self) -> hyper::header::HeaderValue {
        let buf = self.next_request_id_bytes();
        // Owned by one shared allocation: the id is cloned into the upstream request and the
        // answer, and a value copied from a slice would allocate again on its first clone.
        hyper::header::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
            .expect("hex digits are a valid header value")
    }

    /// A new request id's 24 hex digits.
    pub fn next_request_id_bytes(&self) -> [u8; 24] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let v = (*ID_PREFIX as u128) << 48 | (n & ((1 << 48) - 1)) as u128;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 24];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((v >> (4 * (23 - i))) & 0xf) as usize];
        }
        buf
    }

    pub fn next_jitter(&self) -> u64 {
        self.counter
            .fetch_add(7, Ordering::Relaxed)
            .wrapping_mul(2654435761)
            >> 7
    }

    /// Metrics and the access log line for a finished request; the time it finished.
    /// `id`: the request id as bytes (the fast path's are never validated as text
    /// unless they are logged).
    pub fn finish(
        &self,
        id: &[u8],
        peer: &SocketAddr,
        target: &str,
        status: u16,
        start: Instant,
        retries: u32,
    ) -> Instant {
        let el = start.elapsed();
        self.retry_budget.record_request(start + el);
        let m = &self.metrics;
        m.requests.fetch_add(1, Ordering::Relaxed);
        m.by_class[(status / 100).min(5) as usize].fetch_add(1, Ordering::Relaxed);
        let s = el.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|le| s <= *le)
            .unwrap_or(BUCKETS.len());
        m.latency[b].fetch_add(1, Ordering::Relaxed);
        m.latency_sum_us
            .fetch_add(el.as_micros() as u64, Ordering::Relaxed);
        if !self.access_on {
            return start + el;
        }
        if let Ok(mut g) = self.access.lock() {
            if let Some(w) = g.as_mut() {
                // The id is the client's when it sent one: escaped, or a `"` in it would
                // forge fields of the line.
                let text = |b: &[u8]| {
                    serde_json::to_string(&String::from_utf8_lossy(b)).unwrap_or_default()
                };
                let _ = writeln!(
                    w,
                    "{{\"ts\":\"{}\",\"request_id\":{},\"client\":\"{}\",\"target\":{},\"status\":{status},\"latency_ms\":{:.3},\"retries\":{retries}}}",
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    text(id),
                    peer.ip(),
                    text(target.as_bytes()),
                    s * 1000.0
                );
            }
        }
        start + el
    }

    fn flush_access_log(&self) {
        if let Ok(mut g) = self.access.lock() {
            if let Some(w) = g.as_mut() {
                let _ = w.flush();
            }
        }
    }
}

/// `timeouts.client` in ms. Zero (only a hand-edited spec can say so; the provider refuses
/// it) would close every connection before its first request, so it counts as the default.
fn client_ms(spec: &BalancerSpec) -> u64 {
    match dur(&spec.timeouts.client) {
        d if d.is_zero() => dur(&crate::spec::Timeouts::default().client),
        d => d,
    }
    .as_millis() as u64
}

/// `drain_timeout` in ms; one that does not parse (only a hand-edited spec can hold one)
/// counts as the default.
fn drain_ms(spec: &BalancerSpec) -> u64 {
    crate::duration::parse(&spec.drain_timeout)
        .unwrap_or(Duration::from_secs(30))
        .as_millis() as u64
}

fn slow_ms(spec: &BalancerSpec) -> u64 {
    crate::duration::parse(&spec.slow_start)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A running balancer: its thread, and how to reload or stop it.
pub struct Handle {
    pub lb: Arc<Balancer>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.lb.flush_access_log();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start a balancer. Binding happens here, so a port in use is an error for the caller.
/// A balancer's runtime until its thread takes it. `start` runs inside the agent's runtime,
/// where dropping another runtime panics; on an error path (a listener that cannot be
/// registered, a thread that cannot be spawned) this shuts it down without waiting instead.
struct RuntimeGuard(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub fn start(spec: BalancerSpec, sd: Option<StateDir>) -> Result<Handle> {
    let listener = std::net::TcpListener::bind(&spec.listen)
        .with_context(|| format!("balancer {}: cannot listen on {}", spec.name, spec.listen))?;
    let admin = std::net::TcpListener::bind(&spec.admin_listen).with_context(|| {
        format!(
            "balancer {}: cannot listen on admin address {}",
            spec.name, spec.admin_listen
        )
    })?;
    listener.set_nonblocking(true)?;
    admin.set_nonblocking(true)?;
    let listen_addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let access = match &sd {
        Some(sd) if spec.access_log => {
            std::fs::create_dir_all(sd.logs_dir())?;
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(sd.logs_dir().join(format!("{}-access.log", spec.name)))?,
            )
        }
        _ => None,
    };
    let lb = Balancer::new(spec.clone(), access);
    if let Some(sd) = &sd {
        lb.set_targets(&spec, followed(sd, &spec));
    }
    // The runtime and the listeners' registrations are made here, not in the thread: every
    // descriptor the balancer needs to run (epoll, its eventfd, the signal pipe) is then held
    // before `start` returns, and a failure to get one is this call's error. Made in the
    // thread, it raced whatever the caller did next (a process at its descriptor limit saw
    // the balancer thread panic after a successful start).
    let mut rt = RuntimeGuard(Some(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("balancer {}: cannot start its runtime", spec.name))?,
    ));
    let (l, a) = {
        let _entered = rt.0.as_ref().expect("just built").enter();
        (
            tokio::net::TcpListener::from_std(listener)?,
            tokio::net::TcpListener::from_std(admin)?,
        )
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let lb2 = lb.clone();
    let thread = std::thread::Builder::new()
        .name(format!("lb-{}", lb.name))
        .spawn(move || {
            let rt = rt.0.take().expect("handed over once");
            rt.block_on(async move {
                let serve = serve(lb2.clone(), l, stop_rx.clone());
                let adm = admin::serve(lb2.clone(), a, stop_rx.clone());
                let checks = active_checks(lb2.clone(), sd, stop_rx.clone());
                let _ = tokio::join!(serve, adm, checks);
            });
        })?;
    tracing::info!(listen = %listen_addr, admin = %admin_addr, "balancer started");
    Ok(Handle {
        lb,
        listen: listen_addr,
        admin: admin_addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

async fn serve(
    lb: Arc<Balancer>,
    l: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let conns = tokio_util_tracker();
    let mut backoff = accept::AcceptBackoff::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = l.accept() => {
                let (s, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        backoff.failed(&format!("balancer {}", lb.name), &e).await;
                        continue;
                    }
                };
                backoff.ok();
                let _ = s.set_nodelay(true);
                // A reload applies to connections accepted after it.
                let client_timeout = lb.client_timeout();
                let drain = lb.drain_timeout();
                let lb = lb.clone();
                let mut stop = stop.clone();
                let guard = conns.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    let ip = hyper::header::HeaderValue::from_str(&peer.ip().to_string())
                        .unwrap_or(hyper::header::HeaderValue::from_static("unknown"));
                    let s = match fast::serve(&lb, s, peer, &ip, &mut stop, client_timeout).await {
                        fast::Served::Done => return,
                        fast::Served::Handoff(io) => io,
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        proxy::handle(lb.clone(), req, peer, ip.clone())
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .writev(false)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(client_timeout)
                        .serve_connection(TokioIo::new(s), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop.changed() => {
                            // Finish the request in flight, then close.
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(drain, conn).await;
                        }
                    }
                });
            }
        }
    }
    // Wait (bounded) for connections to finish their requests.
    let start = Instant::now();
    let limit = lb.drain_timeout();
    while Arc::strong_count(&conns) > 1 && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A counter of live connections: clones of one `Arc`.
fn tokio_util_tracker() -> Arc<()> {
    Arc::new(())
}

/// Active health checks, and following a service's replicas from its status file.
async fn active_checks(
    lb: Arc<Balancer>,
    sd: Option<StateDir>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut next: std::collections::HashMap<String, Instant> = Default::default();
    // `concurrency` permits; a probe that finds none stays due and goes on a later tick.
    let mut permits = Arc::new(tokio::sync::Semaphore::new(0));
    let mut permits_for = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut follow_at = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        upstream::tick(now);
        for t in lb.targets().iter() {
            t.idle.sweep(upstream::IDLE_LIMIT);
        }
        let cfg = lb.config();
        if let Some(sd) = &sd {
            if now >= follow_at && (cfg.service.is_some() || cfg.backup_service.is_some()) {
                follow_at = now + Duration::from_millis(250);
                lb.set_targets(&cfg, followed(sd, &cfg));
            }
        }
        let active = &cfg.healthchecks.active;
        if permits_for != Some(active.concurrency) {
            // Probes holding the old semaphore's permits finish on their own.
            permits = Arc::new(tokio::sync::Semaphore::new(
                active.concurrency.max(1) as usize
            ));
            permits_for = Some(active.concurrency);
        }
        for t in lb.targets().iter() {
            let healthy = t.is_healthy() && !t.is_ejected(now);
            let every = dur(if healthy {
                &active.healthy.interval
            } else {
                &active.unhealthy.interval
            });
            if every.is_zero() {
                continue;
            }
            let due = next.entry(t.address.clone()).or_insert(now);
            if now < *due {
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            *due = now + every;
            let (t, lb, cfg) = (t.clone(), lb.clone(), cfg.clone());
            tokio::spawn(async move {
                let o = probe(&t.address, &cfg).await;
                drop(permit);
                if let Some(up) = t.record_active(o, &cfg.healthchecks, Instant::now()) {
                    tracing::info!(balancer = %lb.name, target = %t.address, healthy = up, "active health check changed state");
                }
            });
        }
    }
}

/// The running replicas of the services a balancer follows: `service` (primaries) and
/// `backup_service` (used only when no primary is available).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Followed {
    pub primary: Vec<String>,
    pub backup: Vec<String>,
}

/// Read the followed services' replicas from the status files the agent publishes.
pub fn followed(sd: &StateDir, spec: &BalancerSpec) -> Followed {
    let of = |svc: &Option<String>| {
        svc.as_deref()
            .map(|s| service_addresses(sd, s))
            .unwrap_or_default()
    };
    Followed {
        primary: of(&spec.service),
        backup: of(&spec.backup_service),
    }
}

/// A service's running replicas, from the status the agent publishes.
pub fn service_addresses(sd: &StateDir, svc: &str) -> Vec<String> {
    sd.read_status(svc)
        .ok()
        .flatten()
        .map(|st| {
            st.replicas
                .iter()
                .filter(|r| r.state == "running")
                .map(|r| format!("127.0.0.1:{}", r.port))
                .collect()
        })
        .unwrap_or_default()
}

async fn probe(addr: &str, cfg: &BalancerSpec) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = &cfg.healthchecks.active;
    let work = async {
        let mut s = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => return Outcome::TcpFailure,
        };
        if a.kind == "tcp" {
            return Outcome::Success;
        }
        let req = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: localdr-health\r\nConnection: close\r\n\r\n", a.http_path);
        if s.write_all(req.as_bytes()).await.is_err() {
            return Outcome::TcpFailure;
        }
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            match s.read(&mut buf[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        let code: u16 = String::from_utf8_lossy(&buf[..got])
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if a.healthy.http_statuses.contains(&code) {
            Outcome::Success
        } else {
            Outcome::HttpFailure
        }
    };
    match tokio::time::timeout(dur(&a.timeout), work).await {
        Ok(o) => o,
        Err(_) => Outcome::Timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `start` runs inside the agent's runtime: a runtime dropped there panics, so its
    /// error paths drop the balancer's runtime through `RuntimeGuard`, which does not.
    #[test]
    fn a_runtime_dropped_on_an_error_path_in_an_async_context_does_not_panic() {
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let new = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        outer.block_on(async {
            let plain = new();
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(plain)));
            assert!(dropped.is_err(), "the premise: a plain drop here panics");
            drop(RuntimeGuard(Some(new())));
        });
    }

    #[test]
    fn request_ids_are_24_hex_digits_and_do_not_repeat() {
        let mut spec = crate::runtime::balancers::placeholder("lb");
        spec.access_log = false;
        let lb = Balancer::new(spec, None);
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| lb.next_request_id().to_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 10_000);
        for id in &ids {
            assert_eq!(id.len(), 24);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        // One run's ids share the start-time/pid half.
        let halves: std::collections::HashSet<&str> = ids.iter().map(|i| &i[..12]).collect();
        assert_eq!(halves.len(), 1);
    }

    /// Envoy's panic threshold: with fewer than that share of primaries available (and no
    /// backup), every primary gets traffic; at or above it, only the available ones; and
    /// without a threshold the last survivor takes everything.
    #[test]
    fn panic_threshold_spreads_over_every_primary_when_too_few_are_up() {
        use crate::runtime::balancer::targets::Outcome;
        let picked = |threshold: u32, down: usize| {
            let mut spec = crate::runtime::balancers::placeholder("lb");
            spec.access_log = false;
            spec.targets = (1..=4)
                .map(|i| crate::spec::Target {
                    address: format!("127.0.0.1:{i}"),
                    weight: 1,
                })
                .collect();
            spec.healthchecks.passive.panic_threshold = threshold;
            let lb = Balancer::new(spec.clone(), None);
            let now = Instant::now();
            for t in lb.targets().iter().take(down) {
                for _ in 0..3 {
                    t.record_active(Outcome::HttpFailure, &spec.healthchecks, now);
                }
                assert!(!t.available(now));
            }
            let mut seen: Vec<String> = (0..40)
                .map(|_| lb.choose(&[]).unwrap().address.clone())
                .collect();
            seen.sort();
            seen.dedup();
            seen
        };
        assert_eq!(picked(50, 2), vec!["127.0.0.1:3", "127.0.0.1:4"]);
        assert_eq!(picked(50, 3).len(), 4, "25% available is below 50%: panic");
        assert_eq!(picked(0, 3), vec!["127.0.0.1:4"]);
        assert_eq!(
            picked(0, 4).len(),
            4,
            "none available: panic even without a threshold"
        );
    }

    /// `healthchecks.active.concurrency`: with five targets that accept a probe and never
    /// answer, at most that many probes are open at once.
    #[test]
    fn active_checks_open_at_most_concurrency_probes() {
        let open_probes = |concurrency: u32| -> usize {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let accepted = Arc::new(AtomicU64::new(0));
                let mut spec = crate::runtime::balancers::placeholder("lb");
                spec.access_log = false;
                spec.healthchecks.active.timeout = "60s".into();
                spec.healthchecks.active.concurrency = concurrency;
                // On 127.0.0.2: a test thread that probes a port on 127.0.0.1 it does not
                // hold (a replica's port before the replica binds it; once, a fixed port)
                // reaches this listener if it drew that port, and CI once counted such a
                // probe here.
                for _ in 0..5 {
                    let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
                    spec.targets.push(crate::spec::Target {
                        address: l.local_addr().unwrap().to_string(),
                        weight: 1,
                    });
                    let accepted = accepted.clone();
                    tokio::spawn(async move {
                        let mut held = Vec::new();
                        while let Ok((s, _)) = l.accept().await {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            held.push(s);
                        }
                    });
                }
                let lb = Balancer::new(spec, None);
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let checks = tokio::spawn(active_checks(lb, None, stop_rx));
                // Several 100 ms ticks: every target is due on each of them.
                tokio::time::sleep(Duration::from_millis(800)).await;
                let n = accepted.load(Ordering::SeqCst) as usize;
                stop_tx.send(true).unwrap();
                checks.await.unwrap();
                n
            })
        };
        assert_eq!(open_probes(2), 2);
        assert_eq!(open_probes(10), 5);
    }

    #[test]
    fn timeouts_parsed_once_follow_a_reload() {
        let mut spec = crate::runtime::balancers::placeholder("lb");
        spec.access_log = false;
        let lb = Balancer::new(spec.clone(), None);
        assert_eq!(lb.read_timeout(), dur(&spec.timeouts.read));
        spec.timeouts.read = "7s".into();
        spec.timeouts.client = "0s".into();
        lb.reload(spec, Followed::default());
        assert_eq!(lb.read_timeout(), Duration::from_secs(7));
        // A zero client timeout would close every connection at once: the default holds.
        assert_eq!(
            lb.client_timeout(),
            dur(&crate::spec::Timeouts::default().client)
        );
    }

    /// A connection's view is kept while nothing changes and taken again after any swap:
    /// targets (a reload, or the followed pool moving), the algorithm, the rate limit, the
    /// request id header.
    #[test]
    fn a_view_is_refreshed_exactly_when_something_was_swapped() {
        let mut spec = crate::runtime::balancers::placeholder("lb");
        spec.access_log = false;
        let lb = Balancer::new(spec.clone(), None);
        let mut v = lb.view();
        let first = v.targets.clone();
        lb.refresh(&mut v);
        assert!(
            Arc::ptr_eq(&v.targets, &first),
            "nothing swapped: the same view"
        );
        // The same spec again swaps nothing but the configuration; the view follows it.
        lb.reload(spec.clone(), Followed::default());
        lb.refresh(&mut v);
        assert!(Arc::ptr_eq(&v.targets, &first));
        assert!(Arc::ptr_eq(&v.cfg, &lb.config()));
        let followed = Followed {
            primary: vec!["127.0.0.1:9".into()],
            backup: vec![],
        };
        lb.set_targets(&spec, followed);
        lb.refresh(&mut v);
        assert!(v.targets.iter().any(|t| t.address == "127.0.0.1:9"));
        spec.algorithm = "least-connections".into();
        spec.correlation_id.header_name = "X-Trace".into();
        lb.reload(spec, Followed::default());
        lb.refresh(&mut v);
        assert!(!v.targets.iter().any(|t| t.address == "127.0.0.1:9"));
        assert_eq!(v.corr.name.as_str(), "x-trace");
        assert!(Arc::ptr_eq(&v.picker, &lb.picker.load_full()));
    }

    /// A client's request id goes into the JSON access log as data: quotes and
    /// backslashes in it cannot end the string and forge fields of the line.
    #[test]
    fn a_clients_request_id_cannot_forge_access_log_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut spec = crate::runtime::balancers::placeholder("lb");
        spec.access_log = true;
        let lb = Balancer::new(spec, Some(std::fs::File::create(&path).unwrap()));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let forged = br#"x","status":200,"a\b"#;
        lb.finish(forged, &peer, "127.0.0.1:8081", 503, Instant::now(), 1);
        lb.finish(b"plain-id", &peer, "-", 200, Instant::now(), 0);
        lb.flush_access_log();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0]["request_id"],
            String::from_utf8_lossy(forged).as_ref()
        );
        assert_eq!(lines[0]["status"], 503);
        assert_eq!(lines[0]["target"], "127.0.0.1:8081");
        assert_eq!(lines[0]["retries"], 1);
        assert_eq!(lines[1]["request_id"], "plain-id");
        assert_eq!(lines[1]["client"], "127.0.0.1");
    }

    /// A target that leaves the list has its idle connections closed at the swap (a
    /// connection's view may keep the target itself alive until its next request); a
    /// target that stays keeps them.
    #[tokio::test]
    async fn idle_connections_to_a_removed_target_are_closed_at_the_swap() {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut spec = crate::runtime::balancers::placeholder("lb");
        spec.access_log = false;
        spec.targets = vec![
            crate::spec::Target {
                address: addr.clone(),
                weight: 1,
            },
            crate::spec::Target {
                address: "127.0.0.1:9".into(),
                weight: 1,
            },
        ];
        let lb = Balancer::new(spec.clone(), None);
        let view = lb.view();
        let mut far = Vec::new();
        for t in view.targets.iter() {
            t.idle
                .park(tokio::net::TcpStream::connect(&addr).await.unwrap());
            far.push(l.accept().await.unwrap().0);
        }
        spec.targets.remove(0);
        lb.reload(spec, Followed::default());
        assert!(
            view.targets[0].idle.is_empty(),
            "the removed target's are closed"
        );
        assert_eq!(view.targets[1].idle.len(), 1, "the kept target's stay");
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), far[0].read(&mut b))
            .await
            .expect("the target sees the connection end")
            .unwrap();
        assert_eq!(n, 0);
    }
}
