//! The state directory shared by the provider, the agent and the CLI:
//!
//! ```text
//! <state_dir>/services/<name>.json        desired state (written by the provider)
//! <state_dir>/status/services/<name>.json what the agent sees (written by the agent)
//! <state_dir>/agent.lock                  flock held by the one running agent
//! <state_dir>/agent.json                  the agent's pid, start time and log file
//! <state_dir>/events.jsonl                the agent's event log (scaling, exits, cost)
//! <state_dir>/logs/                       agent and replica logs
//! ```
//!
//! Every file is written atomically. Whether an agent runs is decided by the lock, never by
//! a pid file: an flock dies with its process, so a killed agent is never mistaken for a
//! live one.

use crate::spec::{AgentInfo, ServiceSpec, ServiceStatus, API_VERSION};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// What a spec file holds: the parsed spec and the hash of its bytes.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec: ServiceSpec,
    pub hash: String,
}

impl StateDir {
    /// The state dir at `root` (made absolute; not created).
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: crate::sources::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn services_dir(&self) -> PathBuf {
        self.root.join("services")
    }
    pub fn service_path(&self, name: &str) -> PathBuf {
        self.services_dir().join(format!("{name}.json"))
    }
    pub fn status_dir(&self) -> PathBuf {
        self.root.join("status/services")
    }
    pub fn status_path(&self, name: &str) -> PathBuf {
        self.status_dir().join(format!("{name}.json"))
    }
    pub fn balancers_dir(&self) -> PathBuf {
        self.root.join("balancers")
    }
    pub fn balancer_path(&self, name: &str) -> PathBuf {
        self.balancers_dir().join(format!("{name}.json"))
    }
    pub fn balancer_status_path(&self, name: &str) -> PathBuf {
        self.root
            .join("status/balancers")
            .join(format!("{name}.json"))
    }
    pub fn balancer_names(&self) -> Result<Vec<String>> {
        list_json(&self.balancers_dir())
    }
    /// Write a balancer spec atomically; returns the hash of the bytes written.
    pub fn write_balancer(&self, spec: &crate::spec::BalancerSpec) -> Result<String> {
        std::fs::create_dir_all(self.balancers_dir())?;
        let mut bytes = serde_json::to_vec_pretty(spec)?;
        bytes.push(b'\n');
        crate::atomic::write(&self.balancer_path(&spec.name), &bytes)?;
        Ok(hash(&bytes))
    }
    pub fn read_balancer(&self, name: &str) -> Result<Option<(crate::spec::BalancerSpec, String)>> {
        let path = self.balancer_path(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some((
                serde_json::from_slice(&b)
                    .with_context(|| format!("{} is not a valid balancer spec", path.display()))?,
                hash(&b),
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
        }
    }
    pub fn remove_balancer(&self, name: &str) -> Result<()> {
        remove_if_present(&self.balancer_path(name))
    }
    pub fn read_balancer_status(&self, name: &str) -> Result<Option<crate::spec::BalancerStatus>> {
        read_json(&self.balancer_status_path(name))
    }

    pub fn schedules_dir(&self) -> PathBuf {
        self.root.join("schedules")
    }
    /// A schedule's key, its file's stem: the backup's name and its vault, since the same
    /// name in two vaults is two backups (a policy is per vault). The vault is the absolute
    /// path the provider writes into the schedule. `@` cannot occur in a backup name.
    pub fn schedule_key(name: &str, vault: &str) -> String {
        format!("{name}@{}", &hash(vault.as_bytes())[..12])
    }
    pub fn schedule_path(&self, key: &str) -> PathBuf {
        self.schedules_dir().join(format!("{key}.json"))
    }
    pub fn schedule_status_path(&self, key: &str) -> PathBuf {
        self.root
            .join("status/schedules")
            .join(format!("{key}.json"))
    }
    /// The keys of the schedule files (see [`StateDir::schedule_key`]; older files are
    /// keyed by the name alone).
    pub fn schedule_keys(&self) -> Result<Vec<String>> {
        list_json(&self.schedules_dir())
    }
    /// A file that versions before the vault was part of the key wrote for `name`, when it
    /// is for `vault`: the one to take over. One for another vault is that backup's own.
    fn legacy_schedule(&self, name: &str, vault: &str) -> Option<crate::spec::BackupSchedule> {
        read_json::<crate::spec::BackupSchedule>(&self.schedule_path(name))
            .ok()
            .flatten()
            .filter(|s| s.vault == vault)
    }
    pub fn write_schedule(&self, s: &crate::spec::BackupSchedule) -> Result<()> {
        std::fs::create_dir_all(self.schedules_dir())?;
        std::fs::create_dir_all(self.root.join("status/schedules"))?;
        crate::atomic::write_json(
            &self.schedule_path(&Self::schedule_key(&s.name, &s.vault)),
            s,
        )?;
        // Written first, removed after: the agent never sees the schedule gone.
        if self.legacy_schedule(&s.name, &s.vault).is_some() {
            remove_if_present(&self.schedule_path(&s.name))?;
        }
        Ok(())
    }
    /// The schedule the agent runs for backup `name` in `vault` (absolute), as its file says
    /// (`None`: no file).
    pub fn read_schedule(
        &self,
        name: &str,
        vault: &str,
    ) -> Result<Option<crate::spec::BackupSchedule>> {
        match self.read_schedule_file(&Self::schedule_key(name, vault))? {
            Some(s) => Ok(Some(s)),
            None => Ok(self.legacy_schedule(name, vault)),
        }
    }
    /// Take back the schedule of backup `name` in `vault`; a same-named backup's in another
    /// vault stays.
    pub fn remove_schedule(&self, name: &str, vault: &str) -> Result<()> {
        remove_if_present(&self.schedule_path(&Self::schedule_key(name, vault)))?;
        if self.legacy_schedule(name, vault).is_some() {
            remove_if_present(&self.schedule_path(name))?;
        }
        Ok(())
    }
    /// The schedule file with this key, whatever backup it is for.
    pub fn read_schedule_file(&self, key: &str) -> Result<Option<crate::spec::BackupSchedule>> {
        read_json(&self.schedule_path(key))
    }
    pub fn read_schedule_status(
        &self,
        key: &str,
    ) -> Result<Option<crate::spec::BackupScheduleStatus>> {
        read_json(&self.schedule_status_path(key))
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn events_path(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }
    pub fn agent_info_path(&self) -> PathBuf {
        self.root.join("agent.json")
    }
    fn lock_path(&self) -> PathBuf {
        self.root.join("agent.lock")
    }

    pub fn create(&self) -> Result<()> {
        for d in [self.services_dir(), self.status_dir(), self.logs_dir()] {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("could not create {}", d.display()))?;
        }
        Ok(())
    }

    /// Write a spec atomically; returns the hash of the bytes written.
    pub fn write_service(&self, spec: &ServiceSpec) -> Result<String> {
        self.create()?;
        let mut bytes = serde_json::to_vec_pretty(spec)?;
        bytes.push(b'\n');
        crate::atomic::write(&self.service_path(&spec.name), &bytes)?;
        Ok(hash(&bytes))
    }

    /// `Ok(None)` when the spec file does not exist.
    pub fn read_service(&self, name: &str) -> Result<Option<LoadedSpec>> {
        let path = self.service_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
        };
        Ok(Some(parse_spec(&path, &bytes)?))
    }

    pub fn remove_service(&self, name: &str) -> Result<()> {
        remove_if_present(&self.service_path(name))
    }

    /// Names of every spec file (sorted).
    pub fn service_names(&self) -> Result<Vec<String>> {
        list_json(&self.services_dir())
    }

    pub fn read_status(&self, name: &str) -> Result<Option<ServiceStatus>> {
        read_json(&self.status_path(name))
    }

    pub fn status_names(&self) -> Result<Vec<String>> {
        list_json(&self.status_dir())
    }

    pub fn agent_info(&self) -> Result<Option<AgentInfo>> {
        read_json(&self.agent_info_path())
    }

    /// Is an agent holding this state dir? Decided by the lock alone.
    pub fn agent_running(&self) -> bool {
        let Ok(f) = File::open(self.lock_path()) else {
            return false;
        };
        match f.try_lock_shared() {
            Ok(()) => false,
            Err(TryLockError::WouldBlock) => true,
            Err(TryLockError::Error(_)) => false,
        }
    }

    /// Take the agent lock, or say who holds it.
    ///
    /// The lock can outlive its agent by a moment: a child the agent forked holds it until
    /// it execs (the descriptor is close-on-exec), so an agent killed with `kill -9` while
    /// starting a worker leaves it held for that long. When the agent on record is dead,
    /// the lock is waited for (up to [`STALE_LOCK_WAIT`]) instead of refused.
    pub fn lock_agent(&self) -> Result<File> {
        self.create()?;
        let path = self.lock_path();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("could not open {}", path.display()))?;
        let since = std::time::Instant::now();
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(f),
                Err(TryLockError::WouldBlock) => {
                    let info = self.agent_info().ok().flatten();
                    let dead = info.as_ref().is_some_and(|i| !pid_alive(i.pid));
                    if dead && since.elapsed() < STALE_LOCK_WAIT {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
                    let who = info
                        .map(|i| format!(" (pid {})", i.pid))
                        .unwrap_or_default();
                    bail!(
                        "another localdr agent{who} is already running on state dir {}; \
                     stop it first (`localdr agent stop --state-dir {}`) or use it as it is",
                        self.root.display(),
                        self.root.display()
                    )
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("could not lock {}", path.display()))
                }
            }
        }
    }
}

/// How long [`StateDir::lock_agent`] waits for a lock whose agent is dead.
pub const STALE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

pub fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn parse_spec(path: &Path, bytes: &[u8]) -> Result<LoadedSpec> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let ver = v.get("api_version").and_then(|x| x.as_u64()).unwrap_or(0);
    if ver != API_VERSION as u64 {
        bail!(
            "{} has api_version {ver}; this localdr understands {API_VERSION} (upgrade localdr or re-apply)",
            path.display()
        );
    }
    let spec: ServiceSpec = serde_json::from_value(v)
        .with_context(|| format!("{} is not a valid service spec", path.display()))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if spec.name != stem {
        bail!(
            "{} declares name {:?}; a spec's name must match its file name",
            path.display(),
            spec.name
        );
    }
    Ok(LoadedSpec {
        spec,
        hash: hash(bytes),
    })
}

/// Parse a spec file's bytes (the agent reads them itself to hash exactly what it applies).
pub fn parse_service(path: &Path, bytes: &[u8]) -> Result<LoadedSpec> {
    parse_spec(path, bytes)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => {
            Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("could not parse {}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

/// Remove a spec file, durably (its directory synced); one already gone is fine.
fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => crate::atomic::fsync_dir(path.parent().expect("a spec file is in a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("could not remove {}", path.display())),
    }
}

fn list_json(dir: &Path) -> Result<Vec<String>> {
    let mut out = crate::atomic::json_stems(dir)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(name: &str, vault: &str, cron: &str) -> crate::spec::BackupSchedule {
        crate::spec::BackupSchedule {
            api_version: crate::spec::API_VERSION,
            name: name.into(),
            vault: vault.into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            start_window: "1h".into(),
        }
    }

    #[test]
    fn same_named_backups_in_two_vaults_have_a_schedule_each() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::new(t.path());
        sd.write_schedule(&schedule("db", "/a", "0 3 * * *"))
            .unwrap();
        sd.write_schedule(&schedule("db", "/b", "0 4 * * *"))
            .unwrap();
        assert_eq!(sd.schedule_keys().unwrap().len(), 2);
        let cron = |v: &str| sd.read_schedule("db", v).unwrap().map(|s| s.cron);
        assert_eq!(cron("/a").as_deref(), Some("0 3 * * *"));
        assert_eq!(cron("/b").as_deref(), Some("0 4 * * *"));
        // Taking one back leaves the other.
        sd.remove_schedule("db", "/b").unwrap();
        assert_eq!(cron("/b"), None);
        assert_eq!(cron("/a").as_deref(), Some("0 3 * * *"));
        assert!(!StateDir::schedule_key("db", "/a").contains('/'));
    }

    #[test]
    fn a_schedule_keyed_by_name_alone_is_taken_over_by_its_own_vaults_backup_only() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::new(t.path());
        std::fs::create_dir_all(sd.schedules_dir()).unwrap();
        let legacy = sd.schedule_path("db");
        crate::atomic::write_json(&legacy, &schedule("db", "/a", "0 3 * * *")).unwrap();
        // Read as this backup's when it names its vault; another vault's backup has none.
        assert!(sd.read_schedule("db", "/a").unwrap().is_some());
        assert!(sd.read_schedule("db", "/b").unwrap().is_none());
        // Another vault's backup neither removes nor replaces it.
        sd.remove_schedule("db", "/b").unwrap();
        sd.write_schedule(&schedule("db", "/b", "0 4 * * *"))
            .unwrap();
        assert!(legacy.exists());
        // Its own backup's write replaces it with a keyed file.
        sd.write_schedule(&schedule("db", "/a", "0 5 * * *"))
            .unwrap();
        assert!(!legacy.exists());
        let cron = sd.read_schedule("db", "/a").unwrap().map(|s| s.cron);
        assert_eq!(cron.as_deref(), Some("0 5 * * *"));
        // And its own backup's removal removes it.
        crate::atomic::write_json(&legacy, &schedule("db", "/a", "0 3 * * *")).unwrap();
        sd.remove_schedule("db", "/a").unwrap();
        assert!(!legacy.exists() && sd.read_schedule("db", "/a").unwrap().is_none());
        assert_eq!(sd.schedule_keys().unwrap().len(), 1, "/b's stays");
    }

    #[test]
    fn the_lock_says_whether_an_agent_runs() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::new(t.path());
        assert!(!sd.agent_running());
        let held = sd.lock_agent().unwrap();
        assert!(sd.agent_running());
        let err = sd.lock_agent().unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        drop(held);
        // Released once every copy of the descriptor is closed: a process another test
        // thread forks at this moment holds one until it execs (close-on-exec), the window
        // `lock_agent` waits out for a dead agent. CI saw it once while the supervisor tests
        // were spawning replicas.
        let start = std::time::Instant::now();
        while sd.agent_running() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "the agent lock is still held 5 s after it was dropped"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// A lock still held after its agent died (a forked child not yet exec'd) is waited
    /// for; one held by a live agent is refused at once.
    #[test]
    fn a_lock_left_by_a_dead_agent_is_waited_for() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::new(t.path());
        let held = sd.lock_agent().unwrap();
        let info = |pid: u32| AgentInfo {
            api_version: API_VERSION,
            pid,
            started_at: "t".into(),
            version: "0".into(),
            log_file: None,
        };
        crate::atomic::write_json(&sd.agent_info_path(), &info(std::process::id())).unwrap();
        let t0 = std::time::Instant::now();
        assert!(sd.lock_agent().is_err());
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(1),
            "a live agent is refused at once"
        );

        // A pid that is certainly gone: a child we started and reaped.
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let gone = c.id();
        c.wait().unwrap();
        crate::atomic::write_json(&sd.agent_info_path(), &info(gone)).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let got = sd.lock_agent();
        releaser.join().unwrap();
        assert!(got.is_ok(), "{:#}", got.unwrap_err());
    }

    #[test]
    fn a_spec_must_match_its_file_name_and_version() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::new(t.path());
        sd.create().unwrap();
        std::fs::write(sd.service_path("a"), r#"{"api_version": 99, "name": "a"}"#).unwrap();
        let e = format!("{:#}", sd.read_service("a").unwrap_err());
        assert!(e.contains("api_version 99"), "{e}");
        assert!(sd.read_service("missing").unwrap().is_none());
    }
}
