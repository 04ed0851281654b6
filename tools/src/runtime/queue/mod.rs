//! Queue mode of `localdr_balancer` (seed 000's Python balancer, done right): files that
//! appear in `incoming_dir` go round-robin to the healthy workers of a pool.
//!
//! An item moves only by renames that never replace a file ([`claim`]): from the incoming
//! directory into `<workers_dir>/<worker>/`, then — when a `command` processes it — into
//! `<worker>/processed/` or into `errors_dir` beside a `<item>.reason.json`. So at every
//! instant an item is in exactly one place. Commands run under a detached runner
//! ([`exec`]) that records the outcome before it lets go of the item's lock, which is what
//! makes an agent `kill -9` neither lose nor repeat an item: the next agent files the
//! results it finds, waits for runners still working, and puts back in the queue only the
//! items that were never started. Each outcome is logged once per worker ([`worklog`]).
//!
//! With a command, a worker has one item at a time (the pool's size is the parallelism);
//! without one, items are handed out as they come and the worker consumes its directory.

pub mod claim;
pub mod exec;
pub mod worklog;

use crate::spec::{dur, BalancerSpec, QueueSpec};
use crate::statedir::StateDir;
use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use claim::Moved;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A worker that can take items: a pool replica, or a static target.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub name: String,
    pub address: String,
}

/// An item being processed by a command.
struct InFlight {
    job: exec::Job,
    /// Our own runner; `None` for one adopted from an earlier agent.
    child: Option<std::process::Child>,
}

#[derive(Default, Clone)]
struct Counts {
    processed: u64,
    failed: u64,
    delivered: u64,
}

/// A running dispatcher: its thread, and how to reload or stop it.
pub struct QueueHandle {
    cfg: Arc<ArcSwap<BalancerSpec>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<Mutex<serde_json::Value>>,
}

impl QueueHandle {
    /// Swap in a new spec; callers restart the dispatcher instead when a directory changes.
    pub fn reload(&self, spec: BalancerSpec) {
        self.cfg.store(Arc::new(spec));
    }

    pub fn config(&self) -> Arc<BalancerSpec> {
        self.cfg.load_full()
    }

    pub fn status(&self) -> serde_json::Value {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stop handing out items; wait (bounded) for the commands running to finish and file
    /// their outcomes.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Do two queue specs use the same directories (so a reload can happen in place)?
pub fn same_dirs(a: &BalancerSpec, b: &BalancerSpec) -> bool {
    match (&a.queue, &b.queue) {
        (Some(x), Some(y)) => {
            x.incoming_dir == y.incoming_dir
                && x.workers_dir == y.workers_dir
                && x.errors_dir == y.errors_dir
                && x.log_dir == y.log_dir
        }
        _ => false,
    }
}

/// Check the directories and start the dispatcher thread. `exe` is the `localdr` binary
/// that runs commands (`queue-exec`).
pub fn start(spec: BalancerSpec, sd: StateDir, exe: PathBuf) -> Result<QueueHandle> {
    let q = spec.queue.clone().with_context(|| {
        format!(
            "balancer {}: mode = \"queue\" needs a queue block",
            spec.name
        )
    })?;
    for d in [&q.incoming_dir, &q.workers_dir, &q.errors_dir, &q.log_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("could not create {d}"))?;
    }
    let dev = claim::device(Path::new(&q.incoming_dir))?;
    for (k, d) in [
        ("workers_dir", &q.workers_dir),
        ("errors_dir", &q.errors_dir),
    ] {
        if claim::device(Path::new(d))? != dev {
            bail!(
                "balancer {}: {k} {d} is not on the file system of incoming_dir {}: items \
                 move by atomic renames, which cannot cross file systems",
                spec.name,
                q.incoming_dir
            );
        }
    }
    let mut d = Dispatcher::new(spec.clone(), sd, exe);
    let (cfg, stop, status) = (d.cfg.clone(), d.stop.clone(), d.status.clone());
    let thread = std::thread::Builder::new()
        .name(format!("queue-{}", spec.name))
        .spawn(move || {
            if let Err(e) = d.run() {
                tracing::error!(balancer = %d.name(), "queue dispatcher stopped: {e:#}");
                if let Ok(mut s) = d.status.lock() {
                    *s = json!({ "error": format!("{e:#}") });
                }
            }
        })?;
    tracing::info!(balancer = %spec.name, incoming = %q.incoming_dir, "queue dispatcher started");
    Ok(QueueHandle {
        cfg,
        stop,
        thread: Some(thread),
        status,
    })
}

struct Dispatcher {
    cfg: Arc<ArcSwap<BalancerSpec>>,
    sd: StateDir,
    exe: PathBuf,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<serde_json::Value>>,
    /// By worker name: a worker with an entry is busy.
    in_flight: BTreeMap<String, InFlight>,
    /// Items seen in the incoming directory and not yet handed out, oldest first.
    backlog: VecDeque<String>,
    workers: Vec<(Worker, bool)>,
    /// Static targets: when a TCP connect last succeeded.
    healthy_at: HashMap<String, Instant>,
    cursor: usize,
    counts: HashMap<String, Counts>,
    seq: AtomicU64,
}

impl Dispatcher {
    fn new(spec: BalancerSpec, sd: StateDir, exe: PathBuf) -> Dispatcher {
        Dispatcher {
            cfg: Arc::new(ArcSwap::from_pointee(spec)),
            sd,
            exe,
            stop: Arc::new(AtomicBool::new(false)),
            status: Arc::new(Mutex::new(json!({}))),
            in_flight: BTreeMap::new(),
            backlog: VecDeque::new(),
            workers: Vec::new(),
            healthy_at: HashMap::new(),
            cursor: 0,
            counts: HashMap::new(),
            seq: AtomicU64::new(0),
        }
    }

    fn name(&self) -> String {
        self.cfg.load().name.clone()
    }

    fn q(&self) -> QueueSpec {
        self.cfg.load().queue.clone().expect("checked at start")
    }

    fn run(&mut self) -> Result<()> {
        let q = self.q();
        let incoming = PathBuf::from(&q.incoming_dir);
        let watch = super::inotify::Watch::new(&incoming, super::inotify::ARRIVALS);
        if watch.is_none() {
            tracing::warn!(balancer = %self.name(), "inotify unavailable: scanning every poll_interval");
        }
        // Counts go on from the logs, so `status` after a restart (or a crash) tells the
        // queue's whole history, not only this agent's share of it.
        for (worker, t) in worklog::tally(Path::new(&q.log_dir))? {
            self.counts.insert(
                worker,
                Counts {
                    processed: t.processed,
                    failed: t.failed,
                    delivered: t.delivered,
                },
            );
        }
        self.recover()?;
        let mut last_scan: Option<Instant> = None;
        let mut last_workers: Option<Instant> = None;
        // Something arrived since the last scan. Sticky: an event seen while the backlog
        // still had items must still trigger a scan once it is empty.
        let mut dirty = true;
        while !self.stop.load(Ordering::Relaxed) {
            let q = self.q();
            let now = Instant::now();
            if last_workers.is_none_or(|t| now - t >= Duration::from_millis(250)) {
                self.refresh_workers();
                last_workers = Some(now);
            }
            self.reap()?;
            let due = last_scan.is_none_or(|t| now - t >= dur(&q.poll_interval));
            if self.backlog.is_empty() && (dirty || due) {
                self.backlog = claim::items(&incoming)?.into();
                last_scan = Some(now);
                dirty = false;
            }
            self.dispatch()?;
            self.publish();
            // Commands running: look at them often. Otherwise sleep until a file arrives,
            // the workers may have changed, or the next scan is due.
            let wait = if self.in_flight.is_empty() {
                Duration::from_millis(250)
            } else {
                Duration::from_millis(5)
            };
            let woke = match &watch {
                Some(w) => w.wait(wait),
                None => {
                    std::thread::sleep(wait);
                    false
                }
            };
            dirty |= woke;
        }
        // Stopping: no new items; let the commands running finish (bounded) and file them.
        let start = Instant::now();
        let limit = dur(&self.q().timeout).min(Duration::from_secs(30));
        while !self.in_flight.is_empty() && start.elapsed() < limit {
            self.reap()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        self.publish();
        Ok(())
    }

    /// The pool's running, not-unhealthy replicas (or the static targets that accept a TCP
    /// connection), in a stable order.
    fn refresh_workers(&mut self) {
        let spec = self.cfg.load_full();
        let mut list: Vec<(Worker, bool)> = Vec::new();
        if let Some(svc) = &spec.service {
            if let Ok(Some(st)) = self.sd.read_status(svc) {
                for r in &st.replicas {
                    let ok = r.state == "running" && r.health != "unhealthy";
                    list.push((
                        Worker {
                            name: format!("{svc}-{}", r.index),
                            address: format!("127.0.0.1:{}", r.port),
                        },
                        ok,
                    ));
                }
            }
        }
        for (i, t) in spec.targets.iter().enumerate() {
            let ok = t.weight > 0 && self.target_up(&t.address);
            list.push((
                Worker {
                    name: format!("target-{i}"),
                    address: t.address.clone(),
                },
                ok,
            ));
        }
        self.workers = list;
    }

    fn target_up(&mut self, addr: &str) -> bool {
        let now = Instant::now();
        if self
            .healthy_at
            .get(addr)
            .is_some_and(|t| now - *t < Duration::from_secs(2))
        {
            return true;
        }
        let up = addr.parse().is_ok_and(|a| {
            std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok()
        });
        if up {
            self.healthy_at.insert(addr.to_string(), now);
        }
        up
    }

    fn next_run_id(&self) -> String {
        format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Hand out items: with a command, one per free healthy worker; without, every item
    /// round-robin.
    fn dispatch(&mut self) -> Result<()> {
        let q = self.q();
        let incoming = PathBuf::from(&q.incoming_dir);
        while let Some(item) = self.backlog.front().cloned() {
            let n = self.workers.len();
            let pick = (0..n).map(|k| (self.cursor + k) % n).find(|&i| {
                let (w, ok) = &self.workers[i];
                *ok && (q.command.is_empty() || !self.in_flight.contains_key(&w.name))
            });
            let Some(i) = pick else { return Ok(()) };
            self.cursor = (i + 1) % n;
            self.backlog.pop_front();
            let w = self.workers[i].0.clone();
            let run = self.next_run_id();
            let wdir = worker_dir(&q, &w.name);
            let to = match claim::move_into(&incoming.join(&item), &wdir, &item, &run)? {
                Moved::Gone => continue,
                Moved::To(p) => p,
            };
            let name = to
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(&item)
                .to_string();
            if q.command.is_empty() {
                let logged = worklog::append(
                    Path::new(&q.log_dir),
                    &worklog::Record {
                        ts: now_str(),
                        run,
                        item: name,
                        worker: w.name.clone(),
                        status: "delivered".into(),
                        exit: None,
                        duration_ms: None,
                        reason: None,
                        path: to.display().to_string(),
                    },
                )?;
                if logged {
                    self.counts.entry(w.name.clone()).or_default().delivered += 1;
                }
            } else {
                self.start_job(&w, &name, &to, run)?;
            }
        }
        Ok(())
    }

    fn start_job(&mut self, w: &Worker, item: &str, path: &Path, run: String) -> Result<()> {
        let q = self.q();
        let wdir = worker_dir(&q, &w.name);
        let file = path.display().to_string();
        let mut argv: Vec<String> = q
            .command
            .iter()
            .map(|a| a.replace("{file}", &file))
            .collect();
        if !q.command.iter().any(|a| a.contains("{file}")) {
            argv.push(file.clone());
        }
        let port = w.address.rsplit(':').next().unwrap_or("").to_string();
        let job = exec::Job {
            run: run.clone(),
            worker: w.name.clone(),
            item: item.to_string(),
            item_path: path.to_path_buf(),
            lock: exec::lock_path(&wdir, item),
            result: exec::result_path(&wdir, item),
            argv,
            env: vec![
                ("LOCALDR_WORKER".into(), w.name.clone()),
                ("LOCALDR_WORKER_ADDRESS".into(), w.address.clone()),
                ("LOCALDR_WORKER_PORT".into(), port),
                ("LOCALDR_ITEM".into(), item.to_string()),
                ("LOCALDR_ITEM_PATH".into(), file),
                ("LOCALDR_RUN_ID".into(), run),
            ],
            timeout_ms: dur(&q.timeout).as_millis() as u64,
        };
        let child = exec::spawn(&self.exe, &job)?;
        self.in_flight.insert(
            w.name.clone(),
            InFlight {
                job,
                child: Some(child),
            },
        );
        Ok(())
    }

    /// File the outcomes of runs that ended.
    fn reap(&mut self) -> Result<()> {
        let mut done = Vec::new();
        for (w, f) in self.in_flight.iter_mut() {
            if let Some(c) = &mut f.child {
                if c.try_wait().ok().flatten().is_none() {
                    continue;
                }
            }
            // A runner holds the lock until it has written its result.
            if let Some(guard) = exec::lock(&f.job.lock, false)? {
                done.push((w.clone(), guard));
            }
        }
        for (w, guard) in done {
            let f = self.in_flight.remove(&w).expect("listed");
            self.finish(&f.job, guard)?;
        }
        Ok(())
    }

    /// A run whose runner is gone (the caller holds the item's lock, `_guard`): file its
    /// result, or put the item back in the queue when there is none (it never ran, or its
    /// runner was killed outright). Holding the lock, a runner that starts late finds no
    /// item and does nothing.
    fn finish(&mut self, job: &exec::Job, _guard: std::fs::File) -> Result<()> {
        let q = self.q();
        let Some(out) = exec::read_result(&job.result) else {
            if job.item_path.exists() {
                tracing::warn!(item = %job.item, worker = %job.worker, "no outcome recorded: back to the queue");
                claim::move_into(
                    &job.item_path,
                    Path::new(&q.incoming_dir),
                    &job.item,
                    &job.run,
                )?;
            }
            let _ = std::fs::remove_file(&job.lock);
            return Ok(());
        };
        let wdir = worker_dir(&q, &job.worker);
        let (status, to) = if out.ok {
            let to = match claim::move_into(
                &job.item_path,
                &wdir.join("processed"),
                &job.item,
                &job.run,
            )? {
                Moved::To(p) => p,
                Moved::Gone => wdir.join("processed").join(&job.item),
            };
            ("processed", to)
        } else {
            let errors = Path::new(&q.errors_dir);
            let here = job.item_path.exists();
            let name = if errors.join(&job.item).exists() && here {
                format!("{}.{}", job.item, job.run)
            } else {
                job.item.clone()
            };
            let reason = json!({
                "item": job.item,
                "worker": job.worker,
                "run": job.run,
                "exit": out.exit,
                "output": out.output,
                "started": out.started,
                "duration_ms": out.duration_ms,
            });
            // The reason goes first; an item already gone (an agent crashed after the move)
            // has its reason beside it, and rewriting it could replace a same-named one.
            if here {
                crate::atomic::write_json(&errors.join(format!("{name}.reason.json")), &reason)?;
            }
            let to = match claim::move_into(&job.item_path, errors, &name, &job.run)? {
                Moved::To(p) => p,
                Moved::Gone => errors.join(&name),
            };
            ("failed", to)
        };
        // Log, then drop the result: a crash in between logs nothing twice (same run).
        let logged = worklog::append(
            Path::new(&q.log_dir),
            &worklog::Record {
                ts: now_str(),
                run: job.run.clone(),
                item: job.item.clone(),
                worker: job.worker.clone(),
                status: status.into(),
                exit: Some(out.exit.clone()),
                duration_ms: Some(out.duration_ms),
                reason: (!out.ok).then(|| out.output.clone()),
                path: to.display().to_string(),
            },
        )?;
        // Counted once per run, as it is logged: an outcome an earlier agent logged
        // before it crashed is already in the counts taken from the logs.
        if logged {
            let c = self.counts.entry(job.worker.clone()).or_default();
            if out.ok {
                c.processed += 1;
            } else {
                c.failed += 1;
            }
        }
        let _ = std::fs::remove_file(&job.result);
        let _ = std::fs::remove_file(&job.lock);
        Ok(())
    }

    /// After a restart: every item left in a worker's directory by an earlier agent is
    /// filed (its result exists), adopted (its runner still works), or put back.
    fn recover(&mut self) -> Result<()> {
        let q = self.q();
        if q.command.is_empty() {
            return Ok(());
        }
        let Ok(rd) = std::fs::read_dir(&q.workers_dir) else {
            return Ok(());
        };
        let mut dirs: Vec<String> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        dirs.sort();
        for worker in dirs {
            let wdir = worker_dir(&q, &worker);
            for item in claim::items(&wdir)? {
                let result = exec::result_path(&wdir, &item);
                let run = exec::read_result(&result)
                    .map(|o| o.run)
                    .unwrap_or_else(|| self.next_run_id());
                let job = left_behind(&wdir, &worker, &item, run);
                // Lock first, then result: a runner writes its result before it unlocks.
                if let Some(guard) = exec::lock(&job.lock, false)? {
                    self.finish(&job, guard)?;
                } else {
                    tracing::info!(item = %item, worker = %worker, "adopting a run started by an earlier agent");
                    self.in_flight
                        .insert(worker.clone(), InFlight { job, child: None });
                }
            }
            // Results whose item was already filed: an agent crashed after the move, maybe
            // before it logged the outcome. Finishing them logs what is missing (the log
            // knows the run, so nothing is logged twice) and drops the result.
            if let Ok(rd) = std::fs::read_dir(exec::meta_dir(&wdir)) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().to_string();
                    let Some(item) = n.strip_suffix(".result") else {
                        continue;
                    };
                    if wdir.join(item).exists() {
                        continue;
                    }
                    let Some(out) = exec::read_result(&e.path()) else {
                        // Never half-written (atomic), so not ours: leave it alone.
                        continue;
                    };
                    let job = left_behind(&wdir, &worker, item, out.run);
                    if let Some(guard) = exec::lock(&job.lock, false)? {
                        self.finish(&job, guard)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn publish(&self) {
        let workers: Vec<serde_json::Value> = self
            .workers
            .iter()
            .map(|(w, ok)| {
                let c = self.counts.get(&w.name).cloned().unwrap_or_default();
                json!({
                    "name": w.name,
                    "address": w.address,
                    "healthy": ok,
                    "busy": self.in_flight.get(&w.name).map(|f| f.job.item.clone()),
                    "processed": c.processed,
                    "failed": c.failed,
                    "delivered": c.delivered,
                })
            })
            .collect();
        let total = |f: fn(&Counts) -> u64| self.counts.values().map(f).sum::<u64>();
        let v = json!({
            "pending": self.backlog.len(),
            "in_flight": self.in_flight.len(),
            "processed": total(|c| c.processed),
            "failed": total(|c| c.failed),
            "delivered": total(|c| c.delivered),
            "workers": workers,
        });
        if let Ok(mut s) = self.status.lock() {
            *s = v;
        }
    }
}

/// A run an earlier agent started, as far as its files tell: enough to finish it (the
/// command itself is not needed again).
fn left_behind(wdir: &Path, worker: &str, item: &str, run: String) -> exec::Job {
    exec::Job {
        run,
        worker: worker.to_string(),
        item: item.to_string(),
        item_path: wdir.join(item),
        lock: exec::lock_path(wdir, item),
        result: exec::result_path(wdir, item),
        argv: vec![],
        env: vec![],
        timeout_ms: 0,
    }
}

fn worker_dir(q: &QueueSpec, worker: &str) -> PathBuf {
    Path::new(&q.workers_dir).join(worker)
}

fn now_str() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(run: &str, worker: &str, item: &str, ok: bool) -> exec::Outcome {
        exec::Outcome {
            run: run.into(),
            worker: worker.into(),
            item: item.into(),
            ok,
            exit: if ok { "exit code 0" } else { "exit code 1" }.into(),
            output: String::new(),
            started: "t".into(),
            duration_ms: 5,
        }
    }

    fn record(run: &str, worker: &str, item: &str) -> worklog::Record {
        worklog::Record {
            ts: "t".into(),
            run: run.into(),
            item: item.into(),
            worker: worker.into(),
            status: "processed".into(),
            exit: None,
            duration_ms: None,
            reason: None,
            path: "p".into(),
        }
    }

    /// Agents killed after filing an item, one before and one after logging its outcome
    /// (a worker has one item at a time, so one such result per worker): the next agent
    /// logs the missing outcome once from the result left behind, logs nothing twice, and
    /// leaves filed items and reason files as they are.
    #[test]
    fn recover_logs_outcomes_filed_but_not_logged() {
        let t = tempfile::tempdir().unwrap();
        let d = |n: &str| t.path().join(n).display().to_string();
        let mut spec = crate::runtime::balancers::placeholder("jobs");
        spec.mode = "queue".into();
        spec.queue = Some(QueueSpec {
            incoming_dir: d("incoming"),
            workers_dir: d("workers"),
            errors_dir: d("errors"),
            log_dir: d("logs"),
            poll_interval: "1h".into(),
            command: vec!["true".into()],
            timeout: "30s".into(),
        });
        let q = spec.queue.clone().unwrap();
        let errors = Path::new(&q.errors_dir);
        let logs = Path::new(&q.log_dir);
        std::fs::create_dir_all(errors).unwrap();
        // w-0 processed a.json and logged it; w-1 failed b.json, filed it, did not log it;
        // w-2 processed c.json and did not log it.
        for (w, o) in [
            ("w-0", outcome("r1", "w-0", "a.json", true)),
            ("w-1", outcome("r2", "w-1", "b.json", false)),
            ("w-2", outcome("r3", "w-2", "c.json", true)),
        ] {
            let wdir = worker_dir(&q, w);
            std::fs::create_dir_all(wdir.join("processed")).unwrap();
            std::fs::create_dir_all(exec::meta_dir(&wdir)).unwrap();
            crate::atomic::write_json(&exec::result_path(&wdir, &o.item), &o).unwrap();
            if o.ok {
                std::fs::write(wdir.join("processed").join(&o.item), "x").unwrap();
            }
        }
        std::fs::write(errors.join("b.json"), "b").unwrap();
        std::fs::write(errors.join("b.json.reason.json"), "as it was").unwrap();
        worklog::append(logs, &record("r0", "w-0", "z.json")).unwrap();
        worklog::append(logs, &record("r1", "w-0", "a.json")).unwrap();

        let sd = StateDir::new(&t.path().join("sd"));
        let mut disp = Dispatcher::new(spec, sd, "localdr".into());
        disp.recover().unwrap();

        let runs = |w: &str| -> Vec<(String, String)> {
            worklog::read(&worklog::path(logs, w))
                .unwrap()
                .into_iter()
                .map(|r| (r.run, r.status))
                .collect()
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            runs("w-0"),
            [pair("r0", "processed"), pair("r1", "processed")]
        );
        assert_eq!(runs("w-1"), [pair("r2", "failed")]);
        assert_eq!(runs("w-2"), [pair("r3", "processed")]);
        for (w, item) in [("w-0", "a.json"), ("w-1", "b.json"), ("w-2", "c.json")] {
            let wdir = worker_dir(&q, w);
            assert!(!exec::result_path(&wdir, item).exists(), "{w} {item}");
        }
        assert_eq!(
            std::fs::read_to_string(errors.join("b.json.reason.json")).unwrap(),
            "as it was"
        );
        assert!(errors.join("b.json").exists());
        assert_eq!(disp.counts["w-1"].failed, 1);
        assert_eq!(disp.counts["w-2"].processed, 1);
        assert!(
            !disp.counts.contains_key("w-0"),
            "already counted from the log"
        );
    }
}
