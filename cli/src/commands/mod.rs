//! The subcommands, one file each.

mod ingress;
mod version;

/// What `skiff` is asked to do.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the version of this binary and the Kubernetes API version it serves.
    Version(version::Args),
    /// Run the Pingora ingress controller (standalone with --from-file, or following a cluster).
    Ingress(ingress::Args),
}

/// Runs one subcommand to completion.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Version(args) => version::run(args),
        Command::Ingress(args) => ingress::run(args),
    }
}

/// A multi-threaded tokio runtime for the long-running roles.
#[allow(dead_code)] // used by the roles as they land
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
