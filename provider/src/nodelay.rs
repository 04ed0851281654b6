//! Turn on TCP_NODELAY on Terraform's connection.
//!
//! tf-provider serves gRPC over TCP without TCP_NODELAY, so every small response waits for
//! Nagle + delayed ACK (~40 ms a call: a 200-resource plan took 17 s instead of under 1 s).
//! `serve()` gives no hook to the socket, so we walk our own file descriptors and set the
//! option on each TCP socket, at two moments:
//!
//! - [`before_handshake`]: the crate binds its listener, then prints the go-plugin handshake
//!   line on stdout, and Terraform connects only once it has read that line. Our stdout goes
//!   through a pipe whose reader switches the *listener* before passing the line on; Linux
//!   copies TCP_NODELAY to every socket `accept` returns, so even the TLS and HTTP/2
//!   handshakes and the first RPC run without Nagle (setting it at the first RPC instead
//!   left ~40 ms per plugin start and as much at shutdown: Terraform starts the plugin
//!   three times in a plan).
//! - [`ensure`], at the top of every RPC handler, as a fallback should the first step not
//!   have happened; after one connected socket has been seen switched it is one atomic load.

use std::io::{BufRead, Write};
use std::os::fd::{FromRawFd, OwnedFd};
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

/// Route stdout through a pipe whose reader sets TCP_NODELAY on our sockets (the crate's
/// listener, by then bound) before passing each line on to the real stdout. Call before
/// `serve()`. Everything written to stdout still arrives, in order.
pub fn before_handshake() -> std::io::Result<()> {
    if std::env::var_os("LOCALDR_BENCH_NO_NODELAY").is_some() {
        return Ok(());
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given; fcntl(F_DUPFD_CLOEXEC)
    // and dup2 only manipulate descriptors we own; each OwnedFd takes a descriptor nobody
    // else owns (dup2 over fd 1 leaves std's stdout writing to the pipe).
    let (reader, real_stdout) = unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (r, w) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
        let real = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if real < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let real = OwnedFd::from_raw_fd(real);
        if libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&w), 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        (r, real)
    };
    std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || {
            let mut lines = std::io::BufReader::new(std::fs::File::from(reader));
            let mut out = std::fs::File::from(real_stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match lines.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                switch_all();
                if out.write_all(&line).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
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

    /// `switch_all` switches every socket in the process, so these tests must not run at
    /// the same time: one's switch would reach the other's listener before it asserts
    /// that a fresh socket starts without TCP_NODELAY (seen once in CI).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_listener_switched_before_accept_hands_nodelay_to_what_it_accepts() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        switch_all();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert!(s.nodelay().unwrap());
    }

    #[test]
    fn sets_nodelay_on_a_connected_socket() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert!(!s.nodelay().unwrap());
        assert!(switch_all());
        assert!(s.nodelay().unwrap() && c.nodelay().unwrap());
        let _ = c.as_raw_fd();
    }
}
