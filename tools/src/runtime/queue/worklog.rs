//! The per-worker log of what each worker got and how it ended (the seed's
//! `load_<n>.json`), as JSON lines in `<log_dir>/load_<worker>.jsonl`.
//!
//! Recording an outcome and moving the item are two steps; a crash between them makes the
//! next agent record it again. Records carry their run id and an append is skipped when
//! the log's last record has the same one, so every run is logged exactly once.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub ts: String,
    /// Unique per dispatch of an item.
    pub run: String,
    pub item: String,
    pub worker: String,
    /// `delivered` (no command), `processed`, or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the item ended.
    pub path: String,
}

pub fn path(log_dir: &Path, worker: &str) -> PathBuf {
    log_dir.join(format!("load_{worker}.jsonl"))
}

/// The last record of a log, if any.
fn last(p: &Path) -> Option<Record> {
    let mut f = std::fs::File::open(p).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(16 * 1024);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = String::new();
    f.read_to_string(&mut buf).ok()?;
    buf.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
}

/// Append `rec` durably, unless the log already ends with this run.
pub fn append(log_dir: &Path, rec: &Record) -> Result<()> {
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("could not create {}", log_dir.display()))?;
    let p = path(log_dir, &rec.worker);
    if last(&p).is_some_and(|l| l.run == rec.run) {
        return Ok(());
    }
    let mut line = serde_json::to_vec(rec)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("could not open {}", p.display()))?;
    f.write_all(&line)
        .and_then(|_| f.sync_data())
        .with_context(|| format!("could not write {}", p.display()))
}

/// Every record of a log (for tests and `status`).
pub fn read(p: &Path) -> Result<Vec<Record>> {
    let s =
        std::fs::read_to_string(p).with_context(|| format!("could not read {}", p.display()))?;
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad line in {}", p.display())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(run: &str) -> Record {
        Record {
            ts: "t".into(),
            run: run.into(),
            item: "a".into(),
            worker: "w-0".into(),
            status: "processed".into(),
            exit: None,
            duration_ms: None,
            reason: None,
            path: "/x".into(),
        }
    }

    #[test]
    fn a_run_is_logged_once_even_when_finished_twice() {
        let d = tempfile::tempdir().unwrap();
        append(d.path(), &rec("1")).unwrap();
        append(d.path(), &rec("1")).unwrap();
        append(d.path(), &rec("2")).unwrap();
        let runs: Vec<String> = read(&path(d.path(), "w-0"))
            .unwrap()
            .into_iter()
            .map(|r| r.run)
            .collect();
        assert_eq!(runs, ["1", "2"]);
    }
}
