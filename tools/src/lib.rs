//! localdr: the engine behind the `localdr` CLI and the Terraform provider.
//!
//! The engine knows nothing of Terraform. It takes verified, checksummed snapshots of files,
//! directories and Terraform state files into a *vault* (a directory with a lock), applies
//! restic-style retention, keeps a verified copy in a second (DR) vault, and restores by id,
//! by number or to a point in time. Everything that matters on disk is written atomically
//! (temp file, fsync, rename, fsync of the directory), so a crash at any point leaves either
//! the old state or the new one, never a half-written snapshot that anyone would list.

pub mod atomic;
pub mod cli;
pub mod cron;
pub mod duration;
pub mod naming;
pub mod progress;
pub mod runtime;
pub mod signal;
pub mod sources;
pub mod spec;
pub mod statedir;
pub mod vault;
