//! The balancer when the process runs out of file descriptors: accept fails with EMFILE
//! while connections wait in the listen queue. It must back off instead of spinning a core,
//! and serve again once descriptors are free.
//!
//! Its own test binary: it lowers this process's descriptor limit, which would break any
//! test running beside it.

use localdr::runtime::balancer;
use localdr::spec::Timeouts;
use localdr_e2e::{free_port, Worker};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// User + system CPU seconds of this process so far, read through `stat`, opened on
/// `/proc/self/stat` beforehand (opening it would need a descriptor).
fn cpu_seconds(stat: &std::fs::File) -> f64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let n = stat.read_at(&mut buf, 0).unwrap();
    let stat = String::from_utf8_lossy(&buf[..n]);
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state field.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11] + f[12]) as f64 / tck
}

fn set_nofile(soft: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed, which lives for the call.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = soft.min(r.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
}

#[test]
fn out_of_descriptors_the_balancer_backs_off_then_serves_again() {
    /// Kills a child when the test ends, pass or fail.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let worker = Worker::start(env!("CARGO_BIN_EXE_localdr-test-worker"), free_port());
    let worker_port = worker.port;

    // No active checks (the default here): they would need descriptors too.
    let mut spec = localdr_e2e::balancer_spec("fd", &[(worker_port, 1)]);
    spec.retries = 2;
    spec.timeouts = Timeouts::default();
    let h = balancer::start(spec, None).unwrap();
    let listen = h.listen;

    // Clients live in another process (its own descriptor table), started now and told to
    // connect once our limit is down: 5 connections, then one request on the first of them.
    let script = format!(
        r#"
import socket, sys
sys.stdin.readline()
cs = [socket.create_connection(("127.0.0.1", {port}), 5) for _ in range(5)]
print("connected", flush=True)
sys.stdin.readline()
c = cs[0]
c.settimeout(10)
c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    b = c.recv(4096)
    if not b:
        break
    data += b
print(data.split(b"\r\n")[0].decode(), flush=True)
"#,
        port = listen.port()
    );
    let mut py = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut to_py = py.stdin.take().unwrap();
    let mut from_py = BufReader::new(py.stdout.take().unwrap());
    let _py = Kill(py);

    // No descriptor to spare: every accept now fails with EMFILE.
    let mut original = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in set_nofile.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut original) };
    let stat = std::fs::File::open("/proc/self/stat").unwrap();
    set_nofile(open_fds());
    writeln!(to_py, "go").unwrap();
    let mut line = String::new();
    from_py.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");

    // While connections wait, the process must stay nearly idle (a spinning accept loop
    // burns a whole core: about 1 s of CPU a second).
    std::thread::sleep(Duration::from_millis(300));
    let (c0, t0) = (cpu_seconds(&stat), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(&stat) - c0;
    let wall = t0.elapsed().as_secs_f64();
    set_nofile(original.rlim_cur);
    println!("FIGURE balancer: {used:.2} s of CPU in {wall:.1} s while accept failed with EMFILE");
    assert!(
        used < 0.3 * wall,
        "the balancer spun: {used:.2} s of CPU in {wall:.1} s"
    );

    // Descriptors are back: the waiting connection is accepted and served.
    writeln!(to_py, "request").unwrap();
    let mut status = String::new();
    from_py.read_line(&mut status).unwrap();
    assert_eq!(status.trim(), "HTTP/1.1 200 OK", "got {status:?}");
    h.stop();
}
