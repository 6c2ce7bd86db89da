//! The subcommands, one file each.

mod agent;
mod certs;
mod image;
mod ingress;
mod lb;
mod secrets;
mod server;
mod up;
mod version;

/// What `skiff` is asked to do.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the version of this binary and the Kubernetes API version it serves.
    Version(version::Args),
    /// Run a whole single-node cluster (API server, controllers, scheduler, node agent, dataplane) in one process.
    Up(up::Args),
    /// Run the API server (with its datastore) for a multi-node cluster.
    Server(server::Args),
    /// Run the Pingora ingress controller (standalone with --from-file, or following a cluster).
    Ingress(ingress::Args),
    /// Run the eBPF Service load balancer (standalone with --from-file, or following a cluster).
    Lb(lb::Args),
    /// Run the node agent: join a cluster and run the pods bound to this node.
    Agent(agent::Args),
    /// Manage the node's image store (import, ls, pull, rm).
    Image(image::Args),
    /// Manage the encryption of Secrets at rest (rotate-key).
    Secrets(secrets::Args),
    /// The API server's certificates: check their expiry, rotate them.
    Certs(certs::Args),
}

/// Runs one subcommand to completion.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Version(args) => version::run(args),
        Command::Up(args) => up::run(args),
        Command::Server(args) => server::run(args),
        Command::Ingress(args) => ingress::run(args),
        Command::Lb(args) => lb::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Image(args) => image::run(args),
        Command::Secrets(args) => secrets::run(args),
        Command::Certs(args) => certs::run(args),
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("shutting down");
}

/// A multi-threaded tokio runtime for the long-running roles.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
