//! Queue mode of the balancer, run by the real agent process over a real worker pool:
//! round-robin delivery into worker directories, and exactly-once processing of 1000
//! files with a worker that fails every 10th item and an agent `kill -9` in the middle.

use localdr::runtime::queue::worklog;
use localdr::spec::{BalancerSpec, QueueSpec, ServiceSpec, Target, API_VERSION};
use localdr::statedir::StateDir;
use localdr_e2e::{bin, free_port, free_ports, localdr, ls, wait_for, Cleanup};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn worker() -> &'static str {
    env!("CARGO_BIN_EXE_localdr-test-worker")
}

struct Dirs {
    root: PathBuf,
    sd: PathBuf,
}

/// On failure, show what the agents said.
impl Drop for Dirs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in 1..=2 {
                if let Ok(s) = std::fs::read_to_string(self.d(&format!("agent-{n}.log"))) {
                    let tail: Vec<&str> = s.lines().rev().take(40).collect();
                    eprintln!("--- agent {n} log (last lines, newest first):");
                    for l in tail {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

impl Dirs {
    fn new(t: &Path) -> Dirs {
        Dirs {
            root: t.to_path_buf(),
            sd: t.join("state"),
        }
    }
    fn d(&self, n: &str) -> PathBuf {
        self.root.join(n)
    }
}

/// A pool of `n` test workers (HTTP, health-checked) on free ports.
fn pool(n: u32) -> ServiceSpec {
    let base = free_ports(n as u16);
    ServiceSpec {
        api_version: API_VERSION,
        name: "work".into(),
        command: vec![worker().into(), "--port".into(), "{port}".into()],
        env: Default::default(),
        working_dir: None,
        base_dir: None,
        replicas: n,
        base_port: base,
        port_env_var: "PORT".into(),
        health_check: None,
        restart: None,
        stop_signal: "SIGTERM".into(),
        stop_timeout: "5s".into(),
        min_ready: "0s".into(),
        autoscaling: None,
        schedules: vec![],
        cost_per_replica_hour: 0.0,
        generation: 0,
    }
}

fn queue_spec(
    d: &Dirs,
    command: Vec<String>,
    service: Option<&str>,
    targets: &[u16],
) -> BalancerSpec {
    BalancerSpec {
        api_version: API_VERSION,
        name: "jobs".into(),
        listen: String::new(),
        service: service.map(str::to_string),
        backup_service: None,
        targets: targets
            .iter()
            .map(|p| Target {
                address: format!("127.0.0.1:{p}"),
                weight: 1,
            })
            .collect(),
        backup_targets: vec![],
        algorithm: "round-robin".into(),
        healthchecks: Default::default(),
        retries: 0,
        timeouts: Default::default(),
        rate_limit: None,
        admin_listen: String::new(),
        mode: "queue".into(),
        queue: Some(QueueSpec {
            incoming_dir: d.d("incoming").display().to_string(),
            workers_dir: d.d("workers").display().to_string(),
            errors_dir: d.d("errors").display().to_string(),
            log_dir: d.d("logs").display().to_string(),
            // Only inotify wakes the dispatcher during the test: a missed wake would hang.
            poll_interval: "1h".into(),
            command,
            timeout: "30s".into(),
        }),
        slow_start: "0s".into(),
        access_log: true,
        correlation_id: Default::default(),
        drain_timeout: "30s".into(),
    }
}

/// The agent in the foreground, as a child we can `kill -9`.
fn agent(d: &Dirs, n: u32) -> Child {
    let log = std::fs::File::create(d.d(&format!("agent-{n}.log"))).unwrap();
    Command::new(bin("localdr"))
        .args(["agent", "--state-dir", d.sd.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the agent")
}

/// Kills the foreground agent (if still there) when the test ends, pass or fail.
struct AgentGuard(Option<Child>);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn items(dir: &Path) -> Vec<String> {
    ls(dir)
        .into_iter()
        .filter(|n| localdr::runtime::queue::claim::is_item(n) && dir.join(n).is_file())
        .collect()
}

/// Every item still waiting or being worked on: in incoming/ or at a worker's top level.
fn unfinished(d: &Dirs) -> usize {
    let mut n = items(&d.d("incoming")).len();
    for w in ls(&d.d("workers")) {
        n += items(&d.d("workers").join(w)).len();
    }
    n
}

fn logs(d: &Dirs) -> Vec<worklog::Record> {
    let mut all = Vec::new();
    for f in ls(&d.d("logs")) {
        all.extend(worklog::read(&d.d("logs").join(f)).unwrap());
    }
    all
}

#[test]
fn a_thousand_files_exactly_once_through_an_agent_kill_9() {
    let t = tempfile::tempdir().unwrap();
    let d = Dirs::new(t.path());
    let sd = StateDir::new(&d.sd);
    let _cleanup = Cleanup(d.sd.clone());
    sd.write_service(&pool(3)).unwrap();
    let ledger = d.d("ledger.txt");
    let command = vec![
        worker().to_string(),
        "process".into(),
        "--ledger".into(),
        ledger.display().to_string(),
        "--fail-every".into(),
        "10".into(),
        "--sleep-ms".into(),
        "15".into(),
        "{file}".into(),
    ];
    sd.write_balancer(&queue_spec(&d, command, Some("work"), &[]))
        .unwrap();
    let mut guard = AgentGuard(Some(agent(&d, 1)));
    let r = localdr(&[
        "loadgen",
        "--queue-dir",
        d.d("incoming").to_str().unwrap(),
        "--files",
        "1000",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let names: BTreeSet<String> = serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
        ["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 1000);

    // Kill the agent outright while items are being processed.
    let ledger_lines = || {
        std::fs::read_to_string(&ledger)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_for("a third of the items", Duration::from_secs(120), || {
        ledger_lines() >= 300
    });
    let mut a = guard.0.take().unwrap();
    a.kill().unwrap();
    a.wait().unwrap();
    let at_kill = ledger_lines();
    assert!(
        at_kill < 1000,
        "everything was done before the kill: test nothing"
    );

    // A new agent finishes the job.
    guard.0 = Some(agent(&d, 2));
    wait_for("every item filed", Duration::from_secs(180), || {
        unfinished(&d) == 0 && ledger_lines() + items(&d.d("errors")).len() >= 1000
    });
    // Let any late duplicate show up before we count.
    std::thread::sleep(Duration::from_millis(500));

    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    let mut processed: BTreeMap<String, u32> = BTreeMap::new();
    for l in ledger_text.lines() {
        *processed
            .entry(l.split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    let twice: Vec<&String> = processed
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    let errors: BTreeSet<String> = items(&d.d("errors"))
        .into_iter()
        .filter(|n| !n.ends_with(".reason.json"))
        .collect();
    assert_eq!(processed.len(), 900, "processed items");
    assert_eq!(errors.len(), 100, "failed items: {errors:?}");
    for e in &errors {
        let n: u32 = e
            .trim_end_matches(".json")
            .rsplit('_')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(n.is_multiple_of(10), "{e} should not have failed");
        let reason: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.d("errors").join(format!("{e}.reason.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(reason["exit"], "exit code 1", "{reason}");
        assert!(
            reason["output"].as_str().unwrap().contains("fails"),
            "{reason}"
        );
    }
    let all: BTreeSet<String> = processed
        .keys()
        .cloned()
        .chain(errors.iter().cloned())
        .collect();
    assert_eq!(all, names, "every file ends processed or in errors/");

    // The per-worker logs say the same, once per item, and the pool shared the work.
    let recs = logs(&d);
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    let mut by_worker: BTreeMap<&str, u32> = BTreeMap::new();
    for r in &recs {
        *seen.entry(&r.item).or_default() += 1;
        *by_worker.entry(&r.worker).or_default() += 1;
        assert_eq!(r.status == "failed", errors.contains(&r.item), "{r:?}");
    }
    assert_eq!(seen.len(), 1000);
    assert!(seen.values().all(|n| *n == 1), "an item logged twice");
    assert_eq!(by_worker.len(), 3, "{by_worker:?}");
    assert!(by_worker.values().all(|n| *n > 100), "{by_worker:?}");
    let done: usize = ls(&d.d("workers"))
        .iter()
        .map(|w| items(&d.d("workers").join(w).join("processed")).len())
        .sum();
    assert_eq!(done, 900);
    // The new agent's status counts the whole history, the first agent's share too.
    wait_for(
        "the status to count 900 processed and 100 failed",
        Duration::from_secs(10),
        || {
            sd.read_balancer_status("jobs")
                .ok()
                .flatten()
                .and_then(|st| st.queue)
                .is_some_and(|q| q["processed"] == 900 && q["failed"] == 100)
        },
    );
    eprintln!("ledger lines at the kill: {at_kill}");
}

#[test]
fn without_a_command_files_go_round_robin_into_worker_directories() {
    let t = tempfile::tempdir().unwrap();
    let d = Dirs::new(t.path());
    let sd = StateDir::new(&d.sd);
    let _cleanup = Cleanup(d.sd.clone());
    // Two static targets that accept connections, one that does not (skipped by health).
    let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free_port();
    let ports = [
        l1.local_addr().unwrap().port(),
        dead,
        l2.local_addr().unwrap().port(),
    ];
    sd.write_balancer(&queue_spec(&d, vec![], None, &ports))
        .unwrap();
    let _guard = AgentGuard(Some(agent(&d, 1)));
    let r = localdr(&[
        "loadgen",
        "--queue-dir",
        d.d("incoming").to_str().unwrap(),
        "--files",
        "30",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    // inotify: well before the 5 s poll.
    wait_for("every file delivered", Duration::from_secs(4), || {
        items(&d.d("incoming")).is_empty() && unfinished(&d) == 30
    });
    assert_eq!(items(&d.d("workers").join("target-0")).len(), 15);
    assert_eq!(items(&d.d("workers").join("target-2")).len(), 15);
    assert!(!d.d("workers").join("target-1").exists());
    let recs = logs(&d);
    assert_eq!(recs.len(), 30);
    assert!(recs.iter().all(|r| r.status == "delivered"));
    // The agent publishes the dispatcher's counts (every 500 ms).
    wait_for(
        "the status to count 30 deliveries",
        Duration::from_secs(5),
        || {
            sd.read_balancer_status("jobs")
                .ok()
                .flatten()
                .and_then(|st| st.queue)
                .is_some_and(|q| q["delivered"] == 30)
        },
    );
}
