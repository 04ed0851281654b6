//! In-flight requests per pool, measured by the kernel: established TCP connections whose
//! local port is one of the pool's ports (`/proc/net/tcp` and `tcp6`). This needs no
//! cooperation from the workers and counts traffic from any client, a balancer included.

use std::collections::HashSet;

/// Established connections accepted on any of `ports`.
pub fn established(ports: &HashSet<u16>) -> u32 {
    if ports.is_empty() {
        return 0;
    }
    let mut n = 0;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(s) = std::fs::read_to_string(f) {
            n += count(&s, ports);
        }
    }
    n
}

/// Established sockets on one of `ports` whose local address a listener there owns (or
/// the listener takes every address): so an outgoing connection that happens to use the
/// same port number from another address is not mistaken for one the pool accepted.
fn count(table: &str, ports: &HashSet<u16>) -> u32 {
    let entries = || {
        table.lines().skip(1).filter_map(|line| {
            let mut it = line.split_whitespace();
            let (_sl, local, _remote, state) = (it.next()?, it.next()?, it.next()?, it.next()?);
            let (addr, port) = local.rsplit_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            ports.contains(&port).then_some((addr, port, state))
        })
    };
    let listeners: Vec<(&str, u16)> = entries()
        .filter(|e| e.2 == "0A")
        .map(|(a, p, _)| (a, p))
        .collect();
    let wildcard = |a: &str| a.bytes().all(|b| b == b'0');
    entries()
        .filter(|(addr, port, state)| {
            *state == "01"
                && listeners
                    .iter()
                    .any(|(la, lp)| lp == port && (la == addr || wildcard(la)))
        })
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_established_server_sides() {
        // 1: accepted on 127.0.0.1:8080; 2: the client's side of it; 3: TIME_WAIT;
        // 4: an outgoing connection from 10.0.0.5 that happens to use port 8080;
        // 5-6: a wildcard listener on 8081 and a connection it accepted.
        let table = "  sl  local_address rem_address   st\n\
   0: 0100007F:1F90 00000000:0000 0A 0\n\
   1: 0100007F:1F90 0100007F:D431 01 0\n\
   2: 0100007F:D431 0100007F:1F90 01 0\n\
   3: 0100007F:1F91 0100007F:D432 06 0\n\
   4: 0500000A:1F90 0A00000A:01BB 01 0\n\
   5: 00000000:1F91 00000000:0000 0A 0\n\
   6: 0100007F:1F91 0100007F:D433 01 0\n";
        let ports: HashSet<u16> = [0x1F90, 0x1F91].into();
        assert_eq!(count(table, &ports), 2);
        // No listener on a port: nothing there was accepted by the pool.
        assert_eq!(count(table, &[0xD431].into()), 0);
    }

    #[tokio::test]
    async fn sees_a_real_connection() {
        // Without SO_REUSEADDR (which std's and tokio's `bind` set), no other socket on
        // 127.0.0.1 can take this listener's port while it listens. Counted before and
        // after our connection: CI once saw a second established socket on the port, from
        // outside the test, which the difference leaves out.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(false).unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = sock.listen(8).unwrap();
        let port = l.local_addr().unwrap().port();
        let before = established(&[port].into());
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let s = l.accept().await.unwrap();
        let with = established(&[port].into());
        let table = || {
            let hex = format!(":{port:04X} ");
            ["/proc/net/tcp", "/proc/net/tcp6"]
                .iter()
                .flat_map(|f| {
                    let t = std::fs::read_to_string(f).unwrap_or_default();
                    t.lines().map(String::from).collect::<Vec<_>>()
                })
                .filter(|l| l.contains(&hex))
                .collect::<Vec<_>>()
        };
        // At least ours: a connection from another test thread can land on this port too
        // (one that picked a port, released it and then connected to it, expecting nothing
        // there); seen once at 16 test threads, gone again by the time the table was read.
        assert!(
            with > before,
            "port {port}: {with} <= {before}: {:#?}",
            table()
        );
        drop((c, s));
        // Closed once every copy of the descriptors is: a process another test thread
        // forks at this moment holds copies until it execs (close-on-exec). Seen at 16
        // test threads while the supervisor tests were spawning replicas.
        let start = std::time::Instant::now();
        while established(&[port].into()) >= with {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "port {port}: still established 5 s after both ends were closed: {:#?}",
                table()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
