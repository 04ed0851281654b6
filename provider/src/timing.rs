//! Per-RPC timing at debug level (`TF_LOG_PROVIDER=debug` shows it): the first thing to
//! look at when a plan over many resources is slow.

/// Logs how long an RPC handler took (at debug: `TF_LOG_PROVIDER=debug` shows it).
pub struct Timed(&'static str, std::time::Instant);

impl Timed {
    pub fn start(rpc: &'static str) -> Timed {
        crate::nodelay::ensure();
        Timed(rpc, std::time::Instant::now())
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        tracing::debug!(
            rpc = self.0,
            elapsed_us = self.1.elapsed().as_micros() as u64,
            "handled"
        );
    }
}
