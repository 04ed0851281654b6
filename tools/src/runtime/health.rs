//! Health checks (http / tcp / exec) and the threshold logic HAProxy calls rise and fall:
//! a replica turns healthy after `healthy_threshold` consecutive successes and unhealthy
//! after `unhealthy_threshold` consecutive failures; failures inside `start_period` do not
//! count (Docker's meaning).

use crate::spec::{dur, parse_matcher, HealthCheck};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Consecutive results turned into a state.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub state: Health,
    successes: u32,
    failures: u32,
    rise: u32,
    fall: u32,
}

impl Tracker {
    pub fn new(h: &HealthCheck) -> Tracker {
        Tracker {
            state: Health::Unknown,
            successes: 0,
            failures: 0,
            rise: h.healthy_threshold.max(1),
            fall: h.unhealthy_threshold.max(1),
        }
    }

    /// Record one result; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        let before = self.state;
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.rise {
                self.state = Health::Healthy;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.fall {
                self.state = Health::Unhealthy;
            }
        }
        (self.state != before).then_some(self.state)
    }
}

/// Run one check against the replica on `port`; `Err` says why it failed.
pub async fn check(h: &HealthCheck, port: u16, env: &[(String, String)]) -> Result<(), String> {
    let timeout = dur(&h.timeout);
    match tokio::time::timeout(timeout, check_inner(h, port, env)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn check_inner(h: &HealthCheck, port: u16, env: &[(String, String)]) -> Result<(), String> {
    match h.kind.as_str() {
        "tcp" => tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map(|_| ())
            .map_err(|e| format!("connect: {e}")),
        "exec" => {
            let argv: Vec<String> = h
                .command
                .iter()
                .map(|a| a.replace("{port}", &port.to_string()))
                .collect();
            let st = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("could not run {:?}: {e}", argv[0]))?;
            if st.success() {
                Ok(())
            } else {
                Err(format!("command {}", super::process::describe_exit(st)))
            }
        }
        _ => {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: localdr-health\r\nConnection: close\r\n\r\n",
                h.path
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut buf = [0u8; 64];
            let mut got = 0;
            while got < 12 {
                let n = s
                    .read(&mut buf[got..])
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            let line = String::from_utf8_lossy(&buf[..got]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
            let ok = parse_matcher(&h.matcher)
                .unwrap_or_default()
                .iter()
                .any(|(a, b)| (*a..=*b).contains(&code));
            if ok {
                Ok(())
            } else {
                Err(format!("HTTP {code} from {}", h.path))
            }
        }
    }
}

/// How often to probe: every `interval`, but quickly (Docker's start_interval) until the
/// replica has been healthy once, so `apply` does not wait 20 s for two 10 s probes.
pub fn probe_every(h: &HealthCheck, ever_healthy: bool) -> Duration {
    let i = dur(&h.interval);
    if ever_healthy {
        i
    } else {
        i.min(Duration::from_millis(250))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut t = Tracker::new(&HealthCheck::default());
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Healthy));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failure count");
        t.record(false);
        t.record(false);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
    }

    #[tokio::test]
    async fn http_check_against_a_real_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in [200, 503] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let h = HealthCheck::default();
        assert!(check(&h, port, &[]).await.is_ok());
        let e = check(&h, port, &[]).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
    }
}
