//! `localdr_balancer` under the real Terraform in front of a real `localdr_service` pool:
//! weighted spread, following the pool, drift (a dead agent, a hand-edited spec), plan-time
//! validation, and nothing left running after destroy.

use localdr::statedir::StateDir;
use localdr_e2e::{free_port, free_ports, Cleanup, Tf, TfVersion};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

fn get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

/// A GET every 5 ms through the balancer, never retried by the client, until finished.
struct SteadyLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u32, Vec<u32>)>,
}

impl SteadyLoad {
    fn start(listen: u16) -> SteadyLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Failures are recorded as the number of successes they followed.
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match get(listen) {
                    Some(_) => ok += 1,
                    None => failed.push(ok),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        });
        SteadyLoad { stop, thread }
    }

    /// Stops the load; panics unless enough requests ran and none failed.
    fn finish_without_failures(self, during: &str) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = self.thread.join().unwrap();
        assert!(ok > 50, "too little load to tell: {ok} requests");
        assert!(
            failed.is_empty(),
            "{} of {} requests failed {during} (after the nth success: {:?})",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(10)]
        );
    }
}

fn config(sd: &Path, base: u16, listen: u16, lb: &str) -> String {
    format!(
        r#"
{head}resource "localdr_service" "web" {{
  name      = "web"
  command   = ["{w}", "--port", "{{port}}"]
  replicas  = 3
  base_port = {base}
  health_check {{
    path     = "/health"
    interval = "1s"
  }}
}}
resource "localdr_balancer" "lb" {{
  name   = "lb"
  listen = "127.0.0.1:{listen}"
  {lb}
}}
"#,
        head = localdr_e2e::terraform_head(Some(sd)),
        w = env!("CARGO_BIN_EXE_localdr-test-worker"),
    )
}

/// Both status data sources, read after the resources they describe.
const STATUS: &str = r#"
data "localdr_balancer_status" "lb" {
  name       = localdr_balancer.lb.name
  depends_on = [localdr_balancer.lb]
}
data "localdr_service_status" "web" {
  name       = localdr_service.web.name
  depends_on = [localdr_service.web]
}
output "available_targets" {
  value = data.localdr_balancer_status.lb.available_targets
}
output "healthy_replicas" {
  value = data.localdr_service_status.web.healthy
}
output "first_target_healthy" {
  value = data.localdr_balancer_status.lb.targets[0].healthy
}
"#;

const WEIGHTED: &str = r#"
  target {
    address = localdr_service.web.endpoints[0]
    weight  = 3
  }
  target {
    address = localdr_service.web.endpoints[1]
  }
  target {
    address = localdr_service.web.endpoints[2]
  }
"#;

fn balancer_in_front_of_a_pool(v: TfVersion) {
    let base = free_ports(3);
    let listen = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let tf = Tf::new(
        v,
        &format!("{}{STATUS}", config(&sd, base, listen, WEIGHTED)),
    );
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    tf.apply();
    tf.assert_empty_plan("after creating the balancer");
    // The status data sources see what the agent runs.
    assert_eq!(tf.output("available_targets"), "3");
    assert_eq!(tf.output("healthy_replicas"), "3");
    assert_eq!(tf.output("first_target_healthy"), "true");

    // Weights 3:1:1 over 500 requests: exactly 300/100/100 (smooth weighted round-robin).
    let mut n = std::collections::HashMap::new();
    for _ in 0..500 {
        let body = get(listen).expect("a request through the balancer failed");
        *n.entry(localdr_e2e::worker_port(&body)).or_insert(0) += 1;
    }
    assert_eq!(
        (n[&base], n[&(base + 1)], n[&(base + 2)]),
        (300, 100, 100),
        "{n:?}"
    );

    // A hand-edited spec shows as a diff; apply puts it back.
    let spec = sd.join("balancers/lb.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec).unwrap()).unwrap();
    j["algorithm"] = "least-connections".into();
    std::fs::write(&spec, serde_json::to_vec(&j).unwrap()).unwrap();
    let p = tf.plan();
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(
        p.stdout
            .contains("\"least-connections\" -> \"round-robin\""),
        "{}",
        p.stdout
    );
    tf.apply();
    tf.assert_empty_plan("after repairing the spec");

    // The agent dies: the balancer is not listening; plan shows it, apply repairs.
    let pid = StateDir::new(&sd).agent_info().unwrap().unwrap().pid;
    localdr::runtime::process::signal_pid(pid, libc::SIGKILL).unwrap();
    let start = std::time::Instant::now();
    while get(listen).is_some() {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = tf.plan();
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(
        p.all().contains("no localdr agent is running"),
        "{}",
        p.all()
    );
    tf.apply();
    assert!(get(listen).is_some());
    tf.assert_empty_plan("after the repair");

    // Following the pool instead of static targets: every replica gets traffic.
    std::fs::write(
        tf.path().join("main.tf"),
        config(&sd, base, listen, "service = localdr_service.web.name"),
    )
    .unwrap();
    tf.apply();
    let seen: std::collections::HashSet<u16> = (0..30)
        .map(|_| localdr_e2e::worker_port(&get(listen).unwrap()))
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    tf.assert_empty_plan("following the service");

    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    let start = std::time::Instant::now();
    while StateDir::new(&sd).agent_running() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agent still running after destroy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(get(listen).is_none());
    assert!((base..base + 3).all(|p| TcpStream::connect(("127.0.0.1", p)).is_err()));
}

localdr_e2e::both_terraforms!(balancer_in_front_of_a_pool);

fn failover_config(sd: &Path, base: u16, standby: u16, listen: u16, web_replicas: u32) -> String {
    format!(
        r#"
{head}resource "localdr_service" "web" {{
  name      = "web"
  command   = ["{w}", "--port", "{{port}}"]
  replicas  = {web_replicas}
  base_port = {base}
}}
resource "localdr_service" "standby" {{
  name      = "standby"
  command   = ["{w}", "--port", "{{port}}"]
  replicas  = 1
  base_port = {standby}
}}
resource "localdr_balancer" "lb" {{
  name           = "lb"
  listen         = "127.0.0.1:{listen}"
  service        = localdr_service.web.name
  backup_service = localdr_service.standby.name
  drain_timeout  = "5s"
  retries        = 0 # no retry hides a request sent to a replica that is gone
}}
output "url" {{
  value = localdr_balancer.lb.url
}}
output "admin_url" {{
  value = localdr_balancer.lb.admin_url
}}
"#,
        head = localdr_e2e::terraform_head(Some(sd)),
        w = env!("CARGO_BIN_EXE_localdr-test-worker"),
    )
}

/// `backup_service`: a second pool's replicas are backup targets, used only when the
/// primary pool has none left; `url`, `admin_url` and `drain_timeout` reach the user and
/// the engine.
#[test]
fn backup_service_takes_over_when_the_pool_is_gone() {
    let base = free_ports(2);
    let standby = free_port();
    let listen = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let tf = Tf::new(
        TfVersion::New,
        &failover_config(&sd, base, standby, listen, 2),
    );
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    tf.apply();
    tf.assert_empty_plan("after creating the balancer");
    assert_eq!(tf.output("url"), format!("http://127.0.0.1:{listen}"));
    let admin_url = tf.output("admin_url");
    let admin = admin_url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("admin_url {admin_url}"));
    let admin: u16 = admin.parse().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", admin)).is_ok());
    let j = spec_json(&sd, "lb");
    assert_eq!(j["backup_service"], "standby", "{j}");
    assert_eq!(j["drain_timeout"], "5s");

    // The primaries take every request while they run.
    let seen: std::collections::HashSet<u16> = (0..30)
        .map(|_| localdr_e2e::worker_port(&get(listen).unwrap()))
        .collect();
    assert_eq!(seen, [base, base + 1].into_iter().collect(), "{seen:?}");

    // Requests all along, through both changes of the pool: none may fail. A replica
    // scaled away leaves the running set a moment before it is stopped, so the balancer
    // follows before any request can reach a replica that is gone.
    let load = SteadyLoad::start(listen);

    // The pool scaled to zero: once the balancer has followed (it reads the pools' status
    // every 250 ms), its only target is the standby and every request goes there.
    std::fs::write(
        tf.path().join("main.tf"),
        failover_config(&sd, base, standby, listen, 0),
    )
    .unwrap();
    tf.apply();
    let targets = || -> Vec<(String, bool)> {
        let out = localdr_e2e::http_get(admin, "/targets", "");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
        let j: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        j.as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        (
                            t["address"].as_str().unwrap_or_default().to_string(),
                            t["backup"].as_bool().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let start = std::time::Instant::now();
    while targets() != [(format!("127.0.0.1:{standby}"), true)] {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the balancer never followed: {:?}",
            targets()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..20 {
        let body = get(listen).expect("a request failed after the failover");
        assert_eq!(localdr_e2e::worker_port(&body), standby);
    }
    tf.assert_empty_plan("after scaling the pool to zero");
    // The replicas scaled away are stopped (a moment after they left the running set).
    let start = std::time::Instant::now();
    while (base..base + 2).any(|p| TcpStream::connect(("127.0.0.1", p)).is_ok()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the replicas scaled away still run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The pool back: the primaries take over again.
    std::fs::write(
        tf.path().join("main.tf"),
        failover_config(&sd, base, standby, listen, 2),
    )
    .unwrap();
    tf.apply();
    let start = std::time::Instant::now();
    while get(listen).is_none_or(|b| localdr_e2e::worker_port(&b) == standby) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the primaries never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    load.finish_without_failures("while the pool scaled");
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
}

fn from_zero_config(sd: &Path, base: u16, listen: u16, extra: &str) -> String {
    format!(
        r#"
{head}resource "localdr_service" "web" {{
  name      = "web"
  command   = ["{w}", "--port", "{{port}}"]
  base_port = {base}
  autoscaling {{
    min_replicas       = 0
    max_replicas       = 2
    target_utilization = 1
    scale_out_cooldown = "1s"
    scale_in_cooldown  = "2s"
  }}
{extra}}}
resource "localdr_balancer" "lb" {{
  name    = "lb"
  listen  = "127.0.0.1:{listen}"
  service = localdr_service.web.name
}}
"#,
        head = localdr_e2e::terraform_head(Some(sd)),
        w = env!("CARGO_BIN_EXE_localdr-test-worker"),
    )
}

/// Scale from zero: an autoscaled pool with `min_replicas = 0` scales in to zero while
/// idle. A request to the balancer in front of it is then held rather than answered 503;
/// it counts as the pool's load, and the replica the autoscaler starts for it answers.
/// A pool held at zero by its schedule is not woken: the balancer answers 503 at once.
#[test]
fn a_request_wakes_an_autoscaled_pool_at_zero() {
    let base = free_ports(2);
    let listen = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let tf = Tf::new(TfVersion::New, &from_zero_config(&sd, base, listen, ""));
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    tf.apply();
    let at_zero = || {
        StateDir::new(&sd)
            .read_status("web")
            .ok()
            .flatten()
            .is_some_and(|s| s.desired == 0 && s.replicas.is_empty())
    };
    localdr_e2e::wait_for(
        "the idle pool to scale in to zero",
        Duration::from_secs(30),
        at_zero,
    );
    assert!(
        TcpStream::connect(("127.0.0.1", base)).is_err(),
        "a replica still answers"
    );
    tf.assert_empty_plan("with the pool scaled in to zero");

    let start = std::time::Instant::now();
    let body = get(listen).expect("the request held for the pool at zero failed");
    println!(
        "FIGURE scale from zero: the first request answered {:?} after it was sent",
        start.elapsed()
    );
    assert_eq!(localdr_e2e::worker_port(&body), base, "{body}");
    assert!(!at_zero(), "the pool did not scale up");
    // Idle again, back to zero.
    localdr_e2e::wait_for(
        "the pool to scale in again",
        Duration::from_secs(30),
        at_zero,
    );

    // At zero by schedule (a window in force all the time): not woken, 503 at once.
    let night = r#"  schedule {
    name         = "night"
    cron         = "* * * * * *"
    min_replicas = 0
    max_replicas = 0
  }
"#;
    std::fs::write(
        tf.path().join("main.tf"),
        from_zero_config(&sd, base, listen, night),
    )
    .unwrap();
    tf.apply();
    localdr_e2e::wait_for(
        "the schedule to hold the pool at zero",
        Duration::from_secs(30),
        || {
            at_zero()
                && StateDir::new(&sd)
                    .read_status("web")
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.schedule.as_deref() == Some("night"))
        },
    );
    // The pool publishes whether load may wake it on every evaluation; give it one.
    std::thread::sleep(Duration::from_millis(600));
    let start = std::time::Instant::now();
    let out = localdr_e2e::http_get(listen, "/", "");
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "held {:?} for a pool its schedule keeps at zero",
        start.elapsed()
    );
    assert!(
        at_zero(),
        "a request woke a pool its schedule keeps at zero"
    );
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
}

fn rolling_config(sd: &Path, base: u16, listen: u16, version: u32) -> String {
    format!(
        r#"
{head}resource "localdr_service" "web" {{
  name      = "web"
  command   = ["{w}", "--port", "{{port}}"]
  env       = {{ VERSION = "{version}" }}
  replicas  = 3
  base_port = {base}
  min_ready = "1s"
}}
resource "localdr_balancer" "lb" {{
  name    = "lb"
  listen  = "127.0.0.1:{listen}"
  service = localdr_service.web.name
  retries = 0 # no retry hides a request sent to a replica that is gone
}}
data "localdr_service_status" "web" {{
  name       = localdr_service.web.name
  depends_on = [localdr_service.web]
}}
output "outdated" {{
  value = data.localdr_service_status.web.outdated
}}
output "replicas_outdated" {{
  value = [for r in data.localdr_service_status.web.replicas : r.outdated]
}}
output "settling" {{
  value = data.localdr_service_status.web.settling
}}
output "replicas_settling" {{
  value = [for r in data.localdr_service_status.web.replicas : r.settling]
}}
"#,
        head = localdr_e2e::terraform_head(Some(sd)),
        w = env!("CARGO_BIN_EXE_localdr-test-worker"),
    )
}

/// A changed process setting (here `env`) replaces a pool's replicas one at a time behind
/// its balancer: apply returns once every replica runs the new settings and has been
/// healthy for `min_ready`, and a request every 5 ms, never retried, sees no failure.
#[test]
fn a_changed_pool_is_replaced_one_replica_at_a_time_without_failed_requests() {
    let base = free_ports(3);
    let listen = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let tf = Tf::new(TfVersion::New, &rolling_config(&sd, base, listen, 1));
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    tf.apply();
    let pids = |ports: &[u16]| -> std::collections::BTreeMap<u16, u32> {
        ports
            .iter()
            .map(|&p| (p, get(p).map(|b| localdr_e2e::worker_pid(&b)).unwrap_or(0)))
            .collect()
    };
    let ports = [base, base + 1, base + 2];
    let before = pids(&ports);
    assert!(before.values().all(|&p| p != 0), "{before:?}");

    let load = SteadyLoad::start(listen);
    std::fs::write(
        tf.path().join("main.tf"),
        rolling_config(&sd, base, listen, 2),
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    tf.apply();
    let took = t0.elapsed();
    // Apply waited for the roll: every replica is a new process, with the new env.
    let after = pids(&ports);
    for p in ports {
        assert_ne!(after[&p], before[&p], "replica on {p} was not replaced");
        let env = std::fs::read(format!("/proc/{}/environ", after[&p])).unwrap();
        assert!(
            env.split(|&b| b == 0).any(|kv| kv == b"VERSION=2"),
            "replica on {p} runs without the new env"
        );
    }
    println!("FIGURE rolling replace of 3 replicas: apply took {took:.1?}");
    // Each of the three stayed healthy for min_ready (1 s) before apply went on.
    assert!(took >= Duration::from_secs(3), "apply took {took:?}");
    assert_eq!(spec_json_service(&sd, "web")["min_ready"], "1s");
    assert_eq!(tf.output("outdated"), "0");
    assert_eq!(
        tf.output_json("replicas_outdated"),
        serde_json::json!([false, false, false])
    );
    // Apply waited for the last replacement's min_ready: none is still settling.
    assert_eq!(tf.output("settling"), "0");
    assert_eq!(
        tf.output_json("replicas_settling"),
        serde_json::json!([false, false, false])
    );
    std::thread::sleep(Duration::from_millis(300));
    load.finish_without_failures("during the rolling replace");
    tf.assert_empty_plan("after the rolling replace");
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
}

#[test]
fn bad_balancer_input_is_a_plan_diagnostic() {
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let body = format!(
        r#"
{head}resource "localdr_balancer" "a" {{
  name      = "a"
  listen    = "127.0.0.1:{}"
  algorithm = "fastest"
  target {{
    address = "127.0.0.1:1"
    weight  = -1
  }}
}}
resource "localdr_balancer" "b" {{
  name   = "b"
  listen = "127.0.0.1:{busy_port}"
}}
"#,
        free_port(),
        head = localdr_e2e::terraform_head(Some(&sd)),
    );
    let tf = Tf::new(TfVersion::New, &body);
    tf.init();
    let flat = tf.plan_errors();
    for want in [
        "unknown algorithm \"fastest\"",
        "weight must be 0 or more; got -1",
        "Set `service` (a localdr_service name to follow) or at least one `target` block",
    ] {
        assert!(flat.contains(want), "missing {want:?} in {flat}");
    }
    // The port in use is checked once the rest is valid.
    let body = body
        .replace("algorithm = \"fastest\"", "")
        .replace("weight  = -1", "weight = 1")
        .replace(
            &format!("listen = \"127.0.0.1:{busy_port}\"\n}}"),
            &format!("listen = \"127.0.0.1:{busy_port}\"\n  target {{\n    address = \"127.0.0.1:1\"\n  }}\n}}"),
        );
    std::fs::write(tf.path().join("main.tf"), body).unwrap();
    let flat = tf.plan_errors();
    assert!(
        flat.contains("Listen address in use") && flat.contains(&format!("127.0.0.1:{busy_port}")),
        "{flat}"
    );
    drop(busy);

    // A port taken between plan and apply: a clear apply error, not a hang. (Terraform
    // plans the create again during apply, so the check there reports it first.)
    let _cleanup = Cleanup(sd.clone());
    let port = free_port();
    let body = format!(
        "{head}resource \"localdr_balancer\" \"c\" {{\n  name   = \"c\"\n  listen = \"127.0.0.1:{port}\"\n  target {{\n    address = \"127.0.0.1:1\"\n  }}\n}}\n",
        head = localdr_e2e::terraform_head(Some(&sd)),
    );
    std::fs::write(tf.path().join("main.tf"), body).unwrap();
    tf.ok(&["plan", "-out", "tfplan", "-no-color"]);
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let a = tf.run(&["apply", "-no-color", "tfplan"]);
    assert_eq!(a.code, 1, "{}", a.all());
    let flat = a.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(&format!("cannot listen on 127.0.0.1:{port}")) && flat.contains("in use"),
        "{flat}"
    );
    drop(taken);
}

fn spec_json_service(sd: &Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(sd.join(format!("services/{name}.json"))).unwrap())
        .unwrap()
}

fn spec_json(sd: &Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(sd.join(format!("balancers/{name}.json"))).unwrap())
        .unwrap()
}

fn tuned(weights: (u32, u32)) -> String {
    format!(
        r#"
  target {{
    address = localdr_service.web.endpoints[0]
    weight  = {}
  }}
  target {{
    address = localdr_service.web.endpoints[1]
    weight  = {}
  }}
  slow_start = "2s"
  healthchecks {{
    active {{
      http_path   = "/health"
      concurrency = 3
      healthy {{
        interval = "1s"
      }}
      unhealthy {{
        interval      = "500ms"
        http_statuses = [500, 503]
      }}
    }}
    passive {{
      unhealthy {{
        http_failures = 3
      }}
    }}
  }}
  circuit_breaker {{
    base_ejection_time = "10s"
    max_ejection_time  = "40s"
    panic_threshold    = 30
  }}
  correlation_id {{
    header_name = "X-Trace-Id"
  }}
  timeouts {{
    read = "5s"
  }}
"#,
        weights.0, weights.1
    )
}

/// Health-check, circuit-breaker and timeout blocks reach the engine, a hand edit of them
/// is drift, and changing weights under load (a hot reload) fails no request.
#[test]
fn tuning_blocks_and_hot_reload_under_load() {
    let base = free_ports(3);
    let listen = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let tf = Tf::new(TfVersion::New, &config(&sd, base, listen, &tuned((1, 1))));
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    tf.apply();
    tf.assert_empty_plan("after creating a tuned balancer");
    let j = spec_json(&sd, "lb");
    let hc = &j["healthchecks"];
    assert_eq!(hc["active"]["http_path"], "/health", "{j}");
    assert_eq!(hc["active"]["concurrency"], 3);
    assert_eq!(hc["active"]["healthy"]["interval"], "1s");
    assert_eq!(hc["active"]["healthy"]["successes"], 2, "default kept");
    assert_eq!(hc["active"]["unhealthy"]["interval"], "500ms");
    assert_eq!(
        hc["active"]["unhealthy"]["http_statuses"],
        serde_json::json!([500, 503])
    );
    assert_eq!(hc["passive"]["unhealthy"]["http_failures"], 3);
    assert_eq!(hc["passive"]["unhealthy"]["timeouts"], 2, "default kept");
    assert_eq!(hc["passive"]["base_ejection_time"], "10s");
    assert_eq!(hc["passive"]["max_ejection_time"], "40s");
    assert_eq!(hc["passive"]["panic_threshold"], 30);
    assert_eq!(hc["passive"]["max_ejection_percent"], 50, "default kept");
    assert_eq!(j["correlation_id"]["header_name"], "X-Trace-Id");
    assert_eq!(j["correlation_id"]["echo_downstream"], true, "default kept");
    assert_eq!(j["timeouts"]["read"], "5s");
    assert_eq!(j["timeouts"]["connect"], "60s");
    assert_eq!(j["timeouts"]["client"], "60s", "default kept");
    assert_eq!(j["slow_start"], "2s");

    // A hand edit inside a nested block is drift.
    let mut e = j.clone();
    e["healthchecks"]["active"]["http_path"] = "/other".into();
    std::fs::write(
        sd.join("balancers/lb.json"),
        serde_json::to_vec(&e).unwrap(),
    )
    .unwrap();
    let p = tf.plan();
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(
        p.stdout.contains("\"/other\" -> \"/health\""),
        "{}",
        p.stdout
    );
    tf.apply();
    tf.assert_empty_plan("after repairing the health checks");

    // Hot reload: loadgen runs while two applies change the weights.
    let lg = std::process::Command::new(localdr_e2e::bin("localdr"))
        .args([
            "loadgen",
            "--url",
            &format!("http://127.0.0.1:{listen}/"),
            "--rps",
            "200",
            "--duration",
            "8s",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for w in [(3, 1), (1, 3)] {
        std::fs::write(
            tf.path().join("main.tf"),
            config(&sd, base, listen, &tuned(w)),
        )
        .unwrap();
        tf.apply();
        assert_eq!(spec_json(&sd, "lb")["targets"][0]["weight"], w.0);
    }
    let out = lg.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("FIGURE loadgen through two weight reloads: {s}");
    assert!(s["requests"].as_u64().unwrap() > 1000, "{s}");
    assert_eq!(s["failed"], 0, "requests failed during the reloads: {s}");
    // `localdr status` shows the counts of the moment (from the admin API), not the status
    // file's, which the agent rewrites for counts alone only every 5 s.
    let st = localdr_e2e::localdr(&["status", "--state-dir", sd.to_str().unwrap(), "--json"]);
    assert_eq!(st.code, 0, "{}", st.all());
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let lb = &st["balancers"][0]["status"];
    let admin: std::net::SocketAddr = lb["admin"].as_str().unwrap().parse().unwrap();
    let sum = |targets: &serde_json::Value| -> u64 {
        targets
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["requests"].as_u64().unwrap())
            .sum()
    };
    let mut c = TcpStream::connect(admin).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET /targets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut live = String::new();
    c.read_to_string(&mut live).unwrap();
    let live: serde_json::Value =
        serde_json::from_str(live.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(
        sum(&lb["targets"]),
        sum(&live),
        "status: {lb}\nadmin: {live}"
    );
    tf.assert_empty_plan("after the reloads");
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
}

fn queue_config(sd: &Path, base: u16, root: &Path, extra: &str) -> String {
    format!(
        r#"
{head}resource "localdr_service" "work" {{
  name      = "work"
  command   = ["{w}", "--port", "{{port}}"]
  replicas  = 2
  base_port = {base}
}}
resource "localdr_balancer" "jobs" {{
  name    = "jobs"
  mode    = "queue"
  service = localdr_service.work.name
  queue {{
    incoming_dir = "{root}/incoming"
    workers_dir  = "{root}/workers"
    errors_dir   = "{root}/errors"
    command      = ["{w}", "process", "--fail-every", "5", "{{file}}"]
    {extra}
  }}
}}
data "localdr_balancer_status" "jobs" {{
  name       = localdr_balancer.jobs.name
  depends_on = [localdr_balancer.jobs]
}}
output "queue" {{
  value = "${{data.localdr_balancer_status.jobs.running}} ${{data.localdr_balancer_status.jobs.queue_processed}} ${{data.localdr_balancer_status.jobs.queue_failed}}"
}}
"#,
        head = localdr_e2e::terraform_head(Some(sd)),
        w = env!("CARGO_BIN_EXE_localdr-test-worker"),
        root = root.display(),
    )
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .count()
        })
        .unwrap_or(0)
}

fn queue_mode(v: TfVersion) {
    let base = free_ports(2);
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let root = tmp.path().join("q");
    let tf = Tf::new(v, &queue_config(&sd, base, &root, ""));
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    tf.apply();
    tf.assert_empty_plan("after creating the queue");
    let r = localdr_e2e::localdr(&[
        "loadgen",
        "--queue-dir",
        root.join("incoming").to_str().unwrap(),
        "--files",
        "20",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let processed = || {
        ["work-0", "work-1"]
            .iter()
            .map(|w| count_files(&root.join("workers").join(w).join("processed")))
            .sum::<usize>()
    };
    let start = std::time::Instant::now();
    while processed() < 16 || count_files(&root.join("errors")) < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "processed {}, errors {:?}",
            processed(),
            std::fs::read_dir(root.join("errors")).map(|r| r.count())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // 16 processed, 4 failed (each with its reason), both workers used, logs written.
    assert_eq!(processed(), 16);
    assert_eq!(count_files(&root.join("errors")), 8, "4 items + 4 reasons");
    let logs = sd.join("logs/jobs-queue");
    assert!(logs.join("load_work-0.jsonl").exists() && logs.join("load_work-1.jsonl").exists());

    // A hand edit of the queue settings is drift; apply repairs.
    let mut j = spec_json(&sd, "jobs");
    j["queue"]["poll_interval"] = "1m".into();
    std::fs::write(
        sd.join("balancers/jobs.json"),
        serde_json::to_vec(&j).unwrap(),
    )
    .unwrap();
    let p = tf.plan();
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(p.stdout.contains("\"1m\" -> \"5s\""), "{}", p.stdout);
    tf.apply();
    tf.assert_empty_plan("after repairing the queue spec");
    // Read after the repair (an in-place reload keeps the dispatcher and its counts).
    assert_eq!(tf.output("queue"), "true 16 4");

    // A dead agent shows; apply brings the dispatcher back and it drains new files.
    let pid = StateDir::new(&sd).agent_info().unwrap().unwrap().pid;
    localdr::runtime::process::signal_pid(pid, libc::SIGKILL).unwrap();
    let start = std::time::Instant::now();
    while StateDir::new(&sd).agent_running() {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = tf.plan();
    assert_eq!(p.code, 2, "{}", p.all());
    tf.apply();
    tf.assert_empty_plan("after the repair");
    std::fs::write(root.join("incoming/late_000001.json"), "{}").unwrap();
    let start = std::time::Instant::now();
    while processed() < 17 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "late file not processed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
}

localdr_e2e::both_terraforms!(queue_mode);

#[test]
fn bad_tuning_and_queue_input_is_a_plan_diagnostic() {
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let body = format!(
        r#"
{head}resource "localdr_balancer" "a" {{
  name       = "a"
  listen     = "127.0.0.1:{}"
  slow_start = "soon"
  target {{
    address = "127.0.0.1:1"
  }}
  healthchecks {{
    active {{
      type        = "udp"
      concurrency = 0
      healthy {{
        http_statuses = [200, 700]
      }}
    }}
  }}
  correlation_id {{
    header_name = "bad header"
  }}
  circuit_breaker {{
    max_ejection_percent = 150
    base_ejection_time   = "1m"
    max_ejection_time    = "30s"
    panic_threshold      = 101
  }}
  timeouts {{
    client = "0s"
  }}
}}
resource "localdr_balancer" "b" {{
  name           = "b"
  mode           = "queue"
  backup_service = "standby"
  target {{
    address = "127.0.0.1:1"
  }}
}}
resource "localdr_balancer" "d" {{
  name           = "d"
  service        = "web"
  backup_service = "web"
}}
resource "localdr_balancer" "e" {{
  name = "e"
  target {{
    address = "127.0.0.1:1"
  }}
  rate_limit {{
    minute              = 10
    requests_per_minute = 10
    burst               = 0
    limit_by            = "header"
  }}
}}
resource "localdr_balancer" "f" {{
  name = "f"
  target {{
    address = "127.0.0.1:1"
  }}
  rate_limit {{
    limit_by    = "ip"
    header_name = "X Key"
    by          = "cookie"
  }}
}}
resource "localdr_balancer" "c" {{
  name   = "c"
  mode   = "queue"
  target {{
    address = "127.0.0.1:1"
  }}
  queue {{
    incoming_dir = "relative/in"
    workers_dir  = "/tmp/w"
    errors_dir   = "/tmp/e"
  }}
}}
"#,
        free_port(),
        head = localdr_e2e::terraform_head(Some(&sd)),
    );
    let tf = Tf::new(TfVersion::New, &body);
    tf.init();
    let flat = tf.plan_errors();
    for want in [
        "type must be \"http\" or \"tcp\"; got \"udp\"",
        "700 is not an HTTP status",
        "concurrency is how many targets are probed at once: 1 to 1000 (default 10); got 0",
        "must be between 0 and 100; got 150",
        "must be between 0 and 100; got 101",
        "correlation_id.header_name \"bad header\" is not an HTTP header name",
        "max_ejection_time (30s) must be at least base_ejection_time (60s)",
        "Invalid slow_start",
        "timeouts.client must be more than 0",
        "mode = \"queue\" needs a queue block",
        "backup_service is for mode = \"http\" (a failover pool)",
        "backup_service \"web\" is also `service`",
        "incoming_dir must be an absolute path",
        "with localdr_balancer.c, on main.tf",
        "minute and requests_per_minute are the same limit",
        "burst must be 1 or more; got 0",
        "limit_by = \"header\" needs header_name",
        "rate_limit needs at least one limit: requests_per_minute (or minute), second or hour",
        "header_name is only used with limit_by = \"header\"",
        "by and limit_by/header_name say the same thing",
        "rate_limit.by must be \"ip\" or \"header:<name>\"; got \"cookie\"",
    ] {
        assert!(flat.contains(want), "missing {want:?} in {flat}");
    }
}

/// Status, `Retry-After` and body of one GET through the balancer with `extra` headers.
fn limited_get(port: u16, extra: &str) -> (u16, u64, String) {
    let r = localdr_e2e::http_get(port, "/", extra);
    let code = r.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let retry_after = r
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (code, retry_after, r)
}

fn rate_limited(sd: &Path, listen: u16, target: u16, rate_limit: &str) -> String {
    format!(
        r#"
{head}resource "localdr_balancer" "rl" {{
  name   = "rl"
  listen = "127.0.0.1:{listen}"
  target {{
    address = "127.0.0.1:{target}"
  }}
  rate_limit {{
{rate_limit}
  }}
}}
"#,
        head = localdr_e2e::terraform_head(Some(sd)),
    )
}

/// Kong's rate-limit shape from HCL: per-second and per-hour limits counted by a header,
/// a client without the header counted by its IP, a hand edit of a limit is drift, and
/// the issue's `requests_per_minute` form plans empty too.
#[test]
fn kong_style_rate_limits_counted_by_a_header() {
    let worker = localdr_e2e::Worker::start(env!("CARGO_BIN_EXE_localdr-test-worker"), free_port());
    let listen = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let kong = "    second      = 2\n    hour        = 5\n    limit_by    = \"header\"\n    header_name = \"X-Api-Key\"";
    let tf = Tf::new(
        TfVersion::New,
        &rate_limited(&sd, listen, worker.port, kong),
    );
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    tf.apply();
    tf.assert_empty_plan("after creating a Kong-style rate limit");
    assert_eq!(
        spec_json(&sd, "rl")["rate_limit"],
        serde_json::json!({ "per_second": 2, "per_hour": 5, "by": "header:X-Api-Key" })
    );

    // Client "a": three at once meet the per-second limit; waiting it out, five in all
    // meet the hourly one, whose Retry-After is the ~12 minutes to its next token.
    let (mut served, mut per_second, mut last) = (0, 0, None);
    for _ in 0..40 {
        let (code, retry_after, r) = limited_get(listen, "X-Api-Key: a\r\n");
        match code {
            200 => served += 1,
            429 if r.contains("rate limit exceeded: 2 per second") => {
                assert_eq!(retry_after, 1, "{r}");
                per_second += 1;
                std::thread::sleep(Duration::from_millis(1100));
            }
            429 => {
                last = Some((retry_after, r));
                break;
            }
            _ => panic!("unexpected answer: {r}"),
        }
    }
    let (retry_after, r) = last.expect("the hourly limit never refused");
    assert!(r.contains("rate limit exceeded: 5 per hour"), "{r}");
    assert!(
        (600..=720).contains(&retry_after),
        "Retry-After {retry_after}: {r}"
    );
    assert_eq!(served, 5, "the hourly limit admits five");
    assert!(
        per_second > 0,
        "three requests at once never met the per-second limit"
    );
    assert!(
        r.to_ascii_lowercase()
            .contains("x-ratelimit-remaining-hour: 0"),
        "{r}"
    );
    // Other clients have buckets of their own: another key, and no key at all (its IP);
    // answers tell them what is left (Kong's headers).
    let (code, _, r) = limited_get(listen, "X-Api-Key: b\r\n");
    assert_eq!(code, 200, "{r}");
    let lower = r.to_ascii_lowercase();
    for h in [
        "x-ratelimit-limit-hour: 5",
        "x-ratelimit-remaining-hour: 4",
        "x-ratelimit-limit-second: 2",
        "x-ratelimit-remaining-second: 1",
        "ratelimit-limit: 2",
        "ratelimit-remaining: 1",
    ] {
        assert!(lower.contains(h), "missing {h:?} in {r}");
    }
    assert_eq!(limited_get(listen, "").0, 200);

    // A hand edit of a limit in the spec is drift, repaired by apply.
    let mut e = spec_json(&sd, "rl");
    e["rate_limit"]["per_hour"] = 500.into();
    std::fs::write(
        sd.join("balancers/rl.json"),
        serde_json::to_vec(&e).unwrap(),
    )
    .unwrap();
    let p = tf.plan();
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(p.stdout.contains("500 -> 5"), "{}", p.stdout);
    tf.apply();
    tf.assert_empty_plan("after repairing the rate limit");

    // The issue's spelling of a per-minute limit: burst defaults to a sixth of it.
    let issue = "    requests_per_minute = 120\n    by                  = \"header:X-Api-Key\"";
    std::fs::write(
        tf.path().join("main.tf"),
        rate_limited(&sd, listen, worker.port, issue),
    )
    .unwrap();
    tf.apply();
    tf.assert_empty_plan("after switching to requests_per_minute");
    assert_eq!(
        spec_json(&sd, "rl")["rate_limit"],
        serde_json::json!({ "requests_per_minute": 120, "burst": 20, "by": "header:X-Api-Key" })
    );
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
}
