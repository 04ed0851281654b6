//! Turn on TCP_NODELAY on Terraform's connection.
//!
//! tf-provider serves gRPC over TCP without TCP_NODELAY, so every small response waits for
//! Nagle + delayed ACK (~40 ms a call: a 200-resource plan took 17 s instead of under 1 s).
//! `serve()` gives no hook to the socket, so once Terraform has connected we walk our own
//! file descriptors and set the option on each TCP socket. Called at the top of every RPC
//! handler; after one connected socket has been switched it is a single atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

static DONE: AtomicBool = AtomicBool::new(false);

pub fn ensure() {
    if DONE.load(Ordering::Relaxed) {
        return;
    }
    // For the overhead benchmark only: measure what the crate does without the fix.
    if std::env::var_os("LOCALDR_BENCH_NO_NODELAY").is_some() {
        DONE.store(true, Ordering::Relaxed);
        return;
    }
    if switch_all() {
        DONE.store(true, Ordering::Relaxed);
        tracing::debug!("TCP_NODELAY set on the Terraform connection");
    }
}

/// Set TCP_NODELAY on every socket we hold; true when a connected TCP socket was switched.
fn switch_all() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    let mut switched = false;
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let one: libc::c_int = 1;
        // SAFETY: setsockopt/getpeername only read and write the buffers passed, which live
        // for the call; a descriptor that is not a TCP socket just returns an error.
        unsafe {
            let rc = libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            if rc != 0 {
                continue;
            }
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) == 0 {
                switched = true;
            }
        }
    }
    switched
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn sets_nodelay_on_a_connected_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert!(!s.nodelay().unwrap());
        assert!(switch_all());
        assert!(s.nodelay().unwrap() && c.nodelay().unwrap());
        let _ = c.as_raw_fd();
    }
}
