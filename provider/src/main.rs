//! `terraform-provider-localdr`: a thin translation between HCL and the localdr engine.
//!
//! Terraform speaks tfplugin6 to this binary; each resource validates and plans in HCL
//! terms and calls the engine (`localdr` crate) to do the work.

mod nodelay;
mod provider;
mod resources;
mod schema;

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

fn main() -> anyhow::Result<()> {
    // The crate captures a backtrace in every diagnostic; with RUST_BACKTRACE=1 set by the
    // environment users would see stack traces inside Terraform errors.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    init_logging();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(tf_provider::serve(
            "localdr",
            provider::LocaldrProvider::default(),
        ))
}
