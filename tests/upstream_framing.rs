//! The balancer's own HTTP/1.1 client against a target that answers every way an answer
//! can be framed (chunked with extensions and trailers, close-delimited, 204, HEAD, 1xx
//! interim answers, a large body), on real loopback sockets. It passes each on intact
//! (less the hop-by-hop headers, including those `Connection` names), reuses a connection
//! only when the answer before ended cleanly, and notices an idle connection the target
//! closed before sending a request that must not be repeated.

use localdr::runtime::balancer;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BIG: usize = 1_000_000;

/// A target on a free port that answers by path; counts the connections it accepted.
struct Upstream {
    port: u16,
    conns: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn target() -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (conns.clone(), stop.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            if s.load(Ordering::Relaxed) {
                return;
            }
            let Ok(conn) = conn else { continue };
            c.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || serve(conn));
        }
    });
    Upstream { port, conns, stop }
}

/// Answer requests on one connection until it closes or an answer ends it.
fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut b = [0u8; 4096];
            match s.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        };
        let buf_head = buf[..end].to_vec();
        let head = String::from_utf8_lossy(&buf_head).to_lowercase();
        let mut words = head.split_whitespace();
        let (method, path) = (
            words.next().unwrap().to_string(),
            words.next().unwrap().to_string(),
        );
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        if path == "/early-ok" {
            // Answer from the head, then stream the upload back as it arrives.
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            let mut got = buf.len() - end;
            let _ = s.write_all(&buf[end..]);
            while got < len {
                let mut b = [0u8; 65536];
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        got += n;
                        if s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            return;
        }
        if path == "/too-large" {
            // Refuse the upload from its head alone and hang up without reading the body,
            // as a server enforcing a size limit does: the unread bytes make the kernel
            // reset the connection.
            let _ = s.write_all(
                b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 9\r\n\r\ntoo large",
            );
            return;
        }
        let body = if head.contains("\r\ntransfer-encoding: chunked\r\n") {
            // Read until the whole chunked body is in, then decode it.
            buf.drain(..end);
            loop {
                let (b, complete) = dechunk(&buf);
                if complete {
                    let at = buf.windows(5).position(|w| w == b"0\r\n\r\n").unwrap();
                    buf.drain(..at + 5);
                    break b;
                }
                let mut more = [0u8; 4096];
                match s.read(&mut more) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&more[..n]),
                }
            }
        } else {
            while buf.len() < end + len {
                let mut b = [0u8; 4096];
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
            }
            let body = buf[end..end + len].to_vec();
            buf.drain(..end + len);
            body
        };
        let out: Vec<u8> = match (method.as_str(), path.as_str()) {
            (_, "/chunked") => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n".to_vec(),
            (_, "/nocontent") => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            (_, "/continue") => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            ("head", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec(),
            (_, "/big") => {
                let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes();
                v.extend(std::iter::repeat_n(b'x', BIG));
                v
            }
            (_, "/echo") => {
                let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                v.extend_from_slice(&body);
                v
            }
            (_, "/close") => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end");
                return;
            }
            (_, "/then-close") => {
                // Keep-alive by its head, then the target closes it, as an idle timeout does.
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                return;
            }
            (_, "/bad-chunk") => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n".to_vec(),
            (_, "/head") => {
                // The request head as the target saw it, and a header of its own that its
                // Connection header makes hop-by-hop.
                let seen = String::from_utf8_lossy(&buf_head).to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Kept: 1\r\nContent-Length: {}\r\n\r\n{seen}",
                    seen.len()
                )
                .into_bytes()
            }
            (_, "/extra") => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK".to_vec(),
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

/// One request per client connection: status, lower-cased head, decoded body, and
/// whether the body arrived complete.
fn call(port: u16, method: &str, path: &str, body: &str) -> (u16, String, Vec<u8>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Written from another thread, as a client that reads the answer while it uploads: an
    // answer may come (and the upload be cut off) before the whole body is out.
    let mut w = s.try_clone().unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(req.as_bytes());
    });
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let _ = writer.join();
    // No head at all: the balancer gave up on the answer before sending anything.
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, String::new(), raw, false);
    };
    let end = end + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let rest = &raw[end..];
    if head.contains("transfer-encoding: chunked") {
        let (b, complete) = dechunk(rest);
        (code, head, b, complete)
    } else {
        let want = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let complete = want.is_none_or(|n| method == "HEAD" || n == rest.len());
        (code, head, rest.to_vec(), complete)
    }
}

fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let Ok(n) = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap_or("x"), 16) else {
            return (out, false);
        };
        b = &b[i + 2..];
        if n == 0 {
            return (
                out,
                b.starts_with(b"\r\n") || b.windows(4).any(|w| w == b"\r\n\r\n"),
            );
        }
        if b.len() < n + 2 {
            out.extend_from_slice(&b[..b.len().min(n)]);
            return (out, false);
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

#[test]
fn every_framing_passes_intact_and_only_clean_connections_are_reused() {
    let t = target();
    let h = balancer::start(localdr_e2e::balancer_spec("framing", &[(t.port, 1)]), None).unwrap();
    let lb = h.listen.port();
    let conns = || t.conns.load(Ordering::Relaxed);

    let (c, _, b, ok) = call(lb, "GET", "/chunked", "");
    assert_eq!((c, b.as_slice(), ok), (200, &b"hello world"[..], true));
    let (c, _, b, ok) = call(lb, "GET", "/nocontent", "");
    assert_eq!((c, b.len(), ok), (204, 0, true));
    let (c, head, b, ok) = call(lb, "GET", "/continue", "");
    assert_eq!((c, b.as_slice(), ok), (200, &b"ok"[..], true), "{head}");
    let (c, head, b, _) = call(lb, "HEAD", "/len", "");
    assert_eq!((c, b.len()), (200, 0));
    assert!(head.contains("content-length: 10"), "{head}");
    let (c, _, b, ok) = call(lb, "GET", "/big", "");
    assert_eq!((c, b.len(), ok), (200, BIG, true));
    assert!(b.iter().all(|&x| x == b'x'));
    let (c, _, b, _) = call(lb, "POST", "/echo", "a body");
    assert_eq!((c, b.as_slice()), (200, &b"a body"[..]));
    assert_eq!(
        conns(),
        1,
        "every answer so far ended cleanly: one connection, reused"
    );

    // Headers the Connection header names are dropped both ways (RFC 9110 §7.6.1).
    let mut s = TcpStream::connect(("127.0.0.1", lb)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /head HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nX-Public: 1\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let raw = raw.to_lowercase();
    assert!(raw.starts_with("http/1.1 200"), "{raw}");
    assert!(
        raw.contains("x-public: 1") && !raw.contains("x-secret"),
        "{raw}"
    );
    assert!(raw.contains("x-kept: 1") && !raw.contains("x-hop"), "{raw}");
    assert_eq!(conns(), 1);

    // Close-delimited: read to the end, then that connection is gone.
    let (c, _, b, ok) = call(lb, "GET", "/close", "");
    assert_eq!((c, b.as_slice(), ok), (200, &b"until the end"[..], true));
    let (c, ..) = call(lb, "GET", "/chunked", "");
    assert_eq!((c, conns()), (200, 2));

    // A malformed chunked answer is cut off for the client and its connection dropped.
    let (c, _, b, ok) = call(lb, "GET", "/bad-chunk", "");
    assert!(c == 200 || c == 0, "{c}");
    assert!(!ok, "a broken answer must not look complete: {b:?}");
    let (c, ..) = call(lb, "GET", "/chunked", "");
    assert_eq!((c, conns()), (200, 3));

    // Bytes after the answer: the connection is out of step and not reused.
    let (c, _, b, _) = call(lb, "GET", "/extra", "");
    assert_eq!((c, b.as_slice()), (200, &b"ok"[..]));
    let (c, ..) = call(lb, "GET", "/chunked", "");
    assert_eq!((c, conns()), (200, 4));

    // The target closes an idle connection: a POST (never repeated) still goes through,
    // on a fresh connection.
    let (c, ..) = call(lb, "GET", "/then-close", "");
    assert_eq!(c, 200);
    std::thread::sleep(Duration::from_millis(200));
    let (c, _, b, _) = call(lb, "POST", "/echo", "once");
    assert_eq!((c, b.as_slice()), (200, &b"once"[..]));
    assert_eq!(conns(), 5);

    // A body too big to keep streams through on a connection of its own.
    let big = "y".repeat(200_000);
    let (c, _, b, ok) = call(lb, "POST", "/echo", &big);
    assert_eq!((c, b.len(), ok), (200, big.len(), true));
    assert!(b.iter().all(|&x| x == b'y'));
    assert_eq!(conns(), 6);
    h.stop();
}

/// A target that refuses an upload from its head and hangs up without reading the body
/// (the kernel then resets the connection) still gets its answer to the client, for a
/// body the balancer holds (sent in one write) and for one it streams.
#[test]
fn an_early_answer_to_an_unread_upload_reaches_the_client() {
    let t = target();
    let h = balancer::start(localdr_e2e::balancer_spec("early", &[(t.port, 1)]), None).unwrap();
    let lb = h.listen.port();
    for size in [60_000, 300_000, 3_000_000] {
        let body = "x".repeat(size);
        let (c, head, b, _) = call(lb, "POST", "/too-large", &body);
        assert_eq!(
            (c, b.as_slice()),
            (413, &b"too large"[..]),
            "{size}-byte upload: {head}"
        );
    }
    h.stop();
}

/// A chunked upload too big to keep goes to the target chunked, piece by piece, and the
/// target gets every byte (it echoes them back).
#[test]
fn a_chunked_upload_streams_through_chunked() {
    let t = target();
    let h = balancer::start(localdr_e2e::balancer_spec("chunked", &[(t.port, 1)]), None).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", h.listen.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let sent: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let body = sent.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        for piece in body.chunks(7_001) {
            write!(w, "{:x}\r\n", piece.len()).unwrap();
            w.write_all(piece).unwrap();
            w.write_all(b"\r\n").unwrap();
        }
        w.write_all(b"0\r\n\r\n").unwrap();
    });
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    writer.join().unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(raw[end..].len(), sent.len(), "{head}");
    assert!(raw[end..] == sent[..], "the echoed body differs");
    h.stop();
}

/// A client that sends its whole upload before it reads (many do) still gets the
/// target's early answer: the balancer reads and drops the rest of the upload (nginx's
/// lingering close) instead of closing on unread data, which would reset the connection
/// under the client's feet.
#[test]
fn a_client_that_uploads_before_reading_gets_the_early_answer() {
    let t = target();
    let h = balancer::start(localdr_e2e::balancer_spec("linger", &[(t.port, 1)]), None).unwrap();
    let body = vec![b'x'; 30_000_000];
    let mut s = TcpStream::connect(("127.0.0.1", h.listen.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /too-large HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).expect("the whole upload is taken");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with("too large"), "{text}");
    h.stop();
}

/// `correlation_id`: the id goes to the target under the configured header (kept from the
/// client when it sent one, generated otherwise) and, with `echo_downstream = false`, not
/// back to the client.
#[test]
fn the_request_id_header_is_configurable_and_echo_can_be_off() {
    let t = target();
    let mut spec = localdr_e2e::balancer_spec("corr", &[(t.port, 1)]);
    spec.correlation_id.header_name = "X-Correlation-ID".into();
    spec.correlation_id.echo_downstream = false;
    let h = balancer::start(spec, None).unwrap();
    let ask = |extra: &str| localdr_e2e::http_get(h.listen.port(), "/head", extra).to_lowercase();
    let out = ask("");
    let (head, seen) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("http/1.1 200"), "{out}");
    let id = seen
        .lines()
        .find_map(|l| l.strip_prefix("x-correlation-id: "))
        .unwrap_or_else(|| panic!("no id reached the target: {seen}"));
    assert_eq!(id.trim().len(), 24, "{seen}");
    assert!(!seen.contains("x-request-id"), "{seen}");
    assert!(
        !head.contains("x-correlation-id") && !head.contains("x-request-id"),
        "{head}"
    );
    // A client's own id is kept.
    let out = ask("X-Correlation-ID: abc-123\r\n");
    assert!(out.contains("\r\nx-correlation-id: abc-123\r\n"), "{out}");
    h.stop();
}

/// A target that answers 200 from the head and streams the upload back as it reads it
/// (nothing refused) gets the whole upload, and the client the whole echo.
#[test]
fn an_early_answer_that_refuses_nothing_lets_the_upload_go_on() {
    let t = target();
    let h = balancer::start(localdr_e2e::balancer_spec("duplex", &[(t.port, 1)]), None).unwrap();
    let body: String = (0..3_000_000u32)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let (c, head, b, complete) = call(h.listen.port(), "POST", "/early-ok", &body);
    assert_eq!(c, 200, "{head}");
    assert!(
        complete && b == body.as_bytes(),
        "{} of {} bytes echoed",
        b.len(),
        body.len()
    );
    h.stop();
}

/// Answers read back to back from `raw`, one per method in `methods`: status, head, body.
fn answers(mut raw: &[u8], methods: &[&str]) -> Vec<(u16, String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in methods {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "no answer head for {m} in {:?}",
                    String::from_utf8_lossy(raw)
                )
            })
            + 4;
        let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
        let code: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        raw = &raw[end..];
        let body = if *m == "HEAD" || code == 204 || code == 304 {
            Vec::new()
        } else if head.contains("transfer-encoding: chunked") {
            let (b, complete) = dechunk(raw);
            assert!(complete, "{head}");
            let at = raw.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5;
            raw = &raw[at..];
            b
        } else {
            let n: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(raw.len());
            let b = raw[..n].to_vec();
            raw = &raw[n..];
            b
        };
        out.push((code, head, body));
    }
    assert!(raw.is_empty(), "bytes after the last answer: {raw:?}");
    out
}

/// Requests pipelined on one kept-alive connection: bodiless ones (served by the
/// balancer's fast path), then one with a body (from which hyper serves the connection),
/// then one more that closes. Every answer comes back complete and in order, an answer of
/// unknown length is chunked, and the request id of each is its own. An HTTP/1.0 client
/// gets an answer it can read (close-delimited).
#[test]
fn pipelined_requests_across_both_paths_on_one_connection() {
    let t = target();
    let h = balancer::start(localdr_e2e::balancer_spec("pipe", &[(t.port, 1)]), None).unwrap();
    let lb = h.listen.port();
    let mut s = TcpStream::connect(("127.0.0.1", lb)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /chunked HTTP/1.1\r\nHost: x\r\nX-Request-ID: one\r\n\r\n\
          HEAD /len HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /close HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /nocontent HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody\
          GET /chunked HTTP/1.1\r\nHost: x\r\nX-Request-ID: last\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let a = answers(&raw, &["GET", "HEAD", "GET", "GET", "POST", "GET"]);
    let got: Vec<(u16, &[u8])> = a.iter().map(|(c, _, b)| (*c, b.as_slice())).collect();
    assert_eq!(
        got,
        [
            (200, &b"hello world"[..]),
            (200, &b""[..]),
            (200, &b"until the end"[..]),
            (204, &b""[..]),
            (200, &b"body"[..]),
            (200, &b"hello world"[..]),
        ]
    );
    assert!(a[0].1.contains("x-request-id: one\r\n"), "{}", a[0].1);
    assert!(a[1].1.contains("content-length: 10\r\n"), "{}", a[1].1);
    assert!(
        a[2].1.contains("transfer-encoding: chunked\r\n"),
        "{}",
        a[2].1
    );
    assert!(a[5].1.contains("x-request-id: last\r\n"), "{}", a[5].1);
    assert!(a[5].1.contains("connection: close\r\n"), "{}", a[5].1);
    for (_, head, _) in &a {
        assert!(head.contains("\r\ndate: "), "{head}");
    }
    let ids: std::collections::HashSet<&str> = a
        .iter()
        .filter_map(|(_, h, _)| h.lines().find_map(|l| l.strip_prefix("x-request-id: ")))
        .collect();
    assert_eq!(ids.len(), 6, "{ids:?}");

    // HTTP/1.0: no chunked encoding, so the end of the body is the end of the connection.
    let mut s = TcpStream::connect(("127.0.0.1", lb)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /close HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(
        raw.starts_with("http/1.0 200") || raw.starts_with("http/1.1 200"),
        "{raw}"
    );
    assert!(
        !raw.contains("chunked") && raw.ends_with("\r\n\r\nuntil the end"),
        "{raw}"
    );
    h.stop();
}
