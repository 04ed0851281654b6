//! The vault lock: an `flock` on `<vault>/.lock`. Writers take it exclusively, readers
//! shared. An flock dies with its process, so a killed backup never leaves a stale lock.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Held while the vault is being read or changed; released on drop.
pub struct VaultLock {
    _file: File,
}

/// How long to wait for another writer before failing. `LOCALDR_LOCK_TIMEOUT` overrides.
fn timeout() -> Duration {
    std::env::var("LOCALDR_LOCK_TIMEOUT")
        .ok()
        .and_then(|s| crate::duration::parse(&s).ok())
        .unwrap_or(Duration::from_secs(600))
}

pub fn acquire(vault: &Path, exclusive: bool) -> Result<VaultLock> {
    let path = vault.join(".lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("could not open vault lock {}", path.display()))?;
    let start = Instant::now();
    let limit = timeout();
    let mut told = false;
    loop {
        let r = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match r {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                if start.elapsed() >= limit {
                    bail!(
                        "vault {} is locked by another localdr process{} (waited {:?}); \
                         try again when it finishes",
                        vault.display(),
                        holder(vault),
                        limit
                    );
                }
                if !told && start.elapsed() > Duration::from_secs(2) {
                    tracing::info!(vault = %vault.display(), "waiting for the vault lock{}", holder(vault));
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("could not lock {}", path.display()))
            }
        }
    }
    if exclusive {
        // Record who holds it, for the message above. Best effort: the lock is what counts.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
    }
    Ok(VaultLock { _file: file })
}

fn holder(vault: &Path) -> String {
    match std::fs::read_to_string(vault.join(".lock")) {
        Ok(s) if !s.trim().is_empty() => format!(" (pid {})", s.trim()),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_is_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        std::env::set_var("LOCALDR_LOCK_TIMEOUT", "100ms");
        let a = acquire(d.path(), true).unwrap();
        let err = acquire(d.path(), true)
            .err()
            .expect("second writer must wait and fail");
        assert!(err
            .to_string()
            .contains("locked by another localdr process"));
        drop(a);
        let _b = acquire(d.path(), true).unwrap();
    }
}
