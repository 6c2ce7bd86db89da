//! `skiff agent`: the node agent joining a cluster (`--server URL --token T --ca-cert FILE`), plus `skiff agent reset`
//! (remove everything an agent left on this machine) and the hidden `skiff agent shim` every container runs under.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use skiff_agent::dataplane::Dataplane;
use skiff_agent::{AgentConfig, config};

/// Flags of `skiff agent`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The API server (`https://host:6443`); several (repeated or comma-separated) for a cluster of servers: the
    /// first is used until it cannot be reached, then the next.
    #[arg(long, value_delimiter = ',')]
    server: Vec<String>,
    /// The node token (`<server data dir>/pki/node-token`).
    #[arg(long, env = "SKIFF_NODE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA certificate (`<server data dir>/pki/ca.crt`): verifies the API server and the clients of the
    /// kubelet endpoint.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Lifetime to ask for the node's client certificate (seconds; the server caps it at a year, its default). It
    /// is renewed when a third of it is left.
    #[arg(long, value_name = "SECONDS")]
    node_certificate_seconds: Option<u64>,
    /// This node's address (default: the first address of --interface, or the first global IPv4 address).
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// State directory (pods, container bundles, logs, network namespaces).
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Port of the kubelet-style HTTPS endpoint (logs, exec, metrics).
    #[arg(long, default_value_t = config::DEFAULT_KUBELET_PORT)]
    kubelet_port: u16,
    /// Serve Prometheus metrics over plain HTTP here (e.g. `0.0.0.0:10255`).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// cgroup (in every hierarchy) that holds this node's pods.
    #[arg(long, default_value = "skiff")]
    cgroup_root: String,
    /// The image store (an OCI image layout shared with `skiff image`).
    #[arg(long, default_value = config::DEFAULT_IMAGE_STORE)]
    image_store: PathBuf,
    /// Directory of static pod manifests.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// The node's main interface (address detection, NodePort programs).
    #[arg(long, value_name = "IFACE")]
    interface: Option<String>,
    /// Name of the pods' bridge.
    #[arg(long, default_value = "skiff0")]
    bridge: String,
    /// Do not serve cluster DNS.
    #[arg(long)]
    no_dns: bool,
    /// Where cluster DNS forwards names outside the cluster domain (`IP` or `IP:PORT`, repeatable; `none` to answer
    /// them NXDOMAIN). Default: the `nameserver` lines of this machine's /etc/resolv.conf.
    #[arg(long, value_name = "ADDR")]
    dns_upstream: Vec<String>,
    /// Run the eBPF Service load balancer for this node's pods.
    #[arg(long)]
    lb: bool,
    /// bpffs directory for the load balancer's pinned maps (default `/sys/fs/bpf/skiff/<node>`).
    #[arg(long, value_name = "DIR")]
    lb_pin_dir: Option<PathBuf>,
    /// Where the load balancer serves its metrics.
    #[arg(long, value_name = "ADDR")]
    lb_metrics_addr: Option<SocketAddr>,
    /// Give the processes of this cgroup-v2 directory (e.g. `/sys/fs/cgroup/unified`, the whole node) socket-level
    /// access to ClusterIPs and NodePorts. Default: pods only.
    #[arg(long, value_name = "DIR")]
    lb_node_cgroup: Option<PathBuf>,
    /// The cluster's pod addresses: pods' packets to anywhere else leave with the node address (masquerade).
    #[arg(long, value_name = "CIDR", default_value = config::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: ipnet::Ipv4Net,
    /// Leave pods' packets to outside the cluster untranslated (their network routes pod addresses back).
    #[arg(long)]
    no_masquerade: bool,
    /// Destinations that see pods' own addresses (repeatable; ip-masq-agent's nonMasqueradeCIDRs).
    #[arg(long, value_name = "CIDR")]
    no_masquerade_to: Vec<ipnet::Ipv4Net>,
    /// A registry reached over plain HTTP (`host:port`; repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// The runc executable.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// Give every container without a seccomp profile the RuntimeDefault one (as kubelet's flag).
    #[arg(long)]
    seccomp_default: bool,
    /// Where Localhost seccomp profiles are (default `<data dir>/seccomp`).
    #[arg(long, value_name = "DIR")]
    seccomp_dir: Option<PathBuf>,
    /// Most processes and threads one pod may run (`-1`: unlimited).
    #[arg(long, default_value_t = config::DEFAULT_POD_MAX_PIDS as i64, allow_hyphen_values = true)]
    pod_max_pids: i64,
    /// Which program watches over each container: `auto` (`skiff-shim` beside this binary when it is there, else
    /// `skiff agent shim`) or `embedded` (always `skiff agent shim`, a bigger process: for comparison).
    #[arg(long, value_enum, default_value = "auto")]
    shim: ShimChoice,
    /// Disk usage of the image store's file system, in percent, at which unused images are removed (100: never).
    #[arg(long, value_name = "PERCENT", default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Disk usage, in percent, that image garbage collection brings the disk down to.
    #[arg(long, value_name = "PERCENT", default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// Images used or stored more recently than this are never removed (`2m`, `90s`, `1h`).
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    image_minimum_gc_age: jiff::SignedDuration,
}

/// `--shim`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ShimChoice {
    /// `skiff-shim` beside this binary when it is there, else `skiff agent shim`.
    Auto,
    /// Always `skiff agent shim`.
    Embedded,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Stop and remove everything an agent left on this machine: containers, their processes, mounts, cgroups,
    /// the pod network and the data directory.
    Reset {
        /// The agent's state directory.
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The agent's cgroup root.
        #[arg(long, default_value = "skiff")]
        cgroup_root: String,
        /// The agent's bridge (also removes the DNS interface and the pods' veths).
        #[arg(long, default_value = "skiff0")]
        bridge: String,
        /// Leave the bridge and the DNS interface in place.
        #[arg(long)]
        keep_network: bool,
        /// The runc executable.
        #[arg(long, default_value = "runc")]
        runc: PathBuf,
    },
    /// The per-container shim (started by the agent; not for people).
    #[command(hide = true)]
    Shim {
        /// The shim's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

impl Args {
    /// The agent configuration these flags describe (reads the CA file).
    pub fn config(&self) -> anyhow::Result<(AgentConfig, Option<Box<dyn Dataplane>>)> {
        let ca = self.ca_cert.as_ref().context("--ca-cert is required")?;
        let ca_pem = std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
        let node = self.node_name.clone().unwrap_or_else(hostname);
        let mut cfg = AgentConfig::new(node.clone(), ca_pem);
        cfg.node_ip = self.node_ip;
        cfg.interface = self.interface.clone();
        cfg.data_dir = std::path::absolute(&self.data_dir)?;
        cfg.image_store = std::path::absolute(&self.image_store)?;
        cfg.manifests = self.manifests.as_ref().map(std::path::absolute).transpose()?;
        cfg.kubelet_port = self.kubelet_port;
        cfg.metrics_addr = self.metrics_addr;
        cfg.cgroup_root = self.cgroup_root.clone();
        cfg.bridge = self.bridge.clone();
        cfg.serve_dns = !self.no_dns;
        cfg.dns_upstream = parse_upstreams(&self.dns_upstream)?;
        cfg.insecure_registries = self.insecure_registries.clone();
        cfg.runc = self.runc.clone();
        cfg.seccomp_default = self.seccomp_default;
        cfg.seccomp_dir = self.seccomp_dir.as_ref().map(std::path::absolute).transpose()?;
        cfg.pod_max_pids = u64::try_from(self.pod_max_pids).ok().filter(|n| *n > 0);
        cfg.image_gc = skiff_agent::images::gc::GcPolicy {
            high_percent: self.image_gc_high_threshold,
            low_percent: self.image_gc_low_threshold,
            min_age: std::time::Duration::try_from(self.image_minimum_gc_age)
                .map_err(|_| anyhow::anyhow!("--image-minimum-gc-age must not be negative"))?,
        };
        if let ShimChoice::Embedded = self.shim {
            cfg.shim = skiff_agent::ShimCommand::embedded(std::env::current_exe().context("finding this binary")?);
        }
        cfg.validate()?;
        let dataplane = self.lb.then(|| crate::dataplane::Ebpf {
            pin_dir: self
                .lb_pin_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(skiff_lb::config::DEFAULT_PIN_DIR).join(&node)),
            metrics_addr: self.lb_metrics_addr,
            node_cgroup: self.lb_node_cgroup.clone(),
            masquerade: (!self.no_masquerade).then(|| skiff_lb::nat::Masquerade {
                cluster_cidr: self.cluster_cidr,
                exclude: self.no_masquerade_to.clone(),
            }),
        });
        if let Some(d) = &dataplane {
            d.validate().map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok((cfg, dataplane.map(|d| Box::new(d) as Box<dyn Dataplane>)))
    }
}

/// `--dns-upstream` values: none given is `None` (the machine's resolvers), `none` an empty list.
fn parse_upstreams(values: &[String]) -> anyhow::Result<Option<Vec<SocketAddr>>> {
    if values.is_empty() {
        return Ok(None);
    }
    if values.iter().any(|v| v == "none") {
        anyhow::ensure!(values.len() == 1, "--dns-upstream none cannot be given with addresses");
        return Ok(Some(Vec::new()));
    }
    values
        .iter()
        .map(|v| {
            v.parse::<SocketAddr>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| anyhow::anyhow!("--dns-upstream {v:?}: expected IP or IP:PORT"))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

/// Runs `skiff agent`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Sub::Shim { args }) => std::process::exit(skiff_agent::runtime::shim::main(&args)),
        Some(Sub::Reset { data_dir, cgroup_root, bridge, keep_network, runc }) => {
            let r = skiff_agent::cleanup::Reset {
                data_dir: std::path::absolute(data_dir)?,
                cgroup_root,
                runc,
                bridge: (!keep_network).then_some(bridge),
            };
            let left = super::runtime()?.block_on(skiff_agent::cleanup::reset(&r));
            if !left.is_empty() {
                anyhow::bail!("could not remove everything: {left:?}");
            }
            eprintln!("removed the agent's containers, mounts, cgroups and {}", r.data_dir.display());
            Ok(())
        }
        None => {
            anyhow::ensure!(!args.server.is_empty(), "--server is required");
            let servers = args.server.clone();
            let token = args.token.clone().context("--token (or SKIFF_NODE_TOKEN) is required")?;
            let (cfg, dataplane) = args.config()?;
            super::runtime()?.block_on(async move {
                let pki = skiff_agent::paths::Paths::new(cfg.data_dir.clone()).pki();
                let lifetime = args.node_certificate_seconds.map(std::time::Duration::from_secs);
                let client = skiff_agent::bootstrap::connect_node(
                    &servers,
                    token.trim(),
                    &cfg.ca_cert_pem,
                    &cfg.node_name,
                    &pki,
                    lifetime,
                )
                .await?;
                eprintln!("skiff agent: node {} joining {}", cfg.node_name, servers.join(", "));
                skiff_agent::run(client, cfg, dataplane, super::wait_for_shutdown()).await?;
                Ok(())
            })
        }
    }
}
