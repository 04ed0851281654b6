//! Backing off when `accept` fails.
//!
//! When the process runs out of file descriptors (EMFILE) the pending connection stays in
//! the listen queue, so the listener is immediately readable again and an accept loop that
//! just retries spins a core at 100% until a descriptor frees up. Like Go's net/http server,
//! wait 5 ms after a failure, doubling up to 1 s, and start again from 5 ms after a success.

use std::time::Duration;

#[derive(Default)]
pub struct AcceptBackoff {
    delay: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// Call after a successful accept.
    pub fn ok(&mut self) {
        self.delay = None;
    }

    /// Call after a failed accept: logs it (once per streak) and sleeps.
    pub async fn failed(&mut self, listener: &str, e: &std::io::Error) {
        let d = match self.delay {
            None => {
                tracing::warn!("{listener}: accept failed ({e}); backing off until it works again");
                Self::FIRST
            }
            Some(d) => (d * 2).min(Self::MAX),
        };
        self.delay = Some(d);
        tokio::time::sleep(d).await;
    }

    #[cfg(test)]
    fn current(&self) -> Option<Duration> {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_to_a_cap_and_resets_on_success() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut seen = Vec::new();
        for _ in 0..10 {
            b.failed("test", &e).await;
            seen.push(b.current().unwrap().as_millis());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.ok();
        b.failed("test", &e).await;
        assert_eq!(b.current(), Some(Duration::from_millis(5)));
    }
}
