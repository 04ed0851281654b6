//! The HTTP balancer engine against real worker processes on free loopback ports: weighted
//! spread, failover with retries (no failed request) and re-admission, the backup pool,
//! rate limiting with Retry-After, hot reload under traffic, request ids and the admin API.

use localdr::runtime::balancer;
use localdr::spec::{BalancerSpec, RateLimit, Target};
use localdr_e2e::{free_port, Worker};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A test worker on `port`, killed when dropped.
fn worker(port: u16) -> Worker {
    Worker::start(env!("CARGO_BIN_EXE_localdr-test-worker"), port)
}

/// One request per connection; returns (status, headers+body).
fn get(port: u16, path: &str, extra: &str) -> (u16, String) {
    let out = localdr_e2e::http_get(port, path, extra);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn spec(targets: &[(u16, u32)], backups: &[u16]) -> BalancerSpec {
    let mut s = localdr_e2e::balancer_spec("web", targets);
    s.healthchecks.active.http_path = "/health".into();
    s.healthchecks.active.healthy.interval = "200ms".into();
    s.healthchecks.active.unhealthy.interval = "200ms".into();
    s.backup_targets = backups
        .iter()
        .map(|p| Target {
            address: format!("127.0.0.1:{p}"),
            weight: 1,
        })
        .collect();
    s.retries = 5;
    s.access_log = true;
    s
}

#[test]
fn weights_spread_requests_exactly() {
    let ws: Vec<Worker> = (0..3).map(|_| worker(free_port())).collect();
    let h = balancer::start(
        spec(&[(ws[0].port, 5), (ws[1].port, 1), (ws[2].port, 1)], &[]),
        None,
    )
    .unwrap();
    let mut count = std::collections::HashMap::new();
    for _ in 0..700 {
        let (code, body) = get(h.listen.port(), "/", "");
        assert_eq!(code, 200, "{body}");
        *count.entry(localdr_e2e::worker_port(&body)).or_insert(0) += 1;
    }
    assert_eq!(count[&ws[0].port], 500, "{count:?}");
    assert_eq!(count[&ws[1].port], 100, "{count:?}");
    assert_eq!(count[&ws[2].port], 100, "{count:?}");
    // Admin API.
    let (code, m) = get(h.admin.port(), "/metrics", "");
    assert_eq!(code, 200);
    assert!(
        m.contains("localdr_requests_total{balancer=\"web\",class=\"2xx\"} 700"),
        "{m}"
    );
    let (code, t) = get(h.admin.port(), "/targets", "");
    assert_eq!(code, 200);
    assert!(t.contains("\"requests\":500"), "{t}");
    // Request ids: generated when absent, kept when given.
    let (_, r) = get(h.listen.port(), "/", "X-Request-ID: abc-123\r\n");
    assert!(
        r.to_ascii_lowercase().contains("x-request-id: abc-123"),
        "{r}"
    );
    let (_, r) = get(h.listen.port(), "/", "");
    let id = r
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-request-id: ")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no request id in {r}"));
    let id = id.trim();
    assert!(
        id.len() == 24 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id:?}"
    );
    let (_, r2) = get(h.listen.port(), "/", "");
    assert!(!r2.contains(id), "request ids repeat: {id}");
    // Both go upstream; X-Forwarded-For gains the client's address.
    let (_, r) = get(
        h.listen.port(),
        "/headers",
        "X-Request-ID: up-1\r\nX-Forwarded-For: 10.0.0.9\r\n",
    );
    let r = r.to_ascii_lowercase();
    assert!(r.contains("x-request-id: up-1\n"), "{r}");
    assert!(r.contains("x-forwarded-for: 10.0.0.9, 127.0.0.1\n"), "{r}");
    h.stop();
}

#[test]
fn failover_without_failed_requests_then_readmission_and_backup() {
    let mut ws: Vec<Worker> = (0..3).map(|_| worker(free_port())).collect();
    let backup = worker(free_port());
    let ports: Vec<u16> = ws.iter().map(|w| w.port).collect();
    let h = balancer::start(
        spec(
            &[(ports[0], 1), (ports[1], 1), (ports[2], 1)],
            &[backup.port],
        ),
        None,
    )
    .unwrap();
    let lb = h.listen.port();
    let mut failed = 0;
    for i in 0..600 {
        if i == 100 {
            ws[1].kill(); // kill -9 one target under load
        }
        let (code, _) = get(lb, "/", "");
        if code != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "requests failed although retries were possible");
    let targets = h.lb.targets();
    let dead = targets
        .iter()
        .find(|t| t.address.ends_with(&format!(":{}", ports[1])))
        .unwrap();
    assert!(
        !dead.available(Instant::now()),
        "the dead target must be out of rotation"
    );
    // It comes back on the same port: active checks re-admit it.
    ws[1] = worker(ports[1]);
    let start = Instant::now();
    while !dead.available(Instant::now()) {
        assert!(start.elapsed() < Duration::from_secs(10), "not re-admitted");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "FIGURE balancer: target re-admitted {:?} after it came back",
        start.elapsed()
    );
    let seen: std::collections::HashSet<u16> = (0..30)
        .map(|_| localdr_e2e::worker_port(&get(lb, "/", "").1))
        .collect();
    assert!(seen.contains(&ports[1]), "{seen:?}");
    assert!(
        !seen.contains(&backup.port),
        "the backup serves only when all primaries are down"
    );
    // Every primary down: the backup serves.
    for w in ws.iter_mut() {
        w.kill();
    }
    let mut served_by_backup = 0;
    for _ in 0..50 {
        let (code, body) = get(lb, "/", "");
        assert_eq!(code, 200, "{body}");
        if localdr_e2e::worker_port(&body) == backup.port {
            served_by_backup += 1;
        }
    }
    assert_eq!(served_by_backup, 50);
    h.stop();
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let w = worker(free_port());
    let mut s = spec(&[(w.port, 1)], &[]);
    s.rate_limit = Some(RateLimit {
        requests_per_minute: Some(100),
        burst: Some(5),
        by: "ip".into(),
        ..Default::default()
    });
    let h = balancer::start(s, None).unwrap();
    let codes: Vec<u16> = (0..6).map(|_| get(h.listen.port(), "/", "").0).collect();
    assert_eq!(codes, [200, 200, 200, 200, 200, 429]);
    let (code, r) = get(h.listen.port(), "/", "");
    assert_eq!(code, 429);
    assert!(r.to_ascii_lowercase().contains("retry-after: 1"), "{r}");
    assert!(r.contains("rate limit exceeded: 100 per minute"), "{r}");
    h.stop();
}

#[test]
fn hot_reload_of_weights_under_traffic_drops_nothing() {
    let ws: Vec<Worker> = (0..2).map(|_| worker(free_port())).collect();
    let h = balancer::start(spec(&[(ws[0].port, 1), (ws[1].port, 1)], &[]), None).unwrap();
    let port = h.listen.port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut failed = 0;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if get(port, "/sleep?ms=5", "").0 != 200 {
                        failed += 1;
                    }
                    n += 1;
                }
                (n, failed)
            })
        })
        .collect();
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(25));
        let s = spec(&[(ws[0].port, 1 + i % 4), (ws[1].port, 4 - i % 4)], &[]);
        h.lb.reload(
            BalancerSpec {
                listen: h.lb.config().listen.clone(),
                ..s
            },
            Default::default(),
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut n, mut failed) = (0, 0);
    for c in clients {
        let (a, b) = c.join().unwrap();
        n += a;
        failed += b;
    }
    assert!(n > 50, "too little traffic to mean anything: {n}");
    assert_eq!(failed, 0, "{failed} of {n} requests failed during reloads");
    h.stop();
}

/// The drill: `localdr loadgen` running GETs through the balancer while one target
/// is killed with SIGKILL; retries hide it completely.
#[test]
fn loadgen_sees_no_failure_when_a_target_is_killed() {
    let mut ws: Vec<Worker> = (0..3).map(|_| worker(free_port())).collect();
    let ports: Vec<(u16, u32)> = ws.iter().map(|w| (w.port, 1)).collect();
    let h = balancer::start(spec(&ports, &[]), None).unwrap();
    let lg = Command::new(localdr_e2e::bin("localdr"))
        .args([
            "loadgen",
            "--url",
            &format!("http://127.0.0.1:{}/", h.listen.port()),
        ])
        .args(["--rps", "200", "--duration", "3s", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    ws[0].kill();
    let out = lg.wait_with_output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("FIGURE loadgen through a kill -9: {s}");
    assert!(s["requests"].as_u64().unwrap() > 300, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(out.status.code(), Some(0));
    h.stop();
}

/// A raw target on a free port (its threads live as long as the test process): answers
/// each request `200 ok` once its whole Content-Length body is in; with `silent_gets`, a GET
/// gets no answer at all and the connection stays open until the balancer closes it.
fn body_reading_target(silent_gets: bool) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let (mut len, mut first) = (0usize, String::new());
                    loop {
                        let mut h = String::new();
                        if std::io::BufRead::read_line(&mut r, &mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if first.is_empty() {
                            first = h.clone();
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    if silent_gets && first.starts_with("GET") {
                        let _ = r.read_to_end(&mut Vec::new());
                        return;
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
            });
        }
    });
    port
}

/// Kong's write timeout: a client that stops sending a (streamed) request body gets 408
/// after `timeouts.write`, long before the read timeout, and the target is not blamed.
#[test]
fn a_stalled_upload_gets_408_after_the_write_timeout() {
    let port = body_reading_target(false);
    let mut s = spec(&[(port, 1)], &[]);
    s.healthchecks.active.healthy.interval = "0s".into();
    s.healthchecks.active.unhealthy.interval = "0s".into();
    s.timeouts.write = "300ms".into();
    let h = balancer::start(s, None).unwrap();
    let mut c = TcpStream::connect(h.listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let t0 = Instant::now();
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        .unwrap();
    c.write_all(&[b'a'; 70_000]).unwrap();
    // ... and then nothing more.
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    let waited = t0.elapsed();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(waited < Duration::from_secs(5), "408 after {waited:?}");
    println!(
        "FIGURE balancer: stalled upload answered 408 after {waited:?} (write timeout 300 ms)"
    );
    // The target was not blamed, and a complete upload still goes through.
    let (code, t) = get(h.admin.port(), "/targets", "");
    assert_eq!(code, 200);
    assert!(
        t.contains("\"failures\":0") && t.contains("\"available\":true"),
        "{t}"
    );
    let mut c = TcpStream::connect(h.listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    c.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    c.write_all(&[b'a'; 70_000]).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    h.stop();
}

/// `timeouts.read`: a target that never answers gets 504 once it has passed, and the time
/// counts from when the request could go out, so a client's slow (small, buffered) upload
/// does not use up the target's time.
#[test]
fn the_read_timeout_gives_504_and_counts_from_the_end_of_the_upload() {
    let port = body_reading_target(true);
    let mut s = spec(&[(port, 1)], &[]);
    s.healthchecks.active.healthy.interval = "0s".into();
    s.healthchecks.active.unhealthy.interval = "0s".into();
    s.timeouts.read = "600ms".into();
    s.retries = 0;
    let h = balancer::start(s, None).unwrap();

    // A 10-byte upload spread over 900 ms, then an answer at once: 200, not 504.
    let mut c = TcpStream::connect(h.listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    c.write_all(b"POST /slow-upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    c.write_all(b"world").unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // A target that says nothing: 504 after the read timeout.
    let t0 = Instant::now();
    let (code, out) = get(h.listen.port(), "/silent", "");
    let waited = t0.elapsed();
    assert_eq!(code, 504, "{out}");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(5),
        "504 after {waited:?}"
    );
    h.stop();
}

/// Read until the peer closes; returns what arrived and when the close came.
fn read_until_closed(c: &mut TcpStream, t0: Instant) -> (String, Duration) {
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection still open after {:?}: {e}", t0.elapsed()),
        }
    }
    (String::from_utf8_lossy(&out).to_string(), t0.elapsed())
}

#[test]
fn silent_slow_and_idle_clients_are_closed_after_the_client_timeout() {
    let w = worker(free_port());
    let mut s = spec(&[(w.port, 1)], &[]);
    s.timeouts.client = "400ms".into();
    let h = balancer::start(s, None).unwrap();
    let within = |what: &str, d: Duration| {
        assert!(
            d >= Duration::from_millis(300) && d < Duration::from_secs(5),
            "{what}: closed after {d:?}, want about 400 ms"
        );
        println!("FIGURE balancer: {what} closed after {d:?} (client timeout 400 ms)");
    };

    // Connects and says nothing.
    let mut c = TcpStream::connect(h.listen).unwrap();
    let (got, d) = read_until_closed(&mut c, Instant::now());
    assert!(!got.contains("HTTP/1.1 200"), "{got}");
    within("a silent client", d);

    // Sends half a request head, then stalls (slowloris).
    let mut c = TcpStream::connect(h.listen).unwrap();
    let t0 = Instant::now();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let (got, d) = read_until_closed(&mut c, t0);
    assert!(!got.contains("HTTP/1.1 200"), "{got}");
    within("a half-sent request head", d);

    // A head sent in pieces within the timeout is served, and the keep-alive connection is
    // closed once it has been idle for the timeout.
    let mut c = TcpStream::connect(h.listen).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    c.write_all(b"Host: x\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, d) = read_until_closed(&mut c, Instant::now());
    within("an idle keep-alive connection", d);

    // The balancer itself is fine.
    assert_eq!(get(h.listen.port(), "/", "").0, 200);
    h.stop();
}

/// A raw target for protocol switches, on a free port, for `conns` connections (its
/// listener closes after the last). A request stating `Connection: upgrade` and
/// `Upgrade: websocket` gets a 101, then `welcome`, then each piece echoed in capitals,
/// and `bye` once the client ends its side. Any other request gets 200 and a body saying
/// whether an `upgrade` header reached the target.
fn switching_target(conns: usize) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(conns).flatten() {
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut head = String::new();
                    loop {
                        let mut h = String::new();
                        if std::io::BufRead::read_line(&mut r, &mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        head.push_str(&h.to_ascii_lowercase());
                    }
                    let has = |line: &str| head.lines().any(|l| l.trim_end() == line);
                    if has("connection: upgrade") && has("upgrade: websocket") {
                        let _ = w.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                              Connection: Upgrade\r\n\r\nwelcome",
                        );
                        let mut buf = [0u8; 1024];
                        loop {
                            match r.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    let _ = w.write_all(&buf[..n].to_ascii_uppercase());
                                }
                            }
                        }
                        let _ = w.write_all(b"bye");
                        return;
                    }
                    let body = if head.contains("\nupgrade:") {
                        "upgrade-header"
                    } else {
                        "plain"
                    };
                    let _ = write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    port
}

/// Read an answer head (up to the blank line) byte by byte, so what follows it stays
/// in the socket.
fn read_head(c: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            c.read(&mut b).unwrap(),
            1,
            "closed inside the head: {head:?}"
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// WebSocket-style switches go through: the target's 101 reaches the client with the
/// request id, bytes then flow both ways unchanged (including what the target sent right
/// behind its 101), each side's end is passed on, and the target counts the tunnel as in
/// flight until it closes. An `Upgrade` header without `Connection: upgrade` is not a
/// request to switch and is dropped; a tunnel silent for the read timeout is closed.
#[test]
fn websocket_upgrades_are_tunnelled_both_ways_until_either_side_ends() {
    let port = switching_target(100);
    let mut s = spec(&[(port, 1)], &[]);
    s.healthchecks.active.healthy.interval = "0s".into();
    s.healthchecks.active.unhealthy.interval = "0s".into();
    s.timeouts.read = "1s".into();
    let h = balancer::start(s, None).unwrap();
    let lb_port = h.listen.port();
    let in_flight = || {
        h.lb.targets()[0]
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    let mut c = TcpStream::connect(("127.0.0.1", lb_port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\
          Upgrade: websocket\r\nX-Request-ID: ws-1\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut c);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nx-request-id: ws-1\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let mut b = [0u8; 7];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"welcome");
    for word in ["ping", "hello there"] {
        c.write_all(word.as_bytes()).unwrap();
        let mut b = vec![0u8; word.len()];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b, word.to_uppercase().as_bytes());
    }
    assert_eq!(in_flight(), 1, "an open tunnel is a request in flight");
    // The client ends its side: the target hears it, says bye and ends too.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = String::new();
    c.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye");
    let t0 = Instant::now();
    while in_flight() != 0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        in_flight(),
        0,
        "the closed tunnel still counts as in flight"
    );

    // `Upgrade` alone is hop-by-hop and asks for nothing.
    let (code, body) = get(lb_port, "/", "Upgrade: websocket\r\n");
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("plain"), "{body}");

    // A tunnel that carries nothing is closed after the read timeout (1 s here).
    let mut c = TcpStream::connect(("127.0.0.1", lb_port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    assert!(read_head(&mut c).starts_with("http/1.1 101"));
    let (rest, after) = read_until_closed(&mut c, t0);
    assert_eq!(rest, "welcome");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(8),
        "closed after {after:?}"
    );
    h.stop();
}
