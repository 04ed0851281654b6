//! The admin API, on its own loopback port: `GET /health`, `/status`, `/targets`,
//! `/metrics` (Prometheus text), and `POST /targets/<addr>/drain`.

use super::proxy::Body;
use super::{Balancer, BUCKETS};

use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(super::proxy::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

pub fn targets_json(lb: &Balancer) -> serde_json::Value {
    let now = Instant::now();
    serde_json::Value::Array(
        lb.targets()
            .iter()
            .map(|t| {
                serde_json::json!({
                    "address": t.address,
                    "weight": t.weight,
                    "backup": t.backup,
                    "healthy": t.is_healthy(),
                    "ejected": t.is_ejected(now),
                    "available": t.available(now),
                    "draining": t.draining.load(Ordering::Relaxed),
                    "in_flight": t.in_flight.load(Ordering::Relaxed),
                    "requests": t.requests.load(Ordering::Relaxed),
                    "failures": t.failures.load(Ordering::Relaxed),
                    "ejections": t.ejections(),
                })
            })
            .collect(),
    )
}

fn metrics(lb: &Balancer) -> String {
    let m = &lb.metrics;
    let n = &lb.name;
    let mut s = String::new();
    let _ = writeln!(s, "# TYPE localdr_requests_total counter");
    for (i, c) in ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .enumerate()
    {
        let v = m.by_class[i].load(Ordering::Relaxed);
        if i > 0 {
            let _ = writeln!(
                s,
                "localdr_requests_total{{balancer=\"{n}\",class=\"{c}\"}} {v}"
            );
        }
    }
    let _ = writeln!(s, "# TYPE localdr_retries_total counter");
    let _ = writeln!(
        s,
        "localdr_retries_total{{balancer=\"{n}\"}} {}",
        m.retries.load(Ordering::Relaxed)
    );
    let _ = writeln!(s, "# TYPE localdr_rate_limited_total counter");
    let _ = writeln!(
        s,
        "localdr_rate_limited_total{{balancer=\"{n}\"}} {}",
        m.rate_limited.load(Ordering::Relaxed)
    );
    let _ = writeln!(s, "# TYPE localdr_request_duration_seconds histogram");
    let mut cum = 0;
    for (i, le) in BUCKETS.iter().enumerate() {
        cum += m.latency[i].load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "localdr_request_duration_seconds_bucket{{balancer=\"{n}\",le=\"{le}\"}} {cum}"
        );
    }
    cum += m.latency[BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        s,
        "localdr_request_duration_seconds_bucket{{balancer=\"{n}\",le=\"+Inf\"}} {cum}"
    );
    let _ = writeln!(
        s,
        "localdr_request_duration_seconds_sum{{balancer=\"{n}\"}} {}",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        s,
        "localdr_request_duration_seconds_count{{balancer=\"{n}\"}} {cum}"
    );
    let _ = writeln!(s, "# TYPE localdr_target_up gauge");
    let now = Instant::now();
    for t in lb.targets().iter() {
        let _ = writeln!(
            s,
            "localdr_target_up{{balancer=\"{n}\",target=\"{}\",backup=\"{}\"}} {}",
            t.address,
            t.backup,
            u8::from(t.available(now))
        );
    }
    s
}

async fn route(
    lb: Arc<Balancer>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    let path = req.uri().path().to_string();
    let now = Instant::now();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => {
            let up = lb.targets().iter().any(|t| t.available(now));
            if up {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no target available\n".into(),
                )
            }
        }
        (&Method::GET, "/targets") => reply(
            StatusCode::OK,
            "application/json",
            targets_json(&lb).to_string(),
        ),
        (&Method::GET, "/status") => {
            let cfg = lb.config();
            let m = &lb.metrics;
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::json!({
                    "name": lb.name,
                    "listen": cfg.listen,
                    "algorithm": cfg.algorithm,
                    "requests": m.requests.load(Ordering::Relaxed),
                    "retries": m.retries.load(Ordering::Relaxed),
                    "rate_limited": m.rate_limited.load(Ordering::Relaxed),
                    "targets": targets_json(&lb),
                })
                .to_string(),
            )
        }
        (&Method::GET, "/metrics") => {
            reply(StatusCode::OK, "text/plain; version=0.0.4", metrics(&lb))
        }
        (&Method::POST, p) if p.starts_with("/targets/") && p.ends_with("/drain") => {
            let addr = &p["/targets/".len()..p.len() - "/drain".len()];
            match lb.targets().iter().find(|t| t.address == addr) {
                Some(t) => {
                    t.draining.store(true, Ordering::Relaxed);
                    // In-flight requests finish; wait (bounded) so the caller knows when.
                    let start = Instant::now();
                    let limit = lb.drain_timeout();
                    while t.in_flight.load(Ordering::Relaxed) > 0 && start.elapsed() < limit {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    reply(StatusCode::OK, "application/json", serde_json::json!({"drained": addr, "in_flight": t.in_flight.load(Ordering::Relaxed)}).to_string())
                }
                None => reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!("no target {addr}\n"),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "GET /health /status /targets /metrics; POST /targets/<addr>/drain\n".into(),
        ),
    })
}

pub async fn serve(
    lb: Arc<Balancer>,
    l: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = super::accept::AcceptBackoff::default();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = l.accept() => {
                let s = match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        backoff.failed(&format!("balancer {} admin", lb.name), &e).await;
                        continue;
                    }
                };
                backoff.ok();
                let lb = lb.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| route(lb.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        }
    }
}
