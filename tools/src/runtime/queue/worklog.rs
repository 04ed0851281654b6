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

/// Append `rec` durably, unless the log already ends with this run. True when it was
/// written (false: an earlier agent had logged this run before it crashed).
pub fn append(log_dir: &Path, rec: &Record) -> Result<bool> {
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("could not create {}", log_dir.display()))?;
    let p = path(log_dir, &rec.worker);
    if last(&p).is_some_and(|l| l.run == rec.run) {
        return Ok(false);
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("could not open {}", p.display()))?;
    // A crash mid-append leaves a line cut short: end it, so this record is not glued to
    // it (and lost with it).
    let mut line = Vec::new();
    if !ends_with_newline(&mut f).with_context(|| format!("could not read {}", p.display()))? {
        line.push(b'\n');
    }
    serde_json::to_writer(&mut line, rec)?;
    line.push(b'\n');
    f.write_all(&line)
        .and_then(|_| f.sync_data())
        .with_context(|| format!("could not write {}", p.display()))?;
    Ok(true)
}

/// True for an empty file too: there is no line to end.
fn ends_with_newline(f: &mut std::fs::File) -> std::io::Result<bool> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

/// Outcomes of one worker, counted over its whole log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub processed: u64,
    pub failed: u64,
    pub delivered: u64,
}

/// Count every worker's outcomes from the logs in `log_dir`, so a restarted agent's
/// `status` goes on from what earlier agents did instead of from zero. Streams each log
/// line by line; a line that does not parse (cut short by a crash mid-write) is skipped.
pub fn tally(log_dir: &Path) -> Result<std::collections::HashMap<String, Tally>> {
    use std::io::BufRead;
    #[derive(Deserialize)]
    struct Outcome {
        worker: String,
        status: String,
    }
    let mut out: std::collections::HashMap<String, Tally> = Default::default();
    let rd = match std::fs::read_dir(log_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("could not list {}", log_dir.display())),
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("load_") && name.ends_with(".jsonl")) {
            continue;
        }
        let f = std::fs::File::open(e.path())
            .with_context(|| format!("could not read {}", e.path().display()))?;
        for line in std::io::BufReader::new(f).lines() {
            let line = line.with_context(|| format!("could not read {}", e.path().display()))?;
            let Ok(o) = serde_json::from_str::<Outcome>(&line) else {
                continue;
            };
            let t = out.entry(o.worker).or_default();
            match o.status.as_str() {
                "processed" => t.processed += 1,
                "failed" => t.failed += 1,
                "delivered" => t.delivered += 1,
                _ => {}
            }
        }
    }
    Ok(out)
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
        assert!(append(d.path(), &rec("1")).unwrap());
        assert!(
            !append(d.path(), &rec("1")).unwrap(),
            "a repeat is not written"
        );
        assert!(append(d.path(), &rec("2")).unwrap());
        let runs: Vec<String> = read(&path(d.path(), "w-0"))
            .unwrap()
            .into_iter()
            .map(|r| r.run)
            .collect();
        assert_eq!(runs, ["1", "2"]);
    }

    #[test]
    fn tally_counts_every_worker_and_skips_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        assert!(tally(&d.path().join("missing")).unwrap().is_empty());
        for (i, (worker, status)) in [
            ("w-0", "processed"),
            ("w-0", "failed"),
            ("w-0", "processed"),
            ("w-1", "delivered"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = rec(&i.to_string());
            r.worker = worker.into();
            r.status = status.into();
            append(d.path(), &r).unwrap();
        }
        // A crash mid-append leaves a line cut short; other files are not logs.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path(d.path(), "w-1"))
            .unwrap();
        f.write_all(b"{\"ts\":\"t\",\"run\":\"9\",\"wor").unwrap();
        std::fs::write(d.path().join("notes.txt"), "{}").unwrap();
        let t = tally(d.path()).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t["w-0"],
            Tally {
                processed: 2,
                failed: 1,
                delivered: 0
            }
        );
        assert_eq!(t["w-1"].delivered, 1);
    }

    #[test]
    fn an_append_after_a_torn_line_starts_a_line_of_its_own() {
        let d = tempfile::tempdir().unwrap();
        assert!(append(d.path(), &rec("1")).unwrap());
        let p = path(d.path(), "w-0");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"ts\":\"t\",\"run\":\"2\",\"it").unwrap();
        // The torn record is no record: run 2 is logged again, whole.
        assert!(append(d.path(), &rec("2")).unwrap());
        assert_eq!(last(&p).unwrap().run, "2");
        assert!(!append(d.path(), &rec("2")).unwrap());
        let t = tally(d.path()).unwrap();
        assert_eq!(t["w-0"].processed, 2);
    }
}
