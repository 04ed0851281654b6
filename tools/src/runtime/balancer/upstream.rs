//! Connections to targets: a few idle HTTP/1.1 connections per target, reused.
//!
//! A connection goes back to its target's idle list only once the answer it carried has
//! been read to the end, so a reused connection is always free (no request waits behind
//! another's streaming body), and a connection whose answer was abandoned half-way is
//! closed rather than reused. A request that a reused connection could not even start
//! (the target had closed it while idle) goes out again on a fresh one: nothing was sent.

use super::proxy::Body;
use super::targets::TargetState;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Idle connections kept per target.
const MAX_IDLE: usize = 64;

/// Why a request got no answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// The connection broke after the request went out (or while it did).
    Http(hyper::Error),
}

/// The idle connections of one target.
#[derive(Default)]
pub struct Idle(std::sync::Mutex<Vec<SendRequest<Body>>>);

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|l| l.len()).unwrap_or(0);
        write!(f, "Idle({n})")
    }
}

impl Idle {
    fn pop(&self) -> Option<SendRequest<Body>> {
        self.0.lock().ok()?.pop()
    }

    fn push(&self, s: SendRequest<Body>) {
        if let Ok(mut l) = self.0.lock() {
            if l.len() < MAX_IDLE {
                l.push(s);
            }
        }
    }
}

async fn connect(t: &TargetState, timeout: Duration) -> Result<SendRequest<Body>, SendError> {
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&t.address)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
        Err(_) => {
            return Err(SendError::Connect(format!(
                "connect timed out after {timeout:?}"
            )))
        }
    };
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Send `req` to `t` on an idle connection or a new one.
pub async fn send(
    t: &Arc<TargetState>,
    mut req: Request<Body>,
    connect_timeout: Duration,
) -> Result<Response<Body>, SendError> {
    loop {
        let (mut sender, reused) = match t.idle.pop() {
            Some(s) if !s.is_closed() => (s, true),
            Some(_) => continue,
            None => (connect(t, connect_timeout).await?, false),
        };
        if reused && sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let body = Pooled {
                    body,
                    back: Some((sender, t.clone())),
                };
                return Ok(Response::from_parts(parts, Body::Pooled(body)));
            }
            Err(mut e) => match e.take_message() {
                // Not sent: the idle connection had been closed by the target.
                Some(r) if reused => req = r,
                _ => return Err(SendError::Http(e.into_error())),
            },
        }
    }
}

/// A target's answer, streaming to the client; its connection returns to the idle list
/// once the answer has been read to the end.
pub struct Pooled {
    body: Incoming,
    back: Option<(SendRequest<Body>, Arc<TargetState>)>,
}

impl Pooled {
    fn release(&mut self) {
        if let Some((s, t)) = self.back.take() {
            t.idle.push(s);
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, hyper::Error>>> {
        let r = hyper::body::Body::poll_frame(Pin::new(&mut self.body), cx);
        if let Poll::Ready(None) = r {
            self.release();
        }
        r
    }

    pub fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    pub fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Read to the end: reusable. Abandoned half-way: dropping closes it.
        if hyper::body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}
