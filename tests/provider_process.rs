//! The provider process must not outlive Terraform: if Terraform is killed (no Shutdown
//! RPC), the provider exits and its loopback listener closes.

use localdr_e2e::bin;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

#[test]
fn provider_exits_when_terraform_is_killed() {
    // A shell stands in for Terraform: it starts the provider and is then SIGKILLed.
    let provider = bin("terraform-provider-localdr");
    let mut parent = Command::new("bash")
        .arg("-c")
        .arg(r#""$0" & echo "pid $!"; wait"#)
        .arg(&provider)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(parent.stdout.take().unwrap());
    let (mut pid, mut addr) = (0i32, String::new());
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(p) = line.strip_prefix("pid ") {
            pid = p.trim().parse().unwrap();
        } else {
            // go-plugin handshake: 1|6|tcp|127.0.0.1:PORT|grpc|CERT
            addr = line.split('|').nth(3).unwrap_or_default().to_string();
        }
    }
    // Whatever happens below, never leave the provider running.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: signalling a pid this test started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _reap = Reap(pid);
    assert!(pid > 0 && alive(pid), "provider did not start");
    assert!(
        addr.starts_with("127.0.0.1:"),
        "listens on loopback only: {addr:?}"
    );
    assert!(std::net::TcpStream::connect(&addr).is_ok());

    parent.kill().unwrap();
    parent.wait().unwrap();
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !alive(pid),
        "provider still running 15 s after its parent died"
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "{addr} still accepts connections"
    );
}
