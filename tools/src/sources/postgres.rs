//! PostgreSQL as a backup source, through the server's own tools: `pg_dump` to take a
//! snapshot, `pg_restore` (custom format) or `psql` (plain SQL) to restore it.
//!
//! The password never reaches an argument list, a log line or an error: it is handed to
//! the tools in a temporary 0600 passfile (`PGPASSFILE`), and every message from the tools
//! is scrubbed of it before it is shown.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Connection settings as the policy stores them (never the password itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgConfig {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    /// A file whose first line is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// True when the provider wrote `password_file` from an inline `password`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub password_managed: bool,
    /// `custom` (pg_dump -Fc, restored with pg_restore) or `plain` (SQL, restored with psql).
    pub dump_format: String,
    /// libpq's `sslmode` for every tool; absent means libpq's default, `prefer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
}

/// libpq's `sslmode` values, weakest first.
pub const SSLMODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

impl PgConfig {
    /// `postgres://user@host:port/database`: how snapshots and messages name the source.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

/// A connection: settings plus the password, read from the policy's file or given.
pub struct Pg {
    pub cfg: PgConfig,
    password: Option<String>,
    /// Held for the connection's lifetime; removed on drop.
    passfile: Option<tempfile::NamedTempFile>,
}

/// What `check` learns about the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub server_version: String,
    pub server_major: u32,
    pub client_major: u32,
}

impl Pg {
    /// `password` overrides the policy's `password_file`; without either, the tools use
    /// whatever the environment gives them (`PGPASSWORD`, `~/.pgpass`, trust).
    pub fn new(cfg: PgConfig, password: Option<String>) -> Result<Pg> {
        let password = match (password, &cfg.password_file) {
            (Some(p), _) => Some(p),
            (None, Some(f)) => Some(read_password_file(Path::new(f))?),
            (None, None) => None,
        };
        let passfile = match &password {
            None => None,
            Some(p) => {
                let mut f = tempfile::Builder::new()
                    .prefix(".localdr-pgpass-")
                    .tempfile()
                    .context("could not create a temporary passfile")?;
                // tempfile creates 0600 files.
                writeln!(f, "*:*:*:*:{}", escape_pgpass(p))?;
                f.flush()?;
                Some(f)
            }
        };
        Ok(Pg {
            cfg,
            password,
            passfile,
        })
    }

    fn cmd(&self, tool: &str) -> Result<Command> {
        let mut c = Command::new(find_tool(tool)?);
        c.env("PGCONNECT_TIMEOUT", "5")
            .env("PGAPPNAME", "localdr")
            .stdin(Stdio::null());
        if let Some(f) = &self.passfile {
            c.env("PGPASSFILE", f.path()).env_remove("PGPASSWORD");
        }
        if let Some(m) = &self.cfg.sslmode {
            c.env("PGSSLMODE", m);
        }
        Ok(c)
    }

    fn conn_args(&self, db: &str) -> Vec<String> {
        vec![
            "-h".into(),
            self.cfg.host.clone(),
            "-p".into(),
            self.cfg.port.to_string(),
            "-U".into(),
            self.cfg.user.clone(),
            "-w".into(),
            "-d".into(),
            db.into(),
        ]
    }

    fn scrub(&self, s: &str) -> String {
        match &self.password {
            Some(p) if !p.is_empty() => s.replace(p.as_str(), "********"),
            _ => s.to_string(),
        }
    }

    /// Run a tool; on failure, an error that explains the usual causes in plain words.
    fn run(&self, mut c: Command, what: &str, db: &str) -> Result<Output> {
        let out = c
            .output()
            .with_context(|| format!("could not run {what}"))?;
        if out.status.success() {
            return Ok(out);
        }
        let err = self.scrub(String::from_utf8_lossy(&out.stderr).trim());
        Err(anyhow!(self.explain(&err, db))).with_context(|| format!("{what} failed"))
    }

    fn explain(&self, err: &str, db: &str) -> String {
        let c = &self.cfg;
        if err.contains("Connection refused")
            || err.contains("could not connect")
            || err.contains("timeout expired")
            || err.contains("could not translate host name")
        {
            format!(
                "the PostgreSQL server at {}:{} is not accepting connections (is it running? are host and port right?): {err}",
                c.host, c.port
            )
        } else if err.contains("password authentication failed") {
            format!(
                "password authentication failed for user \"{}\" on {}:{}: check postgres.password (or password_file)",
                c.user, c.host, c.port
            )
        } else if err.contains("no password supplied") || err.contains("fe_sendauth") {
            format!(
                "the server at {}:{} asks for a password and none was given: set postgres.password or password_file (or PGPASSWORD for the CLI)",
                c.host, c.port
            )
        } else if err.contains(&format!("database \"{db}\" does not exist")) {
            format!(
                "database \"{db}\" does not exist on {}:{}: check postgres.database",
                c.host, c.port
            )
        } else {
            err.to_string()
        }
    }

    fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let mut c = self.cmd("psql")?;
        c.args(self.conn_args(db)).args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        let out = self.run(c, "psql", db)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Connect, check the database exists, and that our pg_dump is not older than the server.
    pub fn check(&self) -> Result<ServerInfo> {
        let v = self.psql(
            &self.cfg.database,
            "select current_setting('server_version_num') || ' ' || current_setting('server_version')",
        )?;
        let (num, ver) = v.split_once(' ').unwrap_or((&v, &v));
        let server_major = num.parse::<u32>().map(|n| n / 10000).unwrap_or(0);
        let client_major = tool_major("pg_dump")?;
        if client_major < server_major {
            bail!(
                "pg_dump is version {client_major} but the server at {}:{} runs PostgreSQL {server_major}: \
                 pg_dump cannot dump a newer server; install the PostgreSQL {server_major} client tools",
                self.cfg.host,
                self.cfg.port
            );
        }
        Ok(ServerInfo {
            server_version: ver.to_string(),
            server_major,
            client_major,
        })
    }

    /// Dump the database into `out`. Custom format keeps pg_dump's own compression: an
    /// uncompressed dump would be several times larger on the way through the disk, and
    /// costs more to write than pg_dump spends compressing (measured in bench/postgres.sh).
    pub fn dump(&self, out: &Path) -> Result<()> {
        let mut c = self.cmd("pg_dump")?;
        c.args(self.conn_args(&self.cfg.database));
        if self.cfg.dump_format == "plain" {
            c.args(["-F", "p", "--clean", "--if-exists"]);
        } else {
            c.args(["-F", "c"]);
        }
        c.arg("-f").arg(out);
        self.run(c, "pg_dump", &self.cfg.database)?;
        Ok(())
    }

    /// Load `dump` into `db`. `clean` drops the objects the dump recreates first (restoring
    /// over a live database). One transaction: a failed restore changes nothing.
    pub fn restore(&self, dump: &Path, format: &str, db: &str, clean: bool) -> Result<()> {
        let c = if format == "plain" {
            let mut c = self.cmd("psql")?;
            c.args(self.conn_args(db))
                .args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "--single-transaction",
                    "-f",
                ])
                .arg(dump);
            c.stdout(Stdio::null());
            c
        } else {
            let mut c = self.cmd("pg_restore")?;
            c.args(self.conn_args(db)).args([
                "--no-owner",
                "--exit-on-error",
                "--single-transaction",
            ]);
            if clean {
                c.args(["--clean", "--if-exists"]);
            }
            c.arg(dump);
            c
        };
        self.run(
            c,
            if format == "plain" {
                "psql"
            } else {
                "pg_restore"
            },
            db,
        )?;
        Ok(())
    }

    pub fn database_exists(&self, db: &str) -> Result<bool> {
        let r = self.psql(
            "postgres",
            &format!(
                "select count(*) from pg_database where datname = {}",
                quote_literal(db)
            ),
        )?;
        Ok(r == "1")
    }

    pub fn create_database(&self, db: &str) -> Result<()> {
        self.psql("postgres", &format!("create database {}", quote_ident(db)))?;
        Ok(())
    }

    pub fn drop_database(&self, db: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("drop database if exists {} with (force)", quote_ident(db)),
        )?;
        Ok(())
    }

    /// Rows per table (`schema.table`) in every user schema of `db`.
    pub fn table_counts(&self, db: &str) -> Result<BTreeMap<String, i64>> {
        let tables = self.psql(
            db,
            "select quote_ident(schemaname) || '.' || quote_ident(tablename) from pg_tables \
             where schemaname not in ('pg_catalog', 'information_schema') order by 1",
        )?;
        let tables: Vec<&str> = tables.lines().filter(|l| !l.is_empty()).collect();
        if tables.is_empty() {
            return Ok(BTreeMap::new());
        }
        let q = tables
            .iter()
            .map(|t| format!("select {}, count(*) from {t}", quote_literal(t)))
            .collect::<Vec<_>>()
            .join(" union all ");
        let out = self.psql(db, &q)?;
        let mut m = BTreeMap::new();
        for l in out.lines() {
            if let Some((t, n)) = l.rsplit_once('|') {
                m.insert(t.to_string(), n.parse().unwrap_or(-1));
            }
        }
        Ok(m)
    }
}

fn read_password_file(p: &Path) -> Result<String> {
    let s = std::fs::read_to_string(p)
        .with_context(|| format!("could not read password_file {}", p.display()))?;
    Ok(s.lines().next().unwrap_or("").to_string())
}

/// pgpass escapes `:` and `\`.
fn escape_pgpass(p: &str) -> String {
    p.replace('\\', "\\\\").replace(':', "\\:")
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A PostgreSQL client tool: the newest `/usr/lib/postgresql/<v>/bin/<name>`, else on
/// PATH. The versioned binary first because Debian's `/usr/bin/pg_dump` is a Perl wrapper
/// that costs ~100 ms per call (measured), and the newest client reads every older server.
pub fn find_tool(name: &str) -> Result<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let v: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
            let c = e.path().join("bin").join(name);
            if c.is_file() && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, c));
            }
        }
    }
    if let Some((_, p)) = best {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join(name);
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    Err(anyhow!(
        "{name} was not found in /usr/lib/postgresql/*/bin nor on PATH: install the PostgreSQL client tools (apt install postgresql-client)"
    ))
}

fn tool_major(name: &str) -> Result<u32> {
    let out = Command::new(find_tool(name)?)
        .arg("--version")
        .output()
        .with_context(|| format!("could not run {name} --version"))?;
    let s = String::from_utf8_lossy(&out.stdout);
    // "pg_dump (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)"
    s.split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("could not read the version of {name} from {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_escaping_and_quoting() {
        assert_eq!(escape_pgpass(r"a:b\c"), r"a\:b\\c");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("o'k"), "'o''k'");
    }

    #[test]
    fn the_password_never_survives_in_messages() {
        let pg = Pg::new(
            PgConfig {
                host: "127.0.0.1".into(),
                port: 1,
                database: "d".into(),
                user: "u".into(),
                password_file: None,
                password_managed: false,
                dump_format: "custom".into(),
                sslmode: None,
            },
            Some("s3cret".into()),
        )
        .unwrap();
        assert_eq!(pg.scrub("bad s3cret here"), "bad ******** here");
        let pf = std::fs::read_to_string(pg.passfile.as_ref().unwrap().path()).unwrap();
        assert!(pf.ends_with(":s3cret\n"));
    }
}
