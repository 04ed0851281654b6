//! `localdr`: backups with retention, verification, restore and drift reports, from the
//! command line. Each subcommand lives in `cli/<name>.rs` and only wires flags to the engine.

use clap::Parser;

fn main() {
    let cli = localdr::cli::Cli::parse();
    // The agent sets up its own logging (human or JSON lines, info by default).
    if !matches!(cli.command, localdr::cli::Command::Agent(_)) {
        localdr::cli::init_logging(cli.verbose);
    }
    let code = match localdr::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
