//! The client side of the hot path: HTTP/1.1 requests without a body, served straight
//! from the socket; everything else is handed to hyper.
//!
//! Nearly every request a balancer sees is a keep-alive HTTP/1.1 GET with a few headers.
//! For those, hyper's server (a dispatcher, a header map built for every request and
//! answer, a boxed timer per request) cost more CPU than the proxying itself. Here a
//! request head is parsed in place with `httparse`, its header lines are copied to the
//! target as they came (less the hop-by-hop ones), and the target's answer is written
//! back in one write when it is small. Rate limits, request ids, retries and passive health
//! checks are applied as on hyper's path, with the same choices. A connection whose
//! request this path does not serve (a body, an upgrade, `Expect`, HTTP/1.0,
//! absolute-form, a parse error) goes to hyper for good, with the bytes already read, so
//! every corner of HTTP/1.1 stays hyper's.

use super::proxy;
use super::ratelimit::{Quota, RateLimiter};
use super::targets::Outcome;
use super::targets::TargetState;
use super::upstream::{self, SendError};
use super::{Balancer, View};
use bytes::BytesMut;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Request heads longer than this go to hyper (which applies its own limit).
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// A request head this path serves: where its parts sit in the read buffer.
struct Head {
    len: usize,
    method: Method,
    path: (usize, usize),
    close: bool,
    has_host: bool,
    rid: Option<(usize, usize)>,
    xff: Option<(usize, usize)>,
    /// The value of the header a rate limit counts clients by.
    key: Option<(usize, usize)>,
}

enum Inspect {
    Serve(Head),
    Partial,
    /// Not for this path: hyper serves the connection from here on.
    Other,
}

fn span(buf: &[u8], s: &[u8]) -> (usize, usize) {
    let at = s.as_ptr() as usize - buf.as_ptr() as usize;
    (at, at + s.len())
}

/// What a header value must be to be passed on as text (`HeaderValue::to_str`).
fn visible(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Note where a header's value sits the first time the header is seen (hyper's path reads
/// the first one too), if it is usable as text; later ones change nothing.
fn first(slot: &mut Option<Option<(usize, usize)>>, buf: &[u8], v: &[u8]) {
    if slot.is_none() {
        *slot = Some(visible(v).then(|| span(buf, v)));
    }
}

/// `name: value` and the line's end.
fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parse the head at the start of `buf`; the header lines to pass on go to `lines`.
/// `key_name`: the header a rate limit counts clients by, if any.
fn inspect(buf: &[u8], lines: &mut Vec<u8>, rid_name: &str, key_name: Option<&str>) -> Inspect {
    let mut hs = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    let len = match r.parse_with_uninit_headers(buf, &mut hs) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Inspect::Partial,
        _ => return Inspect::Other,
    };
    if r.version != Some(1) {
        return Inspect::Other;
    }
    let (Some(m), Some(path)) = (r.method, r.path) else {
        return Inspect::Other;
    };
    if !path.starts_with('/') {
        return Inspect::Other;
    }
    let method = match Method::from_bytes(m.as_bytes()) {
        Ok(m) if m != Method::CONNECT => m,
        _ => return Inspect::Other,
    };
    let mut head = Head {
        len,
        method,
        path: span(buf, path.as_bytes()),
        close: false,
        has_host: false,
        rid: None,
        xff: None,
        key: None,
    };
    lines.clear();
    let (mut rid, mut xff, mut key) = (None, None, None);
    for h in r.headers.iter() {
        let n = h.name.as_bytes();
        let is = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
        if key_name.is_some_and(is) {
            first(&mut key, buf, h.value);
        }
        match n.len() {
            2 if is("te") => continue,
            4 if is("host") => head.has_host = true,
            6 if is("expect") => return Inspect::Other,
            7 if is("upgrade") || is("trailer") => return Inspect::Other,
            10 if is("connection") => {
                for t in h.value.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") {
                        // It names headers to drop: hyper's path does that.
                        return Inspect::Other;
                    }
                }
                continue;
            }
            10 if is("keep-alive") => continue,
            14 if is("content-length") => {
                if h.value.trim_ascii() != b"0" {
                    return Inspect::Other;
                }
                continue;
            }
            // All are replaced by the balancer's.
            15 if is("x-forwarded-for") => {
                first(&mut xff, buf, h.value);
                continue;
            }
            16 if is("proxy-connection") => continue,
            17 if is("transfer-encoding") => return Inspect::Other,
            18 if is("proxy-authenticate") => continue,
            19 if is("proxy-authorization") => continue,
            _ => {}
        }
        // The client's id, kept when usable; all are replaced by the one passed on.
        if is(rid_name) {
            first(&mut rid, buf, h.value);
            continue;
        }
        line(lines, n, h.value);
    }
    (head.rid, head.xff, head.key) = (rid.flatten(), xff.flatten(), key.flatten());
    Inspect::Serve(head)
}

/// A connection's socket with bytes already read from it in front: what hyper is given
/// when it takes a connection over.
pub struct Prefixed {
    pre: BytesMut,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.pre.is_empty() {
            let n = me.pre.len().min(out.remaining());
            out.put_slice(&me.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// How a connection ends on this path.
pub enum Served {
    /// Closed (by either side, a timeout, or a stop).
    Done,
    /// Hyper serves it from here.
    Handoff(Prefixed),
}

static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

/// One timer per connection for both of its deadlines (the client's next head, the
/// target's answer), moved lazily: setting a later deadline changes nothing in the timer
/// wheel; the sleep, when it wakes early, goes back to sleep until the deadline of the
/// moment. A request then costs no timer operation at all, where a timer per wait cost
/// two (register, cancel).
struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    at: tokio::time::Instant,
}

impl Deadline {
    fn new(at: Instant) -> Deadline {
        let at = tokio::time::Instant::from_std(at);
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            at,
        }
    }

    fn set(&mut self, at: Instant) {
        self.at = tokio::time::Instant::from_std(at);
        if self.at < self.sleep.deadline() {
            self.sleep.as_mut().reset(self.at);
        }
    }

    fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if tokio::time::Instant::now() >= self.at {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(self.at);
        }
    }

    async fn passed(&mut self) {
        std::future::poll_fn(|cx| self.poll_passed(cx)).await
    }
}

/// Serve the connection's requests while they are for this path.
pub async fn serve(
    lb: &Arc<Balancer>,
    mut io: TcpStream,
    peer: SocketAddr,
    peer_ip: &HeaderValue,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    client_timeout: Duration,
) -> Served {
    let mut buf = BytesMut::with_capacity(4096);
    let mut lines: Vec<u8> = Vec::with_capacity(512);
    let mut down: Vec<u8> = Vec::with_capacity(1024);
    let mut now = Instant::now();
    let mut deadline = Deadline::new(now + client_timeout);
    let watch = stop.clone();
    // Made once: a watch's `changed()` made per wait costs a registration each time.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let mut view = lb.view();
    loop {
        // A whole head, or the connection goes elsewhere.
        deadline.set(now + client_timeout);
        let head = loop {
            if !buf.is_empty() {
                // Brought up to date per head: a request sees the state of its moment.
                lb.refresh(&mut view);
                let key_name = view.limiter.as_ref().as_ref().and_then(|l| l.header());
                let key_name = key_name.map(|h| h.as_str());
                match inspect(&buf, &mut lines, view.corr.name.as_str(), key_name) {
                    Inspect::Serve(h) => break h,
                    Inspect::Other => return Served::Handoff(Prefixed { pre: buf, io }),
                    Inspect::Partial => {}
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            tokio::select! {
                biased;
                r = tokio::io::AsyncReadExt::read_buf(&mut io, &mut buf) => match r {
                    Ok(0) | Err(_) => return Served::Done,
                    Ok(_) => {}
                },
                _ = &mut stopped, if buf.is_empty() => return Served::Done,
                _ = deadline.passed() => return Served::Done,
            }
        };
        let start = Instant::now();
        let corr = &view.corr;
        let id_buf;
        let rid: &[u8] = match head.rid {
            Some((a, b)) => &buf[a..b],
            None => {
                id_buf = lb.next_request_id_bytes();
                &id_buf
            }
        };
        // X-Forwarded-For and the request id go after the client's lines.
        lines.extend_from_slice(b"x-forwarded-for: ");
        if let Some((a, b)) = head.xff {
            lines.extend_from_slice(&buf[a..b]);
            lines.extend_from_slice(b", ");
        }
        lines.extend_from_slice(peer_ip.as_bytes());
        lines.extend_from_slice(b"\r\n");
        lines.extend_from_slice(corr.name.as_str().as_bytes());
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(rid);
        lines.extend_from_slice(b"\r\n");
        let path = std::str::from_utf8(&buf[head.path.0..head.path.1]).unwrap_or("/");
        let close = head.close || *watch.borrow();
        // Over a rate limit: 429 at once. Under it: what is left, for the answer's head.
        let checked = view.limiter.as_ref().as_ref().map(|rl| {
            let value = head
                .key
                .and_then(|(a, b)| std::str::from_utf8(&buf[a..b]).ok());
            rl.check(&RateLimiter::key_for(value, peer.ip()), start)
        });
        // Every answer carries the quota; a refusal's is what the refused client has left.
        let quota = match &checked {
            None => None,
            Some(Ok(q)) => Some(q),
            Some(Err(no)) => Some(&no.quota),
        };
        let req = Req {
            head: &head,
            path,
            lines: &lines,
            rid,
            corr,
            close,
            quota,
        };
        if let Some(Err(no)) = &checked {
            lb.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            now = lb.finish(rid, &peer, "-", 429, start, 0);
            let msg = format!("rate limit exceeded: {} per {}", no.limit, no.unit);
            down.clear();
            let wait = Some(no.retry_after());
            simple(&mut down, StatusCode::TOO_MANY_REQUESTS, &msg, &req, wait);
            if io.write_all(&down).await.is_err() || close {
                return Served::Done;
            }
            bytes::Buf::advance(&mut buf, head.len);
            continue;
        }
        let written = match forward(lb, &view, &req, start, &mut deadline, &mut down).await {
            Ok((target, status, body, retries)) => {
                let r = write_body(&mut io, &mut down, body).await;
                now = lb.finish(rid, &peer, &target.address, status, start, retries);
                r
            }
            Err((target, code, msg, retries)) => {
                let target = target.as_ref().map_or("-", |t| t.address.as_str());
                now = lb.finish(rid, &peer, target, code.as_u16(), start, retries);
                down.clear();
                simple(&mut down, code, msg, &req, None);
                io.write_all(&down).await
            }
        };
        if written.is_err() || req.close {
            return Served::Done;
        }
        bytes::Buf::advance(&mut buf, head.len);
    }
}

/// A request as [`forward`] sends it and answers it.
struct Req<'a> {
    head: &'a Head,
    path: &'a str,
    /// The header lines for the target, X-Forwarded-For and the request id included.
    lines: &'a [u8],
    rid: &'a [u8],
    corr: &'a super::Correlation,
    /// The connection closes after the answer (the client asked, or the balancer stops).
    close: bool,
    /// The client's quota, when a rate limit is set: its headers go on every answer.
    quota: Option<&'a Quota>,
}

type Forwarded = (Arc<TargetState>, u16, upstream::Pooled, u32);
type Failed = (Option<Arc<TargetState>>, StatusCode, &'static str, u32);

/// Pick, send, retry: the choices of [`super::proxy::handle`] for a request without a body.
/// On an answer, its head for the client is in `down`.
async fn forward(
    lb: &Arc<Balancer>,
    view: &View,
    req: &Req<'_>,
    start: Instant,
    deadline: &mut Deadline,
    down: &mut Vec<u8>,
) -> Result<Forwarded, Failed> {
    let cfg = &view.cfg;
    let safe = proxy::idempotent(&req.head.method);
    let mut tried = [0usize; 8];
    let mut n_tried = 0;
    let mut retries = 0u32;
    // The target list after a hold for a pool at zero (the view's is the one that had no
    // target); set once a request has been held.
    let mut after_hold: Option<Arc<Vec<Arc<TargetState>>>> = None;
    loop {
        let held = after_hold.is_some();
        let attempt_start = if retries == 0 && !held {
            start
        } else {
            Instant::now()
        };
        let Some(target) = lb.choose_in(
            after_hold.as_deref().unwrap_or(&view.targets),
            &view.picker,
            &tried[..n_tried],
            attempt_start,
        ) else {
            if !held && retries == 0 {
                after_hold = lb.await_pool(start).await;
                if after_hold.is_some() {
                    continue;
                }
            }
            return Err((
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                "no target available",
                retries,
            ));
        };
        if n_tried < tried.len() {
            tried[n_tried] = target.id();
            n_tried += 1;
        }
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        target.requests.fetch_add(1, Ordering::Relaxed);
        deadline.set(attempt_start + lb.read_timeout());
        let out = upstream::Outgoing {
            method: &req.head.method,
            target: req.path,
            headers: &NO_HEADERS,
            raw: req.lines,
            host: (!req.head.has_host).then_some(target.authority.as_str()),
            body: &[],
            upgrade: None,
        };
        let send = upstream::send_with(&target, &out, lb.connect_timeout(), |a| {
            down.clear();
            write_head(down, a, req);
            Ok(a.status)
        });
        let sent = tokio::select! {
            biased;
            r = send => Ok(r),
            _ = deadline.passed() => Err(()),
        };
        target.in_flight.fetch_sub(1, Ordering::Relaxed);
        let status = match &sent {
            Ok(Ok((s, _))) => Some(s.as_u16()),
            _ => None,
        };
        let (outcome, nothing_sent) = proxy::outcome(
            status,
            matches!(sent, Ok(Err(SendError::Connect(_)))),
            sent.is_err(),
            cfg,
        );
        lb.observe(&target, outcome, cfg);
        let can_retry =
            || retries < cfg.retries && (safe || nothing_sent) && lb.retry_allowed(Instant::now());
        match sent {
            Ok(Ok((s, body)))
                if !(outcome == Outcome::HttpFailure && s.is_server_error() && can_retry()) =>
            {
                return Ok((target, s.as_u16(), body, retries));
            }
            Ok(Ok(_)) => {}
            _ if can_retry() => {}
            _ => {
                target.failures.fetch_add(1, Ordering::Relaxed);
                let (code, msg) = proxy::failure(outcome);
                return Err((Some(target), code, msg, retries));
            }
        }
        target.failures.fetch_add(1, Ordering::Relaxed);
        retries += 1;
        lb.count_retry(Instant::now());
        let jitter = (lb.next_jitter() % 10 + 1) * retries as u64;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), which are not passed on: hyper's path's list
/// ([`proxy::hop_by_hop`]; a test holds the two together), switched on the name's length
/// first, as every header of every answer is asked.
fn hop_by_hop(name: &str) -> bool {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// The status line.
fn status_line(out: &mut Vec<u8>, code: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What the balancer adds to every answer it sends: the request id (unless told not to),
/// the client's quota, a `Date` when there is none, and `Connection: close` when the
/// connection ends after it.
fn own_lines(out: &mut Vec<u8>, req: &Req<'_>, dated: bool) {
    if req.corr.echo {
        line(out, req.corr.name.as_str().as_bytes(), req.rid);
    }
    if let Some(q) = req.quota {
        q.each(|name, v| line(out, name.as_str().as_bytes(), digits(v, 10, &mut [0; 20])));
    }
    if !dated {
        date(out);
    }
    if req.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
}

/// The client's head of a target's answer: the status line, the target's headers less
/// the hop-by-hop ones (and those its `Connection` names), its framing as the balancer
/// sends the body, the request id, a `Date` if the target gave none.
fn write_head(out: &mut Vec<u8>, a: &upstream::Answer<'_>, req: &Req<'_>) {
    status_line(out, a.status);
    let rid_name = req.corr.name.as_str();
    // Framing headers are the balancer's to state, but for an answer without a body (to a
    // HEAD, a 304), whose length describes the body it would have had.
    let restated = a.length.is_some() || a.status == StatusCode::NO_CONTENT;
    // Headers the target's `Connection` names, if it names any beyond the usual tokens.
    let named = a.connection.filter(|c| {
        c.split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"close")
        })
    });
    for h in a.headers {
        let n = h.name;
        let framing = match n.len() {
            14 => n.eq_ignore_ascii_case("content-length"),
            17 => n.eq_ignore_ascii_case("transfer-encoding"),
            _ => false,
        };
        if (framing && restated)
            || hop_by_hop(n)
            || (req.corr.echo && n.eq_ignore_ascii_case(rid_name))
            || named.is_some_and(|c| upstream::has_token(c, n))
            || (req.quota.is_some() && Quota::is_quota_header(n))
        {
            continue;
        }
        line(out, n.as_bytes(), h.value);
    }
    own_lines(out, req, a.dated);
    match a.length {
        Some(Some(n)) => line(out, b"content-length", digits(n, 10, &mut [0; 20])),
        Some(None) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in base `radix` (10, or 16 for chunk sizes), lower case, in `buf`.
fn digits(mut n: u64, radix: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A `Date` line (RFC 9110 §6.6.1: a proxy adds one to an answer that has none), made once
/// a second.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        line(out, b"date", d.1.as_bytes());
    });
}

/// An answer the balancer makes itself (429, 502, 503, 504).
fn simple(out: &mut Vec<u8>, code: StatusCode, msg: &str, req: &Req<'_>, retry_after: Option<u64>) {
    status_line(out, code);
    out.extend_from_slice(b"content-type: text/plain\r\n");
    line(
        out,
        b"content-length",
        digits(msg.len() as u64 + 1, 10, &mut [0; 20]),
    );
    if let Some(secs) = retry_after {
        line(out, b"retry-after", digits(secs, 10, &mut [0; 20]));
    }
    own_lines(out, req, false);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(msg.as_bytes());
    out.push(b'\n');
}

/// Pieces of a body at least this big are written from where they were read rather than
/// copied behind the head.
const DIRECT: usize = 16 * 1024;

/// Send the head in `out` and the body after it as it comes from the target, chunked when
/// its length is not known; a body already read goes in the same write as the head.
async fn write_body(
    io: &mut TcpStream,
    out: &mut Vec<u8>,
    mut body: upstream::Pooled,
) -> io::Result<()> {
    let chunked = body.is_chunked_out();
    while !body.is_end_stream() {
        let Some(piece) = std::future::poll_fn(|cx| body.poll_frame(cx)).await else {
            break;
        };
        let Ok(data) = piece.map_err(io::Error::other)?.into_data() else {
            continue;
        };
        if chunked {
            out.extend_from_slice(digits(data.len() as u64, 16, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        if data.len() >= DIRECT {
            if !out.is_empty() {
                io.write_all(out).await?;
                out.clear();
            }
            io.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if body.is_end_stream() {
            break;
        }
        if !out.is_empty() {
            io.write_all(out).await?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if out.is_empty() {
        return Ok(());
    }
    io.write_all(out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(h: &str) -> (Head, String) {
        let mut lines = Vec::new();
        match inspect(h.as_bytes(), &mut lines, "x-request-id", Some("x-api-key")) {
            Inspect::Serve(head) => (head, String::from_utf8(lines).unwrap()),
            Inspect::Partial => panic!("partial: {h:?}"),
            Inspect::Other => panic!("handed over: {h:?}"),
        }
    }

    fn handed_over(h: &str) -> bool {
        matches!(
            inspect(h.as_bytes(), &mut Vec::new(), "x-request-id", None),
            Inspect::Other
        )
    }

    #[test]
    fn plain_requests_are_served_and_the_rest_handed_to_hyper() {
        for h in [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "DELETE /x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
        ] {
            serve(h);
        }
        for h in [
            "POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: close, X-Secret\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(handed_over(h), "{h:?}");
        }
        assert!(matches!(
            inspect(
                b"GET / HTTP/1.1\r\nHost: a\r\n",
                &mut Vec::new(),
                "x-request-id",
                None
            ),
            Inspect::Partial
        ));
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n", "a".repeat(MAX_HEAD));
        assert!(
            handed_over(&long),
            "a head past the limit is hyper's to refuse"
        );
    }

    #[test]
    fn the_lines_passed_on_lose_hop_by_hop_headers_and_the_ones_the_balancer_sets() {
        let h = "GET /p?q HTTP/1.1\r\nHost: a\r\nConnection: close\r\nKeep-Alive: 5\r\nTE: trailers\r\n\
                 Proxy-Authorization: x\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\
                 X-Request-ID: abc\r\nx-request-id: def\r\nAccept: */*\r\n\r\nGET /next";
        let (head, lines) = serve(h);
        assert_eq!(lines, "Host: a\r\nAccept: */*\r\n");
        assert!(head.close && head.has_host);
        assert_eq!(head.method, Method::GET);
        let at = |r: (usize, usize)| &h[r.0..r.1];
        assert_eq!(at(head.path), "/p?q");
        assert_eq!(at(head.xff.unwrap()), "10.0.0.1");
        assert_eq!(at(head.rid.unwrap()), "abc");
        assert!(head.key.is_none(), "no X-Api-Key: counted by IP");
        assert_eq!(&h[head.len..], "GET /next");

        // The rate limit's header is read (its first value) and still passed on.
        let h = "GET / HTTP/1.1\r\nX-Api-Key: k1\r\nx-api-key: k2\r\n\r\n";
        let (head, lines) = serve(h);
        assert_eq!(&h[head.key.unwrap().0..head.key.unwrap().1], "k1");
        assert_eq!(lines, "X-Api-Key: k1\r\nx-api-key: k2\r\n");

        // An id that is not plain text is replaced, as on hyper's path.
        let (head, _) = serve("GET / HTTP/1.1\r\nX-Request-ID: \u{e9}\r\n\r\n");
        assert!(head.rid.is_none() && !head.has_host);
    }

    fn corr(echo: bool) -> super::super::Correlation {
        super::super::Correlation {
            name: hyper::header::HeaderName::from_static("x-request-id"),
            echo,
        }
    }

    fn head_for(
        status: u16,
        headers: &[(&str, &str)],
        length: Option<Option<u64>>,
        echo: bool,
        close: bool,
    ) -> String {
        head_with(status, headers, length, echo, close, None)
    }

    fn head_with(
        status: u16,
        headers: &[(&str, &str)],
        length: Option<Option<u64>>,
        echo: bool,
        close: bool,
        quota: Option<&Quota>,
    ) -> String {
        let hs: Vec<httparse::Header<'_>> = headers
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        let connection = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.as_bytes());
        let dated = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("date"));
        let a = upstream::Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: &hs,
            length,
            connection,
            dated,
        };
        let head = Head {
            len: 0,
            method: Method::GET,
            path: (0, 0),
            close,
            has_host: true,
            rid: None,
            xff: None,
            key: None,
        };
        let c = corr(echo);
        let req = Req {
            head: &head,
            path: "/",
            lines: b"",
            rid: b"id1",
            corr: &c,
            close,
            quota,
        };
        let mut out = Vec::new();
        write_head(&mut out, &a, &req);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn answer_heads_keep_the_targets_headers_and_state_the_balancers_framing() {
        let h = head_for(
            200,
            &[
                ("Date", "Mon, 30 Nov 2026 07:00:00 GMT"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("X-Request-ID", "theirs"),
                ("X-Kept", "1"),
            ],
            Some(None),
            true,
            false,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 07:00:00 GMT\r\nX-Kept: 1\r\n\
             x-request-id: id1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // A known length is restated; no Date from the target: one is added.
        let h = head_for(404, &[("Content-Length", "2")], Some(Some(2)), false, true);
        assert!(h.starts_with("HTTP/1.1 404 Not Found\r\ndate: "), "{h}");
        assert!(
            h.ends_with(" GMT\r\nconnection: close\r\ncontent-length: 2\r\n\r\n"),
            "{h}"
        );
        type Case<'a> = (u16, &'a [(&'a str, &'a str)], Option<Option<u64>>, &'a str);
        let cases: [Case<'_>; 3] = [
            // Without echo, the target's own id header passes.
            (
                200,
                &[("Date", "d"), ("X-Request-ID", "theirs")],
                Some(Some(0)),
                "HTTP/1.1 200 OK\r\nDate: d\r\nX-Request-ID: theirs\r\ncontent-length: 0\r\n\r\n",
            ),
            // No body (a HEAD, a 304): the target's length stays, it describes the GET's.
            (
                304,
                &[("Date", "d"), ("Content-Length", "10")],
                None,
                "HTTP/1.1 304 Not Modified\r\nDate: d\r\nContent-Length: 10\r\n\r\n",
            ),
            (
                204,
                &[("Date", "d"), ("Content-Length", "0")],
                None,
                "HTTP/1.1 204 No Content\r\nDate: d\r\n\r\n",
            ),
        ];
        for (status, headers, length, want) in cases {
            assert_eq!(head_for(status, headers, length, false, false), want);
        }
    }

    /// Under a rate limit the client's quota replaces every quota header of the target's,
    /// as on hyper's path (`Quota::write`).
    #[test]
    fn the_clients_quota_replaces_the_targets_quota_headers() {
        let rl = RateLimiter::new(&crate::spec::RateLimit {
            per_second: Some(2),
            by: "ip".into(),
            ..Default::default()
        });
        let q = rl.check("a", Instant::now()).unwrap();
        let theirs = [
            ("Date", "d"),
            ("X-RateLimit-Limit-Day", "1000"),
            ("RateLimit-Remaining", "7"),
            ("X-Kept", "1"),
        ];
        let h = head_with(200, &theirs, Some(Some(0)), false, false, Some(&q));
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nDate: d\r\nX-Kept: 1\r\n\
             x-ratelimit-limit-second: 2\r\nx-ratelimit-remaining-second: 1\r\n\
             ratelimit-limit: 2\r\nratelimit-remaining: 1\r\nratelimit-reset: 1\r\n\
             content-length: 0\r\n\r\n"
        );
        let mut map = hyper::HeaderMap::new();
        for (n, v) in theirs {
            map.insert(
                hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_static(v),
            );
        }
        q.write(&mut map);
        let mut names: Vec<&str> = map.keys().map(|n| n.as_str()).collect();
        names.sort();
        let mut fast: Vec<String> = h
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
            .filter(|n| n != "content-length")
            .collect();
        fast.sort();
        assert_eq!(names, fast, "both paths send the same headers");
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            assert_eq!(digits(n, 10, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_lazy_timer_keeps_the_deadline_of_the_moment() {
        // The runtime's clock (paused, it moves only as timers fire), as a std instant.
        let now = || tokio::time::Instant::now().into_std();
        let t0 = now();
        let mut d = Deadline::new(t0 + Duration::from_secs(10));
        // Later deadlines move nothing in the timer wheel.
        d.set(t0 + Duration::from_secs(30));
        assert_eq!(
            d.sleep.deadline(),
            tokio::time::Instant::from_std(t0 + Duration::from_secs(10))
        );
        d.passed().await;
        assert!(now() >= t0 + Duration::from_secs(30));
        // An earlier one moves the timer.
        let t1 = now();
        d.set(t1 + Duration::from_secs(60));
        d.set(t1 + Duration::from_secs(5));
        d.passed().await;
        let waited = now() - t1;
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
    }

    #[test]
    fn the_hop_by_hop_switch_is_hyper_paths_list() {
        for n in proxy::hop_by_hop() {
            assert!(hop_by_hop(n.as_str()), "{n}");
            assert!(hop_by_hop(&n.as_str().to_ascii_uppercase()), "{n}");
        }
        for n in [
            "host",
            "tee",
            "trailers",
            "connections",
            "keep-alive2",
            "x-upgrade",
        ] {
            assert!(!hop_by_hop(n), "{n}");
        }
        let lens: std::collections::BTreeSet<usize> = proxy::hop_by_hop()
            .iter()
            .map(|n| n.as_str().len())
            .collect();
        assert_eq!(lens.into_iter().collect::<Vec<_>>(), [2, 7, 10, 16, 18, 19]);
    }
}
