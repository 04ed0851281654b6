//! Worker processes: spawned in their own process group (so a stop reaches whatever a
//! shell wrapper started too) with a parent-death signal (so a killed agent never leaves
//! workers behind holding their ports), stopped with the configured signal and then
//! SIGKILL after `stop_timeout`.

use anyhow::{Context, Result};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub use crate::signal::signal_number;

pub struct SpawnOptions<'a> {
    pub argv: &'a [String],
    pub env: Vec<(String, String)>,
    pub cwd: &'a Path,
    pub log: &'a Path,
}

/// Start a worker. stdout and stderr go to `log` (appended).
pub fn spawn(o: &SpawnOptions) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(o.log)
        .with_context(|| format!("could not open log {}", o.log.display()))?;
    let mut cmd = Command::new(&o.argv[0]);
    cmd.args(&o.argv[1..])
        .envs(o.env.iter().map(|(k, v)| (k, v)))
        .current_dir(o.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            cloexec_inherited();
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("could not start {:?} in {}", o.argv[0], o.cwd.display()))
}

/// Mark every descriptor from 3 up close-on-exec. Run between fork and exec: a process
/// started from Terraform inherits its pipes, and a worker or agent holding them open
/// would keep `terraform apply`'s output open (and its caller waiting) forever.
///
/// # Safety
/// Only async-signal-safe calls; meant for `pre_exec`.
pub unsafe fn cloexec_inherited() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    if libc::syscall(
        libc::SYS_close_range,
        3 as libc::c_uint,
        libc::c_uint::MAX,
        CLOSE_RANGE_CLOEXEC,
    ) == 0
    {
        return;
    }
    for fd in 3..4096 {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Send `sig` to the process group led by `pid`.
pub fn signal_group(pid: u32, sig: i32) {
    // SAFETY: plain syscall; a stale group yields ESRCH, which is fine.
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

/// Send `sig` to one process.
pub fn signal_pid(pid: u32, sig: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::kill(pid as i32, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or 0.
pub fn start_time(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may contain spaces; fields resume after its ')'.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    rest.split_whitespace()
        .nth(19)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

/// Is `pid` still the process that started at `start` (and not a zombie)?
pub fn is_same_process(pid: u32, start: u64) -> bool {
    start != 0 && start_time(pid) == start && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|x| x == "Z"))
        })
        .unwrap_or(true)
}

/// Describe how a process ended: `exit code 1`, `signal 9 (SIGKILL)`.
pub fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(c) = st.code() {
        format!("exit code {c}")
    } else if let Some(s) = st.signal() {
        let name = match s {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGINT => " (SIGINT)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            _ => "",
        };
        format!("signal {s}{name}")
    } else {
        "unknown".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("int"), Some(libc::SIGINT));
        assert_eq!(signal_number("SIGFOO"), None);
    }

    #[test]
    fn start_time_identifies_a_live_process() {
        let me = std::process::id();
        let t = start_time(me);
        assert!(t > 0);
        assert!(is_same_process(me, t));
        assert!(!is_same_process(me, t + 1));
    }
}
