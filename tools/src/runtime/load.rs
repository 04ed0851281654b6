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

fn count(table: &str, ports: &HashSet<u16>) -> u32 {
    let mut n = 0;
    for line in table.lines().skip(1) {
        let mut it = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(state)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        if state != "01" {
            continue;
        }
        let Some(port) = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if ports.contains(&port) {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_established_server_sides() {
        let table = "  sl  local_address rem_address   st\n\
   0: 0100007F:1F90 00000000:0000 0A 0\n\
   1: 0100007F:1F90 0100007F:D431 01 0\n\
   2: 0100007F:D431 0100007F:1F90 01 0\n\
   3: 0100007F:1F91 0100007F:D432 06 0\n";
        let ports: HashSet<u16> = [0x1F90, 0x1F91].into();
        assert_eq!(count(table, &ports), 1);
    }

    #[test]
    fn sees_a_real_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _s = l.accept().unwrap();
        assert_eq!(established(&[port].into()), 1);
    }
}
