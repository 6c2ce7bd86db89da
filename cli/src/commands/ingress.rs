//! `skiff ingress`: the Pingora ingress controller, standalone (`--from-file`) or following a cluster.

use std::path::PathBuf;
use std::time::Duration;

use skiff_ingress::config::AccessLog;
use skiff_ingress::{IngressConfig, compile::annotations::parse_size};

/// Flags of `skiff ingress`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve the objects of this multi-document YAML file (re-read when it changes, or on SIGHUP) instead of
    /// following a cluster.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// Kubeconfig for API mode (default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account).
    #[arg(long, value_name = "FILE", conflicts_with = "from_file")]
    kubeconfig: Option<PathBuf>,
    /// Plain HTTP listener.
    #[arg(long, default_value = "0.0.0.0:80")]
    http_addr: String,
    /// HTTPS listener (`none` for no TLS listener).
    #[arg(long, default_value = "0.0.0.0:443")]
    https_addr: String,
    /// Prometheus metrics listener (`none` to disable); unauthenticated, so loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:10254")]
    metrics_addr: String,
    /// IngressClass name served when no IngressClass object of that name exists.
    #[arg(long, default_value = "skiff")]
    class: String,
    /// `spec.controller` of the IngressClasses this controller serves.
    #[arg(long, default_value = "skiff.dev/ingress-controller")]
    controller: String,
    /// Worker threads of the proxy.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Send every request through Pingora's proxy phases (no HTTP/1.1 fast path; for comparison and debugging).
    #[arg(long)]
    no_fast_path: bool,
    /// Access log: `stdout`, `off`, or a file path (JSON lines).
    #[arg(long, default_value = "stdout")]
    access_log: String,
    /// Address written to `status.loadBalancer.ingress` of served Ingresses (repeatable; API mode).
    #[arg(long = "status-address", value_name = "IP_OR_NAME")]
    status_addresses: Vec<String>,
    /// Default `proxy-body-size` (nginx units; 0 = unlimited).
    #[arg(long, default_value = "1m")]
    max_body_size: String,
    /// Take the listening sockets over from a running instance (graceful binary upgrade; send it SIGQUIT).
    #[arg(long)]
    upgrade: bool,
    /// Unix socket for handing listening sockets to a new binary.
    #[arg(long, default_value = "/tmp/skiff-ingress-upgrade.sock")]
    upgrade_sock: PathBuf,
    /// Pid file.
    #[arg(long, default_value = "/tmp/skiff-ingress.pid")]
    pid_file: PathBuf,
    /// Seconds that requests in flight and keep-alive clients get to finish after SIGTERM (or after handing the
    /// sockets to a new binary on SIGQUIT) before the remaining connections are cut. Listeners close at once.
    #[arg(long, default_value_t = 5)]
    grace_period: u64,
}

fn optional(addr: String) -> Option<String> {
    (addr != "none" && !addr.is_empty()).then_some(addr)
}

/// Runs the ingress controller until a signal stops it.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = IngressConfig {
        http_addr: args.http_addr,
        https_addr: optional(args.https_addr),
        metrics_addr: optional(args.metrics_addr),
        threads: args.threads,
        fast_path: !args.no_fast_path,
        access_log: match args.access_log.as_str() {
            "stdout" => AccessLog::Stdout,
            "off" | "none" => AccessLog::Off,
            path => AccessLog::File(path.into()),
        },
        status_addresses: args.status_addresses,
        upgrade: args.upgrade,
        upgrade_sock: args.upgrade_sock,
        pid_file: args.pid_file,
        grace_period: Duration::from_secs(args.grace_period),
        ..IngressConfig::default()
    };
    config.compile.class_name = args.class;
    config.compile.controller = args.controller;
    config.compile.defaults.max_body_bytes = parse_size(&args.max_body_size)
        .ok_or_else(|| anyhow::anyhow!("--max-body-size {:?}: expected e.g. 1m, 512k, 0", args.max_body_size))?;
    match args.from_file {
        Some(path) => skiff_ingress::run_from_file(path, config)?,
        None => skiff_ingress::runtime::api::run_from_kubeconfig(args.kubeconfig, config)?,
    }
    Ok(())
}
