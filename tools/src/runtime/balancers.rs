//! The agent's side of balancers: start one per `balancers/<name>.json`, reload it when
//! the spec changes (a listen address change rebinds; anything else swaps in place with no
//! dropped request), stop it when the spec goes, and publish its status.

use super::balancer::{self, admin, Handle};
use super::queue::{self, QueueHandle};
use crate::spec::{BalancerSpec, BalancerStatus};
use crate::statedir::{self, StateDir};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What runs for a spec: an HTTP balancer or a queue dispatcher.
enum Runner {
    Http(Handle),
    Queue(QueueHandle),
}

impl Runner {
    fn stop(self) {
        match self {
            Runner::Http(h) => h.stop(),
            Runner::Queue(q) => q.stop(),
        }
    }

    /// Can `spec` replace the running one in place (same sockets or directories)?
    fn reloads(&self, spec: &BalancerSpec) -> bool {
        match self {
            Runner::Http(h) => {
                // The same address as before, or the one a port-0 spec was given.
                let old = h.lb.config();
                let same = |was: &str, bound: std::net::SocketAddr, now: &str| {
                    was == now || bound.to_string() == now
                };
                spec.mode == "http"
                    && same(&old.listen, h.listen, &spec.listen)
                    && same(&old.admin_listen, h.admin, &spec.admin_listen)
                    && old.access_log == spec.access_log
            }
            Runner::Queue(q) => spec.mode == "queue" && queue::same_dirs(&q.config(), spec),
        }
    }

    /// Swap `spec` in. A followed service's replicas are read afresh: switching from static
    /// targets to a service must not leave the balancer without targets until the follower's
    /// next look at the status file.
    fn reload(&self, spec: BalancerSpec, sd: &StateDir) {
        match self {
            Runner::Http(h) => {
                let followed = balancer::followed(sd, &spec);
                h.lb.reload(spec, followed)
            }
            Runner::Queue(q) => q.reload(spec),
        }
    }
}

fn start(spec: &BalancerSpec, sd: &StateDir) -> anyhow::Result<Runner> {
    if spec.mode == "queue" {
        let exe = std::env::current_exe()?;
        Ok(Runner::Queue(queue::start(spec.clone(), sd.clone(), exe)?))
    } else {
        Ok(Runner::Http(balancer::start(
            spec.clone(),
            Some(sd.clone()),
        )?))
    }
}

struct Running {
    hash: String,
    spec: BalancerSpec,
    handle: Option<Runner>,
    error: Option<String>,
    published: Option<BalancerStatus>,
    published_at: Option<Instant>,
}

#[derive(Default)]
pub struct Balancers {
    running: BTreeMap<String, Running>,
    next_publish: Option<Instant>,
}

impl Balancers {
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Start, reload or stop balancers to match the spec files.
    fn load(&mut self, sd: &StateDir) {
        let names = sd.balancer_names().unwrap_or_default();
        for name in &names {
            let path = sd.balancer_path(name);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let hash = statedir::hash(&bytes);
            if self.running.get(name).is_some_and(|r| r.hash == hash) {
                continue;
            }
            let spec: BalancerSpec = match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("ignoring balancer spec {}: {e}", path.display());
                    let prev = self.running.remove(name);
                    self.running.insert(
                        name.clone(),
                        Running {
                            hash,
                            spec: prev
                                .as_ref()
                                .map(|p| p.spec.clone())
                                .unwrap_or_else(|| placeholder(name)),
                            handle: prev.and_then(|mut p| p.handle.take()),
                            error: Some(format!("invalid spec: {e}")),
                            published: None,
                            published_at: None,
                        },
                    );
                    continue;
                }
            };
            let prev = self.running.remove(name);
            let mut handle = prev.and_then(|mut p| p.handle.take());
            let in_place = handle.as_ref().is_some_and(|h| h.reloads(&spec));
            let mut error = None;
            if in_place {
                tracing::info!(balancer = %name, "reloading in place");
                handle.as_ref().expect("checked").reload(spec.clone(), sd);
            } else {
                if let Some(h) = handle.take() {
                    h.stop();
                }
                match start(&spec, sd) {
                    Ok(h) => handle = Some(h),
                    Err(e) => {
                        tracing::error!(balancer = %name, "{e:#}");
                        error = Some(format!("{e:#}"));
                    }
                }
            }
            self.running.insert(
                name.clone(),
                Running {
                    hash,
                    spec,
                    handle,
                    error,
                    published: None,
                    published_at: None,
                },
            );
            self.next_publish = None;
        }
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for n in gone {
            if let Some(mut r) = self.running.remove(&n) {
                if let Some(h) = r.handle.take() {
                    h.stop();
                }
                tracing::info!(balancer = %n, "balancer removed");
            }
            let _ = std::fs::remove_file(sd.balancer_status_path(&n));
        }
    }

    /// `read_specs`: whether to read the spec files again (the agent asks when
    /// `balancers/` changed). Status is published on every call, at most every 500 ms.
    pub fn tick(&mut self, sd: &StateDir, read_specs: bool) {
        if read_specs {
            self.load(sd);
        }
        let now = Instant::now();
        if self.next_publish.is_some_and(|t| now < t) {
            return;
        }
        self.next_publish = Some(now + Duration::from_millis(500));
        for (name, r) in self.running.iter_mut() {
            let (http, q) = match &r.handle {
                Some(Runner::Http(h)) => (Some(h), None),
                Some(Runner::Queue(q)) => (None, Some(q)),
                None => (None, None),
            };
            let qs = q.map(|q| q.status());
            let error = r.error.clone().or_else(|| {
                qs.as_ref()
                    .and_then(|s| s.get("error"))
                    .and_then(|e| e.as_str())
                    .map(str::to_string)
            });
            let st = BalancerStatus {
                name: name.clone(),
                spec_hash: r.hash.clone(),
                listening: http.map(|h| h.listen.to_string()),
                admin: http.map(|h| h.admin.to_string()),
                error,
                targets: http
                    .map(|h| admin::targets_json(&h.lb))
                    .unwrap_or(serde_json::Value::Null),
                queue: qs,
            };
            let stale = match &r.published {
                None => true,
                Some(was) if *was == st => false,
                Some(was) if counters_only(was, &st) => {
                    r.published_at.is_none_or(|t| now >= t + COUNTERS_EVERY)
                }
                Some(_) => true,
            };
            if stale {
                let p = sd.balancer_status_path(name);
                let _ = std::fs::create_dir_all(p.parent().expect("status dir"));
                if crate::atomic::write_json(&p, &st).is_ok() {
                    r.published = Some(st);
                    r.published_at = Some(now);
                }
            }
        }
    }

    pub fn stop_all(&mut self, sd: &StateDir) {
        for (n, mut r) in std::mem::take(&mut self.running) {
            if let Some(h) = r.handle.take() {
                h.stop();
            }
            let _ = std::fs::remove_file(sd.balancer_status_path(&n));
        }
    }
}

/// Target counters that move with every request.
const COUNTERS: [&str; 3] = ["in_flight", "requests", "failures"];

/// How often a status that changed only in [`COUNTERS`] is written again. Health, ejections,
/// drains, errors and the listening address still go out within 500 ms; a busy balancer's
/// request counts alone would otherwise cost an fsync'd file twice a second.
const COUNTERS_EVERY: Duration = Duration::from_secs(5);

/// Whether `a` and `b` differ at most in the targets' [`COUNTERS`].
fn counters_only(a: &BalancerStatus, b: &BalancerStatus) -> bool {
    let strip = |s: &BalancerStatus| {
        let mut s = s.clone();
        if let Some(ts) = s.targets.as_array_mut() {
            for t in ts.iter_mut().filter_map(|t| t.as_object_mut()) {
                for k in COUNTERS {
                    t.remove(k);
                }
            }
        }
        s
    };
    strip(a) == strip(b)
}

pub(crate) fn placeholder(name: &str) -> BalancerSpec {
    BalancerSpec {
        api_version: crate::spec::API_VERSION,
        name: name.to_string(),
        listen: String::new(),
        service: None,
        backup_service: None,
        targets: vec![],
        backup_targets: vec![],
        algorithm: "round-robin".into(),
        healthchecks: Default::default(),
        retries: 0,
        timeouts: Default::default(),
        rate_limit: None,
        admin_listen: String::new(),
        mode: "http".into(),
        queue: None,
        slow_start: "0s".into(),
        access_log: true,
        correlation_id: Default::default(),
        drain_timeout: "30s".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ReplicaStatus, ServiceStatus, Target};
    use std::sync::Arc;

    /// A port on 127.0.0.1 that refuses connections and that no other test can take while
    /// the socket lives: bound without listening, and without SO_REUSEADDR. A fixed port
    /// here once received its probes in another test's listener.
    fn held_port() -> (tokio::net::TcpSocket, u16) {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(false).unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = sock.local_addr().unwrap().port();
        (sock, port)
    }

    fn replica(index: u32, port: u16) -> ReplicaStatus {
        ReplicaStatus {
            index,
            port,
            pid: None,
            pid_start: 0,
            state: "running".into(),
            health: "healthy".into(),
            restarts: 0,
            last_exit: None,
            started_at: None,
            outdated: false,
            settling: false,
        }
    }

    fn addresses(b: &Balancers) -> Vec<String> {
        match &b.running["lb"].handle {
            Some(Runner::Http(h)) => h.lb.targets().iter().map(|t| t.address.clone()).collect(),
            _ => panic!("no HTTP balancer running"),
        }
    }

    /// Static targets replaced by the service whose replicas they were (what the e2e test
    /// does): the reload must hand over the replicas at once, not leave the balancer with no
    /// target until the follower next reads the status file (it answered 503 meanwhile).
    #[test]
    fn switching_from_static_targets_to_their_service_keeps_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let sd = StateDir::new(tmp.path());
        sd.create().unwrap();
        let held = [held_port(), held_port()];
        let ports = [held[0].1, held[1].1];
        let status = ServiceStatus {
            api_version: crate::spec::API_VERSION,
            name: "web".into(),
            spec_hash: String::new(),
            generation: 1,
            desired: 2,
            reason: "spec".into(),
            replicas: vec![replica(0, ports[0]), replica(1, ports[1])],
            schedule: None,
            in_flight: 0,
            updated_at: String::new(),
        };
        std::fs::create_dir_all(sd.status_dir()).unwrap();
        crate::atomic::write_json(&sd.status_path("web"), &status).unwrap();
        let want: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();

        let mut spec = placeholder("lb");
        spec.listen = "127.0.0.1:0".into();
        spec.admin_listen = "127.0.0.1:0".into();
        spec.access_log = false;
        spec.targets = want
            .iter()
            .map(|a| Target {
                address: a.clone(),
                weight: 1,
            })
            .collect();
        let mut b = Balancers::default();
        sd.write_balancer(&spec).unwrap();
        b.tick(&sd, true);
        assert_eq!(addresses(&b), want);

        // The addresses it bound, as HCL would state them: a reload, not a restart.
        let Some(Runner::Http(h)) = &b.running["lb"].handle else {
            panic!("no HTTP balancer running")
        };
        (spec.listen, spec.admin_listen) = (h.listen.to_string(), h.admin.to_string());
        let first = h.lb.clone();
        spec.targets.clear();
        spec.service = Some("web".into());
        sd.write_balancer(&spec).unwrap();
        b.tick(&sd, true);
        assert!(
            matches!(&b.running["lb"].handle, Some(Runner::Http(h)) if Arc::ptr_eq(&h.lb, &first)),
            "reloaded in place, not restarted"
        );
        assert_eq!(addresses(&b), want, "targets right after the reload");
        b.stop_all(&sd);
    }

    /// Request counts alone are written at most every COUNTERS_EVERY; a change in health or
    /// draining still goes out at the next publish.
    #[test]
    fn counters_alone_do_not_rewrite_the_status_file() {
        use std::sync::atomic::Ordering;
        let tmp = tempfile::tempdir().unwrap();
        let sd = StateDir::new(tmp.path());
        sd.create().unwrap();
        let mut spec = placeholder("lb");
        spec.listen = "127.0.0.1:0".into();
        spec.admin_listen = "127.0.0.1:0".into();
        spec.access_log = false;
        let (_held, port) = held_port();
        spec.targets = vec![Target {
            address: format!("127.0.0.1:{port}"),
            weight: 1,
        }];
        // No probes: health must not change under the test (nothing listens there).
        spec.healthchecks.active.healthy.interval = "0s".into();
        spec.healthchecks.active.unhealthy.interval = "0s".into();
        sd.write_balancer(&spec).unwrap();
        let mut b = Balancers::default();
        b.tick(&sd, true);
        let written = || sd.read_balancer_status("lb").unwrap().unwrap().targets[0].clone();
        assert_eq!(written()["requests"], 0);
        let Some(Runner::Http(h)) = &b.running["lb"].handle else {
            panic!("no HTTP balancer running")
        };
        let t = h.lb.targets()[0].clone();

        t.requests.fetch_add(7, Ordering::Relaxed);
        b.next_publish = None;
        b.tick(&sd, false);
        assert_eq!(
            written()["requests"],
            0,
            "counts alone wait for COUNTERS_EVERY"
        );

        t.draining.store(true, Ordering::Relaxed);
        b.next_publish = None;
        b.tick(&sd, false);
        assert_eq!(written()["draining"], true, "a drain goes out at once");
        assert_eq!(written()["requests"], 7, "with the counts of the moment");

        t.requests.fetch_add(1, Ordering::Relaxed);
        b.next_publish = None;
        b.running.get_mut("lb").unwrap().published_at = Some(Instant::now() - COUNTERS_EVERY);
        b.tick(&sd, false);
        assert_eq!(
            written()["requests"],
            8,
            "counts go out after COUNTERS_EVERY"
        );
        b.stop_all(&sd);
    }
}
