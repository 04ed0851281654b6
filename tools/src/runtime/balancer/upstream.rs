//! Connections to targets: a few idle HTTP/1.1 connections per target, reused.
//!
//! The hot path (a request whose body the balancer holds in memory, which is nearly all of
//! them) speaks HTTP/1.1 to the target itself, inside the task that serves the client: the
//! request goes out in one write, the answer's head is parsed with `httparse`, and its
//! body is read straight from the socket as the client's side asks for it. A general
//! client (hyper's, used before) runs each connection as its own task and hands requests,
//! answers and body pieces across channels; doing without measured 0.91× the balancer's
//! CPU per request in `bench/proxy.sh` (A/B in one run). A request body too big to keep
//! streams out on a connection of its own, which is not kept, while the answer is
//! watched for in the same task: a target may answer (413) before it has read the body,
//! and hang up (see [`send_streaming`]).
//!
//! A connection goes back to its target's idle list only once the answer it carried has
//! been read to the end and nothing followed it, so a reused connection is always free
//! and in step; a connection whose answer was abandoned half-way is closed. An idle
//! connection the target has closed is noticed from the reactor's readiness before it is
//! used (no system call unless the socket turned readable); one that a request could not
//! even be written to is replaced by a fresh one.

use super::chunked::{Chunked, Decoded};
use super::proxy::{Body, BoxError};
use super::targets::TargetState;
use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use hyper::header::TRANSFER_ENCODING;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use hyper::{Method, Response, StatusCode};
use std::io::{self, Write};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Idle connections kept per target.
const MAX_IDLE: usize = 64;
/// How long a connection may sit idle before the balancer closes it. Node and uvicorn
/// close idle keep-alive connections after 5 s, and HAProxy purges its own after 5 s:
/// with such targets, closing ours first means a request is never written to a
/// connection at the moment the target gives up on it (a race a POST, which is never sent
/// twice, would lose as a 502). Targets that give up sooner (gunicorn: 2 s) are still
/// caught by the readiness check before reuse, as before. Either way, a target that went
/// quiet is not left holding sockets for us.
pub const IDLE_LIMIT: Duration = Duration::from_secs(4);

/// A coarse clock for idle connections: milliseconds since the first reading, advanced
/// by [`tick`] from the balancer's 100 ms housekeeping loop, so stamping a connection as
/// it goes idle (once per request) is an atomic load rather than a clock read.
static COARSE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static EPOCH: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// Advance the coarse clock to `now` (several balancers may call it; it never goes back).
pub fn tick(now: std::time::Instant) {
    let ms = now.saturating_duration_since(*EPOCH).as_millis() as u64;
    COARSE_MS.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
}

fn coarse_ms() -> u64 {
    COARSE_MS.load(std::sync::atomic::Ordering::Relaxed)
}
/// The longest answer head accepted from a target (nginx's large header buffers: 4 × 8k).
const MAX_HEAD: usize = 32 * 1024;
const MAX_HEADERS: usize = 100;
/// How much is read from a target at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The largest request buffer an idle connection keeps.
const KEEP_OUT: usize = 16 * 1024;

/// Why a request got no answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// The connection broke after the request went out (or while it did), or the answer
    /// was not HTTP/1.1 the balancer can pass on.
    Http(String),
}

/// One connection to a target, with what has been read from it but not used yet.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The request being sent, encoded; kept with the connection so a reused one needs no
    /// new allocation (unless a big body grew it past [`KEEP_OUT`]).
    out: Vec<u8>,
    /// When it last went idle, on the coarse clock.
    idle_since: u64,
}

impl Conn {
    /// Still usable after sitting idle? Only a socket the reactor saw turn readable is
    /// looked at: an idle connection has nothing to say unless the target closed it.
    fn alive(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                matches!(self.io.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Read more into `buf`; `Ok(0)` at the end of the stream. Through `AsyncRead`, so a
    /// read that leaves room in the buffer (the socket is drained) clears the socket's
    /// readiness: [`Conn::alive`] then costs no `recv` that could only say EAGAIN.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// The idle connections of one target.
#[derive(Default)]
pub struct Idle(std::sync::Mutex<Vec<Conn>>);

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|l| l.len()).unwrap_or(0);
        write!(f, "Idle({n})")
    }
}

impl Idle {
    fn pop(&self) -> Option<Conn> {
        loop {
            let mut c = self.0.lock().ok()?.pop()?;
            if c.alive() {
                return Some(c);
            }
        }
    }

    fn push(&self, mut c: Conn) {
        c.idle_since = coarse_ms();
        if let Ok(mut l) = self.0.lock() {
            if l.len() < MAX_IDLE {
                l.push(c);
            }
        }
    }

    /// Close the connections idle for `limit` or more (on the coarse clock); how many.
    pub fn sweep(&self, limit: Duration) -> usize {
        let now = coarse_ms();
        let limit = limit.as_millis() as u64;
        let Ok(mut l) = self.0.lock() else {
            return 0;
        };
        let before = l.len();
        l.retain(|c| now.saturating_sub(c.idle_since) < limit);
        before - l.len()
    }

    pub fn len(&self) -> usize {
        self.0.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Park a connection as if a request had just finished on it.
    #[cfg(test)]
    pub fn park(&self, io: TcpStream) {
        self.push(Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            idle_since: 0,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn connect(t: &TargetState, timeout: Duration) -> Result<TcpStream, SendError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&t.address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
        Err(_) => {
            return Err(SendError::Connect(format!(
                "connect timed out after {timeout:?}"
            )))
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A request whose body the balancer holds, borrowed from the task serving the client: every
/// attempt (a retry goes to another target) encodes it afresh without copying its headers.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// Origin form: the path and query.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// Header lines already encoded (`name: value\r\n` each), sent after `headers`: the
    /// fast path ([`super::fast`]) copies the client's lines as they came.
    pub raw: &'a [u8],
    /// The Host to state when `headers` has none (the target's address).
    pub host: Option<&'a str>,
    pub body: &'a [u8],
    /// The protocol a client asked to switch to (its `Upgrade` header, which `headers` no
    /// longer holds: it is hop-by-hop). Only an attempt that states it may be answered 101.
    pub upgrade: Option<&'a HeaderValue>,
}

/// Send `req` to `t` on an idle connection or a new one; the answer with its headers in a
/// map (hyper's path).
pub async fn send(
    t: &Arc<TargetState>,
    req: &Outgoing<'_>,
    connect_timeout: Duration,
) -> Result<Response<Body>, SendError> {
    send_with(t, req, connect_timeout, to_map)
        .await
        .map(into_response)
}

/// Hyper's answer from a head made by [`to_map`] and the body that follows it.
fn into_response(((status, headers), body): ((StatusCode, HeaderMap), Pooled)) -> Response<Body> {
    let mut resp = Response::new(Body::Pooled(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// An answer's head as a status and a header map.
fn to_map(a: &Answer<'_>) -> Result<(StatusCode, HeaderMap), SendError> {
    let mut headers = HeaderMap::with_capacity(a.headers.len());
    for h in a.headers {
        let k = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| SendError::Http(format!("bad header name {:?}", h.name)))?;
        let v = HeaderValue::from_bytes(h.value)
            .map_err(|_| SendError::Http(format!("bad value for header {k}")))?;
        headers.append(k, v);
    }
    Ok((a.status, headers))
}

/// Send `req` to `t` on an idle connection or a new one. `take` sees the answer's head
/// where it was read (the fast path copies it to the client from there); the body follows
/// from the connection.
pub async fn send_with<R>(
    t: &Arc<TargetState>,
    req: &Outgoing<'_>,
    connect_timeout: Duration,
    take: impl FnOnce(&Answer<'_>) -> Result<R, SendError>,
) -> Result<(R, Pooled), SendError> {
    let head_only = *req.method == Method::HEAD;
    loop {
        let (mut c, reused) = match t.idle.pop() {
            Some(c) => (c, true),
            None => (
                Conn {
                    io: connect(t, connect_timeout).await?,
                    buf: BytesMut::new(),
                    out: Vec::with_capacity(512 + req.body.len()),
                    idle_since: 0,
                },
                false,
            ),
        };
        c.out.clear();
        encode_head(&mut c.out, req);
        c.out.extend_from_slice(req.body);
        if let Err(e) = c.io.write_all(&c.out).await {
            // The target closed it while idle and it went unnoticed: no whole request
            // reached it, so a fresh connection may carry this one.
            if reused {
                continue;
            }
            return Err(SendError::Http(e.to_string()));
        }
        if c.out.capacity() > KEEP_OUT {
            c.out = Vec::new();
        }
        let how = How {
            head_only,
            upgrade: req.upgrade.is_some(),
            may_reuse: true,
        };
        return read_answer(c, t, how, take).await;
    }
}

/// The request line and headers, framed by what the balancer sends. The client's own
/// framing headers describe its message to us, not ours to the target.
fn encode_head(out: &mut Vec<u8>, r: &Outgoing<'_>) {
    encode_start(out, r);
    let len = r.body.len();
    if len > 0 || r.headers.contains_key(CONTENT_LENGTH) || body_expected(r.method) {
        let _ = write!(out, "content-length: {len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The head of a request whose body streams: `length` when the client stated one, else
/// chunked.
fn encode_head_framed(out: &mut Vec<u8>, r: &Outgoing<'_>, length: Option<u64>) {
    encode_start(out, r);
    match length {
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The request line and every header but the framing ones.
fn encode_start(out: &mut Vec<u8>, r: &Outgoing<'_>) {
    out.extend_from_slice(r.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(r.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = r.host.filter(|_| !r.headers.contains_key(HOST)) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (k, v) in r.headers {
        if k == CONTENT_LENGTH || k == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(r.raw);
    if let Some(u) = r.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        out.extend_from_slice(u.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Methods whose requests carry a body, so an empty one is stated (RFC 9110 §8.6).
fn body_expected(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH
}

/// How the answer's body ends (RFC 9112 §6.3).
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// At the end of the stream; the connection cannot be reused.
    Close,
    Done,
    /// A 101 answer: no body; the connection now carries the protocol switched to, and is
    /// taken over by [`Pooled::into_tunnel`].
    Switched,
}

/// A target's (final) answer head, parsed where it was read.
pub struct Answer<'a> {
    pub status: StatusCode,
    pub headers: &'a [httparse::Header<'a>],
    /// What the client is to be told of the body's length: `None` when the answer has no
    /// body (to a HEAD, a 204, a 304, a 101), `Some(None)` when it is not known (chunked,
    /// or until the target closes), `Some(Some(n))` for `n` bytes.
    pub length: Option<Option<u64>>,
    /// The target's `Connection` value: the headers it names are hop-by-hop.
    pub connection: Option<&'a [u8]>,
    /// Whether it had a `Date`.
    pub dated: bool,
}

/// Read the answer's head; 1xx interim answers are skipped (but for a 101 to a request
/// that asked to `upgrade`, which ends the HTTP exchange). `take` makes what the caller
/// wants of the head while it is still in the buffer.
async fn read_answer<R>(
    mut c: Conn,
    t: &Arc<TargetState>,
    how: How,
    take: impl FnOnce(&Answer<'_>) -> Result<R, SendError>,
) -> Result<(R, Pooled), SendError> {
    use SendError::Http;
    loop {
        if !c.buf.is_empty() {
            let mut hs =
                [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut r, &c.buf, &mut hs)
            {
                Ok(httparse::Status::Complete(n)) => {
                    let code = r.code.unwrap_or(0);
                    if (100..200).contains(&code) && code != 101 {
                        let _ = c.buf.split_to(n);
                        continue;
                    }
                    let status = StatusCode::from_u16(code)
                        .map_err(|_| Http(format!("bad status {code}")))?;
                    let mut facts = Facts::default();
                    for h in r.headers.iter() {
                        facts.note(h.name, h.value);
                    }
                    let framing = framing(status, &facts, &how)?;
                    let length = match &framing {
                        Framing::Length(n) if !how.head_only && !bodiless(status) => Some(Some(*n)),
                        Framing::Chunked(_) | Framing::Close => Some(None),
                        _ => None,
                    };
                    let made = take(&Answer {
                        status,
                        headers: r.headers,
                        length,
                        connection: facts.connection,
                        dated: facts.dated,
                    })?;
                    let reusable = how.may_reuse
                        && !facts.close
                        && (r.version != Some(0) || facts.keep_alive)
                        && !matches!(framing, Framing::Switched);
                    let _ = c.buf.split_to(n);
                    let mut body = Pooled {
                        conn: Some(c),
                        framing,
                        back: reusable.then(|| t.clone()),
                    };
                    body.check_done();
                    return Ok((made, body));
                }
                Ok(httparse::Status::Partial) if c.buf.len() > MAX_HEAD => {
                    return Err(Http(format!("answer head over {MAX_HEAD} bytes")))
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(Http(format!("bad answer: {e}"))),
            }
        }
        match c.fill().await {
            Ok(0) => return Err(Http("connection closed before an answer".into())),
            Ok(_) => {}
            Err(e) => return Err(Http(e.to_string())),
        }
    }
}

/// Statuses whose answers never have a body (RFC 9112 §6.3).
fn bodiless(s: StatusCode) -> bool {
    s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED
}

/// What an answer's headers say about its framing and its connection, noted in one pass
/// over them.
#[derive(Default)]
struct Facts<'a> {
    /// Whether the last Transfer-Encoding value ends in `chunked` (its last coding decides
    /// the framing); `None` without one.
    chunked: Option<bool>,
    content_length: Option<u64>,
    bad_length: Option<&'static str>,
    close: bool,
    keep_alive: bool,
    connection: Option<&'a [u8]>,
    dated: bool,
}

impl<'a> Facts<'a> {
    fn note(&mut self, k: &str, v: &'a [u8]) {
        // By length first: most headers are none of these, and are passed over at once.
        match k.len() {
            4 if k.eq_ignore_ascii_case("date") => self.dated = true,
            10 if k.eq_ignore_ascii_case("connection") => {
                self.close |= has_token(v, "close");
                self.keep_alive |= has_token(v, "keep-alive");
                self.connection = Some(v);
            }
            // After a bad one, the answer is refused whatever follows.
            14 if k.eq_ignore_ascii_case("content-length") && self.bad_length.is_none() => {
                if let Err(e) = add_content_length(&mut self.content_length, v) {
                    self.bad_length = Some(e);
                }
            }
            17 if k.eq_ignore_ascii_case("transfer-encoding") => {
                let last = v.rsplit(|&b| b == b',').next().unwrap_or(b"");
                self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            _ => {}
        }
    }
}

/// What, beside its headers, decides how an answer is read.
struct How {
    /// The request was a HEAD: no body follows, whatever the headers say.
    head_only: bool,
    /// The request asked to switch protocols.
    upgrade: bool,
    /// The connection is in step for another request once this answer ends (false when
    /// a streamed body may have been cut short).
    may_reuse: bool,
}

/// How the answer's body ends (RFC 9112 §6.3).
fn framing(status: StatusCode, facts: &Facts<'_>, how: &How) -> Result<Framing, SendError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if !how.upgrade {
            return Err(SendError::Http(
                "101 to a request that did not ask to switch protocols".into(),
            ));
        }
        return Ok(Framing::Switched);
    }
    Ok(if how.head_only || bodiless(status) {
        Framing::Length(0)
    } else if let Some(chunked) = facts.chunked {
        if chunked {
            Framing::Chunked(Chunked::default())
        } else {
            Framing::Close
        }
    } else if let Some(e) = facts.bad_length {
        return Err(SendError::Http(e.into()));
    } else if let Some(cl) = facts.content_length {
        Framing::Length(cl)
    } else {
        Framing::Close
    })
}

/// Fold one Content-Length value (possibly a list) into `n`: every length stated must be
/// the same; several that disagree are refused (RFC 9112 §6.3).
fn add_content_length(n: &mut Option<u64>, v: &[u8]) -> Result<(), &'static str> {
    for part in v.split(|&b| b == b',') {
        let p = std::str::from_utf8(part.trim_ascii())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("bad content-length")?;
        if n.is_some_and(|m| m != p) {
            return Err("conflicting content-length");
        }
        *n = Some(p);
    }
    Ok(())
}

pub fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A target's answer, streaming to the client straight from the connection, which goes
/// back to the idle list once the answer has been read to the end.
pub struct Pooled {
    conn: Option<Conn>,
    framing: Framing,
    /// The target to give the connection back to, if it may be reused.
    back: Option<Arc<TargetState>>,
}

impl Pooled {
    /// The connection of a 101 answer, and what the target sent after its head (already
    /// in the new protocol); `None` for any other answer.
    pub fn into_tunnel(self) -> Option<(TcpStream, BytesMut)> {
        match self.framing {
            Framing::Switched => self.conn.map(|c| (c.io, c.buf)),
            _ => None,
        }
    }

    /// At the end: give the connection back if it is clean (nothing read beyond the
    /// answer), else close it.
    fn check_done(&mut self) {
        if matches!(self.framing, Framing::Length(0)) {
            self.framing = Framing::Done;
        }
        if let Framing::Done = self.framing {
            if let (Some(c), Some(t)) = (self.conn.take(), self.back.take()) {
                if c.buf.is_empty() {
                    t.idle.push(c);
                }
            }
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(c) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let piece = match &mut self.framing {
                Framing::Done | Framing::Switched => return Poll::Ready(None),
                Framing::Length(left) => {
                    if c.buf.is_empty() {
                        None
                    } else {
                        let n = (*left).min(c.buf.len() as u64) as usize;
                        *left -= n as u64;
                        Some(c.buf.split_to(n).freeze())
                    }
                }
                Framing::Close => (!c.buf.is_empty()).then(|| c.buf.split().freeze()),
                Framing::Chunked(ch) => match ch.decode(&mut c.buf) {
                    Ok(Decoded::Data(b)) => Some(b),
                    Ok(Decoded::NeedMore) => None,
                    Ok(Decoded::End) => {
                        self.framing = Framing::Done;
                        self.check_done();
                        return Poll::Ready(None);
                    }
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
            };
            if let Some(b) = piece {
                self.check_done();
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            match ready!(c.poll_fill(cx)) {
                Ok(0) if matches!(self.framing, Framing::Close) => {
                    self.framing = Framing::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(
                        "the target closed the connection before the end of its answer".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// Its length is not known ahead (chunked, or until the target closes): it goes to the
    /// client chunked.
    pub fn is_chunked_out(&self) -> bool {
        matches!(self.framing, Framing::Chunked(_) | Framing::Close)
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Done | Framing::Length(0) | Framing::Switched
        )
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done | Framing::Switched => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Send a request whose body streams from the client (too big to keep for a retry), on a
/// connection of its own that is not kept. The body goes out with the client's framing
/// (its Content-Length, else chunked) while the target's answer is watched for: a target
/// may refuse an upload from its head (413, 401) and hang up without reading the rest,
/// and that answer is what the client must get (RFC 9112 §9.3), not a 502 for the write
/// that failed when the target reset the connection. After such a refusal the body stops
/// being sent, and what is left of it stays in `body` for the caller to drain; after an
/// answer that does not refuse it (a target that answers while it reads), the body goes
/// on to the end.
pub async fn send_streaming(
    t: &Arc<TargetState>,
    req: &Outgoing<'_>,
    body: &mut Body,
    connect_timeout: Duration,
) -> Result<Response<Body>, SendError> {
    let length = req
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut c = Conn {
        io: connect(t, connect_timeout).await?,
        buf: BytesMut::new(),
        out: Vec::new(),
        idle_since: 0,
    };
    // What is still to be written: the head, then each piece of the body in turn (one at
    // a time, so a slow target holds the client back rather than our memory filling up).
    let mut head = Vec::with_capacity(1024);
    encode_head_framed(&mut head, req, length);
    let mut out = BytesMut::from(&head[..]);
    let mut left = length;
    let mut body_done = false;
    // An answer that came while the body was going out and lets it go on: keep reading
    // (the target may not read more until its answer is taken) and keep sending.
    let mut answered = false;
    // Ends with `Some(error)` when writing or reading failed (the target may have answered
    // and hung up), `None` once the body is out or a refusing answer (or the end of the
    // target's stream) came first.
    let failed = std::future::poll_fn(|cx| loop {
        // The answer, as soon as its (final) head is in.
        match c.poll_fill(cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(None)),
            Poll::Ready(Ok(_)) => {
                if !answered {
                    match final_head(&c.buf) {
                        Some(true) => return Poll::Ready(Ok(None)),
                        Some(false) => answered = true,
                        None => {}
                    }
                }
                continue;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Ok(Some(e))),
            Poll::Pending => {}
        }
        if !out.is_empty() {
            match tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut c.io), cx, &out) {
                Poll::Ready(Ok(n)) => {
                    let _ = out.split_to(n);
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Ok(Some(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if body_done {
            return Poll::Ready(Ok(None));
        }
        match hyper::body::Body::poll_frame(std::pin::Pin::new(&mut *body), cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    if d.is_empty() {
                        continue;
                    }
                    match &mut left {
                        Some(n) => {
                            if d.len() as u64 > *n {
                                return Poll::Ready(Err(SendError::Http(
                                    "the request body is longer than its Content-Length".into(),
                                )));
                            }
                            *n -= d.len() as u64;
                            out.extend_from_slice(&d);
                        }
                        None => {
                            let _ = write!(ChunkHead(&mut out), "{:x}\r\n", d.len());
                            out.extend_from_slice(&d);
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                }
            }
            Poll::Ready(None) => {
                match left {
                    Some(0) => {}
                    Some(_) => {
                        return Poll::Ready(Err(SendError::Http(
                            "the request body ended before its Content-Length".into(),
                        )))
                    }
                    None => out.extend_from_slice(b"0\r\n\r\n"),
                }
                body_done = true;
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(SendError::Http(e.to_string()))),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await?;
    if let Some(e) = &failed {
        // Whatever the target said before it hung up is still ours to read; without a
        // whole answer head, the failed write is the error.
        if final_head(&c.buf).is_none() {
            loop {
                match c.fill().await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if final_head(&c.buf).is_some() => break,
                    Ok(_) => {}
                }
            }
            if final_head(&c.buf).is_none() {
                return Err(SendError::Http(e.to_string()));
            }
        }
    }
    let how = How {
        head_only: req.method == Method::HEAD,
        upgrade: false,
        may_reuse: false,
    };
    read_answer(c, t, how, to_map).await.map(into_response)
}

/// `write!` into a `BytesMut` (chunk sizes).
struct ChunkHead<'a>(&'a mut BytesMut);

impl Write for ChunkHead<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The final (non-1xx, or 101) answer head in `buf`, after any interim ones: `Some(true)`
/// when it refuses the rest of the request body (an error status, or the target saying
/// it closes: RFC 9112 §9.3), `Some(false)` for an answer that lets the upload go on (a
/// target answering while it reads, as a streaming echo does), `None` while incomplete.
fn final_head(buf: &[u8]) -> Option<bool> {
    let mut at = 0;
    loop {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut hs);
        match r.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(n)) => {
                let code = r.code.unwrap_or(0);
                if (100..200).contains(&code) && code != 101 {
                    at += n;
                    continue;
                }
                let closing = r.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && h.value
                            .split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                });
                return Some(code >= 400 || closing);
            }
            // A head that cannot parse is an answer too: `read_answer` says what is wrong.
            Err(_) => return Some(true),
            Ok(httparse::Status::Partial) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, headers: &[(&str, &str)], len: usize) -> String {
        head_switching(method, headers, len, None)
    }

    fn head_switching(
        method: &str,
        headers: &[(&str, &str)],
        len: usize,
        upgrade: Option<&str>,
    ) -> String {
        let mut r = hyper::Request::builder().method(method).uri("/a?b=c");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let (p, ()) = r.body(()).unwrap().into_parts();
        let body = vec![b'x'; len];
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Outgoing {
                method: &p.method,
                target: p.uri.path_and_query().unwrap().as_str(),
                headers: &p.headers,
                raw: &[],
                host: Some("t:1"),
                body: &body,
                upgrade: upgrade
                    .map(HeaderValue::from_str)
                    .transpose()
                    .unwrap()
                    .as_ref(),
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_head_states_our_framing_not_the_clients() {
        assert_eq!(
            head("GET", &[("host", "x")], 0),
            "GET /a?b=c HTTP/1.1\r\nhost: x\r\n\r\n"
        );
        // Without a Host from the client, the target's address is stated.
        assert_eq!(
            head("POST", &[("content-length", "3"), ("x-a", "1")], 3),
            "POST /a?b=c HTTP/1.1\r\nhost: t:1\r\nx-a: 1\r\ncontent-length: 3\r\n\r\n"
        );
        // An empty POST says so; a chunked one that arrived whole is sent with a length.
        assert_eq!(
            head("POST", &[("host", "x")], 0),
            "POST /a?b=c HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
        );
        // A protocol switch is asked of the target in the balancer's own words.
        assert_eq!(
            head_switching("GET", &[("host", "x")], 0, Some("websocket")),
            "GET /a?b=c HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        );
        assert_eq!(
            head("PUT", &[("host", "x"), ("transfer-encoding", "chunked")], 5),
            "PUT /a?b=c HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n"
        );
    }

    /// Connections idle past the limit are closed by the sweep (the target sees them end);
    /// fresher ones stay.
    #[tokio::test]
    async fn idle_connections_past_the_limit_are_closed() {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let idle = Idle::default();
        let mut far = Vec::new();
        for _ in 0..2 {
            let io = TcpStream::connect(addr).await.unwrap();
            far.push(l.accept().await.unwrap().0);
            idle.push(Conn {
                io,
                buf: BytesMut::new(),
                out: Vec::new(),
                idle_since: 0,
            });
            tick(std::time::Instant::now() + Duration::from_secs(3));
        }
        assert_eq!(idle.len(), 2);
        assert_eq!(
            idle.sweep(Duration::from_secs(4)),
            0,
            "none is 4 s idle yet"
        );
        tick(std::time::Instant::now() + Duration::from_secs(6));
        assert_eq!(idle.sweep(Duration::from_secs(4)), 1, "the older one goes");
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), far[0].read(&mut b))
            .await
            .expect("the swept connection is closed")
            .unwrap();
        assert_eq!(n, 0);
        tick(std::time::Instant::now() + Duration::from_secs(10));
        assert_eq!(idle.sweep(Duration::from_secs(4)), 1);
        assert!(idle.is_empty());
    }

    #[test]
    fn content_lengths_are_checked() {
        let h = |vs: &[&str]| {
            let mut f = Facts::default();
            for v in vs {
                f.note("Content-Length", v.as_bytes());
            }
            match f.bad_length {
                Some(e) => Err(e),
                None => Ok(f.content_length),
            }
        };
        assert_eq!(h(&[]).unwrap(), None);
        assert_eq!(h(&["12"]).unwrap(), Some(12));
        assert_eq!(h(&["12", "12"]).unwrap(), Some(12));
        assert_eq!(h(&["12, 12"]).unwrap(), Some(12));
        assert!(h(&["12", "13"]).is_err());
        assert!(h(&["-1"]).is_err());
        assert!(h(&["+1"]).is_err());
        assert!(h(&[""]).is_err());
        assert!(h(&["99999999999999999999999"]).is_err());
    }

    #[test]
    fn connection_tokens_are_matched_whole_and_caseless() {
        let mut f = Facts::default();
        f.note("connection", b"Keep-Alive, x-closed");
        assert!(f.keep_alive);
        assert!(!f.close);
        f.note("Connection", b"CLOSE");
        assert_eq!(f.connection, Some(&b"CLOSE"[..]));
        assert!(f.close);
    }
}
