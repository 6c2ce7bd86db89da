//! `skiff`: one binary for every role of a Skiff cluster.
//!
//! `skiff up` runs a whole single-node cluster; `skiff server`, `skiff agent`, `skiff ingress` and `skiff lb` run
//! the roles separately; `skiff version` prints what this binary is.

mod commands;
mod dataplane;
mod logging;

use clap::Parser;

/// A compact Kubernetes-compatible orchestrator whose dataplane is the point.
#[derive(Debug, Parser)]
#[command(name = "skiff", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text, env = "SKIFF_LOG_FORMAT")]
    log_format: logging::LogFormat,
    /// Log filter, in `tracing-subscriber` EnvFilter syntax (e.g. `info,skiff_control=debug`).
    #[arg(long, global = true, default_value = "info", env = "SKIFF_LOG")]
    log: String,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format, &cli.log)?;
    commands::run(cli.command)
}
