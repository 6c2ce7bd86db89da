//! `skiff up`: a whole single-node cluster in one process.

use std::path::PathBuf;
use std::time::Instant;

/// Flags of `skiff up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the datastore, certificates, kubeconfig (`DIR/kubeconfig`) and node state.
    #[arg(long, default_value = ".skiff")]
    pub data_dir: PathBuf,
    /// Port of the API server.
    #[arg(long, default_value_t = 6443)]
    pub api_port: u16,
}

fn step(started: Instant, what: &str) {
    eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
}

/// Runs the cluster until interrupted.
pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = std::path::absolute(&args.data_dir)?;
    std::fs::create_dir_all(&data_dir)?;
    eprintln!("Starting Skiff in {}", data_dir.display());
    super::runtime()?.block_on(async move {
        step(started, "starting the API server (SQLite datastore, certificates)…");
        let cfg = super::server::Args {
            data_dir: data_dir.join("server"),
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], args.api_port)),
            advertise_address: Some(format!("127.0.0.1:{}", args.api_port)),
            tls_san: Vec::new(),
            datastore: "sqlite".into(),
            compaction_interval: 300,
        }
        .config()?;
        let server = skiff_control::server::start(cfg).await?;
        let kubeconfig = data_dir.join("kubeconfig");
        std::fs::copy(&server.kubeconfig, &kubeconfig)?;
        step(started, &format!("API server ready at {}", server.url));
        eprintln!();
        eprintln!("Skiff is up.");
        eprintln!("  API server   {}", server.url);
        eprintln!("  kubeconfig   {}", kubeconfig.display());
        eprintln!("  datastore    {}", data_dir.join("server/state.db").display());
        eprintln!("  metrics      {}/metrics", server.url);
        eprintln!();
        eprintln!("  export KUBECONFIG={}", kubeconfig.display());
        eprintln!("  kubectl get namespaces");
        super::wait_for_shutdown().await;
        Ok(())
    })
}
