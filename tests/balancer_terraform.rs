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

fn port_of(body: &str) -> u16 {
    body.split("port=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
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

#[test]
fn balancer_in_front_of_a_pool() {
    let base = free_ports(3);
    let listen = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let tf = Tf::new(TfVersion::New, &config(&sd, base, listen, WEIGHTED));
    let _cleanup = Cleanup(sd.clone());
    tf.init();
    tf.apply();
    tf.assert_empty_plan("after creating the balancer");

    // Weights 3:1:1 over 500 requests: exactly 300/100/100 (smooth weighted round-robin).
    let mut n = std::collections::HashMap::new();
    for _ in 0..500 {
        let body = get(listen).expect("a request through the balancer failed");
        *n.entry(port_of(&body)).or_insert(0) += 1;
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
    let seen: std::collections::HashSet<u16> =
        (0..30).map(|_| port_of(&get(listen).unwrap())).collect();
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
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 1, "{}", p.all());
    let flat = p.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
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
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 1, "{}", p.all());
    let flat = p.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("Listen address in use") && flat.contains(&format!("127.0.0.1:{busy_port}")),
        "{flat}"
    );
    drop(busy);
}
