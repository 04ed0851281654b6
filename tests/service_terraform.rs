//! `localdr_service` and the agent under the real Terraform binaries, with real worker
//! processes on free loopback ports: scale, self-heal, a killed agent, crash loops,
//! autoscaling, schedules, plan-time validation, and no process left behind.

use localdr::spec::ServiceStatus;
use localdr::statedir::StateDir;
use localdr_e2e::{both_terraforms, free_ports, localdr, wait_for, Cleanup, Tf, TfVersion};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

fn worker() -> &'static str {
    env!("CARGO_BIN_EXE_localdr-test-worker")
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

fn status(sd: &Path, name: &str) -> Option<ServiceStatus> {
    StateDir::new(sd).read_status(name).ok().flatten()
}

/// No live process mentions the state dir (agent) and nothing answers on the ports.
fn assert_nothing_left(sd: &Path, ports: std::ops::Range<u16>) {
    let needle = sd.to_str().unwrap().to_string();
    wait_for(
        "every process of the state dir to exit",
        Duration::from_secs(20),
        || {
            let mut alive = Vec::new();
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
                if !zombie && String::from_utf8_lossy(&cmd).contains(&needle) {
                    alive.push(pid);
                }
            }
            alive.is_empty()
        },
    );
    for p in ports {
        assert!(
            TcpStream::connect_timeout(&([127, 0, 0, 1], p).into(), Duration::from_millis(200))
                .is_err(),
            "port {p} still answers"
        );
    }
}

fn config(sd: &Path, body: &str) -> String {
    format!(
        r#"
{head}{body}
"#,
        head = localdr_e2e::terraform_head(Some(sd))
    )
}

fn web(base: u16, extra: &str) -> String {
    format!(
        r#"
variable "replicas" {{
  default = 3
}}
resource "localdr_service" "web" {{
  name      = "web"
  command   = ["{w}", "--port", "{{port}}"]
  replicas  = var.replicas
  base_port = {base}
  stop_timeout = "5s"
  health_check {{
    path     = "/health"
    interval = "1s"
  }}
  {extra}
}}
output "endpoints" {{
  value = localdr_service.web.endpoints
}}
"#,
        w = worker()
    )
}

fn lifecycle(v: TfVersion) {
    let base = free_ports(5);
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let tf = Tf::new(v, &config(&sd, &web(base, "")));
    let _cleanup = Cleanup(sd.clone());
    tf.init();

    // Three replicas, each answering on its own port.
    tf.apply();
    for p in base..base + 3 {
        let body = get(p, "/").unwrap_or_else(|| panic!("replica on {p} does not answer"));
        assert!(body.contains(&format!("port={p}")), "{body}");
    }
    let eps: Vec<String> =
        serde_json::from_str(&tf.ok(&["output", "-json", "endpoints"]).stdout).unwrap();
    let want: Vec<String> = (base..base + 3).map(|p| format!("127.0.0.1:{p}")).collect();
    assert_eq!(eps, want);
    tf.assert_empty_plan("after creating 3 replicas");
    let pids_before: Vec<Option<u32>> = status(&sd, "web")
        .unwrap()
        .replicas
        .iter()
        .map(|r| r.pid)
        .collect();

    // Scale to five: two more, the first three untouched.
    tf.ok(&["apply", "-auto-approve", "-no-color", "-var", "replicas=5"]);
    for p in base..base + 5 {
        assert!(
            get(p, "/").is_some(),
            "replica on {p} does not answer after scaling"
        );
    }
    let st = status(&sd, "web").unwrap();
    assert_eq!(st.replicas.len(), 5);
    let pids_after: Vec<Option<u32>> = st.replicas.iter().take(3).map(|r| r.pid).collect();
    assert_eq!(
        pids_before, pids_after,
        "scaling out must not restart existing replicas"
    );
    let p = tf.run(&[
        "plan",
        "-detailed-exitcode",
        "-no-color",
        "-var",
        "replicas=5",
    ]);
    assert_eq!(p.code, 0, "plan after scaling:\n{}", p.all());

    // Self-healing: kill -9 a replica; the first restart must come within 1 s.
    let sd_s = sd.to_str().unwrap();
    let killed = localdr(&[
        "chaos",
        "kill",
        "--state-dir",
        sd_s,
        "--service",
        "web",
        "--replica",
        "1",
        "--json",
    ]);
    assert_eq!(killed.code, 0, "{}", killed.all());
    let old_pid = serde_json::from_str::<serde_json::Value>(&killed.stdout).unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    let restarted = wait_for("replica 1 to be restarted", Duration::from_secs(5), || {
        status(&sd, "web").is_some_and(|s| s.replicas[1].pid.is_some_and(|p| p != old_pid))
    });
    println!("FIGURE self-heal: replica restarted {restarted:?} after kill -9");
    assert!(
        restarted < Duration::from_secs(1),
        "restart took {restarted:?}"
    );
    wait_for("replica 1 to answer again", Duration::from_secs(10), || {
        get(base + 1, "/").is_some()
    });

    // Kill the agent: every worker dies with it, plan shows drift, apply repairs.
    let agent_pid = StateDir::new(&sd).agent_info().unwrap().unwrap().pid;
    localdr::runtime::process::signal_pid(agent_pid, libc::SIGKILL).unwrap();
    wait_for(
        "the agent lock to be released",
        Duration::from_secs(5),
        || !StateDir::new(&sd).agent_running(),
    );
    wait_for(
        "workers to die with their agent",
        Duration::from_secs(5),
        || (base..base + 5).all(|p| get(p, "/").is_none()),
    );
    let p = tf.run(&[
        "plan",
        "-detailed-exitcode",
        "-no-color",
        "-var",
        "replicas=5",
    ]);
    assert_eq!(p.code, 2, "a dead agent must show in plan:\n{}", p.all());
    assert!(
        p.stdout.contains("ensure_running") && p.stdout.contains("false -> true"),
        "{}",
        p.stdout
    );
    assert!(
        p.all().contains("no localdr agent is running"),
        "{}",
        p.all()
    );
    tf.ok(&["apply", "-auto-approve", "-no-color", "-var", "replicas=5"]);
    for p in base..base + 5 {
        assert!(get(p, "/").is_some(), "replica on {p} not back after apply");
    }
    let p = tf.run(&[
        "plan",
        "-detailed-exitcode",
        "-no-color",
        "-var",
        "replicas=5",
    ]);
    assert_eq!(p.code, 0, "plan after repair:\n{}", p.all());

    // A hand-edited spec shows as a diff and apply puts it back.
    let spec_path = sd.join("services/web.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    spec["replicas"] = 2.into();
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let p = tf.run(&[
        "plan",
        "-detailed-exitcode",
        "-no-color",
        "-var",
        "replicas=5",
    ]);
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(
        p.stdout.contains("replicas              = 2 -> 5"),
        "{}",
        p.stdout
    );
    tf.ok(&["apply", "-auto-approve", "-no-color", "-var", "replicas=5"]);
    assert_eq!(status(&sd, "web").unwrap().healthy(), 5);

    // A second agent on the same state dir refuses, saying why.
    let second = localdr(&["agent", "--state-dir", sd_s]);
    assert_eq!(second.code, 1, "{}", second.all());
    assert!(
        second.stderr.contains("already running"),
        "{}",
        second.stderr
    );

    // The spec deleted by hand: the resource is gone, plan recreates it, apply does.
    std::fs::remove_file(&spec_path).unwrap();
    let p = tf.run(&[
        "plan",
        "-detailed-exitcode",
        "-no-color",
        "-var",
        "replicas=5",
    ]);
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(p.stdout.contains("will be created"), "{}", p.stdout);
    tf.ok(&["apply", "-auto-approve", "-no-color", "-var", "replicas=5"]);
    assert_eq!(status(&sd, "web").unwrap().healthy(), 5);

    // Agent shutdown (SIGTERM) drains the pool: nothing is left on the ports.
    let r = localdr(&["agent", "stop", "--state-dir", sd_s]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_nothing_left(&sd, base..base + 5);
    tf.ok(&["apply", "-auto-approve", "-no-color", "-var", "replicas=5"]);
    assert!(get(base + 4, "/").is_some());

    // Destroy leaves nothing running: no worker, and the auto-started agent exits.
    tf.ok(&[
        "destroy",
        "-auto-approve",
        "-no-color",
        "-var",
        "replicas=5",
    ]);
    assert_nothing_left(&sd, base..base + 5);
}

both_terraforms!(lifecycle);

#[test]
fn crash_loop_backs_off_then_fails_visibly() {
    let base = free_ports(1);
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let body = format!(
        r#"
resource "localdr_service" "crashy" {{
  name      = "crashy"
  command   = ["{w}", "--crash"]
  base_port = {base}
  restart {{
    max_restarts    = 4
    backoff_initial = "100ms"
    backoff_max     = "2s"
  }}
}}
"#,
        w = worker()
    );
    let tf = Tf::new(TfVersion::New, &config(&sd, &body));
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    let r = tf.run(&["apply", "-auto-approve", "-no-color"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("failed after 4 restarts"), "{}", r.stderr);
    assert!(
        r.stderr.contains("crashing at start"),
        "the log tail: {}",
        r.stderr
    );

    // Exponential backoff: 100, 200, 400, 800 ms between the restarts in the event log.
    let events = localdr::runtime::events::read(&sd.join("events.jsonl")).unwrap();
    let delays: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "restart")
        .map(|e| e.detail.rsplit("in ").next().unwrap().to_string())
        .collect();
    assert_eq!(delays, ["100ms", "200ms", "400ms", "800ms"], "{events:?}");
    assert!(events.iter().any(|e| e.kind == "failed"));

    let s = localdr(&["status", "--state-dir", sd.to_str().unwrap()]);
    assert!(s.stdout.contains("failed"), "{}", s.stdout);
    let p = tf.plan();
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(
        p.stdout.contains("ensure_running") && p.all().contains("failed after 4 restarts"),
        "{}",
        p.all()
    );
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_nothing_left(&sd, base..base + 1);
}

#[test]
fn autoscaling_follows_load_and_schedules_scale_to_zero() {
    let base = free_ports(4);
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let body = web(
        base,
        r#"
  autoscaling {
    min_replicas       = 1
    max_replicas       = 4
    target_utilization = 1
    scale_out_cooldown = "1s"
    scale_in_cooldown  = "3s"
  }
  cost_per_replica_hour = 2
"#,
    );
    let tf = Tf::new(TfVersion::New, &config(&sd, &body));
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    tf.ok(&["apply", "-auto-approve", "-no-color", "-var", "replicas=1"]);
    assert_eq!(status(&sd, "web").unwrap().live(), 1);

    // Synthetic load: 8 clients holding slow requests against the pool's first port.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = get(base, "/sleep?ms=300");
                }
            })
        })
        .collect();
    let grew = wait_for(
        "the pool to grow to max_replicas",
        Duration::from_secs(30),
        || status(&sd, "web").is_some_and(|s| s.desired == 4 && s.healthy() == 4),
    );
    println!("FIGURE autoscaling: 1 -> 4 replicas in {grew:?} under 8 in-flight requests");
    // Terraform does not fight the autoscaler.
    let p = tf.run(&[
        "plan",
        "-detailed-exitcode",
        "-no-color",
        "-var",
        "replicas=1",
    ]);
    assert_eq!(p.code, 0, "plan while autoscaled:\n{}", p.all());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let shrank = wait_for(
        "the pool to shrink after the cooldown",
        Duration::from_secs(30),
        || {
            status(&sd, "web")
                .is_some_and(|s| s.desired == 1 && s.live() == 1 && s.replicas.len() == 1)
        },
    );
    println!("FIGURE autoscaling: back to 1 replica {shrank:?} after the load stopped");

    // Schedules, seconds-level: "night" (0 replicas) at :00/:20/:40, "day" (2) at :10/:30/:50.
    let body = web(
        base,
        r#"
  cost_per_replica_hour = 2
  schedule {
    name         = "night"
    cron         = "0,20,40 * * * * *"
    min_replicas = 0
    max_replicas = 0
  }
  schedule {
    name         = "day"
    cron         = "10,30,50 * * * * *"
    min_replicas = 2
    max_replicas = 2
  }
"#,
    );
    std::fs::write(tf.path().join("main.tf"), config(&sd, &body)).unwrap();
    tf.ok(&["apply", "-auto-approve", "-no-color", "-var", "replicas=2"]);
    wait_for(
        "the night schedule to scale to zero",
        Duration::from_secs(30),
        || status(&sd, "web").is_some_and(|s| s.desired == 0 && s.replicas.is_empty()),
    );
    assert!(
        (base..base + 2).all(|p| get(p, "/").is_none()),
        "scaled to zero but a replica answers"
    );
    let p = tf.run(&[
        "plan",
        "-detailed-exitcode",
        "-no-color",
        "-var",
        "replicas=2",
    ]);
    assert_eq!(
        p.code,
        0,
        "a scheduled scale to zero is not drift:\n{}",
        p.all()
    );
    wait_for(
        "the day schedule to bring 2 back",
        Duration::from_secs(30),
        || status(&sd, "web").is_some_and(|s| s.desired == 2 && s.healthy() == 2),
    );
    assert!(get(base + 1, "/").is_some());
    let cost = localdr(&[
        "cost",
        "--state-dir",
        sd.to_str().unwrap(),
        "--since",
        "1h",
        "--json",
    ]);
    assert_eq!(cost.code, 0, "{}", cost.all());
    let c: serde_json::Value = serde_json::from_str(&cost.stdout).unwrap();
    let web_cost = &c["services"][0];
    assert!(web_cost["replica_hours"].as_f64().unwrap() > 0.0, "{c}");
    assert!(
        web_cost["saved"].as_f64().unwrap() > 0.0,
        "the night window saved nothing: {c}"
    );
    tf.ok(&[
        "destroy",
        "-auto-approve",
        "-no-color",
        "-var",
        "replicas=2",
    ]);
    assert_nothing_left(&sd, base..base + 4);
}

#[test]
fn bad_input_is_a_plan_diagnostic_naming_the_attribute() {
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let body = r#"
resource "localdr_service" "a" {
  name      = "a"
  command   = []
  replicas  = -1
  base_port = 20000
  min_ready = "soon"
  autoscaling {
    min_replicas       = 5
    max_replicas       = 2
    target_utilization = 1
  }
  schedule {
    name         = "night"
    cron         = "0 25 * * *"
    min_replicas = 0
    max_replicas = 0
  }
}
"#;
    let tf = Tf::new(TfVersion::New, &config(&sd, body));
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 1, "{}", p.all());
    for want in [
        "replicas must be 0 or more; got -1",
        "Invalid min_replicas",
        "min_replicas (5) must not be greater than max_replicas (2)",
        "invalid cron \"0 25 * * *\"",
    ] {
        assert!(
            p.stderr.contains(want),
            "missing {want:?} in:\n{}",
            p.stderr
        );
    }
    // command is checked once replicas is valid (one message per attribute).
    std::fs::write(
        tf.path().join("main.tf"),
        config(&sd, &body.replace("replicas  = -1", "replicas  = 1")),
    )
    .unwrap();
    let p = tf.run(&["plan", "-no-color"]);
    assert!(
        p.stderr.contains("Invalid command") && p.stderr.contains("non-empty list"),
        "{}",
        p.stderr
    );
    assert!(
        p.stderr.contains("Invalid min_ready") && p.stderr.contains("min_ready = \"soon\""),
        "{}",
        p.stderr
    );

    // Two services whose port ranges overlap, in one configuration.
    let body = format!(
        r#"
resource "localdr_service" "a" {{
  name      = "a"
  command   = ["{w}", "--port", "{{port}}"]
  replicas  = 3
  base_port = 21000
}}
resource "localdr_service" "b" {{
  name      = "b"
  command   = ["{w}", "--port", "{{port}}"]
  base_port = 21002
}}
"#,
        w = worker()
    );
    std::fs::write(tf.path().join("main.tf"), config(&sd, &body)).unwrap();
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 1, "{}", p.all());
    assert!(
        p.stderr.contains("Overlapping ports") && p.stderr.contains("base_port"),
        "{}",
        p.stderr
    );

    // An external agent that is not running: a diagnostic that says how to start it.
    let body = format!(
        r#"
terraform {{
  required_providers {{
    localdr = {{ source = "localdr/localdr" }}
  }}
}}
provider "localdr" {{
  state_dir = "{}"
  agent     = "external"
}}
resource "localdr_service" "a" {{
  name      = "a"
  command   = ["{w}", "--port", "{{port}}"]
  base_port = {p}
}}
"#,
        sd.display(),
        w = worker(),
        p = free_ports(1)
    );
    std::fs::write(tf.path().join("main.tf"), body).unwrap();
    let r = tf.run(&["apply", "-auto-approve", "-no-color"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("localdr agent --state-dir"),
        "{}",
        r.stderr
    );
    assert!(!StateDir::new(&sd).agent_running());
}
