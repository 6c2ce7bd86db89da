//! `skiff version`.

/// Flags of `skiff version`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the binary's version and the Kubernetes version its API server reports.
pub fn run(args: Args) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let kube = skiff_api::registry::KUBERNETES_VERSION;
    if args.json {
        println!("{}", serde_json::json!({"skiff": version, "kubernetes": kube}));
    } else {
        println!("skiff {version} (Kubernetes API {kube})");
    }
    Ok(())
}
