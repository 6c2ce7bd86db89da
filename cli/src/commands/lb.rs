//! `skiff lb`: the eBPF Service load balancer on its own — from a file of Services and EndpointSlices (standalone,
//! tests, benchmarks) or following the API server.

use std::{net::Ipv4Addr, net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use skiff_lb::{LbConfig, config, desired::NodeIdentity};

/// Arguments of `skiff lb`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read Services and EndpointSlices from this multi-document YAML/JSON file (re-read when it changes and on
    /// SIGHUP). Without it, follow the API server of the current kubeconfig.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// cgroup-v2 directory holding the pods whose sockets are balanced (never the root cgroup).
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_POD_CGROUP)]
    cgroup: PathBuf,
    /// Do not attach the socket-level programs (only the tc path).
    #[arg(long)]
    no_socket_lb: bool,
    /// Node interface for NodePort/LoadBalancer traffic from outside (repeatable).
    #[arg(long = "interface", value_name = "IFACE")]
    interfaces: Vec<String>,
    /// This node's name (endpoints with this nodeName are local). Defaults to the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// This node's IPv4 address for NodePorts (repeatable; the first is also the SNAT source).
    #[arg(long = "node-ip", value_name = "IP")]
    node_ips: Vec<Ipv4Addr>,
    /// Source address for NodePort traffic forwarded to other nodes (default: the first --node-ip).
    #[arg(long, value_name = "IP")]
    snat_address: Option<Ipv4Addr>,
    /// Masquerade pods' packets from this CIDR to anywhere outside it on the interfaces (off when not given).
    #[arg(long, value_name = "CIDR")]
    masquerade_cluster_cidr: Option<ipnet::Ipv4Net>,
    /// With masquerade: destinations that see pods' own addresses (repeatable).
    #[arg(long, value_name = "CIDR", requires = "masquerade_cluster_cidr")]
    no_masquerade_to: Vec<ipnet::Ipv4Net>,
    /// bpffs directory for pinned maps and links.
    #[arg(long, value_name = "DIR", default_value = config::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Maglev table size (a prime).
    #[arg(long, default_value_t = config::DEFAULT_MAGLEV_TABLE_SIZE)]
    maglev_table_size: u32,
    /// Serve Prometheus metrics here.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Detach the programs and remove the pinned maps under --pin-dir, then exit.
    #[arg(long)]
    uninstall: bool,
}

/// Runs `skiff lb`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.uninstall {
        skiff_lb::loader::uninstall(&args.pin_dir).with_context(|| format!("removing {}", args.pin_dir.display()))?;
        eprintln!("removed {}", args.pin_dir.display());
        return Ok(());
    }
    let node_name = match args.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
    };
    let mut cfg = LbConfig::new(NodeIdentity { name: node_name, addresses: args.node_ips });
    cfg.pin_dir = args.pin_dir;
    cfg.cgroup = (!args.no_socket_lb).then_some(args.cgroup);
    cfg.interfaces = args.interfaces;
    cfg.snat_address = args.snat_address;
    cfg.masquerade = args
        .masquerade_cluster_cidr
        .map(|cluster_cidr| skiff_lb::nat::Masquerade { cluster_cidr, exclude: args.no_masquerade_to.clone() });
    cfg.maglev_table_size = args.maglev_table_size;
    cfg.metrics_addr = args.metrics_addr;
    cfg.validate()?;
    let rt = super::runtime()?;
    rt.block_on(async move {
        let shutdown = skiff_lb::source::file::shutdown_signal();
        match args.from_file {
            Some(path) => skiff_lb::run_from_file(path, cfg, shutdown).await,
            None => skiff_lb::source::api::run_with_default_client(cfg, shutdown).await,
        }
    })
    .map_err(anyhow::Error::new)
}
