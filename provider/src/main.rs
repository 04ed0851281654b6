//! `terraform-provider-localdr`: a thin translation between HCL and the localdr engine.
//!
//! Terraform speaks tfplugin6 to this binary; each resource validates and plans in HCL
//! terms and calls the engine (`localdr` crate) to do the work.

mod data_sources;
mod nodelay;
mod provider;
mod resources;
mod schema;
mod timing;

/// Terraform keeps a plugin's stderr and shows it in its own log when `TF_LOG` is set, so
/// tracing goes to stderr at the level `TF_LOG_PROVIDER`/`TF_LOG` asks for. When
/// `PLUGIN_LOG_FILE` is set the tf-provider crate installs its own subscriber (and would
/// panic if one existed), so we stand aside.
fn init_logging() {
    if std::env::var_os("PLUGIN_LOG_FILE").is_some() {
        return;
    }
    let level = std::env::var("TF_LOG_PROVIDER")
        .or_else(|_| std::env::var("TF_LOG"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let level = match level.as_str() {
        "trace" | "json" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" => "warn",
        "error" => "error",
        _ => "off",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "h2=warn,tower=warn,hyper=warn,{level}"
        )))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Exit when Terraform goes away. The crate serves until Terraform's Shutdown RPC; if
/// Terraform is killed instead, the provider would otherwise live on, listening on loopback.
/// Polling the parent pid (rather than PR_SET_PDEATHSIG, which fires when the spawning
/// *thread* exits — Go threads come and go) is safe and costs one syscall a second.
fn exit_with_parent() {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            tracing::warn!("terraform (pid {parent}) is gone; exiting");
            std::process::exit(1);
        }
    });
}

fn main() -> anyhow::Result<()> {
    // The crate captures a backtrace in every diagnostic; with RUST_BACKTRACE=1 set by the
    // environment users would see stack traces inside Terraform errors.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    init_logging();
    exit_with_parent();
    if let Err(e) = nodelay::before_handshake() {
        tracing::warn!("stdout not routed for TCP_NODELAY (each RPC will set it): {e}");
    }
    // One thread serves gRPC: with `-parallelism=1` every RPC is on the critical path, and a
    // multi-thread runtime adds cross-core wakeups to each. Long work (snapshots) goes to the
    // blocking pool; Read's vault check is short and runs inline.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(tf_provider::serve(
            "localdr",
            provider::LocaldrProvider::default(),
        ))
}
