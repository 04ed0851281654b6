//! Helpers for the end-to-end tests: locate the release binaries and both Terraform
//! versions that `scripts/setup.sh` provides, and run them in throwaway directories.
//!
//! Nothing is mocked: these run the real `terraform`, which runs the real provider.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn need(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{what} not found at {} — run `bash scripts/setup.sh` (or `bash scripts/test.sh`) first",
        p.display()
    );
    p
}

/// A release binary built by the set-up script (`localdr`, `terraform-provider-localdr`).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("LOCALDR_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release"));
    need(dir.join(name), name)
}

/// PATH with the release binaries first.
pub fn path_with_bins() -> std::ffi::OsString {
    let dir = bin("localdr").parent().expect("bin dir").to_path_buf();
    let mut paths = vec![dir];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).expect("PATH")
}

#[derive(Debug, Clone, Copy)]
pub enum TfVersion {
    /// 1.0.3: the oldest protocol-6 Terraform.
    Old,
    /// The image's modern Terraform (>= 1.6).
    New,
}

pub fn terraform(v: TfVersion) -> PathBuf {
    match v {
        TfVersion::Old => need(
            std::env::var_os("LOCALDR_TF_OLD")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join(".tools/terraform-1.0.3/terraform")),
            "terraform 1.0.3",
        ),
        TfVersion::New => {
            let p = std::env::var_os("LOCALDR_TF_NEW")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("PATH").and_then(|paths| {
                        std::env::split_paths(&paths)
                            .map(|d| d.join("terraform"))
                            .find(|p| p.exists())
                    })
                })
                .unwrap_or_else(|| PathBuf::from("/usr/local/bin/terraform"));
            need(p, "modern terraform")
        }
    }
}

pub fn cli_config() -> PathBuf {
    need(
        repo_root().join(".tools/terraformrc"),
        "the project's Terraform CLI config",
    )
}

/// Output of a finished command, as text.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A Terraform root module in a temp directory, driven by one Terraform binary.
pub struct Tf {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Tf {
    pub fn new(v: TfVersion, main_tf: &str) -> Tf {
        let dir = tempfile::Builder::new()
            .prefix("localdr-e2e-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("main.tf"), main_tf).expect("write main.tf");
        Tf {
            bin: terraform(v),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .current_dir(self.dir.path())
            .env("TF_CLI_CONFIG_FILE", cli_config())
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            // The provider finds `localdr` on PATH, as a user's would.
            .env("PATH", path_with_bins())
            .env_remove("TF_PLUGIN_CACHE_DIR")
            .env_remove("TF_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("terraform runs").into()
    }

    /// Run and insist on success.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "terraform {args:?} failed:\n{}", r.all());
        r
    }

    pub fn init(&self) {
        self.ok(&["init", "-input=false", "-no-color"]);
    }

    pub fn apply(&self) -> Run {
        self.ok(&["apply", "-auto-approve", "-input=false", "-no-color"])
    }

    /// `plan -detailed-exitcode`: 0 = no changes, 2 = changes; anything else fails the test.
    pub fn plan(&self) -> Run {
        let r = self.run(&["plan", "-detailed-exitcode", "-input=false", "-no-color"]);
        assert!(r.code == 0 || r.code == 2, "plan failed:\n{}", r.all());
        r
    }

    /// Run a plan that must fail; its diagnostics with whitespace flattened (Terraform
    /// wraps them at 80 columns).
    pub fn plan_errors(&self) -> String {
        let p = self.run(&["plan", "-no-color"]);
        assert_eq!(p.code, 1, "{}", p.all());
        p.stderr.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    pub fn assert_empty_plan(&self, when: &str) {
        let r = self.plan();
        assert_eq!(r.code, 0, "plan should be empty {when}:\n{}", r.all());
    }

    pub fn output(&self, name: &str) -> String {
        let r = self.ok(&["output", "-raw", name]);
        r.stdout.trim().to_string()
    }

    /// An output of any type, as JSON.
    pub fn output_json(&self, name: &str) -> serde_json::Value {
        let r = self.ok(&["output", "-json", name]);
        serde_json::from_str(&r.stdout).expect("output -json")
    }

    pub fn state_json(&self) -> serde_json::Value {
        let r = self.ok(&["show", "-json"]);
        serde_json::from_str(&r.stdout).expect("show -json")
    }
}

/// Run the `localdr` CLI.
pub fn localdr(args: &[&str]) -> Run {
    Command::new(bin("localdr"))
        .args(args)
        .output()
        .expect("localdr runs")
        .into()
}

/// Run the `localdr` CLI with stdin.
pub fn localdr_stdin(args: &[&str], stdin: &str) -> Run {
    use std::io::Write;
    let mut child = Command::new(bin("localdr"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("localdr runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("localdr finishes").into()
}

/// Flip one byte of a file in place (what bit rot or a stray `dd` does).
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).expect("write");
}

/// Files in a directory, sorted (empty if it does not exist).
pub fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Generate `#[test]` functions for each Terraform version from one body.
#[macro_export]
macro_rules! both_terraforms {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn terraform_1_0_3() {
                    super::$name($crate::TfVersion::Old)
                }
                #[test]
                fn terraform_modern() {
                    super::$name($crate::TfVersion::New)
                }
            }
        )*
    };
}

/// A throwaway PostgreSQL server: `initdb` into a temp dir, started on a free loopback port
/// with password authentication, stopped (and its files removed) on drop.
pub struct PgServer {
    pub port: u16,
    pub password: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn pg_bin() -> PathBuf {
    let mut best: Option<(u32, PathBuf)> = None;
    for e in std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL server binaries in /usr/lib/postgresql (scripts/setup.sh installs them)",
        )
        .flatten()
    {
        let v: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
        let b = e.path().join("bin");
        if b.join("initdb").exists() && best.as_ref().is_none_or(|(x, _)| v > *x) {
            best = Some((v, b));
        }
    }
    best.expect("initdb not found under /usr/lib/postgresql/*/bin")
        .1
}

/// Run a server binary as the `postgres` user when we are root (initdb refuses root).
fn as_pg_user(bin: &Path, args: &[&str]) -> Command {
    let mut c;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
    } else {
        c = Command::new(bin);
    }
    c.args(args);
    c
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("localdr-pg-")
            .tempdir()
            .expect("tempdir");
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success());
        }
        let password = format!("pw-{}-secret", std::process::id());
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).unwrap();
        if root {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pwfile)
                .status()
                .unwrap();
        }
        let data = dir.path().join("data");
        let out = as_pg_user(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--no-sync",
            ],
        )
        .output()
        .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off",
            dir.path().display()
        );
        let out = as_pg_user(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                dir.path().join("log").to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .output()
        .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
        PgServer {
            port,
            password,
            dir,
            bin,
        }
    }

    /// Run SQL as postgres against `db`; returns stdout (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_pg_user(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .output();
    }
}

/// A free loopback port (picked at run time).
/// Poll `f` every 20 ms until it holds; fail the test after `limit`. Returns the wait.
pub fn wait_for(
    what: &str,
    limit: std::time::Duration,
    mut f: impl FnMut() -> bool,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    start.elapsed()
}

/// A free port, picked at run time.
/// One GET on a connection of its own (`Connection: close`): the whole answer as text, or
/// as much as came before a read error. `extra`: more header lines, each ending in `\r\n`.
/// Panics when nothing takes the request on `port`.
pub fn http_get(port: u16, path: &str, extra: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The port in the test worker's answer to `GET /` (`port=<p> pid=<n>`); 0 when absent.
pub fn worker_port(body: &str) -> u16 {
    worker_field(body, "port=") as u16
}

/// The pid in the test worker's answer to `GET /`; 0 when absent.
pub fn worker_pid(body: &str) -> u32 {
    worker_field(body, "pid=") as u32
}

fn worker_field(body: &str, key: &str) -> u64 {
    body.split(key)
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    free_ports(1)
}

/// A base port with `n` consecutive free ports (picked at run time).
///
/// They are picked below the kernel's ephemeral range (`ip_local_port_range`), which is
/// where `bind(0)` would pick them but also where every outgoing connection takes its
/// source port: a port found free there and released could be taken by any test's next
/// connection before the server under test binds it (seen as "address in use" in CI).
///
/// A port is handed out once per process: tests run in parallel threads, and two of them
/// drawing the same free port (each then binding it later) failed one with "address in
/// use"; so did a test whose port another test's check bound for an instant. Cargo runs
/// test binaries one after another, so the process is the scope that matters.
pub fn free_ports(n: u16) -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.saturating_sub(n));
    assert!(to > from + 1000, "ephemeral range starts too low ({low})");
    'outer: for _ in 0..1000 {
        let base = from + (random() % u64::from(to - from)) as u16;
        for p in base..base + n {
            if handed.contains(&p) || std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
                continue 'outer;
            }
        }
        handed.extend(base..base + n);
        return base;
    }
    panic!("no run of {n} free ports");
}

/// A random number without a dependency: std's hasher keys are random per process and
/// change with every `RandomState`.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Stops the agent and kills every worker its status names when the test ends, pass or fail.
pub struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let sd = localdr::statedir::StateDir::new(&self.0);
        let _ = localdr(&[
            "agent",
            "stop",
            "--state-dir",
            self.0.to_str().unwrap(),
            "--timeout",
            "20s",
        ]);
        for n in sd.status_names().unwrap_or_default() {
            if let Ok(Some(st)) = sd.read_status(&n) {
                for r in st.replicas {
                    if let Some(pid) = r.pid {
                        if localdr::runtime::process::is_same_process(pid, r.pid_start) {
                            localdr::runtime::process::signal_group(pid, libc::SIGKILL);
                        }
                    }
                }
            }
        }
    }
}

/// The head of every test configuration: `required_providers` for localdr, and a provider
/// block pointing at `state_dir` when one is given.
pub fn terraform_head(state_dir: Option<&Path>) -> String {
    let mut s = String::from(
        "terraform {\n  required_providers {\n    localdr = { source = \"localdr/localdr\" }\n  }\n}\n",
    );
    if let Some(sd) = state_dir {
        s.push_str(&format!(
            "provider \"localdr\" {{\n  state_dir = \"{}\"\n}}\n",
            sd.display()
        ));
    }
    s
}

/// A test worker process (`localdr-test-worker`, whose path only integration tests know:
/// pass `env!("CARGO_BIN_EXE_localdr-test-worker")`) serving on `port`; killed on drop, so a
/// failing test leaves nothing listening.
pub struct Worker {
    pub port: u16,
    child: std::process::Child,
}

impl Worker {
    /// Start it and wait (up to 10 s) until it accepts connections.
    pub fn start(exe: &str, port: u16) -> Worker {
        let child = Command::new(exe)
            .args(["--port", &port.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let w = Worker { port, child };
        wait_for(
            &format!("the worker on {port} to start"),
            std::time::Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        w
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP balancer spec for engine tests: `targets` (port, weight) on 127.0.0.1, a free
/// listen port, admin on any port, no active health checks (tests that want them set the
/// intervals), no retries, 2 s to connect and 10 s for the rest, no access log. Tests
/// change the fields they are about.
pub fn balancer_spec(name: &str, targets: &[(u16, u32)]) -> localdr::spec::BalancerSpec {
    use localdr::spec::{BalancerSpec, Healthchecks, Target, Timeouts, API_VERSION};
    let mut hc = Healthchecks::default();
    hc.active.healthy.interval = "0s".into();
    hc.active.unhealthy.interval = "0s".into();
    BalancerSpec {
        api_version: API_VERSION,
        name: name.into(),
        listen: format!("127.0.0.1:{}", free_port()),
        service: None,
        backup_service: None,
        targets: targets
            .iter()
            .map(|(p, w)| Target {
                address: format!("127.0.0.1:{p}"),
                weight: *w,
            })
            .collect(),
        backup_targets: vec![],
        algorithm: "round-robin".into(),
        healthchecks: hc,
        retries: 0,
        timeouts: Timeouts {
            connect: "2s".into(),
            read: "10s".into(),
            write: "10s".into(),
            client: "10s".into(),
        },
        rate_limit: None,
        admin_listen: "127.0.0.1:0".into(),
        mode: "http".into(),
        queue: None,
        slow_start: "0s".into(),
        access_log: false,
        correlation_id: Default::default(),
        drain_timeout: "30s".into(),
    }
}
