//! `localdr agent`: run the agent in the foreground (or `--daemon`), or `agent stop`.

use crate::runtime::agent;
use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub action: Option<AgentAction>,
    #[command(flatten)]
    pub state: super::StateDirArg,
    /// Start in the background (new session, log in <state-dir>/logs/agent.log) and return
    /// once it holds the state dir.
    #[arg(long)]
    pub daemon: bool,
    /// Log format on stderr (or the log file).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Where the log goes (recorded for `localdr status`; the daemon sets it).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Exit after this long with no service to run (e.g. 5s).
    #[arg(long, value_name = "DURATION")]
    pub exit_when_idle: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AgentAction {
    /// SIGTERM the running agent and wait until its workers have stopped.
    Stop {
        #[command(flatten)]
        state: super::StateDirArg,
        /// How long to wait.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCALDR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Human => b.try_init(),
    };
}

pub fn run(a: AgentArgs) -> Result<i32> {
    if let Some(AgentAction::Stop { state, timeout }) = a.action {
        super::init_logging(0);
        let wait = crate::duration::parse(&timeout)?;
        match agent::stop(&state.state_dir, wait)? {
            Some(pid) => println!("agent pid {pid} stopped"),
            None => println!("no agent is running on {}", state.state_dir.display()),
        }
        return Ok(0);
    }
    let idle = a
        .exit_when_idle
        .as_deref()
        .map(crate::duration::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--exit-when-idle: {e}"))?;
    if a.daemon {
        super::init_logging(0);
        let exe = std::env::current_exe()?;
        let mut extra = vec![
            "--log-format".to_string(),
            match a.log_format {
                LogFormat::Json => "json".into(),
                LogFormat::Human => "human".into(),
            },
        ];
        if let Some(i) = &a.exit_when_idle {
            extra.push("--exit-when-idle".into());
            extra.push(i.clone());
        }
        let pid = agent::spawn_daemon(&exe, &a.state.state_dir, &extra, Duration::from_secs(10))?;
        println!(
            "localdr agent started (pid {pid}) on {}",
            crate::statedir::StateDir::new(&a.state.state_dir)
                .root()
                .display()
        );
        return Ok(0);
    }
    init_logging(a.log_format);
    agent::run(agent::Options {
        state_dir: a.state.state_dir,
        log_file: a.log_file,
        exit_when_idle: idle,
    })?;
    Ok(0)
}
