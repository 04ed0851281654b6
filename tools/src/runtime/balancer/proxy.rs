//! Forwarding one request: rate limit, request id, pick a target, send it on one of the
//! target's pooled HTTP/1.1 connections (`upstream`), retry elsewhere when that is safe,
//! and stream the answer back.
//!
//! Bodies stream both ways. A request body of up to 64 KiB is kept in memory so the
//! request can be retried; a bigger one streams straight through and is retried only when
//! the connection to the target could not even be made (nothing was sent).
//!
//! This is the hot path: no per-request parsing of what can be parsed once (target
//! authorities, the client's address), no boxed bodies, headers cloned rather than
//! rebuilt.

use super::targets::{Outcome, TargetState};
use super::upstream::{self, SendError};
use super::Balancer;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri;
use hyper::{Request, Response, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body the balancer sends: bytes it made (or buffered), or one it streams through.
pub enum Body {
    Full(Option<Bytes>),
    /// A client's request body streamed to the target, under the write timeout.
    Timed(Timed),
    /// A target's answer, read straight from its connection (pooled or not).
    Pooled(super::upstream::Pooled),
}

fn boxed<T>(p: Poll<Option<Result<T, hyper::Error>>>) -> Poll<Option<Result<T, BoxError>>> {
    p.map(|o| o.map(|r| r.map_err(Into::into)))
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Body::Timed(t) => t.poll_frame(cx),
            Body::Pooled(p) => p.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Body::Timed(t) => t.inner.is_end_stream(),
            Body::Pooled(p) => p.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Timed(t) => t.inner.size_hint(),
            Body::Pooled(p) => p.size_hint(),
        }
    }
}

/// Kong's `write_timeout` for a request body streamed to a target: the longest the client
/// may leave it waiting for the next bytes. A stalled upload is the client's doing: it is
/// answered 408, and the target is not blamed (no passive-check failure).
pub struct Timed {
    inner: Incoming,
    limit: std::time::Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl Timed {
    fn new(
        inner: Incoming,
        limit: std::time::Duration,
    ) -> (Timed, Arc<std::sync::atomic::AtomicBool>) {
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t = Timed {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            stalled: stalled.clone(),
        };
        (t, stalled)
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match hyper::body::Body::poll_frame(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                let next = tokio::time::Instant::now() + self.limit;
                self.sleep.as_mut().reset(next);
                boxed(Poll::Ready(r))
            }
            Poll::Pending => {
                if self.sleep.as_mut().poll(cx).is_ready() {
                    self.stalled.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(
                        "the client stopped sending the request body".into()
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

const RETRY_BODY_LIMIT: u64 = 64 * 1024;

pub fn full(b: impl Into<Bytes>) -> Body {
    Body::Full(Some(b.into()))
}

fn simple(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1). Names,
/// not strings: a lookup by string parses it first, on every request.
pub(super) fn hop_by_hop() -> [&'static HeaderName; 8] {
    use hyper::header::{
        CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, UPGRADE,
    };
    [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
        &TE,
        &TRAILER,
        &UPGRADE,
    ]
}

/// Drop the hop-by-hop headers: the fixed ones, and any the `Connection` header names
/// (RFC 9110 §7.6.1: `Connection: close, X-Secret` makes `X-Secret` the sender's business
/// with this hop only). One pass over the names present says which fixed ones are there,
/// so only those cost a lookup (on every request and answer); no allocation unless
/// `Connection` names something.
fn strip_hop_by_hop(h: &mut hyper::HeaderMap) {
    let fixed = hop_by_hop();
    let mut present = 0u16;
    for k in h.keys() {
        if let Some(i) = fixed.iter().position(|n| *n == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for v in h.get_all(hyper::header::CONNECTION) {
        for t in v.as_bytes().split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.is_empty()
                || t.eq_ignore_ascii_case(b"close")
                || t.eq_ignore_ascii_case(b"keep-alive")
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(t) {
                named.push(n);
            }
        }
    }
    for n in named {
        h.remove(n);
    }
    for (i, n) in fixed.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(*n);
        }
    }
}

/// Run the tunnel of a switched connection in a task of its own, once hyper has sent the
/// 101 and handed over the client's connection. The target counts the tunnel as a request
/// in flight while it lasts (so least-connections sees long-lived WebSockets), and its
/// idle limit is the read timeout, as nginx's `proxy_read_timeout` is for WebSockets.
fn tunnel(
    lb: &Arc<Balancer>,
    target: Arc<TargetState>,
    on: hyper::upgrade::OnUpgrade,
    io: tokio::net::TcpStream,
    early: bytes::BytesMut,
    request_id: &str,
) {
    let idle = lb.read_timeout();
    let name = lb.name.clone();
    let id = request_id.to_string();
    target.in_flight.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let r = match on.await {
            Ok(client) => {
                super::tunnel::run(hyper_util::rt::TokioIo::new(client), io, early, idle).await
            }
            Err(e) => Err(std::io::Error::other(e)),
        };
        target.in_flight.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(c) => {
                tracing::debug!(balancer = %name, request_id = %id, target = %target.address, up = c.up, down = c.down, "tunnel closed")
            }
            Err(e) => {
                tracing::debug!(balancer = %name, request_id = %id, target = %target.address, "tunnel ended: {e}")
            }
        }
    });
}

/// nginx's `lingering_time`: how long the rest of an upload the target did not want is
/// read and dropped.
const LINGER: std::time::Duration = std::time::Duration::from_secs(30);

/// Read and drop what is left of a client's upload after the target answered without
/// reading all of it (a 413, a 401, an error). Closing instead would leave unread data on
/// the client's connection, and the kernel would reset it, very likely before a client
/// that sends its whole upload before reading has read the answer (nginx's lingering
/// close). Bounded by [`LINGER`]; a client that stops sending is cut off by the write
/// timeout the body carries. Holding the body keeps hyper reading the connection.
fn linger(mut body: Body) {
    if hyper::body::Body::is_end_stream(&body) {
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

pub(super) fn idempotent(m: &hyper::Method) -> bool {
    matches!(
        *m,
        hyper::Method::GET
            | hyper::Method::HEAD
            | hyper::Method::OPTIONS
            | hyper::Method::PUT
            | hyper::Method::DELETE
            | hyper::Method::TRACE
    )
}

enum ReqBody {
    Buffered(Bytes),
    Stream(Option<Incoming>),
}

/// The protocol a request asks to switch to: its `Upgrade` value, when `Connection` names
/// `upgrade` as RFC 9110 §7.8 requires (an `Upgrade` header alone is not a request to
/// switch, and is dropped like any hop-by-hop header).
fn upgrade_asked(h: &hyper::HeaderMap) -> Option<HeaderValue> {
    let proto = h.get(hyper::header::UPGRADE)?;
    h.get_all(hyper::header::CONNECTION)
        .iter()
        .any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
        .then(|| proto.clone())
}

pub async fn handle(
    lb: Arc<Balancer>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    peer_ip: HeaderValue,
) -> Result<Response<Body>, hyper::Error> {
    let start = Instant::now();
    let cfg = lb.config();
    // The client's id when it sent a usable one, else a new one.
    let corr = lb.correlation();
    let rid = match req.headers().get(&corr.name) {
        Some(v) if v.to_str().is_ok() => v.clone(),
        _ => lb.next_request_id(),
    };
    let request_id = rid.to_str().unwrap_or("-");
    // Answers the balancer makes or passes on carry the id, unless told not to.
    let echo_id = |h: &mut hyper::HeaderMap, rid: &HeaderValue| {
        if corr.echo {
            h.insert(&corr.name, rid.clone());
        }
    };

    // Over a rate limit: 429 at once. Under it: what is left, for the answer's headers.
    let quota = match lb.limiter() {
        None => None,
        Some(guard) => {
            let rl = guard
                .as_ref()
                .as_ref()
                .expect("limiter() only returns a set limiter");
            match rl.check(&rl.key(req.headers(), peer.ip()), start) {
                Ok(q) => Some(q),
                Err(no) => {
                    lb.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let mut r = simple(
                        StatusCode::TOO_MANY_REQUESTS,
                        &format!("rate limit exceeded: {} per {}", no.limit, no.unit),
                    );
                    let h = r.headers_mut();
                    h.insert("retry-after", HeaderValue::from(no.retry_after()));
                    no.quota.write(h);
                    echo_id(h, &rid);
                    lb.finish(request_id.as_bytes(), &peer, "-", 429, start, 0);
                    return Ok(r);
                }
            }
        }
    };
    // ... and the client's quota when a rate limit is set.
    let echo = |h: &mut hyper::HeaderMap, rid: &HeaderValue| {
        echo_id(h, rid);
        if let Some(q) = &quota {
            q.write(h);
        }
    };

    // A WebSocket handshake or other protocol switch: the client's connection is handed
    // over once a target answers 101 (see `tunnel`).
    let mut upgrade = upgrade_asked(req.headers());
    let mut on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // Kept in memory (so it can be sent again) when small: a stated length within the
    // limit, or no framing at all. Typed names: a lookup by string parses it first.
    let small = || match parts.headers.get(hyper::header::CONTENT_LENGTH) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= RETRY_BODY_LIMIT),
        None => !parts.headers.contains_key(hyper::header::TRANSFER_ENCODING),
    };
    let mut first_attempt = start;
    let mut body = if hyper::body::Body::is_end_stream(&body) {
        ReqBody::Buffered(Bytes::new())
    } else if small() {
        match body.collect().await {
            Ok(b) => {
                // The target's time starts once the client's upload is in.
                first_attempt = Instant::now();
                ReqBody::Buffered(b.to_bytes())
            }
            Err(_) => {
                return Ok(simple(
                    StatusCode::BAD_REQUEST,
                    "could not read the request body",
                ))
            }
        }
    } else {
        ReqBody::Stream(Some(body))
    };
    if matches!(body, ReqBody::Stream(_)) {
        // A switch is asked with a small body or none; a big one is sent as a plain request.
        upgrade = None;
        on_upgrade = None;
    }
    let safe_to_repeat = idempotent(&parts.method) && matches!(body, ReqBody::Buffered(_));
    let mut stalled: Option<Arc<std::sync::atomic::AtomicBool>> = None;
    // The client's streamed body, under the write timeout, once an attempt has made it.
    let mut streamed: Option<Body> = None;
    // What every attempt sends: the client's headers without the hop-by-hop ones, plus
    // X-Forwarded-For and the request id.
    let xff = match parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", peer.ip())).unwrap_or(peer_ip),
        None => peer_ip,
    };
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    headers.insert(&X_FORWARDED_FOR, xff);
    headers.insert(&corr.name, rid.clone());
    // Origin-form to the target; the client's Host goes along (or the target's, if none).
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));

    // Targets this request went to, without allocating: retries beyond 8 may revisit one.
    let mut tried = [0usize; 8];
    let mut n_tried = 0;
    let mut retries = 0u32;
    let mut held = false;
    loop {
        // An attempt's deadline counts from when it starts; the first one's start is a
        // clock reading already made.
        let attempt_start = if retries == 0 && !held {
            first_attempt
        } else {
            Instant::now()
        };
        let Some(target) = lb.choose_at(&tried[..n_tried], attempt_start) else {
            if !held && retries == 0 && lb.await_pool(first_attempt).await.is_some() {
                held = true;
                continue;
            }
            lb.finish(request_id.as_bytes(), &peer, "-", 503, start, retries);
            return Ok(simple(
                StatusCode::SERVICE_UNAVAILABLE,
                "no target available",
            ));
        };
        if n_tried < tried.len() {
            tried[n_tried] = target.id();
            n_tried += 1;
        }
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        target.requests.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::from_std(attempt_start + lb.read_timeout());
        let sent = match &mut body {
            // Borrowed: a retry sends the same head and body again without copying them.
            ReqBody::Buffered(b) => {
                let out = upstream::Outgoing {
                    method: &parts.method,
                    target: path.as_str(),
                    headers: &headers,
                    raw: &[],
                    host: Some(target.authority.as_str()),
                    body: b,
                    upgrade: upgrade.as_ref(),
                };
                tokio::time::timeout_at(
                    deadline,
                    upstream::send(&target, &out, lb.connect_timeout()),
                )
                .await
            }
            ReqBody::Stream(s) => {
                // Made once: a streamed request is never sent twice (see `can_retry`).
                if let Some(b) = s.take() {
                    let (t, flag) = Timed::new(b, crate::spec::dur(&cfg.timeouts.write));
                    stalled = Some(flag);
                    streamed = Some(Body::Timed(t));
                }
                let upstream_body = streamed.get_or_insert_with(|| full(Bytes::new()));
                let out = upstream::Outgoing {
                    method: &parts.method,
                    target: path.as_str(),
                    headers: &headers,
                    raw: &[],
                    host: Some(target.authority.as_str()),
                    body: &[],
                    upgrade: None,
                };
                tokio::time::timeout_at(
                    deadline,
                    upstream::send_streaming(&target, &out, upstream_body, lb.connect_timeout()),
                )
                .await
            }
        };
        target.in_flight.fetch_sub(1, Ordering::Relaxed);
        let stalled_now = stalled.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
        if let Some(b) = streamed.take() {
            if !stalled_now {
                linger(b);
            }
        }
        if stalled_now {
            lb.finish(
                request_id.as_bytes(),
                &peer,
                &target.address,
                408,
                start,
                retries,
            );
            let mut r = simple(
                StatusCode::REQUEST_TIMEOUT,
                "the request body stopped arriving",
            );
            echo(r.headers_mut(), &rid);
            return Ok(r);
        }
        let status = match &sent {
            Ok(Ok(resp)) => Some(resp.status().as_u16()),
            _ => None,
        };
        let (outcome, nothing_sent) = outcome(
            status,
            matches!(sent, Ok(Err(SendError::Connect(_)))),
            sent.is_err(),
            &cfg,
        );
        let resp = sent.ok().and_then(Result::ok);
        lb.observe(&target, outcome, &cfg);
        // Asked only after a failed attempt: the budget reads the clock.
        let can_retry = || {
            retries < cfg.retries
                && (safe_to_repeat || (nothing_sent && matches!(body, ReqBody::Buffered(_))))
                && lb.retry_allowed(Instant::now())
        };
        let can_retry = match resp {
            Some(resp)
                if !(outcome == Outcome::HttpFailure
                    && resp.status().is_server_error()
                    && can_retry()) =>
            {
                let (mut rp, rb) = resp.into_parts();
                if rp.status == StatusCode::SWITCHING_PROTOCOLS {
                    // Only an attempt that stated `upgrade` can be answered 101 (upstream).
                    let switched = match (rb, on_upgrade.take()) {
                        (Body::Pooled(p), Some(on)) => p.into_tunnel().map(|t| (t, on)),
                        _ => None,
                    };
                    let code = if switched.is_some() { 101 } else { 502 };
                    lb.finish(
                        request_id.as_bytes(),
                        &peer,
                        &target.address,
                        code,
                        start,
                        retries,
                    );
                    let Some(((io, early), on)) = switched else {
                        return Ok(simple(StatusCode::BAD_GATEWAY, "the target failed"));
                    };
                    let proto = rp.headers.get(hyper::header::UPGRADE).cloned();
                    strip_hop_by_hop(&mut rp.headers);
                    rp.headers.insert(
                        hyper::header::CONNECTION,
                        HeaderValue::from_static("upgrade"),
                    );
                    if let Some(p) = proto.or(upgrade) {
                        rp.headers.insert(hyper::header::UPGRADE, p);
                    }
                    echo(&mut rp.headers, &rid);
                    tunnel(&lb, target, on, io, early, request_id);
                    return Ok(Response::from_parts(rp, full(Bytes::new())));
                }
                strip_hop_by_hop(&mut rp.headers);
                echo(&mut rp.headers, &rid);
                lb.finish(
                    request_id.as_bytes(),
                    &peer,
                    &target.address,
                    rp.status.as_u16(),
                    start,
                    retries,
                );
                return Ok(Response::from_parts(rp, rb));
            }
            // Refused above only when a retry is allowed.
            Some(_) => true,
            None => can_retry(),
        };
        target.failures.fetch_add(1, Ordering::Relaxed);
        if !can_retry {
            let (code, msg) = failure(outcome);
            lb.finish(
                request_id.as_bytes(),
                &peer,
                &target.address,
                code.as_u16(),
                start,
                retries,
            );
            let mut r = simple(code, msg);
            echo(r.headers_mut(), &rid);
            return Ok(r);
        }
        retries += 1;
        lb.count_retry(Instant::now());
        // Jittered backoff: 0–(10 ms × attempt), so retries do not arrive in lockstep.
        let jitter = (lb.next_jitter() % 10 + 1) * retries as u64;
        tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
    }
}

/// What an attempt says of its target (passive health): by the answer's status, else by
/// how it failed; and whether the request surely never reached the target (no connection
/// could be made), which makes any request safe to send elsewhere.
pub(super) fn outcome(
    status: Option<u16>,
    connect_failed: bool,
    timed_out: bool,
    cfg: &crate::spec::BalancerSpec,
) -> (Outcome, bool) {
    match status {
        Some(code)
            if cfg
                .healthchecks
                .passive
                .unhealthy
                .http_statuses
                .contains(&code) =>
        {
            (Outcome::HttpFailure, false)
        }
        Some(_) => (Outcome::Success, false),
        None if timed_out => (Outcome::Timeout, false),
        None => (Outcome::TcpFailure, connect_failed),
    }
}

/// The balancer's answer when a request's last attempt failed.
pub(super) fn failure(o: Outcome) -> (StatusCode, &'static str) {
    match o {
        Outcome::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "the target did not answer in time",
        ),
        _ => (StatusCode::BAD_GATEWAY, "the target failed"),
    }
}

/// Is a target usable by `choose`, or only in panic mode?
pub fn usable(t: &TargetState, now: Instant) -> bool {
    t.available(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &hyper::HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut h = map(&[
            ("host", "a"),
            ("connection", "close, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "basic x"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-keep", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "x-keep"]);

        // Nothing hop-by-hop: nothing changes.
        let mut h = map(&[("host", "a"), ("x-a", "1"), ("x-a", "2")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "x-a"]);
        assert_eq!(h.get_all("x-a").iter().count(), 2);
    }
}
