//! What the agent runs: worker pools (supervisor) with their health checks, restart
//! policy, autoscaling and schedules, plus the event log `localdr cost` reads.

pub mod agent;
pub mod autoscale;
pub mod backups;
pub mod control;
pub mod events;
pub mod health;
pub mod load;
pub mod process;
pub mod restart;
pub mod schedule;
pub mod supervisor;
