//! A switched connection: after a target answers `101 Switching Protocols` (a WebSocket
//! handshake, or any other `Upgrade`), the balancer stops speaking HTTP on that client
//! connection and copies bytes both ways between the client and that one target.
//!
//! Like nginx's `proxy_read_timeout` on a WebSocket, a tunnel that carries nothing either
//! way for `idle` is closed, so a peer that vanished without a FIN (a laptop put to
//! sleep) does not hold a connection and a target slot forever; applications that want
//! longer silences send pings. A side that ends its sending (FIN) has that passed on as a
//! shutdown of the other side's writing, and the tunnel lasts until both have.

use bytes::BytesMut;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const BUF: usize = 16 * 1024;

/// Bytes carried each way: (client to target, target to client).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub up: u64,
    pub down: u64,
}

/// Copy between `client` and `target` until both sides have finished sending, one fails,
/// or nothing has moved for `idle`. `early` is what the target sent right behind its 101
/// head (already in the new protocol), delivered to the client first.
pub async fn run<C, T>(client: C, target: T, early: BytesMut, idle: Duration) -> io::Result<Carried>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut tr, mut tw) = tokio::io::split(target);
    let mut carried = Carried::default();
    if !early.is_empty() {
        cw.write_all(&early).await?;
        cw.flush().await?;
        carried.down += early.len() as u64;
    }
    let (mut up, mut down) = (vec![0u8; BUF], vec![0u8; BUF]);
    let (mut client_open, mut target_open) = (true, true);
    let quiet = tokio::time::sleep(idle);
    tokio::pin!(quiet);
    while client_open || target_open {
        tokio::select! {
            r = cr.read(&mut up), if client_open => {
                let n = r?;
                if n == 0 {
                    client_open = false;
                    tw.shutdown().await?;
                } else {
                    tw.write_all(&up[..n]).await?;
                    carried.up += n as u64;
                }
            }
            r = tr.read(&mut down), if target_open => {
                let n = r?;
                if n == 0 {
                    target_open = false;
                    cw.shutdown().await?;
                } else {
                    cw.write_all(&down[..n]).await?;
                    cw.flush().await?;
                    carried.down += n as u64;
                }
            }
            _ = &mut quiet => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing carried either way for {idle:?}"),
                ));
            }
        }
        quiet.as_mut().reset(tokio::time::Instant::now() + idle);
    }
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn carries_both_ways_early_bytes_first_and_passes_on_each_end() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (target, mut target_far) = tokio::io::duplex(64);
        let t = tokio::spawn(run(
            client,
            target,
            BytesMut::from(&b"hi"[..]),
            Duration::from_secs(30),
        ));
        let mut b = [0u8; 2];
        client_far.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hi");
        client_far.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        target_far.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        target_far.write_all(b"pong!").await.unwrap();
        let mut b = [0u8; 5];
        client_far.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong!");
        // The client ends: the target sees the end, may still answer, then ends too.
        client_far.shutdown().await.unwrap();
        let mut rest = Vec::new();
        target_far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        target_far.write_all(b"bye").await.unwrap();
        target_far.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client_far.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        let carried = t.await.unwrap().unwrap();
        assert_eq!(carried, Carried { up: 4, down: 10 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_is_closed_after_the_idle_time() {
        let (client, _client_far) = tokio::io::duplex(64);
        let (target, _target_far) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let e = run(client, target, BytesMut::new(), Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
