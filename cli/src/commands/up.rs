//! `skiff up`: a whole single-node cluster in one process — API server with its controllers and scheduler, the node
//! agent (pods with runc, pod network, cluster DNS), the eBPF Service load balancer and the ingress controller on
//! the node's ports 80 and 443.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use skiff_agent::AgentConfig;
use skiff_agent::dataplane::Dataplane;

/// Flags of `skiff up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the datastore, certificates, kubeconfig (`DIR/kubeconfig`) and node state.
    #[arg(long, default_value = ".skiff")]
    pub data_dir: PathBuf,
    /// Port of the API server.
    #[arg(long, default_value_t = 6443)]
    pub api_port: u16,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's address (default: the first address of --interface, or the first global IPv4 address).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// The node's main interface: NodePort and LoadBalancer traffic arriving on it is balanced by the tc programs,
    /// and pods' traffic leaving through it is masqueraded (default: the interface that holds the node address).
    #[arg(long, value_name = "IFACE")]
    pub interface: Option<String>,
    /// The image store (built-in images are put here by `scripts/setup`).
    #[arg(long, default_value = skiff_agent::config::DEFAULT_IMAGE_STORE)]
    pub image_store: PathBuf,
    /// The ingress controller's plain HTTP port.
    #[arg(long, default_value_t = 80)]
    pub http_port: u16,
    /// The ingress controller's HTTPS port.
    #[arg(long, default_value_t = 443)]
    pub https_port: u16,
    /// cgroup (in every hierarchy) that holds the node's pods; the load balancer's socket programs attach there.
    #[arg(long, default_value = "skiff")]
    pub cgroup_root: String,
    /// bpffs directory of the load balancer's pinned maps and programs (default `/sys/fs/bpf/skiff/<node>`).
    #[arg(long, value_name = "DIR")]
    pub lb_pin_dir: Option<PathBuf>,
    /// Address the plain-HTTP metrics ports (agent 10255, load balancer 10249, ingress 10254) listen on; they are
    /// unauthenticated, so the default is loopback (give the node's address, or 0.0.0.0, for a Prometheus elsewhere).
    #[arg(long, default_value = "127.0.0.1")]
    pub metrics_bind_address: Ipv4Addr,
    /// Do not run the ingress controller.
    #[arg(long)]
    pub no_ingress: bool,
    /// Do not run the eBPF Service load balancer.
    #[arg(long)]
    pub no_lb: bool,
    /// Balance Services for the pods only: the node's own processes (a shell, a node exporter) then cannot use
    /// ClusterIPs. By default the socket programs also attach to the root cgroup for ClusterIPs and NodePorts.
    #[arg(long, conflicts_with = "lb_node_cgroup")]
    pub lb_pods_only: bool,
    /// The cgroup-v2 directory whose processes count as the node's (default: the hierarchy's root).
    #[arg(long, value_name = "DIR", hide = true)]
    pub lb_node_cgroup: Option<PathBuf>,
    /// Addresses for LoadBalancer Services (CIDRs or FIRST-LAST ranges, repeatable; see `skiff server --lb-pool`).
    /// Without it, a LoadBalancer Service gets this node's address.
    #[arg(long, value_name = "CIDR|RANGE")]
    pub lb_pool: Vec<String>,
    /// Leave pods' packets to outside the cluster untranslated (the default gives them the node address).
    #[arg(long)]
    pub no_masquerade: bool,
    /// Destinations that see pods' own addresses (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub no_masquerade_to: Vec<ipnet::Ipv4Net>,
    /// Apply these manifests (with `kubectl apply -f`) once the node is Ready, e.g. `manifests/demo.yaml`.
    #[arg(long, value_name = "FILE")]
    pub apply: Vec<PathBuf>,
    /// Seconds to wait for the node to become Ready.
    #[arg(long, default_value_t = 120)]
    pub ready_timeout: u64,
}

/// The addresses every component serves on, for the summary.
#[derive(Debug)]
struct Ports {
    agent_metrics: SocketAddr,
    lb_metrics: SocketAddr,
    ingress_metrics: SocketAddr,
}

impl Ports {
    fn new(bind: Ipv4Addr) -> Self {
        Ports {
            agent_metrics: SocketAddr::from((bind, 10255)),
            lb_metrics: SocketAddr::from((bind, 10249)),
            ingress_metrics: SocketAddr::from((bind, 10254)),
        }
    }
}

struct Progress(Instant);

impl Progress {
    fn step(&self, what: &str) {
        eprintln!("[{:>5.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_lowercase()
}

/// Runs the cluster until interrupted.
pub fn run(args: Args) -> anyhow::Result<()> {
    let progress = Progress(Instant::now());
    let data_dir = std::path::absolute(&args.data_dir)?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    eprintln!("Starting Skiff in {}", data_dir.display());
    super::runtime()?.block_on(async move {
        skiff_client::install_crypto_provider();
        let node_name = args.node_name.clone().unwrap_or_else(hostname);
        let node_ip = match args.node_ip {
            Some(ip) => ip,
            None => skiff_agent::host::detect_node_ip(args.interface.as_deref(), "skiff0")
                .await
                .context("no node address found: give --node-ip (or --interface)")?,
        };
        progress
            .step(&format!("node {node_name} at {node_ip}; starting the API server (SQLite datastore, certificates)…"));
        let cfg = super::server::Args {
            data_dir: data_dir.join("server"),
            listen: SocketAddr::from(([0, 0, 0, 0], args.api_port)),
            advertise_address: Some(format!("{node_ip}:{}", args.api_port)),
            tls_san: vec![node_name.clone()],
            datastore: "sqlite".into(),
            etcd_tls: Default::default(),
            token: None,
            event_ttl: Duration::from_secs(3600),
            leader_elect_lease_duration: Duration::from_secs(15),
            leader_elect_renew_deadline: Duration::from_secs(10),
            leader_elect_retry_period: Duration::from_secs(2),
            compaction_interval: 300,
            max_requests_inflight_per_user: 100,
            max_requests_inflight: 600,
            max_connections: 4096,
            lb_pool: args.lb_pool.clone(),
        }
        .config()?;
        let server = skiff_control::server::start(cfg).await?;
        let kubeconfig = data_dir.join("kubeconfig");
        std::fs::copy(&server.kubeconfig, &kubeconfig).with_context(|| format!("writing {}", kubeconfig.display()))?;
        progress.step(&format!("API server, controllers and scheduler ready at {}", server.url));

        let ports = Ports::new(args.metrics_bind_address);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let mut agent_cfg = AgentConfig::new(node_name.clone(), server.pki.ca.cert_pem.clone());
        agent_cfg.node_ip = Some(node_ip);
        agent_cfg.interface = args.interface.clone();
        agent_cfg.data_dir = data_dir.join("agent");
        agent_cfg.image_store = std::path::absolute(&args.image_store)?;
        agent_cfg.metrics_addr = Some(ports.agent_metrics);
        agent_cfg.cgroup_root = args.cgroup_root.clone();
        let mut dataplane: Option<Box<dyn Dataplane>> = None;
        if !args.no_lb {
            let pin_dir = args
                .lb_pin_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(skiff_lb::config::DEFAULT_PIN_DIR).join(&node_name));
            let node_cgroup = if args.lb_pods_only {
                None
            } else {
                let root = args.lb_node_cgroup.clone().or_else(skiff_lb::config::cgroup2_root);
                if root.is_none() {
                    tracing::warn!("no cgroup-v2 hierarchy found: the node's own processes get no ClusterIPs");
                }
                root
            };
            let masquerade = (!args.no_masquerade).then(|| skiff_lb::nat::Masquerade {
                cluster_cidr: skiff_agent::config::DEFAULT_CLUSTER_CIDR.parse().expect("a valid constant"),
                exclude: args.no_masquerade_to.clone(),
            });
            let ebpf =
                crate::dataplane::Ebpf { pin_dir, metrics_addr: Some(ports.lb_metrics), node_cgroup, masquerade };
            ebpf.validate().map_err(|e| anyhow::anyhow!(e))?;
            dataplane = Some(Box::new(ebpf));
        }
        agent_cfg.validate()?;
        let agent_client = skiff_agent::bootstrap::connect_node(
            std::slice::from_ref(&server.url),
            &server.pki.node_token,
            &server.pki.ca.cert_pem,
            &node_name,
            &skiff_agent::paths::Paths::new(agent_cfg.data_dir.clone()).pki(),
            None,
        )
        .await?;
        progress.step(&format!(
            "starting the node agent (runc, pod network on skiff0, cluster DNS{})…",
            if args.no_lb { "" } else { ", eBPF Service load balancer" }
        ));
        let mut agent = tokio::spawn(skiff_agent::run(agent_client, agent_cfg, dataplane, stopped(stop_rx.clone())));

        let admin = admin_client(&kubeconfig).await?;
        wait_node_ready(&admin, &node_name, Duration::from_secs(args.ready_timeout), &mut agent).await?;
        progress.step(&format!("node {node_name} is Ready"));

        let ingress = if args.no_ingress {
            None
        } else {
            progress
                .step(&format!("starting the ingress controller on ports {} and {}…", args.http_port, args.https_port));
            ensure_ingress_class(&admin).await?;
            Some(start_ingress(&args, &kubeconfig, &data_dir, node_ip, ports.ingress_metrics).await?)
        };

        for file in &args.apply {
            progress.step(&format!("applying {}", file.display()));
            apply(&kubeconfig, file)?;
        }

        summary(&args, &server.url, &data_dir, &kubeconfig, node_ip, &ports);
        tokio::select! {
            () = super::wait_for_shutdown() => {}
            r = &mut agent => return Err(agent_ended(r).context("the node agent stopped")),
        }
        eprintln!("stopping (containers keep running; `skiff up` with the same --data-dir re-adopts them)");
        let _ = stop_tx.send(true);
        if let Some(i) = ingress {
            tokio::task::spawn_blocking(move || i.stop(skiff_ingress::runtime::ShutdownKind::Graceful)).await?;
        }
        Ok(())
    })
}

fn agent_ended(r: Result<Result<(), skiff_agent::AgentError>, tokio::task::JoinError>) -> anyhow::Error {
    match r {
        Ok(Ok(())) => anyhow::anyhow!("it returned without an error"),
        Ok(Err(e)) => anyhow::Error::new(e),
        Err(e) => anyhow::anyhow!("it panicked: {e}"),
    }
}

async fn admin_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(skiff_client::connection::client(cfg)?)
}

async fn wait_node_ready(
    client: &kube::Client,
    node: &str,
    limit: Duration,
    agent: &mut tokio::task::JoinHandle<Result<(), skiff_agent::AgentError>>,
) -> anyhow::Result<()> {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let deadline = Instant::now() + limit;
    loop {
        if agent.is_finished() {
            return Err(agent_ended(agent.await).context("the node agent stopped while starting"));
        }
        let ready = nodes.get_opt(node).await.ok().flatten().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("node {node} did not become Ready within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn start_ingress(
    args: &Args,
    kubeconfig: &Path,
    data_dir: &Path,
    node_ip: Ipv4Addr,
    metrics: SocketAddr,
) -> anyhow::Result<skiff_ingress::runtime::Embedded> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let kube_config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let config = skiff_ingress::IngressConfig {
        http_addr: format!("0.0.0.0:{}", args.http_port),
        https_addr: Some(format!("0.0.0.0:{}", args.https_port)),
        metrics_addr: Some(metrics.to_string()),
        access_log: skiff_ingress::config::AccessLog::File(data_dir.join("ingress-access.log")),
        status_addresses: vec![node_ip.to_string()],
        upgrade_sock: data_dir.join("ingress-upgrade.sock"),
        pid_file: data_dir.join("ingress.pid"),
        ..skiff_ingress::IngressConfig::default()
    };
    let started =
        tokio::task::spawn_blocking(move || skiff_ingress::runtime::Embedded::start_api(config, kube_config)).await?;
    started.context("starting the ingress controller")
}

/// The IngressClass `skiff`, marked as the cluster's default (Ingresses without a class are served), unless it
/// exists already (a user's changes to it are kept).
async fn ensure_ingress_class(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::networking::v1::IngressClass;
    let classes: kube::Api<IngressClass> = kube::Api::all(client.clone());
    let class: IngressClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "skiff", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "skiff.dev/ingress-controller"},
    }))?;
    match classes.create(&Default::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("creating the IngressClass skiff")),
    }
}

fn apply(kubeconfig: &Path, file: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f"])
        .arg(file)
        .status()
        .context("running kubectl (is it installed?)")?;
    anyhow::ensure!(status.success(), "kubectl apply -f {} failed", file.display());
    Ok(())
}

fn summary(args: &Args, url: &str, data_dir: &Path, kubeconfig: &Path, node_ip: Ipv4Addr, ports: &Ports) {
    eprintln!();
    eprintln!("Skiff is up.");
    eprintln!("  API server     {url}");
    eprintln!("  kubeconfig     {}", kubeconfig.display());
    eprintln!("  datastore      {}", data_dir.join("server/state.db").display());
    eprintln!("  node state     {}", data_dir.join("agent").display());
    if !args.no_ingress {
        eprintln!("  ingress        http://{node_ip}:{}  https://{node_ip}:{}", args.http_port, args.https_port);
        eprintln!("  access log     {}", data_dir.join("ingress-access.log").display());
    }
    eprintln!("  metrics        {url}/metrics (client certificate)");
    eprintln!("                 http://{node_ip}:{} (agent)", ports.agent_metrics.port());
    if !args.no_lb {
        eprintln!("                 http://{node_ip}:{} (service load balancer)", ports.lb_metrics.port());
    }
    if !args.no_ingress {
        eprintln!("                 http://{node_ip}:{} (ingress)", ports.ingress_metrics.port());
    }
    eprintln!();
    eprintln!("  export KUBECONFIG={}", kubeconfig.display());
    eprintln!("  kubectl get nodes,pods -A");
    if args.apply.is_empty() {
        eprintln!("  kubectl apply -f manifests/demo.yaml      # the demo: echo app behind the ingress");
    }
    eprintln!("  curl -H 'Host: echo.skiff.local' http://{node_ip}:{}/", args.http_port);
    eprintln!();
    eprintln!("Ctrl-C stops Skiff (pods keep running and are re-adopted by the next `skiff up`).");
}
