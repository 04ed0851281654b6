//! What the agent runs: worker pools (supervisor) with their health checks, restart
//! policy, autoscaling and schedules, plus the event log `localdr cost` reads.

pub mod agent;
pub mod autoscale;
pub mod backups;
pub mod balancer;
pub mod balancers;
pub mod control;
pub mod demand;
pub mod events;
pub mod health;
pub mod inotify;
pub mod load;
pub mod process;
pub mod queue;
pub mod rescan;
pub mod restart;
pub mod schedule;
pub mod supervisor;

/// The result of a task that `is_finished()`, taken without awaiting (the agent's loop is
/// a poll loop, not a future per task).
pub(crate) fn take_finished<T>(h: tokio::task::JoinHandle<Result<T, String>>) -> Result<T, String> {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut h = h;
    match std::pin::Pin::new(&mut h).poll(&mut cx) {
        std::task::Poll::Ready(Ok(r)) => r,
        std::task::Poll::Ready(Err(e)) => Err(format!("task failed: {e}")),
        std::task::Poll::Pending => Err("task still running".into()),
    }
}
