//! Running a queue item's command so that an agent crash neither loses nor repeats it.
//!
//! The agent does not run the command itself: it starts `localdr queue-exec` (detached:
//! its own session, no parent-death signal), which takes the item's lock, runs the
//! command, writes the outcome to `<worker>/.localdr/<item>.result` atomically, and only
//! then exits (releasing the lock). If the agent is killed meanwhile, the command runs on
//! to its end and the next agent files the result it finds. An item whose lock is free
//! and that has no result was never run (or its runner was killed outright): only then is
//! it put back in the queue.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `queue-exec` is asked to do (passed as one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub run: String,
    pub worker: String,
    pub item: String,
    /// The item in its worker's directory.
    pub item_path: PathBuf,
    pub lock: PathBuf,
    pub result: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub timeout_ms: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub run: String,
    pub worker: String,
    pub item: String,
    pub ok: bool,
    /// `exit code 0`, `signal 9 (SIGKILL)`, `timed out after 60s`, `could not start: …`.
    pub exit: String,
    /// The tail of the command's output (stderr and stdout), for the error's reason file.
    pub output: String,
    pub started: String,
    pub duration_ms: u64,
}

/// `<worker dir>/.localdr/`: the runner's lock and result files.
pub fn meta_dir(worker_dir: &Path) -> PathBuf {
    worker_dir.join(".localdr")
}

pub fn lock_path(worker_dir: &Path, item: &str) -> PathBuf {
    meta_dir(worker_dir).join(format!("{item}.lock"))
}

pub fn result_path(worker_dir: &Path, item: &str) -> PathBuf {
    meta_dir(worker_dir).join(format!("{item}.result"))
}

/// An exclusive flock on `path`, held while the returned file is open.
pub fn lock(path: &Path, wait: bool) -> Result<Option<std::fs::File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))?;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a file we own.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(Some(f))
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e).with_context(|| format!("could not lock {}", path.display()))
        }
    }
}

pub fn read_result(p: &Path) -> Option<Outcome> {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Start the runner for `job`: `exe queue-exec <job json>`, in a session of its own.
pub fn spawn(exe: &Path, job: &Job) -> Result<std::process::Child> {
    std::fs::create_dir_all(job.lock.parent().expect("lock in a directory"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("queue-exec")
        .arg(serde_json::to_string(job)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: async-signal-safe calls only.
    unsafe {
        cmd.pre_exec(|| {
            crate::runtime::process::cloexec_inherited();
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("could not start {} queue-exec", exe.display()))
}

/// The `queue-exec` subcommand: run one item's command and record its outcome.
pub fn run(job: &Job) -> Result<()> {
    let _lock = lock(&job.lock, true)?.context("lock not taken")?;
    // The agent may have put the item back in the queue before we got the lock; or a run
    // finished already: either way there is nothing to do.
    if !job.item_path.exists() || job.result.exists() {
        return Ok(());
    }
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let out_path = meta_dir(job.item_path.parent().expect("item in a directory"))
        .join(format!("{}.out", job.item));
    let out = std::fs::File::create(&out_path)
        .with_context(|| format!("could not create {}", out_path.display()))?;
    let mut cmd = Command::new(&job.argv[0]);
    cmd.args(&job.argv[1..])
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(job.item_path.parent().expect("item in a directory"))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    let (ok, exit) = match cmd.spawn() {
        Err(e) => (false, format!("could not start {:?}: {e}", job.argv[0])),
        Ok(mut child) => {
            let limit = Duration::from_millis(job.timeout_ms);
            let pid = child.id();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(child.wait());
            });
            match rx.recv_timeout(limit) {
                Ok(Ok(st)) => (st.success(), crate::runtime::process::describe_exit(st)),
                Ok(Err(e)) => (false, format!("could not wait for the command: {e}")),
                Err(_) => {
                    crate::runtime::process::signal_group(pid, libc::SIGKILL);
                    let _ = rx.recv();
                    (false, format!("timed out after {limit:?}"))
                }
            }
        }
    };
    let outcome = Outcome {
        run: job.run.clone(),
        worker: job.worker.clone(),
        item: job.item.clone(),
        ok,
        exit,
        output: tail(&out_path, 2048),
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        duration_ms: t0.elapsed().as_millis() as u64,
    };
    crate::atomic::write_json(&job.result, &outcome)?;
    let _ = std::fs::remove_file(&out_path);
    Ok(())
}

fn tail(p: &Path, n: u64) -> String {
    let Ok(mut f) = std::fs::File::open(p) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(n)));
    let mut b = Vec::new();
    let _ = f.read_to_end(&mut b);
    String::from_utf8_lossy(&b).trim().to_string()
}
